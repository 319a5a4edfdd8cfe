"""GPU suite: the figures issue 14 asks for, in one unattended run with no downloads (run it via bench/gpu_suite.sh).

Sections (each case is timed after a warm-up, on random weights of the full-size presets: speed and memory do not
depend on the weights; the pose estimator for guidance is the shipped repose_core/weights one):
  sampling   seconds per image and peak GPU memory at 256×176 (deepfashion256) and 512×352 (deepfashion512):
             encode + RPA (N = 5) + 50 DDIM steps with CFG (w = 2, batched) + decode, batch 1, with and without pose
             gradient guidance, fp16 and bf16 weights. deepfashion512 needs the SD VAE: a random-init diffusers
             AutoencoderKL (SD config, no download) when diffusers is importable, else a stand-in codec of the same
             latent shape whose cost is ~0 (then the VAE's encode/decode time is NOT included; the JSON says which).
  cfg        one CFG step at 256×176: batched (one forward of batch 2) / sequential (two forwards of batch 1), time
             and peak memory, fp32 and bf16.
  rpa        RPA alone (N = 5) at deepfashion256 / deepfashion512, batch 1 and 8, forward (no grad) and
             forward+backward: time and peak memory "after" (neighbourhood heads, row-wise correlation, activation
             checkpoints) and "before" (L×L masked heads, unfolded correlation, no checkpoints; the code before
             issue 14), same weights, same run (ratios = after / before).
  train      B2 training step at deepfashion256, batch 8 (bidirectional pairs, bf16 autocast) through
             bench/bench_train.py: pairs/s and peak memory.
--quick: fewer repeats and training steps, same figures (< 2.5 min on one H100: cases left after a 115 s budget are
  skipped and listed).
--dry-run: every section on CPU with the tiny preset and 2 sampling steps (checks the code paths, no GPU needed).
Results: JSON at --out, rewritten after every case (a cut-off run keeps what it measured).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from repose_core.diffusion import GaussianDiffusion, ddim_sample, linear_betas, make_eps_fn
from repose_core.models.codec import Codec
from repose_core.models.configs import get_config
from repose_core.models.repose import RePoseDM

ROOT = Path(__file__).resolve().parents[1]

ESTIMATOR = ROOT / "repose_core" / "weights" / "repose_default_estimator.safetensors"
ANCHORS = {"PIDM": "16.9 s, 9.5 GB per image (256x176)", "CFLD": "3.55 s, 6.5 GB", "HumanSD": "3.89 s at 512x512",
           "goals": "<= 0.5 s per image at 256x176 (<= 0.8 s guided); <= 4 GB at 512x352"}


class Plan:
    """What to run: presets, sizes, repeats; derived from --quick / --dry-run."""

    def __init__(self, args):
        self.dry = args.dry_run
        self.device = torch.device("cpu" if args.dry_run else args.device)
        self.repeats = 1 if (args.quick or args.dry_run) else 3
        self.steps = 2 if args.dry_run else args.steps
        self.sample_presets = ["tiny"] if args.dry_run else ["deepfashion256", "deepfashion512"]
        self.dtypes = ["float32"] if args.dry_run else ["float16", "bfloat16"]
        self.cfg_preset = "tiny" if args.dry_run else "deepfashion256"
        self.cfg_dtypes = ["float32"] if args.dry_run else ["float32", "bfloat16"]
        self.cfg_repeats = 3 if args.dry_run else (10 if args.quick else 30)
        self.rpa_presets = ["tiny"] if args.dry_run else ["deepfashion256", "deepfashion512"]
        self.rpa_batches = [2] if args.dry_run else [1, 8]
        self.rpa_repeats = 1 if args.dry_run else (2 if args.quick else 5)
        self.train_args = (["--preset", "tiny", "--device", "cpu", "--batch-size", "1", "--steps", "1"] if args.dry_run
                           else ["--preset", "deepfashion256", "--device", str(self.device), "--batch-size", "8",
                                 "--bf16", "--steps", "3" if args.quick else "10"])


# ---------------------------------------------------------------------------------------------------------------
# measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """out["peak_mib"] = peak allocated GPU memory inside the block; out["extra_mib"] = peak - memory at entry."""
    if device.type != "cuda":
        yield
        out["peak_mib"] = out["extra_mib"] = None  # CPU: not measured here (see bench_models.py for RSS)
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    yield
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    out["peak_mib"], out["extra_mib"] = round(peak / 2 ** 20, 1), round((peak - base) / 2 ** 20, 1)


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model(preset: str, variant: str, device: torch.device, dtype: torch.dtype) -> tuple[RePoseDM, str]:
    """Random-init model on the device; returns (model, codec description)."""
    torch.manual_seed(0)
    config = get_config(preset, variant)
    codec, codec_kind = None, config.codec
    if config.codec == "sd_vae":
        codec, codec_kind = sd_vae_codec()
    if codec is not None:
        codec = codec.to(device, dtype).eval().requires_grad_(False)  # the codec is not a submodule of the model
    with torch.device(device):  # parameters allocated on the GPU directly (random init of 180 M params is slow on CPU)
        model = RePoseDM(config, codec=codec) if codec is not None else RePoseDM(config)
    return model.to(device, dtype).eval().requires_grad_(False), codec_kind


def sd_vae_codec() -> tuple[Codec, str]:
    try:
        from diffusers import AutoencoderKL

        from repose_core.models.codec import DiffusersVAECodec
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=512)
        return DiffusersVAECodec(vae.eval()), "sd_vae (random-init diffusers AutoencoderKL, SD config)"
    except ImportError:
        return StandInLatentCodec(), "stand-in (diffusers not installed): VAE encode/decode time NOT included"


class StandInLatentCodec(Codec):
    """Same shapes as the SD VAE (4 channels, factor 8), ~zero cost: average-pool / nearest upsampling."""

    def __init__(self):
        super().__init__()
        self.channels, self.factor = 4, 8
        self.mix = torch.nn.Conv2d(3, 4, 1)
        self.unmix = torch.nn.Conv2d(4, 3, 1)

    def _encode(self, img):
        return self.mix(F.avg_pool2d(img, 8))

    def _decode(self, z):
        return self.unmix(F.interpolate(z, scale_factor=8, mode="nearest"))


def pose_inputs(model: RePoseDM, B: int, device, dtype):
    """Pixel-space pose input for `encode_pose`: a rendered PIDM pose map or an RGB skeleton."""
    from repose_core.pose import Pose, render_pidm_pose_map
    H, W = model.config.image_size
    kp = torch.zeros(18, 3)
    kp[:, 0], kp[:, 1], kp[:, 2] = torch.linspace(0.3 * W, 0.7 * W, 18), torch.linspace(0.1 * H, 0.9 * H, 18), 1
    pose = Pose(kp.numpy(), W, H)
    if model.config.pose_encoding == "pidm20":
        px = torch.from_numpy(render_pidm_pose_map(pose, H, W)).permute(2, 0, 1)[None]
    else:
        px = torch.rand(1, 3, H, W)  # RGB skeleton image in [0, 1]: any image costs the same to encode
    return pose, px.expand(B, -1, -1, -1).to(device, dtype)


# ---------------------------------------------------------------------------------------------------------------
# sections


def section_sampling(plan: Plan, record) -> None:
    from repose_core.guidance import PoseGuidance
    from repose_core.estimator import build_estimator
    from repose_core.pose import PoseFrame
    from repose_core.pose.keypoints import to_layout

    device = plan.device
    for preset in plan.sample_presets:
        for dtype_name in plan.dtypes:
            dtype = getattr(torch, dtype_name)
            model, codec_kind = build_model(preset, "full", device, dtype)
            diffusion = GaussianDiffusion(linear_betas(model.config.timesteps))
            H, W = model.config.image_size
            estimator = build_estimator(ESTIMATOR, device=device)
            pose, pose_px = pose_inputs(model, 1, device, dtype)
            source = torch.rand(1, 3, H, W, device=device, dtype=dtype) * 2 - 1
            est_size = getattr(getattr(estimator, "config", None), "input_size", None)
            est_size = None if not est_size or min(H, W) == est_size else int(round(max(H, W) * est_size / min(H, W)))

            for guided in (False, True):
                def one_image(steps=plan.steps):
                    with torch.no_grad():
                        z_src = model.codec.encode(source)
                        pose_map = model.encode_pose(pose_px, size=tuple(z_src.shape[-2:]))
                        cond = model.prepare(z_src, pose_map)
                        null = model.null_cond(cond)
                    eps_fn = make_eps_fn(model, pose_map, cond.features_only(), null, w=model.config.cfg_scale)
                    hook = None
                    if guided:
                        target = [PoseFrame([to_layout(pose, "coco17")], W, H)]
                        hook = PoseGuidance(estimator, model.codec, target, energy="keypoint", scale=1.0,
                                            total_steps=steps, estimator_size=est_size,
                                            alphas_cumprod=torch.as_tensor(diffusion.alphas_cumprod))
                    x_T = torch.randn(z_src.shape, device=device, dtype=dtype)
                    z0 = ddim_sample(eps_fn, x_T, diffusion, steps=steps, x0_hook=hook)
                    with torch.no_grad():
                        return model.codec.decode(z0)

                name = f"sampling {preset} {dtype_name} {'guided' if guided else 'unguided'}"
                row = dict(section="sampling", preset=preset, image_size_hw=[H, W], dtype=dtype_name, guided=guided,
                           steps=plan.steps, cfg_scale=model.config.cfg_scale, batch=1, codec=codec_kind,
                           rpa_iterations=model.config.rpa.iterations)

                def run(row=row, one_image=one_image):
                    one_image(steps=min(plan.steps, 3))  # warm-up: kernels, allocator, cuDNN autotuning
                    last = []
                    with peak_memory(device, row):
                        row["seconds_per_image"] = round(timed(lambda: last.append(one_image()), plan.repeats,
                                                               device, warmup=0), 4)
                    row["finite"] = bool(torch.isfinite(last[-1]).all())
                record(name, row, run)
            model = estimator = None  # free before the next preset (closures above read these names)
            free(device)


def section_cfg(plan: Plan, record) -> None:
    """Batched CFG (one forward of 2B) against two forwards of B, at the same inputs."""
    from repose_core.diffusion.classifier_free import batch_conditions
    device = plan.device
    for dtype_name in plan.cfg_dtypes:
        dtype = getattr(torch, dtype_name)
        model, _ = build_model(plan.cfg_preset, "b2", device, dtype)
        H, W = model.config.image_size
        _, pose_px = pose_inputs(model, 1, device, dtype)
        with torch.no_grad():
            z_src = model.codec.encode(torch.rand(1, 3, H, W, device=device, dtype=dtype) * 2 - 1)
            pose_map = model.encode_pose(pose_px, size=tuple(z_src.shape[-2:]))
            cond = model.prepare(z_src, pose_map).features_only()
            null = model.null_cond(cond)
            both = batch_conditions([cond, null], 1)  # concatenated once, as the sampler does per pair
            pose2 = torch.cat([pose_map, pose_map])
        x = torch.randn(z_src.shape, device=device, dtype=dtype)
        t = torch.full((1,), 500, device=device, dtype=torch.long)

        @torch.no_grad()
        def batched():
            return model(torch.cat([x, x]), torch.cat([t, t]), pose2, both)

        @torch.no_grad()
        def sequential():
            return model(x, t, pose_map, cond), model(x, t, pose_map, null)

        row = dict(section="cfg", preset=plan.cfg_preset, image_size_hw=[H, W], dtype=dtype_name, batch=1)

        def run(row=row, batched=batched, sequential=sequential):
            seq_mem, bat_mem = {}, {}
            sequential(), batched()  # warm-up: cuDNN autotuning would otherwise count in the peaks below
            with peak_memory(device, seq_mem):
                sequential()
            with peak_memory(device, bat_mem):
                batched()
            # interleaved repeats, so that both see the same machine state
            tb, ts = [], []
            for _ in range(plan.cfg_repeats):
                tb.append(timed(batched, 1, device, warmup=0))
                ts.append(timed(sequential, 1, device, warmup=0))
            row.update(batched_ms=round(1000 * statistics.median(tb), 3),
                       sequential_ms=round(1000 * statistics.median(ts), 3),
                       time_ratio_batched_over_sequential=round(statistics.median(tb) / statistics.median(ts), 4),
                       batched_extra_mib=bat_mem["extra_mib"], sequential_extra_mib=seq_mem["extra_mib"])
        record(f"cfg {plan.cfg_preset} {dtype_name}", row, run)
        model = None  # free before the next dtype (the closures above read this name)
        free(device)


def section_rpa(plan: Plan, record) -> None:
    from bench_rpa import rpa_implementation, rpa_inputs, rpa_module  # before = pre issue 14, after = default
    device = plan.device
    for preset in plan.rpa_presets:
        config, rpa = rpa_module(preset, device)
        for B in plan.rpa_batches:
            src, pose = rpa_inputs(config, B, device)

            def forward():
                with torch.no_grad():
                    rpa(src, pose)

            def forward_backward():
                out = rpa(src, pose)
                sum((x.float() ** 2).mean() for x in out.warped).backward()
                rpa.zero_grad(set_to_none=True)

            for mode, fn in (("forward", forward), ("forward_backward", forward_backward)):
                grid = [-(-side // config.rpa.downsample) for side in config.diffusion_size]
                row = dict(section="rpa", preset=preset, rpa_grid=grid, region_radii=list(config.rpa.region_radii),
                           batch=B, mode=mode, dtype="float32", iterations=config.rpa.iterations)

                def run(row=row, fn=fn):
                    for impl in ("before", "after"):
                        with rpa_implementation(rpa, impl):
                            free(device)
                            mem = {}
                            fn()  # warm-up
                            with peak_memory(device, mem):
                                fn()
                            row[f"{impl}_extra_mib"] = mem["extra_mib"]
                            row[f"{impl}_ms"] = round(1000 * timed(fn, plan.rpa_repeats, device, warmup=0), 2)
                    row["time_ratio"] = round(row["after_ms"] / row["before_ms"], 4)
                    if row["before_extra_mib"]:
                        row["memory_ratio"] = round(row["after_extra_mib"] / row["before_extra_mib"], 4)
                        row["after_extra_mib_per_sample"] = round(row["after_extra_mib"] / B, 1)
                record(f"rpa {preset} B={B} {mode}", row, run)
        rpa = None  # free before the next preset (the closures above read this name)
        free(device)


def section_train(plan: Plan, record, out_dir: Path) -> None:
    import bench_train

    row = dict(section="train", args=plan.train_args)

    def run(row=row):
        tmp = out_dir / "gpu_suite_train.json"
        bench_train.main(plan.train_args + ["--out", str(tmp)])
        row.update(json.loads(tmp.read_text(encoding="utf-8")))
    free(plan.device)
    record("train " + " ".join(plan.train_args), row, run)


SECTIONS = ("sampling", "train", "rpa", "cfg")  # run in this order: the headline figures first


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON result file (e.g. $OUT/gpu_suite.json)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and training steps (~2.5 min on an H100)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 2 steps: checks every code path")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--steps", type=int, default=50, help="sampling steps per image (default 50)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the cases left once this many seconds have passed (default 420, --quick 115)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if not args.dry_run and args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device is available: use --dry-run to check the suite on CPU, or --device cpu")
    budget = args.budget_s if args.budget_s is not None else (115.0 if args.quick else 420.0)
    plan = Plan(args)
    if plan.device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CI machine
    if plan.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = dict(benchmark="gpu_suite", quick=args.quick, dry_run=args.dry_run, device=str(plan.device),
                  device_name=torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda"
                  else platform.processor() or platform.machine(), torch=torch.__version__,
                  threads=torch.get_num_threads(), steps=plan.steps, budget_s=budget, anchors=ANCHORS, cases=[],
                  errors=[], skipped=[])

    def save():
        result["wall_s"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    def record(name: str, row: dict, run) -> None:
        if time.perf_counter() - start > budget:
            result["skipped"].append(name)
            print(f"[gpu_suite] skipped (budget {budget:.0f} s): {name}", flush=True)
            save()
            return
        t0 = time.perf_counter()
        try:
            run()
            row["case_wall_s"] = round(time.perf_counter() - t0, 2)
            result["cases"].append(dict(name=name, **row))
            print(f"[gpu_suite] {name}: " + ", ".join(f"{k}={v}" for k, v in row.items()
                                                    if k not in ("section", "args", "pidm_reference")), flush=True)
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others' figures
            result["errors"].append(dict(name=name, error=f"{type(e).__name__}: {e}",
                                         traceback=traceback.format_exc(limit=6)))
            print(f"[gpu_suite] FAILED {name}: {type(e).__name__}: {e}", flush=True)
        free(plan.device)
        save()

    print(f"[gpu_suite] device {result['device_name']} ({plan.device}), torch {torch.__version__}, "
          f"{'dry run' if args.dry_run else 'quick' if args.quick else 'full'}, budget {budget:.0f} s", flush=True)
    for name in args.sections:
        if name == "train":
            section_train(plan, record, out.parent)
        else:
            globals()[f"section_{name}"](plan, record)
    save()
    print(f"[gpu_suite] {len(result['cases'])} cases, {len(result['errors'])} errors, {len(result['skipped'])} "
          f"skipped in {result['wall_s']} s; wrote {out}", flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
