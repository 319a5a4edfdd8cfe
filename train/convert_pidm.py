"""Convert PIDM's released checkpoint (last.pt) into a RePose model file (safetensors, kind "pidm").

    python train/convert_pidm.py checkpoints/last.pt models/repose/pidm_deepfashion256.safetensors

The pickle is read by repose_core's restricted unpickler in stub mode: tensors are taken from the "ema" entry, the
pickled training config is replaced by inert placeholders and never imported or executed. The network config is
inferred from the tensor shapes (any PIDM config; --config names a preset instead), and the state dict must match
it key-for-key. RePose's loader uses the result as variant B1.
"""
from __future__ import annotations

import argparse
import sys

import torch

from repose_core.errors import ReposeError
from repose_core.models.pidm import PIDM_PRESETS, convert_pidm_checkpoint

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="PIDM training checkpoint (last.pt)")
    parser.add_argument("output", help="output .safetensors path")
    parser.add_argument("--config", default="auto", choices=["auto", *sorted(PIDM_PRESETS)],
                        help="network config the weights belong to; auto (default) infers it from the tensor shapes "
                             "(deepfashion256 = the released model)")
    parser.add_argument("--entry", default="ema", help="checkpoint entry holding the state dict (default: "
                        "%(default)s; PIDM's inference uses the EMA weights, 'model' holds the raw ones)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the stored weights (default: %(default)s)")
    args = parser.parse_args(argv)

    if not args.output.endswith(".safetensors"):
        parser.error(f"output {args.output!r} must end with .safetensors")
    try:
        model = convert_pidm_checkpoint(args.checkpoint, args.output, entry=args.entry, dtype=DTYPES[args.dtype],
                                        preset=None if args.config == "auto" else args.config)
    except ReposeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.state_dict().values())
    from repose_core.checkpoint import read_metadata
    config = read_metadata(args.output)["preset"]
    print(f"wrote {args.output}: kind 'pidm', config {config}, {len(model.state_dict())} tensors, "
          f"{n:,} parameters, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
