"""Image-quality and pose-accuracy metrics by PIDM's evaluation protocol (PIDM utils/metrics.py).

Images are float tensors (B, 3, H, W) RGB in [0, 1]; PIDM evaluates at 176x256 (W x H).

- SSIM: skimage's `structural_similarity` as PIDM calls it, re-implemented in torch (no scipy/skimage needed):
  `ssim(..., window="uniform")` = `compare_ssim(win_size=51, multichannel=True, data_range=1)`: a 51x51 *uniform*
  window, sample covariance (N/(N-1)), K1=0.01, K2=0.03, the per-channel SSIM map averaged over the pixels at least
  25 px from the border (skimage crops (win-1)/2), then over channels. `window="gaussian"` = PIDM's "SSIM_256"
  (`gaussian_weights=True, sigma=1.2, use_sample_covariance=False`): a 9x9 Gaussian (truncated at 3.5σ),
  population covariance. Both match skimage to float precision because the cropped border makes the padding mode
  irrelevant. Not kornia.metrics.ssim, whose Gaussian window and border handling give other numbers.
- L1 (mean absolute error in [0, 1]), PSNR (data range 1).
- FID: Fréchet distance between Gaussians fitted to Inception pool3 (2048-d) features (`frechet_distance`); the
  feature extractor is an injected callable (see train/eval.py for the torchmetrics InceptionV3 with local weights).
- Pose accuracy: PCK@α (a detected joint is correct if within α·size of the ground truth; size = the longer side of
  the ground-truth keypoint bounding box, or the torso length) and mean keypoint error in pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

SSIM_WINDOWS = ("uniform", "gaussian")
PCK_NORMS = ("bbox", "torso")
PIDM_EVAL_SIZE = (256, 176)   # (H, W) PIDM resizes every image to before computing metrics


def _check_images(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise InputError(f"{name}: expected two image batches (B, C, H, W) of equal shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def _gaussian_kernel1d(sigma: float, truncate: float = 3.5) -> Tensor:
    """scipy.ndimage.gaussian_filter's kernel as skimage uses it: radius int(truncate·σ + 0.5), normalised."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter_valid(x: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable correlation with no padding: (B, C, H, W) -> (B, C, H-k+1, W-k+1)."""
    C = x.shape[1]
    k = kernel1d.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def ssim(x: Tensor, y: Tensor, *, window: str = "uniform", win_size: int = 51, sigma: float = 1.2,
         data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM per image, (B,), skimage-compatible (module docstring). x, y (B, C, H, W) in [0, data_range].

    window="uniform": win_size x win_size box, sample covariance (PIDM's SSIM, win_size 51).
    window="gaussian": Gaussian of `sigma` truncated at 3.5σ, population covariance (PIDM's SSIM_256)."""
    _check_images(x, y, "ssim")
    if window not in SSIM_WINDOWS:
        raise InputError(f"ssim window must be one of {SSIM_WINDOWS}, got {window!r}")
    x, y = x.double(), y.double()
    if window == "uniform":
        if win_size < 3 or win_size % 2 == 0:
            raise InputError(f"ssim win_size must be odd and >= 3, got {win_size}")
        kernel = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64)
        n = win_size * win_size
        cov_norm = n / (n - 1)              # skimage use_sample_covariance=True
    else:
        kernel = _gaussian_kernel1d(sigma)
        cov_norm = 1.0
    k = kernel.numel()
    H, W = x.shape[-2:]
    if H < k or W < k:
        raise InputError(f"ssim: images of {H}x{W} are smaller than the {k}x{k} window; evaluate at PIDM's 256x176")
    ux, uy = _filter_valid(x, kernel), _filter_valid(y, kernel)
    uxx, uyy, uxy = _filter_valid(x * x, kernel), _filter_valid(y * y, kernel), _filter_valid(x * y, kernel)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).float()     # valid region = skimage's cropped map; then mean over channels


def l1(x: Tensor, y: Tensor) -> Tensor:
    """Mean absolute error per image, (B,)."""
    _check_images(x, y, "l1")
    return (x.float() - y.float()).abs().mean(dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image, (B,); identical images give +inf."""
    _check_images(x, y, "psnr")
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def resize_for_eval(img: Tensor, size=PIDM_EVAL_SIZE) -> Tensor:
    """(B, 3, h, w) -> (B, 3, H, W) bicubic (PIDM resizes generated 256x256 images to 176x256), clamped to [0, 1]."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img.float(), size=tuple(size), mode="bicubic", align_corners=False,
                         antialias=True).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# FID


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mean (D,), covariance (D, D)) in float64, covariance with N-1 (numpy.cov)."""
    f = np.asarray(features.detach().cpu().double() if isinstance(features, Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"FID needs at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)  (Heusel et al. 2017).

    tr((Σ1 Σ2)^½) = Σ √λ_i(√Σ1 Σ2 √Σ1): the eigenvalues of a symmetric PSD matrix, computed with eigh in float64 —
    no scipy.linalg.sqrtm, and no complex parts from round-off."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise InputError(f"frechet_distance: shapes mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape} differ")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# ----------------------------------------------------------------------------------------------------------------
# Pose accuracy

# OpenPose-18 / COCO-17 indices of the torso ends used for "torso" normalisation (neck/shoulders and hips).
_TORSO = {17: ((5, 6), (11, 12)), 18: ((2, 5), (8, 11))}


def _norm_size(gt: np.ndarray, norm: str) -> float:
    vis = gt[:, 2] > 0
    if vis.sum() < 2:
        return float("nan")
    if norm == "bbox":
        pts = gt[vis, :2]
        return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])))
    shoulders, hips = _TORSO[gt.shape[0]]
    if not (vis[list(shoulders)].all() and vis[list(hips)].all()):
        return float("nan")
    return float(np.linalg.norm(gt[list(shoulders), :2].mean(0) - gt[list(hips), :2].mean(0)))


def pose_accuracy(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.1, norm: str = "bbox") -> dict:
    """PCK@alpha and mean keypoint error of predicted vs ground-truth keypoints.

    pred, gt: (N, J, 3) (x, y, confidence) in the same pixel frame and joint layout; joints with gt confidence 0 are
    not counted; a joint the prediction misses (confidence 0) counts as wrong for PCK and is left out of the error.
    Images whose normalising size is undefined (< 2 gt joints, or no torso for "torso") are skipped.
    Returns {"pck", "mean_error_px", "detected_fraction", "joints", "images"}."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise InputError(f"pose_accuracy: pred {pred.shape} and gt {gt.shape} must both be (N, J, 3)")
    if norm not in PCK_NORMS:
        raise InputError(f"pose_accuracy norm must be one of {PCK_NORMS}, got {norm!r}")
    if norm == "torso" and gt.shape[1] not in _TORSO:
        raise InputError(f"torso normalisation needs COCO-17 or OpenPose-18 joints, got {gt.shape[1]}")
    correct = counted = detected = 0
    errors, images = [], 0
    for p, g in zip(pred, gt):
        size = _norm_size(g, norm)
        if not math.isfinite(size) or size <= 0:
            continue
        images += 1
        for j in np.flatnonzero(g[:, 2] > 0):
            counted += 1
            if p[j, 2] <= 0:
                continue
            detected += 1
            d = float(np.linalg.norm(p[j, :2] - g[j, :2]))
            errors.append(d)
            correct += d <= alpha * size
    nan = float("nan")
    return {"pck": correct / counted if counted else nan, "mean_error_px": float(np.mean(errors)) if errors else nan,
            "detected_fraction": detected / counted if counted else nan, "joints": counted, "images": images}
