"""Heatmaps -> keypoints: peak picking with sub-pixel refinement, associative-embedding grouping, and
``estimate_poses`` (image -> ``PoseFrame`` per batch item).

Coordinates: ``Pose`` keypoints use the pixel-centre convention (x = i is the centre of column i).
- Standard HigherHRNet (non-UDP): a heatmap cell u covers [u, u+1) in heatmap units, so
  x = (u + 0.5) * W / w - 0.5 (the convention of bilinear resizing with align_corners=False). Refinement: the
  classic quarter offset toward the higher neighbour (HigherHRNet ``adjust``).
- UDP (Huang et al., CVPR 2020, "unbiased data processing"): the image and heatmap grids share their end points,
  x = u * (W - 1) / (w - 1), and refinement is the second-order Taylor (DARK) step on the log heatmap.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

REFINE_METHODS = ("auto", "quarter", "dark", "none")


# --- coordinates -----------------------------------------------------------------------------------------------
def heatmap_to_image(u: np.ndarray, hm_len: int, img_len: float, udp: bool) -> np.ndarray:
    """Map heatmap index coordinates along one axis to image pixel-centre coordinates."""
    u = np.asarray(u, dtype=np.float64)
    if udp:
        return u * (img_len - 1) / max(hm_len - 1, 1)
    return (u + 0.5) * img_len / hm_len - 0.5


# --- sub-pixel refinement --------------------------------------------------------------------------------------
def _quarter_offset(hm: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Shift 0.25 cell toward the higher neighbour along each axis (HigherHRNet / SimpleBaseline decoding)."""
    h, w = hm.shape
    dx = dy = 0.0
    if 0 < x < w - 1:
        dx = 0.25 * float(np.sign(hm[y, x + 1] - hm[y, x - 1]))
    if 0 < y < h - 1:
        dy = 0.25 * float(np.sign(hm[y + 1, x] - hm[y - 1, x]))
    return dx, dy


def _dark_offset(logh: np.ndarray, x: int, y: int) -> tuple[float, float] | None:
    """Taylor step on the log heatmap (DARK, Zhang et al. CVPR 2020): offset = -H^-1 g. None if not a clean max."""
    h, w = logh.shape
    if not (0 < x < w - 1 and 0 < y < h - 1):
        return None
    gx = 0.5 * (logh[y, x + 1] - logh[y, x - 1])
    gy = 0.5 * (logh[y + 1, x] - logh[y - 1, x])
    dxx = logh[y, x + 1] - 2 * logh[y, x] + logh[y, x - 1]
    dyy = logh[y + 1, x] - 2 * logh[y, x] + logh[y - 1, x]
    dxy = 0.25 * (logh[y + 1, x + 1] - logh[y + 1, x - 1] - logh[y - 1, x + 1] + logh[y - 1, x - 1])
    det = dxx * dyy - dxy * dxy
    if not (det > 1e-12 and dxx < 0):  # the Hessian must be negative definite at a maximum
        return None
    ox = -(dyy * gx - dxy * gy) / det
    oy = -(dxx * gy - dxy * gx) / det
    if abs(ox) > 1 or abs(oy) > 1:
        return None
    return float(ox), float(oy)


def _log_blurred(hm: Tensor) -> np.ndarray:
    """(J,h,w) -> log of a lightly blurred heatmap, for DARK (a Gaussian stays a Gaussian with the same centre)."""
    import kornia

    blurred = kornia.filters.gaussian_blur2d(hm[None].float(), (5, 5), (1.0, 1.0), border_type="replicate")[0]
    return torch.log(blurred.clamp_min(1e-10)).cpu().numpy().astype(np.float64)


def _resolve_refine(refine: str, udp: bool) -> str:
    if refine not in REFINE_METHODS:
        raise InputError(f"refine={refine!r} is not a decoding method; accepted: {', '.join(REFINE_METHODS)}")
    if refine == "auto":
        return "dark" if udp else "quarter"
    return refine


def refine_peaks(hm: Tensor, points: np.ndarray, refine: str) -> np.ndarray:
    """Sub-pixel refine integer peaks. hm (J,h,w); points (N,3) = (joint, x, y) ints -> (N,2) float (x, y)."""
    out = points[:, 1:3].astype(np.float64)
    if refine == "none" or len(points) == 0:
        return out
    hm_np = hm.detach().float().cpu().numpy()
    logh = _log_blurred(hm.detach()) if refine == "dark" else None
    for n, (j, x, y) in enumerate(points.astype(int)):
        off = _dark_offset(logh[j], x, y) if logh is not None else None
        if off is None:
            off = _quarter_offset(hm_np[j], x, y)
        out[n] += off
    return out


# --- single person ---------------------------------------------------------------------------------------------
def decode_single(heatmaps: Tensor, image_size: tuple[int, int] | None = None, *, udp: bool = False,
                  refine: str = "auto") -> np.ndarray:
    """Top-1 peak per joint. heatmaps (J,h,w) or (B,J,h,w) -> (B,J,3) float32 = (x, y, peak value).

    image_size = (W, H) of the image the heatmap grid spans (default: the heatmap itself). Confidence is the raw
    peak value of the heatmap (thresholding is left to the caller)."""
    hm = _as_heatmaps(heatmaps)
    b, j, h, w = hm.shape
    W, H = (w, h) if image_size is None else image_size
    method = _resolve_refine(refine, udp)
    out = np.zeros((b, j, 3), np.float32)
    for i in range(b):
        vals, peak = hm[i].detach().reshape(j, -1).max(dim=1)
        idx = peak.cpu().numpy()
        pts = np.stack([np.arange(j), idx % w, idx // w], axis=1)
        xy = refine_peaks(hm[i], pts, method)
        out[i, :, 0] = heatmap_to_image(xy[:, 0], w, W, udp)
        out[i, :, 1] = heatmap_to_image(xy[:, 1], h, H, udp)
        out[i, :, 2] = vals.float().cpu().numpy()
    return out


# --- several people: associative embedding ---------------------------------------------------------------------
def group_by_tags(heatmaps: Tensor, tags: Tensor, *, threshold: float = 0.1, tag_threshold: float = 1.0,
                  max_people: int = 30, nms_kernel: int = 5, udp: bool = False,
                  refine: str = "auto") -> list[np.ndarray]:
    """Greedy associative-embedding grouping (Newell et al. 2017; HigherHRNet's parser, simplified).

    heatmaps (J,h,w); tags (T,h,w) with T = J (tag per joint) or 1. Per joint, up to ``max_people`` NMS peaks
    above ``threshold`` are matched, in joint order, to the person whose mean tag is nearest (distance below
    ``tag_threshold``; closest pairs first); unmatched peaks start new people. HigherHRNet uses the Hungarian
    algorithm on the same distances; greedy matching is equivalent when people's tags are well separated.

    Returns people as (J,3) arrays (x, y, value) in heatmap coordinates (sub-pixel refined), best mean score first.
    """
    hm = _as_heatmaps(heatmaps)[0]
    if tags.ndim == 4:
        tags = tags[0]
    j, h, w = hm.shape
    if tags.ndim != 3 or tags.shape[-2:] != (h, w) or tags.shape[0] not in (1, j):
        raise InputError(f"tags must have shape (J or 1, h, w) = ({j} or 1, {h}, {w}) to match the heatmaps, "
                         f"got {tuple(tags.shape)}")
    hm = hm.detach().float()
    k = nms_kernel
    is_peak = hm == F.max_pool2d(hm[None], k, 1, k // 2)[0]
    scores = torch.where(is_peak, hm, torch.full_like(hm, -float("inf"))).reshape(j, -1)
    top_vt, top_it = scores.topk(min(max_people, h * w), dim=1)
    top_v, top_i = top_vt.cpu().numpy(), top_it.cpu().numpy()
    tag_np = tags.detach().float().cpu().numpy()

    people: list[dict] = []  # each: pts (J,3) ints+val as (x, y, val), set mask, tag sum, count
    for jj in range(j):
        cand = [(int(i % w), int(i // w), float(v)) for v, i in zip(top_v[jj], top_i[jj]) if v > threshold]
        ct = tag_np[jj if tag_np.shape[0] == j else 0]
        cand_tags = [float(ct[y, x]) for x, y, _ in cand]
        pairs = sorted(((abs(t - p["tag"] / p["n"]), -c[2], ci, pi)
                        for ci, (c, t) in enumerate(zip(cand, cand_tags)) for pi, p in enumerate(people)),
                       key=lambda r: (r[0], r[1]))
        used_c, used_p = set(), set()
        for dist, _, ci, pi in pairs:
            if dist >= tag_threshold or ci in used_c or pi in used_p:
                continue
            _add_joint(people[pi], jj, cand[ci], cand_tags[ci])
            used_c.add(ci)
            used_p.add(pi)
        for ci, c in enumerate(cand):
            if ci not in used_c and len(people) < max_people:
                person = {"pts": np.zeros((j, 3)), "set": np.zeros(j, bool), "tag": 0.0, "n": 0}
                _add_joint(person, jj, c, cand_tags[ci])
                people.append(person)

    method = _resolve_refine(refine, udp)
    result = []
    for p in people:
        pts = p["pts"].copy()
        sel = np.flatnonzero(p["set"])
        pts[sel, :2] = refine_peaks(hm, np.stack([sel, pts[sel, 0], pts[sel, 1]], 1), method)
        pts[~p["set"]] = 0.0
        result.append(pts.astype(np.float32))
    result.sort(key=lambda a: -float(a[:, 2].mean()))
    return result


def _add_joint(person: dict, j: int, cand: tuple[int, int, float], tag: float) -> None:
    person["pts"][j] = cand
    person["set"][j] = True
    person["tag"] += tag
    person["n"] += 1


# --- image -> poses --------------------------------------------------------------------------------------------
def estimate_poses(estimator, img01: Tensor, threshold: float = 0.1, *, multi_person: bool = False,
                   max_people: int = 30, tag_threshold: float = 1.0, resize: bool = True,
                   refine: str = "auto", to_openpose18: bool = False) -> list:
    """Detect people. img01 (B,3,H,W) RGB in [0,1] -> list of B ``PoseFrame`` in pixel coordinates of img01.

    Single-person mode keeps the top peak of every joint (one ``Pose`` per image, joints below ``threshold`` are
    missing). ``multi_person`` groups peaks by associative-embedding tags (needs an estimator with
    ``heatmaps_and_tags``, e.g. HigherHRNet). With ``resize`` the image is scaled so its short side equals the
    estimator's training ``input_size`` (HigherHRNet is scale sensitive). Keypoints are ``coco17`` unless
    ``to_openpose18``. Confidence = heatmap peak value clipped to [0, 1]."""
    from ..pose.keypoints import Pose, PoseFrame

    if not isinstance(img01, Tensor) or img01.ndim != 4 or img01.shape[1] != 3:
        got = tuple(img01.shape) if isinstance(img01, Tensor) else type(img01).__name__
        raise InputError(f"estimate_poses expects an image tensor (B,3,H,W) RGB in [0,1], got {got}")
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"estimate_poses threshold={threshold!r} must be in [0, 1] (HigherHRNet uses 0.1)")
    if multi_person and not hasattr(estimator, "heatmaps_and_tags"):
        raise InputError(f"multi_person=True needs an estimator with associative-embedding tags "
                         f"(heatmaps_and_tags); {type(estimator).__name__} has none. Use multi_person=False.")
    config = getattr(estimator, "config", None)
    udp = bool(getattr(config, "udp", False))
    input_size = getattr(config, "input_size", None)
    method = _resolve_refine(refine, udp)

    B, _, H, W = img01.shape
    x = img01
    if resize and input_size and min(H, W) != input_size:
        s = input_size / min(H, W)
        size = (max(1, round(H * s)), max(1, round(W * s)))
        x = F.interpolate(img01, size=size, mode="bilinear", align_corners=udp, antialias=s < 1 and not udp)
    h_in, w_in = x.shape[-2:]

    with torch.no_grad():
        if multi_person:
            hms, tags = estimator.heatmaps_and_tags(x)
        else:
            hms, tags = estimator.heatmaps(x), None
    # The heatmap grid (before cropping) spans the input padded to a multiple of 32 at stride 2.
    pad_w, pad_h = _round32(w_in), _round32(h_in)
    hm_w, hm_h = pad_w // 2, pad_h // 2

    frames = []
    for b in range(B):
        if multi_person:
            people_hm = group_by_tags(hms[b], tags[b], threshold=threshold, tag_threshold=tag_threshold,
                                      max_people=max_people, udp=udp, refine=method)
        else:
            people_hm = [_single_in_heatmap_coords(hms[b], method)]
        people = []
        for pts in people_hm:
            kp = np.zeros((pts.shape[0], 3), np.float32)
            ok = pts[:, 2] > threshold
            xi = heatmap_to_image(pts[:, 0], hm_w, pad_w, udp)  # -> resized-input pixel coordinates
            yi = heatmap_to_image(pts[:, 1], hm_h, pad_h, udp)
            kp[:, 0] = _rescale(xi, w_in, W, udp)
            kp[:, 1] = _rescale(yi, h_in, H, udp)
            kp[:, 2] = np.clip(pts[:, 2], 0.0, 1.0)
            kp[~ok] = 0.0
            if not ok.any():
                continue
            pose = Pose(kp, int(W), int(H), "coco17")
            if to_openpose18:
                from ..pose.keypoints import coco17_to_openpose18
                pose = coco17_to_openpose18(pose)
            people.append(pose)
        frames.append(PoseFrame(people=people, width=int(W), height=int(H)))
    return frames


def _single_in_heatmap_coords(hm: Tensor, method: str) -> np.ndarray:
    j, h, w = hm.shape
    vals, peak = hm.detach().reshape(j, -1).max(dim=1)
    idx = peak.cpu().numpy()
    xy = refine_peaks(hm, np.stack([np.arange(j), idx % w, idx // w], 1), method)
    return np.concatenate([xy, vals.float().cpu().numpy()[:, None]], 1).astype(np.float32)


def _rescale(x: np.ndarray, src_len: int, dst_len: int, udp: bool) -> np.ndarray:
    """Pixel-centre coordinates of an image resized from dst_len to src_len -> coordinates in dst_len."""
    if src_len == dst_len:
        return x
    if udp:
        return x * (dst_len - 1) / max(src_len - 1, 1)
    return (x + 0.5) * dst_len / src_len - 0.5


def _round32(n: int) -> int:
    return -(-n // 32) * 32


def _as_heatmaps(heatmaps) -> Tensor:
    if not isinstance(heatmaps, Tensor):
        raise InputError(f"heatmaps must be a torch.Tensor (J,h,w) or (B,J,h,w), got {type(heatmaps).__name__}")
    if heatmaps.ndim == 3:
        heatmaps = heatmaps[None]
    if heatmaps.ndim != 4 or heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise InputError(f"heatmaps must have shape (J,h,w) or (B,J,h,w), got {tuple(heatmaps.shape)}")
    return heatmaps
