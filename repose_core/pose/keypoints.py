"""Keypoint sets (OpenPose-18, COCO-17, OpenPose BODY-25) and the Pose types shared by the whole project.

Coordinate convention used everywhere in `repose_core.pose`: a keypoint (x, y) is a continuous position in pixels of a
`width` x `height` canvas, pixel (row i, column j) covering [j, j+1) x [i, i+1). Resizing a canvas by a factor s maps
x -> s * x; flipping maps x -> width - x. Confidence 0 means "missing", and a missing joint has x = y = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PoseFormatError

# OpenPose body-18 ("COCO-18") order: DeepFashion annotations and ComfyUI's POSE_KEYPOINT use it.
OPENPOSE18 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# OpenPose limb list (0-based), as drawn by the OpenPose renderer (17 limbs; PIDM uses the same).
# It is also the kinematic tree rooted at the neck: every joint but the neck is the second index of exactly one limb.
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
# HumanSD's 16 COCO-17 limbs (0-based), in the order of `pose_skeleton` in HumanSD's configs
# (configs/humansd/humansd-inference.yaml); limb k is drawn with colour k of the 16-colour hls palette.
# Note: ears connect to shoulders; there is no shoulder-shoulder or hip-hip limb.
COCO17_LIMBS = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9), (8, 10), (5, 11),
    (6, 12), (11, 13), (12, 14), (13, 15), (14, 16),
)

# OpenPose BODY-25 (OpenPose >= 1.4 default model): BODY-18 plus mid-hip and six foot points.
OPENPOSE25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel",
    "right_big_toe", "right_small_toe", "right_heel",
)

LAYOUTS = {"openpose18": OPENPOSE18, "coco17": COCO17}

# Index maps between the sets, derived from the joint names so they cannot drift from the tuples above.
OPENPOSE18_FROM_COCO17 = tuple(COCO17.index(n) if n in COCO17 else -1 for n in OPENPOSE18)  # -1: neck
COCO17_FROM_OPENPOSE18 = tuple(OPENPOSE18.index(n) for n in COCO17)
OPENPOSE18_FROM_BODY25 = tuple(OPENPOSE25.index(n) for n in OPENPOSE18)

# DWPose keeps the synthesised neck only when both shoulders score above 0.3.
NECK_THRESHOLD = 0.3


def _mirror_index(names: tuple) -> tuple:
    """Index of each joint's left/right counterpart (itself for centre joints)."""
    def swap(n):
        if n.startswith("left_"):
            return "right_" + n[5:]
        if n.startswith("right_"):
            return "left_" + n[6:]
        return n
    return tuple(names.index(swap(n)) for n in names)


# Used by horizontal flips (geometry.hflip_pose) and by retargeting to borrow a bone length from the other side.
MIRROR = {"openpose18": _mirror_index(OPENPOSE18), "coco17": _mirror_index(COCO17)}


@dataclass
class Pose:
    """One person. keypoints (J, 3) float32 = (x, y, confidence) in pixels of a width x height canvas.

    confidence 0 means "missing" (and then x = y = 0).
    `extras` carries optional per-person arrays passed through from files (ComfyUI/OpenPose
    "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d": flat [x, y, c] lists in the same pixel
    canvas, or None). They are moved by geometry transforms and written back by the writers, never interpreted."""

    keypoints: np.ndarray
    width: int
    height: int
    layout: str = "openpose18"
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            kp = np.asarray(self.keypoints, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise PoseFormatError(f"keypoints are not numeric: {e}", field="keypoints") from None
        if kp.size % 3:
            raise PoseFormatError(f"keypoints hold {kp.size} numbers, not a whole number of (x, y, confidence) "
                                  f"triplets", field="keypoints")
        self.keypoints = kp.reshape(-1, 3)

    def __eq__(self, other):
        # element-wise keypoint comparison (the generated dataclass __eq__ would fail on numpy arrays)
        if not isinstance(other, Pose):
            return NotImplemented
        return (self.layout, self.width, self.height, self.extras) == (other.layout, other.width, other.height,
                                                                        other.extras) \
            and self.keypoints.shape == other.keypoints.shape and bool(np.array_equal(self.keypoints, other.keypoints))

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable (object types __hash__ as a method)

    @property
    def num_joints(self) -> int:
        return self.keypoints.shape[0]

    @property
    def joint_names(self) -> tuple:
        return LAYOUTS[self.layout]

    def visible(self, threshold: float = 0.0) -> np.ndarray:
        """Boolean (J,) mask of joints with confidence > threshold."""
        return self.keypoints[:, 2] > threshold

    def is_empty(self, threshold: float = 0.0) -> bool:
        """True when no joint has confidence > threshold."""
        return not bool(self.visible(threshold).any())

    def copy(self) -> "Pose":
        extras = {k: (None if v is None else list(v)) for k, v in self.extras.items()}
        return Pose(self.keypoints.copy(), self.width, self.height, self.layout, extras)


@dataclass
class PoseFrame:
    """All people of one image (a POSE_KEYPOINT frame)."""

    people: list = field(default_factory=list)
    width: int = 0
    height: int = 0


def _missing_to_zero(kp: np.ndarray) -> np.ndarray:
    """Enforce the convention: confidence <= 0 -> (0, 0, 0)."""
    kp = kp.copy()
    kp[kp[:, 2] <= 0] = 0.0
    return kp


def coco17_to_openpose18(pose: Pose, neck_threshold: float = NECK_THRESHOLD) -> Pose:
    """COCO-17 -> OpenPose-18: reorder and synthesise the neck as the shoulders' midpoint.

    As in DWPose, the neck exists only when both shoulders have confidence > `neck_threshold`; its confidence is the
    smaller of the two. An OpenPose-18 pose is returned unchanged (copied)."""
    if pose.layout == "openpose18":
        return pose.copy()
    if pose.layout != "coco17" or pose.num_joints != 17:
        raise PoseFormatError(f"coco17_to_openpose18 needs a 17-joint coco17 pose, got layout {pose.layout!r} "
                              f"with {pose.num_joints} joints", field="layout")
    src = pose.keypoints
    out = np.zeros((18, 3), np.float32)
    for j, c in enumerate(OPENPOSE18_FROM_COCO17):
        if c >= 0:
            out[j] = src[c]
    ls, rs = src[COCO17.index("left_shoulder")], src[COCO17.index("right_shoulder")]
    if ls[2] > neck_threshold and rs[2] > neck_threshold:
        out[1, :2] = (ls[:2] + rs[:2]) / 2
        out[1, 2] = min(ls[2], rs[2])
    return Pose(_missing_to_zero(out), pose.width, pose.height, "openpose18", dict(pose.extras))


def openpose18_to_coco17(pose: Pose) -> Pose:
    """OpenPose-18 -> COCO-17: reorder and drop the neck. A COCO-17 pose is returned unchanged (copied)."""
    if pose.layout == "coco17":
        return pose.copy()
    if pose.layout != "openpose18" or pose.num_joints != 18:
        raise PoseFormatError(f"openpose18_to_coco17 needs an 18-joint openpose18 pose, got layout {pose.layout!r} "
                              f"with {pose.num_joints} joints", field="layout")
    out = pose.keypoints[list(COCO17_FROM_OPENPOSE18)]
    return Pose(out, pose.width, pose.height, "coco17", dict(pose.extras))


def body25_to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """OpenPose BODY-25 (25, 3) -> BODY-18 (18, 3): drop mid-hip and the feet."""
    return np.asarray(keypoints, np.float32).reshape(25, 3)[list(OPENPOSE18_FROM_BODY25)]


def to_layout(pose: Pose, layout: str) -> Pose:
    """Convert `pose` to `layout` ("openpose18" or "coco17")."""
    if layout == "openpose18":
        return coco17_to_openpose18(pose)
    if layout == "coco17":
        return openpose18_to_coco17(pose)
    raise PoseFormatError(f"unknown layout {layout!r}; accepted: {sorted(LAYOUTS)}", field="layout")
