"""Heatmap decoding: sub-pixel peaks, coordinate conventions, AE grouping, estimate_poses (with synthetic heatmaps)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from repose_core.errors import InputError
from repose_core.estimator import PoseEstimator, decode_single, estimate_poses, group_by_tags, heatmap_to_image


def gaussian(h, w, u, v, sigma=2.0, peak=1.0):
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return (peak * torch.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * sigma ** 2))).float()


@pytest.mark.parametrize("u,v", [(20.3, 11.7), (7.49, 30.02), (33.5, 4.25)])
def test_quarter_offset_within_half_pixel(u, v):
    hm = gaussian(40, 48, u, v)[None]  # one joint, heatmap == image grid
    (x, y, conf), = decode_single(hm, refine="quarter")[0]
    assert abs(x - u) <= 0.5 and abs(y - v) <= 0.5
    assert conf == pytest.approx(hm.max().item())


@pytest.mark.parametrize("u,v", [(20.3, 11.7), (7.49, 30.02), (33.5, 4.25)])
def test_dark_refinement_is_nearly_exact(u, v):
    hm = gaussian(40, 48, u, v)[None]
    (x, y, _), = decode_single(hm, refine="dark")[0]
    assert abs(x - u) < 0.05 and abs(y - v) < 0.05


def test_coordinates_scale_to_image():
    # heatmap at stride 2 of a 96x80 image (W=96, H=80): cell u covers image pixels [2u, 2u+2)
    u, v = 13.25, 21.6
    hm = gaussian(40, 48, u, v)[None, None]  # (B=1, J=1, 40, 48)
    (x, y, _), = decode_single(hm, image_size=(96, 80), refine="dark")[0]
    assert x == pytest.approx((u + 0.5) * 2 - 0.5, abs=0.1) and y == pytest.approx((v + 0.5) * 2 - 0.5, abs=0.1)
    # UDP: grids share their end points
    assert heatmap_to_image(np.array([0.0, 47.0]), 48, 96, udp=True).tolist() == [0.0, 95.0]
    (xu, _, _), = decode_single(hm, image_size=(96, 80), udp=True)[0]
    assert xu == pytest.approx(u * 95 / 47, abs=0.1)


def test_decode_rejects_bad_input():
    with pytest.raises(InputError, match="refine='taylor'.*quarter"):
        decode_single(torch.zeros(1, 8, 8), refine="taylor")
    with pytest.raises(InputError, match=r"\(J,h,w\) or \(B,J,h,w\)"):
        decode_single(torch.zeros(8, 8))
    with pytest.raises(InputError, match="torch.Tensor"):
        decode_single(np.zeros((1, 8, 8)))


# --- associative embedding ----------------------------------------------------------------------------------------
def two_people(h=48, w=64, missing_b=()):
    """Heatmaps (17,h,w) + per-joint tags for person A (tag 0, peak 1.0) and B (tag 2, peak 0.8)."""
    rng = np.random.default_rng(0)
    a = np.stack([rng.uniform(3, 28, 17), rng.uniform(3, h - 4, 17)], 1)
    b = np.stack([rng.uniform(36, w - 4, 17), rng.uniform(3, h - 4, 17)], 1)
    hms, tags = [], []
    ys, xs = np.mgrid[0:h, 0:w]
    for j in range(17):
        ga = gaussian(h, w, *a[j], sigma=1.5)
        gb = torch.zeros(h, w) if j in missing_b else gaussian(h, w, *b[j], sigma=1.5, peak=0.8)
        hms.append(torch.maximum(ga, gb))
        closer_a = (xs - a[j, 0]) ** 2 + (ys - a[j, 1]) ** 2 < (xs - b[j, 0]) ** 2 + (ys - b[j, 1]) ** 2
        tags.append(torch.from_numpy(np.where(closer_a, 0.0, 2.0) + rng.normal(0, 0.05, (h, w))).float())
    return torch.stack(hms), torch.stack(tags), a, b


def test_group_by_tags_separates_people():
    hm, tags, a, b = two_people(missing_b=(3, 9))
    people = group_by_tags(hm, tags, threshold=0.1, refine="dark")
    assert len(people) == 2
    pa, pb = people  # best mean score first: A
    np.testing.assert_allclose(pa[:, :2], a, atol=0.1)
    seen = [j for j in range(17) if j not in (3, 9)]
    np.testing.assert_allclose(pb[seen, :2], b[seen], atol=0.1)
    assert (pb[[3, 9]] == 0).all() and (pb[seen, 2] > 0.7).all()


def test_group_by_tags_rejects_mismatched_tags():
    hm, tags, _, _ = two_people()
    with pytest.raises(InputError, match="tags must have shape"):
        group_by_tags(hm, tags[:, :10])


# --- estimate_poses with a synthetic estimator ---------------------------------------------------------------------
class FakeEstimator(PoseEstimator):
    """Renders Gaussians where given keypoints (pixel coordinates of the ORIGINAL image) fall in the input it gets."""

    def __init__(self, people, orig_hw, input_size=None, udp=False):
        super().__init__()
        self.people, self.orig_hw = people, orig_hw
        self.config = SimpleNamespace(udp=udp, input_size=input_size)
        self.calls = []

    def _maps(self, img01):
        self.calls.append(tuple(img01.shape))
        H, W = img01.shape[-2:]
        sy, sx = H / self.orig_hw[0], W / self.orig_hw[1]
        h, w = -(-H // 2), -(-W // 2)
        hms, tags = torch.zeros(17, h, w), torch.zeros(17, h, w)
        for k, kps in enumerate(self.people):
            for j, (x, y, c) in enumerate(kps):
                if c > 0:
                    # original px -> resized px (pixel centres) -> stride-2 heatmap cell
                    u, v = ((x + 0.5) * sx - 0.5 + 0.5) / 2 - 0.5, ((y + 0.5) * sy - 0.5 + 0.5) / 2 - 0.5
                    g = gaussian(h, w, u, v, sigma=2.0, peak=c)
                    tags[j] = torch.where(g > hms[j], torch.full_like(g, 3.0 * k), tags[j])
                    hms[j] = torch.maximum(hms[j], g)
        return hms[None].expand(img01.shape[0], -1, -1, -1), tags[None].expand(img01.shape[0], -1, -1, -1)

    def features_and_heatmaps(self, img01):
        return torch.zeros(img01.shape[0], 8, 1, 1), self._maps(img01)[0]

    def heatmaps_and_tags(self, img01):
        return self._maps(img01)


def _kps(rng, W, H, conf=0.9):
    k = np.zeros((17, 3), np.float32)
    k[:, 0], k[:, 1], k[:, 2] = rng.uniform(8, W - 8, 17), rng.uniform(8, H - 8, 17), conf
    return k


def test_estimate_poses_single_person_resizes_and_maps_back():
    rng = np.random.default_rng(1)
    kp = _kps(rng, 96, 64)
    kp[4] = 0  # right ear not visible
    est = FakeEstimator([kp], orig_hw=(64, 96), input_size=128)
    frames = estimate_poses(est, torch.rand(2, 3, 64, 96), threshold=0.1, refine="dark")
    assert est.calls == [(2, 3, 128, 192)]  # short side resized to the estimator's input size
    assert len(frames) == 2
    pose = frames[1].people[0]
    assert (frames[1].width, frames[1].height, pose.layout) == (96, 64, "coco17")
    vis = np.arange(17) != 4
    np.testing.assert_allclose(pose.keypoints[vis, :2], kp[vis, :2], atol=0.15)
    # confidence = value of the peak cell: 0.9 * exp(-d^2 / 8) for a sub-cell offset d <= 0.71
    assert ((pose.keypoints[vis, 2] > 0.84) & (pose.keypoints[vis, 2] <= 0.9)).all()
    assert (pose.keypoints[4] == 0).all()


def test_estimate_poses_threshold_and_openpose18():
    rng = np.random.default_rng(2)
    kp = _kps(rng, 64, 64, conf=0.5)
    kp[5, 2] = kp[6, 2] = 0.9  # shoulders confident -> neck synthesised
    est = FakeEstimator([kp], orig_hw=(64, 64))
    pose = estimate_poses(est, torch.rand(1, 3, 64, 64), threshold=0.6, to_openpose18=True)[0].people[0]
    assert pose.layout == "openpose18" and pose.keypoints.shape == (18, 3)
    assert (pose.keypoints[:, 2] > 0).sum() == 3  # two shoulders + neck
    np.testing.assert_allclose(pose.keypoints[1, :2], (kp[5, :2] + kp[6, :2]) / 2, atol=0.5)
    nobody = estimate_poses(est, torch.rand(1, 3, 64, 64), threshold=0.95)[0]
    assert nobody.people == []


def test_estimate_poses_multi_person():
    rng = np.random.default_rng(3)
    a, b = _kps(rng, 48, 96, 0.95), _kps(rng, 48, 96, 0.8)
    b[:, 0] += 60  # second person on the right half
    est = FakeEstimator([a, b], orig_hw=(96, 112))
    frame = estimate_poses(est, torch.rand(1, 3, 96, 112), multi_person=True, refine="dark")[0]
    assert len(frame.people) == 2
    np.testing.assert_allclose(frame.people[0].keypoints[:, :2], a[:, :2], atol=0.15)
    np.testing.assert_allclose(frame.people[1].keypoints[:, :2], b[:, :2], atol=0.15)


def test_estimate_poses_rejects_bad_arguments():
    est = FakeEstimator([], orig_hw=(32, 32))
    with pytest.raises(InputError, match=r"\(B,3,H,W\)"):
        estimate_poses(est, torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="threshold"):
        estimate_poses(est, torch.rand(1, 3, 32, 32), threshold=2.0)

    class NoTags(PoseEstimator):
        def features_and_heatmaps(self, img01):
            return None, torch.zeros(1, 17, 16, 16)

    with pytest.raises(InputError, match="multi_person=True needs"):
        estimate_poses(NoTags(), torch.rand(1, 3, 32, 32), multi_person=True)
