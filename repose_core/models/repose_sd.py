"""RePoseSD (paper Sec. 4.4): Stable Diffusion 2.1-base's UNet with 8 input channels (4 noisy latent + 4 VAE-encoded
pose image, HumanSD's concatenation), fine-tuned with the gradient-guided target of eq. 15/17 (train/train_sd.py).

The network is diffusers' `UNet2DConditionModel`; this module gives it its place among the model kinds: files are
written by `repose_core.checkpoint.save_model(path, unet, KIND)` (diffusers key names, metadata config = the UNet's
diffusers config) and rebuilt by `load_model(path, expected_kind=KIND)` through the builder registered here.
diffusers is an optional dependency (requirements-train.txt); it is imported only when a model is built.
"""
from __future__ import annotations

from torch import nn

from ..checkpoint import register_model
from ..errors import MissingDependencyError

KIND = "repose_sd_unet"
ARCHITECTURE = "diffusers.UNet2DConditionModel"


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise MissingDependencyError("RePoseSD UNets are diffusers models: pip install -r requirements-train.txt "
                                     "(diffusers, transformers, accelerate)") from e
    return diffusers


@register_model(KIND)
def build_repose_sd_unet(config: dict) -> nn.Module:
    """Checkpoint builder: an untrained `UNet2DConditionModel` from its diffusers config (8 input channels)."""
    return _diffusers().UNet2DConditionModel.from_config(dict(config))
