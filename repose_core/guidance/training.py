"""Gradient guidance in training (paper eq. 3, 15 and 17).

The paper trains with L_mse = ‖ε − ε̃_θ‖² where ε̃_θ = ε_θ + √(1−ᾱ_t)·η·∇G(P̃_t) (eq. 15, η made explicit). ∇G is
computed on a detached copy, so it is a constant for the optimiser and can be moved to the target side:

    ‖ε − (ε_θ + √(1−ᾱ_t) η ∇G)‖² = ‖(ε − √(1−ᾱ_t) η ∇G) − ε_θ‖² = ‖ε̃ − ε_θ‖²,   ε̃ := ε − √(1−ᾱ_t) η ∇G.

`guided_eps_target` returns that detached ε̃, so any existing loss (L_hybrid's MSE term) just swaps `noise` for it.

Where P̃_t comes from (`source`):
  - "noise_residual": eq. 10 literally, P̃_t = decoder(ε − ε_θ), the HumanSD-style input (HumanSD decodes the noise
    error `ε_θ − ε` to build a loss weight). The gradient is taken w.r.t. that residual.
  - "tweedie" (default): P̃_t = decoder(x̂0) with x̂0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t, the gradient w.r.t. x̂0. This is the
    default because (a) the pose estimator was trained on images, and x̂0 is an image estimate, whereas the noise
    residual ε − ε_θ is not an image of a person (its "pose" is whatever structure the error happens to have), and
    (b) it is the same quantity the sampling-time hook (PoseGuidance) guides, so training and sampling agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InputError

SOURCES = ("tweedie", "noise_residual")


def _per_sample(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """alphas_cumprod[t] shaped (B, 1, 1, ...) for broadcasting."""
    out = torch.as_tensor(values, dtype=torch.float64).detach().cpu()[t.long().cpu()]
    return out.view(-1, *([1] * (ndim - 1)))


def guided_eps_target(noise: Tensor, eps_pred: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor,
                      energy_fn: Callable[[Tensor], Tensor], eta: float = 1.0, source: str = "tweedie") -> Tensor:
    """ε̃ = ε − √(1−ᾱ_t)·η·∇G  (detached), so that ‖ε̃ − ε_θ‖² implements eq. 3 with eq. 15.

    noise: ε used to form x_t (B, C, H, W); eps_pred: ε_θ(x_t, t) (B, C, H, W), the first C channels of the model
    output; t: (B,) integer timesteps indexing `alphas_cumprod` (T,); energy_fn: diffusion-space sample (B, C, H, W)
    -> (B,) energies, differentiable (e.g. `PoseGuidance(...).energy`). With G ≡ 0 the result equals `noise`."""
    if source not in SOURCES:
        raise InputError(f"guided_eps_target source must be one of {SOURCES}, got {source!r}")
    if noise.shape != eps_pred.shape or noise.shape != x_t.shape:
        raise InputError(f"noise {tuple(noise.shape)}, eps_pred {tuple(eps_pred.shape)} and x_t {tuple(x_t.shape)} "
                         f"must have the same shape (pass only the ε channels of a learned-variance output)")
    t = torch.as_tensor(t).reshape(-1)
    if t.numel() not in (1, noise.shape[0]):
        raise InputError(f"t must have one timestep per sample ({noise.shape[0]}), got {t.numel()}")
    abar = _per_sample(alphas_cumprod, t, noise.ndim).to(device=noise.device)  # (B, 1, 1, 1) float64
    with torch.inference_mode(False), torch.enable_grad():
        eps = eps_pred.detach().double()
        if source == "tweedie":
            x = ((x_t.detach().double() - (1 - abar).sqrt() * eps) / abar.sqrt()).to(noise.dtype)  # Tweedie x̂0
        else:
            x = (noise.detach() - eps_pred.detach())  # eq. 10: ε − ε_θ
        x = x.clone().requires_grad_(True)
        energy = energy_fn(x)
        if energy.ndim != 1 or energy.shape[0] != x.shape[0]:
            raise InputError(f"energy_fn must return one energy per sample, shape ({x.shape[0]},); got "
                             f"{tuple(energy.shape)}")
        (grad,) = torch.autograd.grad(energy.sum(), x, allow_unused=True)
    if grad is None:  # energy does not depend on the sample
        grad = torch.zeros_like(noise)
    return (noise.detach() - ((1 - abar).sqrt() * eta).to(noise.dtype) * grad.detach()).detach()
