"""Cost of Pose-Interaction-Field gradient guidance (repose_core.guidance) relative to unguided sampling.

Goals: a guided step ≤ 1.6× an unguided step while guidance is active; a whole default run ≤ 1.3× an unguided run.

Setup (CPU, random weights — costs do not depend on weight values):
  image 256×176 (DeepFashion), full-size HigherHRNet-W32 estimator (28.6 M parameters),
  denoisers with batched classifier-free guidance (w = 2, one forward of batch 2):
    tiny-unet   PIDM-layout UNet, `pidm_small_config` (2.9 M parameters), pixel space 256×176;
    pidm-full   PIDM's DeepFashion UNet (180 M parameters), pixel space 256×256 (its 5 downsamplings need /32;
                PIDM pads 176 -> 256). Skipped with --quick.
Per case it measures, interleaved and single-threaded (median of repeats):
  eps_ms      one CFG-combined denoiser call (= an unguided step; the DDIM update itself is negligible),
  guide_ms    one guidance evaluation (decode, estimator forward + backward to x̂0, update),
  step_ratio  (eps_ms + guide_ms) / eps_ms  — a guided step relative to an unguided one,
  run_ratio   for schedules (window / every-k): 1 + fraction_of_guided_steps · guide_ms / eps_ms,
  saved_mb    activation memory guidance adds: distinct tensors autograd saves for the backward pass (RSS deltas
              are meaningless once the allocator holds freed memory, and tracemalloc does not see torch), plus the
              process's ru_maxrss.
Times are CPU times of the single-threaded process (time.process_time), so that other jobs on shared cores do not
distort the ratios; --threads > 1 makes them CPU-seconds, not wall seconds.
Cheap paths compared: estimator_size 256 vs 512 (input resized before the estimator), window only, every-k, and for
latent models (SD-style 4×32×22 latent) LatentRGBApprox vs a full VAE decode (stand-in decoder with the SD VAE
decoder's layer widths, no mid attention; diffusers is not installed here).
A measured end-to-end DDIM run (tiny-unet, default schedule) checks the run_ratio estimate.
Writes bench/results/guidance.json.  Usage: python bench/bench_guidance.py [--quick] [--repeats N] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from repose_core.diffusion import GaussianDiffusion, ddim_sample, linear_betas
from repose_core.estimator import HigherHRNet, HigherHRNetConfig
from repose_core.guidance import CHEAP_WINDOW, GuidanceConfig, LatentRGBApprox, PoseGuidance
from repose_core.models import PIDMNet, UNetConfig, pidm_small_config
from repose_core.models.codec import Codec, IdentityCodec
from repose_core.pose import Pose

ROOT = Path(__file__).resolve().parents[1]

# Schedules whose whole-run cost is reported; "default" = GuidanceConfig's window, "cheap" = CHEAP_WINDOW.
SCHEDULES = {
    "default (every step)": {k: getattr(GuidanceConfig(), k) for k in ("start", "end", "every")},
    "window 0-0.5": dict(start=0.0, end=0.5, every=1),
    "every 2": dict(start=0.0, end=1.0, every=2),
    "cheap (0-0.5, every 2)": CHEAP_WINDOW,
    "window 0-0.3, every 3": dict(start=0.0, end=0.3, every=3),
}


def saved_for_backward_mb(fn) -> float:
    """MB of distinct tensors autograd keeps for the backward pass while `fn` runs: the activation memory that
    guidance adds on top of unguided sampling (deterministic, unlike RSS, which the allocator does not give back)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


class VAEDecoderStandIn(Codec):
    """Cost stand-in for the SD VAE decoder: 4-channel latent -> RGB ×8, widths 512/512/256/128, 3 res blocks per
    level (+ 2 mid), GroupNorm + SiLU, nearest upsampling + conv. Random weights."""

    channels, factor = 4, 8

    def __init__(self):
        super().__init__()

        def res(c_in, c_out):
            return nn.Sequential(nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                 nn.GroupNorm(32, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))

        layers = [nn.Conv2d(4, 512, 3, padding=1), res(512, 512), res(512, 512)]
        widths = (512, 512, 256, 128)
        c = 512
        for i, w in enumerate(widths):
            layers += [res(c, w), res(w, w), res(w, w)]
            c = w
            if i < 3:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def _decode(self, z):
        return self.net(z)

    def _encode(self, img):
        raise NotImplementedError


def cfg_eps_fn(net: PIDMNet, src: torch.Tensor, pose_map: torch.Tensor, w: float = 2.0):
    """Batched CFG ε of a PIDM-layout UNet: one forward of batch 2 (cond, null)."""
    with torch.no_grad():
        feats = [torch.cat([c, n]) for c, n in zip(net.encode(src), net.encode_null(src))]

    @torch.no_grad()
    def eps_fn(x_t, t):
        x = torch.cat([x_t, pose_map], 1)
        out = net.denoise(torch.cat([x, x]), torch.cat([t, t]), feats)
        eps_c, eps_u = out[:, :3].chunk(2)
        return torch.cat([eps_u + w * (eps_c - eps_u), out[:1, 3:]], 1)

    return eps_fn


def interleaved(fns: dict, repeats: int) -> dict:
    """Median CPU time (s) of each callable, run interleaved after one warm-up each.

    CPU time of this (single-threaded) process, not wall time: on shared cores wall time mostly measures the load."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.process_time()
            fn()
            times[k].append(time.process_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def person(width, height) -> Pose:
    """A standing person (OpenPose-18) on a width × height canvas."""
    rel = [(0.50, 0.12), (0.50, 0.22), (0.38, 0.23), (0.33, 0.38), (0.30, 0.52), (0.62, 0.23), (0.67, 0.38),
           (0.70, 0.52), (0.43, 0.52), (0.42, 0.72), (0.42, 0.92), (0.57, 0.52), (0.58, 0.72), (0.58, 0.92),
           (0.47, 0.10), (0.53, 0.10), (0.44, 0.11), (0.56, 0.11)]
    return Pose([(x * width, y * height, 1.0) for x, y in rel], width, height, "openpose18")


def run_ratio(guide_s, eps_s, schedule, steps) -> tuple[float, int]:
    probe = PoseGuidance(None, IdentityCodec(), energy=lambda img: img.sum((1, 2, 3)), total_steps=steps, **schedule)
    active = sum(probe.is_active(i) for i in range(steps))
    return 1.0 + active / steps * guide_s / eps_s, active


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 180 M-parameter PIDM UNet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of a whole run (PIDM: 50 DDIM)")
    parser.add_argument("--e2e-steps", type=int, default=10, help="steps of the measured end-to-end run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, W = 256, 176

    estimator = HigherHRNet(HigherHRNetConfig(width=32))
    target = person(W, H)
    results = {"machine": platform.platform(), "torch": torch.__version__, "threads": args.threads,
               "image": [H, W], "steps": args.steps, "goals": {"step_ratio": 1.6, "run_ratio": 1.3},
               "cheap_window": CHEAP_WINDOW, "cases": [], "latent": {}, "end_to_end": {}}

    # ---- pixel-space denoisers ------------------------------------------------------------------------------
    denoisers = [("tiny-unet", PIDMNet(pidm_small_config(image_size=64)).eval(), (H, W))]
    if not args.quick:
        denoisers.append(("pidm-full", PIDMNet(UNetConfig()).eval(), (256, 256)))
    rows = []
    for label, net, (h, w) in denoisers:
        src = torch.rand(1, 3, h, w) * 2 - 1
        pose_map = torch.rand(1, 20, h, w)
        eps_fn = cfg_eps_fn(net, src, pose_map)
        x = torch.randn(1, 3, h, w)
        t = torch.tensor([500])
        tgt = person(w, h)
        guides = {size: PoseGuidance(estimator, IdentityCodec(), tgt, estimator_size=size, scale=1e-3)
                  for size in (None, 512)}
        fns = {"eps": lambda: eps_fn(x, t)}
        fns.update({f"guide@{size or max(h, w)}": (lambda g=g: g(x, t, 0)) for size, g in guides.items()})
        measured = interleaved(fns, args.repeats)
        eps_s = measured.pop("eps")
        for key, guide_s in measured.items():
            size = None if key.endswith(str(max(h, w))) else int(key.split("@")[1])
            row = {"denoiser": label, "size": [h, w], "estimator_input": key.split("@")[1],
                   "eps_ms": 1e3 * eps_s, "guide_ms": 1e3 * guide_s, "step_ratio": (eps_s + guide_s) / eps_s,
                   "saved_mb": saved_for_backward_mb(lambda: guides[size](x, t, 0)), "runs": {}}
            for name, sched in SCHEDULES.items():
                ratio, active = run_ratio(guide_s, eps_s, sched, args.steps)
                row["runs"][name] = {"run_ratio": ratio, "guided_steps": active}
            rows.append(row)
    results["cases"] = rows

    # ---- latent path: full decode vs LatentRGBApprox -----------------------------------------------------
    z = torch.randn(1, 4, H // 8, W // 8)
    full, approx = VAEDecoderStandIn().eval(), LatentRGBApprox(torch.randn(4, 3) * 0.3)
    g_full = PoseGuidance(estimator, full, target, scale=1e-3)
    g_approx = PoseGuidance(estimator, approx, target, scale=1e-3)
    measured = interleaved({"full_decode": lambda: g_full(z, t, 0), "latent_rgb_approx": lambda: g_approx(z, t, 0),
                            "decode_only": lambda: torch.no_grad()(full.decode)(z)}, args.repeats)
    results["latent"] = {k: {"ms": 1e3 * s} for k, s in measured.items()}
    results["latent"]["full_decode"]["saved_mb"] = saved_for_backward_mb(lambda: g_full(z, t, 0))
    results["latent"]["latent_rgb_approx"]["saved_mb"] = saved_for_backward_mb(lambda: g_approx(z, t, 0))
    results["latent"]["decoder_params_m"] = sum(p.numel() for p in full.parameters()) / 1e6

    # ---- measured end-to-end run (tiny UNet, default schedule) -------------------------------------------
    net = denoisers[0][1]
    src, pose_map = torch.rand(1, 3, H, W) * 2 - 1, torch.rand(1, 20, H, W)
    eps_fn = cfg_eps_fn(net, src, pose_map)
    diffusion = GaussianDiffusion(linear_betas(1000))
    x_T = torch.randn(1, 3, H, W)
    hook = PoseGuidance(estimator, IdentityCodec(), target, scale=1e-3, total_steps=args.e2e_steps,
                        **CHEAP_WINDOW)
    e2e = interleaved({"unguided": lambda: ddim_sample(eps_fn, x_T, diffusion, steps=args.e2e_steps),
                       "guided": lambda: ddim_sample(eps_fn, x_T, diffusion, steps=args.e2e_steps, x0_hook=hook)},
                      max(1, args.repeats - 1))
    tiny = next(r for r in rows if r["denoiser"] == "tiny-unet" and r["estimator_input"] == str(max(H, W)))
    predicted, _ = run_ratio(tiny["guide_ms"], tiny["eps_ms"], CHEAP_WINDOW, args.e2e_steps)
    results["end_to_end"] = {"steps": args.e2e_steps, "unguided_s": e2e["unguided"], "guided_s": e2e["guided"],
                             "measured_run_ratio": e2e["guided"] / e2e["unguided"],
                             "predicted_run_ratio": predicted,
                             "guided_steps": sum(hook.is_active(i) for i in range(args.e2e_steps))}
    results["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # ---- report ------------------------------------------------------------------------------------------------
    print(f"\nGuidance cost, {H}x{W}, HigherHRNet-W32, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'denoiser':<10} {'est.in':>6} {'eps ms':>9} {'guide ms':>9} {'step×':>6} {'saved MB':>8}  "
          + "  ".join(f"{n}" for n in SCHEDULES))
    for r in rows:
        runs = "  ".join(f"{r['runs'][n]['run_ratio']:.2f}× ({r['runs'][n]['guided_steps']})".ljust(len(n))
                         for n in SCHEDULES)
        print(f"{r['denoiser']:<10} {r['estimator_input']:>6} {r['eps_ms']:9.1f} {r['guide_ms']:9.1f} "
              f"{r['step_ratio']:6.2f} {r['saved_mb']:8.1f}  {runs}")
    lat = results["latent"]
    print(f"\nlatent 4x{H // 8}x{W // 8}: guidance with full decode {lat['full_decode']['ms']:.1f} ms "
          f"(saved {lat['full_decode']['saved_mb']:.0f} MB; decode alone {lat['decode_only']['ms']:.1f} ms, "
          f"{lat['decoder_params_m']:.1f} M params) vs LatentRGBApprox {lat['latent_rgb_approx']['ms']:.1f} ms "
          f"(saved {lat['latent_rgb_approx']['saved_mb']:.0f} MB)")
    e = results["end_to_end"]
    print(f"end-to-end tiny-unet DDIM {e['steps']} steps, default schedule: unguided {e['unguided_s']:.2f} s, "
          f"guided {e['guided_s']:.2f} s -> {e['measured_run_ratio']:.2f}× (predicted {e['predicted_run_ratio']:.2f}×)")
    print(f"process ru_maxrss {results['ru_maxrss_mb']:.0f} MB")
    out = ROOT / "bench" / "results" / "guidance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
