"""High-level pose transfer: a source photo + a target pose -> the person re-rendered in that pose.

    pipe = PoseTransferPipeline.from_files("repose_default_full.safetensors", "repose_default_estimator.safetensors")
    result = pipe.transfer(source_img, target_pose, steps=20, cfg=2.0, guidance={"scale": 1.0}, seed=0)
    result.image            # (H, W, 3) float32 in [0, 1], the size of source_img

What `transfer` does, in order (RePoseDM paper Sec. 3):
1. Canvas: the source image is fitted into the model's canvas (`config.image_size`) keeping its aspect ratio (pad
   with the source's border colour, or stretch); the target pose is placed in the source frame (its own canvas is
   fitted into the source image's) and moved with the image. `retarget=True` first refits the target skeleton to
   the source body's bone lengths (`repose_core.pose.retarget_pose`), with the source pose given or estimated.
2. Conditioning: source -> codec (diffusion space); pose -> PIDM pose map -> `model.encode_pose`;
   `model.prepare` runs RPA once (b2/full: flow + warped source per iteration, eq. 5-9).
3. Sampling: DDIM from seeded noise with classifier-free guidance (eq. 16, w = `cfg`) and, when asked, pose
   gradient guidance as the sampler's x̂0 hook (`repose_core.guidance.PoseGuidance`, eq. 12-15).
4. Back to the source size: the padded border is cropped and the image resized to the source's H x W.

Batches: a list of images (or a (B, H, W, 3) array) with one pose each (or one pose for all) runs as one batch.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .diffusion import GaussianDiffusion, linear_betas, spaced_timesteps
from .errors import CheckpointError, EmptyPoseError, InputError
from .estimator import build_estimator
from .models.codec import Codec
from .pose import Pose, PoseFrame, fit_params, render_pidm_pose_map, resize_image, retarget_pose, transform_pose
from .pose.keypoints import to_layout
from .transfer_ops import align, aligned_start_t, final_timestep_of, sample

log = logging.getLogger("repose")

FIT_MODES = ("pad", "stretch")


@dataclass
class TransferResult:
    """What `PoseTransferPipeline.transfer` returns. Images are float32 numpy arrays in [0, 1], (H, W, 3)."""

    images: list[np.ndarray]             # per batch item, at the size of its source image
    canvas_images: np.ndarray            # (B, Hm, Wm, 3) on the model canvas
    warped: list[np.ndarray]             # per RPA iteration: (B, Hm, Wm, 3) decoded warped source; [] for b1
    flow: Tensor | None                  # (B, 2, h, w) final RPA flow in diffusion-space pixels; None for b1
    target_poses: list[Pose]             # the target pose of each item in its source image's frame
    canvas_poses: list[Pose]             # ... on the model canvas (what the model and the guidance saw)
    guidance_history: list[dict] = field(default_factory=list)  # PoseGuidance.history (energy per guided step)
    seed: int = 0
    steps: int = 0
    seconds: float = 0.0

    @property
    def image(self) -> np.ndarray:
        """The first (or only) result image, (H, W, 3) in [0, 1]."""
        return self.images[0]

    @property
    def energy_history(self) -> list[tuple[int, list[float]]]:
        """(step index, guidance energy per batch item) of every guided step."""
        return [(h["step"], h["energy"]) for h in self.guidance_history]


@dataclass
class _Placement:
    """How one source image sits on the model canvas (fit_params of the image into the canvas)."""

    src_h: int
    src_w: int
    new_h: int
    new_w: int
    sx: float
    sy: float
    ox: int
    oy: int


def as_float_image(img, name: str = "source_img") -> np.ndarray:
    """(H, W, 3) uint8 or float in [0, 1] (also a torch tensor, or RGBA / grey) -> float32 (H, W, 3) in [0, 1]."""
    if isinstance(img, Tensor):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise InputError(f"{name} must be an RGB image (H, W, 3) as uint8 or float in [0, 1], got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise InputError(f"{name} is a float image with values in [{arr.min():.3g}, {arr.max():.3g}]; floats must "
                         f"be in [0, 1] (divide uint8 images by 255, or pass them as uint8)")
    return np.clip(arr, 0.0, 1.0)


def pose_in_frame(pose: Pose, width: int, height: int) -> Pose:
    """Place a pose drawn on its own canvas into a `width` x `height` frame: same canvas -> unchanged; otherwise a
    uniform scale that fits the pose canvas inside the frame, centred (the skeleton is never distorted)."""
    if not isinstance(pose, Pose):
        raise InputError(f"target pose must be a repose_core.pose.Pose, got {type(pose).__name__}")
    if (pose.width, pose.height) == (width, height):
        return pose
    s = min(width / pose.width, height / pose.height)
    offset = ((width - s * pose.width) / 2, (height - s * pose.height) / 2)
    return transform_pose(pose, s, offset, width, height)


def border_colour(img: np.ndarray) -> np.ndarray:
    """Median colour of the image border, (3,) in [0, 1]: padding that blends with the background."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)
    return np.median(border, axis=0).astype(np.float32)


def _single_pose(obj, what: str) -> Pose:
    """A Pose from a Pose / PoseFrame (first person) / list of frames as load_pose_file returns."""
    if isinstance(obj, Pose):
        return obj
    if isinstance(obj, PoseFrame):
        if not obj.people:
            raise EmptyPoseError(f"{what}: the pose frame has no person")
        if len(obj.people) > 1:
            log.warning("%s: %d people in the pose frame; using the first", what, len(obj.people))
        return obj.people[0]
    if isinstance(obj, Sequence) and len(obj) == 1:
        return _single_pose(obj[0], what)
    raise InputError(f"{what} must be a Pose or a PoseFrame with one person, got {type(obj).__name__}")


class PoseTransferPipeline:
    """Pose transfer with a RePoseDM / PIDM model (module docstring). Reusable: models are not copied."""

    def __init__(self, model: nn.Module, codec: Codec | None = None, estimator: nn.Module | None = None):
        from .models.repose import as_repose_model

        self.model = as_repose_model(model).eval()
        if codec is not None:
            self.model.set_codec(codec)
        self.codec = self.model.codec
        self.estimator = estimator.eval() if estimator is not None else None
        config = self.model.config
        self.size = tuple(config.image_size)  # (Hm, Wm), the canvas the model was trained at
        self.diffusion = GaussianDiffusion(linear_betas(config.timesteps))

    # -- construction ----------------------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, model_path, estimator_path=None, *, device="cpu", vae_codec: Codec | None = None
                   ) -> "PoseTransferPipeline":
        """Load a RePoseDM ("repose_dm") or converted PIDM ("pidm") safetensors and, optionally, a pose estimator
        (our SmallHRNet / HigherHRNet safetensors, or HigherHRNet .pth). Models are built outside inference mode
        so that guidance can differentiate through them."""
        from .checkpoint import load_model, read_metadata
        from .models.repose import as_repose_model

        kind = read_metadata(model_path)["kind"]
        if kind not in ("repose_dm", "pidm"):
            raise CheckpointError(f"{model_path}: a {kind!r} file is not a pose-transfer model; expected a RePoseDM "
                                  f"('repose_dm') or converted PIDM ('pidm') checkpoint")
        with torch.inference_mode(False):
            model = as_repose_model(load_model(model_path, device=device))
        estimator = build_estimator(estimator_path, device=device) if estimator_path is not None else None
        return cls(model, vae_codec, estimator)

    @classmethod
    def tiny_random(cls, variant: str = "full", seed: int = 0, estimator: nn.Module | None = None
                    ) -> "PoseTransferPipeline":
        """An untrained model of the "tiny" preset (64x44): runs end to end, produces noise-like images."""
        from .models.configs import get_config
        from .models.repose import RePoseDM

        with torch.inference_mode(False):
            torch.manual_seed(seed)
            model = RePoseDM(get_config("tiny", variant))
        return cls(model, None, estimator)

    # -- canvas handling -------------------------------------------------------------------------------------------

    def placement(self, img: np.ndarray, fit: str) -> _Placement:
        H, W = self.size
        if fit == "stretch":
            return _Placement(img.shape[0], img.shape[1], H, W, W / img.shape[1], H / img.shape[0], 0, 0)
        new_h, new_w, sx, sy, ox, oy = fit_params(img.shape[0], img.shape[1], H, W, "pad")
        return _Placement(img.shape[0], img.shape[1], new_h, new_w, sx, sy, ox, oy)

    def to_canvas(self, img: np.ndarray, p: _Placement, pad_value) -> np.ndarray:
        """Source image (h, w, 3) -> model canvas (Hm, Wm, 3)."""
        H, W = self.size
        out = np.empty((H, W, 3), np.float32)
        out[...] = pad_value
        out[p.oy:p.oy + p.new_h, p.ox:p.ox + p.new_w] = resize_image(img, p.new_h, p.new_w)
        return out

    @staticmethod
    def from_canvas(img: np.ndarray, p: _Placement) -> np.ndarray:
        """Model-canvas image (Hm, Wm, 3) -> the source image's size (crop the padding, resize back)."""
        return np.clip(resize_image(img[p.oy:p.oy + p.new_h, p.ox:p.ox + p.new_w], p.src_h, p.src_w), 0, 1)

    def pose_to_canvas(self, pose: Pose, p: _Placement) -> Pose:
        """A pose in the source image's frame -> the model canvas."""
        H, W = self.size
        return transform_pose(pose, (p.sx, p.sy), (p.ox, p.oy), W, H)

    def estimate_pose(self, img01: np.ndarray) -> Pose:
        """OpenPose-18 pose of the person in an (H, W, 3) [0, 1] image, by the pipeline's estimator."""
        from .estimator.decode import estimate_poses

        if self.estimator is None:
            raise InputError("no pose estimator loaded: pass source_pose= (the source's pose file), or load the "
                             "pipeline with an estimator (estimator_path=...) to estimate it")
        x = torch.from_numpy(np.ascontiguousarray(img01)).permute(2, 0, 1)[None].to(self._device())
        frame = estimate_poses(self.estimator, x, threshold=0.1, to_openpose18=True)[0]
        if not frame.people:
            raise EmptyPoseError("no person found in the source image by the pose estimator; pass its pose with "
                                 "--source-pose / source_pose=")
        return frame.people[0]

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def progress_total(self, steps: int, spacing: str = "pidm", final_timestep: int | None = None) -> int:
        """Units `transfer` reports to `progress`: RPA iterations + sampling steps (same arguments as `transfer`)."""
        n_rpa = self.model.rpa.config.iterations if self.model.rpa is not None else 0
        final_t = final_timestep_of(self.model.config, final_timestep)
        return n_rpa + len(spaced_timesteps(self.diffusion.num_timesteps, steps, spacing, final_t))

    # -- the main job ----------------------------------------------------------------------------------------------

    def transfer(self, source_img, target_pose, steps: int = 20, cfg: float | None = None, guidance=None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None, *, source_pose=None,
                 retarget: bool = False, eta: float = 0.0, fit: str = "pad", pad_value=None,
                 spacing: str = "pidm", clip_x0: bool | None = None,
                 aligned_start: float | None = None, final_timestep: int | None = None) -> TransferResult:
        """Re-render the person of `source_img` in `target_pose` (module docstring).

        source_img: (H, W, 3) uint8 / float [0, 1], or a list of them / (B, H, W, 3) array for a batch.
        target_pose: Pose (or PoseFrame with one person) in its own canvas; one per batch item or one for all.
        cfg: classifier-free guidance scale w (default: the model config's, PIDM/paper 2.0).
        guidance: None (off), True (the model config's `guidance`, a GuidanceConfig) or a dict of GuidanceConfig
            fields replacing some of its values: scale (η), energy ("keypoint" | "feature"; feature needs
            "reference": an (H, W, 3) image of the target person), start, end, every, schedule, reduction,
            clip_grad_norm, estimator_size, heatmap_sigma, threshold, cfg_scale_gradient.
        progress(done, total): after every RPA iteration and every sampling step.
        source_pose / retarget: with retarget=True the target skeleton is refitted to the source body (bone
            lengths); the source pose is `source_pose` (per item or one) or estimated by the estimator.
        fit: "pad" (keep aspect, pad with `pad_value`, default the source's border colour) or "stretch".
        clip_x0: clamp each step's x̂0 to [-1, 1] (improved-DDPM / PIDM `clip_denoised`); None = on for the pixel
            and pixel-unshuffle codecs (their space is the image itself, so the clamp is exact), off for VAE latents.
            Without it, an undertrained model's x̂0 error at high noise (amplified by 1/√ᾱ_t) can make DDIM diverge.
        aligned_start: OUR ADDITION (b2 / full models): instead of pure noise, start from RPA's aligned source noised
            to this fraction of the trajectory (0 < s ≤ 1; t_start = s·T, as SDEdit): the denoiser then corrects the
            warp rather than drawing the person from scratch. None (default) samples from noise like the paper.
        final_timestep: the last timestep evaluated, its x̂0 the result; None = the model config's (0 = the whole
            trajectory, as the paper; RePoseConfig.final_timestep)."""
        start = time.perf_counter()
        if fit not in FIT_MODES:
            raise InputError(f"fit must be one of {FIT_MODES}, got {fit!r}")
        sources = self._as_batch(source_img)
        B = len(sources)
        targets = self._per_item(target_pose, B, "target_pose")
        src_poses = self._per_item(source_pose, B, "source_pose") if source_pose is not None else [None] * B
        cfg_w = float(self.model.config.cfg_scale if cfg is None else cfg)
        final_t = final_timestep_of(self.model.config, final_timestep)
        timesteps = spaced_timesteps(self.diffusion.num_timesteps, steps, spacing, final_t)
        if aligned_start is not None:  # sampling starts part-way (the progress bar counts only those steps)
            timesteps = [t for t in timesteps if t <= aligned_start_t(self.diffusion, aligned_start)]
        total_steps = max(1, len(timesteps))

        # 1. canvas
        placements, canvas_imgs, canvas_poses, frame_poses = [], [], [], []
        for img, tgt, src_pose in zip(sources, targets, src_poses):
            p = self.placement(img, fit)
            fill = border_colour(img) if pad_value is None else pad_value
            canvas = self.to_canvas(img, p, fill)
            tgt = pose_in_frame(tgt, img.shape[1], img.shape[0])
            if retarget:
                src = pose_in_frame(src_pose, img.shape[1], img.shape[0]) if src_pose is not None else None
                if src is None:  # estimate on the canvas (the estimator's training size), then back to the frame
                    est = self.estimate_pose(canvas)
                    src = transform_pose(est, (1 / p.sx, 1 / p.sy), (-p.ox / p.sx, -p.oy / p.sy), img.shape[1],
                                         img.shape[0])
                tgt = retarget_pose(tgt, src)
            placements.append(p)
            canvas_imgs.append(canvas)
            frame_poses.append(tgt)
            canvas_poses.append(self.pose_to_canvas(tgt, p))

        n_rpa = self.model.rpa.config.iterations if self.model.rpa is not None else 0
        done = [0]

        def tick(_=None, __=None):
            done[0] += 1
            if progress is not None:
                progress(done[0], n_rpa + total_steps)

        device = self._device()
        dtype = next(self.model.parameters()).dtype
        Hm, Wm = self.size
        # 2. conditioning
        src_img = torch.from_numpy(np.stack(canvas_imgs)).permute(0, 3, 1, 2).to(device=device, dtype=dtype)
        pose_px = torch.from_numpy(np.stack([render_pidm_pose_map(p, Hm, Wm) for p in canvas_poses]))
        al = align(self.model, src_img * 2 - 1, pose_px.permute(0, 3, 1, 2).to(device=device, dtype=dtype),
                   progress=tick if n_rpa else None)     # the core's one conditioning step
        warped = [self._to_numpy01(w) for w in al.previews]

        # 3. sampling (the core's one loop: transfer_ops.sample)
        hook = self._guidance(guidance, canvas_poses, total_steps, B) if guidance else None
        if clip_x0 is None:
            clip_x0 = self.codec.image_space
        z0 = sample(self.model, self.diffusion, al.pose_map, al.cond, al.null_cond, steps=steps, cfg=cfg_w, eta=eta,
                    generator=torch.Generator(device="cpu").manual_seed(int(seed)), x0_hook=hook,
                    callback=lambda info: tick(), spacing=spacing, clip_x0=clip_x0, aligned_start=aligned_start,
                    warped=al.aligned, final_timestep=final_t)
        with torch.no_grad():
            canvas_out = self._to_numpy01(self.codec.decode(z0))

        # 4. back to the source size
        images = [self.from_canvas(c, p) for c, p in zip(canvas_out, placements)]
        return TransferResult(images=images, canvas_images=canvas_out, warped=warped, flow=al.flow,
                              target_poses=frame_poses, canvas_poses=canvas_poses,
                              guidance_history=list(hook.history) if hook is not None else [], seed=int(seed),
                              steps=total_steps, seconds=time.perf_counter() - start)

    __call__ = transfer

    # -- helpers ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _to_numpy01(x: Tensor) -> np.ndarray:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 in [0, 1]."""
        return ((x.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()

    @staticmethod
    def _as_batch(source_img) -> list[np.ndarray]:
        if isinstance(source_img, (list, tuple)):
            if not source_img:
                raise InputError("source_img is an empty list; give at least one image")
            return [as_float_image(im, f"source_img[{i}]") for i, im in enumerate(source_img)]
        arr = source_img.detach().cpu().numpy() if isinstance(source_img, Tensor) else np.asarray(source_img)
        if arr.ndim == 4:
            return [as_float_image(im, f"source_img[{i}]") for i, im in enumerate(arr)]
        return [as_float_image(arr)]

    @staticmethod
    def _per_item(obj, B: int, what: str) -> list[Pose]:
        if isinstance(obj, (Pose, PoseFrame)):
            return [_single_pose(obj, what)] * B
        if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
            if len(obj) == 1:
                return [_single_pose(obj[0], what)] * B
            if len(obj) != B:
                raise InputError(f"{what}: {len(obj)} poses for {B} source images; give one pose per image or one "
                                 f"for all")
            return [_single_pose(o, f"{what}[{i}]") for i, o in enumerate(obj)]
        raise InputError(f"{what} must be a Pose (repose_core.pose), a PoseFrame or a list of them; got "
                         f"{type(obj).__name__}. Load pose files with repose_core.pose.load_pose_file")

    def _guidance(self, guidance, canvas_poses: list[Pose], total_steps: int, B: int):
        """PoseGuidance for the sampler: the model config's GuidanceConfig, with a dict's settings (GuidanceConfig
        fields, plus "reference" for the feature energy) replacing its values."""
        from .guidance import PoseGuidance

        opts = {} if guidance is True else dict(guidance)
        reference = opts.pop("reference", None)
        settings = self.model.config.guidance.replace(**opts)  # unknown / invalid settings fail here, named
        if self.estimator is None:
            raise InputError("pose guidance needs a pose estimator: load the pipeline with estimator_path= (e.g. "
                             "repose_core/weights/repose_default_estimator.safetensors) or pass guidance=None")
        if "estimator_size" not in opts:
            settings = settings.replace(estimator_size=self._estimator_size(getattr(self.estimator, "config", None)))
        if settings.energy == "feature":
            if reference is None:
                raise InputError("feature guidance (eq. 11) needs guidance['reference']: an image of the target "
                                 "person in the target pose; use energy='keypoint' otherwise")
            ref = np.stack([resize_image(r, *self.size) for r in self._as_batch(reference)])
            target: Tensor | list[PoseFrame] = torch.from_numpy(ref).permute(0, 3, 1, 2).to(self._device())
        else:
            Hm, Wm = self.size
            target = [PoseFrame([to_layout(p, "coco17")], Wm, Hm) for p in canvas_poses]
        return PoseGuidance(self.estimator, self.codec, target, settings, total_steps=total_steps,
                            alphas_cumprod=torch.as_tensor(self.diffusion.alphas_cumprod),
                            cfg_scale=float(self.model.config.cfg_scale))

    def _estimator_size(self, est_cfg) -> int | None:
        """Longer side for the estimator input so that the short side matches the estimator's training size."""
        input_size = getattr(est_cfg, "input_size", None)
        Hm, Wm = self.size
        if not input_size or min(Hm, Wm) == input_size:
            return None
        return max(32, int(round(max(Hm, Wm) * input_size / min(Hm, Wm))))


# The one estimator loader is repose_core.estimator.build_estimator; this alias stays for callers not yet moved.
load_estimator = build_estimator
