"""RePose core: RePoseDM (Recurrent Pose Alignment + gradient pose guidance), the PIDM baseline and RePoseSD.

Pure PyTorch; never imports ComfyUI."""
__version__ = "0.1.0"
