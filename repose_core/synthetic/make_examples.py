"""Regenerate the bundled demo examples in repose_core/synthetic/examples/ (deterministic: same bytes every run).

    python -m repose_core.synthetic.make_examples [--out DIR]

For each size (64x44 and 128x88) and each example k:
    source_{k}.png            the person in the source pose
    target_{k}.png            ground truth: the same person in the target pose
    source_pose_{k}.json      ComfyUI POSE_KEYPOINT (list of frames, pixel coordinates, OpenPose-18)
    target_pose_{k}.json
plus fasion-resize-annotation-examples.csv / fasion-resize-pairs-examples.csv (PATN layout, keypoints in that size's
frame) and examples.json describing each example (pose kinds, views, garments).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..pose import PoseFrame
from ..pose.formats import to_pose_keypoint, write_patn_annotations, write_patn_pairs
from .identity import sample_identity
from .pose_prior import pose_from_params, sample_pose_params
from .render import render_figure

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SIZES = ((64, 44), (128, 88))
_SEED = 20231025
# (identity stream, source (kind, view), target (kind, view)): picked to show garments, turns and a back view
EXAMPLES = (
    (14, ("standing", "front"), ("walking", "three_quarter")),
    (16, ("arms_raised", "front"), ("hands_on_hips", "front")),
    (7, ("contrapposto", "front"), ("standing", "back")),
    (12, ("arms_out", "three_quarter"), ("arms_front", "front")),
)


def _example(k: int):
    stream, source, target = EXAMPLES[k]
    rng = np.random.default_rng([_SEED, stream])
    identity = sample_identity(rng)
    return identity, sample_pose_params(rng, *source), sample_pose_params(rng, *target)


def write_examples(out_dir=EXAMPLES_DIR) -> list:
    """Write all example files under out_dir; returns the written paths (relative to out_dir)."""
    out = Path(out_dir)
    written = []
    description = []
    for H, W in EXAMPLE_SIZES:
        folder = out / f"{H}x{W}"
        folder.mkdir(parents=True, exist_ok=True)
        annotations, pairs = {}, []
        for k in range(len(EXAMPLES)):
            identity, p_src, p_tgt = _example(k)
            for role, params in (("source", p_src), ("target", p_tgt)):
                pose = pose_from_params(params, identity, H, W)
                img = render_figure(identity, pose, H, W, rng=None)     # noiseless: small, crisp files
                name = f"{role}_{k}.png"
                Image.fromarray(img).save(folder / name, format="PNG", optimize=True)
                frame = PoseFrame(people=[pose], width=W, height=H)
                (folder / f"{role}_pose_{k}.json").write_text(json.dumps(to_pose_keypoint([frame])) + "\n",
                                                              encoding="utf-8")
                annotations[name] = pose
                written += [folder / name, folder / f"{role}_pose_{k}.json"]
            pairs.append((f"source_{k}.png", f"target_{k}.png"))
            if (H, W) == EXAMPLE_SIZES[0]:
                description.append({
                    "example": k, "source": {"kind": p_src.kind, "view": p_src.view},
                    "target": {"kind": p_tgt.kind, "view": p_tgt.view},
                    "top": f"{identity.top.pattern} ({identity.sleeves} sleeves)",
                    "bottom": f"{identity.bottom.pattern} {identity.bottom_kind}", "hair": identity.hair_style})
        write_patn_annotations(folder / "fasion-resize-annotation-examples.csv", annotations)
        write_patn_pairs(folder / "fasion-resize-pairs-examples.csv", pairs)
        written += [folder / "fasion-resize-annotation-examples.csv", folder / "fasion-resize-pairs-examples.csv"]
    manifest = {"generator": "repose_core.synthetic.make_examples", "sizes": [f"{H}x{W}" for H, W in EXAMPLE_SIZES],
                "keypoints": "openpose18, pixels of each size's own HxW frame; POSE_KEYPOINT files are ComfyUI "
                             "lists of frames", "examples": description}
    (out / "examples.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(out / "examples.json")
    return [p.relative_to(out) for p in written]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="output folder (default: the bundled examples)")
    args = parser.parse_args(argv)
    paths = write_examples(args.out)
    total = sum((Path(args.out) / p).stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1024:.1f} KiB, to {args.out}")


if __name__ == "__main__":
    main()
