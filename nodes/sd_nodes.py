"""RePoseSD nodes: load an 8-channel pose-conditioned SD UNet (our train_sd.py export or HumanSD) as a ComfyUI MODEL,
and put the VAE-encoded pose image into the conditioning, so that CLIPTextEncode and KSampler work unchanged."""
from __future__ import annotations

from ..repose_core.errors import InputError
from .model_files import DTYPES, check_kind, list_models, resolve_dtype, resolve_model
from .utils import reports_user_errors

CATEGORY = "RePose/sd"


class RePoseSDLoadUNet:
    DESCRIPTION = ("Loads a RePoseSD / HumanSD UNet: Stable Diffusion (2.1-base) with 8 input channels, 4 for the "
                   "noisy latent and 4 for the VAE-encoded pose skeleton. Reads our train_sd.py .safetensors export "
                   "or a HumanSD Lightning .ckpt (tensors only, no code is unpickled) from models/repose. Use it with "
                   "the text encoder and VAE of the base SD checkpoint and RePoseSD Pose Conditioning.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A ComfyUI MODEL for KSampler; it reads the pose from the conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (list_models("repose_sd"), {
                "tooltip": "UNet file in models/repose (RePoseSD .safetensors or HumanSD .ckpt).",
            }),
            "dtype": (list(DTYPES), {
                "default": "auto",
                "tooltip": "Weight precision; auto = what ComfyUI picks for this device (fp32 on CPU).",
            }),
            "prediction": (["eps", "v"], {
                "default": "eps",
                "tooltip": "Parameterisation of the UNet: eps for HumanSD / SD 2.1-base fine-tunes, v for "
                           "SD 2.1-768 fine-tunes.",
            }),
        }}

    @reports_user_errors
    def load(self, unet_name, dtype="auto", prediction="eps"):
        from .sd_runtime import load_repose_sd

        path = resolve_model("repose_sd", unet_name, "unet_name")
        check_kind(path, ("repose_sd_unet",), "RePoseSD Load UNet")
        weight_dtype = None if dtype == "auto" else resolve_dtype(dtype)  # None: ComfyUI picks, as UNETLoader
        return (load_repose_sd(path, weight_dtype, prediction),)


def pose_conditioning(positive, negative, vae, pose_image):
    """(positive, negative, latent): both conditionings carry the VAE latent of the pose image ("concat_latent_image",
    HumanSD keeps the pose in the unconditional pass too) and an empty latent of the pose image's size."""
    import node_helpers
    import torch

    if pose_image.ndim != 4:
        raise InputError(f"input 'pose_image' must be an IMAGE (batch, height, width, channels), got shape "
                         f"{tuple(pose_image.shape)}")
    H, W = pose_image.shape[1:3]
    factor = vae.downscale_ratio if isinstance(getattr(vae, "downscale_ratio", None), int) else 8
    if H % factor or W % factor:
        raise InputError(f"input 'pose_image' is {W}x{H} pixels; RePoseSD needs width and height divisible by "
                         f"{factor} (e.g. {max(factor, W // factor * factor)}x{max(factor, H // factor * factor)}); "
                         f"render the pose at such a size")
    concat = vae.encode(pose_image[:, :, :, :3])
    out = [node_helpers.conditioning_set_values(c, {"concat_latent_image": concat}) for c in (positive, negative)]
    latent = {"samples": torch.zeros_like(concat)}
    return out[0], out[1], latent


class RePoseSDPoseConditioning:
    DESCRIPTION = ("Adds the pose to a RePoseSD generation: VAE-encodes the skeleton image (render it with RePose "
                   "Render Pose, style 'humansd') into the conditioning, like ComfyUI's InstructPix2Pix "
                   "conditioning, and outputs an empty latent of the pose size for KSampler.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the pose latent.", "Negative conditioning with the pose latent.",
                       "Empty latent with the pose image's size and batch.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "Text conditioning (CLIPTextEncode) of the prompt."}),
            "negative": ("CONDITIONING", {"tooltip": "Text conditioning of the negative prompt."}),
            "vae": ("VAE", {"tooltip": "The SD VAE (from the base checkpoint)."}),
            "pose_image": ("IMAGE", {"tooltip": "Skeleton image on black, the size of the image to generate."}),
        }}

    @reports_user_errors
    def encode(self, positive, negative, vae, pose_image):
        return pose_conditioning(positive, negative, vae, pose_image)


NODE_CLASS_MAPPINGS = {
    "RePoseSDLoadUNet": RePoseSDLoadUNet,
    "RePoseSDPoseConditioning": RePoseSDPoseConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RePoseSDLoadUNet": "RePoseSD Load UNet",
    "RePoseSDPoseConditioning": "RePoseSD Pose Conditioning",
}
