"""train/common.py: CLI from a dataclass, resumable batch order, pickle-free atomic training state, logging fallback."""
from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import common as C  # noqa: E402


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
