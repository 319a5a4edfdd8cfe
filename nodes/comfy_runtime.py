"""ComfyUI runtime glue for the RePose nodes: model management, VAE codec, sampling, the guidance model patch.

This module imports ComfyUI at import time, so node modules import it inside their FUNCTION (the node modules
themselves must import without ComfyUI). No math lives here beyond adapting shapes and conventions: the diffusion
maths is `repose_core.diffusion` (k-diffusion adapter, CFG) and `repose_core.guidance` (pose guidance).

Conventions (ComfyUI 0.3.75):
- A ComfyUI sampler works in "sampler space" x = x0 + σ·ε and asks the model for the denoised x̂0 at σ
  (comfy/model_sampling.py EPS). `repose_core.diffusion.EpsDenoiser` is exactly that view of an ε-model.
- The LATENT a model samples is in "model space": for SD latents the VAE latent times 0.18215 (latent_format
  process_in); a RePose `Codec` encodes directly into that space ("already scaled", DESIGN.md).
- Nodes run under torch.inference_mode(). Tensors created there cannot be saved for backward, so every module that
  guidance differentiates through (pose estimator, VAE decoder) is made "grad ready" (`grad_ready`) outside it.
"""
from __future__ import annotations

import copy
import logging
import math
import weakref
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils

from ..repose_core.diffusion import EpsDenoiser, make_eps_fn, model_sampling_dict
from ..repose_core.errors import InputError
from ..repose_core.guidance import LatentRGBApprox, PoseGuidance, guide_denoised
from ..repose_core.models.codec import Codec
from .guidance_spec import GuidanceSpec

log = logging.getLogger("repose")


# --------------------------------------------------------------------------------------------------------------------
# Model management


class ModuleHolder(nn.Module):
    """Container given to comfy's ModelPatcher, which writes bookkeeping attributes (device, lowvram flags ...) onto
    the module it manages; holding ours keeps those attributes off the core classes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner


def patcher_for(module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Wrap a module so that ComfyUI loads/offloads it like its own models (comfy.model_management)."""
    return comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def load_to_device(*patchers) -> torch.device:
    """comfy.model_management.load_models_gpu on the given patchers (None entries are skipped); returns the device."""
    patchers = [p for p in patchers if p is not None]
    mm.load_models_gpu(patchers)
    return patchers[0].load_device if patchers else mm.get_torch_device()


def grad_ready(module: nn.Module) -> nn.Module:
    """Replace parameters/buffers that are inference tensors by normal copies, in place.

    ComfyUI loads and moves models inside torch.inference_mode(); autograd refuses to save such tensors for backward
    ("Inference tensors cannot be saved for backward"), which gradient guidance needs for the estimator and the
    decoder weights. Cheap when nothing needs replacing."""
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
    return module


def module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------------------------
# ComfyUI VAE as a repose Codec


_GRAD_DECODERS: "weakref.WeakKeyDictionary[Any, nn.Module]" = weakref.WeakKeyDictionary()


class ComfyVAECodec(Codec):
    """A ComfyUI VAE (comfy.sd.VAE) + its model's latent format as a repose `Codec`.

    encode: image [-1,1] (B,3,H,W) -> comfy VAE encode -> latent_format.process_in (model space).
    decode: model-space z -> process_out -> VAE decode -> [-1,1] image. With autograd on (guidance) it runs on a
    grad-ready copy of the VAE's first stage (ComfyUI's own weights are inference tensors), made once per VAE;
    without, ComfyUI's own VAE.decode (memory-managed, no copy)."""

    def __init__(self, vae, latent_format=None):
        super().__init__()
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise InputError("input 'vae' is empty or not a valid VAE; connect the VAE output of a checkpoint loader "
                             "or a VAELoader")
        self._vae = vae  # not a submodule: ComfyUI manages its memory
        self.latent_format = latent_format if latent_format is not None else comfy.latent_formats.SD15()
        self.channels = int(vae.latent_channels)
        ratio = vae.downscale_ratio
        if not isinstance(ratio, int):
            raise InputError(f"this VAE has a non-integer downscale ratio ({ratio!r}); only image VAEs are supported")
        self.factor = ratio

    def _encode(self, img: Tensor) -> Tensor:
        pixels = ((img.detach() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu()  # (B,3,H,W) -> (B,H,W,3)
        z = self._vae.encode(pixels)
        return self.latent_format.process_in(z.to(img.device, img.dtype))

    def grad_decoder(self, device: torch.device) -> nn.Module:
        decoder = _GRAD_DECODERS.get(self._vae)
        if decoder is None:
            with torch.inference_mode(False):
                decoder = grad_ready(copy.deepcopy(self._vae.first_stage_model)).requires_grad_(False).eval()
            _GRAD_DECODERS[self._vae] = decoder
        if module_device(decoder) != device:
            with torch.inference_mode(False):
                decoder.to(device)
        return decoder

    def _decode(self, z: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # previews / final images: ComfyUI's own decode, no weight copy needed
            image = self._vae.decode(self.latent_format.process_out(z).float())  # (B, H, W, 3) in [0, 1]
            return (image[..., :3].movedim(-1, 1) * 2.0 - 1.0).to(z.device, z.dtype)
        decoder = self.grad_decoder(z.device)
        dtype = next(decoder.parameters()).dtype
        out = decoder.decode(self.latent_format.process_out(z).to(dtype))
        return out.to(z.dtype)


def latent_rgb_codec(latent_format, factor: int = 8) -> LatentRGBApprox:
    """The cheap linear decoder (LatentRGBApprox) from a ComfyUI latent format's preview factors."""
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:
        raise InputError(f"the model's latent format ({type(latent_format).__name__}) has no latent_rgb_factors; "
                         f"choose decoder 'vae' and connect the model's VAE")
    return LatentRGBApprox(factors, getattr(latent_format, "latent_rgb_factors_bias", None), factor=factor)


def preview_latent_format(codec_name: str):
    """A ComfyUI LatentFormat whose linear preview shows a RePose diffusion space (for latent previews)."""
    from ..repose_core.models.codec import codec_spec

    if codec_name == "sd_vae":
        return comfy.latent_formats.SD15()
    channels, factor = codec_spec(codec_name)
    fmt = comfy.latent_formats.LatentFormat()
    fmt.latent_channels = channels
    sub = factor * factor
    # pixel space (f = 1) or pixel-unshuffle (channel c·f² + k = sub-pixel k of colour c): average the sub-pixels
    fmt.latent_rgb_factors = [[1.0 / sub if k // sub == c else 0.0 for c in range(3)] for k in range(channels)]
    return fmt


# --------------------------------------------------------------------------------------------------------------------
# Discrete schedule as ComfyUI model sampling


class _DiscreteEPS(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass


def model_sampling_for(diffusion) -> comfy.model_sampling.ModelSamplingDiscrete:
    """ComfyUI ModelSamplingDiscrete (ε-prediction) reproducing a repose GaussianDiffusion schedule, so that
    comfy.samplers.calculate_sigmas and every ComfyUI sampler see our discrete σ table."""
    info = model_sampling_dict(diffusion)
    settings = info["sampling_settings"]
    if settings is not None:
        return _DiscreteEPS(SimpleNamespace(sampling_settings=settings))
    ms = _DiscreteEPS(SimpleNamespace(sampling_settings={}))
    ms._register_schedule(given_betas=info["betas"].double())
    return ms


def sigma_step_index(sigma, sample_sigmas) -> tuple[int, int]:
    """(step index, total steps) of the sampler step evaluating `sigma` (tensor or float), given the schedule.

    Samplers that evaluate between two schedule entries (heun, dpm_2 ...) get the step they are in."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return 0, 1
    s = float(torch.as_tensor(sigma).reshape(-1)[0])
    table = [float(v) for v in sample_sigmas]
    total = len(table) - 1
    for i in range(total):
        if s >= table[i + 1] and not math.isclose(s, table[i + 1], rel_tol=1e-4, abs_tol=1e-7):
            return i, total
    return total - 1, total


# --------------------------------------------------------------------------------------------------------------------
# REPOSE_GUIDANCE: what PoseGradientGuidance produces


def prepare_guidance_modules(spec: GuidanceSpec, device: torch.device) -> None:
    """Estimator on `device` with grad-ready weights (ComfyUI may have moved it inside inference mode)."""
    inner = spec.estimator
    if module_device(inner) != device:
        with torch.inference_mode(False):
            inner.to(device)
    grad_ready(inner)


class GuidancePostCFG:
    """ComfyUI post-CFG function: pose guidance on the CFG-combined x̂0 of any model and any sampler.

    Registered with ModelPatcher.set_model_sampler_post_cfg_function; reads the schedule ComfyUI stores in
    transformer_options["sample_sigmas"] to know the step index (guidance window)."""

    def __init__(self, spec: GuidanceSpec, codec: Codec):
        self.spec = spec
        self.codec = codec
        self.guidance = spec.build(codec)
        self.calls = 0

    def __call__(self, args: dict) -> Tensor:
        mm.throw_exception_if_processing_interrupted()
        denoised = args["denoised"]
        sigmas = args.get("model_options", {}).get("transformer_options", {}).get("sample_sigmas")
        step, total = sigma_step_index(args["sigma"], sigmas)
        if not self.guidance.is_active(step, total):
            return denoised
        prepare_guidance_modules(self.spec, denoised.device)
        self.calls += 1
        return guide_denoised(self.guidance, denoised, args["sigma"], step, total)


def patch_model_with_guidance(model, spec: GuidanceSpec, codec: Codec):
    """model.clone() with the guidance post-CFG function and the estimator loaded alongside the model."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(GuidancePostCFG(spec, codec))
    if spec.estimator_patcher is not None:
        patched.set_additional_models("repose_pose_guidance", [spec.estimator_patcher])
    return patched


# --------------------------------------------------------------------------------------------------------------------
# RePose denoiser driven by ComfyUI samplers


class RePoseComfyModel(nn.Module):
    """What ComfyUI's samplers need around a repose PoseTransferModel: model_sampling (our discrete schedule as
    ComfyUI σ's), a latent format for previews, latent in/out hooks and inpaint scaling (BaseModel's contract)."""

    def __init__(self, diffusion_model: nn.Module, diffusion, codec_name: str):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling_for(diffusion)
        self.latent_format = preview_latent_format(codec_name)
        self.alphas_cumprod = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)

    def process_latent_in(self, latent: Tensor) -> Tensor:
        return latent

    def process_latent_out(self, latent: Tensor) -> Tensor:
        return latent

    def scale_latent_inpaint(self, sigma, noise, latent_image, **_):
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1)), noise,
                                                 latent_image)

    def get_dtype(self) -> torch.dtype:
        p = next(self.diffusion_model.parameters(), None)
        return p.dtype if p is not None else torch.float32


class RePoseGuider(comfy.samplers.CFGGuider):
    """A ComfyUI GUIDER for a RePose model: x̂0 = EpsDenoiser(CFG-combined ε of the pose-transfer model), then
    optional pose guidance. Works with KSAMPLER samplers, SamplerCustomAdvanced and the RePoseKSampler node.

    `cond` is the prepared AppearanceCond, `null_cond` the CFG "∅", `pose_map` the target pose in diffusion space."""

    def __init__(self, model_patcher, pose_map: Tensor, cond, null_cond, cfg: float = 2.0, mode: str = "single",
                 w_pose: float | None = None, w_app: float | None = None, guidance: GuidanceSpec | None = None,
                 codec: Codec | None = None, extra_patchers=()):
        super().__init__(model_patcher)
        self.pose_map, self.cond, self.null_cond = pose_map, cond, null_cond
        self.cfg, self.mode, self.w_pose, self.w_app = float(cfg), mode, w_pose, w_app
        self.guidance_spec = guidance
        self.codec = codec
        self.extra_patchers = [p for p in extra_patchers if p is not None]
        self.guidance: PoseGuidance | None = None
        self.sigmas: Tensor | None = None

    def set_conds(self, positive=None, negative=None):  # conditions are the REPOSE_COND, not CONDITIONING
        pass

    def predict_x0(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x̂0 at noise level σ: the CFG-combined denoiser, then pose guidance on the steps where it is active."""
        mm.throw_exception_if_processing_interrupted()
        denoised = self.denoiser(x, sigma)
        if self.guidance is not None:
            step, total = sigma_step_index(sigma, self.sigmas)
            if self.guidance.is_active(step, total):
                prepare_guidance_modules(self.guidance_spec, denoised.device)
                denoised = guide_denoised(self.guidance, denoised, sigma, step, total)
        return denoised

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        # ComfyUI's GUIDER hook (CFGGuider.outer_predict_noise calls it by this name); despite the name, ComfyUI
        # expects the denoised x̂0 here, as its own CFGGuider returns. `timestep` is σ.
        return self.predict_x0(x, timestep)

    def _move(self, value, device, dtype):
        if isinstance(value, Tensor):
            return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(self._move(v, device, dtype) for v in value)
        if hasattr(value, "__dataclass_fields__"):
            import dataclasses
            return dataclasses.replace(value, **{f.name: self._move(getattr(value, f.name), device, dtype)
                                                 for f in dataclasses.fields(value) if f.init})
        return value

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        device = load_to_device(self.model_patcher, *self.extra_patchers)
        self.inner_model = self.model_patcher.model
        dtype = self.inner_model.get_dtype()
        core = self.inner_model.diffusion_model
        pose_map = self._move(self.pose_map, device, dtype)
        cond = self._move(self.cond, device, dtype)
        null_cond = self._move(self.null_cond, device, dtype)
        eps_fn = make_eps_fn(core, pose_map, cond, null_cond, self.cfg, self.mode, self.w_pose, self.w_app)

        def eps_in_model_dtype(x_t, t):
            return eps_fn(x_t.to(dtype), t).float()

        # quantize=True: the discrete timestep nearest to σ, exactly as ComfyUI's ModelSamplingDiscrete.timestep.
        self.denoiser = EpsDenoiser(eps_in_model_dtype, self.inner_model.alphas_cumprod, quantize=True)
        self.sigmas = sigmas.detach().cpu()
        if self.guidance_spec is not None:
            if self.codec is None:
                raise InputError("pose guidance needs the model's codec (connect the VAE for a latent model)")
            self.guidance = self.guidance_spec.build(self.codec, total_steps=len(sigmas) - 1)
        if denoise_mask is not None:
            denoise_mask = comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, device)
        extra_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        extra_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_options, "seed": seed}
        try:
            samples = sampler.sample(self, sigmas.to(device), extra_args, callback, noise.to(device),
                                     latent_image.to(device), denoise_mask, disable_pbar)
        finally:
            del self.inner_model
        return samples.to(torch.float32)


def noise_for(latent: Tensor, seed: int) -> Tensor:
    """ComfyUI's seeded noise (comfy.sample.prepare_noise): the same seed gives the same noise as KSampler."""
    return comfy.sample.prepare_noise(latent, seed)


def ksampler_sigmas(model_sampling, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0,
                    final_timestep: int = 0) -> Tensor:
    """σ schedule exactly as ComfyUI's KSampler computes it (incl. denoise < 1 and the samplers that drop the
    penultimate σ). final_timestep > 0 (RePoseConfig.final_timestep): the `steps` steps end at that timestep's σ, whose
    x̂0 is the result (the step to σ = 0 returns it), like the core's DDIM."""
    if final_timestep:
        final = float(model_sampling.sigmas[int(final_timestep)])
        n = steps
        while True:  # a longer schedule, cut where it passes `final`, until `steps` steps remain above it
            above = ksampler_sigmas(model_sampling, sampler_name, scheduler, n, denoise)
            above = above[above > final * (1 + 1e-6)]
            if len(above) >= steps or n >= 20 * steps:
                break
            n += steps - len(above)
        return torch.cat([above[: max(steps - 1, 0)], above.new_tensor([final, 0.0])])
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; accepted: {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")

    def compute(n):
        drop = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sig = comfy.samplers.calculate_sigmas(model_sampling, scheduler, n + 1 if drop else n)
        return torch.cat([sig[:-2], sig[-1:]]) if drop else sig

    if denoise is None or denoise > 0.9999:
        return compute(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    total = int(steps / denoise)
    return compute(total)[-(steps + 1):]


def sampler_for(sampler_name: str):
    """comfy.samplers.sampler_object(name), for the samplers that only need x̂0 from the model."""
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise InputError(f"unknown sampler {sampler_name!r}; accepted: {', '.join(comfy.samplers.KSampler.SAMPLERS)}")
    if "cfg_pp" in sampler_name:
        # CFG++ samplers read ComfyUI's separate cond/uncond predictions through a post-CFG hook; the RePose CFG
        # combines ε inside repose_core and has no ComfyUI conditionings to report.
        plain = sampler_name.replace("_cfg_pp", "")
        raise InputError(f"sampler {sampler_name!r} (CFG++) is not supported by RePose KSampler; use {plain!r} or "
                         f"another sampler without '_cfg_pp'")
    return comfy.samplers.sampler_object(sampler_name)


def preview_callback(patcher, steps: int, x0_output: dict | None = None):
    """ComfyUI's latent-preview + progress-bar callback (latent_preview.prepare_callback)."""
    import latent_preview

    return latent_preview.prepare_callback(patcher, steps, x0_output)


def resize_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """ComfyUI MASK (B,H,W) or (H,W) -> (B,1,height,width) float in [0,1] (bilinear)."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise InputError(f"input 'mask' must be a ComfyUI MASK (batch, height, width), got shape {tuple(mask.shape)}")
    m = mask.float()[:, None]
    if m.shape[-2:] != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)
