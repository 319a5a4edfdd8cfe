"""Write a synthetic pose-transfer dataset in the DeepFashion PATN layout (what CFLD/PATN/DPTN loaders read).

    <out>/train_highres/<name>.png, <out>/test_highres/<name>.png
    <out>/fasion-resize-pairs-{train,test}.csv        header `from,to` (upstream spells "fasion")
    <out>/fasion-resize-annotation-{train,test}.csv   `name:keypoints_y:keypoints_x`, 18 ints each, -1 = missing
    <out>/dataset.json                                size, seed, counts, generator version

Differences from the real files: images are PNG (no JPEG loss), and keypoints are in the generated image's own
H x W frame (256x176 only for that size) -- dataset.json says which.

Every identity has its own random stream derived from (seed, split, index), so the data are byte-identical for a
seed, test identities are disjoint from training ones (another stream and other names), and the same seed gives the
same people in the same poses at every image size. Render noise uses a separate stream so that it cannot shift the
pose draws between sizes.
"""
from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..pose.formats import write_patn_annotations, write_patn_pairs
from .identity import sample_identity
from .pose_prior import sample_pose
from .render import MIN_SIZE, render_figure

log = logging.getLogger("repose")

GENERATOR_VERSION = "1"
SIZES = ((64, 44), (128, 88), (256, 176))   # H x W sizes the project trains at (DeepFashion aspect)
SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}
_NOISE_STREAM = 1000


def image_name(split: str, identity_index: int, pose_index: int) -> str:
    """Flat file name, DeepFashion style (identity then pose): `synth_train_id00012_3.png`."""
    return f"synth_{split}_id{identity_index:05d}_{pose_index}.png"


def identity_rng(seed: int, split: str, identity_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], identity_index])


def render_identity_poses(seed: int, split: str, identity_index: int, poses_per_id: int, H: int, W: int):
    """The identity, its poses and their images for one (seed, split, index): (identity, [Pose], [uint8 image])."""
    rng = identity_rng(seed, split, identity_index)
    identity = sample_identity(rng)
    poses = [sample_pose(rng, H, W, identity) for _ in range(poses_per_id)]
    images = [render_figure(identity, pose, H, W,
                            np.random.default_rng([seed, _SPLIT_CODE[split], identity_index, _NOISE_STREAM + k]))
              for k, pose in enumerate(poses)]
    return identity, poses, images


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size) -> tuple[int, int]:
    try:
        H, W = size
    except (TypeError, ValueError):
        raise InputError(f"size must be (H, W), e.g. (64, 44); got {size!r}") from None
    H, W = _check_int("size H", H, MIN_SIZE[0]), _check_int("size W", W, MIN_SIZE[1])
    if (H, W) not in SIZES:
        log.info("synthetic size %dx%d is not one of the standard sizes %s", H, W, SIZES)
    return H, W


_OUTPUTS = ("dataset.json",) + tuple(f"fasion-resize-{kind}-{split}.csv" for kind in ("pairs", "annotation")
                                     for split in SPLITS)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix with another run's files unless overwrite=True, which removes only this generator's outputs."""
    ours = [out / n for n in _OUTPUTS if (out / n).exists()]
    ours += [p for split in SPLITS for p in sorted((out / f"{split}_highres").glob("*.png"))]
    if ours and not overwrite:
        raise InputError(f"{out} already holds a dataset ({ours[0].name} ...); pass overwrite=True "
                         f"(CLI: --overwrite) to replace it, or choose another --out folder")
    for p in ours:
        p.unlink()
    for split in SPLITS:
        (out / f"{split}_highres").mkdir(parents=True, exist_ok=True)


def generate_dataset(out_dir, size=(64, 44), n_train_ids: int = 300, n_test_ids: int = 40, poses_per_id: int = 4,
                     seed: int = 0, progress=None, overwrite: bool = False) -> dict:
    """Render `n_*_ids` identities x `poses_per_id` poses and write them in the PATN layout (see module docstring).

    Pairs are all ordered pairs of different poses of one identity (poses_per_id * (poses_per_id - 1) per id).
    progress(done_images, total_images) is called after each identity. Returns the manifest (also dataset.json)."""
    H, W = _check_size(size)
    n_train_ids = _check_int("n_train_ids", n_train_ids, 0)
    n_test_ids = _check_int("n_test_ids", n_test_ids, 0)
    poses_per_id = _check_int("poses_per_id", poses_per_id, 2)
    seed = _check_int("seed", seed, 0)
    if n_train_ids + n_test_ids == 0:
        raise InputError("n_train_ids + n_test_ids is 0: nothing to generate")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    total = (n_train_ids + n_test_ids) * poses_per_id
    done = 0
    counts = {}
    for split, n_ids in (("train", n_train_ids), ("test", n_test_ids)):
        pairs, annotations = [], {}
        for i in range(n_ids):
            _, poses, images = render_identity_poses(seed, split, i, poses_per_id, H, W)
            names = [image_name(split, i, k) for k in range(poses_per_id)]
            for name, pose, img in zip(names, poses, images):
                Image.fromarray(img).save(out / f"{split}_highres" / name, format="PNG")
                annotations[name] = pose
            pairs += [(a, b) for a in names for b in names if a != b]
            done += poses_per_id
            if progress is not None:
                progress(done, total)
        write_patn_pairs(out / f"fasion-resize-pairs-{split}.csv", pairs)
        write_patn_annotations(out / f"fasion-resize-annotation-{split}.csv", annotations)
        counts[split] = {"identities": n_ids, "images": n_ids * poses_per_id, "pairs": len(pairs)}
    manifest = {
        "format": "repose-synthetic",
        "generator_version": GENERATOR_VERSION,
        "layout": "deepfashion-patn",
        "size": {"height": H, "width": W},
        "keypoint_frame": f"{H}x{W} (HxW) pixels of the images themselves; -1 = missing (not the 256x176 PATN "
                          f"frame unless size is 256x176)",
        "keypoints": "openpose18",
        "image_format": "png",
        "seed": seed,
        "poses_per_id": poses_per_id,
        "counts": counts,
        "name_pattern": image_name("{split}", 0, 0).replace("00000", "{identity:05d}").replace("_0.png", "_{pose}.png"),
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("synthetic dataset: %s", counts)
    return manifest
