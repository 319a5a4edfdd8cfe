"""A small HigherHRNet-style estimator for low-resolution figures (the estimator the pack ships, a few hundred kB).

`HigherHRNet` (higherhrnet.py) is the published architecture at widths 32/48 (28-64M parameters); it is far too big
to ship in the repository and too slow to train on a CPU. `SmallHRNet` keeps HigherHRNet's design with its own
building blocks (BasicBlock, HRModule exchange units, transitions, the higher-resolution deconvolution head and the
multi-resolution heatmap aggregation) at a small width and depth:

    stem     two stride-2 3x3 convs + one BasicBlock                      -> 1/4
    stage 2  branches 1/4, 1/8                (1 exchange unit)
    stage 3  branches 1/4, 1/8, 1/16          (`num_modules` exchange units, fused into the 1/4 branch)
    head     out0 = 1x1 conv on the 1/4 feature (J heatmaps); deconv(feature ⊕ out0) -> 1/2, a BasicBlock, out1
             heatmaps = (upsample(out0) + out1) / 2                      (HigherHRNet's aggregation)

It shares `PoseEstimator`'s steps with `HigherHRNet` (RGB [0, 1] in, ImageNet normalisation, right/bottom
padding, features at 1/4 and aggregated heatmaps at 1/2 cropped to ceil(H/s) x ceil(W/s)), so `estimate_poses`,
the guidance energies and `PoseGuidance` use it unchanged. Single person: no associative-embedding tags.

Files: `save_model(path, model, "pose_estimator")` writes our safetensors (builder "small_hrnet");
`repose_core.estimator.build_estimator(path)` reads them back (weights created outside inference mode, frozen).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..pose.keypoints import COCO17
from .higherhrnet import (
    BasicBlock, HRNetBody, _apply_transition, _bn, _make_blocks, _make_stage, _make_transition,
)

ARCH = "small_hrnet"
BUILDER = "small_hrnet"
SIZE_MULTIPLE = 16  # the lowest branch runs at stride 16


@dataclass(frozen=True)
class SmallHRNetConfig:
    """width: channels of the 1/4 branch (1/8 and 1/16 get 2x and 4x). stem: channels of the stride-2 stem convs.
    num_modules: exchange units of stage 3. num_blocks: BasicBlocks per branch and unit.
    input_size: the short side the network was trained at; `estimate_poses` resizes images to it.
    sigma: Gaussian sigma (pixels of the 1/2-resolution heatmap) of the training targets; guidance targets should
    use the same value so that the keypoint energy is zero at a perfect pose."""

    width: int = 16
    stem: int = 32
    num_modules: int = 2
    num_blocks: int = 2
    num_joints: int = 17
    input_size: int = 44
    sigma: float = 1.0
    udp: bool = False

    def __post_init__(self):
        for name in ("width", "stem", "num_modules", "num_blocks", "num_joints", "input_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"SmallHRNetConfig.{name} must be a positive integer, got {v!r}")
        if self.udp:
            raise InputError("SmallHRNetConfig.udp=True is not supported (the network is trained without UDP)")
        if not self.sigma > 0:
            raise InputError(f"SmallHRNetConfig.sigma must be > 0, got {self.sigma!r}")

    @property
    def branch_channels(self) -> tuple[int, int, int]:
        return (self.width, 2 * self.width, 4 * self.width)

    def to_dict(self) -> dict:
        return dict(asdict(self), arch=ARCH)

    @classmethod
    def from_dict(cls, d: dict) -> "SmallHRNetConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class SmallHRNet(HRNetBody):
    """Small single-person HigherHRNet-style estimator (module docstring). Frozen and in eval mode once built;
    training scripts switch it with `trainable()`."""

    checkpoint_builder = BUILDER
    joints: tuple[str, ...] = COCO17
    size_multiple = SIZE_MULTIPLE

    def __init__(self, config: SmallHRNetConfig = SmallHRNetConfig()):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.branch_channels
        s, nb, j = config.stem, config.num_blocks, config.num_joints
        if j != len(COCO17):
            self.joints = tuple(f"joint_{i}" for i in range(j))
        self.conv1 = nn.Conv2d(3, s, 3, 2, 1, bias=False)
        self.bn1 = _bn(s)
        self.conv2 = nn.Conv2d(s, s, 3, 2, 1, bias=False)
        self.bn2 = _bn(s)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = _make_blocks(BasicBlock, s, s, 1)
        self.transition1 = _make_transition((s,), (c1, c2))
        self.stage2 = _make_stage(1, BasicBlock, (nb, nb), (c1, c2), (c1, c2))
        self.transition2 = _make_transition((c1, c2), (c1, c2, c3))
        self.stage3 = _make_stage(config.num_modules, BasicBlock, (nb, nb, nb), (c1, c2, c3), (c1, c2, c3),
                                  multiscale_output=False)
        self.final_layers = nn.ModuleList([nn.Conv2d(c1, j, 1), nn.Conv2d(c1, j, 1)])
        deconv = nn.Sequential(nn.ConvTranspose2d(c1 + j, c1, 4, stride=2, padding=1, bias=False), _bn(c1),
                               nn.ReLU(inplace=False))
        self.deconv_layers = nn.ModuleList([nn.Sequential(deconv, BasicBlock(c1, c1))])
        self.freeze()

    def trainable(self) -> "SmallHRNet":
        """Parameters require grad and BatchNorm uses batch statistics (training scripts only)."""
        for p in self.parameters():
            p.requires_grad_(True)
        nn.Module.train(self, True)  # PoseEstimator.train() is a no-op on purpose
        return self

    def stages(self, xs: list[Tensor]) -> Tensor:
        """Stages 2-3 on the stem's branches (input sides multiples of 16) -> the 1/4 branch of stage 3."""
        xs = self.stage2(xs)
        xs = _apply_transition(self.transition2, xs)
        return self.stage3(xs)[0]

    # PoseEstimator interface: normalise, pad, aggregate and crop come from the base class.


def build_small_hrnet(config: dict) -> SmallHRNet:
    """Checkpoint builder: a fresh SmallHRNet (weights created outside inference mode, so guidance can use them)."""
    with torch.inference_mode(False):
        return SmallHRNet(SmallHRNetConfig.from_dict(config))


def _register() -> None:
    from ..checkpoint import register_model

    register_model("pose_estimator", build_small_hrnet, name=BUILDER)


_register()
