"""train/common.py: CLI from a dataclass, resumable batch order, pickle-free atomic training state, logging fallback."""
from __future__ import annotations

import json
import logging
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch


from repose_core.errors import CheckpointError, InputError
from train import common as C


@dataclass
class _Opts:
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    size: tuple = field(default=(256, 176), metadata={"help": "H W"})
    strict: bool = field(default=False, metadata={"help": "strict"})
    mode: str = field(default="a", metadata={"help": "mode", "choices": ("a", "b")})


def test_options_from_dataclass():
    o = C.parse_options(_Opts, ["--lr", "0.5", "--size", "64", "44", "--strict", "--mode", "b"])
    assert o == _Opts(lr=0.5, size=(64, 44), strict=True, mode="b")
    assert C.parse_options(_Opts, []) == _Opts()
    with pytest.raises(SystemExit):
        C.parse_options(_Opts, ["--mode", "c"])


def test_epoch_batch_sampler_shards_and_resumes():
    s0 = C.EpochBatchSampler(10, 2, rank=0, world=2, seed=3)
    s1 = C.EpochBatchSampler(10, 2, rank=1, world=2, seed=3)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == 2                       # 10 // (2 x 2) batches per rank, the rest dropped
    flat0, flat1 = sum(b0, []), sum(b1, [])
    assert not set(flat0) & set(flat1)                   # ranks see disjoint pairs
    s0.set_epoch(0, skip=1)
    assert list(s0) == b0[1:]                            # mid-epoch resume
    s0.set_epoch(1)
    assert list(s0) != b0                                # a new permutation each epoch
    with pytest.raises(ValueError, match="smaller than one global batch"):
        C.EpochBatchSampler(3, 2, world=2)


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_training_state_round_trip_without_pickle(tmp_path):
    model, opt = _model_and_opt()
    gen = torch.Generator().manual_seed(7)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    folder = C.save_training_state(tmp_path, 5, modules={"model": model.state_dict()}, optimizer=opt,
                                   meta={"epoch": 1}, noise_generator=gen)
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]   # no pickle anywhere
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.rand((), generator=gen)))

    groups, opt_state, meta = C.load_training_state(C.latest_checkpoint(tmp_path))
    assert meta["step"] == 5 and meta["epoch"] == 1
    model2, opt2 = _model_and_opt()
    model2.load_state_dict(groups["model"])
    opt2.load_state_dict(opt_state)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]
    gen2 = torch.Generator()
    C.restore_rng(groups["rng"], meta["rng"], gen2)
    assert (random.random(), float(np.random.rand()), float(torch.rand(())),
            float(torch.rand((), generator=gen2))) == expected


def test_checkpoint_pointer_is_atomic(tmp_path, monkeypatch):
    model, opt = _model_and_opt()
    C.save_training_state(tmp_path, 1, modules={"model": model.state_dict()}, optimizer=opt, meta={})

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(C, "save_file", crash)
    with pytest.raises(OSError):
        C.save_training_state(tmp_path, 2, modules={"model": model.state_dict()}, optimizer=opt, meta={})
    assert C.latest_checkpoint(tmp_path).name == "step_00000001"             # still the complete one
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []   # no debris


def test_keep_prunes_old_checkpoints(tmp_path):
    model, opt = _model_and_opt()
    for step in (1, 2, 3):
        C.save_training_state(tmp_path, step, modules={"model": model.state_dict()}, optimizer=opt, meta={}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]


def test_logger_falls_back_to_jsonl(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)       # tensorboard "not installed"
    with caplog.at_level(logging.WARNING, logger="repose"):
        logger = C.RunLogger(tmp_path)
    assert "tensorboard is not installed" in caplog.text
    logger.scalars(3, {"loss": 0.5})
    logger.image(3, "samples/a|b", torch.rand(3, 8, 12))
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 3, "loss": 0.5}
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["samples_a-b_00000003.png"]


def test_ema_update():
    model = torch.nn.Linear(2, 2)
    ema = C.EMA(model, decay=0.5, warmup_steps=1)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)                    # warm-up: plain copy
    assert torch.equal(ema.model.weight, model.weight)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, step=1)
    torch.testing.assert_close(ema.model.weight, 0.5 * before + 0.5 * model.weight)


# ----------------------------------------------------------------------------------------------------------------
# Recovery of damaged run folders (issue 11): newest intact checkpoint, nothing deleted or overwritten unasked


def _run_with_steps(run, steps, keep=0):
    model, opt = _model_and_opt()
    for step in steps:
        C.save_training_state(run, step, modules={"model": model.state_dict()}, optimizer=opt, meta={"epoch": 0},
                              keep=keep)
    return run / "checkpoints"


def _damage(folder, how):
    tensors, js = folder / C.STATE_TENSORS, folder / C.STATE_JSON
    if how == "weights_truncated":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif how == "weights_empty":
        tensors.write_bytes(b"")
    elif how == "weights_missing":
        tensors.unlink()
    elif how == "json_truncated":
        js.write_text(js.read_text()[:40])
    elif how == "json_empty":
        js.write_text("")
    elif how == "folder_missing":   # `latest` dangling
        shutil.rmtree(folder)


DAMAGE = ["weights_truncated", "weights_empty", "weights_missing", "json_truncated", "json_empty", "folder_missing"]


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, how, caplog):
    ckpts = _run_with_steps(tmp_path, (10, 30, 40))
    _damage(ckpts / "step_00000040", how)
    with caplog.at_level(logging.WARNING, logger="repose"):
        folder, (groups, opt_state, meta) = C.resume_training_state(tmp_path)
    assert folder.name == "step_00000030" and meta["step"] == 30 and "model" in groups
    assert "skipping checkpoint step_00000040" in caplog.text and "step 30" in caplog.text
    assert C.latest_checkpoint(tmp_path).name == "step_00000030"


def test_resume_names_every_damaged_checkpoint_when_none_is_intact(tmp_path):
    ckpts = _run_with_steps(tmp_path, (10, 20))
    _damage(ckpts / "step_00000020", "weights_empty")
    _damage(ckpts / "step_00000010", "json_truncated")
    with pytest.raises(InputError, match=r"(?s)step_00000020: state.safetensors is empty.*step_00000010: state.json "
                                         r"is damaged.*--overwrite"):
        C.resume_training_state(tmp_path)
    with pytest.raises(InputError, match="no checkpoint folder"):
        C.resume_training_state(tmp_path / "nothing")


def test_load_training_state_names_the_damaged_file(tmp_path):
    ckpts = _run_with_steps(tmp_path, (10,))
    _damage(ckpts / "step_00000010", "weights_truncated")
    with pytest.raises(CheckpointError, match="step_00000010"):
        C.load_training_state(ckpts / "step_00000010")


def test_a_fresh_start_never_clobbers_a_run(tmp_path):
    _run_with_steps(tmp_path, (30, 40))
    (tmp_path / "ema.safetensors").write_bytes(b"step 40 export")
    with pytest.raises(InputError, match=r"already holds a training run \(checkpoints up to step 40, ema.safetensors\)"
                                         r".*--resume.*--overwrite"):
        C.prepare_run_dir(tmp_path, resume=False)
    assert (tmp_path / "ema.safetensors").read_bytes() == b"step 40 export"
    C.prepare_run_dir(tmp_path, resume=True)          # continuing is fine
    with pytest.raises(InputError, match="contradict"):
        C.prepare_run_dir(tmp_path, resume=True, overwrite=True)
    C.prepare_run_dir(tmp_path, resume=False, overwrite=True)   # explicit: the old run goes
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "ema.safetensors").exists()
    C.prepare_run_dir(tmp_path / "new", resume=False)          # an empty or new folder is fine


def test_rotation_never_deletes_a_newer_or_the_new_checkpoint(tmp_path):
    ckpts = _run_with_steps(tmp_path, (30, 40))
    _run_with_steps(tmp_path, (10,), keep=2)          # e.g. a run resumed further back
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000010", "step_00000030", "step_00000040"]
    assert (ckpts / C.LATEST).read_text().strip() == "step_00000010"
    _run_with_steps(tmp_path, (20, 25), keep=2)       # older ones beyond `keep` go, newer ones stay
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000020", "step_00000025", "step_00000030",
                                                           "step_00000040"]


def test_temp_files_of_a_killed_save_are_removed_on_the_next_start(tmp_path):
    ckpts = _run_with_steps(tmp_path, (10,))
    (ckpts / ".latest.abc123").write_text("step_00000020\n")
    (ckpts / ".step_00000020.xyz").mkdir()
    (ckpts / ".step_00000020.xyz" / C.STATE_TENSORS).write_bytes(b"partial")
    (tmp_path / ".ema.safetensors.q1w2.tmp").write_bytes(b"partial")
    C.prepare_run_dir(tmp_path, resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000010"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_moves_log_lines_of_redone_steps_aside(tmp_path):
    _run_with_steps(tmp_path, (40,))
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 46)] + ['{"step": 46, "lo']   # killed mid-line
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    C.resume_training_state(tmp_path)
    kept = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert kept == list(range(1, 41))
    moved = (tmp_path / "log.discarded.jsonl").read_text().splitlines()
    assert len(moved) == 6 and json.loads(moved[0])["step"] == 41


@pytest.fixture(scope="module")
def installed_project(tmp_path_factory):
    """The project as `pip install .` lays it out (pyproject.toml's packages and package data), built from a copy of
    the files it names, so that nothing else of the checkout can be imported by accident."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    src, target = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("site")
    shutil.copy(root / "pyproject.toml", src)
    for package in ("repose_core", "train"):
        shutil.copytree(root / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


@pytest.mark.parametrize("script", ["train/train_deepfashion.py", "train/train_sd.py"])
def test_both_trainers_run_from_the_repository_root_on_the_one_loop(script, installed_project):
    """`python train/<script>.py --help` works as the README says once the project is installed (`pip install -e .`;
    the scripts themselves touch no import path), and both scripts read the loop's options (train/loop.py), so
    --max-minutes, --resume and the save cadence mean the same thing in each."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(installed_project))  # the installed copy only, not this checkout's root
    r = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    for flag in ("--max-minutes", "--resume", "--overwrite", "--save-every", "--grad-accum", "--warmup-steps"):
        assert flag in r.stdout, flag
    assert "sys.path" not in (root / script).read_text(encoding="utf-8")
    # without an install: `python -m train.<script>` from the repository root (README)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    module = script.removesuffix(".py").replace("/", ".")
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and "--max-minutes" in r.stdout, r.stderr
