"""Pose file formats: round trips for every format and one test per bad-input case."""
import json
import logging
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repose_core.errors import PoseFormatError
from repose_core.pose import (
    OPENPOSE18, OPENPOSE25, Pose, PoseFrame, from_pose_keypoint, load_pose_file, read_gfla_pairs, read_gfla_pose,
    read_humansd_npz, read_openpose_json, read_patn_annotations, read_patn_pairs, to_pose_keypoint,
    write_gfla_pairs, write_gfla_pose, write_humansd_npz, write_openpose_json, write_patn_annotations,
    write_patn_pairs,
)
from sample_poses import standing_pose



@st.composite
def poses(draw, layout="openpose18", integer=False):
    w = draw(st.integers(16, 1024))
    h = draw(st.integers(16, 1024))
    n = 18 if layout == "openpose18" else 17
    vis = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kp = np.zeros((n, 3), np.float32)
    kp[:, 0] = rng.uniform(2, w, n)
    kp[:, 1] = rng.uniform(2, h, n)
    if integer:
        kp[:, :2] = np.round(kp[:, :2])
    kp[:, 2] = rng.uniform(0.05, 1.0, n)
    kp[~vis] = 0
    return Pose(kp, w, h, layout)


def assert_pose_close(a: Pose, b: Pose, atol=1e-3):
    assert (a.width, a.height, a.layout) == (b.width, b.height, b.layout)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=atol)


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI POSE_KEYPOINT


def dwpose_frame():
    """A frame as comfyui_controlnet_aux's DWPose node emits it (pixel coords, c = 1, missing [0, 0, 0])."""
    p = standing_pose(512, 768, missing=(16,))
    flat = p.keypoints.reshape(-1).tolist()
    return {"people": [{"pose_keypoints_2d": flat, "face_keypoints_2d": [300.0, 100.0, 1.0] * 70,
                        "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
            "canvas_height": 768, "canvas_width": 512}


def test_pose_keypoint_dwpose_pixels():
    (frame,) = from_pose_keypoint([dwpose_frame()])
    assert (frame.width, frame.height) == (512, 768)
    (p,) = frame.people
    assert_pose_close(p, standing_pose(512, 768, missing=(16,)))
    assert p.extras["face_keypoints_2d"][:3] == [300.0, 100.0, 1.0]
    assert p.extras["hand_left_keypoints_2d"] is None


def test_pose_keypoint_openpose_preprocessor_normalised_is_detected():
    d = dwpose_frame()
    kp = np.array(d["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    kp[:, 0] /= 512
    kp[:, 1] /= 768
    d["people"][0]["pose_keypoints_2d"] = kp.reshape(-1).tolist()
    d["people"][0]["face_keypoints_2d"] = [300 / 512, 100 / 768, 1.0] * 70
    (frame,) = from_pose_keypoint([d])
    assert_pose_close(frame.people[0], standing_pose(512, 768, missing=(16,)))
    np.testing.assert_allclose(frame.people[0].extras["face_keypoints_2d"][:3], [300, 100, 1])


def test_pose_keypoint_writer_matches_dwpose_layout():
    out = to_pose_keypoint([PoseFrame([standing_pose(512, 768, missing=(16,))], 512, 768)])
    (d,) = out
    assert d["canvas_width"] == 512 and d["canvas_height"] == 768
    person = d["people"][0]
    assert len(person["pose_keypoints_2d"]) == 54
    assert person["pose_keypoints_2d"][16 * 3:17 * 3] == [0.0, 0.0, 0.0]
    assert set(person) == {"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
                           "hand_right_keypoints_2d"}
    json.dumps(out)  # plain JSON types only


@settings(max_examples=40, deadline=None)
@given(st.lists(poses(), min_size=0, max_size=3), st.booleans())
def test_pose_keypoint_round_trip(people, normalized):
    w, h = (people[0].width, people[0].height) if people else (64, 48)
    people = [Pose(p.keypoints * [w / p.width, h / p.height, 1], w, h) for p in people]
    frames = [PoseFrame(people, w, h)]
    back = from_pose_keypoint(to_pose_keypoint(frames, normalized=normalized), normalized=normalized)
    assert len(back) == 1 and (back[0].width, back[0].height) == (w, h)
    assert len(back[0].people) == len(people)
    for a, b in zip(back[0].people, people):
        assert_pose_close(a, b, atol=1e-2)


def test_pose_keypoint_binary_confidence_and_coco_input():
    p = standing_pose()
    p.keypoints[:, 2] = 0.5
    from repose_core.pose import openpose18_to_coco17
    d = to_pose_keypoint(openpose18_to_coco17(p), binary_confidence=True)[0]
    kp = np.array(d["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert set(kp[:, 2]) == {1.0}   # neck synthesised from confident shoulders, all c = 1


def test_pose_keypoint_body25_and_coco17_people():
    kp25 = np.zeros((25, 3))
    for j, name in enumerate(OPENPOSE18):
        kp25[OPENPOSE25.index(name)] = standing_pose().keypoints[j]
    kp25[OPENPOSE25.index("mid_hip")] = (88, 140, 1)
    d = {"people": [{"pose_keypoints_2d": kp25.reshape(-1).tolist()},
                    {"pose_keypoints_2d": [10.0, 20.0, 0.9] * 17}], "canvas_width": 176, "canvas_height": 256}
    (frame,) = from_pose_keypoint(json.dumps([d]))
    assert_pose_close(frame.people[0], standing_pose())
    assert frame.people[1].layout == "coco17"


def test_pose_keypoint_no_person_gives_empty_frame():
    (frame,) = from_pose_keypoint([{"people": [], "canvas_width": 64, "canvas_height": 32}])
    assert frame.people == [] and (frame.width, frame.height) == (64, 32)


def test_pose_keypoint_wrong_count_names_field():
    d = dwpose_frame()
    d["people"][0]["pose_keypoints_2d"] = [1.0, 2.0, 1.0] * 20
    with pytest.raises(PoseFormatError, match=r"20 keypoints.*frames\[0\]\.people\[0\]\.pose_keypoints_2d"):
        from_pose_keypoint([d])


def test_pose_keypoint_not_triplets_names_field():
    d = dwpose_frame()
    d["people"][0]["pose_keypoints_2d"] = [1.0] * 53
    with pytest.raises(PoseFormatError, match="triplets"):
        from_pose_keypoint([d])


def test_pose_keypoint_nan_with_confidence_names_joint():
    d = dwpose_frame()
    d["people"][0]["pose_keypoints_2d"][4 * 3] = float("nan")
    with pytest.raises(PoseFormatError, match=r"joint 4 \(right_wrist\).*pose_keypoints_2d"):
        from_pose_keypoint([d])


def test_pose_keypoint_nan_on_missing_joint_is_missing():
    d = dwpose_frame()
    d["people"][0]["pose_keypoints_2d"][4 * 3:4 * 3 + 3] = [float("nan"), float("nan"), 0.0]
    (frame,) = from_pose_keypoint([d])
    np.testing.assert_array_equal(frame.people[0].keypoints[4], 0)


def test_pose_keypoint_missing_canvas_names_field():
    d = dwpose_frame()
    del d["canvas_width"], d["canvas_height"]
    with pytest.raises(PoseFormatError, match="canvas_width"):
        from_pose_keypoint([d])


def test_pose_keypoint_bad_canvas_value():
    d = dwpose_frame()
    d["canvas_width"] = -5
    with pytest.raises(PoseFormatError, match=r"frames\[0\]\.canvas_width"):
        from_pose_keypoint([d])


def test_pose_keypoint_non_numeric_value_names_item():
    d = dwpose_frame()
    d["people"][0]["pose_keypoints_2d"][7] = "12"
    with pytest.raises(PoseFormatError, match="item 7"):
        from_pose_keypoint([d])


def test_pose_keypoint_rejects_non_list():
    with pytest.raises(PoseFormatError, match="list of frames"):
        from_pose_keypoint(42)
    with pytest.raises(PoseFormatError, match="'people'"):
        from_pose_keypoint([{"canvas_width": 3}])


# ---------------------------------------------------------------------------------------------------------------
# OpenPose JSON


def test_openpose_json_round_trip(tmp_path):
    p = standing_pose(missing=(3, 4))
    p.extras = {"hand_left_keypoints_2d": [1.0, 2.0, 0.5] * 21}
    path = tmp_path / "img_keypoints.json"
    write_openpose_json(path, PoseFrame([p, standing_pose()], 176, 256))
    doc = json.loads(path.read_text())
    assert doc["people"][0]["face_keypoints_2d"] == []     # OpenPose writes [] for absent parts
    frame = read_openpose_json(path)
    assert len(frame.people) == 2
    assert_pose_close(frame.people[0], p)
    assert frame.people[0].extras["hand_left_keypoints_2d"] == [1.0, 2.0, 0.5] * 21
    assert frame.people[0].extras["face_keypoints_2d"] is None


def test_openpose_json_body25_without_canvas(tmp_path, caplog):
    kp25 = np.zeros((25, 3))
    for j, name in enumerate(OPENPOSE18):
        kp25[OPENPOSE25.index(name)] = standing_pose().keypoints[j]
    path = tmp_path / "b25.json"
    path.write_text(json.dumps({"version": 1.3, "people": [{"person_id": [-1],
                                                            "pose_keypoints_2d": kp25.reshape(-1).tolist()}]}))
    frame = read_openpose_json(path, width=176, height=256)
    assert_pose_close(frame.people[0], standing_pose())
    with caplog.at_level(logging.WARNING, logger="repose"):
        frame = read_openpose_json(path)
    assert "inferred from the keypoints" in caplog.text
    assert frame.width >= 131 and frame.height >= 240


# ---------------------------------------------------------------------------------------------------------------
# DeepFashion PATN csv

PATN_SAMPLE = (
    "name:keypoints_y:keypoints_x\n"
    "fashionWOMENBlouses_Shirtsid0000153001_3back.jpg: [29, 56, 57, 99, -1, 56, 97, 134, 143, 209, -1, 143, 209, 250,"
    " 23, 23, 27, 26]: [80, 83, 55, 48, -1, 111, 118, 122, 66, 66, -1, 101, 101, 100, 74, 89, 66, 97]\n"
)


def test_patn_annotation_sample_parses():
    import io
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fasion-resize-annotation-test.csv")
        with io.open(path, "w") as f:
            f.write(PATN_SAMPLE)
        poses = read_patn_annotations(path)
    p = poses["fashionWOMENBlouses_Shirtsid0000153001_3back.jpg"]
    assert (p.width, p.height) == (176, 256)
    np.testing.assert_array_equal(p.keypoints[0], [80, 29, 1])     # x from keypoints_x, y from keypoints_y
    np.testing.assert_array_equal(p.keypoints[4], [0, 0, 0])       # -1 -> missing
    assert p.visible().sum() == 16


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(poses(integer=True), min_size=1, max_size=4))
def test_patn_annotation_round_trip(tmp_path, people):
    path = tmp_path / "fasion-resize-annotation-train.csv"
    src = {f"fashionMENid{i:08d}_1front.jpg": Pose(
        np.where(p.keypoints[:, 2:] > 0, np.c_[p.keypoints[:, :2], np.ones(18)], 0), p.width, p.height)
        for i, p in enumerate(people)}
    write_patn_annotations(path, src)
    for name, p in src.items():
        back = read_patn_annotations(path, height=p.height, width=p.width)[name]
        assert_pose_close(back, p, atol=0)


def test_patn_pairs_round_trip_and_index_column(tmp_path):
    pairs = [("fashionWOMENa_1front.jpg", "fashionWOMENa_2side.jpg"), ("x.jpg", "y.jpg")]
    path = tmp_path / "fasion-resize-pairs-test.csv"
    write_patn_pairs(path, pairs)
    assert path.read_text().splitlines()[0] == "from,to"
    assert read_patn_pairs(path) == pairs
    path.write_text(",from,to\n0,x.jpg,y.jpg\n")
    assert read_patn_pairs(path) == [("x.jpg", "y.jpg")]


@pytest.mark.parametrize("good, bad, message", [
    ("97]", "97, 5]", r"19 values, expected 18.*line 2, field 'keypoints_x'"),
    ("[29, 56", "[29 56", r"malformed JSON list.*line 2, field 'keypoints_y'"),
    ("[80, 83", "[NaN, 83", r"joint 0 \(nose\).*field 'keypoints_x'"),
], ids=["wrong_count", "malformed_list", "nan"])
def test_patn_annotation_errors_name_line_field_and_joint(tmp_path, good, bad, message):
    path = tmp_path / "a.csv"
    path.write_text(PATN_SAMPLE.replace(good, bad))
    with pytest.raises(PoseFormatError, match=message):
        read_patn_annotations(path)


def test_patn_annotation_bad_header_and_fields(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(PATN_SAMPLE.replace("name:keypoints_y:keypoints_x", "name,keypoints_y,keypoints_x"))
    with pytest.raises(PoseFormatError, match="field 'header'"):
        read_patn_annotations(path)
    path.write_text("name:keypoints_y:keypoints_x\nimg.jpg: [1, 2]\n")
    with pytest.raises(PoseFormatError, match=r"3 ':'-separated fields.*line 2"):
        read_patn_annotations(path)


def test_patn_writer_rejects_colon_in_name(tmp_path):
    with pytest.raises(PoseFormatError, match="without ':'"):
        write_patn_annotations(tmp_path / "a.csv", {"a:b.jpg": standing_pose()})


@pytest.mark.parametrize("read, name, text, message", [
    (read_openpose_json, "bad.json", '{"people": [\n  {"pose_keypoints_2d": [1, 2,, 3]}\n]}',
     r"malformed JSON.*file .*bad.json, line 2"),
    (read_openpose_json, "list.json", json.dumps([dwpose_frame()]), "from_pose_keypoint"),   # a POSE_KEYPOINT list
    (read_patn_pairs, "p.csv", "source,target\na,b\n", r"expected 'from,to'.*line 1, field 'header'"),
    (read_patn_pairs, "p.csv", "from,to\na.jpg,b.jpg\nc.jpg\n", r"line 3"),
], ids=["openpose_json_syntax", "openpose_json_pose_keypoint_list", "patn_pairs_header", "patn_pairs_short_row"])
def test_malformed_files_name_the_place_and_the_fix(tmp_path, read, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PoseFormatError, match=message):
        read(path)


# ---------------------------------------------------------------------------------------------------------------
# DeepFashion GFLA / PIDM txt


def test_gfla_pose_reader_applies_pidm_transform(tmp_path):
    rows = ["-1 -1"] * 18
    rows[0] = "40 0"        # left edge of the person image, top
    rows[1] = "216 256"     # right edge, bottom
    rows[2] = "128.0 128.0"
    path = tmp_path / "pose.txt"
    path.write_text("\n".join(rows) + "\n")
    p = read_gfla_pose(path)
    np.testing.assert_allclose(p.keypoints[:3], [[0, 0, 1], [176, 256, 1], [88, 128, 1]])
    assert p.visible().sum() == 3
    p = read_gfla_pose(path, height=512, width=352)
    np.testing.assert_allclose(p.keypoints[1], [352, 512, 1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(poses())
def test_gfla_pose_round_trip(tmp_path, p):
    p = Pose(np.where(p.keypoints[:, 2:] > 0, np.c_[p.keypoints[:, :2], np.ones(18)], 0), p.width, p.height)
    path = tmp_path / "pose.txt"
    write_gfla_pose(path, p)
    assert len(np.loadtxt(path)) == 18        # what PIDM's loader does
    back = read_gfla_pose(path, height=p.height, width=p.width)
    assert_pose_close(back, p, atol=1e-3 * max(p.width / 176, p.height / 256, 1))


def test_gfla_pairs_round_trip(tmp_path):
    pairs = [("img/MEN/Denim/id_1/01_1_front.jpg", ["img/MEN/Denim/id_1/01_2_side.jpg",
                                                    "img/MEN/Denim/id_1/01_3_back.jpg"]),
             ("t.jpg", ["s.jpg"])]
    path = tmp_path / "test_pairs.txt"
    write_gfla_pairs(path, pairs)
    assert path.read_text().splitlines()[0].count(",") == 2
    assert read_gfla_pairs(path) == pairs


def test_gfla_pairs_bad_line(tmp_path):
    path = tmp_path / "train_pairs.txt"
    path.write_text("a.jpg,b.jpg\nlonely.jpg\n")
    with pytest.raises(PoseFormatError, match=r"line 2"):
        read_gfla_pairs(path)


def test_gfla_pose_wrong_line_count(tmp_path):
    path = tmp_path / "pose.txt"
    path.write_text("1 2\n" * 17)
    with pytest.raises(PoseFormatError, match=r"17 keypoint lines, expected 18.*pose.txt"):
        read_gfla_pose(path)


def test_gfla_pose_non_numeric_names_line(tmp_path):
    path = tmp_path / "pose.txt"
    path.write_text("1 2\n1 2\nfoo 3\n" + "1 2\n" * 15)
    with pytest.raises(PoseFormatError, match=r"line 3, field 'joint 2'"):
        read_gfla_pose(path)


def test_gfla_pose_nan_names_joint(tmp_path):
    path = tmp_path / "pose.txt"
    path.write_text("1 2\nnan 2\n" + "1 2\n" * 16)
    with pytest.raises(PoseFormatError, match=r"joint 1 \(neck\).*line 2"):
        read_gfla_pose(path)


# ---------------------------------------------------------------------------------------------------------------
# HumanSD npz


_PEOPLE_RNG = np.random.default_rng(3)  # one stream for all calls: each call draws different people


def humansd_people(n=2, rng=None):
    rng = _PEOPLE_RNG if rng is None else rng
    people = []
    for _ in range(n):
        kp = np.c_[rng.uniform(0, 500, (17, 2)), rng.uniform(0.1, 1, 17)].astype(np.float32)
        people.append({"keypoints": kp, "score": np.float64(kp[:, 2].mean()), "area": np.float64(1234.5)})
    return people


def test_humansd_reads_mmpose_style_file_without_canvas(tmp_path, caplog):
    people = humansd_people()
    arr = np.empty(len(people), dtype=object)
    arr[:] = people
    path = tmp_path / "000338717.npz"
    np.savez(path, arr)          # exactly how the HumanSD data was written: arr_0 = object array of dicts
    frame = read_humansd_npz(path, width=512, height=512)
    assert [p.layout for p in frame.people] == ["coco17", "coco17"]
    np.testing.assert_allclose(frame.people[1].keypoints, people[1]["keypoints"])
    with caplog.at_level(logging.WARNING, logger="repose"):
        read_humansd_npz(path)
    assert "inferred" in caplog.text


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(poses(layout="coco17"), min_size=0, max_size=3))
def test_humansd_round_trip(tmp_path, people):
    w, h = (people[0].width, people[0].height) if people else (40, 30)
    people = [Pose(p.keypoints * [w / p.width, h / p.height, 1], w, h, "coco17") for p in people]
    path = tmp_path / "pose.npz"
    write_humansd_npz(path, PoseFrame(people, w, h))
    frame = read_humansd_npz(path)
    assert (frame.width, frame.height) == (w, h) and len(frame.people) == len(people)
    for a, b in zip(frame.people, people):
        assert_pose_close(a, b, atol=1e-3)


def test_humansd_numeric_array(tmp_path):
    kp = np.tile(np.array([[5.0, 6.0, 0.9]]), (2, 17, 1))
    path = tmp_path / "n.npz"
    np.savez(path, kp)
    frame = read_humansd_npz(path, width=10, height=10)
    assert len(frame.people) == 2


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_humansd_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = {"keypoints": np.zeros((17, 3)), "payload": _Evil(marker)}
    path = tmp_path / "evil.npz"
    np.savez(path, arr)
    with pytest.raises(PoseFormatError, match=r"refusing to unpickle (posix|nt|os)\.system.*evil.npz"):
        read_humansd_npz(path, width=10, height=10)
    assert not marker.exists()


def test_humansd_bad_keypoint_shape_names_field(tmp_path):
    arr = np.empty(1, dtype=object)
    arr[0] = {"keypoints": np.zeros((17, 2)), "score": 1.0}
    path = tmp_path / "bad.npz"
    np.savez(path, arr)
    with pytest.raises(PoseFormatError, match=r"\(17, 2\).*field 'arr_0\[0\]\.keypoints'"):
        read_humansd_npz(path, width=10, height=10)


def test_humansd_missing_arr0_and_not_a_zip(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, poses=np.zeros(3))
    with pytest.raises(PoseFormatError, match="no 'arr_0'"):
        read_humansd_npz(path)
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(PoseFormatError, match="not a valid .npz"):
        read_humansd_npz(path)


def test_humansd_corrupt_pickle(tmp_path):
    arr = np.empty(1, dtype=object)
    arr[0] = {"keypoints": np.zeros((17, 3))}
    good = tmp_path / "g.npz"
    np.savez(good, arr)
    with zipfile.ZipFile(good) as z:
        data = z.read("arr_0.npy")
    bad = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("arr_0.npy", data[: len(data) - 40])
    with pytest.raises(PoseFormatError, match="corrupt object array"):
        read_humansd_npz(bad, width=10, height=10)


# ---------------------------------------------------------------------------------------------------------------
# load_pose_file


def test_load_pose_file_dispatches_every_format(tmp_path):
    p = standing_pose()
    (tmp_path / "pk.json").write_text(json.dumps(to_pose_keypoint(p)))
    write_openpose_json(tmp_path / "op.json", p)
    write_gfla_pose(tmp_path / "g.txt", p)
    write_humansd_npz(tmp_path / "h.npz", p)
    write_patn_annotations(tmp_path / "a.csv", {"img.jpg": p})
    for name, kwargs in (("pk.json", {}), ("op.json", {}), ("g.txt", {}), ("h.npz", {}),
                         ("a.csv", {"image_name": "img.jpg"})):
        (frame,) = load_pose_file(tmp_path / name, **kwargs)
        (q,) = frame.people
        assert (q.width, q.height) == (176, 256), name
        expected = p.keypoints
        if q.layout == "coco17":   # HumanSD stores COCO-17: compare without the neck
            from repose_core.pose import openpose18_to_coco17
            expected = openpose18_to_coco17(p).keypoints
        np.testing.assert_allclose(q.keypoints, expected, atol=1e-3, err_msg=name)


def test_load_pose_file_errors(tmp_path):
    with pytest.raises(PoseFormatError, match="not found"):
        load_pose_file(tmp_path / "nope.json")
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(PoseFormatError, match=r"unsupported pose file extension '.yaml'.*accepted"):
        load_pose_file(tmp_path / "x.yaml")
    write_patn_annotations(tmp_path / "a.csv", {"img.jpg": standing_pose()})
    with pytest.raises(PoseFormatError, match="image_name"):
        load_pose_file(tmp_path / "a.csv")
    with pytest.raises(PoseFormatError, match="'other.jpg' is not annotated"):
        load_pose_file(tmp_path / "a.csv", image_name="other.jpg")
    (tmp_path / "n.json").write_text("3")
    with pytest.raises(PoseFormatError, match="JSON root is a int"):
        load_pose_file(tmp_path / "n.json")


def test_writer_rejects_invalid_pose(tmp_path):
    kp = standing_pose().keypoints.copy()
    kp[2, 1] = np.inf
    with pytest.raises(PoseFormatError, match=r"joint 2 \(right_shoulder\)"):
        write_gfla_pose(tmp_path / "g.txt", Pose(kp, 176, 256))
