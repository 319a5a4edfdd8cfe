"""Checks that a Pose is well formed before it reaches numpy-heavy code (renderers, geometry, guidance)."""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import EmptyPoseError, InputError, PoseFormatError
from .keypoints import LAYOUTS, Pose, PoseFrame


def validate_pose(pose, *, name: str = "pose", on_canvas: bool = False, require_person: bool = False) -> Pose:
    """Raise PoseFormatError (naming `name` and the offending field/joint) unless `pose` is a usable Pose.

    Checked: type, layout, keypoint count for the layout, positive integer canvas, finite coordinates and confidences,
    non-negative confidences. With `on_canvas=True`, confident joints must lie inside [0, width] x [0, height]
    (by default points off the canvas are allowed: crops and partial bodies produce them, renderers clip them).
    With `require_person=True`, a pose without any confident joint raises EmptyPoseError.
    Coordinates of missing joints (confidence 0) are not inspected. Returns `pose` unchanged."""
    if not isinstance(pose, Pose):
        raise PoseFormatError(f"{name}: expected a repose Pose, got {type(pose).__name__}", field=name)
    if pose.layout not in LAYOUTS:
        raise PoseFormatError(f"{name}: unknown layout {pose.layout!r}; accepted: {sorted(LAYOUTS)}",
                              field=f"{name}.layout")
    expected = len(LAYOUTS[pose.layout])
    kp = pose.keypoints
    if kp.ndim != 2 or kp.shape != (expected, 3):
        raise PoseFormatError(f"{name}: a {pose.layout} pose needs keypoints of shape ({expected}, 3), "
                              f"got {tuple(kp.shape)}", field=f"{name}.keypoints")
    for attr in ("width", "height"):
        v = getattr(pose, attr)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise PoseFormatError(f"{name}: canvas {attr} must be a positive integer, got {v!r}",
                                  field=f"{name}.{attr}")
    names = LAYOUTS[pose.layout]
    conf = kp[:, 2]
    bad_conf = ~np.isfinite(conf) | (conf < 0)
    if bad_conf.any():
        j = int(np.argmax(bad_conf))
        raise PoseFormatError(f"{name}: confidence of joint {j} ({names[j]}) is {conf[j]}; it must be a finite "
                              f"number >= 0 (0 = missing)", field=f"{name}.keypoints[{j}]")
    present = conf > 0
    bad_xy = present & ~np.isfinite(kp[:, :2]).all(axis=1)
    if bad_xy.any():
        j = int(np.argmax(bad_xy))
        raise PoseFormatError(f"{name}: joint {j} ({names[j]}) has confidence {conf[j]} but coordinates "
                              f"{kp[j, :2].tolist()}; use confidence 0 for a missing joint",
                              field=f"{name}.keypoints[{j}]")
    if on_canvas:
        x, y = kp[:, 0], kp[:, 1]
        off = present & ((x < 0) | (y < 0) | (x > pose.width) | (y > pose.height))
        if off.any():
            j = int(np.argmax(off))
            raise PoseFormatError(f"{name}: joint {j} ({names[j]}) at ({x[j]:.1f}, {y[j]:.1f}) lies outside the "
                                  f"{pose.width}x{pose.height} canvas", field=f"{name}.keypoints[{j}]")
    if require_person and not present.any():
        raise EmptyPoseError(f"{name}: the pose has no confident keypoint (no person); give a pose with at least "
                             f"one joint of confidence > 0")
    return pose


def people_of(obj, *, name: str = "pose") -> list:
    """Normalise a Pose, PoseFrame or list of Poses to a list of validated Poses."""
    if isinstance(obj, Pose):
        people = [obj]
    elif isinstance(obj, PoseFrame):
        people = list(obj.people)
    elif isinstance(obj, (list, tuple)):
        people = list(obj)
    else:
        raise PoseFormatError(f"{name}: expected a Pose, a PoseFrame or a list of Poses, got {type(obj).__name__}",
                              field=name)
    for i, p in enumerate(people):
        validate_pose(p, name=f"{name}[{i}]" if not isinstance(obj, Pose) else name)
    return people


def check_pose_plausible(pose: Pose, *, name: str = "pose") -> Pose:
    """InputError unless a person's confident joints can describe a body on its canvas: at least one lies on the
    canvas, and (with two or more) they span more than max(2 px, 2 % of the canvas's longer side). Both failures
    are unit mix-ups in practice (pixel coordinates read as normalised land far off the canvas; [0, 1] coordinates
    read as pixels collapse into one pixel), and a pose transfer to such a pose would ignore it."""
    kp = pose.keypoints
    present = kp[:, 2] > 0
    if not present.any():
        return pose
    x, y = kp[present, 0], kp[present, 1]
    W, H = pose.width, pose.height
    on = (x >= 0) & (y >= 0) & (x <= W) & (y <= H)
    if not on.any():
        raise InputError(
            f"{name}: all {int(present.sum())} joints lie outside its {W}x{H} canvas (x {x.min():.4g}..{x.max():.4g}, "
            f"y {y.min():.4g}..{y.max():.4g}); the coordinates are in other units than the canvas — if they are "
            f"pixels, set 'coordinates' to pixels (or auto), or give the right canvas_width/canvas_height")
    extent = max(float(x.max() - x.min()), float(y.max() - y.min()))
    if present.sum() >= 2 and extent <= max(2.0, 0.02 * max(W, H)):
        raise InputError(
            f"{name}: the whole skeleton spans {extent:.3g} px of its {W}x{H} canvas; coordinates in [0, 1] were read "
            f"as pixels — set 'coordinates' to normalized (or auto)")
    return pose
