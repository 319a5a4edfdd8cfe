"""Gaussian diffusion: noise schedule, forward process, learned-variance reverse process and L_hybrid.

Paper (RePoseDM, arXiv 2310.16074) §3.1:
  eq. 1  forward process  q(y_t | y_{t-1}) = N(√(1-β_t) y_{t-1}, β_t I)
  eq. 2  reverse step     y_{t-1} = 1/√α_t (y_t - (1-α_t)/√(1-ᾱ_t) ε_θ) + σ_t ε
  eq. 3  L_mse = ‖ε - ε̃_θ‖²          (ε̃: gradient-guided noise, eq. 15)
  eq. 4  L_total = L_mse + L_vlb       (the variance Σ_θ is learned as in [26])
[26] = Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (improved DDPM): learned
variance in "learned range" form (their eq. 15), hybrid loss L_hybrid = L_simple + λ L_vlb with λ = 1e-3 there;
PIDM/RePoseDM use λ = 1 together with the T/1000 rescale of the VLB term, which is what `vb_weight=1.0` gives.

Timestep convention (same as PIDM / improved-diffusion): integer index t ∈ [0, T-1]; index t holds β_{t+1} of the
paper, so `alphas_cumprod[t]` = ᾱ after t+1 noising steps, and the model's timestep embedding receives t itself.

Coefficient tables are float64 numpy arrays; they are gathered per sample and cast to the dtype of the tensor they
multiply, so float32/float16 inputs keep their dtype while the schedule itself never loses precision.
"""
from __future__ import annotations

import math
import numbers
from typing import overload

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["linear_betas", "GaussianDiffusion", "normal_kl", "discretized_gaussian_log_likelihood", "mean_flat"]


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 2e-2) -> np.ndarray:
    """Linear β schedule of DDPM/PIDM: β_1 = start … β_T = end, float64, shape (T,)."""
    if int(T) != T or T < 1:
        raise InputError(f"linear_betas: T must be a positive integer number of timesteps, got {T!r}")
    if not (0.0 < start <= end < 1.0):
        raise InputError(f"linear_betas: need 0 < start <= end < 1, got start={start!r}, end={end!r}")
    return np.linspace(start, end, int(T), dtype=np.float64)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of 8-bit images x ∈ [-1, 1] under a Gaussian discretized to 256 bins (DDPM §3.3 decoder L_0).

    Each pixel value owns the bin [x - 1/255, x + 1/255]; the two edge bins extend to ±∞. Uses log Φ (`log_ndtr`)
    rather than log of a difference of CDFs at the edges, so far tails stay finite. Elementwise, in nats.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)                    # bin x = -1: P(X < upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)         # bin x = +1: P(X > lower)
    cdf_delta = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_delta = torch.log(cdf_delta.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_delta))


class GaussianDiffusion:
    """Discrete Gaussian diffusion with ε-prediction and (optionally) learned variance.

    `betas`: 1-D array of β values in (0, 1], one per timestep. All derived tables are float64 numpy arrays:
    alphas, alphas_cumprod (ᾱ), alphas_cumprod_prev, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
    sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod, posterior_variance (β̃), posterior_log_variance_clipped,
    posterior_mean_coef1/2, log_betas.

    `timestep_map[k]` is the original model timestep of index k (identity unless built by `respace`).
    """

    def __init__(self, betas, timestep_map=None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise InputError(f"GaussianDiffusion: betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or betas.min() <= 0.0 or betas.max() > 1.0:
            raise InputError(
                f"GaussianDiffusion: every beta must lie in (0, 1], got min={betas.min()!r}, max={betas.max()!r}"
            )
        self.betas = betas
        self.num_timesteps = T = int(betas.shape[0])
        self.timestep_map = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        assert self.timestep_map.shape == (T,)

        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1·x0 + coef2·x_t, β̃_t)   (DDPM eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃ at t=0 is 0; the log uses β̃_1 there (improved DDPM) so the learned-range interpolation stays finite.
        first = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

        self._device_tables: dict = {}

    # ------------------------------------------------------------------ helpers
    def respace(self, use_timesteps) -> "GaussianDiffusion":
        """A diffusion over a subset of timesteps with the same ᾱ at those steps (improved DDPM §4, respacing).

        β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}; `timestep_map` of the result maps index k back to the model timestep t_k.
        """
        ts = sorted({int(t) for t in use_timesteps})
        if not ts or ts[0] < 0 or ts[-1] >= self.num_timesteps:
            raise InputError(
                f"respace: timesteps must be a non-empty subset of [0, {self.num_timesteps - 1}], got {list(use_timesteps)[:8]}..."
            )
        last = 1.0
        new_betas = []
        for t in ts:
            new_betas.append(1.0 - self.alphas_cumprod[t] / last)
            last = self.alphas_cumprod[t]
        return GaussianDiffusion(np.array(new_betas), timestep_map=self.timestep_map[np.array(ts)])

    def _table(self, name: str, device) -> Tensor:
        key = (name, str(device))
        if key not in self._device_tables:
            self._device_tables[key] = torch.from_numpy(getattr(self, name)).to(device)
        return self._device_tables[key]

    def _check_t(self, t: Tensor | int, x: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):  # True is an int to Python, not a timestep
                raise InputError(f"timestep t must be an integer or an integer tensor, got {t!r}")
            t = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise InputError(f"timestep tensor t must have an integer dtype (torch.long), got {t.dtype}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise InputError(f"timestep tensor t must have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            # (range is only checked for CPU tensors: a check on GPU would force a device sync every call)
            raise InputError(f"timesteps must lie in [0, {self.num_timesteps - 1}], got min={int(t.min())}, max={int(t.max())}")
        return t

    def _gather(self, name: str, t: Tensor | int, x: Tensor) -> Tensor | float:
        """table[t] as (B, 1, ..., 1) in x's dtype, ready to broadcast against x.

        A Python int t (one timestep for the whole batch, as the samplers use) returns a float64 Python scalar
        instead: no gather kernels, and PyTorch casts it to x's dtype in the product.
        """
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if not 0 <= t < self.num_timesteps:
                raise InputError(f"timestep must lie in [0, {self.num_timesteps - 1}], got {t}")
            return float(getattr(self, name)[t])
        t = self._check_t(t, x)
        values = self._table(name, t.device)[t].to(device=x.device, dtype=x.dtype)
        return values.reshape(x.shape[0], *([1] * (x.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε  (closed form of eq. 1)."""
        if noise is None:
            noise = torch.randn_like(x0)
        if noise.shape != x0.shape:
            raise InputError(f"q_sample: noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        return self._gather("sqrt_alphas_cumprod", t, x0) * x0 + self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    @overload
    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    @overload
    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: int) -> tuple[Tensor, float, float]: ...

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor,
                                  t: Tensor | int) -> tuple[Tensor, Tensor | float, Tensor | float]:
        """Mean, variance β̃_t and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._gather("posterior_mean_coef1", t, x_t) * x0 + self._gather("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._gather("posterior_variance", t, x_t), self._gather("posterior_log_variance_clipped", t, x_t)

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Tweedie estimate x̂0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t  (paper eq. 13 with Δy = 0)."""
        return self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε̃ = (x_t - √ᾱ_t x̂0) / √(1-ᾱ_t): the noise consistent with a (possibly guided) x̂0 (paper eq. 13-14)."""
        return (self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._gather("sqrt_recipm1_alphas_cumprod", t, x_t)

    # ------------------------------------------------------------------ reverse process
    def split_model_output(self, model_out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(ε, v) from a model output of 2C channels, (ε, None) from C channels; C = x_t.shape[1]."""
        C = x_t.shape[1]
        if model_out.ndim != x_t.ndim or model_out.shape[0] != x_t.shape[0] or model_out.shape[2:] != x_t.shape[2:]:
            raise InputError(
                f"model output shape {tuple(model_out.shape)} does not match x_t {tuple(x_t.shape)} "
                f"(expected (B, C or 2C, ...) with C = {C})"
            )
        if model_out.shape[1] == 2 * C:
            return model_out[:, :C], model_out[:, C:]
        if model_out.shape[1] == C:
            return model_out, None
        raise InputError(
            f"model output has {model_out.shape[1]} channels; expected {C} (ε only) or {2 * C} (ε and learned variance v)"
        )

    def p_mean_variance(self, model_out: Tensor, x_t: Tensor, t: Tensor | int, clip_denoised: bool = False) -> dict:
        """Mean and variance of p_θ(x_{t-1} | x_t) for an ε-prediction model.

        Learned range (improved DDPM eq. 15): with v ∈ [-1, 1] from the last C channels,
            frac = (v + 1) / 2,   log Σ_θ = frac · log β_t + (1 - frac) · log β̃_t,
        so v = +1 gives β_t and v = -1 gives β̃_t. A C-channel output uses the fixed β̃_t ("fixed small").
        The mean is the posterior mean at the Tweedie x̂0 (equivalent to paper eq. 2).

        t: (B,) long tensor, or a Python int shared by the batch (faster: scalar coefficients).
        Returns dict(mean, variance, std, log_variance, pred_x0, eps); every tensor has x_t's shape.
        """
        eps, v = self.split_model_output(model_out, x_t)
        if v is None:
            log_variance = self._gather("posterior_log_variance_clipped", t, x_t) + torch.zeros_like(x_t)
        else:
            min_log = self._gather("posterior_log_variance_clipped", t, x_t)
            max_log = self._gather("log_betas", t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        std = torch.exp(0.5 * log_variance)   # one exp serves both the std the sampler needs and the variance
        return {"mean": mean, "variance": std * std, "std": std, "log_variance": log_variance, "pred_x0": pred_x0, "eps": eps}

    # ------------------------------------------------------------------ training loss
    def vb_terms_bpd(self, model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term L_{t} in bits per dimension (B,).

        t > 0: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)); t = 0: decoder NLL -log p_θ(x0|x_1) with the
        discretized Gaussian for images in [-1, 1].
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(self._check_t(t, x_t) == 0, nll, kl)

    def training_losses(
        self,
        model_out: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor,
        vb_weight: float = 1.0,
        mse_target: Tensor | None = None,
        *,
        eps_target: Tensor | None = None,
        mse_weight: Tensor | None = None,
    ) -> dict:
        """L_hybrid = L_mse + vb_weight · L_vlb per sample (paper eq. 3-4; improved DDPM §3.1).

        model_out: (B, 2C, ...) = [ε_θ, v] or (B, C, ...) = ε_θ (then vb = 0).
        L_mse = mean ‖target - ε_θ‖², target = `mse_target` (alias `eps_target`) or `noise`. Passing the
        gradient-guided ε̃ of paper eq. 15 as the target trains RePoseDM's guided objective.
        L_vlb sees ε_θ through a stop-gradient, so it only trains the variance channels v (improved DDPM), and is
        multiplied by num_timesteps / 1000 so its scale does not depend on T.

        mse_weight: optional per-sample weight (B,) of L_mse; 1/ᾱ_t turns the ε-MSE into the v-MSE of a
        v-predicting model (`loss_weight_for`).

        Returns dict(loss, mse, vb), each of shape (B,). Computed in at least float32.
        """
        if mse_target is not None and eps_target is not None:
            raise InputError("training_losses: pass either mse_target or eps_target (an alias), not both")
        target = mse_target if mse_target is not None else eps_target if eps_target is not None else noise
        for name, value in (("x0", x0), ("noise", noise), ("mse target", target)):
            if value.shape != x_t.shape:
                raise InputError(f"training_losses: {name} shape {tuple(value.shape)} must equal x_t shape {tuple(x_t.shape)}")
        dtype = torch.promote_types(model_out.dtype, torch.float32)
        model_out, x0, x_t, target = (v.to(dtype) for v in (model_out, x0, x_t, target))

        eps, v = self.split_model_output(model_out, x_t)
        mse = mean_flat((target - eps) ** 2)
        if mse_weight is not None:
            mse = mse * mse_weight.to(device=mse.device, dtype=mse.dtype).reshape(-1)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), v], dim=1)   # stop-gradient: the VLB must not move the mean
            vb = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb_weight * vb, "mse": mse, "vb": vb}

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         lognormal: tuple[float, float] | None = None, uniform_fraction: float = 0.0) -> Tensor:
        """Training timesteps (batch,) on the CPU: uniform over 0..T−1 (DDPM / PIDM), or, with lognormal = (P_mean,
        P_std), the timestep whose σ = √((1−ᾱ)/ᾱ) is nearest to σ ~ exp(N(P_mean, P_std²)): EDM's training
        distribution (Karras et al. 2022, table 1: −1.2, 1.2), which spends the steps on the noise levels where the
        result is decided instead of on the ~75 % of uniform draws with σ > 1. `uniform_fraction` of the draws stay
        uniform, so that the highest noise levels (where sampling starts; lognormal(−1.2, 1.2) never reaches t > 900)
        are still trained."""
        if lognormal is None:
            return torch.randint(0, self.num_timesteps, (batch,), generator=generator)
        p_mean, p_std = (float(v) for v in lognormal)
        if not p_std > 0:
            raise InputError(f"lognormal timestep sampling needs P_std > 0, got {p_std}")
        sigma = torch.exp(p_mean + p_std * torch.randn(batch, generator=generator, dtype=torch.float64))
        table = torch.from_numpy(np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod))  # increasing in t
        hi = torch.searchsorted(table, sigma).clamp(1, self.num_timesteps - 1)
        nearer_low = (sigma - table[hi - 1]).abs() <= (table[hi] - sigma).abs()
        t = torch.where(nearer_low, hi - 1, hi).long()
        if uniform_fraction > 0:
            uniform = torch.rand(batch, generator=generator) < uniform_fraction
            t = torch.where(uniform, torch.randint(0, self.num_timesteps, (batch,), generator=generator), t)
        return t

    def loss_weight_for(self, prediction: str, t: Tensor, snr_clamp: float = 0.0,
                        sigma_data: float = 0.2) -> Tensor | None:
        """Per-sample weight of the ε-MSE for a model that predicts `prediction`: None for "eps" (PIDM's equal
        weights), 1/ᾱ_t for "v" and "aligned_x0" (ε − ε_θ = √ᾱ_t·(v − v_θ), so ε-MSE/ᾱ_t is the v-MSE).

        In x̂0 space the v-MSE weights the error by 1 + SNR_t (SNR = ᾱ/(1−ᾱ)): up to 1e4 at t = 0, so the easy
        low-noise steps dominate the gradient. snr_clamp = γ > 0 caps that weight at 1 + γ (min-SNR-γ weighting,
        Hang et al. 2023, in its v form), which leaves more of each step to the high-noise x̂0 that sets the layout.

        "aligned_residual": EDM's unit weight on the network output F, 1 + σ²/σ_d² on the ε-MSE (σ² = (1−ᾱ)/ᾱ,
        σ_d = `sigma_data`); snr_clamp does not apply."""
        if prediction == "eps":
            return None
        abar = self._table("alphas_cumprod", t.device)[t]
        if prediction == "aligned_residual":
            if snr_clamp > 0:
                raise InputError("snr_clamp applies to 'v' / 'aligned_x0' models; 'aligned_residual' has EDM's "
                                 "loss weight")
            return (1 + (1 - abar) / abar / sigma_data ** 2).float()
        if prediction not in ("v", "aligned_x0"):  # aligned_x0: the same v-space MSE (RePoseConfig.prediction)
            raise InputError(f"unknown prediction {prediction!r}; accepted: 'eps', 'v', 'aligned_x0', "
                             f"'aligned_residual'")
        if snr_clamp > 0:
            snr = abar / (1 - abar)
            return (torch.clamp(1 + snr, max=1 + snr_clamp) / snr).float()
        return (1.0 / abar).float()
