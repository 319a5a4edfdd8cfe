"""Cost of Recurrent Pose Alignment in units of one UNet forward at the same resolution (goal: <= 3 for N = 5).

For each config (default: tiny and deepfashion256) and each warp space ("image" = eq. 9, re-encode the warped source;
"feature" = warp the RPA features), times on one (source, pose) pair, batch 1, no grad:
  unet_ms      one denoiser forward (model(x_t, t, pose, cond)), i.e. one NFE without CFG
  rpa_ms       RPA with N = 5 iterations (flow only)
  prepare_ms   everything `prepare` does once per pair (RPA + texture encoder of the aligned source)
  rpa_in_unet  rpa_ms / unet_ms;  prepare_extra_in_unet = (prepare_ms - b1 prepare_ms) / unet_ms
and parameter counts. Prints a table and writes bench/results/rpa.json.

--attention: RPA alone, "after" (restricted MapFormer heads over (2r+1)² neighbourhoods, row-wise correlation volume,
activation checkpoints when training) against "before" (the implementation before issue 14: L×L masked heads,
unfolded correlation, no checkpoints; `rpa_implementation`), same weights, same outputs, forward (no grad) and forward+backward (training), per preset and batch size:
time and peak memory above the loaded model (CPU: peak RSS of a fresh subprocess per case; CUDA: max allocated),
ratios after / before from the same run. Writes bench/results/rpa_attention.json.

    python bench/bench_rpa.py                       # CPU, tiny + deepfashion256
    python bench/bench_rpa.py --device cuda --configs deepfashion256 deepfashion512 market1501
    python bench/bench_rpa.py --attention --threads 1 --configs deepfashion256 deepfashion512 --batches 1 8
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from repose_core.models.configs import get_config
from repose_core.models.repose import RePoseDM

ROOT = Path(__file__).resolve().parents[1]


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


def _unfold_correlation(target_feat, source_feat, radius):
    """The correlation volume as it was before issue 14 (all (2R+1)² windows unfolded at once, kept for autograd)."""
    import math

    import torch.nn.functional as F
    B, D, H, W = source_feat.shape
    k = 2 * radius + 1
    windows = F.unfold(source_feat, kernel_size=k, padding=radius).view(B, D, k * k, H, W)
    return F.relu(torch.einsum("bdhw,bdkhw->bkhw", target_feat, windows) / math.sqrt(D))


@contextlib.contextmanager
def rpa_implementation(rpa, impl: str):
    """impl "before": the RPA as it was before issue 14 (L×L masked restricted heads, unfolded correlation volume,
    no activation checkpoints); "after": the default (neighbourhood heads, row-wise correlation, activation
    checkpoints when training on a grid of >= RecurrentPoseAlignment.CHECKPOINT_MIN_TOKENS tokens; the masked form on
    grids of <= MASKED_MAX_TOKENS, where it is faster).
    Same weights, same outputs."""
    from repose_core.models import rpa as rpa_module
    saved = rpa_module.correlation_volume
    before = impl == "before"
    rpa.set_attention_impl("masked" if before else "auto")
    rpa.checkpointing = False if before else None
    if before:
        rpa_module.correlation_volume = _unfold_correlation
    try:
        yield rpa
    finally:
        rpa_module.correlation_volume = saved
        rpa.set_attention_impl("auto")
        rpa.checkpointing = None


def rpa_module(preset: str, device: torch.device):
    """(config, RPA of the preset's b2) with a non-identity flow, as after training (random weights otherwise)."""
    from repose_core.models.rpa import RecurrentPoseAlignment
    cfg = get_config(preset, "b2")
    torch.manual_seed(0)
    rpa = RecurrentPoseAlignment(cfg.rpa).to(device)
    with torch.no_grad():
        rpa.aggregator.conv2.weight.normal_(0, 0.05)
    return cfg, rpa


def rpa_inputs(cfg, batch: int, device: torch.device):
    """Seeded diffusion-space source and pose map of the config's size."""
    h, w = cfg.diffusion_size
    g = torch.Generator().manual_seed(0)
    src = torch.randn(batch, cfg.rpa.source_channels, h, w, generator=g).to(device)
    pose = torch.rand(batch, cfg.rpa.pose_channels, h, w, generator=g).to(device)
    return src, pose


def attention_case(preset: str, batch: int, mode: str, impl: str, repeats: int, device: torch.device) -> dict:
    """One RPA measurement (run in its own process on CPU, so that the peak RSS is this case's alone)."""
    import resource

    cfg, rpa = rpa_module(preset, device)
    src, pose = rpa_inputs(cfg, batch, device)

    def run(src=src, pose=pose):
        if mode == "forward":
            with torch.no_grad():
                return rpa(src, pose).flow
        out = rpa(src, pose)
        sum((x ** 2).mean() for x in out.warped).backward()
        rpa.zero_grad(set_to_none=True)
        return out.flow.detach()

    with rpa_implementation(rpa, impl):  # warm-up on a small input: lazy imports and one-off buffers are not the
        small = 8 * cfg.rpa.downsample   # case's memory
        run(src[:1, :, :small, :small].contiguous(), pose[:1, :, :small, :small].contiguous())

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (MiB)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss()
    with rpa_implementation(rpa, impl):
        flow = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
            extra = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            extra = rss() - base
        ms = timed(run, repeats, device) if repeats else None
    return dict(preset=preset, batch=batch, mode=mode, impl=impl, extra_mib=round(extra, 1),
                ms=round(ms, 1) if ms else None, flow_abs_mean=float(flow.abs().mean()))


def bench_attention(args, device: torch.device) -> int:
    import subprocess
    rows = []
    for name in args.configs:
        cfg = get_config(name, "b2")
        grid = [-(-cfg.diffusion_size[0] // cfg.rpa.downsample), -(-cfg.diffusion_size[1] // cfg.rpa.downsample)]
        for batch in args.batches:
            for mode in ("forward", "forward_backward"):
                row = dict(config=name, rpa_grid=grid, region_radii=list(cfg.rpa.region_radii), batch=batch,
                           mode=mode, iterations=cfg.rpa.iterations)
                for impl in ("before", "after"):
                    if device.type == "cpu":  # fresh process: ru_maxrss is a high-water mark
                        cmd = [sys.executable, __file__, "--_case", name, str(batch), mode, impl,
                               "--repeats", str(args.repeats), "--threads", str(args.threads or 0), "--device", "cpu"]
                        res = subprocess.run(cmd, capture_output=True, text=True)
                        if res.returncode:
                            print(res.stderr[-2000:], file=sys.stderr)
                            row[f"{impl}_error"] = res.stderr.strip().splitlines()[-1] if res.stderr else "failed"
                            continue
                        case = json.loads(res.stdout.strip().splitlines()[-1])
                    else:
                        case = attention_case(name, batch, mode, impl, args.repeats, device)
                    row[f"{impl}_ms"], row[f"{impl}_extra_mib"] = case["ms"], case["extra_mib"]
                    row[f"{impl}_flow_abs_mean"] = case["flow_abs_mean"]
                if row.get("before_ms") and row.get("after_ms"):
                    row["time_ratio"] = round(row["after_ms"] / row["before_ms"], 3)
                if row.get("before_extra_mib") and row.get("after_extra_mib") is not None:
                    row["memory_ratio"] = round(row["after_extra_mib"] / row["before_extra_mib"], 3)
                    row["after_extra_mib_per_sample"] = round(row["after_extra_mib"] / batch, 1)
                    row["before_extra_mib_per_sample"] = round(row["before_extra_mib"] / batch, 1)
                rows.append(row)
                print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    result = dict(benchmark="rpa_attention", device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                  torch=torch.__version__, threads=args.threads or torch.get_num_threads(), repeats=args.repeats,
                  memory_kind="peak RSS above the built RPA, fresh process per case" if device.type == "cpu"
                  else "cuda max_memory_allocated above the built RPA",
                  goal="training memory of RPA per sample at 256x176 <= 512 MiB; time not worse", rows=rows)
    out = Path(args.out if args.out != DEFAULT_OUT else ROOT / "bench" / "results" / "rpa_attention.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


DEFAULT_OUT = str(ROOT / "bench" / "results" / "rpa.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "deepfashion256"])
    p.add_argument("--iterations", type=int, default=5, help="N, RPA iterations (paper default 5)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--attention", action="store_true", help="neighbourhood vs masked MapFormer heads (docstring)")
    p.add_argument("--batches", type=int, nargs="+", default=[1], help="--attention: batch sizes")
    p.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)  # internal: one --attention case in this process
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args._case:
        name, batch, mode, impl = args._case
        print(json.dumps(attention_case(name, int(batch), mode, impl, args.repeats, device)))
        return 0
    if args.attention:
        return bench_attention(args, device)

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
