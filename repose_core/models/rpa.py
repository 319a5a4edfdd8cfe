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
MapFormer attention: global heads run full attention through torch SDPA (flash / memory-efficient kernels); the
region-restricted heads attend over their (2r+1)² neighbourhoods only (`neighbourhood_attention`), so their memory
grows with L·(2r+1)², not L² (L = h·w tokens). `RegionAttention.impl = "masked"` keeps the plain L×L masked
definition as the reference; both give the same outputs with the same parameters (tests/test_rpa.py). Time and
memory of both: bench/bench_rpa.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
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


def resize_flow(flow: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
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
    Returns None when every region is global (no restriction). This is the plain definition: `RegionAttention`
    uses it only with `impl="masked"` (the reference the neighbourhood implementation is tested against)."""
    if all(r == 0 for r in radii):
        return None
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.int32),
                            torch.arange(width, device=device, dtype=torch.int32), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    cheb = torch.maximum((ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs())  # (L, L)
    masks = [torch.ones_like(cheb, dtype=torch.bool) if r == 0 else cheb <= r for r in radii]
    return torch.stack(masks).repeat_interleave(heads_per_region, dim=0)  # (heads, L, L)


def _row_bands(x_pad: Tensor, height: int, k: int) -> Tensor:
    """(B, h, H, k·W_p, d) view of x_pad (B, h, H + k - 1, W_p, d): band y = padded rows y .. y + k - 1, i.e. every
    key that can be a neighbour of a query in row y (rows are contiguous, so each band is one block; no copy)."""
    B, h, _, Wp, d = x_pad.shape
    sB, sh, sy, sx, sd = x_pad.stride()
    assert sx == d * sd and sy == Wp * sx, "x_pad must be contiguous in its last three dims"
    return x_pad.as_strided((B, h, height, k * Wp, d), (sB, sh, sy, sx, sd), x_pad.storage_offset())


def _diagonal_band(full: Tensor, width: int, k: int) -> Tensor:
    """(B, h, H, W, k, k) view of full (B, h, H, W, k, W_p) (contiguous): [.., x, j, i] = full[.., x, j, x + i], i.e.
    the k columns of padded key row j that lie within the query's neighbourhood."""
    B, h, H, W, _, Wp = full.shape
    sB, sh, sy, sx, sj, si = full.stride()
    return full.as_strided((B, h, H, W, k, k), (sB, sh, sy, sx + si, sj, si), full.storage_offset())


def _outside_mask(height: int, width: int, radius: int, device) -> Tensor:
    """(H, W, k, k) bool, True where neighbour (y + j - r, x + i - r) of (y, x) lies outside the map."""
    off = torch.arange(-radius, radius + 1, device=device)
    ys = torch.arange(height, device=device)[:, None] + off  # (H, k)
    xs = torch.arange(width, device=device)[:, None] + off  # (W, k)
    inside = ((ys >= 0) & (ys < height))[:, None, :, None] & ((xs >= 0) & (xs < width))[None, :, None, :]
    return ~inside


class _NeighbourhoodAttention(torch.autograd.Function):
    """softmax(q·k/√d) v over the k² = (2r+1)² keys within Chebyshev distance r of each query (keys outside the map
    do not exist, as in the masked definition). q, k, v: (B, h, H, W, d) -> (B, h, H, W, d).

    Per query row y, one matrix product with the band of padded key rows y-r .. y+r gives (W, k·W_p) scores, of
    which the diagonal band of width k is kept (W_p = W + 2r: (W_p / k)× the needed flops, but plain GEMMs and no
    (2r+1)²-fold copies of the keys). Only q, k, v and the (B, h, H, W, k, k) probabilities are saved: memory grows
    with L·k², never L²; the (W, k·W_p) products are transient and rebuilt by the backward pass."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, radius: int) -> Tensor:
        B, h, H, W, d = q.shape
        kk, Wp = 2 * radius + 1, W + 2 * radius
        pad = (0, 0, radius, radius, radius, radius)
        k_band = _row_bands(F.pad(k, pad), H, kk)  # (B, h, H, k·W_p, d)
        full = torch.matmul(q, k_band.transpose(-1, -2)).view(B, h, H, W, kk, Wp)
        scores = _diagonal_band(full, W, kk).mul(d ** -0.5)  # (B, h, H, W, k, k)
        del full
        scores.masked_fill_(_outside_mask(H, W, radius, q.device), float("-inf"))
        softmax_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        probs = torch.softmax(scores.flatten(-2), dim=-1, dtype=softmax_dtype).to(q.dtype).view_as(scores)
        del scores
        out = torch.matmul(_band_to_full(probs, Wp).flatten(-2), _row_bands(F.pad(v, pad), H, kk))  # (B,h,H,W,d)
        ctx.save_for_backward(q, k, v, probs)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, probs = ctx.saved_tensors
        r = ctx.radius
        B, h, H, W, d = q.shape
        kk, Wp = 2 * r + 1, W + 2 * r
        pad = (0, 0, r, r, r, r)
        k_band, v_band = _row_bands(F.pad(k, pad), H, kk), _row_bands(F.pad(v, pad), H, kk)
        grad_out = grad_out.contiguous()
        grad_p = _diagonal_band(torch.matmul(grad_out, v_band.transpose(-1, -2)).view(B, h, H, W, kk, Wp), W, kk)
        # softmax backward: dS = P (dP - Σ P dP) (outside keys have P = 0, so dS = 0 there), times the 1/√d scale
        grad_s = probs * (grad_p - (probs * grad_p).sum(dim=(-2, -1), keepdim=True)) * d ** -0.5
        del grad_p
        grad_s_full = _band_to_full(grad_s, Wp).flatten(-2)  # (B, h, H, W, k·W_p)
        del grad_s
        grad_q = torch.matmul(grad_s_full, k_band) if ctx.needs_input_grad[0] else None
        grad_k = grad_v = None
        if ctx.needs_input_grad[1]:
            grad_k = _fold_bands(torch.matmul(grad_s_full.transpose(-1, -2), q), H, W, r)
        if ctx.needs_input_grad[2]:
            grad_v = _fold_bands(torch.matmul(_band_to_full(probs, Wp).flatten(-2).transpose(-1, -2), grad_out),
                                 H, W, r)
        return grad_q, grad_k, grad_v, None


def _band_to_full(band: Tensor, Wp: int) -> Tensor:
    """Inverse of `_diagonal_band`: (B, h, H, W, k, k) -> (B, h, H, W, k, W_p), zero off the band."""
    B, h, H, W, kk, _ = band.shape
    full = band.new_zeros(B, h, H, W, kk, Wp)
    _diagonal_band(full, W, kk).copy_(band)
    return full


def _fold_bands(grad_band: Tensor, height: int, width: int, radius: int) -> Tensor:
    """Adjoint of `_row_bands` + padding: (B, h, H, k·W_p, d) per-band gradients -> (B, h, H, W, d)."""
    B, h, H, _, d = grad_band.shape
    kk, Wp = 2 * radius + 1, width + 2 * radius
    grad_band = grad_band.view(B, h, H, kk, Wp, d)
    grad_pad = grad_band.new_zeros(B, h, H + 2 * radius, Wp, d)
    for j in range(kk):  # band y covers padded rows y .. y + 2r: row j of every band is padded row y + j
        grad_pad[:, :, j:j + H] += grad_band[:, :, :, j]
    return grad_pad[:, :, radius:radius + height, radius:radius + width]


def neighbourhood_attention(q: Tensor, k: Tensor, v: Tensor, radius: int) -> Tensor:
    """Attention of every query over the keys within Chebyshev distance `radius` on the (H, W) grid.

    q, k, v: (B, heads, H, W, d) -> (B, heads, H, W, d). Equal to `F.scaled_dot_product_attention` with the mask of
    `region_attention_mask` (tested), in O(L·(2r+1)²) memory instead of O(L²)."""
    if radius < 1:
        raise InputError(f"neighbourhood_attention: radius must be >= 1, got {radius}")
    return _NeighbourhoodAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), int(radius))


ATTENTION_IMPLS = ("auto", "neighbourhood", "masked")
MASKED_MAX_TOKENS = 256  # impl "auto": the masked form is faster on grids this small (tiny: 16×11), memory trivial


class RegionAttention(nn.Module):
    """Multi-head attention whose heads are restricted to regions (scaled dot-product, 1/√d).

    `head_radii[i]` is head i's region radius (0 = global). Global heads run full attention through torch's SDPA
    (flash / memory-efficient kernels, no L×L scores kept). Restricted heads, grouped by radius, attend over their
    (2r+1)² neighbourhoods only (`neighbourhood_attention`). `impl = "masked"` instead runs them as full attention
    with the boolean (heads, L, L) mask of `region_attention_mask` — the plain definition, kept as the reference
    for tests and benchmarks; "auto" (default) uses it on grids of at most MASKED_MAX_TOKENS tokens, where it is
    faster, and the neighbourhoods above. All give the same output with the same parameters."""

    def __init__(self, depth: int, head_radii: tuple[int, ...]):
        super().__init__()
        self.num_heads = len(head_radii)
        self.head_radii = tuple(head_radii)
        self.global_heads = [i for i, r in enumerate(head_radii) if r == 0]
        self.restricted_heads = [i for i, r in enumerate(head_radii) if r != 0]
        self.radius_groups = {r: [i for i, ri in enumerate(head_radii) if ri == r]
                              for r in sorted(set(head_radii)) if r != 0}
        order = self.global_heads + [i for heads in self.radius_groups.values() for i in heads]  # output order
        self._unpermute = None if order == sorted(order) else [order.index(i) for i in range(self.num_heads)]
        self.impl = "auto"  # not a parameter: switching it never changes the state dict
        self._mask_cache: tuple[tuple, Tensor | None] | None = None  # impl="masked": mask of the last grid size
        self.to_q = nn.Linear(depth, depth)
        self.to_kv = nn.Linear(depth, 2 * depth)
        self.proj = nn.Linear(depth, depth)

    def forward(self, queries: Tensor, context: Tensor, size: tuple[int, int]) -> Tensor:
        """queries, context: (B, L, D) tokens of an (H, W) = `size` grid, row-major (L = H·W)."""
        H, W = size
        q = rearrange(self.to_q(queries), "b l (h d) -> b h l d", h=self.num_heads)
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        if not self.restricted_heads:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        else:
            impl = self.impl
            if impl == "auto":
                impl = "masked" if H * W <= MASKED_MAX_TOKENS else "neighbourhood"
            if impl == "masked":
                parts = [self._masked(q, k, v, H, W)]
            elif impl == "neighbourhood":
                parts = [self._neighbourhood(q, k, v, H, W, r, heads) for r, heads in self.radius_groups.items()]
            else:
                raise InputError(f"RegionAttention.impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")
            if self.global_heads:
                g = self.global_heads
                parts.insert(0, F.scaled_dot_product_attention(q[:, g], k[:, g], v[:, g]))
            out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            if self._unpermute is not None:
                out = out[:, self._unpermute]
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))

    def _neighbourhood(self, q, k, v, H, W, radius, heads) -> Tensor:
        grid = lambda t: rearrange(t[:, heads], "b h (y x) d -> b h y x d", y=H, x=W)  # noqa: E731
        out = neighbourhood_attention(grid(q), grid(k), grid(v), radius)
        return rearrange(out, "b h y x d -> b h (y x) d")

    def _masked(self, q, k, v, H, W) -> Tensor:
        r = self.restricted_heads
        key = (H, W, str(q.device))
        if self._mask_cache is None or self._mask_cache[0] != key:
            radii = tuple(self.head_radii[i] for i in r)
            self._mask_cache = (key, region_attention_mask(H, W, radii, 1, q.device))
        # restricted heads are ordered by head index here; regroup to the radius-group order of the other impl
        out = F.scaled_dot_product_attention(q[:, r], k[:, r], v[:, r], attn_mask=self._mask_cache[1])
        grouped = [i for heads in self.radius_groups.values() for i in heads]
        return out[:, [r.index(i) for i in grouped]] if grouped != r else out


class MapFormerBlock(nn.Module):
    """One attention layer with residual + LayerNorm, then FFN with residual + LayerNorm (post-norm, as in Fig. 1)."""

    def __init__(self, depth: int, head_radii: tuple[int, ...], ffn_mult: int):
        super().__init__()
        self.attn = RegionAttention(depth, head_radii)
        self.norm1 = nn.LayerNorm(depth)
        self.ffn = nn.Sequential(nn.Linear(depth, ffn_mult * depth), nn.GELU(), nn.Linear(ffn_mult * depth, depth))
        self.norm2 = nn.LayerNorm(depth)

    def forward(self, x: Tensor, context: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.norm1(x + self.attn(x, context, size))
        return self.norm2(x + self.ffn(x))


class MapFormer(nn.Module):
    """eq. 5: region self-attention on the source features, then region cross-attention with target-pose queries
    and source keys/values. Returns (F_S', F_T') as (B, D, h, w) maps."""

    def __init__(self, cfg: RPAConfig):
        super().__init__()
        self.self_attn = MapFormerBlock(cfg.depth, cfg.head_radii, cfg.ffn_mult)
        self.cross_attn = MapFormerBlock(cfg.depth, cfg.head_radii, cfg.ffn_mult)

    def forward(self, source_feat: Tensor, target_feat: Tensor) -> tuple[Tensor, Tensor]:
        h, w = source_feat.shape[-2:]
        s = rearrange(source_feat, "b d h w -> b (h w) d")
        t = rearrange(target_feat, "b d h w -> b (h w) d")
        s = self.self_attn(s, s, (h, w))  # F_S'
        t = self.cross_attn(t, s, (h, w))  # F_T': pose queries, source keys/values
        to_map = lambda z: rearrange(z, "b (h w) d -> b d h w", h=h, w=w)  # noqa: E731
        return to_map(s), to_map(t)


# ---------------------------------------------------------------------------------------------------------------
# Pose Mapping Aggregator (eq. 6)


def correlation_volume(target_feat: Tensor, source_feat: Tensor, radius: int) -> Tensor:
    """eq. 6: C(x, r) = ReLU(F_T'(x) · F_S'(x + r) / √D) for all |r|∞ ≤ R.

    (B, D, H, W) × 2 -> (B, (2R+1)², H, W); channel k = (dy + R)·(2R+1) + (dx + R). Outside the map F_S' is 0.
    The 1/√D scaling (as in RAFT) keeps the volume's range independent of the depth. Computed one offset row at a
    time (`_Correlation`): memory O(D·L·(2R+1)) transient, and only the two feature maps are kept for the backward
    pass, not the D·(2R+1)²·L unfolded windows."""
    return F.relu(_Correlation.apply(target_feat, source_feat, int(radius)))


def _width_windows(x_pad: Tensor, dy: int, height: int, width: int) -> Tensor:
    """(B, D, H, W, k) view: [..., y, x, i] = x_pad[..., y + dy, x + i] of a (B, D, H + 2R, W + 2R) padded map."""
    return x_pad[:, :, dy:dy + height].unfold(3, x_pad.shape[-1] - width + 1, 1)


class _Correlation(torch.autograd.Function):
    """Linear part of eq. 6, C(x, (dy, dx)) = F_T'(x) · F_S'(x + (dx, dy)) / √D, without the ReLU."""

    @staticmethod
    def forward(ctx, target_feat: Tensor, source_feat: Tensor, radius: int) -> Tensor:
        B, D, H, W = source_feat.shape
        k = 2 * radius + 1
        src_pad = F.pad(source_feat, (radius,) * 4)
        corr = target_feat.new_empty(B, k, k, H, W)
        for dy in range(k):  # offset row dy - R: a (B, D, H, W, k) window of shifted source features
            corr[:, dy] = torch.einsum("bdhw,bdhwk->bkhw", target_feat, _width_windows(src_pad, dy, H, W))
        ctx.save_for_backward(target_feat, source_feat)
        ctx.radius = radius
        return corr.view(B, k * k, H, W).div_(math.sqrt(D))

    @staticmethod
    def backward(ctx, grad: Tensor):
        target_feat, source_feat = ctx.saved_tensors
        r = ctx.radius
        B, D, H, W = source_feat.shape
        k = 2 * r + 1
        grad = (grad / math.sqrt(D)).view(B, k, k, H, W)
        src_pad = F.pad(source_feat, (r,) * 4)
        grad_t = torch.zeros_like(target_feat) if ctx.needs_input_grad[0] else None
        grad_s_pad = torch.zeros_like(src_pad) if ctx.needs_input_grad[1] else None
        for dy in range(k):
            g = grad[:, dy]  # (B, k, H, W): offsets (dy, 0..k-1)
            if grad_t is not None:
                grad_t += torch.einsum("bkhw,bdhwk->bdhw", g, _width_windows(src_pad, dy, H, W))
            if grad_s_pad is not None:  # scatter back to x + dx: the adjoint of the width unfold
                win = torch.einsum("bkhw,bdhw->bdhwk", g, target_feat)
                grad_s_pad[:, :, dy:dy + H] += torch.ops.aten.unfold_backward(win, [B, D, H, W + 2 * r], 3, k, 1)
        grad_s = grad_s_pad[..., r:r + H, r:r + W] if grad_s_pad is not None else None
        return grad_t, grad_s, None


class PoseAggregator(nn.Module):
    """2 convolutions and 1 max-pool (stride 1) from the correlation volume to the residual flow ΔF (pixels).

    The last conv is zero-initialised, so an untrained RPA returns the identity flow."""

    def __init__(self, corr_channels: int, depth: int):
        super().__init__()
        self.conv1 = nn.Conv2d(corr_channels, depth, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(depth, 2, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        assert self.conv2.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(self.conv2.bias)

    def forward(self, corr: Tensor) -> Tensor:
        return self.conv2(self.pool(F.relu(self.conv1(corr))))  # (B, 2, h, w)


# ---------------------------------------------------------------------------------------------------------------
# Recurrent Pose Alignment (eq. 7-9)


class RecurrentPoseAlignment(nn.Module):
    """Estimates the flow aligning the source with the target pose by N recurrent refinements (eq. 7-9)."""

    def __init__(self, cfg: RPAConfig):
        super().__init__()
        self.config = cfg
        self.source_encoder = ConvEncoder(cfg.source_channels, cfg.depth, cfg.downsample)
        self.pose_encoder = ConvEncoder(cfg.pose_channels, cfg.depth, cfg.downsample)
        self.mapformer = MapFormer(cfg)
        self.aggregator = PoseAggregator(cfg.corr_channels, cfg.depth)
        self.checkpointing: bool | None = None  # activation checkpoints when training (`_run`); not in the state dict
        self._checkpoint_now = False

    def set_attention_impl(self, impl: str) -> None:
        """"auto" (default: masked on tiny grids, else neighbourhood), "neighbourhood" (O(L·(2r+1)²) memory) or
        "masked" (the L×L reference); same outputs, same parameters: the choice is not in the state dict."""
        if impl not in ATTENTION_IMPLS:
            raise InputError(f"RPA attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for block in (self.mapformer.self_attn, self.mapformer.cross_attn):
            block.attn.impl = impl
            block.attn._mask_cache = None

    def forward(self, source: Tensor, pose_map: Tensor, iterations: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> RPAOutput:
        """source (B, C_s, H, W) and pose_map (B, C_p, H, W), both in diffusion space.

        `progress(i, n)` is called after each iteration i = 1..n (ComfyUI progress bar / cancellation)."""
        cfg = self.config
        n_iter = cfg.iterations if iterations is None else int(iterations)
        self._check_inputs(source, pose_map, n_iter)
        H, W = source.shape[-2:]
        s = cfg.downsample
        # pad right/bottom to a multiple of the downsampling (pixel coordinates unchanged), crop flows back
        pad_h, pad_w = -H % s, -W % s
        src_p = F.pad(source, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else source
        pose_p = F.pad(pose_map, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else pose_map

        h, w = (H + pad_h) // s, (W + pad_w) // s  # RPA grid
        self._checkpoint_now = self._use_checkpoints(h * w)
        target_feat = self._run(self.pose_encoder, pose_p)  # F_T, (B, D, h, w)
        source_feat0 = self._run(self.source_encoder, src_p)  # F_S = Encoder(I_S)

        flow_lr = torch.zeros(source.shape[0], 2, h, w, device=source.device)  # F^0 = identity; float32 flows
        out = RPAOutput(flow=None)  # type: ignore[arg-type]
        warped_p = src_p
        for n in range(n_iter):
            delta = self._run(self._residual_flow, n, warped_p, source_feat0, flow_lr, target_feat)  # ΔF^{n+1}
            flow_lr = compose_flows(flow_lr, delta)  # eq. 7: F^{n+1} = F^n ∘ ΔF^{n+1}
            flow_p = upsample_flow(flow_lr, s)  # (B, 2, H+pad_h, W+pad_w), diffusion pixels
            warped_p = warp(src_p, flow_p)
            out.flows.append(flow_p[..., :H, :W])
            out.warped.append(warped_p[..., :H, :W])
            if progress is not None:
                progress(n + 1, n_iter)
        out.flow, out.flow_lowres = out.flows[-1], flow_lr
        return out

    def _residual_flow(self, n: int, warped_p: Tensor, source_feat0: Tensor, flow_lr: Tensor,
                       target_feat: Tensor) -> Tensor:
        """One iteration's ΔF^{n+1} (eq. 5, 6, 9) from the current warp of the source."""
        source_feat = source_feat0
        if n > 0:  # eq. 9: features of the source warped by the current flow
            source_feat = self.source_encoder(warped_p) if self.config.warp_space == "image" else warp(source_feat0,
                                                                                                     flow_lr)
        fs, ft = self.mapformer(source_feat, target_feat)  # eq. 5
        return self.aggregator(correlation_volume(ft, fs, self.config.corr_radius))  # eq. 6

    CHECKPOINT_MIN_TOKENS = 2048  # checkpointing=None: checkpoint from this RPA grid size on (deepfashion256: 2816)

    def _use_checkpoints(self, tokens: int) -> bool:
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return False
        return tokens >= self.CHECKPOINT_MIN_TOKENS if self.checkpointing is None else bool(self.checkpointing)

    def _run(self, fn, *args):
        """fn(*args); when training with checkpoints, as an activation checkpoint: only the inputs are kept and the
        activations are recomputed in the backward pass (same values: RPA has no randomness), so RPA's training
        memory no longer grows with the encoders' full-resolution activations and the N iterations' attention and
        correlation states (deepfashion256, batch 1: 1072 -> 443 MiB, bench/bench_rpa.py --attention) for ~1.4×
        the backward time. `checkpointing`: None (default) = on from CHECKPOINT_MIN_TOKENS grid tokens, where the
        memory matters; True / False = always / never."""
        if self._checkpoint_now:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _check_inputs(self, source: Tensor, pose_map: Tensor, n_iter: int) -> None:
        cfg = self.config
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
    return cast(Tensor, total / sum(weights))  # n >= 1 terms: a tensor, not sum()'s start value 0
