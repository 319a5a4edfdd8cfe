"""README command 1: pose transfer on the bundled example figures and on your own image + pose file.

    python -m repose_core.demo                                   # the bundled examples -> ./out/demo
    python -m repose_core.demo --source me.png --pose pose.json [--retarget] [--out DIR]

Pose files: ComfyUI POSE_KEYPOINT / OpenPose JSON (.json), GFLA/PIDM (.txt), HumanSD (.npz), or a DeepFashion PATN
annotation csv with --image-name. With --retarget the target skeleton is refitted to the source body's bone lengths;
the source pose comes from --source-pose or is estimated with the bundled pose estimator.

Writes into --out: for every item `<name>_full_guided.png` (the result at the source's size), `<name>_b1.png`,
`<name>_full_unguided.png`, `<name>_warped.png` (the RPA-aligned source), a `contact_sheet.png` with one row per item
(source | target pose | RPA warped preview | B1 | full unguided | full guided [| ground truth]) and `summary.json`
(timings, guidance energy before/after, which weights were used).

Models: the small trained models shipped in repose_core/weights/ (64x44, synthetic figures; see TRAINING.md there).
If they are missing, the demo still runs end to end on a tiny RANDOM model and says so: the images are then noise.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import ReposeError
from .pose import Pose, load_pose_file, render_openpose
from .transfer_ops import final_timestep_of

log = logging.getLogger("repose")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EXAMPLES_DIR = Path(__file__).resolve().parent / "synthetic" / "examples" / "64x44"
FULL_WEIGHTS = "repose_default_full.safetensors"
B1_WEIGHTS = "repose_default_b1.safetensors"
ESTIMATOR_WEIGHTS = "repose_default_estimator.safetensors"
COLUMNS = ("source", "target pose", "RPA warped", "B1", "full unguided", "full guided")
DISPLAY_SCALE = 3  # contact-sheet magnification of the 64x44 canvas


@dataclass
class Item:
    """One transfer job: a source image, the target pose, optionally its source pose and the ground truth."""

    name: str
    source: np.ndarray              # (H, W, 3) uint8
    target_pose: Pose
    source_pose: Pose | None = None
    ground_truth: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_image(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ReposeError(f"source image not found: {path}") from None
    except OSError as e:
        raise ReposeError(f"cannot read the source image {path}: {e}; give a PNG/JPEG file") from None


def read_single_pose(path, image_name: str | None, width: int, height: int) -> Pose:
    """First person of the first frame of a pose file. A file without a canvas of its own takes the source image's
    size; DeepFashion's PATN .csv and GFLA .txt keep their dataset frame (176x256), whatever the image's size (a
    512x352 image's annotation is in that frame too), and the pipeline fits it onto the image."""
    own_frame = Path(path).suffix.lower() in (".csv", ".txt")
    frames = load_pose_file(path, image_name=image_name, width=None if own_frame else width,
                            height=None if own_frame else height)
    people = [p for f in frames for p in f.people]
    if not people:
        raise ReposeError(f"{path}: the pose file has no person; give a pose with at least one person")
    if len(frames) > 1 or len(people) > 1:
        log.warning("%s: %d frames / %d people; using the first person", path, len(frames), len(people))
    return people[0]


def bundled_examples(selection: str) -> list[Item]:
    """The example figures shipped in repose_core/synthetic/examples/64x44 ("all", "none" or "0,2")."""
    if selection == "none":
        return []
    meta = json.loads((EXAMPLES_DIR.parent / "examples.json").read_text(encoding="utf-8"))
    n = len(meta["examples"])
    if selection == "all":
        chosen = list(range(n))
    else:
        try:
            chosen = [int(s) for s in selection.split(",") if s.strip()]
        except ValueError:
            raise ReposeError(f"--examples must be 'all', 'none' or indices like '0,2' (0..{n - 1}), got "
                              f"{selection!r}") from None
        bad = [k for k in chosen if not 0 <= k < n]
        if bad:
            raise ReposeError(f"--examples: no example {bad}; the bundled examples are 0..{n - 1}")
    items = []
    for k in chosen:
        src = read_image(EXAMPLES_DIR / f"source_{k}.png")
        H, W = src.shape[:2]
        items.append(Item(
            name=f"example_{k}", source=src,
            target_pose=read_single_pose(EXAMPLES_DIR / f"target_pose_{k}.json", None, W, H),
            source_pose=read_single_pose(EXAMPLES_DIR / f"source_pose_{k}.json", None, W, H),
            ground_truth=read_image(EXAMPLES_DIR / f"target_{k}.png")))
    return items


# ----------------------------------------------------------------------------------------------------------------
# Models


def load_pipelines(weights_dir: Path):
    """(full pipeline, b1 pipeline, notes): the shipped models, or tiny random ones with a clear notice."""
    from .estimator.small_hrnet import SmallHRNet
    from .pipeline import PoseTransferPipeline, load_estimator

    notes = []
    est_path = weights_dir / ESTIMATOR_WEIGHTS
    if est_path.is_file():
        estimator = load_estimator(est_path)
    else:
        notes.append(f"pose estimator {est_path} not found: guidance uses an UNTRAINED estimator")
        with torch.inference_mode(False):
            estimator = SmallHRNet()
    pipes = {}
    for variant, name in (("full", FULL_WEIGHTS), ("b1", B1_WEIGHTS)):
        path = weights_dir / name
        if path.is_file():
            pipes[variant] = PoseTransferPipeline.from_files(path)
            pipes[variant].estimator = estimator
        else:
            notes.append(f"{path} not found: the {variant} column uses a TINY RANDOM model (its images are noise)")
            pipes[variant] = PoseTransferPipeline.tiny_random(variant, estimator=estimator)
    return pipes["full"], pipes["b1"], notes


# ----------------------------------------------------------------------------------------------------------------
# Output


def to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(img01, np.float32) * 255), 0, 255).astype(np.uint8)


def save_png(path: Path, img01: np.ndarray) -> None:
    Image.fromarray(to_uint8(img01)).save(path)


def contact_sheet(rows: list[list[np.ndarray]], columns: list[str], scale: int = DISPLAY_SCALE) -> Image.Image:
    """Rows of equally sized (h, w, 3) [0, 1] tiles, magnified `scale`x (nearest), with a header of column names."""
    h, w = rows[0][0].shape[:2]
    H, W = h * scale, w * scale
    header, gap = 14, 2
    sheet = Image.new("RGB", (len(columns) * (W + gap) + gap, header + len(rows) * (H + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((gap + c * (W + gap) + 2, 1), name, fill="black")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            img = Image.fromarray(to_uint8(tile))
            if img.size != (W, H):  # small tiles are magnified pixel-exact; display-size tiles pass as they are
                img = img.resize((W, H), Image.Resampling.NEAREST if img.size[0] < W else Image.Resampling.BILINEAR)
            sheet.paste(img, (gap + c * (W + gap), header + gap + r * (H + gap)))
    return sheet


def skeleton_tile(pose: Pose, h: int, w: int, scale: int = DISPLAY_SCALE) -> np.ndarray:
    """The skeleton drawn directly at display size (h·scale, w·scale), so limbs stay thin."""
    from .pose import resize_pose

    return render_openpose(resize_pose(pose, w * scale, h * scale), h * scale, w * scale)


# ----------------------------------------------------------------------------------------------------------------
# Main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repose_core.demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--out", default="out/demo", help="output folder (default ./out/demo)")
    p.add_argument("--source", help="your source image (PNG/JPEG) of one person")
    p.add_argument("--pose", help="target pose file for --source (.json POSE_KEYPOINT/OpenPose, .txt, .npz, .csv)")
    p.add_argument("--image-name", help="row of a PATN annotation .csv given as --pose (or --source-pose)")
    p.add_argument("--source-pose", help="pose file of the source image (for --retarget; else it is estimated)")
    p.add_argument("--retarget", action="store_true", help="refit the target skeleton to the source body")
    p.add_argument("--examples", default=None, help="bundled examples: all | none | 0,2 (default: all, or none "
                                                    "when --source is given)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--eta", type=float, default=1.0,
                   help="DDIM η: 0 = deterministic DDIM, 1 = stochastic (default; clearly better for the small "
                        "shipped models, see docs/ablation.md)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's, 2)")
    p.add_argument("--final-timestep", type=int, default=None,
                   help="last timestep evaluated, its x̂0 the result, for every model (default: each model's; 0 = "
                        "the whole trajectory, as the paper)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="pose gradient guidance step η (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="folder of the shipped weights")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def collect_items(args, parser) -> list[Item]:
    if (args.source is None) != (args.pose is None):
        parser.error("--source and --pose go together: give both (your image and the target pose file)")
    if args.retarget and args.source is None:
        parser.error("--retarget applies to --source/--pose (the bundled examples use their own poses)")
    selection = args.examples or ("none" if args.source else "all")
    items = bundled_examples(selection)
    if args.source:
        src = read_image(args.source)
        H, W = src.shape[:2]
        src_pose = read_single_pose(args.source_pose, args.image_name, W, H) if args.source_pose else None
        items.append(Item(name=Path(args.source).stem, source=src,
                          target_pose=read_single_pose(args.pose, args.image_name, W, H), source_pose=src_pose))
    if not items:
        parser.error("nothing to do: --examples none and no --source/--pose")
    return items


def run(args, parser) -> dict:
    from tqdm import tqdm

    start = time.perf_counter()
    items = collect_items(args, parser)
    full, b1, notes = load_pipelines(Path(args.weights_dir))
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr)
    if notes:
        print("NOTE: train the shipped models as described in repose_core/weights/TRAINING.md", file=sys.stderr)

    sources = [it.source for it in items]
    targets = [it.target_pose for it in items]
    # with --retarget the source poses come from the files when every item has one, else the estimator finds them
    src_poses = [it.source_pose for it in items] if all(it.source_pose is not None for it in items) else None
    guidance = True if args.guidance_scale is None else {"scale": args.guidance_scale}
    kw = dict(steps=args.steps, cfg=args.cfg, seed=args.seed, eta=args.eta, retarget=args.retarget,
              source_pose=src_poses if args.retarget else None, final_timestep=args.final_timestep)
    runs = (("b1", b1, None), ("full unguided", full, None), ("full guided", full, guidance))
    totals = [pipe.progress_total(args.steps, final_timestep=args.final_timestep) for _, pipe, _ in runs]
    bar = tqdm(total=sum(totals), desc="RePose demo", unit="step", disable=args.no_progress, file=sys.stderr)
    results = {}
    for r, (label, pipe, g) in enumerate(runs):
        offset = sum(totals[:r])
        bar.set_postfix_str(label)

        def progress(done, total, _offset=offset):
            bar.update(_offset + done - bar.n)

        results[label] = pipe.transfer(sources, targets, guidance=g, progress=progress, **kw)
    bar.close()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    guided = results["full guided"]
    rows, files = [], []
    for i, it in enumerate(items):
        for label, suffix in (("full guided", "full_guided"), ("full unguided", "full_unguided"), ("b1", "b1")):
            path = out / f"{it.name}_{suffix}.png"
            save_png(path, results[label].images[i])
            files.append(path.name)
        h, w = full.size
        warped = guided.warped[-1][i] if guided.warped else np.zeros((h, w, 3), np.float32)
        save_png(out / f"{it.name}_warped.png", warped)
        files.append(f"{it.name}_warped.png")
        src_tile = _canvas_source(full, it.source)
        row = [src_tile, skeleton_tile(guided.canvas_poses[i], h, w), warped,
               results["b1"].canvas_images[i], results["full unguided"].canvas_images[i], guided.canvas_images[i]]
        if any(x.ground_truth is not None for x in items):
            row.append(_canvas_source(full, it.ground_truth) if it.ground_truth is not None
                       else np.ones((h, w, 3), np.float32))
        rows.append(row)
    columns = list(COLUMNS) + (["ground truth"] if len(rows[0]) > len(COLUMNS) else [])
    contact_sheet(rows, columns).save(out / "contact_sheet.png")
    files.append("contact_sheet.png")

    energy = guided.guidance_history
    summary = {
        "items": [it.name for it in items], "files": files, "notes": notes,
        "random_models": bool(notes),
        "weights_dir": str(args.weights_dir), "steps": args.steps, "eta": args.eta, "seed": args.seed,
        "retarget": args.retarget,
        "cfg": full.model.config.cfg_scale if args.cfg is None else args.cfg,
        "final_timestep": final_timestep_of(full.model.config, args.final_timestep),
        "guidance": guidance, "seconds": {k: round(v.seconds, 2) for k, v in results.items()},
        "guidance_energy_first_last": ([energy[0]["energy"], energy[-1]["energy"]] if energy else None),
        "total_seconds": round(time.perf_counter() - start, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _canvas_source(pipe, img_uint8: np.ndarray) -> np.ndarray:
    """The image as the model saw it (fitted into the model canvas), (Hm, Wm, 3) in [0, 1]."""
    from .pipeline import as_float_image, border_colour

    img = as_float_image(img_uint8)
    return pipe.to_canvas(img, pipe.placement(img, "pad"), border_colour(img))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        summary = run(args, parser)
    except ReposeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary['files'])} files to {args.out} in {summary['total_seconds']:.1f}s"
          + (" (RANDOM models: see the notes above)" if summary["random_models"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
