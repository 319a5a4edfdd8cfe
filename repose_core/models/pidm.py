"""PIDM compatibility: config presets, key conversion and loading of PIDM's released checkpoints.

PIDM's `train.py` saves `torch.save({"model", "ema", "scheduler", "optimizer", "conf"}, "last.pt")`; inference uses
the "ema" state dict, whose keys are exactly `PIDMNet`'s. "conf" pickles a tensorfn/pydantic config object, which is
why the file is read with `restricted_load(..., allow_unknown="stub")` (nothing from it is imported or executed).
In RePose a converted PIDM network is variant B1 (paper Sec. 4, the baseline without RPA).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

from ..checkpoint import check_state_dict, register_model, restricted_load, save_model, tensor_state_dict
from ..errors import CheckpointError, InputError
from .unet import PIDMNet, UNetConfig, pidm_deepfashion256_config, pidm_small_config

__all__ = [
    "PIDMNet",
    "PIDM_PRESETS",
    "pidm_preset",
    "config_from_pidm_conf",
    "convert_pidm_state_dict",
    "load_pidm_state_dict",
    "convert_pidm_checkpoint",
]

PIDM_PRESETS = {
    "deepfashion256": pidm_deepfashion256_config,
    "small": pidm_small_config,
}

# Fields of PIDM's BeatGANsAutoencConfig that do not change the built network (the encoder reuses the UNet widths;
# checkpointing flags only affect training memory).
_PIDM_IGNORED_FIELDS = {"enc_out_channels", "enc_attn_resolutions", "enc_pool", "enc_num_res_block",
                        "enc_channel_mult", "enc_grad_checkpoint", "latent_net_conf", "attn_checkpoint",
                        "resnet_cond_channels", "num_heads_upsample", "time_embed_channels", "dims",
                        "num_classes", "num_input_res_blocks", "input_channel_mult", "use_new_attention_order"}


def pidm_preset(name: str) -> UNetConfig:
    if name not in PIDM_PRESETS:
        raise InputError(f"unknown PIDM config preset {name!r}; accepted: {sorted(PIDM_PRESETS)}")
    return PIDM_PRESETS[name]()


def config_from_pidm_conf(conf: Mapping) -> UNetConfig:
    """UNetConfig from a dict of PIDM `BeatGANsAutoencConfig` fields (as in the fixtures' json).

    Values PIDM supports but this rebuild does not (class labels, 1-D/3-D, asymmetric encoder depths, multi-head
    legacy attention order) are rejected rather than silently built differently.
    """
    def unsupported(field, value, accepted):
        raise InputError(f"PIDM config field {field}={value!r} is not supported; accepted: {accepted}")

    if conf.get("num_classes") is not None:
        unsupported("num_classes", conf["num_classes"], "None")
    if conf.get("dims", 2) != 2:
        unsupported("dims", conf["dims"], 2)
    if conf.get("num_input_res_blocks") not in (None, conf.get("num_res_blocks")):
        unsupported("num_input_res_blocks", conf["num_input_res_blocks"], "None")
    if conf.get("input_channel_mult") not in (None, conf.get("channel_mult")):
        unsupported("input_channel_mult", conf["input_channel_mult"], "None")
    if conf.get("time_embed_channels") not in (None, conf.get("model_channels")):
        unsupported("time_embed_channels", conf["time_embed_channels"], "None")
    if conf.get("num_heads_upsample", -1) not in (-1, conf.get("num_heads", 1)):
        unsupported("num_heads_upsample", conf["num_heads_upsample"], "-1")
    heads_differ = conf.get("num_heads", 1) != 1 or conf.get("num_head_channels", -1) > 0
    if heads_differ and not conf.get("use_new_attention_order", False):
        # The legacy order splits heads across the concatenated [q; k; v] channels, mixing q with k for >1 head.
        unsupported("num_heads", conf.get("num_heads"), "1 (or use_new_attention_order=True)")
    fields = {k: v for k, v in conf.items() if k not in _PIDM_IGNORED_FIELDS}
    fields.pop("use_checkpoint", None)
    return UNetConfig.from_dict(fields)


def convert_pidm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PIDM keys -> PIDMNet keys. They are identical; only wrappers' prefixes (DDP `module.`,
    torch.compile `_orig_mod.`) are removed."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_pidm_state_dict(state_dict: Mapping[str, torch.Tensor], config: Optional[UNetConfig] = None,
                         source: str = "PIDM state dict") -> PIDMNet:
    """Build PIDMNet(config, default DeepFashion-256) and load a PIDM state dict strictly (float32, eval mode)."""
    state_dict = convert_pidm_state_dict(state_dict)
    with torch.device("meta"):  # check keys/shapes before allocating, and skip the random init of 180M weights
        model = PIDMNet(config or pidm_deepfashion256_config())
    check_state_dict(model, state_dict, source=source)
    assert not list(model.buffers()), "to_empty() would leave buffers uninitialised"
    model = model.to_empty(device="cpu")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def convert_pidm_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, preset: str = "deepfashion256",
                            entry: str = "ema", dtype: Optional[torch.dtype] = None) -> PIDMNet:
    """PIDM `last.pt` -> RePose safetensors (kind "pidm"). Reads `entry` through the restricted unpickler in stub
    mode, checks it holds only tensors and matches PIDMNet(preset) strictly, then saves atomically."""
    src = os.fspath(src)
    ckpt = restricted_load(src, allow_unknown="stub")
    state = tensor_state_dict(ckpt, entry, source=src)
    model = load_pidm_state_dict(state, pidm_preset(preset), source=f"{src} entry {entry!r}")
    if dtype is not None:
        model = model.to(dtype)
    save_model(dst, model, "pidm", extra_metadata={"source": os.path.basename(src), "source_entry": entry,
                                                   "preset": preset})
    return model


@register_model("pidm")
def _build_pidm(config: dict) -> PIDMNet:
    try:
        return PIDMNet(UNetConfig.from_dict(config))
    except InputError as e:
        raise CheckpointError(f"stored PIDM config is invalid: {e}") from e
