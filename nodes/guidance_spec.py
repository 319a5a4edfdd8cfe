"""REPOSE_GUIDANCE: the GuidanceConfig of PoseGradientGuidance plus the estimator and target, turned into a
repose_core.guidance.PoseGuidance once the sampler knows the codec and the number of steps. No ComfyUI import."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..repose_core.guidance import GuidanceConfig, PoseGuidance
from ..repose_core.models.codec import Codec


@dataclass
class GuidanceSpec:
    """Pose guidance settings + the estimator, turned into a `PoseGuidance` once the codec and steps are known."""

    estimator: nn.Module
    estimator_patcher: Any
    target: Any                    # list[PoseFrame] (keypoint energy) or (B,3,H,W) image in [0,1] (feature energy)
    config: GuidanceConfig

    def build(self, codec: Codec, total_steps: int | None = None) -> PoseGuidance:
        target = self.target
        if self.config.energy == "keypoint" and isinstance(target, list) and len(target) == 1:
            target = target[0]  # one frame: the same target for every batch item
        return PoseGuidance(self.estimator, codec, target, self.config, total_steps=total_steps)
