"""Memory at the largest inputs each node accepts (issue 11): peak RSS of a fresh process doing one node's work at its
bound, and that the next size up is refused before allocating. CPU, 1 thread; writes bench/results/input_bounds.json.

    python bench/bench_input_bounds.py
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WALK = [22, 10, 1, 22, 16, 1, 16, 16, 1, 14, 26, 1, 12, 36, 1, 28, 16, 1, 30, 26, 1, 32, 36, 1, 18, 34, 1, 18, 46, 1,
        18, 58, 1, 26, 34, 1, 27, 46, 1, 28, 58, 1, 21, 9, 1, 23, 9, 1, 20, 10, 1, 24, 10, 1]

CASES = {
    # name: python code run in a fresh process (repose_core importable); prints nothing, raises on failure
    "baseline (imports only)": "import torch, repose_core.pose, repose_core.models.repose",
    "Render Pose openpose 4096x4096": "render('openpose', 4096, 4096)",
    "Render Pose humansd 4096x4096": "render('humansd', 4096, 4096)",
    "Render Pose pidm_rgb 4096x4096": "render('pidm_rgb', 4096, 4096)",
    "PIDM 20-channel map 2048x2048 (pidm20 models' pose input)": "render_pidm_pose_map(frame(), 2048, 2048)",
    "PIDM 20-channel map 2049x2048 (refused)": "expect_refused(lambda: render_pidm_pose_map(frame(), 2049, 2048))",
    "Render Pose 8192x8192 (refused)": "expect_refused(lambda: render('pidm_rgb', 8192, 8192))",
    "RecurrentPoseAlign, shipped tiny model, source 4x canvas (128x88)": "align_at(128, 88)",
    "RecurrentPoseAlign, source 4096x4096 (refused)": "expect_refused(lambda: check_source_size(4096, 4096, 1, "
                                                       "(64, 44)))",
    "LoadRePoseModel, tampered config model_channels 8192 (refused)": "tampered()",
}

PRELUDE = f'''
import torch, json, numpy as np
torch.set_num_threads(1)
from repose_core.pose import from_pose_keypoint, render_pidm_pose_map
from repose_core.errors import ReposeError
WALK = {WALK}
def frame():
    return from_pose_keypoint([{{"people": [{{"pose_keypoints_2d": WALK}}], "canvas_width": 44,
                                "canvas_height": 64}}])[0]
def render(style, w, h):
    from pack.nodes.pose_nodes import render_pose_keypoint
    from pack.nodes.utils import numpy_to_comfy_image
    pk = [{{"people": [{{"pose_keypoints_2d": WALK}}], "canvas_width": 44, "canvas_height": 64}}]
    return numpy_to_comfy_image(render_pose_keypoint(pk, style, w, h))
def expect_refused(fn):
    try:
        fn()
    except Exception as e:  # repose_core's or the pack's copy of ReposeError
        if "ReposeError" in [c.__name__ for c in type(e).__mro__]:
            return
        raise
    raise SystemExit("not refused")
def check_source_size(*a):
    from pack.nodes.repose_nodes import check_source_size as c
    c(*a)
def align_at(h, w):
    from repose_core.checkpoint import load_model
    from repose_core.models.repose import as_repose_model
    from repose_core.transfer_ops import align, render_target_poses
    model = as_repose_model(load_model("repose_core/weights/repose_default_full.safetensors")).eval()
    pose = render_target_poses([frame()], h, w, model.config.pose_encoding)
    align(model, torch.rand(1, 3, h, w) * 2 - 1, pose)
def tampered():
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from repose_core.checkpoint import load_model
    src = "repose_core/weights/repose_default_full.safetensors"
    meta = dict(safe_open(src, "pt").metadata())
    cfg = json.loads(meta["config"]); cfg["unet"]["model_channels"] = 8192; meta["config"] = json.dumps(cfg)
    import tempfile, os
    path = os.path.join(tempfile.mkdtemp(), "evil.safetensors")
    save_file(load_file(src), path, metadata=meta)
    expect_refused(lambda: load_model(path))
'''


# The pack imports as a package (relative imports): the child imports it as `pack` from its folder, the way
# ComfyUI imports a custom node; cwd = the checkout puts repose_core on the child's path (python -c).
IMPORT_PACK = ("import importlib.util, sys\n"
               "spec = importlib.util.spec_from_file_location('pack', 'pack_init', submodule_search_locations=['.'])\n"
               "sys.modules['pack'] = pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)\n")


def measure(code: str) -> dict:
    script = ("import resource\n" + IMPORT_PACK.replace("'pack_init'", repr(str(ROOT / "__init__.py")))
              + PRELUDE + code + "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
    return {"ok": True, "peak_rss_mib": round(int(proc.stdout.strip().splitlines()[-1]) / 1024, 1)}


def main() -> int:
    results = {}
    for name, code in CASES.items():
        results[name] = measure(code)
        print(f"{name:70s} {results[name]}", flush=True)
    out = ROOT / "bench" / "results" / "input_bounds.json"
    out.write_text(json.dumps({"command": "python bench/bench_input_bounds.py", "threads": 1,
                               "machine": platform.machine(), "load": os.getloadavg(),
                               "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
