"""Model files: safetensors round trip, strict loading, kinds, corrupt files, restricted unpickler, PIDM conversion."""
import enum
import json
import os
import subprocess
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from repose_core.checkpoint import (PickleStub, load_model, load_state_dict_strict, read_metadata, register_model,
                                    registered_builders, restricted_load, save_model, tensor_state_dict)
from repose_core.errors import CheckpointError, InputError
from repose_core.models.pidm import convert_pidm_checkpoint
from repose_core.models.unet import PIDMNet, UNetConfig, pidm_small_config

TINY = dict(image_size=16, in_channels=5, model_channels=8, out_channels=4, channel_mult=(1, 2),
            attention_resolutions=(8,), embed_channels=16, dropout=0.0)


def tiny_model(seed=0, **overrides) -> PIDMNet:
    torch.manual_seed(seed)
    model = PIDMNet(UNetConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # no zero-initialised layers, so outputs depend on every weight
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def run(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, src = torch.randn(2, 5, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([4, 600]), src)


# ------------------------------------------------------------------------------------------ safetensors files


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.safetensors"
    save_model(path, model, "pidm", extra_metadata={"note": "hello", "steps": 12})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temp file left behind

    meta = read_metadata(path)
    assert meta["format"] == "repose/1" and meta["kind"] == "pidm" and meta["class"] == "pidm"
    assert json.loads(meta["config"]) == json.loads(json.dumps(model.config.to_dict()))
    assert meta["note"] == "hello" and meta["steps"] == "12"

    loaded = load_model(path, expected_kind="pidm")
    assert isinstance(loaded, PIDMNet) and loaded.config == model.config and not loaded.training
    assert torch.equal(run(loaded), run(model))
    half = load_model(path, dtype=torch.bfloat16)
    assert half.out[2].weight.dtype == torch.bfloat16


def test_save_overwrites_atomically_and_refuses_unloadable_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, tiny_model(seed=0), "pidm")
    save_model(path, tiny_model(seed=5), "pidm")
    assert torch.equal(run(load_model(path)), run(tiny_model(seed=5)))
    with pytest.raises(InputError, match="reserved"):
        save_model(tmp_path / "x.safetensors", tiny_model(), "pidm", extra_metadata={"kind": "other"})
    with pytest.raises(InputError, match="no model builder"):
        save_model(tmp_path / "y.safetensors", tiny_model(), "no_such_kind")
    with pytest.raises(InputError, match="config"):
        save_model(tmp_path / "z.safetensors", torch.nn.Linear(2, 2), "pidm")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_wrong_kind_names_both_kinds_and_what_to_do(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, tiny_model(), "pidm")
    with pytest.raises(CheckpointError) as err:
        load_model(path, expected_kind="pose_estimator")
    msg = str(err.value)
    assert "'pidm'" in msg and "'pose_estimator'" in msg and "LoadRePoseModel" in msg


def test_register_model_as_decorator_and_call(tmp_path):
    @register_model("test_kind_a")
    def build_a(config):
        return PIDMNet(UNetConfig.from_dict(config))

    register_model("test_kind_b", lambda config: PIDMNet(UNetConfig.from_dict(config)), name="builder_b")
    assert registered_builders()["test_kind_a"] == "test_kind_a" and registered_builders()["builder_b"] == "test_kind_b"

    model = tiny_model()
    model.checkpoint_builder = "builder_b"
    save_model(tmp_path / "b.safetensors", model, "test_kind_b")
    assert read_metadata(tmp_path / "b.safetensors")["class"] == "builder_b"
    assert torch.equal(run(load_model(tmp_path / "b.safetensors", expected_kind="test_kind_b")), run(model))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "foreign"])
def test_corrupt_or_foreign_safetensors_raise_checkpoint_error(tmp_path, damage):
    good = tmp_path / "good.safetensors"
    save_model(good, tiny_model(), "pidm")
    bad = tmp_path / "bad.safetensors"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "foreign":  # a valid safetensors file that save_model did not write
        save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert "bad.safetensors" in str(err.value)
    with pytest.raises(CheckpointError):
        read_metadata(bad)


def test_strict_load_lists_missing_unexpected_and_misshaped_keys():
    model = tiny_model()
    sd = dict(model.state_dict())
    del sd["out.2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["out.2.weight"] = torch.zeros(4, 8, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, sd, source="weights.safetensors")
    msg = str(err.value)
    assert "weights.safetensors" in msg
    assert "missing keys (1): out.2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "out.2.weight: model (4, 8, 3, 3), file (4, 8, 1, 1)" in msg
    # long lists are capped with a count
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): .* \.\.\. and \d+ more"):
        load_state_dict_strict(model, {}, source="empty")
    # a matching state dict loads (and is cast to the model dtype)
    other = tiny_model(seed=3)
    load_state_dict_strict(other, {k: v.half() for k, v in model.state_dict().items()})
    assert other.out[2].weight.dtype == torch.float32


# ------------------------------------------------------------------------------------- restricted unpickling


class _Evil:
    """Pickles to a call of `fn(*args)` at load time."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    import builtins
    import subprocess as sp
    return {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "builtins.exec": _Evil(builtins.exec, f"open({str(marker)!r}, 'w').write('x')"),
        "subprocess.call": _Evil(sp.call, ["touch", str(marker)]),
        "torch.save": _Evil(torch.save, {}, str(marker)),
    }


@pytest.mark.parametrize("mode", ["refuse", "stub"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call", "torch.save"])
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, mode, payload, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "conf": _payloads(marker)[payload]}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="refused to unpickle global") as err:
        restricted_load(path, allow_unknown=mode)
    assert "evil.pt" in str(err.value) and payload.split(".")[1] in str(err.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        restricted_load(path, allow_unknown="stub")


def test_plain_tensor_checkpoints_load_in_refuse_mode(tmp_path):
    obj = {"state_dict": OrderedDict(w=torch.randn(3, 2), b=torch.randn(3).half()),
           "param": torch.nn.Parameter(torch.ones(2)), "step": 7, "betas": (0.9, 0.99), "names": ["a", "b"],
           "dtype": torch.bfloat16, "size": torch.Size([2, 3]), "raw": b"\x00\x01"}
    for legacy in (False, True):
        path = tmp_path / f"plain{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        out = restricted_load(path)
        assert torch.equal(out["state_dict"]["w"], obj["state_dict"]["w"])
        assert out["state_dict"]["b"].dtype == torch.float16
        assert out["step"] == 7 and out["betas"] == (0.9, 0.99) and out["dtype"] is torch.bfloat16
        assert out["size"] == torch.Size([2, 3]) and out["raw"] == b"\x00\x01"


def test_truncated_pickle_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt"):
        restricted_load(path)
    with pytest.raises(CheckpointError, match="not found"):
        restricted_load(tmp_path / "nope.pt")
    with pytest.raises(InputError):
        restricted_load(path, allow_unknown="yes")


@pytest.fixture
def fake_tensorfn(tmp_path):
    """A config class (like PIDM's pickled tensorfn/pydantic config) whose code leaves a marker if it ever runs.
    Its module stays importable while loading, so a loader that imported it would be caught."""
    marker = tmp_path / "config_code_ran"
    module = types.ModuleType("fake_tensorfn_config")

    class DiffusionConfig:
        def __init__(self, **fields):
            self.__dict__.update(fields)

        def __setstate__(self, state):
            marker.write_text("__setstate__")

        def __getstate__(self):
            return dict(self.__dict__)

    class Schedule(enum.Enum):
        LINEAR = "linear"

    for cls in (DiffusionConfig, Schedule):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    sys.modules[module.__name__] = module
    yield module, marker
    del sys.modules[module.__name__]


def _pidm_like_last_pt(path, model, module, legacy=False):
    # numpy values are not admitted as real objects, but stub mode must get past them (as inert stubs)
    conf = module.DiffusionConfig(beta_schedule=module.Schedule.LINEAR, n_timestep=1000, lr=2e-5,
                                  nested={"batch": 8, "sizes": [256, 256]},
                                  np_values=[np.float64(0.5), np.arange(3)], fields_set={"lr", "n_timestep"})
    ema = model.state_dict()
    raw = {k: v + 1 for k, v in ema.items()}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    torch.save({"model": raw, "ema": ema, "scheduler": {"step": 5}, "optimizer": opt, "conf": conf}, path,
               _use_new_zipfile_serialization=not legacy)
    return ema, raw


@pytest.mark.parametrize("legacy", [False, True])
def test_stub_mode_extracts_tensors_from_a_pidm_like_checkpoint(tmp_path, fake_tensorfn, legacy):
    module, marker = fake_tensorfn
    path = tmp_path / "last.pt"
    ema, _ = _pidm_like_last_pt(path, tiny_model(), module, legacy)

    with pytest.raises(CheckpointError, match="fake_tensorfn_config.DiffusionConfig"):
        restricted_load(path)  # refuse mode names the class and suggests stub mode
    ckpt = restricted_load(path, allow_unknown="stub")
    assert not marker.exists()

    conf = ckpt["conf"]
    assert isinstance(conf, PickleStub) and (conf.module, conf.qualname) == ("fake_tensorfn_config", "DiffusionConfig")
    assert not isinstance(conf, module.DiffusionConfig)
    assert conf.state["n_timestep"] == 1000 and conf.state["nested"]["sizes"] == [256, 256]
    assert conf.state["fields_set"] == {"lr", "n_timestep"}
    assert all(isinstance(v, PickleStub) for v in conf.state["np_values"])
    schedule = conf.state["beta_schedule"]
    assert isinstance(schedule, PickleStub) and schedule.qualname == "Schedule" and schedule.args == ("linear",)

    sd = tensor_state_dict(ckpt, "ema", source=str(path))
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in ema)
    with pytest.raises(CheckpointError, match="non-tensor"):
        tensor_state_dict({"ema": {"w": torch.ones(1), "conf": conf}}, "ema")
    with pytest.raises(CheckpointError, match="no entry 'weights'"):
        tensor_state_dict(ckpt, "weights")


# ----------------------------------------------------------------------------------------------- PIDM conversion


@pytest.fixture
def small_pidm_last_pt(tmp_path, fake_tensorfn):
    module, marker = fake_tensorfn
    torch.manual_seed(0)
    model = PIDMNet(pidm_small_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    # PIDM trains with DDP: accept (and strip) a "module." prefix
    path = tmp_path / "last.pt"
    torch.save({"ema": {f"module.{k}": v for k, v in model.state_dict().items()}, "model": {}, "scheduler": {},
                "optimizer": {}, "conf": module.DiffusionConfig(n_timestep=1000)}, path)
    return path, model, marker


def test_convert_pidm_cli_end_to_end(tmp_path, small_pidm_last_pt, repo_root):
    src, model, marker = small_pidm_last_pt
    dst = tmp_path / "out" / "pidm_small.safetensors"
    dst.parent.mkdir()
    # run from another directory: the script must find repose_core on its own
    proc = subprocess.run([sys.executable, str(repo_root / "train" / "convert_pidm.py"), str(src), str(dst),
                           "--config", "small"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "572 tensors" in proc.stdout
    assert not marker.exists()

    meta = read_metadata(dst)
    assert meta["kind"] == "pidm" and meta["source"] == "last.pt" and meta["source_entry"] == "ema"
    loaded = load_model(dst, expected_kind="pidm")
    assert loaded.config == pidm_small_config()
    g = torch.Generator().manual_seed(0)
    x, src_img = torch.randn(1, 23, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([500]), src_img), model(x, torch.tensor([500]), src_img))


def test_convert_pidm_reports_mismatches(tmp_path, small_pidm_last_pt):
    src, _, _ = small_pidm_last_pt
    with pytest.raises(CheckpointError, match="mis-shaped keys") as err:
        convert_pidm_checkpoint(src, tmp_path / "x.safetensors", preset="deepfashion256")
    assert "last.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="no entry 'weights'"):
        convert_pidm_checkpoint(src, tmp_path / "x.safetensors", preset="small", entry="weights")
    assert not (tmp_path / "x.safetensors").exists()

    from importlib import util
    spec = util.spec_from_file_location("convert_pidm", os.path.join(os.path.dirname(__file__), "..", "train",
                                                                     "convert_pidm.py"))
    cli = util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(src), str(tmp_path / "x.safetensors"), "--config", "small", "--entry", "nope"]) == 1
