"""Node-side logic without ComfyUI: pose tools, model file lookup, guidance settings, the pose-transfer steps the
nodes call (repose_core.transfer_ops), flow visualisation and the workflow generator's own checks.

The pack is imported the way ComfyUI imports it (a package named after its path), so relative imports resolve."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repose_core.errors import EmptyPoseError, InputError
from repose_core.flow_vis import flow_to_rgb
from repose_core.pose import PoseFrame, load_pose_file

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def pack(import_pack):
    return import_pack()


WALK = [22, 10, 1, 22, 16, 1, 16, 16, 1, 14, 26, 1, 12, 36, 1, 28, 16, 1, 30, 26, 1, 32, 36, 1, 18, 34, 1, 18, 46, 1,
        18, 58, 1, 26, 34, 1, 27, 46, 1, 28, 58, 1, 21, 9, 1, 23, 9, 1, 20, 10, 1, 24, 10, 1]


def pose_keypoint(frames=1, width=44, height=64, scale=1.0, people=1):
    pts = [v * scale if i % 3 != 2 else v for i, v in enumerate(WALK)]
    return [{"people": [{"pose_keypoints_2d": list(pts)} for _ in range(people)], "canvas_width": width,
             "canvas_height": height} for _ in range(frames)]


# ----------------------------------------------------------------------------------------------------------------
# Flow visualisation


def test_flow_colours_encode_direction_and_magnitude():
    flow = torch.zeros(1, 2, 2, 3)
    flow[0, 0, 0, 0] = 4.0    # right
    flow[0, 0, 0, 1] = -4.0   # left
    flow[0, 1, 0, 2] = 2.0    # down, half the largest magnitude
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (1, 3, 2, 3) and 0 <= rgb.min() and rgb.max() <= 1
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))     # hue 0: red
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([0.0, 1.0, 1.0]))     # opposite: cyan
    assert rgb[0, :, 0, 2].min() == pytest.approx(0.5)                              # saturation 0.5
    torch.testing.assert_close(rgb[0, :, 1, 0], torch.ones(3))                      # no motion: white
    fixed = flow_to_rgb(flow, max_magnitude=8.0)
    assert fixed[0, :, 0, 0].min() == pytest.approx(0.5)                            # 4 of 8 -> half saturated
    flow[0, 0, 1, 1] = math.nan
    assert flow_to_rgb(flow)[0, :, 1, 1].max() == 0                                 # broken vectors are black


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 2, 2), torch.zeros(2, 2), "flow"])
def test_flow_to_rgb_rejects_bad_input(bad):
    with pytest.raises(InputError, match=r"\(B, 2, H, W\)"):
        flow_to_rgb(bad)
    with pytest.raises(InputError, match="max_magnitude"):
        flow_to_rgb(torch.zeros(1, 2, 2, 2), max_magnitude=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Pose tools


def test_retarget_keeps_directions_on_the_source_canvas(pack):
    pt = pack.nodes.pose_tools_nodes
    target = pose_keypoint(width=44, height=64)
    source = pose_keypoint(width=88, height=128, scale=2.0)
    out = pt.retarget_pose_keypoint(target, source, "source")
    assert out[0]["canvas_width"] == 88 and out[0]["canvas_height"] == 128
    k = np.asarray(out[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    np.testing.assert_allclose(k[:, :2], np.asarray(source[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)[:, :2],
                               atol=1e-3)   # same pose, source proportions: the source itself
    assert len(pt.retarget_pose_keypoint(pose_keypoint(frames=3), source)) == 3     # 1 source frame for all


def test_retarget_errors(pack):
    pt = pack.nodes.pose_tools_nodes
    with pytest.raises(pack.repose_core.errors.InputError, match="3 frames and 'source_pose' 2"):
        pt.retarget_pose_keypoint(pose_keypoint(frames=3), pose_keypoint(frames=2))
    empty = [{"people": [], "canvas_width": 44, "canvas_height": 64}]
    with pytest.raises(pack.repose_core.errors.EmptyPoseError, match="source_pose"):
        pt.retarget_pose_keypoint(pose_keypoint(), empty)


@pytest.mark.parametrize("fmt, ext, count", [("pose_keypoint_json", ".json", 1), ("openpose_json", ".json", 2),
                                             ("deepfashion_csv", ".csv", 1), ("gfla_txt", ".txt", 2),
                                             ("humansd_npz", ".npz", 2)])
def test_save_pose_round_trips(pack, tmp_path, fmt, ext, count):
    pt = pack.nodes.pose_tools_nodes
    frames = pose_keypoint(frames=2, width=176, height=256, scale=4.0)
    written = pt.save_pose_keypoint(frames, fmt, "poses/walk", str(tmp_path))
    assert len(written) == count and all(w.startswith("poses/walk_") and w.endswith(ext) for w in written)
    again = pt.save_pose_keypoint(frames, fmt, "poses/walk", str(tmp_path))
    assert set(again).isdisjoint(written)                                           # never overwrites
    path = tmp_path / written[0]
    if fmt == "deepfashion_csv":
        loaded = load_pose_file(path, image_name="walk_00000.jpg")
    else:
        loaded = load_pose_file(path, width=176, height=256)
    pose = loaded[0].people[0]
    expected = np.asarray(frames[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    if pose.layout == "coco17":   # HumanSD files are COCO-17 (no neck)
        from repose_core.pose import coco17_to_openpose18
        pose = coco17_to_openpose18(pose)
    np.testing.assert_allclose(pose.keypoints[:, :2], expected[:, :2], atol=1.0)


def test_save_pose_rejects_paths_outside_output(pack, tmp_path):
    pt = pack.nodes.pose_tools_nodes
    for prefix in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(pack.repose_core.errors.InputError, match="inside ComfyUI's output folder"):
            pt.save_pose_keypoint(pose_keypoint(), "openpose_json", prefix, str(tmp_path))
    with pytest.raises(pack.repose_core.errors.InputError, match="accepted: pose_keypoint_json"):
        pt.save_pose_keypoint(pose_keypoint(), "bvh", "x", str(tmp_path))


def test_load_deepfashion_pose(pack, tmp_path):
    pt = pack.nodes.pose_tools_nodes
    (tmp_path / "ann.csv").write_text("name:keypoints_y:keypoints_x\n"
                                      "img1.jpg: [10, 20, -1, 30, 40, 20, 30, 40, 50, 60, 70, 50, 60, 70, 8, 8, 9, 9]:"
                                      " [20, 20, -1, 10, 5, 30, 35, 40, 15, 15, 15, 25, 25, 25, 18, 22, 16, 24]\n")
    pk = pt.load_deepfashion_pose("ann.csv", " img1.jpg ", 176, 256, input_dir=str(tmp_path))
    k = np.asarray(pk[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert pk[0]["canvas_width"] == 176 and k[0].tolist() == [20, 10, 1] and k[2].tolist() == [0, 0, 0]
    with pytest.raises(pack.repose_core.errors.PoseFormatError, match="'img2.jpg' is not annotated"):
        pt.load_deepfashion_pose("ann.csv", "img2.jpg", input_dir=str(tmp_path))
    with pytest.raises(pack.repose_core.errors.InputError, match="outside ComfyUI's input directory"):
        pt.load_deepfashion_pose("../ann.csv", "img1.jpg", input_dir=str(tmp_path / "sub"))


# ----------------------------------------------------------------------------------------------------------------
# Model files


def test_model_lookup_lists_bundled_files_by_kind(pack, tmp_path, monkeypatch):
    from repose_core.checkpoint import save_model
    from repose_core.models.configs import get_config
    from repose_core.models.repose import RePoseDM

    mf = pack.nodes.model_files
    monkeypatch.setattr(mf, "BUNDLED_DIR", str(tmp_path))
    save_model(tmp_path / "a_model.safetensors", RePoseDM(get_config("tiny", "b1")), "repose_dm")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert mf.list_models("repose") == ["a_model.safetensors"]
    assert mf.list_models("pose_estimators") == []
    assert mf.resolve_model("repose", "a_model.safetensors") == str(tmp_path / "a_model.safetensors")
    with pytest.raises(pack.repose_core.errors.InputError, match=r"'missing.safetensors' not found\. Put it into ComfyUI's models/repose/"):
        mf.resolve_model("repose", "missing.safetensors")
    with pytest.raises(pack.repose_core.errors.InputError, match="not a model file name"):
        mf.resolve_model("repose", "../a_model.safetensors")
    with pytest.raises(pack.repose_core.errors.CheckpointError, match="'repose_dm' checkpoint.*'RePose Load Model' node"):
        mf.check_kind(str(tmp_path / "a_model.safetensors"), ("pose_estimator",), "RePose Load Pose Estimator")
    assert mf.resolve_dtype("auto") == torch.float32 and mf.resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(pack.repose_core.errors.InputError, match="accepted: auto, fp32, fp16, bf16"):
        mf.resolve_dtype("int8")


# ----------------------------------------------------------------------------------------------------------------
# Guidance settings


class _Estimator:
    module = torch.nn.Conv2d(3, 3, 1)
    patcher = None


def test_guidance_spec_validates_inputs(pack):
    gn = pack.nodes.guidance_nodes
    spec = gn.make_guidance_spec(_Estimator(), pose_keypoint(), 2.0, 0.1, 0.6, every=2, estimator_size=128)
    c = spec.config
    assert (c.scale, c.start, c.end, c.every, c.estimator_size, c.clip_grad_norm) == (2.0, 0.1, 0.6, 2, 128, None)
    # the widgets start at the core's one set of defaults
    widgets = gn.PoseGradientGuidance.INPUT_TYPES()
    defaults = pack.repose_core.guidance.GuidanceConfig()
    assert widgets["required"]["scale"][1]["default"] == defaults.scale
    assert widgets["required"]["end"][1]["default"] == defaults.end
    assert widgets["optional"]["every"][1]["default"] == defaults.every
    with pytest.raises(pack.repose_core.errors.InputError, match="start must not be after end"):
        gn.make_guidance_spec(_Estimator(), pose_keypoint(), 1.0, 0.8, 0.2)
    with pytest.raises(pack.repose_core.errors.InputError, match="needs 'reference_image'"):
        gn.make_guidance_spec(_Estimator(), pose_keypoint(), 1.0, 0.0, 1.0, energy="feature")
    with pytest.raises(pack.repose_core.errors.EmptyPoseError, match="has no person"):
        gn.make_guidance_spec(_Estimator(), [{"people": [], "canvas_width": 8, "canvas_height": 8}], 1.0, 0.0, 1.0)
    with pytest.raises(pack.repose_core.errors.InputError, match="estimator_size"):
        gn.make_guidance_spec(_Estimator(), pose_keypoint(), 1.0, 0.0, 1.0, estimator_size=16)
    feature = gn.make_guidance_spec(_Estimator(), None, 1.0, 0.0, 1.0, energy="feature",
                                    reference_image=torch.rand(1, 16, 12, 3))
    assert feature.target.shape == (1, 3, 16, 12) and 0 <= feature.target.min() and feature.target.max() <= 1


# ----------------------------------------------------------------------------------------------------------------
# Pose-transfer steps (repose_core.transfer_ops)


def test_render_target_poses_for_both_encodings():
    from repose_core.pose import from_pose_keypoint
    from repose_core.transfer_ops import render_target_poses

    frames = from_pose_keypoint(pose_keypoint(frames=2))
    pidm = render_target_poses(frames, 32, 22, "pidm20")
    skel = render_target_poses(frames, 32, 22, "skeleton_codec")
    assert pidm.shape == (2, 20, 32, 22) and skel.shape == (2, 3, 32, 22)
    assert 0 <= pidm.min() and pidm.max() <= 1 and skel.sum() > 0
    with pytest.raises(EmptyPoseError, match="frame 1 of the target pose has no person"):
        render_target_poses([frames[0], PoseFrame([], 44, 64)], 32, 22, "pidm20")
    with pytest.raises(InputError, match="holds no frame"):
        render_target_poses([], 32, 22, "pidm20")


def test_pair_batches_broadcasts_one_and_rejects_mismatch():
    from repose_core.transfer_ops import pair_batches

    a, b = pair_batches(torch.zeros(1, 3, 4, 4), torch.zeros(3, 20, 4, 4))
    assert a.shape[0] == b.shape[0] == 3
    with pytest.raises(InputError, match="batch mismatch: source has 2 images but target pose has 3"):
        pair_batches(torch.zeros(2, 3, 4, 4), torch.zeros(3, 20, 4, 4))


def test_align_runs_the_requested_rpa_iterations_and_keeps_the_default():
    from repose_core.models.configs import get_config
    from repose_core.models.repose import RePoseDM
    from repose_core.pose import from_pose_keypoint
    from repose_core.transfer_ops import align, render_target_poses

    torch.manual_seed(0)
    model = RePoseDM(get_config("tiny", "b2")).eval()
    pose = render_target_poses(from_pose_keypoint(pose_keypoint()), 64, 44, "pidm20")
    source = torch.rand(1, 3, 64, 44) * 2 - 1
    calls = []
    result = align(model, source, pose, iterations=2, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)] and len(result.previews) == 2
    assert model.rpa.config.iterations == get_config("tiny", "b2").rpa.iterations          # the model config is untouched
    assert result.previews[0].shape == (1, 3, 64, 44) and result.flow.shape == (1, 2, 32, 22)
    assert result.cond.flow is None and result.cond.warped == []                        # only what sampling needs
    assert len(result.null_cond.features) == len(result.cond.features)
    default = align(model, source, pose)
    assert len(default.previews) == model.config.rpa.iterations
    with pytest.raises(InputError, match="iterations must be an integer >= 1"):
        align(model, source, pose, iterations=-1)


# ----------------------------------------------------------------------------------------------------------------
# Workflow generator


def test_workflow_generator_rejects_inconsistent_graphs():
    spec = importlib.util.spec_from_file_location("repose_wf_build_unit", REPO / "workflows" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build
    spec.loader.exec_module(build)
    schemas = build.node_schemas()
    good = build.GRAPHS[0]
    api = build.to_api(good, schemas)
    ui = build.to_ui(good, schemas)
    # every executable node is in both forms; Notes are canvas-only (ComfyUI's API format has no place for them)
    assert set(api) == {str(n["id"]) for n in ui["nodes"] if n["type"] != "Note"}
    sampler = next(n for n in ui["nodes"] if n["type"] == "RePoseKSampler")
    assert sampler["widgets_values"][:2] == [0, "fixed"]                               # seed + control value
    bad_link = build.Graph("bad", "", "", [build.Node(1, "LoadImage", {"image": "x.png"}),
                                       build.Node(2, "RePoseRenderPose", {}, {"pose_keypoint": (1, 0)})])
    with pytest.raises(TypeError, match="wants POSE_KEYPOINT, gets IMAGE"):
        build.to_api(bad_link, schemas)
    unlinked = build.Graph("bad", "", "", [build.Node(1, "RePoseRenderPose", {})])
    with pytest.raises(KeyError, match="required input 'pose_keypoint' is not linked"):
        build.to_ui(unlinked, schemas)
    unknown = build.Graph("bad", "", "", [build.Node(1, "LoadImage", {"imgae": "x.png"})])
    with pytest.raises(KeyError, match="no widget input 'imgae'"):
        build.to_api(unknown, schemas)
