"""Full-size model figures on CPU: parameter counts, time and peak memory of RPA (once per pair) and of one
sampling step (CFG: conditional + null pass batched), for the 256×176, 512×352 and 128×64 presets.

Each configuration runs in its own subprocess so that its peak resident memory (VmHWM) is its own.
The 512×352 preset works in the SD VAE latent space (4×64×44); the VAE is not part of the step (the sampler never
decodes during sampling), so a random latent stands in for the encoded source.

    python bench/bench_models.py [--configs deepfashion256,deepfashion512,market1501] [--variant b2] [--threads 2]

Prints a table and writes bench/results/models.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "models.json"


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_one(name: str, variant: str, threads: int, repeats: int) -> dict:
    """Measure one preset in this process (called in a subprocess by main)."""
    import torch

    from repose_core.models.configs import get_config
    from repose_core.models.repose import RePoseDM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_config(name, variant)
    base_rss = _peak_rss_mb()
    with torch.no_grad():
        model = RePoseDM(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        rpa_params = sum(p.numel() for p in model.rpa.parameters()) if getattr(model, "rpa", None) is not None else 0
        C = cfg.diffusion_channels
        h, w = cfg.diffusion_size
        source = torch.randn(1, C, h, w)
        pose = torch.rand(1, cfg.pose_channels, h, w)
        t0 = time.perf_counter()
        cond = model.prepare(source, pose)
        prepare_s = time.perf_counter() - t0
        null = model.null_cond(cond)
        feats = [torch.cat([a, b]) if a is not None else None for a, b in zip(cond.features, null.features)]
        from repose_core.models.repose import AppearanceCond

        both = AppearanceCond(features=feats, flow=None, warped=[])
        x = torch.randn(2, C, h, w)
        t = torch.full((2,), 500, dtype=torch.long)
        pose2 = pose.expand(2, -1, -1, -1)
        model(x, t, pose2, both)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t, pose2, both)
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    return {
        "config": name, "variant": variant, "image_size": list(cfg.image_size), "codec": cfg.codec,
        "diffusion_shape": [C, h, w], "params": params, "rpa_params": rpa_params,
        "rpa_prepare_s": round(prepare_s, 3), "step_s_cfg_batch2": round(step_s, 3),
        "rpa_in_steps": round(prepare_s / step_s, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
        "baseline_rss_mb": round(base_rss, 1), "threads": threads, "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="deepfashion256,deepfashion512,market1501")
    ap.add_argument("--variant", default="b2", choices=["b1", "b2", "full"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.variant, args.threads, args.repeats)))
        return
    rows = []
    for name in args.configs.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--variant", args.variant,
                              "--threads", str(args.threads), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['config']:>15} {r['variant']:>4} {r['image_size'][0]}x{r['image_size'][1]:<4} "
              f"params {r['params'] / 1e6:7.1f}M (RPA {r['rpa_params'] / 1e6:.2f}M)  "
              f"RPA once {r['rpa_prepare_s']:7.2f}s  step(CFG) {r['step_s_cfg_batch2']:7.2f}s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    load = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "loadavg_1min": load,
                                   "command": "python bench/bench_models.py " + " ".join(sys.argv[1:])}, indent=1))
    print(f"wrote {RESULTS} (load average {load:.1f})")


if __name__ == "__main__":
    main()
