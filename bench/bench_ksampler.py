"""RePoseKSampler vs ComfyUI's own KSampler on the same tiny RePoseDM network, same sampler, scheduler, seed.

Both paths run inside the real ComfyUI python (comfy imported after enable_args_parsing with --cpu):
  ours:    nodes.repose_nodes.repose_sample -> RePoseGuider (EpsDenoiser + single-pass CFG of repose_core) driven
           by comfy.samplers.sampler_object(name) over comfy.samplers.calculate_sigmas of our discrete schedule;
  comfy:   comfy.sample.sample (what the KSampler node calls) on a comfy BaseModel whose diffusion_model is the same
           network behind a thin adapter (cond/uncond batched by ComfyUI, CFG by ComfyUI's cfg_function).
Reports the time ratio ours/comfy (goal <= 1.05) and the largest difference between the two samples (the maths is
the same, so it should be float noise). Writes bench/results/ksampler.json.

    REPOSE_COMFY=<ComfyUI 0.3.75 tree> $REPOSE_PY bench/bench_ksampler.py [--steps 20] [--repeats 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_comfy(comfy_dir: str):
    if importlib.util.find_spec("comfy") is None:
        # ComfyUI is a source tree, not an installed package: start again with the tree on PYTHONPATH
        path = os.pathsep.join([comfy_dir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, PYTHONPATH=path))
    sys.argv = [sys.argv[0], "--cpu"]
    os.chdir(comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management  # noqa: F401  (reads --cpu)


def import_pack():
    name = "repose_bench_pack"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def mod(name: str):
    """A module of the pack imported by import_pack()."""
    return importlib.import_module(f"repose_bench_pack.{name}")


def build(seed: int = 0):
    """Tiny RePoseDM (b2) with non-zero output layers, its ComfyUI wrapper, and one aligned (source, pose) pair."""
    import torch

    ops, runtime, rnodes = mod("repose_core.transfer_ops"), mod("nodes.comfy_runtime"), mod("nodes.repose_nodes")
    diffusion_mod = mod("repose_core.diffusion")
    torch.manual_seed(seed)
    model = mod("repose_core.models.repose").RePoseDM(mod("repose_core.models.configs").get_config("tiny", "b2"))
    model = model.eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and float(p.abs().max()) == 0.0:
                p.normal_(0.0, 0.02)
    diffusion = diffusion_mod.GaussianDiffusion(diffusion_mod.linear_betas(model.config.timesteps))
    holder = runtime.RePoseComfyModel(model, diffusion, model.config.codec)
    loaded = rnodes.LoadedRePose(model, runtime.patcher_for(holder), diffusion, "bench", "repose_dm")
    walk = [22, 10, 1, 22, 16, 1, 16, 16, 1, 14, 26, 1, 12, 36, 1, 28, 16, 1, 30, 26, 1, 32, 36, 1, 18, 34, 1, 18, 46,
            1, 18, 58, 1, 26, 34, 1, 27, 46, 1, 28, 58, 1, 21, 9, 1, 23, 9, 1, 20, 10, 1, 24, 10, 1]
    frames = mod("repose_core.pose").from_pose_keypoint([{"people": [{"pose_keypoints_2d": walk}],
                                                          "canvas_width": 44, "canvas_height": 64}])
    pose = ops.render_target_poses(frames, 64, 44, model.config.pose_encoding)
    source = torch.rand(1, 3, 64, 44) * 2 - 1
    alignment = ops.align(model, source, pose)
    cond = rnodes.RePoseCond(alignment, model.codec, (64, 44), "bench")
    return model, diffusion, loaded, cond


def comfy_model_for(model, diffusion, alignment):
    """The same network as a ComfyUI BaseModel (ModelSamplingDiscrete with our β) for comfy.sample.sample."""
    import torch

    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models_base

    settings = mod("repose_core.diffusion").model_sampling_dict(diffusion)["sampling_settings"]
    batch_conditions = mod("repose_core.diffusion").batch_conditions

    class Config(comfy.supported_models_base.BASE):
        latent_format = comfy.latent_formats.LatentFormat
        sampling_settings = settings

    config = Config({"disable_unet_model_creation": True})
    config.latent_format.latent_channels = model.config.diffusion_channels
    channels = model.config.diffusion_channels

    class Adapter(torch.nn.Module):
        """ComfyUI calls diffusion_model(x, t, context=..., transformer_options=...) with cond/uncond chunks."""

        def __init__(self):
            super().__init__()
            self.net = model
            self.dtype = next(model.parameters()).dtype

        def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
            chunks = (transformer_options or {}).get("cond_or_uncond", [0])
            per = x.shape[0] // len(chunks)
            conds = [alignment.cond if c == 0 else alignment.null_cond for c in chunks]
            cond = batch_conditions(conds, per)
            pose = alignment.pose_map.expand(per, *alignment.pose_map.shape[1:]).repeat(len(chunks), 1, 1, 1)
            return self.net(x, timesteps.long(), pose, cond)[:, :channels]

    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS)
    base.diffusion_model = Adapter()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy", default=os.environ.get("REPOSE_COMFY"), help="ComfyUI source tree")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--samplers", default="euler,dpmpp_2m")
    parser.add_argument("--scheduler", default="karras")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ksampler.json"))
    args = parser.parse_args(argv)
    if not args.comfy:
        parser.error("set REPOSE_COMFY or --comfy to a ComfyUI 0.3.75 source tree (scripts/bootstrap.sh builds one)")
    import_comfy(args.comfy)
    import torch

    import comfy.sample

    torch.set_num_threads(args.threads)
    import_pack()
    rnodes = mod("nodes.repose_nodes")
    model, diffusion, loaded, cond = build()
    comfy_patcher = comfy_model_for(model, diffusion, cond.alignment)
    positive = [[torch.zeros(1, 1, 1), {}]]
    latent = torch.zeros_like(cond.alignment.source_z)
    cases = []
    for sampler in args.samplers.split(","):
        def ours():
            return rnodes.repose_sample(loaded, cond, 7, args.steps, args.cfg, sampler, args.scheduler,
                                        disable_pbar=True)[0]["samples"]

        def theirs():
            noise = comfy.sample.prepare_noise(latent, 7)
            return comfy.sample.sample(comfy_patcher, noise, args.steps, args.cfg, sampler, args.scheduler, positive,
                                       positive, latent, denoise=1.0, disable_pbar=True, seed=7)

        with torch.inference_mode():
            a, b = ours(), theirs()  # warm-up, and the agreement check
            times = {"repose_ksampler": [], "comfy_ksampler": []}
            for _ in range(args.repeats):  # interleaved so that load changes hit both alike
                for key, fn in (("repose_ksampler", ours), ("comfy_ksampler", theirs)):
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        case = {"sampler": sampler, "scheduler": args.scheduler, "steps": args.steps, "cfg": args.cfg,
                "median_s": med, "ratio": med["repose_ksampler"] / med["comfy_ksampler"],
                "max_abs_diff": float((a - b).abs().max()), "sample_abs_max": float(b.abs().max())}
        cases.append(case)
        print(f"{sampler:>10} {args.scheduler}: RePoseKSampler {med['repose_ksampler'] * 1e3:8.1f} ms  "
              f"KSampler {med['comfy_ksampler'] * 1e3:8.1f} ms  ratio {case['ratio']:.3f}  "
              f"max |diff| {case['max_abs_diff']:.2e}")
    result = {"machine": platform.platform(), "torch": torch.__version__, "threads": args.threads,
              "model": "tiny b2 (64x44 px, unshuffle2)", "goal_ratio": 1.05, "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
