"""REPOSE_GUIDANCE: the settings of PoseGradientGuidance plus the estimator, turned into a
repose_core.guidance.PoseGuidance once the sampler knows the codec and the number of steps. No ComfyUI import."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..repose_core.guidance import PoseGuidance
from ..repose_core.models.codec import Codec


@dataclass
class GuidanceSpec:
    """Pose guidance settings + the estimator, turned into a `PoseGuidance` once the codec and steps are known."""

    estimator: nn.Module
    estimator_patcher: Any
    target: Any                    # list[PoseFrame] (keypoint energy) or (B,3,H,W) image in [0,1] (feature energy)
    energy: str = "keypoint"
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    every: int = 1
    clip_grad_norm: float | None = None
    estimator_size: int | None = None
    schedule: str = "constant"

    def build(self, codec: Codec, total_steps: int | None = None) -> PoseGuidance:
        target = self.target
        if self.energy == "keypoint" and isinstance(target, list) and len(target) == 1:
            target = target[0]  # one frame: the same target for every batch item
        # Gaussian targets as wide as the estimator's training targets (SmallHRNet stores its sigma), so the
        # keypoint energy is minimal at the target pose.
        sigma = float(getattr(getattr(self.estimator, "config", None), "sigma", 2.0))
        return PoseGuidance(self.estimator, codec, target, energy=self.energy, scale=self.scale, start=self.start,
                            end=self.end, every=self.every, clip_grad_norm=self.clip_grad_norm,
                            estimator_size=self.estimator_size, total_steps=total_steps, schedule=self.schedule,
                            sigma=sigma)
