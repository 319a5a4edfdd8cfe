"""DDIM / DDPM samplers against the exact ε of Gaussian toy data, plus hooks, masks, callbacks and errors."""
import pytest
import torch

from repose_core.diffusion import GaussianDiffusion, ddim_sample, ddpm_sample, linear_betas, spaced_timesteps
from repose_core.errors import InputError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_betas())


def gaussian_eps_fn(diffusion, mu, s, learned_variance=False, log=None):
    """Exact E[ε | x_t] when x0 ~ N(mu, s²) elementwise: √(1-ᾱ)(x_t - √ᾱ mu) / (ᾱ s² + 1 - ᾱ)."""
    ac = torch.from_numpy(diffusion.alphas_cumprod)

    def eps_fn(x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        if log is not None:
            log.append((x.clone(), t.clone()))
        a = ac[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learned_variance else eps

    return eps_fn


def noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ spacing

def test_spacings():
    assert spaced_timesteps(1000, 50, "pidm") == list(range(0, 1000, 20))
    assert len(spaced_timesteps(1000, 30, "pidm")) == 31          # PIDM's range() quirk is reproduced
    uniform = spaced_timesteps(1000, 50, "uniform")
    assert len(uniform) == 50 and uniform[0] == 0 and uniform[-1] == 999
    trailing = spaced_timesteps(1000, 50, "trailing")
    assert len(trailing) == 50 and trailing[-1] == 999 and trailing[0] == 19
    assert spaced_timesteps(1000, 1000, "pidm") == list(range(1000))
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(InputError, match="steps"):
            spaced_timesteps(1000, bad)
    with pytest.raises(InputError, match="spacing"):
        spaced_timesteps(1000, 10, "cosine")


# ------------------------------------------------------------------------------------------ exact-ε toys

@pytest.mark.parametrize("spacing", ["pidm", "uniform", "trailing"])
@pytest.mark.parametrize("learned_variance", [False, True])
def test_ddim_with_true_eps_lands_on_the_data_point(diffusion, spacing, learned_variance):
    mu = noise((2, 3, 4, 4), seed=1).clamp(-1, 1)
    out = ddim_sample(gaussian_eps_fn(diffusion, mu, 0.0, learned_variance), noise((2, 3, 4, 4)), diffusion,
                      steps=25, spacing=spacing)
    torch.testing.assert_close(out, mu, atol=1e-4, rtol=0)


def test_ddim_matches_textbook_update(diffusion):
    mu, s = 0.2, 0.6
    eps_fn = gaussian_eps_fn(diffusion, mu, s)
    x = x_T = noise((4, 1, 4, 4))
    ts = spaced_timesteps(1000, 10)[::-1]
    for i, t in enumerate(ts):
        tt = torch.full((4,), t, dtype=torch.long)
        eps = eps_fn(x, tt)
        x0 = diffusion.predict_x0_from_eps(x, tt, eps)
        a_next = diffusion.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    torch.testing.assert_close(ddim_sample(eps_fn, x_T, diffusion, steps=10), x, atol=1e-5, rtol=1e-5)


def test_ddim_on_gaussian_data_gives_its_mean_and_std(diffusion):
    # deterministic DDIM shrinks the spread at few steps and converges to the data std as steps grow
    mu, s = 0.3, 0.5
    eps_fn = gaussian_eps_fn(diffusion, mu, s)
    stds = []
    for steps in (20, 50, 200):
        out = ddim_sample(eps_fn, noise((2000, 1, 4, 4)), diffusion, steps=steps)
        assert out.mean().item() == pytest.approx(mu, abs=0.02)
        stds.append(out.std().item())
    assert stds[0] < stds[1] < stds[2] == pytest.approx(s, rel=0.03)


@pytest.mark.parametrize("steps", [None, 100])
def test_ddpm_on_gaussian_data_gives_its_mean_and_std(diffusion, steps):
    mu, s = -0.2, 0.5
    g = torch.Generator().manual_seed(3)
    out = ddpm_sample(gaussian_eps_fn(diffusion, mu, s, learned_variance=True), noise((500, 1, 4, 4)), diffusion,
                      steps=steps, generator=g)
    assert out.mean().item() == pytest.approx(mu, abs=0.03)
    assert out.std().item() == pytest.approx(s, rel=0.1)


def test_ddpm_uses_the_learned_variance(diffusion):
    # v = +1 (β) vs v = -1 (β̃) must change the result; eps-only output equals v = -1 (fixed small)
    ac = torch.from_numpy(diffusion.alphas_cumprod)

    def with_v(v):
        def eps_fn(x, t):
            a = ac[t].float().view(-1, 1, 1, 1)
            eps = (1 - a).sqrt() * x
            return eps if v is None else torch.cat([eps, torch.full_like(eps, v)], 1)
        return eps_fn

    runs = {v: ddpm_sample(with_v(v), noise((2, 1, 4, 4)), diffusion, steps=20, generator=torch.Generator().manual_seed(0))
            for v in (None, -1.0, 1.0)}
    torch.testing.assert_close(runs[None], runs[-1.0])
    assert (runs[1.0] - runs[-1.0]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ guidance hook

@pytest.mark.parametrize("sampler,kwargs", [(ddim_sample, dict(steps=20, eta=0.0)), (ddim_sample, dict(steps=20, eta=1.0)),
                                            (ddpm_sample, dict(steps=20))])
def test_no_hook_and_unchanged_hook_are_bit_identical(diffusion, sampler, kwargs):
    eps_fn = gaussian_eps_fn(diffusion, 0.1, 0.4, learned_variance=True)
    x_T = noise((3, 2, 4, 4))
    seen = []

    def unchanged(x0, t, i):
        seen.append((t, i))
        return x0

    plain = sampler(eps_fn, x_T, diffusion, generator=torch.Generator().manual_seed(5), **kwargs)
    hooked = sampler(eps_fn, x_T, diffusion, generator=torch.Generator().manual_seed(5), x0_hook=unchanged,
                     callback=lambda d: None, **kwargs)
    assert torch.equal(plain, hooked)
    assert [i for _, i in seen] == list(range(20))
    assert seen[0][0].dtype == torch.long and seen[0][0].shape == (3,) and int(seen[0][0][0]) == 950


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_hook_moves_the_sample_in_its_direction(diffusion, sampler):
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5)
    x_T = noise((64, 1, 4, 4))
    kw = dict(steps=20, generator=torch.Generator().manual_seed(0))
    plain = sampler(eps_fn, x_T, diffusion, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    pushed = sampler(eps_fn, x_T, diffusion, x0_hook=lambda x0, t, i: x0 + 0.2, **kw)
    assert (pushed - plain).mean().item() > 0.1
    kw["generator"] = torch.Generator().manual_seed(0)
    pulled = sampler(eps_fn, x_T, diffusion, x0_hook=lambda x0, t, i: x0 - 0.2, **kw)
    assert (pulled - plain).mean().item() < -0.1


def test_hook_sees_tweedie_estimate_and_changes_eps(diffusion):
    # the hook's x̂0 is the Tweedie estimate; a hook pinning x̂0 to a constant makes DDIM land there exactly
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5)
    target = torch.full((2, 1, 4, 4), 0.75)
    out = ddim_sample(eps_fn, noise((2, 1, 4, 4)), diffusion, steps=10, x0_hook=lambda x0, t, i: target)
    torch.testing.assert_close(out, target)


# ------------------------------------------------------------------------------------------ masks and img2img

@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_mask_keeps_the_reference_outside_the_mask(diffusion, sampler):
    x_ref = noise((2, 3, 8, 8), seed=7).clamp(-1, 1)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0                                   # generate the left half, keep the right half
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5)
    xs = []
    out = sampler(eps_fn, noise((2, 3, 8, 8)), diffusion, steps=20, mask=mask, x_ref=x_ref,
                  generator=torch.Generator().manual_seed(1), callback=lambda d: xs.append(d["x"]))
    assert torch.equal(out[..., 4:], x_ref[..., 4:])
    assert (out[..., :4] - x_ref[..., :4]).abs().mean() > 0.1
    as_bool = sampler(eps_fn, noise((2, 3, 8, 8)), diffusion, steps=20, mask=mask.bool(), x_ref=x_ref,
                      generator=torch.Generator().manual_seed(1))
    assert torch.equal(as_bool, out)
    # midway the keep region is the reference noised to the current t (correlated with x_ref, not pure noise)
    mid = xs[15][..., 4:]
    assert torch.corrcoef(torch.stack([mid.flatten(), x_ref[..., 4:].flatten()]))[0, 1] > 0.5


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_img2img_starts_from_noised_init_at_t_start(diffusion, sampler):
    log = []
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5, log=log)
    x_init = torch.full((1, 1, 4, 4), 0.5)
    x_T = noise((1, 1, 4, 4))
    sampler(eps_fn, x_T, diffusion, steps=50, t_start=300, x_init=x_init)
    ts = [int(t[0]) for _, t in log]
    assert ts == list(range(300, -1, -20))
    torch.testing.assert_close(log[0][0], diffusion.q_sample(x_init, torch.tensor([300]), x_T))


# ------------------------------------------------------------------------------------------ callback / cancel

class Cancelled(Exception):
    pass


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_callback_reports_steps_and_can_cancel(diffusion, sampler):
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5)
    x_T = noise((2, 1, 4, 4))
    calls = []

    def cancel_at_3(d):
        calls.append(d)
        if d["i"] == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        sampler(eps_fn, x_T, diffusion, steps=10, callback=cancel_at_3, generator=torch.Generator().manual_seed(0))
    assert [d["i"] for d in calls] == [0, 1, 2, 3]
    assert set(calls[0]) == {"i", "t", "x", "denoised", "total"} and calls[0]["total"] == 10 and calls[0]["t"] == 900
    assert torch.is_grad_enabled()                      # the no_grad context was left cleanly
    a = sampler(eps_fn, x_T, diffusion, steps=10, generator=torch.Generator().manual_seed(0))
    b = sampler(eps_fn, x_T, diffusion, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)                            # no state left behind by the cancelled run


# ------------------------------------------------------------------------------------------ input errors

def test_sampler_input_errors(diffusion):
    eps_fn = gaussian_eps_fn(diffusion, 0.0, 0.5)
    x = torch.zeros(1, 1, 4, 4)
    cases = [
        (dict(steps=0), "steps"),
        (dict(spacing="nope"), "spacing"),
        (dict(eta=-1.0), "eta"),
        (dict(mask=torch.ones_like(x)), "both"),
        (dict(mask=torch.ones(1, 1, 3, 3), x_ref=x), "broadcast"),
        (dict(mask=torch.ones_like(x), x_ref=torch.zeros(1, 1, 4, 5)), "x_ref shape"),
        (dict(t_start=100), "x_init"),
        (dict(t_start=5000, x_init=x), "t_start"),
        (dict(t_start=5, x_init=x, spacing="trailing", steps=10), "below"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            ddim_sample(eps_fn, x, diffusion, **kwargs)
    with pytest.raises(InputError, match="channels"):
        ddim_sample(lambda x, t: torch.zeros(1, 3, 4, 4), x, diffusion, steps=2)
    with pytest.raises(InputError, match="GaussianDiffusion"):
        ddpm_sample(eps_fn, x, linear_betas(), steps=2)


def test_final_timestep_spaces_the_steps_above_it_and_returns_its_x0():
    """final_timestep (RePoseConfig.final_timestep): `steps` model calls over final_timestep..T−1, and the result is
    the last call's x̂0 (what the callback reports as denoised)."""
    from repose_core.diffusion import GaussianDiffusion, ddim_sample, linear_betas, spaced_timesteps
    from repose_core.errors import InputError

    d = GaussianDiffusion(linear_betas(1000))
    ts = spaced_timesteps(1000, 20, "pidm", final_timestep=400)
    assert ts[0] == 400 and ts[-1] < 1000 and len(ts) == 20 and ts == sorted(ts)
    assert spaced_timesteps(1000, 20, "pidm", 0) == spaced_timesteps(1000, 20, "pidm")
    seen = []

    def eps_fn(x, t):  # any deterministic function of (x, t)
        return torch.tanh(x) * 0.5 + t.float().view(-1, 1, 1, 1) / 2000

    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 8, 6, generator=g)
    out = ddim_sample(eps_fn, x_T, d, steps=20, eta=1.0, generator=g, final_timestep=400,
                      callback=lambda info: seen.append((info["t"], info["denoised"].clone())))
    assert [t for t, _ in seen] == ts[::-1]
    torch.testing.assert_close(out, seen[-1][1])
    with pytest.raises(InputError, match="final_timestep"):
        spaced_timesteps(1000, 20, "pidm", final_timestep=1000)
