"""k-diffusion view of a discrete ε-model: a denoiser D(x, σ) -> x̂0 for ComfyUI / k-diffusion samplers.

Variance-preserving (VP) x_t = √ᾱ x0 + √(1-ᾱ) ε and variance-exploding (VE) x = x0 + σ ε describe the same chain
with  σ = √((1-ᾱ)/ᾱ)  and  x_t = x / √(1+σ²).  Hence (Karras et al. 2022, Table 1, "VP" column):
    c_in = 1/√(1+σ²),   c_out = -σ,   D(x, σ) = x + c_out · ε_θ(c_in · x, t(σ)).
t(σ) is found by linear interpolation in log σ over the discrete table (k-diffusion DiscreteSchedule.sigma_to_t);
`quantize=True` rounds to the nearest discrete t instead (ComfyUI ModelSamplingDiscrete.timestep does that).

ComfyUI mapping (checked against comfy/model_sampling.py and ldm/.../util.py make_beta_schedule, ComfyUI 0.3.75):
ComfyUI's beta_schedule="linear" is the LDM "scaled linear" β = linspace(√start, √end)², NOT PIDM's linear
schedule. PIDM's β = linspace(1e-4, 2e-2) is ComfyUI's beta_schedule="sqrt_linear" (sic). `model_sampling_dict`
returns sampling settings for ModelSamplingDiscrete (`model_config.sampling_settings`) plus the raw betas, which can
also be passed as `_register_schedule(given_betas=...)`. Its sigmas then equal `EpsDenoiser.sigmas` (float32).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .samplers import spaced_timesteps
from .schedule import GaussianDiffusion, linear_betas

__all__ = ["EpsDenoiser", "karras_sigmas", "sample_euler", "model_sampling_dict", "SCHEDULERS"]

SCHEDULERS = ("karras", "uniform", "pidm")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: σ_i = (σ_max^{1/ρ} + i/(n-1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, then a final 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class EpsDenoiser:
    """Wraps eps_fn(x_t, t) -> (B, C or 2C, ...) as a k-diffusion denoiser `(x, sigma) -> x̂0`.

    alphas_cumprod: ᾱ table (T,) (numpy / tensor / list, or a GaussianDiffusion). Extra keyword arguments of a call
    are forwarded to eps_fn. With quantize=False eps_fn receives a float t (the PIDM UNet's sinusoidal timestep
    embedding accepts it); with quantize=True a torch.long t.
    """

    def __init__(self, eps_fn: Callable, alphas_cumprod, quantize: bool = False):
        if isinstance(alphas_cumprod, GaussianDiffusion):
            alphas_cumprod = alphas_cumprod.alphas_cumprod
        ac = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        if ac.ndim != 1 or ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
            raise InputError("EpsDenoiser: alphas_cumprod must be a 1-D table of at least 2 values in (0, 1)")
        self.eps_fn = eps_fn
        self.quantize = quantize
        self.alphas_cumprod = ac
        self.sigmas64 = ((1 - ac) / ac).sqrt()
        self.log_sigmas64 = self.sigmas64.log()
        if not bool((self.log_sigmas64[1:] > self.log_sigmas64[:-1]).all()):
            raise InputError("EpsDenoiser: alphas_cumprod must be strictly decreasing (σ increasing in t)")
        self.sigmas = self.sigmas64.float()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas64[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas64[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep for σ: linear in log σ between table entries, clamped to [0, T-1]."""
        log_sigma = sigma.detach().to("cpu", torch.float64).log()
        table = self.log_sigmas64
        high = torch.searchsorted(table, log_sigma).clamp(1, table.numel() - 1)
        low = high - 1
        w = ((log_sigma - table[low]) / (table[high] - table[low])).clamp(0, 1)
        t = low.to(torch.float64) + w
        if self.quantize:
            return t.round().long().to(sigma.device)
        return t.to(device=sigma.device, dtype=torch.float32)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """σ for a (possibly fractional) timestep, interpolating log σ."""
        t = t.detach().to("cpu", torch.float64).clamp(0, self.sigmas64.numel() - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1 - w) * self.log_sigmas64[low] + w * self.log_sigmas64[high]).exp().float()

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(c_out, c_in) of the VP ε-parametrisation."""
        return -sigma, 1.0 / (sigma**2 + 1.0) ** 0.5

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        B, C = x.shape[:2]
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(B)
        if sigma.shape != (B,):
            raise InputError(f"EpsDenoiser: sigma must be a scalar or shape ({B},), got {tuple(sigma.shape)}")
        sigma_b = sigma.to(x.dtype).reshape(B, *([1] * (x.ndim - 1)))
        c_out, c_in = self.get_scalings(sigma_b)
        out = self.eps_fn(x * c_in, self.sigma_to_t(sigma), **kwargs)
        if out.shape[1] not in (C, 2 * C) or out.shape[0] != B:
            raise InputError(f"eps_fn returned shape {tuple(out.shape)}; expected ({B}, {C} or {2 * C}, ...)")
        return x + out[:, :C] * c_out

    def sigmas_for(self, steps: int, scheduler: str = "karras", rho: float = 7.0) -> Tensor:
        """Descending σ schedule of `steps` values plus a final 0, as k-diffusion/ComfyUI samplers expect.

        "karras": Karras ρ-schedule between the table's σ_min and σ_max.
        "uniform": t evenly spaced from T-1 down to 0 (k-diffusion `get_sigmas`, ComfyUI "normal"-like).
        "pidm": σ at PIDM's DDIM timesteps range(0, T, T//steps); Euler over these σ equals DDIM with eta=0.
        """
        T = self.sigmas64.numel()
        if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= T:
            raise InputError(f"steps must be an integer in [1, {T}], got {steps!r}")
        if scheduler == "karras":
            return karras_sigmas(int(steps), self.sigma_min, self.sigma_max, rho)
        if scheduler == "uniform":
            sigmas = self.t_to_sigma(torch.linspace(T - 1, 0, int(steps), dtype=torch.float64))
        elif scheduler == "pidm":
            ts = spaced_timesteps(T, int(steps), "pidm")[::-1]
            sigmas = self.sigmas64[torch.tensor(ts)].float()
        else:
            raise InputError(f"unknown scheduler {scheduler!r}; accepted: {', '.join(SCHEDULERS)}")
        return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def sample_euler(denoiser: Callable, x: Tensor, sigmas: Tensor, callback: Callable | None = None) -> Tensor:
    """Euler steps on dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, Alg. 1 without churn). For tests and scripts;
    in ComfyUI its own samplers drive the denoiser. x must already be scaled to σ_0 (noise · sigmas[0])."""
    s_in = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma)
    return x


def model_sampling_dict(diffusion: GaussianDiffusion) -> dict:
    """What a ComfyUI model patch needs to reproduce this schedule with ModelSamplingDiscrete.

    Keys: "sampling_settings" (for ModelSamplingDiscrete(model_config) or None when the betas are not a linear
    ramp), "betas" (float64 tensor, for `_register_schedule(given_betas=...)`), "alphas_cumprod" (float64 tensor),
    "sigmas" (float32 tensor, as ComfyUI stores them), "timesteps", "prediction" = "eps".
    """
    betas = diffusion.betas
    T = diffusion.num_timesteps
    is_linear = np.allclose(betas, linear_betas(T, betas[0], betas[-1]), rtol=0, atol=1e-12) if betas[0] <= betas[-1] else False
    settings = None
    if is_linear:
        # ComfyUI's "sqrt_linear" is linspace(start, end): PIDM's linear schedule (its "linear" is scaled-linear).
        settings = {"beta_schedule": "sqrt_linear", "linear_start": float(betas[0]), "linear_end": float(betas[-1]), "timesteps": T}
    ac = torch.from_numpy(diffusion.alphas_cumprod.copy())
    return {
        "sampling_settings": settings,
        "betas": torch.from_numpy(betas.copy()),
        "alphas_cumprod": ac,
        "sigmas": ((1 - ac) / ac).sqrt().float(),
        "timesteps": T,
        "prediction": "eps",
    }
