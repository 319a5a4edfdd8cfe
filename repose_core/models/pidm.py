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
    "infer_pidm_config",
    "read_pidm_checkpoint",
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


def _matches(config: UNetConfig, shapes: Mapping[str, tuple]) -> bool:
    with torch.device("meta"):
        model = PIDMNet(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return expected == dict(shapes)


def infer_pidm_config(state_dict: Mapping[str, torch.Tensor], source: str = "PIDM state dict") -> UNetConfig:
    """The UNetConfig of a PIDM state dict, read from its tensor shapes and verified by building it on the meta
    device (no memory) and comparing every key and shape.

    A preset that matches is returned as is. Otherwise widths (model_channels, channel_mult, embed_channels,
    in/out/encoder channels), depth (num_res_blocks), attention levels and resample type come from the weights.
    What the weights do not record is left at PIDM's values: dropout (training only), one attention head, and the
    nominal image_size, chosen so that the attention levels come out right (the network is size-agnostic)."""
    sd = convert_pidm_state_dict(state_dict)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for make in PIDM_PRESETS.values():
        if _matches(make(), shapes):
            return make()

    def need(key: str) -> tuple:
        if key not in shapes:
            raise CheckpointError(f"{source} is not a PIDM denoiser state dict: key {key!r} is missing (first keys: "
                                  f"{list(shapes)[:3]})")
        return shapes[key]

    conv_in, conv_out = need("input_blocks.0.0.weight"), need("out.2.weight")
    model_channels, in_channels, out_channels = conv_in[0], conv_in[1], conv_out[0]
    embed_channels = need("time_embed.time_embed.0.weight")[0]
    encoder_in = need("encoder.input_blocks.0.0.weight")[1]
    n_in = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks."))
    n_out = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks."))
    two_cond = any(".cond_emb_layers." in k for k in shapes)
    tried = []
    for num_res_blocks in range(1, 17):
        if n_out % (num_res_blocks + 1):
            continue
        levels = n_out // (num_res_blocks + 1)
        mult, attention_levels = [], []
        for level in range(levels):
            first = 1 + level * (num_res_blocks + 1)
            key = f"input_blocks.{first}.0.in_layers.2.weight"
            if key not in shapes or shapes[key][0] % model_channels:
                break
            mult.append(shapes[key][0] // model_channels)
            if any(f"input_blocks.{first + r}.1.to_q.weight" in shapes for r in range(num_res_blocks)):
                attention_levels.append(level)
        if len(mult) != levels or levels * (num_res_blocks + 1) not in (n_in, n_in + 1):
            continue
        down = f"input_blocks.{num_res_blocks + 1}.0"
        updown = f"{down}.in_layers.2.weight" in shapes
        factor = 2 ** (levels - 1)
        image_size = factor * max(1, 256 // factor)
        for resblock_updown, conv_resample in ((updown, True), (False, f"{down}.op.weight" in shapes)):
            try:
                config = UNetConfig(image_size=image_size, in_channels=in_channels, model_channels=model_channels,
                                    out_channels=out_channels, num_res_blocks=num_res_blocks,
                                    attention_resolutions=tuple(image_size // 2 ** lv for lv in attention_levels),
                                    channel_mult=tuple(mult), embed_channels=embed_channels,
                                    resnet_two_cond=two_cond, resblock_updown=resblock_updown,
                                    conv_resample=conv_resample, encoder_in_channels=encoder_in)
            except InputError:
                continue
            tried.append(f"num_res_blocks={num_res_blocks} channel_mult={tuple(mult)}")
            if _matches(config, shapes):
                return config
    raise CheckpointError(f"{source}: no PIDM UNet configuration reproduces its {len(shapes)} tensors (model_channels "
                          f"{model_channels}, {n_in} input blocks; tried {', '.join(tried) or 'nothing'}); it is not a "
                          f"PIDM denoiser or uses options this rebuild does not support (e.g. several attention heads). "
                          f"Give the network config explicitly: train/convert_pidm.py --config "
                          f"{'|'.join(sorted(PIDM_PRESETS))}")


def read_pidm_checkpoint(src: str | os.PathLike, entry: Optional[str] = "ema", preset: Optional[str] = None
                         ) -> tuple[PIDMNet, str]:
    """PIDM `last.pt` (or a bare PIDM state dict file) -> (PIDMNet in eval mode, config name). Read through the
    restricted unpickler in stub mode (the pickled training config is never imported); the network config is
    `preset`, or inferred from the tensor shapes when None. entry None: the file's "ema" entry if it has one,
    else the file itself."""
    src = os.fspath(src)
    ckpt = restricted_load(src, allow_unknown="stub")
    if entry is None:
        entry = "ema" if isinstance(ckpt, Mapping) and "ema" in ckpt else None
        inner = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
        if isinstance(inner, Mapping) and any(str(k).startswith("model.diffusion_model.") for k in inner):
            raise CheckpointError(f"{src} is a Stable Diffusion UNet checkpoint (e.g. HumanSD), not a PIDM/RePose "
                                  f"denoiser: load it with the 'RePoseSD Load UNet' node")
    state = tensor_state_dict(ckpt, entry, source=src)
    where = f"{src}" + (f" entry {entry!r}" if entry else "")
    if preset is not None:
        config, name = pidm_preset(preset), preset
    else:
        config = infer_pidm_config(state, source=where)
        name = next((n for n, make in PIDM_PRESETS.items() if make() == config), "inferred from the weights")
    try:
        model = load_pidm_state_dict(state, config, source=where)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n  The weights do not fit PIDM config {name!r}; leave out --config to infer the "
                              f"config from the tensor shapes, or give the right one: --config "
                              f"{'|'.join(sorted(PIDM_PRESETS))}") from None
    return model, name


def convert_pidm_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, preset: Optional[str] = None,
                            entry: str = "ema", dtype: Optional[torch.dtype] = None) -> PIDMNet:
    """PIDM `last.pt` -> RePose safetensors (kind "pidm"). Reads `entry` through the restricted unpickler in stub
    mode, checks it holds only tensors and matches PIDMNet(preset, or the config inferred from the tensor shapes
    when preset is None) strictly, then saves atomically."""
    src = os.fspath(src)
    model, name = read_pidm_checkpoint(src, entry, preset)
    if dtype is not None:
        model = model.to(dtype)
    save_model(dst, model, "pidm", extra_metadata={"source": os.path.basename(src), "source_entry": entry,
                                                   "preset": name})
    return model


@register_model("pidm")
def _build_pidm(config: dict) -> PIDMNet:
    try:
        return PIDMNet(UNetConfig.from_dict(config))
    except InputError as e:
        raise CheckpointError(f"stored PIDM config is invalid: {e}") from e
