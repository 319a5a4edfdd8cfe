"""Classifier-free guidance (Ho & Salimans 2022) for PoseTransferModel outputs, and condition dropout for training.

Paper §3.4 eq. 16: ε_cond = ε_uncond + w_c (ε_interaction − ε_uncond), w_c = 2 (appendix). PIDM implements the
single-scale form with "∅" = texture-encoder features of an all-zero source and the pose always present:
    ε = ε(x_t, pose, ∅) + w · [ε(x_t, pose, src) − ε(x_t, pose, ∅)]
and describes the disentangled 3-pass form (PIDM paper; not in PIDM's code, see notes/reference-systems.md §1.3):
    ε = ε(∅, ∅) + w_p · [ε(pose, ∅) − ε(∅, ∅)] + w_s · [ε(∅, src) − ε(∅, ∅)]
with the null pose = an all-zero pose map.

Only the ε channels are combined; learned-variance channels v are taken from one pass (the conditional one, or the
pose-only pass in the disentangled form, which is the closest to a fully conditional pass).

Model calling convention (docs/DESIGN.md): model(x_t, t, pose_map, cond) -> (B, 2C, H, W); cond is an
AppearanceCond (dataclass with tensor / list-of-tensor / None fields). The passes run as one forward of the
concatenated batch or one after the other, whichever measures faster (`CFGPasses`); their conditions are
concatenated once per (source, pose) pair, not at every step.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import InputError

logger = logging.getLogger("repose")

__all__ = ["cfg_combine", "cfg_combine_disentangled", "make_eps_fn", "drop_condition", "batch_conditions",
           "CFGPasses", "BATCHING"]

MODES = ("single", "disentangled")


def _split_eps(out: Tensor, eps_channels: int | None) -> tuple[Tensor, Tensor | None]:
    if eps_channels is None or eps_channels == out.shape[1]:
        return out, None
    if not 0 < eps_channels < out.shape[1]:
        raise InputError(f"eps_channels={eps_channels} must lie in [1, {out.shape[1]}] for an output with {out.shape[1]} channels")
    return out[:, :eps_channels], out[:, eps_channels:]


def cfg_combine(out_cond: Tensor, out_uncond: Tensor, w: float, eps_channels: int | None = None) -> Tensor:
    """uncond + w · (cond − uncond) on the ε channels; extra channels (learned variance v) come from `out_cond`.

    eps_channels: number of ε channels C (the model output then has 2C channels); None = all channels are ε.
    w = 1 gives the conditional prediction, w = 0 the unconditional one.
    """
    if out_cond.shape != out_uncond.shape:
        raise InputError(f"cfg_combine: cond output {tuple(out_cond.shape)} and uncond output {tuple(out_uncond.shape)} differ")
    eps_c, rest = _split_eps(out_cond, eps_channels)
    eps_u, _ = _split_eps(out_uncond, eps_channels)
    eps = eps_u + w * (eps_c - eps_u)
    return eps if rest is None else torch.cat([eps, rest], dim=1)


def cfg_combine_disentangled(
    out_null: Tensor, out_pose: Tensor, out_app: Tensor, w_pose: float, w_app: float, eps_channels: int | None = None
) -> Tensor:
    """ε(∅,∅) + w_pose·[ε(pose,∅) − ε(∅,∅)] + w_app·[ε(∅,app) − ε(∅,∅)]; v channels from `out_pose`."""
    if not out_null.shape == out_pose.shape == out_app.shape:
        raise InputError(
            f"cfg_combine_disentangled: outputs differ in shape {tuple(out_null.shape)}, {tuple(out_pose.shape)}, {tuple(out_app.shape)}"
        )
    eps_n, _ = _split_eps(out_null, eps_channels)
    eps_p, rest = _split_eps(out_pose, eps_channels)
    eps_a, _ = _split_eps(out_app, eps_channels)
    eps = eps_n + w_pose * (eps_p - eps_n) + w_app * (eps_a - eps_n)
    return eps if rest is None else torch.cat([eps, rest], dim=1)


# ---------------------------------------------------------------------------- batching conditions

def _expand(value: Tensor, batch: int, what: str) -> Tensor:
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise InputError(f"{what} has batch size {value.shape[0]}, expected {batch} (or 1 to share it across the batch)")


def batch_conditions(items: list, batch: int, what: str = "cond") -> Any:
    """Concatenate same-structured conditions along dim 0 (each first broadcast from batch 1 to `batch`).

    Works on tensors, None, lists/tuples, dicts and dataclasses (e.g. AppearanceCond) recursively; other leaves
    must be equal across items and are kept as they are.
    """
    first = items[0]
    if any((v is None) != (first is None) or isinstance(v, Tensor) != isinstance(first, Tensor) for v in items):
        kinds = ", ".join(type(v).__name__ for v in items)
        raise InputError(f"{what}: cannot batch {kinds} together (cond and null cond must have the same fields set)")
    if isinstance(first, Tensor):
        return torch.cat([_expand(v, batch, what) for v in items], dim=0)
    if first is None:
        return None
    if isinstance(first, (list, tuple)):
        if any(len(v) != len(first) for v in items):
            raise InputError(f"{what}: lists of different lengths {[len(v) for v in items]} cannot be batched")
        return type(first)(batch_conditions([v[j] for v in items], batch, f"{what}[{j}]") for j in range(len(first)))
    if isinstance(first, dict):
        return {k: batch_conditions([v[k] for v in items], batch, f"{what}[{k!r}]") for k in first}
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {
            f.name: batch_conditions([getattr(v, f.name) for v in items], batch, f"{what}.{f.name}")
            for f in dataclasses.fields(first)
            if f.init
        }
        return dataclasses.replace(first, **fields)
    if any(v != first for v in items):
        raise InputError(f"{what}: non-tensor values differ between the passes ({items!r}); cannot batch")
    return first


BATCHING = ("auto", "batched", "sequential")
_AUTO_CHOICE: dict[tuple, str] = {}  # batching="auto": measured choice per (model type, device, dtype, shape, passes)


class CFGPasses:
    """The n = 2 (single) or 3 (disentangled) model passes of one CFG step, with their conditions built ONCE per
    (source, pose) pair: the per-pass pose maps and conditions, and their batch concatenation, are cached per batch
    size, so a sampling step only concatenates x_t and t.

    batching: "batched" (one forward of n·B), "sequential" (n forwards of B, lower peak memory) or "auto": the
    first steps run each way twice (the first of each is a warm-up), timed, and the faster is used from then on and
    remembered for the process (per model type, device, dtype, shape). Both give the same outputs (on CPU bit for bit).
    """

    def __init__(self, model: Callable, pose_map: Tensor, cond: Any, null_cond: Any, mode: str = "single",
                 null_pose: Tensor | None = None, batching: str = "auto"):
        if mode not in MODES:
            raise InputError(f"unknown CFG mode {mode!r}; accepted: {', '.join(MODES)}")
        if batching not in BATCHING:
            raise InputError(f"unknown CFG batching {batching!r}; accepted: {', '.join(BATCHING)}")
        self.model, self.mode, self.batching = model, mode, batching
        if mode == "single":
            self.poses, self.conds = [pose_map, pose_map], [cond, null_cond]
            self.pose_names = ["pose_map", "pose_map"]
        else:
            null_pose = torch.zeros_like(pose_map) if null_pose is None else null_pose
            self.poses, self.conds = [null_pose, pose_map, null_pose], [null_cond, null_cond, cond]
            self.pose_names = ["null_pose", "pose_map", "null_pose"]
        self._built: dict[int, tuple] = {}  # B -> (per-pass [(pose, cond)], batched (pose, cond))
        self._trials: dict[str, list[float]] = {"batched": [], "sequential": []}
        self._timing: tuple | None = None  # the "auto" trial in progress: (how, key, start time)

    @property
    def n(self) -> int:
        return len(self.conds)

    def _inputs(self, B: int) -> tuple:
        if B not in self._built:
            poses = [_expand(p, B, name) for p, name in zip(self.poses, self.pose_names)]
            per_pass = [(p, batch_conditions([c], B)) for p, c in zip(poses, self.conds)]
            batched = (torch.cat(poses, dim=0), batch_conditions(self.conds, B))
            self._built = {B: (per_pass, batched)}  # one batch size at a time: keep memory bounded
        return self._built[B]

    def __call__(self, x_t: Tensor, t: Tensor) -> list[Tensor]:
        """The n model outputs at (x_t, t), each (B, ...), in the order of `cfg_combine(_disentangled)`."""
        per_pass, batched = self._inputs(x_t.shape[0])
        how = self._choose(x_t)
        if how == "batched":
            out = self.model(torch.cat([x_t] * self.n, dim=0), torch.cat([t] * self.n, dim=0), *batched)
            return list(out.chunk(self.n, dim=0))
        return [self.model(x_t, t, pose, cond) for pose, cond in per_pass]

    def _choose(self, x_t: Tensor) -> str:
        if self.batching != "auto":
            return self.batching
        key = (type(self.model).__name__, x_t.device.type, x_t.dtype, tuple(x_t.shape), self.n)
        if key in _AUTO_CHOICE:
            return _AUTO_CHOICE[key]
        trials = self._trials
        how = "batched" if len(trials["batched"]) <= len(trials["sequential"]) else "sequential"
        self._timing = (how, key, time.perf_counter())
        return how

    def record_timing(self, x_t: Tensor) -> None:
        """Called after a step's outputs are computed: closes the timing of an "auto" trial."""
        timing = self._timing
        if timing is None:
            return
        self._timing = None
        how, key, start = timing
        if x_t.device.type == "cuda":
            torch.cuda.synchronize(x_t.device)
        self._trials[how].append(time.perf_counter() - start)
        b, s = self._trials["batched"], self._trials["sequential"]
        if len(b) >= 2 and len(s) >= 2:  # the first trial of each is a warm-up (allocations, kernel selection)
            _AUTO_CHOICE[key] = "batched" if min(b[1:]) <= min(s[1:]) else "sequential"
            logger.debug("CFG batching for %s: %s (batched %.1f ms, sequential %.1f ms)", key, _AUTO_CHOICE[key],
                         1000 * min(b[1:]), 1000 * min(s[1:]))


def make_eps_fn(
    model: Callable,
    pose_map: Tensor,
    cond: Any,
    null_cond: Any,
    w: float = 2.0,
    mode: str = "single",
    w_pose: float | None = None,
    w_app: float | None = None,
    null_pose: Tensor | None = None,
    combine_variance: bool = False,
    *,
    batching: str = "auto",
) -> Callable[[Tensor, Tensor], Tensor]:
    """eps_fn(x_t, t) -> one CFG-combined model output (B, 2C, ...), for the samplers.

    mode="single":        ε(pose, ∅) + w·[ε(pose, cond) − ε(pose, ∅)]; w = 1 runs only the conditional pass.
    mode="disentangled":  3 passes (∅,∅), (pose,∅), (∅,cond) with w_pose / w_app (default: w);
                          null_pose defaults to zeros_like(pose_map).
    combine_variance=True extrapolates the v channels too, as PIDM's `forward_with_cond_scale` does (parity);
    the default keeps v of the conditional pass (GLIDE / improved-diffusion practice, keeps v inside [-1, 1]).
    The passes' conditions are concatenated once, here, not at every step; batching "auto" measures batched against
    sequential passes on the first steps (`CFGPasses`)."""
    passes = CFGPasses(model, pose_map, cond, null_cond, mode, null_pose, batching)
    w_pose = w if w_pose is None else w_pose
    w_app = w if w_app is None else w_app
    only_cond = mode == "single" and w == 1.0
    cond_inputs: dict[int, tuple] = {}

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        B, C = x_t.shape[:2]
        if only_cond:  # w = 1: the conditional pass alone
            if B not in cond_inputs:
                cond_inputs.clear()
                cond_inputs[B] = (_expand(pose_map, B, "pose_map"), batch_conditions([cond], B))
            return model(x_t, t, *cond_inputs[B])
        outs = passes(x_t, t)
        eps_channels = C if outs[0].shape[1] == 2 * C and not combine_variance else None
        if mode == "single":
            eps = cfg_combine(outs[0], outs[1], w, eps_channels)
        else:
            eps = cfg_combine_disentangled(outs[0], outs[1], outs[2], w_pose, w_app, eps_channels)
        passes.record_timing(x_t)
        return eps

    eps_fn.passes = passes  # type: ignore[attr-defined]  # a function attribute, for benchmarks / inspection
    return eps_fn


def drop_condition(batch_size: int, p: float = 0.1, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Bool mask (batch_size,), True = replace this sample's condition by ∅ (CFG training, paper appendix p = 10%)."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"condition dropout probability p must lie in [0, 1], got {p!r}")
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(int(batch_size), generator=generator, device=gen_device)
    return (u < p).to(device if device is not None else gen_device)
