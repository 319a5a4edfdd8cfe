"""Hostile and careless input through the real ComfyUI host (issue 11): every case ends in an error on the node that
names the input and what to do (or a documented result), promptly, and the server stays up for the next prompt."""
from __future__ import annotations

import json
import os

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

import repose_tiny_models as tiny
from comfy_harness import execution_error
from test_nodes_repose import MODEL, WALK, H, W, assert_node_error, models, pose_json, transfer_prompt  # noqa: F401


def _pose(values, width=W, height=H) -> str:
    return json.dumps([{"people": [{"pose_keypoints_2d": values}], "canvas_width": width, "canvas_height": height}])


# ------------------------------------------------------------------------------------------------ model files


def test_tampered_config_is_refused_without_allocating(models):
    """The issue's 2.4 MB file whose metadata says model_channels 8192 (the server passed 9 GB)."""
    good = models.model_dir("repose") / MODEL
    meta = json.loads(json.dumps(dict(__import__("safetensors").safe_open(str(good), "pt").metadata())))
    config = json.loads(meta["config"])
    config["unet"]["model_channels"] = 8192
    meta["config"] = json.dumps(config)
    save_file(load_file(str(good)), str(models.model_dir("repose") / "test_evil_config.safetensors"), metadata=meta)
    assert_node_error(models, transfer_prompt(model="test_evil_config.safetensors"), "LoadRePoseModel",
                      "test_evil_config.safetensors", "stored config builds a model of", "download it again")


def test_pidm_last_pt_is_read_and_an_sd_ckpt_is_sent_to_the_right_node(models):
    from repose_core.models.unet import PIDMNet, pidm_small_config

    torch.manual_seed(0)
    pidm = PIDMNet(pidm_small_config())
    torch.save({"ema": pidm.state_dict(), "model": {}, "step": 3}, models.model_dir("repose") / "test_pidm_last.pt")
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3)}},
               models.model_dir("repose") / "test_humansd.ckpt")
    tiny.write_image(models.input_dir / "test_source_64.png", 64, 64, seed=3)
    prompt = {k: v for k, v in transfer_prompt(model="test_pidm_last.pt", source="test_source_64.png",
                                                pose=pose_json(width=64, height=64)).items() if k in "12347"}
    entry = models.run_prompt(prompt, timeout=600)                    # PIDM's own checkpoint, converted on load
    assert models.output_images(entry, "7")
    assert_node_error(models, transfer_prompt(model="test_humansd.ckpt"), "LoadRePoseModel",
                      "test_humansd.ckpt", "RePoseSD Load UNet")


def test_repose_sd_loader_names_a_malformed_unet_file(models):
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(5)}},
               models.model_dir("repose") / "test_bad_unet.ckpt")
    prompt = {"1": {"class_type": "RePoseSDLoadUNet", "inputs": {"unet_name": "test_bad_unet.ckpt", "dtype": "auto",
                                                                 "prediction": "eps"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}   # an output that runs the loader
    entry = models.run_prompt(prompt, timeout=300, expect="error")
    err = execution_error(entry)
    assert err and err["node_type"] == "RePoseSDLoadUNet", entry["status"]
    assert "test_bad_unet.ckpt" in err["exception_message"] and "not an SD UNet" in err["exception_message"]


# ------------------------------------------------------------------------------------------------ sampling inputs


@pytest.mark.parametrize("field,value", [("cfg", float("nan")), ("denoise", float("nan")),
                                         ("pose_scale", float("nan")), ("appearance_scale", float("nan"))])
def test_non_finite_numbers_are_refused(models, field, value):
    prompt = transfer_prompt()
    prompt["5"]["inputs"].update({"cfg_mode": "disentangled", field: value})
    assert_node_error(models, prompt, "RePoseKSampler", f"input '{field}'", "finite number")


def test_denoise_below_one_needs_a_reference(models):
    prompt = transfer_prompt()
    prompt["5"]["inputs"]["denoise"] = 0.0
    assert_node_error(models, prompt, "RePoseKSampler", "input 'denoise' is 0.0", "connect 'reference'")


# ------------------------------------------------------------------------------------------------ poses


def test_target_pose_off_the_canvas_is_refused(models):
    off = [v + 1000 if i % 3 != 2 else v for i, v in enumerate(WALK)]
    assert_node_error(models, transfer_prompt(pose=_pose(off)), "RecurrentPoseAlign", "outside its 44x64 canvas")


@pytest.mark.parametrize("coordinates,values,words", [
    ("normalized", WALK, ("outside its 44x64 canvas", "coordinates=normalized")),
    ("pixels", [v / (W if i % 3 == 0 else H) if i % 3 != 2 else v for i, v in enumerate(WALK)],
     ("spans", "set 'coordinates' to normalized")),
])
def test_forced_coordinates_that_contradict_the_numbers_are_refused(models, coordinates, values, words):
    prompt = transfer_prompt(pose=_pose(values))
    prompt["3"]["inputs"]["coordinates"] = coordinates
    assert_node_error(models, prompt, "RePoseLoadPoseJSON", *words)


def test_absurd_keypoints_and_render_sizes_are_refused(models):
    values = list(WALK)
    values[0] = 1e30
    render = {"1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": _pose(values)}},
              "2": {"class_type": "RePoseRenderPose", "inputs": {"pose_keypoint": ["1", 0], "style": "openpose",
                                                                  "width": 0, "height": 0}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    assert_node_error(models, render, "RePoseRenderPose", "joint 0 (nose)", "canvas sizes outside")
    render["1"]["inputs"]["pose_json"] = pose_json()
    render["2"]["inputs"].update(style="pidm_rgb", width=8192, height=8192)
    assert_node_error(models, render, "RePoseRenderPose", "8192x8192", "4096 x 4096")


def test_huge_source_is_refused_before_alignment(models):
    from PIL import Image

    Image.new("RGB", (4096, 4096), (90, 120, 200)).save(models.input_dir / "test_huge.png")
    assert_node_error(models, transfer_prompt(source="test_huge.png"), "RecurrentPoseAlign",
                      "input 'source' is 4096x4096", f"scale the image to {W}x{H}")


@pytest.mark.parametrize("size", [(1, 1), (7, 13)])
def test_pose_from_a_tiny_image_finds_nobody(models, size):
    tiny.write_image(models.input_dir / f"test_tiny_{size[0]}x{size[1]}.png", *size, seed=1)
    prompt = {"1": {"class_type": "RePoseLoadPoseEstimator",
                    "inputs": {"ckpt_name": "test_tiny_estimator.safetensors", "dtype": "fp32"}},
              "2": {"class_type": "LoadImage", "inputs": {"image": f"test_tiny_{size[0]}x{size[1]}.png"}},
              "3": {"class_type": "RePosePoseFromImage", "inputs": {"image": ["2", 0], "pose_estimator": ["1", 0],
                                                                   "threshold": 0.0, "multi_person": False,
                                                                   "allow_empty": False}},
              "4": {"class_type": "RePoseSavePose", "inputs": {"pose_keypoint": ["3", 0], "format": "openpose_json",
                                                              "filename_prefix": "repose_test/tiny"}}}
    assert_node_error(models, prompt, "RePosePoseFromImage", f"{size[0]}x{size[1]} pixels", "smaller than 16")


# ------------------------------------------------------------------------------------------------ files and paths


def test_nul_byte_in_save_prefix(models):
    prompt = {"1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": pose_json()}},
              "2": {"class_type": "RePoseSavePose", "inputs": {"pose_keypoint": ["1", 0], "format": "openpose_json",
                                                              "filename_prefix": "repose_test/a\x00b"}}}
    assert_node_error(models, prompt, "RePoseSavePose", "filename_prefix", "control character")


def test_symlink_out_of_the_input_folder_is_not_followed(models, tmp_path):
    secret = tmp_path / "secret_pose.json"
    secret.write_text(pose_json())
    link = models.input_dir / "test_link_out.json"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(secret, link)
    prompt = {"1": {"class_type": "RePoseLoadPoseJSON", "inputs": {"pose_json": "test_link_out.json"}},
              "2": {"class_type": "RePoseRenderPose", "inputs": {"pose_keypoint": ["1", 0], "style": "openpose",
                                                                  "width": 0, "height": 0}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    assert_node_error(models, prompt, "RePoseLoadPoseJSON", "test_link_out.json", "outside ComfyUI's input directory")
    assert requests.get(models.url("/system_stats"), timeout=30).status_code == 200
