"""Metrics (SSIM as skimage/PIDM, FID math, pose accuracy) and train/eval.py end to end."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from repose_core import metrics as M
from repose_core.errors import InputError



def _naive_ssim(x, y, weights, sample_cov, data_range=1.0):
    """Direct per-window SSIM averaged over the valid windows and channels (skimage's definition, cropped)."""
    k = weights.shape[0]
    n = k * k
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - k + 1):
            for j in range(x.shape[2] - k + 1):
                a, b = x[c, i:i + k, j:j + k], y[c, i:i + k, j:j + k]
                ma, mb = (weights * a).sum(), (weights * b).sum()
                va, vb = (weights * a * a).sum() - ma ** 2, (weights * b * b).sum() - mb ** 2
                cov = (weights * a * b).sum() - ma * mb
                if sample_cov:
                    va, vb, cov = (v * n / (n - 1) for v in (va, vb, cov))
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_uniform_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.random((3, 14, 12))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    ours = M.ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None], window="uniform", win_size=7)
    ref = _naive_ssim(x, y, np.full((7, 7), 1 / 49), sample_cov=True)
    assert float(ours[0]) == pytest.approx(ref, abs=1e-5)


def test_ssim_gaussian_matches_definition():
    rng = np.random.default_rng(1)
    x = rng.random((3, 14, 13))
    y = np.clip(x * 0.7 + 0.1, 0, 1)
    r = np.arange(-4, 5)
    g = np.exp(-0.5 * (r / 1.2) ** 2)
    g /= g.sum()
    ours = M.ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None], window="gaussian", sigma=1.2)
    ref = _naive_ssim(x, y, np.outer(g, g), sample_cov=False)
    assert float(ours[0]) == pytest.approx(ref, abs=1e-5)


def test_ssim_pidm_window_properties():
    x = torch.rand(2, 3, 64, 56)
    assert torch.allclose(M.ssim(x, x), torch.ones(2))
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (M.ssim(x, noisy) < 0.9).all()
    with pytest.raises(InputError, match="smaller than the 51x51 window"):
        M.ssim(x[..., :40, :40], x[..., :40, :40])


def test_l1_psnr():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), 0.1)
    assert float(M.l1(x, y)) == pytest.approx(0.1)
    assert float(M.psnr(x, y)) == pytest.approx(20.0, abs=1e-4)


def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    # diagonal: |Δμ|² + Σ (σ1 - σ2)² over standard deviations = 1 + (1-2)² + (2-1)²
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(3.0, abs=1e-9)
    rng = np.random.default_rng(0)
    f = rng.standard_normal((200, 5))
    mu, s = M.feature_statistics(f)
    assert M.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # non-commuting covariances: compare with tr sqrt via eigen-decomposition of s1 @ s2
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    assert M.frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(
        np.trace(s1) + np.trace(s2) - 2 * tr_sqrt, rel=1e-6)


def test_pose_accuracy():
    gt = np.zeros((1, 17, 3))
    gt[0, :, 0] = np.linspace(0, 100, 17)       # bbox size 100 -> PCK@0.1 radius 10 px
    gt[0, :, 1] = 50
    gt[0, :, 2] = 1
    pred = gt.copy()
    pred[0, :4, 0] += 15                        # 4 joints 15 px off: wrong
    pred[0, 4:8, 1] += 5                        # 4 joints 5 px off: right
    pred[0, 16] = 0                             # not detected: wrong, not in the error
    acc = M.pose_accuracy(pred, gt, alpha=0.1)
    assert acc["pck"] == pytest.approx(12 / 17)
    assert acc["mean_error_px"] == pytest.approx((4 * 15 + 4 * 5) / 16)
    assert acc["detected_fraction"] == pytest.approx(16 / 17)
    with pytest.raises(InputError):
        M.pose_accuracy(pred[:, :5], gt)


# -- eval.py end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from repose_core.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("synth_eval")
    generate_dataset(root, size=(64, 44), n_train_ids=2, n_test_ids=2, poses_per_id=2, seed=3)
    return root


def test_eval_cli_perfect_and_skips(synth, tmp_path):
    from train.data import load_records
    from train.eval import generated_name, main
    gen = tmp_path / "gen"
    gen.mkdir()
    records = load_records(synth, "patn", "test")
    for r in records:
        shutil.copy(r.target, gen / generated_name(r.sources[0], r.target))
    out = tmp_path / "eval"
    assert main(["--generated", str(gen), "--data-root", str(synth), "--out", str(out), "--name", "Oracle"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["pairs"] == len(records)
    assert res["metrics"]["SSIM"] == pytest.approx(1.0, abs=1e-6) and res["metrics"]["L1"] == 0
    for skipped in ("FID", "LPIPS"):            # no weights given: skipped with a note, not a crash
        assert skipped not in res["metrics"] and res["implementations"][skipped].startswith("skipped")
    table = (out / "metrics.md").read_text()
    assert table.startswith("| Method | FID ↓ | SSIM ↑ | LPIPS ↓") and "| Oracle | — | 1.0000 | — |" in table


def test_eval_missing_generated_images(synth, tmp_path):
    from train.data import load_records
    from train.eval import generated_name, main
    gen = tmp_path / "gen"
    gen.mkdir()
    r = load_records(synth, "patn", "test")[0]
    shutil.copy(r.sources[0], gen / generated_name(r.sources[0], r.target))     # a wrong image: SSIM < 1
    with pytest.raises(InputError, match="have no generated image"):
        main(["--generated", str(gen), "--data-root", str(synth), "--out", str(tmp_path / "e")])
    assert main(["--generated", str(gen), "--data-root", str(synth), "--out", str(tmp_path / "e"),
                 "--missing", "skip"]) == 0
    res = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert res["pairs"] == 1 and res["metrics"]["SSIM"] < 1.0


def test_eval_weights_absent_is_a_note(synth, tmp_path):
    from train.eval import EvalOptions, build_fid_extractor, build_lpips
    opts = EvalOptions(inception_weights=str(tmp_path / "nope.pth"), lpips_weights=str(tmp_path / "nope2.pth"))
    fn, note = build_fid_extractor(opts, torch.device("cpu"))
    assert fn is None and "not found" in note
    fn, note = build_lpips(opts, torch.device("cpu"))
    assert fn is None and "not found" in note
