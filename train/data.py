"""Training / evaluation data: pose-transfer pairs in the public layouts, PIDM's augmentations, bad-file handling.

Layouts (`LAYOUTS`):
- "patn":   DeepFashion as PATN/DPTN/CFLD ship it (and `repose_core.synthetic`): `fasion-resize-pairs-{split}.csv`
            (`from,to`), `fasion-resize-annotation-{split}.csv` (18 keypoints per image in a 256x176 frame, or in the
            frame `dataset.json` names for synthetic data), images in `{split}_highres/` (CFLD) or `{split}/` (PATN).
- "gfla":   DeepFashion as GFLA/NTED/PIDM ship it: `{split}_pairs.txt` (`target,src1,src2,...`, paths relative to the
            root, e.g. `img/WOMEN/.../02_1_front.jpg`; PIDM picks a random source each time) and one pose file per
            image, `pose/....txt` (the image path with `img/` -> `pose/`, extension `.txt`). A `.jpg` entry whose
            file is absent is also looked for as `.png` (PIDM converts to PNG).
- "market": Market-1501 as PATN ships it: `market-pairs-{split}.csv`, `market-annotation-{split}.csv` (128x64 frame),
            images in `{split}/`.
- HumanSD / LAION-Human (text-to-image, for RePoseSD): `HumanSDDataset` reads the mapping JSON
            `[{"img_path", "pose_path", "prompt"}, ...]` with COCO-17 `.npz` poses.

Augmentations (PIDM data/fashion_data.py + train.py, applied at training time only):
- every image gets its own random scale-crop: enlarge by 1 + U(0, scale_jitter) (PIDM: 0.05), crop back to the
  original size at a random offset; keypoints move with it (x -> s x - offset);
- horizontal flip with probability 0.5, the same decision for source and target. Unlike PIDM, which flips the
  rendered skeleton map (so a flipped person's left arm keeps the right arm's colour), the keypoints are mirrored and
  left/right joints swapped (`hflip_pose`), so the pose map always names joints as the person's own;
- pairs used in both directions: done per batch by the training loop (`swap_pair_batch`), as PIDM does.

Bad files: a missing or unreadable image / pose file is reported with the file and the pair (pairs-file line), then
either skipped (`on_error="skip"`: the pair is dropped at the up-front scan, or replaced at load time by the next good
pair so batches keep their size, which keeps DDP ranks in step) or fatal (`on_error="fatal"`, CLI `--strict-data`:
`DataFileError`). Every skip is logged (warning) and, with `report_path`, appended to a JSONL report. Never silent.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from repose_core.errors import InputError, PoseFormatError
from repose_core.pose import (
    Pose, PoseFrame, hflip_pose, read_gfla_pairs, read_gfla_pose, read_humansd_npz, read_patn_annotations,
    read_patn_pairs, render_humansd, render_openpose, render_pidm_pose_map, resize_image, resize_pose, transform_pose,
)
from repose_core.pose.formats import PATN_HEIGHT, PATN_WIDTH

log = logging.getLogger("repose")

LAYOUTS = ("patn", "gfla", "market")
ON_ERROR = ("skip", "fatal")
POSE_ENCODINGS = ("pidm20", "skeleton")
# Training sizes (H, W) of the paper and its baselines: DeepFashion 256x176 and 512x352, Market-1501 128x64.
STANDARD_SIZES = ((256, 176), (512, 352), (128, 64))
MARKET_HEIGHT, MARKET_WIDTH = 128, 64
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataFileError(InputError):
    """A dataset file is missing or unreadable. Carries the file and the pair that needs it."""

    def __init__(self, message: str, *, file: str, pair: str | None = None):
        where = f" (pair: {pair})" if pair else ""
        super().__init__(f"{message}: {file}{where}. Fix or remove the file, or drop --strict-data to skip such "
                         f"pairs with a report")
        self.file, self.pair, self.reason = file, pair, message


# ----------------------------------------------------------------------------------------------------------------
# Records: what a pair is before anything is loaded


@dataclass(frozen=True)
class PoseRef:
    """Where a pose comes from: an already-read Pose (PATN annotations) or a GFLA .txt file read on demand."""

    pose: Pose | None = None
    path: str | None = None
    unannotated: str | None = None    # PATN: the annotation csv that lacks this image

    def load(self, height: int, width: int) -> Pose:
        """The pose on the canvas of its image (height x width)."""
        if self.unannotated is not None:
            raise PoseFormatError("image has no row in the annotation csv", file=self.unannotated)
        if self.pose is not None:
            return self.pose if (self.pose.width, self.pose.height) == (width, height) \
                else resize_pose(self.pose, width, height)
        return read_gfla_pose(self.path, height=height, width=width)

    def describe(self) -> str:
        return self.path or self.unannotated or "<annotation csv>"


@dataclass(frozen=True)
class PairRecord:
    """One training/test entry: a target and the source(s) it may be generated from (several for GFLA pairs)."""

    target: str                       # image path
    target_pose: PoseRef
    sources: tuple[str, ...]          # image paths
    source_poses: tuple[PoseRef, ...]
    where: str                        # "<pairs file> line <n>": how the report names the pair

    def describe(self) -> str:
        return f"{self.where}: {os.path.basename(self.sources[0])} -> {os.path.basename(self.target)}"


@dataclass
class DataProblem:
    """A reported bad file."""

    file: str
    pair: str
    reason: str

    def as_dict(self) -> dict:
        return {"file": self.file, "pair": self.pair, "reason": self.reason}


def _report(problem: DataProblem, on_error: str, report_path: str | None) -> None:
    if on_error == "fatal":
        raise DataFileError(problem.reason, file=problem.file, pair=problem.pair)
    log.warning("skipping pair %s: %s: %s", problem.pair, problem.reason, problem.file)
    if report_path:
        with open(report_path, "a", encoding="utf-8") as f:   # one line per event; append is safe across workers
            f.write(json.dumps(problem.as_dict()) + "\n")


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _first_existing(root: Path, candidates, what: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise InputError(f"{what}: none of {[str(root / c) for c in candidates]} exists; check --data-root and --layout "
                     f"(accepted layouts: {LAYOUTS})")


def _synthetic_frame(root: Path) -> tuple[int, int] | None:
    """(H, W) of the keypoint frame declared by a repose-synthetic dataset.json, else None."""
    manifest = root / "dataset.json"
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        return int(meta["size"]["height"]), int(meta["size"]["width"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{manifest}: unreadable dataset manifest ({e}); remove it or regenerate the "
                         f"dataset") from None


def load_records(root, layout: str, split: str = "train", *, image_dir: str | None = None, on_error: str = "skip",
                 check_files: bool = True, report_path: str | None = None) -> list[PairRecord]:
    """Read the pairs of `split` in `layout` under `root` -> [PairRecord].

    With `check_files` every image and pose file named by a pair is checked to exist first; a pair that needs a
    missing file is reported (file + pair) and dropped, or raises DataFileError with on_error="fatal"."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown dataset layout {layout!r}; accepted: {LAYOUTS}")
    _check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a folder (--data-root)")
    if layout == "gfla":
        records = _gfla_records(root, split, image_dir)
    else:
        records = _patn_records(root, layout, split, image_dir)
    if not records:
        raise InputError(f"no pairs found for split {split!r} in {root} (layout {layout})")
    if not check_files:
        return records
    kept = []
    for rec in records:
        problem = None
        for image, ref in ((rec.target, rec.target_pose), *zip(rec.sources, rec.source_poses)):
            if not os.path.isfile(image):
                problem = DataProblem(image, rec.describe(), "image not found")
            elif ref.unannotated is not None:
                problem = DataProblem(image, rec.describe(), f"no keypoint annotation in {ref.unannotated}")
            elif ref.path is not None and not os.path.isfile(ref.path):
                problem = DataProblem(ref.path, rec.describe(), "pose file not found")
            if problem is not None:
                break
        if problem is None:
            kept.append(rec)
        else:
            _report(problem, on_error, report_path)
    if not kept:
        raise InputError(f"every pair of split {split!r} in {root} needs a missing file (see the warnings above)")
    if len(kept) < len(records):
        log.warning("%d of %d pairs dropped for missing files", len(records) - len(kept), len(records))
    return kept


def _patn_records(root: Path, layout: str, split: str, image_dir: str | None) -> list[PairRecord]:
    prefix = "fasion-resize" if layout == "patn" else "market"
    pairs_file = root / f"{prefix}-pairs-{split}.csv"
    ann_file = root / f"{prefix}-annotation-{split}.csv"
    for f in (pairs_file, ann_file):
        if not f.is_file():
            raise InputError(f"{layout} layout needs {f} (pairs 'from,to' and annotations "
                             f"'name:keypoints_y:keypoints_x'); check --data-root / --layout / --split")
    if layout == "patn":
        frame = _synthetic_frame(root) or (PATN_HEIGHT, PATN_WIDTH)
        images = Path(image_dir) if image_dir else _first_existing(root, (f"{split}_highres", split), "image folder")
    else:
        frame = (MARKET_HEIGHT, MARKET_WIDTH)
        images = Path(image_dir) if image_dir else _first_existing(root, (split, f"bounding_box_{split}"),
                                                                    "image folder")
    poses = read_patn_annotations(ann_file, height=frame[0], width=frame[1])
    records = []
    for n, (src, tgt) in enumerate(read_patn_pairs(pairs_file), start=2):   # line 1 is the header
        refs = []
        for name in (src, tgt):
            pose = poses.get(name)
            # an unannotated image is reported like a missing file: the pose "file" is the annotation row
            refs.append(PoseRef(pose=pose) if pose is not None else PoseRef(unannotated=str(ann_file)))
        records.append(PairRecord(str(images / tgt), refs[1], (str(images / src),), (refs[0],),
                                  f"{pairs_file.name} line {n}"))
    return records


def _gfla_image_path(root: Path, entry: str, image_dir: str | None) -> str:
    base = Path(image_dir) if image_dir else root
    path = base / entry
    if not path.exists() and path.suffix.lower() == ".jpg" and path.with_suffix(".png").exists():
        return str(path.with_suffix(".png"))
    return str(path)


def _gfla_pose_path(root: Path, entry: str) -> str:
    rel = entry[len("img/"):] if entry.startswith("img/") else entry
    return str((root / "pose" / rel).with_suffix(".txt"))


def _gfla_records(root: Path, split: str, image_dir: str | None) -> list[PairRecord]:
    pairs_file = root / f"{split}_pairs.txt"
    if not pairs_file.is_file():
        raise InputError(f"gfla layout needs {pairs_file} ('target,source1,...' per line); check --data-root / "
                         f"--layout / --split")
    records = []
    for n, (target, sources) in enumerate(read_gfla_pairs(pairs_file), start=1):
        records.append(PairRecord(
            _gfla_image_path(root, target, image_dir), PoseRef(path=_gfla_pose_path(root, target)),
            tuple(_gfla_image_path(root, s, image_dir) for s in sources),
            tuple(PoseRef(path=_gfla_pose_path(root, s)) for s in sources), f"{pairs_file.name} line {n}"))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Image + keypoint transforms


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3). Raises OSError / UnidentifiedImageError / ValueError for unreadable files."""
    with Image.open(path) as img:
        img.load()                      # decode now: truncated files fail here, not later
        return np.array(img.convert("RGB"))      # writable copy


def scale_crop(image: np.ndarray, pose: Pose, scale: float, ox: int, oy: int) -> tuple[np.ndarray, Pose]:
    """PIDM's scale augmentation: resize (H, W) -> (int(H (1+scale)), int(W (1+scale))), crop H x W at (ox, oy).

    The pose must be on the image canvas; it moves by x -> sx x - ox (sx = new_w / W)."""
    H, W = image.shape[:2]
    new_h, new_w = int(H * (1.0 + scale)), int(W * (1.0 + scale))
    if (new_h, new_w) == (H, W):
        return image, pose
    big = resize_image(image, new_h, new_w)
    out = big[oy:oy + H, ox:ox + W]
    return out, transform_pose(pose, (new_w / W, new_h / H), (-ox, -oy), W, H)


def random_scale_crop(image: np.ndarray, pose: Pose, scale_jitter: float, rng: random.Random):
    """Draw PIDM's parameters (scale ~ U(0, jitter), offsets uniform over the valid range) and apply them."""
    H, W = image.shape[:2]
    scale = rng.random() * scale_jitter
    new_h, new_w = int(H * (1.0 + scale)), int(W * (1.0 + scale))
    ox, oy = rng.randint(0, max(0, new_w - W)), rng.randint(0, max(0, new_h - H))
    return scale_crop(image, pose, scale, ox, oy)


def hflip(image: np.ndarray, pose: Pose) -> tuple[np.ndarray, Pose]:
    """Mirror the image and the pose (left/right joints swapped)."""
    return np.ascontiguousarray(image[:, ::-1]), hflip_pose(pose)


def to_tensor_pm1(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def keypoints_tensor(pose: Pose) -> torch.Tensor:
    """(18, 3) float32 (x, y, confidence) in pixels of the pose canvas."""
    return torch.from_numpy(pose.keypoints.astype(np.float32).copy())


@dataclass
class Augment:
    """Training augmentations (all off = evaluation). PIDM defaults: scale_jitter 0.05, flip_prob 0.5."""

    scale_jitter: float = 0.05
    flip_prob: float = 0.5

    @classmethod
    def none(cls) -> "Augment":
        return cls(0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Datasets


class _SkipsBadFiles:
    """`__getitem__` for datasets whose `load_item` raises DataFileError on a missing/unreadable file: the entry is
    reported (file, pair, reason) and skipped for good, or the error is raised when on_error == "fatal"."""

    def _describe(self, i: int) -> str:
        return self.records[i].where

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self.bad:
                continue
            try:
                return self.load_item(i)
            except DataFileError as e:
                if self.on_error == "fatal":
                    raise
                self.bad.add(i)
                _report(DataProblem(e.file, e.pair or self._describe(i), e.reason), "skip", self.report_path)
        raise InputError(f"no readable entry left in the dataset ({n} entries, all unreadable); see the warnings above")


class PoseTransferDataset(_SkipsBadFiles, Dataset):
    """Pairs -> dict of tensors for the pose-transfer models.

    Item: source, target (3, H, W) in [-1, 1]; source_pose_map, target_pose_map in [0, 1] at `pose_size` (default:
    the image size): `pose_encoding` "pidm20" = PIDM's 20-channel map (20, h, w), "skeleton" = the RGB OpenPose
    skeleton (3, h, w) that latent models VAE-encode (RePoseDM.encode_pose takes either); source_keypoints,
    target_keypoints (18, 3) in pixels of the H x W image; index (int); pair (str, the pairs-file line).

    Randomness (source choice among several, augmentations) comes from a per-item generator seeded by
    (seed, epoch, index), so an item is the same whatever worker loads it and a resumed run sees the same data:
    call `set_epoch(epoch)` each epoch."""

    def __init__(self, records: list[PairRecord], size=(256, 176), *, pose_size=None, augment: Augment | None = None,
                 on_error: str = "skip", report_path: str | None = None, seed: int = 0, pose_encoding: str = "pidm20"):
        _check_on_error(on_error)
        if pose_encoding not in POSE_ENCODINGS:
            raise InputError(f"pose_encoding must be one of {POSE_ENCODINGS}, got {pose_encoding!r}")
        self.render_pose = render_pidm_pose_map if pose_encoding == "pidm20" else render_openpose
        if not records:
            raise InputError("PoseTransferDataset needs at least one pair")
        self.records = list(records)
        self.size = (int(size[0]), int(size[1]))
        self.pose_size = self.size if pose_size is None else (int(pose_size[0]), int(pose_size[1]))
        self.augment = augment or Augment.none()
        self.on_error = on_error
        self.report_path = report_path
        self.seed = int(seed)
        self.epoch = 0
        self.bad: set[int] = set()        # indices found bad in this process (not re-reported)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _load(self, path: str, pose_ref: PoseRef, pair: str) -> tuple[np.ndarray, Pose]:
        """Image resized to the training size and its pose on that canvas; DataFileError names what failed."""
        try:
            image = read_image(path)
        except FileNotFoundError:
            raise DataFileError("image not found", file=path, pair=pair) from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataFileError(f"unreadable image ({type(e).__name__}: {e})", file=path, pair=pair) from None
        h, w = image.shape[:2]
        try:
            pose = pose_ref.load(h, w)
        except PoseFormatError as e:
            raise DataFileError(f"unreadable pose ({e})", file=pose_ref.describe(), pair=pair) from None
        H, W = self.size
        return resize_image(image, H, W), resize_pose(pose, W, H)

    def load_item(self, index: int) -> dict:
        """The item without error handling (DataFileError propagates)."""
        rec = self.records[index]
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")   # str seeds are hashed stably (sha512)
        k = rng.randrange(len(rec.sources)) if len(rec.sources) > 1 else 0
        pair = rec.describe()
        src_img, src_pose = self._load(rec.sources[k], rec.source_poses[k], pair)
        tgt_img, tgt_pose = self._load(rec.target, rec.target_pose, pair)
        aug = self.augment
        if aug.scale_jitter > 0:   # independent scale-crop per image, as PIDM
            src_img, src_pose = random_scale_crop(src_img, src_pose, aug.scale_jitter, rng)
            tgt_img, tgt_pose = random_scale_crop(tgt_img, tgt_pose, aug.scale_jitter, rng)
        if aug.flip_prob > 0 and rng.random() < aug.flip_prob:   # one decision for the pair
            src_img, src_pose = hflip(src_img, src_pose)
            tgt_img, tgt_pose = hflip(tgt_img, tgt_pose)
        ph, pw = self.pose_size
        return {
            "source": to_tensor_pm1(src_img),
            "target": to_tensor_pm1(tgt_img),
            "source_pose_map": torch.from_numpy(self.render_pose(src_pose, ph, pw)).permute(2, 0, 1).contiguous(),
            "target_pose_map": torch.from_numpy(self.render_pose(tgt_pose, ph, pw)).permute(2, 0, 1).contiguous(),
            "source_keypoints": keypoints_tensor(src_pose),
            "target_keypoints": keypoints_tensor(tgt_pose),
            "index": index,
            "pair": rec.where,
        }

    def _describe(self, i: int) -> str:
        return self.records[i].describe()


class PreloadedPairs:
    """Every image and pose map of a PoseTransferDataset decoded once and kept as tensors, by default on the training
    device: a batch is then a gather, with no loader workers. For datasets that fit in memory (the procedural
    miniatures: 6000 images at 64×44 are 0.4 GB). No augmentation, first source of multi-source records.

    `batch(indices)` returns what the dataset's DataLoader would (source, target, source_pose_map, target_pose_map,
    index) for those pair indices."""

    def __init__(self, dataset: "PoseTransferDataset", device="cpu", num_workers: int = 0, batch_size: int = 64):
        keys: dict[str, int] = {}
        refs: list[tuple[str, PoseRef, str]] = []
        pairs: list[tuple[int, int]] = []
        for rec in dataset.records:
            ids = []
            for path, ref in ((rec.sources[0], rec.source_poses[0]), (rec.target, rec.target_pose)):
                if path not in keys:
                    keys[path] = len(refs)
                    refs.append((path, ref, rec.describe()))
                ids.append(keys[path])
            pairs.append((ids[0], ids[1]))
        loader = torch.utils.data.DataLoader(_ImageTable(dataset, refs), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=_collate_table)
        images, poses, ok = [], [], []
        for img, pose, good in loader:
            images.append(img), poses.append(pose), ok.append(good)
        self.images = torch.cat(images).to(device)          # (N, 3, H, W) uint8
        self.pose_maps = torch.cat(poses).to(device)        # (N, P, h, w) float16 in [0, 1]
        good = torch.cat(ok)
        bad = [i for i, (a, b) in enumerate(pairs) if not (good[a] and good[b])]
        if bad:
            if dataset.on_error == "fatal":
                raise DataFileError(f"{len(bad)} pair(s) have unreadable files", file=refs[pairs[bad[0]][0]][0],
                                    pair=dataset.records[bad[0]].describe())
            log.warning("preload: %d of %d pairs skipped (unreadable files; see %s)", len(bad), len(pairs),
                        dataset.report_path or "the log")
        self.pairs = torch.tensor(pairs, dtype=torch.long)   # (M, 2): image index of source, target
        bad_set = set(bad)
        self.valid = torch.tensor([i for i in range(len(pairs)) if i not in bad_set], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices) -> dict:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        good = torch.isin(idx, self.valid)
        idx = idx[good] if not good.all() else idx
        src, tgt = self.pairs[idx, 0].to(self.images.device), self.pairs[idx, 1].to(self.images.device)
        to_pm1 = lambda i: self.images[i].float() / 127.5 - 1  # noqa: E731
        return {"source": to_pm1(src), "target": to_pm1(tgt), "source_pose_map": self.pose_maps[src].float(),
                "target_pose_map": self.pose_maps[tgt].float(), "index": idx.tolist()}


class _ImageTable(Dataset):
    """(uint8 image (3, H, W), float16 pose map, ok) of each unique image, for PreloadedPairs."""

    def __init__(self, dataset: "PoseTransferDataset", refs):
        self.dataset, self.refs = dataset, refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        path, ref, pair = self.refs[i]
        H, W = self.dataset.size
        ph, pw = self.dataset.pose_size
        try:
            image, pose = self.dataset._load(path, ref, pair)
        except DataFileError as e:
            _report(DataProblem(file=e.file, pair=e.pair or pair, reason=str(e)), "skip", self.dataset.report_path)
            channels = 20 if self.dataset.render_pose is render_pidm_pose_map else 3
            return torch.zeros(3, H, W, dtype=torch.uint8), torch.zeros(channels, ph, pw, dtype=torch.float16), False
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        pm = torch.from_numpy(self.dataset.render_pose(pose, ph, pw)).permute(2, 0, 1).to(torch.float16)
        return img, pm.contiguous(), True


def _collate_table(items):
    return (torch.stack([a for a, _, _ in items]), torch.stack([b for _, b, _ in items]),
            torch.tensor([c for _, _, c in items]))


def swap_pair_batch(batch: dict) -> dict:
    """PIDM's bidirectional use of a batch: [src -> tgt ; tgt -> src] concatenated along the batch dimension."""
    out = {}
    for key, value in batch.items():
        role, _, rest = key.partition("_")
        if role in ("source", "target"):   # source_pose_map <-> target_pose_map, ...
            partner = batch[("target" if role == "source" else "source") + (f"_{rest}" if rest else "")]
        else:                              # index, pair: the same for both directions
            partner = value
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([value, partner], dim=0)
        else:
            out[key] = list(value) + list(partner)
    return out


# ----------------------------------------------------------------------------------------------------------------
# HumanSD / LAION-Human (text + COCO-17 skeleton image), for RePoseSD


@dataclass
class HumanSDRecord:
    image: str
    pose: str
    prompt: str
    where: str


def load_humansd_records(mapping_file, *, root=None, on_error: str = "skip", check_files: bool = True,
                         report_path: str | None = None) -> list[HumanSDRecord]:
    """HumanSD mapping JSON (a list of {"img_path", "pose_path", "prompt"}) -> [HumanSDRecord].

    Relative paths are resolved against `root` (default: the mapping file's folder)."""
    _check_on_error(on_error)
    mapping_file = Path(mapping_file)
    try:
        entries = json.loads(mapping_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"HumanSD mapping file not found: {mapping_file}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{mapping_file}: malformed JSON ({e.msg}, line {e.lineno}); expected a list of "
                         f"{{\"img_path\", \"pose_path\", \"prompt\"}}") from None
    if isinstance(entries, dict):            # some dumps wrap the list
        entries = next((v for v in entries.values() if isinstance(v, list)), None)
    if not isinstance(entries, list):
        raise InputError(f"{mapping_file}: expected a JSON list of {{\"img_path\", \"pose_path\", \"prompt\"}}")
    base = Path(root) if root is not None else mapping_file.parent
    records = []
    for i, e in enumerate(entries):
        where = f"{mapping_file.name} entry {i}"
        if not isinstance(e, dict) or not all(k in e for k in ("img_path", "pose_path")):
            raise InputError(f"{where}: expected an object with 'img_path', 'pose_path' and 'prompt', got {e!r:.120}")
        rec = HumanSDRecord(str(base / e["img_path"]), str(base / e["pose_path"]), str(e.get("prompt", "")), where)
        missing = next((p for p in (rec.image, rec.pose) if not os.path.isfile(p)), None) if check_files else None
        if missing is None:
            records.append(rec)
        else:
            _report(DataProblem(missing, where, "file not found"), on_error, report_path)
    if not records:
        raise InputError(f"{mapping_file}: no usable entry")
    return records


def _resize_frame(frame: PoseFrame, sx: float, sy: float, ox: float, oy: float, W: int, H: int) -> PoseFrame:
    return PoseFrame([transform_pose(p, (sx, sy), (ox, oy), W, H) for p in frame.people], W, H)


class HumanSDDataset(_SkipsBadFiles, Dataset):
    """HumanSD items: image (3, H, W) in [-1, 1], pose_image (3, H, W) in [-1, 1] (HumanSD's COCO-17 skeleton,
    `render_humansd` with its training threshold 0.02), prompt (str), keypoints (max_people, 17, 3) in image pixels
    (zero rows pad), index.

    Geometry as HumanSD's training: shorter side resized to the target, random crop (centre crop without
    augmentation), horizontal flip with `flip_prob` (HumanSD: 0.2)."""

    def __init__(self, records: list[HumanSDRecord], size=(512, 512), *, augment: bool = True, flip_prob: float = 0.2,
                 max_people: int = 10, on_error: str = "skip", report_path: str | None = None, seed: int = 0):
        _check_on_error(on_error)
        if not records:
            raise InputError("HumanSDDataset needs at least one entry")
        self.records, self.size = list(records), (int(size[0]), int(size[1]))
        self.augment, self.flip_prob, self.max_people = augment, flip_prob, max_people
        self.on_error, self.report_path, self.seed, self.epoch = on_error, report_path, int(seed), 0
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_item(self, index: int) -> dict:
        rec = self.records[index]
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")   # str seeds are hashed stably (sha512)
        try:
            image = read_image(rec.image)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataFileError(f"unreadable image ({type(e).__name__}: {e})", file=rec.image, pair=rec.where) from None
        h, w = image.shape[:2]
        try:
            frame = read_humansd_npz(rec.pose, width=w, height=h)
        except PoseFormatError as e:
            raise DataFileError(f"unreadable pose ({e})", file=rec.pose, pair=rec.where) from None
        H, W = self.size
        s = max(H / h, W / w)                      # SmallestMaxSize: cover the crop
        new_h, new_w = max(H, round(h * s)), max(W, round(w * s))
        image = resize_image(image, new_h, new_w)
        if self.augment:
            ox, oy = rng.randint(0, new_w - W), rng.randint(0, new_h - H)
        else:
            ox, oy = (new_w - W) // 2, (new_h - H) // 2
        image = image[oy:oy + H, ox:ox + W]
        frame = _resize_frame(frame, new_w / w, new_h / h, -ox, -oy, W, H)
        if self.augment and rng.random() < self.flip_prob:
            image = np.ascontiguousarray(image[:, ::-1])
            frame = PoseFrame([hflip_pose(p) for p in frame.people], W, H)
        pose_image = render_humansd(frame, H, W, threshold=0.02, max_people=self.max_people)
        kps = torch.zeros(self.max_people, 17, 3)
        for i, p in enumerate(frame.people[:self.max_people]):
            kps[i] = torch.from_numpy(p.keypoints.astype(np.float32))
        return {
            "image": to_tensor_pm1(image),
            "pose_image": torch.from_numpy(pose_image).permute(2, 0, 1).mul(2).sub(1).contiguous(),
            "prompt": rec.prompt,
            "keypoints": kps,
            "index": index,
        }



__all__ = [
    "LAYOUTS", "ON_ERROR", "STANDARD_SIZES", "DataFileError", "DataProblem", "PoseRef", "PairRecord", "Augment",
    "load_records", "PoseTransferDataset", "swap_pair_batch", "scale_crop", "random_scale_crop", "hflip",
    "read_image", "to_tensor_pm1", "HumanSDRecord", "load_humansd_records", "HumanSDDataset", "POSE_ENCODINGS",
]
