"""Optional backend: any mmpose heatmap model (config + checkpoint) as a ``PoseEstimator``.

mmpose is NOT a dependency (see ../shared/notes/pose-stack.md: mmpose 0.29 needs mmcv 1.7.0 built from source;
1.x has no HigherHRNet). This module is imported only on request. Checkpoints are read through our restricted
loader (``loading.read_checkpoint``), never with mmcv's unrestricted ``torch.load``.

Supported: mmpose 0.x models with ``backbone`` (+ optional ``neck``) and ``keypoint_head``; mmpose 1.x models
with ``backbone`` (+ ``neck``) and ``head``. Features = the first (highest-resolution) backbone output;
heatmaps = the head's heatmaps (all resolutions averaged, HigherHRNet style), resized to input/2.
"""
from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, InputError, MissingDependencyError
from .base import IMAGENET_MEAN, IMAGENET_STD, PoseEstimator, check_image, crop

INSTALL_HINT = ("mmpose is not installed. The built-in HigherHRNet (repose_core.estimator.build_estimator) loads "
                "original and mmpose 0.29 HigherHRNet checkpoints without it. To use other mmpose models install "
                "mmpose 0.29.0 with mmcv 1.7.0 (see docs; `pip install --no-deps mmpose==0.29.0` plus mmcv built "
                "with MMCV_WITH_OPS=0) or mmpose 1.x with mmcv 2.x and mmengine.")


def require_mmpose():
    """Import mmpose or raise MissingDependencyError with install instructions."""
    try:
        import mmpose  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"{INSTALL_HINT} (import error: {e})") from e
    return mmpose


class MMPoseEstimator(PoseEstimator):
    """Wrap an already-built mmpose model. ``mean``/``std`` are for RGB in [0, 1]."""

    model: Any  # a foreign mmpose model: backbone / neck / head are looked up by name
    mean: Tensor  # buffers (registered in __init__)
    std: Tensor

    def __init__(self, model: nn.Module, *, num_joints: int = 17, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 align_corners: bool = False):
        super().__init__()
        if getattr(model, "backbone", None) is None or _head_of(model) is None:
            raise InputError(f"{type(model).__name__} is not an mmpose heatmap model: it needs a 'backbone' and a "
                             "'keypoint_head' (mmpose 0.x) or 'head' (mmpose 1.x)")
        self.model = model
        self.num_joints = num_joints
        self.align_corners = align_corners
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def _head(self) -> nn.Module:
        return cast(nn.Module, _head_of(self.model))  # not None: __init__ refuses a model without a head

    def normalise(self, img01: Tensor) -> Tensor:
        return (img01 - self.mean.to(img01)) / self.std.to(img01)

    def features_and_heatmaps(self, img01: Tensor) -> tuple[Tensor, Tensor]:
        check_image(img01, "image")
        h, w = img01.shape[-2:]
        x = self.pad(self.normalise(img01))
        feats = self.model.backbone(x)
        if getattr(self.model, "neck", None) is not None:
            feats = self.model.neck(feats)
        feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
        outs = self._head()(feats)
        hm = self._aggregate(outs, (x.shape[-2] // 2, x.shape[-1] // 2))
        return crop(feats[0], h, w, 4), crop(hm, h, w, 2)

    def features(self, img01: Tensor) -> Tensor:
        return self.features_and_heatmaps(img01)[0]

    def _aggregate(self, outs, size: tuple[int, int]) -> Tensor:
        """Head output(s) -> (B, J, H/2, W/2): mean over resolutions of the first J channels."""
        if isinstance(outs, Tensor):
            outs = [outs]
        elif isinstance(outs, tuple) and len(outs) == 2 and all(isinstance(o, Tensor) for o in outs) \
                and outs[0].shape[1] == self.num_joints and outs[1].shape[1] in (1, self.num_joints):
            outs = [outs[0]]  # mmpose 1.x AssociativeEmbeddingHead: (heatmaps, tags)
        maps = [F.interpolate(o[:, :self.num_joints], size=size, mode="bilinear", align_corners=self.align_corners)
                for o in outs]
        return torch.stack(maps).mean(0)


def _head_of(model: nn.Module) -> nn.Module | None:
    """mmpose 0.x calls the head ``keypoint_head``, 1.x ``head`` (explicit None checks: containers can be falsy)."""
    head = getattr(model, "keypoint_head", None)
    return head if head is not None else getattr(model, "head", None)


def load_mmpose_estimator(config_path: str | os.PathLike, checkpoint_path: str | os.PathLike | None = None, *,
                          device: str | torch.device = "cpu") -> MMPoseEstimator:
    """Build an mmpose model from its config file, load weights (restricted), wrap as a ``PoseEstimator``."""
    mmpose = require_mmpose()
    if not os.path.isfile(config_path):
        raise InputError(f"mmpose config not found: {config_path}")
    version = getattr(mmpose, "__version__", "0")
    with torch.inference_mode(False):
        if version.startswith("0."):
            from mmcv import Config
            from mmpose.models import build_posenet

            cfg = Config.fromfile(str(config_path))
            cfg.model.pretrained = None
            model = build_posenet(cfg.model)
            test_cfg = cfg.model.get("test_cfg", {}) or {}
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            from mmengine.config import Config
            from mmengine.registry import init_default_scope
            from mmpose.registry import MODELS

            cfg = Config.fromfile(str(config_path))
            init_default_scope("mmpose")
            model = MODELS.build(cfg.model)
            test_cfg = cfg.model.get("test_cfg", {}) or {}
            pre = cfg.model.get("data_preprocessor", {}) or {}
            mean = tuple(v / 255 for v in pre.get("mean", [v * 255 for v in IMAGENET_MEAN]))
            std = tuple(v / 255 for v in pre.get("std", [v * 255 for v in IMAGENET_STD]))
        if checkpoint_path is not None:
            from .loading import read_checkpoint

            sd, _ = read_checkpoint(checkpoint_path)
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
            result = model.load_state_dict(sd, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise CheckpointError(f"{checkpoint_path}: does not match the model of {config_path}: missing "
                                      f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        num_joints = int(test_cfg.get("num_joints", 17)) if hasattr(test_cfg, "get") else 17
        align = bool(test_cfg.get("align_corners", False)) if hasattr(test_cfg, "get") else False
        est = MMPoseEstimator(model, num_joints=num_joints, mean=mean, std=std, align_corners=align)
    return est.to(device)
