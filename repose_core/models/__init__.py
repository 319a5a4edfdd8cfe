"""Denoiser networks: the PIDM-layout UNet (`unet`), PIDM compatibility (`pidm`), and the RePoseDM variants built on it.

Only the PIDM pieces are re-exported here; the other model modules (repose, rpa, codec, ...) are imported from their
own submodules so that importing this package stays cheap and independent of optional dependencies.
"""
from .pidm import PIDM_PRESETS, config_from_pidm_conf, convert_pidm_checkpoint, load_pidm_state_dict, pidm_preset
from .unet import PIDMNet, UNetConfig, pidm_deepfashion256_config, pidm_small_config, timestep_embedding

__all__ = [
    "PIDMNet",
    "UNetConfig",
    "pidm_deepfashion256_config",
    "pidm_small_config",
    "timestep_embedding",
    "PIDM_PRESETS",
    "pidm_preset",
    "config_from_pidm_conf",
    "load_pidm_state_dict",
    "convert_pidm_checkpoint",
]
