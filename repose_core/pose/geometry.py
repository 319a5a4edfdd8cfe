"""Geometry that keeps images and keypoints consistent: resize / pad / crop / flip, and skeleton retargeting.

Coordinates are continuous pixels (keypoints.py): resizing by s maps x -> s * x (matching bilinear resampling with
align_corners=False), flipping maps x -> width - x. Points that leave the canvas are kept unless `drop_outside=True`
(then they become missing), so a crop followed by the inverse pad gives the original pose back.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .keypoints import MIRROR, OPENPOSE18_LIMBS, Pose, PoseFrame, coco17_to_openpose18, openpose18_to_coco17
from .validate import validate_pose

log = logging.getLogger("repose")

FIT_MODES = ("pad", "crop", "stretch")


# ----------------------------------------------------------------------------------------------------------------
# Keypoint transforms


def _scale_pair(scale):
    if np.ndim(scale) == 0:
        return float(scale), float(scale)
    sx, sy = scale
    return float(sx), float(sy)


def transform_extras(extras: dict, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> dict:
    """Apply x -> sx * x + ox, y -> sy * y + oy to the confident points of pass-through arrays."""
    out: dict[str, list[float] | None] = {}
    for key, values in extras.items():
        if values is None:
            out[key] = None
            continue
        a = np.asarray(values, np.float64).reshape(-1, 3).copy()
        vis = a[:, 2] > 0
        a[vis, 0] = a[vis, 0] * sx + ox
        a[vis, 1] = a[vis, 1] * sy + oy
        out[key] = a.reshape(-1).tolist()
    return out


def transform_pose(pose: Pose, scale, offset=(0.0, 0.0), new_w: int | None = None, new_h: int | None = None,
                   *, drop_outside: bool = False) -> Pose:
    """x' = sx * x + ox, y' = sy * y + oy on the confident joints; the result lives on a new_w x new_h canvas
    (default: the scaled canvas). `scale` is a number or (sx, sy). Missing joints stay (0, 0, 0); with
    `drop_outside=True`, joints that land outside the new canvas become missing."""
    validate_pose(pose)
    sx, sy = _scale_pair(scale)
    ox, oy = float(offset[0]), float(offset[1])
    new_w = int(round(pose.width * sx)) if new_w is None else int(new_w)
    new_h = int(round(pose.height * sy)) if new_h is None else int(new_h)
    if new_w <= 0 or new_h <= 0:
        raise InputError(f"transform_pose: the new canvas {new_w}x{new_h} must have positive size")
    kp = pose.keypoints.astype(np.float64).copy()
    vis = kp[:, 2] > 0
    kp[vis, 0] = kp[vis, 0] * sx + ox
    kp[vis, 1] = kp[vis, 1] * sy + oy
    if drop_outside:
        out = vis & ((kp[:, 0] < 0) | (kp[:, 1] < 0) | (kp[:, 0] > new_w) | (kp[:, 1] > new_h))
        kp[out] = 0.0
    return Pose(kp, new_w, new_h, pose.layout, transform_extras(pose.extras, sx, sy, ox, oy))


def resize_pose(pose: Pose, new_w: int, new_h: int) -> Pose:
    """Stretch the pose from its canvas to new_w x new_h."""
    validate_pose(pose)
    return transform_pose(pose, (new_w / pose.width, new_h / pose.height), (0, 0), new_w, new_h)


def crop_pose(pose: Pose, x0: float, y0: float, w: int, h: int, *, drop_outside: bool = False) -> Pose:
    """The pose as seen in the crop [x0, x0 + w) x [y0, y0 + h) of its canvas."""
    return transform_pose(pose, 1.0, (-x0, -y0), w, h, drop_outside=drop_outside)


def hflip_pose(pose: Pose) -> Pose:
    """Mirror horizontally (x -> width - x) and swap left/right joints (and left/right hand arrays), so the
    flipped pose still names the person's own left arm "left"."""
    validate_pose(pose)
    kp = pose.keypoints.astype(np.float64).copy()
    vis = kp[:, 2] > 0
    kp[vis, 0] = pose.width - kp[vis, 0]
    kp = kp[list(MIRROR[pose.layout])]
    extras = transform_extras(pose.extras, -1.0, 1.0, float(pose.width), 0.0)
    if "hand_left_keypoints_2d" in extras or "hand_right_keypoints_2d" in extras:
        extras["hand_left_keypoints_2d"], extras["hand_right_keypoints_2d"] = (
            extras.get("hand_right_keypoints_2d"), extras.get("hand_left_keypoints_2d"))
    return Pose(kp, pose.width, pose.height, pose.layout, extras)


# ----------------------------------------------------------------------------------------------------------------
# Image + keypoints


def fit_params(H: int, W: int, H_out: int, W_out: int, mode: str = "pad"):
    """Scale and placement that fit an H x W image into H_out x W_out.

    Returns (new_h, new_w, sx, sy, ox, oy): resize to new_h x new_w (sx = new_w / W, sy = new_h / H), then place at
    offset (ox, oy) in the output (negative = cropped). pad: keep aspect, fit inside, centre, pad the rest;
    crop: keep aspect, cover, centre crop; stretch: resize to exactly H_out x W_out."""
    if mode not in FIT_MODES:
        raise InputError(f"mode must be one of {FIT_MODES}, got {mode!r}")
    for name, v in (("H", H), ("W", W), ("H_out", H_out), ("W_out", W_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if mode == "stretch":
        return H_out, W_out, W_out / W, H_out / H, 0, 0
    s = min(H_out / H, W_out / W) if mode == "pad" else max(H_out / H, W_out / W)
    new_h, new_w = max(1, int(round(H * s))), max(1, int(round(W * s)))
    if mode == "pad":  # rounding must not overflow the output
        new_h, new_w = min(new_h, H_out), min(new_w, W_out)
    else:
        new_h, new_w = max(new_h, H_out), max(new_w, W_out)
    return new_h, new_w, new_w / W, new_h / H, (W_out - new_w) // 2, (H_out - new_h) // 2


def resize_image(image: np.ndarray, H: int, W: int) -> np.ndarray:
    """Resize an (h, w, C) or (h, w) image to (H, W[, C]) with antialiased bilinear resampling (align_corners=False).
    uint8 stays uint8 (rounded), anything else becomes float32."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t = t[..., None] if arr.ndim == 2 else t
    if t.shape[:2] != (H, W):
        t = F.interpolate(t.permute(2, 0, 1)[None], size=(H, W), mode="bilinear", align_corners=False,
                          antialias=True)[0].permute(1, 2, 0)
    out = t.numpy()
    out = out[..., 0] if arr.ndim == 2 else out
    if arr.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def _place(image: np.ndarray, H_out: int, W_out: int, ox: int, oy: int, pad_value) -> np.ndarray:
    """Put `image` at (ox, oy) on an H_out x W_out canvas filled with pad_value (negative offsets crop)."""
    h, w = image.shape[:2]
    out = np.empty((H_out, W_out) + image.shape[2:], image.dtype)
    out[...] = pad_value
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + w, W_out), min(oy + h, H_out)
    out[y0:y1, x0:x1] = image[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return out


def _pose_on_image(pose: Pose, H: int, W: int) -> Pose:
    """Bring a pose to the image's canvas: identical canvases pass, same aspect ratio (within 2 %) is rescaled,
    anything else is an error (the pose probably belongs to another image)."""
    if (pose.width, pose.height) == (W, H):
        return pose
    if abs((pose.width / pose.height) / (W / H) - 1) > 0.02:
        raise InputError(f"pose canvas {pose.width}x{pose.height} does not match the image {W}x{H} (different "
                         f"aspect ratio); give the pose of this image or resize_pose() it first")
    return resize_pose(pose, W, H)


def fit_to_canvas(image, pose, H_out: int, W_out: int, mode: str = "pad", *, pad_value: float = 1.0,
                  drop_outside: bool = False):
    """Resize + pad/crop an (H, W, C) image to (H_out, W_out, C) and move its pose(s) with it.

    `pose`: Pose, PoseFrame, list of Poses or None (returned the same type); its canvas must be the image's (or the
    same aspect ratio, then it is rescaled first). `pad_value` is in [0, 1] units (1 = white, the DeepFashion
    background); uint8 images get round(255 * pad_value). Returns (image, pose)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    H, W = arr.shape[:2]
    new_h, new_w, sx, sy, ox, oy = fit_params(H, W, H_out, W_out, mode)
    resized = resize_image(arr, new_h, new_w)
    fill = round(255 * pad_value) if resized.dtype == np.uint8 else pad_value
    out_img = _place(resized, H_out, W_out, ox, oy, fill)

    def move(p: Pose) -> Pose:
        p = _pose_on_image(p, H, W)
        return transform_pose(p, (sx, sy), (ox, oy), W_out, H_out, drop_outside=drop_outside)

    if isinstance(pose, PoseFrame):
        return out_img, PoseFrame([move(p) for p in pose.people], W_out, H_out)
    if isinstance(pose, (list, tuple)):
        return out_img, [move(p) for p in pose]
    return out_img, (None if pose is None else move(pose))


# ----------------------------------------------------------------------------------------------------------------
# Retargeting

# Kinematic tree rooted at the neck: OPENPOSE18_LIMBS lists (parent, child), parents before children.
_PARENT = {child: parent for parent, child in OPENPOSE18_LIMBS}


def _bone_lengths(kp: np.ndarray) -> np.ndarray:
    """(18,) length of the bone ending at each joint (NaN where either end is missing or for the root)."""
    out = np.full(18, np.nan)
    vis = kp[:, 2] > 0
    for child, parent in _PARENT.items():
        if vis[child] and vis[parent]:
            out[child] = np.linalg.norm(kp[child, :2] - kp[parent, :2])
    return out


def retarget_pose(target: Pose, source: Pose, *, anchor: str = "target") -> Pose:
    """Fit the `target` skeleton to the `source` body: keep the target's limb directions, use the source's bone
    lengths (walking the kinematic tree from the neck), on the source's canvas.

    1. The target is mapped onto the source canvas with a uniform scale (pad fit), so its directions are unchanged.
    2. Bone lengths come from the source; a bone missing there borrows its mirror bone (left <-> right), else the
       target's length times the median source/target bone ratio.
    3. Joints are placed from the neck outwards: child = parent + direction_target * length_source. A target joint
       whose parent is missing starts a new branch placed by the median-ratio similarity about the root.
    4. Centre: the result is translated so the centroid of its joints matches the centroid of the same joints in
       the target (`anchor="target"`: the person stands where the target pose is) or in the source
       (`anchor="source"`: where the source person is).
    Joints missing in the target stay missing. Face/hand extras are dropped. Returns a pose in the target's layout.
    Raises EmptyPoseError if either pose has no confident joint."""
    if anchor not in ("target", "source"):
        raise InputError(f"anchor must be 'target' or 'source', got {anchor!r}")
    validate_pose(target, name="target", require_person=True)
    validate_pose(source, name="source", require_person=True)
    src = coco17_to_openpose18(source)
    tgt = coco17_to_openpose18(target)
    # 1. target on the source canvas (uniform scale keeps directions)
    s = min(src.width / tgt.width, src.height / tgt.height)
    tgt = transform_pose(tgt, s, ((src.width - s * tgt.width) / 2, (src.height - s * tgt.height) / 2),
                         src.width, src.height)
    tk, sk = tgt.keypoints.astype(np.float64), src.keypoints.astype(np.float64)
    tvis = tk[:, 2] > 0

    # 2. bone lengths
    src_len, tgt_len = _bone_lengths(sk), _bone_lengths(tk)
    both = ~np.isnan(src_len) & ~np.isnan(tgt_len) & (tgt_len > 0)
    if both.any():
        ratio = float(np.median(src_len[both] / tgt_len[both]))
    else:  # no common bone: compare the extents of the two point clouds
        def extent(kp):
            p = kp[kp[:, 2] > 0, :2]
            return float(np.ptp(p, axis=0).max()) if len(p) > 1 else 0.0
        ratio = extent(sk) / extent(tk) if extent(tk) > 0 and extent(sk) > 0 else 1.0
    mirror = MIRROR["openpose18"]
    length = src_len.copy()
    for j in range(18):
        if np.isnan(length[j]):
            length[j] = src_len[mirror[j]]
        if np.isnan(length[j]) and not np.isnan(tgt_len[j]):
            length[j] = ratio * tgt_len[j]

    # 3. walk the tree
    out = np.zeros((18, 3))
    placed = np.zeros(18, bool)
    order = [1] + [child for _, child in OPENPOSE18_LIMBS]
    root = next(j for j in order if tvis[j])
    out[root, :2] = tk[root, :2]
    placed[root] = True
    for parent, child in OPENPOSE18_LIMBS:
        if not tvis[child] or placed[child]:
            continue
        if placed[parent] and not np.isnan(length[child]):
            d = tk[child, :2] - tk[parent, :2]
            n = np.linalg.norm(d)
            out[child, :2] = out[parent, :2] + (d / n * length[child] if n > 0 else 0.0)
        else:
            out[child, :2] = out[root, :2] + ratio * (tk[child, :2] - tk[root, :2])
        placed[child] = True
    out[placed, 2] = tk[placed, 2]

    # 4. centre
    ref = tk if anchor == "target" else sk
    common = placed & (ref[:, 2] > 0)
    if not common.any():
        common, ref = placed & tvis, tk
    out[placed, :2] += ref[common, :2].mean(0) - out[common, :2].mean(0)

    result = Pose(out, src.width, src.height, "openpose18")
    return openpose18_to_coco17(result) if target.layout == "coco17" else result


# ----------------------------------------------------------------------------------------------------------------
# Choosing the target person and placing a pose on an image (pose interop with DWPose / OpenPose outputs)


def body_score(pose: Pose) -> tuple[int, float]:
    """(number of present body joints, sum of their confidences): how much of a body a person entry holds.
    DWPose lists face-only / hand-only people with an all-missing body; they score (0, 0)."""
    validate_pose(pose)
    c = pose.keypoints[:, 2]
    return int((c > 0).sum()), float(c[c > 0].sum())


def select_person(frame: PoseFrame, person: int = -1) -> tuple[int, str]:
    """Index of the person to use from `frame` and a sentence saying why.

    person = -1 (auto): the person with the most confident body joints (most present joints, then the larger
    confidence sum, then the lower index); person >= 0: that index (InputError when the frame has fewer people)."""
    people = list(frame.people)
    if not people:
        raise InputError("the pose frame has no person")
    scores = [body_score(p) for p in people]
    if person is None or person < 0:
        best = max(range(len(people)), key=lambda i: (scores[i][0], scores[i][1], -i))
        why = (f"person {best} of {len(people)}: the most confident body ({scores[best][0]} of "
               f"{people[best].num_joints} joints, confidence sum {scores[best][1]:.2f})")
        if len(people) > 1:
            others = ", ".join(f"person {i}: {n} joints" for i, (n, _) in enumerate(scores) if i != best)
            why += f"; {others}"
        return best, why
    if int(person) != person or person >= len(people):
        raise InputError(f"input 'person' is {person} but the pose has {len(people)} people (0 to "
                         f"{len(people) - 1}; -1 = the most confident body)")
    person = int(person)
    return person, f"person {person} of {len(people)} (chosen by index; {scores[person][0]} body joints)"


def fit_frame(frame: PoseFrame, W_out: int, H_out: int, mode: str = "pad") -> tuple[PoseFrame, str]:
    """Move a pose frame from its canvas onto a W_out x H_out image with the rule used for images (`fit_params`:
    "pad" keeps the aspect ratio, scales to fit inside and centres). Returns (frame, a sentence describing the fit).
    Same canvas: unchanged; same aspect ratio: a plain rescale."""
    W, H = int(frame.width), int(frame.height)
    if (W, H) == (W_out, H_out):
        return frame, f"pose canvas {W}x{H} = image size"
    if W <= 0 or H <= 0:
        raise InputError(f"the pose frame has no canvas size ({W}x{H}); it cannot be placed on a {W_out}x{H_out} "
                         f"image")
    new_h, new_w, sx, sy, ox, oy = fit_params(H, W, H_out, W_out, mode)
    if abs((W / H) / (W_out / H_out) - 1) <= 0.02:   # same aspect ratio: rescale to the whole image
        sx, sy, ox, oy = W_out / W, H_out / H, 0, 0
        text = f"pose canvas {W}x{H} rescaled to the {W_out}x{H_out} image (x{sx:.3f})"
    else:
        text = (f"pose canvas {W}x{H} fitted into the {W_out}x{H_out} image keeping its aspect ratio "
                f"(x{sx:.3f}, offset {ox}, {oy}; {mode})")
    people = [transform_pose(p if (p.width, p.height) == (W, H) else resize_pose(p, W, H), (sx, sy), (ox, oy),
                             W_out, H_out) for p in frame.people]
    return PoseFrame(people, W_out, H_out), text
