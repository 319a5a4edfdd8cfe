"""Tiny random-weight model files for the end-to-end ComfyUI tests (no downloads, seconds to build).

- RePose models (RePoseDM / estimator) are written with repose_core in the pytest process.
- Stable Diffusion files (a full SD 1.x-architecture checkpoint: UNet + text encoder + TAESD VAE, and an 8-channel
  RePoseSD/HumanSD UNet) are written by a subprocess running ComfyUI's own python and classes, so the files are
  exactly what ComfyUI's loaders expect. ComfyUI only recognises an SD checkpoint whose UNet matches a registered
  config; TINY_SD_PACK is a test-only custom-node pack that registers the tiny config (context_dim 32, a 2-layer
  CLIP text encoder of width 32). It must be placed in the server's custom_nodes before the server starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CONTEXT = 32

TINY_SD_PACK = textwrap.dedent('''
    """Test-only: registers a tiny SD 1.x-style model config (UNet 32 channels, 2-layer CLIP of width 32)."""
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base

    TINY_CLIP_CONFIG = {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": 32, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1,
        "projection_dim": 32, "torch_dtype": "float32", "vocab_size": 49408,
    }


    class TinyClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options,
                             clip_model=comfy.sd1_clip.SDClipModel, textmodel_json_config=TINY_CLIP_CONFIG, **kwargs)


    class TinySD(comfy.supported_models.SD15):
        unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False,
                       "adm_in_channels": None, "use_temporal_attention": False, "in_channels": 4}
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

        def clip_target(self, state_dict={}):
            return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClipModel)


    if TinySD not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, TinySD)

    NODE_CLASS_MAPPINGS = {}
''')

_SD_FILES_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    comfy_dir, pack_init, ckpt_path, unet_path = sys.argv[1:5]
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("tiny_sd_pack", pack_init)
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    torch.manual_seed(0)

    def init_(module):
        for name, p in module.named_parameters():
            with torch.no_grad():
                if p.ndim == 0:  # TAESD's vae_scale / vae_shift keep their constructor values
                    continue
                if p.ndim > 1:
                    p.normal_(0.0, 0.02)
                elif "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        return module

    def unet(in_channels):
        cfg = dict(image_size=32, in_channels=in_channels, out_channels=4, model_channels=32, num_res_blocks=[1, 1],
                   channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
                   transformer_depth_middle=1, context_dim=32, num_heads=2, num_head_channels=-1,
                   use_linear_in_transformer=False, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
                   use_temporal_attention=False, use_temporal_resblock=False, dtype=torch.float32,
                   operations=comfy.ops.disable_weight_init)
        return init_(openaimodel.UNetModel(**cfg)).state_dict()

    sd = {"model.diffusion_model." + k: v for k, v in unet(4).items()}
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    sd.update({"first_stage_model." + k: v for k, v in init_(taesd).state_dict().items()})
    clip = init_(pack.TinyClipModel())
    for k, v in clip.state_dict().items():
        sd[k.replace("clip_l.", "cond_stage_model.", 1)] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, ckpt_path)
    # RePoseSD / HumanSD: a PyTorch-Lightning-style .ckpt holding the 8-channel UNet under model.diffusion_model.
    torch.save({"state_dict": {"model.diffusion_model." + k: v for k, v in unet(8).items()}, "global_step": 1},
               unet_path)
''')


def write_tiny_sd_pack(custom_nodes_dir: Path) -> Path:
    """Write the test-only tiny-SD pack into a server's custom_nodes folder (before the server starts)."""
    pack = Path(custom_nodes_dir) / "repose_test_tiny_sd"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(TINY_SD_PACK)
    return pack / "__init__.py"


def write_tiny_sd_files(comfy_dir: Path, pack_init: Path, ckpt_path: Path, unet_path: Path, python=sys.executable):
    """Tiny SD checkpoint (.safetensors) + 8-channel RePoseSD UNet (.ckpt), built by ComfyUI's own classes."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([python, "-c", _SD_FILES_SCRIPT, str(comfy_dir), str(pack_init), str(ckpt_path),
                        str(unet_path)], cwd=str(comfy_dir), capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        raise AssertionError(f"building the tiny SD files failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


def write_tiny_estimator(path: Path, input_size: int = 64) -> None:
    """A random SmallHRNet (the pack's shipped architecture, ~100 kB) in our safetensors format."""
    import torch

    from repose_core.checkpoint import save_model
    from repose_core.estimator.small_hrnet import SmallHRNet, SmallHRNetConfig

    torch.manual_seed(0)
    model = SmallHRNet(SmallHRNetConfig(width=8, stem=16, num_modules=1, num_blocks=1, input_size=input_size)).eval()
    save_model(path, model, "pose_estimator")


def write_image(path: Path, width: int, height: int, seed: int = 0, alpha: np.ndarray | None = None) -> None:
    """A smooth random RGB(A) PNG; `alpha` (H, W) in [0, 1] adds an alpha channel (LoadImage's MASK = 1 - alpha)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    if alpha is None:
        Image.fromarray(rgb).save(path)
    else:
        a = (np.clip(alpha, 0, 1) * 255).astype(np.uint8)[..., None]
        Image.fromarray(np.concatenate([rgb, a], axis=-1), "RGBA").save(path)


def write_tiny_repose_model(path: Path, variant: str = "full", seed: int = 0, **overrides) -> None:
    """A random RePoseDM of the 'tiny' preset (64x44 pixels, PixelUnshuffle(2) space) as a repose_dm file.

    The UNet's zero-initialised output layers are re-drawn so that the untrained model still depends on its inputs
    (a zero output would make every sample equal to its noise schedule, hiding bugs)."""
    import torch

    from repose_core.checkpoint import save_model
    from repose_core.models.configs import get_config
    from repose_core.models.repose import RePoseDM

    torch.manual_seed(seed)
    model = RePoseDM(get_config("tiny", variant, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and float(p.abs().max()) == 0.0:
                p.normal_(0.0, 0.02)
    save_model(path, model, "repose_dm")
