"""Train RePoseDM (variants b1 = PIDM, b2 = + RPA, full = b2 + gradient-guided loss) on DeepFashion or Market-1501.

    python train/train_deepfashion.py --data-root data/deepfashion --layout patn --size 256 176 --variant b2 \
        --out runs/b2
    torchrun --nproc-per-node 8 train/train_deepfashion.py ... --bf16          (DDP; several machines: --nnodes)

Read top to bottom: options -> distributed setup -> data -> model, EMA, optimizer -> resume -> training loop
(loss, backward, clip, step, EMA, log, sample grid, checkpoint). Paper defaults (RePoseDM appendix / PIDM): AdamW
lr 1e-4, batch 8, T = 1000 linear β, L_hybrid (ε MSE + λ·VLB for the learned variance), EMA 0.9999, condition
dropout 10 % (∅ = all-zero source, as PIDM; the pose map is never dropped), N = 5 RPA iterations.

Loss options:
- L_hybrid: `GaussianDiffusion.training_losses` (paper eq. 3-4);
- --guided-loss: the MSE target becomes ε̃ = ε − √(1−ᾱ_t)·η·∇G (eq. 3 with eq. 15, `guided_eps_target`), G = the
  Pose Interaction Field feature energy (eq. 11) of the decoded Tweedie x̂0 against the *ground-truth target image*,
  through the HigherHRNet of --estimator;
- --rpa-warp-weight w > 0: + w · γ-weighted L1 between each RPA iteration's warped source and the target
  (`rpa_warp_loss`). OUR ADDITION, not in the paper (which trains RPA only through the diffusion loss); it gives the
  flow a direct signal early in training. Off by default.

Augmentation (train.data): pairs used in both directions (each batch is [src->tgt ; tgt->src], PIDM), horizontal
flip and a 0-5 % scale-crop with keypoints moved consistently. Bad files are reported and skipped (--strict-data:
fatal). Checkpoints: pickle-free training state (train/common.py), atomically replaced, `--resume` continues exactly;
the EMA is exported as `<out>/ema.safetensors` (`repose_core.checkpoint.save_model`, kind "repose_dm"), which the
LoadRePoseModel node loads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from repose_core.checkpoint import load_model, save_model
from train.data import (
    LAYOUTS, Augment, PoseTransferDataset, PreloadedPairs, load_records, swap_pair_batch,
)
from repose_core.diffusion import GaussianDiffusion, drop_condition, linear_betas
from repose_core.models.configs import CONFIG_NAMES, get_config
from repose_core.models.repose import RePoseDM, as_repose_model
from repose_core.errors import InputError
from train.loop import LoopOptions, run_loop, write_options
from train.common import (
    EMA, EpochBatchSampler, RunLogger, cleanup_distributed, image_grid, prepare_run_dir, resume_training_state,
    parse_options, restore_rng, run_script, save_training_state, setup_distributed, setup_logging,
)

log = logging.getLogger("repose")


@dataclass
class Options(LoopOptions):
    # data
    data_root: str = field(default="", metadata={"help": "dataset root"})
    layout: str = field(default="patn", metadata={"help": "patn (PATN/CFLD csv) | gfla (PIDM txt) | market",
                                                  "choices": LAYOUTS})
    split: str = field(default="train", metadata={"help": "pairs split"})
    image_dir: str = field(default="", metadata={"help": "override the image folder"})
    size: tuple = field(default=(0, 0), metadata={"help": "image size H W (default: the preset's: 256 176 | "
                                                           "512 352 | 128 64 | 64 44)"})
    strict_data: bool = field(default=False, metadata={"help": "missing/unreadable files are fatal (default: "
                                                                "skip the pair with a report)"})
    num_workers: int = field(default=4, metadata={"help": "data-loader workers per process"})
    scale_jitter: float = field(default=0.05, metadata={"help": "scale-crop augmentation, max relative enlargement"})
    flip_prob: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    bidirectional: bool = field(default=True, metadata={"help": "use each pair in both directions (PIDM)"})
    preload: bool = field(default=False, metadata={"help": "decode every image and pose map once and keep them on "
                                                           "the device (small datasets; no augmentation, no loader "
                                                           "workers: what lets a GPU train the miniatures at speed)"})
    # model
    variant: str = field(default="b2", metadata={"help": "b1 (PIDM) | b2 (+RPA) | full (b2 + guided loss)",
                                                 "choices": ("b1", "b2", "full")})
    preset: str = field(default="deepfashion256", metadata={"help": "network + diffusion space (configs.py)",
                                                            "choices": CONFIG_NAMES})
    rpa_iterations: int = field(default=0, metadata={"help": "N, recurrent RPA iterations (0 = the preset's; "
                                                             "paper: 5)"})
    prediction: str = field(default="", metadata={"help": "what the network predicts: eps | v | aligned_x0 (ours: the "
                                                         "correction of the aligned source; needs "
                                                         "--aligned-source-input) ('' = the preset's: v for the "
                                                         "miniatures, eps otherwise)",
                                                 "choices": ("", "eps", "v", "aligned_x0", "aligned_residual")})
    aligned_source_input: bool = field(default=False, metadata={"help": "OUR ADDITION: also concatenate the "
                                                                       "RPA-aligned source to the UNet input "
                                                                       "(b2 / full)"})
    vae: str = field(default="", metadata={"help": "diffusers AutoencoderKL folder, for latent presets "
                                                   "(deepfashion512)"})
    init: str = field(default="", metadata={"help": "start from this repose_dm / converted PIDM file (the UNet; "
                                                    "and the RPA when both have one)"})
    init_parts: str = field(default="all", metadata={"help": "what --init loads: all | rpa (only the RPA, e.g. "
                                                             "to give a new denoiser a trained alignment)",
                                                     "choices": ("all", "rpa")})
    # loss
    timesteps: int = field(default=1000, metadata={"help": "T (linear β 1e-4 -> 2e-2)"})
    cond_dropout: float = field(default=0.1, metadata={"help": "probability of the ∅ (zero) source, for CFG"})
    vb_weight: float = field(default=1.0, metadata={"help": "λ of L_hybrid's VLB term"})
    snr_clamp: float = field(default=0.0, metadata={"help": "v / aligned_x0 models: cap the x̂0-space loss weight "
                                                            "1 + SNR_t at 1 + this (min-SNR-γ; 0 = off)"})
    t_sampling: str = field(default="uniform", metadata={"help": "training timesteps: uniform (PIDM) | lognormal "
                                                                 "(EDM: σ ~ exp(N(P_mean, P_std²)), see --t-lognormal)",
                                                         "choices": ("uniform", "lognormal")})
    t_lognormal: tuple = field(default=(-1.2, 1.2), metadata={"help": "P_mean P_std of --t-sampling lognormal"})
    t_uniform_fraction: float = field(default=0.2, metadata={"help": "--t-sampling lognormal: this fraction of the "
                                                                     "timesteps stays uniform (the highest noise "
                                                                     "levels, where sampling starts)"})
    rpa_warp_weight: float = field(default=0.0, metadata={"help": "auxiliary RPA warp L1 weight (our addition)"})
    guided_loss: bool = field(default=False, metadata={"help": "gradient-guided ε̃ target (eq. 3/15); on for "
                                                                "--variant full"})
    estimator: str = field(default="", metadata={"help": "HigherHRNet checkpoint for the guided loss"})
    guidance_eta: float = field(default=10.0, metadata={"help": "η of eq. 15. The feature energy's gradient is "
                                                               "~1e-3 RMS per element (mean reduction), so η = 1 "
                                                               "moves ε̃ by ~1e-3 and trains like b2; 10 moves it "
                                                               "by ~1e-2 (docs/ablation.md)"})
    guidance_reduction: str = field(default="mean", metadata={"help": "feature energy reduction",
                                                              "choices": ("sum", "mean")})
    estimator_size: int = field(default=0, metadata={"help": "resize x̂0 (longer side) for the estimator; 0 = as is"})
    # optimisation (the rest: train/loop.py LoopOptions)
    batch_size: int = field(default=8, metadata={"help": "pairs per process per micro-batch (x2 if bidirectional)"})
    ema_decay: float = field(default=0.9999, metadata={"help": "EMA decay"})
    ema_warmup_steps: int = field(default=0, metadata={"help": "EMA copies the model before this step (PIDM)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute UNet activations in backward"})
    # run
    sample_every: int = field(default=0, metadata={"help": "sample grid every N steps (0 = off)"})
    sample_steps: int = field(default=25, metadata={"help": "DDIM steps of the sample grid"})
    device: str = field(default="auto", metadata={"help": "auto | cuda | cpu"})
    write_rank_weights: bool = field(default=False, metadata={"help": "every rank writes its final weights to "
                                                                       "<out>/final_rank<k>.safetensors (to verify "
                                                                       "that DDP ranks agree)"})


# ----------------------------------------------------------------------------------------------------------------
# Model


def build_model(opts: Options) -> tuple[RePoseDM, object, GaussianDiffusion]:
    """RePoseDM from the preset and variant (+ options), its codec, and the linear-β diffusion of T steps."""
    base = get_config(opts.preset, opts.variant)
    overrides = dict(timesteps=opts.timesteps, cond_drop_prob=opts.cond_dropout)
    if opts.activation_checkpointing:
        overrides["unet"] = dataclasses.replace(base.unet, use_checkpoint=True)
    if opts.rpa_iterations and base.rpa is not None:
        overrides["rpa"] = dict(iterations=opts.rpa_iterations)
    if opts.prediction:
        overrides["prediction"] = opts.prediction
    if opts.aligned_source_input:
        overrides["aligned_source_input"] = True
    config = get_config(opts.preset, opts.variant, **overrides)
    codec = None
    if config.codec == "sd_vae":
        if not opts.vae:
            raise InputError(f"preset {opts.preset!r} works in the SD VAE latent space: pass --vae <diffusers "
                             f"AutoencoderKL folder> (local files)")
        from repose_core.models.codec import DiffusersVAECodec
        sub = "vae" if (Path(opts.vae) / "vae").is_dir() else None     # an SD folder or the VAE folder itself
        codec = DiffusersVAECodec.from_pretrained(opts.vae, subfolder=sub, local_files_only=True).eval()
    model = RePoseDM(config, codec=codec)
    if opts.init:
        src = as_repose_model(load_model(opts.init))
        parts = []
        if opts.init_parts == "all":
            model.net.load_state_dict(src.net.state_dict(), strict=True)
            parts.append("UNet")
        if model.rpa is not None and src.rpa is not None:
            model.rpa.load_state_dict(src.rpa.state_dict(), strict=True)
            parts.append("RPA")
        if not parts:
            raise InputError(f"--init {opts.init} --init-parts rpa: one of the two models has no RPA")
        log.info("initialised from %s (%s)", opts.init, " + ".join(parts))
    return model, model.codec, GaussianDiffusion(linear_betas(config.timesteps))


# ----------------------------------------------------------------------------------------------------------------
# One training step


class TrainStep(nn.Module):
    """prepare (texture encoder + RPA) and denoise in one forward, so DDP sees every parameter's use.
    Inputs are in diffusion space: x_t, source (B, C, h, w), pose_map (B, P, h, w)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t, t, pose_map, source):
        cond = self.model.prepare(source, pose_map)
        out = self.model(x_t, t, pose_map, cond)           # (B, 2C, h, w): ε and learned-variance v
        return out, cond


def energy_for(estimator, codec, target01, opts: Options):
    """G = feature energy (eq. 11) of decode(x̂0) against the ground-truth target image."""
    from repose_core.guidance import PoseGuidance
    return PoseGuidance(estimator, codec, target=target01, energy="feature", reduction=opts.guidance_reduction,
                        estimator_size=opts.estimator_size or None).energy


def training_loss(step_module, model, diffusion, batch, opts: Options, noise_gen, device, estimator=None):
    """L_hybrid (+ guided target, + RPA warp loss) for one micro-batch -> (loss, logs, cond)."""
    from repose_core.guidance import guided_eps_target
    from repose_core.models.rpa import RPAOutput, rpa_warp_loss
    codec = model.codec
    source, target = batch["source"].to(device), batch["target"].to(device)    # (B, 3, H, W) in [-1, 1]
    with torch.no_grad():
        src_z, x0 = codec.encode(source), codec.encode(target)                  # (B, C, h, w) diffusion space
        pose_map = model.encode_pose(batch["target_pose_map"].to(device), size=x0.shape[-2:])   # (B, P, h, w)
    B = x0.shape[0]
    lognormal = opts.t_sampling == "lognormal"
    t = diffusion.sample_timesteps(B, noise_gen, lognormal=opts.t_lognormal if lognormal else None,
                                   uniform_fraction=opts.t_uniform_fraction if lognormal else 0.0).to(device)
    noise = torch.randn(x0.shape, generator=noise_gen).to(device)
    x_t = diffusion.q_sample(x0, t, noise)
    keep = ~drop_condition(B, opts.cond_dropout, generator=noise_gen).to(device)   # CFG: ∅ = zero source (PIDM)
    out, cond = step_module(x_t, t, pose_map, src_z * keep.view(-1, 1, 1, 1).to(src_z.dtype))
    out = out.float()
    C = x0.shape[1]
    mse_target, logs = None, {}
    if opts.guided_loss:
        target01 = (target.float() + 1) / 2
        mse_target = guided_eps_target(noise, out[:, :C], x_t, t, diffusion.alphas_cumprod,
                                       energy_for(estimator, codec, target01, opts), eta=opts.guidance_eta)
        logs["guidance_shift"] = float((mse_target - noise).pow(2).mean())
    losses = diffusion.training_losses(out, x0, x_t, t, noise, vb_weight=opts.vb_weight, mse_target=mse_target,
                                       mse_weight=diffusion.loss_weight_for(
                                           model.config.prediction, t, snr_clamp=opts.snr_clamp,
                                           sigma_data=model.config.residual_sigma_data))
    loss = losses["loss"].mean()
    logs.update(mse=float(losses["mse"].detach().mean()), vb=float(losses["vb"].detach().mean()))
    if opts.rpa_warp_weight > 0 and cond.warped and keep.any():
        warp = rpa_warp_loss(RPAOutput(flow=cond.flow, warped=[w[keep].float() for w in cond.warped]), x0[keep])
        loss = loss + opts.rpa_warp_weight * warp
        logs["rpa_warp"] = float(warp.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs, cond


@torch.no_grad()
def sample_grid(ema_model, diffusion, batch, opts: Options, device, n: int = 4) -> torch.Tensor:
    """Rows of source | pose | warped | sample | target, in [0, 1]."""
    from train.sampling import transfer
    source, target = batch["source"][:n].to(device), batch["target"][:n].to(device)
    pose_pixels = batch["target_pose_map"][:n].to(device)                  # pixel resolution
    gen = torch.Generator().manual_seed(opts.seed)
    sample, al = transfer(ema_model, diffusion, source, pose_pixels, steps=opts.sample_steps, generator=gen)
    pose_rgb = pose_pixels[:, :3].float()                                  # skeleton (RGB channels), [0, 1]
    warped = ema_model.codec.decode(al.aligned).clamp(-1, 1) if al.aligned is not None else torch.zeros_like(source)
    rows = [[(source[i] + 1) / 2, pose_rgb[i], (warped[i] + 1) / 2, (sample[i] + 1) / 2, (target[i] + 1) / 2]
            for i in range(source.shape[0])]
    return image_grid([[v.float().cpu() for v in r] for r in rows])


# ----------------------------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> int:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    if opts.variant == "full":
        opts.guided_loss = True
    out = Path(opts.out)
    if opts.dry_run:
        write_options(opts)
        return 0
    if not opts.data_root:
        raise InputError("--data-root is required")
    if opts.guided_loss and not opts.estimator:
        raise InputError("--guided-loss (and --variant full) needs --estimator <HigherHRNet checkpoint>")

    # -- distributed: torchrun's RANK / WORLD_SIZE; gloo on CPU, nccl on CUDA
    dist = setup_distributed(opts.device)
    device = dist.device
    setup_logging(dist.master)
    torch.manual_seed(opts.seed)                       # same initial weights (and EMA) on every rank
    prepare_run_dir(out, resume=opts.resume, overwrite=opts.overwrite, master=dist.master)   # never clobber a run
    write_options(opts, dist.master)

    # -- model, codec, diffusion
    model, codec, diffusion = build_model(opts)
    model.to(device).train()
    codec.to(device)          # pixel / unshuffle codecs have no weights; the SD VAE does
    torch.manual_seed(opts.seed + dist.rank)           # dropout streams differ per rank
    estimator = None
    if opts.guided_loss:
        from repose_core.estimator import build_estimator
        estimator = build_estimator(opts.estimator).to(device).eval()
    ema = EMA(model, opts.ema_decay, opts.ema_warmup_steps)
    ema.model.set_codec(model.codec if model.config.codec == "sd_vae" else None)   # the codec is not in the state
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                  weight_decay=opts.weight_decay)
    noise_gen = torch.Generator().manual_seed(opts.seed * 1000 + dist.rank)   # t, ε, dropout mask draws

    # -- data
    H, W = (int(v) for v in opts.size) if all(opts.size) else model.config.image_size
    on_error = "fatal" if opts.strict_data else "skip"
    report = str(out / "data_problems.jsonl")
    records = load_records(opts.data_root, opts.layout, opts.split, image_dir=opts.image_dir or None,
                           on_error=on_error, report_path=report if dist.master else None)
    dataset = PoseTransferDataset(records, (H, W), augment=Augment(opts.scale_jitter, opts.flip_prob),
                                  on_error=on_error, report_path=report, seed=opts.seed,
                                  pose_encoding="pidm20" if model.config.pose_encoding == "pidm20" else "skeleton")
    sampler = EpochBatchSampler(len(dataset), opts.batch_size, rank=dist.rank, world=dist.world, seed=opts.seed)
    preloaded = None
    if opts.preload:
        t0 = time.perf_counter()
        preloaded = PreloadedPairs(dataset, device=device, num_workers=opts.num_workers)
        log.info("preloaded %d images / %d pairs to %s in %.1f s", len(preloaded.images), len(preloaded),
                 device, time.perf_counter() - t0)

    # -- resume
    step = 0
    if opts.resume:
        ckpt, (groups, opt_state, meta) = resume_training_state(out, trim_log=dist.master)
        model.load_state_dict(groups["model"], strict=True)
        ema.model.load_state_dict(groups["ema"], strict=True)
        optimizer.load_state_dict(opt_state)
        step = int(meta["step"])
        if int(meta.get("world", 1)) != dist.world:
            log.warning("resuming a %s-process run with %d processes: data order and random streams will differ "
                        "from an uninterrupted run", meta.get("world", 1), dist.world)
        mine = groups.get(f"rank{dist.rank}") if dist.enabled else None
        rng = {"rng.torch": mine["torch"], "rng.noise": mine["noise"]} if mine else groups["rng"]
        restore_rng(rng, meta["rng"], noise_gen)
        if mine and "cuda" in mine and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
        log.info("resumed from %s at step %d", ckpt, step)

    step_module: nn.Module = TrainStep(model)
    if dist.enabled:
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index]
                                                          if device.type == "cuda" else None)
    logger = RunLogger(out, enabled=dist.master, use_tensorboard=opts.tensorboard)
    bpe = sampler.batches_per_epoch()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if opts.bf16 else contextlib.nullcontext

    def batches():
        """Endless batches; restarts mid-epoch at the exact batch a resumed run stopped at."""
        epoch, skip = divmod(step * opts.grad_accum, bpe)
        while True:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, skip)
            if preloaded is not None:      # the same index order, gathered from device memory
                loader = (preloaded.batch(indices) for indices in sampler)
            else:
                loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=opts.num_workers,
                                                     generator=torch.Generator().manual_seed(opts.seed + epoch),
                                                     persistent_workers=False)
            for batch in loader:
                yield swap_pair_batch(batch) if opts.bidirectional else batch
            epoch, skip = epoch + 1, 0

    def save(step_now: int) -> None:
        # RNG states differ per rank: every rank's are gathered into the one file (rank<k>.rng.*)
        rng_extra = gather_rng(dist, noise_gen)
        if dist.master:
            final = save_training_state(out, step_now, modules={"model": model.state_dict(),
                                                                "ema": ema.model.state_dict(), **rng_extra},
                                        optimizer=optimizer, noise_generator=noise_gen, keep=opts.keep_checkpoints,
                                        meta={"options": dataclasses.asdict(opts), "world": dist.world,
                                              "epoch": step_now * opts.grad_accum // bpe})
            save_model(out / "ema.safetensors", ema.model, "repose_dm",
                       extra_metadata={"step": step_now, "variant": opts.variant, "trained_with": "train_deepfashion"})
            log.info("checkpoint %s, EMA exported to %s", final, out / "ema.safetensors")
        if dist.enabled:
            torch.distributed.barrier()

    class DeepFashionSteps:
        throughput_key = "pairs_per_s"

        def loss(self, batch):
            with autocast():
                loss, logs, _ = training_loss(step_module, model, diffusion, batch, opts, noise_gen, device,
                                              estimator)
            return loss, logs, None

        def backward(self, loss):
            loss.backward()

        def no_sync(self):
            return step_module.no_sync() if dist.enabled else contextlib.nullcontext()

        def clip(self, max_norm):
            return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))

        def after_step(self, step_now):
            ema.update(model, step_now)

        def save(self, step_now):
            save(step_now)

        def preview(self, step_now, batch, extra):
            ema.model.eval()
            logger.image(step_now, "samples/source|pose|warped|sample|target",
                         sample_grid(ema.model, diffusion, batch, opts, device))

        def any_process(self, flag):
            if dist.enabled:
                t = torch.tensor([float(flag)], device=device)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                flag = bool(t.item())
            return flag

        def items(self, batch):
            return batch["source"].shape[0]

    run_loop(opts, DeepFashionSteps(), optimizer, batches(), step=step, world=dist.world, master=dist.master,
             logger=logger, desc=f"RePoseDM {opts.variant}", preview_every=opts.sample_every)
    logger.close()
    if opts.write_rank_weights:
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / f"final_rank{dist.rank}.safetensors"))
    cleanup_distributed(dist)
    return 0


def gather_rng(dist, noise_gen: torch.Generator) -> dict:
    """{"rank<k>": {"torch": ..., "noise": ..., "cuda": ...}} of every rank (DDP), {} in a single process."""
    if not dist.enabled:
        return {}
    import torch.distributed as tdist
    mine = {"torch": torch.get_rng_state(), "noise": noise_gen.get_state()}
    if dist.device.type == "cuda":                      # dropout on the GPU draws from the device's generator
        mine["cuda"] = torch.cuda.get_rng_state(dist.device)
    gathered = [None] * dist.world
    tdist.all_gather_object(gathered, {k: v.tolist() for k, v in mine.items()})
    return {f"rank{r}": {k: torch.tensor(v, dtype=torch.uint8) for k, v in g.items()}
            for r, g in enumerate(gathered)} if dist.master else {}


if __name__ == "__main__":
    run_script(main)
