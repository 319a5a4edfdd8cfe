"""Pose nodes: read pose files / JSON into POSE_KEYPOINT and render POSE_KEYPOINT to skeleton images.

POSE_KEYPOINT is comfyui_controlnet_aux's wire type: a list with one dict per frame,
`{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_width": W, "canvas_height": H}`; so these nodes
connect to DWPose / OpenPose preprocessor outputs directly.
"""
from __future__ import annotations

import hashlib
import os

from ..repose_core.errors import InputError, PoseFormatError
from ..repose_core.pose import (
    check_pose_plausible, from_pose_keypoint, load_pose_file, render_humansd, render_openpose, render_pidm_pose_map,
    to_pose_keypoint,
)
from .utils import numpy_to_comfy_image, reports_user_errors

CATEGORY = "RePose/pose"
POSE_FILE_EXTENSIONS = (".json", ".txt", ".npz")


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _input_directory() -> str:
    import folder_paths

    return folder_paths.get_input_directory()


def _resolve_input_file(name: str, input_dir: str) -> str:
    """A file name relative to ComfyUI's input directory -> absolute path; never a path outside that directory."""
    root = os.path.realpath(input_dir)
    path = os.path.realpath(os.path.join(root, name))   # symlinks resolved: a link may not lead out of input/
    if os.path.commonpath([root, path]) != root:
        raise InputError(f"input 'pose_json': '{name}' points outside ComfyUI's input directory ({root}); give a "
                         f"file name relative to it")
    if not os.path.isfile(path):
        raise InputError(f"input 'pose_json': no file '{name}' in ComfyUI's input directory ({root}); put the pose "
                         f"file there or paste the JSON text itself")
    if os.path.splitext(path)[1].lower() not in POSE_FILE_EXTENSIONS:
        raise InputError(f"input 'pose_json': '{name}' is not a pose file; accepted extensions: "
                         f"{', '.join(POSE_FILE_EXTENSIONS)}")
    return path


_NORMALIZED = {"auto": None, "pixels": False, "normalized": True}


def load_pose_keypoint(pose_json: str, coordinates: str = "auto", input_dir: str | None = None) -> list:
    """JSON text (POSE_KEYPOINT list, one frame dict, or an OpenPose JSON object) or a pose file name in
    `input_dir` -> canonical POSE_KEYPOINT (pixel coordinates, OpenPose-18 bodies)."""
    if coordinates not in _NORMALIZED:
        raise InputError(f"input 'coordinates' is {coordinates!r}; accepted: {', '.join(_NORMALIZED)}")
    normalized = _NORMALIZED[coordinates]
    text = (pose_json or "").strip()
    if not text:
        raise InputError("input 'pose_json' is empty; paste POSE_KEYPOINT / OpenPose JSON text or give the name of "
                         "a pose file (.json, .txt, .npz) in ComfyUI's input directory")
    if text[0] in "[{":
        frames = from_pose_keypoint(text, normalized, source="input 'pose_json'")
    else:
        path = _resolve_input_file(text, input_dir if input_dir is not None else _input_directory())
        frames = load_pose_file(path, normalized=normalized)
    if normalized is not None:  # a forced reading that contradicts the numbers is a mistake, not a pose
        for i, frame in enumerate(frames):
            for j, person in enumerate(frame.people):
                check_pose_plausible(person, name=f"input 'pose_json' frame {i}, person {j} (coordinates="
                                                  f"{coordinates})")
    return to_pose_keypoint(frames)


class RePoseLoadPoseJSON:
    DESCRIPTION = ("Reads a pose into POSE_KEYPOINT (the type of comfyui_controlnet_aux's DWPose/OpenPose "
                   "preprocessors): paste JSON text (a POSE_KEYPOINT list, one frame, or an OpenPose JSON object) "
                   "or type the name of a pose file in ComfyUI's input folder (.json POSE_KEYPOINT/OpenPose, "
                   ".txt GFLA/PIDM DeepFashion pose, .npz HumanSD). Output coordinates are pixels of the canvas.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("One dict per frame: people with 18 OpenPose keypoints [x, y, confidence] in pixels, "
                       "plus canvas_width / canvas_height.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_json": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "POSE_KEYPOINT or OpenPose JSON text, or a pose file name relative to ComfyUI's "
                               "input folder (e.g. poses/person1.json).",
                }),
            },
            "optional": {
                "coordinates": (list(_NORMALIZED), {
                    "default": "auto",
                    "tooltip": "auto: points all within [0, 1] are read as normalised (OpenPose preprocessor), "
                               "otherwise as pixels (DWPose). pixels / normalized force one reading.",
                }),
            },
        }

    @classmethod
    def IS_CHANGED(cls, pose_json, coordinates="auto"):
        # A file may change on disk under the same name: key the cache on its content.
        text = (pose_json or "").strip()
        if text and text[0] not in "[{":
            try:
                path = _resolve_input_file(text, _input_directory())
                with open(path, "rb") as f:
                    return hashlib.sha256(f.read()).hexdigest()
            except (InputError, OSError):
                return text  # the error is reported when the node runs
        return text

    @reports_user_errors
    def load(self, pose_json, coordinates="auto"):
        return (load_pose_keypoint(pose_json, coordinates),)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _render_pidm_rgb(frame, H, W):
    """The RGB skeleton channels of PIDM's 20-channel pose map (what PIDM checkpoints see as the pose image)."""
    return render_pidm_pose_map(frame, H, W, rgb_only=True)


# Bound of one rendered IMAGE batch (frames x H x W); each renderer also bounds one frame (MAX_RENDER_PIXELS).
MAX_BATCH_PIXELS = 64 * 2**20


RENDER_STYLES = {
    "openpose": render_openpose,    # ControlNet / DWPose skeleton, OpenPose-18
    "humansd": render_humansd,      # HumanSD skeleton, COCO-17
    "pidm_rgb": _render_pidm_rgb,   # PIDM pose image, first person only
}


def render_pose_keypoint(pose_keypoint, style: str, width: int = 0, height: int = 0) -> list:
    """POSE_KEYPOINT -> list of (H, W, 3) float32 images in [0, 1], one per frame. width/height 0 = the frame's
    canvas size (all frames must then share one canvas size, since an IMAGE batch has one size)."""
    if style not in RENDER_STYLES:
        raise InputError(f"input 'style' is {style!r}; accepted: {', '.join(RENDER_STYLES)}")
    frames = from_pose_keypoint(pose_keypoint, source="input 'pose_keypoint'")
    if not frames:
        raise InputError("input 'pose_keypoint' holds no frame; connect a pose with at least one frame")
    images = []
    for i, frame in enumerate(frames):
        W = int(width) or frame.width
        H = int(height) or frame.height
        if len(frames) * W * H > MAX_BATCH_PIXELS:
            raise InputError(f"input 'pose_keypoint': {len(frames)} frames at {W}x{H} are {len(frames) * W * H:,} "
                             f"pixels, more than the {MAX_BATCH_PIXELS:,} one Render Pose batch holds "
                             f"({MAX_BATCH_PIXELS * 12 // 2**30} GiB as an IMAGE); set a smaller width/height or "
                             f"render fewer frames at a time")
        if images and images[0].shape[:2] != (H, W):
            raise PoseFormatError(f"frame {i} has a {frame.width}x{frame.height} canvas but frame 0 rendered at "
                                  f"{images[0].shape[1]}x{images[0].shape[0]}; set width and height to render all "
                                  f"frames at one size", field="canvas_width/canvas_height")
        images.append(RENDER_STYLES[style](frame, H, W))
    return images


class RePoseRenderPose:
    DESCRIPTION = ("Draws a POSE_KEYPOINT as a skeleton image: 'openpose' (ControlNet/DWPose colours, OpenPose-18), "
                   "'humansd' (HumanSD COCO-17 skeleton) or 'pidm_rgb' (the RGB pose image PIDM/RePoseDM "
                   "checkpoints are trained on; first person only). One image per frame; the pose is stretched "
                   "from its canvas to width x height.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Skeleton images on black, one per frame of the pose.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_keypoint": ("POSE_KEYPOINT", {
                    "tooltip": "Pose from a DWPose/OpenPose preprocessor (comfyui_controlnet_aux) or RePose "
                               "Load Pose.",
                }),
                "style": (list(RENDER_STYLES), {
                    "default": "openpose",
                    "tooltip": "openpose: ControlNet OpenPose skeleton. humansd: HumanSD skeleton. pidm_rgb: PIDM "
                               "pose image (first person).",
                }),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": 8192, "step": 8,
                    "tooltip": "Image width in pixels; 0 = the pose's canvas width.",
                }),
                "height": ("INT", {
                    "default": 0, "min": 0, "max": 8192, "step": 8,
                    "tooltip": "Image height in pixels; 0 = the pose's canvas height.",
                }),
            },
        }

    @reports_user_errors
    def render(self, pose_keypoint, style, width, height):
        return (numpy_to_comfy_image(render_pose_keypoint(pose_keypoint, style, width, height)),)


NODE_CLASS_MAPPINGS = {
    "RePoseLoadPoseJSON": RePoseLoadPoseJSON,
    "RePoseRenderPose": RePoseRenderPose,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RePoseLoadPoseJSON": "RePose Load Pose (JSON / file)",
    "RePoseRenderPose": "RePose Render Pose",
}
