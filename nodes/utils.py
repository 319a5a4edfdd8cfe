"""Helpers shared by the ComfyUI nodes: image layout conversion, user-error reporting, progress, model folders.

ComfyUI modules (comfy.*, folder_paths) are imported inside the functions that need them, so this module and the
node modules import without ComfyUI (tests, `python -c "import ..."`).
"""
from __future__ import annotations

import functools
import logging
import os

import numpy as np
import torch

from ..repose_core.errors import InputError, ReposeError

log = logging.getLogger("repose")


# --------------------------------------------------------------------------------------------------------------------
# IMAGE <-> core tensors
# ComfyUI IMAGE: float (B, H, W, C) in [0, 1].  Core: float (B, C, H, W) in [-1, 1] (DESIGN.md "Rules").

def comfy_image_to_core(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B,H,W,C) in [0,1] -> core RGB tensor (B,3,H,W) in [-1,1]. An alpha channel is dropped and a
    grey image is repeated to RGB; anything else is an InputError naming the input."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"input '{name}' must be a ComfyUI IMAGE of shape (batch, height, width, channels); got {shape}")
    channels = image.shape[-1]
    if channels == 4:
        image = image[..., :3]
    elif channels == 1:
        image = image.expand(*image.shape[:-1], 3)
    elif channels != 3:
        raise InputError(f"input '{name}' has {channels} channels; accepted: 1 (grey), 3 (RGB) or 4 (RGBA)")
    x = image.float().permute(0, 3, 1, 2)  # (B,H,W,3) -> (B,3,H,W)
    return (x * 2.0 - 1.0).contiguous()


def core_to_comfy_image(x: torch.Tensor) -> torch.Tensor:
    """Core RGB tensor (B,3,H,W) in [-1,1] -> ComfyUI IMAGE (B,H,W,3) float32 in [0,1] (clamped), on the CPU."""
    if x.ndim != 4:
        raise InputError(f"expected an image tensor (batch, channels, height, width); got shape {tuple(x.shape)}")
    image = ((x.detach().float() + 1.0) * 0.5).clamp(0.0, 1.0)
    return image.permute(0, 2, 3, 1).contiguous().cpu()  # (B,C,H,W) -> (B,H,W,C)


def numpy_to_comfy_image(images) -> torch.Tensor:
    """(H,W,C) float array in [0,1] — or a list of them, all of one size — -> ComfyUI IMAGE (B,H,W,C) float32."""
    arrays = [images] if isinstance(images, np.ndarray) else list(images)
    batch = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])  # (B,H,W,C)
    return torch.from_numpy(np.clip(batch, 0.0, 1.0))


def check_finite(**values) -> None:
    """InputError naming the first input whose value is NaN or infinite. ComfyUI's min/max validation lets NaN through
    (every comparison with NaN is False), and NaN scales silently give black images."""
    import math

    for name, value in values.items():
        if value is not None and not math.isfinite(float(value)):
            raise InputError(f"input '{name}' is {value}; give a finite number")


# --------------------------------------------------------------------------------------------------------------------
# Errors shown on the node

class RePoseNodeError(ValueError):
    """What a node raises for bad user input: ComfyUI shows its message on the node. The core error is kept as
    __cause__ so the server log still has the full traceback."""


# ComfyUI prints "<module>.<class>" as the error type; the real module name is the pack's filesystem path.
RePoseNodeError.__module__ = "repose"


def node_error(err: ReposeError) -> RePoseNodeError:
    """Turn a core ReposeError into the exception a node raises: '<ErrorKind>: <actionable message>'."""
    return RePoseNodeError(f"{type(err).__name__}: {err}")


def reports_user_errors(method):
    """Decorator for a node's FUNCTION: core ReposeErrors surface as RePoseNodeError with a clean message;
    everything else (bugs, interrupts) propagates unchanged."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except ReposeError as err:
            raise node_error(err) from err

    return wrapper


# --------------------------------------------------------------------------------------------------------------------
# Progress + interrupt

class ComfyProgress:
    """Progress callback for core functions: drives ComfyUI's progress bar and honours the Cancel button.

    Call it with no argument to advance one step, with an int `done` (steps completed so far), or with a
    k-diffusion style dict {"i": step_index, ...}. Every call first checks for an interrupt, which raises ComfyUI's
    InterruptProcessingException so the prompt stops cleanly."""

    def __init__(self, total: int):
        import comfy.utils

        self.total = max(int(total), 1)
        self.done = 0
        self._bar = comfy.utils.ProgressBar(self.total)

    def __call__(self, done=None, *_, **__):
        throw_if_interrupted()
        if done is None:
            self.done += 1
        elif isinstance(done, dict):
            self.done = int(done.get("i", self.done)) + 1
        else:
            self.done = int(done)
        self._bar.update_absolute(min(self.done, self.total), self.total)


def comfy_progress(total: int) -> ComfyProgress:
    """Progress adapter for `total` steps (see ComfyProgress)."""
    return ComfyProgress(total)


def throw_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


# --------------------------------------------------------------------------------------------------------------------
# Model folders

def register_model_folder(name: str, extensions) -> list[str]:
    """Register `<ComfyUI models dir>/<name>/` with folder_paths, keeping paths already registered for `name`
    (e.g. from extra_model_paths.yaml), and restrict the folder to `extensions` (e.g. [".safetensors"]).

    folder_paths gives a new folder name an empty extension set, which would list every file; hence the explicit
    set. Returns the folder's search paths."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, name)
    existing = folder_paths.folder_names_and_paths.get(name, ([], set()))[0]
    paths = [default] + [p for p in existing if p != default]
    folder_paths.folder_names_and_paths[name] = (paths, {e if e.startswith(".") else "." + e for e in extensions})
    try:  # so that users see where to put files; a read-only install is fine too
        os.makedirs(default, exist_ok=True)
    except OSError:
        pass
    return paths
