"""Schedule and samplers against hand-computed values and exact limits."""
import math

import numpy as np
import pytest

from cbldm.runtime.sampling import (SamplerConfig, Schedule, ddim_step, ddpm_step, denoise,
                                    full_ddpm_sample, skip_step_sample)

S = Schedule()


def test_cosine_schedule_values():
    f = lambda t: math.cos(((t / 1000) + 5e-4) / (1 + 5e-4) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 500, 998):
        assert S.abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert np.all(np.diff(S.abar) < 0) and S.betas.max() <= 0.999
    assert S.abar[999] < 1e-6 and S.abar_at(-1) == 1.0


def _ideal(x0_star):
    """The optimal noise predictor when the data is one point x0*."""
    def eps_fn(x, t, ctx):
        a = S.abar[t].reshape(-1, 1, 1, 1)
        return (x - np.sqrt(a) * x0_star) / np.sqrt(1 - a)
    return eps_fn


X0 = np.random.default_rng(0).normal(size=(3, 1, 16, 16))


def test_ddim_with_ideal_denoiser_lands_on_the_data():
    rng = np.random.default_rng(1)
    x = denoise(S, _ideal(X0), rng.normal(size=X0.shape), None, 999, -1, 7, "ddim")
    np.testing.assert_allclose(x, X0, atol=1e-8)


def test_full_ddpm_with_ideal_denoiser_lands_on_the_data():
    x = full_ddpm_sample(S, _ideal(X0), None, X0.shape, np.random.default_rng(2))
    np.testing.assert_allclose(x, X0, atol=1e-6)


def test_ddpm_noise_is_the_posterior_standard_deviation():
    t = 600
    x = np.zeros((20000, 1, 1, 1))
    out = ddpm_step(S, x, np.zeros_like(x), t, np.random.default_rng(3))
    var = S.betas[t] * (1 - S.abar[t - 1]) / (1 - S.abar[t])
    assert out.std() == pytest.approx(math.sqrt(var), rel=0.02)  # sqrt(beta~), not beta


def test_ddim_step_hand_computed():
    x, eps = np.array([[0.3]]), np.array([[-0.2]])
    a_t, a_p = S.abar[700], S.abar[400]
    x0 = (0.3 - math.sqrt(1 - a_t) * -0.2) / math.sqrt(a_t)
    want = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * -0.2
    assert ddim_step(S, x, eps, 700, 400)[0, 0] == pytest.approx(want, rel=1e-12)


def test_skip_step_jump_equation():
    """With a zero noise predictor phase 1 is x_t1 = x_T * sqrt(1-abar_t1)/..., check Eq. 8."""
    calls = []

    def eps_fn(x, t, ctx):
        calls.append(int(t[0]))
        return np.zeros_like(x)

    cfg = SamplerConfig(t1=900, t2=800, steps_before=5, steps_after=4)
    rng = np.random.default_rng(4)
    mu, lv = np.full((1, 1, 2, 2), 0.7), np.full((1, 1, 2, 2), -50.0)
    x_T = np.full((1, 1, 2, 2), 1.5)
    # replay phase 1 by hand (DDIM, eps = 0): x <- sqrt(a_prev / a_t) x
    x = x_T.copy()
    ts = [999, 979, 959, 940, 920]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else 900
        x = math.sqrt(S.abar[t_prev] / S.abar[t]) * x
    u = math.sqrt(1 - S.abar[800]) / math.sqrt(1 - S.abar[900])
    a = math.sqrt(S.abar[800]) - math.sqrt(S.abar[900]) * u
    x_t2 = a * 0.7 + u * x
    want = x_t2 / math.sqrt(S.abar[800])  # eps = 0: DDIM's x0 estimate is x / sqrt(abar)
    out = skip_step_sample(S, eps_fn, None, mu, lv, cfg, rng, x_T=x_T, prior_noise=np.zeros_like(mu))
    np.testing.assert_allclose(out, want, rtol=1e-10)
    assert calls[:5] == ts and len(calls) == 9 and calls[5] == 800


def test_skip_step_with_ideal_denoiser_and_exact_prior():
    cfg = SamplerConfig(t1=900, t2=500, steps_before=3, steps_after=6)
    out = skip_step_sample(S, _ideal(X0), None, X0, np.full(X0.shape, -60.0), cfg, np.random.default_rng(5))
    np.testing.assert_allclose(out, X0, atol=1e-8)


def test_limits_prior_only_and_plain_ldm():
    rng = np.random.default_rng(6)
    mu, lv = np.ones((2, 1, 4, 4)), np.full((2, 1, 4, 4), math.log(0.25))
    noise = rng.normal(size=mu.shape)
    prior_only = skip_step_sample(S, None, None, mu, lv, SamplerConfig(t1=None), rng, prior_noise=noise)
    np.testing.assert_allclose(prior_only, 1 + 0.5 * noise)
    # t1 == t2: the prior is ignored, the result equals plain DDIM through t1
    eps_fn = lambda x, t, c: 0.1 * x  # noqa: E731
    x_T = rng.normal(size=mu.shape)
    plain = skip_step_sample(S, eps_fn, None, mu * 100, lv, SamplerConfig(t1=700, t2=700, steps_before=4,
                                                                            steps_after=5), rng, x_T=x_T)
    ref = denoise(S, eps_fn, x_T, None, 999, 700, 4)
    ref = denoise(S, eps_fn, ref, None, 700, -1, 5)
    np.testing.assert_allclose(plain, ref, rtol=1e-12)


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="t2 <= t1"):
        skip_step_sample(S, None, None, np.zeros((1, 1)), np.zeros((1, 1)),
                         SamplerConfig(t1=100, t2=200), np.random.default_rng())


def test_x0_clip_bounds_the_first_step_and_leaves_an_ideal_denoiser_alone():
    """abar(999) ~ 5e-9: an eps error of 0.01 becomes an x0 error of ~1e2 in the first DDIM
    step (a real U-Net then sees inputs unlike any it was trained on; measured: latents
    thousands of standard deviations off). Clipping x0 to the latents' range bounds it, and
    an ideal denoiser whose data lies inside the range is untouched."""
    ideal = _ideal(X0)
    delta = 0.01 * np.random.default_rng(5).normal(size=X0.shape)

    def off(x, t, ctx):
        return ideal(x, t, ctx) + delta

    x_T = np.random.default_rng(3).normal(size=X0.shape)
    t, t_prev = 999, 899
    target = math.sqrt(S.abar[t_prev]) * X0 + math.sqrt(1 - S.abar[t_prev]) * ideal(x_T, np.array([t]), None)
    wild = ddim_step(S, x_T, off(x_T, np.array([t]), None), t, t_prev)
    tame = ddim_step(S, x_T, off(x_T, np.array([t]), None), t, t_prev, clip=4.0)
    bound = math.sqrt(S.abar[t_prev]) * (4.0 + np.abs(X0).max()) + 0.05
    assert np.abs(wild - target).max() > 5.0
    assert np.abs(tame - target).max() < bound
    clip = float(np.abs(X0).max()) + 1e-9
    exact = denoise(S, ideal, x_T, None, 999, -1, 10, "ddim", clip=clip)
    np.testing.assert_allclose(exact, X0, atol=1e-8)
    cfg = SamplerConfig(t1=999, t2=999, steps_before=0, steps_after=1000, kind="ddpm", clip=clip)
    ddpm = skip_step_sample(S, ideal, None, X0, np.full(X0.shape, -30.0), cfg, np.random.default_rng(4))
    np.testing.assert_allclose(ddpm, X0, atol=1e-6)


def test_schedule_rebuilds_from_what_a_manifest_records():
    assert Schedule.from_dict(Schedule().as_dict()) == Schedule()
    np.testing.assert_array_equal(Schedule.from_dict({"T": 50, "s": 0.01, "kind": "cosine"}).abar,
                                  Schedule(T=50, s=0.01).abar)
    for bad, match in [({"T": 1000, "s": 5e-4}, "lacks kind"),
                       ({"T": 1000, "s": 5e-4, "kind": "linear"}, "'linear' is not implemented"),
                       ({"T": 1000.0, "s": 5e-4, "kind": "cosine"}, "integer"),
                       ({"T": 1000, "s": 5e-4, "kind": "cosine", "beta_end": 0.02}, "does not know: beta_end")]:
        with pytest.raises(ValueError, match=match):
            Schedule.from_dict(bad)
