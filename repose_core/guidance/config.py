"""GuidanceConfig: every setting of pose gradient guidance (paper Sec. 3.4, eq. 12-16) with its one set of defaults.

The same frozen object is a field of the model config (`RePoseConfig.guidance`, saved in every model file), what the
pipeline's `guidance=` dict overrides, what the PoseGradientGuidance node's widgets default to, and what
`PoseGuidance` reads. Not to be confused with classifier-free guidance (`diffusion/classifier_free.py`, the CFG scale
w_c of eq. 16), which is a sampling setting of the denoiser, not of the pose estimator.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import InputError

ENERGIES = ("keypoint", "feature")
SCHEDULES = ("constant", "eq15")
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class GuidanceConfig:
    """Settings of `PoseGuidance` (hook.py explains each schedule); validated on construction.

    Defaults: guide every step over the whole trajectory ([0, 1], every 1), the window the shipped default's η was
    chosen with (`python train/ablation.py sweep`); `bench/bench_guidance.py` prints what a cheaper window saves."""

    scale: float = 1.0                   # η: the x̂0 step along −∇G (0 switches guidance off)
    energy: str = "keypoint"             # "keypoint" (target joints) | "feature" (reference image, eq. 11)
    start: float = 0.0                   # active window, fractions of sampling progress: start <= p < end
    end: float = 1.0                     # (end >= 1 includes the last step)
    every: int = 1                       # guide only steps whose index is a multiple of this
    schedule: str = "constant"           # "constant": s = η | "eq15": s = η(1−ᾱ)/√ᾱ (paper eq. 15)
    reduction: str = "sum"               # "sum" (paper) | "mean" (η independent of resolution)
    clip_grad_norm: float | None = None  # rescale each sample's ∇G to at most this L2 norm
    estimator_size: int | None = None    # resize decoded x̂0 (longer side) for the estimator; None = as decoded
    heatmap_sigma: float | None = None   # Gaussian width (heatmap px) of keypoint targets; None = the estimator's
    threshold: float = 0.1               # τ of the heatmap masks W_h
    cfg_scale_gradient: bool = False     # multiply the step by w_c, as eq. 16 literally does

    def __post_init__(self):
        if self.energy not in ENERGIES:
            raise InputError(f"guidance energy must be one of {ENERGIES}, got {self.energy!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"guidance schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.reduction not in REDUCTIONS:
            raise InputError(f"guidance reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        for name in ("scale", "start", "end", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"guidance {name} must be a finite number, got {value!r}")
        if self.scale < 0:
            raise InputError(f"guidance scale must be finite and >= 0, got {self.scale}")
        if not (0.0 <= self.start <= self.end) or self.start > 1.0:
            raise InputError(f"guidance window needs 0 <= start <= end and start <= 1, got start={self.start}, "
                             f"end={self.end}")
        if isinstance(self.every, bool) or int(self.every) != self.every or self.every < 1:
            raise InputError(f"guidance 'every' must be an integer >= 1, got {self.every}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise InputError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")
        if self.estimator_size is not None and (int(self.estimator_size) != self.estimator_size
                                                or self.estimator_size < 32):
            raise InputError(f"estimator_size must be an integer >= 32 pixels (or None), got {self.estimator_size}")
        if self.heatmap_sigma is not None and not self.heatmap_sigma > 0:
            raise InputError(f"heatmap_sigma must be > 0 or None, got {self.heatmap_sigma}")
        object.__setattr__(self, "every", int(self.every))

    def replace(self, **changes) -> "GuidanceConfig":
        """A copy with `changes` (validated); an unknown setting is an InputError naming the accepted ones."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown guidance setting(s) {unknown}; accepted: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GuidanceConfig":
        return cls().replace(**data)


FIELDS = tuple(f.name for f in dataclasses.fields(GuidanceConfig))
