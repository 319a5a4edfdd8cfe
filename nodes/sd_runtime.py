"""RePoseSD in ComfyUI: an SD UNet with 8 input channels (4 noisy latent + 4 VAE-encoded pose image) built with
ComfyUI's own UNet / BaseModel machinery, so CLIPTextEncode, KSampler, LoRA patches etc. work unchanged.

HumanSD convention (notes/reference-systems.md §2.1): the RGB skeleton image is VAE-encoded, scaled like a normal
latent (×0.18215) and channel-concatenated to the noisy latent. ComfyUI's BaseModel.concat_cond with concat key
"concat_image" does exactly that with the conditioning entry "concat_latent_image" (process_latent_in = the scale),
so the pose conditioning node only has to VAE-encode the pose image. Imports ComfyUI at import time.
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base
import comfy.utils

from ..repose_core.checkpoint import restricted_load
from ..repose_core.errors import CheckpointError

log = logging.getLogger("repose")

UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
POSE_CHANNELS = 4  # VAE-encoded pose image channels concatenated to the noisy latent
PREDICTIONS = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}


class RePoseSDConfig(comfy.supported_models_base.BASE):
    """Model config for an SD 1.x/2.x UNet with concatenated pose latent. Never registered globally, so ComfyUI's
    own checkpoint detection is unaffected."""

    latent_format = comfy.latent_formats.SD15
    memory_usage_factor = 1.0
    unet_extra_config = {}

    def __init__(self, unet_config: dict, prediction: str = "eps"):
        super().__init__(unet_config)
        self.unet_config.update(attention_heads(unet_config))
        self.prediction = PREDICTIONS[prediction]

    def get_model(self, state_dict, prefix="", device=None):
        model = comfy.model_base.BaseModel(self, model_type=self.prediction, device=device)
        model.concat_keys = ("concat_image",)  # c_concat = process_latent_in(concat_latent_image) (HumanSD)
        return model


def attention_heads(unet_config: dict) -> dict:
    """Head layout, which checkpoints do not store: SD 1.x (context 768) 8 heads; SD 2.x 64-channel heads; other
    (tiny test) models one head per block."""
    if unet_config.get("context_dim") == 768:
        return {"num_heads": 8, "num_head_channels": -1}
    if unet_config.get("model_channels", 0) % 64 == 0:
        return {"num_heads": -1, "num_head_channels": 64, "attn_precision": torch.float32}
    return {"num_heads": 1, "num_head_channels": -1}


def read_unet_state_dict(path: str) -> tuple[dict, dict]:
    """(UNet state dict without prefix, metadata) from our safetensors export, a HumanSD Lightning .ckpt (read by the
    restricted unpickler: tensors only) or any file with `model.diffusion_model.*` keys."""
    name = os.path.basename(path)
    if path.lower().endswith(".safetensors"):
        try:
            sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        except Exception as e:
            raise CheckpointError(f"{name} is not a readable safetensors file ({e}); download it again") from e
        metadata = metadata or {}
    else:
        obj = restricted_load(path, allow_unknown="stub")
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # PyTorch Lightning checkpoint (HumanSD)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict")
        sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        metadata = {}
    for prefix in UNET_PREFIXES:
        if f"{prefix}input_blocks.0.0.weight" in sd:
            unet = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            return unet, metadata
    raise CheckpointError(f"{name} has no Stable Diffusion UNet weights (no 'model.diffusion_model.input_blocks.0.0."
                          f"weight' or 'input_blocks.0.0.weight' key); RePoseSD needs an SD UNet with 8 input channels "
                          f"(our train/train_sd.py export or a HumanSD checkpoint)")


def load_repose_sd(path: str, dtype: torch.dtype | None = None, prediction: str | None = None):
    """An 8-channel SD UNet file -> ComfyUI ModelPatcher(BaseModel) with pose-latent concat conditioning."""
    name = os.path.basename(path)
    sd, metadata = read_unet_state_dict(path)
    try:  # ComfyUI reads the layout from tensor shapes and indexes them blindly: a malformed file raises anything
        unet_config = comfy.model_detection.detect_unet_config(sd, "")
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{name}: its UNet tensors do not have the shapes of a Stable Diffusion UNet "
                              f"({type(e).__name__}: {e}); the file is damaged or not an SD UNet — RePoseSD needs our "
                              f"train/train_sd.py export or a HumanSD checkpoint") from e
    if not unet_config or "in_channels" not in unet_config or "context_dim" not in unet_config:
        raise CheckpointError(f"{name}: the UNet layout is not a Stable Diffusion 1.x/2.x UNet")
    in_channels = unet_config["in_channels"]
    if in_channels != 4 + POSE_CHANNELS:
        hint = (" This is a standard SD UNet: load its checkpoint with ComfyUI's Load Checkpoint and add pose control "
                "with RePose Pose Gradient Guidance." if in_channels == 4 else "")
        raise CheckpointError(f"{name}: this UNet takes {in_channels} input channels; a RePoseSD UNet takes "
                              f"{4 + POSE_CHANNELS} (4 noisy latent + {POSE_CHANNELS} pose latent).{hint}")
    prediction = prediction or metadata.get("prediction", "eps")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{name}: prediction type {prediction!r} is not supported; accepted: "
                              f"{', '.join(PREDICTIONS)}")
    config = RePoseSDConfig(unet_config, prediction)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    supported = list(config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(sd), supported_dtypes=supported,
                              weight_dtype=comfy.utils.weight_dtype(sd))
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, supported))
    model = config.get_model(sd, "")
    try:
        missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # mis-shaped tensors
        raise CheckpointError(f"{name}: its UNet weights do not fit the UNet their layout describes: "
                              f"{str(e)[:600]}; the file is damaged or mixes two models") from e
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{name}: the UNet weights are incomplete, {len(missing)} missing: {shown}")
    if unexpected:
        log.warning("RePoseSD: %s has %d UNet keys the model does not use (e.g. %s)", name, len(unexpected),
                    unexpected[0])
    model = model.to(offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
