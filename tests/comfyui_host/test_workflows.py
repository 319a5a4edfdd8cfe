"""The example workflows (workflows/ui, workflows/api, example_workflows) in a real ComfyUI.

- The committed files are exactly what workflows/build.py generates (UI and API twins in sync by construction).
- Every API workflow runs to `success` via POST /prompt with tiny random-weight models written under the names the
  workflows use, and writes images of the expected size (steps and SD image sizes are reduced for speed).
- Every UI workflow is valid against /object_info: node types, link types, widget counts, combo values, ranges.
- The pose-guidance MODEL patch really changes ComfyUI's KSampler result under inference mode.

The SD workflows need an SD checkpoint ComfyUI recognises; a tiny one is only recognised with a registered model
config, so this module runs its own server with the test-only pack of repose_tiny_models.TINY_SD_PACK.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import repose_tiny_models as tiny
from comfy_harness import ComfyServer, execution_error

REPO = Path(__file__).resolve().parents[2]
SOURCE_SIZE = (44, 64)     # (W, H) of the tiny RePoseDM preset
SD_SIZE = 64               # SD workflows are run at 64x64 (8x8 latents)
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def load_build():
    spec = importlib.util.spec_from_file_location("repose_workflows_build", REPO / "workflows" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


BUILD = load_build()
NAMES = [g.name for g in BUILD.GRAPHS]
TITLES = [g.title for g in BUILD.GRAPHS]
FRONTEND_ONLY = ("Note",)


def test_committed_workflows_equal_generator_output():
    stale = [str(rel) for rel, text in BUILD.outputs().items()
             if not (REPO / rel).is_file() or (REPO / rel).read_text() != text]
    assert not stale, f"run `python workflows/build.py`; stale: {stale}"
    assert sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json")) == sorted(NAMES)
    assert sorted(p.stem for p in (REPO / "example_workflows").glob("*.json")) == sorted(TITLES)
    missing = [t for t in TITLES if not (REPO / "example_workflows" / f"{t}.jpg").is_file()]
    assert not missing, f"no thumbnail (run scripts/make_thumbnails.py): {missing}"


def test_ui_and_api_twins_describe_the_same_graph():
    for name in NAMES:
        ui = json.loads((REPO / "workflows" / "ui" / f"{name}.json").read_text())
        api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        assert {str(n["id"]): n["type"] for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY} == \
            {k: v["class_type"] for k, v in api.items()}, name
        ui_links = {(str(dst), src, slot) for _, src, slot, dst, _, _ in ui["links"]}
        api_links = {(k, int(v[0]), v[1]) for k, node in api.items() for v in node["inputs"].values()
                     if isinstance(v, list)}
        assert {(d, str(s), o) for d, s, o in ui_links} == {(d, str(s), o) for d, s, o in api_links}, name


# ----------------------------------------------------------------------------------------------------------------
# A server that knows the tiny SD config, with every file the workflows name


@pytest.fixture(scope="module")
def wf_server(comfy_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("comfyui_workflows")
    server = ComfyServer(comfy_dir, REPO, work)
    pack_init = tiny.write_tiny_sd_pack(server.custom_nodes_dir)
    ckpt_dir = server.base / "models" / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in ("repose", "pose_estimators"):
        server.model_dir(name).mkdir(parents=True, exist_ok=True)
    sd_ckpt = ckpt_dir / "v1-5-pruned-emaonly-fp16.safetensors"
    tiny.write_tiny_sd_files(comfy_dir, pack_init, sd_ckpt, server.model_dir("repose") / "humansd-v1.ckpt",
                             python=sys.executable)
    shutil.copy(sd_ckpt, ckpt_dir / "v2-1_512-ema-pruned.safetensors")
    tiny.write_tiny_repose_model(server.model_dir("repose") / BUILD.DEFAULT_MODEL)
    tiny.write_tiny_estimator(server.model_dir("pose_estimators") / BUILD.DEFAULT_ESTIMATOR)
    # The SD guidance workflow names HigherHRNet-W32 (mmpose .pth): listed for the UI check, replaced by the tiny
    # estimator when the API prompt runs (FAST).
    (server.model_dir("pose_estimators") / BUILD.HIGHERHRNET[0]).write_bytes(b"placeholder")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Speed-ups applied to the API prompts (structure and every other value as committed).
FAST = {
    "RePoseKSampler": {"steps": 2},
    "KSampler": {"steps": 2},
    "EmptyLatentImage": {"width": SD_SIZE, "height": SD_SIZE},
    "RePoseRenderPose": {"width": SD_SIZE, "height": SD_SIZE},
    "PoseGradientGuidance": {"estimator_size": 64, "every": 1, "end": 1.0},
    "RePosePoseFromImage": {"threshold": 0.0},   # a random estimator's heatmap peaks are small
    "RePoseLoadPoseEstimator": {"ckpt_name": BUILD.DEFAULT_ESTIMATOR},
}


def fast_prompt(name: str) -> dict:
    prompt = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    for node in prompt.values():
        for key, value in FAST.get(node["class_type"], {}).items():
            if key in node["inputs"] and not (node["class_type"] == "RePoseRenderPose"
                                              and node["inputs"].get("width") == 0):
                node["inputs"][key] = value
    return prompt


def source_of(prompt: dict, node_id: str, input_name: str) -> tuple[dict, int]:
    src, slot = prompt[node_id]["inputs"][input_name]
    return prompt[src], slot


def saved_sizes(server, entry, prompt) -> dict:
    sizes = {}
    for node_id, node in prompt.items():
        if node["class_type"] == "SaveImage":
            sizes[node_id] = [Image.open(p).size for p in server.output_images(entry, node_id)]
    return sizes


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_to_success(wf_server, name):
    prompt = fast_prompt(name)
    entry = wf_server.run_prompt(prompt, timeout=600)
    sizes = saved_sizes(wf_server, entry, prompt)
    assert sizes, f"{name}: no SaveImage output"
    expected = (SD_SIZE, SD_SIZE) if "sd" in name.split("_") else SOURCE_SIZE
    for node_id, node_sizes in sizes.items():
        assert node_sizes == [expected], f"{name}: node {node_id} saved {node_sizes}, expected {[expected]}"
    if name == "repose_pose_transfer":  # the Fig. 9 warps: one image per RPA iteration of the tiny preset (3)
        warps = [n for n, v in prompt.items() if v["_meta"]["title"].startswith("RPA warps")][0]
        assert len(wf_server.output_images(entry, warps)) == 3
    if name == "repose_appearance_edit":  # outside the (torso) mask the reference is kept
        save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
        (out,) = wf_server.output_images(entry, save)
        result = np.asarray(Image.open(out).convert("RGB"), dtype=float)
        sampler = prompt[save]["inputs"]["images"][0]
        example, _ = source_of(prompt, sampler, "reference")
        k = example["inputs"]["example"].split(":")[0]
        folder = REPO / "repose_core" / "synthetic" / "examples" / example["inputs"]["size"]
        ref = np.asarray(Image.open(folder / f"target_{k}.png").convert("RGB"), dtype=float)
        h = SOURCE_SIZE[1]
        assert np.abs(result[h - 6:] - ref[h - 6:]).mean() < 2.0           # feet: outside the torso box
        assert np.abs(result[h // 4: h // 2] - ref[h // 4: h // 2]).mean() > 5.0   # torso: regenerated


# ----------------------------------------------------------------------------------------------------------------
# UI workflows against /object_info


def input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(n, info["input"][s][n]) for s in ("required", "optional") for n in order.get(s, [])]


def spec_kind(spec) -> tuple[str, list | None]:
    if isinstance(spec[0], list):
        return "COMBO", spec[0]
    if spec[0] == "COMBO":
        return "COMBO", spec[1].get("options", [])
    return spec[0], None


def ui_problems(ui: dict, object_info: dict) -> list[str]:
    problems = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, ltype in ui["links"]:
        s, d = nodes[src], nodes[dst]
        out_type = object_info[s["type"]]["output"][src_slot]
        in_name = d["inputs"][dst_slot]["name"]
        in_spec = dict(input_specs(object_info[d["type"]])).get(in_name)
        if in_spec is None:
            problems.append(f"link {link_id}: {d['type']} has no input {in_name!r}")
            continue
        if not (out_type == ltype == spec_kind(in_spec)[0]):
            problems.append(f"link {link_id}: {s['type']}[{src_slot}] {out_type} -> {d['type']}.{in_name} "
                            f"{spec_kind(in_spec)[0]} (link says {ltype})")
        if d["inputs"][dst_slot].get("link") != link_id or link_id not in s["outputs"][src_slot]["links"]:
            problems.append(f"link {link_id} is not referenced by both of its nodes")
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"node {node['id']}: unknown type {node['type']}")
            continue
        values = list(node.get("widgets_values", []))
        for name, spec in input_specs(info):
            kind, options = spec_kind(spec)
            if kind not in WIDGETS:
                continue
            if not values:
                problems.append(f"node {node['id']} {node['type']}: no value for widget {name!r}")
                break
            value = values.pop(0)
            opts = spec[1] if len(spec) > 1 else {}
            if kind == "COMBO" and value not in options:
                problems.append(f"node {node['id']} {node['type']}.{name}: {value!r} not in {options[:8]}")
            if kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"node {node['id']} {node['type']}.{name}: {value!r} is not a number")
                elif not opts.get("min", -np.inf) <= value <= opts.get("max", np.inf):
                    problems.append(f"node {node['id']} {node['type']}.{name}: {value} outside "
                                    f"[{opts.get('min')}, {opts.get('max')}]")
                if kind == "INT" and not float(value).is_integer():
                    problems.append(f"node {node['id']} {node['type']}.{name}: {value} is not an integer")
            if kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"node {node['id']} {node['type']}.{name}: {value!r} is not a boolean")
            if kind == "STRING" and not isinstance(value, str):
                problems.append(f"node {node['id']} {node['type']}.{name}: {value!r} is not a string")
            if opts.get("control_after_generate"):
                extra = values.pop(0) if values else None
                if extra not in ("fixed", "increment", "decrement", "randomize"):
                    problems.append(f"node {node['id']} {node['type']}.{name}: bad control value {extra!r}")
            if opts.get("image_upload"):
                values.pop(0) if values else problems.append(f"node {node['id']}: missing upload widget value")
        if values:
            problems.append(f"node {node['id']} {node['type']}: {len(values)} widget values too many: {values}")
        sockets = [n for n, spec in input_specs(info) if spec_kind(spec)[0] not in WIDGETS]
        listed = [i["name"] for i in node["inputs"]]
        if listed != sockets:
            problems.append(f"node {node['id']} {node['type']}: inputs {listed} != sockets {sockets}")
        required = info["input"].get("required", {})
        for i in node["inputs"]:
            if i["name"] in required and i.get("link") is None:
                problems.append(f"node {node['id']} {node['type']}: required input {i['name']!r} not linked")
    return problems


def test_ui_workflows_are_valid_for_the_server(wf_server):
    object_info = wf_server.object_info()
    problems = {}
    for name in NAMES:
        ui = json.loads((REPO / "workflows" / "ui" / f"{name}.json").read_text())
        found = ui_problems(ui, object_info)
        if found:
            problems[name] = found
    assert not problems, json.dumps(problems, indent=1)


def test_ui_check_catches_broken_workflows(wf_server):
    """The validator above must be able to fail."""
    object_info = wf_server.object_info()
    ui = json.loads((REPO / "workflows" / "ui" / "sd_pose_gradient_guidance.json").read_text())
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    ksampler["widgets_values"][4] = "no_such_sampler"
    ksampler["widgets_values"][2] = 0                      # steps below min
    ui["links"][0][5] = "IMAGE"
    found = "\n".join(ui_problems(ui, object_info))
    assert "no_such_sampler" in found and "outside" in found and "link says IMAGE" in found


def test_workflows_are_listed_as_templates(wf_server):
    templates = wf_server.get_json("/workflow_templates")
    assert sorted(templates.get("comfyui-repose", [])) == sorted(TITLES)
    ui = wf_server.get_json(f"/api/workflow_templates/comfyui-repose/{TITLES[0]}.json")
    assert ui == json.loads((REPO / "example_workflows" / f"{TITLES[0]}.json").read_text())
    thumb = requests.get(wf_server.url(f"/api/workflow_templates/comfyui-repose/{TITLES[0]}.jpg"), timeout=30)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


# ----------------------------------------------------------------------------------------------------------------
# Pose guidance as a MODEL patch in ComfyUI's own KSampler


def guided_sd_prompt(scale: float, seed: int = 3) -> dict:
    prompt = fast_prompt("sd_pose_gradient_guidance")
    guidance = next(k for k, v in prompt.items() if v["class_type"] == "PoseGradientGuidance")
    prompt[guidance]["inputs"]["scale"] = scale
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")
    prompt[sampler]["inputs"]["seed"] = seed
    return prompt


def test_guidance_patch_changes_comfy_ksampler_result(wf_server):
    """Unpatched KSampler == patched with scale 0 (the patch is inert when off) != patched with scale > 0.
    Compared on the sampled latents (SaveLatent): the random tiny VAE saturates most pixels."""
    from safetensors.torch import load_file

    def run(prompt, tag):
        prompt["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0],
                                                               "filename_prefix": f"guidance_check/{tag}"}}
        entry = wf_server.run_prompt(prompt, timeout=600)
        (info,) = entry["outputs"]["20"]["latents"]
        return load_file(str(wf_server.output_dir / info["subfolder"] / info["filename"]))["latent_tensor"]

    plain = guided_sd_prompt(0.0)
    plain["8"]["inputs"]["model"] = ["1", 0]            # KSampler straight from the checkpoint
    unpatched = run(plain, "unpatched")
    off = run(guided_sd_prompt(0.0), "scale0")
    on = run(guided_sd_prompt(1000.0), "scale1000")
    assert (off == unpatched).all() and on.isfinite().all()
    change = float((on - unpatched).abs().mean() / unpatched.abs().mean())
    assert change > 1e-3, f"pose guidance did not change ComfyUI's KSampler result (relative change {change:.2e})"


def test_repose_sd_loader_rejects_a_standard_sd_unet(wf_server):
    # A 4-channel SD checkpoint given to the RePoseSD loader: a node error that says what to use instead.
    shutil.copy(wf_server.base / "models" / "checkpoints" / "v2-1_512-ema-pruned.safetensors",
                wf_server.model_dir("repose") / "plain_sd.safetensors")
    prompt = fast_prompt("repose_sd_text_and_pose")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "RePoseSDLoadUNet")
    prompt[loader]["inputs"]["unet_name"] = "plain_sd.safetensors"
    entry = wf_server.run_prompt(prompt, timeout=300, expect="error")
    err = execution_error(entry)
    assert err["node_type"] == "RePoseSDLoadUNet" and err["exception_type"] == "repose.RePoseNodeError"
    assert "takes 4 input channels" in err["exception_message"] and "Load Checkpoint" in err["exception_message"]
    assert wf_server.get_json("/system_stats")["system"]
