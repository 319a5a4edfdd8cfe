"""Pose file formats: readers and writers that round-trip.

- ComfyUI POSE_KEYPOINT (comfyui_controlnet_aux DWPose / OpenPose preprocessors): list of frames
  `{"people": [{"pose_keypoints_2d": [x, y, c] * 18, "face_keypoints_2d": ..., "hand_left_keypoints_2d": ...,
  "hand_right_keypoints_2d": ...}], "canvas_width": W, "canvas_height": H}`. DWPose writes pixel coordinates, the
  OpenPose preprocessor writes coordinates normalised to [0, 1]; both are detected.
- OpenPose JSON files (`{"version": ..., "people": [...]}`), BODY-18 or BODY-25 (converted to 18).
- DeepFashion, PATN/DPTN/CFLD layout: `fasion-resize-pairs-*.csv` (`from,to`) and `fasion-resize-annotation-*.csv`
  (`name:keypoints_y:keypoints_x`, JSON lists of 18 ints in a 256x176 frame, -1 = missing). Upstream spells "fasion".
- DeepFashion, GFLA/NTED/PIDM layout: `{train,test}_pairs.txt` (`target,src1,src2,...`) and one `pose/....txt` per
  image: 18 lines "x y" in a 256x256 frame whose person image (176 px wide) sits between 40 px side margins,
  -1 = missing (PIDM data/fashion_data.py: x_img = (x - 40) * W / 176, y_img = y * H / 256).
- HumanSD / LAION-Human `.npz`: `arr_0` = object array of MMPose results `{"keypoints": (17, 3), "score", "area"}`.
  Read with the restricted unpickler of `repose_core.checkpoint` (numpy arrays, dicts, lists and numbers only), never
  `allow_pickle=True`.

All readers return Poses in pixel coordinates of their canvas (see keypoints.py); missing joints have confidence 0.
Malformed input raises PoseFormatError naming the file, line and field. Points off the canvas are kept as they are.
"""
from __future__ import annotations

import io
import json
import logging
import math
import numbers
import os
import zipfile
from pathlib import Path

import numpy as np

from ..checkpoint import RefusedGlobal, restricted_unpickler
from ..errors import PoseFormatError
from .keypoints import (
    COCO17, OPENPOSE18, Pose, PoseFrame, body25_to_openpose18, coco17_to_openpose18, openpose18_to_coco17,
)
from .geometry import transform_extras
from .validate import validate_pose

log = logging.getLogger("repose")

# Per-person arrays passed through unchanged (in pixel units) by the POSE_KEYPOINT / OpenPose readers and writers.
EXTRA_KEYS = ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")

PATN_HEIGHT, PATN_WIDTH = 256, 176          # frame of the PATN annotations and of the GFLA person image
GFLA_PAD = 40                               # GFLA pose files: 256x256 frame = 40 px margin + 176 px image + 40 px
PATN_PAIRS_HEADER = ("from", "to")
PATN_ANNOTATION_HEADER = ("name", "keypoints_y", "keypoints_x")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers


def _read_text(path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise PoseFormatError("pose file not found", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise PoseFormatError(f"not a UTF-8 text file ({e.reason} at byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise PoseFormatError(f"cannot read pose file: {e.strerror or e}", file=str(path)) from None


def _parse_json(text: str, source):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PoseFormatError(f"malformed JSON: {e.msg} (column {e.colno})", file=source, line=e.lineno) from None


def _positive_int(value, *, file, line=None, field):
    """Canvas sizes may arrive as 512 or 512.0; anything else non-integral or <= 0 is an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value) or value <= 0:
        raise PoseFormatError(f"expected a positive integer, got {value!r}", file=file, line=line, field=field)
    return int(value)


def _float_list(values, *, file, line=None, field):
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise PoseFormatError(f"expected a list of numbers, got {type(values).__name__}",
                              file=file, line=line, field=field)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)):
            raise PoseFormatError(f"item {i} is {v!r}, expected a number", file=file, line=line, field=field)
        out.append(float(v))
    return out


def _clean_keypoints(kp: np.ndarray, names, *, file, line=None, field) -> np.ndarray:
    """(J, 3) -> (J, 3) with the missing-joint convention enforced.

    A joint with confidence <= 0 (or NaN confidence and NaN coordinates) is missing -> (0, 0, 0).
    A joint with positive confidence and a non-finite coordinate, or an infinite confidence, is an error."""
    kp = np.asarray(kp, np.float64).copy()
    for j in range(kp.shape[0]):
        x, y, c = kp[j]
        if math.isnan(c) and not (math.isfinite(x) and math.isfinite(y)):
            c = 0.0
        if not math.isfinite(c):
            raise PoseFormatError(f"joint {j} ({names[j]}) has confidence {c}; expected a finite number",
                                  file=file, line=line, field=field)
        if c > 0 and not (math.isfinite(x) and math.isfinite(y)):
            raise PoseFormatError(f"joint {j} ({names[j]}) has confidence {c} but coordinates ({x}, {y}); "
                                  f"a missing joint must have confidence 0", file=file, line=line, field=field)
        kp[j] = (x, y, c) if c > 0 else (0.0, 0.0, 0.0)
    return kp.astype(np.float32)


def _body_from_flat(flat, *, file, line=None, field) -> tuple[np.ndarray, str]:
    """Flat OpenPose list [x, y, c, ...] -> ((J, 3) array, layout). 18 and 25 (BODY-25, converted) joints give
    openpose18; 17 joints give coco17."""
    values = _float_list(flat, file=file, line=line, field=field)
    if len(values) % 3:
        raise PoseFormatError(f"{len(values)} numbers is not a whole number of (x, y, confidence) triplets",
                              file=file, line=line, field=field)
    n = len(values) // 3
    kp = np.array(values, np.float64).reshape(n, 3)
    if n == 18:
        return _clean_keypoints(kp, OPENPOSE18, file=file, line=line, field=field), "openpose18"
    if n == 25:
        kp = body25_to_openpose18(kp).astype(np.float64)
        return _clean_keypoints(kp, OPENPOSE18, file=file, line=line, field=field), "openpose18"
    if n == 17:
        return _clean_keypoints(kp, COCO17, file=file, line=line, field=field), "coco17"
    raise PoseFormatError(f"{n} keypoints; accepted: 18 (OpenPose BODY-18 / COCO-18), 25 (BODY-25) or 17 (COCO-17)",
                          file=file, line=line, field=field)


def _extras_from_person(person: dict, *, file, field) -> dict:
    extras: dict[str, list[float] | None] = {}
    for key in EXTRA_KEYS:
        if key not in person:
            continue
        value = person[key]
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
            extras[key] = None
            continue
        values = _float_list(value, file=file, field=f"{field}.{key}")
        if len(values) % 3:
            raise PoseFormatError(f"{len(values)} numbers is not a whole number of (x, y, c) triplets",
                                  file=file, field=f"{field}.{key}")
        # comfyui_controlnet_aux writes a hand/face point its detector missed as (-1, -1) (divided by the image size
        # when normalised) with confidence 1.0: a point at negative coordinates is missing, not a point to draw.
        a = np.asarray(values, np.float64).reshape(-1, 3)
        a[(a[:, 0] < 0) | (a[:, 1] < 0)] = 0.0
        extras[key] = a.reshape(-1).tolist()
    return extras


def _looks_normalized(people_kps: list, people_extras: list) -> bool:
    """True when every confident point lies in [0, 1] (what comfyui_controlnet_aux's `is_normalized` checks)."""
    found = False
    for kp in people_kps:
        vis = kp[:, 2] > 0
        if vis.any():
            found = True
            if (np.abs(kp[vis, :2]) > 1).any():
                return False
    for extras in people_extras:
        for values in extras.values():
            if values:
                a = np.asarray(values, np.float64).reshape(-1, 3)
                vis = a[:, 2] > 0
                if vis.any():
                    found = True
                    if (np.abs(a[vis, :2]) > 1).any():
                        return False
    return found


# Written by `to_pose_keypoint(normalized=True)`: the coordinates were divided by the canvas itself.
NORMALIZED_BY_KEY = "normalized_by"


def _ceil64(n: int) -> int:
    return -(-int(n) // 64) * 64


def controlnet_aux_padded_canvas(width: int, height: int) -> tuple[int, int] | None:
    """The canvas comfyui_controlnet_aux's OpenPose preprocessor really normalised by, when (width, height) fits its
    known padding pattern; else None.

    That preprocessor resizes the image so its shorter side is `detect_resolution` (a multiple of 64), pads the
    bottom and right edges to multiples of 64, divides the detected points by the *padded* size, but writes the
    *unpadded* size as canvas_width / canvas_height. So a normalised frame whose shorter side is a multiple of 64 and
    whose longer side is not was normalised by (ceil64(width), ceil64(height)); multiplying by the written canvas
    instead puts every point too high (or too far left) by the factor canvas / padded canvas."""
    if width <= 0 or height <= 0 or min(width, height) % 64 or (width % 64 == 0 and height % 64 == 0):
        return None
    return _ceil64(width), _ceil64(height)


def _frame_from_dict(d, *, file, field, width=None, height=None, normalized=None, require_canvas=True,
                     pad64=None) -> PoseFrame:
    """One POSE_KEYPOINT frame / OpenPose JSON dict -> PoseFrame (pixel coordinates).

    pad64 (normalised frames only): None = undo comfyui_controlnet_aux's OpenPose padding quirk when the canvas fits
    its pattern (`controlnet_aux_padded_canvas`), True = always apply it (if the canvas fits), False = never."""
    if not isinstance(d, dict):
        raise PoseFormatError(f"expected a JSON object with a 'people' list, got {type(d).__name__}",
                              file=file, field=field)
    if "people" not in d:
        raise PoseFormatError(f"missing key 'people' (keys present: {sorted(d)[:8]})", file=file, field=field)
    people = d["people"]
    if people is None:
        people = []
    if not isinstance(people, list):
        raise PoseFormatError(f"'people' must be a list, got {type(people).__name__}", file=file,
                              field=f"{field}.people")
    if "canvas_width" in d or "canvas_height" in d:
        width = _positive_int(d.get("canvas_width"), file=file, field=f"{field}.canvas_width")
        height = _positive_int(d.get("canvas_height"), file=file, field=f"{field}.canvas_height")
    elif require_canvas and (width is None or height is None):
        raise PoseFormatError("missing 'canvas_width'/'canvas_height' (a POSE_KEYPOINT frame must give its canvas "
                              "size)", file=file, field=field)

    kps, layouts, extras = [], [], []
    for i, person in enumerate(people):
        pfield = f"{field}.people[{i}]"
        if not isinstance(person, dict):
            raise PoseFormatError(f"expected an object, got {type(person).__name__}", file=file, field=pfield)
        body = person.get("pose_keypoints_2d")
        if body is None or (isinstance(body, list) and len(body) == 0):
            kp, layout = np.zeros((18, 3), np.float32), "openpose18"      # face/hands only: body all missing
        else:
            kp, layout = _body_from_flat(body, file=file, field=f"{pfield}.pose_keypoints_2d")
        kps.append(kp)
        layouts.append(layout)
        extras.append(_extras_from_person(person, file=file, field=pfield))

    if width is None or height is None:
        # OpenPose JSON without a canvas: the smallest canvas holding every point (documented, logged).
        confident = [kp[kp[:, 2] > 0, :2] for kp in kps]
        pts = np.concatenate(confident) if confident else np.zeros((0, 2))
        if len(pts):
            width = width or int(math.ceil(max(pts[:, 0].max(), 0))) + 1
            height = height or int(math.ceil(max(pts[:, 1].max(), 0))) + 1
        else:
            width, height = width or 0, height or 0
        log.warning("%s: no canvas size in the file and none given; using %dx%d inferred from the keypoints. "
                    "Pass width=/height= to set it.", file, width, height)

    if normalized is None:
        normalized = _looks_normalized(kps, extras)
    if normalized:
        sx, sy = width, height
        padded = None
        if pad64 is not False and d.get(NORMALIZED_BY_KEY) != "canvas":
            padded = controlnet_aux_padded_canvas(width, height)
        if padded is not None:
            sx, sy = padded
            log.info("%s %s: normalised pose on a %dx%d canvas: comfyui_controlnet_aux's OpenPose preprocessor "
                     "normalised it by the padded %dx%d image; coordinates scaled by that size", file, field,
                     width, height, sx, sy)
        for kp in kps:
            kp[:, 0] *= sx
            kp[:, 1] *= sy
        extras = [transform_extras(e, sx, sy) for e in extras]
    poses = [Pose(kp, width, height, layout, e) for kp, layout, e in zip(kps, layouts, extras)]
    return PoseFrame(poses, width, height)


def _frames_of(obj, name: str) -> list:
    """PoseFrame | Pose | list[PoseFrame] | list[Pose] -> list[PoseFrame]."""
    if isinstance(obj, PoseFrame):
        return [obj]
    if isinstance(obj, Pose):
        return [PoseFrame([obj], obj.width, obj.height)]
    if isinstance(obj, (list, tuple)):
        if all(isinstance(o, PoseFrame) for o in obj):
            return list(obj)
        if obj and all(isinstance(o, Pose) for o in obj):
            return [PoseFrame(list(obj), obj[0].width, obj[0].height)]
    raise PoseFormatError(f"{name}: expected a PoseFrame, a list of PoseFrames, a Pose or a list of Poses, "
                          f"got {type(obj).__name__}", field=name)


def _single_frame(obj) -> PoseFrame:
    frames = _frames_of(obj, "frame")
    if len(frames) != 1:
        raise PoseFormatError(f"frame: this format holds one frame, got {len(frames)}; write one file per frame",
                              field="frame")
    return frames[0]


def _frame_canvas(frame: PoseFrame, name: str) -> tuple[int, int]:
    w, h = frame.width, frame.height
    if not (w and h) and frame.people:
        w, h = frame.people[0].width, frame.people[0].height
    if not (w and h):
        raise PoseFormatError(f"{name}: frame without people needs width and height set", field=name)
    return int(w), int(h)


def _person_dict(pose: Pose, w: int, h: int, *, normalized: bool, binary_confidence: bool, name: str,
                 empty_extra) -> dict:
    """Pose -> {"pose_keypoints_2d": [...], face/hands...} on a w x h canvas."""
    validate_pose(pose, name=name)
    pose = coco17_to_openpose18(pose)
    kp = pose.keypoints.astype(np.float64).copy()
    sx, sy = w / pose.width, h / pose.height
    extras = pose.extras
    if (sx, sy) != (1.0, 1.0):
        vis = kp[:, 2] > 0
        kp[vis, 0] *= sx
        kp[vis, 1] *= sy
        extras = transform_extras(extras, sx, sy)
    if normalized:
        kp[:, 0] /= w
        kp[:, 1] /= h
        extras = transform_extras(extras, 1.0 / w, 1.0 / h)
    if binary_confidence:
        kp[:, 2] = (kp[:, 2] > 0).astype(np.float64)
    kp[kp[:, 2] <= 0] = 0.0
    person = {"pose_keypoints_2d": [float(v) for v in kp.reshape(-1)]}
    for key in EXTRA_KEYS:
        values = extras.get(key)
        person[key] = empty_extra if values is None else [float(v) for v in values]
    return person


# ----------------------------------------------------------------------------------------------------------------
# ComfyUI POSE_KEYPOINT


def from_pose_keypoint(obj, normalized: bool | None = None, *, source: str = "POSE_KEYPOINT",
                       pad64: bool | None = None) -> list:
    """ComfyUI POSE_KEYPOINT -> list[PoseFrame] in pixel coordinates.

    `obj`: the list of frame dicts (a single frame dict or a JSON string is accepted too).
    `normalized`: None detects per frame (all confident points within [0, 1] -> normalised, as written by the
    OpenPose preprocessor; otherwise pixels, as written by DWPose); True/False forces it.
    BODY-25 people are converted to 18 joints; face/hand arrays are kept in `Pose.extras` (scaled to pixels); a
    face/hand point at negative coordinates (controlnet_aux's "not detected") becomes missing.
    `pad64`: how normalised frames from comfyui_controlnet_aux's OpenPose preprocessor are read, see
    `_frame_from_dict` (None = detect its padding pattern and undo it)."""
    if isinstance(obj, (str, bytes)):
        obj = _parse_json(obj.decode("utf-8") if isinstance(obj, bytes) else obj, source)
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise PoseFormatError(f"POSE_KEYPOINT must be a list of frames, got {type(obj).__name__}", file=source)
    return [_frame_from_dict(frame, file=source, field=f"frames[{i}]", normalized=normalized, pad64=pad64)
            for i, frame in enumerate(obj)]


def to_pose_keypoint(frames, normalized: bool = False, *, binary_confidence: bool = False) -> list:
    """list[PoseFrame] (or one PoseFrame / Pose) -> ComfyUI POSE_KEYPOINT list of dicts.

    People are written as OpenPose-18 (COCO-17 poses are converted) on the frame's canvas (a person on another canvas
    is rescaled). `normalized=True` writes [0, 1] coordinates like the OpenPose preprocessor, False pixels like DWPose.
    `binary_confidence=True` writes c = 1 for every present joint: comfyui_controlnet_aux's renderers drop joints
    with c < 1, so use it when the output feeds those nodes. Missing joints are [0, 0, 0]; absent face/hands None."""
    out = []
    for i, frame in enumerate(_frames_of(frames, "frames")):
        w, h = _frame_canvas(frame, f"frames[{i}]")
        people = [_person_dict(p, w, h, normalized=normalized, binary_confidence=binary_confidence,
                               name=f"frames[{i}].people[{j}]", empty_extra=None)
                  for j, p in enumerate(frame.people)]
        entry = {"people": people, "canvas_height": h, "canvas_width": w}
        if normalized:  # so that our own normalised frames are never taken for controlnet_aux's padded ones
            entry[NORMALIZED_BY_KEY] = "canvas"
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------------------------------
# OpenPose JSON files


def read_openpose_json(path, width: int | None = None, height: int | None = None,
                       normalized: bool | None = None) -> PoseFrame:
    """OpenPose `*_keypoints.json` (BODY-18 or BODY-25) -> PoseFrame.

    The canvas comes from `canvas_width`/`canvas_height` in the file (written by `write_openpose_json` and by
    ComfyUI), else from `width`/`height`, else it is inferred from the keypoints (with a logged warning).
    Normalised coordinates are detected as for POSE_KEYPOINT when a canvas is known."""
    path = str(path)
    obj = _parse_json(_read_text(path), path)
    if isinstance(obj, list):
        raise PoseFormatError("this is a list of frames (ComfyUI POSE_KEYPOINT); read it with from_pose_keypoint "
                              "or load_pose_file", file=path)
    has_canvas = isinstance(obj, dict) and ("canvas_width" in obj or width is not None)
    return _frame_from_dict(obj, file=path, field="root", width=width, height=height,
                            normalized=normalized if has_canvas else False, require_canvas=False)


def write_openpose_json(path, frame, normalized: bool = False) -> None:
    """PoseFrame (or Pose / list of Poses) -> OpenPose JSON file, BODY-18, plus `canvas_width`/`canvas_height`."""
    frame = _single_frame(frame)
    w, h = _frame_canvas(frame, "frame")
    people = []
    for j, p in enumerate(frame.people):
        person = {"person_id": [-1]}
        person.update(_person_dict(p, w, h, normalized=normalized, binary_confidence=False,
                                   name=f"frame.people[{j}]", empty_extra=[]))
        person.update({"pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
                       "hand_right_keypoints_3d": []})
        people.append(person)
    doc = {"version": 1.3, "people": people, "canvas_width": w, "canvas_height": h}
    Path(path).write_text(json.dumps(doc), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# DeepFashion, PATN / DPTN / CFLD csv


def _data_lines(text: str):
    """(line number, stripped line) for non-blank lines."""
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield n, line


def read_patn_pairs(path) -> list:
    """`fasion-resize-pairs-{train,test}.csv` -> [(from, to), ...] (source image name, target image name).

    Header `from,to`; a leading pandas index column (`,from,to`) is accepted."""
    path = str(path)
    lines = list(_data_lines(_read_text(path)))
    if not lines:
        raise PoseFormatError("empty pairs file; expected a header 'from,to' and one 'source,target' per line",
                              file=path, line=1)
    n0, header = lines[0]
    cols = [c.strip() for c in header.split(",")]
    skip_index = cols[-2:] == list(PATN_PAIRS_HEADER) and len(cols) == 3
    if cols != list(PATN_PAIRS_HEADER) and not skip_index:
        raise PoseFormatError(f"header is {header!r}, expected 'from,to'", file=path, line=n0, field="header")
    pairs = []
    for n, line in lines[1:]:
        fields = [c.strip() for c in line.split(",")]
        if skip_index:
            fields = fields[1:]
        if len(fields) != 2 or not all(fields):
            raise PoseFormatError(f"expected two image names 'from,to', got {line!r}", file=path, line=n,
                                  field="from,to")
        pairs.append((fields[0], fields[1]))
    return pairs


def _check_name(name, *, file, field, forbidden: str):
    if not isinstance(name, str) or not name or any(ch in name for ch in forbidden + "\n\r"):
        raise PoseFormatError(f"image name {name!r} must be a non-empty string without {forbidden!r} or newlines",
                              file=file, field=field)


def write_patn_pairs(path, pairs) -> None:
    """[(from, to), ...] -> `fasion-resize-pairs-*.csv` (header `from,to`)."""
    path = str(path)
    rows = ["from,to"]
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise PoseFormatError(f"pair {i} has {len(pair)} names, expected (from, to)", file=path,
                                  field=f"pairs[{i}]")
        for name in pair:
            _check_name(name, file=path, field=f"pairs[{i}]", forbidden=",")
        rows.append(f"{pair[0]},{pair[1]}")
    Path(path).write_text("\n".join(rows) + "\n", encoding="utf-8")


def _int_coords(text: str, *, file, line, field) -> list:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise PoseFormatError(f"malformed JSON list {text.strip()[:40]!r}: {e.msg}", file=file, line=line,
                              field=field) from None
    values = _float_list(values, file=file, line=line, field=field)
    if len(values) != 18:
        raise PoseFormatError(f"{len(values)} values, expected 18 (OpenPose-18 joints)", file=file, line=line,
                              field=field)
    for j, v in enumerate(values):
        if not math.isfinite(v):
            raise PoseFormatError(f"joint {j} ({OPENPOSE18[j]}) is {v}; use -1 for a missing joint", file=file,
                                  line=line, field=field)
    return values


def read_patn_annotations(path, height: int = PATN_HEIGHT, width: int = PATN_WIDTH) -> dict:
    """`fasion-resize-annotation-*.csv` -> {image name: Pose (openpose18)}.

    Separator ':', header `name:keypoints_y:keypoints_x`, coordinates as JSON lists of 18 numbers, -1 = missing.
    `height` x `width` is the frame the coordinates are in (256x176 for the standard files); poses get that canvas,
    nothing is rescaled. Present joints get confidence 1. A name given twice keeps the last row (logged)."""
    path = str(path)
    lines = list(_data_lines(_read_text(path)))
    if not lines:
        raise PoseFormatError("empty annotation file; expected header 'name:keypoints_y:keypoints_x'", file=path,
                              line=1)
    n0, header = lines[0]
    if tuple(c.strip() for c in header.split(":")) != PATN_ANNOTATION_HEADER:
        raise PoseFormatError(f"header is {header!r}, expected 'name:keypoints_y:keypoints_x'", file=path, line=n0,
                              field="header")
    poses = {}
    for n, line in lines[1:]:
        parts = line.split(":")
        if len(parts) != 3:
            raise PoseFormatError(f"expected 3 ':'-separated fields 'name: [y...]: [x...]', got {len(parts)}",
                                  file=path, line=n, field="name:keypoints_y:keypoints_x")
        name = parts[0].strip()
        if not name:
            raise PoseFormatError("empty image name", file=path, line=n, field="name")
        ys = _int_coords(parts[1], file=path, line=n, field="keypoints_y")
        xs = _int_coords(parts[2], file=path, line=n, field="keypoints_x")
        kp = np.zeros((18, 3), np.float32)
        for j, (x, y) in enumerate(zip(xs, ys)):
            if x != -1 and y != -1:
                kp[j] = (x, y, 1.0)
        if name in poses:
            log.warning("%s line %d: image %s annotated twice; keeping this row", path, n, name)
        poses[name] = Pose(kp, width, height, "openpose18")
    return poses


def write_patn_annotations(path, poses: dict) -> None:
    """{image name: Pose} -> `fasion-resize-annotation-*.csv`.

    Coordinates are written in each pose's own canvas (no rescaling: give 256x176 poses for the standard layout),
    rounded to integers as in the PATN files; missing joints are -1. COCO-17 poses are converted to OpenPose-18."""
    path = str(path)
    rows = [":".join(PATN_ANNOTATION_HEADER)]
    for name, pose in poses.items():
        _check_name(name, file=path, field="name", forbidden=":")
        validate_pose(pose, name=f"poses[{name!r}]")
        kp = coco17_to_openpose18(pose).keypoints
        vis = kp[:, 2] > 0
        ys = [int(round(float(v))) if ok else -1 for v, ok in zip(kp[:, 1], vis)]
        xs = [int(round(float(v))) if ok else -1 for v, ok in zip(kp[:, 0], vis)]
        rows.append(f"{name}: {json.dumps(ys)}: {json.dumps(xs)}")
    Path(path).write_text("\n".join(rows) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# DeepFashion, GFLA / NTED / PIDM txt


def read_gfla_pairs(path) -> list:
    """`{train,test}_pairs.txt` -> [(target, [source, ...]), ...]; each line `target,src1,src2,...`."""
    path = str(path)
    pairs = []
    for n, line in _data_lines(_read_text(path)):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not all(fields):
            raise PoseFormatError(f"expected 'target,source1[,source2,...]', got {line!r}", file=path, line=n,
                                  field="target,sources")
        pairs.append((fields[0], fields[1:]))
    return pairs


def write_gfla_pairs(path, pairs) -> None:
    """[(target, [source, ...]) or (target, source), ...] -> `*_pairs.txt`."""
    path = str(path)
    rows = []
    for i, (target, sources) in enumerate(pairs):
        sources = [sources] if isinstance(sources, str) else list(sources)
        if not sources:
            raise PoseFormatError(f"pair {i} ({target!r}) has no source image", file=path, field=f"pairs[{i}]")
        for name in [target, *sources]:
            _check_name(name, file=path, field=f"pairs[{i}]", forbidden=",")
        rows.append(",".join([target, *sources]))
    Path(path).write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")


def read_gfla_pose(path, height: int = PATN_HEIGHT, width: int = PATN_WIDTH) -> Pose:
    """GFLA/PIDM `pose/....txt` (18 lines "x y", 256x256 padded frame, -1 = missing) -> Pose on a width x height
    canvas: x = (x_file - 40) * width / 176, y = y_file * height / 256 (PIDM data/fashion_data.py)."""
    path = str(path)
    rows: list[list[float]] = []
    for n, line in _data_lines(_read_text(path)):
        if line.startswith("#"):
            continue
        tokens = line.replace(",", " ").split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise PoseFormatError(f"expected two numbers 'x y', got {line!r}", file=path, line=n,
                                  field=f"joint {len(rows)}") from None
        if len(values) != 2:
            raise PoseFormatError(f"expected two numbers 'x y', got {len(values)}", file=path, line=n,
                                  field=f"joint {len(rows)}")
        j = len(rows)
        if j < 18 and not all(math.isfinite(v) for v in values):
            raise PoseFormatError(f"joint {j} ({OPENPOSE18[j]}) is {values}; use -1 -1 for a missing joint",
                                  file=path, line=n, field=f"joint {j} ({OPENPOSE18[j]})")
        rows.append(values)
    if len(rows) != 18:
        raise PoseFormatError(f"{len(rows)} keypoint lines, expected 18 (OpenPose-18 'x y' per line)", file=path,
                              field="keypoints")
    kp = np.zeros((18, 3), np.float32)
    for j, (x, y) in enumerate(rows):
        if x != -1 and y != -1:
            kp[j] = ((x - GFLA_PAD) * width / PATN_WIDTH, y * height / PATN_HEIGHT, 1.0)
    return Pose(kp, width, height, "openpose18")


def write_gfla_pose(path, pose: Pose) -> None:
    """Pose -> GFLA/PIDM pose txt (inverse of `read_gfla_pose`; the pose canvas plays the 176x256 person image)."""
    validate_pose(pose, name="pose")
    kp = coco17_to_openpose18(pose).keypoints
    rows = []
    for x, y, c in kp:
        if c > 0:
            xf = float(x) * PATN_WIDTH / pose.width + GFLA_PAD
            yf = float(y) * PATN_HEIGHT / pose.height
            rows.append(f"{_num(xf)} {_num(yf)}")
        else:
            rows.append("-1 -1")
    Path(path).write_text("\n".join(rows) + "\n", encoding="utf-8")


def _num(v: float) -> str:
    """Fixed 4 decimals without trailing zeros ("105", "105.25"): readable, and exact to 1e-4 px on reading back."""
    text = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# ----------------------------------------------------------------------------------------------------------------
# HumanSD / LAION-Human npz


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The allow-list for HumanSD object arrays: what an array of dicts of numpy arrays / numbers needs."""
    try:
        import numpy._core.multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        import numpy.core.multiarray as ma  # type: ignore[no-redef]  # the same module under its numpy 1.x name
    import codecs

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # protocol-2 pickles encode bytes this way
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    return allowed


def _read_npy_member(zf: zipfile.ZipFile, member: str, source):
    with zf.open(member) as f:
        fp = io.BytesIO(f.read())
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except ValueError as e:
        raise PoseFormatError(f"not a valid .npy entry: {e}", file=source, field=member) from None
    if not dtype.hasobject:
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    try:
        return restricted_unpickler(_numpy_globals())(fp).load()
    except RefusedGlobal as e:
        raise PoseFormatError(f"refusing to unpickle {e.module}.{e.qualname}: only numpy arrays, dicts, lists and "
                              f"numbers are accepted in a HumanSD pose file", file=source, field="arr_0") from None
    except Exception as e:  # corrupt pickle stream: report, never crash deep inside pickle
        raise PoseFormatError(f"corrupt object array: {type(e).__name__}: {e}", file=source, field=member) from None


def read_humansd_npz(path, width: int | None = None, height: int | None = None) -> PoseFrame:
    """HumanSD `.npz` (`arr_0` = MMPose results `{"keypoints": (17, 3), "score", "area"}`) -> PoseFrame of COCO-17
    poses. Also accepts a numeric `arr_0` of shape (N, 17, 3).

    The canvas comes from `canvas_width`/`canvas_height` entries (written by `write_humansd_npz`), else from
    `width`/`height`, else it is inferred from the keypoints (logged). Joints with score <= 0 become missing.
    "score"/"area" are not kept (the writer recomputes them)."""
    path = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PoseFormatError("pose file not found", file=path) from None
    except (zipfile.BadZipFile, OSError) as e:
        raise PoseFormatError(f"not a valid .npz (zip) file: {e}", file=path) from None
    with zf:
        names = zf.namelist()
        if "arr_0.npy" not in names:
            raise PoseFormatError(f"no 'arr_0' array (entries: {[n[:-4] for n in names][:8]})", file=path,
                                  field="arr_0")
        arr = _read_npy_member(zf, "arr_0.npy", path)
        for key, given in (("canvas_width", width), ("canvas_height", height)):
            if given is None and f"{key}.npy" in names:
                v = _read_npy_member(zf, f"{key}.npy", path)
                value = _positive_int(float(np.asarray(v).reshape(-1)[0]) if np.size(v) == 1 else None,
                                      file=path, field=key)
                width, height = (value, height) if key == "canvas_width" else (width, value)

    if not isinstance(arr, np.ndarray):
        raise PoseFormatError(f"arr_0 is a {type(arr).__name__}, expected an array of person dicts", file=path,
                              field="arr_0")
    people = []
    if arr.dtype.hasobject:
        for i, person in enumerate(arr.reshape(-1)):
            field = f"arr_0[{i}].keypoints"
            if not isinstance(person, dict) or "keypoints" not in person:
                raise PoseFormatError("expected a dict with a 'keypoints' (17, 3) array", file=path,
                                      field=f"arr_0[{i}]")
            people.append(_coco17_array(person["keypoints"], file=path, field=field))
    else:
        if arr.size and (arr.ndim < 2 or arr.shape[-2:] != (17, 3)):
            raise PoseFormatError(f"numeric arr_0 of shape {arr.shape}; expected (N, 17, 3)", file=path,
                                  field="arr_0")
        for i, kp in enumerate(arr.reshape(-1, 17, 3) if arr.size else []):
            people.append(_coco17_array(kp, file=path, field=f"arr_0[{i}]"))

    if width is None or height is None:
        confident = [kp[kp[:, 2] > 0, :2] for kp in people]
        pts = np.concatenate(confident) if confident else np.zeros((0, 2))
        width = width or (int(math.ceil(max(pts[:, 0].max(), 0))) + 1 if len(pts) else 0)
        height = height or (int(math.ceil(max(pts[:, 1].max(), 0))) + 1 if len(pts) else 0)
        log.warning("%s: no canvas size in the file and none given; using %dx%d inferred from the keypoints. "
                    "Pass width=/height= (the image size) to set it.", path, width, height)
    return PoseFrame([Pose(kp, width, height, "coco17") for kp in people], width, height)


def _coco17_array(value, *, file, field) -> np.ndarray:
    try:
        kp = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseFormatError("keypoints are not numeric", file=file, field=field) from None
    if kp.shape != (17, 3):
        raise PoseFormatError(f"keypoints of shape {kp.shape}; expected (17, 3) COCO-17 [x, y, score]",
                              file=file, field=field)
    return _clean_keypoints(kp, COCO17, file=file, field=field)


def write_humansd_npz(path, frame) -> None:
    """PoseFrame (or Pose / list of Poses) -> HumanSD `.npz`: `arr_0` object array of
    `{"keypoints": (17, 3) float32, "score": mean confidence of present joints, "area": bbox area of present joints}`,
    plus `canvas_width`/`canvas_height` (ignored by HumanSD, used by `read_humansd_npz`). OpenPose-18 poses are
    converted to COCO-17 (the neck is dropped)."""
    frame = _single_frame(frame)
    w, h = _frame_canvas(frame, "frame")
    arr = np.empty(len(frame.people), dtype=object)
    for i, pose in enumerate(frame.people):
        validate_pose(pose, name=f"frame.people[{i}]")
        kp = openpose18_to_coco17(pose).keypoints.copy()
        if (pose.width, pose.height) != (w, h):
            kp[:, 0] *= w / pose.width
            kp[:, 1] *= h / pose.height
        vis = kp[:, 2] > 0
        kp[~vis] = 0.0
        score = float(kp[vis, 2].mean()) if vis.any() else 0.0
        area = float(np.ptp(kp[vis, 0]) * np.ptp(kp[vis, 1])) if vis.any() else 0.0
        arr[i] = {"keypoints": kp.astype(np.float32), "score": score, "area": area}
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, arr_0=arr, canvas_width=np.array(w), canvas_height=np.array(h))


# ----------------------------------------------------------------------------------------------------------------
# Dispatch


def load_pose_file(path, *, width: int | None = None, height: int | None = None, image_name: str | None = None,
                   normalized: bool | None = None) -> list:
    """Read any supported pose file -> list[PoseFrame].

    - `.json`: a list -> ComfyUI POSE_KEYPOINT; an object with "people" -> OpenPose JSON (one frame).
    - `.txt`: GFLA/PIDM pose file (canvas `width` x `height`, default 176x256).
    - `.npz`: HumanSD MMPose results (canvas from the file or `width`/`height`).
    - `.csv`: PATN annotation file; `image_name` selects the row (frame `width` x `height`, default 176x256)."""
    path = str(path)
    if not os.path.exists(path):
        raise PoseFormatError("pose file not found", file=path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        obj = _parse_json(_read_text(path), path)
        if isinstance(obj, list):
            return from_pose_keypoint(obj, normalized, source=path)
        if isinstance(obj, dict):
            has_canvas = "canvas_width" in obj or width is not None
            return [_frame_from_dict(obj, file=path, field="root", width=width, height=height,
                                     normalized=normalized if has_canvas else False, require_canvas=False)]
        raise PoseFormatError(f"JSON root is a {type(obj).__name__}; expected a POSE_KEYPOINT list or an OpenPose "
                              f"object with 'people'", file=path)
    if ext == ".txt":
        pose = read_gfla_pose(path, height or PATN_HEIGHT, width or PATN_WIDTH)
        return [PoseFrame([pose], pose.width, pose.height)]
    if ext == ".npz":
        return [read_humansd_npz(path, width, height)]
    if ext == ".csv":
        if image_name is None:
            raise PoseFormatError("a PATN annotation csv holds many images; pass image_name= to pick one",
                                  file=path, field="image_name")
        poses = read_patn_annotations(path, height or PATN_HEIGHT, width or PATN_WIDTH)
        if image_name not in poses:
            some = ", ".join(list(poses)[:3])
            raise PoseFormatError(f"image {image_name!r} is not annotated (e.g. {some})", file=path, field="name")
        pose = poses[image_name]
        return [PoseFrame([pose], pose.width, pose.height)]
    raise PoseFormatError(f"unsupported pose file extension {ext!r}; accepted: .json (POSE_KEYPOINT / OpenPose), "
                          f".txt (GFLA/PIDM), .npz (HumanSD), .csv (PATN annotations, with image_name)", file=path)
