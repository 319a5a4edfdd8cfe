"""train.data: the three pair layouts, HumanSD, PIDM augmentations with consistent keypoints, bad files."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import (
    Augment, DataFileError, HumanSDDataset, PoseTransferDataset, hflip, load_humansd_records, load_records,
    scale_crop, swap_pair_batch,
)
from repose_core.errors import InputError
from repose_core.pose import (
    Pose, PoseFrame, write_gfla_pairs, write_gfla_pose, write_humansd_npz, write_patn_annotations, write_patn_pairs,
)


def _pose(w, h, seed=0):
    rng = np.random.default_rng(seed)
    kp = np.zeros((18, 3), np.float32)
    kp[:, 0] = rng.uniform(4, w - 4, 18)
    kp[:, 1] = rng.uniform(4, h - 4, 18)
    kp[:, 2] = 1
    kp[16] = 0                            # one missing joint
    return Pose(kp, w, h, "openpose18")



def test_patn_layout_items(synth):
    records = load_records(synth, "patn", "train")
    assert len(records) == 4                                    # 2 ids x 2 ordered pairs
    ds = PoseTransferDataset(records, (64, 44), pose_size=(32, 22))
    item = ds[0]
    assert item["source"].shape == item["target"].shape == (3, 64, 44)
    assert -1 <= item["source"].min() and item["source"].max() <= 1
    assert item["target_pose_map"].shape == (20, 32, 22)
    assert item["target_keypoints"].shape == (18, 3)
    # no augmentation: keypoints are the annotation (its frame is the image's, per dataset.json)
    ann = records[0].target_pose.pose
    torch.testing.assert_close(item["target_keypoints"], torch.from_numpy(ann.keypoints))
    assert item["pair"] == "fasion-resize-pairs-train.csv line 2"


def test_patn_annotations_rescaled_to_image(tmp_path):
    """Standard PATN files: keypoints in a 256x176 frame, images of any size of that aspect (e.g. 512x352)."""
    (tmp_path / "train").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((512, 352, 3), 200, np.uint8)).save(tmp_path / "train" / name)
    write_patn_pairs(tmp_path / "fasion-resize-pairs-train.csv", [("a.jpg", "b.jpg")])
    pose = _pose(176, 256)
    write_patn_annotations(tmp_path / "fasion-resize-annotation-train.csv", {"a.jpg": pose, "b.jpg": pose})
    ds = PoseTransferDataset(load_records(tmp_path, "patn", "train"), (128, 88))
    kp = ds[0]["target_keypoints"].numpy()
    vis = pose.keypoints[:, 2] > 0
    expected = np.round(pose.keypoints[vis, :2]) * 0.5           # 256x176 -> 128x88 (the csv stores integers)
    np.testing.assert_allclose(kp[vis, :2], expected, atol=1e-4)


def test_gfla_layout(tmp_path):
    """PIDM/GFLA: `target,src1,src2` lines, img/... paths, pose/....txt in the 40-px padded 256x256 frame."""
    entries = [f"img/WOMEN/Dresses/id_0000{i}/01_1_front.jpg" for i in range(3)]
    poses = {}
    for i, e in enumerate(entries):
        (tmp_path / e).parent.mkdir(parents=True)
        Image.fromarray(np.full((256, 176, 3), 50 * i, np.uint8)).save(tmp_path / e)
        poses[e] = _pose(176, 256, seed=i)
        txt = tmp_path / e.replace("img/", "pose/").replace(".jpg", ".txt")
        txt.parent.mkdir(parents=True)
        write_gfla_pose(txt, poses[e])
    write_gfla_pairs(tmp_path / "train_pairs.txt", [(entries[0], [entries[1], entries[2]])])
    records = load_records(tmp_path, "gfla", "train")
    assert len(records) == 1 and len(records[0].sources) == 2
    ds = PoseTransferDataset(records, (256, 176))
    item = ds[0]
    vis = poses[entries[0]].keypoints[:, 2] > 0
    np.testing.assert_allclose(item["target_keypoints"].numpy()[vis, :2], poses[entries[0]].keypoints[vis, :2],
                               atol=1e-3)
    src_value = float(item["source"].mean())                     # one of the two sources, chosen by the item seed
    assert any(abs(src_value - (50 * i / 127.5 - 1)) < 1e-4 for i in (1, 2))


def test_market_layout(tmp_path):
    (tmp_path / "train").mkdir()
    for name in ("0001_c1.jpg", "0001_c2.jpg"):
        Image.fromarray(np.full((128, 64, 3), 90, np.uint8)).save(tmp_path / "train" / name)
    write_patn_pairs(tmp_path / "market-pairs-train.csv", [("0001_c1.jpg", "0001_c2.jpg")])
    pose = _pose(64, 128)
    write_patn_annotations(tmp_path / "market-annotation-train.csv", {"0001_c1.jpg": pose, "0001_c2.jpg": pose})
    ds = PoseTransferDataset(load_records(tmp_path, "market", "train"), (128, 64))
    item = ds[0]
    assert item["source"].shape == (3, 128, 64)
    torch.testing.assert_close(item["source"], torch.full((3, 128, 64), 90 / 127.5 - 1))   # the image, in [-1, 1]
    vis = pose.keypoints[:, 2] > 0
    np.testing.assert_allclose(item["target_keypoints"].numpy()[vis, :2], np.round(pose.keypoints[vis, :2]),
                               atol=1e-4)                        # Market's csv frame is the 128x64 image itself


def _marked(H, W, pose):
    """An image with a distinct colour square at every visible keypoint."""
    img = np.zeros((H, W, 3), np.uint8)
    for j, (x, y, c) in enumerate(pose.keypoints):
        if c > 0:
            img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = (10 * j + 5, 255 - 10 * j, 128)
    return img


@pytest.mark.parametrize("op", ["flip", "scale_crop"])
def test_augmentations_move_keypoints_with_the_image(op):
    H, W = 128, 88
    kp = np.zeros((18, 3), np.float32)
    kp[2] = (20.5, 40.5, 1)          # right shoulder
    kp[5] = (60.5, 40.5, 1)          # left shoulder
    pose = Pose(kp, W, H, "openpose18")
    img = _marked(H, W, pose)
    if op == "flip":
        out_img, out_pose = hflip(img, pose)
        # mirrored and relabelled: the joint now called "right shoulder" sits where the left one is mirrored to
        assert out_pose.keypoints[2, 0] == pytest.approx(W - 60.5)
    else:
        out_img, out_pose = scale_crop(img, pose, 0.05, 3, 2)
    assert out_img.shape == img.shape
    for j in (2, 5):
        x, y, _ = out_pose.keypoints[j]
        src_j = {2: 5, 5: 2}[j] if op == "flip" else j       # the colour belongs to the original joint
        colour = np.array((10 * src_j + 5, 255 - 10 * src_j, 128))
        r, c = int(round(y - 0.5)), int(round(x - 0.5))          # pixel holding the keypoint
        patch = out_img[r - 1:r + 2, c - 1:c + 2]
        assert np.abs(patch.reshape(-1, 3).astype(int) - colour).sum(axis=1).min() < 60, (op, j, patch)


def test_flip_decision_shared_by_source_and_target(synth):
    records = load_records(synth, "patn", "train")
    plain = PoseTransferDataset(records, (64, 44))
    flipped = PoseTransferDataset(records, (64, 44), augment=Augment(scale_jitter=0.0, flip_prob=1.0))
    a, b = plain[1], flipped[1]
    torch.testing.assert_close(b["source"], a["source"].flip(-1))
    torch.testing.assert_close(b["target"], a["target"].flip(-1))


def test_augmentation_is_deterministic_per_epoch_and_index(synth):
    records = load_records(synth, "patn", "train")
    ds = PoseTransferDataset(records, (64, 44), augment=Augment())
    first = [ds[i]["target_keypoints"] for i in range(4)]
    again = [ds[i]["target_keypoints"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    ds.set_epoch(1)
    assert not all(torch.equal(x, ds[i]["target_keypoints"]) for i, x in enumerate(first))


def test_swap_pair_batch():
    batch = {"source": torch.zeros(2, 1), "target": torch.ones(2, 1), "source_pose_map": torch.full((2, 1), 2.0),
             "target_pose_map": torch.full((2, 1), 3.0), "index": torch.tensor([0, 1]), "pair": ["a", "b"]}
    out = swap_pair_batch(batch)
    assert out["source"].flatten().tolist() == [0, 0, 1, 1]
    assert out["target"].flatten().tolist() == [1, 1, 0, 0]
    assert out["target_pose_map"].flatten().tolist() == [3, 3, 2, 2]
    assert out["pair"] == ["a", "b", "a", "b"]


# -- bad files -----------------------------------------------------------------------------------------------------

def _copy_synth(synth, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(synth, root)
    return root


def test_missing_image_is_reported_and_skipped(synth, tmp_path, caplog):
    root = _copy_synth(synth, tmp_path)
    victim = root / "train_highres" / "synth_train_id00000_1.png"
    victim.unlink()
    report = tmp_path / "report.jsonl"
    with caplog.at_level(logging.WARNING, logger="repose"):
        records = load_records(root, "patn", "train", report_path=str(report))
    assert len(records) == 2                  # both pairs of identity 0 need the missing image
    text = caplog.text
    assert str(victim) in text and "fasion-resize-pairs-train.csv line" in text
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert {x["file"] for x in lines} == {str(victim)} and all("line" in x["pair"] for x in lines)


def test_missing_image_is_fatal_with_strict(synth, tmp_path):
    root = _copy_synth(synth, tmp_path)
    victim = root / "train_highres" / "synth_train_id00001_0.png"
    victim.unlink()
    with pytest.raises(DataFileError) as e:
        load_records(root, "patn", "train", on_error="fatal")
    assert str(victim) in str(e.value) and "line" in str(e.value)
    assert e.value.file == str(victim)


def test_corrupt_image_skipped_at_load_time(synth, tmp_path, caplog):
    root = _copy_synth(synth, tmp_path)
    victim = root / "train_highres" / "synth_train_id00001_1.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = load_records(root, "patn", "train")            # exists: passes the scan
    report = tmp_path / "report.jsonl"
    ds = PoseTransferDataset(records, (64, 44), report_path=str(report))
    bad = [i for i, r in enumerate(records) if str(victim) in (r.target, *r.sources)]
    with caplog.at_level(logging.WARNING, logger="repose"):
        item = ds[bad[0]]
    assert item["index"] not in bad                            # replaced by the next readable pair
    assert str(victim) in caplog.text
    entry = json.loads(report.read_text().splitlines()[0])
    assert entry["file"] == str(victim) and "unreadable image" in entry["reason"]
    strict = PoseTransferDataset(records, (64, 44), on_error="fatal")
    with pytest.raises(DataFileError, match="unreadable image"):
        strict[bad[0]]


def test_unannotated_image_reported(synth, tmp_path, caplog):
    root = _copy_synth(synth, tmp_path)
    ann = root / "fasion-resize-annotation-train.csv"
    lines = [x for x in ann.read_text().splitlines() if not x.startswith("synth_train_id00000_0.png")]
    ann.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="repose"):
        records = load_records(root, "patn", "train")
    assert len(records) == 2 and "no keypoint annotation" in caplog.text


def test_layout_errors_are_actionable(tmp_path):
    with pytest.raises(InputError, match="fasion-resize-pairs-train.csv"):
        load_records(tmp_path, "patn", "train")
    with pytest.raises(InputError, match="accepted"):
        load_records(tmp_path, "lmdb", "train")


# -- HumanSD -------------------------------------------------------------------------------------------------------

def test_humansd_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "pose").mkdir()
    kp = np.zeros((17, 3), np.float32)
    kp[5], kp[6] = (30, 20, 0.9), (50, 20, 0.9)
    Image.fromarray(np.full((60, 80, 3), 120, np.uint8)).save(tmp_path / "images" / "0.jpg")
    write_humansd_npz(tmp_path / "pose" / "0.npz", PoseFrame([Pose(kp, 80, 60, "coco17")], 80, 60))
    (tmp_path / "map.json").write_text(json.dumps([
        {"img_path": "images/0.jpg", "pose_path": "pose/0.npz", "prompt": "a dancer"},
        {"img_path": "images/missing.jpg", "pose_path": "pose/0.npz", "prompt": "gone"}]))
    records = load_humansd_records(tmp_path / "map.json")      # the missing entry is reported and dropped
    assert len(records) == 1
    ds = HumanSDDataset(records, (32, 32), augment=False)
    item = ds[0]
    assert item["image"].shape == item["pose_image"].shape == (3, 32, 32)
    assert item["prompt"] == "a dancer" and item["keypoints"].shape == (10, 17, 3)
    # shorter side 60 -> 32, width 80 -> 43 (rounded), centre crop of 32 from 43: x -> x * 43/80 - 5
    np.testing.assert_allclose(item["keypoints"][0, 5, :2].numpy(), [30 * 43 / 80 - 5, 20 * 32 / 60], atol=1e-4)
    with pytest.raises(DataFileError, match="missing.jpg"):
        load_humansd_records(tmp_path / "map.json", on_error="fatal")


def test_preloaded_pairs_give_what_the_dataset_gives(synth):
    """--preload: the same source/target/pose maps as the un-augmented dataset, for the same pair indices."""
    from train.data import PreloadedPairs

    ds = PoseTransferDataset(load_records(synth, "patn", "train"), (64, 44))
    pre = PreloadedPairs(ds)
    assert len(pre) == len(ds)
    batch = pre.batch([2, 0])
    for j, i in enumerate([2, 0]):
        item = ds[i]
        for key in ("source", "target"):
            torch.testing.assert_close(batch[key][j], item[key], atol=1e-6, rtol=0)
        for key in ("source_pose_map", "target_pose_map"):  # stored as float16
            torch.testing.assert_close(batch[key][j], item[key], atol=1e-3, rtol=0)
    assert batch["index"] == [2, 0]


def test_preloaded_pairs_skip_or_refuse_pairs_whose_image_went_bad(synth, tmp_path):
    from train.data import PreloadedPairs

    root = _copy_synth(synth, tmp_path)
    records = load_records(root, "patn", "train")
    (root / "train_highres" / "synth_train_id00000_1.png").write_bytes(b"not a png")   # corrupt after listing
    pre = PreloadedPairs(PoseTransferDataset(records, (64, 44), report_path=str(tmp_path / "r.jsonl")))
    good = pre.batch(range(len(pre)))
    assert len(good["index"]) == len(records) - 2 and (tmp_path / "r.jsonl").is_file()
    with pytest.raises(DataFileError, match="unreadable"):
        PreloadedPairs(PoseTransferDataset(records, (64, 44), on_error="fatal"))
