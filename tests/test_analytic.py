"""Tests of refdiff.analytic against independent computations (SciPy densities, finite differences, Monte Carlo)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from refdiff.analytic import EmpiricalData, Gaussian, GaussianMixture
from refdiff.schedules import DiscreteSchedule, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas
from refdiff.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

KINDS = ("full", "diagonal", "isotropic")


def make_mixture(kind, K=4, D=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    full = A @ A.transpose(0, 2, 1) + 0.2 * np.eye(D)
    covs = {"full": full, "diagonal": np.diagonal(full, axis1=1, axis2=2).copy(), "isotropic": full[:, 0, 0].copy()}[kind]
    w = rng.random(K) + 0.1
    return GaussianMixture(w / w.sum(), 2.0 * rng.standard_normal((K, D)), covs)


def scipy_log_prob(gm, x):
    """log p(x) from SciPy's Gaussian densities (Cholesky-based), independent of refdiff."""
    covs = gm.full_covs()
    terms = [np.log(gm.weights[k]) + np.atleast_1d(multivariate_normal(gm.means[k], covs[k]).logpdf(x)) for k in range(gm.n_components)]
    return logsumexp(np.stack(terms), axis=0)


def fd_grad(f, x, h=1e-5):
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], axis=1)


PROCESSES = {
    "linear": DiscreteSchedule(linear_betas(1000)),
    "zero-snr": DiscreteSchedule(rescale_zero_terminal_snr(scaled_linear_betas(1000))),
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "cosine": CosineVPSDE(),
    "ve": VESDE(),
}


def times_for(process, n, rng, lo=0.02):
    if isinstance(process, DiscreteSchedule):
        return rng.integers(1, process.T + 1, size=n)
    return rng.uniform(lo, process.t_max, size=n)


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_matches_scipy(kind):
    gm = make_mixture(kind)
    x = np.random.default_rng(1).standard_normal((20, 3)) * 3
    np.testing.assert_allclose(gm.log_prob(x), scipy_log_prob(gm, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_finite_differences(kind):
    gm = make_mixture(kind)
    x = np.random.default_rng(2).standard_normal((20, 3)) * 2
    np.testing.assert_allclose(gm.score(x), fd_grad(gm.log_prob, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("kind", KINDS)
def test_per_example_times_match_diffuse(kind, name):
    """Per-example evaluation (eigenbasis) equals scalar-t evaluation of the diffused mixture (re-factorised)."""
    process = PROCESSES[name]
    gm = make_mixture(kind)
    rng = np.random.default_rng(3)
    t = times_for(process, 6, rng)
    x = rng.standard_normal((6, 3)) * 2
    for i, ti in enumerate(t):
        dm = gm.diffuse(process, ti)
        np.testing.assert_allclose(gm.log_prob(x, process, t)[i], scipy_log_prob(dm, x[i : i + 1])[0], rtol=1e-10)
        np.testing.assert_allclose(gm.score(x, process, t)[i], dm.score(x[i : i + 1])[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gm.component_posterior(x, process, t)[i], dm.component_posterior(x[i : i + 1])[0], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "vp", "subvp", "ve"])
@pytest.mark.parametrize("kind", KINDS)
def test_denoiser_is_tweedie(kind, name):
    """E[x0|x_t] = (x_t + sigma^2 score) / gamma where gamma > 0 (Tweedie), computed independently."""
    process = PROCESSES[name]
    gm = make_mixture(kind)
    rng = np.random.default_rng(4)
    t = times_for(process, 16, rng, lo=0.05)
    x = rng.standard_normal((16, 3))
    gamma, var = process.mean_coef(t)[:, None], process.variance(t)[:, None]
    tweedie = (x + var * gm.score(x, process, t)) / gamma
    np.testing.assert_allclose(gm.denoise(x, process, t), tweedie, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gm.eps(x, process, t), (x - gamma * tweedie) / np.sqrt(var), rtol=1e-8, atol=1e-9)


def test_denoiser_at_zero_snr_is_data_mean():
    process = PROCESSES["zero-snr"]
    gm = make_mixture("full")
    x = np.random.default_rng(5).standard_normal((4, 3))
    np.testing.assert_allclose(gm.denoise(x, process, process.T), np.tile(gm.mean(), (4, 1)), rtol=1e-12)
    np.testing.assert_allclose(gm.component_posterior(x, process, process.T), np.tile(gm.weights, (4, 1)), rtol=1e-12)


def test_denoiser_monte_carlo():
    """E[x0 | x_t] estimated by binning joint samples agrees with the analytic denoiser (1-D, z-test)."""
    gm = GaussianMixture(np.array([0.3, 0.7]), np.array([[-1.0], [1.0]]), np.array([0.1, 0.2]))
    process = VPSDE()
    t = 0.4
    rng = np.random.default_rng(6)
    n = 400_000
    x0 = gm.sample(n, rng=rng)
    x_t = process.sample_marginal(x0, t, rng=rng)
    sel = np.abs(x_t[:, 0] - 0.25) < 0.005  # x0 given x_t in a narrow bin around 0.25
    est = x0[sel, 0].mean()
    se = x0[sel, 0].std() / math.sqrt(sel.sum())
    exact = gm.denoise(np.array([[0.25]]), process, t)[0, 0]
    assert abs(est - exact) < 5 * se + 2e-3  # bin width bias bounded by slope * 0.005 / ... (< 2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_moments(kind):
    """Sample mean and covariance match the mixture's: z-test at 5 sigma (false failure < 1e-5 over all entries)."""
    gm = make_mixture(kind, K=3, D=2)
    n = 200_000
    x = gm.sample(n, rng=7)
    cov = gm.covariance()
    z = (x.mean(0) - gm.mean()) / np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z) < 5), z
    # variance of each coordinate: se ~ sqrt((m4 - s^4) / n); use a generous 8% of bias-free bound via bootstrapped halves
    v1, v2 = x[: n // 2].var(0), x[n // 2 :].var(0)
    se = np.abs(v1 - v2) / math.sqrt(2) + 1e-12
    assert np.all(np.abs(x.var(0) - np.diag(cov)) < 6 * se + 0.01 * np.diag(cov))


def test_sample_component_frequencies():
    gm = make_mixture("isotropic", K=5)
    n = 100_000
    _, labels = gm.sample(n, rng=8, return_labels=True)
    freq = np.bincount(labels, minlength=5) / n
    se = np.sqrt(gm.weights * (1 - gm.weights) / n)
    assert np.all(np.abs(freq - gm.weights) < 5 * se)


def test_sample_is_batch_invariant():
    gm = make_mixture("full")
    big = gm.sample(1000, rng=9)
    small = gm.sample(10, rng=9)
    np.testing.assert_array_equal(big[:10], small)


def test_diffused_samples_match_diffuse():
    """Samples of x_t built from x0 samples have the moments of gm.diffuse(process, t)."""
    gm = make_mixture("full", K=2, D=2)
    process = VESDE(sigma_max=5.0)
    t = 0.6
    n = 200_000
    x_t = process.sample_marginal(gm.sample(n, rng=10), t, rng=11)
    dm = gm.diffuse(process, t)
    z = (x_t.mean(0) - dm.mean()) / np.sqrt(np.diag(dm.covariance()) / n)
    assert np.all(np.abs(z) < 5)


def test_zero_weight_components_are_ignored():
    gm = GaussianMixture(np.array([0.0, 1.0]), np.array([[5.0], [0.0]]), np.array([1.0, 1.0]))
    x = np.array([[0.3], [5.0]])
    single = GaussianMixture(np.array([1.0]), np.array([[0.0]]), np.array([1.0]))
    np.testing.assert_allclose(gm.log_prob(x), single.log_prob(x), rtol=1e-14)
    np.testing.assert_allclose(gm.component_posterior(x)[:, 0], 0.0)
    assert np.all(gm.sample(1000, rng=0) != 5.0)


def test_far_points_stay_finite():
    gm = make_mixture("diagonal")
    x = np.full((2, 3), 1e4)
    assert np.all(np.isfinite(gm.log_prob(x)))
    assert np.all(np.isfinite(gm.score(x)))
    np.testing.assert_allclose(gm.component_posterior(x).sum(1), 1.0)


def narrow_and_far(kind, D, variance=1e-30, far=1e9):
    """Equal weights on N(0, variance I) and N(far (1, .., 1), I), covariances of the given kind."""
    means = np.zeros((2, D))
    means[1] = far
    covs = {"isotropic": np.array([variance, 1.0]), "diagonal": np.array([[variance] * D, [1.0] * D]),
            "full": np.stack([variance * np.eye(D), np.eye(D)])}[kind]
    return GaussianMixture(np.array([0.5, 0.5]), means, covs)


@pytest.mark.parametrize("D", [1, 2, 6])
@pytest.mark.parametrize("kind", KINDS)
def test_zero_posterior_weight_adds_nothing_where_its_field_overflows(kind, D):
    """float32 points at and beside the mean 1e9 of the unit component: there the narrow one (variance 1e-30 at
    0) has posterior weight exactly 0, and its field C^{-1}(x - mu), about 1e39, overflows float32. 0 * inf made
    the score, the divergence, the Hessian-vector product and the denoiser NaN; the weight must add exactly 0."""
    gm = narrow_and_far(kind, D)
    x = np.array([[1e9] * D, [1e9 + 64] * D], dtype=np.float32)  # both exact in float32
    v = np.ones_like(x)
    with np.errstate(over="ignore"):  # the narrow component's field does overflow; nothing else may warn
        score, logp = gm.score(x, backend="numpy"), gm.log_prob(x, backend="numpy")
        div, hvp, x0 = gm.score_divergence(x), gm.score_hvp(x, v), gm.denoise(x, None, None)
    np.testing.assert_array_equal(score, np.array([[0.0] * D, [-64.0] * D], dtype=np.float32))
    np.testing.assert_array_equal(div, np.full(2, -D, dtype=np.float32))  # -tr C^{-1} of the unit component
    np.testing.assert_array_equal(hvp, -v)
    np.testing.assert_array_equal(x0, x)  # t = 0: E[x_0 | x] = x
    np.testing.assert_allclose(logp, math.log(0.5) - 0.5 * D * math.log(2 * math.pi) - np.array([0.0, 2048.0 * D]),
                               rtol=1e-6)


def test_tiny_posterior_weight_times_a_huge_field_still_counts():
    """Where the narrow component's posterior weight is tiny (2e-19) but not 0, its field (1e19) is a genuine
    share of the score (about -1.9 of it): it must stay, unlike the weights that are exactly 0."""
    gm = GaussianMixture(np.array([1e-15, 1.0 - 1e-15]), np.zeros((2, 1)), np.array([1e-36, 1.0]))
    x = np.array([[1e-17], [-1e-17]], dtype=np.float32)  # 10 standard deviations of the narrow component
    want = gm.score(x.astype(np.float64), backend="numpy")
    assert 1.0 < abs(want[0, 0]) < 10.0  # the case: the narrow component's share dominates
    np.testing.assert_allclose(gm.score(x, backend="numpy"), want, rtol=1e-4)
    np.testing.assert_allclose(gm.score_divergence(x), gm.score_divergence(x.astype(np.float64)), rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_in_float32_out(kind):
    gm = make_mixture(kind)
    x = np.random.default_rng(12).standard_normal((8, 3)).astype(np.float32)
    process = PROCESSES["linear"]
    for out in (gm.log_prob(x), gm.score(x), gm.denoise(x, process, 500), gm.eps(x, process, 1000), gm.component_posterior(x)):
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
    np.testing.assert_allclose(gm.score(x), gm.score(x.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_array_api_strict_matches_numpy():
    xps = pytest.importorskip("array_api_strict")
    gm = make_mixture("full")
    x = np.random.default_rng(13).standard_normal((8, 3))
    process = VPSDE()
    t = np.linspace(0.1, 0.9, 8)
    xs = xps.asarray(x)
    for a, b in (
        (gm.log_prob(xs), gm.log_prob(x)),
        (gm.score(xs, process, t), gm.score(x, process, t)),
        (gm.denoise(xs, process, t), gm.denoise(x, process, t)),
        (gm.component_posterior(xs), gm.component_posterior(x)),
    ):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-13, atol=1e-14)


@given(st.integers(1, 4), st.integers(1, 5), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_property_score_fd_any_shape(K, D, t, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    gm = GaussianMixture(np.full(K, 1.0 / K), rng.standard_normal((K, D)), A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D))
    x = rng.standard_normal((3, D))
    process = VPSDE()
    np.testing.assert_allclose(
        gm.score(x, process, t), fd_grad(lambda y: gm.log_prob(y, process, t), x), rtol=1e-5, atol=1e-6
    )


def test_gaussian_ode_solution_is_a_flow():
    g = Gaussian(np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 1.0]))
    x = np.random.default_rng(14).standard_normal((5, 3))
    process = VPSDE()
    mid = g.ode_solution(x, process, 1.0, 0.5)
    np.testing.assert_allclose(g.ode_solution(mid, process, 0.5, 0.01), g.ode_solution(x, process, 1.0, 0.01), rtol=1e-12)
    np.testing.assert_allclose(g.ode_solution(mid, process, 0.5, 1.0), x, rtol=1e-12, atol=1e-14)


def test_gaussian_ode_solution_names_the_time_out_of_range():
    g, x = Gaussian(np.zeros(1), np.ones(1)), np.zeros((2, 1))
    with pytest.raises(ValueError, match=r"t_to must lie in \[0, 1\]"):
        g.ode_solution(x, VPSDE(), 1.0, -0.1)
    with pytest.raises(ValueError, match=r"t_from must lie in \[0, 1\]"):
        g.ode_solution(x, VPSDE(), 2.0, 0.1)
    with pytest.raises(ValueError, match=r"t_to must lie in 0..10"):
        g.ode_solution(x, DiscreteSchedule(linear_betas(10)), 5, 30)


def test_gaussian_ode_solution_pushes_marginals():
    """Mapping exact samples of p_1 through the flow gives the moments of p_t (z-test)."""
    g = Gaussian(np.array([1.0, -1.0]), np.array([[1.0, 0.6], [0.6, 0.5]]))
    process = SubVPSDE()
    n = 100_000
    x1 = process.sample_marginal(g.sample(n, rng=15), 1.0, rng=16)
    x_t = g.ode_solution(x1, process, 1.0, 0.1)
    target = g.diffuse(process, 0.1)
    z = (x_t.mean(0) - target.mean()) / np.sqrt(np.diag(target.covariance()) / n)
    assert np.all(np.abs(z) < 5)
    np.testing.assert_allclose(np.cov(x_t.T), target.covariance(), rtol=0.03, atol=0.01)


def test_gaussian_ode_solution_satisfies_the_ode():
    g = Gaussian(np.array([0.3, 0.1]), np.array([[1.0, 0.3], [0.3, 0.4]]))
    process = VPSDE()
    x = np.random.default_rng(17).standard_normal((4, 2))
    t, h = 0.5, 1e-6
    dx = (g.ode_solution(x, process, 1.0, t + h) - g.ode_solution(x, process, 1.0, t - h)) / (2 * h)
    x_t = g.ode_solution(x, process, 1.0, t)
    np.testing.assert_allclose(dx, process.ode_drift(x_t, t, g.score(x_t, process, t)), rtol=1e-7, atol=1e-8)


def test_empirical_data_matches_mixture_of_points():
    rng = np.random.default_rng(18)
    pts = rng.standard_normal((30, 2))
    data = EmpiricalData(pts, block=7)
    process = PROCESSES["linear"]
    t = rng.integers(1, 1001, size=10)
    x = rng.standard_normal((10, 2))
    for i, ti in enumerate(t):
        mix = GaussianMixture(np.full(30, 1 / 30), process.mean_coef(ti) * pts, np.full(30, process.variance(ti)))
        np.testing.assert_allclose(data.log_prob(x, process, t)[i], scipy_log_prob(mix, x[i : i + 1])[0], rtol=1e-10)
        np.testing.assert_allclose(data.score(x, process, t)[i], mix.score(x[i : i + 1])[0], rtol=1e-9, atol=1e-10)
    w = data.posterior(x, process, t)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(data.denoise(x, process, t), w @ pts, rtol=1e-13)
    np.testing.assert_allclose(data.eps(x, process, t), -process.std(t)[:, None] * data.score(x, process, t), rtol=1e-12)


def test_empirical_data_rejects_t0():
    data = EmpiricalData(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="sigma_t > 0"):
        data.denoise(np.zeros((1, 2)), VPSDE(), 0.0)


@pytest.mark.parametrize(
    "weights, means, covs, match",
    [
        ([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0], "sum to 1"),
        ([-0.5, 1.5], [[0.0], [1.0]], [1.0, 1.0], "non-negative"),
        ([0.5, 0.5], [[0.0], [np.nan]], [1.0, 1.0], "means must be finite"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, -1.0], "positive definite"),
        ([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 2.0], [2.0, 1.0]]] * 2, "positive definite"),
        ([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.5], [0.0, 1.0]]] * 2, "symmetric"),
        ([0.5, 0.5], [[0.0], [1.0]], [[1.0, 1.0, 1.0]], "covs must have shape"),
        ([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0], "means must have shape"),
    ],
)
def test_bad_parameters(weights, means, covs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(np.array(weights), np.array(means), np.array(covs))


def test_bad_queries():
    gm = make_mixture("full")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        gm.log_prob(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="x must be finite"):
        gm.score(np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="one entry per"):
        gm.score(np.zeros((2, 3)), VPSDE(), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="without a process"):
        gm.score(np.zeros((2, 3)), None, 0.5)
    with pytest.raises(ValueError, match="sigma_t = 0"):
        gm.eps(np.zeros((2, 3)), VPSDE(), 0.0)
    with pytest.raises(TypeError):
        gm.log_prob(np.zeros((2, 3), dtype=complex))


@pytest.mark.parametrize("dtype,far", [(np.float32, 3e19), (np.float64, 1e160)])
def test_empirical_data_far_from_every_point(dtype, far):
    """Every logit overflowed to -inf, and the softmax's logits - max was NaN: log p is -inf and the score finite, as
    the equivalent mixture's (its far path), with per-example t too."""
    E = EmpiricalData([[0.0, 0.0], [1.0, 0.0]])
    gm = GaussianMixture([0.5, 0.5], E.points, [1e-300, 1e-300])  # the same p_t wherever sigma_t^2 > 1e-290
    x = np.array([[far, 0.0], [-far, far / 2], [0.3, 0.1]], dtype)
    for t in (0.5, np.array([0.5, 0.2, 0.9])):
        assert E.log_prob(x, VPSDE(), t)[0] == -np.inf and E.log_prob(x, VPSDE(), t)[1] == -np.inf
        np.testing.assert_allclose(E.score(x, VPSDE(), t), gm.score(x, VPSDE(), t), rtol=1e-5 if dtype == np.float32 else 1e-12)
        assert np.all(np.isfinite(E.denoise(x, VPSDE(), t)))


def test_float32_weights_that_sum_to_one_in_float32():
    """0.1 + 0.2 + 0.7 in float32 is 1 to 7.5e-9 in float64, past the 1e-9 allowed before; the weights are
    divided by their sum, so the density integrates to 1 whatever their rounding."""
    gm = GaussianMixture(np.float32([0.1, 0.2, 0.7]), np.zeros((3, 1)), np.ones(3))
    assert gm.weights.sum() == 1.0
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(np.float32([0.1, 0.2, 0.71]), np.zeros((3, 1)), np.ones(3))
