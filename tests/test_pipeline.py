"""PoseTransferPipeline: canvas handling, batches, determinism, guidance, retargeting, files and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from repose_core.checkpoint import save_model
from repose_core.errors import CheckpointError, InputError
from repose_core.estimator.small_hrnet import SmallHRNet, SmallHRNetConfig
from repose_core.estimator import build_estimator
from repose_core.pipeline import PoseTransferPipeline, TransferResult, pose_in_frame
from repose_core.pose import Pose, PoseFrame, load_pose_file
from repose_core.pose.geometry import _bone_lengths

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(repo_root):
    folder = repo_root / "repose_core" / "synthetic" / "examples"
    out = {}
    for size in ("64x44", "128x88"):
        src = np.asarray(Image.open(folder / size / "source_1.png").convert("RGB"))
        tgt = load_pose_file(folder / size / "target_pose_1.json")[0].people[0]
        src_pose = load_pose_file(folder / size / "source_pose_1.json")[0].people[0]
        out[size] = (src, tgt, src_pose)
    return out


@pytest.fixture(scope="module")
def estimator():
    torch.manual_seed(0)
    with torch.inference_mode(False):
        return SmallHRNet(SmallHRNetConfig(width=8, stem=16, num_modules=1, num_blocks=1))


@pytest.fixture(scope="module")
def pipes(estimator):
    return {v: PoseTransferPipeline.tiny_random(v, seed=1, estimator=estimator) for v in ("b1", "full")}


def test_result_has_source_size_and_rpa_outputs(pipes, examples):
    src, tgt, _ = examples["128x88"]
    r = pipes["full"].transfer(src, tgt, steps=STEPS, seed=0)
    assert isinstance(r, TransferResult)
    assert r.image.shape == (128, 88, 3) and r.image.dtype == np.float32
    assert np.isfinite(r.image).all() and r.image.min() >= 0 and r.image.max() <= 1
    assert r.canvas_images.shape == (1, 64, 44, 3)
    n_iter = pipes["full"].model.config.rpa.iterations
    assert len(r.warped) == n_iter and r.warped[0].shape == (1, 64, 44, 3)
    assert tuple(r.flow.shape) == (1, 2, 32, 22)
    assert r.guidance_history == []
    b1 = pipes["b1"].transfer(src, tgt, steps=STEPS, seed=0)
    assert b1.warped == [] and b1.flow is None


def test_same_seed_same_image_other_seed_differs(pipes, examples):
    src, tgt, _ = examples["64x44"]
    # the random model's output convs are zero-initialised (BeatGANs): give it a non-trivial ε first
    pipe = PoseTransferPipeline.tiny_random("full", seed=2)
    with torch.no_grad():
        for p in pipe.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = pipe.transfer(src, tgt, steps=STEPS, seed=5).image
    b = pipe.transfer(src, tgt, steps=STEPS, seed=5).image
    c = pipe.transfer(src, tgt, steps=STEPS, seed=6).image
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_canvas_roundtrip_keeps_content_and_pose_alignment(pipes):
    pipe = pipes["b1"]
    rng = np.random.default_rng(0)
    img = np.kron(rng.random((10, 20, 3)), np.ones((10, 10, 1))).astype(np.float32)  # 100x200, other aspect
    p = pipe.placement(img, "pad")
    canvas = pipe.to_canvas(img, p, pad_value=np.array([1.0, 0.0, 0.0], np.float32))
    assert canvas.shape == (64, 44, 3)
    assert np.allclose(canvas[0, 0], [1, 0, 0])  # padding above the wide image
    back = pipe.from_canvas(canvas, p)
    assert back.shape == img.shape
    assert np.abs(back - img).mean() < 0.12  # 200 px wide -> 44 -> 200: blurred, not displaced
    # a keypoint at the image centre lands at the canvas centre
    kp = np.zeros((18, 3), np.float32)
    kp[0] = (99.5, 49.5, 1.0)
    kp[1] = (0.0, 0.0, 1.0)
    moved = pipe.pose_to_canvas(Pose(kp, 200, 100, "openpose18"), p)
    assert moved.keypoints[0, :2] == pytest.approx([21.5, 31.5], abs=0.6)
    assert (moved.width, moved.height) == (44, 64)


def test_pose_on_another_canvas_is_fitted_without_distortion():
    kp = np.zeros((18, 3), np.float32)
    kp[0] = (10, 10, 1)
    kp[1] = (30, 50, 1)
    pose = Pose(kp, 40, 60, "openpose18")
    out = pose_in_frame(pose, 80, 60)  # wider frame: scale 1, centred with 20 px on each side
    assert out.keypoints[0, :2] == pytest.approx([30, 10])
    assert out.keypoints[1, :2] == pytest.approx([50, 50])
    assert pose_in_frame(pose, 40, 60) is pose


def test_batch_of_images_one_pose_and_pose_count_mismatch(pipes, examples):
    src, tgt, _ = examples["64x44"]
    big, big_tgt, _ = examples["128x88"]
    r = pipes["full"].transfer([src, big], [tgt, big_tgt], steps=STEPS)
    assert [im.shape for im in r.images] == [(64, 44, 3), (128, 88, 3)]
    r = pipes["b1"].transfer(np.stack([src, src, src]), tgt, steps=STEPS)
    assert len(r.images) == 3 and r.canvas_images.shape[0] == 3
    with pytest.raises(InputError, match="2 poses for 3 source images"):
        pipes["b1"].transfer([src] * 3, [tgt, tgt], steps=STEPS)


def test_progress_reports_every_rpa_iteration_and_step(pipes, examples):
    src, tgt, _ = examples["64x44"]
    seen = []
    pipe = pipes["full"]
    pipe.transfer(src, tgt, steps=STEPS, progress=lambda done, total: seen.append((done, total)))
    total = pipe.progress_total(STEPS)
    assert total == pipe.model.config.rpa.iterations + STEPS + 1  # "pidm" spacing: 1000 // 3 -> 4 timesteps
    assert seen == [(i, total) for i in range(1, total + 1)]
    # a final timestep (RePoseConfig.final_timestep) spaces the same number of steps above it; the result is its x̂0
    seen.clear()
    stopped = pipe.transfer(src, tgt, steps=STEPS, final_timestep=500, progress=lambda d, t: seen.append((d, t)))
    total = pipe.progress_total(STEPS, final_timestep=500)
    assert total == pipe.model.config.rpa.iterations + STEPS + 1  # "pidm" spacing of 500 timesteps: 500 // 3 -> 4
    assert seen == [(i, total) for i in range(1, total + 1)]
    assert np.isfinite(stopped.canvas_images).all()
    with pytest.raises(InputError, match="final_timestep"):
        pipe.transfer(src, tgt, steps=STEPS, final_timestep=1000)


def test_final_timestep_of_resolves_the_models_setting_and_refuses_bad_values(pipes):
    import dataclasses

    from repose_core.transfer_ops import final_timestep_of

    config = dataclasses.replace(pipes["full"].model.config, final_timestep=400)
    assert final_timestep_of(config, None) == final_timestep_of(config, -1) == 400   # the model's
    assert final_timestep_of(config, 0) == 0 and final_timestep_of(config, 999) == 999
    for bad in (1000, -2, 2.5, True):
        with pytest.raises(InputError, match="final_timestep"):
            final_timestep_of(config, bad)


def test_guidance_changes_the_result_and_records_energy(pipes, examples):
    src, tgt, _ = examples["64x44"]
    pipe = pipes["full"]
    plain = pipe.transfer(src, tgt, steps=STEPS, seed=3)
    guided = pipe.transfer(src, tgt, steps=STEPS, seed=3, guidance={"scale": 50.0, "every": 1})
    assert len(guided.guidance_history) == STEPS + 1
    assert all(np.isfinite(h["energy"]).all() for h in guided.guidance_history)
    assert guided.energy_history[0][0] == 0
    assert np.abs(guided.image - plain.image).max() > 1e-3
    # a window: only the first half of the steps is guided
    half = pipe.transfer(src, tgt, steps=STEPS, seed=3, guidance={"scale": 1.0, "start": 0.0, "end": 0.5})
    assert [h["step"] for h in half.guidance_history] == [0, 1]


def test_guidance_errors_are_actionable(pipes, examples, estimator):
    src, tgt, _ = examples["64x44"]
    no_est = PoseTransferPipeline(pipes["full"].model)
    with pytest.raises(InputError, match="needs a pose estimator"):
        no_est.transfer(src, tgt, steps=STEPS, guidance=True)
    with pytest.raises(InputError, match="unknown guidance setting"):
        pipes["full"].transfer(src, tgt, steps=STEPS, guidance={"sclae": 1.0})
    with pytest.raises(InputError, match="reference"):
        pipes["full"].transfer(src, tgt, steps=STEPS, guidance={"energy": "feature"})
    # feature energy with a reference image runs
    r = pipes["full"].transfer(src, tgt, steps=STEPS, guidance={"energy": "feature", "reference": src, "scale": 1.0})
    assert r.guidance_history


def test_retarget_uses_source_bone_lengths(pipes, examples):
    src, tgt, src_pose = examples["64x44"]
    r = pipes["b1"].transfer(src, tgt, steps=STEPS, retarget=True, source_pose=src_pose)
    got = _bone_lengths(r.target_poses[0].keypoints)
    want = _bone_lengths(src_pose.keypoints)
    both = ~np.isnan(got) & ~np.isnan(want)
    assert both.sum() >= 10
    assert np.allclose(got[both], want[both], atol=1e-3)
    with pytest.raises(InputError, match="source_pose"):
        PoseTransferPipeline(pipes["b1"].model).transfer(src, tgt, steps=STEPS, retarget=True)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((64, 44)), None),                              # grey is accepted (converted)
    (np.zeros((64, 44, 2)), "RGB image"),
    (np.full((64, 44, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((64, 44, 3), np.nan, np.float32), "NaN"),
    (np.zeros((64, 44, 3), np.int32), "uint8 or float"),
])
def test_bad_source_images(pipes, examples, bad, match):
    _, tgt, _ = examples["64x44"]
    if match is None:
        assert pipes["b1"].transfer(bad, tgt, steps=STEPS).image.shape == (64, 44, 3)
        return
    with pytest.raises(InputError, match=match):
        pipes["b1"].transfer(bad, tgt, steps=STEPS)


def test_bad_pose_and_options(pipes, examples):
    src, tgt, _ = examples["64x44"]
    with pytest.raises(InputError, match="Pose"):
        pipes["b1"].transfer(src, {"people": []}, steps=STEPS)
    with pytest.raises(InputError, match="fit"):
        pipes["b1"].transfer(src, tgt, steps=STEPS, fit="crop")
    with pytest.raises(Exception, match="no person"):
        pipes["b1"].transfer(src, PoseFrame([], 44, 64), steps=STEPS)


def test_from_files_matches_the_in_memory_pipeline(tmp_path, pipes, examples, estimator):
    src, tgt, _ = examples["64x44"]
    model_path, est_path = tmp_path / "full.safetensors", tmp_path / "est.safetensors"
    save_model(model_path, pipes["full"].model, "repose_dm")
    save_model(est_path, estimator, "pose_estimator")
    loaded = PoseTransferPipeline.from_files(model_path, est_path)
    assert isinstance(loaded.estimator, SmallHRNet)
    assert not any(p.requires_grad for p in loaded.estimator.parameters())
    a = pipes["full"].transfer(src, tgt, steps=STEPS, seed=4, guidance={"scale": 1.0}).image
    b = loaded.transfer(src, tgt, steps=STEPS, seed=4, guidance={"scale": 1.0}).image
    assert np.allclose(a, b, atol=1e-5)
    with pytest.raises(CheckpointError, match="not a pose-transfer model"):
        PoseTransferPipeline.from_files(est_path)
    with pytest.raises(CheckpointError):
        build_estimator(model_path)


def test_x0_clipping_is_on_for_pixel_codecs_and_can_be_switched_off(examples):
    src, tgt, _ = examples["64x44"]
    pipe = PoseTransferPipeline.tiny_random("b1", seed=3)
    with torch.no_grad():  # an untrained-looking ε: x̂0 = (x_t - √(1-ᾱ) ε)/√ᾱ explodes at high noise
        for p in pipe.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    auto = pipe.transfer(src, tgt, steps=STEPS, seed=1).canvas_images
    on = pipe.transfer(src, tgt, steps=STEPS, seed=1, clip_x0=True).canvas_images
    off = pipe.transfer(src, tgt, steps=STEPS, seed=1, clip_x0=False).canvas_images
    assert np.array_equal(auto, on)
    assert np.abs(on - off).mean() > 1e-3
    saturated = lambda im: ((im < 0.01) | (im > 0.99)).mean()  # noqa: E731
    assert saturated(on) < saturated(off)


def test_aligned_start_samples_from_the_warp_and_refuses_what_it_cannot_do(pipes, examples):
    """aligned_start (our addition): sampling starts from RPA's warp noised part-way, so fewer steps run and the
    result depends on the warp; b1 has no warp and out-of-range fractions are refused."""
    src, tgt, _ = examples["64x44"]
    ticks = []
    r = pipes["full"].transfer(src, tgt, steps=10, seed=0, aligned_start=0.3, progress=lambda d, n: ticks.append(n))
    assert np.isfinite(r.image).all()
    n_rpa = pipes["full"].model.config.rpa.iterations
    assert ticks[-1] == len(ticks) and n_rpa < ticks[-1] < n_rpa + 10      # only the steps below t = 0.3·T
    full = pipes["full"].transfer(src, tgt, steps=10, seed=0)
    assert not np.allclose(r.image, full.image)
    with pytest.raises(InputError, match="b1"):
        pipes["b1"].transfer(src, tgt, steps=10, seed=0, aligned_start=0.3)
    for bad in (0.0, 1.5):
        with pytest.raises(InputError, match="aligned_start"):
            pipes["full"].transfer(src, tgt, steps=10, seed=0, aligned_start=bad)
