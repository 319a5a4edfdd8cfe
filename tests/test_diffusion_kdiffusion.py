"""k-diffusion adapter: σ ↔ t mapping, denoiser identity with the Tweedie x̂0, Euler = DDIM, ComfyUI schedule mapping."""
import numpy as np
import pytest
import torch

from repose_core.diffusion import (EpsDenoiser, GaussianDiffusion, ddim_sample, karras_sigmas, linear_betas,
                                   model_sampling_dict, sample_euler)
from repose_core.errors import InputError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_betas())


def gaussian_eps_fn(diffusion, mu, s):
    ac = torch.from_numpy(diffusion.alphas_cumprod)

    def eps_fn(x, t):
        assert t.dtype == torch.long
        a = ac[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return eps_fn


def test_sigma_table_and_t_mapping(diffusion):
    den = EpsDenoiser(lambda x, t: x, diffusion)
    ac = diffusion.alphas_cumprod
    np.testing.assert_allclose(den.sigmas.numpy(), np.sqrt((1 - ac) / ac), rtol=1e-6)
    assert den.sigma_min == pytest.approx(np.sqrt(1e-4 / (1 - 1e-4)))
    k = torch.tensor([0, 1, 37, 500, 999])
    torch.testing.assert_close(den.sigma_to_t(den.sigmas[k]), k.float(), atol=2e-3, rtol=0)
    # fractional t: interpolation in log σ is inverted exactly by t_to_sigma
    t = torch.tensor([0.25, 10.5, 998.9], dtype=torch.float64)
    torch.testing.assert_close(den.sigma_to_t(den.t_to_sigma(t)).double(), t, atol=2e-3, rtol=0)
    # out-of-range σ is clamped to the table ends
    assert den.sigma_to_t(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]
    quant = EpsDenoiser(lambda x, t: x, diffusion, quantize=True)
    assert quant.sigma_to_t(den.sigmas[k] * 1.0001).tolist() == k.tolist()


@pytest.mark.parametrize("quantize", [False, True])
def test_denoiser_equals_tweedie_estimate(diffusion, quantize):
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return torch.cat([0.3 * x + t.float().view(-1, 1, 1, 1) / 1000, torch.zeros_like(x)], 1)  # (B, 2C)

    den = EpsDenoiser(eps_fn, diffusion.alphas_cumprod, quantize=quantize)
    t = torch.tensor([0, 37, 500, 999])
    x_t = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    eps = eps_fn(x_t, t)[:, :3]
    expected = diffusion.predict_x0_from_eps(x_t, t, eps)
    sigma = den.sigmas64[t]
    x = x_t * (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()    # VE variable x = x_t / √ᾱ
    torch.testing.assert_close(den(x, sigma), expected, atol=1e-5, rtol=1e-5)
    assert seen[-1].dtype == (torch.long if quantize else torch.float32)


def test_euler_on_pidm_sigmas_equals_ddim(diffusion):
    eps_fn = gaussian_eps_fn(diffusion, 0.2, 0.5)
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    den = EpsDenoiser(eps_fn, diffusion, quantize=True)
    sigmas = den.sigmas_for(25, "pidm")
    assert sigmas[-1] == 0 and len(sigmas) == 26
    euler = sample_euler(den, x_T * (1 + sigmas[0] ** 2) ** 0.5, sigmas)
    ddim = ddim_sample(eps_fn, x_T, diffusion, steps=25)
    torch.testing.assert_close(euler, ddim, atol=1e-4, rtol=1e-4)


def test_euler_karras_on_gaussian_data(diffusion):
    den = EpsDenoiser(gaussian_eps_fn(diffusion, -0.3, 0.5), diffusion, quantize=True)
    sigmas = den.sigmas_for(60, "karras")
    x = torch.randn(1000, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    out = sample_euler(den, x, sigmas)
    assert out.mean().item() == pytest.approx(-0.3, abs=0.03)
    assert out.std().item() == pytest.approx(0.5, rel=0.08)


def test_sigma_schedules(diffusion):
    den = EpsDenoiser(lambda x, t: x, diffusion)
    for name in ("karras", "uniform", "pidm"):
        s = den.sigmas_for(10, name)
        assert s.shape == (11,) and s[-1] == 0 and (s[:-1] > 0).all() and (s[1:] < s[:-1]).all(), name
    karras = den.sigmas_for(10, "karras")
    assert karras[0].item() == pytest.approx(den.sigma_max, rel=1e-5)
    assert karras[-2].item() == pytest.approx(den.sigma_min, rel=1e-5)
    torch.testing.assert_close(karras, karras_sigmas(10, den.sigma_min, den.sigma_max))
    uniform = den.sigmas_for(10, "uniform")
    assert uniform[0].item() == pytest.approx(den.sigma_max, rel=1e-5)
    assert uniform[-2].item() == pytest.approx(den.sigma_min, rel=1e-5)
    with pytest.raises(InputError, match="scheduler"):
        den.sigmas_for(10, "exponentialish")
    with pytest.raises(InputError, match="steps"):
        den.sigmas_for(0)


def test_denoiser_input_errors(diffusion):
    den = EpsDenoiser(lambda x, t: torch.zeros(x.shape[0], 5, *x.shape[2:]), diffusion)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(InputError, match="expected"):
        den(x, torch.tensor([1.0, 1.0]))
    with pytest.raises(InputError, match="sigma"):
        EpsDenoiser(lambda x, t: x, diffusion)(x, torch.ones(3))
    torch.testing.assert_close(EpsDenoiser(lambda x, t: torch.zeros_like(x), diffusion)(x + 1, 2.0), x + 1)  # scalar σ
    with pytest.raises(InputError, match="alphas_cumprod"):
        EpsDenoiser(lambda x, t: x, [0.5])
    with pytest.raises(InputError, match="decreasing"):
        EpsDenoiser(lambda x, t: x, [0.5, 0.9])


def test_model_sampling_dict_matches_comfyui_schedule(diffusion):
    info = model_sampling_dict(diffusion)
    settings = info["sampling_settings"]
    assert settings == {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 2e-2, "timesteps": 1000}
    # ComfyUI make_beta_schedule: "sqrt_linear" = linspace(start, end) (float64); "linear" = linspace(√start, √end)²
    comfy_sqrt_linear = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    comfy_linear = torch.linspace(1e-4**0.5, 2e-2**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(info["betas"], comfy_sqrt_linear, rtol=1e-12, atol=1e-15)
    assert (info["betas"] - comfy_linear).abs().max() > 1e-3          # ComfyUI's "linear" is a different schedule
    comfy_ac = torch.cumprod(1 - comfy_sqrt_linear, dim=0)
    comfy_sigmas = (((1 - comfy_ac) / comfy_ac) ** 0.5).float()
    torch.testing.assert_close(info["sigmas"], comfy_sigmas)
    torch.testing.assert_close(info["sigmas"], EpsDenoiser(lambda x, t: x, diffusion).sigmas)
    assert info["prediction"] == "eps" and info["alphas_cumprod"].dtype == torch.float64
    cosine_like = GaussianDiffusion(np.linspace(1e-4, 2e-2, 1000) ** 1.5)
    assert model_sampling_dict(cosine_like)["sampling_settings"] is None
