"""Geometry: keypoints stay on the same image content through resize/pad/crop/flip; retargeting."""
import numpy as np
import pytest

from repose_core.errors import EmptyPoseError, InputError
from repose_core.pose import (
    COCO17, OPENPOSE18, OPENPOSE18_LIMBS, Pose, PoseFrame, crop_pose, fit_params, fit_to_canvas, hflip_pose,
    openpose18_to_coco17, resize_image, resize_pose, retarget_pose, transform_pose,
)
from sample_poses import standing_pose



def marker_image(pose, size=6):
    """Float image with one channel per joint holding a size x size square centred on the joint."""
    img = np.zeros((pose.height, pose.width, pose.num_joints), np.float32)
    for j, (x, y, c) in enumerate(pose.keypoints):
        if c > 0:
            x0, y0 = int(round(x - size / 2)), int(round(y - size / 2))
            img[max(y0, 0):y0 + size, max(x0, 0):x0 + size, j] = 1.0
    return img


def marker_centre(img, j):
    """Centroid of joint j's marker channel in continuous coordinates (pixel centres at +0.5)."""
    w = img[..., j]
    ys, xs = np.mgrid[:w.shape[0], :w.shape[1]]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


JOINTS_TO_CHECK = (0, 4, 7, 10, 13)   # spread out, markers do not touch


@pytest.mark.parametrize("src_hw,out_hw,mode", [
    ((256, 176), (512, 352), "pad"), ((256, 176), (128, 64), "pad"), ((256, 176), (128, 64), "crop"),
    ((256, 176), (256, 256), "pad"), ((256, 176), (200, 300), "crop"), ((300, 200), (256, 176), "stretch"),
])
def test_fit_to_canvas_keeps_keypoints_on_content(src_hw, out_hw, mode):
    H, W = src_hw
    pose = standing_pose(W, H)
    img, out = fit_to_canvas(marker_image(pose, size=8), pose, *out_hw, mode=mode, pad_value=0.0)
    assert img.shape == (*out_hw, 18) and (out.height, out.width) == out_hw
    for j in JOINTS_TO_CHECK:
        x, y, c = out.keypoints[j]
        if not (6 <= x < out.width - 6 and 6 <= y < out.height - 6):
            continue   # marker (partly) cropped away
        np.testing.assert_allclose(marker_centre(img, j), (x, y), atol=1.0, err_msg=f"joint {j}")


def test_fit_params_modes():
    assert fit_params(256, 176, 512, 352, "pad") == (512, 352, 2.0, 2.0, 0, 0)
    new_h, new_w, sx, sy, ox, oy = fit_params(256, 176, 256, 256, "pad")
    assert (new_h, new_w, ox, oy) == (256, 176, 40, 0)       # the GFLA 40 px margins
    new_h, new_w, sx, sy, ox, oy = fit_params(256, 176, 128, 128, "crop")
    assert new_w == 128 and oy < 0
    with pytest.raises(InputError, match="mode must be one of"):
        fit_params(10, 10, 5, 5, "zoom")


def test_fit_to_canvas_pads_white_and_keeps_uint8():
    img = np.zeros((256, 176, 3), np.uint8)
    out, pose = fit_to_canvas(img, None, 256, 256)
    assert out.dtype == np.uint8 and pose is None
    assert (out[:, :40] == 255).all() and (out[:, 40:216] == 0).all()


def test_fit_to_canvas_frames_lists_and_mismatched_canvas():
    img = np.zeros((512, 352, 3), np.float32)
    small = standing_pose()                       # 176x256 canvas, same aspect: rescaled first
    _, frame = fit_to_canvas(img, PoseFrame([small], 176, 256), 256, 176)
    np.testing.assert_allclose(frame.people[0].keypoints, small.keypoints, atol=1e-4)
    _, people = fit_to_canvas(img, [small, small], 256, 176)
    assert len(people) == 2
    with pytest.raises(InputError, match="does not match the image"):
        fit_to_canvas(img, standing_pose(300, 300), 256, 176)
    with pytest.raises(InputError, match=r"\(H, W\) or \(H, W, C\)"):
        fit_to_canvas(np.zeros(5), None, 4, 4)


def test_transform_crop_and_drop_outside():
    p = standing_pose()
    q = crop_pose(p, 40, 100, 100, 100)
    assert (q.width, q.height) == (100, 100)
    np.testing.assert_allclose(q.keypoints[4, :2], (5, 50))
    np.testing.assert_allclose(q.keypoints[0, :2], (48, -60))          # kept off-canvas by default
    q = crop_pose(p, 40, 100, 100, 100, drop_outside=True)
    assert q.keypoints[0, 2] == 0 and q.keypoints[4, 2] == 1
    back = transform_pose(crop_pose(p, 40, 100, 100, 100), 1.0, (40, 100), 176, 256)
    np.testing.assert_allclose(back.keypoints, p.keypoints, atol=1e-4)
    r = resize_pose(p, 88, 128)
    np.testing.assert_allclose(r.keypoints[:, :2], p.keypoints[:, :2] / 2)
    missing = transform_pose(standing_pose(missing=(3,)), 2.0, (5, 5))
    np.testing.assert_array_equal(missing.keypoints[3], 0)


def test_hflip_swaps_left_and_right():
    p = standing_pose()
    p.extras = {"hand_left_keypoints_2d": [10.0, 20.0, 1.0], "hand_right_keypoints_2d": None}
    f = hflip_pose(p)
    r_wrist, l_wrist = OPENPOSE18.index("right_wrist"), OPENPOSE18.index("left_wrist")
    # the joint called right_wrist now sits where the mirrored left wrist is
    np.testing.assert_allclose(f.keypoints[r_wrist, :2], (176 - p.keypoints[l_wrist, 0], p.keypoints[l_wrist, 1]))
    np.testing.assert_allclose(f.keypoints[0, :2], (176 - 88, 40))
    assert f.extras["hand_right_keypoints_2d"] == [166.0, 20.0, 1.0] and f.extras["hand_left_keypoints_2d"] is None
    np.testing.assert_allclose(hflip_pose(f).keypoints, p.keypoints, atol=1e-5)
    c = hflip_pose(openpose18_to_coco17(p))
    ls, rs = COCO17.index("left_shoulder"), COCO17.index("right_shoulder")
    assert c.keypoints[rs, 0] == pytest.approx(176 - p.keypoints[OPENPOSE18.index("left_shoulder"), 0])
    assert c.keypoints[ls, 0] > c.keypoints[rs, 0] - 100


def test_hflip_matches_flipped_image():
    p = standing_pose()
    img = marker_image(p, size=8)
    f = hflip_pose(p)
    flipped = img[:, ::-1]
    for j in JOINTS_TO_CHECK:
        # marker of source joint j is now under the mirrored joint's name
        m = OPENPOSE18.index(OPENPOSE18[j].replace("left", "X").replace("right", "left").replace("X", "right"))
        np.testing.assert_allclose(marker_centre(flipped, j), f.keypoints[m, :2], atol=0.5)


def test_resize_image_shapes():
    assert resize_image(np.zeros((10, 20), np.float32), 5, 10).shape == (5, 10)
    out = resize_image(np.full((10, 20, 3), 200, np.uint8), 20, 40)
    assert out.dtype == np.uint8 and (out == 200).all()


# ---------------------------------------------------------------------------------------------------------------
# Retargeting


def bone_lengths(p):
    kp = p.keypoints
    return {(a, b): np.linalg.norm(kp[a, :2] - kp[b, :2]) for a, b in OPENPOSE18_LIMBS
            if kp[a, 2] > 0 and kp[b, 2] > 0}


def direction(p, a, b):
    d = p.keypoints[b, :2] - p.keypoints[a, :2]
    return d / np.linalg.norm(d)


def arms_up_pose(width=176, height=256):
    """Another person: smaller, arms raised, shifted right."""
    p = standing_pose(width, height)
    kp = p.keypoints
    kp[:, :2] = (kp[:, :2] - [88, 70]) * 0.8 + [100, 80]
    kp[3, :2] = kp[2, :2] + [-20, -30]
    kp[4, :2] = kp[3, :2] + [-5, -35]
    kp[6, :2] = kp[5, :2] + [20, -30]
    kp[7, :2] = kp[6, :2] + [5, -35]
    return p


def test_retarget_uses_source_lengths_and_target_directions():
    source, target = standing_pose(), arms_up_pose()
    out = retarget_pose(target, source)
    assert (out.width, out.height, out.layout) == (176, 256, "openpose18")
    src_len = bone_lengths(source)
    for limb, length in bone_lengths(out).items():
        assert length == pytest.approx(src_len[limb], rel=1e-4), limb
        np.testing.assert_allclose(direction(out, *limb), direction(target, *limb), atol=1e-4)
    # anchor="target": centred where the target is
    np.testing.assert_allclose(out.keypoints[:, :2].mean(0), target.keypoints[:, :2].mean(0), atol=1e-3)
    out_s = retarget_pose(target, source, anchor="source")
    np.testing.assert_allclose(out_s.keypoints[:, :2].mean(0), source.keypoints[:, :2].mean(0), atol=1e-3)


def test_retarget_missing_joints():
    source = standing_pose(missing=(6, 7))          # source lacks the left forearm and wrist
    target = arms_up_pose()
    target.keypoints[10] = 0                        # target lacks the right ankle
    out = retarget_pose(target, source)
    assert out.keypoints[10, 2] == 0                # missing in target -> missing
    # left upper arm / forearm borrow the right side's lengths from the source
    src_len = bone_lengths(standing_pose())
    got = bone_lengths(out)
    assert got[(5, 6)] == pytest.approx(src_len[(2, 3)], rel=1e-4)
    assert got[(6, 7)] == pytest.approx(src_len[(3, 4)], rel=1e-4)


def test_retarget_without_neck_and_other_canvas_and_coco():
    target = arms_up_pose(352, 512)                 # other canvas: mapped onto the source canvas first
    target.keypoints[1] = 0                         # no neck: shoulders start new branches
    out = retarget_pose(target, standing_pose())
    assert (out.width, out.height) == (176, 256) and out.keypoints[1, 2] == 0
    assert bone_lengths(out)[(2, 3)] == pytest.approx(bone_lengths(standing_pose())[(2, 3)], rel=1e-4)
    c = retarget_pose(openpose18_to_coco17(arms_up_pose()), openpose18_to_coco17(standing_pose()))
    assert c.layout == "coco17" and c.num_joints == 17


def test_retarget_errors():
    empty = Pose(np.zeros((18, 3)), 176, 256)
    with pytest.raises(EmptyPoseError, match="source"):
        retarget_pose(standing_pose(), empty)
    with pytest.raises(EmptyPoseError, match="target"):
        retarget_pose(empty, standing_pose())
    with pytest.raises(InputError, match="anchor"):
        retarget_pose(standing_pose(), standing_pose(), anchor="middle")
