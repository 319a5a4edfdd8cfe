"""Model files: safetensors with the config in the metadata, strict loading, and a restricted unpickler.

Our own files are safetensors whose metadata carries everything needed to rebuild the model:

    {"format": "repose/1", "kind": "pidm" | "repose_dm" | ..., "class": <builder name>, "config": <json>}

Builders register themselves with `register_model(kind)`; `load_model` imports the modules that define them lazily,
so reading a file never needs more than the file.

Foreign `.pt/.ckpt/.pth` files (e.g. PIDM's `last.pt`) are pickles. They are read by `restricted_load`, whose
unpickler resolves only an allow-list of globals (tensor rebuild functions, storages, dtypes, OrderedDict, ...).
Anything else is refused, or in "stub" mode replaced by inert placeholders that record their name and arguments and
never run code, so that e.g. the tensors under PIDM's "ema" can be taken from a file that also pickles a config
object whose class we must not import.
"""
from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import importlib
import json
import logging
import os
import pickle
import tempfile
import types
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError, InputError

log = logging.getLogger("repose")

FORMAT = "repose/1"

__all__ = [
    "FORMAT",
    "PickleStub",
    "register_model",
    "registered_builders",
    "save_model",
    "load_model",
    "read_metadata",
    "read_safetensors_header",
    "check_model_against_file",
    "load_state_dict_strict",
    "check_state_dict",
    "restricted_load",
    "restricted_unpickler",
    "RefusedGlobal",
    "tensor_state_dict",
]

# ----------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class _Builder:
    name: str
    kind: str
    build: Callable[[dict], nn.Module]


_BUILDERS: dict[str, _Builder] = {}

# Modules (relative to this package) that register builders for each kind, imported only when a file of that kind is
# saved or loaded.
_KIND_MODULES: dict[str, tuple[str, ...]] = {
    "pidm": (".models.pidm",),
    "repose_dm": (".models.repose",),
    "pose_estimator": (".estimator", ".estimator.small_hrnet"),
    "repose_sd_unet": (".models.repose_sd",),
}

# What a user should do with a file of each kind (used in wrong-kind errors).
_KIND_HINTS: dict[str, str] = {
    "pidm": "load it with the LoadRePoseModel node (a PIDM network runs as variant b1)",
    "repose_dm": "load it with the LoadRePoseModel node",
    "pose_estimator": "load it with the pose-estimator loader node (used by PoseGradientGuidance)",
    "repose_sd_unet": "load it with the RePoseSD loader node",
}


def register_model(kind: str, builder: Optional[Callable[[dict], nn.Module]] = None, *, name: Optional[str] = None):
    """Register `builder(config_dict) -> nn.Module` for files of `kind` under `name` (default: kind).

    Use as a decorator, `@register_model("pidm")`, or directly, `register_model("pose_estimator", build_fn)`.
    The builder name is stored in the file ("class") so `load_model` can rebuild the model from the file alone.
    A model chooses its builder by a `checkpoint_builder` attribute; without it, the kind is used.
    """

    def decorator(fn: Callable[[dict], nn.Module]):
        key = name or kind
        _BUILDERS[key] = _Builder(key, kind, fn)
        return fn

    return decorator(builder) if builder is not None else decorator


def registered_builders() -> dict[str, str]:
    """{builder name: kind} of everything registered so far."""
    return {b.name: b.kind for b in _BUILDERS.values()}


def _import_kind_modules(kind: str):
    for rel in _KIND_MODULES.get(kind, ()):
        importlib.import_module(rel, __package__)


# ----------------------------------------------------------------------------------------------------------------
# Saving


def _config_dict(model: nn.Module) -> dict:
    """The config that rebuilds `model`: a dataclass (our models) or a mapping (diffusers' FrozenDict, RePoseSD),
    without diffusers' private "_" entries."""
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)  # type: ignore[arg-type]  # an instance (a dataclass type would raise)
    if isinstance(config, Mapping):
        public = {k: v for k, v in config.items() if not str(k).startswith("_")}
        return json.loads(json.dumps(public, default=_json_default))
    raise InputError(f"{type(model).__name__} has no dataclass or mapping `.config`; only models built from a "
                     f"config can be saved (the config is what rebuilds them)")


def save_model(path: str | os.PathLike, model: nn.Module, kind: str,
               extra_metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write `model` to a safetensors file with the metadata `load_model` needs; atomic (temp file + os.replace).

    extra_metadata: more string entries (non-strings are JSON-encoded); the reserved keys cannot be overridden.
    """
    path = os.fspath(path)
    builder = getattr(model, "checkpoint_builder", None) or kind
    _import_kind_modules(kind)
    registered = _BUILDERS.get(builder)
    if registered is None or registered.kind != kind:
        raise InputError(f"no model builder {builder!r} registered for kind {kind!r} (registered: "
                         f"{registered_builders()}); a file saved like this could not be loaded back")
    metadata = {"format": FORMAT, "kind": kind, "class": builder, "config": json.dumps(_config_dict(model))}
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise InputError(f"extra_metadata key {key!r} is reserved (reserved: {sorted(metadata)})")
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)

    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else None
        if ptr is not None and ptr in seen:       # safetensors refuses shared storage: store a copy
            value = value.clone()
        seen.add(ptr)
        tensors[key] = value

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a model file is as readable as any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_default(value: Any) -> Any:
    """Values of a foreign (mapping) config that JSON has no type for: sets -> lists, anything else -> its text."""
    return list(value) if isinstance(value, (set, frozenset)) else str(value)


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Loading our files

# Bound on what a model file may make us allocate (parameters + buffers of the model its config builds, in elements).
# The largest preset has 244 M parameters and Stable Diffusion's UNet 865 M; a file claiming more is refused before
# anything is allocated. Override with the environment variable REPOSE_MAX_MODEL_ELEMENTS.
MAX_MODEL_ELEMENTS = 2_000_000_000
_SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                            "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


def _max_model_elements() -> int:
    try:
        return int(os.environ.get("REPOSE_MAX_MODEL_ELEMENTS", MAX_MODEL_ELEMENTS))
    except ValueError:
        return MAX_MODEL_ELEMENTS


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (dtype, shape)} of a safetensors file from its JSON header alone (no tensor is read), after checking
    that every tensor's byte range lies inside the file and matches its shape: a truncated or tampered file is a
    CheckpointError naming the file, before anything is allocated."""
    path = os.fspath(path)

    def corrupt(why: str):
        raise CheckpointError(f"{path} is not a readable safetensors file ({why}); the file may be truncated or "
                              f"corrupt — download or convert it again")

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                corrupt(f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                corrupt(f"header length {n} does not fit in the file of {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        corrupt(f"its header is not JSON: {e}")
    if not isinstance(header, dict):
        corrupt("its header is not a JSON object")
    data_size = size - 8 - n
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            itemsize = _SAFETENSORS_DTYPE_BYTES[dtype]
        except (TypeError, KeyError, ValueError):
            corrupt(f"bad header entry for {key!r}")
        numel = 1
        for d in shape:
            if d < 0:
                corrupt(f"negative dimension in {key!r}")
            numel *= d
        if not (0 <= begin <= end <= data_size) or end - begin != numel * itemsize:
            corrupt(f"tensor {key!r} {list(shape)} {dtype} needs bytes {begin}..{end} of {data_size}")
        out[key] = (dtype, shape)
    return out


def check_model_against_file(build: Callable[[], nn.Module], header: Mapping[str, tuple[str, tuple[int, ...]]],
                             source: str, max_listed: int = 10) -> None:
    """Build the model on the meta device (no memory), bound its size, and compare every state-dict key and shape
    with the file's header. Raises CheckpointError naming `source` when the stored config does not describe the
    stored tensors (a tampered or mismatched file), so that nothing is allocated for it."""
    with torch.device("meta"):
        model = build()
    elements = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    limit = _max_model_elements()
    if elements > limit:
        raise CheckpointError(f"{source}: its stored config builds a model of {elements:,} parameters and buffers, "
                              f"more than the {limit:,} this loader accepts (REPOSE_MAX_MODEL_ELEMENTS); the file's "
                              f"config is wrong or the file is not meant for RePose — convert or download it again")
    fake = {k: torch.empty(shape, device="meta") for k, (_, shape) in header.items()}
    check_state_dict(model, fake, source=f"{source} (its tensors against the model its stored config builds)",
                     max_listed=max_listed)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a RePose safetensors file; CheckpointError if missing, corrupt or not written by `save_model`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the file may be truncated or "
                              f"corrupt — download or convert it again") from e
    if metadata.get("format") != FORMAT or "kind" not in metadata or "config" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a RePose model file (metadata format="
            f"{metadata.get('format')!r}, expected {FORMAT!r} with 'kind' and 'config'). Original PIDM checkpoints "
            f"(last.pt) must be converted with train/convert_pidm.py first")
    return dict(metadata)


def load_model(path: str | os.PathLike, expected_kind: Optional[str] = None, device: str | torch.device = "cpu",
               dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Rebuild a model from a file written by `save_model` (config from metadata, weights strictly), in eval mode."""
    path = os.fspath(path)
    metadata = read_metadata(path)
    kind = metadata["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{os.path.basename(path)}: this file is a {kind!r} model, expected {expected_kind!r}; "
                              f"{_KIND_HINTS.get(kind, 'use the loader for ' + kind)}")
    builder_name = metadata.get("class", kind)
    _import_kind_modules(kind)
    builder = _BUILDERS.get(builder_name)
    if builder is None:
        raise CheckpointError(f"{path}: no builder {builder_name!r} for kind {kind!r} is available in this "
                              f"installation (registered: {sorted(_BUILDERS)})")
    header = read_safetensors_header(path)
    try:
        config = json.loads(metadata["config"])
        # keys, shapes and size checked on the meta device first: a config that disagrees with the file's own
        # tensors (e.g. a tampered width) is refused before a single weight is allocated
        check_model_against_file(lambda: builder.build(config), header, path)
        model = builder.build(config)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: the stored config cannot build a {kind!r} model: {e}") from e
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: tensors cannot be read ({e}); the file may be truncated or corrupt") from e
    load_state_dict_strict(model, state, source=path)
    return model.to(device=device, dtype=dtype).eval()


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict",
                           max_listed: int = 10) -> nn.Module:
    """Load with every key and shape checked; CheckpointError lists missing, unexpected and mis-shaped keys.
    Values are cast to the model's dtypes. Returns the model."""
    check_state_dict(model, state_dict, source, max_listed)
    model.load_state_dict(state_dict, strict=True)
    return model


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict",
                     max_listed: int = 10) -> None:
    """The checks of `load_state_dict_strict` without loading (works on a meta-device model)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    not_tensor = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    mis_shaped = [f"{k}: model {tuple(expected[k].shape)}, file {tuple(state_dict[k].shape)}"
                  for k in expected if k in state_dict and k not in not_tensor
                  and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mis_shaped or not_tensor:
        def listing(title, items):
            shown = ", ".join(items[:max_listed])
            more = f" ... and {len(items) - max_listed} more" if len(items) > max_listed else ""
            return f"\n  {title} ({len(items)}): {shown}{more}"

        parts = [listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                    ("mis-shaped keys", mis_shaped),
                                                    ("entries that are not tensors", not_tensor)) if items]
        raise CheckpointError(f"{source} does not match the {type(model).__name__} it is loaded into (wrong "
                              f"file, or a different config/variant):" + "".join(parts))


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling of foreign .pt / .ckpt / .pth files


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Globals a tensor checkpoint legitimately needs. Nothing here runs user-controlled code."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
        # plain value types and constants; calling them builds data, nothing else
        **{("builtins", t.__name__): t for t in (set, frozenset, complex, str, bytes, bytearray, int, float, bool,
                                                  list, dict, tuple, slice, range)},
        ("builtins", "Ellipsis"): Ellipsis,
        ("builtins", "NotImplemented"): NotImplemented,
        ("_codecs", "encode"): __import__("codecs").encode,  # protocol-2 pickles store bytes as encode(str, latin1)
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
        if name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


# Never stubbed, always refused: a file that names these is hostile, not merely foreign. (Stubs never execute
# anything, so this is defence in depth and a clear failure instead of a silently loaded booby trap.)
_DENIED_MODULES = {
    "builtins", "__builtin__", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket",
    "importlib", "pickle", "_pickle", "marshal", "runpy", "code", "codeop", "ctypes", "types", "io", "_io",
    "pathlib", "tempfile", "webbrowser", "pty", "multiprocessing", "threading", "_thread", "signal", "functools",
    "operator", "inspect", "platform", "asyncio", "urllib", "http", "ftplib", "smtplib", "telnetlib", "zipimport",
    "pkgutil", "dill", "cloudpickle", "torch", "_posixsubprocess", "select", "selectors", "gc", "weakref",
    "copy", "pydoc", "timeit", "trace", "pdb", "bdb", "cProfile", "profile", "sysconfig", "site",
    "distutils", "setuptools", "pip", "glob", "fileinput", "linecache", "codecs", "_codecs", "yaml", "zipfile",
    "tarfile", "shelve", "dbm", "sqlite3", "requests", "urllib3", "ssl", "logging", "commands", "popen2",
}
_DENIED_NAMES = {"eval", "exec", "execfile", "compile", "system", "popen", "spawn", "__import__", "getattr",
                 "setattr", "delattr", "open", "apply", "input", "breakpoint", "globals", "locals", "vars"}


class PickleStub:
    """Inert stand-in for an object of a class we refuse to import. Records what the pickle said, runs nothing.

    `module`/`qualname` name the original global; `args`, `kwargs`, `state`, `items`, `listitems` hold what the
    pickle passed to its constructor, BUILD, SETITEMS and APPENDS.
    """

    module = "?"
    qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "__dict__", {"args": args, "kwargs": kwargs, "state": None, "items": {},
                                              "listitems": []})
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __setitem__(self, key, value):
        self.__dict__["items"][key] = value

    def append(self, value):
        self.__dict__["listitems"].append(value)

    def extend(self, values):
        self.__dict__["listitems"].extend(values)

    def __repr__(self):
        return f"PickleStub({self.module}.{self.qualname})"


_STUB_CLASSES: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUB_CLASSES:
        _STUB_CLASSES[key] = type(f"Stub_{name}".replace(".", "_"), (PickleStub,),
                                  {"module": module, "qualname": name, "__module__": __name__})
    return _STUB_CLASSES[key]


class RefusedGlobal(Exception):
    """A restricted unpickler met a global outside its allow-list. `module`/`qualname` name it as the pickle did,
    `name` is the quoted spelling for messages (with the Python 3 name when the pickle used a Python 2 one)."""

    def __init__(self, module: str, qualname: str, name: str, why: str):
        super().__init__(name)
        self.module, self.qualname, self.name, self.why = module, qualname, name, why


def restricted_unpickler(allowed: Mapping[tuple[str, str], Any], allow_unknown: str = "refuse"
                         ) -> type[pickle.Unpickler]:
    """The one restricted unpickler: a `pickle.Unpickler` class whose `find_class` resolves only the
    `(module, name)` globals in `allowed` (to the objects given there) and never imports anything.

    allow_unknown="refuse": any other global raises `RefusedGlobal`.
    allow_unknown="stub": unknown classes become `PickleStub` subclasses; globals from dangerous modules (os,
    subprocess, builtins, torch internals, ...) still raise `RefusedGlobal`.
    Used by `restricted_load` (torch checkpoints) and by the pose readers (numpy object arrays in HumanSD files).
    """
    if allow_unknown not in ("refuse", "stub"):
        raise InputError(f"allow_unknown={allow_unknown!r}; accepted: 'refuse', 'stub'")
    allowed = dict(allowed)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            # Protocol <= 2 pickles use Python 2 names (subprocess.call is written as commands.call); map them as
            # pickle's own find_class would, and judge both spellings.
            mapped = _compat_pickle.NAME_MAPPING.get((module, name))
            mapped = mapped or (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
            for candidate in ((module, name), mapped):
                if candidate in allowed:
                    return allowed[candidate]
            dangerous = any(m.split(".")[0] in _DENIED_MODULES or n.split(".")[-1] in _DENIED_NAMES
                            for m, n in ((module, name), mapped))
            if allow_unknown == "stub" and not dangerous:
                return _stub_class(module, name)
            why = "a dangerous global" if allow_unknown == "stub" else "not an allowed tensor-checkpoint global"
            shown = f"'{module}.{name}'" + (f" (= {mapped[0]}.{mapped[1]})" if mapped != (module, name) else "")
            raise RefusedGlobal(module, name, shown, why)

    return RestrictedUnpickler


def _make_pickle_module(allow_unknown: str) -> types.ModuleType:
    """A pickle-module look-alike for torch.load whose Unpickler never imports anything."""
    unpickler = restricted_unpickler(_allowed_globals(), allow_unknown)

    def load(file, **kwargs):
        return unpickler(file, **kwargs).load()

    module = types.ModuleType("repose_restricted_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]  # a module made at run time
    module.load = load  # type: ignore[attr-defined]
    module.__name__ = "repose_restricted_pickle"
    return module


def restricted_load(path: str | os.PathLike, allow_unknown: str = "refuse") -> Any:
    """Read a torch `.pt/.ckpt/.pth` file (zip or legacy format) admitting only tensors and plain containers.

    allow_unknown="refuse": any other global -> CheckpointError naming it.
    allow_unknown="stub": unknown classes become `PickleStub` instances (nothing is imported or called); globals
    from dangerous modules (os, subprocess, builtins, torch internals, ...) are still refused.
    TorchScript archives are refused (loading them runs serialized code).
    """
    path = os.fspath(path)
    pickle_module = _make_pickle_module(allow_unknown)  # InputError for an unknown allow_unknown
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: corrupt zip checkpoint ({e})") from e
        if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(f"{path} is a TorchScript archive; those contain code and are refused. Save the "
                                  f"model's state_dict with torch.save instead")
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", pickle_module=pickle_module,
                              weights_only=False, mmap=False)
    except RefusedGlobal as e:
        hint = ("" if allow_unknown == "stub" else
                "; if this is a training checkpoint that also pickles config objects, "
                "restricted_load(path, allow_unknown='stub') can still extract its tensors")
        raise CheckpointError(f"{path}: refused to unpickle global {e.name} ({e.why}){hint}") from None
    except CheckpointError:
        raise
    except Exception as e:  # corrupt/truncated pickles raise anything from EOFError to RuntimeError
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e


def tensor_state_dict(obj: Any, entry: Optional[str] = None, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`obj[entry]` (or obj) as a {str: Tensor} dict; CheckpointError if it holds anything else (e.g. stubs)."""
    if entry is not None:
        if not isinstance(obj, Mapping) or entry not in obj:
            have = sorted(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source}: no entry {entry!r} (top-level entries: {have})")
        obj = obj[entry]
    where = f"{source}" + (f" entry {entry!r}" if entry else "")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} is a {type(obj).__name__}, expected a state dict of tensors")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where} holds non-tensor entries: {', '.join(bad[:10])}"
                              + (f" ... and {len(bad) - 10} more" if len(bad) > 10 else ""))
    return {k: v for k, v in obj.items()}
