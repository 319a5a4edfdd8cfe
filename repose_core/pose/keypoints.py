"""Keypoint sets (OpenPose-18, COCO-17) and the Pose types shared by the whole project."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# OpenPose body-18 ("COCO-18") order: DeepFashion annotations and ComfyUI's POSE_KEYPOINT use it.
OPENPOSE18 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# OpenPose limb list (0-based), as drawn by the OpenPose renderer (17 limbs; PIDM uses the same).
OPENPOSE18_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# COCO-17 order: mmpose, HigherHRNet, HumanSD.
COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
# HumanSD's 16 COCO-17 limbs (0-based).
COCO17_LIMBS = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12),
    (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)

LAYOUTS = {"openpose18": OPENPOSE18, "coco17": COCO17}


@dataclass
class Pose:
    """One person. keypoints (J, 3) float32 = (x, y, confidence) in pixels of a width x height canvas.

    confidence 0 means "missing" (and then x = y = 0)."""

    keypoints: np.ndarray
    width: int
    height: int
    layout: str = "openpose18"

    def __post_init__(self):
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 3)

    @property
    def num_joints(self) -> int:
        return self.keypoints.shape[0]

    def visible(self, threshold: float = 0.0) -> np.ndarray:
        """Boolean (J,) mask of joints with confidence > threshold."""
        return self.keypoints[:, 2] > threshold

    def copy(self) -> "Pose":
        return Pose(self.keypoints.copy(), self.width, self.height, self.layout)


@dataclass
class PoseFrame:
    """All people of one image (a POSE_KEYPOINT frame)."""

    people: list = field(default_factory=list)
    width: int = 0
    height: int = 0
