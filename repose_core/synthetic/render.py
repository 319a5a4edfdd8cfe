"""Draw an Identity in a Pose: textured body parts composited back to front, anti-aliased by supersampling.

The image is a function of (identity, 2-D pose) only, so any OpenPose-18 pose can be rendered. What a 2-D pose does
not say is read off it:
- scale (px per body unit) = |neck - mid-hip| / identity torso length;
- facing: the person's left shoulder is on the image right in a front view, on the left in a back view;
- yaw: |cos yaw| = projected shoulder width / the identity's shoulder width;
- near side: the side whose ear alone is visible (else the side the nose points to).
Depth order: in a front view the arms are in front of the torso, in a back view behind it; with a strong yaw the
far arm/leg goes behind everything of the near side. Each part carries its own texture frame (u along the bone,
v across it, in body units), so garments move and deform with the limbs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import EmptyPoseError, InputError
from ..pose import Pose
from ..pose.validate import validate_pose
from .identity import Identity, Texture
from .pose_prior import J
from .textures import eval_texture, render_background

PART_NAMES = (
    "hair_back", "torso", "pelvis", "skirt", "neck", "head", "hair",
    "right_upper_arm", "right_lower_arm", "right_hand", "left_upper_arm", "left_lower_arm", "left_hand",
    "right_upper_leg", "right_lower_leg", "right_foot", "left_upper_leg", "left_lower_leg", "left_foot",
)
PART_INDEX = {n: i for i, n in enumerate(PART_NAMES)}
_FAR_YAW_COS = 0.87      # |yaw| > ~30 deg: the far arm/leg is hidden behind the body
MIN_SIZE = (16, 11)      # smallest H x W the renderer accepts


@dataclass
class BodyFrame:
    """What the renderer reads off a 2-D pose (see module docstring). Vectors are unit (x, y) in image pixels."""

    scale: float          # px per body unit
    up: np.ndarray        # mid-hip -> neck
    lateral: np.ndarray   # up rotated by +90 deg: the person's left in a front view
    front: bool           # face towards the camera
    cos_yaw: float
    near: str | None      # "right" | "left" | None (frontal)
    forward_x: float      # lateral component of the person's forward direction (feet, face shift)
    head_center: np.ndarray


def _present(kp: np.ndarray, name: str) -> bool:
    return bool(kp[J[name], 2] > 0)


def read_body_frame(identity: Identity, kp: np.ndarray) -> BodyFrame:
    """Infer scale, orientation, facing, yaw and near side from (18, 3) keypoints (see module docstring)."""
    if not _present(kp, "neck") or not (_present(kp, "right_hip") or _present(kp, "left_hip")):
        raise EmptyPoseError("the synthetic renderer needs the neck and at least one hip keypoint to place the torso; "
                             "this pose has " + ", ".join(n for n in ("neck", "right_hip", "left_hip")
                                                          if not _present(kp, n)) + " missing")
    hips = [kp[J[n], :2] for n in ("right_hip", "left_hip") if _present(kp, n)]
    mid_hip = np.mean(hips, axis=0)
    axis = kp[J["neck"], :2] - mid_hip
    torso_px = float(np.linalg.norm(axis))
    if torso_px < 1e-3:
        raise InputError("the neck and the mid-hip keypoints coincide; the renderer cannot tell the body's size")
    up = axis / torso_px
    lateral = np.array([-up[1], up[0]])
    scale = torso_px / identity.body.torso
    if _present(kp, "right_shoulder") and _present(kp, "left_shoulder"):
        sx = float(np.dot(kp[J["left_shoulder"], :2] - kp[J["right_shoulder"], :2], lateral))
        full = 2 * identity.body.shoulder_half * scale
    elif _present(kp, "right_hip") and _present(kp, "left_hip"):
        sx = float(np.dot(kp[J["left_hip"], :2] - kp[J["right_hip"], :2], lateral))
        full = 2 * identity.body.hip_half * scale
    else:
        sx, full = 1.0, 1.0
    cos_yaw = min(1.0, abs(sx) / full)
    front = sx > 0 or (cos_yaw < 0.2 and _present(kp, "nose"))
    right_ear, left_ear = _present(kp, "right_ear"), _present(kp, "left_ear")
    near = None
    if right_ear != left_ear:
        near = "right" if right_ear else "left"
    elif cos_yaw < 0.9 and _present(kp, "nose"):
        # turning towards image-right shows the right side in a front view (and the nose then points right)
        near = "right" if np.dot(kp[J["nose"], :2] - kp[J["neck"], :2], lateral) > 0 else "left"
    sin_yaw = math.sqrt(max(0.0, 1.0 - cos_yaw * cos_yaw))
    forward_x = 0.0 if near is None else (sin_yaw if near == "right" else -sin_yaw)
    b = identity.body
    head_center = kp[J["neck"], :2] + up * (b.neck + b.head) * scale
    return BodyFrame(scale, up, lateral, front, cos_yaw, near, forward_x, head_center)


# ----------------------------------------------------------------------------------------------------------------
# Supersampled canvas with three primitives (tapered capsule, quad, ellipse)


class _Canvas:
    """RGB + part-label buffers at S x the output resolution; geometry is given in output pixels."""

    def __init__(self, identity: Identity, H: int, W: int, S: int):
        self.H, self.W, self.S = H, W, S
        self.ys = ((np.arange(H * S) + 0.5) / S - 0.5).astype(np.float32)   # output-pixel coordinate of each row
        self.xs = ((np.arange(W * S) + 0.5) / S - 0.5).astype(np.float32)
        self.rgb = render_background(identity.background, H, W, self.ys, self.xs)
        self.label = np.full((H * S, W * S), -1, np.int16)

    def _window(self, lo, hi):
        """Supersampled index ranges covering the output-pixel box [lo, hi], or None if off-canvas."""
        S = self.S
        x0 = max(0, int(math.floor((lo[0] + 0.5) * S - 0.5)))
        y0 = max(0, int(math.floor((lo[1] + 0.5) * S - 0.5)))
        x1 = min(self.W * S, int(math.ceil((hi[0] + 0.5) * S + 0.5)))
        y1 = min(self.H * S, int(math.ceil((hi[1] + 0.5) * S + 0.5)))
        if x0 >= x1 or y0 >= y1:
            return None
        return y0, y1, x0, x1

    def _paint(self, win, mask, colour, label):
        y0, y1, x0, x1 = win
        if mask.any():
            self.rgb[y0:y1, x0:x1][mask] = colour
            self.label[y0:y1, x0:x1][mask] = label

    def capsule(self, p0, p1, r0, r1, colour_fn, label):
        """Tapered capsule from p0 (radius r0) to p1 (r1). colour_fn(t, perp, rn) gets, per covered pixel, the
        position along the bone t (0 at p0, 1 at p1), the signed distance across it (px) and distance / radius."""
        p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
        r = max(r0, r1)
        win = self._window(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
        if win is None:
            return
        y0, y1, x0, x1 = win
        X = self.xs[None, x0:x1] - p0[0]      # (1, w)
        Y = self.ys[y0:y1, None] - p0[1]      # (h, 1)
        d = p1 - p0
        L2 = float(d @ d)
        if L2 < 1e-8:   # bone pointing at the camera: a disc
            t = np.zeros_like(X + Y)
            perp = X + 0 * Y
        else:
            t = (X * d[0] + Y * d[1]) / L2                     # (h, w)
            perp = (Y * d[0] - X * d[1]) / math.sqrt(L2)
        tc = np.clip(t, 0.0, 1.0)
        dist = np.hypot(X - tc * d[0], Y - tc * d[1])
        rad = r0 + (r1 - r0) * tc
        mask = dist <= rad
        if mask.any():
            self._paint(win, mask, colour_fn(t[mask], perp[mask], dist[mask] / rad[mask]), label)

    def quad(self, A, B, C, D, colour_fn, label, inside=None):
        """Quad A (top-left) B (top-right) C (bottom-right) D (bottom-left), in parameters (s, t) in [0, 1]^2 with
        s from A->B and t from A->D (approximate inverse of the bilinear map, two refinements).
        inside(s, t) optionally narrows the shape; colour_fn(s, t) gives colours of covered pixels."""
        A, B, C, D = (np.asarray(p, np.float32) for p in (A, B, C, D))
        pts = np.stack([A, B, C, D])
        win = self._window(pts.min(axis=0), pts.max(axis=0))
        if win is None:
            return
        y0, y1, x0, x1 = win
        X = self.xs[None, x0:x1]
        Y = self.ys[y0:y1, None]
        top, bottom = 0.5 * (A + B), 0.5 * (D + C)
        ax = bottom - top
        t = ((X - top[0]) * ax[0] + (Y - top[1]) * ax[1]) / max(float(ax @ ax), 1e-8)
        for _ in range(2):
            lx, ly = A[0] + (D[0] - A[0]) * t, A[1] + (D[1] - A[1]) * t       # left edge at t
            rx, ry = B[0] + (C[0] - B[0]) * t, B[1] + (C[1] - B[1]) * t       # right edge at t
            ex, ey = rx - lx, ry - ly
            s = ((X - lx) * ex + (Y - ly) * ey) / np.maximum(ex * ex + ey * ey, 1e-8)
            tx, ty = A[0] + (B[0] - A[0]) * s, A[1] + (B[1] - A[1]) * s       # top edge at s
            bx, by = D[0] + (C[0] - D[0]) * s, D[1] + (C[1] - D[1]) * s       # bottom edge at s
            vx, vy = bx - tx, by - ty
            t = ((X - tx) * vx + (Y - ty) * vy) / np.maximum(vx * vx + vy * vy, 1e-8)
        mask = (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
        if inside is not None:
            mask &= inside(s, t)
        if mask.any():
            self._paint(win, mask, colour_fn(s[mask], t[mask]), label)

    def ellipse(self, c, ax_a, ax_b, colour_fn, label, inside=None):
        """Ellipse centred at c with semi-axis vectors ax_a, ax_b; colour_fn(a, b) gets the normalised
        coordinates (a^2 + b^2 <= 1) of covered pixels; inside(a, b) optionally narrows the shape."""
        c = np.asarray(c, np.float32)
        ext = np.abs(np.asarray(ax_a)) + np.abs(np.asarray(ax_b))
        win = self._window(c - ext, c + ext)
        if win is None:
            return
        y0, y1, x0, x1 = win
        X = self.xs[None, x0:x1] - c[0]
        Y = self.ys[y0:y1, None] - c[1]
        na, nb = float(np.dot(ax_a, ax_a)), float(np.dot(ax_b, ax_b))
        a = (X * ax_a[0] + Y * ax_a[1]) / na
        b = (X * ax_b[0] + Y * ax_b[1]) / nb
        mask = a * a + b * b <= 1.0
        if inside is not None:
            mask &= inside(a, b)
        if mask.any():
            self._paint(win, mask, colour_fn(a[mask], b[mask]), label)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Box-filtered RGB (H, W, 3) float32 and the label at each output pixel's centre sample (H, W)."""
        H, W, S = self.H, self.W, self.S
        rgb = self.rgb.reshape(H, S, W, S, 3).mean(axis=(1, 3))
        return rgb, self.label[S // 2::S, S // 2::S]


# ----------------------------------------------------------------------------------------------------------------
# Colouring


def _shade(rn: np.ndarray) -> np.ndarray:
    """Cylinder-like shading from the part's axis (rn = 0) to its silhouette (rn = 1): reads as 3-D, separates parts."""
    return (1.0 - 0.3 * np.clip(rn, 0.0, 1.0) ** 2)[:, None]


def _solid(colour, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (n, 3))


def _covered(t, along_bu, across_bu, cover: float, garment: Texture | None, bare) -> np.ndarray:
    """Garment texture where t < cover (a sleeve / trouser leg from the joint at t = 0), bare colour elsewhere."""
    out = np.array(_solid(bare, t.shape[0]))
    if garment is not None and cover > 0:
        m = t < cover
        if m.any():
            out[m] = eval_texture(garment, along_bu[m], across_bu[m])
    return out


def _limb_colour(scale, length_bu, cover, garment, bare):
    def fn(t, perp, rn):
        return _covered(t, t * length_bu, perp / scale, cover, garment, bare) * _shade(rn)
    return fn


def _flat_colour(colour):
    def fn(t, perp, rn):
        return _solid(colour, t.shape[0]) * _shade(rn)
    return fn


_SLEEVE_COVER = {"none": (0.0, 0.0), "short": (0.55, 0.0), "long": (1.2, 0.93)}   # (upper arm, forearm)


def _leg_cover(identity: Identity) -> tuple[float, float, Texture | None]:
    if identity.bottom_kind == "pants":
        return 1.2, 1.2, identity.bottom
    if identity.bottom_kind == "shorts":
        return 0.5, 0.0, identity.bottom
    return 0.0, 0.0, None


# ----------------------------------------------------------------------------------------------------------------
# The figure


def _scaled_keypoints(pose: Pose, H: int, W: int) -> np.ndarray:
    kp = pose.keypoints.astype(np.float64).copy()
    if (pose.width, pose.height) != (W, H):
        if abs(pose.width / pose.height - W / H) > 0.01 * (W / H):
            raise InputError(f"pose canvas {pose.width}x{pose.height} (WxH) has another aspect ratio than the "
                             f"requested image {W}x{H}; give a pose drawn on a {W}x{H} canvas (or the same aspect)")
        kp[:, 0] *= W / pose.width
        kp[:, 1] *= H / pose.height
    return kp


def _plan(identity: Identity, kp: np.ndarray, f: BodyFrame, canvas: _Canvas) -> list:
    """List of (depth, order, draw) for every part; drawn in ascending depth (back to front)."""
    b, s = identity.body, f.scale
    P = {name: kp[J[name], :2] for name in J}
    ok = {name: kp[J[name], 2] > 0 for name in J}
    up, lat = f.up, f.lateral
    far = None
    if f.near is not None and f.cos_yaw < _FAR_YAW_COS:
        far = "left" if f.near == "right" else "right"
    plan: list[tuple[float, int, Callable[[], object]]] = []

    def add(depth, draw):
        plan.append((depth, len(plan), draw))

    # Arms ------------------------------------------------------------------------------------------------------
    up_cover, low_cover = _SLEEVE_COVER[identity.sleeves]
    for side in ("right", "left"):
        if far == side:
            depth = -2.0
        elif f.front or f.near == side:
            depth = 1.0 + (0.1 if f.near == side else 0.0)
        else:
            depth = -0.5      # back view: arms behind the torso
        sho, elb, wri = P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_wrist"]
        if ok[f"{side}_shoulder"] and ok[f"{side}_elbow"]:
            add(depth, lambda sho=sho, elb=elb, side=side: canvas.capsule(
                sho, elb, b.arm_r * s, b.arm_r * 0.8 * s,
                _limb_colour(s, b.upper_arm, up_cover, identity.top, identity.skin), PART_INDEX[f"{side}_upper_arm"]))
        if ok[f"{side}_elbow"] and ok[f"{side}_wrist"]:
            add(depth + 0.01, lambda elb=elb, wri=wri, side=side: canvas.capsule(
                elb, wri, b.arm_r * 0.8 * s, b.forearm_r * s,
                _limb_colour(s, b.lower_arm, low_cover, identity.top, identity.skin), PART_INDEX[f"{side}_lower_arm"]))
            d = (wri - elb) / max(np.linalg.norm(wri - elb), 1e-6)
            add(depth + 0.02, lambda c=wri + d * b.hand_r * 0.9 * s, side=side: canvas.ellipse(
                c, lat * b.hand_r * s, up * b.hand_r * 1.1 * s,
                lambda a, bb: _solid(identity.skin, a.shape[0]) * _shade(np.hypot(a, bb)), PART_INDEX[f"{side}_hand"]))

    # Legs ------------------------------------------------------------------------------------------------------
    thigh_cover, shin_cover, leg_tex = _leg_cover(identity)
    for side in ("right", "left"):
        depth = -1.6 if far == side else -1.5
        hip, knee, ank = P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_ankle"]
        if ok[f"{side}_hip"] and ok[f"{side}_knee"]:
            add(depth, lambda hip=hip, knee=knee, side=side: canvas.capsule(
                hip, knee, b.thigh_r * s, b.thigh_r * 0.72 * s,
                _limb_colour(s, b.upper_leg, thigh_cover, leg_tex, identity.legwear), PART_INDEX[f"{side}_upper_leg"]))
        if ok[f"{side}_knee"] and ok[f"{side}_ankle"]:
            add(depth + 0.01, lambda knee=knee, ank=ank, side=side: canvas.capsule(
                knee, ank, b.thigh_r * 0.72 * s, b.calf_r * 0.8 * s,
                _limb_colour(s, b.lower_leg, shin_cover, leg_tex, identity.legwear), PART_INDEX[f"{side}_lower_leg"]))
        if ok[f"{side}_ankle"]:
            toe = ank + (lat * f.forward_x * b.foot - up * 0.025) * s
            add(depth + 0.02, lambda ank=ank, toe=toe, side=side: canvas.capsule(
                ank - up * 0.01 * s, toe, b.calf_r * 0.9 * s, b.calf_r * 0.75 * s,
                _flat_colour(identity.shoes), PART_INDEX[f"{side}_foot"]))

    # Torso (top garment above top_length, bottom garment below) and pelvis --------------------------------------
    R_sho, L_sho, R_hip, L_hip = P["right_shoulder"], P["left_shoulder"], P["right_hip"], P["left_hip"]
    if not ok["right_shoulder"] or not ok["left_shoulder"]:       # rebuild the missing shoulder from the width
        half = lat * b.shoulder_half * s * f.cos_yaw * (1 if f.front else -1)
        R_sho = R_sho if ok["right_shoulder"] else P["neck"] - half
        L_sho = L_sho if ok["left_shoulder"] else P["neck"] + half
    mid_hip_ok = [n for n in ("right_hip", "left_hip") if ok[n]]
    mid_hip = np.mean([P[n] for n in mid_hip_ok], axis=0)
    if len(mid_hip_ok) < 2:
        half = lat * b.hip_half * s * f.cos_yaw * (1 if f.front else -1)
        R_hip, L_hip = mid_hip - half, mid_hip + half
    width_dir = (L_sho - R_sho) / max(np.linalg.norm(L_sho - R_sho), 1e-6)
    hip_dir = (L_hip - R_hip) / max(np.linalg.norm(L_hip - R_hip), 1e-6)
    sho_out = b.arm_r * 0.6 * s * max(f.cos_yaw, 0.35)       # outline beyond the shoulder joint
    hip_out = b.thigh_r * 0.95 * s * max(f.cos_yaw, 0.35)    # outline beyond the hip joint
    down = -up * b.torso * 0.06 * s                          # the torso ends a little below the hip joints
    A, B = R_sho - width_dir * sho_out, L_sho + width_dir * sho_out
    D, C = R_hip - hip_dir * hip_out + down, L_hip + hip_dir * hip_out + down
    width_bu = 2 * b.shoulder_half
    torso_bu = b.torso * 1.06
    top_t = identity.top_length / 1.06

    def torso_colour(ss, tt):
        out = np.empty((ss.shape[0], 3), np.float32)
        m = tt < top_t
        out[m] = eval_texture(identity.top, tt[m] * torso_bu, ss[m] * width_bu)
        out[~m] = eval_texture(identity.bottom, (tt[~m] - top_t) * torso_bu, ss[~m] * width_bu)
        return out * _shade(np.abs(2 * ss - 1))

    def torso_inside(ss, tt):
        pinch = b.waist * np.sin(np.pi * np.clip(tt, 0, 1)) ** 2     # narrower at the waist
        return (ss >= pinch) & (ss <= 1 - pinch)

    add(0.0, lambda: canvas.quad(A, B, C, D, torso_colour, PART_INDEX["torso"], torso_inside))

    if identity.bottom_kind in ("pants", "shorts") and ok["right_knee"] and ok["left_knee"]:
        crotch_r = R_hip + (P["right_knee"] - R_hip) * 0.3
        crotch_l = L_hip + (P["left_knee"] - L_hip) * 0.3
        add(-1.0, lambda: canvas.quad(
            R_hip - hip_dir * hip_out * 0.8, L_hip + hip_dir * hip_out * 0.8, crotch_l, crotch_r,
            lambda ss, tt: eval_texture(identity.bottom, (tt + 1.0) * 0.06, ss * width_bu) * _shade(np.abs(2 * ss - 1)),
            PART_INDEX["pelvis"]))

    # Skirt / dress: a trapezoid from the hips to the hem, hem corners follow the legs -----------------------------
    if identity.bottom_kind in ("skirt", "dress"):
        def hem(side):
            hip, knee, ank = P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_ankle"]
            k = identity.skirt_length
            if not ok[f"{side}_knee"]:
                knee = hip - up * b.upper_leg * s
            if k <= 1.0 or not ok[f"{side}_ankle"]:
                return hip + (knee - hip) * min(k, 1.0)
            return knee + (ank - knee) * (k - 1.0)
        flare = identity.skirt_flare * s
        top_l, top_r = R_hip - hip_dir * hip_out * 1.05 + up * 0.03 * b.torso * s, \
            L_hip + hip_dir * hip_out * 1.05 + up * 0.03 * b.torso * s
        hem_r, hem_l = hem("right"), hem("left")
        spread = (hem_l - hem_r) / max(np.linalg.norm(hem_l - hem_r), 1e-6)
        if np.dot(spread, hip_dir) < 0:      # legs crossed in the image: keep the hem un-twisted
            hem_r, hem_l = hem_l, hem_r
            spread = -spread
        hem_r = hem_r - spread * (hip_out + flare)
        hem_l = hem_l + spread * (hip_out + flare)
        skirt_bu = identity.skirt_length * b.upper_leg
        add(0.2, lambda: canvas.quad(
            top_l, top_r, hem_l, hem_r,
            lambda ss, tt: eval_texture(identity.bottom, tt * skirt_bu + 0.3, ss * width_bu)
            * _shade(np.abs(2 * ss - 1) * 0.8),
            PART_INDEX["skirt"]))

    # Neck, head, hair, face -------------------------------------------------------------------------------------
    hc = f.head_center
    face_visible = f.front and ok["nose"]
    rx, ry = b.head * 0.84 * s, b.head * s
    fx = f.forward_x
    add(0.3, lambda: canvas.capsule(P["neck"] - up * 0.01 * s, hc, b.head * 0.42 * s, b.head * 0.4 * s,
                                    _flat_colour(identity.skin), PART_INDEX["neck"]))
    style = identity.hair_style
    if style == "long":
        hair_depth = -3.0 if face_visible else 0.45
        add(hair_depth, lambda: canvas.quad(
            hc - lat * rx * 1.12 + up * ry * 0.2, hc + lat * rx * 1.12 + up * ry * 0.2,
            hc + lat * rx * 1.0 - up * ry * 2.3, hc - lat * rx * 1.0 - up * ry * 2.3,
            lambda ss, tt: _solid(identity.hair, ss.shape[0]) * _shade(np.abs(2 * ss - 1)),
            PART_INDEX["hair_back"],
            inside=lambda ss, tt: (tt < 0.75) | ((2 * ss - 1) ** 2 + ((tt - 0.75) / 0.25) ** 2 <= 1)))
    if style == "bun":
        add(0.39 if face_visible else 0.46, lambda: canvas.ellipse(
            hc + up * ry * 0.95 - lat * fx * rx * 0.6, lat * rx * 0.45, up * ry * 0.4,
            lambda a, bb: _solid(identity.hair, a.shape[0]) * _shade(np.hypot(a, bb)), PART_INDEX["hair"]))

    def head_colour(a, bb):
        out = np.array(_solid(identity.skin, a.shape[0]))
        if style != "bald":
            if face_visible:
                ac = a - fx * 0.55          # the face turns with the yaw; hair covers the back of the head
                hair = (bb > 0.42 - 0.5 * ac * ac) | (a * np.sign(fx) < -(1.05 - 0.8 * abs(fx)))
                if style == "long":
                    hair |= (np.abs(ac) > 0.78) & (bb > -0.45)
            else:
                hair = bb > -0.72           # back of the head: all hair down to the nape
            out[hair] = identity.hair
        return out * _shade(np.hypot(a, bb) * 0.8)

    add(0.4, lambda: canvas.ellipse(hc, lat * rx, up * ry, head_colour, PART_INDEX["head"]))
    if face_visible:
        eye_r = max(b.head * 0.1 * s, 0.3)
        for eye in ("right_eye", "left_eye"):
            if ok[eye]:
                add(0.41, lambda c=P[eye]: canvas.ellipse(
                    c, lat * eye_r, up * eye_r, lambda a, bb: _solid((0.12, 0.08, 0.07), a.shape[0]),
                    PART_INDEX["head"]))
        mouth = P["nose"] - up * b.head * 0.38 * s
        add(0.41, lambda: canvas.ellipse(
            mouth, lat * max(b.head * 0.22 * s * f.cos_yaw, 0.25), up * max(b.head * 0.06 * s, 0.25),
            lambda a, bb: _solid((0.55, 0.2, 0.2), a.shape[0]), PART_INDEX["head"]))
    return plan


def render_figure_with_labels(identity: Identity, pose: Pose, H: int, W: int, rng: np.random.Generator | None = None,
                              supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Render and also return the part label of each pixel: (H, W) int16, -1 = background, else PART_NAMES index.

    rng (optional) adds a small per-image brightness change and sensor noise; None renders noiselessly."""
    validate_pose(pose, name="pose")
    if pose.layout != "openpose18":
        raise InputError(f"the synthetic renderer draws OpenPose-18 poses, got layout {pose.layout!r}; convert it "
                         f"with repose_core.pose.coco17_to_openpose18")
    for name, v, lo in (("H", H, MIN_SIZE[0]), ("W", W, MIN_SIZE[1]), ("supersample", supersample, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    H, W, supersample = int(H), int(W), int(supersample)
    kp = _scaled_keypoints(pose, H, W)
    frame = read_body_frame(identity, kp)
    canvas = _Canvas(identity, H, W, supersample)
    for _, _, draw in sorted(_plan(identity, kp, frame, canvas), key=lambda p: (p[0], p[1])):
        draw()
    rgb, labels = canvas.result()
    if rng is not None:
        rgb = rgb * rng.uniform(0.97, 1.03) + rng.normal(0.0, 1.2 / 255, size=rgb.shape)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), labels


def render_figure(identity: Identity, pose: Pose, H: int, W: int, rng: np.random.Generator | None = None,
                  supersample: int = 2) -> np.ndarray:
    """Draw `identity` in `pose` as an (H, W, 3) uint8 RGB image.

    The pose may be on another canvas of the same aspect ratio (it is rescaled to H x W). It needs the neck and a
    hip; missing limbs are not drawn. supersample: anti-aliasing factor (the figure is drawn at supersample x the
    size and box-filtered down)."""
    return render_figure_with_labels(identity, pose, H, W, rng, supersample)[0]
