"""Samplers for ε-prediction models: DDIM and ancestral DDPM, with the x0 guidance hook and mask blending.

Every sampler is a plain `@torch.no_grad()` function:
    eps_fn(x_t, t) -> model output (B, 2C, ...) = [ε, v] or (B, C, ...) = ε, already CFG-combined;
                      t is a (B,) torch.long tensor of model timesteps in [0, T-1].
    x0_hook(x0_hat, t, step_index) -> x0_hat'   gradient guidance on the Tweedie estimate (paper eq. 13-15).
        The hook runs under no_grad; a hook that needs autograd enables it itself (torch.enable_grad()).
        Returning the SAME tensor object means "no change": the step then stays bit-identical to unguided
        sampling. Returning an equal copy is treated as a change and ε̃ is recomputed, which may differ in the
        last float bit.
    callback({"i", "t", "x", "denoised", "total"}) once per step, before the update (x = current x_t,
        denoised = x̂0 after the hook). Raising from it cancels sampling; the exception propagates unchanged and
        the samplers keep no state, so the next call starts clean.

Timestep spacings (`spaced_timesteps`):
    "pidm"     range(0, T, T // steps)                 — PIDM/DDIM-repo default (starts at t = T - T//steps)
    "uniform"  round(linspace(0, T-1, steps))          — includes t = T-1 and t = 0
    "trailing" round(arange(T, 0, -T/steps)) - 1        — starts at T-1 (better terminal SNR)

Appearance control (paper Fig. 4, PIDM predict_appearance): with `mask` (1 = generate, 0 = keep) and `x_ref`, after
each step x ← x·mask + q_sample(x_ref, t_next)·(1 - mask); after the last step the kept region is x_ref itself.
img2img: with `t_start` and `x_init`, sampling starts from q_sample(x_init, t_first, noise=x_T) where t_first is the
largest spaced timestep ≤ t_start (so only the steps below t_start run).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .schedule import GaussianDiffusion

__all__ = ["spaced_timesteps", "ddim_sample", "ddpm_sample", "SPACINGS"]

SPACINGS = ("pidm", "uniform", "trailing")


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "pidm", final_timestep: int = 0) -> list[int]:
    """Ascending list of the model timesteps a `steps`-step sampler visits.

    "pidm" reproduces PIDM exactly, including its quirk that T not divisible by `steps` yields a few extra steps
    (e.g. steps=30 → stride 33 → final_timestep + 31 timesteps). final_timestep > 0 spaces the steps over
    final_timestep..T−1 instead of 0..T−1: the sampler's last model call is at that timestep and its x̂0 is the result
    (EDM's σ_min; for a denoiser that has not learned the lowest noise levels, see RePoseConfig.final_timestep).
    """
    T = int(num_timesteps)
    if isinstance(final_timestep, bool) or int(final_timestep) != final_timestep or not 0 <= final_timestep < T:
        raise InputError(f"final_timestep must be an integer in [0, {T - 1}], got {final_timestep!r}")
    if final_timestep:
        return [int(final_timestep) + t for t in spaced_timesteps(T - int(final_timestep), steps, spacing)]
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= T:
        raise InputError(f"steps must be an integer in [1, {T}], got {steps!r}")
    steps = int(steps)
    if spacing == "pidm":
        ts = list(range(0, T, T // steps))
    elif spacing == "uniform":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64).tolist()
    elif spacing == "trailing":
        ts = (np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1).tolist()
    else:
        raise InputError(f"unknown timestep spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")
    return sorted(set(int(t) for t in ts))


# ---------------------------------------------------------------------------- shared helpers

def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn from `generator` on the generator's own device."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def _timestep_batch(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _noised(x0: Tensor, alpha_bar: float, noise: Tensor) -> Tensor:
    """q_sample at a scalar ᾱ (float64 coefficients, cast by PyTorch to x0's dtype)."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise


def _check_common(x_T, diffusion, mask, x_ref, t_start, x_init):
    if not isinstance(x_T, Tensor) or x_T.ndim < 2:
        raise InputError(f"x_T must be a tensor (B, C, ...), got {type(x_T).__name__} {getattr(x_T, 'shape', '')}")
    if not isinstance(diffusion, GaussianDiffusion):
        raise InputError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
    if (mask is None) != (x_ref is None):
        raise InputError("appearance control needs both `mask` (1 = generate, 0 = keep) and `x_ref`; got only one")
    if x_ref is not None:
        if x_ref.shape != x_T.shape:
            raise InputError(f"x_ref shape {tuple(x_ref.shape)} must equal x_T shape {tuple(x_T.shape)}")
        try:
            torch.broadcast_shapes(mask.shape, x_T.shape)
        except RuntimeError:
            raise InputError(f"mask shape {tuple(mask.shape)} does not broadcast to x_T shape {tuple(x_T.shape)}") from None
    if t_start is not None:
        if x_init is None:
            raise InputError("t_start (img2img) needs x_init, the clean image to noise to t_start")
        if x_init.shape != x_T.shape:
            raise InputError(f"x_init shape {tuple(x_init.shape)} must equal x_T shape {tuple(x_T.shape)}")
        if not 0 <= int(t_start) < diffusion.num_timesteps:
            raise InputError(f"t_start must lie in [0, {diffusion.num_timesteps - 1}], got {t_start!r}")


def _start_timesteps(ts: list[int], t_start: int | None) -> list[int]:
    if t_start is None:
        return ts
    kept = [t for t in ts if t <= int(t_start)]
    if not kept:
        raise InputError(f"t_start={t_start} is below the first sampling timestep {ts[0]}; nothing to denoise")
    return kept


def _initial_x(x_T, diffusion, t_first, t_start, x_init, mask, x_ref, generator):
    x = x_T
    if t_start is not None:
        x = _noised(x_init, diffusion.alphas_cumprod[t_first], x_T)
    if mask is not None:
        x = x * mask + _noised(x_ref, diffusion.alphas_cumprod[t_first], _randn_like(x_ref, generator)) * (1 - mask)
    return x


def _blend_known(x, mask, x_ref, alpha_bar_next, is_last, generator):
    """Appearance control: replace the keep-region (mask = 0) by x_ref noised to the next timestep."""
    known = x_ref if is_last else _noised(x_ref, alpha_bar_next, _randn_like(x_ref, generator))
    return x * mask + known * (1 - mask)


# ---------------------------------------------------------------------------- DDIM

@torch.no_grad()
def ddim_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    diffusion: GaussianDiffusion,
    steps: int = 50,
    eta: float = 0.0,
    x0_hook: Callable | None = None,
    callback: Callable | None = None,
    generator: torch.Generator | None = None,
    t_start: int | None = None,
    mask: Tensor | None = None,
    x_ref: Tensor | None = None,
    *,
    x_init: Tensor | None = None,
    spacing: str = "pidm",
    clip_denoised: bool = False,
    final_timestep: int = 0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12), deterministic for eta = 0:

        x̂0      = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t                         (Tweedie, paper eq. 13)
        x̂0'     = x0_hook(x̂0);  ε̃ = (x_t - √ᾱ_t x̂0') / √(1-ᾱ_t)       (paper eq. 13-14)
        σ_t     = eta · √((1-ᾱ_next)/(1-ᾱ_t)) · √(1 - ᾱ_t/ᾱ_next)
        x_next  = √ᾱ_next x̂0' + √(1-ᾱ_next-σ_t²) ε̃ + σ_t z            (ᾱ_next = 1 after the last step)

    Learned-variance channels of the model output are ignored. Returns x_0 (B, C, ...); with final_timestep > 0
    the steps are spaced over final_timestep..T−1 and the result is the x̂0' of the last one.
    """
    _check_common(x_T, diffusion, mask, x_ref, t_start, x_init)
    mask = None if mask is None else mask.to(device=x_T.device, dtype=x_T.dtype)   # bool masks are fine too
    if not eta >= 0.0:
        raise InputError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
    ts = _start_timesteps(spaced_timesteps(diffusion.num_timesteps, steps, spacing, final_timestep), t_start)
    ts_desc = ts[::-1]
    alphas_cumprod = diffusion.alphas_cumprod   # float64
    total = len(ts_desc)

    x = _initial_x(x_T, diffusion, ts_desc[0], t_start, x_init, mask, x_ref, generator)
    for i, t in enumerate(ts_desc):
        is_last = i == total - 1
        a_t = float(alphas_cumprod[t])
        a_next = 1.0 if is_last else float(alphas_cumprod[ts_desc[i + 1]])
        t_batch = _timestep_batch(t, x)

        eps, _ = diffusion.split_model_output(eps_fn(x, t_batch), x)
        x0 = x * math.sqrt(1.0 / a_t) - eps * math.sqrt(1.0 / a_t - 1.0)
        changed = False
        if clip_denoised:
            x0, changed = x0.clamp(-1, 1), True
        if x0_hook is not None:
            guided = x0_hook(x0, t_batch, i)
            if guided is not x0:
                x0, changed = guided, True
        if changed:
            eps = (x * math.sqrt(1.0 / a_t) - x0) / math.sqrt(1.0 / a_t - 1.0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0, "total": total})

        sigma = eta * math.sqrt((1.0 - a_next) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_next))
        x = math.sqrt(a_next) * x0 + math.sqrt(max(0.0, 1.0 - a_next - sigma**2)) * eps
        if sigma > 0.0:
            x = x + sigma * _randn_like(x, generator)
        if mask is not None:
            x = _blend_known(x, mask, x_ref, a_next, is_last, generator)
    return x


# ---------------------------------------------------------------------------- DDPM

@torch.no_grad()
def ddpm_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    diffusion: GaussianDiffusion,
    steps: int | None = None,
    x0_hook: Callable | None = None,
    callback: Callable | None = None,
    generator: torch.Generator | None = None,
    t_start: int | None = None,
    mask: Tensor | None = None,
    x_ref: Tensor | None = None,
    *,
    x_init: Tensor | None = None,
    spacing: str = "pidm",
    clip_denoised: bool = False,
) -> Tensor:
    """Ancestral sampling x_{t-1} ~ N(μ_θ, Σ_θ) (paper eq. 2) with the learned variance (improved DDPM).

    steps=None runs all T steps; fewer steps respace the schedule (improved DDPM §4), so β and β̃ of the learned
    range are those of the respaced chain while the model still receives the original timesteps. With x0_hook,
    μ is recomputed as the posterior mean at the guided x̂0'. A C-channel model output uses the fixed β̃ variance.
    """
    _check_common(x_T, diffusion, mask, x_ref, t_start, x_init)
    mask = None if mask is None else mask.to(device=x_T.device, dtype=x_T.dtype)   # bool masks are fine too
    T = diffusion.num_timesteps
    ts = list(range(T)) if steps is None else spaced_timesteps(T, steps, spacing)
    ts = _start_timesteps(ts, t_start)
    chain = diffusion if len(ts) == T else diffusion.respace(ts)   # chain index k ↔ model timestep ts[k]
    total = len(ts)

    x = _initial_x(x_T, diffusion, ts[-1], t_start, x_init, mask, x_ref, generator)
    for i, k in enumerate(range(total - 1, -1, -1)):
        t_model = _timestep_batch(ts[k], x)

        out = chain.p_mean_variance(eps_fn(x, t_model), x, k, clip_denoised=clip_denoised)
        x0, mean = out["pred_x0"], out["mean"]
        if x0_hook is not None:
            guided = x0_hook(x0, t_model, i)
            if guided is not x0:
                x0 = guided
                mean, _, _ = chain.q_posterior_mean_variance(x0, x, k)
        if callback is not None:
            callback({"i": i, "t": ts[k], "x": x, "denoised": x0, "total": total})

        x = mean
        if k > 0:
            x = x + out["std"] * _randn_like(x, generator)
        if mask is not None:
            a_next = 1.0 if k == 0 else float(diffusion.alphas_cumprod[ts[k - 1]])
            x = _blend_known(x, mask, x_ref, a_next, k == 0, generator)
    return x
