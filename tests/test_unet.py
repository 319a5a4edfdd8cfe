"""PIDM-layout UNet: key layout of the released model, wiring, call semantics, input errors, training features."""
import json
import math

import pytest
import torch

from repose_core.errors import InputError
from repose_core.models.unet import PIDMNet, UNetConfig, pidm_small_config, timestep_embedding


def tiny_config(**overrides) -> UNetConfig:
    base = dict(image_size=16, in_channels=5, model_channels=8, out_channels=4, channel_mult=(1, 2),
                attention_resolutions=(16, 8), embed_channels=16, dropout=0.0)
    base.update(overrides)
    return UNetConfig(**base)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere, like the fixture's recipe (the constructor zero-inits output layers, which would
    hide wiring bugs): weights ~ N(0, 1/fan_in), GroupNorm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def inputs(cfg: UNetConfig, batch=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    src = torch.rand(batch, cfg.encoder_in_channels, size, size, generator=g) * 2 - 1
    t = torch.tensor([3, 800][:batch])
    return x, t, src


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize(PIDMNet(tiny_config())).eval()


# ---------------------------------------------------------------------------------------------------- layout


def test_default_config_is_pidm_deepfashion256_key_for_key(shared_fixtures):
    ref = json.loads((shared_fixtures / "pidm_keys.json").read_text())
    with torch.device("meta"):  # 180M parameters: shapes only
        model = PIDMNet(UNetConfig())
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert len(keys) == ref["num_keys"] == 852
    assert keys == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 180_355_718
    assert model.unused_parameter_names() == ref["unused_params_in_forward"]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == ref["num_unused_param_elements"]


def test_default_config_attention_wiring_and_encoder_features(shared_fixtures):
    ref = json.loads((shared_fixtures / "pidm_keys.json").read_text())
    with torch.device("meta"):
        model = PIDMNet(UNetConfig())
    expected = [(a["block"], a["encoder_feat_index"]) for a in ref["attention_cond_map_256"]]
    assert model.attention_feature_map() == expected
    assert model.encoder_feature_channels == [s[1] for s in ref["encoder_feat_shapes_256"]]
    assert model.encoder_feature_strides == [256 // s[2] for s in ref["encoder_feat_shapes_256"]]
    assert model.used_feature_indices == [10, 11, 13, 14, 16, 17]


def test_timestep_embedding_is_cos_first_on_raw_t():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))
    assert torch.equal(timestep_embedding(t.float(), 8), emb)


# -------------------------------------------------------------------------------------------- behaviour


def test_unused_parameters_are_exactly_those_without_gradient():
    torch.manual_seed(0)
    model = randomize(PIDMNet(tiny_config())).train()
    model.requires_grad_(True)
    x, t, src = inputs(model.config)
    model(x, t, src).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == model.unused_parameter_names()
    assert any(".cond_emb_layers." in n for n in no_grad) and any(n.startswith("encoder.time_embed") for n in no_grad)
    # and the constructor freezes them (DDP would otherwise wait for their gradients)
    fresh = PIDMNet(tiny_config())
    assert [n for n, p in fresh.named_parameters() if not p.requires_grad] == fresh.unused_parameter_names()


def test_denoise_uses_features_from_any_source(tiny):
    x, t, src = inputs(tiny.config)
    other = torch.flip(src, dims=[-1])
    with torch.no_grad():
        feats, other_feats = tiny.encode(src), tiny.encode(other)
        out = tiny.denoise(x, t, feats)
        assert torch.equal(out, tiny(x, t, src))
        out_other = tiny.denoise(x, t, other_feats)
        assert torch.equal(out_other, tiny(x, t, other))
        assert (out - out_other).abs().max() > 1e-3   # the appearance condition matters
        # only the consumed features are needed
        sparse = [f if i in tiny.used_feature_indices else None for i, f in enumerate(feats)]
        assert torch.equal(tiny.denoise(x, t, sparse), out)
        # features of another spatial size (e.g. produced by a different pipeline) are attended to just as well
        half = [None if f is None else torch.nn.functional.avg_pool2d(f, 2) for f in sparse]
        assert tiny.denoise(x, t, half).shape == out.shape
        # a batch-1 condition broadcasts over the batch
        one = [None if f is None else f[:1] for f in sparse]
        assert torch.equal(tiny.denoise(x, t, one)[0], out[0])
    assert out.shape == (2, tiny.config.out_channels, 16, 16)


def test_forward_prob_semantics_match_pidm(tiny):
    x, t, src = inputs(tiny.config)
    with torch.no_grad():
        cond = tiny.denoise(x, t, tiny.encode(src))
        null = tiny.denoise(x, t, tiny.encode(torch.zeros_like(src)))
        assert torch.equal(tiny(x, t, src, prob=1), cond)
        assert torch.equal(tiny(x, t, src, prob=0), null)
        assert not torch.allclose(tiny.encode_null(src)[-1], torch.zeros(1))  # null = encoder(zero image) != 0
        mixed = tiny(x, t, src, prob=0.5, generator=torch.Generator().manual_seed(3))
        for b in range(2):
            assert torch.allclose(mixed[b], cond[b], atol=1e-5) or torch.allclose(mixed[b], null[b], atol=1e-5)


def test_forward_with_cond_scale(tiny):
    x, t, src = inputs(tiny.config)
    with torch.no_grad():
        feats, null_feats = tiny.encode(src), tiny.encode_null(src)
        guided, cond, null = tiny.forward_with_cond_scale(x, t, feats, null_feats, 2.5)
        torch.testing.assert_close(guided, null + 2.5 * (cond - null))
        assert torch.equal(cond, tiny.denoise(x, t, feats)) and torch.equal(null, tiny.denoise(x, t, null_feats))
        same, cond1, none = tiny.forward_with_cond_scale(x, t, feats, null_feats, 1)
        assert torch.equal(same, cond) and none is None


def test_scalar_t_broadcasts(tiny):
    x, _, src = inputs(tiny.config)
    with torch.no_grad():
        assert torch.equal(tiny(x, torch.tensor(5), src), tiny(x, torch.tensor([5, 5]), src))


@pytest.mark.parametrize("case", ["x_channels", "x_size", "src_channels", "n_feats", "feat_channels", "feat_batch",
                                  "t_shape", "feat_missing"])
def test_bad_inputs_raise_input_error(tiny, case):
    x, t, src = inputs(tiny.config)
    feats = tiny.encode(src)
    used = tiny.used_feature_indices[0]
    with torch.no_grad(), pytest.raises(InputError) as err:
        if case == "x_channels":
            tiny.denoise(x[:, :3], t, feats)
        elif case == "x_size":
            tiny.denoise(x[..., :15], t, feats)
        elif case == "src_channels":
            tiny.encode(src[:, :2])
        elif case == "n_feats":
            tiny.denoise(x, t, feats[:-1])
        elif case == "feat_channels":
            feats[used] = feats[used][:, :1]
            tiny.denoise(x, t, feats)
        elif case == "feat_batch":
            feats[used] = torch.cat([feats[used]] * 3)
            tiny.denoise(x, t, feats)
        elif case == "t_shape":
            tiny.denoise(x, torch.tensor([1, 2, 3]), feats)
        elif case == "feat_missing":
            feats[used] = None
            tiny.denoise(x, t, feats)
    assert str(err.value)  # message is not empty


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = randomize(PIDMNet(tiny_config())).train()
    ckpt = PIDMNet(tiny_config(use_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, src = inputs(plain.config)
    outs = []
    for model in (plain, ckpt):
        out = model(x, t, src)
        out.square().mean().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert outs[0][1].keys() == outs[1][1].keys()
    for name in outs[0][1]:
        torch.testing.assert_close(outs[0][1][name], outs[1][1][name], msg=name)


def test_latent_space_variant_and_multi_head():
    cfg = tiny_config(in_channels=8 + 20, out_channels=16, encoder_in_channels=8, num_heads=2)
    model = randomize(PIDMNet(cfg)).eval()
    assert model.encoder.input_blocks[0][0].weight.shape[1] == 8
    x = torch.randn(1, 28, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([10]), torch.randn(1, 8, 8, 8))
    assert out.shape == (1, 16, 8, 8)


def test_plain_resampling_layers_when_resblock_updown_is_false():
    model = PIDMNet(tiny_config(resblock_updown=False))
    keys = model.state_dict().keys()
    assert "input_blocks.3.0.op.weight" in keys and "output_blocks.2.1.conv.weight" in keys
    x, t, src = inputs(model.config, batch=1)
    with torch.no_grad():
        assert model(x, t[:1], src).shape == (1, 4, 16, 16)


def test_reduced_precision_model_returns_input_dtype(tiny):
    x, t, src = inputs(tiny.config)
    low = PIDMNet(tiny.config).eval()
    low.load_state_dict(tiny.state_dict())
    low = low.to(torch.bfloat16)
    with torch.no_grad():
        ref, out = tiny(x, t, src), low(x, t, src)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_config_validation_and_round_trip():
    cfg = pidm_small_config()
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="unknown UNetConfig field"):
        UNetConfig.from_dict({**cfg.to_dict(), "enc_pool": "x"})
    with pytest.raises(InputError, match="image_size"):
        UNetConfig(image_size=100)   # not divisible by 2**5
    with pytest.raises(InputError, match="model_channels"):
        UNetConfig(model_channels=48)   # GroupNorm(32) cannot split 48 channels
    with pytest.raises(InputError, match="dropout"):
        UNetConfig(dropout=1.5)
    with pytest.raises(InputError, match="num_heads"):
        tiny_config(num_heads=3)
