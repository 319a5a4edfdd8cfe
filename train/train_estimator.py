"""Train the small HigherHRNet-style pose estimator (repose_core.estimator.small_hrnet) on synthetic figures.

    python train/train_estimator.py --data-root /work/runs/data/synth64 --out-dir /work/runs/estimator \
        --minutes 10 --export repose_core/weights/repose_default_estimator.safetensors

Data: a repose-synthetic dataset in the DeepFashion PATN layout (train/make_synthetic.py): images of
`train_highres/`, OpenPose-18 keypoints of `fasion-resize-annotation-train.csv` converted to COCO-17 (neck dropped).
Held-out identities (`test_highres/`) measure PCK@0.1 (bbox-normalised) and the mean keypoint error with the real
decoding path (`estimate_poses`), on clean test images and on degraded ones (blur + noise, closer to what a small
diffusion model generates).

Targets: Gaussian heatmaps (peak 1, sigma in heatmap pixels) at the two output resolutions, rendered by the same
function the guidance keypoint energy uses (repose_core.guidance.gaussian_heatmaps), so a perfect pose has zero
keypoint energy. Loss: HigherHRNet's multi-resolution heatmap MSE (1/4 and 1/2 outputs).

Augmentation (batched, on the fly): random similarity transform (scale, rotation, shift) with keypoints moved
alike, horizontal flip with left/right joints swapped, colour jitter, Gaussian blur and noise.

Everything runs on the CPU in one process (`--threads`, default 1: on a shared machine one thread per process is
much faster than oversubscribed threads). Stops at `--steps` or after `--minutes`, whichever comes first; the
EMA-free final weights are exported as safetensors (kind "pose_estimator", builder "small_hrnet").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine
from PIL import Image

from repose_core.checkpoint import save_model
from repose_core.errors import InputError
from repose_core.estimator.decode import estimate_poses
from repose_core.estimator.small_hrnet import SmallHRNet, SmallHRNetConfig
from repose_core.guidance.targets import gaussian_heatmaps
from repose_core.metrics import pose_accuracy
from repose_core.pose import read_patn_annotations
from repose_core.pose.keypoints import MIRROR, openpose18_to_coco17


@dataclass
class Options:
    data_root: str = "/work/runs/data/synth64"
    out_dir: str = "/work/runs/estimator"
    export: str = ""              # where to write the final safetensors ("" = <out_dir>/estimator.safetensors)
    steps: int = 100000
    minutes: float = 10.0         # wall-clock budget; training stops at whichever of steps/minutes comes first
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    width: int = 16
    stem: int = 32
    num_modules: int = 2
    num_blocks: int = 2
    sigma: float = 1.5            # target Gaussian sigma in 1/2-resolution heatmap pixels (1/4: the same in its own)
    fg_weight: float = 10.0       # extra loss weight on target pixels (w = 1 + fg_weight * target): small Gaussians
                                  # on a large empty map otherwise teach the network to predict zeros for a long time
    max_scale: float = 0.2        # random scale 1 ± max_scale
    max_rotation: float = 15.0    # degrees
    max_shift: float = 0.08       # fraction of the image size
    flip_prob: float = 0.5
    degrade_prob: float = 0.5     # probability of blur + noise
    eval_every: int = 200
    eval_images: int = 240
    seed: int = 0
    threads: int = 1
    save_fp16: bool = True        # store the weights as float16 (half the file size; loaded back as float32)
    dry_run: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Options):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=typ, default=f.default)
    return p


# ----------------------------------------------------------------------------------------------------------------
# Data


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """-> images uint8 (N, 3, H, W), COCO-17 keypoints (N, 17, 3) in image pixels, names."""
    manifest = json.loads((root / "dataset.json").read_text())
    H, W = manifest["size"]["height"], manifest["size"]["width"]
    ann = read_patn_annotations(root / f"fasion-resize-annotation-{split}.csv", height=H, width=W)
    names = sorted(ann)
    if not names:
        raise InputError(f"{root}: no annotated images in split {split!r}")
    imgs = np.stack([np.asarray(Image.open(root / f"{split}_highres" / n).convert("RGB")) for n in names])
    kps = np.stack([openpose18_to_coco17(ann[n]).keypoints for n in names]).astype(np.float32)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(kps), names


def augment(img: torch.Tensor, kp: torch.Tensor, opt: Options, gen: torch.Generator):
    """img (B,3,H,W) float [0,1], kp (B,17,3) pixels -> augmented copies (module docstring)."""
    B, _, H, W = img.shape
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # similarity transform about the image centre: x' = s R (x - c) + c + t
    s = 1 + (2 * u(B) - 1) * opt.max_scale
    a = (2 * u(B) - 1) * math.radians(opt.max_rotation)
    t = (2 * u(B, 2) - 1) * opt.max_shift * torch.tensor([W, H])
    c = torch.tensor([(W - 1) / 2, (H - 1) / 2])
    R = torch.stack([torch.stack([torch.cos(a), -torch.sin(a)], -1), torch.stack([torch.sin(a), torch.cos(a)], -1)],
                    1) * s[:, None, None]  # (B, 2, 2)
    M = torch.cat([R, (c + t - (R @ c[:, None])[..., 0])[..., None]], 2)  # (B, 2, 3)
    out = warp_affine(img, M, (H, W), mode="bilinear", padding_mode="border", align_corners=True)
    xy = (R @ kp[..., :2].transpose(1, 2)).transpose(1, 2) + M[:, None, :, 2]
    vis = kp[..., 2] > 0
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)
    kp = torch.cat([xy, (vis & inside).float()[..., None]], -1)
    kp[kp[..., 2] == 0] = 0
    # horizontal flip: mirror the image and swap left/right joints (the pose names the person's own joints)
    flip = u(B) < opt.flip_prob
    if flip.any():
        out[flip] = out[flip].flip(-1)
        fk = kp[flip][:, list(MIRROR["coco17"])]
        fk[..., 0] = torch.where(fk[..., 2] > 0, W - 1 - fk[..., 0], fk[..., 0])
        kp[flip] = fk
    # colour: brightness, contrast, per-channel gain, saturation
    gray = out.mean(1, keepdim=True)
    sat = (0.6 + 0.8 * u(B))[:, None, None, None]
    out = gray + (out - gray) * sat
    out = out * (0.8 + 0.4 * u(B, 3))[..., None, None]
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * (0.7 + 0.6 * u(B))[:, None, None, None] + mean + (u(B) - 0.5)[:, None, None, None] * 0.2
    # degradations: blur + noise on a random half (generated images are softer than renders)
    deg = u(B) < opt.degrade_prob
    if deg.any():
        sig = float(0.4 + 0.8 * u(1))
        x = gaussian_blur2d(out[deg], (5, 5), (sig, sig), border_type="replicate")
        out[deg] = x + torch.randn(x.shape, generator=gen) * float(0.06 * u(1))
    return out.clamp(0, 1), kp


def targets(kp: torch.Tensor, H: int, W: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets at 1/4 and 1/2 resolution (cropped grids), the guidance energy's renderer."""
    k = kp.clone()
    k[..., 0] = (k[..., 0] + 0.5) / W
    k[..., 1] = (k[..., 1] + 0.5) / H
    k = k[:, None]  # (B, 1 person, 17, 3)
    return (gaussian_heatmaps(k, -(-H // 4), -(-W // 4), sigma), gaussian_heatmaps(k, -(-H // 2), -(-W // 2), sigma))


def loss_fn(model: SmallHRNet, img01: torch.Tensor, kp: torch.Tensor, sigma: float, fg_weight: float) -> torch.Tensor:
    """HigherHRNet's heatmap MSE at both output resolutions, weighted towards the joints.

    The targets cover the whole padded grid the network computes (keypoint pixel coordinates do not change with
    right/bottom padding): the padded columns/rows must be trained to zero too, because the 1/4 output is upsampled
    bilinearly into the visible border of the aggregated heatmap."""
    _, (out0, out1) = model.raw_outputs(img01)
    Hp, Wp = 2 * out1.shape[-2], 2 * out1.shape[-1]  # padded input size
    t4, t2 = targets(kp, Hp, Wp, sigma)
    return 100 * sum(((1 + fg_weight * t) * (o - t) ** 2).mean() for o, t in ((out0, t4), (out1, t2)))


@torch.no_grad()
def evaluate(model: SmallHRNet, imgs: torch.Tensor, kps: torch.Tensor, degrade: bool, seed: int = 123) -> dict:
    x = imgs.float() / 255
    if degrade:
        g = torch.Generator().manual_seed(seed)
        x = (gaussian_blur2d(x, (5, 5), (0.8, 0.8), border_type="replicate")
             + 0.04 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    preds = []
    for i in range(0, len(x), 64):
        frames = estimate_poses(model, x[i:i + 64], threshold=0.1)
        for f in frames:
            preds.append(f.people[0].keypoints if f.people else np.zeros((17, 3), np.float32))
    acc = pose_accuracy(np.stack(preds), kps.numpy(), alpha=0.1, norm="bbox")
    return {k: acc[k] for k in ("pck", "mean_error_px", "detected_fraction")}


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    opt = Options(**vars(build_parser().parse_args(argv)))
    out_dir = Path(opt.out_dir)
    if opt.dry_run:
        print(json.dumps(dataclasses.asdict(opt), indent=2))
        return 0
    torch.set_num_threads(opt.threads)
    torch.manual_seed(opt.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(opt), indent=2) + "\n")
    root = Path(opt.data_root)
    tr_img, tr_kp, _ = load_split(root, "train")
    te_img, te_kp, _ = load_split(root, "test")
    H, W = tr_img.shape[-2:]
    te_img, te_kp = te_img[:opt.eval_images], te_kp[:opt.eval_images]
    print(f"train {len(tr_img)} images, test {len(te_img)} images (held-out identities), {H}x{W}", flush=True)

    cfg = SmallHRNetConfig(width=opt.width, stem=opt.stem, num_modules=opt.num_modules, num_blocks=opt.num_blocks,
                           input_size=min(H, W), sigma=opt.sigma)
    model = SmallHRNet(cfg).trainable()
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    gen = torch.Generator().manual_seed(opt.seed)
    log = open(out_dir / "log.jsonl", "w")
    start = time.perf_counter()
    deadline = start + opt.minutes * 60
    step, ema_loss = 0, None
    history = []
    while step < opt.steps and time.perf_counter() < deadline:
        # cosine decay over whichever budget (steps or minutes) runs out first
        progress = max(step / opt.steps, (time.perf_counter() - start) / (opt.minutes * 60))
        lr = opt.lr * min(1.0, (step + 1) / opt.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for g in optim.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(tr_img), (opt.batch_size,), generator=gen)
        img, kp = augment(tr_img[idx].float() / 255, tr_kp[idx].clone(), opt, gen)
        loss = loss_fn(model, img, kp, opt.sigma, opt.fg_weight)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % opt.eval_every == 0 or step == opt.steps:
            model.freeze()
            clean, degraded = evaluate(model, te_img, te_kp, False), evaluate(model, te_img, te_kp, True)
            model.trainable()
            rec = {"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": round(ema_loss, 4),
                   "lr": lr, "test_clean": clean, "test_degraded": degraded}
            history.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"step {step} {rec['seconds']}s loss {ema_loss:.4f} PCK@0.1 clean {clean['pck']:.3f} "
                  f"(err {clean['mean_error_px']:.2f}px) degraded {degraded['pck']:.3f}", flush=True)
    model.freeze()
    seconds = time.perf_counter() - start
    clean, degraded = evaluate(model, te_img, te_kp, False), evaluate(model, te_img, te_kp, True)
    record = {
        "command": "python train/train_estimator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "git_commit": git_commit(), "steps": step, "seconds": round(seconds, 1), "batch_size": opt.batch_size,
        "final_loss_ema": round(ema_loss, 4), "parameters": params, "data_root": str(root),
        "train_images": len(tr_img), "test_images": len(te_img), "test_clean": clean, "test_degraded": degraded,
        "config": cfg.to_dict(), "threads": opt.threads,
    }
    (out_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    export = Path(opt.export) if opt.export else out_dir / "estimator.safetensors"
    export.parent.mkdir(parents=True, exist_ok=True)
    to_save = SmallHRNet(cfg)
    to_save.load_state_dict(model.state_dict())
    if opt.save_fp16:
        to_save = to_save.half()
    save_model(export, to_save, "pose_estimator", extra_metadata={"training": record})
    print(f"done: {step} steps in {seconds:.0f}s; held-out PCK@0.1 clean {clean['pck']:.3f} "
          f"degraded {degraded['pck']:.3f}; wrote {export} ({export.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
