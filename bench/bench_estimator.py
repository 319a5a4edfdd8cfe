"""HigherHRNet-W32 speed on this machine: forward (no grad) and forward+backward to the image (the guidance cost).

Usage: python bench/bench_estimator.py [--sizes 256 512] [--repeats 3] [--device cpu]
Prints one line per size and writes bench/results/estimator.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from repose_core.estimator import HigherHRNet, HigherHRNetConfig

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds); CPU time is the robust figure on a machine shared with other jobs."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def bench(size: int, repeats: int, device: torch.device, net: HigherHRNet) -> dict:
    img = torch.rand(1, 3, size, size, device=device)

    def forward():
        with torch.no_grad():
            net.features_and_heatmaps(img)

    def forward_backward():
        x = img.clone().requires_grad_(True)
        feat, hm = net.features_and_heatmaps(x)
        (hm.square().mean() + feat.square().mean()).backward()

    forward()  # warm-up (allocator, kernels)
    fwd = [_timed(forward, device) for _ in range(repeats)]
    fb = [_timed(forward_backward, device) for _ in range(repeats)]
    return {"size": size, "forward_s": statistics.median(t for t, _ in fwd),
            "forward_backward_s": statistics.median(t for t, _ in fb),
            "forward_cpu_s": statistics.median(c for _, c in fwd),
            "forward_backward_cpu_s": statistics.median(c for _, c in fb), "repeats": repeats}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "estimator.json"))
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = HigherHRNet(HigherHRNetConfig(width=32)).to(device)
    rows = [bench(s, args.repeats, device, net) for s in args.sizes]
    for r in rows:
        print(f"HigherHRNet-W32 {r['size']}x{r['size']} on {device}: forward {r['forward_s']:.3f} s, "
              f"forward+backward {r['forward_backward_s']:.3f} s (median of {r['repeats']}; process CPU "
              f"{r['forward_cpu_s']:.2f} / {r['forward_backward_cpu_s']:.2f} s)")
    result = {"model": "HigherHRNet-W32", "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "load_average_1min": os.getloadavg()[0], "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
