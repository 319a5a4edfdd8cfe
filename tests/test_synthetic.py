"""Procedural pose-transfer dataset (repose_core.synthetic): determinism, splits, geometry, textures, files, errors."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repose_core.errors import EmptyPoseError, InputError
from repose_core.pose import Pose
from repose_core.pose.formats import from_pose_keypoint, read_patn_annotations, read_patn_pairs
from repose_core.synthetic import (
    PART_NAMES, generate_dataset, pose_from_params, render_figure, render_figure_with_labels, sample_identity,
    sample_pose, sample_pose_params,
)
from repose_core.synthetic.dataset import identity_rng, render_identity_poses
from repose_core.synthetic.identity import Background
from repose_core.synthetic.pose_prior import J
from repose_core.synthetic.textures import render_background

TORSO, BG = PART_NAMES.index("torso"), -1


def _tiny(out, seed=3, **kw):
    args = dict(size=(64, 44), n_train_ids=2, n_test_ids=1, poses_per_id=2, seed=seed)
    args.update(kw)
    return generate_dataset(out, **args)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _person(k: int, view=None, kind=None, H=128, W=88):
    rng = np.random.default_rng([99, k])
    identity = sample_identity(rng)
    return identity, sample_pose(rng, H, W, identity, kind=kind, view=view)


# ----------------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(tmp_path):
    _tiny(tmp_path / "a")
    _tiny(tmp_path / "b")
    _tiny(tmp_path / "c", seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 3 + 5 and a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)


def test_same_seed_gives_the_same_poses_at_every_size():
    for k in range(3):
        _, small, _ = render_identity_poses(5, "train", k, 2, 64, 44)
        _, large, _ = render_identity_poses(5, "train", k, 2, 256, 176)
        for p, q in zip(small, large):
            np.testing.assert_allclose(q.keypoints[:, :2], 4 * p.keypoints[:, :2], atol=1e-3)
            np.testing.assert_array_equal(q.keypoints[:, 2], p.keypoints[:, 2])


def test_test_identities_are_disjoint_from_training(tmp_path):
    _tiny(tmp_path, n_train_ids=4, n_test_ids=3)
    train = read_patn_pairs(tmp_path / "fasion-resize-pairs-train.csv")
    test = read_patn_pairs(tmp_path / "fasion-resize-pairs-test.csv")
    ident = lambda name: name.rsplit("_", 1)[0]  # noqa: E731  synth_<split>_id00012_<pose>.png -> identity
    train_ids = {ident(n) for pair in train for n in pair}
    test_ids = {ident(n) for pair in test for n in pair}
    assert len(train_ids) == 4 and len(test_ids) == 3 and not train_ids & test_ids
    assert all(ident(a) == ident(b) and a != b for a, b in train + test)   # a pair = one person, two poses
    # not only the names: the people themselves differ (their own random streams)
    people = [sample_identity(identity_rng(3, s, i)) for s, n in (("train", 4), ("test", 3)) for i in range(n)]
    assert len({repr(p) for p in people}) == len(people)


# ----------------------------------------------------------------------------------------------------------------
# Geometry: keypoints on the body, occlusion, views


def test_visible_keypoints_land_on_the_rendered_body():
    on_label, differs, total = 0, 0, 0
    for k in range(16):
        identity, pose = _person(k)
        img, labels = render_figure_with_labels(identity, pose, 128, 88)
        bg = (render_background(identity.background, 128, 88) * 255).round()
        for x, y, c in pose.keypoints:
            if c <= 0:
                continue
            xi, yi = int(round(x)), int(round(y))
            total += 1
            on_label += labels[yi, xi] != BG
            differs += np.abs(img[yi, xi].astype(float) - bg[yi, xi]).max() > 12
    assert total > 16 * 14
    assert on_label / total > 0.97, on_label / total
    assert differs / total > 0.8, differs / total


def test_back_view_hides_the_face_and_front_view_shows_it():
    for k in range(6):
        _, back = _person(k, view="back")
        _, front = _person(k, view="front")
        assert (back.keypoints[[J["nose"], J["right_eye"], J["left_eye"]], 2] == 0).all()
        assert (back.keypoints[[J["nose"], J["right_eye"], J["left_eye"]], :2] == 0).all()
        assert (front.keypoints[[J["nose"], J["right_eye"], J["left_eye"]], 2] == 1).all()
        # mirror-image shoulder order: the person's left shoulder is on the image right only when facing us
        assert front.keypoints[J["left_shoulder"], 0] > front.keypoints[J["right_shoulder"], 0]
        assert back.keypoints[J["left_shoulder"], 0] < back.keypoints[J["right_shoulder"], 0]


def test_arms_across_the_body_are_in_front_in_a_front_view_and_hidden_in_a_back_view():
    def wrist_labels(view):
        hits = []
        for k in range(8):
            rng = np.random.default_rng([7, k])
            identity = sample_identity(rng)
            params = sample_pose_params(rng, kind="arms_front", view="front")
            params.view, params.yaw = view, 0.0 if view == "front" else 180.0
            pose = pose_from_params(params, identity, 128, 88)
            _, labels = render_figure_with_labels(identity, pose, 128, 88)
            for side in ("right", "left"):
                x, y, _ = pose.keypoints[J[f"{side}_wrist"]]
                hits.append(PART_NAMES[labels[int(round(y)), int(round(x))]])
        return hits
    front, back = wrist_labels("front"), wrist_labels("back")
    assert sum(h.endswith(("arm", "hand")) for h in front) >= 0.7 * len(front), front
    assert sum(h.endswith(("arm", "hand")) for h in back) <= 0.3 * len(back), back


# ----------------------------------------------------------------------------------------------------------------
# Textures follow the body


def _plain(identity):
    return dataclasses.replace(identity, background=Background("plain", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0.1, 0.0, 0))


def test_texture_moves_with_the_body_not_with_the_image():
    """Shift the pose by whole pixels: every figure pixel (pattern included) moves by exactly that shift."""
    for k in range(4):
        identity, pose = _person(k)
        identity = _plain(identity)
        moved = pose.copy()
        moved.keypoints[moved.keypoints[:, 2] > 0, :2] += (3.0, -2.0)
        a, la = render_figure_with_labels(identity, pose, 128, 88)
        b, lb = render_figure_with_labels(identity, moved, 128, 88)
        np.testing.assert_array_equal(b[8:-8, 8:-8], a[10:-6, 5:-11])
        np.testing.assert_array_equal(lb[8:-8, 8:-8], la[10:-6, 5:-11])


def _torso_top_mean(identity, pose):
    """Mean colour of the visible torso pixels in the upper half of the torso (the top garment)."""
    img, labels = render_figure_with_labels(identity, pose, 128, 88)
    kp = pose.keypoints
    neck, hip = kp[J["neck"], :2], kp[[J["right_hip"], J["left_hip"]], :2].mean(axis=0)
    ys, xs = np.mgrid[0:128, 0:88]
    axis = hip - neck
    t = ((xs - neck[0]) * axis[0] + (ys - neck[1]) * axis[1]) / (axis @ axis)
    m = (labels == TORSO) & (t > 0.1) & (t < 0.55)
    return img[m].astype(float).mean(axis=0) / 255, m.sum()


def test_same_garment_in_two_poses_has_the_same_colour_and_other_people_differ():
    same, other, means = [], [], []
    for k in range(10):
        rng = np.random.default_rng([11, k])
        identity = sample_identity(rng)
        poses = [sample_pose(rng, 128, 88, identity, kind=kind, view="front") for kind in ("standing", "walking")]
        (m0, n0), (m1, n1) = (_torso_top_mean(identity, p) for p in poses)
        assert n0 > 100 and n1 > 100
        same.append(np.abs(m0 - m1).mean())
        means.append(m0)
    for i in range(len(means)):
        other += [np.abs(means[i] - means[j]).mean() for j in range(i + 1, len(means))]
    assert np.median(same) < 0.03 and max(same) < 0.08, same
    assert np.median(other) > 4 * np.median(same), (np.median(other), np.median(same))


# ----------------------------------------------------------------------------------------------------------------
# Files


def test_csv_and_manifest_parse_back_in_the_patn_layout(tmp_path):
    manifest = _tiny(tmp_path, n_train_ids=2, n_test_ids=1, poses_per_id=3)
    H, W = 64, 44
    assert json.loads((tmp_path / "dataset.json").read_text()) == manifest
    assert manifest["size"] == {"height": H, "width": W}
    for split, n_ids in (("train", 2), ("test", 1)):
        with open(tmp_path / f"fasion-resize-pairs-{split}.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["from", "to"] and len(rows) - 1 == n_ids * 3 * 2
        lines = (tmp_path / f"fasion-resize-annotation-{split}.csv").read_text().splitlines()
        assert lines[0] == "name:keypoints_y:keypoints_x"
        for line in lines[1:]:
            name, ys, xs = line.split(":")
            ys, xs = json.loads(ys), json.loads(xs)
            assert len(ys) == len(xs) == 18 and all(isinstance(v, int) for v in ys + xs)
            assert all((y == -1) == (x == -1) for y, x in zip(ys, xs))
            assert all(-1 <= y < H for y in ys) and all(-1 <= x < W for x in xs)
            img = Image.open(tmp_path / f"{split}_highres" / name.strip())
            assert img.size == (W, H) and img.mode == "RGB"
        poses = read_patn_annotations(tmp_path / f"fasion-resize-annotation-{split}.csv", height=H, width=W)
        assert len(poses) == n_ids * 3 and {a for a, _ in read_patn_pairs(
            tmp_path / f"fasion-resize-pairs-{split}.csv")} == set(poses)
    assert manifest["counts"]["train"] == {"identities": 2, "images": 6, "pairs": 12}


@pytest.mark.parametrize("size", [(64, 44), (128, 88), (256, 176)])
def test_every_standard_size_renders(size):
    H, W = size
    identity, poses, images = render_identity_poses(0, "test", 1, 2, H, W)
    for pose, img in zip(poses, images):
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert (pose.width, pose.height) == (W, H)
        vis = pose.keypoints[:, 2] > 0
        assert (pose.keypoints[vis, 0] >= 0).all() and (pose.keypoints[vis, 0] < W).all()
        assert (pose.keypoints[vis, 1] >= 0).all() and (pose.keypoints[vis, 1] < H).all()
        assert img.std() > 10      # a figure on a backdrop, not a flat image


def test_renderer_accepts_the_pose_on_a_canvas_of_the_same_aspect():
    identity, pose = _person(0, H=64, W=44)
    big = Pose(pose.keypoints * np.array([2, 2, 1], np.float32), width=88, height=128)
    np.testing.assert_array_equal(render_figure(identity, pose, 128, 88), render_figure(identity, big, 128, 88))


def test_bundled_examples_are_up_to_date(tmp_path, repo_root):
    from repose_core.synthetic.make_examples import EXAMPLES_DIR, write_examples

    written = write_examples(tmp_path)
    total = 0
    for rel in written:
        bundled = EXAMPLES_DIR / rel
        assert bundled.is_file(), f"{bundled} missing: run python -m repose_core.synthetic.make_examples"
        assert bundled.read_bytes() == (tmp_path / rel).read_bytes(), \
            f"{bundled} is stale: run python -m repose_core.synthetic.make_examples"
        total += bundled.stat().st_size
    assert total < 200 * 1024
    frames = from_pose_keypoint(json.loads((EXAMPLES_DIR / "64x44" / "target_pose_0.json").read_text()))
    assert frames[0].width == 44 and frames[0].height == 64 and len(frames[0].people) == 1


# ----------------------------------------------------------------------------------------------------------------
# CLI and bad input


def _cli():
    path = Path(__file__).resolve().parents[1] / "train" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_a_dataset(tmp_path, capsys):
    cli = _cli()
    rc = cli.main(["--out", str(tmp_path), "--size", "64x44", "--train-ids", "2", "--test-ids", "1",
                   "--poses-per-id", "2", "--seed", "0", "--quiet"])
    assert rc == 0
    assert len(list((tmp_path / "train_highres").glob("*.png"))) == 4
    assert len(list((tmp_path / "test_highres").glob("*.png"))) == 2
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--size", "64by44"], "--size must be HxW"),
    (["--poses-per-id", "1"], "poses_per_id must be an integer >= 2"),
    (["--size", "8x4"], "size H must be an integer >= 16"),
])
def test_cli_rejects_bad_arguments_with_a_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        _cli().main(["--out", str(tmp_path), "--quiet"] + args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_generate_refuses_to_mix_with_an_existing_dataset(tmp_path):
    _tiny(tmp_path)
    with pytest.raises(InputError, match="overwrite=True"):
        _tiny(tmp_path)
    _tiny(tmp_path, n_train_ids=1, n_test_ids=1, overwrite=True)    # replaces, leaving no stale images behind
    assert len(list((tmp_path / "train_highres").glob("*.png"))) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(size="64x44"), "size must be"),
    (dict(size=(64, 44, 3)), "size must be"),
    (dict(n_train_ids=-1), "n_train_ids"),
    (dict(n_train_ids=0, n_test_ids=0), "nothing to generate"),
    (dict(seed=1.5), "seed"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        _tiny(tmp_path, **kwargs)


def test_renderer_rejects_unusable_poses():
    identity, pose = _person(0)
    no_neck = pose.copy()
    no_neck.keypoints[J["neck"]] = 0
    with pytest.raises(EmptyPoseError, match="neck"):
        render_figure(identity, no_neck, 128, 88)
    with pytest.raises(InputError, match="aspect"):
        render_figure(identity, pose, 128, 128)
    coco = Pose(np.zeros((17, 3), np.float32), width=88, height=128, layout="coco17")
    with pytest.raises(InputError, match="coco17_to_openpose18"):
        render_figure(identity, coco, 128, 88)
    with pytest.raises(InputError, match="H must be"):
        render_figure(identity, pose, 8, 88)
    with pytest.raises(InputError, match="unknown pose kind 'dancing'"):
        sample_pose(np.random.default_rng(0), 128, 88, identity, kind="dancing")
    with pytest.raises(InputError, match="unknown view"):
        sample_pose(np.random.default_rng(0), 128, 88, identity, view="top")


def test_hand_built_identity_with_an_unknown_pattern_is_named_in_the_error():
    identity, pose = _person(0)
    bad = dataclasses.replace(identity, top=dataclasses.replace(identity.top, pattern="paisley"))
    with pytest.raises(InputError, match="unknown texture pattern 'paisley'; accepted: solid"):
        render_figure(bad, pose, 128, 88)
    bad = dataclasses.replace(identity, background=dataclasses.replace(identity.background, kind="beach"))
    with pytest.raises(InputError, match="unknown background kind 'beach'"):
        render_figure(bad, pose, 128, 88)
