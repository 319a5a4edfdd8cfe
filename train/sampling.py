"""Pose transfer with a trained PoseTransferModel (DESIGN.md calling convention): CFG + DDIM, optional guidance hook.

Used by train_deepfashion.py (sample grids), generate.py (batch generation) and bench/. The high-level pipeline used
by the nodes lives in repose_core; this is the small loop the training tools need.
"""
from __future__ import annotations


import torch
from torch import Tensor

from repose_core.diffusion import GaussianDiffusion, linear_betas


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
def transfer(model, codec, diffusion: GaussianDiffusion, source: Tensor, pose_map: Tensor, *, steps: int = 50,
             cfg_scale: float = 2.0, eta: float = 0.0, generator: torch.Generator | None = None, x0_hook=None,
             progress=None) -> tuple[Tensor, object]:
    """source (B, 3, H, W) in [-1, 1], pose_map (B, P, h, w) at diffusion resolution -> (image (B, 3, H, W) in
    [-1, 1], AppearanceCond). PIDM's single-scale CFG (∅ = zero source), w = cfg_scale (PIDM/paper: 2), DDIM: the
    core's `transfer_ops.sample`, the loop the pipeline and the nodes' previews use too."""
    from repose_core.transfer_ops import sample

    cond = model.prepare(codec.encode(source), pose_map)           # source in diffusion space
    clip = model.config.codec in ("pixel", "unshuffle2", "unshuffle4")   # their space is the image: exact clamp
    z = sample(model, diffusion, pose_map.to(source.dtype), cond, model.null_cond(cond), steps=steps, cfg=cfg_scale,
               eta=eta, generator=generator, x0_hook=x0_hook, callback=progress, clip_x0=clip)
    return codec.decode(z).clamp(-1, 1), cond
