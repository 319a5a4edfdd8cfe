"""Model file lists and paths for the loader nodes: ComfyUI's model folders plus the weights bundled with the pack.

The pack ships default weights in `repose_core/weights/` (e.g. repose_default_full.safetensors,
repose_default_estimator.safetensors). They are listed by the loaders next to the files of `models/<folder>/`, so the
example workflows work out of the box; a file of the same name in the models folder takes precedence. Bundled files
are filtered by the `kind` in their metadata so that each loader lists only what it can load.

Works without ComfyUI (then only the bundled files are known), so INPUT_TYPES can be called in tests.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from ..repose_core.errors import CheckpointError, InputError

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "repose_core", "weights")

# Which checkpoint kinds (repose safetensors metadata) each loader accepts from the bundled folder.
FOLDER_KINDS = {
    "repose": ("repose_dm", "pidm"),
    "repose_sd": ("repose_sd_unet",),
    "pose_estimators": ("pose_estimator",),
}
# The ComfyUI model folder each loader reads.
COMFY_FOLDER = {"repose": "repose", "repose_sd": "repose", "pose_estimators": "pose_estimators"}

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@lru_cache(maxsize=256)
def _kind_of(path: str, mtime: float) -> str | None:
    """The 'kind' metadata of a safetensors file (cached by mtime), None if unreadable or foreign."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("kind")
    except Exception:  # a broken file is reported when it is loaded, not while listing
        return None


def bundled_files(loader: str) -> list[str]:
    """Bundled weight files a loader can use (by metadata kind)."""
    if not os.path.isdir(BUNDLED_DIR):
        return []
    kinds = FOLDER_KINDS[loader]
    out = []
    for name in sorted(os.listdir(BUNDLED_DIR)):
        path = os.path.join(BUNDLED_DIR, name)
        if name.endswith(".safetensors") and os.path.isfile(path) and _kind_of(path, os.path.getmtime(path)) in kinds:
            out.append(name)
    return out


def _comfy_files(loader: str) -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    try:
        return list(folder_paths.get_filename_list(COMFY_FOLDER[loader]))
    except KeyError:  # folder not registered (pack imported outside the normal entry point)
        return []


def list_models(loader: str, default: str | None = None) -> list[str]:
    """Names for a loader's combo: the models folder + bundled files (deduplicated), `default` first if present."""
    names = list(dict.fromkeys(_comfy_files(loader) + bundled_files(loader)))
    if default is not None and default in names:
        names.remove(default)
        names.insert(0, default)
    return names


def searched_folders(loader: str) -> list[str]:
    try:
        import folder_paths

        paths = list(folder_paths.get_folder_paths(COMFY_FOLDER[loader]))
    except (ImportError, KeyError):
        paths = []
    return paths + [BUNDLED_DIR]


def resolve_model(loader: str, name: str, input_name: str = "ckpt_name") -> str:
    """Absolute path of `name` for a loader; InputError saying where to put the file if it is nowhere."""
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise InputError(f"input '{input_name}': {name!r} is not a model file name")
    try:
        import folder_paths

        path = folder_paths.get_full_path(COMFY_FOLDER[loader], name)
    except (ImportError, KeyError):
        path = None
    if path is None:
        candidate = os.path.join(BUNDLED_DIR, name)
        if os.path.isfile(candidate):
            path = candidate
    if path is None:
        folders = "; ".join(searched_folders(loader))
        raise InputError(f"input '{input_name}': model file '{name}' not found. Put it into ComfyUI's "
                         f"models/{COMFY_FOLDER[loader]}/ folder (searched: {folders}) and refresh the browser")
    return path


def resolve_dtype(choice: str, device: torch.device | None = None) -> torch.dtype:
    """'auto' | 'fp32' | 'fp16' | 'bf16' -> torch dtype; auto = fp32 on CPU, fp16 where ComfyUI would use it."""
    if choice not in DTYPES:
        raise InputError(f"input 'dtype' is {choice!r}; accepted: {', '.join(DTYPES)}")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    if device is None or torch.device(device).type == "cpu":
        return torch.float32
    try:
        import comfy.model_management as mm

        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    except ImportError:
        return torch.float32


def check_kind(path: str, expected: tuple[str, ...], node: str) -> str | None:
    """Kind of a repose safetensors file; CheckpointError naming the right node if it is another kind."""
    kind = _kind_of(path, os.path.getmtime(path)) if path.endswith(".safetensors") else None
    if kind is not None and kind not in expected:
        right = {"repose_dm": "RePose Load Model", "pidm": "RePose Load Model",
                 "pose_estimator": "RePose Load Pose Estimator", "repose_sd_unet": "RePoseSD Load UNet"}.get(kind)
        raise CheckpointError(f"{os.path.basename(path)} is a '{kind}' checkpoint, but {node} loads "
                              f"{' / '.join(expected)} checkpoints" + (f"; load it with the '{right}' node" if right
                                                                        else ""))
    return kind
