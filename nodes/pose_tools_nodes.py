"""Pose tool nodes: load a pose estimator, pose from a photo, retarget a pose to another body, DeepFashion annotation
loading and pose file saving. (Loading JSON/OpenPose/GFLA files and rendering live in pose_nodes.py.)

POSE_KEYPOINT is comfyui_controlnet_aux's type (list of frame dicts, OpenPose-18 people in pixels);
POSE_ESTIMATOR is this pack's `LoadedEstimator` (a HigherHRNet PoseEstimator managed by ComfyUI).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..repose_core.errors import EmptyPoseError, InputError, PoseFormatError
from ..repose_core.pose import (
    PoseFrame, from_pose_keypoint, read_patn_annotations, retarget_pose, to_pose_keypoint, write_gfla_pose,
    write_humansd_npz, write_openpose_json, write_patn_annotations,
)
from .model_files import DTYPES, check_kind, list_models, resolve_dtype, resolve_model
from .utils import comfy_image_to_core, reports_user_errors

CATEGORY = "RePose/pose"
DEFAULT_ESTIMATOR = "repose_default_estimator.safetensors"


@dataclass
class LoadedEstimator:
    """POSE_ESTIMATOR: the estimator module, its ComfyUI ModelPatcher (memory management) and where it came from."""

    module: Any
    patcher: Any
    name: str

    def on_device(self):
        """Load through comfy.model_management; returns the module ready on its device."""
        from .comfy_runtime import load_to_device

        device = load_to_device(self.patcher)
        if next(self.module.parameters()).device != device:  # ComfyUI moved the holder; keep the module in sync
            self.module.to(device)
        return self.module


def load_named_estimator(ckpt_name: str, dtype: str = "fp32") -> LoadedEstimator:
    """Our SmallHRNet / HigherHRNet safetensors, or a HigherHRNet checkpoint in mmpose / original layout (.pth/.pt
    via the restricted loader) -> estimator, built outside inference mode so that guidance can differentiate it."""
    from ..repose_core.estimator import build_estimator
    from .comfy_runtime import ModuleHolder, patcher_for

    path = resolve_model("pose_estimators", ckpt_name)
    check_kind(path, ("pose_estimator",), "RePose Load Pose Estimator")
    with torch.inference_mode(False):
        module = build_estimator(path, dtype=resolve_dtype(dtype))
    return LoadedEstimator(module, patcher_for(ModuleHolder(module)), ckpt_name)


class RePoseLoadPoseEstimator:
    DESCRIPTION = ("Loads a pose estimator from ComfyUI's models/pose_estimators folder: the pack's SmallHRNet or a "
                   "HigherHRNet (our .safetensors, or mmpose / original HigherHRNet .pth checkpoints, read without "
                   "unpickling code). "
                   "Used by Pose From Image and by Pose Gradient Guidance (it is differentiated during sampling).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("POSE_ESTIMATOR",)
    RETURN_NAMES = ("pose_estimator",)
    OUTPUT_TOOLTIPS = ("The loaded estimator (ComfyUI moves it to the GPU when a node uses it).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (list_models("pose_estimators", DEFAULT_ESTIMATOR), {
                "tooltip": "Estimator weights in models/pose_estimators (bundled: repose_default_estimator).",
            }),
            "dtype": (list(DTYPES), {
                "default": "fp32",
                "tooltip": "Weight precision. fp32 is safest for guidance gradients; fp16/bf16 halve memory.",
            }),
        }}

    @reports_user_errors
    def load(self, ckpt_name, dtype="fp32"):
        return (load_named_estimator(ckpt_name, dtype),)


CONFIDENCE_MODES = ("binary", "estimator")
MIN_POSE_IMAGE_SIDE = 16   # pixels; below it the estimator's heatmaps are a few pixels of padding


def _inside_image(frame):
    """Joints decoded outside the image (heatmap peaks in the padding) are dropped; a person left without joints
    is dropped too, so that allow_empty=False really means 'a person was seen in the picture'."""
    import dataclasses

    people = []
    for pose in frame.people:
        kp = pose.keypoints.copy()
        off = (kp[:, 0] < 0) | (kp[:, 1] < 0) | (kp[:, 0] > pose.width) | (kp[:, 1] > pose.height)
        kp[off] = 0.0
        if (kp[:, 2] > 0).any():
            people.append(dataclasses.replace(pose, keypoints=kp))
    return dataclasses.replace(frame, people=people)


def estimate_pose_keypoint(estimator: LoadedEstimator, image: torch.Tensor, threshold: float = 0.1,
                           multi_person: bool = False, allow_empty: bool = False,
                           confidence: str = "binary") -> list:
    """IMAGE (B,H,W,C) -> POSE_KEYPOINT (one frame per image, OpenPose-18 in pixels of the image).

    confidence "binary" writes 1.0 for every detected joint (what comfyui_controlnet_aux's decoder and renderers
    read: they drop joints with confidence < 1), "estimator" keeps the heatmap peaks."""
    if confidence not in CONFIDENCE_MODES:
        raise InputError(f"input 'confidence' is {confidence!r}; accepted: {', '.join(CONFIDENCE_MODES)}")
    from ..repose_core.estimator import estimate_poses

    img01 = (comfy_image_to_core(image, "image") + 1.0) / 2.0  # (B,3,H,W) in [0,1]
    if min(img01.shape[-2:]) < MIN_POSE_IMAGE_SIDE:
        raise InputError(f"input 'image' is {img01.shape[-1]}x{img01.shape[-2]} pixels; a body pose cannot be found in "
                         f"an image smaller than {MIN_POSE_IMAGE_SIDE} pixels on a side — give the photo itself")
    module = estimator.on_device()
    p = next(module.parameters())
    frames = estimate_poses(module, img01.to(device=p.device, dtype=p.dtype), threshold, multi_person=multi_person,
                            to_openpose18=True)
    frames = [_inside_image(f) for f in frames]
    if not allow_empty:
        for i, frame in enumerate(frames):
            if not frame.people:
                raise EmptyPoseError(f"no person found in image {i} of input 'image' (threshold {threshold}); "
                                     f"use a photo with a clearly visible person, lower 'threshold', or enable "
                                     f"'allow_empty'")
    return to_pose_keypoint(frames, binary_confidence=confidence == "binary")


class RePosePoseFromImage:
    DESCRIPTION = ("Detects the body pose of the person in each photo with the pose estimator and outputs it as "
                   "POSE_KEYPOINT (OpenPose-18 keypoints in pixels), e.g. to take the target pose of a pose transfer "
                   "from a second photo.")
    CATEGORY = CATEGORY
    FUNCTION = "estimate"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("One frame per input image, canvas = image size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Photo(s) of a person."}),
            "pose_estimator": ("POSE_ESTIMATOR", {"tooltip": "From RePose Load Pose Estimator."}),
            "threshold": ("FLOAT", {
                "default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Heatmap peak below which a joint counts as missing (HigherHRNet uses 0.1).",
            }),
            "multi_person": ("BOOLEAN", {
                "default": False,
                "tooltip": "Detect several people (associative-embedding grouping); off = one person per image.",
            }),
        }, "optional": {
            "allow_empty": ("BOOLEAN", {
                "default": False,
                "tooltip": "Output an empty frame instead of an error when no person is found.",
            }),
            "confidence": (list(CONFIDENCE_MODES), {
                "default": "binary",
                "tooltip": "binary: 1.0 for every detected joint, as DWPose/OpenPose write it (comfyui_controlnet_aux "
                           "nodes drop joints below 1.0). estimator: keep the estimator's peak values.",
            }),
        }}

    @reports_user_errors
    def estimate(self, image, pose_estimator, threshold, multi_person, allow_empty=False, confidence="binary"):
        return (estimate_pose_keypoint(pose_estimator, image, threshold, multi_person, allow_empty, confidence),)


def retarget_pose_keypoint(target_pose, source_pose, anchor: str = "target") -> list:
    """Retarget each person of each target frame to the source body (frames broadcast 1 <-> N; person i of the
    target uses person i of the source, or the first source person if the source has fewer)."""
    targets = from_pose_keypoint(target_pose, source="input 'target_pose'")
    sources = from_pose_keypoint(source_pose, source="input 'source_pose'")
    if not targets or not sources:
        raise InputError("inputs 'target_pose' and 'source_pose' need at least one frame each")
    n = max(len(targets), len(sources))
    if len(targets) not in (1, n) or len(sources) not in (1, n):
        raise InputError(f"'target_pose' has {len(targets)} frames and 'source_pose' {len(sources)}; give the same "
                         f"number, or one frame for all")
    out = []
    for i in range(n):
        tgt, src = targets[i % len(targets)], sources[i % len(sources)]
        if not src.people:
            raise EmptyPoseError(f"frame {i} of input 'source_pose' has no person to take the body proportions from")
        people = [retarget_pose(p, src.people[min(j, len(src.people) - 1)], anchor=anchor)
                  for j, p in enumerate(tgt.people)]
        out.append(PoseFrame(people, src.width, src.height))
    return to_pose_keypoint(out)


class RePoseRetargetPose:
    DESCRIPTION = ("Fits a target pose to the source person's body: keeps the target's limb directions but uses the "
                   "source's bone lengths, on the source's canvas. Use it before a pose transfer when the target "
                   "pose comes from a person with different proportions.")
    CATEGORY = CATEGORY
    FUNCTION = "retarget"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("The target pose with the source's proportions, on the source canvas.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose to reach (e.g. from Pose From Image)."}),
            "source_pose": ("POSE_KEYPOINT", {"tooltip": "The pose of the source person (body proportions)."}),
            "anchor": (["target", "source"], {
                "default": "target",
                "tooltip": "target: the person stands where the target pose is; source: where the source person is.",
            }),
        }}

    @reports_user_errors
    def retarget(self, target_pose, source_pose, anchor):
        return (retarget_pose_keypoint(target_pose, source_pose, anchor),)


# ----------------------------------------------------------------------------------------------------------------
# DeepFashion annotations


def _input_file(name: str, input_dir: str | None, field: str, extensions: tuple[str, ...]) -> str:
    if input_dir is None:
        import folder_paths

        input_dir = folder_paths.get_input_directory()
    root = os.path.realpath(input_dir)
    path = os.path.realpath(os.path.join(root, name))   # symlinks resolved: a link may not lead out of input/
    if os.path.commonpath([root, path]) != root:
        raise InputError(f"input '{field}': '{name}' points outside ComfyUI's input directory ({root})")
    if not os.path.isfile(path):
        raise InputError(f"input '{field}': no file '{name}' in ComfyUI's input directory ({root}); put it there")
    if os.path.splitext(path)[1].lower() not in extensions:
        raise InputError(f"input '{field}': '{name}' is not a {' / '.join(extensions)} file")
    return path


def load_deepfashion_pose(annotation_file: str, image_name: str, width: int = 176, height: int = 256,
                          input_dir: str | None = None) -> list:
    """One row of a DeepFashion/PATN annotation csv (fasion-resize-annotation-*.csv) -> POSE_KEYPOINT."""
    path = _input_file(annotation_file, input_dir, "annotation_file", (".csv",))
    poses = read_patn_annotations(path, height=height, width=width)
    name = image_name.strip()
    if name not in poses:
        some = ", ".join(list(poses)[:3])
        raise PoseFormatError(f"image {name!r} is not annotated in {annotation_file} (e.g. {some})",
                              file=annotation_file, field="image_name")
    pose = poses[name]
    return to_pose_keypoint([PoseFrame([pose], pose.width, pose.height)])


class RePoseLoadDeepFashionPose:
    DESCRIPTION = ("Reads the pose of one image from a DeepFashion annotation file (PATN/DPTN/CFLD "
                   "'fasion-resize-annotation-*.csv', name:keypoints_y:keypoints_x) in ComfyUI's input folder.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("The annotated pose (OpenPose-18, pixels of a width x height canvas).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "annotation_file": ("STRING", {
                "default": "fasion-resize-annotation-test.csv",
                "tooltip": "Annotation csv, relative to ComfyUI's input folder.",
            }),
            "image_name": ("STRING", {
                "default": "", "tooltip": "The image's name as in the csv's first column.",
            }),
            "width": ("INT", {"default": 176, "min": 8, "max": 8192, "step": 1,
                              "tooltip": "Canvas width the coordinates are in (176 for the standard files)."}),
            "height": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 1,
                               "tooltip": "Canvas height the coordinates are in (256 for the standard files)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, annotation_file, image_name, width, height):
        try:
            with open(_input_file(annotation_file, None, "annotation_file", (".csv",)), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() + image_name
        except (InputError, OSError):
            return annotation_file + image_name

    @reports_user_errors
    def load(self, annotation_file, image_name, width, height):
        return (load_deepfashion_pose(annotation_file, image_name, width, height),)


# ----------------------------------------------------------------------------------------------------------------
# Saving

SAVE_FORMATS = {
    "pose_keypoint_json": ".json",  # the POSE_KEYPOINT list itself (all frames)
    "openpose_json": ".json",       # one OpenPose JSON per frame
    "deepfashion_csv": ".csv",      # PATN annotation csv, one row per frame (first person)
    "gfla_txt": ".txt",             # GFLA/PIDM pose txt per frame (first person)
    "humansd_npz": ".npz",          # HumanSD MMPose-style npz per frame
}


def save_pose_keypoint(pose_keypoint, fmt: str, filename_prefix: str, output_dir: str) -> list[str]:
    """Write POSE_KEYPOINT to files under `output_dir`; returns the paths relative to it."""
    if fmt not in SAVE_FORMATS:
        raise InputError(f"input 'format' is {fmt!r}; accepted: {', '.join(SAVE_FORMATS)}")
    frames = from_pose_keypoint(pose_keypoint, source="input 'pose_keypoint'")
    if not frames:
        raise InputError("input 'pose_keypoint' holds no frame")
    if any(ord(c) < 32 for c in filename_prefix):
        raise InputError(f"input 'filename_prefix': {filename_prefix!r} contains a control character (e.g. a NUL "
                         f"byte); use letters, digits, '_', '-' and '/' for sub-folders")
    prefix = filename_prefix.strip().replace("\\", "/") or "repose_pose"
    if os.path.isabs(prefix) or ".." in prefix.split("/"):
        raise InputError(f"input 'filename_prefix': {filename_prefix!r} must be a relative name inside ComfyUI's "
                         f"output folder")
    root = os.path.abspath(output_dir)
    os.makedirs(os.path.dirname(os.path.join(root, prefix)) or root, exist_ok=True)
    ext = SAVE_FORMATS[fmt]

    def free_name(tag: str) -> str:
        n = 1
        while os.path.exists(os.path.join(root, f"{prefix}_{n:05d}{tag}{ext}")):
            n += 1
        return f"{prefix}_{n:05d}{tag}{ext}"

    written = []
    if fmt == "pose_keypoint_json":
        rel = free_name("")
        with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
            json.dump(to_pose_keypoint(frames), f)
        return [rel]
    if fmt == "deepfashion_csv":
        rel = free_name("")
        stem = os.path.basename(prefix)
        poses = {}
        for i, frame in enumerate(frames):
            if not frame.people:
                raise EmptyPoseError(f"frame {i} of input 'pose_keypoint' has no person to save")
            poses[f"{stem}_{i:05d}.jpg"] = frame.people[0]
        write_patn_annotations(os.path.join(root, rel), poses)
        return [rel]
    for i, frame in enumerate(frames):
        rel = free_name(f"_f{i:03d}")
        path = os.path.join(root, rel)
        if fmt == "openpose_json":
            write_openpose_json(path, frame)
        elif fmt == "humansd_npz":
            write_humansd_npz(path, frame)
        else:  # gfla_txt
            if not frame.people:
                raise EmptyPoseError(f"frame {i} of input 'pose_keypoint' has no person to save")
            write_gfla_pose(path, frame.people[0])
        written.append(rel)
    return written


class RePoseSavePose:
    DESCRIPTION = ("Saves a POSE_KEYPOINT into ComfyUI's output folder: as the POSE_KEYPOINT JSON list, OpenPose "
                   "JSON (one file per frame), a DeepFashion/PATN annotation csv, GFLA/PIDM pose txt or a HumanSD npz.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("paths",)
    OUTPUT_TOOLTIPS = ("The written files, relative to the output folder, one per line.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "The pose to save."}),
            "format": (list(SAVE_FORMATS), {
                "default": "pose_keypoint_json",
                "tooltip": "pose_keypoint_json: reload with RePose Load Pose. openpose_json: OpenPose tools. "
                           "deepfashion_csv / gfla_txt: DeepFashion benchmarks (first person). humansd_npz: HumanSD.",
            }),
            "filename_prefix": ("STRING", {
                "default": "repose/pose", "tooltip": "File name prefix inside the output folder (sub-folders allowed).",
            }),
        }}

    @reports_user_errors
    def save(self, pose_keypoint, format, filename_prefix):
        import folder_paths

        paths = save_pose_keypoint(pose_keypoint, format, filename_prefix, folder_paths.get_output_directory())
        return {"ui": {"text": paths}, "result": ("\n".join(paths),)}


NODE_CLASS_MAPPINGS = {
    "RePoseLoadPoseEstimator": RePoseLoadPoseEstimator,
    "RePosePoseFromImage": RePosePoseFromImage,
    "RePoseRetargetPose": RePoseRetargetPose,
    "RePoseLoadDeepFashionPose": RePoseLoadDeepFashionPose,
    "RePoseSavePose": RePoseSavePose,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RePoseLoadPoseEstimator": "RePose Load Pose Estimator",
    "RePosePoseFromImage": "RePose Pose From Image",
    "RePoseRetargetPose": "RePose Retarget Pose",
    "RePoseLoadDeepFashionPose": "RePose Load DeepFashion Pose",
    "RePoseSavePose": "RePose Save Pose",
}
