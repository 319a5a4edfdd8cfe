"""Renderers: shapes, colours at limb pixels, PIDM distance maps, heatmaps, HumanSD limb width."""
import colorsys
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repose_core.errors import InputError, PoseFormatError
from repose_core.pose import (
    COCO17_LIMBS, HUMANSD_COLORS, OPENPOSE18_LIMBS, OPENPOSE_COLORS, Pose, PoseFrame, gaussian_heatmaps_torch,
    hls_palette, l1_distance_transform, openpose18_to_coco17, render_heatmaps, render_humansd, render_openpose,
    render_pidm_pose_map,
)
from sample_poses import STANDING, standing_pose



def two_joint_pose(a, pa, b, pb, width=100, height=100, layout="openpose18"):
    n = 18 if layout == "openpose18" else 17
    kp = np.zeros((n, 3), np.float32)
    kp[a] = (*pa, 1.0)
    kp[b] = (*pb, 1.0)
    return Pose(kp, width, height, layout)


def limb_mid(pose, a, b):
    x = (pose.keypoints[a, 0] + pose.keypoints[b, 0]) / 2
    y = (pose.keypoints[a, 1] + pose.keypoints[b, 1]) / 2
    return int(y), int(x)


# ---------------------------------------------------------------------------------------------------------------
# OpenPose


def test_render_openpose_shape_range_and_colours():
    p = standing_pose()
    img = render_openpose(p, 256, 176)
    assert img.shape == (256, 176, 3) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1
    # joint disc in full colour (nose red, like ControlNet)
    np.testing.assert_allclose(img[40, 88] * 255, OPENPOSE_COLORS[0], atol=0.5)
    # limb k is 0.6 x colour k: right upper arm (2, 3) is limb 2
    k = OPENPOSE18_LIMBS.index((2, 3))
    np.testing.assert_allclose(img[limb_mid(p, 2, 3)] * 255, [int(c * 0.6) for c in OPENPOSE_COLORS[k]], atol=0.5)
    assert img[5, 5].sum() == 0     # background black


def test_render_openpose_rescales_pose_canvas_and_accepts_frames():
    small = render_openpose(standing_pose(), 256, 176)
    big = render_openpose(PoseFrame([standing_pose()], 176, 256), 512, 352)
    np.testing.assert_allclose(big[80, 176] * 255, OPENPOSE_COLORS[0], atol=0.5)   # nose (88, 40) x 2
    assert big.shape == (512, 352, 3) and small.shape == (256, 176, 3)


def test_render_openpose_coco17_gets_a_neck():
    img = render_openpose(openpose18_to_coco17(standing_pose()), 256, 176)
    k = OPENPOSE18_LIMBS.index((1, 0))
    np.testing.assert_allclose(img[55, 88] * 255, [int(c * 0.6) for c in OPENPOSE_COLORS[k]], atol=0.5)


def test_render_openpose_missing_joint_draws_no_limb():
    p = standing_pose(missing=(3,))
    img = render_openpose(p, 256, 176)
    assert img[limb_mid(standing_pose(), 2, 3)].sum() == 0


def test_render_empty_frame_is_black_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="repose"):
        img = render_openpose(PoseFrame([], 176, 256), 64, 32)
    assert img.shape == (64, 32, 3) and img.max() == 0
    assert "no person" in caplog.text


def test_render_bad_inputs():
    with pytest.raises(InputError, match="H must be a positive integer"):
        render_openpose(standing_pose(), 0, 10)
    kp = standing_pose().keypoints.copy()
    kp[5, 0] = np.nan
    with pytest.raises(PoseFormatError, match=r"joint 5 \(left_shoulder\)"):
        render_openpose(Pose(kp, 176, 256), 64, 64)
    with pytest.raises(PoseFormatError, match="expected a Pose"):
        render_openpose("pose.json", 64, 64)


# ---------------------------------------------------------------------------------------------------------------
# HumanSD


def test_hls_palette_matches_seaborn_values():
    pal = hls_palette(16)
    assert len(pal) == 16
    # seaborn.color_palette("hls", 16)[0] == (0.86, 0.3712, 0.34)
    np.testing.assert_allclose(pal[0], (0.86, 0.3712, 0.34), atol=1e-4)
    hues = [colorsys.rgb_to_hls(*c)[0] for c in pal]
    np.testing.assert_allclose(np.diff(hues), 1 / 16, atol=1e-6)


def test_render_humansd_limb_width_and_colour():
    # COCO-17 left shoulder (5) -> left elbow (7) is limb index 6, drawn horizontally
    k = COCO17_LIMBS.index((5, 7))
    p = two_joint_pose(5, (20, 50), 7, (80, 50), layout="coco17")
    img = render_humansd(p, 100, 100)
    column = img[:, 50]
    drawn = np.flatnonzero(column.sum(-1) > 0)
    assert 9 <= len(drawn) <= 11 and drawn.min() >= 44 and drawn.max() <= 56
    np.testing.assert_allclose(img[50, 50] * 255, HUMANSD_COLORS[k], atol=0.5)
    # end discs of radius 5 in the limb colour
    np.testing.assert_allclose(img[50, 16] * 255, HUMANSD_COLORS[k], atol=0.5)
    assert img[50, 13].sum() == 0


def test_render_humansd_threshold_people_limit_and_off_canvas():
    p = two_joint_pose(5, (20, 50), 7, (80, 50), layout="coco17")
    p.keypoints[7, 2] = 0.04                         # below HumanSD's inference threshold 0.05
    assert render_humansd(p, 100, 100).max() == 0
    people = [two_joint_pose(5, (10, 5 + 9 * i), 7, (90, 5 + 9 * i), layout="coco17") for i in range(11)]
    img = render_humansd(people, 100, 100)
    assert img[5 + 9 * 9, 50].sum() > 0 and img[5 + 9 * 10 - 1, 50].sum() == 0   # only 10 people drawn
    q = two_joint_pose(5, (20, 50), 7, (120, 50), layout="coco17")                 # elbow off canvas: skipped
    assert render_humansd(q, 100, 100).max() == 0


def test_render_humansd_from_openpose_pose():
    img = render_humansd(standing_pose(512, 512), 512, 512)
    assert img.shape == (512, 512, 3) and img.max() > 0
    colours = {tuple(np.round(c * 255).astype(int)) for c in img.reshape(-1, 3) if c.sum() > 0}
    assert colours <= set(HUMANSD_COLORS)


# ---------------------------------------------------------------------------------------------------------------
# PIDM pose map


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**16), st.floats(0.0, 0.3))
def test_l1_distance_transform_matches_brute_force(h, w, seed, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    d = l1_distance_transform(mask)
    if not mask.any():
        assert np.isinf(d).all()
        return
    ii, jj = np.nonzero(mask)
    yy, xx = np.mgrid[:h, :w]
    brute = (np.abs(yy[..., None] - ii) + np.abs(xx[..., None] - jj)).min(-1)
    np.testing.assert_array_equal(d, brute)


def test_pidm_map_channels_and_colours():
    p = standing_pose()
    m = render_pidm_pose_map(p, 256, 176)
    assert m.shape == (256, 176, 20) and m.dtype == np.float32
    assert 0 <= m.min() and m.max() <= 1
    # PIDM blends limb k as round(0.6 * colour) over black, with the colour table used as BGR
    k = OPENPOSE18_LIMBS.index((2, 3))
    expected = np.rint(0.6 * np.array(OPENPOSE_COLORS[k]))[::-1]
    np.testing.assert_allclose(m[limb_mid(p, 2, 3)][:3] * 255, expected, atol=0.5)
    # nose joint disc: colour 0 as BGR -> blue in RGB (before limbs are blended over it, it is pure)
    q = two_joint_pose(0, (50, 50), 4, (10, 10))        # nose + wrist: no limb between them
    np.testing.assert_allclose(render_pidm_pose_map(q, 100, 100)[50, 50, :3], [0, 0, 1])


def test_pidm_distance_map_zero_on_limb_and_growing_away():
    p = two_joint_pose(2, (20, 50), 3, (80, 50))    # right upper arm, horizontal at y = 50
    k = OPENPOSE18_LIMBS.index((2, 3))
    m = render_pidm_pose_map(p, 100, 100)
    dist = m[..., 3 + k]
    assert dist[50, 50] == 0 and dist[48:53, 30:70].max() == 0       # on the limb (half-width 4)
    column = dist[55:100, 50]
    assert (np.diff(column) >= 0).all() and column[-1] > column[0]
    # exact value: floor(L1 distance / 3) / 255; the ellipse edge is at y = 54 at x = 50
    np.testing.assert_allclose(dist[99, 50], np.floor((99 - 54) / 3) / 255, atol=1e-6)
    # limbs that are not drawn are all ones
    others = [c for c in range(17) if c != k]
    assert (m[..., [3 + c for c in others]] == 1).all()


def test_pidm_map_empty_pose_flag_and_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="repose"):
        m, empty = render_pidm_pose_map(Pose(np.zeros((18, 3)), 176, 256), 64, 44, return_empty_flag=True)
    assert empty and "no person" in caplog.text
    assert (m[..., :3] == 0).all() and (m[..., 3:] == 1).all()
    m, empty = render_pidm_pose_map(standing_pose(), 64, 44, return_empty_flag=True)
    assert not empty


def test_pidm_map_frame_with_several_people_uses_first(caplog):
    frame = PoseFrame([standing_pose(), standing_pose(missing=range(18))], 176, 256)
    with caplog.at_level(logging.WARNING, logger="repose"):
        m = render_pidm_pose_map(frame, 64, 44)
    np.testing.assert_array_equal(m, render_pidm_pose_map(standing_pose(), 64, 44))
    assert "using the first" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Heatmaps


def test_heatmap_peak_at_keypoint_and_zero_for_missing():
    p = standing_pose(missing=(4,))
    hm = render_heatmaps(p, 256, 176, sigma=2.0)
    assert hm.shape == (256, 176, 18) and hm.dtype == np.float32
    for j in range(18):
        if j == 4:
            assert hm[..., j].max() == 0
            continue
        i, c = np.unravel_index(np.argmax(hm[..., j]), hm.shape[:2])
        assert (c, i) == tuple(int(v) for v in STANDING[j]) and hm[i, c, j] == pytest.approx(1.0)
    # sigma: value one sigma away is exp(-1/2)
    assert hm[40, 90, 0] == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_heatmap_rescales_to_requested_size():
    hm = render_heatmaps(standing_pose(), 64, 44, sigma=1.0)     # quarter resolution
    i, c = np.unravel_index(np.argmax(hm[..., 0]), hm.shape[:2])
    assert (c, i) == (22, 10)


def test_torch_heatmaps_match_numpy_and_are_differentiable():
    p = standing_pose(missing=(7,))
    xy = torch.tensor(p.keypoints[None, :, :2], dtype=torch.float64, requires_grad=True)
    vis = torch.tensor(p.keypoints[None, :, 2] > 0, dtype=torch.float64)
    hm = gaussian_heatmaps_torch(xy, vis, 256, 176, sigma=2.0)
    assert hm.shape == (1, 18, 256, 176)
    np.testing.assert_allclose(hm[0].detach().permute(1, 2, 0).numpy(), render_heatmaps(p, 256, 176, 2.0),
                               atol=1e-6)
    # moving the target towards a point raises the heatmap there: gradient points the right way
    hm[0, 0, 40, 95].backward()
    assert xy.grad[0, 0, 0] > 0 and xy.grad[0, 7].abs().sum() == 0


def test_torch_heatmaps_bad_shapes():
    with pytest.raises(InputError, match=r"xy must have shape \(B, J, 2\)"):
        gaussian_heatmaps_torch(torch.zeros(2, 18), torch.ones(2, 18), 8, 8)
    with pytest.raises(InputError, match="vis must have shape"):
        gaussian_heatmaps_torch(torch.zeros(2, 18, 2), torch.ones(2, 17), 8, 8)
    with pytest.raises(InputError, match="sigma"):
        render_heatmaps(standing_pose(), 8, 8, sigma=0)
