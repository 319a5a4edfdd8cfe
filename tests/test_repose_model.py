"""RePoseDM variants (b1 / b2 / full), configs, PIDM compatibility and checkpoints."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from repose_core.checkpoint import load_model, load_state_dict_strict, save_model
from repose_core.errors import CheckpointError, InputError
from repose_core.models.configs import CONFIG_NAMES, RePoseConfig, get_config
from repose_core.models.pidm import load_pidm_state_dict
from repose_core.models.repose import AppearanceCond, RePoseDM, as_repose_model
from repose_core.models.unet import PIDMNet, pidm_deepfashion256_config, pidm_small_config

VARIANTS = [("b1", "image"), ("b2", "image"), ("b2", "feature"), ("full", "image")]


def tiny_model(variant="b2", warp_space="image", seed=0, **overrides):
    torch.manual_seed(seed)
    rpa = {} if variant == "b1" else {"rpa": dict(warp_space=warp_space)}
    return RePoseDM(get_config("tiny", variant, **rpa, **overrides)).eval()


def tiny_inputs(model, batch=2, seed=1):
    """Diffusion-space source, pose map and x_t for the tiny config (64×44 px -> 12×32×22)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, 64, 44, generator=g) * 2 - 1
    pose = model.encode_pose(torch.rand(batch, 20, 64, 44, generator=g))
    source = model.encode_source(image)
    x_t = torch.randn(source.shape, generator=g)
    return source, pose, x_t


def perturb(model, seed=3, std=0.05):
    """Random weights for the zero-initialised layers, so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.mark.parametrize("variant,warp_space", VARIANTS)
def test_shapes_and_determinism(variant, warp_space):
    model = perturb(tiny_model(variant, warp_space))
    source, pose, x_t = tiny_inputs(model)
    assert source.shape == (2, 12, 32, 22) and pose.shape == (2, 20, 32, 22)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        cond = model.prepare(source, pose, decode_previews=True)
        out = model(x_t, t, pose, cond)
        again = model(x_t, t, pose, model.prepare(source, pose))
    assert out.shape == (2, 24, 32, 22)  # [ε, v], cropped back from the padded 32×24
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)
    if variant == "b1":
        assert cond.flow is None and cond.warped == [] and cond.previews == []
    else:
        n = model.config.rpa.iterations
        assert cond.flow.shape == (2, 2, 32, 22) and len(cond.warped) == n
        assert all(w.shape == source.shape for w in cond.warped)
        assert len(cond.previews) == n and cond.previews[0].shape == (2, 3, 64, 44)  # decoded Fig. 9 previews


def test_rpa_runs_once_in_prepare_and_never_in_forward():
    model = perturb(tiny_model("b2"))
    calls = []
    model.rpa.register_forward_hook(lambda *a: calls.append(1))
    source, pose, x_t = tiny_inputs(model)
    progress = []
    with torch.no_grad():
        cond = model.prepare(source, pose, progress=lambda i, n: progress.append((i, n)))
        assert len(calls) == 1 and progress == [(1, 3), (2, 3), (3, 3)]
        for step in range(3):
            model(x_t, torch.tensor([step, step]), pose, cond)
        model(x_t, torch.tensor([0, 0]), pose, model.null_cond(cond))
    assert len(calls) == 1


def test_null_cond_is_the_encoder_of_a_zero_source():
    model = perturb(tiny_model("b2"))
    source, pose, x_t = tiny_inputs(model)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        cond = model.prepare(source, pose)
        null = model.null_cond(cond)
        assert null.flow is None and null.warped == [] and null.previews == []
        assert not torch.allclose(model(x_t, t, pose, cond), model(x_t, t, pose, null))
        # PIDM semantics: training drops the condition by zeroing the source; with image-space warping that is
        # exactly the null condition (a warped zero image is zero)
        dropped = model.prepare(torch.zeros_like(source), pose)
        assert all(torch.equal(a, b) for a, b in zip(dropped.features, null.features))


def test_unet_padding_is_internal_and_does_not_change_divisible_sizes():
    model = perturb(tiny_model("b1", prediction="eps"))  # eps: forward returns the network's output as is
    g = torch.Generator().manual_seed(0)
    source, pose, x_t = (torch.randn(1, c, 32, 24, generator=g) for c in (12, 20, 12))  # 24 % 4 == 0: no padding
    t = torch.tensor([50])
    with torch.no_grad():
        direct = model.net.denoise(torch.cat([x_t, pose], 1), t, model.net.encode(source))
        assert torch.equal(model(x_t, t, pose, model.prepare(source, pose)), direct)
        # 22 columns (176 px / 8 in latent space would be the same case) are padded to 24 and cropped back
        cond22 = model.prepare(source[..., :22], pose[..., :22])
        out22 = model(x_t[..., :22], t, pose[..., :22], cond22)
    assert out22.shape == (1, 24, 32, 22) and torch.isfinite(out22).all()
    with pytest.raises(InputError, match="prepared for another size"):
        model(x_t[..., :16], t, pose[..., :16], cond22)


def test_bad_inputs_are_named():
    model = tiny_model("b2")
    source, pose, x_t = tiny_inputs(model, batch=1)
    with pytest.raises(InputError, match=r"source must be \(B, 12, h, w\)"):
        model.prepare(torch.zeros(1, 3, 32, 22), pose)
    with pytest.raises(InputError, match="pose_map must be"):
        model.prepare(source, torch.zeros(1, 3, 32, 22))
    with pytest.raises(InputError, match="same batch size and spatial size"):
        model.prepare(source, pose[..., :20])
    with pytest.raises(InputError, match="x_t must be"):
        model(torch.zeros(1, 3, 32, 22), torch.tensor([1]), pose, AppearanceCond(features=[]))
    with pytest.raises(InputError, match="20-channel"):
        model.encode_pose(torch.zeros(1, 3, 64, 44))
    with pytest.raises(InputError, match="not divisible by 2"):
        model.encode_source(torch.zeros(1, 3, 63, 44))


def test_appearance_cond_to_and_detach():
    model = tiny_model("b2")
    source, pose, _ = tiny_inputs(model, batch=1)
    cond = model.prepare(source, pose)  # with grad
    assert cond.features[0].requires_grad
    moved = cond.detach().to(dtype=torch.float64)
    assert not moved.features[0].requires_grad and moved.features[0].dtype == torch.float64
    assert moved.flow.dtype == torch.float64 and len(moved.warped) == len(cond.warped)
    assert cond.batch_size == 1


def test_prepare_backpropagates_into_rpa():
    model = perturb(tiny_model("b2"))
    source, pose, x_t = tiny_inputs(model, batch=1)
    out = model(x_t, torch.tensor([300]), pose, model.prepare(source, pose))
    out.square().mean().backward()
    grads = [p.grad for p in model.rpa.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("variant", ["b1", "b2"])  # "full" has b2's network (test_named_config_facts)
def test_every_named_config_builds_and_runs_on_meta(name, variant):
    cfg = get_config(name, variant)
    with torch.device("meta"):  # shapes only: no weights allocated, no compute
        model = RePoseDM(cfg)
        h, w = cfg.diffusion_size
        z, pose = torch.empty(1, cfg.diffusion_channels, h, w), torch.empty(1, cfg.pose_channels, h, w)
        out = model(z, torch.tensor([5]), pose, model.prepare(z, pose))
    assert out.shape == (1, 2 * cfg.diffusion_channels, h, w)
    assert (model.rpa is None) == (variant == "b1")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0


def test_named_config_facts():
    df = get_config("deepfashion256", "b1")
    assert df.unet == pidm_deepfashion256_config()  # PIDM's released network
    assert df.image_size == (256, 176) and df.diffusion_size == (256, 176) and df.rpa is None
    assert get_config("deepfashion512", "b2").diffusion_size == (64, 44)
    assert get_config("market1501", "b2").image_size == (128, 64)
    b2, full = get_config("tiny", "b2"), get_config("tiny", "full")
    assert b2.unet == full.unet and b2.rpa == full.rpa  # same network
    assert b2.guidance == full.guidance and full.variant == "full"  # one GuidanceConfig; "full" turns it on
    assert b2.rpa.iterations == 3 and get_config("deepfashion256", "b2").rpa.iterations == 5
    assert get_config("tiny", "b2", rpa=dict(iterations=1)).rpa.iterations == 1


def test_config_round_trip_and_errors():
    cfg = get_config("tiny", "full", rpa=dict(warp_space="feature"))
    assert RePoseConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="unknown RePoseConfig field"):
        RePoseConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(InputError, match="variant"):
        get_config("tiny", "b3")
    with pytest.raises(InputError, match="deepfashion256"):
        get_config("deepfashion1024", "b2")
    with pytest.raises(InputError, match="rpa"):
        dataclasses.replace(cfg, variant="b1")  # b1 has no RPA
    with pytest.raises(InputError, match="in_channels"):
        dataclasses.replace(cfg, codec="pixel")  # UNet built for 12-channel unshuffle2 space
    with pytest.raises(InputError, match="multiples of the codec factor"):
        dataclasses.replace(cfg, image_size=(63, 44))


def test_sd_vae_model_needs_a_codec_for_image_helpers():
    cfg = get_config("deepfashion512", "b2")
    with torch.device("meta"):
        model = RePoseDM(cfg)
    with pytest.raises(InputError, match="set_codec"):
        model.encode_source(torch.zeros(1, 3, 512, 352))


# ---------------------------------------------------------------------------------------------------------------
# PIDM compatibility (b1) and checkpoints


def test_b1_from_pidm_reproduces_the_pidm_reference_fixture(shared_fixtures):
    tensors = load_file(str(shared_fixtures / "pidm_small.safetensors"))
    state = {k[len("state_dict."):]: v.float() for k, v in tensors.items() if k.startswith("state_dict.")}
    pidm = load_pidm_state_dict(state, pidm_small_config(), source="pidm_small.safetensors")
    model = RePoseDM.from_pidm(pidm)
    assert model.variant == "b1" and model.net is pidm  # wraps, no copy
    # b1's state dict is PIDM's under the prefix "net."
    assert list(model.state_dict()) == [f"net.{k}" for k in pidm.state_dict()]
    x_t, pose, t, src = tensors["input.x_t"], tensors["input.pose"], tensors["input.t"], tensors["input.src"]
    with torch.no_grad():
        cond = model.prepare(src, pose)
        out = model(x_t, t, pose, cond)
        null = model(x_t, t, pose, model.null_cond(cond))
    torch.testing.assert_close(out, tensors["output.cond"], atol=1e-4, rtol=0)
    torch.testing.assert_close(null, tensors["output.uncond"], atol=1e-4, rtol=0)
    assert as_repose_model(pidm).net is pidm and as_repose_model(model) is model


def test_b1_equals_pidmnet_forward_on_random_weights():
    torch.manual_seed(0)
    pidm = PIDMNet(pidm_small_config(image_size=32, channel_mult=(1, 2), attention_resolutions=(16,)))
    perturb(pidm)
    model = RePoseDM.from_pidm(pidm.eval(), image_size=(32, 24))
    g = torch.Generator().manual_seed(0)
    x_t, pose, src = torch.randn(2, 3, 32, 24, generator=g), torch.rand(2, 20, 32, 24, generator=g), torch.randn(
        2, 3, 32, 24, generator=g)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        ours = model(x_t, t, pose, model.prepare(src, pose))
        theirs = pidm(torch.cat([x_t, pose], 1), t, src, prob=1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("variant", ["b1", "b2"])
def test_checkpoint_round_trip(tmp_path, variant):
    model = perturb(tiny_model(variant))
    path = tmp_path / f"tiny_{variant}.safetensors"
    save_model(path, model, "repose_dm")
    loaded = load_model(path, expected_kind="repose_dm")
    assert isinstance(loaded, RePoseDM) and loaded.config == model.config
    source, pose, x_t = tiny_inputs(model, batch=1)
    with torch.no_grad():
        a = model(x_t, torch.tensor([7]), pose, model.prepare(source, pose))
        b = loaded(x_t, torch.tensor([7]), pose, loaded.prepare(source, pose))
    assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="expected 'pidm'"):
        load_model(path, expected_kind="pidm")


def test_b2_checkpoint_does_not_load_into_b1(tmp_path):
    path = tmp_path / "b2.safetensors"
    save_model(path, tiny_model("b2"), "repose_dm")
    state = load_file(str(path))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_state_dict_strict(tiny_model("b1"), state, source=str(path))


@pytest.mark.parametrize("warp_space", ["image", "feature"])
def test_half_precision_model_keeps_float32_flows(warp_space):
    model = tiny_model("b2", warp_space).to(torch.bfloat16)
    source, pose, x_t = (x.to(torch.bfloat16) for x in tiny_inputs(model, batch=1))
    with torch.no_grad():
        cond = model.prepare(source, pose)
        out = model(x_t, torch.tensor([3]), pose, cond)
    assert out.dtype == torch.bfloat16 and cond.features[0].dtype == torch.bfloat16
    assert cond.flow.dtype == torch.float32 and cond.warped[0].dtype == torch.bfloat16


@pytest.mark.parametrize("variant", ["b1", "b2"])
def test_cond_and_null_cond_batch_into_one_cfg_pass(variant):
    from repose_core.diffusion import make_eps_fn

    model = perturb(tiny_model(variant))
    source, pose, x_t = tiny_inputs(model)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        cond = model.prepare(source, pose, decode_previews=True)
        null = model.null_cond(cond)
        guided = make_eps_fn(model, pose, cond.features_only(), null, w=2.0)(x_t, t)
        e_c, e_n = model(x_t, t, pose, cond), model(x_t, t, pose, null)
    C = source.shape[1]  # ε is extrapolated; the learned-variance channels v come from the conditional pass
    torch.testing.assert_close(guided[:, :C], (e_n + 2.0 * (e_c - e_n))[:, :C], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(guided[:, C:], e_c[:, C:], atol=1e-4, rtol=1e-4)


def test_v_prediction_forward_returns_eps_consistent_with_the_network_v():
    """A v-predicting model hands samplers ε = √ᾱ·v + √(1−ᾱ)·x_t, for integer and fractional t."""
    import numpy as np

    from repose_core.diffusion import linear_betas

    model = perturb(tiny_model("b1"))
    assert model.config.prediction == "v"  # the miniature presets predict v
    source, pose, x_t = tiny_inputs(model)
    abar = np.cumprod(1 - linear_betas(1000))
    with torch.no_grad():
        cond = model.prepare(source, pose)
        for t_value in (0, 500, 999):
            t = torch.tensor([t_value, t_value])
            raw = model.net.denoise(torch.cat([model._pad(x_t), model._pad(pose)], 1), t, cond.features)
            v = raw[..., :32, :22][:, :12]
            a = float(abar[t_value])
            expect = a ** 0.5 * v + (1 - a) ** 0.5 * x_t
            out = model(x_t, t, pose, cond)
            torch.testing.assert_close(out[:, :12], expect, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out[:, 12:], raw[..., :32, :22][:, 12:])
        # a fractional t (k-diffusion samplers) lies between its neighbours
        lo, hi, mid = (model.alphas_cumprod_at(torch.tensor([t]), x_t[:1]).item() for t in (400.0, 401.0, 400.5))
        assert hi < mid < lo


def test_v_prediction_loss_weight_is_the_v_mse():
    """ε-MSE / ᾱ_t equals ‖v − v_θ‖² for the v of the same sample (the miniature recipe's loss)."""
    from repose_core.diffusion import GaussianDiffusion, linear_betas

    d = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(0)
    x0, noise, v_pred = (torch.randn(3, 12, 8, 6, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([10, 500, 990])
    x_t = d.q_sample(x0, t, noise)
    abar = torch.from_numpy(d.alphas_cumprod)[t].view(-1, 1, 1, 1)
    v_true = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    eps_pred = abar.sqrt() * v_pred + (1 - abar).sqrt() * x_t
    losses = d.training_losses(eps_pred, x0, x_t, t, noise, mse_weight=d.loss_weight_for("v", t))
    torch.testing.assert_close(losses["mse"], (v_true - v_pred).pow(2).mean(dim=(1, 2, 3)), rtol=1e-6, atol=1e-9)
    assert d.loss_weight_for("eps", t) is None


def test_aligned_source_input_reads_the_warped_source_and_null_is_zero():
    model = perturb(tiny_model("b2", aligned_source_input=True))
    assert model.net.config.in_channels == 12 + 20 + 12
    source, pose, x_t = tiny_inputs(model)
    t = torch.tensor([300, 300])
    with torch.no_grad():
        cond = model.prepare(source, pose)
        assert torch.equal(cond.aligned_source, cond.warped[-1])
        null = model.null_cond(cond)
        assert torch.equal(null.aligned_source, torch.zeros_like(cond.warped[-1]))
        # what the denoiser reads survives features_only() (the CFG batch), and it matters
        only = cond.features_only()
        assert only.flow is None and only.warped == [] and only.aligned_source is cond.aligned_source
        changed = dataclasses.replace(only, aligned_source=only.aligned_source + 1)
        assert not torch.allclose(model(x_t, t, pose, only), model(x_t, t, pose, changed))
        # dropping the condition in training (zero source) is exactly the null condition
        dropped = model.prepare(torch.zeros_like(source), pose)
        assert torch.equal(dropped.aligned_source, null.aligned_source)
        with pytest.raises(InputError, match="aligned source"):
            model(x_t, t, pose, dataclasses.replace(only, aligned_source=None))
    with pytest.raises(InputError, match="aligned_source_input"):
        get_config("tiny", "b1", aligned_source_input=True)


def test_aligned_residual_is_the_identity_at_low_noise_and_the_warp_plus_correction_at_high_noise():
    """EDM preconditioning around the aligned source a: x̂0 = a + c_skip·(x̃ − a) + c_out·F (configs docstring)."""
    from repose_core.diffusion import GaussianDiffusion, linear_betas

    model = perturb(tiny_model("b2", aligned_source_input=True, prediction="aligned_residual"))
    d = GaussianDiffusion(linear_betas(1000))
    source, pose, x_t = tiny_inputs(model)
    sd = model.config.residual_sigma_data
    with torch.no_grad():
        cond = model.prepare(source, pose)
        a = cond.aligned_source
        inputs = torch.cat([model._pad(x_t), model._pad(pose), model._pad(a)], 1)
        for t_value in (0, 300, 999):
            t = torch.tensor([t_value, t_value])
            F = model.net.denoise(inputs, t, cond.features)[..., :32, :22][:, :12].double()
            abar = float(d.alphas_cumprod[t_value])
            sigma = ((1 - abar) / abar) ** 0.5
            c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
            expect_x0 = a + c_skip * (x_t / abar ** 0.5 - a) + c_out * F
            x0 = d.predict_x0_from_eps(x_t.double(), t, model(x_t, t, pose, cond)[:, :12].double())
            torch.testing.assert_close(x0, expect_x0.double(), rtol=1e-4, atol=1e-4)
            assert torch.isfinite(model(x_t, t, pose, cond)).all()
        # t = 0: x̂0 is x_t up to σ_0 (~0.01), whatever F is; t = 999: the warp plus σ_d·F
        t0 = torch.tensor([0, 0])
        x0_low = d.predict_x0_from_eps(x_t.double(), t0, model(x_t, t0, pose, cond)[:, :12].double())
        assert (x0_low - x_t).abs().max() < 0.05 * (1 + F.abs().max())
    with pytest.raises(InputError, match="aligned_source_input"):
        get_config("tiny", "b2", prediction="aligned_residual")
    with pytest.raises(InputError, match="residual_sigma_data"):
        get_config("tiny", "b2", aligned_source_input=True, prediction="aligned_residual", residual_sigma_data=0.0)


def test_aligned_residual_loss_weight_is_unit_weight_on_the_network_output():
    """ε-MSE × (1 + σ²/σ_d²) equals ‖F − F*‖² with F* the output that gives x̂0 = x0 (EDM's loss)."""
    from repose_core.diffusion import GaussianDiffusion, linear_betas

    d = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(0)
    x0, noise, a, F = (torch.randn(3, 12, 8, 6, generator=g, dtype=torch.float64) for _ in range(4))
    sd = 0.2
    t = torch.tensor([0, 500, 990])
    x_t = d.q_sample(x0, t, noise)
    abar = torch.from_numpy(d.alphas_cumprod)[t].view(-1, 1, 1, 1)
    sigma2 = (1 - abar) / abar
    c_skip, c_out = sd ** 2 / (sigma2 + sd ** 2), (sigma2 * sd ** 2 / (sigma2 + sd ** 2)).sqrt()
    x_tilde = x_t / abar.sqrt()
    F_true = (x0 - a - c_skip * (x_tilde - a)) / c_out
    x0_pred = a + c_skip * (x_tilde - a) + c_out * F
    eps_pred = (x_tilde - x0_pred) / sigma2.sqrt()
    w = d.loss_weight_for("aligned_residual", t, sigma_data=sd)
    losses = d.training_losses(eps_pred, x0, x_t, t, noise, mse_weight=w)
    torch.testing.assert_close(losses["mse"], (F_true - F).pow(2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-8)
    with pytest.raises(InputError, match="snr_clamp"):
        d.loss_weight_for("aligned_residual", t, snr_clamp=5.0)


def test_guidance_settings_are_one_config_saved_with_the_model(tmp_path):
    """RePoseConfig.guidance is a GuidanceConfig: saved and loaded with the model; files with the older flat
    guidance_* fields load into it; a bad or unknown setting is an error naming it."""
    from repose_core.guidance import GuidanceConfig

    model = tiny_model("full")
    model.config = dataclasses.replace(model.config, guidance=model.config.guidance.replace(scale=0.03, every=2))
    save_model(tmp_path / "m.safetensors", model, "repose_dm")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.guidance == GuidanceConfig(scale=0.03, every=2)
    legacy = dict(model.config.to_dict(), guidance_scale=0.5, guidance_energy="keypoint", guidance_start=0.0,
                  guidance_end=0.5)
    del legacy["guidance"]
    assert RePoseConfig.from_dict(legacy).guidance == GuidanceConfig(scale=0.5, end=0.5)
    legacy_b2 = dict(legacy, guidance_scale=0.0)  # 0 meant "off by default": the default η is kept
    assert RePoseConfig.from_dict(legacy_b2).guidance.scale == GuidanceConfig().scale
    with pytest.raises(InputError, match="unknown guidance setting"):
        GuidanceConfig().replace(sigma=2.0)
    with pytest.raises(InputError, match="every"):
        RePoseConfig.from_dict(dict(model.config.to_dict(), guidance=dict(every=0)))
