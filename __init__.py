"""ComfyUI entry point of the RePose node pack (RePoseDM / PIDM / RePoseSD pose-guided person synthesis).

ComfyUI imports this folder as a package named after its filesystem path, so every import of the pack's own code
here and below is relative. The pure-PyTorch core lives in `repose_core/` and never imports ComfyUI.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
