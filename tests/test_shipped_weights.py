"""The small trained models shipped in repose_core/weights/: present, small, loadable, and they do their job."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from repose_core.checkpoint import load_model, read_metadata
from repose_core.estimator.decode import estimate_poses
from repose_core.estimator.small_hrnet import SmallHRNet
from repose_core.metrics import pose_accuracy
from repose_core.pipeline import PoseTransferPipeline, load_estimator
from repose_core.pose import load_pose_file
from repose_core.pose.keypoints import openpose18_to_coco17

FILES = {"full": "repose_default_full.safetensors", "b1": "repose_default_b1.safetensors",
         "estimator": "repose_default_estimator.safetensors"}
MAX_TOTAL_BYTES = 10 * 1024 * 1024
# measured for the shipped default on the 12 held-out pairs below (seed 0 / 1): SSIM 0.793 / 0.788 against 0.726 for its
# own RPA warp and 0.508 for the copied source; L1 0.037 against 0.041 (warp) and 0.074 (copy). The test asks for about
# half of each gap to the copied source, and for beating the warp (SSIM by about half its gap, L1 at all).
SSIM_MARGIN, L1_MARGIN, WARP_SSIM_MARGIN = 0.12, 0.017, 0.03


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(repo_root):
    folder = repo_root / "repose_core" / "weights"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"shipped weights missing from {folder}: {missing}; they are trained as recorded in "
                    f"{folder / 'TRAINING.md'}", pytrace=False)
    return {k: folder / v for k, v in FILES.items()}


@pytest.fixture(scope="module")
def examples(repo_root):
    folder = repo_root / "repose_core" / "synthetic" / "examples" / "64x44"
    load = lambda n: np.asarray(Image.open(folder / n).convert("RGB"))  # noqa: E731
    return {
        "sources": [load(f"source_{k}.png") for k in range(4)],
        "targets": [load(f"target_{k}.png") for k in range(4)],
        "target_poses": [load_pose_file(folder / f"target_pose_{k}.json")[0].people[0] for k in range(4)],
    }


def test_files_are_small_and_of_the_right_kind(weights):
    total = sum(p.stat().st_size for p in weights.values())
    assert total < MAX_TOTAL_BYTES, f"shipped weights take {total / 1e6:.1f} MB; keep them under 10 MB"
    assert read_metadata(weights["full"])["kind"] == "repose_dm"
    assert read_metadata(weights["b1"])["kind"] == "repose_dm"
    assert read_metadata(weights["estimator"])["kind"] == "pose_estimator"
    assert load_model(weights["full"]).config.variant == "full"
    assert load_model(weights["b1"]).config.variant == "b1"
    assert isinstance(load_estimator(weights["estimator"]), SmallHRNet)


def test_training_record_names_every_file(weights):
    record = (weights["full"].parent / "TRAINING.md").read_text(encoding="utf-8")
    for name in FILES.values():
        assert name in record
    assert "git commit" in record.lower()


@pytest.mark.parametrize("variant", ["full", "b1"])
def test_models_produce_finite_images_of_the_source_size(weights, examples, variant):
    pipe = PoseTransferPipeline.from_files(weights[variant], weights["estimator"])
    big = np.asarray(Image.fromarray(examples["sources"][0]).resize((88, 128)))
    r = pipe.transfer([examples["sources"][1], big], examples["target_poses"][:2], steps=5, seed=0,
                      guidance={"scale": 1.0} if variant == "full" else None)
    assert [im.shape for im in r.images] == [(64, 44, 3), (128, 88, 3)]
    for im in r.images:
        assert np.isfinite(im).all() and 0 <= im.min() and im.max() <= 1
        assert im.std() > 0.02  # not a flat image


def test_estimator_finds_the_pose_of_the_example_figures(weights, examples):
    est = load_estimator(weights["estimator"])
    x = torch.from_numpy(np.stack(examples["targets"])).permute(0, 3, 1, 2).float() / 255
    frames = estimate_poses(est, x, threshold=0.1)
    pred = np.stack([f.people[0].keypoints if f.people else np.zeros((17, 3), np.float32) for f in frames])
    gt = np.stack([openpose18_to_coco17(p).keypoints for p in examples["target_poses"]])
    acc = pose_accuracy(pred, gt, alpha=0.1)
    assert acc["pck"] >= 0.7, acc


def test_demo_runs_on_the_shipped_weights(weights, tmp_path, capsys):
    from repose_core import demo

    code = demo.main(["--out", str(tmp_path), "--steps", "5", "--no-progress", "--examples", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "RANDOM" not in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["random_models"] is False
    assert np.asarray(Image.open(tmp_path / "example_0_full_guided.png")).shape == (64, 44, 3)



def test_guidance_lowers_the_pose_energy_of_the_shipped_full_model(weights, examples):
    """The default guidance (config η) pulls the generated figures towards the target pose, as the estimator sees it."""
    from repose_core.guidance import KeypointTarget, keypoint_energy
    from repose_core.pose import PoseFrame

    pipe = PoseTransferPipeline.from_files(weights["full"], weights["estimator"])
    assert pipe.model.config.variant == "full" and pipe.model.config.guidance.scale > 0
    kw = dict(steps=20, seed=0, eta=1.0)
    plain = pipe.transfer(examples["sources"], examples["target_poses"], **kw).canvas_images
    guided_run = pipe.transfer(examples["sources"], examples["target_poses"], guidance=True, **kw)
    target = KeypointTarget([PoseFrame([p], 44, 64) for p in examples["target_poses"]],
                            sigma=pipe.estimator.config.sigma)

    def energy(images):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            return keypoint_energy(pipe.estimator, x, target).mean().item()

    # the default step (0.03, chosen by `ablation.py sweep`: PCK 0.91 -> 0.98 on training pairs, -0.009 SSIM) lowers
    # the finished images' energy by ~8 % on these four examples (88.9 -> 81.9)
    assert energy(guided_run.canvas_images) < 0.96 * energy(plain)
    history = guided_run.guidance_history
    assert np.mean(history[-1]["energy"]) < np.mean(history[0]["energy"])


@pytest.fixture(scope="module")
def held_out_pairs(tmp_path_factory):
    """12 pairs of 3 identities of a dataset seed no shipped model was trained on (training used seed 0)."""
    from pathlib import Path

    from repose_core.synthetic import generate_dataset
    from train.ablation import load_test_pairs

    root = tmp_path_factory.mktemp("held_out")
    generate_dataset(root, size=(64, 44), n_train_ids=0, n_test_ids=3, poses_per_id=4, seed=4242)
    return load_test_pairs(Path(root), 12)


def test_shipped_full_model_beats_copying_the_source_and_its_warp_on_held_out_pairs(weights, held_out_pairs):
    """The main job: the default model renders the source person in the target pose better than the source itself
    (the score of a model that ignores the pose), on people it never saw, and it takes their appearance from the
    source (another person's image as source gives a clearly worse match). Margins are about half of what the
    shipped model measures (docs/ablation.md), so a regression to the old checker grid or to ignoring the source
    fails, sampling noise does not."""
    from train.ablation import image_metrics

    data = held_out_pairs
    gt = np.stack(data["targets"]).astype(np.float32) / 255
    src = np.stack(data["sources"]).astype(np.float32) / 255
    pipe = PoseTransferPipeline.from_files(weights["full"], weights["estimator"])
    kw = dict(steps=20, eta=1.0, seed=0)
    run = pipe.transfer(data["sources"], data["target_poses"], **kw)
    ours, warp = image_metrics(run.canvas_images, gt), image_metrics(run.warped[-1], gt)
    copy = image_metrics(src, gt)
    assert ours["ssim"].mean() > copy["ssim"].mean() + SSIM_MARGIN, (ours["ssim"].mean(), copy["ssim"].mean())
    assert ours["l1"].mean() < copy["l1"].mean() - L1_MARGIN, (ours["l1"].mean(), copy["l1"].mean())
    # the denoiser improves on its own input, RPA's warped source (issue 10's bar)
    assert ours["ssim"].mean() > warp["ssim"].mean() + WARP_SSIM_MARGIN, (ours["ssim"].mean(), warp["ssim"].mean())
    assert ours["l1"].mean() < warp["l1"].mean(), (ours["l1"].mean(), warp["l1"].mean())
    others = data["sources"][4:] + data["sources"][:4]          # every target gets another identity's image
    swapped = image_metrics(pipe.transfer(others, data["target_poses"], **kw).canvas_images, gt)
    assert swapped["l1"].mean() > ours["l1"].mean() * 1.4, (swapped["l1"].mean(), ours["l1"].mean())
