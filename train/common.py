"""Pieces shared by the training scripts: CLI from a dataclass, DDP setup, pickle-free resumable training state,
a deterministic resumable batch sampler, EMA, and TensorBoard-or-JSONL logging.

Training state on disk (never a pickle):

    <run>/checkpoints/step_00001000/state.safetensors   every tensor: model.*, ema.*, optimizer.<param>.<key>,
                                                         rng.torch, rng.cuda.<i>, rng.noise
    <run>/checkpoints/step_00001000/state.json          step, epoch, options, optimizer param_groups and non-tensor
                                                         state, python/numpy RNG states, scheduler/scaler state
    <run>/checkpoints/latest                            name of the newest complete checkpoint folder

A checkpoint folder is written under a temporary name and renamed when both files are complete; `latest` is then
replaced atomically (temp file + os.replace). A crash at any point leaves `latest` naming a complete checkpoint.

Recovery (`prepare_run_dir`, `resume_training_state`): temp files of a killed save are removed on the next start;
`--resume` takes the newest *intact* checkpoint (every step_* folder is checked: state.json parses, the safetensors
header fits the file) and says which newer ones it skipped and why; log lines of steps after the resumed one move to
log.discarded.jsonl. A fresh start in a folder that holds a run is refused unless `--overwrite` is given, and
rotation only ever deletes checkpoints older than the one just written.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from repose_core.checkpoint import read_safetensors_header
from repose_core.errors import CheckpointError, InputError

log = logging.getLogger("repose")

STATE_TENSORS, STATE_JSON, LATEST = "state.safetensors", "state.json", "latest"


# ----------------------------------------------------------------------------------------------------------------
# Options: a dataclass -> argparse (field help from metadata["help"])


def build_parser(options_cls, description: str) -> argparse.ArgumentParser:
    """One `--flag-name` per dataclass field; bools get `--x/--no-x`; `choices` from metadata."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(options_cls):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"default": default, "help": help_text, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(default, (tuple, list)):
            p.add_argument(name, type=type(default[0]) if default else str, nargs="+", **kwargs)
        else:
            p.add_argument(name, type=type(default) if default is not None else str, **kwargs)
    return p


def parse_options(options_cls, argv=None, description: str = ""):
    args = build_parser(options_cls, description).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(options_cls)}
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    return options_cls(**values)


def options_json(opts) -> str:
    return json.dumps(dataclasses.asdict(opts), indent=2, sort_keys=True)


def run_script(main) -> None:
    """`if __name__ == "__main__": run_script(main)`: a ReposeError (bad input, damaged file) is logged as one line
    and exits with status 2; anything else keeps its traceback."""
    from repose_core.errors import ReposeError

    try:
        sys.exit(main())
    except ReposeError as e:
        logging.getLogger("repose").error("%s", e)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------------------------
# Distributed (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """DDP when torchrun's RANK/WORLD_SIZE are set: nccl on CUDA, gloo on CPU. Else a single process."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device(device))
    import torch.distributed as dist
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def cleanup_distributed(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Deterministic, resumable batches


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of indices for one rank: a permutation seeded by (seed, epoch), trimmed to a multiple of
    world·batch (drop_last), dealt round-robin to ranks, cut into batches; the first `skip` batches are left out
    (resuming in the middle of an epoch). Same batches whatever the number of data-loader workers."""

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        if n < batch_size * world:
            raise ValueError(f"dataset of {n} pairs is smaller than one global batch ({batch_size} x {world} ranks); "
                             f"lower --batch-size or add data")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[:self.batches_per_epoch() * self.batch_size * self.world][self.rank::self.world]
        for b in range(self.skip, self.batches_per_epoch()):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip


# ----------------------------------------------------------------------------------------------------------------
# EMA


class EMA:
    """Exponential moving average of a model's parameters (buffers copied): θ_ema ← d θ_ema + (1 − d) θ."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup_steps = decay, warmup_steps

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """PIDM: decay 0 (a plain copy) during warm-up, then `decay`."""
        d = 0.0 if step < self.warmup_steps else self.decay
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


# ----------------------------------------------------------------------------------------------------------------
# Pickle-free training state


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state_dict -> ({"<param>.<key>": tensor}, JSON-able rest)."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        rest = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                rest[key] = value
        meta["state"][str(pid)] = rest
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(rest) for pid, rest in meta["state"].items()}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    # JSON turned tuples (Adam's betas) into lists; optimizers store them as tuples
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng(noise_generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    if noise_generator is not None:
        tensors["rng.noise"] = noise_generator.get_state()
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, noise_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if noise_generator is not None and "rng.noise" in tensors:
        noise_generator.set_state(tensors["rng.noise"])
    v, keys, gauss = meta["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), v.numel()) if v.numel() else None
        if ptr is not None and ptr in seen:     # safetensors refuses shared storage
            v = v.clone()
        seen.add(ptr)
        out[f"{prefix}.{k}"] = v
    return out


def save_training_state(run_dir, step: int, *, modules: dict[str, dict[str, torch.Tensor]],
                        optimizer: torch.optim.Optimizer, meta: dict, noise_generator: torch.Generator | None = None,
                        keep: int = 2) -> Path:
    """Write <run>/checkpoints/step_<step>/ atomically and point `latest` at it; keep the newest `keep` folders.

    modules: {"model": state_dict, "ema": state_dict, ...}; meta: JSON-able (step, epoch, options, scheduler...)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, sd in modules.items():
        tensors.update(_prefixed(name, sd))
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(_prefixed("optimizer", opt_tensors))
    rng_tensors, rng_meta = capture_rng(noise_generator)
    tensors.update({k: v.cpu().contiguous() for k, v in rng_tensors.items()})
    payload = dict(meta, step=step, optimizer=opt_meta, rng=rng_meta, format="repose-train-state/1")

    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": "repose-train-state/1"})
        (tmp / STATE_JSON).write_text(json.dumps(payload), encoding="utf-8")
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, tmp_latest = tempfile.mkstemp(prefix=".latest.", dir=ckpt_root)
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
    os.replace(tmp_latest, ckpt_root / LATEST)
    if keep > 0:  # only checkpoints older than this one, never a newer one (e.g. of a run resumed further back)
        older = sorted((s, p) for s, p in _step_folders(ckpt_root) if s < step)
        for _, old in older[:max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_folders(ckpt_root: Path) -> list[tuple[int, Path]]:
    out = []
    for p in ckpt_root.glob("step_*"):
        try:
            out.append((int(p.name[len("step_"):]), p))
        except ValueError:
            continue
    return sorted(out)


def checkpoint_problem(folder) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None if intact): missing, empty or truncated files, a
    state.json that does not parse. Reads the JSON and the safetensors header, not the tensors."""
    folder = Path(folder)
    for name in (STATE_JSON, STATE_TENSORS):
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size == 0:
            return f"{name} is empty"
    try:
        meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        int(meta["step"]), meta["optimizer"], meta["rng"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        return f"{STATE_JSON} is damaged ({type(e).__name__}: {e})"
    try:
        read_safetensors_header(folder / STATE_TENSORS)
    except CheckpointError as e:
        return f"{STATE_TENSORS} is damaged ({str(e).split(' (', 1)[-1].split(';')[0].rstrip(')')})"
    return None


def find_resume_checkpoint(run_dir) -> tuple[Path | None, list[tuple[str, str]]]:
    """(newest intact checkpoint folder or None, [(folder name, why skipped)] for the newer damaged ones).
    `latest` is only a hint: every step_* folder is a candidate, newest first."""
    ckpt_root = Path(run_dir) / "checkpoints"
    skipped: list[tuple[str, str]] = []
    pointer = ckpt_root / LATEST
    named = None
    if pointer.is_file():
        try:
            named = pointer.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            named = None
        if named and not (ckpt_root / named).is_dir():
            skipped.append((named, f"named by '{LATEST}' but the folder does not exist"))
    for _, folder in reversed(_step_folders(ckpt_root) if ckpt_root.is_dir() else []):
        why = checkpoint_problem(folder)
        if why is None:
            return folder, skipped
        skipped.append((folder.name, why))
    return None, skipped


def latest_checkpoint(run_dir) -> Path | None:
    """The newest intact checkpoint folder of a run, or None (see find_resume_checkpoint)."""
    return find_resume_checkpoint(run_dir)[0]


def load_training_state(folder) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """-> ({"model": sd, "ema": sd, "optimizer": flat, "rng": {...}}, optimizer state_dict, meta). No pickle.
    A damaged folder is a CheckpointError naming the file."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        flat = load_file(str(folder / STATE_TENSORS))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"training state {folder} cannot be read ({type(e).__name__}: {e})") from e
    groups: dict[str, dict[str, torch.Tensor]] = {}
    rng = {}
    for key, value in flat.items():
        if key.startswith("rng."):
            rng[key] = value
            continue
        prefix, rest = key.split(".", 1)
        groups.setdefault(prefix, {})[rest] = value
    optimizer_state = unflatten_optimizer(groups.pop("optimizer", {}), meta["optimizer"])
    groups["rng"] = rng
    return groups, optimizer_state, meta


def resume_training_state(run_dir, trim_log: bool = True):
    """`--resume`: (folder, (groups, optimizer state, meta)) of the newest intact checkpoint of `run_dir`. Damaged
    newer checkpoints are skipped with a warning saying which and why; log lines of steps after the resumed one
    move to log.discarded.jsonl (they are redone). No intact checkpoint: InputError listing what was found."""
    run_dir = Path(run_dir)
    folder, skipped = find_resume_checkpoint(run_dir)
    for name, why in skipped:
        log.warning("--resume: skipping checkpoint %s: %s", name, why)
    if folder is None:
        found = "; ".join(f"{n}: {w}" for n, w in skipped) or "no checkpoint folder"
        raise InputError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'} ({found}). Start a new run "
                         f"in another --out, or pass --overwrite (without --resume) to replace this one")
    state = load_training_state(folder)
    if skipped:
        log.warning("--resume: continuing from %s (step %d), the newest intact checkpoint", folder.name,
                    int(state[2]["step"]))
    if trim_log:
        discard_log_after(run_dir, int(state[2]["step"]))
    return folder, state


def discard_log_after(run_dir, step: int) -> int:
    """Move log.jsonl lines of steps > `step` (written by a run killed after its last checkpoint) to
    log.discarded.jsonl, so that the resumed run's lines do not repeat them. Returns how many moved."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return 0
    keep, moved = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            later = int(json.loads(line)["step"]) > step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            later = True   # a line cut off by the kill
        (moved if later else keep).append(line if line.endswith("\n") else line + "\n")
    if moved:
        with open(Path(run_dir) / "log.discarded.jsonl", "a", encoding="utf-8") as f:
            f.writelines(moved)
        fd, tmp = tempfile.mkstemp(prefix=".log.jsonl.", dir=run_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        log.info("moved %d log lines after step %d to log.discarded.jsonl", len(moved), step)
    return len(moved)


def remove_stale_temp_files(run_dir) -> list[Path]:
    """Temp files of a save that was killed midway (checkpoints/.latest.*, checkpoints/.step_*.*, .<file>.*.tmp of
    save_model, .log.jsonl.*): removed; they are never a complete file. Returns what was removed."""
    run_dir = Path(run_dir)
    stale = list((run_dir / "checkpoints").glob(".latest.*")) + list((run_dir / "checkpoints").glob(".step_*"))
    stale += [p for p in run_dir.glob(".*.tmp") if p.is_file()] + list(run_dir.glob(".log.jsonl.*"))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log.info("removed %s, left by a save that was interrupted", p)
    return stale


RUN_FILES = ("checkpoints", "ema.safetensors", "log.jsonl", "log.discarded.jsonl", "data_problems.jsonl",
             "tensorboard", "samples")


def prepare_run_dir(run_dir, *, resume: bool, overwrite: bool = False, master: bool = True) -> None:
    """Before a run writes anything: remove stale temp files; refuse a fresh start (no --resume) in a folder that
    holds a run, unless `overwrite`, which removes that run's files (RUN_FILES). --resume with --overwrite is
    contradictory. Only the master process changes files."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                         "--overwrite replaces it")
    if master and run_dir.is_dir():
        remove_stale_temp_files(run_dir)
    if resume:
        return
    ckpt_root = run_dir / "checkpoints"
    steps = [s for s, _ in _step_folders(ckpt_root)] if ckpt_root.is_dir() else []
    held = ([f"checkpoints up to step {max(steps)}"] if steps else []) + \
           [name for name in ("ema.safetensors", "log.jsonl") if (run_dir / name).exists()]
    if not held:
        return
    if not overwrite:
        raise InputError(f"{run_dir} already holds a training run ({', '.join(held)}). Continue it with --resume, "
                         f"choose another --out, or pass --overwrite to delete it and start over")
    if master:
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        log.warning("--overwrite: removed the previous run in %s (%s)", run_dir, ", ".join(held))


# ----------------------------------------------------------------------------------------------------------------
# Logging: TensorBoard when installed, else JSONL


class RunLogger:
    """Scalars and image grids. TensorBoard (the optional `train` extra) if importable, else <run>/log.jsonl
    (images then go to <run>/samples/*.png). Says once which one it uses. Only the master process logs."""

    def __init__(self, run_dir, enabled: bool = True, use_tensorboard: bool = True):
        self.run_dir, self.enabled, self.writer = Path(run_dir), enabled, None
        self.jsonl = self.run_dir / "log.jsonl"
        if not enabled:
            return
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
                log.info("logging to TensorBoard: %s", self.run_dir / "tensorboard")
            except ImportError:
                log.warning("tensorboard is not installed (pip install -r requirements-train.txt); logging scalars "
                            "to %s and sample grids to %s instead", self.jsonl, self.run_dir / "samples")
        else:
            log.info("logging scalars to %s", self.jsonl)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        with open(self.jsonl, "a", encoding="utf-8") as f:   # always kept: machine-readable history
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.writer is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def image(self, step: int, tag: str, grid01: torch.Tensor) -> None:
        """grid01 (3, H, W) in [0, 1]."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.add_image(tag, grid01.clamp(0, 1), step)
        else:
            from PIL import Image
            out = self.run_dir / "samples"
            out.mkdir(parents=True, exist_ok=True)
            arr = (grid01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(out / f"{tag.replace('/', '_').replace('|', '-')}_{step:08d}.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def image_grid(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """rows of (3, H, W) images in [0, 1] -> one (3, rows·H, cols·W) grid."""
    return torch.cat([torch.cat(r, dim=-1) for r in rows], dim=-2)


def setup_logging(master: bool) -> None:
    logging.basicConfig(level=logging.INFO if master else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
