"""Training throughput (pairs/s) and peak memory of a RePoseDM training step, compared with PIDM's reported cost.

    python bench/bench_train.py                                   # deepfashion256 b2 on CPU, batch 1, 2 timed steps
    python bench/bench_train.py --device cuda --batch-size 8 --bf16 --steps 10

One step = what train_deepfashion.py does per optimizer step: codec encode, RPA + texture encoder + UNet forward,
L_hybrid, backward, clip, AdamW, EMA update (data loading excluded: random images and a real rendered pose map).
PIDM reference: ~950 s per epoch on 8×A100 at batch 16 for 101,966 training pairs (PIDM issue #11) = 107 pairs/s
for the machine, 13.4 pairs/s per GPU. Writes bench/results/train.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from train import train_deepfashion as T
from train.common import EMA

ROOT = Path(__file__).resolve().parents[1]

PIDM_PAIRS, PIDM_EPOCH_S, PIDM_GPUS = 101_966, 950.0, 8


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="deepfashion256")
    p.add_argument("--variant", default="b2", choices=("b1", "b2", "full"))
    p.add_argument("--batch-size", type=int, default=1, help="pairs per step (before the bidirectional doubling)")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    opts = T.Options(preset=args.preset, variant=args.variant, activation_checkpointing=args.activation_checkpointing,
                     guided_loss=False)
    torch.manual_seed(0)
    rss0 = peak_rss_mib()
    model, codec, diffusion = T.build_model(opts)
    model.to(device).train()
    ema = EMA(model, opts.ema_decay)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=opts.lr)
    step_module = T.TrainStep(model)
    n_params = sum(q.numel() for q in model.parameters())

    from repose_core.pose import Pose, render_pidm_pose_map
    H, W = model.config.image_size
    kp = torch.zeros(18, 3)
    kp[:, 0], kp[:, 1], kp[:, 2] = torch.linspace(0.3 * W, 0.7 * W, 18), torch.linspace(0.1 * H, 0.9 * H, 18), 1
    pose = torch.from_numpy(render_pidm_pose_map(Pose(kp.numpy(), W, H), H, W)).permute(2, 0, 1)
    B = args.batch_size
    batch = {"source": torch.rand(B, 3, H, W) * 2 - 1, "target": torch.rand(B, 3, H, W) * 2 - 1,
             "source_pose_map": pose.expand(B, -1, -1, -1).clone(),
             "target_pose_map": pose.expand(B, -1, -1, -1).clone(),
             "index": torch.arange(B), "pair": ["bench"] * B}
    if args.bidirectional:
        from train.data import swap_pair_batch
        batch = swap_pair_batch(batch)
    pairs = batch["source"].shape[0]
    gen = torch.Generator().manual_seed(0)

    def one_step():
        ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
        with ctx:
            loss, _, _ = T.training_loss(step_module, model, diffusion, batch, opts, gen, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, 1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    one_step()                                              # warm-up (allocations, kernels, cuDNN autotuning)
    warm = time.perf_counter() - t0
    if device.type == "cuda":  # after the warm-up: cuDNN's autotuning tries workspaces a steady step never holds
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    per_step = (time.perf_counter() - t0) / args.steps
    pairs_per_s = pairs / per_step
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else peak_rss_mib())

    pidm_per_gpu = PIDM_PAIRS / PIDM_EPOCH_S / PIDM_GPUS
    epoch_s = PIDM_PAIRS / pairs_per_s
    result = {
        "preset": args.preset, "variant": args.variant, "image_size_hw": list(model.config.image_size),
        "rpa_iterations": model.config.rpa.iterations if model.config.rpa else 0, "parameters": n_params,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "bf16": args.bf16,
        "activation_checkpointing": args.activation_checkpointing, "pairs_per_step": pairs,
        "seconds_per_step": per_step, "warmup_step_s": warm, "pairs_per_s": pairs_per_s,
        "peak_memory_mib": peak, "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
        else f"process peak RSS (before the model: {rss0:.0f} MiB)",
        "epoch_s_at_this_rate_101966_pairs": epoch_s,
        "pidm_reference": {"pairs_per_s_per_gpu": pidm_per_gpu, "setup": "8xA100, batch 16, 950 s/epoch"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"RePoseDM {args.variant} {args.preset} ({n_params / 1e6:.1f} M parameters, {result['image_size_hw'][0]}x"
          f"{result['image_size_hw'][1]}, N={result['rpa_iterations']}) on {device} ({torch.get_num_threads()} "
          f"threads{', bf16' if args.bf16 else ''}):")
    print(f"  {per_step:.2f} s per step of {pairs} pairs -> {pairs_per_s:.3f} pairs/s; peak memory {peak:.0f} MiB "
          f"({result['peak_memory_kind']})")
    print(f"  one DeepFashion epoch (101,966 pairs) at this rate: {epoch_s / 3600:.1f} h on this device")
    print(f"  PIDM reported ~950 s/epoch on 8xA100 at batch 16 = {pidm_per_gpu:.1f} pairs/s per GPU; this device "
          f"runs at {pairs_per_s / pidm_per_gpu:.3%} of one such A100 (a CPU is not the training target: use "
          f"--device cuda)")
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
