"""Tests of refdiff.losses against SciPy integrals, Monte Carlo and independent formulas."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.stats import norm

from refdiff.analytic import GaussianMixture
from refdiff.losses import bits_per_dim, discretized_gaussian_log_likelihood, dsm_loss, eps_mse, normal_kl, vlb_terms
from refdiff.schedules import DiscreteSchedule, linear_betas, rescale_zero_terminal_snr
from refdiff.sde import VPSDE


@given(
    st.floats(-5, 5), st.floats(-6, 3), st.floats(-5, 5), st.floats(-6, 3),
)
def test_normal_kl_matches_integral(m1, lv1, m2, lv2):
    v1, v2 = math.exp(lv1), math.exp(lv2)
    s = math.sqrt(v1)

    def integrand(x):
        return norm.pdf(x, m1, s) * (norm.logpdf(x, m1, s) - norm.logpdf(x, m2, math.sqrt(v2)))

    ref, _ = quad(integrand, m1 - 30 * s, m1 + 30 * s, epsabs=1e-13, epsrel=1e-11, limit=200, points=[m1])
    got = float(normal_kl(m1, lv1, m2, lv2))
    assert got >= 0
    assert abs(got - ref) <= 1e-8 * max(1.0, abs(ref))


def test_normal_kl_zero_for_equal_and_broadcasts():
    m = np.linspace(-2, 2, 5)[:, None]
    lv = np.log(np.linspace(0.1, 3, 3))[None, :]
    out = normal_kl(m, lv, m, lv)
    assert out.shape == (5, 3)
    assert np.all(out == 0.0)


@pytest.mark.parametrize("n_bits", [1, 3, 8])
@pytest.mark.parametrize("mean, scale", [(0.2, 0.3), (-0.9, 0.01), (0.0, 5.0), (0.999, 1e-4)])
def test_discretized_likelihood_is_normalised_and_matches_cdf(n_bits, mean, scale):
    levels = np.linspace(-1.0, 1.0, 2**n_bits)
    ll = discretized_gaussian_log_likelihood(levels, np.full_like(levels, mean), np.full_like(levels, math.log(scale)), n_bits)
    assert np.all(np.isfinite(ll)) or np.all(np.exp(ll[np.isfinite(ll)]) >= 0)
    np.testing.assert_allclose(np.exp(ll).sum(), 1.0, rtol=1e-12)
    d = 1.0 / (2**n_bits - 1)
    upper = np.where(levels >= 1, np.inf, levels + d)
    lower = np.where(levels <= -1, -np.inf, levels - d)
    # difference of CDFs below the mean, of survival functions above it, so the reference does not cancel
    mass = np.where(
        levels > mean,
        norm.sf(lower, mean, scale) - norm.sf(upper, mean, scale),
        norm.cdf(upper, mean, scale) - norm.cdf(lower, mean, scale),
    )
    ok = mass > 1e-12
    np.testing.assert_allclose(np.exp(ll[ok]), mass[ok], rtol=1e-8)


def test_discretized_likelihood_tail_bins_stay_finite():
    """A bin 40 standard deviations out has mass ~1e-350: log-space keeps it finite and correct."""
    x = np.array([0.0, 0.4])
    ll = discretized_gaussian_log_likelihood(x, np.array([-0.8, 0.8]), np.log(np.array([0.02, 0.01])))
    assert np.all(np.isfinite(ll))
    # asymptotics of the normal tail: log(phi(z)/z) for the far edge dominates
    z_near = (0.0 - 1 / 255 + 0.8) / 0.02
    assert abs(ll[0] - (norm.logsf(z_near) + np.log1p(-np.exp(norm.logsf((0.0 + 1 / 255 + 0.8) / 0.02) - norm.logsf(z_near))))) < 1e-9


def test_discretized_likelihood_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(np.array([1.5]), np.array([0.0]), np.array([0.0]))


def test_eps_mse_reductions():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 3))
    np.testing.assert_allclose(eps_mse(a, b), ((a - b) ** 2).reshape(4, -1).mean(1), rtol=1e-14)
    np.testing.assert_allclose(eps_mse(a, b, reduce="sum"), ((a - b) ** 2).reshape(4, -1).sum(1), rtol=1e-14)
    with pytest.raises(ValueError, match="reduce"):
        eps_mse(a, b, reduce="max")
    with pytest.raises(ValueError, match="shape"):
        eps_mse(a, b[:2])


def test_dsm_expected_loss_is_minimised_by_the_true_score():
    """Monte Carlo: E[DSM(s* + d h)] - E[DSM(s*)] = d^2 E||h||^2 (no linear term) for the exact score s*."""
    gm = GaussianMixture(np.array([0.4, 0.6]), np.array([[-1.0, 0.0], [1.0, 0.5]]), np.array([0.2, 0.3]))
    process = VPSDE()
    n = 200_000
    rng = np.random.default_rng(1)
    x0 = gm.sample(n, rng=rng)
    t = rng.uniform(0.05, 1.0, size=n)
    noise = rng.standard_normal(x0.shape)
    exact = lambda x, tt: gm.score(x, process, tt)
    h = lambda x, tt: np.sin(x) + 0.3  # any fixed perturbation direction
    base = dsm_loss(exact, x0, process, t, noise=noise)
    d = 0.05
    plus = dsm_loss(lambda x, tt: exact(x, tt) + d * h(x, tt), x0, process, t, noise=noise)
    minus = dsm_loss(lambda x, tt: exact(x, tt) - d * h(x, tt), x0, process, t, noise=noise)
    # the linear term (plus - minus) / (4 d) = E[lambda <s* - target, h>] must vanish: z-test at 5 sigma
    lin = (plus - minus) / (4 * d)
    assert abs(lin.mean()) < 5 * lin.std() / math.sqrt(n)
    # and the perturbed losses exceed the exact one on average by the quadratic term
    x_t = process.sample_marginal(x0, t, noise=noise)
    quad_term = d**2 * (process.variance(t) * (h(x_t, t) ** 2).sum(1))
    np.testing.assert_allclose(((plus + minus) / 2 - base).mean(), quad_term.mean(), rtol=1e-10)


def test_dsm_weightings_and_errors():
    process = VPSDE()
    x0 = np.ones((3, 2))
    t = np.array([0.1, 0.5, 0.9])
    noise = np.full((3, 2), 0.5)
    model = lambda x, tt: -x
    x_t = process.sample_marginal(x0, t, noise=noise)
    resid = (-x_t + noise / process.std(t)[:, None]) ** 2
    np.testing.assert_allclose(dsm_loss(model, x0, process, t, "none", noise=noise), resid.sum(1), rtol=1e-14)
    np.testing.assert_allclose(dsm_loss(model, x0, process, t, "sigma2", noise=noise), process.variance(t) * resid.sum(1), rtol=1e-14)
    np.testing.assert_allclose(dsm_loss(model, x0, process, t, "likelihood", noise=noise), process.beta(t) * resid.sum(1), rtol=1e-14)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(model, x0, process, t, "snr")
    with pytest.raises(ValueError, match="continuous SDE"):
        dsm_loss(model, x0, DiscreteSchedule(linear_betas(10)), np.array([1, 2, 3]), "likelihood")
    with pytest.raises(ValueError, match="sigma_t > 0"):
        dsm_loss(model, x0, process, 0.0)


def _exact_eps_model(gm, sch):
    return lambda x, t: gm.eps(x, sch, t)


def test_vlb_terms_shapes_and_prior():
    sch = DiscreteSchedule(linear_betas(10, 0.01, 0.3))
    gm = GaussianMixture(np.array([1.0]), np.array([[0.0, 0.0]]), np.array([0.05]))
    x0 = np.clip(np.round((gm.sample(50, rng=0) + 1) * 127.5) / 127.5 - 1, -1, 1)
    v = vlb_terms(_exact_eps_model(gm, sch), sch, x0, rng=1)
    assert v.terms.shape == (50, 10) and v.prior.shape == (50,)
    ab = sch.alpha_bar[-1]
    expected_prior = 0.5 * (2 * (-ab - math.log1p(-ab)) + ab * (x0**2).sum(1))
    np.testing.assert_allclose(v.prior, expected_prior, rtol=1e-12)
    np.testing.assert_allclose(v.total, v.prior + v.terms.sum(1), rtol=1e-14)
    assert np.all(v.terms[:, 1:] >= 0)


def test_vlb_perfect_model_for_point_mass_data_has_zero_kl_terms():
    """With x0 fixed and the exact eps, p_theta(x_{t-1}|x_t) = q(x_{t-1}|x_t,x0): every L_{t-1}, t >= 2, is 0."""
    sch = DiscreteSchedule(linear_betas(20, 1e-3, 0.2))
    c = np.array([[0.25, -0.5]])
    model = lambda x, t: (x - sch.sqrt_alpha_bar[t][:, None] * c) / sch.sqrt_one_minus_alpha_bar[t][:, None]
    v = vlb_terms(model, sch, np.repeat(c, 4, 0), rng=2)
    np.testing.assert_allclose(v.terms[:, 1:], 0.0, atol=1e-9)


def test_vlb_rejects_bad_arguments():
    sch = DiscreteSchedule(linear_betas(5))
    x0 = np.zeros((2, 1))
    with pytest.raises(ValueError, match="variance"):
        vlb_terms(lambda x, t: x, sch, x0, variance="learned")
    with pytest.raises(ValueError, match="decoder"):
        vlb_terms(lambda x, t: x, sch, x0, decoder="logistic")
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        vlb_terms(lambda x, t: x, VPSDE(), x0)
    zero = DiscreteSchedule(rescale_zero_terminal_snr(linear_betas(5)))
    with pytest.raises(ValueError, match="zero SNR"):
        vlb_terms(lambda x, t: x, zero, x0)


def test_bits_per_dim():
    assert bits_per_dim(math.log(2) * 6, 3) == pytest.approx(2.0, rel=1e-15)
    # 8-bit data scaled to [-1, 1], uniformly dequantised: bin width 2/256 adds log2(128) = 7 bits
    assert bits_per_dim(0.0, 5, bin_width=2 / 256) == pytest.approx(7.0, rel=1e-14)
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="bin_width"):
        bits_per_dim(1.0, 2, bin_width=-1.0)


def test_losses_refuse_non_finite_input_by_name():
    vp, ok, a = VPSDE(), np.zeros((3, 2)), np.full((3, 2), np.nan)
    with pytest.raises(ValueError, match="eps_pred must be finite"):
        eps_mse(a, ok)
    with pytest.raises(ValueError, match="x0 must be finite"):
        dsm_loss(lambda x, t: x, a, vp, 0.5, rng=0)
    with pytest.raises(ValueError, match="the score model's output must be finite"):
        dsm_loss(lambda x, t: x * np.nan, ok, vp, 0.5, rng=0)
    for args, name in (((a, ok, ok, ok), "mean1"), ((ok, 0.0, ok, float("inf")), "logvar2")):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            normal_kl(*args)
    with pytest.raises(ValueError, match="n_bits must be an int in 1..24"):
        discretized_gaussian_log_likelihood(np.zeros(2), 0.0, 0.0, n_bits=0)


def test_normal_kl_from_a_point_mass_is_infinite():
    """A log-variance of -inf (q_posterior's at s = 0) is a point mass, not bad input: KL = +inf."""
    assert normal_kl(0.0, -math.inf, 0.0, 0.0) == math.inf
    assert np.all(normal_kl(np.zeros(2), np.full(2, -np.inf), np.zeros(2), np.zeros(2)) == np.inf)
    with pytest.raises(ValueError, match="mean1 must be finite, got NaN or an infinity"):
        normal_kl(-np.inf, 0.0, 0.0, 0.0)


def test_normal_kl_keeps_float32_with_python_numbers():
    """Python numbers once became float64 arrays and promoted a float32 result to float64."""
    m = np.array([0.5, -1.0], np.float32)
    kl = normal_kl(m, 0.0, 0.0, np.zeros(2, np.float32))
    assert kl.dtype == np.float32
    np.testing.assert_allclose(kl, 0.5 * m.astype(np.float64) ** 2, rtol=1e-6)
    assert normal_kl(0.0, 0.0, 1.0, 0.0) == 0.5 and normal_kl(0.0, 0.0, 1.0, 0.0).dtype == np.float64


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_vlb_terms_written_out_for_the_first_two_steps(variance):
    """L_0 (both decoders) and L_1 of the bound, each from its formula on the bound's own draws: L_0 =
    -sum log of the bin mass of x0 under N(mu, s^2) (open end bins), or the Gaussian density; L_1 = KL(q(x_1|
    x_2, x_0) || N(mu, sigma^2)) with sigma^2 = beta_2 or beta-tilde_2 (Ho et al. eq. 5, 13)."""
    from refdiff.forward import posterior_mean_from_eps, q_posterior, q_sample

    sch = DiscreteSchedule(linear_betas(6, 1e-2, 0.2))
    x0 = (2.0 * np.array([[0, 17, 128], [255, 90, 201]]) / 255 - 1.0)  # 8-bit levels, both end bins among them
    eps_model = lambda x, t: 0.3 * x - 0.1  # noqa: E731  (any model: the terms hold for each)
    z = np.random.default_rng(4).standard_normal((2,) + x0.shape)  # the bound draws x_1 then x_2 from its rng
    x1, x2 = (q_sample(sch, x0, np.full(2, t), z[t - 1]) for t in (1, 2))
    mu1 = posterior_mean_from_eps(sch, x1, eps_model(x1, sch.model_steps[np.full(2, 1)]), np.full(2, 1))
    log_var1 = sch.posterior_log_variance[1] if variance == "beta_tilde" else np.log(sch.betas[1])
    s, d = np.exp(0.5 * log_var1), 1 / 255
    upper = np.where(x0 >= 1.0, 1.0, norm.cdf((x0 + d - mu1) / s))
    lower = np.where(x0 <= -1.0, 0.0, norm.cdf((x0 - d - mu1) / s))
    for decoder, L0 in (("discretized", -np.log(upper - lower).sum(1)),
                        ("gaussian", -norm.logpdf(x0, mu1, s).sum(1))):
        v = vlb_terms(eps_model, sch, x0, rng=4, variance=variance, decoder=decoder)
        np.testing.assert_allclose(v.terms[:, 0], L0, rtol=1e-9, err_msg=decoder)
    mu2 = posterior_mean_from_eps(sch, x2, eps_model(x2, sch.model_steps[np.full(2, 2)]), np.full(2, 2))
    var2 = np.exp(sch.posterior_log_variance[2]) if variance == "beta_tilde" else sch.betas[2]
    q_mean, _, q_log_var = q_posterior(sch, x2, x0, np.full(2, 2))
    q_var = np.exp(q_log_var)
    kl = 0.5 * (np.log(var2 / q_var) + (q_var + (q_mean - mu2) ** 2) / var2 - 1.0)
    np.testing.assert_allclose(v.terms[:, 1], kl.sum(1), rtol=1e-9)


def test_normal_kl_to_a_point_mass():
    """KL to a point mass (logvar2 = -inf, accepted) is +inf, and 0 from the same point mass: the formula's
    e^d - 1 - d was inf - inf there, NaN."""
    inf = math.inf
    assert normal_kl(0.0, 0.0, 0.0, -inf) == inf
    assert normal_kl(0.0, -inf, 0.0, -inf) == 0.0 and normal_kl(0.0, -inf, 1.0, -inf) == inf
    got = normal_kl(np.array([0.0, 1.0, 2.0, 1.0]), np.array([-inf, -inf, 0.0, 0.5]), 1.0, np.array([-inf, -inf, -inf, 0.0]))
    np.testing.assert_array_equal(got[:3], [inf, 0.0, inf])
    assert got[3] == pytest.approx(0.5 * math.expm1(0.5) - 0.25)  # the formula where logvar2 is finite
    f32 = normal_kl(np.zeros(2, np.float32), np.array([-inf, 0.0], np.float32), 0.0, -inf)
    assert f32.dtype == np.float32 and list(f32) == [0.0, inf]


def test_float32_stays_float32_where_log_variances_are_python_numbers():
    """exp of a Python number was NumPy's float64 scalar, which promotes a float32 array (NumPy 2); vlb_terms'
    prior and total came out float64 for float32 data, its terms float32."""
    a = np.full(3, 0.5, np.float32)
    for args in ((a, a, 0.0, 0.0), (a, 0.0, 0.0, 0.0), (a, 0.3, a, -0.2)):
        assert normal_kl(*args).dtype == np.float32
    r = vlb_terms(lambda x, t: np.zeros_like(x), DiscreteSchedule(linear_betas(10)), np.zeros((2, 3), np.float32), rng=0)
    assert r.prior.dtype == r.terms.dtype == r.total.dtype == np.float32


def test_bits_per_dim_and_decoder_check_their_arguments():
    with pytest.raises(ValueError, match="dims must be a positive int"):
        bits_per_dim(np.array([10.0]), True)
    with pytest.raises(ValueError, match="nll must not be NaN"):
        bits_per_dim(np.array([1.0, np.nan]), 3)
    assert bits_per_dim(np.array([np.inf]), 3)[0] == np.inf  # an impossible example
    with pytest.raises(ValueError, match="mean must be finite"):
        discretized_gaussian_log_likelihood(np.array([0.5]), np.nan, 0.0)
    with pytest.raises(ValueError, match="log_scale must be finite"):
        discretized_gaussian_log_likelihood(np.array([0.5]), 0.0, np.array([np.inf]))
    with pytest.raises(ValueError, match=r"mean of shape \(3,\) does not broadcast against x of shape \(2,\)"):
        discretized_gaussian_log_likelihood(np.array([0.5, 0.2]), np.zeros(3), 0.0)
