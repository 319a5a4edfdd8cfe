"""Optical-flow visualisation: a dense flow field -> an RGB image with the HSV colour wheel (Baker et al. 2011,
"A Database and Evaluation Methodology for Optical Flow": hue = direction, saturation = magnitude).

Used to show the Recurrent Pose Alignment flow of RePoseDM (paper Sec. 3.2, Fig. 9). Flows follow the RPA
convention: (B, 2, H, W) in pixels, channel 0 = x (columns), channel 1 = y (rows).
"""
from __future__ import annotations

import math

import torch
from kornia.color import hsv_to_rgb
from torch import Tensor

from .errors import InputError


def flow_to_rgb(flow: Tensor, max_magnitude: float | None = None) -> Tensor:
    """(B, 2, H, W) flow -> (B, 3, H, W) float RGB in [0, 1].

    Hue encodes the direction (angle of (dx, dy), 0 = pointing right), saturation the magnitude relative to
    `max_magnitude` (default: the largest magnitude of each image, so every image uses the full range), value 1.
    Zero flow is white. Non-finite vectors are drawn black, so a broken flow is visible at a glance."""
    if not isinstance(flow, Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, Tensor) else type(flow).__name__
        raise InputError(f"flow must be a (B, 2, H, W) tensor (dx, dy in pixels), got {shape}")
    if max_magnitude is not None and not (max_magnitude > 0 and math.isfinite(max_magnitude)):
        raise InputError(f"max_magnitude must be a finite number > 0 or None, got {max_magnitude!r}")
    flow = flow.detach().float()
    finite = torch.isfinite(flow).all(dim=1, keepdim=True)  # (B, 1, H, W)
    flow = torch.where(finite, flow, torch.zeros_like(flow))
    dx, dy = flow[:, :1], flow[:, 1:]
    magnitude = torch.sqrt(dx ** 2 + dy ** 2)  # (B, 1, H, W)
    if max_magnitude is None:
        scale = magnitude.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    else:
        scale = torch.full_like(magnitude[:, :, :1, :1], float(max_magnitude))
    hue = torch.atan2(dy, dx) % (2 * math.pi)  # (B, 1, H, W) in [0, 2π)
    saturation = (magnitude / scale).clamp(0.0, 1.0)
    value = finite.float()
    return hsv_to_rgb(torch.cat([hue, saturation, value], dim=1)).clamp(0.0, 1.0)
