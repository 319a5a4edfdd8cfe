"""Keypoint targets for the keypoint energy: poses -> COCO-17 keypoints -> Gaussian heatmaps (paper Sec. 3.3).

HigherHRNet predicts COCO-17 heatmaps, so every target is converted to COCO-17 first (OpenPose-18 joints are matched
with `repose_core.pose`'s converter, which drops OpenPose's "neck"). Targets are kept in *normalised* canvas
coordinates u = (x + 0.5) / width (pixel centres at integers) so that they can be rendered at whatever resolution
the estimator produces.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, PoseFormatError
from ..pose import LAYOUTS, Pose, PoseFrame
from ..pose.keypoints import to_layout


def pose_to_coco17(pose: Pose) -> np.ndarray:
    """(17, 3) float32 COCO-17 keypoints (x, y, conf) in pixels of the pose's canvas (OpenPose-18 is converted)."""
    if pose.layout not in LAYOUTS:
        raise PoseFormatError(f"unknown pose layout {pose.layout!r}; accepted: {sorted(LAYOUTS)}", field="layout")
    expected = len(LAYOUTS[pose.layout])
    if pose.keypoints.shape != (expected, 3):
        raise PoseFormatError(f"a {pose.layout} pose needs {expected} keypoints of (x, y, confidence), got an array "
                              f"of shape {pose.keypoints.shape}", field="keypoints")
    return to_layout(pose, "coco17").keypoints.astype(np.float32)


def _frame_people(item) -> list:
    """People of one image: a Pose, a PoseFrame or a list of Pose."""
    if isinstance(item, Pose):
        return [item]
    if isinstance(item, PoseFrame):
        return list(item.people)
    if isinstance(item, Sequence) and all(isinstance(p, Pose) for p in item):
        return list(item)
    raise InputError(f"expected a Pose, a PoseFrame or a list of Pose for one image, got {type(item).__name__}")


def _normalised_people(people: list) -> np.ndarray:
    """(P, 17, 3) keypoints with x, y in normalised canvas coordinates."""
    out = []
    for i, pose in enumerate(people):
        if pose.width <= 0 or pose.height <= 0:
            raise PoseFormatError(f"person {i} has canvas {pose.width}x{pose.height}; width and height must be > 0",
                                  field="width/height")
        k = pose_to_coco17(pose).copy()
        k[:, 0] = (k[:, 0] + 0.5) / pose.width
        k[:, 1] = (k[:, 1] + 0.5) / pose.height
        out.append(k)
    return np.stack(out) if out else np.zeros((0, 17, 3), np.float32)


def _is_one_frame(target) -> bool:
    return isinstance(target, (Pose, PoseFrame)) or (
        isinstance(target, Sequence) and len(target) > 0 and all(isinstance(p, Pose) for p in target))


def _as_keypoints(target, canvas) -> tuple[Tensor, bool]:
    """-> (keypoints (B|1, P, 17, 3), normalised?)."""
    if _is_one_frame(target):
        return torch.from_numpy(_normalised_people(_frame_people(target)))[None], True
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)) and len(target) > 0:
        frames = [_normalised_people(_frame_people(item)) for item in target]
        people = max(max(f.shape[0] for f in frames), 1)
        # frames with fewer people are padded with all-missing persons
        padded = [np.concatenate([f, np.zeros((people - f.shape[0], 17, 3), np.float32)]) for f in frames]
        return torch.from_numpy(np.stack(padded)), True
    if isinstance(target, (Tensor, np.ndarray)):
        k = torch.as_tensor(target.detach().cpu() if isinstance(target, Tensor) else np.asarray(target)).float()
        if k.ndim not in (2, 3, 4) or tuple(k.shape[-2:]) != (17, 3):
            raise InputError(f"keypoint target must be COCO-17 (x, y, conf) of shape (17, 3), (B, 17, 3) or "
                             f"(B, P, 17, 3); got shape {tuple(k.shape)}. Pass OpenPose-18 keypoints as a Pose "
                             f"(layout='openpose18') so they are converted.")
        k = {2: lambda: k[None, None], 3: lambda: k[:, None], 4: lambda: k}[k.ndim]().clone()
        if canvas is None:
            return k, False
        h, w = canvas
        k[..., 0] = (k[..., 0] + 0.5) / w
        k[..., 1] = (k[..., 1] + 0.5) / h
        return k, True
    raise InputError(f"unsupported keypoint target {type(target).__name__}; accepted: Pose, PoseFrame, list of "
                     f"Pose/PoseFrame, or a COCO-17 keypoint tensor (B, 17, 3)")


class KeypointTarget:
    """Target pose(s) for the keypoint energy, rendered lazily at the estimator's heatmap resolution.

    Accepted `target`:
      - `Pose`                                   one person, the same target for every batch item;
      - `PoseFrame` or `list[Pose]`              all people of one image (a frame), same for every batch item;
      - `list[PoseFrame]` / `list[list[Pose]]`   one frame per batch item;
      - tensor / array `(17, 3)`, `(B, 17, 3)` or `(B, P, 17, 3)`: COCO-17 (x, y, conf) in pixels of a canvas of
        `canvas=(H, W)`; with `canvas=None` the pixels are those of the image being guided (the decoded x̂0).
    Joints with confidence <= 0 are "unknown": they get no Gaussian and are left out of the energy (joint weight 0),
    so an unlabelled joint is never pushed away.
    """

    def __init__(self, target, canvas: tuple[int, int] | None = None, sigma: float = 2.0):
        if sigma <= 0:
            raise InputError(f"heatmap sigma must be > 0 (pixels of the heatmap), got {sigma}")
        if canvas is not None and (len(canvas) != 2 or min(canvas) <= 0):
            raise InputError(f"keypoint canvas must be (height, width) > 0, got {canvas}")
        self.sigma = float(sigma)
        self.keypoints, self.normalised = _as_keypoints(target, canvas)  # (B|1, P, 17, 3)
        self._cache: dict = {}

    @property
    def batch(self) -> int:
        return self.keypoints.shape[0]

    def joint_weights(self, batch: int) -> Tensor:
        """(B, 17): 1 where any person of the target has the joint, else 0."""
        with torch.inference_mode(False):
            w = (self.keypoints[..., 2] > 0).any(dim=1).float()  # (B|1, 17)
        return expand_batch(w, batch, "keypoint target")

    def heatmaps(self, batch: int, h: int, w: int, image_size: tuple[int, int], device=None,
                 dtype=torch.float32) -> Tensor:
        """(B, 17, h, w) Gaussian heatmaps for heatmaps of h x w that cover an image of `image_size` (H, W).

        `image_size` matters only for targets given in pixels of the guided image. Cached per size/device/dtype
        (the target does not change across sampling steps)."""
        key = (batch, h, w, None if self.normalised else tuple(image_size), str(device), dtype)
        if key not in self._cache:
            with torch.inference_mode(False):  # reused across steps: must not be an inference tensor
                k = self.keypoints.clone()
                if not self.normalised:
                    k[..., 0] = (k[..., 0] + 0.5) / image_size[1]
                    k[..., 1] = (k[..., 1] + 0.5) / image_size[0]
                hm = gaussian_heatmaps(k, h, w, self.sigma).to(device=device, dtype=dtype)
                self._cache[key] = expand_batch(hm, batch, "keypoint target")
        return self._cache[key]


def expand_batch(x: Tensor, batch: int, what: str) -> Tensor:
    """Broadcast a batch-1 tensor to `batch`, or check it already has `batch` items."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise InputError(f"{what} has {x.shape[0]} items but the batch being guided has {batch}; "
                     f"give one target for all or exactly one per batch item")


def gaussian_heatmaps(keypoints: Tensor, h: int, w: int, sigma: float = 2.0) -> Tensor:
    """Render (B, P, J, 3) keypoints in normalised coordinates to (B, J, h, w) heatmaps.

    Each visible joint (conf > 0) is an unnormalised Gaussian exp(-d²/2σ²) (peak 1, σ in heatmap pixels, as
    HigherHRNet's training targets); people are merged with a max. Heatmap pixel centres are at integers."""
    B, P, J, _ = keypoints.shape
    if P == 0:
        return torch.zeros(B, J, h, w)
    x = keypoints[..., 0] * w - 0.5  # (B, P, J) in heatmap pixels
    y = keypoints[..., 1] * h - 0.5
    visible = (keypoints[..., 2] > 0).float()
    gx = torch.exp(-((torch.arange(w) - x[..., None]) ** 2) / (2 * sigma ** 2))  # (B, P, J, w)
    gy = torch.exp(-((torch.arange(h) - y[..., None]) ** 2) / (2 * sigma ** 2))  # (B, P, J, h)
    hm = gy[..., :, None] * gx[..., None, :] * visible[..., None, None]  # (B, P, J, h, w)
    return hm.amax(dim=1)
