"""The ``PoseEstimator`` interface (docs/DESIGN.md, "Estimator") shared by HigherHRNet, SmallHRNet and the mmpose
backend, with the steps every HigherHRNet-style network shares: ImageNet normalisation, right/bottom padding to the
network's size multiple, the multi-resolution heatmap aggregation and the crop back to the input's grid."""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..pose.keypoints import COCO17

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HeatmapConfig(Protocol):
    """What ``aggregate`` reads from a HigherHRNet-style subclass's ``config``."""

    @property
    def num_joints(self) -> int: ...

    @property
    def udp(self) -> bool: ...


class PoseEstimator(nn.Module):
    """A frozen, differentiable 2D pose network used for gradient guidance (RePoseDM Sec. 3.3).

    Inputs are RGB images in [0, 1], (B, 3, H, W), any size: ``features_and_heatmaps`` returns backbone features
    (B, C, ceil(H/4), ceil(W/4)) and aggregated joint heatmaps (B, J, ceil(H/2), ceil(W/2)) in one forward pass.

    HigherHRNet-style subclasses implement ``forward_raw`` (the bare network on a normalised input whose sides are
    multiples of ``size_multiple``, returning the 1/4 feature and the head outputs [out0 at 1/4, out1 at 1/2]) and
    carry a ``config`` with ``num_joints`` and ``udp``; this class does the rest. Other backends override
    ``features_and_heatmaps`` and ``features``.

    The estimator never leaves eval mode (``train()`` is a no-op that keeps BatchNorm on running statistics) and
    its parameters never require grad: guidance differentiates with respect to the image only.
    """

    joints: tuple[str, ...] = COCO17
    size_multiple: int = 32  # stride of the lowest-resolution branch: network input sides are multiples of it
    config: HeatmapConfig  # set by HigherHRNet-style subclasses (see above); other backends do not have one

    def freeze(self) -> "PoseEstimator":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "PoseEstimator":
        # Always eval, also when a wrapper module calls .train(): batch statistics would change every output.
        return super().train(False)

    # --- the bare network (subclasses) ----------------------------------------------------------------------------
    def forward_raw(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def check_padded(self, x: Tensor) -> None:
        """``forward_raw``'s input check: H and W must be multiples of ``size_multiple``."""
        check_image(x, f"{type(self).__name__} forward_raw input")
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise InputError(
                f"{type(self).__name__}.forward_raw got an input of size H={h}, W={w}; the network needs H and W to "
                f"be multiples of {m} (e.g. {round_up(h, m)}x{round_up(w, m)}). Pad the input, or use "
                "features()/heatmaps(), which pad and crop automatically.")

    # --- shared steps -----------------------------------------------------------------------------------------------
    def normalise(self, img01: Tensor) -> Tensor:
        """RGB [0,1] -> ImageNet-normalised network input (the statistics both reference codebases use)."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=img01.dtype, device=img01.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=img01.dtype, device=img01.device).view(1, 3, 1, 1)
        return (img01 - mean) / std

    def pad(self, x: Tensor) -> Tensor:
        """Right/bottom zero padding to multiples of ``size_multiple``. Zero in normalised space is the ImageNet
        mean colour, and padding right/bottom leaves coordinates unchanged."""
        h, w = x.shape[-2:]
        ph, pw = round_up(h, self.size_multiple) - h, round_up(w, self.size_multiple) - w
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def raw_outputs(self, img01: Tensor) -> tuple[Tensor, list[Tensor]]:
        """RGB [0,1] of any size -> (feature, [out0, out1]) on the padded grid."""
        check_image(img01, f"{type(self).__name__} image")
        return self.forward_raw(self.pad(self.normalise(img01)))

    def aggregate(self, outs: list[Tensor]) -> Tensor:
        """HigherHRNet's multi-resolution heatmap aggregation: mean of the upsampled out0 heatmaps (its first J
        channels; the rest are AE tags) and out1. UDP models resize with the align-corners convention."""
        out0, out1 = outs
        j, udp = self.config.num_joints, self.config.udp
        up = F.interpolate(out0[:, :j], size=out1.shape[-2:], mode="bilinear", align_corners=udp)
        return (up + out1) / 2

    # --- the interface --------------------------------------------------------------------------------------------
    def features_and_heatmaps(self, img01: Tensor) -> tuple[Tensor, Tensor]:
        """RGB [0,1] (B,3,H,W) -> (feature (B, C, ceil(H/4), ceil(W/4)), heatmaps (B, J, ceil(H/2), ceil(W/2)))."""
        check_image(img01, f"{type(self).__name__} image")
        h, w = img01.shape[-2:]
        feat, outs = self.raw_outputs(img01)
        return crop(feat, h, w, 4), crop(self.aggregate(outs), h, w, 2)

    def features(self, img01: Tensor) -> Tensor:
        """RGB [0,1] (B,3,H,W) -> backbone feature (B, C, ceil(H/4), ceil(W/4)) (no heatmap aggregation)."""
        check_image(img01, f"{type(self).__name__} image")
        h, w = img01.shape[-2:]
        return crop(self.raw_outputs(img01)[0], h, w, 4)

    def heatmaps(self, img01: Tensor) -> Tensor:
        """RGB [0,1] (B,3,H,W) -> aggregated joint heatmaps (B, J, ceil(H/2), ceil(W/2))."""
        return self.features_and_heatmaps(img01)[1]


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def crop(x: Tensor, h: int, w: int, stride: int) -> Tensor:
    """An output on the padded grid -> the grid of an (h, w) input at ``stride``: (…, ceil(h/s), ceil(w/s))."""
    return x[..., :ceil_div(h, stride), :ceil_div(w, stride)]


def check_image(x, what: str) -> None:
    """InputError unless ``x`` is a non-empty float (B,3,H,W) tensor."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor (B,3,H,W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"{what} must have shape (B,3,H,W) with 3 RGB channels, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what} must be a float tensor (RGB in [0,1]), got dtype {x.dtype}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise InputError(f"{what} is empty: shape {tuple(x.shape)}")
