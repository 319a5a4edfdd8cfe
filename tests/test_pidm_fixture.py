"""PIDMNet against the reference PIDM fixture (outputs of ankanbhunia/PIDM's own code on fp16-rounded weights).

The fixture is kept in the repository (tests/data/fixtures, a copy of ../shared/fixtures/pidm_small.*); the
`shared_fixtures` fixture fails (never skips) with a clear message when it is absent.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from repose_core.models.pidm import config_from_pidm_conf, load_pidm_state_dict
from repose_core.models.unet import PIDMNet, pidm_small_config, timestep_embedding

ATOL = 1e-4  # fixture README: thread-count noise is <= 6e-6 on outputs of abs-max ~3.7


@pytest.fixture(scope="module")
def fixture(shared_fixtures):
    path = shared_fixtures / "pidm_small.safetensors"
    if not path.is_file():
        pytest.fail(f"PIDM reference fixture missing: {path} (see {shared_fixtures / 'README.md'}, section B)",
                    pytrace=False)
    tensors = load_file(str(path))
    meta = json.loads((shared_fixtures / "pidm_small.json").read_text())
    state = {k[len("state_dict."):]: v.float() for k, v in tensors.items() if k.startswith("state_dict.")}
    return tensors, meta, state


@pytest.fixture(scope="module")
def model(fixture):
    _, _, state = fixture
    return load_pidm_state_dict(state, pidm_small_config(), source="pidm_small.safetensors")


@pytest.fixture(scope="module")
def results(fixture, model):
    tensors, _, _ = fixture
    x = torch.cat([tensors["input.x_t"], tensors["input.pose"]], dim=1)   # noisy image first, then 20 pose channels
    t, src = tensors["input.t"], tensors["input.src"]
    with torch.no_grad():
        feats, null_feats = model.encode(src), model.encode(torch.zeros_like(src))
        guided, cond, uncond = model.forward_with_cond_scale(x, t, feats, null_feats, cond_scale=2)
        t_sin = timestep_embedding(t, model.config.model_channels)
        return dict(x=x, t=t, src=src, feats=feats, guided=guided, cond=cond, uncond=uncond, t_sin=t_sin,
                    t_emb=model.time_embed(t_sin))


def test_small_config_matches_the_fixture_config(fixture):
    _, meta, state = fixture
    assert config_from_pidm_conf(meta["config"]) == pidm_small_config()
    model = PIDMNet(pidm_small_config())
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == meta["state_dict_keys_in_order"]
    assert sum(v.numel() for v in state.values()) == meta["weights"]["num_params"] == 2_940_966
    assert model.unused_parameter_names() == meta["unused_params_in_forward"]
    assert model.attention_feature_map() == [(a["block"], a["encoder_feat_index"]) for a in meta["attention_cond_map"]]


def test_time_embeddings(fixture, results):
    tensors = fixture[0]
    torch.testing.assert_close(results["t_sin"], tensors["t_emb_sinusoidal"], atol=ATOL, rtol=0)
    torch.testing.assert_close(results["t_emb"], tensors["time_emb"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("k", range(6, 12))
def test_encoder_features(fixture, results, k):
    torch.testing.assert_close(results["feats"][k], fixture[0][f"encoder_feat.{k}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["cond", "uncond", "guided"])
def test_outputs(fixture, results, name):
    ref = fixture[0][f"output.{name}"]
    assert results[name].shape == ref.shape == (2, 6, 64, 64)
    torch.testing.assert_close(results[name], ref, atol=ATOL, rtol=0)


def test_pidm_call_semantics(fixture, model, results):
    """model(x, t, x_cond, prob) as PIDM calls it: prob=1 conditional, prob=0 encoder on a zero image."""
    tensors = fixture[0]
    with torch.no_grad():
        torch.testing.assert_close(model(results["x"], results["t"], results["src"], prob=1), tensors["output.cond"],
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(model(results["x"], results["t"], results["src"], prob=0),
                                   tensors["output.uncond"], atol=ATOL, rtol=0)
        # float timesteps (what PIDM's DDIM passes) give the same result
        torch.testing.assert_close(model.denoise(results["x"], results["t"].float(), results["feats"]),
                                   tensors["output.cond"], atol=ATOL, rtol=0)
