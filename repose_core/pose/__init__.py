"""Pose toolkit: keypoint sets, file formats, renderers and geometry."""
from .keypoints import COCO17, COCO17_LIMBS, LAYOUTS, OPENPOSE18, OPENPOSE18_LIMBS, Pose, PoseFrame  # noqa: F401
