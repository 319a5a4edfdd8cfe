"""The bundled example figures as a node, so the pack's templates run as dropped (nothing to upload).

The figures are the procedural people shipped in repose_core/synthetic/examples/<H>x<W>/ (the demo's examples):
for each example k, the person in a source pose, the same person in a target pose (ground truth) and both poses
as POSE_KEYPOINT.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..repose_core.errors import InputError
from ..repose_core.pose import from_pose_keypoint, to_pose_keypoint
from .utils import reports_user_errors

CATEGORY = "RePose/pose"
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "repose_core" / "synthetic" / "examples"
# Joints whose box is the upper garment (OpenPose-18): neck, shoulders, elbows, hips.
TORSO_JOINTS = (1, 2, 3, 5, 6, 8, 11)


def example_sizes() -> list[str]:
    """The bundled sizes, "HxW" folder names, smallest first."""
    sizes = [p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir() and (p / "source_0.png").is_file()]
    return sorted(sizes, key=lambda s: int(s.split("x")[0]))


def example_labels() -> list[str]:
    """One label per bundled example: "<k>: <source pose> -> <target pose>, <garments>"."""
    meta = json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))
    labels = []
    for e in meta["examples"]:
        src, tgt = e["source"], e["target"]
        labels.append(f"{e['example']}: {src['kind']} ({src['view']}) -> {tgt['kind']} ({tgt['view']}), "
                      f"{e['top']}, {e['bottom']}")
    return labels


def _index(example: str) -> int:
    head = str(example).split(":", 1)[0].strip()
    labels = example_labels()
    if not head.isdigit() or int(head) >= len(labels):
        raise InputError(f"input 'example' is {example!r}; accepted: {', '.join(labels)}")
    return int(head)


def _image(path: Path) -> torch.Tensor:
    """PNG -> ComfyUI IMAGE (1, H, W, 3) float32 in [0, 1]."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]


def torso_mask(pose_keypoint: list, height: int, width: int, margin: float = 0.06) -> torch.Tensor:
    """MASK (1, H, W): 1 on the box around the torso joints (neck, shoulders, elbows, hips) of the first person,
    grown by `margin` x the image height: the upper garment, the region an appearance edit regenerates."""
    frame = from_pose_keypoint(pose_keypoint)[0]
    mask = torch.zeros(1, height, width)
    if not frame.people:
        return mask
    kp = frame.people[0].keypoints
    pts = kp[list(TORSO_JOINTS)]
    pts = pts[pts[:, 2] > 0]
    if not len(pts):
        return mask
    m = margin * height
    x0, y0 = int(max(0, np.floor(pts[:, 0].min() - m))), int(max(0, np.floor(pts[:, 1].min() - m)))
    x1, y1 = int(min(width, np.ceil(pts[:, 0].max() + m))), int(min(height, np.ceil(pts[:, 1].max() + m)))
    mask[0, y0:y1, x0:x1] = 1.0
    return mask


def load_example(example: str, size: str) -> tuple:
    """-> (source IMAGE, source POSE_KEYPOINT, target POSE_KEYPOINT, target IMAGE (ground truth), torso MASK)."""
    sizes = example_sizes()
    if size not in sizes:
        raise InputError(f"input 'size' is {size!r}; bundled sizes: {', '.join(sizes)}")
    k = _index(example)
    folder = EXAMPLES_DIR / size
    source = _image(folder / f"source_{k}.png")
    target = _image(folder / f"target_{k}.png")
    poses = []
    for role in ("source", "target"):
        frames = from_pose_keypoint(json.loads((folder / f"{role}_pose_{k}.json").read_text(encoding="utf-8")),
                                    source=f"{folder.name}/{role}_pose_{k}.json")
        poses.append(to_pose_keypoint(frames, binary_confidence=True))
    H, W = target.shape[1:3]
    return source, poses[0], poses[1], target, torso_mask(poses[1], H, W)


class RePoseLoadExample:
    DESCRIPTION = ("One of the example people bundled with the pack (the demo's procedural figures): the person in a "
                   "source pose, their pose and a target pose, and the same person really in the target pose (ground "
                   "truth, also usable as an appearance-edit reference with the torso mask). Lets the templates run "
                   "with nothing to upload; swap it for Load Image + Load Pose / Pose From Image for your own photos.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT", "POSE_KEYPOINT", "IMAGE", "MASK")
    RETURN_NAMES = ("source", "source_pose", "target_pose", "target_photo", "torso_mask")
    OUTPUT_TOOLTIPS = ("The person in the source pose (size = the chosen size).",
                       "Pose of the source image (OpenPose-18, pixels, confidence 1).",
                       "The example's target pose, on the same canvas.",
                       "Ground truth: the same person in the target pose.",
                       "1 on the torso box of the target pose (upper garment), 0 elsewhere.")

    @classmethod
    def INPUT_TYPES(cls):
        labels, sizes = example_labels(), example_sizes()
        return {"required": {
            "example": (labels, {"default": labels[0],
                                 "tooltip": "Which bundled person and pose pair (source pose -> target pose, clothes)."}),
            "size": (sizes, {"default": sizes[0],
                             "tooltip": "Image size H x W: use the size the model was trained at (the bundled "
                                        "default model: 64x44)."}),
        }}

    @reports_user_errors
    def load(self, example, size):
        return load_example(example, size)


NODE_CLASS_MAPPINGS = {"RePoseLoadExample": RePoseLoadExample}
NODE_DISPLAY_NAME_MAPPINGS = {"RePoseLoadExample": "RePose Load Example (bundled figures)"}
