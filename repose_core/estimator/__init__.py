"""Differentiable 2D pose estimation: HigherHRNet (pure PyTorch), checkpoint layouts, decoding.

The optional mmpose backend lives in ``repose_core.estimator.mmpose_backend`` and is never imported here.
"""
from .base import PoseEstimator  # noqa: F401
from .decode import decode_single, estimate_poses, group_by_tags, heatmap_to_image  # noqa: F401
from .higherhrnet import HigherHRNet, HigherHRNetConfig  # noqa: F401
from .loading import (  # noqa: F401
    build_estimator, infer_config, read_checkpoint, save_estimator, to_mmpose_layout, to_original_layout,
)
