"""An enlarged preview: small model outputs (the bundled model makes 44x64 images) shown at a size a person can
judge. Pixels are repeated (nearest-neighbour), nothing is invented; the image itself, as saved by Save Image or
passed on, keeps the model's size.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import torch
from PIL import Image

from ..repose_core.errors import InputError
from .utils import reports_user_errors

CATEGORY = "RePose/pose"


def enlarge_nearest(images: torch.Tensor, scale: int) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, H * scale, W * scale, C): every pixel repeated scale x scale times."""
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise InputError(f"input 'scale' must be an integer >= 1, got {scale!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError("input 'images' must be a ComfyUI IMAGE (batch, height, width, channels)")
    s = int(scale)
    return images.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)


def write_previews(images: torch.Tensor, folder: str, prefix: str = "repose_preview") -> list[dict]:
    """Write IMAGE (B, H, W, C) as PNGs into ComfyUI's temp folder; -> the `ui.images` entries."""
    os.makedirs(folder, exist_ok=True)
    out = []
    tag = uuid.uuid4().hex[:8]
    for i, img in enumerate(images):
        arr = np.clip(img.cpu().float().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        name = f"{prefix}_{tag}_{i:03d}.png"
        Image.fromarray(arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]).save(os.path.join(folder, name),
                                                                                  compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


class RePosePreviewEnlarged:
    DESCRIPTION = ("Shows images enlarged by a whole factor with nearest-neighbour (each pixel becomes a scale x "
                   "scale block, no smoothing, nothing invented), so a small model output can be judged. The image "
                   "itself is not changed: Save Image on the same output keeps the model's own size.")
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Images to show (e.g. the RePose KSampler result)."}),
            "scale": ("INT", {"default": 4, "min": 1, "max": 16,
                              "tooltip": "Enlargement factor (nearest-neighbour). 4 shows a 44x64 result at 176x256."}),
        }}

    @reports_user_errors
    def preview(self, images, scale):
        import folder_paths

        big = enlarge_nearest(images, scale)
        return {"ui": {"images": write_previews(big, folder_paths.get_temp_directory())}}


NODE_CLASS_MAPPINGS = {"RePosePreviewEnlarged": RePosePreviewEnlarged}
NODE_DISPLAY_NAME_MAPPINGS = {"RePosePreviewEnlarged": "RePose Preview Enlarged (nearest-neighbour)"}
