"""HigherHRNet: parity with the mmpose 0.29 reference fixture, key layouts, checkpoint loaders, frozen/eval
behaviour, padding, inference-mode safety."""
import collections
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from repose_core.errors import CheckpointError, InputError
from repose_core.estimator import (HigherHRNet, HigherHRNetConfig, build_estimator, estimate_poses, infer_config,
                                   save_estimator, to_mmpose_layout, to_original_layout)

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures"   # in the repository (see its README.md)
W32_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "higherhrnet_w32_mmpose.safetensors"


def require_w32_fixture() -> Path:
    """The 65 MB W32 fixture stays in ../shared/fixtures: skipped on a clone without it, a failure in CI (CI=true)."""
    if W32_FIXTURE.is_file():
        return W32_FIXTURE
    msg = f"HigherHRNet-W32 reference fixture not found: {W32_FIXTURE} (../shared/fixtures beside the checkout)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + "; CI must run the W32 parity tests", pytrace=False)
    pytest.skip(msg)


W8_WEIGHTS = FIXTURES / "higherhrnet_w8_mmpose.safetensors"   # in the repository: every clone runs these
KEYS = FIXTURES / "higherhrnet_keys.json"


@pytest.fixture(scope="module", params=[8, 32], ids=["w8", "w32"])
def width(request):
    """Every reference test runs on the W8 fixture (tests/data) and, where ../shared exists (always in CI), W32."""
    if request.param == 32:
        require_w32_fixture()
    return request.param


def _weights(width):
    return W8_WEIGHTS if width == 8 else require_w32_fixture()


@pytest.fixture(scope="module")
def ref(width):
    """All fixture tensors (weights under 'state_dict.<mmpose key>')."""
    return load_file(str(_weights(width)))


@pytest.fixture(scope="module")
def mmpose_sd(ref):
    return {k[len("state_dict."):]: v for k, v in ref.items() if k.startswith("state_dict.")}


@pytest.fixture(scope="module")
def model(mmpose_sd, width):
    """The reference network, built and loaded by hand (fp16 -> float32), once per module and width."""
    m = HigherHRNet(HigherHRNetConfig(width=width))
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in to_original_layout(mmpose_sd).items()}
    m.load_state_dict(sd, strict=True)
    return m


@pytest.fixture(scope="module")
def small_img():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 64, 96, generator=g)


@pytest.fixture(scope="module")
def small_ref(model, small_img):
    with torch.no_grad():
        return model.features_and_heatmaps(small_img)


# --- parity with the reference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("i", [0, 1])
def test_forward_matches_mmpose_reference(model, ref, i):
    with torch.no_grad():
        feat, (out0, out1) = model.forward_raw(ref[f"input.{i}"])
    torch.testing.assert_close(feat, ref[f"backbone.{i}"], atol=1e-2, rtol=0)
    torch.testing.assert_close(out0, ref[f"output.{i}.0"], atol=1e-3, rtol=0)
    torch.testing.assert_close(out1, ref[f"output.{i}.1"], atol=1e-3, rtol=0)


def test_input_gradient_matches_reference(model, ref):
    x = ref["input.0"].clone().requires_grad_(True)
    _, (out0, out1) = model.forward_raw(x)
    loss = (out1 ** 2).mean() + (out0[:, :17] ** 2).mean()
    loss.backward()
    g, r = x.grad, ref["grad.input.0"]
    assert loss.item() == pytest.approx(ref["loss.input.0"].item(), rel=1e-4)
    rel_l2 = ((g - r).norm() / r.norm()).item()
    cos = F.cosine_similarity(g.flatten(), r.flatten(), dim=0).item()
    assert rel_l2 < 3e-2 or cos > 0.999, (rel_l2, cos)


def test_high_level_api_normalises_and_aggregates(model, ref):
    img01 = ref["image_uint8.1"].float() / 255  # (1,3,320,192)
    with torch.no_grad():
        feat, hm = model.features_and_heatmaps(img01)
    torch.testing.assert_close(feat, ref["backbone.1"], atol=1e-2, rtol=0)
    expected = (F.interpolate(ref["output.1.0"][:, :17], size=(160, 96), mode="bilinear", align_corners=False)
                + ref["output.1.1"]) / 2
    assert hm.shape == (1, 17, 160, 96)
    torch.testing.assert_close(hm, expected, atol=1e-3, rtol=0)


def test_build_estimator_reads_fixture_file_directly(small_img, small_ref, width):
    est = build_estimator(_weights(width))  # 'state_dict.'-prefixed mmpose keys next to other tensors; width inferred
    assert est.config == HigherHRNetConfig(width=width, input_size=512, udp=False)
    _check_same(est, small_img, small_ref)


# --- structure ---------------------------------------------------------------------------------------------------
def _layout(width):
    with torch.device("meta"):
        m = HigherHRNet(HigherHRNetConfig(width=width))
    return m.state_dict()


@pytest.mark.parametrize("name,layout_width,mmpose", [("mmpose_w32_512", 32, True), ("mmpose_w48", 48, True),
                                               ("original_w32_512", 32, False), ("original_w48_640", 48, False)])
def test_state_dict_layout_matches_reference(name, layout_width, mmpose):
    want = json.loads(KEYS.read_text())["layouts"][name]
    sd = _layout(layout_width)
    if mmpose:
        sd = to_mmpose_layout(sd)
    assert [[k, list(v.shape)] for k, v in sd.items()] == want["keys"]
    n_params = sum(v.numel() for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    assert n_params == want["num_params"]


def test_config_inferred_from_shapes():
    sd48 = _layout(48)
    assert infer_config(sd48).width == 48
    assert infer_config(_layout(32)).width == 32
    assert infer_config(sd48, {"source": "higher_hrnet48_coco_512x512_udp-7cad61ef_20210222.pth"}).udp
    assert infer_config(sd48, {"source": "x.pth", "meta_config": "data_cfg = dict(input_size=640, use_udp=True)"}) \
        == HigherHRNetConfig(width=48, input_size=640, udp=True)


def test_estimator_stays_frozen_in_eval(model, small_img, small_ref):
    wrapper = torch.nn.ModuleDict({"est": model})
    wrapper.train()  # e.g. a training loop or an exporter restoring modes
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        feat, hm = model.features_and_heatmaps(small_img)
    assert torch.equal(feat, small_ref[0]) and torch.equal(hm, small_ref[1])


# --- sizes and bad input -----------------------------------------------------------------------------------------
def test_pads_odd_sizes_and_crops_back(model, width):
    img = torch.rand(2, 3, 70, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feat, hm = model.features_and_heatmaps(img)
        assert feat.shape == (2, width, 18, 12) and hm.shape == (2, 17, 35, 23)
        # identical to running the network on the mean-padded input and cropping
        x = F.pad(model.normalise(img), (0, 64 - 45, 0, 96 - 70))
        f_full, outs = model.forward_raw(x)
    torch.testing.assert_close(feat, f_full[..., :18, :12])
    torch.testing.assert_close(hm, model.aggregate(outs)[..., :35, :23])


def test_forward_raw_rejects_sizes_not_multiple_of_32(model):
    with pytest.raises(InputError, match=r"H=100, W=64.*multiples of 32"):
        model.forward_raw(torch.zeros(1, 3, 100, 64))


@pytest.mark.parametrize("bad,match", [(torch.zeros(3, 64, 64), r"\(B,3,H,W\)"),
                                       (torch.zeros(1, 1, 64, 64), "3 RGB channels"),
                                       (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float tensor"),
                                       ("image.png", "torch.Tensor")])
def test_bad_images_rejected(model, bad, match):
    with pytest.raises(InputError, match=match):
        model.heatmaps(bad)


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="width"):
        HigherHRNetConfig(width=0)
    with pytest.raises(InputError, match="width"):
        HigherHRNetConfig(width=4096)   # would allocate tens of GB: refused before building
    with pytest.raises(InputError, match="multiple of 32"):
        HigherHRNetConfig(input_size=500)


# --- checkpoint layouts ------------------------------------------------------------------------------------------
def _fp16(sd):
    return {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}


def _check_same(est, small_img, small_ref):
    assert isinstance(est, HigherHRNet)
    with torch.no_grad():
        feat, hm = est.features_and_heatmaps(small_img)
    assert torch.equal(feat, small_ref[0]) and torch.equal(hm, small_ref[1])


@pytest.mark.parametrize("layout", ["original", "mmpose", "module", "no_num_batches_tracked",
                                    "safetensors_ours", "safetensors_raw_mmpose"])
def test_every_checkpoint_layout_loads_identically(layout, mmpose_sd, small_img, small_ref, tmp_path, model):
    original = to_original_layout(mmpose_sd)
    if layout == "original":
        path = tmp_path / "pose_higher_hrnet_w32_512.pth"
        torch.save(original, path)
    elif layout == "mmpose":
        path = tmp_path / "higher_hrnet32_coco_512x512-8ae85183_20200713.pth"
        # meta may pickle objects of foreign classes: they are never imported, the tensors are still used
        torch.save({"meta": {"epoch": 300, "mmcv_version": "1.7.0", "config": "model = dict(...)",
                             "hook_msgs": collections.Counter(best=1)},
                    "state_dict": dict(mmpose_sd)}, path)
    elif layout == "module":
        path = tmp_path / "dp.pth"
        torch.save({"module." + k: v for k, v in original.items()}, path)
    elif layout == "no_num_batches_tracked":
        path = tmp_path / "nonbt.pt"
        torch.save({k: v for k, v in original.items() if not k.endswith("num_batches_tracked")}, path)
    elif layout == "safetensors_ours":
        path = tmp_path / "ours.safetensors"
        save_estimator(path, model)
    else:
        path = tmp_path / "raw.safetensors"
        save_file(dict(mmpose_sd), str(path))
    _check_same(build_estimator(path), small_img, small_ref)


def test_in_memory_state_dict_and_udp_metadata_roundtrip(mmpose_sd, small_img, small_ref, tmp_path):
    est = build_estimator({"state_dict": dict(mmpose_sd)})
    _check_same(est, small_img, small_ref)
    udp = build_estimator(dict(mmpose_sd), udp=True, input_size=640)
    save_estimator(tmp_path / "udp.safetensors", udp)
    again = build_estimator(tmp_path / "udp.safetensors")
    assert again.config == HigherHRNetConfig(width=est.config.width, input_size=640, udp=True)
    # our files are also ordinary RePose model files
    from repose_core.checkpoint import load_model

    generic = load_model(tmp_path / "udp.safetensors", expected_kind="pose_estimator")
    assert isinstance(generic, HigherHRNet) and generic.config == again.config
    with torch.no_grad():
        f_udp, h_udp = generic.features_and_heatmaps(small_img)
    # same network; UDP only changes the out0 -> out1 resize convention (align_corners=True)
    assert torch.equal(f_udp, small_ref[0]) and not torch.allclose(h_udp, small_ref[1])


def test_checkpoint_errors_are_actionable(mmpose_sd, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_estimator(tmp_path / "nope.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"extension '.onnx'.*safetensors"):
        build_estimator(tmp_path / "w.onnx")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "unet.safetensors"), metadata={"kind": "pidm"})
    with pytest.raises(CheckpointError, match="'pidm' checkpoint"):
        build_estimator(tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="transition1.0.0.weight"):
        build_estimator({"conv1.weight": torch.zeros(64, 3, 3, 3)})
    sd = to_original_layout(mmpose_sd)
    broken = {k: v for k, v in sd.items() if k != "stage2.0.fuse_layers.0.1.0.weight"}
    broken["deconv_layers.0.0.1.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"(?s)missing.*stage2.0.fuse_layers.0.1.0.weight.*"
                                              r"deconv_layers.0.0.1.weight"):
        build_estimator(broken)
    with pytest.raises(CheckpointError, match="mmpose 1.x"):
        build_estimator({"head.final_layer.weight": torch.zeros(17, 32, 1, 1), **sd})


def test_other_estimator_architectures_in_our_format_are_delegated(tmp_path):
    """Our safetensors of another registered estimator (e.g. the bundled small one) load through the registry."""
    from dataclasses import dataclass

    from repose_core.checkpoint import register_model, save_model
    from repose_core.estimator import PoseEstimator

    @dataclass(frozen=True)
    class TinyConfig:
        channels: int = 4

    class Tiny(PoseEstimator):
        checkpoint_builder = "test_tiny_estimator"

        def __init__(self, config=TinyConfig()):
            super().__init__()
            self.config = config
            self.conv = torch.nn.Conv2d(3, config.channels, 1)
            self.freeze()

    register_model("pose_estimator", lambda cfg: Tiny(TinyConfig(**cfg)), name="test_tiny_estimator")
    src = Tiny(TinyConfig(channels=5))
    save_model(tmp_path / "tiny.safetensors", src, "pose_estimator")
    with torch.inference_mode():
        est = build_estimator(tmp_path / "tiny.safetensors")
    assert isinstance(est, Tiny) and est.config == TinyConfig(5) and not est.training
    assert torch.equal(est.conv.weight, src.conv.weight) and not est.conv.weight.requires_grad
    assert not est.conv.weight.is_inference()  # built outside inference mode: differentiable later


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": collections.Counter(a=1)}, path)
    with pytest.raises(CheckpointError):
        build_estimator(path)


# --- ComfyUI runs nodes under torch.inference_mode() ---------------------------------------------------------------
def test_build_inside_inference_mode_then_backprop(mmpose_sd):
    with torch.inference_mode():
        est = build_estimator(dict(mmpose_sd))
        img = torch.rand(1, 3, 64, 64)
        assert img.is_inference()
        with torch.inference_mode(False), torch.enable_grad():
            x = img.clone().requires_grad_()
            loss = est.heatmaps(x).square().mean() + est.features(x).square().mean()
            loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_weights_made_in_inference_mode_cannot_backprop():
    """Negative control for the test above: this is the failure build_estimator avoids."""
    with torch.inference_mode():
        est = HigherHRNet()
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        x = torch.rand(1, 3, 64, 64, requires_grad=True)
        est.heatmaps(x).sum().backward()


def test_estimate_poses_on_reference_network(model, ref):
    img01 = ref["image_uint8.1"].float() / 255
    frames = estimate_poses(model, img01, threshold=0.0, resize=False)
    assert len(frames) == 1 and (frames[0].width, frames[0].height) == (192, 320)
    pose = frames[0].people[0]
    assert pose.layout == "coco17" and pose.keypoints.shape == (17, 3)
    vis = pose.keypoints[pose.keypoints[:, 2] > 0]
    assert ((vis[:, 0] >= -0.5) & (vis[:, 0] <= 191.5) & (vis[:, 1] >= -0.5) & (vis[:, 1] <= 319.5)).all()
