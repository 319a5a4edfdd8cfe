"""RePoseSD in ComfyUI: an SD UNet with 8 input channels (4 noisy latent + 4 VAE-encoded pose image) built with
ComfyUI's own UNet / BaseModel machinery, so CLIPTextEncode, KSampler, LoRA patches etc. work unchanged.

HumanSD convention (notes/reference-systems.md §2.1): the RGB skeleton image is VAE-encoded, scaled like a normal
latent (×0.18215) and channel-concatenated to the noisy latent. ComfyUI's BaseModel.concat_cond with concat key
"concat_image" does exactly that with the conditioning entry "concat_latent_image" (process_latent_in = the scale),
so the pose conditioning node only has to VAE-encode the pose image. Imports ComfyUI at import time.
"""
from __future__ import annotations

import json
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

    def __init__(self, unet_config: dict, prediction: str = "eps", heads: dict | None = None):
        super().__init__(unet_config)
        self.unet_config.update(heads or attention_heads(unet_config))
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


def heads_from_diffusers_config(config: dict, name: str) -> dict:
    """ComfyUI's head layout from a diffusers UNet config (our export stores it). diffusers' `attention_head_dim` is,
    for SD UNets, the number of heads per level (a naming quirk diffusers keeps): SD 2.1's (5, 10, 20, 20) over
    (320, 640, 1280, 1280) channels are 64-channel heads."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    channels = list(config.get("block_out_channels") or [])
    if not heads or not channels:
        return {}
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    widths = {c // h for c, h in zip(channels, heads)}
    if len(widths) == 1:
        return {"num_heads": -1, "num_head_channels": widths.pop()}
    if len(set(heads)) == 1:
        return {"num_heads": heads[0], "num_head_channels": -1}
    raise CheckpointError(f"{name}: its UNet has {heads} attention heads over {channels} channels; ComfyUI's UNet "
                          f"needs one head count or one head width for every level")


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
    if "conv_in.weight" in sd:  # diffusers key names: our train/train_sd.py export
        return diffusers_unet_to_ldm(sd, name), metadata
    raise CheckpointError(f"{name} has no Stable Diffusion UNet weights (no 'model.diffusion_model.input_blocks.0.0."
                          f"weight', 'input_blocks.0.0.weight' or diffusers 'conv_in.weight' key); RePoseSD needs an "
                          f"SD UNet with 8 input channels (our train/train_sd.py export or a HumanSD checkpoint)")


def diffusers_unet_to_ldm(sd: dict, name: str) -> dict:
    """diffusers UNet2DConditionModel key names -> the original SD (ldm) names ComfyUI's UNetModel uses.

    ComfyUI's own diffusers path only recognises the UNets of known models (an 8-channel or a small UNet is none of
    them), so the block layout that its key map needs is read from the keys themselves: resnets per down block and
    transformer blocks per attention, down, middle and up."""
    keys = list(sd)

    def count(prefix: str) -> int:
        return comfy.model_detection.count_blocks(keys, prefix)

    down = count("down_blocks.{}.")
    res = [count(f"down_blocks.{i}.resnets.{{}}.") for i in range(down)]
    depth = [count(f"down_blocks.{i}.attentions.{j}.transformer_blocks.{{}}.") for i in range(down) for j in range(res[i])]
    up = [count(f"up_blocks.{x}.attentions.{i}.transformer_blocks.{{}}.") for x in range(down)
          for i in range(res[::-1][x] + 1)]
    layout = dict(num_res_blocks=res, channel_mult=[1] * down, transformer_depth=depth,
                  transformer_depth_output=up[::-1],  # unet_to_diffusers pops it from the end, up block 0 first
                  transformer_depth_middle=count("mid_block.attentions.0.transformer_blocks.{}."))
    mapping = comfy.utils.unet_to_diffusers(layout)  # diffusers name -> ldm name
    unknown = [k for k in keys if k not in mapping]
    if not down or unknown:
        raise CheckpointError(f"{name}: diffusers-named UNet weights that do not form a Stable Diffusion UNet "
                              f"({len(unknown)} keys without an SD counterpart, e.g. {unknown[:3]}); RePoseSD needs "
                              f"our train/train_sd.py export or a HumanSD checkpoint")
    return {mapping[k]: v for k, v in sd.items()}


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
    heads = None
    if metadata.get("config"):  # our export: the diffusers config says how many heads each level has
        try:
            heads = heads_from_diffusers_config(json.loads(metadata["config"]), name) or None
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{name}: its metadata 'config' is not a diffusers UNet config ({e})") from e
    config = RePoseSDConfig(unet_config, prediction, heads)
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
