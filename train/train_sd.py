"""Fine-tune Stable Diffusion 2.1-base into RePoseSD (paper section 4.4, eq. 15 and 17).

    accelerate launch train/train_sd.py --pretrained /models/sd21-base \
        --mapping data/laion_human/mapping_file_training.json --out runs/repose_sd --guided-loss --estimator /models/higherhrnet_w48.safetensors
    torchrun --nproc-per-node 8 train/train_sd.py ...        (accelerate reads torchrun's environment too)

What it does, as in HumanSD (IDEA-Research/HumanSD) plus the paper's gradient-guided target:
- data: the HumanSD layout (mapping JSON of {img_path, pose_path, prompt}, COCO-17 `.npz` poses); the skeleton image
  (`repose_core.pose.render_humansd`) is VAE-encoded (posterior mean × 0.18215) and concatenated to the noisy latent:
  UNet conv_in grows from 4 to 8 input channels, the new ones zero-initialised (so step 0 equals SD 2.1);
- text through SD 2.1's own text encoder (frozen); the VAE is frozen; the whole UNet is trained (AdamW);
- L_LDM (eq. 17) = ‖ε̃ − ε_θ(z_t, pose, c, t)‖² with, under --guided-loss, ε̃ = ε − √(1−ᾱ_t)·η·∇G (eq. 15 moved to
  the target side, `repose_core.guidance.guided_eps_target`), G = the Pose Interaction Field feature energy (eq. 11)
  of the decoded Tweedie x̂0 against the ground-truth image, through HigherHRNet (`--estimator`).
Weights come from local files only (HF_HUB_OFFLINE=1, local_files_only=True): a diffusers folder, or a single-file
checkpoint plus `--pretrained-config` (a diffusers folder holding the configs). Resumable (pickle-free state, see
train/common.py); exports `unet.safetensors` (diffusers key names, metadata kind "repose_sd_unet", config = the
8-channel UNet2DConditionModel config) for the RePoseSD loader node.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")              # never reach the network for weights
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

from train.data import HumanSDDataset, load_humansd_records
from repose_core.errors import InputError, MissingDependencyError
from train.common import (
    EMA, EpochBatchSampler, RunLogger, image_grid, prepare_run_dir, resume_training_state, parse_options,
    restore_rng, run_script, save_training_state, setup_logging,
)
from train.loop import LoopOptions, run_loop, write_options

log = logging.getLogger("repose")


@dataclass
class Options(LoopOptions):
    # data
    mapping: str = field(default="", metadata={"help": "HumanSD mapping JSON [{img_path, pose_path, prompt}]"})
    data_root: str = field(default="", metadata={"help": "folder the mapping's paths are relative to "
                                                          "(default: the mapping file's folder)"})
    size: int = field(default=512, metadata={"help": "training resolution (square, SD 2.1-base: 512)"})
    strict_data: bool = field(default=False, metadata={"help": "stop at the first missing/unreadable file "
                                                                "instead of skipping the entry with a report"})
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes"})
    # model
    pretrained: str = field(default="", metadata={"help": "SD 2.1-base: a diffusers folder or a single-file "
                                                           "checkpoint (.safetensors/.ckpt)"})
    pretrained_config: str = field(default="", metadata={"help": "diffusers folder with the configs, for a "
                                                                  "single-file --pretrained"})
    # loss
    guided_loss: bool = field(default=False, metadata={"help": "gradient-guided ε̃ target (eq. 15/17)"})
    estimator: str = field(default="", metadata={"help": "HigherHRNet checkpoint for --guided-loss"})
    guidance_eta: float = field(default=1.0, metadata={"help": "η of eq. 15"})
    guidance_reduction: str = field(default="mean", metadata={"help": "feature-energy reduction",
                                                              "choices": ("sum", "mean")})
    estimator_size: int = field(default=0, metadata={"help": "resize x̂0 (longer side) before the estimator; "
                                                             "0 = as is"})
    text_dropout: float = field(default=0.0, metadata={"help": "probability of an empty prompt (for CFG on text)"})
    # optimisation and run (the rest: train/loop.py LoopOptions), with this script's defaults
    lr: float = field(default=5e-6, metadata={"help": "AdamW learning rate (HumanSD: 5e-6 per 4 images per GPU)"})
    batch_size: int = field(default=4, metadata={"help": "images per GPU per micro-batch"})
    max_steps: int = field(default=10000, metadata={"help": "optimizer steps"})
    mixed_precision: str = field(default="no", metadata={"help": "autocast precision",
                                                         "choices": ("no", "bf16", "fp16")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "UNet activation checkpointing"})
    ema_decay: float = field(default=0.0, metadata={"help": "EMA of the UNet (0 = off; exported when on)"})
    out: str = field(default="runs/repose_sd", metadata={"help": "run folder"})
    save_every: int = field(default=500, metadata={"help": "checkpoint + export every N steps"})
    log_every: int = field(default=10, metadata={"help": "scalars every N steps"})
    preview_every: int = field(default=0, metadata={"help": "pose | x̂0 | target grid every N steps (0 = off)"})


# ----------------------------------------------------------------------------------------------------------------
# Stable Diffusion pieces (diffusers / transformers, local files only)


def _import_diffusers():
    try:
        import diffusers
        import transformers
    except ImportError as e:
        raise MissingDependencyError("train_sd.py needs the optional training packages: pip install -r "
                                     "requirements-train.txt (diffusers, transformers, accelerate)") from e
    return diffusers, transformers


def load_stable_diffusion(pretrained: str, pretrained_config: str = ""):
    """-> (unet, vae, text_encoder, tokenizer, noise_scheduler) from local files."""
    diffusers, transformers = _import_diffusers()
    path = Path(pretrained)
    if path.is_dir():
        kw = {"local_files_only": True}
        try:
            unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
            vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
            text_encoder = transformers.CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
            scheduler = diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
        except (OSError, ValueError) as e:
            raise InputError(f"--pretrained {path}: not a complete diffusers Stable Diffusion folder (needs unet/, "
                             f"vae/, text_encoder/, tokenizer/, scheduler/): {e}") from None
        return unet, vae, text_encoder, tokenizer, scheduler
    if path.is_file():
        if not pretrained_config:
            raise InputError(f"--pretrained {path} is a single-file checkpoint; also pass --pretrained-config "
                             f"<diffusers folder with SD 2.1-base configs> (no configs are downloaded)")
        pipe = diffusers.StableDiffusionPipeline.from_single_file(str(path), config=pretrained_config,
                                                                  local_files_only=True)
        scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
        return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler
    raise InputError(f"--pretrained {path} does not exist (give a diffusers folder or a .safetensors/.ckpt file)")


def expand_conv_in(unet, extra_channels: int = 4):
    """UNet input 4 -> 4 + extra channels; the new input channels' weights are zero (HumanSD "finetune-extended")."""
    old = unet.conv_in
    if old.in_channels != unet.config.in_channels:
        raise InputError("UNet conv_in does not match its config")
    new = torch.nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size, old.stride,
                          old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return unet


def export_unet(path, unet, extra: dict | None = None) -> None:
    """Write the UNet as a RePoseSD model file (`repose_core.models.repose_sd`): diffusers key names + metadata
    {format, kind "repose_sd_unet", config}, atomic; `extra` adds metadata entries (step, base, guided_loss)."""
    from repose_core.checkpoint import save_model
    from repose_core.models.repose_sd import ARCHITECTURE, KIND

    save_model(path, unet, KIND, extra_metadata={"architecture": ARCHITECTURE, **(extra or {})})


def load_exported_unet(path):
    """Rebuild the exported UNet: config from metadata, weights strictly (`repose_core.checkpoint.load_model`)."""
    from repose_core.checkpoint import load_model
    from repose_core.models.repose_sd import KIND

    return load_model(path, expected_kind=KIND)


# ----------------------------------------------------------------------------------------------------------------
# Loss


def make_energy_fn(estimator, vae, gt01, opts: Options):
    """Feature energy (eq. 11) of a latent x̂0 against the ground-truth image, differentiable through the VAE."""
    from repose_core.guidance import PoseGuidance
    from repose_core.models.codec import DiffusersVAECodec
    guidance = PoseGuidance(estimator, DiffusersVAECodec(vae, vae.config.scaling_factor), target=gt01,
                            energy="feature", reduction=opts.guidance_reduction,
                            estimator_size=opts.estimator_size or None)
    return guidance.energy


def sd_loss(unet, vae, text_encoder, tokenizer, scheduler, batch, opts: Options, estimator, noise_gen, device):
    """L_LDM (eq. 17) for one micro-batch -> (loss, logs, preview tensors)."""
    from repose_core.guidance import guided_eps_target
    image = batch["image"].to(device)                # (B, 3, H, W) in [-1, 1]
    pose_image = batch["pose_image"].to(device)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z0 = vae.encode(image).latent_dist.sample() * sf                 # (B, 4, H/8, W/8)
        pose_z = vae.encode(pose_image).latent_dist.mean * sf            # deterministic pose condition
        prompts = [p if torch.rand((), generator=noise_gen, device=noise_gen.device).item() >= opts.text_dropout
                   else "" for p in batch["prompt"]]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        text = text_encoder(ids)[0]                                      # (B, 77, D)
    B = z0.shape[0]
    noise = torch.randn(z0.shape, generator=noise_gen, device=noise_gen.device).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (B,), generator=noise_gen,
                      device=noise_gen.device).to(device)
    z_t = scheduler.add_noise(z0, noise, t)
    eps = unet(torch.cat([z_t, pose_z], dim=1), t, encoder_hidden_states=text).sample
    target = noise
    logs = {}
    if opts.guided_loss:
        gt01 = (image.float() + 1) / 2
        target = guided_eps_target(noise.float(), eps.float(), z_t.float(), t, scheduler.alphas_cumprod,
                                   make_energy_fn(estimator, vae, gt01, opts), eta=opts.guidance_eta)
        logs["guidance_shift"] = float((target - noise).pow(2).mean())
    loss = F.mse_loss(eps.float(), target.float())
    abar = scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    x0_hat = (z_t - (1 - abar).sqrt() * eps.detach()) / abar.sqrt()
    return loss, logs, (pose_image, x0_hat, image)


# ----------------------------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> int:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    out = Path(opts.out)
    if opts.dry_run:
        write_options(opts)
        return 0
    try:
        from accelerate import Accelerator
    except ImportError as e:
        raise MissingDependencyError("train_sd.py needs accelerate: pip install -r requirements-train.txt") from e
    for name in ("mapping", "pretrained"):
        if not getattr(opts, name):
            raise InputError(f"--{name} is required")
    if opts.guided_loss and not opts.estimator:
        raise InputError("--guided-loss needs --estimator <HigherHRNet checkpoint> (a local file)")

    accelerator = Accelerator(mixed_precision=opts.mixed_precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    setup_logging(accelerator.is_main_process)
    torch.manual_seed(opts.seed + rank)
    prepare_run_dir(out, resume=opts.resume, overwrite=opts.overwrite, master=accelerator.is_main_process)
    write_options(opts, accelerator.is_main_process)

    # -- data
    on_error = "fatal" if opts.strict_data else "skip"
    report = str(out / "data_problems.jsonl")
    records = load_humansd_records(opts.mapping, root=opts.data_root or None, on_error=on_error, report_path=report)
    dataset = HumanSDDataset(records, (opts.size, opts.size), on_error=on_error, report_path=report, seed=opts.seed)
    sampler = EpochBatchSampler(len(dataset), opts.batch_size, rank=rank, world=world, seed=opts.seed)
    loader_gen = torch.Generator().manual_seed(opts.seed)   # keeps DataLoader from consuming the global RNG

    # -- model
    unet, vae, text_encoder, tokenizer, scheduler = load_stable_diffusion(opts.pretrained, opts.pretrained_config)
    if unet.config.in_channels == 4:
        expand_conv_in(unet, 4)
    elif unet.config.in_channels != 8:
        raise InputError(f"UNet has {unet.config.in_channels} input channels; expected 4 (SD 2.1) or 8 (RePoseSD)")
    vae.requires_grad_(False).eval().to(device)
    text_encoder.requires_grad_(False).eval().to(device)
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    estimator = None
    if opts.guided_loss:
        from repose_core.estimator import build_estimator
        estimator = build_estimator(opts.estimator).to(device).eval()
    ema = EMA(unet, opts.ema_decay) if opts.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    noise_gen = torch.Generator(device="cpu").manual_seed(opts.seed * 1000 + rank)

    step = 0
    if opts.resume:
        ckpt, (groups, opt_state, meta) = resume_training_state(out, trim_log=accelerator.is_main_process)
        unet.load_state_dict(groups["model"], strict=True)
        if ema is not None:
            ema.model.load_state_dict(groups["ema"], strict=True)
        optimizer.load_state_dict(opt_state)
        restore_rng(groups["rng"], meta["rng"], noise_gen)
        step = int(meta["step"])
        log.info("resumed from %s at step %d", ckpt, step)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if ema is not None:
        ema.model.to(device)

    logger = RunLogger(out, enabled=accelerator.is_main_process, use_tensorboard=opts.tensorboard)
    bpe = sampler.batches_per_epoch()

    def batches():
        consumed = step * opts.grad_accum
        epoch, skip = divmod(consumed, bpe)
        while True:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, skip)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=opts.num_workers,
                                                 generator=loader_gen)
            yield from loader
            epoch, skip = epoch + 1, 0

    def save(step_now: int) -> None:
        model = accelerator.unwrap_model(unet)
        if accelerator.is_main_process:
            modules = {"model": model.state_dict()}
            if ema is not None:
                modules["ema"] = ema.model.state_dict()
            save_training_state(out, step_now, modules=modules, optimizer=optimizer.optimizer
                                if hasattr(optimizer, "optimizer") else optimizer,
                                meta={"options": dataclasses.asdict(opts), "epoch": step_now * opts.grad_accum // bpe},
                                noise_generator=noise_gen, keep=opts.keep_checkpoints)
            export_unet(out / "unet.safetensors", ema.model if ema is not None else model,
                        {"step": step_now, "base": str(opts.pretrained), "guided_loss": opts.guided_loss})
        accelerator.wait_for_everyone()

    class SDSteps:
        throughput_key = "images_per_s"

        def loss(self, batch):
            with accelerator.autocast():
                return sd_loss(unet, vae, text_encoder, tokenizer, scheduler, batch, opts, estimator, noise_gen,
                               device)

        def backward(self, loss):
            accelerator.backward(loss)

        def no_sync(self):
            return accelerator.no_sync(unet) if world > 1 else contextlib.nullcontext()

        def clip(self, max_norm):
            return float(accelerator.clip_grad_norm_(unet.parameters(), max_norm))

        def after_step(self, step_now):
            if ema is not None:
                ema.update(accelerator.unwrap_model(unet), step_now)

        def save(self, step_now):
            save(step_now)

        def preview(self, step_now, batch, extra):
            pose_image, x0_hat, image = extra
            with torch.no_grad():
                dec = vae.decode(x0_hat[:1].float() / vae.config.scaling_factor).sample
            logger.image(step_now, "preview/pose|x0|target", image_grid([[(v[0].float().cpu() + 1) / 2 for v in
                                                                           (pose_image, dec, image)]]))

        def any_process(self, flag):
            t = torch.tensor([float(flag)], device=device)
            return bool(accelerator.reduce(t, reduction="sum").item() > 0) if world > 1 else flag

        def items(self, batch):
            return opts.batch_size

    run_loop(opts, SDSteps(), optimizer, batches(), step=step, world=world, master=accelerator.is_main_process,
             logger=logger, desc="RePoseSD", preview_every=opts.preview_every)
    logger.close()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_script(main)
