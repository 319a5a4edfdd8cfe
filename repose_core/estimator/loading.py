"""The one estimator loader: ``build_estimator`` reads every estimator file the pack accepts and returns a frozen
``PoseEstimator``.

- our safetensors of any estimator architecture (metadata ``kind="pose_estimator"``): the shipped SmallHRNet
  (builder ``small_hrnet``) is rebuilt by ``repose_core.checkpoint.load_model``;
- HigherHRNet checkpoints in every layout people have (all mapped to the original-repo key layout of
  ``HigherHRNet``):
- original HRNet/HigherHRNet-Human-Pose-Estimation ``.pth``: a plain state dict, no prefix;
- mmpose 0.29 ``.pth``: ``{"meta": ..., "state_dict": {"backbone.*", "keypoint_head.*"}}``;
- DataParallel dumps with a ``module.`` prefix; dicts without ``*.num_batches_tracked``;
- ``.safetensors``: ours (metadata ``kind="pose_estimator"`` + config) or raw tensors in any of the layouts above
  (also ``state_dict.``-prefixed, as in the shared reference fixture).

Pickled files are read only through ``repose_core.checkpoint.restricted_load`` (tensors and plain containers).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from ..checkpoint import check_state_dict, load_model, register_model, restricted_load, save_model
from ..errors import CheckpointError
from .base import PoseEstimator
from .higherhrnet import MAX_WIDTH, HigherHRNet, HigherHRNetConfig

log = logging.getLogger("repose")

KIND = "pose_estimator"
ARCH = "higherhrnet"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Prefixes stripped, in order, to reach the original-repo layout.
WRAPPER_PREFIXES = ("module.",)
PART_PREFIXES = ("backbone.", "keypoint_head.", "head.")


# --- reading ---------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read tensors and whatever metadata the file has. Returns (flat state dict as stored, info dict).

    info has "source" (path), "format" ("safetensors" / "pickle"), and "config" (dict) when the file records it
    (our safetensors metadata) or "meta_config" (mmcv ``meta["config"]`` text) when present."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pose estimator checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(f"{path}: unsupported checkpoint extension {suffix!r}; accepted: .safetensors, "
                          f"{', '.join(PICKLE_SUFFIXES)}")


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    info = {"source": str(path), "format": "safetensors"}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    kind = meta.get("kind")
    if kind is not None and kind != KIND:
        raise CheckpointError(f"{path}: this is a {kind!r} checkpoint, not a {KIND!r} (HigherHRNet) checkpoint")
    if "config" in meta:
        try:
            info["config"] = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata field 'config' is not valid JSON ({e})") from e
    # Reference-fixture style files hold the weights as "state_dict.<key>" next to other tensors.
    if any(k.startswith("state_dict.") for k in sd):
        sd = {k[len("state_dict."):]: v for k, v in sd.items() if k.startswith("state_dict.")}
    return sd, info


def _read_pickle(path: Path) -> tuple[dict[str, Tensor], dict]:
    try:
        obj = restricted_load(path)
    except CheckpointError as refused:
        # mmcv's "meta" may pickle objects we must not import; inert stubs let us still take the tensors
        # (anything that is not a tensor in the state dict is rejected below).
        try:
            obj = restricted_load(path, allow_unknown="stub")
        except CheckpointError:
            raise refused from None
    info = {"source": str(path), "format": "pickle"}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # mmcv / mmpose / lightning
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("config"), str):
            info["meta_config"] = meta["config"]
        obj = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                              "expected a HigherHRNet state dict (original repo or mmpose 0.29 layout)")
    return dict(obj), info


# --- layout mapping --------------------------------------------------------------------------------------------
def to_original_layout(sd: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """Strip ``module.`` and then ``backbone.`` / ``keypoint_head.`` prefixes; add missing ``num_batches_tracked``."""
    out = {}
    for key, value in sd.items():
        k = key
        for p in WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        for p in PART_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k in out:
            raise CheckpointError(f"{source}: keys {key!r} and another entry both map to {k!r}")
        out[k] = value
    if any(k.startswith("final_layer.") for k in out):
        raise CheckpointError(
            f"{source}: this looks like an mmpose 1.x AssociativeEmbedding (plain HRNet) checkpoint ('final_layer.*'); "
            "only HigherHRNet checkpoints are supported (original repo or mmpose 0.29 'higher_hrnet*' files)")
    for k in list(out):
        if k.endswith(".running_mean"):
            nbt = k[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(nbt, torch.zeros((), dtype=torch.long))
    return out


def to_mmpose_layout(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original-repo keys -> mmpose 0.29 keys (``keypoint_head.`` for the head, ``backbone.`` for the rest)."""
    head = ("final_layers.", "deconv_layers.")
    return {("keypoint_head." if k.startswith(head) else "backbone.") + k: v for k, v in sd.items()}


def infer_config(sd: Mapping[str, Tensor], info: Mapping | None = None, *, udp: bool | None = None,
                 input_size: int | None = None, source: str = "<state dict>") -> HigherHRNetConfig:
    """Config from tensor shapes (width, joints, tag layout) + what the file says about UDP / input size.

    ``sd`` must already be in the original layout. UDP and input size leave no trace in the weights: they come
    from the arguments, else our metadata, else the mmcv meta config text, else the file name (mmpose names its
    files ``higher_hrnet32_coco_512x512_udp-*.pth``), else defaults (no UDP, 512)."""
    info = dict(info or {})
    for key in ("transition1.0.0.weight", "final_layers.0.weight", "final_layers.1.weight"):
        if key not in sd:
            raise CheckpointError(f"{source}: not a HigherHRNet checkpoint: key {key!r} is missing "
                                  f"(first keys: {list(sd)[:3]})")
    width = int(sd["transition1.0.0.weight"].shape[0])
    num_joints = int(sd["final_layers.1.weight"].shape[0])
    out0 = int(sd["final_layers.0.weight"].shape[0])
    if out0 not in (2 * num_joints, num_joints + 1):
        raise CheckpointError(f"{source}: final_layers.0 has {out0} output channels; expected {2 * num_joints} "
                              f"(heatmaps + per-joint tags) or {num_joints + 1} for {num_joints} joints")
    if not 1 <= width <= MAX_WIDTH:
        raise CheckpointError(f"{source}: HRNet width {width} (transition1.0.0.weight) is out of range 1..{MAX_WIDTH}; "
                              f"this is not a HigherHRNet checkpoint")

    meta_cfg = info.get("config") or {}
    text = info.get("meta_config", "")
    name = Path(info.get("source", "")).name.lower()
    if udp is None:
        if "udp" in meta_cfg:
            udp = bool(meta_cfg["udp"])
        elif text:
            udp = bool(re.search(r"use_udp\s*=\s*True", text))
        else:
            udp = "udp" in name
    if input_size is None:
        if "input_size" in meta_cfg:
            input_size = int(meta_cfg["input_size"])
        else:
            m = re.search(r"input_size\s*=\s*(\d+)", text) or re.search(r"(512|640)(?:x\1)?", name)
            input_size = int(m.group(1)) if m else 512
    return HigherHRNetConfig(width=width, num_joints=num_joints, input_size=input_size, udp=bool(udp),
                             tag_per_joint=out0 == 2 * num_joints)


# --- building --------------------------------------------------------------------------------------------------
def build_estimator(state_dict_or_path, *, config: HigherHRNetConfig | None = None, udp: bool | None = None,
                    input_size: int | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> PoseEstimator:
    """A frozen ``PoseEstimator`` from any estimator file the pack reads, or from an in-memory HigherHRNet state dict
    (any supported layout): our SmallHRNet safetensors, our HigherHRNet safetensors, mmpose 0.29 / original-repo
    HigherHRNet checkpoints (module docstring). ``config``/``udp``/``input_size`` apply to HigherHRNet weights.

    Weights are created and loaded under ``torch.inference_mode(False)``, so the estimator can be differentiated
    later even if this is called inside ComfyUI's ``torch.inference_mode()`` (inference tensors cannot be saved
    for backward). Floating tensors are cast to ``dtype`` (fp16 checkpoints -> float32 by default)."""
    with torch.inference_mode(False):
        if isinstance(state_dict_or_path, (str, os.PathLike)):
            if _other_builder(state_dict_or_path) is not None:  # our file of another architecture ("small_hrnet")
                model = load_model(state_dict_or_path, expected_kind=KIND, device=device, dtype=dtype)
                return cast(PoseEstimator, model).freeze()  # KIND files are built by PoseEstimator builders
            raw, info = read_checkpoint(state_dict_or_path)
        elif isinstance(state_dict_or_path, Mapping):
            raw, info = dict(state_dict_or_path), {"source": "<state dict>"}
            if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
                raw = dict(raw["state_dict"])
        else:
            raise CheckpointError("build_estimator expects a checkpoint path or a state dict, got "
                                  f"{type(state_dict_or_path).__name__}")
        source = info["source"]
        sd = to_original_layout(raw, source)
        if config is None:
            config = infer_config(sd, info, udp=udp, input_size=input_size, source=source)
        # Fresh tensors made outside inference mode (inputs read inside it are inference tensors, and the model
        # must not alias the caller's dict): cast when needed, otherwise clone.
        sd = {k: _own_copy(v, dtype) for k, v in sd.items()}
        # Build on the meta device (no random init of ~30-60M weights), check, then adopt the loaded tensors.
        with torch.device("meta"):
            hrnet = HigherHRNet(config)
        check_state_dict(hrnet, sd, source=source)
        hrnet.load_state_dict(sd, strict=True, assign=True)
        estimator = hrnet.to(device=device, dtype=dtype).freeze()
    log.info("loaded HigherHRNet-W%d (udp=%s) from %s", config.width, config.udp, source)
    return estimator


def _own_copy(v: Tensor, dtype: torch.dtype) -> Tensor:
    t = v.to(dtype) if v.is_floating_point() else v
    return t.clone() if t is v else t


def _other_builder(path: str | os.PathLike) -> str | None:
    """Builder name of one of our safetensors files when it is not a HigherHRNet (metadata "class"), else None."""
    if not str(path).lower().endswith(".safetensors") or not os.path.isfile(path):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        return None  # read_checkpoint reports it
    builder = meta.get("class")
    return builder if meta.get("kind") == KIND and builder not in (None, KIND) else None


def save_estimator(path: str | os.PathLike, model: HigherHRNet) -> None:
    """Write ``model`` as our safetensors format: original-layout keys + metadata (format, kind, config), readable
    by ``build_estimator`` and by ``repose_core.checkpoint.load_model``."""
    save_model(path, model, KIND, extra_metadata={"arch": ARCH})


def _build_from_config(config: Mapping) -> HigherHRNet:
    """Registry builder for kind "pose_estimator": an untrained network that ``load_model`` then fills.
    Created outside inference mode so that it stays differentiable (see ``build_estimator``)."""
    with torch.inference_mode(False):
        return HigherHRNet(HigherHRNetConfig.from_dict(dict(config)))


register_model(KIND, _build_from_config)
