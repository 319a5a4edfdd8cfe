"""train/train_deepfashion.py end to end on tiny data (CPU): layouts, overfit, 2-process DDP, exact resume, export,
bad files, guided loss."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from repose_core.errors import InputError
from repose_core.pose import (
    Pose, write_gfla_pairs, write_gfla_pose, write_patn_annotations, write_patn_pairs,
)
from train import train_deepfashion as T
from train.data import DataFileError

REPO = Path(__file__).resolve().parents[1]

FAST = ["--preset", "tiny", "--batch-size", "1", "--num-workers", "0", "--log-every", "1", "--no-tensorboard",
        "--rpa-iterations", "1"]



def _log(run):
    return [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines()]


def test_dry_run_writes_config(tmp_path, capsys):
    assert T.main(["--dry-run", "--out", str(tmp_path / "r"), "--variant", "full", "--lr", "3e-4"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["lr"] == 3e-4 and cfg["guided_loss"] is True and cfg["batch_size"] == 8   # paper defaults kept
    assert json.loads(capsys.readouterr().out)["variant"] == "full"


def test_paper_defaults():
    o = T.Options()
    assert (o.lr, o.batch_size, o.timesteps, o.ema_decay, o.cond_dropout, o.variant) == (1e-4, 8, 1000, 0.9999,
                                                                                          0.1, "b2")
    assert T.build_model(T.Options(preset="tiny"))[0].config.rpa.iterations == 3            # tiny preset's N
    assert T.get_config("deepfashion256", "b2").rpa.iterations == 5                         # paper N = 5


@pytest.fixture(scope="module")
def trained_run(synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("run_patn")
    assert T.main(["--data-root", str(synth), "--out", str(run), "--max-steps", "2", "--save-every", "2",
                   "--rpa-warp-weight", "0.5", "--sample-every", "2", "--sample-steps", "2", *FAST]) == 0
    return run


def test_train_patn_export_loads(trained_run):
    from repose_core.checkpoint import load_model
    from repose_core.models.repose import RePoseDM
    log = _log(trained_run)
    assert [x["step"] for x in log] == [1, 2] and all(np.isfinite(x["loss"]) and "rpa_warp" in x for x in log)
    model = load_model(trained_run / "ema.safetensors", expected_kind="repose_dm")   # what LoadRePoseModel does
    assert isinstance(model, RePoseDM) and model.variant == "b2"
    assert (trained_run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    grids = list((trained_run / "samples").glob("*.png"))        # no tensorboard: grids as PNG
    assert len(grids) == 1 and Image.open(grids[0]).size == (5 * 44, 1 * 64 * 2)   # 5 columns, 2 rows (bidirectional)


def test_generate_then_eval(trained_run, synth, tmp_path):
    """generate.py writes <src>_2_<tgt>.png for every test pair; eval.py reads them."""
    from train import eval as E
    from train import generate as G
    gen = tmp_path / "gen"
    assert G.main(["--model", str(trained_run / "ema.safetensors"), "--data-root", str(synth), "--steps", "2",
                   "--out", str(gen), "--device", "cpu"]) == 0
    files = sorted(p.name for p in gen.glob("*.png"))
    assert len(files) == 2 and all("_2_" in f for f in files)
    assert Image.open(gen / files[0]).size == (44, 64)
    assert E.main(["--generated", str(gen), "--data-root", str(synth), "--out", str(tmp_path / "eval")]) == 0
    assert -1 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["SSIM"] < 1   # untrained


def _gfla_dataset(root: Path):
    entries = [f"img/MEN/Tees/id_0000000{i}/0{k}_1_front.jpg" for i in range(2) for k in range(2)]
    rng = np.random.default_rng(0)
    for e in entries:
        (root / e).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((256, 176, 3)) * 255).astype(np.uint8)).save(root / e)
        kp = np.zeros((18, 3), np.float32)
        kp[:, 0], kp[:, 1], kp[:, 2] = rng.uniform(10, 166, 18), rng.uniform(10, 246, 18), 1
        txt = root / e.replace("img/", "pose/").replace(".jpg", ".txt")
        txt.parent.mkdir(parents=True, exist_ok=True)
        write_gfla_pose(txt, Pose(kp, 176, 256))
    write_gfla_pairs(root / "train_pairs.txt", [(entries[0], [entries[1]]), (entries[2], [entries[3]])])


def _market_dataset(root: Path):
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(1)
    poses = {}
    for name in ("0002_c1s1_000451_01.jpg", "0002_c2s1_000301_01.jpg"):
        Image.fromarray((rng.random((128, 64, 3)) * 255).astype(np.uint8)).save(root / "train" / name)
        kp = np.zeros((18, 3), np.float32)
        kp[:, 0], kp[:, 1], kp[:, 2] = rng.uniform(4, 60, 18), rng.uniform(4, 124, 18), 1
        poses[name] = Pose(kp, 64, 128)
    names = list(poses)
    write_patn_pairs(root / "market-pairs-train.csv", [(names[0], names[1]), (names[1], names[0])])
    write_patn_annotations(root / "market-annotation-train.csv", poses)


@pytest.mark.parametrize("layout,extra", [("gfla", ["--grad-accum", "2", "--activation-checkpointing"]),
                                          ("market", ["--bf16"])])
def test_train_other_layouts(layout, extra, tmp_path):
    """GFLA/PIDM txt and Market-1501 layouts; also exercises accumulation, checkpointing and bf16 autocast."""
    data = tmp_path / "data"
    (_gfla_dataset if layout == "gfla" else _market_dataset)(data)
    run = tmp_path / "run"
    assert T.main(["--data-root", str(data), "--layout", layout, "--out", str(run), "--max-steps", "1",
                   "--variant", "b1", "--no-bidirectional", *extra, *FAST]) == 0
    assert np.isfinite(_log(run)[0]["loss"])


def test_overfit_drives_the_loss_down(synth):
    """One pair, one fixed (t, ε): the network memorises it, the loss falls (b1 tiny, lr 2e-3)."""
    from train.data import PoseTransferDataset, load_records
    opts = T.Options(preset="tiny", variant="b1", cond_dropout=0.0, lr=2e-3)
    torch.manual_seed(0)
    model, _, diffusion = T.build_model(opts)
    model.train()
    ds = PoseTransferDataset(load_records(synth, "patn", "train")[:1], (64, 44))
    batch = {k: v.unsqueeze(0) if torch.is_tensor(v) else [v] for k, v in ds[0].items()}
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0)
    step = T.TrainStep(model)
    losses = []
    for _ in range(12):
        gen = torch.Generator().manual_seed(123)             # same t and ε every step
        loss, _, _ = T.training_loss(step, model, diffusion, batch, opts, gen, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_guided_loss_changes_the_target(synth):
    """--guided-loss: ε̃ = ε − √(1−ᾱ)·η·∇G moves the MSE target (η = 0 leaves it at ε)."""
    from train.data import PoseTransferDataset, load_records

    from stand_ins import TinyEstimator

    torch.manual_seed(0)
    est = TinyEstimator().eval()
    ds = PoseTransferDataset(load_records(synth, "patn", "train")[:2], (64, 44))
    batch = {k: torch.stack([ds[0][k], ds[1][k]]) for k in ("source", "target", "target_pose_map")}
    shifts = {}
    for eta in (0.0, 100.0):
        opts = T.Options(preset="tiny", variant="full", guided_loss=True, guidance_eta=eta, guidance_reduction="sum")
        torch.manual_seed(0)
        model, _, diffusion = T.build_model(opts)
        loss, logs, _ = T.training_loss(T.TrainStep(model), model, diffusion, batch, opts,
                                        torch.Generator().manual_seed(5), "cpu", est)
        assert torch.isfinite(loss)
        shifts[eta] = logs["guidance_shift"]
    assert shifts[0.0] == 0.0 and shifts[100.0] > 0.0


def test_guided_loss_needs_an_estimator(synth, tmp_path):
    with pytest.raises(InputError, match="--estimator"):
        T.main(["--data-root", str(synth), "--out", str(tmp_path / "r"), "--guided-loss", *FAST])


def test_resume_continues_exactly(synth, tmp_path):
    """Stop after step 2, --resume to step 3 == an uninterrupted 3-step run: model, EMA, optimizer and RNG."""
    common = ["--data-root", str(synth), "--save-every", "2", "--ema-decay", "0.5", "--variant", "b1", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert T.main([*common, "--out", str(full), "--max-steps", "3"]) == 0
    assert T.main([*common, "--out", str(part), "--max-steps", "2"]) == 0      # "killed" after its step-2 save
    assert T.main([*common, "--out", str(part), "--max-steps", "3", "--resume"]) == 0
    a = load_file(str(full / "checkpoints" / "step_00000003" / "state.safetensors"))
    b = load_file(str(part / "checkpoints" / "step_00000003" / "state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and "rng.torch" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ja = json.loads((full / "checkpoints" / "step_00000003" / "state.json").read_text())
    jb = json.loads((part / "checkpoints" / "step_00000003" / "state.json").read_text())
    assert ja["rng"] == jb["rng"] and ja["optimizer"] == jb["optimizer"] and jb["step"] == 3
    assert [x["loss"] for x in _log(full)][2:] == [x["loss"] for x in _log(part)][2:]


def test_resume_without_checkpoint_is_an_error(synth, tmp_path):
    with pytest.raises(InputError, match="no complete checkpoint"):
        T.main(["--data-root", str(synth), "--out", str(tmp_path / "r"), "--resume", "--max-steps", "1", *FAST])


def test_bad_files_skip_or_strict(synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    (data / "train_highres" / "synth_train_id00001_0.png").unlink()
    with pytest.raises(DataFileError, match="synth_train_id00001_0.png"):
        T.main(["--data-root", str(data), "--out", str(tmp_path / "strict"), "--max-steps", "1", "--strict-data",
                *FAST])
    run = tmp_path / "skip"
    assert T.main(["--data-root", str(data), "--out", str(run), "--max-steps", "1", "--variant", "b1", *FAST]) == 0
    problems = [json.loads(x) for x in (run / "data_problems.jsonl").read_text().splitlines()]
    assert problems and all("synth_train_id00001_0.png" in p["file"] and "line" in p["pair"] for p in problems)


def test_ddp_two_processes_agree(synth, tmp_path):
    """torchrun --nproc-per-node 2 with gloo on CPU: both ranks end with identical weights."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(REPO / "train" / "train_deepfashion.py"),
           "--data-root", str(synth), "--out", str(run), "--max-steps", "2", "--save-every", "2", "--variant", "b2",
           "--write-rank-weights", "--device", "cpu", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    w0, w1 = load_file(str(run / "final_rank0.safetensors")), load_file(str(run / "final_rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    state = load_file(str(run / "checkpoints" / "step_00000002" / "state.safetensors"))
    assert {"rank0.torch", "rank1.torch", "rank0.noise", "rank1.noise"} <= set(state)
    assert not torch.equal(state["rank0.noise"], state["rank1.noise"])      # each rank draws its own t and ε


def test_damaged_run_resumes_from_its_newest_intact_checkpoint(synth, tmp_path, caplog):
    """Issue 11: the latest checkpoint's weights truncated -> --resume continues from the one before, says so, and
    redoes the lost steps; a fresh start in the folder is refused and leaves the run's files untouched."""
    common = ["--data-root", str(synth), "--save-every", "2", "--variant", "b1", "--out", str(tmp_path / "run"), *FAST]
    assert T.main([*common, "--max-steps", "4"]) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    weights = ckpts / "step_00000004" / "state.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    ema = (tmp_path / "run" / "ema.safetensors").read_bytes()
    with pytest.raises(InputError, match="already holds a training run"):
        T.main([*common, "--max-steps", "2"])
    assert (tmp_path / "run" / "ema.safetensors").read_bytes() == ema and weights.stat().st_size == 1000
    with caplog.at_level(logging.WARNING, logger="repose"):
        assert T.main([*common, "--max-steps", "4", "--resume"]) == 0
    assert "skipping checkpoint step_00000004: state.safetensors is damaged" in caplog.text
    assert load_file(str(weights))   # rewritten intact by the resumed run
    assert [x["step"] for x in _log(tmp_path / "run")] == [1, 2, 3, 4]   # no step logged twice


def test_max_minutes_stops_saves_and_resume_goes_on(synth, tmp_path):
    """--max-minutes: training stops at the budget whatever --max-steps says, with a checkpoint and an EMA export at
    the step it reached; --resume continues from there."""
    from repose_core.checkpoint import read_metadata

    run = tmp_path / "r"
    common = ["--data-root", str(synth), "--out", str(run), "--save-every", "1000", "--preload", *FAST]
    assert T.main([*common, "--max-steps", "1000", "--max-minutes", "1e-9"]) == 0   # out of time before step 1
    assert int(read_metadata(run / "ema.safetensors")["step"]) == 0
    assert T.main([*common, "--max-steps", "2", "--resume"]) == 0
    assert int(read_metadata(run / "ema.safetensors")["step"]) == 2


def test_init_parts_rpa_takes_only_the_alignment(trained_run, synth, tmp_path):
    """--init-parts rpa: a new denoiser (here of another parameterisation) starts from a trained RPA only."""
    src = T.as_repose_model(T.load_model(trained_run / "ema.safetensors"))
    opts = T.Options(preset="tiny", variant="b2", rpa_iterations=1, init=str(trained_run / "ema.safetensors"),
                     init_parts="rpa", aligned_source_input=True, prediction="aligned_x0")
    model = T.build_model(opts)[0]
    assert all(torch.equal(a, b) for a, b in zip(model.rpa.state_dict().values(), src.rpa.state_dict().values()))
    assert model.config.prediction == "aligned_x0" and model.net.config.in_channels == 12 + 20 + 12
    b1 = tmp_path / "b1"
    assert T.main(["--data-root", str(synth), "--out", str(b1), "--variant", "b1", "--max-steps", "1", *FAST]) == 0
    with pytest.raises(InputError, match="no RPA"):
        T.build_model(T.Options(preset="tiny", variant="b1", init=str(b1 / "ema.safetensors"), init_parts="rpa"))
