"""Codecs: images <-> diffusion space (DESIGN.md "Codec").

A codec maps an RGB image in [-1, 1] of shape (B, 3, H, W) to the space the denoiser works in,
(B, channels, H/factor, W/factor), and back. RePoseDM (paper 3.1) runs in the latent space of a VAE; PIDM, our
baseline B1, runs in pixel space. Three codecs cover both:

- `IdentityCodec`: pixel space (channels 3, factor 1), PIDM's setting.
- `PixelUnshuffleCodec(f)`: weight-free space-to-depth (channels 3·f², factor f). Exactly invertible, so it costs no
  reconstruction error; it trades resolution for channels, which makes a pixel-space UNet f² times cheaper.
- `DiffusersVAECodec(vae)`: the Stable Diffusion VAE (diffusers `AutoencoderKL`), latents scaled by 0.18215 as in
  latent diffusion. diffusers is an optional dependency, imported only when a VAE is loaded by name.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, MissingDependencyError

SD_VAE_SCALING_FACTOR = 0.18215  # latent-diffusion scale of the SD 1.x/2.x VAE (unit-variance latents)


class Codec(nn.Module):
    """Abstract codec. Subclasses set `channels` and `factor` and implement `_encode` / `_decode`."""

    channels: int  # channels of the diffusion space
    factor: int  # spatial downsampling factor image -> diffusion space
    image_space = False  # values are the image's own pixels (rearranged): x̂0 may be clamped to [-1, 1] exactly

    def encode(self, img: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, channels, H/f, W/f), already scaled."""
        self.check_image(img)
        return self._encode(img)

    def decode(self, z: Tensor) -> Tensor:
        """(B, channels, h, w) -> (B, 3, h·f, w·f), a [-1, 1]-ish image. Differentiable."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise InputError(
                f"{type(self).__name__}.decode expects a (B, {self.channels}, h, w) tensor in diffusion space, "
                f"got shape {tuple(z.shape)}"
            )
        return self._decode(z)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Diffusion-space size of an image of `height` × `width` pixels."""
        check_divisible(height, width, self.factor, what=f"{type(self).__name__} (factor {self.factor})")
        return height // self.factor, width // self.factor

    def check_image(self, img: Tensor) -> None:
        if img.ndim != 4 or img.shape[1] != 3:
            raise InputError(
                f"{type(self).__name__}.encode expects an RGB image tensor (B, 3, H, W) in [-1, 1], "
                f"got shape {tuple(img.shape)}"
            )
        self.latent_size(img.shape[-2], img.shape[-1])

    def _encode(self, img: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"channels={self.channels}, factor={self.factor}"


def check_divisible(height: int, width: int, factor: int, what: str) -> None:
    """Raise InputError naming the size and the factor when H or W is not a multiple of `factor`."""
    if height % factor or width % factor:
        fit_h, fit_w = (height // factor) * factor, (width // factor) * factor
        raise InputError(
            f"image size {height}x{width} (H x W) is not divisible by {factor}, required by {what}; "
            f"resize or crop the image to a multiple of {factor}, e.g. {max(fit_h, factor)}x{max(fit_w, factor)}"
        )


class IdentityCodec(Codec):
    """Pixel space: the diffusion space is the [-1, 1] RGB image itself (PIDM)."""

    image_space = True

    def __init__(self):
        super().__init__()
        self.channels, self.factor = 3, 1

    def _encode(self, img: Tensor) -> Tensor:
        return img

    def _decode(self, z: Tensor) -> Tensor:
        return z


class PixelUnshuffleCodec(Codec):
    """Weight-free space-to-depth: each f×f pixel block becomes 3·f² channels. decode(encode(x)) == x exactly."""

    image_space = True

    def __init__(self, factor: int):
        super().__init__()
        if not isinstance(factor, int) or factor < 1:
            raise InputError(f"PixelUnshuffleCodec factor must be a positive integer, got {factor!r}")
        self.channels, self.factor = 3 * factor * factor, factor

    def _encode(self, img: Tensor) -> Tensor:
        return F.pixel_unshuffle(img, self.factor)  # (B, 3f², H/f, W/f)

    def _decode(self, z: Tensor) -> Tensor:
        return F.pixel_shuffle(z, self.factor)  # (B, 3, h·f, w·f)


class DiffusersVAECodec(Codec):
    """Latent space of a diffusers `AutoencoderKL` (the paper's VAE encoder/decoder, 3.1).

    encode uses the posterior **mean** (deterministic, as needed for conditioning and for guidance), scaled by
    `scaling_factor`; decode divides by it and runs the VAE decoder with autograd enabled, so pose guidance can
    differentiate through it. The VAE is frozen (requires_grad False) but its graph is kept.
    """

    vae: Any  # a diffusers AutoencoderKL (optional dependency): encode / decode return diffusers' output objects

    def __init__(self, vae: nn.Module, scaling_factor: float = SD_VAE_SCALING_FACTOR):
        super().__init__()
        if not (hasattr(vae, "encode") and hasattr(vae, "decode") and hasattr(vae, "config")):
            raise InputError(
                f"DiffusersVAECodec needs a diffusers AutoencoderKL (an object with encode, decode and config), "
                f"got {type(vae).__name__}"
            )
        self.vae = vae.requires_grad_(False)
        self.scaling_factor = float(scaling_factor)
        cfg = vae.config
        self.channels = int(_cfg_get(cfg, "latent_channels", 4))
        self.factor = 2 ** (len(_cfg_get(cfg, "block_out_channels", (128, 256, 512, 512))) - 1)

    @classmethod
    def from_pretrained(cls, name_or_path: str, subfolder: str | None = "vae", scaling_factor=SD_VAE_SCALING_FACTOR,
                        **kwargs) -> "DiffusersVAECodec":
        """Load an AutoencoderKL with diffusers (optional dependency) and wrap it."""
        AutoencoderKL = _import_autoencoder_kl()
        vae = AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
        return cls(vae.eval(), scaling_factor=scaling_factor)

    def _encode(self, img: Tensor) -> Tensor:
        posterior = self.vae.encode(img.to(self._vae_dtype())).latent_dist
        return (posterior.mean * self.scaling_factor).to(img.dtype)

    def _decode(self, z: Tensor) -> Tensor:
        out = self.vae.decode((z / self.scaling_factor).to(self._vae_dtype())).sample
        return out.to(z.dtype)

    def _vae_dtype(self) -> torch.dtype:
        p = next(self.vae.parameters(), None)
        return p.dtype if p is not None else torch.float32


def _cfg_get(cfg, key, default):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _import_autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise MissingDependencyError(
            "the 'sd_vae' codec needs the optional package diffusers (pip install 'diffusers>=0.27'); "
            "alternatively use the 'pixel' or 'unshuffle2'/'unshuffle4' codec"
        ) from e
    return AutoencoderKL


CODEC_NAMES = ("pixel", "unshuffle2", "unshuffle4", "sd_vae")
_UNSHUFFLE = re.compile(r"unshuffle(\d+)$")


def codec_spec(name: str) -> tuple[int, int]:
    """(channels, factor) of a named codec, without building it (configs need it; the VAE may be absent)."""
    if name == "pixel":
        return 3, 1
    if name == "sd_vae":
        return 4, 8
    m = _UNSHUFFLE.match(name)
    if m and int(m.group(1)) >= 1:
        f = int(m.group(1))
        return 3 * f * f, f
    raise InputError(f"unknown codec name {name!r}; accepted: {', '.join(CODEC_NAMES)} (or 'unshuffle<N>')")


def codec_from_name(name: str, vae: nn.Module | None = None) -> Codec:
    """Build the codec a config names. "sd_vae" needs the loaded VAE object (`vae=`)."""
    channels, factor = codec_spec(name)  # validates the name
    if name == "pixel":
        return IdentityCodec()
    if name == "sd_vae":
        if vae is None:
            raise InputError(
                "codec 'sd_vae' needs a loaded VAE: pass vae=<diffusers AutoencoderKL> or a DiffusersVAECodec "
                "(e.g. DiffusersVAECodec.from_pretrained('stabilityai/stable-diffusion-2-1'))"
            )
        return vae if isinstance(vae, DiffusersVAECodec) else DiffusersVAECodec(vae)
    return PixelUnshuffleCodec(factor)
