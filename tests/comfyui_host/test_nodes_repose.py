"""RePoseDM nodes in the real ComfyUI server (session fixture `comfy`): pose transfer, guidance under ComfyUI's
inference mode, the pose tools, user errors shown on the node, and interrupting sampling.

Models are tiny random-weight files written into the server's model folders (tests/comfyui_host/repose_tiny_models.py)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

import repose_tiny_models as tiny
from comfy_harness import ProgressWatcher, execution_error

W, H = 44, 64  # the tiny preset's image size
MODEL = "test_tiny_full.safetensors"
MODEL_B1 = "test_tiny_b1.safetensors"
ESTIMATOR = "test_tiny_estimator.safetensors"

WALK = [22, 10, 1, 22, 16, 1, 16, 16, 1, 14, 26, 1, 12, 36, 1, 28, 16, 1, 30, 26, 1, 32, 36, 1, 18, 34, 1, 18, 46, 1,
        18, 58, 1, 26, 34, 1, 27, 46, 1, 28, 58, 1, 21, 9, 1, 23, 9, 1, 20, 10, 1, 24, 10, 1]


def pose_json(frames=1, people=1, width=W, height=H) -> str:
    return json.dumps([{"people": [{"pose_keypoints_2d": WALK} for _ in range(people)], "canvas_width": width,
                        "canvas_height": height} for _ in range(frames)])


@pytest.fixture
def models(comfy):
    """The shared server with this module's model files and images (written once per server)."""
    files = {
        comfy.model_dir("repose") / MODEL: lambda p: tiny.write_tiny_repose_model(p, "full"),
        comfy.model_dir("repose") / MODEL_B1: lambda p: tiny.write_tiny_repose_model(p, "b1"),
        comfy.model_dir("pose_estimators") / ESTIMATOR: tiny.write_tiny_estimator,
        comfy.input_dir / "test_source.png": lambda p: tiny.write_image(p, W, H, seed=5),
        comfy.input_dir / "test_source_odd.png": lambda p: tiny.write_image(p, W + 1, H, seed=6),
    }
    for path, write in files.items():
        if not path.exists():
            write(path)
    return comfy


def transfer_prompt(model=MODEL, source="test_source.png", pose=None, steps=2, seed=0, guidance_scale=None,
                    iterations=0, sampler="euler", scheduler="karras") -> dict:
    prompt = {
        "1": {"class_type": "LoadRePoseModel", "inputs": {"ckpt_name": model, "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": source}},
        "3": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": pose or pose_json()}},
        "4": {"class_type": "RecurrentPoseAlign", "inputs": {"repose_model": ["1", 0], "source": ["2", 0],
                                                             "iterations": iterations, "target_pose": ["3", 0]}},
        "5": {"class_type": "RePoseKSampler", "inputs": {
            "repose_model": ["1", 0], "repose_cond": ["4", 0], "seed": seed, "steps": steps, "cfg": 2.0,
            "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "repose_nodes/out"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
    }
    if guidance_scale is not None:
        prompt["9"] = {"class_type": "RePoseLoadPoseEstimator", "inputs": {"ckpt_name": ESTIMATOR, "dtype": "fp32"}}
        prompt["10"] = {"class_type": "PoseGradientGuidance", "inputs": {
            "pose_estimator": ["9", 0], "target_pose": ["3", 0], "scale": guidance_scale, "start": 0.0, "end": 1.0,
            "energy": "keypoint", "every": 1, "estimator_size": 64}}
        prompt["5"]["inputs"]["guidance"] = ["10", 0]
    return prompt


def images(server, entry, node):
    return [np.asarray(Image.open(p).convert("RGB"), dtype=float) for p in server.output_images(entry, node)]


def test_pose_transfer_outputs_result_warps_and_flow(models):
    entry = models.run_prompt(transfer_prompt(iterations=2), timeout=600)
    (out,) = images(models, entry, "6")
    warps = images(models, entry, "7")
    (flow,) = images(models, entry, "8")
    assert out.shape == (H, W, 3) and flow.shape == (H, W, 3)
    assert len(warps) == 2 and all(w.shape == (H, W, 3) for w in warps)   # iterations=2 -> 2 warped sources
    assert out.std() > 1.0                                                # not a constant image


def test_b1_model_has_no_alignment(models):
    entry = models.run_prompt(transfer_prompt(model=MODEL_B1), timeout=600)
    (warp,) = images(models, entry, "7")
    source = np.asarray(Image.open(models.input_dir / "test_source.png").convert("RGB"), dtype=float)
    assert np.abs(warp - source).max() <= 1.0                              # b1 "warp" = the source itself
    (flow,) = images(models, entry, "8")
    assert flow.min() == 255.0                                            # zero flow is white


@pytest.mark.parametrize("sampler, scheduler", [("dpmpp_2m", "normal"), ("uni_pc", "simple"), ("ddim", "ddim_uniform")])
def test_comfy_samplers_drive_the_repose_model(models, sampler, scheduler):
    entry = models.run_prompt(transfer_prompt(sampler=sampler, scheduler=scheduler, seed=7), timeout=600)
    (out,) = images(models, entry, "6")
    assert out.shape == (H, W, 3) and np.isfinite(out).all()


def test_pose_guidance_changes_the_result_under_inference_mode(models):
    unguided = images(models, models.run_prompt(transfer_prompt(seed=11), timeout=600), "6")[0]
    off = images(models, models.run_prompt(transfer_prompt(seed=11, guidance_scale=0.0), timeout=600), "6")[0]
    guided = images(models, models.run_prompt(transfer_prompt(seed=11, guidance_scale=20.0), timeout=900), "6")[0]
    np.testing.assert_array_equal(off, unguided)                            # scale 0: exactly unguided
    assert np.abs(guided - unguided).mean() > 0.5                          # gradients really flowed


# ----------------------------------------------------------------------------------------------------------------
# Errors a user can act on, shown on the node


def assert_node_error(server, prompt, node_type, *words):
    entry = server.run_prompt(prompt, timeout=300, expect="error")
    err = execution_error(entry)
    assert err is not None, entry["status"]
    assert err["node_type"] == node_type, err
    assert err["exception_type"] == "repose.RePoseNodeError", err
    for w in words:
        assert w in err["exception_message"], err["exception_message"]
    assert requests.get(server.url("/system_stats"), timeout=30).status_code == 200   # the server stays up


def test_error_source_pose_batch_mismatch(models):
    prompt = transfer_prompt(pose=pose_json(frames=3))
    prompt["11"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
    prompt["4"]["inputs"]["source"] = ["11", 0]
    assert_node_error(models, prompt, "RecurrentPoseAlign", "batch mismatch", "2 images", "3")


def test_error_no_person_in_the_pose(models):
    prompt = transfer_prompt(pose=json.dumps([{"people": [], "canvas_width": W, "canvas_height": H}]))
    assert_node_error(models, prompt, "RecurrentPoseAlign", "EmptyPoseError", "no person")


def test_error_image_size_not_supported(models):
    prompt = transfer_prompt(source="test_source_odd.png")
    assert_node_error(models, prompt, "RecurrentPoseAlign", f"{H}x{W + 1}", "not divisible by 2", f"{H}x{W}")


def test_error_wrong_checkpoint_kind(models):
    (models.model_dir("repose") / "test_wrong_kind.safetensors").write_bytes(
        (models.model_dir("pose_estimators") / ESTIMATOR).read_bytes())
    prompt = transfer_prompt(model="test_wrong_kind.safetensors")
    assert_node_error(models, prompt, "LoadRePoseModel", "'pose_estimator' checkpoint", "RePose Load Pose Estimator")


def test_error_cfg_pp_sampler_is_refused_with_an_alternative(models):
    prompt = transfer_prompt(sampler="euler_cfg_pp")
    assert_node_error(models, prompt, "RePoseKSampler", "'euler_cfg_pp'", "use 'euler'")


def test_error_missing_model_file_names_the_folder(models):
    """A model listed when the prompt was queued but gone when it runs: the error says where to put it."""
    doomed = models.model_dir("repose") / "test_doomed.safetensors"
    doomed.write_bytes((models.model_dir("repose") / MODEL).read_bytes())
    slow = models.post_prompt(transfer_prompt(steps=25, seed=int(time.time())))   # keeps the queue busy
    prompt = transfer_prompt(model="test_doomed.safetensors", seed=5)
    prompt = {k: v for k, v in prompt.items() if k in ("1", "2", "3", "4", "7")}
    pid = models.post_prompt(prompt)
    doomed.unlink()
    models.wait_history(slow, timeout=600)
    err = execution_error(models.wait_history(pid, timeout=300))
    assert err and err["node_type"] == "LoadRePoseModel", err
    assert "test_doomed.safetensors" in err["exception_message"] and "models/repose" in err["exception_message"]


# ----------------------------------------------------------------------------------------------------------------
# Cancel


def test_interrupt_mid_sampling_then_next_prompt_succeeds(models):
    # Interrupt only once the sampler node has reported sampling progress (websocket "progress" of node 5), so the
    # interrupt lands inside sampling however slow the machine; 10000 steps keep it there for minutes.
    with ProgressWatcher(models) as watch:
        pid = models.post_prompt(transfer_prompt(steps=10000, seed=int(time.time()) + 1), client_id=watch.client_id)
        watch.wait_for(lambda m: m.get("type") == "progress" and m["data"].get("prompt_id") == pid
                       and m["data"].get("node") == "5" and m["data"].get("value", 0) >= 1, timeout=600)
    models.interrupt()
    entry = models.wait_history(pid, timeout=300)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    interrupted = dict(entry["status"]["messages"])["execution_interrupted"]
    assert interrupted["node_type"] == "RePoseKSampler"
    models.run_prompt(transfer_prompt(seed=123), timeout=600)                 # the next prompt runs normally


# ----------------------------------------------------------------------------------------------------------------
# Pose tools


def test_pose_from_photo_retarget_and_save(models):
    prompt = {
        "1": {"class_type": "RePoseLoadPoseEstimator", "inputs": {"ckpt_name": ESTIMATOR, "dtype": "fp32"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "test_source.png"}},
        "3": {"class_type": "RePosePoseFromImage", "inputs": {"image": ["2", 0], "pose_estimator": ["1", 0],
                                                             "threshold": 0.0, "multi_person": False}},
        "4": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": pose_json()}},
        "5": {"class_type": "RePoseRetargetPose", "inputs": {"target_pose": ["4", 0], "source_pose": ["3", 0],
                                                            "anchor": "source"}},
        "6": {"class_type": "RePoseSavePose", "inputs": {"pose_keypoint": ["5", 0], "format": "pose_keypoint_json",
                                                        "filename_prefix": "repose_test/retargeted"}},
        "7": {"class_type": "RePoseSavePose", "inputs": {"pose_keypoint": ["3", 0], "format": "openpose_json",
                                                        "filename_prefix": "repose_test/detected"}},
    }
    entry = models.run_prompt(prompt, timeout=600)
    (saved,) = entry["outputs"]["6"]["text"]
    frames = json.loads((models.output_dir / saved).read_text())
    assert frames[0]["canvas_width"] == W and frames[0]["canvas_height"] == H   # on the source canvas
    assert len(frames[0]["people"][0]["pose_keypoints_2d"]) == 54
    (openpose,) = entry["outputs"]["7"]["text"]
    doc = json.loads((models.output_dir / openpose).read_text())
    assert doc["canvas_width"] == W and len(doc["people"]) == 1
    # the saved file loads back through RePose Load Pose
    back = {"1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": (models.output_dir / saved).read_text()}},
            "2": {"class_type": "RePoseSavePose", "inputs": {"pose_keypoint": ["1", 0], "format": "deepfashion_csv",
                                                            "filename_prefix": "repose_test/again"}}}
    entry = models.run_prompt(back, timeout=120)
    (csv,) = entry["outputs"]["2"]["text"]
    assert (models.output_dir / csv).read_text().startswith("name:keypoints_y:keypoints_x")


def test_load_deepfashion_annotation_row(models):
    (models.input_dir / "test_annotations.csv").write_text(
        "name:keypoints_y:keypoints_x\n"
        "fashionWOMENDressesid0001.jpg: [30, 50, 50, 90, 120, 50, 90, 120, 130, 180, 230, 130, 180, 230, 25, 25, 28, "
        "28]: [88, 88, 66, 56, 50, 110, 122, 130, 76, 70, 62, 100, 110, 118, 84, 92, 79, 97]\n")
    prompt = {
        "1": {"class_type": "RePoseLoadDeepFashionPose", "inputs": {
            "annotation_file": "test_annotations.csv", "image_name": "fashionWOMENDressesid0001.jpg",
            "width": 176, "height": 256}},
        "2": {"class_type": "RePoseRenderPose", "inputs": {"pose_keypoint": ["1", 0], "style": "pidm_rgb",
                                                          "width": 0, "height": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    entry = models.run_prompt(prompt, timeout=120)
    (img,) = images(models, entry, "3")
    assert img.shape == (256, 176, 3) and (img.sum(-1) > 0).mean() > 0.02
    prompt["1"]["inputs"]["image_name"] = "unknown.jpg"
    assert_node_error(models, prompt, "RePoseLoadDeepFashionPose", "'unknown.jpg' is not annotated")
