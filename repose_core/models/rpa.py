"""Recurrent Pose Alignment (RePoseDM paper, section 3.2, eq. 5-9).

RPA estimates a dense flow that warps the source (in diffusion space) onto the target pose, so the UNet's texture
encoder sees pose-aligned features. One iteration n (eq. 8) is

    F_S^n  = Encoder(W(I_S; F^n))                      eq. 9   (source features of the currently warped source)
    F_S', F_T' = MapFormer(F_S^n, F_T)                 eq. 5   (region self-attn on S, region cross-attn T -> S)
    C(x, r) = ReLU(F_T'(x) · F_S'(x + r)),  |r|∞ ≤ R   eq. 6   (local correlation volume, (2R+1)² channels)
    ΔF     = PoseAggregator(C)                                 (2 convs + 1 max-pool -> 2-channel residual flow)
    F^{n+1} = F^n ∘ ΔF                                  eq. 7   (flow composition, see `compose_flows`)

starting from the identity flow, so the first iteration gives F^1 = ΔF^0 = M(F_T, Encoder(I_S)) as in the paper.

Conventions (RAFT-like): flows are (B, 2, H, W) tensors in **pixels** of the grid they live on, channel 0 = x
(columns), channel 1 = y (rows), and `warp(img, F)(x) = img(x + F(x))` (backward warping). Flows are estimated at
the RPA resolution (diffusion space / `downsample`) and upsampled (values scaled) to diffusion resolution.

Warp spaces (`RPAConfig.warp_space`), what each costs per iteration beyond the MapFormer + aggregator:
- "image" (the paper, eq. 9): warp the diffusion-space source with F^n (one grid_sample at diffusion resolution)
  and re-run the source encoder on it (a few convolutions at diffusion resolution).
- "feature": warp the RPA source features of the unwarped source directly with F^n at RPA resolution (one
  grid_sample at RPA resolution); the source encoder runs once. Cheaper, but details lost by the encoder's
  downsampling are not recovered after warping.
Measured (bench/bench_rpa.py, CPU, 1 thread, N = 5, in units of one UNet forward at the same resolution):
deepfashion256 (RPA grid 64×44) image 0.91, feature 0.80; tiny 1.24 for both. The MapFormer's attention dominates
(~80 %): global heads run unmasked; restricted heads use a boolean mask (cached per grid size), which on CPU is
about 9× slower per head than unmasked attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.geometry.transform import remap

try:  # kornia >= 0.8.3 moved it; older releases only have kornia.utils.create_meshgrid
    from kornia.geometry import create_meshgrid
except ImportError:  # pragma: no cover - depends on the installed kornia
    from kornia.utils import create_meshgrid
from torch import Tensor, nn

from ..errors import InputError

WARP_SPACES = ("image", "feature")


@dataclass(frozen=True)
class RPAConfig:
    source_channels: int = 3  # channels of the diffusion-space source (codec.channels)
    pose_channels: int = 20  # channels of the target pose map in diffusion space
    downsample: int = 4  # diffusion space -> RPA resolution (power of 2; 1 = no downsampling)
    depth: int = 64  # D: feature depth of the encoders, MapFormer and aggregator (paper: "fixed depth D")
    region_radii: tuple[int, ...] = (0, 8, 2)  # attention regions, global -> non-local -> local; 0 = global
    heads_per_region: int = 1  # attention heads given to each region radius
    ffn_mult: int = 2  # MapFormer FFN hidden width = ffn_mult · D
    corr_radius: int = 3  # R of eq. 6: correlation volume has (2R+1)² channels
    iterations: int = 5  # N recurrent iterations
    warp_space: str = "image"  # "image" (eq. 9, re-encode the warped source) | "feature" (warp RPA features)

    def __post_init__(self):
        object.__setattr__(self, "region_radii", tuple(int(r) for r in self.region_radii))
        for name in ("source_channels", "pose_channels", "depth", "heads_per_region", "ffn_mult", "iterations"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"RPAConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise InputError(f"RPAConfig.downsample must be a power of 2 (1, 2, 4, 8...), got {self.downsample!r}")
        if self.corr_radius < 0:
            raise InputError(f"RPAConfig.corr_radius must be >= 0, got {self.corr_radius!r}")
        if not self.region_radii or any(r < 0 for r in self.region_radii):
            raise InputError(f"RPAConfig.region_radii must be non-negative ints (0 = global), got {self.region_radii}")
        if self.depth % self.num_heads:
            raise InputError(
                f"RPAConfig.depth ({self.depth}) must be divisible by the number of attention heads "
                f"len(region_radii) · heads_per_region = {self.num_heads}"
            )
        if self.warp_space not in WARP_SPACES:
            raise InputError(f"RPAConfig.warp_space must be one of {WARP_SPACES}, got {self.warp_space!r}")

    @property
    def num_heads(self) -> int:
        return len(self.region_radii) * self.heads_per_region

    @property
    def head_radii(self) -> tuple[int, ...]:
        """Region radius of every attention head (heads_per_region consecutive heads per region)."""
        return tuple(r for r in self.region_radii for _ in range(self.heads_per_region))

    @property
    def corr_channels(self) -> int:
        return (2 * self.corr_radius + 1) ** 2


@dataclass
class RPAOutput:
    flow: Tensor  # (B, 2, H, W) final flow F^N in pixels of the diffusion space
    flows: list[Tensor] = field(default_factory=list)  # F^1..F^N, each (B, 2, H, W), diffusion space
    warped: list[Tensor] = field(default_factory=list)  # W(source; F^n) per iteration, (B, C, H, W) diffusion space
    flow_lowres: Tensor | None = None  # F^N at RPA resolution, in RPA pixels


# ---------------------------------------------------------------------------------------------------------------
# Flow utilities: warping, composition, resizing


def _pixel_grid(height: int, width: int, like: Tensor) -> Tensor:
    """(1, H, W, 2) pixel coordinates (x, y) of every pixel centre."""
    return create_meshgrid(height, width, normalized_coordinates=False, device=like.device, dtype=like.dtype)


def warp(img: Tensor, flow: Tensor, padding_mode: str = "zeros", mode: str = "bilinear") -> Tensor:
    """Backward warp: out(x) = img(x + flow(x)). img (B, C, H, W), flow (B, 2, H, W) in pixels (x, y)."""
    B, _, H, W = img.shape
    if flow.shape != (B, 2, H, W):
        raise InputError(f"warp: flow must have shape {(B, 2, H, W)} to match the image, got {tuple(flow.shape)}")
    flow = flow.float()  # pixel coordinates in float32 even for half-precision images (fp16 steps are 0.125 at 256)
    coords = _pixel_grid(H, W, flow) + rearrange(flow, "b c h w -> b h w c")  # (B, H, W, 2)
    # kornia normalises pixel maps with the align_corners=True convention, so that flag must be passed
    out = remap(img.float(), coords[..., 0], coords[..., 1], mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(img.dtype)  # sampled in float32: grid_sample needs image and grid of one dtype


def compose_flows(flow: Tensor, delta: Tensor) -> Tensor:
    """F ∘ Δ: (F ∘ Δ)(x) = Δ(x) + F(x + Δ(x)), so warp(warp(img, F), Δ) ≈ warp(img, F ∘ Δ) (eq. 7).

    `flow` is what has been applied to the source so far, `delta` the residual flow measured on the warped source.
    Out-of-range samples of F take the border value (the flow field is extended, not zeroed)."""
    return delta + warp(flow, delta, padding_mode="border")


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a flow field to `size` = (H, W), scaling the x/y values by the width/height ratios."""
    h, w = flow.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)  # pixel centres stay aligned
    scale = torch.tensor([W / w, H / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


def upsample_flow(flow: Tensor, factor: int) -> Tensor:
    """(B, 2, h, w) -> (B, 2, h·factor, w·factor), values multiplied by `factor` (pixels of the finer grid)."""
    h, w = flow.shape[-2:]
    return resize_flow(flow, (h * factor, w * factor))


# ---------------------------------------------------------------------------------------------------------------
# Feature extractors


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # up to 8 groups that divide the channels


class ConvEncoder(nn.Module):
    """Small conv encoder to RPA resolution: stem conv, then log2(downsample) stride-2 convs, then a 1×1 to depth D."""

    def __init__(self, in_channels: int, depth: int, downsample: int):
        super().__init__()
        width = max(depth // 2, 8)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), _norm(width), nn.SiLU()]
        for _ in range(int(math.log2(downsample))):
            layers += [nn.Conv2d(width, depth, 3, stride=2, padding=1), _norm(depth), nn.SiLU()]
            width = depth
        layers.append(nn.Conv2d(width, depth, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, D, H/downsample, W/downsample)


# ---------------------------------------------------------------------------------------------------------------
# MapFormer (eq. 5)


def region_attention_mask(height: int, width: int, radii: tuple[int, ...], heads_per_region: int,
                          device=None) -> Tensor | None:
    """(heads, L, L) boolean mask, True where a query token may attend to a key token.

    Head group g only sees keys within Chebyshev distance radii[g] of the query (0 = everywhere): the paper's
    region-specific attention, global -> non-local -> local, with the heads split between the regions.
    Returns None when every region is global (no restriction)."""
    if all(r == 0 for r in radii):
        return None
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.int32),
                            torch.arange(width, device=device, dtype=torch.int32), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    cheb = torch.maximum((ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs())  # (L, L)
    masks = [torch.ones_like(cheb, dtype=torch.bool) if r == 0 else cheb <= r for r in radii]
    return torch.stack(masks).repeat_interleave(heads_per_region, dim=0)  # (heads, L, L)


class RegionAttention(nn.Module):
    """Multi-head attention whose heads are restricted to regions (scaled dot-product, 1/√d).

    `head_radii[i]` is head i's region radius (0 = global). Global heads run unmasked and the restricted heads with
    the boolean mask of `region_attention_mask(h, w, <their radii>)`: the same result as one masked call over all
    heads, but unmasked attention takes the fast kernels (about 9× faster per head on CPU)."""

    def __init__(self, depth: int, head_radii: tuple[int, ...]):
        super().__init__()
        self.num_heads = len(head_radii)
        self.global_heads = [i for i, r in enumerate(head_radii) if r == 0]
        self.restricted_heads = [i for i, r in enumerate(head_radii) if r != 0]
        order = self.global_heads + self.restricted_heads
        self._unpermute = None if order == sorted(order) else [order.index(i) for i in range(self.num_heads)]
        self.to_q = nn.Linear(depth, depth)
        self.to_kv = nn.Linear(depth, 2 * depth)
        self.proj = nn.Linear(depth, depth)

    def forward(self, queries: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """mask: (len(restricted_heads), L, L) boolean, True = may attend; None when no head is restricted."""
        q = rearrange(self.to_q(queries), "b l (h d) -> b h l d", h=self.num_heads)
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        if not self.restricted_heads or mask is None:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        elif not self.global_heads:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            g, r = self.global_heads, self.restricted_heads
            out = torch.cat([F.scaled_dot_product_attention(q[:, g], k[:, g], v[:, g]),
                             F.scaled_dot_product_attention(q[:, r], k[:, r], v[:, r], attn_mask=mask)], dim=1)
            if self._unpermute is not None:
                out = out[:, self._unpermute]
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class MapFormerBlock(nn.Module):
    """One attention layer with residual + LayerNorm, then FFN with residual + LayerNorm (post-norm, as in Fig. 1)."""

    def __init__(self, depth: int, head_radii: tuple[int, ...], ffn_mult: int):
        super().__init__()
        self.attn = RegionAttention(depth, head_radii)
        self.norm1 = nn.LayerNorm(depth)
        self.ffn = nn.Sequential(nn.Linear(depth, ffn_mult * depth), nn.GELU(), nn.Linear(ffn_mult * depth, depth))
        self.norm2 = nn.LayerNorm(depth)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        x = self.norm1(x + self.attn(x, context, mask))
        return self.norm2(x + self.ffn(x))


class MapFormer(nn.Module):
    """eq. 5: region self-attention on the source features, then region cross-attention with target-pose queries
    and source keys/values. Returns (F_S', F_T') as (B, D, h, w) maps."""

    def __init__(self, cfg: RPAConfig):
        super().__init__()
        self.self_attn = MapFormerBlock(cfg.depth, cfg.head_radii, cfg.ffn_mult)
        self.cross_attn = MapFormerBlock(cfg.depth, cfg.head_radii, cfg.ffn_mult)

    def forward(self, source_feat: Tensor, target_feat: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        h, w = source_feat.shape[-2:]
        s = rearrange(source_feat, "b d h w -> b (h w) d")
        t = rearrange(target_feat, "b d h w -> b (h w) d")
        s = self.self_attn(s, s, mask)  # F_S'
        t = self.cross_attn(t, s, mask)  # F_T': pose queries, source keys/values
        to_map = lambda z: rearrange(z, "b (h w) d -> b d h w", h=h, w=w)  # noqa: E731
        return to_map(s), to_map(t)


# ---------------------------------------------------------------------------------------------------------------
# Pose Mapping Aggregator (eq. 6)


def correlation_volume(target_feat: Tensor, source_feat: Tensor, radius: int) -> Tensor:
    """eq. 6: C(x, r) = ReLU(F_T'(x) · F_S'(x + r) / √D) for all |r|∞ ≤ R.

    (B, D, H, W) × 2 -> (B, (2R+1)², H, W); channel k = (dy + R)·(2R+1) + (dx + R). Outside the map F_S' is 0.
    The 1/√D scaling (as in RAFT) keeps the volume's range independent of the depth."""
    B, D, H, W = source_feat.shape
    k = 2 * radius + 1
    windows = F.unfold(source_feat, kernel_size=k, padding=radius)  # (B, D·k², H·W)
    windows = windows.view(B, D, k * k, H, W)
    corr = torch.einsum("bdhw,bdkhw->bkhw", target_feat, windows) / math.sqrt(D)
    return F.relu(corr)


class PoseAggregator(nn.Module):
    """2 convolutions and 1 max-pool (stride 1) from the correlation volume to the residual flow ΔF (pixels).

    The last conv is zero-initialised, so an untrained RPA returns the identity flow."""

    def __init__(self, corr_channels: int, depth: int):
        super().__init__()
        self.conv1 = nn.Conv2d(corr_channels, depth, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(depth, 2, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, corr: Tensor) -> Tensor:
        return self.conv2(self.pool(F.relu(self.conv1(corr))))  # (B, 2, h, w)


# ---------------------------------------------------------------------------------------------------------------
# Recurrent Pose Alignment (eq. 7-9)


class RecurrentPoseAlignment(nn.Module):
    """Estimates the flow aligning the source with the target pose by N recurrent refinements (eq. 7-9)."""

    def __init__(self, cfg: RPAConfig):
        super().__init__()
        self.cfg = cfg
        self.source_encoder = ConvEncoder(cfg.source_channels, cfg.depth, cfg.downsample)
        self.pose_encoder = ConvEncoder(cfg.pose_channels, cfg.depth, cfg.downsample)
        self.mapformer = MapFormer(cfg)
        self.aggregator = PoseAggregator(cfg.corr_channels, cfg.depth)
        self._mask_cache: tuple[tuple, Tensor | None] | None = None  # last region mask: built once per grid size

    def attention_mask(self, height: int, width: int, device) -> Tensor | None:
        """Mask of the restricted (non-global) heads on the RPA grid, as `RegionAttention` takes it. Cached: it only
        depends on the grid size and the config."""
        restricted = tuple(r for r in self.cfg.region_radii if r != 0)
        key = (height, width, str(device), restricted, self.cfg.heads_per_region)
        if self._mask_cache is None or self._mask_cache[0] != key:
            mask = region_attention_mask(height, width, restricted, self.cfg.heads_per_region, device) \
                if restricted else None
            self._mask_cache = (key, mask)
        return self._mask_cache[1]

    def forward(self, source: Tensor, pose_map: Tensor, iterations: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> RPAOutput:
        """source (B, C_s, H, W) and pose_map (B, C_p, H, W), both in diffusion space.

        `progress(i, n)` is called after each iteration i = 1..n (ComfyUI progress bar / cancellation)."""
        cfg = self.cfg
        n_iter = cfg.iterations if iterations is None else int(iterations)
        self._check_inputs(source, pose_map, n_iter)
        H, W = source.shape[-2:]
        s = cfg.downsample
        # pad right/bottom to a multiple of the downsampling (pixel coordinates unchanged), crop flows back
        pad_h, pad_w = -H % s, -W % s
        src_p = F.pad(source, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else source
        pose_p = F.pad(pose_map, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else pose_map

        target_feat = self.pose_encoder(pose_p)  # F_T, (B, D, h, w)
        source_feat0 = self.source_encoder(src_p)  # F_S = Encoder(I_S)
        h, w = target_feat.shape[-2:]
        mask = self.attention_mask(h, w, source.device)

        flow_lr = torch.zeros(source.shape[0], 2, h, w, device=source.device)  # F^0 = identity; float32 flows
        out = RPAOutput(flow=None)  # type: ignore[arg-type]
        source_feat, warped_p = source_feat0, src_p
        for n in range(n_iter):
            if n > 0:  # eq. 9: features of the source warped by the current flow
                if cfg.warp_space == "image":
                    source_feat = self.source_encoder(warped_p)
                else:
                    source_feat = warp(source_feat0, flow_lr)
            fs, ft = self.mapformer(source_feat, target_feat, mask)  # eq. 5
            delta = self.aggregator(correlation_volume(ft, fs, cfg.corr_radius))  # eq. 6 -> ΔF^{n+1}
            flow_lr = compose_flows(flow_lr, delta)  # eq. 7: F^{n+1} = F^n ∘ ΔF^{n+1}
            flow_p = upsample_flow(flow_lr, s)  # (B, 2, H+pad_h, W+pad_w), diffusion pixels
            warped_p = warp(src_p, flow_p)
            out.flows.append(flow_p[..., :H, :W])
            out.warped.append(warped_p[..., :H, :W])
            if progress is not None:
                progress(n + 1, n_iter)
        out.flow, out.flow_lowres = out.flows[-1], flow_lr
        return out

    def _check_inputs(self, source: Tensor, pose_map: Tensor, n_iter: int) -> None:
        cfg = self.cfg
        if source.ndim != 4 or source.shape[1] != cfg.source_channels:
            raise InputError(
                f"RPA source must be (B, {cfg.source_channels}, H, W) in diffusion space, got {tuple(source.shape)}"
            )
        if pose_map.ndim != 4 or pose_map.shape[1] != cfg.pose_channels:
            raise InputError(
                f"RPA pose_map must be (B, {cfg.pose_channels}, H, W) in diffusion space, got {tuple(pose_map.shape)}"
            )
        if pose_map.shape[0] != source.shape[0] or pose_map.shape[-2:] != source.shape[-2:]:
            raise InputError(
                f"RPA source {tuple(source.shape)} and pose_map {tuple(pose_map.shape)} must have the same batch "
                f"size and spatial size"
            )
        if n_iter < 1:
            raise InputError(f"RPA iterations must be >= 1, got {n_iter}")


def rpa_warp_loss(outputs: RPAOutput, target: Tensor, gamma: float = 0.8) -> Tensor:
    """Auxiliary RPA training loss — OUR ADDITION, not in the paper (there RPA learns only from the diffusion loss).

    γ-weighted L1 between each iteration's warped source and the target (diffusion space), RAFT-style: iteration
    n of N gets weight γ^(N-n), weights normalised to sum to 1 so the scale does not depend on N."""
    n = len(outputs.warped)
    if n == 0:
        raise InputError("rpa_warp_loss needs at least one RPA iteration in `outputs.warped`")
    if target.shape != outputs.warped[-1].shape:
        raise InputError(
            f"rpa_warp_loss: target shape {tuple(target.shape)} must equal the warped source shape "
            f"{tuple(outputs.warped[-1].shape)} (diffusion space)"
        )
    weights = [gamma ** (n - 1 - i) for i in range(n)]
    total = sum(w * (warped - target).abs().mean() for w, warped in zip(weights, outputs.warped))
    return total / sum(weights)
