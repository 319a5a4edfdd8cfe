"""Diffusion machinery (paper §3.1, §3.4): schedule + learned variance + L_hybrid, DDIM/DDPM samplers with the x0
guidance hook, classifier-free guidance, and a k-diffusion denoiser adapter for ComfyUI samplers."""
from .classifier_free import batch_conditions, cfg_combine, cfg_combine_disentangled, drop_condition, make_eps_fn
from .kdiffusion import EpsDenoiser, karras_sigmas, model_sampling_dict, sample_euler
from .samplers import ddim_sample, ddpm_sample, spaced_timesteps
from .schedule import GaussianDiffusion, linear_betas

__all__ = [
    "GaussianDiffusion", "linear_betas",
    "ddim_sample", "ddpm_sample", "spaced_timesteps",
    "cfg_combine", "cfg_combine_disentangled", "make_eps_fn", "drop_condition", "batch_conditions",
    "EpsDenoiser", "karras_sigmas", "sample_euler", "model_sampling_dict",
]
