"""Evaluate generated pose-transfer images by PIDM's protocol: FID, SSIM, LPIPS (+ SSIM_256, L1, PSNR, pose accuracy).

    python train/eval.py --generated runs/b2/generated --data-root data/deepfashion --layout patn --split test \
        --inception-weights weights/pt_inception-2015-12-05-6726825d.pth \
        --lpips-weights weights/alexnet-owt-7be5be79.pth --estimator weights/higherhrnet_w32.safetensors \
        --name "RePoseDM (B2)" --out runs/b2/eval

Generated images are matched to test pairs by name: `<source stem>_2_<target stem>.png` (PIDM's naming, written by
train/generate.py). Protocol (PIDM utils/metrics.py, notes/reference-systems.md §1.7):
- every image (generated and ground truth) is resized to 176x256 (W x H, bicubic) and taken in [0, 1];
- SSIM: skimage-compatible, uniform 51x51 window, sample covariance (`repose_core.metrics.ssim`); SSIM_256: the
  Gaussian σ=1.2 variant PIDM also reports; L1 and PSNR on [0, 1];
- LPIPS: the `lpips` package, AlexNet, inputs in [-1, 1]. Its AlexNet backbone is read from --lpips-weights
  (torchvision's `alexnet-owt-7be5be79.pth`) through a private torch-hub cache, so nothing is downloaded;
- FID: 2048-d pool3 features of the FID InceptionV3 (`pytorch_fid`, weights `pt_inception-2015-12-05-6726825d.pth`
  from --inception-weights, or `torchmetrics` with the same local file), generated test images against the
  *training* images (--real-dir, default the layout's training image folder), `repose_core.metrics.frechet_distance`;
- pose accuracy: HigherHRNet (--estimator) on the generated image, PCK@0.1 (normalised by the ground-truth keypoint
  bounding box) and mean keypoint error in pixels, against the target's annotated keypoints (COCO-17 joints).
A metric whose package or weights are missing is skipped with a note in the output, never a crash, and the output
names the implementation and weights file of every metric. Writes metrics.json and a Table-1-style metrics.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from repose_core import metrics as M
from train.data import LAYOUTS, PairRecord, load_records, read_image
from repose_core.errors import InputError
from repose_core.pose import Pose, openpose18_to_coco17, resize_pose
from train.common import parse_options, run_script

log = logging.getLogger("repose")

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"   # pytorch-fid's weights name in the torch-hub cache
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"                      # torchvision's AlexNet weights name


@dataclass
class EvalOptions:
    generated: str = field(default="", metadata={"help": "folder of generated images (<src>_2_<tgt>.png)"})
    data_root: str = field(default="", metadata={"help": "dataset root (ground truth, pairs, keypoints)"})
    layout: str = field(default="patn", metadata={"help": "dataset layout", "choices": LAYOUTS})
    split: str = field(default="test", metadata={"help": "pairs split to evaluate"})
    image_dir: str = field(default="", metadata={"help": "override the ground-truth image folder"})
    real_dir: str = field(default="", metadata={"help": "real images for FID (default: the training images)"})
    size: tuple = field(default=(256, 176), metadata={"help": "evaluation size H W (PIDM: 256 176)"})
    inception_weights: str = field(default="", metadata={"help": f"local FID InceptionV3 weights "
                                                                 f"({FID_INCEPTION_FILE})"})
    fid_backend: str = field(default="auto", metadata={"help": "FID feature implementation",
                                                       "choices": ("auto", "pytorch_fid", "torchmetrics")})
    lpips_weights: str = field(default="", metadata={"help": f"local AlexNet weights for LPIPS ({ALEXNET_FILE})"})
    estimator: str = field(default="", metadata={"help": "HigherHRNet checkpoint for pose accuracy"})
    pck_alpha: float = field(default=0.1, metadata={"help": "PCK threshold (fraction of the normalising size)"})
    pck_norm: str = field(default="bbox", metadata={"help": "PCK normalisation", "choices": M.PCK_NORMS})
    batch_size: int = field(default=16, metadata={"help": "images per metric batch"})
    name: str = field(default="RePoseDM", metadata={"help": "method name in the table"})
    missing: str = field(default="fatal", metadata={"help": "a test pair without a generated image",
                                                    "choices": ("fatal", "skip")})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto"})
    out: str = field(default="eval", metadata={"help": "output folder for metrics.json / metrics.md"})


def generated_name(source: str, target: str) -> str:
    """PIDM's file naming of a generated pair: `<source stem>_2_<target stem>.png`."""
    return f"{Path(source).stem}_2_{Path(target).stem}.png"


@dataclass
class EvalItem:
    generated: str
    target: str
    target_pose: Pose


def collect_items(opts: EvalOptions, records: list[PairRecord]) -> tuple[list[EvalItem], list[str]]:
    """Match test pairs to generated files (first source of each pair); -> (items, names of missing files)."""
    items, missing = [], []
    gen = Path(opts.generated)
    for rec in records:
        path = gen / generated_name(rec.sources[0], rec.target)
        if not path.is_file():
            missing.append(path.name)
            continue
        h, w = read_image(rec.target).shape[:2]
        items.append(EvalItem(str(path), rec.target, rec.target_pose.load(h, w)))
    return items, missing


def load_batch(paths: list[str], size) -> torch.Tensor:
    """Images -> (B, 3, H, W) in [0, 1] at the evaluation size (bicubic, as PIDM)."""
    imgs = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float().div(255) for p in paths]
    return torch.cat([M.resize_for_eval(i[None], size) for i in imgs])


# ----------------------------------------------------------------------------------------------------------------
# Optional feature extractors with local weights only


@contextlib.contextmanager
def local_torch_hub(weights: str, cache_name: str):
    """A private TORCH_HOME whose hub cache holds `weights` under the name the library asks for, so a library that
    would download `cache_name` finds it locally (torch.hub checks the cache first). Nothing is downloaded."""
    old = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="repose-hub-") as home:
        ckpt = Path(home) / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        os.symlink(os.path.abspath(weights), ckpt / cache_name)
        os.environ["TORCH_HOME"] = home
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = old


def build_fid_extractor(opts: EvalOptions, device):
    """-> (callable(img01 (B,3,H,W)) -> (B, 2048) features, description) or (None, note why skipped)."""
    if not opts.inception_weights:
        return None, "skipped: no --inception-weights (FID InceptionV3 pt_inception-2015-12-05-6726825d.pth)"
    if not os.path.isfile(opts.inception_weights):
        return None, f"skipped: --inception-weights {opts.inception_weights} not found"
    backends = ("pytorch_fid", "torchmetrics") if opts.fid_backend == "auto" else (opts.fid_backend,)
    for backend in backends:
        if backend == "pytorch_fid":
            try:
                from pytorch_fid.inception import InceptionV3
            except ImportError:
                continue
            with local_torch_hub(opts.inception_weights, FID_INCEPTION_FILE):
                net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                  normalize_input=True, use_fid_inception=True).eval().to(device)

            def features(img01, net=net):
                with torch.no_grad():
                    return net(img01.to(device))[0].flatten(1).double().cpu()
            return features, f"pytorch_fid InceptionV3 (FID weights {opts.inception_weights}), pool3 2048-d"
        if backend == "torchmetrics":
            try:
                from torchmetrics.image.fid import NoTrainInceptionV3
            except ImportError:
                continue
            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                     feature_extractor_weights_path=opts.inception_weights).eval().to(device)

            def features(img01, net=net):
                with torch.no_grad():
                    return net((img01.clamp(0, 1) * 255).round().to(torch.uint8).to(device)).double().cpu()
            return features, f"torchmetrics NoTrainInceptionV3 (weights {opts.inception_weights}), pool3 2048-d"
    return None, (f"skipped: FID backend {opts.fid_backend} needs pytorch-fid or torchmetrics[image] installed "
                  f"(pip install pytorch-fid)")


def build_lpips(opts: EvalOptions, device):
    """-> (callable(x01, y01) -> (B,) distances, description) or (None, note)."""
    if not opts.lpips_weights:
        return None, "skipped: no --lpips-weights (torchvision AlexNet alexnet-owt-7be5be79.pth)"
    if not os.path.isfile(opts.lpips_weights):
        return None, f"skipped: --lpips-weights {opts.lpips_weights} not found"
    try:
        import lpips
    except ImportError:
        return None, "skipped: the lpips package is not installed (pip install lpips)"
    with local_torch_hub(opts.lpips_weights, ALEXNET_FILE):
        net = lpips.LPIPS(net="alex", verbose=False).eval().to(device)

    def distance(x01, y01):
        with torch.no_grad():
            return net(x01.to(device) * 2 - 1, y01.to(device) * 2 - 1).flatten().float().cpu()
    return distance, f"lpips {getattr(lpips, '__version__', '?')} AlexNet v0.1 (backbone {opts.lpips_weights})"


def build_pose_estimator(opts: EvalOptions, device):
    if not opts.estimator:
        return None, "skipped: no --estimator (HigherHRNet checkpoint)"
    if not os.path.isfile(opts.estimator):
        return None, f"skipped: --estimator {opts.estimator} not found"
    from repose_core.estimator import build_estimator
    return build_estimator(opts.estimator).to(device).eval(), f"HigherHRNet ({opts.estimator})"


def real_image_paths(opts: EvalOptions) -> list[str]:
    folder = Path(opts.real_dir) if opts.real_dir else None
    if folder is None:
        train = load_records(opts.data_root, opts.layout, "train", check_files=False)
        names = sorted({p for r in train for p in (r.target, *r.sources)})
        return [p for p in names if os.path.isfile(p)]
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(opts: EvalOptions) -> dict:
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    if not opts.generated or not opts.data_root:
        raise InputError("--generated and --data-root are required")
    size = tuple(int(v) for v in opts.size)
    records = load_records(opts.data_root, opts.layout, opts.split, image_dir=opts.image_dir or None)
    items, missing = collect_items(opts, records)
    if missing and opts.missing == "fatal":
        raise InputError(f"{len(missing)} of {len(records)} test pairs have no generated image in {opts.generated} "
                         f"(e.g. {missing[0]}); run train/generate.py first, or pass --missing skip")
    if not items:
        raise InputError(f"no generated image in {opts.generated} matches a {opts.split} pair")

    fid_fn, fid_note = build_fid_extractor(opts, device)
    lpips_fn, lpips_note = build_lpips(opts, device)
    estimator, pose_note = build_pose_estimator(opts, device)

    per = {"ssim": [], "ssim_256": [], "l1": [], "psnr": [], "lpips": []}
    gen_feats, pred_kp, gt_kp = [], [], []
    for i in range(0, len(items), opts.batch_size):
        chunk = items[i:i + opts.batch_size]
        gen = load_batch([it.generated for it in chunk], size)
        gt = load_batch([it.target for it in chunk], size)
        per["ssim"] += M.ssim(gen, gt, window="uniform", win_size=51).tolist()
        per["ssim_256"] += M.ssim(gen, gt, window="gaussian", sigma=1.2).tolist()
        per["l1"] += M.l1(gen, gt).tolist()
        per["psnr"] += M.psnr(gen, gt).clamp(max=100).tolist()
        if lpips_fn is not None:
            per["lpips"] += lpips_fn(gen, gt).tolist()
        if fid_fn is not None:
            gen_feats.append(fid_fn(gen))
        if estimator is not None:
            from repose_core.estimator import estimate_poses
            frames = estimate_poses(estimator, gen.to(device))
            for it, frame in zip(chunk, frames):
                gt_pose = openpose18_to_coco17(resize_pose(it.target_pose, size[1], size[0]))
                pred = frame.people[0].keypoints if frame.people else np.zeros((17, 3), np.float32)
                pred_kp.append(pred)
                gt_kp.append(gt_pose.keypoints)

    results = {"name": opts.name, "pairs": len(items), "missing_generated": len(missing),
               "eval_size_hw": list(size), "metrics": {}, "implementations": {}}
    m, impl = results["metrics"], results["implementations"]
    m["SSIM"], impl["SSIM"] = float(np.mean(per["ssim"])), "repose_core.metrics.ssim, uniform 51x51 window, " \
                                                           "sample covariance (= skimage compare_ssim win_size=51)"
    m["SSIM_256"], impl["SSIM_256"] = float(np.mean(per["ssim_256"])), "repose_core.metrics.ssim, Gaussian σ=1.2"
    m["L1"], impl["L1"] = float(np.mean(per["l1"])), "mean |x - y| in [0, 1]"
    m["PSNR"], impl["PSNR"] = float(np.mean(per["psnr"])), "dB, data range 1 (identical images capped at 100)"
    if lpips_fn is not None:
        m["LPIPS"] = float(np.mean(per["lpips"]))
    impl["LPIPS"] = lpips_note
    if fid_fn is not None:
        reals = real_image_paths(opts)
        real_feats = [fid_fn(load_batch(reals[i:i + opts.batch_size], size))
                      for i in range(0, len(reals), opts.batch_size)]
        mu_g, s_g = M.feature_statistics(torch.cat(gen_feats))
        mu_r, s_r = M.feature_statistics(torch.cat(real_feats))
        m["FID"] = M.frechet_distance(mu_g, s_g, mu_r, s_r)
        fid_note += f"; real set: {len(reals)} images ({opts.real_dir or 'training images of the layout'})"
    impl["FID"] = fid_note
    if estimator is not None:
        acc = M.pose_accuracy(np.stack(pred_kp), np.stack(gt_kp), opts.pck_alpha, opts.pck_norm)
        m[f"PCK@{opts.pck_alpha:g}"], m["KeypointError_px"] = acc["pck"], acc["mean_error_px"]
        m["KeypointDetected"] = acc["detected_fraction"]
        pose_note += f"; PCK normalised by {opts.pck_norm}, errors in pixels of the {size[1]}x{size[0]} image"
    impl["Pose"] = pose_note
    return results


def markdown_table(results: dict) -> str:
    """Table-1-style markdown: Method | FID↓ | SSIM↑ | LPIPS↓ | ... ('—' for skipped metrics), plus the notes."""
    m = results["metrics"]
    pck = next((k for k in m if k.startswith("PCK@")), "PCK@0.1")
    cols = [("FID", "FID ↓", "{:.4f}"), ("SSIM", "SSIM ↑", "{:.4f}"), ("LPIPS", "LPIPS ↓", "{:.4f}"),
            ("SSIM_256", "SSIM-256 ↑", "{:.4f}"), ("L1", "L1 ↓", "{:.4f}"), ("PSNR", "PSNR ↑", "{:.2f}"),
            (pck, f"{pck} ↑", "{:.3f}"), ("KeypointError_px", "Kp. error (px) ↓", "{:.2f}")]
    head = "| Method | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|---|" + "|".join("---:" for _ in cols) + "|"
    row = f"| {results['name']} | " + " | ".join(fmt.format(m[k]) if k in m else "—" for k, _, fmt in cols) + " |"
    notes = [f"- {k}: {v}" for k, v in results["implementations"].items()]
    return "\n".join([head, sep, row, "", f"{results['pairs']} pairs at {results['eval_size_hw'][1]}x"
                      f"{results['eval_size_hw'][0]} (W x H).", *notes]) + "\n"


def main(argv=None) -> int:
    opts = parse_options(EvalOptions, argv, __doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    results = evaluate(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(dict(results, options=dataclasses.asdict(opts)), indent=2) + "\n",
                                      encoding="utf-8")
    table = markdown_table(results)
    (out / "metrics.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    run_script(main)
