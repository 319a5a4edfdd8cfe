"""The ``PoseEstimator`` interface (docs/DESIGN.md, "Estimator") shared by HigherHRNet and the mmpose backend."""
from __future__ import annotations

from torch import Tensor, nn

from ..pose.keypoints import COCO17


class PoseEstimator(nn.Module):
    """A frozen, differentiable 2D pose network used for gradient guidance (RePoseDM Sec. 3.3).

    Inputs are RGB images in [0, 1], (B, 3, H, W), any size. Subclasses implement ``features_and_heatmaps``:
    backbone features (B, C, H/4, W/4) and aggregated joint heatmaps (B, J, H/2, W/2), in one forward pass.

    The estimator never leaves eval mode (``train()`` is a no-op that keeps BatchNorm on running statistics) and
    its parameters never require grad: guidance differentiates with respect to the image only.
    """

    joints: tuple[str, ...] = COCO17

    def freeze(self) -> "PoseEstimator":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "PoseEstimator":
        # Always eval, also when a wrapper module calls .train(): batch statistics would change every output.
        return super().train(False)

    def features_and_heatmaps(self, img01: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def features(self, img01: Tensor) -> Tensor:
        return self.features_and_heatmaps(img01)[0]

    def heatmaps(self, img01: Tensor) -> Tensor:
        return self.features_and_heatmaps(img01)[1]
