"""Small stand-ins for the real networks, shared by several test modules (`from stand_ins import ...`; pytest puts
tests/ on the import path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repose_core.pose import COCO17


class TinyEstimator(nn.Module):
    """PoseEstimator stand-in: features (B, 16, H/4, W/4), heatmaps (B, 17, H/2, W/2), RGB [0, 1] input."""

    joints = COCO17

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Softplus(), nn.Conv2d(8, 16, 3, 2, 1), nn.Softplus())
        self.head = nn.Conv2d(16, 17, 3, 1, 1)
        with torch.no_grad():  # centre the joint sum on the mask threshold so W_h covers about half the image
            self.head.weight.mul_(4.0)
            s = self.heatmaps(torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(seed))).sum(1)
            self.head.bias.sub_((s.median() - 0.1) / 17)

    def features_and_heatmaps(self, img01):
        feats = self.stem(img01 - 0.5)
        heat = F.interpolate(self.head(feats), scale_factor=2, mode="bilinear", align_corners=False)
        return feats, heat

    def features(self, img01):
        return self.features_and_heatmaps(img01)[0]

    def heatmaps(self, img01):
        return self.features_and_heatmaps(img01)[1]
