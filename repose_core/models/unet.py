"""PIDM's denoiser network (BeatGANs UNet + texture encoder), rebuilt key-for-key.

PIDM (Bhunia et al., CVPR 2023) conditions a pixel-space UNet on the target pose by channel concatenation and on the
source appearance through a *texture encoder* whose multi-scale features enter the UNet by cross-attention. RePoseDM
(Khandelwal, arXiv 2310.16074, Sec. 3) keeps that network and only changes what is fed to the cross-attention: features
of the source after Recurrent Pose Alignment. So this module separates the two halves:

    feats = net.encode(src)                  # texture encoder, one feature map per encoder input block
    out   = net.denoise(cat(x_t, pose), t, feats)

and `denoise` does not care where `feats` came from, as long as each consumed map has the channels `encode` gives.

Faithfulness notes (facts measured on the reference code, see shared/fixtures/README.md section B):
- timestep embedding is cat([cos, sin]) (cos first) of raw t, no rescaling;
- a ResBlock modulates GN(h)·(1+scale)+shift with the time embedding only; the texture condition never reaches it;
- attention blocks are cross-attention only (q from GN(x), k/v from the raw encoder feature of the same level);
- the encoder is a copy of the UNet input path (no time conditioning, no attention, no middle block);
- GroupNorm runs in float32 with min(32, C) groups.
Parameters PIDM creates but never uses are kept so checkpoints load strictly; `unused_parameter_names()` lists them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..errors import InputError

__all__ = [
    "UNetConfig",
    "PIDMNet",
    "TextureEncoder",
    "ResBlock",
    "CrossAttentionBlock",
    "timestep_embedding",
    "pidm_deepfashion256_config",
    "pidm_small_config",
]


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a PIDM-layout denoiser. Field names follow PIDM's `BeatGANsAutoencConfig`.

    Defaults are PIDM's released DeepFashion 256×256 model (852 state_dict keys, 180,355,718 parameters).
    """

    image_size: int = 256                   # nominal resolution that decides which levels get attention; inputs
                                            # of any size divisible by 2**(len(channel_mult)-1) run on the same net
    in_channels: int = 23                   # UNet input: noisy image (3) then pose map (20), concatenated in that order
    model_channels: int = 128               # base width; also the sinusoidal timestep-embedding width
    out_channels: int = 6                   # ε (3) + learned-variance interpolation v (3), improved-DDPM style
    num_res_blocks: int = 2                 # res blocks per encoder level; decoder levels have one more
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature resolutions that get a cross-attention block
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)    # width multiplier per level; len = number of levels
    embed_channels: int = 512               # time-embedding MLP width
    dropout: float = 0.1                    # inside every ResBlock (UNet and texture encoder)
    num_heads: int = 1                      # attention heads (PIDM: 1)
    num_head_channels: int = -1             # if > 0, heads = channels // num_head_channels (overrides num_heads)
    resblock_updown: bool = True            # resample with ResBlocks (True, PIDM) or plain (conv/pool) layers
    conv_resample: bool = True              # plain resample layers have a conv (only when resblock_updown=False)
    resnet_two_cond: bool = True            # creates the (unused) cond_emb_layers of every ResBlock, as PIDM does
    resnet_use_zero_module: bool = True     # zero-init output convs / projections at construction (BeatGANs)
    encoder_in_channels: int = 3            # texture-encoder input (RGB for PIDM; RePose may use latent channels)
    use_checkpoint: bool = False            # activation checkpointing per block while training (saves memory)

    def __post_init__(self):
        def need(ok: bool, field: str, what: str):
            if not ok:
                raise InputError(f"UNetConfig.{field} = {getattr(self, field)!r}: {what}")

        for name in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "embed_channels",
                     "encoder_in_channels", "image_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive integer")
        need(len(self.channel_mult) > 0 and all(isinstance(m, (int, float)) and m > 0 for m in self.channel_mult),
             "channel_mult", "must be a non-empty tuple of positive multipliers")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        factor = 2 ** (len(self.channel_mult) - 1)
        need(self.image_size % factor == 0, "image_size",
             f"must be divisible by 2**(len(channel_mult)-1) = {factor}")
        for ch in {self.model_channels} | {int(m * self.model_channels) for m in self.channel_mult}:
            need(ch % min(32, ch) == 0, "model_channels",
                 f"level width {ch} is not divisible by its GroupNorm group count {min(32, ch)}")
            heads = ch // self.num_head_channels if self.num_head_channels > 0 else self.num_heads
            need(heads >= 1 and ch % heads == 0, "num_heads", f"level width {ch} is not divisible into {heads} heads")

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Nominal feature resolution of each level (image_size, /2, /4, ...)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        """Inverse of `to_dict` (JSON lists become tuples). Unknown fields are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown UNetConfig field(s) {unknown}; accepted fields: {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def pidm_deepfashion256_config(**overrides) -> UNetConfig:
    """PIDM's released DeepFashion 256×256 model (`config/diffconfig.py::get_model_conf`)."""
    return UNetConfig(**overrides)


def pidm_small_config(**overrides) -> UNetConfig:
    """The reduced config of the PIDM reference fixture (2,940,966 parameters); handy for tests."""
    base: dict[str, Any] = dict(image_size=64, model_channels=32, channel_mult=(1, 1, 2, 2),
                                attention_resolutions=(16, 8), embed_channels=128, dropout=0.0)
    base.update(overrides)
    return UNetConfig(**base)


# ----------------------------------------------------------------------------------------------------------------
# Layers


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, PIDM order: cat([cos, sin]).

    f_i = exp(-ln(max_period) · i / half), i = 0..half-1; raw t is used (no 1000/T rescale).
    t: (B,) -> (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with min(32, C) groups, computed in float32 whatever the model dtype (as the reference does)."""

    def __init__(self, channels: int):
        super().__init__(min(32, channels), channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _downsample(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class TimeEmbed(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear. Nested as `time_embed.time_embed.*` like PIDM's TimeStyleSeperateEmbed."""

    def __init__(self, time_channels: int, out_channels: int):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, out_channels), nn.SiLU(),
                                        nn.Linear(out_channels, out_channels))

    def forward(self, t_sinusoidal: Tensor) -> Tensor:
        return self.time_embed(t_sinusoidal)


class ResBlock(nn.Module):
    """BeatGANs residual block: GN-SiLU-[resample]-conv, then GN·(1+scale)+shift (time), SiLU, dropout, conv.

    `up`/`down` resample both branches between the first SiLU and conv (nearest ×2 / 2×2 average pool).
    `has_lateral` blocks (decoder) take cat([h, skip]) as input. With `emb=None` (texture encoder) the modulation is
    skipped. `cond_emb_layers` exists only for checkpoint compatibility: PIDM never feeds it (its sequential wrapper
    passes cond=None to ResBlocks), so it is unused.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None, *,
                 up: bool = False, down: bool = False, two_cond: bool = True, zero_init: bool = True):
        super().__init__()
        out_channels = out_channels or channels
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = _upsample if up else _downsample if down else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        if two_cond:
            # Unused: the texture condition reaches the UNet through cross-attention only.
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(out_channels, out_channels))
        out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero_(out_conv) if zero_init else out_conv)
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Optional[Tensor] = None, lateral: Optional[Tensor] = None) -> Tensor:
        if lateral is not None:
            x = torch.cat([x, lateral], dim=1)          # (B, C_h + C_skip, H, W), h first
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        norm, act, drop, conv = self.out_layers
        h = norm(h)
        if emb is not None:
            scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = conv(drop(act(h)))
        return self.skip_connection(x) + h


class CrossAttentionBlock(nn.Module):
    """PIDM's AttentionBlock: x + proj_out2(Attention(q = to_q(GN(x)), [k; v] = to_kv(cond))).

    The condition is the raw (un-normalised) texture-encoder feature; key positions may differ from query positions.
    q and k are each scaled by d^-1/4 in the reference, i.e. plain softmax(q·k/√d) = SDPA's default scale; the fused
    SDPA kernels accumulate the softmax in float32, as the reference does. `qkv` and `proj_out1` belong to PIDM's
    self-attention branch, which is commented out there: kept for checkpoint compatibility, unused.
    """

    def __init__(self, channels: int, num_heads: int = 1, zero_init: bool = True):
        super().__init__()
        self.channels, self.num_heads = channels, num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)        # unused (self-attention branch disabled in PIDM)
        self.to_kv = nn.Conv1d(channels, 2 * channels, 1)
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.proj_out1 = nn.Conv1d(channels, channels, 1)      # unused (self-attention branch disabled in PIDM)
        self.proj_out2 = nn.Conv1d(channels, channels, 1)
        if zero_init:
            _zero_(self.proj_out1), _zero_(self.proj_out2)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q = self.to_q(self.norm(x.reshape(B, C, H * W)))                       # (B, C, Tq)
        k, v = self.to_kv(cond.to(x.dtype).flatten(2)).chunk(2, dim=1)         # (B, C, Tk) each
        q, k, v = (rearrange(a, "b (h d) n -> b h n d", h=self.num_heads) for a in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v)                             # (B, heads, Tq, d)
        a = rearrange(a, "b h n d -> b (h d) n")
        return x + self.proj_out2(a).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Plain downsampling (only when resblock_updown=False): stride-2 conv or 2×2 average pool."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Plain upsampling (only when resblock_updown=False): nearest ×2, then an optional 3×3 conv."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = _upsample(x)
        return self.conv(x) if hasattr(self, "conv") else x


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / output_blocks / middle_block (PIDM's TimestepEmbedSequential).

    ResBlocks get the time embedding (the first one also the decoder skip), attention blocks get the encoder
    feature, anything else just x.
    """

    def forward(self, x: Tensor, emb: Optional[Tensor] = None, cond: Optional[Tensor] = None,
                lateral: Optional[Tensor] = None) -> Tensor:
        for i, layer in enumerate(self):
            if isinstance(layer, ResBlock):
                x = layer(x, emb, lateral if i == 0 else None)
            elif isinstance(layer, CrossAttentionBlock):
                x = layer(x, cond)
            else:
                x = layer(x)
        return x

    @property
    def has_attention(self) -> bool:
        return any(isinstance(layer, CrossAttentionBlock) for layer in self)


def _build_input_path(cfg: UNetConfig, in_channels: int, attention: bool) -> tuple[nn.ModuleList, list[int], list[int]]:
    """Conv stem + per level `num_res_blocks` ResBlocks (+ attention on the last one at attention resolutions)
    + a downsampling block between levels. Returns (blocks, channels per block, downsampling factor per block)."""
    res_kwargs = dict(two_cond=cfg.resnet_two_cond, zero_init=cfg.resnet_use_zero_module)
    ch = int(cfg.channel_mult[0] * cfg.model_channels)
    blocks = nn.ModuleList([UNetBlock([nn.Conv2d(in_channels, ch, 3, padding=1)])])
    chans, strides = [ch], [1]
    for level, mult in enumerate(cfg.channel_mult):
        resolution = cfg.level_resolutions[level]
        for i in range(cfg.num_res_blocks):
            out_ch = int(mult * cfg.model_channels)
            layers: list[nn.Module] = [ResBlock(ch, cfg.embed_channels, cfg.dropout, out_ch, **res_kwargs)]
            ch = out_ch
            if attention and resolution in cfg.attention_resolutions and i == cfg.num_res_blocks - 1:
                layers.append(CrossAttentionBlock(ch, _heads(cfg, ch), cfg.resnet_use_zero_module))
            blocks.append(UNetBlock(layers))
            chans.append(ch)
            strides.append(2**level)
        if level != len(cfg.channel_mult) - 1:
            down = (ResBlock(ch, cfg.embed_channels, cfg.dropout, ch, down=True, **res_kwargs)
                    if cfg.resblock_updown else Downsample(ch, cfg.conv_resample))
            blocks.append(UNetBlock([down]))
            chans.append(ch)
            strides.append(2 ** (level + 1))
    return blocks, chans, strides


def _heads(cfg: UNetConfig, channels: int) -> int:
    return channels // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads


class TextureEncoder(nn.Module):
    """PIDM's texture encoder: a copy of the UNet input path without time conditioning or attention.

    `time_embed` and every ResBlock's `emb_layers`/`cond_emb_layers` exist in PIDM checkpoints but are never used
    (the encoder runs with emb=None).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        # Unused: PIDM's encoder builds a time MLP but is always called without t.
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, cfg.embed_channels), nn.SiLU(),
                                        nn.Linear(cfg.embed_channels, cfg.embed_channels))
        self.input_blocks, self.feature_channels, self.feature_strides = _build_input_path(
            cfg, cfg.encoder_in_channels, attention=False)

    def forward(self, src: Tensor) -> list[Tensor]:
        feats, h = [], src
        for block in self.input_blocks:
            h = block(h)
            feats.append(h)
        return feats


# ----------------------------------------------------------------------------------------------------------------
# The network


class PIDMNet(nn.Module):
    """PIDM's `BeatGANsAutoencModel`, with identical state_dict keys and shapes.

    x = cat([x_t, pose_map], 1) -> (B, out_channels, H, W): [:3] ε prediction, [3:] learned-variance values v.
    Cross-attention block k of the input path reads feats[k], the middle block reads feats[-1] and output block k reads
    feats[-k-1] (PIDM's wiring); `attention_feature_map()` lists it.
    """

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = cfg
        res_kwargs = dict(two_cond=cfg.resnet_two_cond, zero_init=cfg.resnet_use_zero_module)

        self.time_embed = TimeEmbed(cfg.model_channels, cfg.embed_channels)
        self.input_blocks, skip_chans, _ = _build_input_path(cfg, cfg.in_channels, attention=True)
        ch = skip_chans[-1]
        self.middle_block = UNetBlock([
            ResBlock(ch, cfg.embed_channels, cfg.dropout, ch, **res_kwargs),
            CrossAttentionBlock(ch, _heads(cfg, ch), cfg.resnet_use_zero_module),
            ResBlock(ch, cfg.embed_channels, cfg.dropout, ch, **res_kwargs),
        ])

        # Decoder: per level (deepest first) num_res_blocks + 1 ResBlocks, each eating one skip (LIFO); attention on
        # the second-to-last ResBlock at attention resolutions; an upsampling layer closes every level but the top.
        self.output_blocks = nn.ModuleList()
        skips = list(skip_chans)
        for level in reversed(range(len(cfg.channel_mult))):
            out_ch = int(cfg.channel_mult[level] * cfg.model_channels)
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [
                    ResBlock(ch + skips.pop(), cfg.embed_channels, cfg.dropout, out_ch, **res_kwargs)]
                ch = out_ch
                if cfg.level_resolutions[level] in cfg.attention_resolutions and i == cfg.num_res_blocks - 1:
                    layers.append(CrossAttentionBlock(ch, _heads(cfg, ch), cfg.resnet_use_zero_module))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, cfg.embed_channels, cfg.dropout, ch, up=True, **res_kwargs)
                                  if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                self.output_blocks.append(UNetBlock(layers))

        out_conv = nn.Conv2d(int(cfg.channel_mult[0] * cfg.model_channels), cfg.out_channels, 3, padding=1)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 _zero_(out_conv) if cfg.resnet_use_zero_module else out_conv)
        self.encoder = TextureEncoder(cfg)

        # Encoder feature index read by each block's attention (None: the block has no attention).
        n = len(self.input_blocks)
        self._input_cond = [k if b.has_attention else None for k, b in enumerate(self.input_blocks)]
        self._output_cond = [n - 1 - k if b.has_attention else None for k, b in enumerate(self.output_blocks)]
        assert len(self.output_blocks) == n and len(self.encoder.input_blocks) == n

        # Never-used parameters get no gradient; freezing them keeps DDP (and optimizers) from tracking them.
        for name, p in self.named_parameters():
            if _is_unused(name):
                p.requires_grad_(False)

    # -- introspection used by RePose / tests ------------------------------------------------------------------

    @property
    def encoder_feature_channels(self) -> list[int]:
        """Channels of each feature returned by `encode` (one per encoder input block)."""
        return list(self.encoder.feature_channels)

    @property
    def encoder_feature_strides(self) -> list[int]:
        """Downsampling factor of each feature returned by `encode` relative to the input."""
        return list(self.encoder.feature_strides)

    def attention_feature_map(self) -> list[tuple[str, int]]:
        """(attention block name, index into feats) in execution order, e.g. ('input_blocks.8.1', 8)."""
        out = []
        for prefix, blocks, idx in (("input_blocks", self.input_blocks, self._input_cond),
                                    ("output_blocks", self.output_blocks, self._output_cond)):
            for k, (block, i) in enumerate(zip(blocks, idx)):
                if i is not None:
                    pos = next(j for j, layer in enumerate(cast(UNetBlock, block))
                               if isinstance(layer, CrossAttentionBlock))
                    out.append((f"{prefix}.{k}.{pos}", i))
            if prefix == "input_blocks":
                out.append(("middle_block.1", len(self.input_blocks) - 1))
        return out

    @property
    def used_feature_indices(self) -> list[int]:
        """Sorted indices of `encode` outputs that `denoise` actually reads; the others may be None."""
        return sorted({i for _, i in self.attention_feature_map()})

    def unused_parameter_names(self) -> list[str]:
        """Parameters PIDM creates but never uses in the forward pass (present in checkpoints, no gradient)."""
        return [name for name, _ in self.named_parameters() if _is_unused(name)]

    # -- forward paths -----------------------------------------------------------------------------------------

    def embed_time(self, t: Tensor, batch: int) -> Tensor:
        """t: scalar or (B,) raw step indices (int or float) -> (B, embed_channels)."""
        conv = cast(nn.Conv2d, self.out[2])  # the output conv: its weight tells the device and dtype
        t = torch.as_tensor(t, device=conv.weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise InputError(f"timestep t has shape {tuple(t.shape)}; expected a scalar or ({batch},)")
        emb = timestep_embedding(t, self.config.model_channels).to(conv.weight.dtype)
        return self.time_embed(emb)

    def encode(self, src: Tensor) -> list[Tensor]:
        """Texture-encoder features of the source, one per encoder input block.

        src: (B, encoder_in_channels, H, W), an RGB image in [-1, 1] for PIDM. The null (CFG) condition is
        `encode(zeros_like(src))`, not zero features.
        """
        if src.ndim != 4 or src.shape[1] != self.config.encoder_in_channels:
            raise InputError(f"source for the texture encoder has shape {tuple(src.shape)}; expected "
                             f"(B, {self.config.encoder_in_channels}, H, W)")
        self._check_spatial(src, "source")
        stem = cast(UNetBlock, self.encoder.input_blocks[0])  # [Conv2d]
        h = src.to(cast(nn.Conv2d, stem[0]).weight.dtype)
        feats = []
        for block in self.encoder.input_blocks:
            h = self._run(block, h)
            feats.append(h)
        return feats

    def encode_null(self, like: Tensor) -> list[Tensor]:
        """CFG null condition: encoder features of an all-zero source shaped like `like`."""
        return self.encode(torch.zeros_like(like))

    def denoise(self, x: Tensor, t: Tensor, feats: Sequence[Optional[Tensor]]) -> Tensor:
        """x: (B, in_channels, H, W) = cat([x_t, pose_map]); t: (B,) or scalar; feats: as from `encode`
        (any source: plain, warped, ...; entries not in `used_feature_indices` may be None)
        -> (B, out_channels, H, W) in x's dtype."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(f"denoiser input has shape {tuple(x.shape)}; expected (B, {self.config.in_channels}, "
                             f"H, W) = noisy image channels followed by pose-map channels")
        self._check_spatial(x, "denoiser input")
        B = x.shape[0]
        feats = self._check_feats(feats, B)
        emb = self.embed_time(t, B)

        h = x.to(emb.dtype)
        skips = []
        for block, i in zip(self.input_blocks, self._input_cond):
            h = self._run(block, h, emb, None if i is None else feats[i])
            skips.append(h)
        h = self._run(self.middle_block, h, emb, feats[-1])
        for block, i in zip(self.output_blocks, self._output_cond):
            h = self._run(block, h, emb, None if i is None else feats[i], skips.pop())
        return self.out(h).to(x.dtype)

    def forward(self, x: Tensor, t: Tensor, x_cond: Tensor, prob: float = 1.0,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """PIDM's call: each sample keeps its source with probability `prob`, else the encoder sees a zero image.

        prob=1: conditional, prob=0: unconditional (null condition), in between: PIDM's training-time condition
        dropout (Bernoulli keep mask, `generator` for reproducibility).
        """
        B = x.shape[0]
        if x_cond.shape[0] != B:
            raise InputError(f"x_cond batch {x_cond.shape[0]} differs from x batch {B}")
        if prob >= 1:
            keep = torch.ones(B, dtype=torch.bool, device=x.device)
        elif prob <= 0:
            keep = torch.zeros(B, dtype=torch.bool, device=x.device)
        else:
            keep = torch.rand(B, generator=generator, device=x.device) < prob
        return self.denoise(x, t, self.encode(x_cond * keep.view(-1, 1, 1, 1).to(x_cond.dtype)))

    def forward_with_cond_scale(self, x: Tensor, t: Tensor, cond_feats: Sequence[Tensor],
                                null_feats: Sequence[Tensor], cond_scale: float):
        """Classifier-free guidance as PIDM: returns (null + (cond - null)·scale, cond, null) on all channels.

        With cond_scale == 1 the null pass is skipped and null is None (PIDM raises a NameError there).
        """
        cond_out = self.denoise(x, t, cond_feats)
        if cond_scale == 1:
            return cond_out, cond_out, None
        null_out = self.denoise(x, t, null_feats)
        return null_out + (cond_out - null_out) * cond_scale, cond_out, null_out

    # -- helpers -------------------------------------------------------------------------------------------------

    def _run(self, block: nn.Module, h: Tensor, emb=None, cond=None, lateral=None) -> Tensor:
        if self.config.use_checkpoint and self.training and torch.is_grad_enabled():
            return activation_checkpoint(block, h, emb, cond, lateral, use_reentrant=False)
        return block(h, emb, cond, lateral)

    def _check_spatial(self, x: Tensor, what: str):
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise InputError(f"{what} is {x.shape[-2]}×{x.shape[-1]}; height and width must be multiples of {factor}")

    def _check_feats(self, feats: Sequence[Optional[Tensor]], batch: int) -> list[Optional[Tensor]]:
        n = len(self.input_blocks)
        if len(feats) != n:
            raise InputError(f"got {len(feats)} texture features; this network needs {n} (one per encoder input "
                             f"block, as returned by encode())")
        feats = list(feats)
        for i in self.used_feature_indices:
            f, ch = feats[i], self.encoder.feature_channels[i]
            if not isinstance(f, Tensor) or f.ndim != 4 or f.shape[1] != ch or f.shape[0] not in (1, batch):
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise InputError(f"texture feature {i} has shape {shape}; expected ({batch}, {ch}, h, w)")
            if f.shape[0] != batch:
                feats[i] = f.expand(batch, *f.shape[1:])
        return feats


def _is_unused(name: str) -> bool:
    """Parameter names PIDM never touches in its forward pass (see module docstring)."""
    parts = name.split(".")
    if "cond_emb_layers" in parts:
        return True
    if parts[-2] in ("qkv", "proj_out1"):
        return True
    if parts[0] == "encoder" and (parts[1] == "time_embed" or "emb_layers" in parts):
        return True
    return False
