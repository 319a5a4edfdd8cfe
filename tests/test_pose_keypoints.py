"""Keypoint sets, conversions between them, and validate_pose."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repose_core.errors import EmptyPoseError, PoseFormatError
from repose_core.pose import (
    COCO17, COCO17_LIMBS, MIRROR, OPENPOSE18, OPENPOSE18_LIMBS, OPENPOSE25, Pose, body25_to_openpose18,
    coco17_to_openpose18, openpose18_to_coco17, validate_pose,
)


def coco_pose(conf=1.0, rng=None):
    rng = rng or np.random.default_rng(0)
    kp = np.zeros((17, 3), np.float32)
    kp[:, :2] = rng.uniform(10, 160, (17, 2))
    kp[:, 2] = conf
    return Pose(kp, 176, 256, "coco17")


def test_layout_tables_are_consistent():
    assert len(OPENPOSE18) == 18 and len(COCO17) == 17 and len(OPENPOSE25) == 25
    assert len(OPENPOSE18_LIMBS) == 17 and len(COCO17_LIMBS) == 16
    # OpenPose limbs form a tree rooted at the neck: every other joint is a child exactly once
    children = sorted(c for _, c in OPENPOSE18_LIMBS)
    assert children == [j for j in range(18) if j != 1]
    # HumanSD's skeleton (configs/humansd/humansd-inference.yaml): ears to shoulders, no shoulder-shoulder limb
    assert (3, 5) in COCO17_LIMBS and (4, 6) in COCO17_LIMBS and (5, 6) not in COCO17_LIMBS


def test_mirror_swaps_left_and_right_names():
    for layout, names in (("openpose18", OPENPOSE18), ("coco17", COCO17)):
        for j, m in enumerate(MIRROR[layout]):
            a, b = names[j], names[m]
            assert a.replace("left", "X").replace("right", "left").replace("X", "right") == b


def test_coco17_to_openpose18_reorders_by_name_and_synthesises_neck():
    p = coco_pose()
    op = coco17_to_openpose18(p)
    assert op.layout == "openpose18" and op.keypoints.shape == (18, 3)
    for j, name in enumerate(OPENPOSE18):
        if name != "neck":
            np.testing.assert_array_equal(op.keypoints[j], p.keypoints[COCO17.index(name)])
    ls, rs = p.keypoints[COCO17.index("left_shoulder")], p.keypoints[COCO17.index("right_shoulder")]
    np.testing.assert_allclose(op.keypoints[1, :2], (ls[:2] + rs[:2]) / 2)
    assert op.keypoints[1, 2] == 1.0


def test_neck_needs_both_shoulders_above_threshold():
    p = coco_pose()
    p.keypoints[COCO17.index("left_shoulder"), 2] = 0.25
    op = coco17_to_openpose18(p)              # DWPose default 0.3
    np.testing.assert_array_equal(op.keypoints[1], 0)
    op = coco17_to_openpose18(p, neck_threshold=0.2)
    assert op.keypoints[1, 2] == pytest.approx(0.25)   # min of the two shoulder confidences


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=17, max_size=17), st.integers(0, 2**16))
def test_coco_openpose_coco_round_trip(visible, seed):
    p = coco_pose(rng=np.random.default_rng(seed))
    p.keypoints[~np.array(visible)] = 0
    back = openpose18_to_coco17(coco17_to_openpose18(p))
    assert back.layout == "coco17"
    np.testing.assert_array_equal(back.keypoints, p.keypoints)


def test_openpose18_to_coco17_drops_neck_only():
    kp = np.arange(54, dtype=np.float32).reshape(18, 3) + 1
    c = openpose18_to_coco17(Pose(kp, 100, 100))
    assert c.num_joints == 17
    assert not any((c.keypoints == kp[1]).all(axis=1))


def test_body25_to_openpose18_drops_midhip_and_feet():
    kp = np.arange(75, dtype=np.float32).reshape(25, 3)
    out = body25_to_openpose18(kp)
    for j, name in enumerate(OPENPOSE18):
        np.testing.assert_array_equal(out[j], kp[OPENPOSE25.index(name)])


def test_conversion_rejects_wrong_layout():
    with pytest.raises(PoseFormatError, match="layout"):
        coco17_to_openpose18(Pose(np.zeros((5, 3)), 10, 10, "coco17"))


# --- validate_pose: one test per bad input, each naming the field


def test_validate_rejects_non_pose():
    with pytest.raises(PoseFormatError, match="expected a repose Pose"):
        validate_pose({"keypoints": []})


def test_validate_rejects_wrong_count():
    with pytest.raises(PoseFormatError, match=r"shape \(18, 3\).*pose.keypoints"):
        validate_pose(Pose(np.zeros((17, 3)), 10, 10, "openpose18"))


def test_validate_rejects_unknown_layout():
    with pytest.raises(PoseFormatError, match="unknown layout 'body25'"):
        validate_pose(Pose(np.zeros((25, 3)), 10, 10, "body25"))


def test_validate_rejects_nan_coordinates_of_present_joint():
    kp = np.ones((18, 3), np.float32)
    kp[4, 0] = np.nan
    with pytest.raises(PoseFormatError, match=r"joint 4 \(right_wrist\).*field 'pose.keypoints\[4\]'"):
        validate_pose(Pose(kp, 10, 10))


def test_validate_allows_nan_on_missing_joint_and_rejects_negative_confidence():
    kp = np.ones((18, 3), np.float32)
    kp[4] = (np.nan, np.nan, 0)
    validate_pose(Pose(kp, 10, 10))
    kp[4] = (1, 1, -0.5)
    with pytest.raises(PoseFormatError, match="confidence of joint 4"):
        validate_pose(Pose(kp, 10, 10))


def test_validate_rejects_bad_canvas():
    with pytest.raises(PoseFormatError, match="pose.width"):
        validate_pose(Pose(np.zeros((18, 3)), 0, 10))
    with pytest.raises(PoseFormatError, match="pose.height"):
        validate_pose(Pose(np.zeros((18, 3)), 10, 2.5))


def test_validate_off_canvas_is_allowed_unless_asked():
    kp = np.ones((18, 3), np.float32)
    kp[0, 0] = 500
    validate_pose(Pose(kp, 10, 10))
    with pytest.raises(PoseFormatError, match=r"joint 0 \(nose\).*outside the 10x10 canvas"):
        validate_pose(Pose(kp, 10, 10), on_canvas=True)


def test_validate_require_person():
    with pytest.raises(EmptyPoseError, match="no person"):
        validate_pose(Pose(np.zeros((18, 3)), 10, 10), require_person=True)


def test_pose_equality_and_copy_are_independent():
    a = Pose(np.ones((18, 3)), 10, 10, extras={"face_keypoints_2d": [1.0, 2.0, 1.0]})
    b = a.copy()
    assert a == b
    b.keypoints[0, 0] = 5
    b.extras["face_keypoints_2d"][0] = 9.0
    assert a != b and a.keypoints[0, 0] == 1 and a.extras["face_keypoints_2d"][0] == 1.0


def test_pose_construction_rejects_partial_triplets():
    with pytest.raises(PoseFormatError, match="53 numbers"):
        Pose(np.ones(53), 10, 10)
    with pytest.raises(PoseFormatError, match="not numeric"):
        Pose([["a", "b", "c"]], 10, 10)
