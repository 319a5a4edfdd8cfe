"""Gradient guidance from Pose Interaction Fields as an x̂0 hook (paper Sec. 3.3-3.4, eq. 12-16).

The sampler forms x̂0 with Tweedie's formula, calls `PoseGuidance(x0_hat, t, step_index)` and recomputes
ε̃ = (x_t − √ᾱ_t x̂0') / √(1−ᾱ_t). With x̂0' = x̂0 − s·∇G (eq. 12-13, Δy0 = −s∇G) that is eq. 14:

    ε̃ = ε + √(ᾱ_t / (1−ᾱ_t)) · s · ∇G.

`schedule` chooses the x̂0 step s:
  - "constant":  s = η. A fixed step in image/latent space (DPS / universal-guidance style); the default because its
                 effect does not explode at high noise and η means the same thing at every step.
  - "eq15":      s = η (1−ᾱ_t)/√ᾱ_t, so that ε̃ = ε + η √(1−ᾱ_t) ∇G, the paper's eq. 15 (with its extra η). Needs
                 ᾱ_t: `alphas_cumprod` for the sampler hook; from sigma (ᾱ = 1/(1+σ²)) in `guide_denoised`.

Classifier-free guidance (eq. 16): ε = ε_u + w_c (ε_c − ε_u + √(1−ᾱ_t) ∇G). The hook is applied to the *CFG-combined*
x̂0 (the sampler's eps_fn already combines), so the gradient term is added once, after CFG, and evaluated at the
combined x̂0. Eq. 16 puts it inside the bracket, i.e. multiplies it by w_c: `cfg_scale_gradient=True` multiplies the
step by `cfg_scale` (= w_c) and, with schedule "eq15", reproduces eq. 16 exactly (tested). With the default
`cfg_scale_gradient=False` the gradient strength is independent of w_c.

∇G is taken w.r.t. x̂0 in diffusion space, through the differentiable codec decode (chain rule through the VAE
decoder for latent models; the paper's ∇_{P̃} for pixel models).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, ReposeError
from .config import GuidanceConfig
from .energies import feature_energy, keypoint_energy, reference_features
from .targets import KeypointTarget

log = logging.getLogger("repose")

# Cheaper window for callers that want it (bench/bench_guidance.py prices it): every 2nd step of the first half,
# where the pose is decided. The defaults (GuidanceConfig) guide every step.
CHEAP_WINDOW = {"start": 0.0, "end": 0.5, "every": 2}

_INFERENCE_WEIGHTS_HELP = (
    "The pose estimator or the codec has weights that were created inside torch.inference_mode(), and inference "
    "tensors cannot take part in the backward pass that gradient guidance needs. Load/build the estimator and the "
    "codec outside inference_mode (e.g. at node/model load time, not inside the sampling call), or clone their "
    "weights outside inference_mode: `with torch.inference_mode(False): module.load_state_dict({k: v.clone() for k, v "
    "in module.state_dict().items()})`.")


def resize_longer_side(img: Tensor, size: int | None) -> Tensor:
    """Differentiably resize (B, C, H, W) so that its longer side is `size` (aspect kept); None = unchanged.

    Bilinear with antialiasing when shrinking (its backward exists on CPU and CUDA)."""
    if size is None:
        return img
    H, W = img.shape[-2:]
    scale = size / max(H, W)
    if scale == 1.0:
        return img
    out = (max(1, round(H * scale)), max(1, round(W * scale)))
    return F.interpolate(img, size=out, mode="bilinear", align_corners=False, antialias=scale < 1.0)


class PoseGuidance:
    """x̂0 hook implementing gradient guidance from Pose Interaction Fields (eq. 11-16).

    Args:
        estimator:       PoseEstimator (features / heatmaps / features_and_heatmaps on RGB [0,1]); put in eval mode.
                         May be None when the energy is a callable.
        codec:           Codec; `decode(z)` maps diffusion space to a [-1,1] image, differentiably.
        target:          energy "keypoint": Pose / PoseFrame / list (see `KeypointTarget`) or COCO-17 keypoints
                         (B, 17, 3); energy "feature": the reference image (B|1, 3, H, W) RGB in [0, 1] (P_ref, eq. 11).
        config:          GuidanceConfig (the settings: η, energy, window, schedule, ...); None = its defaults.
        **settings:      GuidanceConfig fields overriding `config` (e.g. scale=0.1); `energy` may also be a
                         callable(pred01 (B,3,H,W) in [0,1]) -> (B,) energies.
        total_steps:     number of sampling steps (needed for a window other than [0, 1]); `guide_denoised` passes it.
        keypoint_canvas: (H, W) canvas of keypoint tensors; None = pixels of the decoded image.
        alphas_cumprod:  (T,) ᾱ table that the sampler's t indexes, for schedule "eq15" in the sampler hook.
        cfg_scale:       w_c, used when config.cfg_scale_gradient follows eq. 16 literally.
    `history` records, per guided step: step, t, alpha_bar, energy (list per sample), grad_norm, step_size.
    """

    def __init__(self, estimator, codec, target=None, config: GuidanceConfig | None = None, *,
                 total_steps: int | None = None, keypoint_canvas: tuple[int, int] | None = None,
                 alphas_cumprod: Tensor | None = None, cfg_scale: float = 1.0, **settings):
        energy_fn = settings.pop("energy") if callable(settings.get("energy")) else None
        config = (config if config is not None else GuidanceConfig()).replace(**settings)
        if total_steps is not None and total_steps < 1:
            raise InputError(f"total_steps must be >= 1, got {total_steps}")
        if config.schedule == "eq15" and alphas_cumprod is None:
            log.debug("schedule 'eq15' without alphas_cumprod: only guide_denoised (sigma-based) can be used")
        if not callable(getattr(codec, "decode", None)):
            raise InputError(f"guidance needs a codec with a differentiable decode(z) -> [-1, 1] image (IdentityCodec "
                             f"for pixel-space models), got {type(codec).__name__}")
        if energy_fn is None and estimator is None:
            raise InputError(f"energy {config.energy!r} needs a pose estimator")
        self.config = config
        self.estimator = estimator.eval() if estimator is not None else None  # BN must use running statistics
        self.codec = codec
        self.energy_kind = energy_fn if energy_fn is not None else config.energy
        self.scale, self.start, self.end, self.every = config.scale, config.start, config.end, config.every
        self.clip_grad_norm = config.clip_grad_norm
        self.estimator_size = config.estimator_size
        self.total_steps = total_steps
        self.threshold = config.threshold
        self.schedule = config.schedule
        self.alphas_cumprod = (None if alphas_cumprod is None
                               else torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu())
        self.cfg_scale, self.cfg_scale_gradient = float(cfg_scale), config.cfg_scale_gradient
        self.reduction = config.reduction
        self.history: list[dict] = []
        self._ref_cache: dict = {}
        self.keypoint_target = None
        self.reference = None
        energy = self.energy_kind
        # Gaussian targets as wide as the estimator's training targets (SmallHRNet stores its sigma), so that the
        # keypoint energy is minimal at the target pose.
        sigma = config.heatmap_sigma or float(getattr(getattr(estimator, "config", None), "sigma", 2.0))
        if energy == "keypoint":
            if target is None:
                raise InputError("keypoint guidance needs a target pose (Pose, PoseFrame, list or (B,17,3) keypoints)")
            self.keypoint_target = KeypointTarget(target, canvas=keypoint_canvas, sigma=sigma)
        elif energy == "feature":
            if not isinstance(target, Tensor) or target.ndim != 4 or target.shape[1] != 3:
                raise InputError("feature guidance needs the reference image P_ref as a (B, 3, H, W) RGB tensor in "
                                 f"[0, 1] as `target`, got {type(target).__name__} "
                                 f"{tuple(target.shape) if isinstance(target, Tensor) else ''}")
            with torch.inference_mode(False):
                self.reference = target.detach().clone()

    # -- schedule -------------------------------------------------------------------------------------------------
    def is_active(self, step_index: int, total_steps: int | None = None) -> bool:
        """Whether step `step_index` (0-based) of `total_steps` is guided."""
        if self.scale == 0.0 or step_index % self.every != 0:
            return False
        if self.start <= 0.0 and self.end >= 1.0:
            return True
        total = total_steps if total_steps is not None else self.total_steps
        if total is None:
            raise InputError("a guidance window (start/end) needs the number of sampling steps: pass total_steps= "
                             "to PoseGuidance (or use guide_denoised, which receives it)")
        progress = step_index / total
        return self.start <= progress and (progress < self.end or self.end >= 1.0)

    def step_size(self, alpha_bar: Tensor | None) -> Tensor | float:
        """x̂0 step s for a gradient (module docstring); alpha_bar: (B,) or scalar tensor, or None for "constant"."""
        s = self.scale * (self.cfg_scale if self.cfg_scale_gradient else 1.0)
        if self.schedule == "constant":
            return s
        if alpha_bar is None:
            raise InputError("guidance schedule 'eq15' needs ᾱ_t: pass alphas_cumprod= to PoseGuidance")
        return s * (1.0 - alpha_bar) / alpha_bar.sqrt()

    def _alpha_bar_at(self, t, like: Tensor) -> Tensor | None:
        if self.schedule == "constant":
            return None
        if self.alphas_cumprod is None:
            raise InputError("guidance schedule 'eq15' in the sampler hook needs alphas_cumprod= (the diffusion's "
                             "ᾱ_t table that t indexes)")
        idx = torch.as_tensor(t, device="cpu").long().reshape(-1)
        return self.alphas_cumprod[idx].to(device=like.device, dtype=like.dtype)

    # -- energy and gradient --------------------------------------------------------------------------------------
    def decode01(self, x0: Tensor) -> Tensor:
        """Diffusion space -> estimator input: decode (differentiable), [-1,1] -> [0,1], resize. No clamp: a clamp
        would zero the gradient of every out-of-range pixel, which is common for x̂0 at high noise."""
        img = (self.codec.decode(x0) + 1.0) / 2.0
        img = resize_longer_side(img, self.estimator_size)
        if self.estimator is not None:
            p = next(self.estimator.parameters(), None)
            if p is not None:
                img = img.to(p.dtype)
        return img

    def _reference_features(self, size: tuple[int, ...]) -> Tensor:
        assert self.estimator is not None and self.reference is not None  # energy "feature": both set in __init__
        p = next(self.estimator.parameters(), None)
        key = (tuple(size), None if p is None else (p.device, p.dtype))
        if key not in self._ref_cache:
            ref = self.reference
            if p is not None:
                ref = ref.to(device=p.device, dtype=p.dtype)
            with torch.inference_mode(False):  # cached across steps: must not be an inference tensor
                if tuple(ref.shape[-2:]) != tuple(size):
                    ref = F.interpolate(ref, size=size, mode="bilinear", align_corners=False, antialias=True)
                self._ref_cache[key] = reference_features(self.estimator, ref)
        return self._ref_cache[key]

    def energy_of_image(self, pred01: Tensor) -> Tensor:
        """G(P̃) for an estimator-ready image (B, 3, H, W) in [0, 1] -> (B,)."""
        if callable(self.energy_kind):
            return self.energy_kind(pred01)
        if self.energy_kind == "feature":
            return feature_energy(self.estimator, pred01, threshold=self.threshold, reduction=self.reduction,
                                  ref_features=self._reference_features(pred01.shape[-2:]))
        assert self.keypoint_target is not None  # energy "keypoint": made in __init__
        return keypoint_energy(self.estimator, pred01, self.keypoint_target, threshold=self.threshold,
                               reduction=self.reduction)

    def energy(self, x0: Tensor) -> Tensor:
        """G for a diffusion-space sample x0 (B, C, h, w) -> (B,); differentiable (used for training targets)."""
        return self.energy_of_image(self.decode01(x0))

    def gradient(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(∇_{x0} G, G) for a diffusion-space x0; works inside an outer no_grad / inference_mode."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x0.detach().clone().requires_grad_(True)  # a normal tensor even if x0 is an inference tensor
            try:
                energy = self.energy(x)
                (grad,) = torch.autograd.grad(energy.sum(), x)
            except RuntimeError as exc:
                if "Inference tensors cannot be saved for backward" in str(exc):
                    raise ReposeError(_INFERENCE_WEIGHTS_HELP) from exc
                raise
        return grad.detach(), energy.detach()

    def _clip(self, grad: Tensor) -> Tensor:
        if self.clip_grad_norm is None:
            return grad
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        factor = (self.clip_grad_norm / norm).clamp(max=1.0)
        return grad * factor.view(-1, *([1] * (grad.ndim - 1)))

    # -- the update -----------------------------------------------------------------------------------------------
    def apply(self, x0_hat: Tensor, step_index: int, *, alpha_bar: Tensor | None = None,
              total_steps: int | None = None, t=None) -> Tensor:
        """x̂0' = x̂0 − s·∇G on active steps; inactive steps return `x0_hat` itself (bit-identical "off")."""
        if not self.is_active(step_index, total_steps):
            return x0_hat
        grad, energy = self.gradient(x0_hat)
        raw_norm = grad.flatten(1).norm(dim=1)
        grad = self._clip(grad).to(x0_hat.dtype)
        s = self.step_size(alpha_bar)
        s_b = s.view(-1, *([1] * (x0_hat.ndim - 1))) if isinstance(s, Tensor) else s
        self.history.append({
            "step": int(step_index),
            "t": None if t is None else torch.as_tensor(t).detach().float().reshape(-1).tolist(),
            "alpha_bar": None if alpha_bar is None else alpha_bar.detach().float().reshape(-1).tolist(),
            "energy": energy.float().tolist(),
            "grad_norm": raw_norm.float().tolist(),
            "step_size": s.detach().float().reshape(-1).tolist() if isinstance(s, Tensor) else [float(s)],
        })
        return x0_hat - s_b * grad

    def __call__(self, x0_hat: Tensor, t, step_index: int) -> Tensor:
        """The sampler's x0_hook(x0_hat, t, step_index) -> x0_hat'. `t` indexes `alphas_cumprod` (schedule "eq15")."""
        alpha_bar = self._alpha_bar_at(t, x0_hat) if self.is_active(step_index) else None
        return self.apply(x0_hat, step_index, alpha_bar=alpha_bar, t=t)

    def reset(self) -> None:
        """Forget the recorded history (call between runs)."""
        self.history.clear()


def guide_denoised(guidance: PoseGuidance, denoised: Tensor, sigma, step_index: int, total: int, *,
                   alpha_bar: Tensor | None = None) -> Tensor:
    """Apply `guidance` to a k-diffusion-style x̂0 (ComfyUI's post-CFG "denoised"), for any model/sampler.

    k-diffusion samplers use d = (x − x̂0)/σ (= ε), so x̂0' = x̂0 − s∇G gives ε̃ = ε + s∇G/σ, the same update as the
    DDIM hook with σ = √((1−ᾱ)/ᾱ). ᾱ (only needed by schedule "eq15") is 1/(1+σ²) for ε/v-prediction (VP) models;
    pass `alpha_bar` explicitly for other parameterisations (e.g. flow matching). Inactive steps return `denoised`."""
    if total < 1 or not (0 <= step_index):
        raise InputError(f"guide_denoised needs 0 <= step_index and total >= 1, got step_index={step_index}, "
                         f"total={total}")
    if not guidance.is_active(step_index, total):
        return denoised
    if alpha_bar is None and guidance.schedule == "eq15":
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        alpha_bar = (1.0 / (1.0 + sig ** 2)).to(device=denoised.device, dtype=denoised.dtype)
    return guidance.apply(denoised, step_index, alpha_bar=alpha_bar, total_steps=total, t=sigma)
