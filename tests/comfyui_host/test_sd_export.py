"""RePoseSD: what train/train_sd.py exports (diffusers key names) loads in the RePoseSD loader and computes what the
diffusers UNet computes. Runs in ComfyUI's python (a subprocess with the ComfyUI tree on sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    comfy_dir, repo_root, out = sys.argv[1:4]
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path[:0] = [comfy_dir, repo_root, repo_root + "/tests/comfyui_host"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    from diffusers import UNet2DConditionModel
    from comfy_harness import import_pack_like_comfyui
    from train.train_sd import export_unet, expand_conv_in

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32).eval()  # ComfyUI: 32 groups
    expand_conv_in(unet, 4)
    with torch.no_grad():  # the new pose channels are zero-initialised: make them matter
        unet.conv_in.weight.normal_(0, 0.05)
        for p in unet.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    export_unet(out, unet, {"step": 1})

    pack = import_pack_like_comfyui(repo_root, "repose_pack_under_test")
    from importlib import import_module
    sd_runtime = import_module("repose_pack_under_test.nodes.sd_runtime")
    patcher = sd_runtime.load_repose_sd(out, dtype=torch.float32)
    net = patcher.model.diffusion_model
    x, t, ctx = torch.randn(2, 8, 16, 16), torch.tensor([10, 700]), torch.randn(2, 7, 32)
    with torch.no_grad():
        ours = net(x, timesteps=t, context=ctx)
        theirs = unet(x, t, encoder_hidden_states=ctx).sample
    err = (ours - theirs).abs().max().item()
    print("max|diff|", err, "scale", theirs.abs().max().item())
    assert err < 1e-4 * max(1.0, theirs.abs().max().item()), err

    import json
    from safetensors.torch import load_file, save_file
    sd = load_file(out)
    del sd[next(k for k in sd if k.startswith("up_blocks.1.attentions.0.transformer_blocks.0.attn2"))]
    sd["extra_block.weight"] = torch.zeros(1)
    save_file(sd, out + ".bad.safetensors", metadata={"config": json.dumps(dict(unet.config))})
    try:
        sd_runtime.load_repose_sd(out + ".bad.safetensors")
    except Exception as e:
        assert type(e).__name__ == "CheckpointError" and "bad.safetensors" in str(e), e
        print("refused:", str(e)[:200])
    else:
        raise AssertionError("a damaged diffusers-named UNet loaded")
''')


def test_train_sd_export_loads_in_the_repose_sd_loader_and_matches_diffusers(comfy_dir, repo_root, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(comfy_dir), str(repo_root), str(tmp_path / "unet.safetensors")],
                       cwd=str(comfy_dir), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "max|diff|" in r.stdout and "refused:" in r.stdout
