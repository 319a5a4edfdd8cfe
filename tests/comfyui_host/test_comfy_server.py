"""End to end in a real ComfyUI server: the pack loads, its nodes are documented, and prompts run."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from comfy_harness import PACK_DIR_NAME, execution_error, import_pack_like_comfyui


POSE = [{"people": [{"pose_keypoints_2d": [
    32, 26, 1, 32, 38, 1, 26, 38, 1, 22, 58, 1, 19, 77, 1, 38, 38, 1, 42, 58, 1, 45, 77, 1, 29, 77, 1, 29, 102, 1,
    29, 122, 1, 35, 77, 1, 35, 102, 1, 35, 122, 1, 31, 23, 1, 33, 23, 1, 29, 26, 1, 35, 26, 1]}],
    "canvas_width": 64, "canvas_height": 128}]


def test_pack_loads_without_import_errors(comfy):
    log = comfy.log_text()
    assert "Import times for custom nodes" in log, comfy.log_tail()
    pack_lines = [line for line in log.splitlines() if PACK_DIR_NAME in line]
    assert any(re.search(r"seconds: .*" + re.escape(PACK_DIR_NAME), line) for line in pack_lines), comfy.log_tail()
    bad = [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, "\n".join(bad) + "\n" + comfy.log_tail()
    failed_modules = [line for line in log.splitlines() if "RePose: node module" in line]
    assert not failed_modules, "\n".join(failed_modules)
    assert {"RePoseLoadPoseJSON", "RePoseRenderPose"} <= set(comfy.pack_nodes())


def test_every_pack_node_is_listed_and_documented(comfy, repo_root):
    pack_nodes = comfy.pack_nodes()
    # The server registered exactly what the pack exports (imported here the way ComfyUI does; node modules that
    # need ComfyUI at import time cannot load in this process, so compare only those that did).
    local = import_pack_like_comfyui(repo_root, f"{repo_root}_x_objinfo".replace(".", "_x_"))
    assert set(local.NODE_CLASS_MAPPINGS) - set(local.nodes.IMPORT_FAILURES) <= set(pack_nodes)
    problems = []
    for key, info in sorted(pack_nodes.items()):
        if not info.get("description", "").strip():
            problems.append(f"{key}: no DESCRIPTION")
        if not info.get("category", "").startswith("RePose"):
            problems.append(f"{key}: category {info.get('category')!r} is not under 'RePose'")
        if info.get("display_name", key) == key:
            problems.append(f"{key}: no display name")
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(opts.get("tooltip", "")).strip():
                    problems.append(f"{key}: input '{name}' has no tooltip")
    assert not problems, "\n".join(problems)


def test_pack_model_folders_are_registered_with_extension_filter(comfy):
    folder = comfy.model_dir("repose")
    (folder / "tiny.safetensors").write_bytes(b"x")
    (folder / "readme.txt").write_text("not a model")
    files = comfy.get_json("/models/repose")
    assert "tiny.safetensors" in files and "readme.txt" not in files
    assert isinstance(comfy.get_json("/models/pose_estimators"), list)


def render_prompt(pose_json: str, width: int, height: int) -> dict:
    prompt = {"1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": pose_json}}}
    for i, style in enumerate(("openpose", "humansd", "pidm_rgb")):
        prompt[str(10 + i)] = {"class_type": "RePoseRenderPose",
                               "inputs": {"pose_keypoint": ["1", 0], "style": style, "width": width, "height": height}}
        prompt[str(20 + i)] = {"class_type": "SaveImage",
                               "inputs": {"images": [str(10 + i), 0], "filename_prefix": f"repose_test/{style}"}}
    return prompt


def test_render_pose_prompt_writes_images_of_requested_size(comfy, repo_root):
    entry = comfy.run_prompt(render_prompt(json.dumps(POSE), 96, 160), timeout=180)
    local = import_pack_like_comfyui(repo_root, f"{repo_root}_x_render".replace(".", "_x_"))
    for i, style in enumerate(("openpose", "humansd", "pidm_rgb")):
        (path,) = comfy.output_images(entry, str(20 + i))
        saved = np.asarray(Image.open(path).convert("RGB"))
        assert saved.shape == (160, 96, 3), style
        assert (saved.sum(-1) > 0).mean() > 0.05, f"{style}: almost empty image"
        # the server's pixels are exactly the core renderer's (no layout/range slip between IMAGE and core)
        expected = local.nodes.pose_nodes.render_pose_keypoint(
            local.nodes.pose_nodes.load_pose_keypoint(json.dumps(POSE)), style, 96, 160)[0]
        np.testing.assert_array_equal(saved, np.clip(expected * 255.0, 0, 255).astype(np.uint8), err_msg=style)
    # the same file through the HTTP API
    info = entry["outputs"]["20"]["images"][0]
    png = comfy.view(info["filename"], info["subfolder"], info["type"])
    assert Image.open(io.BytesIO(png)).size == (96, 160)


def test_pose_file_from_input_folder_and_preview(comfy):
    (comfy.input_dir / "poses").mkdir(exist_ok=True)
    (comfy.input_dir / "poses" / "walk.json").write_text(json.dumps(POSE))
    prompt = {
        "1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": "poses/walk.json"}},
        "2": {"class_type": "RePoseRenderPose",
              "inputs": {"pose_keypoint": ["1", 0], "style": "openpose", "width": 0, "height": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    entry = comfy.run_prompt(prompt, timeout=180)
    (path,) = comfy.output_images(entry, "3")
    assert Image.open(path).size == (64, 128)                 # width/height 0 = the pose canvas


@pytest.mark.parametrize("pose_json, words", [
    ("{not json", "malformed JSON"),
    ("../escape.json", "outside ComfyUI's input directory"),
])
def test_bad_pose_input_reports_a_clean_error_on_the_node(comfy, pose_json, words):
    prompt = render_prompt(pose_json, 64, 64)
    entry = comfy.run_prompt(prompt, timeout=180, expect="error")
    err = execution_error(entry)
    assert err is not None, entry["status"]
    assert err["node_type"] == "RePoseLoadPoseJSON"
    assert err["exception_type"] == "repose.RePoseNodeError"
    assert words in err["exception_message"]


def test_prompt_validation_errors_are_reported(comfy):
    prompt = render_prompt(json.dumps(POSE), 64, 64)
    prompt["10"]["inputs"]["style"] = "watercolour"
    with pytest.raises(AssertionError, match="value_not_in_list"):
        comfy.post_prompt(prompt)


def test_interrupt_while_idle_does_not_poison_the_next_prompt(comfy):
    comfy.interrupt()
    comfy.interrupt(prompt_id="not-running")
    assert "Global interrupt" in comfy.log_text() and "Prompt not-running is not currently running" in comfy.log_text()
    comfy.run_prompt(render_prompt(json.dumps(POSE), 48, 48), timeout=180)
