"""Pose Interaction Field energies G(P̃) (paper Sec. 3.3, eq. 11).

All energies take the predicted image `pred01` (B, 3, H, W) RGB in [0, 1], are differentiable w.r.t. it and return one
value per sample, shape (B,). The estimator follows `repose_core.estimator.PoseEstimator`: `features(img01)`
(B, C, H/4, W/4), `heatmaps(img01)` (B, 17, H/2, W/2), `features_and_heatmaps(img01)`.

`reduction`: "sum" is the paper's Σ (its value grows with resolution and channel count, so the guidance scale η that
works depends on the estimator input size); "mean" divides by the number of summed elements (C·h·w), which makes η
independent of resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .config import REDUCTIONS
from .targets import KeypointTarget, expand_batch



def heatmap_mask(heatmaps: Tensor, threshold: float = 0.1) -> Tensor:
    """W_h = 1[Σ_j H_j > threshold]: (B, J, h, w) -> (B, 1, h, w) in the heatmaps' dtype, detached.

    Paper Sec. 3.3: "summing and thresholding (threshold = 0.1) the heat maps across the joints give the heat map mask
    H_M which served as the weight W_h". A hard threshold has no gradient, so it is detached explicitly."""
    if heatmaps.ndim != 4:
        raise InputError(f"heatmaps must be (B, J, h, w), got shape {tuple(heatmaps.shape)}")
    return (heatmaps.detach().sum(dim=1, keepdim=True) > threshold).to(heatmaps.dtype)


def _reduce(weighted_sq: Tensor, reduction: str) -> Tensor:
    """(B, C, h, w) -> (B,)."""
    if reduction == "sum":
        return weighted_sq.sum(dim=(1, 2, 3))
    if reduction == "mean":
        return weighted_sq.mean(dim=(1, 2, 3))
    raise InputError(f"energy reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_image(img01: Tensor, name: str) -> None:
    if img01.ndim != 4 or img01.shape[1] != 3:
        raise InputError(f"{name} must be an RGB image batch (B, 3, H, W) in [0, 1], got shape {tuple(img01.shape)}")


@torch.no_grad()
def reference_features(estimator, ref01: Tensor) -> Tensor:
    """Backbone features B(P_ref) of the reference image, without grad (computed once, reused at every step)."""
    _check_image(ref01, "reference image")
    return estimator.features(ref01).detach()


def feature_energy(estimator, pred01: Tensor, ref01: Tensor | None = None, threshold: float = 0.1, *,
                   ref_features: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """Eq. 11: G = Σ W_h · ‖B(P̃) − B(P_ref)‖²  -> (B,).

    B = estimator backbone features (B, C, H/4, W/4). W_h = heatmap_mask of the estimator heatmaps of the *prediction*
    (the error is counted where the diffusion model drew a person), resized to the feature resolution with nearest
    neighbour. Reference features come from `ref01` (same size as `pred01`, batch 1 or B) without grad, or precomputed
    via `ref_features` (cache them: the reference does not change across sampling steps)."""
    _check_image(pred01, "predicted image")
    if ref_features is None:
        if ref01 is None:
            raise InputError("feature_energy needs the reference image `ref01` or its precomputed `ref_features`")
        if ref01.shape[-2:] != pred01.shape[-2:]:
            raise InputError(f"reference image {tuple(ref01.shape[-2:])} and prediction {tuple(pred01.shape[-2:])} "
                             f"must have the same size (H, W); resize the reference first")
        ref_features = reference_features(estimator, ref01)
    feats, heatmaps = estimator.features_and_heatmaps(pred01)  # (B, C, H/4, W/4), (B, J, H/2, W/2)
    if ref_features.shape[1:] != feats.shape[1:]:
        raise InputError(f"reference features {tuple(ref_features.shape[1:])} do not match the prediction's "
                         f"{tuple(feats.shape[1:])}; the reference must be computed at the same image size")
    ref_features = expand_batch(ref_features.to(feats.dtype), feats.shape[0], "reference image")
    mask = F.interpolate(heatmap_mask(heatmaps, threshold), size=feats.shape[-2:], mode="nearest")  # (B, 1, h, w)
    return _reduce(mask * (feats - ref_features) ** 2, reduction)


def keypoint_energy(estimator, pred01: Tensor, target_heatmaps: Tensor | KeypointTarget, threshold: float = 0.1, *,
                    joint_weights: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """Keypoint Pose Interaction Field for inference (no target image): G = Σ W · (H(P̃) − G_target)²  -> (B,).

    H(P̃): estimator heatmaps (B, 17, h, w) of the prediction; G_target: Gaussian heatmaps at the target keypoints at
    the same resolution (a tensor (B|1, 17, h, w), or a `KeypointTarget` rendered at the heatmap size).

    Mask (our choice, documented): W = 1[Σ_j H_j(P̃) > τ] ∪ 1[Σ_j G_target,j > τ]. The paper's W_h (prediction only)
    would ignore a limb that the model has not drawn yet; adding the target's support pulls missing limbs in, while the
    prediction's support pushes limbs drawn in the wrong place out. `joint_weights` (B|1, 17) drops joints the target
    does not know (a KeypointTarget supplies them: confidence 0 -> weight 0)."""
    _check_image(pred01, "predicted image")
    heatmaps = estimator.heatmaps(pred01)  # (B, J, h, w)
    B, J, h, w = heatmaps.shape
    if isinstance(target_heatmaps, KeypointTarget):
        if joint_weights is None:
            joint_weights = target_heatmaps.joint_weights(B)
        target_heatmaps = target_heatmaps.heatmaps(B, h, w, (pred01.shape[-2], pred01.shape[-1]), heatmaps.device,
                                                   heatmaps.dtype)
    if target_heatmaps.ndim != 4 or tuple(target_heatmaps.shape[1:]) != (J, h, w):
        raise InputError(f"target heatmaps {tuple(target_heatmaps.shape)} must be (B, {J}, {h}, {w}) to match the "
                         f"estimator heatmaps of the prediction; render them at the estimator resolution")
    target = expand_batch(target_heatmaps.to(device=heatmaps.device, dtype=heatmaps.dtype), B, "target heatmaps")
    mask = torch.maximum(heatmap_mask(heatmaps, threshold), heatmap_mask(target, threshold))  # (B, 1, h, w)
    sq = mask * (heatmaps - target) ** 2  # (B, J, h, w)
    if joint_weights is not None:
        jw = expand_batch(joint_weights.to(device=sq.device, dtype=sq.dtype), B, "joint weights")
        sq = sq * jw[:, :, None, None]
    return _reduce(sq, reduction)
