"""RePoseDM: the pose-transfer denoiser of the paper (Sec. 3.1-3.2) in its three variants b1 / b2 / full.

    cond = model.prepare(source_z, pose_map)          # once per (source, pose) pair
    out  = model(x_t, t, pose_map, cond)              # every denoising step -> (B, 2C, h, w): [ε, v]

- b1 (PIDM): cond.features = texture_encoder(source).
- b2 / full: Recurrent Pose Alignment (rpa.py) estimates the flow F^N from source to target pose, and the texture
  encoder sees the aligned source: features = texture_encoder(W(source; F^N)) ("image" warp space, eq. 9), or the
  encoder features of the unwarped source each warped by F^N resized to their level ("feature" warp space).
  RPA runs once in `prepare`; `forward` never runs it. The networks of b2 and full are identical; "full" adds pose
  gradient guidance at sampling (guidance.py) with the defaults stored in the config.

Layout / checkpoints: `model.net` is a `PIDMNet` for every variant and `model.rpa` the RPA module (None for b1), so a
b1 state dict is PIDM's, key-for-key, under the prefix "net.". `RePoseDM.from_pidm(pidm_net)` wraps a PIDM network
(e.g. `load_model(path, "pidm")`) as b1 without copying weights; `as_repose_model` accepts either kind.

Sizes: the UNet needs h, w divisible by 2^(levels-1); other diffusion-space sizes (e.g. 22 latent columns of a
176-px-wide image at factor 8) are padded on the right/bottom (reflection) inside `prepare` and `forward` and the
output is cropped back, so callers never see the padding.

The codec is not part of the module's state (a VAE is loaded separately and shared with the rest of the graph):
pixel / unshuffle codecs are built from the config, an "sd_vae" model needs `set_codec(DiffusersVAECodec(vae))`
before using the image-level helpers (`encode_source`, `encode_pose`, `decode`, previews).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import register_model
from ..errors import CheckpointError, InputError
from .codec import Codec, codec_from_name
from .configs import RePoseConfig
from .rpa import RecurrentPoseAlignment, RPAOutput, resize_flow, warp
from .unet import PIDMNet

__all__ = ["AppearanceCond", "RePoseDM", "as_repose_model"]


@dataclass
class AppearanceCond:
    """Appearance condition of one (source, pose) pair, computed by `prepare` and reused at every step."""

    features: list[Tensor]  # per-level texture features for the UNet cross-attention (padded diffusion size)
    flow: Tensor | None = None  # final RPA flow (B, 2, h, w) in pixels of the diffusion space; None for b1
    warped: list[Tensor] = field(default_factory=list)  # warped source per RPA iteration (diffusion space); [] for b1
    previews: list[Tensor] = field(default_factory=list)  # decoded `warped` images in [-1, 1] (decode_previews=True)
    aligned_source: Tensor | None = None  # W(source; F^N) for the UNet input (config.aligned_source_input), else None

    @property
    def batch_size(self) -> int:
        return self.features[0].shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "AppearanceCond":
        opt = lambda x: None if x is None else fn(x)  # noqa: E731
        return AppearanceCond([fn(f) for f in self.features],
                              opt(self.flow), [fn(w) for w in self.warped],
                              [fn(p) for p in self.previews], opt(self.aligned_source))

    def features_only(self) -> "AppearanceCond":
        """What `forward` reads: the features (and the aligned source of models that take it as input); drops the
        flow / warps / previews, e.g. to batch with `null_cond`."""
        return AppearanceCond(features=list(self.features), aligned_source=self.aligned_source)

    def to(self, device=None, dtype=None) -> "AppearanceCond":
        """Move/cast every tensor (flows keep float32 unless a dtype is given)."""
        return self._map(lambda x: x.to(device=device, dtype=dtype if dtype is not None else x.dtype))

    def detach(self) -> "AppearanceCond":
        return self._map(lambda x: x.detach())


def _pad_right_bottom(x: Tensor, height: int, width: int, mode: str = "reflect") -> Tensor:
    """Pad (B, C, h, w) on the right/bottom to (height, width); reflection where possible, else replication."""
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "replicate"  # reflection needs the pad to be smaller than the side
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class RePoseDM(nn.Module):
    """PoseTransferModel (DESIGN.md) for variants b1 / b2 / full."""

    checkpoint_builder = "repose_dm"

    def __init__(self, config: RePoseConfig, codec: Codec | None = None, net: PIDMNet | None = None):
        super().__init__()
        if not isinstance(config, RePoseConfig):
            raise InputError(f"RePoseDM needs a RePoseConfig (see repose_core.models.configs.get_config), "
                             f"got {type(config).__name__}")
        self.config = config
        if net is not None and net.config != config.unet:
            raise InputError("RePoseDM(net=...): the network's UNetConfig differs from config.unet")
        self.net = net if net is not None else PIDMNet(config.unet)
        # config.rpa is set for every variant but b1 (RePoseConfig checks it)
        self.rpa = RecurrentPoseAlignment(config.rpa) if config.variant != "b1" else None  # type: ignore[arg-type]
        self.set_codec(codec)

    # -- construction helpers ---------------------------------------------------------------------------------------

    @classmethod
    def from_pidm(cls, pidm_net: PIDMNet, image_size: tuple[int, int] | None = None, **config_overrides) -> "RePoseDM":
        """Variant b1 around a PIDM network (shares its weights; no copy). PIDM is pixel space with the 20-channel
        pose map; `image_size` defaults to the network's nominal square size (PIDM: 256×256)."""
        if not isinstance(pidm_net, PIDMNet):
            raise InputError(f"from_pidm expects a PIDMNet (e.g. load_model(path, 'pidm')), "
                             f"got {type(pidm_net).__name__}")
        size = image_size or (pidm_net.config.image_size, pidm_net.config.image_size)
        config = RePoseConfig(variant="b1", unet=pidm_net.config, rpa=None, codec="pixel", image_size=size,
                              pose_encoding="pidm20", **config_overrides)
        return cls(config, net=pidm_net)

    def set_codec(self, codec: Codec | None) -> "RePoseDM":
        """Attach the codec (not registered as a submodule: its weights are not part of this model's files)."""
        if codec is None and self.config.codec != "sd_vae":
            codec = codec_from_name(self.config.codec)
        if codec is not None and (codec.channels, codec.factor) != (self.config.diffusion_channels,
                                                                    self.config.codec_factor):
            raise InputError(f"codec {type(codec).__name__} has channels={codec.channels}, factor={codec.factor}; this "
                             f"model's config ({self.config.codec!r}) needs {self.config.diffusion_channels} and "
                             f"{self.config.codec_factor}")
        self.__dict__["_codec"] = codec
        return self

    @property
    def codec(self) -> Codec:
        codec = self.__dict__.get("_codec")
        if codec is None:
            raise InputError(f"this model uses codec {self.config.codec!r}, which needs a loaded VAE: call "
                             f"model.set_codec(DiffusersVAECodec(vae)) first")
        return codec

    @property
    def variant(self) -> str:
        return self.config.variant

    # -- images <-> diffusion space -----------------------------------------------------------------------------

    def encode_source(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [-1, 1] -> diffusion-space source for `prepare`."""
        return self.codec.encode(image)

    def encode_pose(self, pose: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Target pose at pixel resolution -> pose map in diffusion space, as `prepare`/`forward` take it.

        "pidm20": pose (B, 20, H, W) in [0, 1] (render_pidm_pose_map), area-resized to the diffusion size.
        "skeleton_codec": pose (B, 3, H, W) RGB skeleton in [0, 1] (render_openpose), encoded by the codec."""
        c, f = self.config, self.config.codec_factor
        if pose.ndim != 4:
            raise InputError(f"pose must be a (B, C, H, W) tensor, got shape {tuple(pose.shape)}")
        if c.pose_encoding == "pidm20":
            if pose.shape[1] != c.pose_channels:
                raise InputError(f"pose encoding 'pidm20' expects the 20-channel PIDM pose map (B, 20, H, W), got "
                                 f"shape {tuple(pose.shape)}")
            size = size or (pose.shape[-2] // f, pose.shape[-1] // f)
            if tuple(pose.shape[-2:]) == tuple(size):
                return pose
            return F.interpolate(pose, size=size, mode="area")
        if pose.shape[1] != 3:
            raise InputError(f"pose encoding 'skeleton_codec' expects an RGB skeleton image (B, 3, H, W) in [0, 1], "
                             f"got shape {tuple(pose.shape)}")
        return self.codec.encode(pose * 2 - 1)

    def decode(self, z: Tensor) -> Tensor:
        return self.codec.decode(z)

    # -- PoseTransferModel ---------------------------------------------------------------------------------------

    def prepare(self, source: Tensor, pose_map: Tensor, progress: Callable[[int, int], None] | None = None,
                decode_previews: bool = False, iterations: int | None = None) -> AppearanceCond:
        """Appearance condition for (source, pose): texture features, and for b2/full the RPA flow and warps.

        source (B, C, h, w) in diffusion space; pose_map (B, P, h, w) in diffusion space.
        progress(i, n) is called after each RPA iteration. decode_previews: decode each iteration's warped source
        with the codec into `cond.previews` (the paper's Fig. 9 view). iterations: RPA's N for this call (None = the
        configured N)."""
        self._check_pair(source, pose_map, "prepare")
        if self.rpa is None:  # b1: PIDM
            return AppearanceCond(features=self.net.encode(self._pad(source)))

        rpa: RPAOutput = self.rpa(source, pose_map, iterations=iterations, progress=progress)
        if self.rpa.config.warp_space == "image":  # eq. 9: encoder of the warped source
            features = self.net.encode(self._pad(rpa.warped[-1]))
        else:  # warp every encoder level of the unwarped source with the flow resized to it
            flow = self._pad(rpa.flow, mode="replicate")
            features = [warp(f, resize_flow(flow, f.shape[-2:])) for f in self.net.encode(self._pad(source))]
        previews = [self.codec.decode(w) for w in rpa.warped] if decode_previews else []
        aligned = rpa.warped[-1] if self.config.aligned_source_input else None
        return AppearanceCond(features=features, flow=rpa.flow, warped=rpa.warped, previews=previews,
                              aligned_source=aligned)

    def null_cond(self, like: AppearanceCond) -> AppearanceCond:
        """CFG "∅" (PIDM semantics): texture features of an all-zero source of `like`'s size; no flow, no warps.

        For a batched CFG pass pair it with `cond.features_only()` (the denoiser reads only the features)."""
        f0 = like.features[0]
        stride = self.net.encoder_feature_strides[0]
        zeros = f0.new_zeros(f0.shape[0], self.config.diffusion_channels, f0.shape[-2] * stride,
                             f0.shape[-1] * stride)
        aligned = None if like.aligned_source is None else torch.zeros_like(like.aligned_source)  # W(0; F) = 0
        return AppearanceCond(features=self.net.encode(zeros), aligned_source=aligned)

    def forward(self, x_t: Tensor, t: Tensor, pose_map: Tensor, cond: AppearanceCond) -> Tensor:
        """(B, C, h, w) noisy sample, t (B,) or scalar, pose map (B, P, h, w) -> (B, 2C, h, w): [ε, v]."""
        self._check_pair(x_t, pose_map, "forward", first="x_t")
        H, W = self._padded_size(*x_t.shape[-2:])
        f0 = cond.features[0]
        if tuple(f0.shape[-2:]) != (H // self.net.encoder_feature_strides[0], W // self.net.encoder_feature_strides[0]):
            raise InputError(f"the appearance condition was prepared for another size (features "
                             f"{tuple(f0.shape[-2:])}, x_t padded to {(H, W)}); call prepare() with a source of "
                             f"x_t's size {tuple(x_t.shape[-2:])}")
        inputs = [x_t, pose_map]  # (B, C + P [+ C], H, W)
        if self.config.aligned_source_input:
            if cond.aligned_source is None or cond.aligned_source.shape != x_t.shape:
                raise InputError("this model reads the RPA-aligned source as UNet input (aligned_source_input): pass "
                                 "the AppearanceCond of model.prepare / model.null_cond (or its features_only())")
            inputs.append(cond.aligned_source.to(x_t.dtype))
        out = self.net.denoise(self._pad(torch.cat(inputs, dim=1)), t, cond.features)  # (B, 2C, H, W)
        out = out[..., : x_t.shape[-2], : x_t.shape[-1]]
        C = x_t.shape[1]
        if self.config.prediction == "v":
            out = torch.cat([self.eps_from_v(x_t, t, out[:, :C]), out[:, C:]], dim=1)
        elif self.config.prediction == "aligned_x0":
            assert cond.aligned_source is not None  # aligned predictions need aligned_source_input: checked above
            x0 = cond.aligned_source.float() + out[:, :C].float()
            out = torch.cat([self.eps_from_x0(x_t, t, x0).to(out.dtype), out[:, C:]], dim=1)
        elif self.config.prediction == "aligned_residual":
            assert cond.aligned_source is not None  # as for "aligned_x0"
            eps = self.eps_from_residual(x_t, t, cond.aligned_source, out[:, :C])
            out = torch.cat([eps.to(out.dtype), out[:, C:]], dim=1)
        return out

    def alphas_cumprod_at(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t of the model's linear-β schedule as (B, 1, 1, 1) float32 on `like`'s device; fractional t (k-diffusion
        samplers) interpolates linearly between the neighbouring timesteps."""
        tables = self.__dict__.setdefault("_abar", {})  # not a buffer: .half() must not round it
        table = tables.get(like.device)
        if table is None:
            from ..diffusion import linear_betas
            table = torch.from_numpy(np.cumprod(1.0 - linear_betas(self.config.timesteps))).float().to(like.device)
            tables[like.device] = table
        t = torch.as_tensor(t, device=like.device).reshape(-1).float().expand(like.shape[0])
        t = t.clamp(0, table.numel() - 1)
        low, high = t.floor().long(), t.ceil().long()
        abar = table[low] + (t - low) * (table[high] - table[low])
        return abar.view(-1, *([1] * (like.ndim - 1)))

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ·x0) / √(1−ᾱ): the noise consistent with a predicted clean sample."""
        abar = self.alphas_cumprod_at(t, x_t)
        return (x_t.float() - abar.sqrt() * x0.float()) / (1 - abar).sqrt()

    def eps_from_residual(self, x_t: Tensor, t: Tensor, aligned: Tensor, F: Tensor) -> Tensor:
        """ε of "aligned_residual" (configs module docstring): with x̃ = x_t/√ᾱ = x0 + σ·ε and
        x̂0 = a + c_skip·(x̃ − a) + c_out·F,  ε̂ = (x̃ − x̂0)/σ = σ/(σ² + σ_d²)·(x̃ − a) − σ_d/√(σ² + σ_d²)·F,
        written without the 1/σ so that it stays exact at t = 0."""
        abar = self.alphas_cumprod_at(t, x_t)
        sigma2 = (1 - abar) / abar
        sd2 = self.config.residual_sigma_data ** 2
        x_tilde = x_t.float() / abar.sqrt()
        return sigma2.sqrt() / (sigma2 + sd2) * (x_tilde - aligned.float()) - (sd2 / (sigma2 + sd2)).sqrt() * F.float()

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """ε = √ᾱ·v + √(1−ᾱ)·x_t (v-parameterisation, Salimans & Ho 2022, eq. in their appendix D)."""
        abar = self.alphas_cumprod_at(t, x_t)
        return (abar.sqrt() * v.float() + (1 - abar).sqrt() * x_t.float()).to(v.dtype)

    # -- helpers -----------------------------------------------------------------------------------------------

    def _padded_size(self, h: int, w: int) -> tuple[int, int]:
        m = 2 ** (len(self.config.unet.channel_mult) - 1)
        return -(-h // m) * m, -(-w // m) * m

    def _pad(self, x: Tensor, mode: str = "reflect") -> Tensor:
        return _pad_right_bottom(x, *self._padded_size(*x.shape[-2:]), mode=mode)

    def _check_pair(self, first_t: Tensor, pose_map: Tensor, where: str, first: str = "source") -> None:
        C, P = self.config.diffusion_channels, self.config.pose_channels
        if first_t.ndim != 4 or first_t.shape[1] != C:
            raise InputError(f"RePoseDM.{where}: {first} must be (B, {C}, h, w) in diffusion space "
                             f"(codec {self.config.codec!r}), got shape {tuple(first_t.shape)}")
        if pose_map.ndim != 4 or pose_map.shape[1] != P:
            raise InputError(f"RePoseDM.{where}: pose_map must be (B, {P}, h, w) in diffusion space (pose encoding "
                             f"{self.config.pose_encoding!r}; use model.encode_pose), "
                             f"got shape {tuple(pose_map.shape)}")
        if pose_map.shape[0] != first_t.shape[0] or pose_map.shape[-2:] != first_t.shape[-2:]:
            raise InputError(f"RePoseDM.{where}: {first} {tuple(first_t.shape)} and pose_map {tuple(pose_map.shape)} "
                             f"must have the same batch size and spatial size")


def as_repose_model(model: nn.Module) -> RePoseDM:
    """A RePoseDM as is, or a PIDMNet wrapped as variant b1 (for files of kind "pidm")."""
    if isinstance(model, RePoseDM):
        return model
    if isinstance(model, PIDMNet):
        return RePoseDM.from_pidm(model)
    raise InputError(f"expected a RePoseDM or PIDMNet model, got {type(model).__name__}")


@register_model("repose_dm")
def _build_repose_dm(config: dict) -> RePoseDM:
    try:
        return RePoseDM(RePoseConfig.from_dict(config))
    except (InputError, TypeError) as e:
        raise CheckpointError(f"stored RePoseDM config is invalid: {e}") from e
