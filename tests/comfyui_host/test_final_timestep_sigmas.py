"""RePoseKSampler's σ schedule with RePoseConfig.final_timestep: `steps` steps above the final σ, then the final σ,
then 0, for ComfyUI's schedulers and for samplers that drop the penultimate σ. Runs in ComfyUI's python."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    comfy_dir, repo_root = sys.argv[1:3]
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path[:0] = [comfy_dir, repo_root, repo_root + "/tests/comfyui_host"]
    import comfy.options
    comfy.options.enable_args_parsing()
    from importlib import import_module
    import torch
    from comfy_harness import import_pack_like_comfyui
    from repose_core.diffusion import GaussianDiffusion, linear_betas

    import_pack_like_comfyui(repo_root, "repose_pack_under_test")
    rt = import_module("repose_pack_under_test.nodes.comfy_runtime")
    ms = rt.model_sampling_for(GaussianDiffusion(linear_betas(1000)))
    final = float(ms.sigmas[400])
    for scheduler in ("karras", "normal", "simple", "exponential"):
        for sampler in ("euler", "euler_ancestral", "dpm_2"):
            for steps in (1, 8, 20):
                s = rt.ksampler_sigmas(ms, sampler, scheduler, steps, 1.0, final_timestep=400)
                assert len(s) == steps + 1, (scheduler, sampler, steps, s)
                assert float(s[-1]) == 0.0 and abs(float(s[-2]) - final) < 1e-6 * final, (scheduler, s)
                assert bool((s[:-2] > final).all()) and bool((s[:-1][1:] < s[:-1][:-1]).all()), (scheduler, s)
            full = rt.ksampler_sigmas(ms, "euler", scheduler, 8, 1.0)
            assert float(full[-2]) < final  # without it, the schedule goes on below the final σ
    print("ok")
''')


def test_final_timestep_cuts_the_schedule_at_its_sigma(comfy_dir, repo_root):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(comfy_dir), str(repo_root)], cwd=str(comfy_dir),
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "ok" in r.stdout, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
