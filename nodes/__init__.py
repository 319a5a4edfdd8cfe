"""ComfyUI nodes of the RePose pack (thin wrappers around repose_core).

Every module named `*_nodes.py` in this folder is imported and its NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS
are merged. A module that fails to import (a missing or broken optional dependency, a bug) is logged and skipped: its
nodes are not registered, and the rest of the pack still loads, because ComfyUI drops a whole pack whose
__init__ raises.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("repose")


def collect_node_mappings(package: str, path) -> tuple[dict, dict, dict]:
    """Import every `<package>.*_nodes` module found on `path` (a package __path__).

    Returns (class_mappings, display_name_mappings, failures) where failures maps a module name to the
    "<ExceptionType>: <message>" that stopped it from importing."""
    classes: dict = {}
    display_names: dict = {}
    failures: dict = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.endswith("_nodes"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception as err:  # any import-time failure of one module must not take the pack down
            failures[info.name] = f"{type(err).__name__}: {err}"
            log.error("RePose: node module '%s' failed to import; its nodes are not available: %s",
                      info.name, failures[info.name], exc_info=True)
            continue
        module_names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        for key, cls in (getattr(module, "NODE_CLASS_MAPPINGS", None) or {}).items():
            if key in classes:
                log.error("RePose: node '%s' of module '%s' is already defined by another module; keeping the first",
                          key, info.name)
                continue
            classes[key] = cls
            if key in module_names:
                display_names[key] = module_names[key]
    return classes, display_names, failures


# Model folders of the pack under ComfyUI's models/ (paths from extra_model_paths.yaml are kept) and the files they list.
# .pt/.pth/.ckpt are read only through repose_core.checkpoint.restricted_load (no arbitrary unpickling).
MODEL_FOLDERS = {
    "repose": (".safetensors", ".pt", ".pth", ".ckpt"),           # RePoseDM / PIDM / RePoseSD denoisers
    "pose_estimators": (".safetensors", ".pt", ".pth", ".ckpt"),  # HigherHRNet weights for pose guidance
}


def register_model_folders() -> bool:
    """Register MODEL_FOLDERS with ComfyUI's folder_paths; False (nothing done) when not running inside ComfyUI."""
    try:
        import folder_paths  # noqa: F401  (only importable inside ComfyUI)
    except ImportError:
        return False
    from .utils import register_model_folder

    for name, extensions in MODEL_FOLDERS.items():
        register_model_folder(name, extensions)
    return True


register_model_folders()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, IMPORT_FAILURES = collect_node_mappings(__name__, __path__)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "IMPORT_FAILURES", "MODEL_FOLDERS",
           "collect_node_mappings", "register_model_folders"]
