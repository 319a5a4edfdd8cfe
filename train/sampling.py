"""Pose transfer with a trained PoseTransferModel (DESIGN.md calling convention): CFG + DDIM, optional guidance hook.

Used by train_deepfashion.py (sample grids), generate.py (batch generation) and bench/. The high-level pipeline used
by the nodes lives in repose_core; this is the small loop the training tools need.
"""
from __future__ import annotations


import torch
from torch import Tensor

from repose_core.diffusion import GaussianDiffusion, ddim_sample, linear_betas, make_eps_fn


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
    [-1, 1], AppearanceCond). DDIM with PIDM's single-scale CFG (∅ = zero source), w = cfg_scale (PIDM/paper: 2)."""
    src = codec.encode(source)                                     # (B, C, h, w) diffusion space
    cond = model.prepare(src, pose_map)
    # forward() reads only the texture features; CFG batches cond with the null cond (which has no flow/warps),
    # so the denoiser gets a features-only copy
    eps_fn = make_eps_fn(model, pose_map, cond.features_only(), model.null_cond(cond), w=cfg_scale)
    shape = (source.shape[0], codec.channels, *pose_map.shape[-2:])
    x_T = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu")
    x_T = x_T.to(device=source.device, dtype=source.dtype)
    z = ddim_sample(eps_fn, x_T, diffusion, steps=steps, eta=eta, x0_hook=x0_hook, generator=generator,
                    callback=progress)
    return codec.decode(z).clamp(-1, 1), cond
