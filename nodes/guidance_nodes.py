"""Pose gradient guidance (RePoseDM Sec. 3.3-3.4): a REPOSE_GUIDANCE for RePoseKSampler and a patched MODEL that
adds the same guidance to ComfyUI's own KSampler / SamplerCustomAdvanced with any ε/v model.

The maths is repose_core.guidance (PoseGuidance, guide_denoised); the ComfyUI glue (post-CFG function, VAE codec,
memory management) is nodes/comfy_runtime.py.
"""
from __future__ import annotations

from ..repose_core.errors import InputError
from ..repose_core.guidance.config import ENERGIES, SCHEDULES, GuidanceConfig
from ..repose_core.pose import from_pose_keypoint
from .utils import comfy_image_to_core, reports_user_errors

CATEGORY = "RePose/guidance"
DECODERS = ("vae", "latent_rgb")
DEFAULTS = GuidanceConfig()  # the widgets start at the one set of defaults


def make_guidance_spec(pose_estimator, target_pose, scale, start, end, energy="keypoint", every=1,
                       estimator_size=0, clip_grad_norm=0.0, schedule="constant", reference_image=None):
    """Node inputs -> GuidanceSpec (validated now, so errors show on this node rather than during sampling)."""
    from .guidance_spec import GuidanceSpec
    from .utils import check_finite

    check_finite(scale=scale, start=start, end=end, clip_grad_norm=clip_grad_norm)
    if start > end:
        raise InputError(f"inputs 'start' ({start}) and 'end' ({end}): start must not be after end")
    config = GuidanceConfig(scale=float(scale), start=float(start), end=float(end), energy=energy, every=int(every),
                            clip_grad_norm=float(clip_grad_norm) or None,
                            estimator_size=int(estimator_size) or None, schedule=schedule)
    if energy == "keypoint":
        frames = from_pose_keypoint(target_pose, source="input 'target_pose'")
        if not frames:
            raise InputError("input 'target_pose' holds no frame; connect a pose with a person")
        for i, frame in enumerate(frames):
            if not any(not p.is_empty() for p in frame.people):
                from ..repose_core.errors import EmptyPoseError

                raise EmptyPoseError(f"frame {i} of input 'target_pose' has no person; keypoint guidance needs the "
                                     f"target joints")
        target = frames
    else:
        if reference_image is None:
            raise InputError("energy 'feature' (paper eq. 11) needs 'reference_image': the image whose pose "
                             "features the result should match (e.g. a photo in the target pose)")
        target = ((comfy_image_to_core(reference_image, "reference_image") + 1.0) / 2.0).detach().clone()
    spec = GuidanceSpec(estimator=pose_estimator.module, estimator_patcher=pose_estimator.patcher, target=target,
                        config=config)
    from ..repose_core.models.codec import IdentityCodec

    spec.build(IdentityCodec())  # validates the target now (InputError naming it); the real codec comes later
    return spec


def codec_for_comfy_model(model, vae, decoder: str):
    """The differentiable x̂0 decoder for a ComfyUI MODEL: its VAE (exact, costly) or the linear preview factors."""
    from .comfy_runtime import ComfyVAECodec, latent_rgb_codec

    latent_format = model.get_model_object("latent_format")
    if decoder == "vae":
        if vae is None:
            raise InputError("decoder 'vae' needs the 'vae' input: connect the VAE of the checkpoint (or choose "
                             "decoder 'latent_rgb', a cheap approximation)")
        return ComfyVAECodec(vae, latent_format)
    if decoder == "latent_rgb":
        return latent_rgb_codec(latent_format, factor=vae.downscale_ratio if vae is not None else 8)
    raise InputError(f"input 'decoder' is {decoder!r}; accepted: {', '.join(DECODERS)}")


class PoseGradientGuidance:
    DESCRIPTION = ("Gradient guidance from Pose Interaction Fields (RePoseDM eq. 11-16): during sampling the "
                   "predicted image x̂0 is decoded, the pose estimator compares its pose with the target, and x̂0 "
                   "is nudged down the gradient of that energy. Outputs a guidance for RePose KSampler and, if a "
                   "MODEL is connected, a patched copy of it that applies the same guidance in ComfyUI's own "
                   "KSampler / SamplerCustomAdvanced (any SD-style checkpoint).")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("REPOSE_GUIDANCE", "MODEL")
    RETURN_NAMES = ("guidance", "model")
    OUTPUT_TOOLTIPS = ("Guidance for RePose KSampler.",
                       "The input MODEL with pose guidance added (None when no model is connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pose_estimator": ("POSE_ESTIMATOR", {"tooltip": "From RePose Load Pose Estimator."}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose the generated person should take."}),
            "scale": ("FLOAT", {"default": DEFAULTS.scale, "min": 0.0, "max": 1000.0, "step": 0.01,
                                "tooltip": "Guidance strength η (step of x̂0 along -∇G). 0 switches it off."}),
            "start": ("FLOAT", {"default": DEFAULTS.start, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Fraction of the sampling steps where guidance starts."}),
            "end": ("FLOAT", {"default": DEFAULTS.end, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "Fraction of the sampling steps where guidance stops (1 = to the end). "
                                         "Pose is decided early; late steps only refine texture."}),
            "energy": (list(ENERGIES), {"default": DEFAULTS.energy,
                                        "tooltip": "keypoint: estimator heatmaps vs Gaussians at the target joints. "
                                                   "feature: estimator features vs a reference image (eq. 11)."}),
        }, "optional": {
            "model": ("MODEL", {"tooltip": "A ComfyUI model to patch (e.g. an SD checkpoint for KSampler)."}),
            "vae": ("VAE", {"tooltip": "The model's VAE: decodes x̂0 differentiably (decoder 'vae')."}),
            "decoder": (list(DECODERS), {"default": "vae",
                                         "tooltip": "vae: exact but costly. latent_rgb: the linear preview decoder, "
                                                    "blurry but ~free (patched MODEL only)."}),
            "every": ("INT", {"default": DEFAULTS.every, "min": 1, "max": 100,
                              "tooltip": "Guide every n-th step only (cheaper)."}),
            "estimator_size": ("INT", {"default": 256, "min": 0, "max": 2048, "step": 32,
                                       "tooltip": "Resize the decoded image (longer side) before the estimator; "
                                                  "0 = keep its size."}),
            "clip_grad_norm": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.1,
                                         "tooltip": "Rescale each gradient to at most this norm; 0 = off."}),
            "schedule": (list(SCHEDULES), {"default": DEFAULTS.schedule,
                                           "tooltip": "constant: fixed x̂0 step η. eq15: η(1-ᾱ)/√ᾱ, the paper's "
                                                      "eq. 15 (strong early, weak late)."}),
            "reference_image": ("IMAGE", {"tooltip": "Reference image for energy 'feature'."}),
        }}

    @reports_user_errors
    def build(self, pose_estimator, target_pose, scale, start, end, energy, model=None, vae=None, decoder="vae",
              every=DEFAULTS.every, estimator_size=256, clip_grad_norm=0.0, schedule=DEFAULTS.schedule,
              reference_image=None):
        spec = make_guidance_spec(pose_estimator, target_pose, scale, start, end, energy, every, estimator_size,
                                  clip_grad_norm, schedule, reference_image)
        patched = None
        if model is not None:
            from .comfy_runtime import patch_model_with_guidance

            patched = patch_model_with_guidance(model, spec, codec_for_comfy_model(model, vae, decoder))
        return (spec, patched)


NODE_CLASS_MAPPINGS = {"PoseGradientGuidance": PoseGradientGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseGradientGuidance": "RePose Pose Gradient Guidance"}
