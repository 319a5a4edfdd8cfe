"""RePoseDM configurations: the `RePoseConfig` dataclass and the named presets (`get_config(name, variant)`).

Variants (paper Sec. 4.3, Table 2):
- "b1": PIDM — texture encoder + cross-attention, no RPA (`rpa` is None).
- "b2": b1 + Recurrent Pose Alignment (Sec. 3.2): the texture encoder sees the pose-aligned source.
- "full": the network of b2, plus gradient guidance from Pose Interaction Fields (Sec. 3.3) at sampling and,
  optionally, in training; the network is b2's, and samplers turn pose guidance on by default (`guidance`).

Presets (image size in pixels H×W):
- "deepfashion256" 256×176, pixel space with PIDM's 20-channel pose map and PIDM's released UNet: a converted PIDM
  checkpoint is exactly its b1 (PIDM itself trained on 256×256 stretched images; the UNet is size-agnostic).
- "deepfashion512" 512×352, latent space of the SD VAE (4×64×44) with the VAE-encoded RGB skeleton as pose, as the
  paper describes (Sec. 3.1); PIDM's 512 model was never released and pixel space at 512 would cost ~4× the 256 UNet.
  Needs diffusers for the codec at run time (the network itself builds without it).
- "market1501" 128×64, pixel space, PIDM-style.
- "tiny" 64×44 pixels in PixelUnshuffle(2) space (12×32×22), a few channels: the shipped miniature models, tests.
- "tiny128" 128×88 pixels in PixelUnshuffle(2) space (12×64×44), a wider miniature (trained on a GPU).

Parameterisation (`prediction`): the network's first C output channels are ε ("eps", PIDM) or v = √ᾱ·ε − √(1−ᾱ)·x0
("v", Salimans & Ho 2022). `RePoseDM.forward` always returns ε (ε = √ᾱ·v + √(1−ᾱ)·x_t), so samplers, CFG and pose
guidance never see the difference; the trainer weights the ε-MSE by 1/ᾱ_t for "v" models, which is the v-MSE. The
miniature presets predict v: with ε-prediction and equal weights over t, x̂0 errors at high t are weighted by
ᾱ/(1−ᾱ) (3e-4 at t = 900) and small CPU-trained models draw a grid of sub-pixel biases (docs/ablation.md).

`aligned_source_input` (OUR ADDITION, off in the paper's variants): the RPA-aligned source W(I_S; F^N) is also
concatenated to the UNet input, so the denoiser can read the aligned appearance at the same place at every
resolution, not only through cross-attention (which has no position signal). Needs RPA (b2 / full).
`prediction="aligned_x0"` (OUR ADDITION, with `aligned_source_input`): the network predicts the correction
x0 − W(I_S; F^N) of the aligned source, so an untrained network already returns RPA's warp (x̂0 = aligned source)
and training teaches it to repair what the warp got wrong; forward() converts to ε like "v", and the loss is the
same v-space MSE.
`prediction="aligned_residual"` (OUR ADDITION, with `aligned_source_input`): EDM's preconditioning (Karras et al.
2022, eq. 7 and table 1) applied to the residual r = x0 − a around the aligned source a = W(I_S; F^N):
    x̂0 = a + c_skip(σ)·(x_t/√ᾱ − a) + c_out(σ)·F,   σ² = (1−ᾱ)/ᾱ,
    c_skip = σ_d² / (σ² + σ_d²),   c_out = σ·σ_d / √(σ² + σ_d²),   σ_d = `residual_sigma_data`,
so at high noise x̂0 is the warp plus a learned correction (like "aligned_x0") and at low noise it is the identity
on x_t (like ε-prediction), where "aligned_x0" had to re-draw the whole image and left noise in the last steps.
The loss is EDM's: unit weight on F (ε-MSE × (1 + σ²/σ_d²)).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..guidance.config import GuidanceConfig
from .codec import codec_spec
from .rpa import RPAConfig
from .unet import UNetConfig, pidm_deepfashion256_config

__all__ = ["RePoseConfig", "RPAConfig", "UNetConfig", "get_config", "CONFIG_NAMES", "VARIANTS", "POSE_ENCODINGS",
           "PREDICTIONS"]

VARIANTS = ("b1", "b2", "full")
PREDICTIONS = ("eps", "v", "aligned_x0", "aligned_residual")
POSE_ENCODINGS = ("pidm20", "skeleton_codec")
PIDM_POSE_CHANNELS = 20


@dataclass(frozen=True)
class RePoseConfig:
    variant: str = "b2"  # "b1" (PIDM) | "b2" (+ RPA) | "full" (b2 + pose gradient guidance)
    unet: UNetConfig = field(default_factory=pidm_deepfashion256_config)  # PIDM-layout denoiser + texture encoder
    rpa: RPAConfig | None = field(default_factory=RPAConfig)  # None for b1
    codec: str = "pixel"  # diffusion space: "pixel" | "unshuffle2" | "unshuffle4" | "sd_vae"
    image_size: tuple[int, int] = (256, 176)  # (H, W) in pixels
    pose_encoding: str = "pidm20"  # "pidm20": PIDM's 20-ch map resized | "skeleton_codec": codec(RGB skeleton)
    cond_drop_prob: float = 0.1  # training: P(source replaced by zeros), the CFG "∅" (PIDM guidance_prob)
    timesteps: int = 1000  # T of the linear β schedule (1e-4 -> 2e-2)
    cfg_scale: float = 2.0  # classifier-free guidance scale at sampling (PIDM: 2)
    # the last timestep samplers evaluate, its x̂0 the result (0 = the whole trajectory, PIDM). A denoiser that has not
    # learned the lowest noise levels leaves their noise in the image; it is better stopped where its x̂0 is still
    # clean (EDM's σ_min). Chosen per model by measurement (train/ablation.py sweep).
    final_timestep: int = 0
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)  # pose guidance settings (on for "full")
    prediction: str = "eps"  # what the network predicts: "eps" (PIDM) | "v"; forward() always returns ε
    aligned_source_input: bool = False  # ours: RPA-aligned source also concatenated to the UNet input (b2/full)
    residual_sigma_data: float = 0.2  # σ_d of "aligned_residual": RMS of x0 − aligned source (0.19 on synth64)

    def __post_init__(self):
        def bad(name: str, what: str):
            raise InputError(f"RePoseConfig.{name} = {getattr(self, name)!r}: {what}")

        if isinstance(self.unet, dict):
            object.__setattr__(self, "unet", UNetConfig.from_dict(self.unet))
        if isinstance(self.rpa, dict):
            object.__setattr__(self, "rpa", _rpa_from_dict(self.rpa))
        if isinstance(self.guidance, dict):
            object.__setattr__(self, "guidance", GuidanceConfig.from_dict(self.guidance))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))

        if self.variant not in VARIANTS:
            bad("variant", f"accepted: {', '.join(VARIANTS)}")
        if self.pose_encoding not in POSE_ENCODINGS:
            bad("pose_encoding", f"accepted: {', '.join(POSE_ENCODINGS)}")
        channels, factor = codec_spec(self.codec)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            bad("image_size", "must be (H, W) in pixels")
        if self.image_size[0] % factor or self.image_size[1] % factor:
            bad("image_size", f"H and W must be multiples of the codec factor {factor} of codec {self.codec!r}")
        if isinstance(self.final_timestep, bool) or int(self.final_timestep) != self.final_timestep \
                or not 0 <= self.final_timestep < self.timesteps:
            bad("final_timestep", f"must be an integer in [0, {self.timesteps - 1}]")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            bad("cond_drop_prob", "must be in [0, 1)")
        if self.timesteps < 1:
            bad("timesteps", "must be >= 1")
        if self.prediction not in PREDICTIONS:
            bad("prediction", f"accepted: {', '.join(PREDICTIONS)}")
        if self.aligned_source_input and self.variant == "b1":
            bad("aligned_source_input", "needs Recurrent Pose Alignment (variant 'b2' or 'full')")
        if self.prediction in ("aligned_x0", "aligned_residual") and not self.aligned_source_input:
            bad("prediction", f"{self.prediction!r} corrects the aligned source: it needs aligned_source_input=True")
        if not self.residual_sigma_data > 0:
            bad("residual_sigma_data", "must be > 0")

        pose = self.pose_channels
        extra = channels if self.aligned_source_input else 0
        expect = {"in_channels": channels + pose + extra, "out_channels": 2 * channels, "encoder_in_channels": channels}
        for name, value in expect.items():
            if getattr(self.unet, name) != value:
                raise InputError(
                    f"RePoseConfig.unet.{name} = {getattr(self.unet, name)} does not fit codec {self.codec!r} "
                    f"({channels} channels) with pose encoding {self.pose_encoding!r} ({pose} channels); "
                    f"expected {value}"
                )
        if self.variant == "b1":
            if self.rpa is not None:
                bad("rpa", "variant 'b1' has no Recurrent Pose Alignment; set rpa=None")
        else:
            if self.rpa is None:
                bad("rpa", f"variant {self.variant!r} needs an RPAConfig")
            if (self.rpa.source_channels, self.rpa.pose_channels) != (channels, pose):
                raise InputError(
                    f"RePoseConfig.rpa has source_channels={self.rpa.source_channels}, pose_channels="
                    f"{self.rpa.pose_channels}; codec {self.codec!r} and pose encoding {self.pose_encoding!r} need "
                    f"{channels} and {pose}"
                )

    # -- derived sizes -------------------------------------------------------------------------------------------

    @property
    def diffusion_channels(self) -> int:
        return codec_spec(self.codec)[0]

    @property
    def codec_factor(self) -> int:
        return codec_spec(self.codec)[1]

    @property
    def pose_channels(self) -> int:
        return PIDM_POSE_CHANNELS if self.pose_encoding == "pidm20" else self.diffusion_channels

    @property
    def diffusion_size(self) -> tuple[int, int]:
        """(h, w) of the diffusion space for the configured image size."""
        f = self.codec_factor
        return self.image_size[0] // f, self.image_size[1] // f

    # -- (de)serialisation, used by checkpoints --------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RePoseConfig":
        """Inverse of `to_dict` (JSON lists become tuples); unknown fields are an error. Files written before
        `guidance` was one GuidanceConfig (flat guidance_scale / _energy / _start / _end) are read into it."""
        data = dict(data)
        legacy = {k: data.pop(f"guidance_{k}") for k in ("scale", "energy", "start", "end") if f"guidance_{k}" in data}
        if legacy:
            if not legacy.get("scale", 1.0):  # 0 meant "off by default", which the variant now says
                legacy.pop("scale")
            data["guidance"] = {**data.get("guidance", {}), **legacy}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown RePoseConfig field(s) {unknown}; accepted fields: {sorted(known)}")
        values = dict(data)
        if isinstance(values.get("unet"), dict):
            values["unet"] = UNetConfig.from_dict(values["unet"])
        if isinstance(values.get("rpa"), dict):
            values["rpa"] = _rpa_from_dict(values["rpa"])
        if isinstance(values.get("guidance"), dict):
            values["guidance"] = GuidanceConfig.from_dict(values["guidance"])
        return cls(**values)


def _rpa_from_dict(data: dict) -> RPAConfig:
    known = {f.name for f in dataclasses.fields(RPAConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown RPAConfig field(s) {unknown}; accepted fields: {sorted(known)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return RPAConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# Presets


def _tiny() -> dict[str, Any]:
    codec = "unshuffle2"  # 64×44 px -> 12 × 32×22 (22 is not a multiple of 4: exercises the internal padding)
    c, _ = codec_spec(codec)
    unet = UNetConfig(image_size=32, in_channels=c + PIDM_POSE_CHANNELS, model_channels=32, out_channels=2 * c,
                      num_res_blocks=1, attention_resolutions=(16, 8), channel_mult=(1, 1, 2), embed_channels=64,
                      dropout=0.0, encoder_in_channels=c)
    rpa = RPAConfig(source_channels=c, pose_channels=PIDM_POSE_CHANNELS, downsample=2, depth=24, region_radii=(0, 4, 1),
                    heads_per_region=1, ffn_mult=2, corr_radius=2, iterations=3)
    return dict(unet=unet, rpa=rpa, codec=codec, image_size=(64, 44), pose_encoding="pidm20", prediction="v")


def _tiny128() -> dict[str, Any]:
    codec = "unshuffle2"  # 128×88 px -> 12 × 64×44
    c, _ = codec_spec(codec)
    unet = UNetConfig(image_size=64, in_channels=c + PIDM_POSE_CHANNELS, model_channels=64, out_channels=2 * c,
                      num_res_blocks=1, attention_resolutions=(16, 8), channel_mult=(1, 1, 2, 2), embed_channels=128,
                      dropout=0.0, encoder_in_channels=c)
    rpa = RPAConfig(source_channels=c, pose_channels=PIDM_POSE_CHANNELS, downsample=2, depth=48, region_radii=(0, 6, 2),
                    heads_per_region=1, ffn_mult=2, corr_radius=3, iterations=3)  # RPA grid 32×22
    return dict(unet=unet, rpa=rpa, codec=codec, image_size=(128, 88), pose_encoding="pidm20", prediction="v")


def _deepfashion256() -> dict[str, Any]:
    unet = pidm_deepfashion256_config()  # PIDM's released network, key-for-key
    rpa = RPAConfig(source_channels=3, pose_channels=PIDM_POSE_CHANNELS, downsample=4, depth=96, region_radii=(0, 8, 3),
                    heads_per_region=2, ffn_mult=2, corr_radius=4, iterations=5)  # RPA grid 64×44
    return dict(unet=unet, rpa=rpa, codec="pixel", image_size=(256, 176), pose_encoding="pidm20")


def _deepfashion512() -> dict[str, Any]:
    c, _ = codec_spec("sd_vae")  # 512×352 -> 4 × 64×44 latents
    unet = UNetConfig(image_size=64, in_channels=2 * c, model_channels=192, out_channels=2 * c, num_res_blocks=2,
                      attention_resolutions=(32, 16, 8), channel_mult=(1, 2, 2, 4), embed_channels=768, dropout=0.1,
                      encoder_in_channels=c)
    rpa = RPAConfig(source_channels=c, pose_channels=c, downsample=2, depth=96, region_radii=(0, 6, 2),
                    heads_per_region=2, ffn_mult=2, corr_radius=3, iterations=5)  # RPA grid 32×22
    return dict(unet=unet, rpa=rpa, codec="sd_vae", image_size=(512, 352), pose_encoding="skeleton_codec")


def _market1501() -> dict[str, Any]:
    unet = UNetConfig(image_size=128, in_channels=3 + PIDM_POSE_CHANNELS, model_channels=128, out_channels=6,
                      num_res_blocks=2, attention_resolutions=(32, 16, 8), channel_mult=(1, 1, 2, 2, 4),
                      embed_channels=512, dropout=0.1, encoder_in_channels=3)
    rpa = RPAConfig(source_channels=3, pose_channels=PIDM_POSE_CHANNELS, downsample=4, depth=96, region_radii=(0, 6, 2),
                    heads_per_region=2, ffn_mult=2, corr_radius=3, iterations=5)  # RPA grid 32×16
    return dict(unet=unet, rpa=rpa, codec="pixel", image_size=(128, 64), pose_encoding="pidm20")


_MISSING = object()
_PRESETS = {"tiny": _tiny, "tiny128": _tiny128, "deepfashion256": _deepfashion256, "deepfashion512": _deepfashion512,
            "market1501": _market1501}
CONFIG_NAMES = tuple(_PRESETS)

def get_config(name: str, variant: str = "b2", **overrides) -> RePoseConfig:
    """Named preset for a variant. `overrides` replace RePoseConfig fields; `rpa=` may be a dict of RPAConfig
    field overrides (e.g. get_config("tiny", "b2", rpa=dict(warp_space="feature", iterations=2)))."""
    if name not in _PRESETS:
        raise InputError(f"unknown RePose config {name!r}; accepted: {', '.join(CONFIG_NAMES)}")
    if variant not in VARIANTS:
        raise InputError(f"unknown RePose variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    fields_ = _PRESETS[name]()
    if variant == "b1":
        fields_["rpa"] = None
    rpa_over = overrides.pop("rpa", _MISSING)
    if isinstance(rpa_over, dict):
        if fields_["rpa"] is None:
            raise InputError("variant 'b1' has no RPA; rpa overrides apply to 'b2' and 'full' only")
        fields_["rpa"] = dataclasses.replace(fields_["rpa"], **rpa_over)
    elif rpa_over is not _MISSING:
        fields_["rpa"] = rpa_over
    known = {f.name for f in dataclasses.fields(RePoseConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown RePoseConfig override(s) {unknown}; accepted: {sorted(known)}")
    fields_.update(overrides)
    if fields_.get("aligned_source_input"):  # the UNet reads C more input channels (the aligned source)
        c = codec_spec(fields_["codec"])[0]
        unet = fields_["unet"]
        pose = PIDM_POSE_CHANNELS if fields_.get("pose_encoding", "pidm20") == "pidm20" else c
        if unet.in_channels == c + pose:
            fields_["unet"] = dataclasses.replace(unet, in_channels=c + pose + c)
    return RePoseConfig(variant=variant, **fields_)
