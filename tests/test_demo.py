"""README command 1 (`python -m repose_core.demo`): end to end on the bundled examples and on user files.

These runs use a folder without weights, so they exercise the documented fallback (tiny random models + a notice);
tests/test_shipped_weights.py runs the demo on the shipped weights."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from repose_core import demo
from repose_core.pose import (
    PoseFrame, load_pose_file, read_patn_annotations, resize_pose, write_openpose_json, write_patn_annotations,
)

FILES_PER_ITEM = ("full_guided", "full_unguided", "b1", "warped")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example_dir(repo_root):
    return repo_root / "repose_core" / "synthetic" / "examples"


def _run(argv, capsys):
    code = demo.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_bundled_examples_end_to_end_with_random_fallback(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, stderr = _run(["--out", str(out), "--weights-dir", str(tmp_path / "no_weights"), "--steps", "3",
                                 "--examples", "0,2", "--no-progress"], capsys)
    assert code == 0
    assert "TINY RANDOM" in stderr and "TRAINING.md" in stderr
    assert "RANDOM models" in stdout
    for name in ("example_0", "example_2"):
        for suffix in FILES_PER_ITEM:
            img = np.asarray(Image.open(out / f"{name}_{suffix}.png"))
            assert img.shape == (64, 44, 3)
    sheet = Image.open(out / "contact_sheet.png")
    # 7 columns (6 + ground truth) of 44*3 px (+2 px gaps), 2 rows of 64*3 px under a 14 px header
    assert sheet.size == (7 * (44 * 3 + 2) + 2, 14 + 2 * (64 * 3 + 2) + 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_models"] is True and summary["items"] == ["example_0", "example_2"]
    first, last = summary["guidance_energy_first_last"]
    assert len(first) == len(last) == 2


def test_final_timestep_option_reaches_every_model(tmp_path, capsys):
    """--final-timestep stops every model's sampling there (fewer steps, another result) and is recorded."""
    runs = {}
    for t in (0, 600):
        out = tmp_path / f"t{t}"
        code, _, _ = _run(["--out", str(out), "--weights-dir", str(tmp_path / "none"), "--steps", "4", "--examples",
                           "0", "--no-progress", "--final-timestep", str(t)], capsys)
        assert code == 0 and json.loads((out / "summary.json").read_text())["final_timestep"] == t
        runs[t] = {s: np.asarray(Image.open(out / f"example_0_{s}.png")) for s in ("b1", "full_unguided")}
    for s in ("b1", "full_unguided"):
        assert not np.array_equal(runs[0][s], runs[600][s]), s


def test_user_image_and_openpose_json_with_retarget(tmp_path, capsys, example_dir):
    # a 128x88 photo and a target pose on another canvas (the 64x44 example's)
    src = example_dir / "128x88" / "source_3.png"
    pose_file = tmp_path / "target.json"
    target = load_pose_file(example_dir / "64x44" / "target_pose_1.json")[0]
    write_openpose_json(pose_file, target)
    src_pose = tmp_path / "source_pose.json"
    write_openpose_json(src_pose, load_pose_file(example_dir / "128x88" / "source_pose_3.json")[0])
    out = tmp_path / "mine"
    code, _, _ = _run(["--out", str(out), "--weights-dir", str(tmp_path / "none"), "--source", str(src),
                       "--pose", str(pose_file), "--source-pose", str(src_pose), "--retarget", "--steps", "3",
                       "--no-progress"], capsys)
    assert code == 0
    result = np.asarray(Image.open(out / "source_3_full_guided.png"))
    assert result.shape == (128, 88, 3)            # back at the source's own size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == ["source_3"] and summary["retarget"] is True
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] == 6 * (44 * 3 + 2) + 2   # no ground truth column for a user image


def test_deepfashion_annotation_pose(tmp_path, capsys, example_dir):
    src = example_dir / "64x44" / "source_0.png"
    pose = load_pose_file(example_dir / "64x44" / "target_pose_0.json")[0].people[0]
    ann = tmp_path / "fasion-resize-annotation-test.csv"
    write_patn_annotations(ann, {"wanted.jpg": resize_pose(pose, 176, 256)})   # the csv's frame is 256x176
    code, _, _ = _run(["--out", str(tmp_path / "o"), "--weights-dir", str(tmp_path / "none"), "--source", str(src),
                       "--pose", str(ann), "--image-name", "wanted.jpg", "--steps", "3", "--no-progress"], capsys)
    assert code == 0
    # the annotation's pose is the one used: the same pose as an OpenPose JSON gives the same images
    as_json = tmp_path / "same.json"
    read_back = read_patn_annotations(ann)["wanted.jpg"]                 # PATN's 176x256 frame
    write_openpose_json(as_json, PoseFrame([read_back], read_back.width, read_back.height))
    code, _, _ = _run(["--out", str(tmp_path / "j"), "--weights-dir", str(tmp_path / "none"), "--source", str(src),
                       "--pose", str(as_json), "--steps", "3", "--no-progress"], capsys)
    assert code == 0
    for suffix in ("full_guided", "warped"):
        a, b = (np.asarray(Image.open(tmp_path / d / f"source_0_{suffix}.png")) for d in ("o", "j"))
        np.testing.assert_array_equal(a, b)
    code, _, err = _run(["--out", str(tmp_path / "x"), "--weights-dir", str(tmp_path / "none"), "--source", str(src),
                         "--pose", str(ann), "--image-name", "other.jpg", "--steps", "3", "--no-progress"], capsys)
    assert code == 2 and "other.jpg" in err


def test_bad_invocations_are_reported(tmp_path, capsys, example_dir):
    with pytest.raises(SystemExit) as e:
        demo.main(["--source", str(example_dir / "64x44" / "source_0.png")])
    assert e.value.code == 2
    assert "--source and --pose go together" in capsys.readouterr().err
    code, _, err = _run(["--out", str(tmp_path), "--weights-dir", str(tmp_path), "--source", str(tmp_path / "nope.png"),
                         "--pose", str(example_dir / "64x44" / "target_pose_0.json")], capsys)
    assert code == 2 and "source image not found" in err
    empty = tmp_path / "empty.json"
    write_openpose_json(empty, PoseFrame([], 44, 64))
    code, _, err = _run(["--out", str(tmp_path), "--weights-dir", str(tmp_path), "--source",
                         str(example_dir / "64x44" / "source_0.png"), "--pose", str(empty)], capsys)
    assert code == 2 and "no person" in err
    code, _, err = _run(["--out", str(tmp_path), "--weights-dir", str(tmp_path), "--examples", "7"], capsys)
    assert code == 2 and "0..3" in err


def test_module_entry_point_prints_help(repo_root):
    r = subprocess.run([sys.executable, "-m", "repose_core.demo", "--help"], cwd=repo_root, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    assert "--source" in r.stdout and "--retarget" in r.stdout and "contact_sheet.png" in r.stdout
