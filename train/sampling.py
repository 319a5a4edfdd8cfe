"""Pose transfer for the training tools: the core's conditioning and sampling steps (`repose_core.transfer_ops`)
on tensors, plus loading a latent model's codec.

Used by train_deepfashion.py (sample grids) and generate.py (batch generation). The pipeline for images and poses
(what the demo and ablation use) is `repose_core.pipeline`; the nodes call the same two steps one node at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from repose_core.diffusion import GaussianDiffusion, linear_betas
from repose_core.transfer_ops import Alignment, align, sample


def load_codec(model, vae: str = ""):
    """The model's codec; latent models ("sd_vae") get the diffusers AutoencoderKL from the local folder `vae`."""
    if model.config.codec == "sd_vae":
        from pathlib import Path

        from repose_core.errors import InputError
        from repose_core.models.codec import DiffusersVAECodec
        if not vae:
            raise InputError("this model works in the SD VAE latent space: pass --vae <diffusers AutoencoderKL folder>")
        sub = "vae" if (Path(vae) / "vae").is_dir() else None
        model.set_codec(DiffusersVAECodec.from_pretrained(vae, subfolder=sub, local_files_only=True).eval())
    return model.codec


def model_diffusion(model) -> GaussianDiffusion:
    """Linear-β diffusion with the model's T (paper: T = 1000, β 1e-4 -> 2e-2)."""
    return GaussianDiffusion(linear_betas(int(getattr(model.config, "timesteps", 1000))))


@torch.no_grad()
def transfer(model, diffusion: GaussianDiffusion, source: Tensor, pose: Tensor, *, steps: int = 50,
             cfg_scale: float = 2.0, eta: float = 0.0, generator: torch.Generator | None = None, x0_hook=None,
             progress=None, final_timestep: int | None = None) -> tuple[Tensor, Alignment]:
    """source (B, 3, H, W) in [-1, 1], pose (B, P, H, W) at pixel resolution -> (image (B, 3, H, W) in [-1, 1],
    the core's Alignment). PIDM's single-scale CFG (∅ = zero source), w = cfg_scale (PIDM/paper: 2), DDIM: the core's
    `transfer_ops.align` and `transfer_ops.sample`, the steps the pipeline and the nodes run too, with the same x̂0
    handling (clamp in image-like spaces; final_timestep None = the model's, as the pipeline). No previews are
    decoded (`Alignment.aligned` holds RPA's last warp in diffusion space)."""
    al = align(model, source, pose, previews=False)
    z = sample(model, diffusion, al.pose_map, al.cond, al.null_cond, steps=steps, cfg=cfg_scale, eta=eta,
               generator=generator, x0_hook=x0_hook, callback=progress, clip_x0=model.codec.image_space,
               final_timestep=final_timestep)
    return model.codec.decode(z).clamp(-1, 1), al
