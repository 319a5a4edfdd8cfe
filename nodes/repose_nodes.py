"""RePoseDM nodes: load a model, Recurrent Pose Alignment (conditions + the paper's Fig. 9 warps + flow), and a
KSampler that drives the RePose denoiser with ComfyUI's own samplers and schedulers.

Thin: the model is repose_core.models.repose.RePoseDM, the alignment repose_core.transfer_ops, sampling maths
repose_core.diffusion (EpsDenoiser, CFG) behind ComfyUI's samplers (nodes/comfy_runtime.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..repose_core.errors import CheckpointError, InputError
from .model_files import DTYPES, check_kind, list_models, resolve_dtype, resolve_model
from .utils import check_finite, comfy_image_to_core, comfy_progress, core_to_comfy_image, reports_user_errors

log = logging.getLogger("repose")
CATEGORY = "RePose/transfer"
DEFAULT_MODEL = "repose_default_full.safetensors"
CFG_MODES = ("single", "disentangled")


def _sampler_lists() -> tuple[list, list]:
    """ComfyUI's sampler and scheduler names (fallback lists when ComfyUI is not importable, e.g. in unit tests)."""
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except ImportError:
        return ["euler", "ddim", "dpmpp_2m"], ["normal", "karras", "simple"]


# --------------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedRePose:
    """REPOSE_MODEL: the RePoseDM (b1/b2/full), its ComfyUI patcher, diffusion schedule and defaults."""

    model: Any          # repose_core.models.repose.RePoseDM
    patcher: Any        # comfy ModelPatcher around nodes.comfy_runtime.RePoseComfyModel
    diffusion: Any      # repose_core.diffusion.GaussianDiffusion
    name: str
    kind: str

    @property
    def config(self):
        return self.model.config

    def on_device(self):
        """Load through comfy.model_management; returns (model, device, dtype)."""
        from .comfy_runtime import load_to_device

        load_to_device(self.patcher)
        p = next(self.model.parameters())
        return self.model, p.device, p.dtype


def load_repose_model(ckpt_name: str, dtype: str = "auto") -> LoadedRePose:
    """A RePoseDM (repose_dm) or converted PIDM (pidm -> variant b1) safetensors -> REPOSE_MODEL."""
    import comfy.model_management as mm

    from ..repose_core.checkpoint import load_model
    from ..repose_core.diffusion import GaussianDiffusion, linear_betas
    from ..repose_core.models.repose import as_repose_model
    from .comfy_runtime import RePoseComfyModel, patcher_for

    path = resolve_model("repose", ckpt_name)
    kind = check_kind(path, ("repose_dm", "pidm"), "RePose Load Model")
    torch_dtype = resolve_dtype(dtype, mm.get_torch_device())
    with torch.inference_mode(False):  # normal tensors: ComfyUI calls nodes inside inference_mode
        if path.lower().endswith(".safetensors"):
            core = load_model(path, device="cpu")
        else:  # PIDM's last.pt (or a bare PIDM state dict), converted on load; the pickle runs no code
            from ..repose_core.models.pidm import read_pidm_checkpoint

            try:
                core, config_name = read_pidm_checkpoint(path, entry=None)
            except CheckpointError as e:
                raise CheckpointError(f"{e}\n  RePose Load Model reads a .pt/.pth/.ckpt file only if it is a PIDM "
                                      f"checkpoint (PIDM's last.pt or its 'ema' state dict); RePose models are "
                                      f".safetensors files") from e
            kind = "pidm"
            log.info("RePose: %s read as a PIDM checkpoint (config %s); convert it once with train/convert_pidm.py "
                     "to load it faster", ckpt_name, config_name)
        model = as_repose_model(core).to(dtype=torch_dtype).eval()
    diffusion = GaussianDiffusion(linear_betas(model.config.timesteps))
    holder = RePoseComfyModel(model, diffusion, model.config.codec)
    log.info("RePose: loaded %s (%s, variant %s, codec %s, %s)", ckpt_name, kind, model.variant, model.config.codec,
             torch_dtype)
    return LoadedRePose(model, patcher_for(holder), diffusion, ckpt_name, kind or "repose_dm")


class LoadRePoseModel:
    DESCRIPTION = ("Loads a RePoseDM pose-transfer model (variants full / b2 = with Recurrent Pose Alignment, b1 = "
                   "PIDM), a PIDM checkpoint converted with train/convert_pidm.py, or PIDM's own last.pt (.pt/.pth/"
                   ".ckpt, read without running pickled code and converted on load), from models/repose or the "
                   "weights bundled with the pack. ComfyUI manages its memory (loaded to the GPU when sampling).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("REPOSE_MODEL",)
    RETURN_NAMES = ("repose_model",)
    OUTPUT_TOOLTIPS = ("The pose-transfer model for Recurrent Pose Align and RePose KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (list_models("repose", DEFAULT_MODEL), {
                "tooltip": "Model file in models/repose (RePoseDM or converted PIDM .safetensors, or PIDM's "
                           "last.pt); repose_default_full ships with the pack.",
            }),
            "dtype": (list(DTYPES), {
                "default": "auto",
                "tooltip": "Weight precision: auto = fp32 on CPU, fp16 on GPUs that support it.",
            }),
        }}

    @reports_user_errors
    def load(self, ckpt_name, dtype="auto"):
        return (load_repose_model(ckpt_name, dtype),)


# --------------------------------------------------------------------------------------------------------------------
# Recurrent Pose Alignment


@dataclass
class RePoseCond:
    """REPOSE_COND: everything the sampler needs for one batch of (source, target pose) pairs."""

    alignment: Any       # repose_core.transfer_ops.Alignment
    codec: Any           # the codec used (decode for IMAGE outputs, guidance)
    image_size: tuple    # (H, W) pixels
    model_name: str


def _target_frames(target_pose, target_pose_image, encoding: str, height: int, width: int, person: int = -1):
    """-> pixel-resolution pose tensor (B, P, H, W) in [0, 1] from POSE_KEYPOINT or a skeleton IMAGE. For
    POSE_KEYPOINT, which person was used and how the pose canvas was fitted to the image is logged."""
    from ..repose_core.pose import from_pose_keypoint
    from ..repose_core.transfer_ops import render_target_poses

    if target_pose is not None:
        frames = from_pose_keypoint(target_pose, source="input 'target_pose'")
        report: list = []
        maps = render_target_poses(frames, height, width, encoding, person=person, report=report)
        for line in report:
            log.info("RePose Recurrent Pose Align: %s", line)
        return maps
    if target_pose_image is None:
        raise InputError("connect a target pose: 'target_pose' (POSE_KEYPOINT) or 'target_pose_image' (a skeleton "
                         "IMAGE)")
    if encoding != "skeleton_codec":
        raise InputError("this model uses PIDM's 20-channel pose map, which is drawn from keypoints: connect "
                         "'target_pose' (POSE_KEYPOINT, e.g. from RePose Load Pose or Pose From Image) instead of "
                         "'target_pose_image'")
    img = (comfy_image_to_core(target_pose_image, "target_pose_image") + 1.0) / 2.0  # (B,3,h,w) in [0,1]
    if tuple(img.shape[-2:]) != (height, width):
        img = torch.nn.functional.interpolate(img, size=(height, width), mode="bilinear", align_corners=False)
    return img


# The largest source RecurrentPoseAlign accepts, in units of the model's own canvas (H x W pixels): RPA attends over
# all positions (memory grows with the square of the pixel count), so a photo far larger than the canvas cannot be
# served; measured peak memory at the bound: bench/bench_input_bounds.py.
MAX_SOURCE_AREA = 4           # x the canvas area (e.g. 2x each side)
MAX_SOURCE_BATCH_AREA = 16    # x the canvas area, summed over the batch


def check_source_size(H: int, W: int, batch: int, canvas: tuple) -> None:
    """InputError naming input 'source' when it is larger than the model can align (see MAX_SOURCE_AREA)."""
    ch, cw = canvas
    if H * W > MAX_SOURCE_AREA * ch * cw:
        raise InputError(f"input 'source' is {W}x{H} pixels; this model works at {cw}x{ch} and accepts at most "
                         f"{MAX_SOURCE_AREA}x that area ({MAX_SOURCE_AREA * ch * cw:,} pixels): scale the image to "
                         f"{cw}x{ch} first (e.g. ImageScale / Upscale Image to width {cw}, height {ch})")
    if batch * H * W > MAX_SOURCE_BATCH_AREA * ch * cw:
        raise InputError(f"input 'source' holds {batch} images of {W}x{H}; this model aligns at most "
                         f"{MAX_SOURCE_BATCH_AREA * ch * cw:,} pixels per run ({MAX_SOURCE_BATCH_AREA} canvases of "
                         f"{cw}x{ch}); split the batch")


def recurrent_pose_align(repose_model: LoadedRePose, source, target_pose=None, target_pose_image=None,
                         iterations: int = 0, vae=None, person: int = -1):
    """-> (REPOSE_COND, warped IMAGE batch (iterations x batch), flow IMAGE)."""
    import torch.nn.functional as F

    from ..repose_core.flow_vis import flow_to_rgb
    from ..repose_core.transfer_ops import align, pair_batches
    from .comfy_runtime import ComfyVAECodec

    model, device, dtype = repose_model.on_device()
    config = model.config
    if config.codec == "sd_vae":
        if vae is None:
            raise InputError("this model works in the latent space of the SD VAE: connect its 'vae' input")
        model.set_codec(ComfyVAECodec(vae))
    codec = model.codec
    src = comfy_image_to_core(source, "source")  # (B,3,H,W) in [-1,1]
    H, W = src.shape[-2:]
    codec.check_image(src)  # InputError naming the size and the accepted multiple
    check_source_size(H, W, src.shape[0], tuple(config.image_size))
    if (H, W) != tuple(config.image_size):
        log.warning("RePose: source is %dx%d, the model was trained at %dx%d (H x W); results may degrade",
                    H, W, *config.image_size)
    pose = _target_frames(target_pose, target_pose_image, config.pose_encoding, H, W, person)
    src, pose = pair_batches(src, pose, ("input 'source'", "the target pose"))
    n_iter = iterations or (config.rpa.iterations if config.rpa is not None else 0)
    progress = comfy_progress(max(n_iter, 1))
    result = align(model, src.to(device, dtype), pose.to(device, dtype), iterations=iterations or None,
                   progress=progress)
    progress(max(n_iter, 1))
    if result.previews:
        warped = torch.cat([core_to_comfy_image(p.float()) for p in result.previews])  # (N*B, H, W, 3)
    else:  # b1 has no alignment: show the source itself
        warped = core_to_comfy_image(src.float())
    if result.flow is not None:
        flow_img = F.interpolate(flow_to_rgb(result.flow.float()), size=(H, W), mode="nearest")
    else:
        flow_img = torch.ones(src.shape[0], 3, H, W)  # zero flow = white
    flow_img = flow_img.permute(0, 2, 3, 1).cpu().contiguous()
    cond = RePoseCond(result, codec, (H, W), repose_model.name)
    return cond, warped, flow_img


class RecurrentPoseAlign:
    DESCRIPTION = ("Recurrent Pose Alignment (RePoseDM Sec. 3.2): estimates, in N recurrent refinements, the flow "
                   "that warps the source person into the target pose, and prepares the appearance condition for "
                   "RePose KSampler. Also outputs the warped source after every iteration (the paper's Fig. 9) and "
                   "the final flow as a colour image (hue = direction, saturation = magnitude).")
    CATEGORY = CATEGORY
    FUNCTION = "align"
    RETURN_TYPES = ("REPOSE_COND", "IMAGE", "IMAGE")
    RETURN_NAMES = ("repose_cond", "warped", "flow")
    OUTPUT_TOOLTIPS = ("Conditions for RePose KSampler.",
                       "Warped source after each RPA iteration (iterations x batch images; the source for b1).",
                       "Final flow, HSV colour wheel (white = no motion).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repose_model": ("REPOSE_MODEL", {"tooltip": "From RePose Load Model."}),
            "source": ("IMAGE", {"tooltip": "Photo(s) of the person whose appearance is kept; the output has its "
                                            "size (width and height must be multiples of the model's factor)."}),
            "iterations": ("INT", {"default": 0, "min": 0, "max": 32,
                                   "tooltip": "RPA iterations N; 0 = the number the model was trained with."}),
        }, "optional": {
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "Target pose (RePose Load Pose, Pose From Image, DWPose)."}),
            "target_pose_image": ("IMAGE", {"tooltip": "Or a skeleton image (models with skeleton pose encoding)."}),
            "vae": ("VAE", {"tooltip": "The SD VAE, for models that work in its latent space."}),
            "person": ("INT", {"default": -1, "min": -1, "max": 255,
                               "tooltip": "Which person of 'target_pose' to use: -1 = the one with the most confident "
                                          "body joints (DWPose may list a face-only person first), 0, 1, ... = by "
                                          "index. The choice and how the pose canvas was fitted to the source "
                                          "(aspect ratio kept, centred) are written to the log."}),
        }}

    @reports_user_errors
    def align(self, repose_model, source, iterations, target_pose=None, target_pose_image=None, vae=None, person=-1):
        return recurrent_pose_align(repose_model, source, target_pose, target_pose_image, iterations, vae, person)


# --------------------------------------------------------------------------------------------------------------------
# Sampling


def repose_sample(repose_model: LoadedRePose, repose_cond: RePoseCond, seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, denoise: float = 1.0, cfg_mode: str = "single",
                  pose_scale: float = 2.0, appearance_scale: float = 2.0, guidance=None, edit_mask=None,
                  reference=None, disable_pbar: bool = False, final_timestep: int = -1):
    """-> ({"samples": z}, IMAGE). ComfyUI's seeded noise, σ schedule and sampler drive the RePose denoiser."""
    from .comfy_runtime import (
        RePoseGuider, load_to_device, noise_for, preview_callback, resize_mask, sampler_for, ksampler_sigmas,
    )
    from ..repose_core.transfer_ops import final_timestep_of

    if cfg_mode not in CFG_MODES:
        raise InputError(f"input 'cfg_mode' is {cfg_mode!r}; accepted: {', '.join(CFG_MODES)}")
    check_finite(cfg=cfg, denoise=denoise, pose_scale=pose_scale, appearance_scale=appearance_scale)
    if not 0.0 <= denoise <= 1.0:
        raise InputError(f"input 'denoise' is {denoise}; accepted: 0 to 1")
    if denoise < 1.0 and reference is None:
        raise InputError(f"input 'denoise' is {denoise}: below 1 the sampler starts from the 'reference' image "
                         f"(denoise 0 returns it unchanged), but no reference is connected; connect 'reference' or "
                         f"set denoise to 1")
    if repose_cond.model_name != repose_model.name:
        log.warning("RePose: the condition was prepared with %s but sampling uses %s", repose_cond.model_name,
                    repose_model.name)
    al = repose_cond.alignment
    codec = repose_cond.codec
    latent = torch.zeros_like(al.source_z, dtype=torch.float32, device="cpu")  # (B, C, h, w)
    denoise_mask = None
    if reference is not None:
        ref = comfy_image_to_core(reference, "reference")
        if tuple(ref.shape[-2:]) != tuple(repose_cond.image_size):
            raise InputError(f"input 'reference' is {ref.shape[-1]}x{ref.shape[-2]} pixels but the source is "
                             f"{repose_cond.image_size[1]}x{repose_cond.image_size[0]}; give a reference of the "
                             f"source's size")
        if ref.shape[0] not in (1, latent.shape[0]):
            raise InputError(f"input 'reference' has {ref.shape[0]} images for a batch of {latent.shape[0]}")
        device = load_to_device(repose_model.patcher)
        with torch.no_grad():
            z = codec.encode(ref.to(device, al.source_z.dtype)).float().cpu()
        latent = z.expand_as(latent).contiguous() if z.shape[0] == 1 else z
    if edit_mask is not None:
        if reference is None:
            raise InputError("appearance editing with 'edit_mask' needs 'reference': the image whose unmasked "
                             "region is kept (mask 1 = regenerate, 0 = keep)")
        denoise_mask = resize_mask(edit_mask, *latent.shape[-2:])
        if denoise_mask.shape[0] not in (1, latent.shape[0]):
            raise InputError(f"input 'edit_mask' has {denoise_mask.shape[0]} masks for a batch of {latent.shape[0]}")
    sampler = sampler_for(sampler_name)
    model_sampling = repose_model.patcher.model.model_sampling
    final_timestep = final_timestep_of(repose_model.config, final_timestep)   # -1 = the model's
    sigmas = ksampler_sigmas(model_sampling, sampler_name, scheduler, steps, denoise, final_timestep)
    noise = noise_for(latent, seed)
    callback = preview_callback(repose_model.patcher, max(len(sigmas) - 1, 1))
    guider = RePoseGuider(repose_model.patcher, al.pose_map, al.cond, al.null_cond, cfg=cfg, mode=cfg_mode,
                          w_pose=pose_scale, w_app=appearance_scale, guidance=guidance, codec=codec,
                          extra_patchers=[guidance.estimator_patcher] if guidance is not None else [])
    samples = guider.sample(noise, latent, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                            disable_pbar=disable_pbar, seed=seed)
    p = next(repose_model.model.parameters())
    with torch.no_grad():
        image = core_to_comfy_image(codec.decode(samples.to(p.device, p.dtype)).float())
    return {"samples": samples.cpu()}, image


class RePoseKSampler:
    DESCRIPTION = ("Generates the person of the source in the target pose with the RePose denoiser, driven by "
                   "ComfyUI's own samplers and schedulers (classifier-free guidance on the appearance, paper eq. 16; "
                   "optional pose gradient guidance; optional appearance editing: regenerate only the masked part "
                   "of a reference image). Shows latent previews and a progress bar; Cancel stops it.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "image")
    OUTPUT_TOOLTIPS = ("The sample in the model's diffusion space.", "The decoded image (source size).")

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = _sampler_lists()
        return {"required": {
            "repose_model": ("REPOSE_MODEL", {"tooltip": "From RePose Load Model."}),
            "repose_cond": ("REPOSE_COND", {"tooltip": "From Recurrent Pose Align."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "Noise seed (the same seed gives the same noise as ComfyUI's KSampler)."}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000, "tooltip": "Sampling steps."}),
            "cfg": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale w on the appearance (PIDM/RePoseDM: 2)."}),
            "sampler_name": (samplers, {"default": "euler", "tooltip": "ComfyUI sampler."}),
            "scheduler": (schedulers, {"default": "karras" if "karras" in schedulers else schedulers[0],
                                       "tooltip": "ComfyUI scheduler over the model's 1000-step schedule."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "1 = from pure noise; < 1 starts from the reference (img2img)."}),
        }, "optional": {
            "cfg_mode": (list(CFG_MODES), {
                "default": "single",
                "tooltip": "single: one scale on the appearance. disentangled: separate pose and appearance scales "
                           "(3 passes per step).",
            }),
            "pose_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                     "tooltip": "Pose guidance scale (cfg_mode disentangled)."}),
            "appearance_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                           "tooltip": "Appearance guidance scale (cfg_mode disentangled)."}),
            "guidance": ("REPOSE_GUIDANCE", {"tooltip": "Pose gradient guidance (RePose Pose Gradient Guidance)."}),
            "edit_mask": ("MASK", {"tooltip": "Appearance editing: 1 = regenerate, 0 = keep the reference."}),
            "reference": ("IMAGE", {"tooltip": "Image kept outside the mask (and the start image when denoise < 1)."}),
            "final_timestep": ("INT", {"default": -1, "min": -1, "max": 999,
                                       "tooltip": "Last timestep sampled; its denoised image is the result. -1: the "
                                                  "model's setting (the bundled model stops early, where its "
                                                  "denoising is still clean); 0: the whole trajectory (paper)."}),
        }}

    @reports_user_errors
    def sample(self, repose_model, repose_cond, seed, steps, cfg, sampler_name, scheduler, denoise,
               cfg_mode="single", pose_scale=2.0, appearance_scale=2.0, guidance=None, edit_mask=None,
               reference=None, final_timestep=-1):
        return repose_sample(repose_model, repose_cond, seed, steps, cfg, sampler_name, scheduler, denoise,
                             cfg_mode, pose_scale, appearance_scale, guidance, edit_mask, reference,
                             final_timestep=final_timestep)


NODE_CLASS_MAPPINGS = {
    "LoadRePoseModel": LoadRePoseModel,
    "RecurrentPoseAlign": RecurrentPoseAlign,
    "RePoseKSampler": RePoseKSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadRePoseModel": "RePose Load Model",
    "RecurrentPoseAlign": "RePose Recurrent Pose Align",
    "RePoseKSampler": "RePose KSampler",
}
