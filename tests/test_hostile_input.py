"""Hostile and careless input to the core (issue 11): tampered model files are refused before any allocation, model
files are as readable as the umask says, PIDM configs are inferred from the weights, absurd poses and render sizes
get errors naming the input instead of crashes or silent nonsense."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from repose_core.checkpoint import (current_umask, load_model, read_metadata, read_safetensors_header, register_model,
                                    save_model)
from repose_core.errors import CheckpointError, InputError
from repose_core.models.pidm import convert_pidm_checkpoint, infer_pidm_config, read_pidm_checkpoint
from repose_core.models.unet import PIDMNet, UNetConfig, pidm_deepfashion256_config, pidm_small_config
from repose_core.pose import Pose, PoseFrame, check_pose_plausible, render_humansd, render_openpose, \
    render_pidm_pose_map
from repose_core.pose import render as render_module

TINY = dict(image_size=16, in_channels=5, model_channels=8, out_channels=4, channel_mult=(1, 2),
            attention_resolutions=(8,), embed_channels=16, dropout=0.0)
BUILT_ON: list = []   # device type of every build by the recording builder below


@register_model("test_hostile_kind", name="test_hostile_builder")
def _recording_builder(config: dict):
    BUILT_ON.append(torch.empty(0).device.type)   # "meta" inside the pre-check, "cpu" for the real build
    return PIDMNet(UNetConfig.from_dict(config))


class _Recorded(PIDMNet):
    checkpoint_builder = "test_hostile_builder"


def _tampered(tmp_path, **unet_changes):
    model = _Recorded(UNetConfig(**TINY))
    good = tmp_path / "good.safetensors"
    save_model(good, model, "test_hostile_kind")
    meta = read_metadata(good)
    config = json.loads(meta["config"])
    config.update(unet_changes)
    meta["config"] = json.dumps(config)
    bad = tmp_path / "tampered.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    return good, bad


# ------------------------------------------------------------------------------------------------ model files


def test_config_far_larger_than_its_tensors_is_refused_before_allocation(tmp_path):
    """The issue's 2.4 MB file whose config says model_channels 8192: refused by the size bound on the meta build."""
    _, bad = _tampered(tmp_path, model_channels=8192, embed_channels=8192)
    BUILT_ON.clear()
    with pytest.raises(CheckpointError, match=r"tampered\.safetensors.*stored config builds a model of") as err:
        load_model(bad)
    assert "convert or download it again" in str(err.value)
    assert BUILT_ON == ["meta"]   # nothing was built for real


def test_config_that_disagrees_with_its_tensors_is_refused_before_allocation(tmp_path):
    good, bad = _tampered(tmp_path, model_channels=32)
    BUILT_ON.clear()
    with pytest.raises(CheckpointError, match=r"(?s)tampered\.safetensors.*mis-shaped keys.*model \(16,"):
        load_model(bad)
    assert BUILT_ON == ["meta"]
    BUILT_ON.clear()
    assert isinstance(load_model(good), PIDMNet) and BUILT_ON == ["meta", "cpu"]   # the intact file loads


def test_size_bound_is_configurable(tmp_path, monkeypatch):
    good, _ = _tampered(tmp_path)
    monkeypatch.setenv("REPOSE_MAX_MODEL_ELEMENTS", "1000")
    with pytest.raises(CheckpointError, match="REPOSE_MAX_MODEL_ELEMENTS"):
        load_model(good)


@pytest.mark.parametrize("damage", ["header_length", "offsets", "short_data"])
def test_header_is_checked_against_the_file_without_reading_tensors(tmp_path, damage):
    good, _ = _tampered(tmp_path)
    data = bytearray(good.read_bytes())
    bad = tmp_path / "bad.safetensors"
    if damage == "header_length":
        data[:8] = (len(data) * 4).to_bytes(8, "little")
    elif damage == "offsets":   # a 4 MB tensor claimed by a file of 16 data bytes
        header = json.dumps({"__metadata__": read_metadata(good),
                             "w": {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 4 * 10**6]}}).encode()
        data = bytearray(len(header).to_bytes(8, "little") + header + bytes(16))
    else:
        data = data[:-100]
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*(truncated or corrupt)"):
        read_safetensors_header(bad)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        load_model(bad)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_model_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        save_model(tmp_path / "m.safetensors", PIDMNet(UNetConfig(**TINY)), "pidm")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.safetensors").st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------------------ PIDM configs


OTHER_PIDM = [
    UNetConfig(**TINY),
    UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=3, attention_resolutions=(16,),
               embed_channels=32, resblock_updown=False),
    UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
               attention_resolutions=(64, 16), embed_channels=32, resblock_updown=False, conv_resample=False,
               resnet_two_cond=False),
]


@pytest.mark.parametrize("config", OTHER_PIDM + [pidm_small_config(), pidm_deepfashion256_config()])
def test_pidm_config_is_inferred_from_tensor_shapes(config):
    with torch.device("meta"):
        sd = PIDMNet(config).state_dict()
    inferred = infer_pidm_config(sd)
    with torch.device("meta"):
        again = PIDMNet(inferred).state_dict()
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in sd.items()}
    if config in (pidm_small_config(), pidm_deepfashion256_config()):
        assert inferred == config   # a preset is recognised as itself


def test_non_pidm_state_dict_is_refused_with_the_config_hint():
    with pytest.raises(CheckpointError, match="input_blocks.0.0.weight"):
        infer_pidm_config({"conv.weight": torch.zeros(3, 3)})
    with torch.device("meta"):
        sd = PIDMNet(UNetConfig(**TINY)).state_dict()
    sd["out.2.weight"] = torch.empty(4, 3, 3, 3, device="meta")   # one tensor of the wrong width
    with pytest.raises(CheckpointError, match=r"--config"):
        infer_pidm_config(sd)


def _last_pt(path, config, seed=0):
    torch.manual_seed(seed)
    model = PIDMNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save({"ema": {f"module.{k}": v for k, v in model.state_dict().items()}, "model": {}, "step": 7}, path)
    return model


def test_convert_pidm_cli_infers_any_config_and_names_config_on_mismatch(tmp_path, repo_root):
    src = tmp_path / "last.pt"
    model = _last_pt(src, OTHER_PIDM[1])
    dst = tmp_path / "converted.safetensors"
    script = str(repo_root / "train" / "convert_pidm.py")
    proc = subprocess.run([sys.executable, script, str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "inferred from the weights" in proc.stdout
    loaded = load_model(dst, expected_kind="pidm")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    proc = subprocess.run([sys.executable, script, str(src), str(tmp_path / "x.safetensors"), "--config", "small"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "--config" in proc.stderr and "leave out --config" in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_read_pidm_checkpoint_names_the_right_loader_for_an_sd_checkpoint(tmp_path):
    path = tmp_path / "humansd.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3)},
                "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="RePoseSD Load UNet"):
        read_pidm_checkpoint(path, entry=None)
    bare = tmp_path / "bare.pth"   # a bare PIDM state dict (no "ema" entry) is read too
    model = PIDMNet(UNetConfig(**TINY))
    torch.save(model.state_dict(), bare)
    loaded, name = read_pidm_checkpoint(bare, entry=None)
    assert name == "inferred from the weights" and loaded.state_dict().keys() == model.state_dict().keys()


def test_convert_pidm_checkpoint_keeps_preset_argument(tmp_path):
    src = tmp_path / "last.pt"
    _last_pt(src, pidm_small_config())
    convert_pidm_checkpoint(src, tmp_path / "a.safetensors")
    assert read_metadata(tmp_path / "a.safetensors")["preset"] == "small"


# ------------------------------------------------------------------------------------------------ poses


WALK = [22, 10, 1, 22, 16, 1, 16, 16, 1, 14, 26, 1, 12, 36, 1, 28, 16, 1, 30, 26, 1, 32, 36, 1, 18, 34, 1, 18, 46, 1,
        18, 58, 1, 26, 34, 1, 27, 46, 1, 28, 58, 1, 21, 9, 1, 23, 9, 1, 20, 10, 1, 24, 10, 1]


def _pose(values=WALK, w=44, h=64):
    return Pose(np.asarray(values, np.float32).reshape(18, 3), w, h, "openpose18")


@pytest.mark.parametrize("render", [render_openpose, render_humansd, render_pidm_pose_map])
def test_absurd_coordinates_are_an_input_error_not_a_pil_crash(render):
    values = list(WALK)
    values[0] = 1e30   # the keypoint of 1e30 (nose x)
    with pytest.raises(InputError, match=r"joint 0 .*lies more than 64 canvas sizes outside the 44x64 image"):
        render(PoseFrame([_pose(values)], 44, 64), 64, 44)


@pytest.mark.parametrize("render", [render_openpose, render_humansd, render_pidm_pose_map])
def test_render_size_is_bounded(render):
    side = int(render_module.MAX_RENDER_PIXELS ** 0.5)
    with pytest.raises(InputError, match=r"8192x8192 .* more than the 16,777,216"):
        render(PoseFrame([_pose()], 44, 64), 8192, 8192)
    with pytest.raises(InputError, match="more than"):
        render(PoseFrame([_pose()], 44, 64), side + 1, side)


def test_pidm_rgb_only_equals_the_first_channels():
    full = render_pidm_pose_map(_pose(), 64, 44)
    rgb = render_pidm_pose_map(_pose(), 64, 44, rgb_only=True)
    assert rgb.shape == (64, 44, 3) and np.array_equal(rgb, full[..., :3])


def test_plausibility_catches_unit_mix_ups():
    check_pose_plausible(_pose())   # a real pose passes
    pixels_as_normalised = np.asarray(WALK, np.float64).reshape(18, 3) * [44, 64, 1]   # x * W once more
    with pytest.raises(InputError, match=r"all 18 joints lie outside its 44x64 canvas.*pixels"):
        check_pose_plausible(_pose(pixels_as_normalised.ravel()))
    normalised_as_pixels = np.asarray(WALK, np.float64).reshape(18, 3) / [44, 64, 1]
    with pytest.raises(InputError, match=r"spans 0.\d+ px .*normalized"):
        check_pose_plausible(_pose(normalised_as_pixels.ravel()))
    one_joint = np.zeros((18, 3))
    one_joint[0] = [5, 5, 1]
    check_pose_plausible(_pose(one_joint.ravel()))   # a single visible joint is not judged by its extent


def test_full_pidm_map_has_its_own_bound():
    with pytest.raises(InputError, match=r"2049x2048 .*2048 x 2048"):
        render_pidm_pose_map(_pose(), 2048, 2049)
    assert render_pidm_pose_map(_pose(), 2048, 2049, rgb_only=True).shape == (2048, 2049, 3)   # RGB: the wider bound
