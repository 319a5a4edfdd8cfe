"""The pack as ComfyUI imports it, without a server: entry point, node collection with broken modules, node helpers.

These run in the pytest process, where ComfyUI is NOT importable; ComfyUI modules are faked where needed."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import types
import uuid

import numpy as np
import pytest
import torch

from comfy_harness import import_pack_like_comfyui


def fresh_pack(repo_root):
    """An independent copy of the pack, imported under a unique path-like name as ComfyUI would."""
    return import_pack_like_comfyui(repo_root, f"{repo_root}_x_copy{uuid.uuid4().hex}".replace(".", "_x_"))


@pytest.fixture(scope="module")
def pack(repo_root):
    return fresh_pack(repo_root)


ONE_PERSON = [0.5, 0.2, 1, 0.5, 0.3, 1, 0.4, 0.3, 1, 0.35, 0.45, 1, 0.3, 0.6, 1, 0.6, 0.3, 1, 0.65, 0.45, 1,
              0.7, 0.6, 1, 0.45, 0.6, 1, 0.45, 0.8, 1, 0.45, 0.95, 1, 0.55, 0.6, 1, 0.55, 0.8, 1, 0.55, 0.95, 1,
              0.48, 0.18, 1, 0.52, 0.18, 1, 0.46, 0.2, 1, 0.54, 0.2, 1]


def pose_keypoint(width=64, height=128, people=1):
    """POSE_KEYPOINT as the OpenPose preprocessor writes it (normalised coordinates)."""
    return [{"people": [{"pose_keypoints_2d": list(ONE_PERSON)} for _ in range(people)],
             "canvas_width": width, "canvas_height": height}]


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def test_pack_entry_point_exports_pose_nodes(pack):
    assert {"RePoseLoadPoseJSON", "RePoseRenderPose"} <= set(pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["RePoseRenderPose"] == "RePose Render Pose"
    # every node class is a valid V1 node
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert callable(getattr(cls(), cls.FUNCTION)), key
        assert isinstance(cls.INPUT_TYPES(), dict), key


def test_repose_core_imports_without_comfyui(repo_root):
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import repose_core
        for m in pkgutil.walk_packages(repose_core.__path__, "repose_core."):
            try:
                importlib.import_module(m.name)
            except ImportError:
                pass  # an optional dependency of that module; its own tests cover it
        leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("comfy", "folder_paths", "comfy_extras"))
        assert not leaked, leaked
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# Node collection: one broken module never stops the pack


def make_node_package(tmp_path, name):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    node = textwrap.dedent("""
        class {cls}:
            CATEGORY = "test"
            FUNCTION = "run"
            RETURN_TYPES = ()
            @classmethod
            def INPUT_TYPES(cls):
                return {{"required": {{}}}}
            def run(self):
                return ()
        NODE_CLASS_MAPPINGS = {{"{key}": {cls}}}
        NODE_DISPLAY_NAME_MAPPINGS = {{"{key}": "{key} display"}}
    """)
    (pkg / "good_nodes.py").write_text(node.format(cls="Good", key="Good"))
    (pkg / "broken_nodes.py").write_text("import not_installed_dependency_xyz\n" + node.format(cls="B", key="Broken"))
    (pkg / "crash_nodes.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    (pkg / "zz_dup_nodes.py").write_text(node.format(cls="Dup", key="Good"))
    (pkg / "helpers.py").write_text("raise AssertionError('helper modules must not be imported by the collector')\n")
    return pkg


def test_broken_node_modules_are_logged_and_skipped(pack, tmp_path, monkeypatch, caplog):
    name = f"fake_nodes_{uuid.uuid4().hex}"
    pkg = make_node_package(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="repose"):
        classes, names, failures = pack.nodes.collect_node_mappings(name, [str(pkg)])
    assert list(classes) == ["Good"] and classes["Good"].__module__ == f"{name}.good_nodes"  # first one kept
    assert names == {"Good": "Good display"}
    assert set(failures) == {"broken_nodes", "crash_nodes"}
    assert failures["broken_nodes"] == "ModuleNotFoundError: No module named 'not_installed_dependency_xyz'"
    assert failures["crash_nodes"].startswith("RuntimeError: operator torchvision::nms")
    logged = caplog.text
    assert "node module 'broken_nodes' failed to import" in logged
    assert "node module 'crash_nodes' failed to import" in logged
    assert "'Good' of module 'zz_dup_nodes' is already defined" in logged


def test_real_pack_loads_when_a_node_module_dependency_is_broken(repo_root, monkeypatch, caplog):
    """Break the pose toolkit the pose nodes depend on: the pack still imports, without those nodes."""
    name = f"{repo_root}_x_broken{uuid.uuid4().hex}".replace(".", "_x_")
    monkeypatch.setitem(sys.modules, f"{name}.repose_core.pose", None)  # import of it raises ImportError
    with caplog.at_level(logging.ERROR, logger="repose"):
        broken = import_pack_like_comfyui(repo_root, name)
    assert "pose_nodes" in broken.nodes.IMPORT_FAILURES
    assert "RePoseRenderPose" not in broken.NODE_CLASS_MAPPINGS
    assert "node module 'pose_nodes' failed to import" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# nodes/utils.py


def test_image_layout_round_trip(pack):
    u = pack.nodes.utils
    image = torch.rand(2, 5, 7, 3)                        # ComfyUI IMAGE (B,H,W,C) in [0,1]
    core = u.comfy_image_to_core(image)
    assert core.shape == (2, 3, 5, 7) and core.min() >= -1 and core.max() <= 1
    torch.testing.assert_close(core[:, :, 1, 2], image[:, 1, 2, :] * 2 - 1)
    torch.testing.assert_close(u.core_to_comfy_image(core), image)
    assert u.comfy_image_to_core(torch.rand(1, 4, 4, 4)).shape == (1, 3, 4, 4)     # alpha dropped
    grey = u.comfy_image_to_core(torch.full((1, 2, 2, 1), 0.5))
    assert grey.shape == (1, 3, 2, 2) and torch.all(grey == 0)
    assert u.core_to_comfy_image(torch.full((1, 3, 2, 2), 5.0)).max() == 1.0      # clamped


@pytest.mark.parametrize("bad, words", [
    (torch.rand(5, 7, 3), "shape (batch, height, width, channels)"),
    (torch.rand(1, 5, 7, 2), "2 channels"),
    (np.zeros((1, 5, 7, 3)), "ndarray"),
])
def test_image_conversion_rejects_bad_input(pack, bad, words):
    with pytest.raises(pack.repose_core.errors.InputError, match="input 'source'") as e:
        pack.nodes.utils.comfy_image_to_core(bad, name="source")
    assert words in str(e.value)


def test_user_errors_become_clean_node_errors(pack):
    u, errors = pack.nodes.utils, pack.repose_core.errors

    @u.reports_user_errors
    def node_fn(kind):
        if kind == "user":
            raise errors.PoseFormatError("bad keypoint count", file="a.json", line=3, field="people[0]")
        raise KeyError("bug")

    with pytest.raises(u.RePoseNodeError) as e:
        node_fn("user")
    assert str(e.value) == "PoseFormatError: bad keypoint count (file a.json, line 3, field 'people[0]')"
    assert isinstance(e.value.__cause__, errors.PoseFormatError)
    assert u.RePoseNodeError.__module__ == "repose"      # ComfyUI shows 'repose.RePoseNodeError'
    with pytest.raises(KeyError):                         # bugs are not disguised as user errors
        node_fn("bug")


@pytest.fixture
def fake_comfy(monkeypatch):
    """Minimal comfy.utils.ProgressBar + comfy.model_management interrupt flag."""
    calls = []

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total))

    class Interrupted(Exception):
        pass

    state = types.SimpleNamespace(interrupted=False, calls=calls, Interrupted=Interrupted)

    def throw_exception_if_processing_interrupted():
        if state.interrupted:
            state.interrupted = False
            raise Interrupted()

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    return state


def test_comfy_progress_updates_bar_and_honours_interrupt(pack, fake_comfy):
    progress = pack.nodes.utils.comfy_progress(4)
    progress()
    progress(3)
    progress({"i": 1, "x": None})
    progress(99)
    assert fake_comfy.calls == [(1, 4), (3, 4), (2, 4), (4, 4)]
    fake_comfy.interrupted = True
    with pytest.raises(fake_comfy.Interrupted):
        progress()
    assert fake_comfy.calls[-1] == (4, 4)                 # no update after the interrupt


def test_register_model_folder_keeps_existing_paths_and_filters(pack, monkeypatch, tmp_path):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"repose": (["/extra/repose"], set())}
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    paths = pack.nodes.utils.register_model_folder("repose", ["safetensors", ".pt"])
    assert paths == [str(tmp_path / "models" / "repose"), "/extra/repose"]
    assert fp.folder_names_and_paths["repose"] == (paths, {".safetensors", ".pt"})
    assert (tmp_path / "models" / "repose").is_dir()
    again = pack.nodes.utils.register_model_folder("repose", [".safetensors"])   # idempotent, no duplicates
    assert again == paths and fp.folder_names_and_paths["repose"][1] == {".safetensors"}
    pack.nodes.utils.register_model_folder("pose_estimators", [".pth"])
    assert fp.folder_names_and_paths["pose_estimators"][0] == [str(tmp_path / "models" / "pose_estimators")]


# ----------------------------------------------------------------------------------------------------------------
# Pose nodes (called directly)


def test_load_pose_json_text_and_file(pack, tmp_path):
    pn = pack.nodes.pose_nodes
    from_text = pn.load_pose_keypoint(json.dumps(pose_keypoint(64, 128)))
    assert from_text[0]["canvas_width"] == 64 and from_text[0]["canvas_height"] == 128
    assert from_text[0]["people"][0]["pose_keypoints_2d"][:3] == pytest.approx([32.0, 25.6, 1.0])  # pixels
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "p.json").write_text(json.dumps(pose_keypoint(64, 128)))
    from_file = pn.load_pose_keypoint("poses/p.json", input_dir=str(tmp_path))
    assert from_file == from_text
    single_frame = pn.load_pose_keypoint(json.dumps(pose_keypoint(64, 128)[0]))   # a bare frame dict
    assert single_frame == from_text


@pytest.mark.parametrize("text, words", [
    ("", "input 'pose_json' is empty"),
    ("{not json", "malformed JSON"),
    ("../secret.json", "outside ComfyUI's input directory"),
    ("missing.json", "no file 'missing.json'"),
    ("notes.md", "not a pose file"),
])
def test_load_pose_json_bad_input(pack, tmp_path, text, words):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.md").write_text("hi")
    (tmp_path / "secret.json").write_text("[]")
    node = pack.NODE_CLASS_MAPPINGS["RePoseLoadPoseJSON"]()
    u = pack.nodes.utils
    with pytest.raises(pack.repose_core.errors.ReposeError, match=words.replace("(", r"\(")):
        pack.nodes.pose_nodes.load_pose_keypoint(text, input_dir=str(tmp_path / "in"))
    if text.startswith("{") or not text:   # the node surfaces the same message cleanly
        with pytest.raises(u.RePoseNodeError, match=words):
            node.load(text)


def test_render_pose_sizes_and_styles(pack):
    node = pack.NODE_CLASS_MAPPINGS["RePoseRenderPose"]()
    pk = pack.nodes.pose_nodes.load_pose_keypoint(json.dumps(pose_keypoint(64, 128) * 2))
    for style in ("openpose", "humansd", "pidm_rgb"):
        (image,) = node.render(pk, style, 96, 0)
        assert image.shape == (2, 128, 96, 3) and image.dtype == torch.float32       # height 0 = canvas height
        assert 0 <= image.min() and image.max() <= 1 and (image.sum(-1) > 0).float().mean() > 0.05
    (canvas,) = node.render(pk, "openpose", 0, 0)
    assert canvas.shape == (2, 128, 64, 3)


def test_render_pose_bad_input(pack):
    node = pack.NODE_CLASS_MAPPINGS["RePoseRenderPose"]()
    u = pack.nodes.utils
    mixed = pose_keypoint(64, 128) + pose_keypoint(32, 32)
    with pytest.raises(u.RePoseNodeError, match="set width and height"):
        node.render(mixed, "openpose", 0, 0)
    assert node.render(mixed, "openpose", 40, 40)[0].shape == (2, 40, 40, 3)
    with pytest.raises(u.RePoseNodeError, match="accepted: openpose, humansd, pidm_rgb"):
        node.render(pose_keypoint(), "sketch", 0, 0)
    with pytest.raises(u.RePoseNodeError, match="holds no frame"):
        node.render([], "openpose", 0, 0)
    with pytest.raises(u.RePoseNodeError, match="canvas_width"):
        node.render([{"people": []}], "openpose", 0, 0)
