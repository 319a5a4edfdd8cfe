"""Build a TINY random Stable-Diffusion-2.1-architecture pipeline as a local diffusers folder (for tests / smoke runs).

    python train/tiny_sd.py --out /tmp/tiny-sd

Same component classes and wiring as SD 2.1-base (UNet2DConditionModel with linear-projection transformers and
per-level head dims, AutoencoderKL, CLIPTextModel + CLIPTokenizer, DDPMScheduler with the scaled-linear β schedule
0.00085 -> 0.012, ε prediction), with a few channels instead of hundreds. Weights are random; nothing is downloaded:
the tokenizer's byte-level vocabulary and (empty) merges are written locally.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _bytes_to_unicode() -> dict:
    """The byte -> printable unicode table of GPT-2 / CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer(folder: Path) -> int:
    """CLIPTokenizer files with one token per byte (plus end-of-word variants); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {}
    for c in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[c] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}), encoding="utf-8")
    return len(vocab)


def build_tiny_sd(out, seed: int = 0, sample_size: int = 32) -> Path:
    """Write the tiny pipeline to `out` (diffusers `save_pretrained` layout) and return the folder.

    `sample_size`: image size the configs advertise (the VAE downsamples by 2 here, SD by 8)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out)
    torch.manual_seed(seed)
    vocab_size = write_tiny_tokenizer(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=32, hidden_act="gelu", bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=sample_size, scaling_factor=0.18215)
    unet = UNet2DConditionModel(
        sample_size=sample_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=(2, 4),
        use_linear_projection=True, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("scheduler", scheduler)):
        module.save_pretrained(out / name)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.27.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}, indent=2), encoding="utf-8")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (diffusers layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-size", type=int, default=32, help="image size the configs advertise (default 32)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(build_tiny_sd(args.out, args.seed, args.sample_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
