"""Pose renderers: skeleton images, PIDM's 20-channel pose map, Gaussian heatmaps.

All numpy renderers return float32 (H, W, C) in [0, 1]. A pose is first moved from its own canvas to the requested
H x W (stretch), so a 176x256 DeepFashion pose renders correctly at 352x512. Drawing uses Pillow (no OpenCV); shapes
follow the reference implementations (OpenPose/ControlNet, PIDM data/fashion_data.py, HumanSD ldm/data/humansd.py) to
within Pillow-vs-OpenCV rasterisation differences at shape borders.
An empty pose (no confident joint) renders an empty map and logs a warning; functions with `return_empty_flag`
also return whether that happened.
"""
from __future__ import annotations

import colorsys
import logging
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError
from .keypoints import COCO17_LIMBS, OPENPOSE18_LIMBS, Pose, to_layout
from .validate import people_of, validate_pose

log = logging.getLogger("repose")

# OpenPose's 18 colours (RGB as ControlNet/DWPose draw them): joint k and limb k use colour k.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
STICK_WIDTH = 4      # half-width (minor semi-axis) of OpenPose limb ellipses
JOINT_RADIUS = 4
PIDM_CHANNELS = 3 + len(OPENPOSE18_LIMBS)   # 20


# Memory bound of every renderer: a pose image is drawn at most at this many pixels (4096 x 4096); the PIDM map
# needs ~60 bytes per pixel on the way (20 float32 channels plus the distance transform), i.e. ~1 GB at the bound.
MAX_RENDER_PIXELS = 4096 * 4096
# The full 20-channel PIDM map costs ~430 bytes per pixel on the way (17 limb masks and their float64 distance
# transforms): bounded further, 2048 x 2048 (a transfer renders it at the source size, itself bounded by the model).
MAX_PIDM_MAP_PIXELS = 2048 * 2048
# Joints further than this many canvas sizes off the canvas are refused (PIL cannot draw them, and they are never
# a real pose: a unit mix-up or a corrupt file).
FAR_OFF_CANVAS = 64


def _check_size(H, W):
    for name, v in (("H", H), ("W", W)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"render size {name} must be a positive integer, got {v!r}")
    if int(H) * int(W) > MAX_RENDER_PIXELS:
        raise InputError(f"render size {int(W)}x{int(H)} (W x H) is {int(H) * int(W):,} pixels, more than the "
                         f"{MAX_RENDER_PIXELS:,} (4096 x 4096) a pose is drawn at; render at the size the model or "
                         f"ControlNet uses and scale the image afterwards")
    return int(H), int(W)


def _check_far(kp: np.ndarray, present: np.ndarray, H: int, W: int, what: str, names=None) -> None:
    limit = FAR_OFF_CANVAS * max(H, W)
    far = present & ((np.abs(kp[:, 0]) > limit) | (np.abs(kp[:, 1]) > limit))
    if far.any():
        j = int(np.argmax(far))
        label = f"joint {j}" + (f" ({names[j]})" if names is not None else "")
        raise InputError(f"{what}: {label} at ({kp[j, 0]:.4g}, {kp[j, 1]:.4g}) lies more than {FAR_OFF_CANVAS} canvas "
                         f"sizes outside the {W}x{H} image; the coordinates are corrupt or in other units than the "
                         f"canvas (pixels vs normalised [0, 1]) — fix the pose or its canvas_width/canvas_height")


def _on_canvas(pose: Pose, layout: str, H: int, W: int) -> np.ndarray:
    """Pose -> (J, 3) keypoints in `layout`, stretched from the pose's canvas to W x H. A confident joint absurdly
    far off the canvas (> FAR_OFF_CANVAS canvas sizes) is an InputError naming it."""
    from .keypoints import LAYOUTS

    kp = to_layout(pose, layout).keypoints.astype(np.float64)
    kp[:, 0] *= W / pose.width
    kp[:, 1] *= H / pose.height
    _check_far(kp, kp[:, 2] > 0, H, W, "pose", LAYOUTS.get(layout))
    return kp


def _warn_empty(people, what: str) -> bool:
    empty = all(p.is_empty() for p in people)
    if empty:
        log.warning("%s: the pose has no person / no confident keypoint; rendering an empty map", what)
    return empty


def limb_ellipse(p0, p1, half_width: int = STICK_WIDTH) -> list:
    """Polygon of OpenPose's limb ellipse between two points, as cv2.ellipse2Poly builds it: integer centre,
    semi-axes (int(length / 2), half_width), rotation int(degrees), one vertex per degree."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    a = int(math.hypot(x1 - x0, y1 - y0) / 2)
    angle = math.radians(int(math.degrees(math.atan2(y0 - y1, x0 - x1))))
    t = np.radians(np.arange(0, 361))
    ca, sa = math.cos(angle), math.sin(angle)
    px = cx + a * np.cos(t) * ca - half_width * np.sin(t) * sa
    py = cy + a * np.cos(t) * sa + half_width * np.sin(t) * ca
    return list(zip(np.rint(px).tolist(), np.rint(py).tolist()))


def _disc(draw: ImageDraw.ImageDraw, x, y, r, fill):
    x, y = int(x), int(y)   # OpenCV takes integer centres (truncation), like the reference code
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


# ----------------------------------------------------------------------------------------------------------------
# OpenPose (ControlNet) skeleton


def render_openpose(frame_or_pose, H: int, W: int, *, hands: bool = True, face: bool = True) -> np.ndarray:
    """OpenPose/ControlNet skeleton image (H, W, 3) in [0, 1] on black: limbs as ellipses of half-width 4 in 0.6 x the
    OpenPose colour, then joints as discs of radius 4 in full colour (comfyui_controlnet_aux `draw_bodypose`); then,
    when the person carries them (DWPose / OpenPose face and hand arrays in `Pose.extras`), hands as 20 bones of width
    2 in hue order with blue points, and face points as white discs of radius 3 (`draw_handpose`, `draw_facepose`).
    Accepts a Pose, a PoseFrame or a list of Poses; COCO-17 poses are converted (neck from the shoulders)."""
    H, W = _check_size(H, W)
    people = people_of(frame_or_pose, name="pose")
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    if all(p.is_empty() for p in people) and not any(_extra_points(p, k, H, W).size for p in people
                                                      for k in EXTRA_KEYS_DRAWN):
        _warn_empty(people, "render_openpose")
    for pose in people:
        kp = _on_canvas(pose, "openpose18", H, W)
        vis = kp[:, 2] > 0
        for k, (a, b) in enumerate(OPENPOSE18_LIMBS):
            if vis[a] and vis[b]:
                color = tuple(int(c * 0.6) for c in OPENPOSE_COLORS[k])
                draw.polygon(limb_ellipse(kp[a, :2], kp[b, :2]), fill=color)
        for j in np.flatnonzero(vis):
            _disc(draw, kp[j, 0], kp[j, 1], JOINT_RADIUS, OPENPOSE_COLORS[j])
    for pose in people:
        if hands:
            for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
                _draw_hand(draw, _extra_points(pose, key, H, W))
        if face:
            for x, y, c in _extra_points(pose, "face_keypoints_2d", H, W):
                if c > 0:
                    _disc(draw, x, y, FACE_RADIUS, (255, 255, 255))
    return np.asarray(img, dtype=np.float32) / 255.0


# DWPose / OpenPose hand (21 points) and face (70 points) arrays, drawn as comfyui_controlnet_aux does.
EXTRA_KEYS_DRAWN = ("hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
HAND_COLORS = tuple(tuple(int(255 * v) for v in colorsys.hsv_to_rgb(k / len(HAND_EDGES), 1.0, 1.0))
                    for k in range(len(HAND_EDGES)))
HAND_RADIUS, HAND_LINE_WIDTH, FACE_RADIUS = 4, 2, 3


def _extra_points(pose: Pose, key: str, H: int, W: int) -> np.ndarray:
    """(N, 3) points of a face/hand array moved to the W x H image; a point counts as present when its confidence
    is > 0 and it lies at positive coordinates (controlnet_aux marks undetected points with -1)."""
    values = pose.extras.get(key) if pose.extras else None
    if not values:
        return np.zeros((0, 3))
    a = np.asarray(values, np.float64).reshape(-1, 3).copy()
    ok = (a[:, 2] > 0) & (a[:, 0] > 0) & (a[:, 1] > 0)
    a[:, 0] *= W / pose.width
    a[:, 1] *= H / pose.height
    ok &= np.isfinite(a).all(axis=1)
    _check_far(a, ok, H, W, f"pose {key}")
    a[~ok] = 0.0
    return a


def _draw_hand(draw: ImageDraw.ImageDraw, pts: np.ndarray) -> None:
    if len(pts) != 21:
        return
    ok = pts[:, 2] > 0
    for k, (a, b) in enumerate(HAND_EDGES):
        if ok[a] and ok[b]:
            draw.line([(int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1]))], fill=HAND_COLORS[k],
                      width=HAND_LINE_WIDTH)
    for x, y, _ in pts[ok]:
        _disc(draw, x, y, HAND_RADIUS, (0, 0, 255))


# ----------------------------------------------------------------------------------------------------------------
# HumanSD COCO-17 skeleton


def hls_palette(n: int, h: float = 0.01, l: float = 0.6, s: float = 0.65) -> list:  # noqa: E741
    """seaborn.color_palette("hls", n): n hues evenly spaced from h, fixed lightness and saturation; RGB in [0, 1]."""
    hues = (np.linspace(0, 1, n + 1)[:-1] + h) % 1
    return [colorsys.hls_to_rgb(float(hue), l, s) for hue in hues]


# HumanSD draws with int(255 * colour) (truncation).
HUMANSD_COLORS = tuple(tuple(int(255 * c) for c in rgb) for rgb in hls_palette(len(COCO17_LIMBS)))


def render_humansd(frame, H: int, W: int, *, threshold: float = 0.05, max_people: int = 10,
                   limb_width: int = 10) -> np.ndarray:
    """HumanSD pose image (H, W, 3) in [0, 1]: black canvas, COCO-17, 16 limbs drawn as lines of width 10 in the
    16-colour hls palette, each followed by discs of radius width // 2 at both ends in the limb's colour.

    As in HumanSD, a joint is used when its confidence > `threshold` (0.05 at inference, 0.02 in training) and it
    lies inside the canvas; at most `max_people` people are drawn. OpenPose-18 poses are converted (neck dropped)."""
    H, W = _check_size(H, W)
    people = people_of(frame, name="frame")
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    _warn_empty(people, "render_humansd")
    for pose in people[:max_people]:
        kp = _on_canvas(pose, "coco17", H, W)
        ok = (kp[:, 2] > threshold) & (kp[:, 0] >= 0) & (kp[:, 1] >= 0) & (kp[:, 0] < W) & (kp[:, 1] < H)
        for k, (a, b) in enumerate(COCO17_LIMBS):
            if ok[a] and ok[b]:
                color = HUMANSD_COLORS[k]
                pa, pb = (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1]))
                draw.line([pa, pb], fill=color, width=limb_width)
                _disc(draw, *pa, limb_width // 2, color)
                _disc(draw, *pb, limb_width // 2, color)
    return np.asarray(img, dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# PIDM 20-channel pose map


def _lower_envelope(g: np.ndarray, axis: int) -> np.ndarray:
    """f[i] = min_k (g[k] + |i - k|) along `axis`, as two running minima:
    min_{k<=i}(g[k] - k) + i and min_{k>=i}(g[k] + k) - i."""
    n = g.shape[axis]
    idx = np.arange(n, dtype=g.dtype).reshape([-1 if a == axis % g.ndim else 1 for a in range(g.ndim)])
    forward = np.minimum.accumulate(g - idx, axis=axis) + idx
    backward = np.flip(np.minimum.accumulate(np.flip(g + idx, axis), axis=axis), axis) - idx
    return np.minimum(forward, backward)


def l1_distance_transform(mask: np.ndarray) -> np.ndarray:
    """Exact city-block (L1) distance from every pixel to the nearest True pixel of `mask` (..., H, W).

    L1 distance is separable: the 1-D distance along each row, then the lower envelope min_k(g(k) + |i - k|)
    along each column. Same result as cv2.distanceTransform(DIST_L1, 3) on `~mask`. Maps without any True pixel
    get +inf."""
    mask = np.asarray(mask, bool)
    H, W = mask.shape[-2:]
    big = np.float32(H + W + 2)              # larger than any finite distance
    d = np.where(mask, np.float32(0), big)   # (..., H, W)
    d = _lower_envelope(_lower_envelope(d, -1), -2)
    d[d >= big] = np.inf
    return d


def render_pidm_pose_map(pose, H: int, W: int, *, return_empty_flag: bool = False, rgb_only: bool = False):
    """PIDM's pose map (H, W, 20) float32 in [0, 1] (PIDM data/fashion_data.py `get_label_tensor`).

    Channels 0-2: RGB skeleton. PIDM draws joints (discs r=4) first, then each limb ellipse (half-width 4) blended
    0.4 * canvas + 0.6 * colour, with the OpenPose colour table used as BGR and converted to RGB - so here limb k's
    RGB colour is OPENPOSE_COLORS[k] reversed (nose blue, not red), exactly what PIDM checkpoints were trained on.
    Channels 3-19: for each of the 17 limbs, floor(min(L1 distance to the limb ellipse / 3, 255)) / 255: 0 on the
    limb, growing away; a missing limb gives all ones (no limb pixel anywhere).
    `pose`: a Pose (or a PoseFrame / list holding one person; extra people are ignored with a warning).
    With `return_empty_flag=True` returns (map, empty) where empty tells that no joint was drawn.
    `rgb_only=True` returns just channels 0-2 (H, W, 3), without the distance maps (a fraction of the memory)."""
    H, W = _check_size(H, W)
    if not rgb_only and H * W > MAX_PIDM_MAP_PIXELS:
        raise InputError(f"PIDM pose map size {W}x{H} (W x H) is {H * W:,} pixels, more than the "
                         f"{MAX_PIDM_MAP_PIXELS:,} (2048 x 2048) its 20 channels are computed at; use the model's "
                         f"image size")
    people = people_of(pose, name="pose")
    if len(people) > 1:
        log.warning("render_pidm_pose_map: %d people given, PIDM draws one; using the first", len(people))
    person = people[0] if people else None
    empty = person is None or _warn_empty([person], "render_pidm_pose_map")
    if person is None:
        log.warning("render_pidm_pose_map: no person; rendering an empty map")

    canvas = np.zeros((H, W, 3), np.float64)        # BGR, like PIDM's OpenCV canvas
    masks = None if rgb_only else np.zeros((len(OPENPOSE18_LIMBS), H, W), bool)
    if person is not None:
        kp = _on_canvas(person, "openpose18", H, W)
        vis = kp[:, 2] > 0
        joints = Image.new("RGB", (W, H))
        draw = ImageDraw.Draw(joints)
        for j in np.flatnonzero(vis):
            _disc(draw, kp[j, 0], kp[j, 1], JOINT_RADIUS, OPENPOSE_COLORS[j])
        canvas[:] = np.asarray(joints, np.float64)
        for k, (a, b) in enumerate(OPENPOSE18_LIMBS):
            if not (vis[a] and vis[b]):
                continue
            limb = Image.new("L", (W, H))
            ImageDraw.Draw(limb).polygon(limb_ellipse(kp[a, :2], kp[b, :2]), fill=255)
            m = np.asarray(limb) > 0
            if masks is not None:
                masks[k] = m
            # cv2.addWeighted(canvas, 0.4, canvas_with_limb, 0.6, 0): unchanged off the limb, rounded to uint8
            canvas[m] = np.rint(0.4 * canvas[m] + 0.6 * np.asarray(OPENPOSE_COLORS[k], np.float64))
    rgb = canvas[..., ::-1] / 255.0                 # PIDM: cv2.cvtColor(BGR2RGB)
    if rgb_only:
        out = rgb.astype(np.float32)
        return (out, empty) if return_empty_flag else out
    assert masks is not None                        # made whenever not rgb_only
    dist = l1_distance_transform(masks)             # (17, H, W)
    dist = np.floor(np.minimum(dist / 3.0, 255.0)) / 255.0   # uint8 truncation as in PIDM
    out = np.concatenate([rgb, dist.transpose(1, 2, 0)], axis=-1).astype(np.float32)  # (H, W, 20)
    return (out, empty) if return_empty_flag else out


# ----------------------------------------------------------------------------------------------------------------
# Gaussian heatmaps


def render_heatmaps(pose, H: int, W: int, sigma: float = 2.0) -> np.ndarray:
    """Per-joint Gaussian heatmaps (H, W, J) float32, peak 1 at each keypoint, zero channels for missing joints.

    Pixel (row i, column j) is evaluated at (x = j, y = i), so a keypoint at (10, 20) peaks at row 20, column 10.
    J follows the pose's layout (18 OpenPose, 17 COCO)."""
    H, W = _check_size(H, W)
    validate_pose(pose, name="pose")
    if not (sigma > 0):
        raise InputError(f"sigma must be > 0, got {sigma!r}")
    if pose.is_empty():
        log.warning("render_heatmaps: the pose has no confident keypoint; all heatmaps are zero")
    kp = pose.keypoints.astype(np.float64)
    x = kp[:, 0] * W / pose.width
    y = kp[:, 1] * H / pose.height
    gx = np.exp(-((np.arange(W)[None, :] - x[:, None]) ** 2) / (2 * sigma ** 2))   # (J, W)
    gy = np.exp(-((np.arange(H)[None, :] - y[:, None]) ** 2) / (2 * sigma ** 2))   # (J, H)
    maps = gy[:, :, None] * gx[:, None, :] * (kp[:, 2] > 0)[:, None, None]          # (J, H, W)
    return maps.transpose(1, 2, 0).astype(np.float32)


def gaussian_heatmaps_torch(xy: torch.Tensor, vis: torch.Tensor, H: int, W: int, sigma: float = 2.0) -> torch.Tensor:
    """Differentiable Gaussian heatmaps: xy (B, J, 2) pixels of the H x W grid, vis (B, J) weights (0 = missing)
    -> (B, J, H, W) = vis * exp(-|p - xy|^2 / (2 sigma^2)), p = (column, row). Gradients flow to xy and vis."""
    H, W = _check_size(H, W)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise InputError(f"xy must have shape (B, J, 2), got {tuple(xy.shape)}")
    if vis.shape != xy.shape[:2]:
        raise InputError(f"vis must have shape {tuple(xy.shape[:2])} (B, J), got {tuple(vis.shape)}")
    if not (sigma > 0):
        raise InputError(f"sigma must be > 0, got {sigma!r}")
    dtype = xy.dtype if xy.is_floating_point() else torch.float32
    xs = torch.arange(W, device=xy.device, dtype=dtype)
    ys = torch.arange(H, device=xy.device, dtype=dtype)
    gx = torch.exp(-(xs - xy[..., 0:1]) ** 2 / (2 * sigma ** 2))      # (B, J, W)
    gy = torch.exp(-(ys - xy[..., 1:2]) ** 2 / (2 * sigma ** 2))      # (B, J, H)
    return gy[..., :, None] * gx[..., None, :] * vis.to(dtype)[..., None, None]   # (B, J, H, W)


__all__ = [
    "OPENPOSE_COLORS", "HUMANSD_COLORS", "PIDM_CHANNELS", "render_openpose", "render_humansd", "render_pidm_pose_map",
    "render_heatmaps", "gaussian_heatmaps_torch", "l1_distance_transform", "hls_palette", "limb_ellipse",
]
