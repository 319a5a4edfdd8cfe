"""A pose prior for synthetic people: joint angles -> a 3-D stick figure -> an OpenPose-18 Pose.

The skeleton is built in a body frame (x = the person's left, y = down, z = towards the camera when the person
faces it; origin at the mid-hip) from anatomically bounded joint angles, rotated by a body yaw (front, three-quarter,
side-ish and back views), projected orthographically (yaw foreshortens shoulder/hip widths and limbs) and framed in
the image. Eyes, nose and ears are points on the head; each is kept only if its surface normal faces the camera
(so a back view has no face and a turned head loses its far ear), with confidence 0 otherwise.

Everything is drawn in units of the figure height and scaled by the image height at the end, so the same random
draws give the same pose at 64x44, 128x88 and 256x176.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..pose import OPENPOSE18, Pose
from .identity import Identity

J = {name: i for i, name in enumerate(OPENPOSE18)}

POSE_KINDS = ("standing", "walking", "arms_raised", "one_arm_raised", "hands_on_hips", "arms_out",
              "contrapposto", "arms_front")
_KIND_WEIGHTS = (0.22, 0.2, 0.08, 0.1, 0.1, 0.08, 0.12, 0.1)
VIEWS = ("front", "three_quarter", "side", "back")
_VIEW_WEIGHTS = (0.45, 0.28, 0.1, 0.17)

# Visibility thresholds on the camera-facing component of a face point's normal.
_NOSE_MIN_NZ, _EYE_MIN_NZ, _EAR_MIN_NZ = 0.0, 0.15, -0.25


@dataclass
class LimbAngles:
    """Spherical direction of the proximal bone around "straight down", plus the distal joint bend (degrees).

    elevation: 0 = hanging down, 90 = horizontal, 180 = straight up; azimuth: 0 = sideways (outwards), 90 = forwards,
    negative = backwards; bend: elbow/knee flexion; bend_to: direction (forward, inward, up) the distal bone bends to
    (arms bend forwards/inwards/up, knees bend backwards)."""

    elevation: float
    azimuth: float
    bend: float
    bend_to: tuple = (1.0, 0.0, 0.0)


@dataclass
class PoseParams:
    """Everything that defines one pose of an identity (angles in degrees, framing in [0, 1])."""

    kind: str
    view: str
    yaw: float                     # body yaw; 0 = facing the camera, 180 = back view
    head_yaw: float                # relative to the body
    lean: float                    # in-plane rotation of the upper body around the mid-hip
    arms: dict = field(default_factory=dict)   # "right"/"left" -> LimbAngles
    legs: dict = field(default_factory=dict)
    fill: float = 0.88             # figure height / image height
    shift: tuple = (0.5, 0.5)      # where the figure sits in the remaining room (x, y)


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _arm(rng, kind: str) -> LimbAngles:
    """Angles of one arm for a pose kind, within shoulder (elevation 0-175, azimuth -40-100) / elbow (0-150) ranges."""
    if kind == "down":
        return LimbAngles(_u(rng, 4, 20), _u(rng, -20, 40), _u(rng, 0, 25), (1.0, 0.3, 0.0))
    if kind == "swing":
        return LimbAngles(_u(rng, -30, 35), 90.0, _u(rng, 5, 40), (1.0, 0.2, 0.0))
    if kind == "raised":
        return LimbAngles(_u(rng, 125, 175), _u(rng, -10, 45), _u(rng, 0, 45), (0.3, 1.0, 0.5))
    if kind == "on_hip":
        return LimbAngles(_u(rng, 28, 45), _u(rng, -35, -5), _u(rng, 95, 125), (0.0, 1.0, -0.1))
    if kind == "out":
        return LimbAngles(_u(rng, 70, 100), _u(rng, -10, 30), _u(rng, 0, 35), (0.6, 0.0, 1.0))
    if kind == "front":
        return LimbAngles(_u(rng, 20, 50), _u(rng, 55, 95), _u(rng, 70, 125), (0.3, 1.0, 0.4))
    raise AssertionError(kind)


def _leg(rng, kind: str) -> LimbAngles:
    """Angles of one leg: hip elevation (-30-90 in the sagittal plane, 0-25 abduction), knee 0-120 (bends back)."""
    back = (-1.0, 0.0, 0.0)    # the shin folds backwards
    if kind == "stand":
        return LimbAngles(_u(rng, 0, 7), _u(rng, -10, 10), _u(rng, 0, 6), back)
    if kind == "wide":
        return LimbAngles(_u(rng, 6, 18), _u(rng, -10, 15), _u(rng, 0, 10), back)
    if kind == "bent":
        return LimbAngles(_u(rng, 5, 25), _u(rng, 60, 90), _u(rng, 12, 35), back)
    raise AssertionError(kind)


def sample_pose_params(rng: np.random.Generator, kind: str | None = None, view: str | None = None) -> PoseParams:
    """Draw a pose kind, a view and the joint angles. `kind`/`view` force one (see POSE_KINDS, VIEWS)."""
    if kind is not None and kind not in POSE_KINDS:
        raise InputError(f"unknown pose kind {kind!r}; accepted: {', '.join(POSE_KINDS)}")
    if view is not None and view not in VIEWS:
        raise InputError(f"unknown view {view!r}; accepted: {', '.join(VIEWS)}")
    k = str(rng.choice(POSE_KINDS, p=_KIND_WEIGHTS))
    v = str(rng.choice(VIEWS, p=_VIEW_WEIGHTS))
    kind, view = kind or k, view or v
    side = 1.0 if rng.random() < 0.5 else -1.0
    if view == "front":
        yaw = _u(rng, -12, 12)
    elif view == "three_quarter":
        yaw = side * _u(rng, 28, 55)
    elif view == "side":
        yaw = side * _u(rng, 60, 78)
    else:
        yaw = 180.0 + _u(rng, -35, 35)
    first, second = ("right", "left") if rng.random() < 0.5 else ("left", "right")
    arms, legs = {}, {}
    if kind == "standing":
        arms = {first: _arm(rng, "down"), second: _arm(rng, "down")}
        legs = {first: _leg(rng, "stand"), second: _leg(rng, "stand")}
    elif kind == "walking":
        stride = _u(rng, 12, 30) * side
        arms = {"right": _arm(rng, "swing"), "left": _arm(rng, "swing")}
        arms["right"].elevation, arms["left"].elevation = -0.8 * stride, 0.8 * stride   # counter-swing
        legs = {"right": LimbAngles(stride, 90.0, _u(rng, 3, 15), (-1.0, 0.0, 0.0)),
                "left": LimbAngles(-stride, 90.0, _u(rng, 15, 40), (-1.0, 0.0, 0.0))}
        if stride < 0:  # the rear leg is the bent one
            legs["right"].bend, legs["left"].bend = legs["left"].bend, legs["right"].bend
    elif kind == "arms_raised":
        arms = {first: _arm(rng, "raised"), second: _arm(rng, "raised")}
        legs = {first: _leg(rng, "wide"), second: _leg(rng, "stand")}
    elif kind == "one_arm_raised":
        arms = {first: _arm(rng, "raised"), second: _arm(rng, "down")}
        legs = {first: _leg(rng, "stand"), second: _leg(rng, "stand")}
    elif kind == "hands_on_hips":
        both = rng.random() < 0.6
        arms = {first: _arm(rng, "on_hip"), second: _arm(rng, "on_hip" if both else "down")}
        legs = {first: _leg(rng, "wide"), second: _leg(rng, "stand")}
    elif kind == "arms_out":
        arms = {first: _arm(rng, "out"), second: _arm(rng, "out")}
        legs = {first: _leg(rng, "wide"), second: _leg(rng, "wide")}
    elif kind == "contrapposto":
        arms = {first: _arm(rng, "down" if rng.random() < 0.6 else "on_hip"), second: _arm(rng, "down")}
        legs = {first: _leg(rng, "bent"), second: _leg(rng, "wide")}
    elif kind == "arms_front":
        arms = {first: _arm(rng, "front"), second: _arm(rng, "front" if rng.random() < 0.7 else "down")}
        legs = {first: _leg(rng, "stand"), second: _leg(rng, "stand")}
    return PoseParams(kind=kind, view=view, yaw=yaw, head_yaw=_u(rng, -15, 15), lean=_u(rng, -6, 6),
                      arms=arms, legs=legs, fill=_u(rng, 0.78, 0.92), shift=(_u(rng, 0.2, 0.8), _u(rng, 0.3, 0.7)))


# ----------------------------------------------------------------------------------------------------------------
# 3-D skeleton


def _direction(a: LimbAngles, side: float) -> np.ndarray:
    """Unit vector of the proximal bone in the body frame; side = +1 for the left limb (+x), -1 for the right."""
    e, phi = np.radians(a.elevation), np.radians(a.azimuth)
    return np.array([side * np.sin(e) * np.cos(phi), np.cos(e), np.sin(e) * np.sin(phi)])


def _bend(d1: np.ndarray, a: LimbAngles, side: float) -> np.ndarray:
    """Distal bone direction: d1 rotated by `bend` degrees towards the preferred direction (forward, inward, up)."""
    fwd, inward, up = a.bend_to
    w = np.array([-side * inward, -up, fwd], dtype=np.float64)
    w_perp = w - np.dot(w, d1) * d1
    n = np.linalg.norm(w_perp)
    if n < 1e-6:   # preferred direction parallel to the bone: bend forwards instead
        w_perp = np.array([0.0, 0.0, 1.0]) - d1[2] * d1
        n = np.linalg.norm(w_perp)
    w_perp /= n
    b = np.radians(a.bend)
    return np.cos(b) * d1 + np.sin(b) * w_perp


def _yaw(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (N, 3) points about the vertical axis; positive yaw turns the person's left side away."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([x * c + z * s, y, -x * s + z * c], axis=1)


def skeleton_3d(params: PoseParams, identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """(18, 3) joint positions in bu (camera frame after yaw) and (18,) visibility of each joint."""
    b = identity.body
    P = np.zeros((18, 3))
    normals = {}
    P[J["neck"]] = (0.0, -b.torso, 0.0)
    for name, side in (("right", -1.0), ("left", 1.0)):
        sho = P[J["neck"]] + (side * b.shoulder_half, 0.0, 0.0)
        hip = np.array([side * b.hip_half, 0.0, 0.0])
        arm, leg = params.arms[name], params.legs[name]
        d1 = _direction(arm, side)
        d2 = _bend(d1, arm, side)
        P[J[f"{name}_shoulder"]] = sho
        P[J[f"{name}_elbow"]] = sho + b.upper_arm * d1
        P[J[f"{name}_wrist"]] = P[J[f"{name}_elbow"]] + b.lower_arm * d2
        d1 = _direction(leg, side)
        d2 = _bend(d1, leg, side)
        P[J[f"{name}_hip"]] = hip
        P[J[f"{name}_knee"]] = hip + b.upper_leg * d1
        P[J[f"{name}_ankle"]] = P[J[f"{name}_knee"]] + b.lower_leg * d2
    # Face points on the head sphere (radius = head), with their outward normals; the head may turn a little.
    hc = P[J["neck"]] + (0.0, -(b.neck + b.head), 0.0)
    # The drawn head is an ellipse 0.84 head wide, so the points sit inside that width at any yaw.
    face = {"nose": ((0.0, 0.15, 0.78), (0.0, 0.0, 1.0)),
            "right_eye": ((-0.28, -0.12, 0.7), (-0.35, 0.0, 0.94)),
            "left_eye": ((0.28, -0.12, 0.7), (0.35, 0.0, 0.94)),
            "right_ear": ((-0.76, 0.0, -0.08), (-1.0, 0.0, 0.0)),
            "left_ear": ((0.76, 0.0, -0.08), (1.0, 0.0, 0.0))}
    for name, (offset, normal) in face.items():
        o = _yaw(np.asarray([offset]) * b.head, params.head_yaw)[0]
        P[J[name]] = hc + o
        normals[name] = _yaw(_yaw(np.asarray([normal]), params.head_yaw), params.yaw)[0]
    P = _yaw(P, params.yaw)
    visible = np.ones(18, bool)
    for name, n in normals.items():
        limit = _NOSE_MIN_NZ if name == "nose" else _EYE_MIN_NZ if name.endswith("eye") else _EAR_MIN_NZ
        visible[J[name]] = n[2] > limit
    return P, visible


def _lean_upper_body(xy: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate everything above the hips (torso, arms, head) in the image plane around the mid-hip (origin)."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    out = xy.copy()
    upper = [J[n] for n in OPENPOSE18 if not n.endswith(("hip", "knee", "ankle"))]
    x, y = xy[upper, 0], xy[upper, 1]
    out[upper, 0] = x * c - y * s
    out[upper, 1] = x * s + y * c
    return out


def _extent(xy: np.ndarray, identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (bu) of the drawn figure: joints padded by part radii, plus the head top and the feet."""
    b = identity.body
    pad = max(b.thigh_r, b.arm_r, b.hand_r * 2)
    neck, mid_hip = xy[J["neck"]], 0.5 * (xy[J["right_hip"]] + xy[J["left_hip"]])
    up = (neck - mid_hip) / max(np.linalg.norm(neck - mid_hip), 1e-9)
    head_top = neck + up * (b.neck + 2.1 * b.head)
    pts = np.concatenate([xy[:14], head_top[None],
                          xy[[J["right_ankle"], J["left_ankle"]]] + (0.0, b.foot * 0.6)])
    return pts.min(axis=0) - pad, pts.max(axis=0) + pad


def pose_from_params(params: PoseParams, identity: Identity, H: int, W: int) -> Pose:
    """Project and frame a PoseParams into an H x W image (keypoints in that frame; hidden face points c = 0)."""
    P, visible = skeleton_3d(params, identity)
    xy = _lean_upper_body(P[:, :2], params.lean)
    lo, hi = _extent(xy, identity)
    size = hi - lo
    scale = min(params.fill * H / size[1], 0.94 * W / size[0])           # px per bu
    room = np.array([W, H]) - size * scale
    origin = room * np.asarray(params.shift) - lo * scale
    kp = np.zeros((18, 3), np.float32)
    kp[:, :2] = xy * scale + origin
    kp[:, 2] = visible
    kp[~visible, :2] = 0.0
    return Pose(kp, width=int(W), height=int(H))


def sample_pose(rng: np.random.Generator, H: int, W: int, identity: Identity, kind: str | None = None,
                view: str | None = None) -> Pose:
    """Draw a pose of `identity` for an H x W image (see sample_pose_params for `kind` and `view`)."""
    return pose_from_params(sample_pose_params(rng, kind=kind, view=view), identity, H, W)
