"""The one training loop of train_deepfashion.py and train_sd.py, and the options it reads.

Per optimizer step: learning rate (linear warm-up, then constant), `grad_accum` micro-batches (gradients all-reduced
only on the last one), gradient clipping, the optimizer step, EMA, logging, sample previews and saves (every
`save_every` steps, at `max_steps`, and when `max_minutes` runs out). What differs between the trainers (the loss,
how gradients are synchronised, what a save writes) comes in as a `Steps` object.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from train.common import RunLogger, options_json

log = logging.getLogger("repose")


@dataclass
class LoopOptions:
    """Options both trainers read; each script's `Options` inherits them and may change a default."""

    # optimisation
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=8, metadata={"help": "items per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int = field(default=300000, metadata={"help": "optimizer steps"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop (and save) after this much training time, "
                                                               "whatever the step (0 = no limit); --resume goes on"})
    warmup_steps: int = field(default=0, metadata={"help": "linear LR warm-up steps (then constant)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0 = off)"})
    # run
    out: str = field(default="runs/repose", metadata={"help": "run folder"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest intact checkpoint in "
                                                          "<out>/checkpoints (damaged newer ones are skipped)"})
    overwrite: bool = field(default=False, metadata={"help": "start over in an --out that holds a run, deleting "
                                                             "its checkpoints, exported weights and logs"})
    save_every: int = field(default=5000, metadata={"help": "checkpoint + weights export every N steps"})
    log_every: int = field(default=50, metadata={"help": "scalars every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "training-state folders kept"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    tensorboard: bool = field(default=True, metadata={"help": "TensorBoard when installed (else JSONL)"})
    dry_run: bool = field(default=False, metadata={"help": "print the options, write config.json, exit"})


def lr_at(step: int, opts: LoopOptions) -> float:
    """Linear warm-up, then constant: independent of max_steps, so a run can be extended and resumed."""
    if opts.warmup_steps > 0 and step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    return opts.lr


def write_options(opts: LoopOptions, master: bool = True) -> None:
    """<out>/config.json with every option (and, for --dry-run, the same on stdout)."""
    out = Path(opts.out)
    if opts.dry_run:
        print(options_json(opts))
    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(options_json(opts) + "\n", encoding="utf-8")


class Steps(Protocol):
    """What a trainer plugs into `run_loop`."""

    throughput_key: str  # name of the logged items-per-second scalar ("pairs_per_s", "images_per_s")

    def loss(self, batch) -> tuple[Tensor, dict[str, float], Any]:
        """One micro-batch -> (loss, scalars to log, anything `preview` wants)."""
    def backward(self, loss: Tensor) -> None: ...
    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for micro-batches whose gradients are not all-reduced yet (all but the last)."""
    def clip(self, max_norm: float) -> float: ...
    def after_step(self, step: int) -> None:
        """After the optimizer step (EMA update)."""
    def save(self, step: int) -> None:
        """Training state + exported weights (every process calls it; only the main one writes)."""
    def preview(self, step: int, batch, extra) -> None: ...
    def any_process(self, flag: bool) -> bool:
        """True if `flag` is true on any process (so that every process stops at the same step)."""
    def items(self, batch) -> int:
        """Items of this process's batch counted by the throughput scalar."""


def run_loop(opts: LoopOptions, steps: Steps, optimizer: torch.optim.Optimizer, batches, *, step: int, world: int,
             master: bool, logger: RunLogger, desc: str, preview_every: int = 0) -> int:
    """Train from `step` to opts.max_steps (or until opts.max_minutes), saving on the way; returns the last step."""
    from tqdm import tqdm

    saved_at = step if opts.resume else None  # the step whose state is on disk (a resumed run's start)
    bar = tqdm(total=opts.max_steps, initial=step, disable=not master, desc=desc, dynamic_ncols=True)
    t_last, items_seen = time.perf_counter(), 0
    deadline = time.monotonic() + 60 * opts.max_minutes if opts.max_minutes > 0 else None
    while step < opts.max_steps:
        if deadline is not None and steps.any_process(time.monotonic() > deadline):
            if saved_at != step:
                steps.save(step)
            log.info("--max-minutes %.1f reached at step %d: saved and stopped", opts.max_minutes, step)
            break
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, opts)
        logs: dict[str, float] = {}
        for micro in range(opts.grad_accum):
            batch = next(batches)
            last = micro == opts.grad_accum - 1
            with (contextlib.nullcontext() if last else steps.no_sync()):
                loss, micro_logs, extra = steps.loss(batch)
                steps.backward(loss / opts.grad_accum)
            micro_logs = dict(micro_logs, loss=float(loss.detach()))
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0.0) + v / opts.grad_accum
            items_seen += steps.items(batch) * world
        if opts.grad_clip > 0:
            logs["grad_norm"] = steps.clip(opts.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps.after_step(step)
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if step % opts.log_every == 0 or step == opts.max_steps:
            now = time.perf_counter()
            logs.update(lr=optimizer.param_groups[0]["lr"])
            logs[steps.throughput_key] = items_seen / max(now - t_last, 1e-9)
            t_last, items_seen = now, 0
            logger.scalars(step, logs)
        if preview_every and step % preview_every == 0 and master:
            steps.preview(step, batch, extra)
        if step % opts.save_every == 0 or step == opts.max_steps:
            steps.save(step)
            saved_at = step
    bar.close()
    return step
