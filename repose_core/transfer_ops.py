"""Building blocks of a pose transfer that the ComfyUI nodes (and scripts) call one at a time:
target pose -> pose tensor, source/pose batch pairing, Recurrent Pose Alignment with a chosen number of iterations,
and the conditions used during sampling. Pure PyTorch (no ComfyUI).

The whole pipeline (load, align, sample, decode) lives in `repose_core.pipeline`; these are its steps exposed
separately because a node graph runs them in separate nodes (RPA preview, then sampling with any sampler).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import EmptyPoseError, InputError
from .models.repose import AppearanceCond, RePoseDM
from .pose import PoseFrame, check_pose_plausible, render_openpose, render_pidm_pose_map
from .pose.geometry import fit_frame, select_person


def place_target_poses(frames: Sequence[PoseFrame], height: int, width: int, person: int = -1):
    """Pick the target person of each frame and place its pose on the height x width source image.

    The person: `person` >= 0 by index, -1 the most confident body (`select_person`; DWPose may list a face-only
    person first). The canvas: fitted like an image (`fit_frame`: same aspect ratio rescaled, another aspect ratio
    scaled to fit and centred, never stretched). Returns (frames holding one person each, one report line per frame).
    A frame without any body joint raises EmptyPoseError naming it (a pose transfer needs a target body)."""
    if not frames:
        raise InputError("the target pose holds no frame; connect a pose with at least one person")
    placed, report = [], []
    for i, frame in enumerate(frames):
        if not frame.people or all(p.is_empty() for p in frame.people):
            raise EmptyPoseError(f"frame {i} of the target pose has no person with body joints (no keypoint with "
                                 f"confidence > 0); a pose transfer needs the target body's joints")
        index, why = select_person(frame, person)
        if frame.people[index].is_empty():
            raise EmptyPoseError(f"frame {i} of the target pose: person {index} has no body joints (face or hands "
                                 f"only); choose another person or -1 for the most confident body")
        check_pose_plausible(frame.people[index], name=f"target pose frame {i}, person {index}")  # units mix-ups
        one = PoseFrame([frame.people[index]], frame.width, frame.height)
        one, fit = fit_frame(one, width, height)
        placed.append(one)
        report.append(f"target pose frame {i}: {why}; {fit}")
    return placed, report


def render_target_poses(frames: Sequence[PoseFrame], height: int, width: int, encoding: str, person: int = -1,
                        report: list | None = None) -> Tensor:
    """Target poses -> (B, P, H, W) float32 in [0, 1] at pixel resolution, as `RePoseDM.encode_pose` takes them.

    One person per frame and its placement on the image come from `place_target_poses` (its report lines are
    appended to `report` when given). encoding "pidm20": PIDM's 20-channel map; "skeleton_codec": the OpenPose RGB
    skeleton."""
    if encoding not in ("pidm20", "skeleton_codec"):
        raise InputError(f"unknown pose encoding {encoding!r}; accepted: pidm20, skeleton_codec")
    placed, lines = place_target_poses(frames, height, width, person)
    if report is not None:
        report.extend(lines)
    maps = []
    for frame in placed:
        if encoding == "pidm20":
            maps.append(render_pidm_pose_map(frame.people[0], height, width))
        else:
            maps.append(render_openpose(frame, height, width))
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).contiguous()  # (B,H,W,P) -> (B,P,H,W)


def pair_batches(source: Tensor, pose: Tensor, names: tuple[str, str] = ("source", "target pose")):
    """Broadcast a batch of 1 to the other's size; different sizes > 1 are an InputError naming both inputs."""
    bs, bp = source.shape[0], pose.shape[0]
    if bs == bp:
        return source, pose
    if bs == 1:
        return source.expand(bp, *source.shape[1:]), pose
    if bp == 1:
        return source, pose.expand(bs, *pose.shape[1:])
    raise InputError(f"batch mismatch: {names[0]} has {bs} images but {names[1]} has {bp}; give the same number, "
                     f"or one of them a single item that is used for all")


def _checked_iterations(iterations: int | None) -> int | None:
    """None or 0 = the model's trained N; otherwise an integer >= 1."""
    if not iterations:
        return None
    if int(iterations) != iterations or iterations < 1:
        raise InputError(f"RPA iterations must be an integer >= 1 (0 = the model's default), got {iterations!r}")
    return int(iterations)


@dataclasses.dataclass
class Alignment:
    """Result of `align`: the sampling conditions and what to show the user."""

    cond: AppearanceCond         # features only (what the denoiser needs at every step)
    null_cond: AppearanceCond    # CFG "∅"
    pose_map: Tensor             # (B, P, h, w) diffusion space
    source_z: Tensor             # (B, C, h, w) diffusion space
    previews: list[Tensor]       # decoded warped source per RPA iteration, (B, 3, H, W) in [-1, 1]; [] for b1
    flow: Tensor | None          # (B, 2, h, w) final RPA flow, diffusion pixels; None for b1
    aligned: Tensor | None       # (B, C, h, w) RPA's last warped source, diffusion space (`sample`'s aligned_start)


@torch.no_grad()
def align(model: RePoseDM, source: Tensor, pose: Tensor, iterations: int | None = None,
          progress: Callable | None = None, previews: bool = True) -> Alignment:
    """The core's one conditioning step (pipeline, nodes, training sample grids, generation, ablation): encode the
    source (B, 3, H, W) in [-1, 1] and the pixel-resolution pose (B, P, H, W), run `prepare` (RPA for b2/full,
    paper Sec. 3.2) and make CFG's ∅. previews: decode each RPA iteration's warp for display (b2/full). Sizes must
    already be paired (see `pair_batches`)."""
    source_z = model.encode_source(source)
    pose_map = model.encode_pose(pose.to(source.dtype), size=(source_z.shape[-2], source_z.shape[-1]))
    cond = model.prepare(source_z, pose_map, progress=progress, decode_previews=previews and model.rpa is not None,
                         iterations=_checked_iterations(iterations))
    null = model.null_cond(cond)
    return Alignment(cond=cond.features_only(), null_cond=null.features_only(), pose_map=pose_map,
                     source_z=source_z, previews=list(cond.previews), flow=cond.flow,
                     aligned=cond.warped[-1] if cond.warped else None)


@torch.no_grad()
def sample(model: RePoseDM, diffusion, pose_map: Tensor, cond: AppearanceCond, null_cond: AppearanceCond, *,
           steps: int = 20, cfg: float = 2.0, eta: float = 0.0, generator: torch.Generator | None = None,
           x0_hook: Callable | None = None, callback: Callable | None = None, spacing: str = "pidm",
           clip_x0: bool = False, aligned_start: float | None = None, warped: Tensor | None = None,
           final_timestep: int | None = None) -> Tensor:
    """The core's one sampling loop (pipeline, training sample grids, generation scripts): PIDM's single-scale CFG
    (w = `cfg`, ∅ = `null_cond`) and DDIM, x_T drawn from `generator` (CPU or on its device) -> z0 (B, C, h, w).

    cond / null_cond: from `model.prepare` / `model.null_cond` (only what `forward` reads is passed to the denoiser).
    aligned_start (our addition, RPA models): start from `warped` (RPA's last aligned source, diffusion space) noised
    to this fraction of the trajectory instead of pure noise (SDEdit); None samples from noise like the paper.
    final_timestep: the last timestep evaluated, whose x̂0 is the result; None = the model's (0 = the whole
    trajectory, as the paper; RePoseConfig.final_timestep says why a model may prefer another)."""
    from .diffusion import ddim_sample, make_eps_fn

    B = pose_map.shape[0]
    shape = (B, model.config.diffusion_channels, *pose_map.shape[-2:])
    x_T = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu")
    x_T = x_T.to(device=pose_map.device, dtype=pose_map.dtype)
    start: dict[str, Any] = {}
    if aligned_start is not None:
        if warped is None:
            raise InputError("aligned_start needs a model with Recurrent Pose Alignment (b2 / full); this model is b1 "
                             "(PIDM)")
        if not 0.0 < float(aligned_start) <= 1.0:
            raise InputError(f"aligned_start must lie in (0, 1], got {aligned_start!r}")
        start = dict(t_start=aligned_start_t(diffusion, aligned_start), x_init=warped)
    eps_fn = make_eps_fn(model, pose_map, cond.features_only(), null_cond.features_only(), w=cfg)
    return ddim_sample(eps_fn, x_T, diffusion, steps=steps, eta=eta, x0_hook=x0_hook, callback=callback,
                       generator=generator if eta > 0 else None, spacing=spacing, clip_denoised=bool(clip_x0),
                       final_timestep=final_timestep_of(model.config, final_timestep), **start)


def final_timestep_of(config, final_timestep: int | None) -> int:
    """The final timestep to sample with: None or -1 = the model's (`RePoseConfig.final_timestep`), else the given
    one, which must lie in [0, T-1]. The one place that resolves it (pipeline, nodes, sample, scripts)."""
    if final_timestep is None or final_timestep == -1:
        return int(config.final_timestep)
    if isinstance(final_timestep, bool) or int(final_timestep) != final_timestep \
            or not 0 <= final_timestep < config.timesteps:
        raise InputError(f"final_timestep is {final_timestep!r}; accepted: -1 (the model's setting, "
                         f"{config.final_timestep}) or an integer from 0 to {config.timesteps - 1}")
    return int(final_timestep)


def aligned_start_t(diffusion, aligned_start: float) -> int:
    """The timestep sampling starts at for `sample(aligned_start=...)`."""
    return int(round(float(aligned_start) * (diffusion.num_timesteps - 1)))
