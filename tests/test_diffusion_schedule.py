"""Schedule, forward process, learned-variance reverse process and L_hybrid (repose_core.diffusion.schedule)."""
import math

import numpy as np
import pytest
import torch

from repose_core.diffusion import GaussianDiffusion, linear_betas
from repose_core.diffusion.schedule import discretized_gaussian_log_likelihood, normal_kl
from repose_core.errors import InputError


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_betas())


def test_linear_schedule_matches_pidm(diffusion):
    b = diffusion.betas
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=1e-15) and b[-1] == pytest.approx(2e-2, abs=1e-15)
    ac = diffusion.alphas_cumprod
    assert np.all(np.diff(ac) < 0) and 0 < ac[-1] < 1e-4 < ac[0] < 1
    assert ac[0] == pytest.approx(1 - 1e-4)
    # posterior variance: β̃_t = β_t (1-ᾱ_{t-1})/(1-ᾱ_t) < β_t; index 0 has β̃ = 0 and a clipped log
    assert diffusion.posterior_variance[0] == 0.0
    assert np.all(diffusion.posterior_variance[1:] < b[1:])
    assert np.isfinite(diffusion.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("bad", [dict(T=0), dict(start=0.0), dict(start=0.03, end=0.02), dict(end=1.5)])
def test_linear_betas_rejects_bad_arguments(bad):
    with pytest.raises(InputError):
        linear_betas(**bad)


@pytest.mark.parametrize("betas", [[], [[0.1, 0.2]], [0.1, 0.0], [0.1, float("nan")], [0.5, 1.2]])
def test_diffusion_rejects_bad_betas(betas):
    with pytest.raises(InputError, match="beta"):
        GaussianDiffusion(betas)


def test_q_sample_statistics(diffusion):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4096, 1, 2, 2), 0.7)
    for t in (0, 250, 999):
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        xt = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        a = diffusion.alphas_cumprod[t]
        assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.02)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - a), rel=0.03)


def test_q_sample_keeps_dtype_and_checks_inputs(diffusion):
    x0 = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    assert diffusion.q_sample(x0, torch.tensor([0, 5])).dtype == torch.float16
    with pytest.raises(InputError, match="integer"):
        diffusion.q_sample(x0, torch.tensor([0.0, 5.0]))
    with pytest.raises(InputError, match="shape"):
        diffusion.q_sample(x0, torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match=r"\[0, 999\]"):
        diffusion.q_sample(x0, torch.tensor([0, 1000]))
    with pytest.raises(InputError, match="noise shape"):
        diffusion.q_sample(x0, torch.tensor([0, 1]), torch.zeros(2, 3, 4, 5))
    torch.testing.assert_close(diffusion.q_sample(x0.float(), 7, torch.ones(2, 3, 4, 4)),
                               diffusion.q_sample(x0.float(), torch.tensor([7, 7]), torch.ones(2, 3, 4, 4)))
    for not_a_timestep in (True, 2.5, "3"):                       # a Python int is one timestep for the batch
        with pytest.raises(InputError, match="integer"):
            diffusion.q_sample(x0, not_a_timestep)


def test_eps_x0_round_trip(diffusion):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(xt, t, x0), eps)


def test_learned_range_limits(diffusion):
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 999])
    eps = torch.randn_like(x)
    log_beta = torch.from_numpy(diffusion.log_betas[t.numpy()]).view(3, 1, 1, 1)
    log_tilde = torch.from_numpy(diffusion.posterior_log_variance_clipped[t.numpy()]).view(3, 1, 1, 1)
    upper = diffusion.p_mean_variance(torch.cat([eps, torch.ones_like(x)], 1), x, t)
    lower = diffusion.p_mean_variance(torch.cat([eps, -torch.ones_like(x)], 1), x, t)
    middle = diffusion.p_mean_variance(torch.cat([eps, torch.zeros_like(x)], 1), x, t)
    fixed = diffusion.p_mean_variance(eps, x, t)
    torch.testing.assert_close(upper["log_variance"], log_beta.expand_as(x))
    torch.testing.assert_close(lower["log_variance"], log_tilde.expand_as(x))
    torch.testing.assert_close(middle["log_variance"], (0.5 * (log_beta + log_tilde)).expand_as(x))
    torch.testing.assert_close(fixed["log_variance"], log_tilde.expand_as(x))
    # the mean does not depend on v and equals paper eq. 2's mean: (x - β/√(1-ᾱ) ε)/√α
    torch.testing.assert_close(upper["mean"], lower["mean"])
    b = torch.from_numpy(diffusion.betas[t.numpy()]).view(3, 1, 1, 1)
    ac = torch.from_numpy(diffusion.alphas_cumprod[t.numpy()]).view(3, 1, 1, 1)
    eq2 = (x - b / (1 - ac).sqrt() * eps) / (1 - b).sqrt()
    torch.testing.assert_close(upper["mean"][1:], eq2[1:])


def test_model_output_channel_count_is_checked(diffusion):
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(InputError, match="expected 3 .* or 6"):
        diffusion.p_mean_variance(torch.zeros(2, 5, 4, 4), x, torch.tensor([1, 2]))
    with pytest.raises(InputError, match="does not match"):
        diffusion.p_mean_variance(torch.zeros(2, 6, 4, 5), x, torch.tensor([1, 2]))


def test_respace_keeps_alphas_cumprod(diffusion):
    ts = list(range(0, 1000, 20))
    sub = diffusion.respace(ts)
    assert sub.num_timesteps == 50 and list(sub.timestep_map) == ts
    np.testing.assert_allclose(sub.alphas_cumprod, diffusion.alphas_cumprod[ts], rtol=1e-12)
    with pytest.raises(InputError):
        diffusion.respace([0, 1000])


def _toy_batch(diffusion, t_values, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(len(t_values), 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor(t_values)
    return x0, noise, t, diffusion.q_sample(x0, t, noise)


def test_hybrid_loss_values(diffusion):
    x0, noise, t, xt = _toy_batch(diffusion, [0, 1, 500, 999])
    out = torch.cat([torch.randn_like(x0), torch.rand_like(x0) * 2 - 1], 1)
    losses = diffusion.training_losses(out, x0, xt, t, noise)
    assert set(losses) >= {"loss", "mse", "vb"}
    for v in losses.values():
        assert v.shape == (4,) and torch.isfinite(v).all()
    assert (losses["vb"] >= 0).all()
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    torch.testing.assert_close(losses["mse"], ((noise - out[:, :3]) ** 2).mean(dim=(1, 2, 3)))
    half = diffusion.training_losses(out, x0, xt, t, noise, vb_weight=0.5)
    torch.testing.assert_close(half["loss"], losses["mse"] + 0.5 * losses["vb"])


def test_vb_vanishes_for_exact_mean_and_posterior_variance(diffusion):
    # ε_θ = true noise gives μ_θ = posterior mean; v = -1 gives Σ_θ = β̃ → KL = 0 for t > 0
    x0, noise, t, xt = _toy_batch(diffusion, [1, 100, 999])
    exact = diffusion.training_losses(torch.cat([noise, -torch.ones_like(noise)], 1), x0, xt, t, noise)
    assert exact["vb"].abs().max() < 1e-4 and exact["mse"].abs().max() == 0
    wrong = diffusion.training_losses(torch.cat([noise, torch.ones_like(noise)], 1), x0, xt, t, noise)
    assert (wrong["vb"][:2] > 1e-5).all()   # at t = T-1, β and β̃ nearly coincide


def test_vb_rescaled_by_num_timesteps():
    small = GaussianDiffusion(linear_betas(100, 1e-3, 0.2))
    x0, noise, t, xt = _toy_batch(small, [5, 50])
    out = torch.cat([torch.randn_like(x0), torch.zeros_like(x0)], 1)
    raw = small.vb_terms_bpd(out, x0, xt, t)
    torch.testing.assert_close(small.training_losses(out, x0, xt, t, noise)["vb"], raw * 0.1)


def test_vb_term_trains_only_the_variance_channels(diffusion):
    x0, noise, t, xt = _toy_batch(diffusion, [0, 3, 500, 999])
    out = torch.cat([torch.randn_like(x0), torch.rand_like(x0) * 2 - 1], 1).requires_grad_(True)
    losses = diffusion.training_losses(out, x0, xt, t, noise)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0            # stop-gradient on the mean
    assert (grad_vb[:, 3:].abs().sum(dim=(1, 2, 3)) > 0).all()
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert grad_mse[:, 3:].abs().max() == 0 and grad_mse[:, :3].abs().sum() > 0


def test_mse_target_override_for_guided_eps(diffusion):
    x0, noise, t, xt = _toy_batch(diffusion, [10, 20])
    eps_tilde = noise + 0.3
    out = torch.cat([eps_tilde, torch.zeros_like(x0)], 1)
    assert diffusion.training_losses(out, x0, xt, t, noise, mse_target=eps_tilde)["mse"].max() == 0
    assert diffusion.training_losses(out, x0, xt, t, noise, eps_target=eps_tilde)["mse"].max() == 0
    assert diffusion.training_losses(out, x0, xt, t, noise)["mse"].min() > 0.08
    with pytest.raises(InputError, match="either"):
        diffusion.training_losses(out, x0, xt, t, noise, mse_target=eps_tilde, eps_target=eps_tilde)
    with pytest.raises(InputError, match="mse target shape"):
        diffusion.training_losses(out, x0, xt, t, noise, mse_target=eps_tilde[:, :1])


def test_eps_only_output_has_zero_vb(diffusion):
    x0, noise, t, xt = _toy_batch(diffusion, [10, 20])
    losses = diffusion.training_losses(torch.zeros_like(x0), x0, xt, t, noise)
    assert losses["vb"].abs().max() == 0
    torch.testing.assert_close(losses["loss"], losses["mse"])


def test_half_precision_loss_is_computed_in_float32(diffusion):
    x0, noise, t, xt = _toy_batch(diffusion, [0, 999])
    out = torch.cat([noise, torch.zeros_like(x0)], 1).half()
    losses = diffusion.training_losses(out, x0.half(), xt.half(), t, noise.half())
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"]).all()


def test_kl_and_decoder_likelihood_helpers():
    m = torch.randn(10, dtype=torch.float64)
    lv = torch.randn(10, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-12
    assert (normal_kl(m, lv, m + 1, lv - 0.5) > 0).all()
    # the 256 bins of the discretized Gaussian sum to probability 1
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -2.0), (-0.9, -5.0), (0.0, 1.0)):
        logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_snr_clamp_caps_the_x0_space_weight_of_v_losses():
    """--snr-clamp γ: the x̂0-space weight 1 + SNR of the v-MSE is capped at 1 + γ; high-noise steps keep theirs."""
    d = GaussianDiffusion(linear_betas(1000))
    t = torch.arange(0, 1000, 37)
    abar = torch.from_numpy(d.alphas_cumprod)[t]
    snr = abar / (1 - abar)
    plain, clamped = d.loss_weight_for("v", t), d.loss_weight_for("v", t, snr_clamp=5.0)
    torch.testing.assert_close(plain.double(), 1 / abar, rtol=1e-6, atol=0)
    torch.testing.assert_close((clamped * snr).double(), torch.clamp(1 + snr, max=6.0), rtol=1e-5, atol=0)
    assert torch.all(clamped <= plain * (1 + 1e-6)) and torch.equal(clamped[snr < 5], plain[snr < 5])
    with pytest.raises(InputError, match="unknown prediction"):
        d.loss_weight_for("x0", t)


def test_lognormal_timesteps_follow_edm_sigma_distribution():
    """--t-sampling lognormal: σ(t) of the drawn timesteps has the log-mean and log-std asked for (EDM's training
    distribution), draws stay in 0..T−1, and uniform_fraction keeps the top noise levels in training."""
    import math

    from repose_core.diffusion import GaussianDiffusion, linear_betas

    d = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(0)
    t = d.sample_timesteps(50000, g, lognormal=(-1.2, 1.2))
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= 999
    abar = torch.from_numpy(d.alphas_cumprod)[t]
    log_sigma = (((1 - abar) / abar).sqrt()).log()
    inside = log_sigma[(log_sigma > math.log(0.05)) & (log_sigma < math.log(5.0))]  # away from the table's ends
    assert abs(float(inside.median()) - (-1.2)) < 0.1
    assert int((t > 900).sum()) == 0  # what uniform_fraction is for
    mixed = d.sample_timesteps(50000, g, lognormal=(-1.2, 1.2), uniform_fraction=0.2)
    assert 0.015 < float((mixed > 900).float().mean()) < 0.025
    uniform = d.sample_timesteps(50000, g)
    assert abs(float(uniform.float().mean()) - 499.5) < 10
    with pytest.raises(InputError, match="P_std"):
        d.sample_timesteps(4, g, lognormal=(-1.2, 0.0))
