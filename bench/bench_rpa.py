"""Cost of Recurrent Pose Alignment in units of one UNet forward at the same resolution (goal: <= 3 for N = 5).

For each config (default: tiny and deepfashion256) and each warp space ("image" = eq. 9, re-encode the warped source;
"feature" = warp the RPA features), times on one (source, pose) pair, batch 1, no grad:
  unet_ms      one denoiser forward (model(x_t, t, pose, cond)), i.e. one NFE without CFG
  rpa_ms       RPA with N = 5 iterations (flow only)
  prepare_ms   everything `prepare` does once per pair (RPA + texture encoder of the aligned source)
  rpa_in_unet  rpa_ms / unet_ms;  prepare_extra_in_unet = (prepare_ms - b1 prepare_ms) / unet_ms
and parameter counts. Prints a table and writes bench/results/rpa.json.

    python bench/bench_rpa.py                       # CPU, tiny + deepfashion256
    python bench/bench_rpa.py --device cuda --configs deepfashion256 deepfashion512 market1501
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repose_core.models.configs import get_config  # noqa: E402
from repose_core.models.repose import RePoseDM  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@torch.no_grad()
def bench_config(name: str, iterations: int, repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    b1 = RePoseDM(get_config(name, "b1")).to(device, dtype).eval()
    cfg = b1.config
    h, w = cfg.diffusion_size
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, cfg.diffusion_channels, h, w, generator=g).to(device, dtype)
    pose = torch.rand(1, cfg.pose_channels, h, w, generator=g).to(device, dtype)
    x_t = torch.randn(1, cfg.diffusion_channels, h, w, generator=g).to(device, dtype)
    t = torch.tensor([500], device=device)

    cond = b1.prepare(source, pose)
    unet_ms = timed(lambda: b1(x_t, t, pose, cond), repeats, device)
    b1_prepare_ms = timed(lambda: b1.prepare(source, pose), repeats, device)
    net = b1.net
    for warp_space in ("image", "feature"):
        b2 = RePoseDM(get_config(name, "b2", rpa=dict(warp_space=warp_space, iterations=iterations)), net=net)
        b2 = b2.to(device, dtype).eval()  # shares b1's UNet weights: only the RPA is new
        rpa_ms = timed(lambda: b2.rpa(source, pose), repeats, device)
        prepare_ms = timed(lambda: b2.prepare(source, pose), repeats, device)
        rpa_cfg = b2.config.rpa
        rows.append(dict(
            config=name, warp_space=warp_space, iterations=iterations, image_size=list(cfg.image_size),
            diffusion=[cfg.diffusion_channels, h, w],
            rpa_grid=[-(-h // rpa_cfg.downsample), -(-w // rpa_cfg.downsample)],
            rpa_depth=rpa_cfg.depth, unet_params=count(net), rpa_params=count(b2.rpa),
            unet_ms=round(unet_ms, 2), rpa_ms=round(rpa_ms, 2), prepare_ms=round(prepare_ms, 2),
            b1_prepare_ms=round(b1_prepare_ms, 2), rpa_in_unet=round(rpa_ms / unet_ms, 3),
            prepare_extra_in_unet=round((prepare_ms - b1_prepare_ms) / unet_ms, 3),
        ))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "deepfashion256"])
    p.add_argument("--iterations", type=int, default=5, help="N, RPA iterations (paper default 5)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "rpa.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    rows = []
    for name in args.configs:
        rows += bench_config(name, args.iterations, args.repeats, device, dtype)

    header = ("config", "warp", "N", "grid", "unet ms", "rpa ms", "RPA/UNet", "prep extra/UNet", "RPA params")
    print(" | ".join(header))
    for r in rows:
        grid = "x".join(map(str, r["rpa_grid"]))
        cells = (r["config"], r["warp_space"], r["iterations"], grid, r["unet_ms"], r["rpa_ms"], r["rpa_in_unet"],
                 r["prepare_extra_in_unet"], f"{r['rpa_params']:,} (UNet {r['unet_params']:,})")
        print(" | ".join(str(v) for v in cells))
    result = dict(benchmark="rpa", goal="rpa_in_unet <= 3 for N = 5", device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                  dtype=args.dtype, torch=torch.__version__, threads=torch.get_num_threads(), repeats=args.repeats,
                  rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
