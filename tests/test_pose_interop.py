"""Pose interop with comfyui_controlnet_aux: POSE_KEYPOINT exactly as its DWPose / OpenPose preprocessors write it.

The frames below are built the way controlnet_aux builds them (`encode_poses_as_dict`: [x, y, 1.0] per detected
point, [0, 0, 0] per missed body joint, None for absent face/hands; the OpenPose preprocessor divides by the padded
detection image and writes the unpadded size; a hand/face point its detector missed is written as (-1, -1) divided
by that image size with confidence 1.0). `controlnet_aux_decode` is its `decode_json_as_poses` rule for what its
Render / ControlNet nodes draw: a point is kept only when its confidence is >= 1.0.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repose_core.errors import EmptyPoseError, InputError
from repose_core.pose import from_pose_keypoint, render_openpose, render_pidm_pose_map
from repose_core.pose.formats import controlnet_aux_padded_canvas
from repose_core.pose.geometry import fit_frame, select_person
from repose_core.transfer_ops import place_target_poses, render_target_poses

REPO = Path(__file__).resolve().parents[1]

# A standing person on a 176x256 (W x H) canvas, OpenPose-18 (x, y).
BODY_176x256 = [(88, 40), (88, 62), (66, 63), (60, 98), (56, 132), (110, 63), (116, 98), (120, 132), (76, 132),
                (74, 180), (72, 226), (100, 132), (102, 180), (104, 226), (84, 36), (92, 36), (79, 39), (97, 39)]


def dw_person(points, face=None, left=None, right=None) -> dict:
    """One person as controlnet_aux's encode_poses_as_dict writes it (missing body joint = None -> [0, 0, 0])."""
    def compress(kps):
        if not kps:
            return None
        return [v for kp in kps for v in ([float(kp[0]), float(kp[1]), 1.0] if kp is not None else [0.0, 0.0, 0.0])]
    return {"pose_keypoints_2d": compress(points) if points is not None else None, "face_keypoints_2d": compress(face),
            "hand_left_keypoints_2d": compress(left), "hand_right_keypoints_2d": compress(right)}


def controlnet_aux_decode(frame: dict) -> list:
    """controlnet_aux decode_json_as_poses: body points kept only when c >= 1.0 (others None)."""
    out = []
    for person in frame["people"]:
        flat = person.get("pose_keypoints_2d") or []
        out.append([(x, y) if c >= 1.0 else None for x, y, c in zip(flat[0::3], flat[1::3], flat[2::3])])
    return out



# ---------------------------------------------------------------------------------------------------------------
# 6. DWPose lists a face-only person first


def face_only_first_frame():
    face = [(80 + i % 10, 30 + i // 10) for i in range(68)] + [(84, 36), (92, 36)]
    return {"people": [dw_person([None] * 18, face=face), dw_person(BODY_176x256)],
            "canvas_height": 256, "canvas_width": 176}


def test_face_only_person_listed_first_is_skipped_for_the_body():
    frames = from_pose_keypoint([face_only_first_frame()])
    index, why = select_person(frames[0])
    assert index == 1 and "person 1 of 2" in why and "18 of 18" in why
    report = []
    maps = render_target_poses(frames, 256, 176, "pidm20", report=report)
    expected = render_pidm_pose_map(frames[0].people[1], 256, 176)
    assert torch.equal(maps[0].permute(1, 2, 0), torch.from_numpy(expected))
    assert maps[0, :3].sum() > 0                       # a skeleton, not the empty map of the face-only person
    assert "person 1 of 2" in report[0]


def test_person_chosen_by_index_and_bad_choices_are_explained():
    frames = from_pose_keypoint([face_only_first_frame()])
    assert select_person(frames[0], 1)[0] == 1
    with pytest.raises(InputError, match="has 2 people"):
        place_target_poses(frames, 256, 176, person=2)
    with pytest.raises(EmptyPoseError, match="face or hands only"):
        place_target_poses(frames, 256, 176, person=0)


# ---------------------------------------------------------------------------------------------------------------
# 7. A pose whose canvas aspect differs from the source image


def test_pose_of_another_aspect_is_fitted_like_an_image_not_stretched():
    # DWPose on a 1024x768 (W x H) photo: the person stands in the middle third.
    pts = [(512 + (x - 88) * 2.0, 96 + y * 2.0) for x, y in BODY_176x256]
    frames = from_pose_keypoint([{"people": [dw_person(pts)], "canvas_height": 768, "canvas_width": 1024}])
    placed, report = place_target_poses(frames, 256, 176)
    kp = placed[0].people[0].keypoints
    s = 176 / 1024                                       # fit inside: limited by the width
    oy = (256 - round(768 * s)) // 2                     # centred vertically, like fit_params("pad")
    src = np.array(pts)
    np.testing.assert_allclose(kp[:, 0], src[:, 0] * s, atol=1e-3)
    np.testing.assert_allclose(kp[:, 1], src[:, 1] * s + oy, atol=1e-3)
    # Same scale on both axes: shoulder width / torso length is what it was on the 1024x768 canvas.
    ratio = lambda p: (p[5, 0] - p[2, 0]) / (p[8, 1] - p[2, 1])  # noqa: E731
    assert math.isclose(ratio(kp), ratio(src), rel_tol=1e-4)
    assert "1024x768" in report[0] and "176x256" in report[0] and "aspect ratio" in report[0]


def test_pose_of_the_same_aspect_is_rescaled_to_the_whole_image():
    pts = [(x * 2, y * 2) for x, y in BODY_176x256]
    frame = from_pose_keypoint([{"people": [dw_person(pts)], "canvas_height": 512, "canvas_width": 352}])[0]
    fitted, text = fit_frame(frame, 176, 256)
    np.testing.assert_allclose(fitted.people[0].keypoints[:, :2], np.array(BODY_176x256), atol=1e-4)
    assert "rescaled" in text


# ---------------------------------------------------------------------------------------------------------------
# 8. The OpenPose preprocessor's padding quirk


def openpose_preprocessor_frame(points_px, width, height, detect_resolution=512):
    """What controlnet_aux's OpenposePreprocessor writes for a detection on a width x height image: the image is
    resized so its shorter side is detect_resolution, padded to multiples of 64 (bottom/right), points divided by
    the padded size, canvas = the resized, unpadded size."""
    k = detect_resolution / min(width, height)
    W_t, H_t = int(round(width * k)), int(round(height * k))
    W_p, H_p = -(-W_t // 64) * 64, -(-H_t // 64) * 64
    pts = [(x * k / W_p, y * k / H_p) for x, y in points_px]
    return {"people": [dw_person(pts)], "canvas_height": H_t, "canvas_width": W_t}, (W_t, H_t), k


def test_openpose_padding_quirk_is_undone():
    # A 512x683 photo (the case measured in the issue): padded to 512x704 for detection.
    pts = [(256 + (x - 88) * 2.4, y * 2.6) for x, y in BODY_176x256]
    frame, (W, H), k = openpose_preprocessor_frame(pts, 512, 683)
    assert (W, H) == (512, 683) and controlnet_aux_padded_canvas(W, H) == (512, 704)
    got = from_pose_keypoint([frame])[0]
    np.testing.assert_allclose(got.people[0].keypoints[:, :2], np.array(pts) * k, atol=1e-3)
    # Read naively (x canvas), the ankles would land ~18 px too high; that is what pad64=False gives.
    naive = from_pose_keypoint([frame], pad64=False)[0].people[0].keypoints
    assert np.abs(naive[:, 1] - np.array(pts)[:, 1]).max() > 15


def test_padding_correction_leaves_other_frames_alone():
    pts = [(x * 2, y * 2) for x, y in BODY_176x256]
    for W, H in ((512, 768), (352, 512)):             # no padding happened / shorter side not a multiple of 64
        frame = {"people": [dw_person([(x / W, y / H) for x, y in pts])], "canvas_height": H, "canvas_width": W}
        got = from_pose_keypoint([frame])[0].people[0].keypoints
        np.testing.assert_allclose(got[:, :2], np.array(pts), atol=1e-3)
    pixels = {"people": [dw_person(pts)], "canvas_height": 683, "canvas_width": 512}   # DWPose: pixels, no quirk
    np.testing.assert_allclose(from_pose_keypoint([pixels])[0].people[0].keypoints[:, :2], np.array(pts), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# 9. Binary confidence, the form controlnet_aux reads


class _Estimator:
    """A LoadedEstimator stand-in that hands back the module (no ComfyUI model management)."""

    def __init__(self, module):
        self.module = module

    def on_device(self):
        return self.module


def test_pose_from_image_writes_confidences_controlnet_aux_keeps(import_pack):
    from repose_core.estimator import build_estimator
    from PIL import Image

    pack = import_pack()
    tools = sys.modules[f"{pack.__name__}.nodes.pose_tools_nodes"]
    module = build_estimator(REPO / "repose_core" / "weights" / "repose_default_estimator.safetensors")
    img = np.asarray(Image.open(REPO / "repose_core/synthetic/examples/64x44/source_0.png").convert("RGB"))
    image = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
    binary = tools.estimate_pose_keypoint(_Estimator(module), image, threshold=0.0)
    raw = tools.estimate_pose_keypoint(_Estimator(module), image, threshold=0.0, confidence="estimator")
    conf_raw = np.array(raw[0]["people"][0]["pose_keypoints_2d"][2::3])
    conf_bin = np.array(binary[0]["people"][0]["pose_keypoints_2d"][2::3])
    assert set(conf_bin.tolist()) <= {0.0, 1.0} and np.array_equal(conf_bin > 0, conf_raw > 0)
    kept = controlnet_aux_decode(binary[0])[0]
    assert sum(p is not None for p in kept) == int((conf_raw > 0).sum()) > 0
    assert sum(p is not None for p in controlnet_aux_decode(raw[0])[0]) < sum(p is not None for p in kept)
    with pytest.raises(Exception, match="input 'confidence'"):   # the pack's own copy of InputError
        tools.estimate_pose_keypoint(_Estimator(module), image, confidence="sometimes")


# ---------------------------------------------------------------------------------------------------------------
# 10. Face and hand points


def hand_points(x0, y0):
    return [(x0 + 3 * (i % 5), y0 + 4 * (i // 5)) for i in range(21)]


def test_render_draws_dwpose_face_and_hands():
    face = [(80 + (i % 10) * 1.5, 28 + (i // 10) * 2) for i in range(70)]
    person = dw_person(BODY_176x256, face=face, left=hand_points(118, 136), right=hand_points(44, 136))
    frame = from_pose_keypoint([{"people": [person], "canvas_height": 256, "canvas_width": 176}])[0]
    img = render_openpose(frame, 256, 176)
    body_only = render_openpose(frame, 256, 176, hands=False, face=False)
    white = (img == 1.0).all(-1)
    assert white[28:42, 78:96].sum() > 40 and not (body_only == 1.0).all(-1)[28:42, 78:96].any()
    hand_region = (slice(134, 156), slice(116, 134))
    assert (np.abs(img[hand_region] - body_only[hand_region]).sum(-1) > 0).sum() > 50
    assert tuple((img[140, 118] * 255).round()) == (0, 0, 255) or (img[hand_region][..., 2] == 1.0).any()


def test_missed_hand_point_is_not_drawn_near_minus_one():
    # OpenPose preprocessor, hands on: one finger tip missed -> (-1/W, -1/H) with confidence 1.0 (normalised).
    W, H = 512, 768
    hand = [(x * 2 / W, y * 2 / H) for x, y in hand_points(118, 136)]
    hand[8] = (-1 / W, -1 / H)
    body = [(x * 2 / W, y * 2 / H) for x, y in BODY_176x256]
    frame = {"people": [dw_person(body, left=hand)], "canvas_height": H, "canvas_width": W}
    pose = from_pose_keypoint([frame])[0].people[0]
    left = np.asarray(pose.extras["hand_left_keypoints_2d"]).reshape(-1, 3)
    assert tuple(left[8]) == (0.0, 0.0, 0.0) and (left[np.arange(21) != 8, 2] == 1.0).all()
    img = render_openpose(pose, H, W)
    assert img[:40, :40].sum() == 0                    # nothing drawn at the top-left corner
    assert img[260:320, 230:270].sum() > 0             # the rest of the hand is drawn
