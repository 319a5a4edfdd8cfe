"""Generate the procedural pose-transfer dataset (repose_core.synthetic) in the DeepFashion PATN layout.

    python train/make_synthetic.py --out data/synth64 --size 64x44 --train-ids 300 --test-ids 40 \
        --poses-per-id 4 --seed 0

Writes <out>/{train,test}_highres/*.png, fasion-resize-{pairs,annotation}-{train,test}.csv and dataset.json.
The same --seed gives byte-identical files, and the same people in the same poses at every --size.
"""
from __future__ import annotations

import argparse
import sys
import time

from repose_core.errors import InputError
from repose_core.synthetic import SIZES, generate_dataset


def parse_size(text: str) -> tuple[int, int]:
    """'64x44' -> (64, 44) (H x W)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size must be HxW like 64x44 (standard: "
                                         f"{', '.join(f'{h}x{w}' for h, w in SIZES)}), got {text!r}")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=parse_size, default=(64, 44), metavar="HxW", help="image size (default 64x44)")
    p.add_argument("--train-ids", type=int, default=300, help="training identities (default 300)")
    p.add_argument("--test-ids", type=int, default=40, help="test identities, never seen in training (default 40)")
    p.add_argument("--poses-per-id", type=int, default=4, help="poses per identity, >= 2 (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:     # created on the first identity, so argument errors print without an empty bar
            from tqdm import tqdm
            bar = tqdm(total=total, unit="img", desc=f"synthetic {args.size[0]}x{args.size[1]}")
        bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        manifest = generate_dataset(args.out, size=args.size, n_train_ids=args.train_ids, n_test_ids=args.test_ids,
                                    poses_per_id=args.poses_per_id, seed=args.seed,
                                    progress=None if args.quiet else progress, overwrite=args.overwrite)
    except InputError as e:
        parser.error(str(e))        # exits with status 2 and the message
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    c = manifest["counts"]
    images = c["train"]["images"] + c["test"]["images"]
    print(f"{args.out}: train {c['train']['images']} images / {c['train']['pairs']} pairs, "
          f"test {c['test']['images']} images / {c['test']['pairs']} pairs; {images / seconds:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
