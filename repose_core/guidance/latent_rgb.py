"""A cheap, differentiable latent -> RGB decoder for guidance on Stable-Diffusion-style latents.

A full VAE decode at every guided step is the dominant cost of latent-space guidance. ComfyUI previews latents with a
per-channel linear map (`latent_format.latent_rgb_factors`, (C, 3), optional `latent_rgb_factors_bias`, (3,)) applied
to the sampler-space latent; upsampled by the VAE factor that gives a blurry but correctly placed [-1, 1] RGB image,
which is enough for a pose estimator to find limbs. Gradients flow through it exactly (it is linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..models.codec import Codec


class LatentRGBApprox(Codec):
    """Codec with a linear decoder: z (B, C, h, w) -> rgb (B, 3, h·factor, w·factor) in ≈[-1, 1].

    decode: rgb = bilinear_upsample(Σ_c z_c · factors[c] + bias). encode (for completeness): least-squares inverse
    on the `factor`-average-pooled image; decode(encode(x)) is a blurred x."""

    factors: Tensor  # buffers (registered in __init__)
    bias: Tensor

    def __init__(self, factors, bias=None, factor: int = 8):
        super().__init__()
        factors = torch.as_tensor(factors, dtype=torch.float32)
        if factors.ndim != 2 or factors.shape[1] != 3:
            raise InputError(f"latent_rgb_factors must be (latent channels, 3), got shape {tuple(factors.shape)}")
        bias = torch.zeros(3) if bias is None else torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        if bias.shape != (3,):
            raise InputError(f"latent_rgb_factors_bias must have 3 values (R, G, B), got {tuple(bias.shape)}")
        if int(factor) != factor or factor < 1:
            raise InputError(f"upsampling factor must be an integer >= 1, got {factor}")
        self.register_buffer("factors", factors)  # (C, 3)
        self.register_buffer("bias", bias)        # (3,)
        self.channels = factors.shape[0]
        self.factor = int(factor)

    def _decode(self, z: Tensor) -> Tensor:
        rgb = torch.einsum("bchw,ck->bkhw", z, self.factors.to(z.dtype)) + self.bias.to(z.dtype)[:, None, None]
        if self.factor == 1:
            return rgb
        return F.interpolate(rgb, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def _encode(self, img: Tensor) -> Tensor:
        small = F.avg_pool2d(img, self.factor) - self.bias.to(img.dtype)[:, None, None]  # (B, 3, h, w)
        pinv = torch.linalg.pinv(self.factors.double()).to(img.dtype)  # (3, C)
        return torch.einsum("bkhw,kc->bchw", small, pinv)
