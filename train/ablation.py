"""The paper's ablation (Table 2: B1 = PIDM, B2 = + RPA, full = + pose gradient guidance) in miniature, on the CPU.

    # 1. data (synthetic figures, DeepFashion PATN layout) and the pose estimator
    python train/make_synthetic.py --out /work/runs/data/synth64 --size 64x44 --train-ids 1500 --test-ids 60
    python train/train_estimator.py --data-root /work/runs/data/synth64 --out-dir /work/runs/estimator
    # 2. the three models, same recipe and number of steps (train/train_deepfashion.py underneath)
    python train/ablation.py train --variant b1   --out /work/runs/ablation/b1
    python train/ablation.py train --variant b2   --out /work/runs/ablation/b2
    python train/ablation.py train --variant full --out /work/runs/ablation/full
    # 3. held-out evaluation, several sampling seeds -> JSON, then the markdown table
    python train/ablation.py eval --runs /work/runs/ablation --out /work/runs/ablation/results.json
    python train/ablation.py table --results /work/runs/ablation/results.json

`train` runs train/train_deepfashion.py (unchanged, in-process) with the recipe below on the synthetic dataset; the
only thing added around it: torch is limited to `--threads` intra-op threads (on a shared 2-core machine this is
several times faster than oversubscribed threads). `--recipe KEY=VALUE` overrides one train_deepfashion option
(`--recipe preload=true` for a flag); train/gpu_miniatures.sh runs the whole ablation on one GPU this way.

`eval` generates every held-out pair (test identities never seen in training) with `PoseTransferPipeline` for each
model and sampling seed and measures SSIM (Gaussian 9x9 window, PIDM's "SSIM_256" form — the 51-px uniform window
does not fit a 64x44 image), L1, and the pose accuracy of the generated image (PCK@0.1 of the bbox size, mean
keypoint error) by the estimator, plus diagnostics: RPA warp error, guidance energy before/after, and a breakdown
by the target's pose kind (recovered by replaying the dataset generator's random streams).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("b1", "b2", "full")

# The recipe shared by the three variants (train_deepfashion options). Short-run choices, documented in
# docs/ablation.md: a larger learning rate than the paper's 1e-4 with warm-up, and an EMA with a horizon of ~500
# steps (the paper's 0.9999 would leave the EMA at its initial weights after a few hundred steps).
RECIPE = {
    "layout": "patn", "preset": "tiny", "size": ["64", "44"], "batch-size": "8", "lr": "5e-4", "warmup-steps": "50",
    "ema-decay": "0.998", "ema-warmup-steps": "200", "grad-clip": "1.0", "num-workers": "1", "log-every": "25",
    "device": "cpu", "timesteps": "1000", "cond-dropout": "0.1",
}
RPA_WARP_WEIGHT = "1.0"  # b2 and full: the auxiliary RPA warp loss (our addition) — RPA gets a direct signal


# ----------------------------------------------------------------------------------------------------------------
# Training


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_argv(args) -> list[str]:
    argv = ["--data-root", args.data_root, "--variant", args.variant, "--out", args.out,
            "--max-steps", str(args.steps), "--save-every", str(args.steps), "--seed", str(args.seed),
            "--no-tensorboard"]
    recipe = dict(RECIPE)
    for item in args.recipe:  # --recipe lr=1e-3: override one train_deepfashion option of the shared recipe
        key, _, value = item.partition("=")
        recipe[key] = value.split() if " " in value else value
    for k, v in recipe.items():
        if v in ("true", "false"):  # boolean options: --recipe preload=true -> --preload
            argv.append(f"--{k}" if v == "true" else f"--no-{k}")
        else:
            argv += [f"--{k}", *(v if isinstance(v, list) else [v])]
    if args.init:
        argv += ["--init", args.init]
    if args.variant != "b1":
        argv += ["--rpa-warp-weight", RPA_WARP_WEIGHT]
    if args.variant == "full":
        argv += ["--estimator", args.estimator, "--guidance-eta", str(args.guidance_eta)]
    return argv


def steps_in(run: Path) -> int:
    """The step of the run's exported EMA (train_deepfashion writes it into the file's metadata)."""
    from repose_core.checkpoint import read_metadata

    try:
        return int(read_metadata(run / "ema.safetensors").get("step", 0))
    except Exception:  # noqa: BLE001 - no export yet
        return 0


def cmd_train(args) -> int:
    import train.train_deepfashion as td

    torch.set_num_threads(args.threads)
    argv = train_argv(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    code = td.main(argv)
    seconds = time.perf_counter() - start
    log_file = out / "log.jsonl"
    logs = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []
    last = logs[-4:]
    steps_done = steps_in(out)
    record = {
        "command": "python train/ablation.py train " + " ".join(sys.argv[2:]),
        "train_deepfashion_argv": argv, "git_commit": git_commit(), "variant": args.variant, "steps": steps_done,
        "steps_asked": args.steps,
        "seconds": round(seconds, 1), "threads": args.threads, "init": args.init or None,
        "init_record": (json.loads((Path(args.init).parent / "record.json").read_text())
                        if args.init and (Path(args.init).parent / "record.json").is_file() else None),
        "final": {k: round(float(np.mean([r[k] for r in last if k in r])), 5)
                  for k in ("loss", "mse", "vb", "rpa_warp", "guidance_shift") if any(k in r for r in last)},
        "pairs_per_s": round(float(np.mean([r["pairs_per_s"] for r in logs[1:] if "pairs_per_s" in r] or [0])), 2),
    }
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return code


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def load_test_pairs(root: Path, n_pairs: int, split: str = "test"):
    """Every k-th pair of `split` -> (sources uint8, target images uint8, target poses, source poses, kinds)."""
    from PIL import Image

    from repose_core.pose import read_patn_annotations, read_patn_pairs

    meta = json.loads((root / "dataset.json").read_text())
    H, W = meta["size"]["height"], meta["size"]["width"]
    ann = read_patn_annotations(root / f"fasion-resize-annotation-{split}.csv", height=H, width=W)
    pairs = read_patn_pairs(root / f"fasion-resize-pairs-{split}.csv")
    step = max(1, len(pairs) // n_pairs)
    pairs = pairs[::step][:n_pairs]
    kinds = pose_kinds(meta, split)
    read = lambda n: np.asarray(Image.open(root / f"{split}_highres" / n).convert("RGB"))  # noqa: E731
    return {
        "names": pairs,
        "sources": [read(a) for a, _ in pairs], "targets": [read(b) for _, b in pairs],
        "target_poses": [ann[b] for _, b in pairs], "source_poses": [ann[a] for a, _ in pairs],
        "kinds": [kinds.get(b, "?") for _, b in pairs], "size": (H, W),
    }


def pose_kinds(meta: dict, split: str = "test") -> dict:
    """{image name: pose kind} by replaying the generator's per-identity random streams (dataset.py)."""
    from repose_core.synthetic import image_name, sample_identity, sample_pose_params
    from repose_core.synthetic.dataset import identity_rng

    out = {}
    for i in range(meta["counts"][split]["identities"]):
        rng = identity_rng(meta["seed"], split, i)
        sample_identity(rng)
        for k in range(meta["poses_per_id"]):
            out[image_name(split, i, k)] = sample_pose_params(rng).kind
    return out


def estimate_coco(estimator, images01: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) [0, 1] -> COCO-17 keypoints (N, 17, 3) (zeros where no person is found)."""
    from repose_core.estimator.decode import estimate_poses

    x = torch.from_numpy(np.ascontiguousarray(images01)).permute(0, 3, 1, 2).float()
    out = []
    for i in range(0, len(x), 64):
        for frame in estimate_poses(estimator, x[i:i + 64], threshold=0.1):
            out.append(frame.people[0].keypoints if frame.people else np.zeros((17, 3), np.float32))
    return np.stack(out)


def image_metrics(pred01: np.ndarray, gt01: np.ndarray) -> dict:
    from repose_core.metrics import l1, ssim

    p = torch.from_numpy(pred01).permute(0, 3, 1, 2).double()
    g = torch.from_numpy(gt01).permute(0, 3, 1, 2).double()
    return {"ssim": ssim(p, g, window="gaussian").numpy(), "l1": l1(p, g).numpy()}


def per_image_pck(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from repose_core.metrics import pose_accuracy

    return np.array([pose_accuracy(p[None], g[None])["pck"] for p, g in zip(pred, gt)])


def keypoint_energy_of(estimator, images01: np.ndarray, poses, sigma: float) -> np.ndarray:
    """The guidance keypoint energy of finished images (what guidance minimises), per image."""
    from repose_core.guidance import KeypointTarget, keypoint_energy
    from repose_core.pose import PoseFrame

    x = torch.from_numpy(np.ascontiguousarray(images01)).permute(0, 3, 1, 2).float()
    H, W = x.shape[-2:]
    target = KeypointTarget([PoseFrame([p], W, H) for p in poses], sigma=sigma)
    with torch.no_grad():
        return keypoint_energy(estimator, x, target).numpy()


@torch.no_grad()
def source_gain(pipe, sources, poses, targets01, ts=(100, 500, 900), n: int = 30) -> dict:
    """How much the denoiser uses the source, in x̂0 space: 1 − MSE(x̂0 | source) / MSE(x̂0 | ∅) against the
    ground-truth target, with x_t made from that target at a few t (0 = the source is ignored, 1 = it explains every
    error the pose alone leaves). Unlike |ε(src) − ε(∅)| / |ε| it does not vanish at high t, where ε ≈ x_t."""
    from repose_core.pose import render_pidm_pose_map
    from repose_core.transfer_ops import align

    model, codec = pipe.model, pipe.codec
    H, W = pipe.size
    src = torch.from_numpy(np.stack(sources[:n])).permute(0, 3, 1, 2).float() / 127.5 - 1
    tgt = torch.from_numpy(targets01[:n]).permute(0, 3, 1, 2).float() * 2 - 1
    x0 = codec.encode(tgt)
    pose_px = torch.from_numpy(np.stack([render_pidm_pose_map(p, H, W) for p in poses[:n]])).permute(0, 3, 1, 2)
    al = align(model, src, pose_px, previews=False)                # the core's one conditioning step
    pm, cond, null = al.pose_map, al.cond, al.null_cond
    gen = torch.Generator().manual_seed(0)
    out = {}
    for t in ts:
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        x_t = pipe.diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=gen))
        C = x0.shape[1]
        mse = [(pipe.diffusion.predict_x0_from_eps(x_t, tt, model(x_t, tt, pm, c)[:, :C]).clamp(-1, 1) - x0)
               .pow(2).mean().item() for c in (cond, null)]
        out[f"t{t}"] = 1.0 - mse[0] / mse[1]
    return out


# (label, run folder under --runs, sampling guidance, CFG w or None = --cfg): the paper's three variants, then our
# additions as their own rows. aligned-x0 models sample at w = 1: their ∅ branch sees a zero aligned source, and
# w = 2 doubles the aligned image's contrast (measured in docs/ablation.md)
# (label, run folder, sampling guidance, CFG w (None = --cfg), final timestep (None = the run's config, i.e. 0))
EVAL_ROWS = (("B1 (PIDM)", "b1", False, None, None),
             ("B1 (PIDM), at B2's step count", "b1_1366", False, None, None),
             ("B2 (+ RPA)", "b2", False, None, None),
             ("full, no sampling guidance", "full", False, None, None), ("full (RePoseDM)", "full", True, None, None),
             ("B2 + aligned input (ours)", "b2_aligned", False, None, None),
             ("full + aligned input (ours)", "full_aligned", True, None, None),
             ("B2 + aligned input + aligned-x0 (ours, previous default)", "b2_resid", True, 1.0, None),
             ("B2 + aligned input + EDM residual (ours), whole trajectory", "b2_edm", True, 1.0, 0),
             ("+ final timestep = shipped default (ours)", "b2_edm", True, 1.0, "ship"))


def cmd_eval(args) -> int:
    from repose_core.estimator import build_estimator as load_estimator
    from repose_core.pipeline import PoseTransferPipeline
    from repose_core.pose.keypoints import openpose18_to_coco17

    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    data = load_test_pairs(Path(args.data_root), args.pairs)
    estimator = load_estimator(args.estimator)  # guidance (and the guidance-side PCK)
    # pose accuracy is measured by an INDEPENDENTLY trained estimator, so that guidance cannot score by producing
    # patterns that only fool the estimator it differentiates (adversarial-example effect)
    judge = load_estimator(args.eval_estimator) if args.eval_estimator else estimator
    sigma = float(getattr(estimator.config, "sigma", 2.0))
    gt01 = np.stack(data["targets"]).astype(np.float32) / 255
    src01 = np.stack(data["sources"]).astype(np.float32) / 255
    gt_kp = np.stack([openpose18_to_coco17(p).keypoints for p in data["target_poses"]])
    kinds = np.array(data["kinds"])
    print(f"{len(gt01)} held-out pairs, seeds {args.seeds}, {args.steps} DDIM steps (eta {args.eta}), cfg {args.cfg}",
          flush=True)

    def summarise(pred01, extra=None):
        m = image_metrics(pred01, gt01)
        kp = estimate_coco(judge, pred01)
        from repose_core.metrics import pose_accuracy
        acc = pose_accuracy(kp, gt_kp)
        acc_g = pose_accuracy(estimate_coco(estimator, pred01), gt_kp) if judge is not estimator else acc
        pck_i = per_image_pck(kp, gt_kp)
        out = {"ssim": float(m["ssim"].mean()), "l1": float(m["l1"].mean()), "pck": acc["pck"],
               "mean_error_px": acc["mean_error_px"], "detected": acc["detected_fraction"],
               "pck_guidance_estimator": acc_g["pck"],
               "keypoint_energy": float(keypoint_energy_of(estimator, pred01, data["target_poses"], sigma).mean()),
               "by_kind": {k: {"pck": float(np.nanmean(pck_i[kinds == k])),
                               "ssim": float(m["ssim"][kinds == k].mean()), "n": int((kinds == k).sum())}
                           for k in sorted(set(kinds))}}
        out.update(extra or {})
        return out

    results = {"meta": {"pairs": len(gt01), "seeds": args.seeds, "steps": args.steps, "eta": args.eta, "cfg": args.cfg,
                        "guidance_scale": args.guidance_scale, "estimator": args.estimator,
                        "eval_estimator": args.eval_estimator or args.estimator,
                        "data_root": args.data_root, "git_commit": git_commit(), "threads": args.threads},
               "references": {"ground_truth": summarise(gt01), "copy_source": summarise(src01)}, "rows": {}}
    pipes = {}
    for label, variant, guided, row_cfg, row_final_t in EVAL_ROWS:
        if row_final_t == "ship":
            row_final_t = args.final_timestep
        if args.only and variant not in args.only:
            continue
        guidance = {"scale": args.guidance_scale, "every": args.guidance_every} if guided else None
        path = runs / variant / "ema.safetensors"
        if not path.is_file():
            print(f"skipping {label}: {path} not found", flush=True)
            continue
        if variant not in pipes:
            pipes[variant] = PoseTransferPipeline.from_files(path)
            pipes[variant].estimator = estimator
            results.setdefault("source_gain", {})[variant] = source_gain(
                pipes[variant], data["sources"], data["target_poses"], gt01)
            rec = run_record(runs / variant)
            results.setdefault("training", {})[variant] = {k: rec.get(k) for k in ("steps", "seconds", "device")}
        pipe = pipes[variant]
        per_seed = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            outs, warp_err, energies, warps = [], [], [], []
            for i in range(0, len(gt01), args.batch):
                r = pipe.transfer(data["sources"][i:i + args.batch], data["target_poses"][i:i + args.batch],
                                  steps=args.steps, cfg=row_cfg or args.cfg, guidance=guidance, seed=seed * 1000 + i,
                                  eta=args.eta, final_timestep=row_final_t)
                outs.append(r.canvas_images)
                if r.warped:
                    warp_err.append(np.abs(r.warped[-1] - gt01[i:i + args.batch]).mean(axis=(1, 2, 3)))
                    warps.append(r.warped[-1])
                if r.guidance_history:
                    energies.append((np.array(r.guidance_history[0]["energy"]),
                                     np.array(r.guidance_history[-1]["energy"])))
            pred = np.concatenate(outs)
            if warps and f"rpa_warp ({variant})" not in results["references"]:  # the warp alone, no denoiser
                results["references"][f"rpa_warp ({variant})"] = summarise(np.concatenate(warps))
            extra = {"seconds": round(time.perf_counter() - t0, 1)}
            if warp_err:
                extra["rpa_warp_l1"] = float(np.concatenate(warp_err).mean())
            if energies:
                extra["guidance_energy_first"] = float(np.concatenate([e[0] for e in energies]).mean())
                extra["guidance_energy_last"] = float(np.concatenate([e[1] for e in energies]).mean())
            per_seed.append(summarise(pred, extra))
            print(f"{label} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in per_seed[-1].items()
                                                        if isinstance(v, float)), flush=True)
            if args.save_images:
                from PIL import Image
                folder = Path(args.out).parent / "samples" / variant
                folder.mkdir(parents=True, exist_ok=True)
                tag = "guided" if guidance else "plain"
                for j in range(min(8, len(pred))):
                    Image.fromarray((pred[j] * 255).round().astype(np.uint8)).save(
                        folder / f"{tag}_seed{seed}_{j}.png")
        results["rows"][label] = {"run": variant, "guidance": guidance, "cfg": row_cfg or args.cfg,
                                  "final_timestep": row_final_t or 0, "per_seed": per_seed,
                                  "summary": aggregate(per_seed)}
    results["meta"]["rpa_warp_l1_identity"] = float(np.abs(src01 - gt01).mean())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def run_record(run: Path) -> dict:
    """record.json of a run folder (steps, seconds, ...), {} when absent; "device" from its options."""
    try:
        rec = json.loads((run / "record.json").read_text())
    except (OSError, ValueError):
        return {}
    argv = rec.get("train_deepfashion_argv", [])
    rec["device"] = argv[argv.index("--device") + 1] if "--device" in argv else "?"
    return rec


def aggregate(per_seed: list[dict]) -> dict:
    """mean ± half the max-min spread over seeds, for every scalar metric."""
    out = {}
    for k, v in per_seed[0].items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            vals = np.array([s[k] for s in per_seed], np.float64)
            out[k] = {"mean": float(vals.mean()), "spread": float((vals.max() - vals.min()) / 2)}
    kinds = per_seed[0].get("by_kind", {})
    out["by_kind"] = {k: {m: float(np.mean([s["by_kind"][k][m] for s in per_seed])) for m in ("pck", "ssim")}
                      for k in kinds}
    return out


def cmd_sweep(args) -> int:
    """Guidance step η and final timestep for the full model, chosen on TRAINING-split pairs (never the held-out
    evaluation pairs)."""
    from repose_core.metrics import pose_accuracy
    from repose_core.estimator import build_estimator as load_estimator
    from repose_core.pipeline import PoseTransferPipeline
    from repose_core.pose.keypoints import openpose18_to_coco17

    torch.set_num_threads(args.threads)
    data = load_test_pairs(Path(args.data_root), args.pairs, split="train")
    estimator = load_estimator(args.estimator)
    pipe = PoseTransferPipeline.from_files(Path(args.runs) / args.run / "ema.safetensors")
    pipe.estimator = estimator
    gt01 = np.stack(data["targets"]).astype(np.float32) / 255
    gt_kp = np.stack([openpose18_to_coco17(p).keypoints for p in data["target_poses"]])
    rows = []
    for final_t in args.final_timesteps:
        for scale in args.scales:
            guidance = {"scale": scale, "every": args.guidance_every} if scale > 0 else None
            r = pipe.transfer(data["sources"], data["target_poses"], steps=args.steps, cfg=args.cfg,
                              guidance=guidance, seed=args.seed, eta=args.eta, final_timestep=final_t)
            m = image_metrics(r.canvas_images, gt01)
            acc = pose_accuracy(estimate_coco(estimator, r.canvas_images), gt_kp)
            rows.append({"final_timestep": final_t, "scale": scale, "ssim": float(m["ssim"].mean()),
                         "l1": float(m["l1"].mean()), "pck": acc["pck"], "mean_error_px": acc["mean_error_px"],
                         "seconds": round(r.seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"split": "train", "pairs": len(gt01), "rows": rows}, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Table


def fmt(cell: dict, digits: int = 3) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['spread']:.{digits}f}"


def cmd_table(args) -> int:
    res = None
    for path in args.results:  # several eval runs (e.g. --only subsets) merge into one table, in the given order
        part = json.loads(Path(path).read_text())
        if res is None:
            res = part
            continue
        for key in ("rows", "references", "source_gain", "training"):
            res.setdefault(key, {}).update(part.get(key, {}))
    meta = res["meta"]
    lines = [f"Held-out pairs: {meta['pairs']}; sampling seeds {meta['seeds']} (mean ± half the range over seeds); "
             f"DDIM {meta['steps']} steps (η_DDIM = {meta.get('eta', 0)}), CFG w = {meta['cfg']}; guidance step "
             f"{meta['guidance_scale']} "
             f"(keypoint energy).", "",
             "PCK@0.1 and the keypoint error are measured by an independently trained estimator (another seed and "
             "width than the one guidance differentiates); the guidance estimator's own PCK is shown for comparison.",
             "",
             "| model | SSIM ↑ | L1 ↓ | PCK@0.1 ↑ | keypoint error (px) ↓ | PCK@0.1 by the guidance estimator | "
             "RPA warp L1 ↓ | guidance energy first → last |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in res["rows"].items():
        s = row["summary"]
        warp = fmt(s["rpa_warp_l1"]) if "rpa_warp_l1" in s else "—"
        energy = (f"{s['guidance_energy_first']['mean']:.1f} → {s['guidance_energy_last']['mean']:.1f}"
                  if "guidance_energy_first" in s else "—")
        if row.get("cfg") not in (None, meta["cfg"]):
            label = f"{label}, CFG w = {row['cfg']:g}"
        if row.get("final_timestep"):
            label = f"{label}, final t = {row['final_timestep']}"
        lines.append(f"| {label} | {fmt(s['ssim'])} | {fmt(s['l1'])} | {fmt(s['pck'])} | "
                     f"{fmt(s['mean_error_px'], 2)} | {fmt(s['pck_guidance_estimator'])} | {warp} | {energy} |")
    for label, r in res["references"].items():
        warp = f"{meta['rpa_warp_l1_identity']:.3f} (no warp)" if label == "copy_source" else "—"
        lines.append(f"| *{label.replace('_', ' ')}* | {r['ssim']:.3f} | {r['l1']:.3f} | {r['pck']:.3f} | "
                     f"{r['mean_error_px']:.2f} | {r['pck_guidance_estimator']:.3f} | {warp} | — |")
    kinds = sorted(next(iter(res["rows"].values()))["summary"]["by_kind"]) if res["rows"] else []
    if kinds:
        lines += ["", "PCK@0.1 by the target's pose kind:", "",
                  "| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for label, row in res["rows"].items():
            bk = row["summary"]["by_kind"]
            lines.append(f"| {label} | " + " | ".join(f"{bk[k]['pck']:.2f}" for k in kinds) + " |")
        gt = res["references"]["ground_truth"]["by_kind"]
        lines.append("| *ground truth* | " + " | ".join(f"{gt[k]['pck']:.2f}" for k in kinds) + " |")
        lines.append("| pairs | " + " | ".join(str(gt[k]["n"]) for k in kinds) + " |")
    gain = res.get("source_gain")
    if gain:
        ts = list(next(iter(gain.values())))
        training = res.get("training", {})
        lines += ["", "Use of the source by each denoiser, x̂0-space gain 1 − MSE(x̂0 | source) / MSE(x̂0 | ∅) "
                  "against the target (0 = ignored), and its training:", "",
                  "| run | " + " | ".join(t.replace("t", "t = ") for t in ts) + " | training steps | device |",
                  "|---|" + "---|" * (len(ts) + 2)]
        for run, row in gain.items():
            tr = training.get(run, {})
            lines.append(f"| {run} | " + " | ".join(f"{row[t]:.3f}" for t in ts) +
                         f" | {tr.get('steps', '?')} | {tr.get('device', '?')} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Shipping the small models


def cmd_ship(args) -> int:
    """Store the chosen runs' EMA weights (float16) in repose_core/weights/ and write TRAINING.md from their records.

    The default model (`--full-run`) is saved as variant "full" (b2's network + pose guidance at sampling, configs.py)
    with the sampling defaults chosen by `sweep` (`--guidance-scale`, `--cfg`); `--estimator-run ''` keeps the shipped
    estimator and its section of TRAINING.md."""
    import dataclasses

    from repose_core.checkpoint import load_model, read_metadata, save_model

    runs, dest = Path(args.runs), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    old_md = (dest / "TRAINING.md").read_text(encoding="utf-8") if (dest / "TRAINING.md").is_file() else ""
    shipped = []
    for run, name in ((args.full_run, "repose_default_full.safetensors"), (args.b1_run, "repose_default_b1.safetensors")):
        record = run_record(runs / run)
        with torch.inference_mode(False):
            model = load_model(runs / run / "ema.safetensors").half()
        if name == "repose_default_full.safetensors":
            guidance = model.config.guidance
            if args.guidance_scale is not None:  # the η chosen by `sweep` becomes the default
                guidance = guidance.replace(scale=args.guidance_scale)
            defaults = {"variant": "full", "guidance": guidance}
            if args.cfg is not None:
                defaults["cfg_scale"] = args.cfg
            if args.final_timestep is not None:
                defaults["final_timestep"] = args.final_timestep
            model.config = dataclasses.replace(model.config, **defaults)
            record = dict(record, shipped_config=dict(defaults, guidance=guidance.to_dict()))
        save_model(dest / name, model, "repose_dm", extra_metadata={"training": record, "stored_dtype": "float16"})
        shipped.append((name, record))
    if args.estimator_run:
        est_src = Path(args.estimator_run)
        est_record = json.loads((est_src / "record.json").read_text())
        (dest / "repose_default_estimator.safetensors").write_bytes((est_src / "estimator.safetensors").read_bytes())
        read_metadata(dest / "repose_default_estimator.safetensors")  # a RePose file: fails loudly otherwise
        shipped.append(("repose_default_estimator.safetensors", est_record))
    else:
        marker = "## `repose_default_estimator.safetensors`"
        kept = old_md[old_md.index(marker):] if marker in old_md else ""
        shipped.append(("repose_default_estimator.safetensors", {"kept_section": kept}))
    (dest / "TRAINING.md").write_text(training_md(shipped, dest), encoding="utf-8")
    print(f"wrote {[n for n, _ in shipped]} and TRAINING.md to {dest}")
    return 0


def _where(rec: dict) -> str:
    if rec.get("where"):  # a run continued on other hardware says so in its record
        return rec["where"]
    argv = rec.get("train_deepfashion_argv", [])
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    if device == "cuda":
        return "one NVIDIA H100 (shared by the 6 concurrent runs of train/gpu_miniatures.sh)"
    return f"a shared 2-core CPU ({rec.get('threads', 1)} thread)"


def training_md(shipped, dest: Path) -> str:
    lines = ["# Shipped weights: how they were trained", "",
             "Small models for the demo (`bash run.sh demo`), the ComfyUI example workflows and the tests, trained on "
             "the procedural figures of `repose_core.synthetic` at 64x44 (they show the method working end to end; "
             "they are not DeepFashion models). Written by `python train/ablation.py ship`; the recipe, the ablation "
             "and why it looks like this: docs/ablation.md.", "",
             "Data (every model): `python train/make_synthetic.py --out <data>/synth64 --size 64x44 --train-ids 1500 "
             "--test-ids 60 --poses-per-id 4 --seed 0` (6000 training images / 18000 pairs; 60 held-out identities). "
             "Runs may be interrupted at any moment: `--resume` continues from the newest intact checkpoint of the "
             "run folder (train/common.py).", "",
             "| file | size | what | trained by |", "|---|---|---|---|"]
    for name, rec in shipped:
        size = (dest / name).stat().st_size / 1e6
        what = ("RePoseDM " + rec["shipped_config"]["variant"] if "shipped_config" in rec else
                "RePoseDM " + rec["variant"] if "variant" in rec else "pose estimator (SmallHRNet)")
        cmd = f"`{rec['command']}`" if "command" in rec else "see below"
        lines.append(f"| `{name}` | {size:.2f} MB | {what} | {cmd} |")
    for name, rec in shipped:
        if "kept_section" in rec:
            lines += ["", rec["kept_section"].rstrip()]
            continue
        lines += ["", f"## `{name}`", "",
                  f"- command: `{rec['command']}`",
                  f"- git commit: `{rec['git_commit']}` (the tree the run used; uncommitted files may have differed)",
                  f"- steps: {rec['steps']}, wall time {rec['seconds']:.0f} s on {_where(rec)}"]
        if "train_deepfashion_argv" in rec:
            lines.append("- train/train_deepfashion.py options: `" + " ".join(rec["train_deepfashion_argv"]) + "`")
            if "shipped_config" in rec:
                lines.append("- stored as the default model with config " + ", ".join(
                    f"{k} = {v}" for k, v in rec["shipped_config"].items()) + " (sampling defaults chosen by "
                    "`python train/ablation.py sweep` on training-split pairs)")
            lines.append("- final losses (mean of the last logged steps): " +
                         ", ".join(f"{k} {v:.4f}" for k, v in rec["final"].items()))
            base = rec.get("init_record")
            if base:
                lines.append(f"- initialised from the run of `{base['command']}` ({base['steps']} steps, "
                             f"{base['seconds']:.0f} s on {_where(base)})")
            lines.append("- stored as float16 (the EMA weights)")
            if rec.get("lineage"):
                lines.append(f"- lineage: {rec['lineage']}")
        else:
            lines.append(f"- data: {rec['data_root']} ({rec['train_images']} training images; "
                         f"{rec['test_images']} held-out test images of unseen identities)")
            lines.append(f"- final loss (EMA of the batch loss): {rec['final_loss_ema']}; parameters "
                         f"{rec['parameters']:,}; stored as float16")
            c, d = rec["test_clean"], rec["test_degraded"]
            lines.append(f"- held-out PCK@0.1: clean {c['pck']:.3f} (mean error {c['mean_error_px']:.2f} px), "
                         f"blurred + noisy {d['pck']:.3f} (mean error {d['mean_error_px']:.2f} px)")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one variant with the shared recipe")
    t.add_argument("--variant", choices=VARIANTS, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--data-root", default="/work/runs/data/synth64")
    t.add_argument("--estimator", default=str(REPO / "repose_core/weights/repose_default_estimator.safetensors"))
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--guidance-eta", type=float, default=10.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--init", default="", help="start from this repose_dm file (the shared B1 pre-training)")
    t.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train_deepfashion option of the shared recipe (e.g. lr=1e-3)")
    e = sub.add_parser("eval", help="evaluate the trained runs on held-out pairs")
    e.add_argument("--runs", default="/work/runs/ablation", help="folder with b1/ b2/ full/ run folders")
    e.add_argument("--data-root", default="/work/runs/data/synth64")
    e.add_argument("--estimator", default=str(REPO / "repose_core/weights/repose_default_estimator.safetensors"))
    e.add_argument("--eval-estimator", default="/work/runs/estimator_eval/estimator.safetensors",
                   help="independently trained estimator that measures pose accuracy ('' = the guidance estimator)")
    e.add_argument("--out", default="/work/runs/ablation/results.json")
    e.add_argument("--pairs", type=int, default=60)
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--eta", type=float, default=1.0, help="DDIM η (0 deterministic; 1 stochastic, better for "
                                                          "these small models)")
    e.add_argument("--cfg", type=float, default=2.0)
    e.add_argument("--guidance-scale", type=float, default=1.0)
    e.add_argument("--guidance-every", type=int, default=1)
    e.add_argument("--final-timestep", type=int, default=0,
                   help="final timestep of the shipped-default row (the one `ship --final-timestep` stores)")
    e.add_argument("--batch", type=int, default=30)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--save-images", action="store_true")
    e.add_argument("--only", nargs="*", default=[], help="evaluate only these run folders (e.g. b1 b2)")
    sw = sub.add_parser("sweep", help="guidance scale sweep of the full model on training-split pairs")
    sw.add_argument("--runs", default="/work/runs/ablation")
    sw.add_argument("--data-root", default="/work/runs/data/synth64")
    sw.add_argument("--estimator", default=str(REPO / "repose_core/weights/repose_default_estimator.safetensors"))
    sw.add_argument("--out", default="/work/runs/ablation/sweep.json")
    sw.add_argument("--pairs", type=int, default=40)
    sw.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0, 3.0, 10.0])
    sw.add_argument("--guidance-every", type=int, default=1)
    sw.add_argument("--final-timesteps", type=int, nargs="+", default=[0],
                    help="final timesteps to try (RePoseConfig.final_timestep; 0 = the whole trajectory)")
    sw.add_argument("--run", default="full", help="run folder of the model to sweep (default: full)")
    sw.add_argument("--steps", type=int, default=50)
    sw.add_argument("--eta", type=float, default=1.0)
    sw.add_argument("--cfg", type=float, default=2.0)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--threads", type=int, default=1)
    sh = sub.add_parser("ship", help="copy the trained full/b1/estimator into repose_core/weights + TRAINING.md")
    sh.add_argument("--runs", default="/work/runs/ablation")
    sh.add_argument("--estimator-run", default="", help="estimator run folder to ship ('' = keep the shipped one)")
    sh.add_argument("--full-run", default="b2_resid", help="run folder shipped as the default (full) model")
    sh.add_argument("--b1-run", default="b1", help="run folder shipped as the B1 (PIDM) model")
    sh.add_argument("--cfg", type=float, default=None, help="default CFG w stored in the full model's config")
    sh.add_argument("--dest", default=str(REPO / "repose_core" / "weights"))
    sh.add_argument("--guidance-scale", type=float, default=None,
                    help="default guidance η stored in the full model's config (from `sweep`)")
    sh.add_argument("--final-timestep", type=int, default=None,
                    help="default final timestep stored in the full model's config (from `sweep`)")
    tb = sub.add_parser("table", help="markdown table from the eval JSON")
    tb.add_argument("--results", nargs="+", default=["/work/runs/ablation/results.json"])
    tb.add_argument("--out", default="")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": cmd_train, "eval": cmd_eval, "table": cmd_table, "ship": cmd_ship,
            "sweep": cmd_sweep}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
