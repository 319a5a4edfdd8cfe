"""Held-out quality of the shipped models next to the two baselines every pose-transfer model must beat.

    python bench/bench_quality.py [--pairs 40] [--seed 12345] [--steps 50] [--threads 2]

It renders its own held-out pairs (procedural figures of `repose_core.synthetic`, identities of a seed the shipped
models never saw: training used seed 0), then measures on them, against the ground-truth target image:
  copy source       the source image unchanged (what a model that ignores the pose would score),
  RPA warp          the source warped by the shipped full model's Recurrent Pose Alignment (no denoiser at all),
  B1 (PIDM)         the shipped B1 model,
  full              the shipped default model (its stored sampling defaults, with and without pose guidance).
SSIM (Gaussian 9×9 window, PIDM's "SSIM_256" form), L1 in [0, 1], PCK@0.1 of the pose the shipped estimator finds in
the result (note: the same estimator guidance differentiates; docs/ablation.md uses an independent one).
Prints a table and writes bench/results/quality.json. A few minutes on 2 CPU threads.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

WEIGHTS = REPO / "repose_core" / "weights"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=40, help="held-out pairs (default 40)")
    p.add_argument("--seed", type=int, default=12345, help="dataset seed of the held-out identities (not 0)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--sampling-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "quality.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from repose_core.metrics import pose_accuracy
    from repose_core.estimator import build_estimator
    from repose_core.pipeline import PoseTransferPipeline
    from repose_core.pose.keypoints import openpose18_to_coco17
    from repose_core.synthetic import generate_dataset
    from train.ablation import estimate_coco, image_metrics, load_test_pairs

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ids = max(1, -(-args.pairs // 12))  # 4 poses per identity: 12 ordered pairs each
        generate_dataset(tmp, size=(64, 44), n_train_ids=0, n_test_ids=ids, poses_per_id=4, seed=args.seed)
        data = load_test_pairs(Path(tmp), args.pairs)
    gt = np.stack(data["targets"]).astype(np.float32) / 255
    gt_kp = np.stack([openpose18_to_coco17(p).keypoints for p in data["target_poses"]])
    estimator = build_estimator(WEIGHTS / "repose_default_estimator.safetensors")

    def score(images: np.ndarray, extra: dict | None = None) -> dict:
        m = image_metrics(images, gt)
        acc = pose_accuracy(estimate_coco(estimator, images), gt_kp)
        return {"ssim": float(m["ssim"].mean()), "l1": float(m["l1"].mean()), "pck": float(acc["pck"]),
                **(extra or {})}

    rows = {"copy source": score(np.stack(data["sources"]).astype(np.float32) / 255)}
    full = PoseTransferPipeline.from_files(WEIGHTS / "repose_default_full.safetensors")
    b1 = PoseTransferPipeline.from_files(WEIGHTS / "repose_default_b1.safetensors")
    full.estimator = b1.estimator = estimator
    kw = dict(steps=args.steps, eta=1.0, seed=args.sampling_seed)
    t0 = time.perf_counter()
    r = full.transfer(data["sources"], data["target_poses"], guidance=None, **kw)
    unguided_s = time.perf_counter() - t0
    rows["RPA warp (full model's)"] = score(r.warped[-1])
    rows["B1 (PIDM)"] = score(b1.transfer(data["sources"], data["target_poses"], **kw).canvas_images)
    rows["full, no pose guidance"] = score(r.canvas_images, {"seconds": round(unguided_s, 1)})
    t0 = time.perf_counter()
    guided = full.transfer(data["sources"], data["target_poses"], guidance=True, **kw)
    rows["full (shipped default)"] = score(guided.canvas_images, {"seconds": round(time.perf_counter() - t0, 1)})

    print(f"{len(gt)} held-out pairs of {ids} unseen identities (dataset seed {args.seed}); DDIM {args.steps} steps, "
          f"η_DDIM 1, each model's stored CFG (full {full.model.config.cfg_scale:g}, B1 {b1.model.config.cfg_scale:g}), "
          f"{args.threads} threads\n")
    print(f"| {'what':<26} | SSIM ↑ | L1 ↓  | PCK@0.1 ↑ |")
    print(f"|{'-' * 28}|--------|-------|-----------|")
    for name, row in rows.items():
        print(f"| {name:<26} | {row['ssim']:.3f}  | {row['l1']:.3f} | {row['pck']:.3f}     |")
    result = {"pairs": len(gt), "dataset_seed": args.seed, "steps": args.steps, "eta_ddim": 1.0,
              "threads": args.threads, "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
