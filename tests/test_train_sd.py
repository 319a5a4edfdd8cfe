"""train/train_sd.py on a tiny random SD-2.1-architecture pipeline built locally (diffusers/transformers/accelerate)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image


pytest.importorskip("diffusers", reason="train_sd.py needs the optional training packages (requirements-train.txt)")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from repose_core.pose import Pose, PoseFrame, write_humansd_npz  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from train.tiny_sd import build_tiny_sd
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def humansd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("humansd")
    (root / "images").mkdir()
    (root / "pose").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(4):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.jpg")
        kp = np.zeros((17, 3), np.float32)
        kp[:, 0], kp[:, 1], kp[:, 2] = rng.uniform(2, 34, 17), rng.uniform(2, 38, 17), 0.9
        write_humansd_npz(root / "pose" / f"{i}.npz", PoseFrame([Pose(kp, 36, 40, "coco17")], 36, 40))
        entries.append({"img_path": f"images/{i}.jpg", "pose_path": f"pose/{i}.npz", "prompt": f"person {i}"})
    (root / "mapping.json").write_text(json.dumps(entries))
    return root / "mapping.json"


def _args(tiny_sd, mapping, out, *extra):
    return ["--pretrained", str(tiny_sd), "--mapping", str(mapping), "--size", "32", "--batch-size", "2",
            "--num-workers", "0", "--log-every", "1", "--no-tensorboard", "--out", str(out), *extra]


def test_expand_conv_in_keeps_the_pretrained_function(tiny_sd):
    from diffusers import UNet2DConditionModel
    from train.train_sd import expand_conv_in
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet", local_files_only=True).eval()
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
        expand_conv_in(unet)
        after = unet(torch.cat([x, torch.randn(1, 4, 16, 16)], 1), t, encoder_hidden_states=text).sample
    assert unet.config.in_channels == 8
    torch.testing.assert_close(before, after)          # the new channels are zero-initialised


def test_train_resume_and_export(tiny_sd, humansd_data, tmp_path):
    from train.train_sd import load_exported_unet, main
    run_a = tmp_path / "a"
    assert main(_args(tiny_sd, humansd_data, run_a, "--max-steps", "3", "--save-every", "2",
                      "--preview-every", "3")) == 0
    assert len(list((run_a / "samples").glob("*.png"))) == 1          # pose | x̂0 | target grid (no tensorboard)
    log = [json.loads(x) for x in (run_a / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3] and all(np.isfinite(x["loss"]) for x in log)
    unet = load_exported_unet(run_a / "unet.safetensors")   # what the RePoseSD loader node does
    assert unet.config.in_channels == 8

    # "kill" after step 2: a new run that holds only the step-2 checkpoint, resumed to step 3
    run_b = tmp_path / "b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_00000002", run_b / "checkpoints" / "step_00000002")
    (run_b / "checkpoints" / "latest").write_text("step_00000002\n")
    assert main(_args(tiny_sd, humansd_data, run_b, "--max-steps", "3", "--save-every", "2", "--resume")) == 0
    from safetensors.torch import load_file
    a, b = load_file(str(run_a / "unet.safetensors")), load_file(str(run_b / "unet.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_guided_loss_changes_the_target(tiny_sd, humansd_data):
    """eq. 15 on latents: with a pose energy the ε target moves away from ε; with η = 0 it is ε exactly."""
    from train.data import HumanSDDataset, load_humansd_records
    from train.train_sd import Options, expand_conv_in, load_stable_diffusion, sd_loss

    from stand_ins import TinyEstimator

    unet, vae, text_encoder, tokenizer, scheduler = load_stable_diffusion(str(tiny_sd))
    expand_conv_in(unet)
    ds = HumanSDDataset(load_humansd_records(humansd_data), (32, 32), augment=False)
    batch = {k: [ds[0][k], ds[1][k]] for k in ("image", "pose_image", "prompt")}
    batch["image"], batch["pose_image"] = torch.stack(batch["image"]), torch.stack(batch["pose_image"])
    torch.manual_seed(0)
    est = TinyEstimator().eval()
    shifts = {}
    for eta in (0.0, 50.0):
        opts = Options(guided_loss=True, guidance_eta=eta, guidance_reduction="sum")
        gen = torch.Generator().manual_seed(1)
        loss, logs, _ = sd_loss(unet, vae, text_encoder, tokenizer, scheduler, batch, opts, est, gen, "cpu")
        assert torch.isfinite(loss)
        shifts[eta] = logs["guidance_shift"]
    assert shifts[0.0] == 0.0 and shifts[50.0] > 0.0


def test_bad_pretrained_path_is_actionable(tmp_path):
    from repose_core.errors import InputError
    from train.train_sd import load_stable_diffusion
    with pytest.raises(InputError, match="does not exist"):
        load_stable_diffusion(str(tmp_path / "nope"))
    (tmp_path / "sd.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="--pretrained-config"):
        load_stable_diffusion(str(tmp_path / "sd.safetensors"))
