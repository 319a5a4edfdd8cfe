"""HigherHRNet (Cheng et al., CVPR 2020) in plain PyTorch: HRNet backbone + higher-resolution AE head.

The module tree reproduces the original HRNet/HigherHRNet-Human-Pose-Estimation ``PoseHigherResolutionNet``
key-for-key (``conv1``, ``layer1``, ``transition1``, ``stage2`` ... ``final_layers``, ``deconv_layers``; no prefix),
so original-repo checkpoints load as they are. mmpose 0.29 checkpoints are the same keys behind a ``backbone.`` /
``keypoint_head.`` prefix; ``loading.py`` maps between the two.

Used as a frozen, differentiable pose estimator for RePoseDM's gradient guidance (paper Sec. 3.3): the guidance
energy compares estimator heatmaps / features of the predicted x̂0 with those of the target pose.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..pose.keypoints import COCO17
from .base import IMAGENET_MEAN, IMAGENET_STD, PoseEstimator, crop  # noqa: F401 (IMAGENET_*: re-exported)

BN_MOMENTUM = 0.1
# The four HRNet branches run at strides 4, 8, 16, 32: network inputs must be multiples of 32.
SIZE_MULTIPLE = 32


MAX_WIDTH = 256  # channels of the highest-resolution branch; W48 is the largest released model


@dataclass(frozen=True)
class HigherHRNetConfig:
    """What identifies a HigherHRNet checkpoint.

    width: HRNet width (released: 32 or 48; any width builds, e.g. the W8 test fixture) = channels of the highest-resolution branch.
    input_size: training resolution (512 or 640); the network accepts any multiple of 32, this is the short-side
        size ``estimate_poses`` resizes images to.
    udp: trained with Unbiased Data Processing (Huang et al., CVPR 2020). Same network; decoding and the
        out0 -> out1 resize use the align-corners coordinate convention.
    """

    width: int = 32
    num_joints: int = 17
    input_size: int = 512
    udp: bool = False
    tag_per_joint: bool = True

    def __post_init__(self):
        if not isinstance(self.width, int) or not 1 <= self.width <= MAX_WIDTH:
            raise InputError(f"HigherHRNetConfig.width={self.width!r} must be an integer in 1..{MAX_WIDTH} "
                             f"(released models: 32, 48)")
        if self.num_joints < 1:
            raise InputError(f"HigherHRNetConfig.num_joints={self.num_joints!r} must be >= 1")
        if self.input_size <= 0 or self.input_size % SIZE_MULTIPLE:
            raise InputError(
                f"HigherHRNetConfig.input_size={self.input_size!r} must be a positive multiple of {SIZE_MULTIPLE} "
                "(e.g. 512 or 640)")

    @property
    def branch_channels(self) -> tuple[int, ...]:
        return tuple(self.width * 2 ** i for i in range(4))

    @property
    def out0_channels(self) -> int:
        """Low-resolution head output: J heatmaps + J tags (tag per joint) or + 1 shared tag."""
        return self.num_joints * 2 if self.tag_per_joint else self.num_joints + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HigherHRNetConfig":
        known = {k: d[k] for k in ("width", "num_joints", "input_size", "udp", "tag_per_joint") if k in d}
        return cls(**known)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-5, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_blocks(block, cin: int, planes: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """A run of residual blocks; the first one gets a 1x1 conv+BN shortcut when the shape changes."""
    downsample = None
    if stride != 1 or cin != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                   _bn(planes * block.expansion))
    layers = [block(cin, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel branches followed by all-to-all fusion (HRNet exchange unit).

    Fusion into branch i: higher-resolution inputs j < i go through (i - j) stride-2 3x3 conv+BN (ReLU on all
    but the last); lower-resolution inputs j > i go through 1x1 conv+BN at their own resolution, then nearest
    upsampling by 2^(j-i). The terms are summed and passed through ReLU.
    """

    def __init__(self, block, num_blocks: tuple[int, ...], in_channels: tuple[int, ...],
                 channels: tuple[int, ...], multiscale_output: bool = True):
        super().__init__()
        self.num_branches = len(channels)
        self.multiscale_output = multiscale_output
        self.branches = nn.ModuleList(
            _make_blocks(block, in_channels[i], channels[i], num_blocks[i]) for i in range(self.num_branches))
        out_ch = [c * block.expansion for c in channels]
        self.out_channels = tuple(out_ch)
        self.fuse_layers = self._make_fuse_layers(out_ch) if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=False)

    def _make_fuse_layers(self, ch: list[int]) -> nn.ModuleList:
        n = self.num_branches
        fuse = nn.ModuleList()
        for i in range(n if self.multiscale_output else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(ch[j], ch[i], 1, bias=False), _bn(ch[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)  # type: ignore[arg-type]  # placeholder keeps row[j] indexed by branch
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(_conv3x3(ch[j], ch[i], 2), _bn(ch[i])))
                        else:
                            steps.append(nn.Sequential(_conv3x3(ch[j], ch[j], 2), _bn(ch[j]), nn.ReLU(inplace=False)))
                    row.append(nn.Sequential(*steps))
            fuse.append(row)
        return fuse

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            row = cast(nn.ModuleList, row)  # each row is a ModuleList (_make_fuse_layers)
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            fused.append(self.relu(y))
        return fused


def _make_transition(pre: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Branch adapters between stages. Existing branches keep their tensor (None) or get a 3x3 conv when the
    width changes; every new branch is made from the LAST previous branch by a chain of stride-2 convs."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            if c != pre[i]:
                layers.append(nn.Sequential(_conv3x3(pre[i], c), _bn(c), nn.ReLU(inplace=False)))
            else:
                layers.append(None)  # type: ignore[arg-type]  # the branch keeps its tensor; keeps layers[i] aligned
        else:
            steps = []
            for k in range(i + 1 - len(pre)):
                cin = pre[-1]
                cout = c if k == i - len(pre) else cin
                steps.append(nn.Sequential(_conv3x3(cin, cout, 2), _bn(cout), nn.ReLU(inplace=False)))
            layers.append(nn.Sequential(*steps))
    return layers


def _make_stage(num_modules: int, block, num_blocks, in_channels, channels, multiscale_output=True) -> nn.Sequential:
    modules = []
    for m in range(num_modules):
        last = m == num_modules - 1
        mod = HRModule(block, num_blocks, in_channels, channels, multiscale_output or not last)
        in_channels = mod.out_channels
        modules.append(mod)
    return nn.Sequential(*modules)


class HRNetBody(PoseEstimator):
    """What HigherHRNet and SmallHRNet share (their ``__init__`` builds the modules under these names): the stem
    (two stride-2 convs, ``layer1``, ``transition1`` into the first branches), the two-resolution head
    (``final_layers[0]`` on the 1/4 feature, ``final_layers[1]`` after ``deconv_layers[0]`` at 1/2) and
    ``forward_raw``. A subclass adds ``stages``: its HRNet stages 2..N, ending in the highest-resolution branch."""

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d
    relu: nn.ReLU
    layer1: nn.Sequential
    transition1: nn.ModuleList
    final_layers: nn.ModuleList
    deconv_layers: nn.ModuleList

    def stem(self, x: Tensor) -> list[Tensor]:
        """(B,3,H,W) normalised -> the first parallel branches (1/4 and 1/8 resolution)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        return [t(x) if t is not None else x for t in self.transition1]

    def stages(self, xs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def backbone(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised -> highest-resolution HRNet feature (B, width, H/4, W/4)."""
        return self.stages(self.stem(x))

    def head(self, feat: Tensor) -> list[Tensor]:
        """feature (B,w,H/4,W/4) -> [out0 (B, out0 channels, H/4, W/4), out1 (B, J, H/2, W/2)]."""
        out0 = self.final_layers[0](feat)
        x = self.deconv_layers[0](torch.cat([feat, out0], dim=1))  # (B, w+out0, H/4, W/4) -> (B, w, H/2, W/2)
        return [out0, self.final_layers[1](x)]

    def forward_raw(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Normalised input (B,3,H,W), H and W multiples of ``size_multiple`` -> (1/4 feature, [out0, out1])."""
        self.check_padded(x)
        feat = self.backbone(x)
        return feat, self.head(feat)

    forward = forward_raw


class HigherHRNet(HRNetBody):
    """HigherHRNet as a frozen ``PoseEstimator`` (see docs/DESIGN.md, "Estimator").

    ``forward_raw`` is the bare network on a normalised input (H, W multiples of 32). The high-level methods take
    RGB in [0, 1] of any size, apply ImageNet normalisation, pad right/bottom to a multiple of 32 and crop the
    outputs back to ceil(H/stride) x ceil(W/stride).

    The estimator always stays in eval mode (BatchNorm on running statistics) with ``requires_grad=False``
    parameters: guidance differentiates w.r.t. the image only, and a wrapper calling ``.train()`` must not switch
    BatchNorm to batch statistics.
    """

    size_multiple = SIZE_MULTIPLE

    def __init__(self, config: HigherHRNetConfig = HigherHRNetConfig()):
        super().__init__()
        self.config = config
        ch = config.branch_channels
        if config.num_joints != len(COCO17):
            self.joints = tuple(f"joint_{i}" for i in range(config.num_joints))

        # Stem: two stride-2 convs -> 1/4 resolution, then 4 Bottlenecks (stage 1).
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = _make_blocks(Bottleneck, 64, 64, 4)

        self.transition1 = _make_transition((256,), ch[:2])
        self.stage2 = _make_stage(1, BasicBlock, (4, 4), ch[:2], ch[:2])
        self.transition2 = _make_transition(ch[:2], ch[:3])
        self.stage3 = _make_stage(4, BasicBlock, (4, 4, 4), ch[:3], ch[:3])
        self.transition3 = _make_transition(ch[:3], ch)
        self.stage4 = _make_stage(3, BasicBlock, (4, 4, 4, 4), ch, ch, multiscale_output=False)

        # Head: final_layers[0] on the 1/4 feature (heatmaps + tags), final_layers[1] on the 1/2 deconv output.
        w, j = config.width, config.num_joints
        self.final_layers = nn.ModuleList([nn.Conv2d(w, config.out0_channels, 1), nn.Conv2d(w, j, 1)])
        deconv = nn.Sequential(
            nn.ConvTranspose2d(w + config.out0_channels, w, 4, stride=2, padding=1, output_padding=0, bias=False),
            _bn(w), nn.ReLU(inplace=False))
        blocks = [nn.Sequential(BasicBlock(w, w)) for _ in range(4)]
        self.deconv_layers = nn.ModuleList([nn.Sequential(deconv, *blocks)])

        self.freeze()

    def stages(self, xs: list[Tensor]) -> Tensor:
        """Stages 2-4 (1, 4 and 3 HR modules) on the stem's branches -> the 1/4 branch of stage 4."""
        xs = self.stage2(xs)
        xs = _apply_transition(self.transition2, xs)
        xs = self.stage3(xs)
        xs = _apply_transition(self.transition3, xs)
        return self.stage4(xs)[0]

    # --- PoseEstimator interface: normalise, pad, aggregate and crop come from the base class -------------------
    def heatmaps_and_tags(self, img01: Tensor) -> tuple[Tensor, Tensor]:
        """Aggregated heatmaps (B,J,h2,w2) and AE tags (B,T,h2,w2) resized to the heatmap grid (for grouping)."""
        _, outs = self.raw_outputs(img01)
        h, w = img01.shape[-2:]
        hm = self.aggregate(outs)
        tags = F.interpolate(outs[0][:, self.config.num_joints:], size=hm.shape[-2:], mode="bilinear",
                             align_corners=self.config.udp)
        return crop(hm, h, w, 2), crop(tags, h, w, 2)


def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
    """New branches (index >= len(xs)) are computed from the last existing branch."""
    return [xs[i] if t is None else t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]
