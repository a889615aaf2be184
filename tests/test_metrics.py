"""Tests of refdiff.metrics against SciPy, brute-force pairwise sums and known closed forms.

Statistical checks use fixed seeds; where a tolerance is a multiple of a
standard error the comment gives the false-failure rate for a fresh seed.
"""

import functools
import importlib.util
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import cdist, pdist

from refdiff.analytic import Gaussian, GaussianMixture
from refdiff.metrics import (
    NoiseFloor,
    energy_distance,
    far_from_modes,
    median_bandwidth,
    mmd,
    mode_weight_error,
    mode_weights,
    noise_floor,
    sliced_wasserstein,
)
from refdiff.sde import VPSDE
from refdiff.targets import ring_mixture


# --- brute-force references (every pair, direct differences) -----------------
def _mmd_brute(x, y, hs, biased=False):
    def k(a, b):
        d2 = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-d2 / (2.0 * h * h)) for h in np.atleast_1d(hs))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    if biased:  # V-statistic: the diagonal k(x, x) = 1 stays in
        return kxx.mean() + kyy.mean() - 2.0 * k(x, y).mean()
    return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * k(x, y).mean()


def _energy_brute(x, y):
    n, m = len(x), len(y)
    return 2.0 * cdist(x, y).mean() - cdist(x, x).sum() / (n * (n - 1)) - cdist(y, y).sum() / (m * (m - 1))


def _wp_midpoint(x, y, p):
    """Exact 1-D W_p^p of two empirical measures: the midpoint rule on a grid of step 1/(nm) is exact."""
    n, m = len(x), len(y)
    u = (np.arange(n * m) + 0.5) / (n * m)
    qx, qy = np.sort(x)[np.floor(u * n).astype(int)], np.sort(y)[np.floor(u * m).astype(int)]
    return np.mean(np.abs(qx - qy) ** p)


# --- sliced Wasserstein ---------------------------------------------------------
def test_sw_of_identical_samples_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 3))
    assert sliced_wasserstein(x, x, rng=1) == 0.0
    # A permutation of the rows is the same measure. The projections go through
    # BLAS, whose rounding of a row's dot product can depend on where the row
    # sits in the matrix (edge tiles use other kernels), so equal up to rounding.
    assert sliced_wasserstein(x, x[::-1], rng=1) < 1e-14


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_sw_1d_p1_equals_scipy_wasserstein(n, m, seed):
    # In 1-D the directions are +-1 and W_1 is reflection invariant, so SW_1 = W_1 exactly.
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n), 2.0 * rng.standard_normal(m) + 0.5
    got = sliced_wasserstein(x[:, None], y[:, None], n_projections=3, rng=seed, p=1)
    assert got == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("n, m", [(7, 5), (12, 18), (30, 30), (1, 9)])
@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_sw_1d_unequal_sizes_equals_bruteforce_quantiles(n, m, p):
    rng = np.random.default_rng(n * 100 + m)
    x, y = rng.standard_normal(n), rng.exponential(size=m)
    got = sliced_wasserstein(x[:, None], y[:, None], n_projections=2, rng=0, p=p)
    assert got == pytest.approx(_wp_midpoint(x, y, p) ** (1.0 / p), rel=1e-12)


def test_sw_same_rng_same_value_and_chunks_do_not_matter():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((200, 4)), rng.standard_normal((150, 4)) + 0.3
    a = sliced_wasserstein(x, y, n_projections=50, rng=7)
    assert sliced_wasserstein(x, y, n_projections=50, rng=7) == a
    assert sliced_wasserstein(x, y, n_projections=50, rng=8) != a
    for chunk in (1, 7, 50, 1000):
        assert sliced_wasserstein(x, y, n_projections=50, rng=7, chunk=chunk) == pytest.approx(a, rel=1e-13)


def test_sw_averages_squared_w2_over_projections():
    # Two 1-D projections by hand: SW2^2 is the mean of their squared W2.
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((25, 3)) * 1.5
    theta = np.random.default_rng(11).standard_normal((2, 3))  # the directions drawn from rng=11
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    ref = np.mean([_wp_midpoint(x @ th, y @ th, 2) for th in theta])
    assert sliced_wasserstein(x, y, n_projections=2, rng=11) ** 2 == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("D", [1, 4, 16])
def test_sw_of_a_shifted_gaussian_is_shift_over_sqrt_d(D):
    # SW2^2 = m^2 E[(u.theta)^2] = m^2 / D. Relative standard deviation of SW2 (measured
    # over 20 seeds): 1.5% at D = 1 (the sample means, N = 2000), 2.3% at D = 16 (the
    # P = 1000 directions add theirs). rtol 0.08 is about 3.5 sigma (false failures ~1e-3).
    m, N = 2.0, 2000
    rng = np.random.default_rng(D)
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D)) + m * u
    assert sliced_wasserstein(x, y, n_projections=1000, rng=D) == pytest.approx(m / math.sqrt(D), rel=0.08)


# --- MMD ------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [1, 2, 5])  # coordinate-sum tiles (D <= 2) and Gram tiles
@pytest.mark.parametrize("bandwidth", [0.7, [0.3, 1.0, 4.0]])
def test_mmd_blocked_equals_bruteforce(D, bandwidth):
    rng = np.random.default_rng(D)
    x, y = rng.standard_normal((37, D)) + 3.0, rng.standard_normal((23, D)) * 1.3 + 3.2
    ref = _mmd_brute(x, y, bandwidth)
    for block in (1, 5, 16, 37, 512):
        assert mmd(x, y, bandwidth, block=block) == pytest.approx(ref, rel=1e-11, abs=1e-14)


def test_mmd_is_unbiased_and_can_be_negative():
    # 400 independent pairs of 16 points from the same law: the mean of the unbiased
    # estimate lies within 4 standard errors of 0 (false-failure rate 6e-5), while
    # the biased V-statistic sits far above (so this check can fail).
    rng = np.random.default_rng(5)
    u_vals, v_vals = [], []
    for _ in range(400):
        x, y = rng.standard_normal((16, 2)), rng.standard_normal((16, 2))
        u_vals.append(mmd(x, y, 1.0))
        v_vals.append(_mmd_brute(x, y, 1.0, biased=True))
    u_vals, v_vals = np.array(u_vals), np.array(v_vals)
    se = u_vals.std(ddof=1) / math.sqrt(u_vals.size)
    assert abs(u_vals.mean()) < 4 * se
    assert np.mean(u_vals < 0) > 0.2
    assert v_vals.mean() > 20 * se


def test_mmd_median_heuristic():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((60, 3)), rng.standard_normal((40, 3)) + 1.0
    h = np.median(pdist(np.concatenate([x, y])))
    assert median_bandwidth(x, y) == h
    assert mmd(x, y) == pytest.approx(_mmd_brute(x, y, h), rel=1e-11)
    # Above 2000 pooled points: a deterministic subsample, close to the full median.
    x, y = rng.standard_normal((1500, 2)), rng.standard_normal((1500, 2)) + 0.5
    full = np.median(pdist(np.concatenate([x, y])))
    assert median_bandwidth(x, y) == median_bandwidth(x, y)
    assert median_bandwidth(x, y) == pytest.approx(full, rel=0.03)


def test_mmd_detects_a_shift():
    g = Gaussian(np.zeros(2), 1.0)
    floor = noise_floor(functools.partial(mmd, bandwidth=1.0), g, 300, rng=0, repeats=12)
    assert abs(floor.mean) < floor.std  # unbiased: the floor is centred at 0
    x = g.sample(300, 1)
    assert mmd(x, g.sample(300, 2) + np.array([0.5, 0.0]), 1.0) > floor.upper(3.0)


# --- energy distance -----------------------------------------------------------------------------
@given(st.integers(2, 30), st.integers(2, 30), st.integers(0, 2**32 - 1))
def test_energy_1d_matches_scipy(n, m, seed):
    # scipy returns sqrt of the V-statistic 2A - B_V - C_V with B_V = (n-1)/n B_U.
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n), rng.standard_normal(m) * 2.0 + 0.3
    b_u = np.abs(x[:, None] - x[None, :]).sum() / (n * (n - 1))
    c_u = np.abs(y[:, None] - y[None, :]).sum() / (m * (m - 1))
    got = energy_distance(x[:, None], y[:, None], block=7) + b_u / n + c_u / m
    assert got == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-11, abs=1e-14)


@pytest.mark.parametrize("D", [2, 3, 8])
def test_energy_blocked_equals_bruteforce(D):
    rng = np.random.default_rng(D)
    x, y = rng.standard_normal((41, D)) - 2.0, rng.standard_normal((29, D)) * 0.8 - 2.1
    ref = _energy_brute(x, y)
    for block in (1, 6, 29, 512):
        assert energy_distance(x, y, block=block) == pytest.approx(ref, rel=1e-10, abs=1e-13)


def test_energy_grows_with_a_shift():
    # For N(0, I) vs N(m, I) in 1-D: 2E|X-Y| - E|X-X'| - E|Y-Y'| with |X-Y| ~ |N(m, 2)|.
    m, s = 1.0, math.sqrt(2.0)
    exy = s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s * s)) + m * (1 - 2 * scipy.stats.norm.cdf(-m / s))
    exact = 2 * exy - 2 * s * math.sqrt(2 / math.pi)
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((3000, 1)), rng.standard_normal((3000, 1)) + m
    # standard error of the estimate here is ~0.01; rtol 0.1 of ~0.33 is ~3 sigma
    assert energy_distance(x, y) == pytest.approx(exact, rel=0.1)


# --- modes ----------------------------------------------------------------------
def test_mode_weights_recover_mixture_weights():
    mix = ring_mixture()  # weights 1:2:...:8, modes 12 standard deviations apart
    N = 20000
    x, labels = mix.sample(N, rng=10, return_labels=True)
    w_hat = mode_weights(x, mix)
    assert w_hat.shape == (8,) and w_hat.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_array_equal(w_hat, np.bincount(labels, minlength=8) / N)  # separated: no mistakes
    # binomial tolerance, 4 sigma per component (false-failure rate ~5e-4 over 8)
    tol = 4 * np.sqrt(mix.weights * (1 - mix.weights) / N)
    assert np.all(np.abs(w_hat - mix.weights) <= tol)
    assert mode_weight_error(x, mix) <= tol.max()
    # a sampler that equalises the modes is caught
    equal = ring_mixture(weights="equal")
    assert mode_weight_error(equal.sample(N, rng=11), mix) > 0.09


def test_mode_weights_at_time_t():
    mix, sde, t = ring_mixture(), VPSDE(), 0.1
    x = mix.diffuse(sde, t).sample(20000, rng=12)
    w_hat = mode_weights(x, mix, sde, t)
    assert np.all(np.abs(w_hat - mix.weights) <= 4 * np.sqrt(mix.weights * (1 - mix.weights) / 20000))
    assert far_from_modes(x, mix, sde, t) <= 1e-3


def test_far_from_modes():
    mix = ring_mixture()
    x = mix.sample(20000, rng=13)
    assert far_from_modes(x, mix) <= 1e-3  # expected at most alpha = 1e-4
    assert far_from_modes(np.zeros((5, 2)), mix) == 1.0  # the ring's centre is 16 std from every mode
    # modes twice too wide: P(|z| > 4.29 / 2) in 2-D is exp(-2.3) ~ 0.1
    wide = GaussianMixture(mix.weights, mix.means, 4 * mix.covs)
    assert 0.07 < far_from_modes(wide.sample(20000, rng=14), mix) < 0.12


# --- noise floor ---------------------------------------------------------------------------------------
def test_noise_floor_is_positive_reproducible_and_shrinks_with_n():
    g = Gaussian(np.zeros(2), np.array([1.0, 0.25]))
    sw = functools.partial(sliced_wasserstein, n_projections=64, rng=0)
    small = noise_floor(sw, g, 200, rng=1, repeats=4)
    big = noise_floor(sw, g, 3200, rng=1, repeats=4)
    assert isinstance(small, NoiseFloor) and small.n == 200 and small.values.shape == (4,)
    assert np.all(small.values > 0) and small.std > 0
    assert noise_floor(sw, g, 200, rng=1, repeats=4).values.tolist() == small.values.tolist()
    # SW2 between exact samples falls like n^-1/2 (up to log log n): 16x n gives ~0.28x
    assert 0.15 < big.mean / small.mean < 0.45


def test_noise_floor_separates_exact_from_wrong_samples():
    g = Gaussian(np.zeros(3), 1.0)
    sw = functools.partial(sliced_wasserstein, n_projections=128, rng=0)
    # One exact value over the floor's mean: relative sd ~0.14, 99th percentile ~1.4
    # (measured over 200 pairs), so 1.5 fails an exact sampler ~1% of the time; a 20%
    # scale error gives ratios of 2.3-3.8.
    floor = noise_floor(sw, g, 1000, rng=2, repeats=8)
    exact = g.sample(1000, rng=3)
    assert sw(g.sample(1000, rng=4), exact) <= 1.5 * floor.mean
    too_wide = Gaussian(np.zeros(3), 1.2**2).sample(1000, rng=4)  # a 20% scale error
    assert sw(too_wide, exact) > 1.5 * floor.mean


def test_noise_floor_takes_any_sampler_and_metric():
    class Uniform:
        def sample(self, n, rng):
            return np.random.default_rng(rng).uniform(size=(n, 1))

    def mean_gap(x, y):
        return abs(float(x.mean() - y.mean()))

    floor = noise_floor(mean_gap, Uniform(), 400, rng=np.random.default_rng(0), repeats=6)
    # E|mean gap| = sqrt(2 / 400 / 12) * sqrt(2 / pi) ~ 0.0163
    assert 0.005 < floor.mean < 0.04
    assert floor.upper(2.0) == pytest.approx(floor.mean + 2.0 * floor.std)


# --- inputs ---------------------------------------------------------------------
def test_accepts_lists_float32_and_integers():
    rng = np.random.default_rng(15)
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((20, 2))
    ref = energy_distance(x, y)
    assert energy_distance(x.tolist(), y.tolist()) == ref
    assert energy_distance(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(
        energy_distance(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)), rel=1e-15
    )
    assert mmd(np.arange(6).reshape(3, 2), np.ones((4, 2)), 1.0) == pytest.approx(
        _mmd_brute(np.arange(6.0).reshape(3, 2), np.ones((4, 2)), 1.0), rel=1e-12
    )


@pytest.mark.skipif(importlib.util.find_spec("array_api_strict") is None, reason="array_api_strict is not installed")
def test_accepts_other_array_libraries():
    import array_api_strict as xs

    rng = np.random.default_rng(16)
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((20, 2))
    assert sliced_wasserstein(xs.asarray(x), xs.asarray(y), rng=0) == sliced_wasserstein(x, y, rng=0)
    assert mmd(xs.asarray(x), xs.asarray(y), 1.0) == mmd(x, y, 1.0)


_X = np.zeros((5, 2))
_MIX = ring_mixture()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sliced_wasserstein(np.zeros(5), _X), "x must be 2-D"),
        (lambda: sliced_wasserstein(_X, np.zeros((5, 3))), "y must have D=2"),
        (lambda: sliced_wasserstein(_X, np.full((5, 2), np.nan)), "y must be finite"),
        (lambda: sliced_wasserstein(np.zeros((0, 2)), _X), r"x must have shape \(N, D\) with N >= 1"),
        (lambda: sliced_wasserstein(_X, _X, n_projections=0), "n_projections must be a positive int"),
        (lambda: sliced_wasserstein(_X, _X, p=0.5), "p must be a real number >= 1"),
        (lambda: sliced_wasserstein(_X, _X, chunk=0), "chunk must be a positive int"),
        (lambda: mmd(np.zeros((1, 2)), _X, 1.0), r"x must have shape \(N, D\) with N >= 2"),
        (lambda: mmd(_X, _X, -1.0), "bandwidth must be"),
        (lambda: mmd(_X, _X, [1.0, np.inf]), "bandwidth must be"),
        (lambda: mmd(_X, _X, "wide"), "bandwidth must be"),
        (lambda: mmd(_X, _X), "bandwidth: the median heuristic gave 0"),
        (lambda: mmd(_X, _X, 1.0, block=0), "block must be a positive int"),
        (lambda: energy_distance(_X, np.zeros((1, 2))), r"y must have shape \(N, D\) with N >= 2"),
        (lambda: energy_distance(np.full((5, 2), np.inf), _X), "x must be finite"),
        (lambda: mode_weights(np.zeros((5, 3)), _MIX), r"x must have shape \(N, 2\)"),
        (lambda: far_from_modes(_X, _MIX, alpha=1.0), "alpha must be a real number in"),
        (lambda: far_from_modes(_X, _MIX, process=VPSDE()), "process and t"),
        (lambda: noise_floor(sliced_wasserstein, _MIX, 1, rng=0), "n must be an int >= 2"),
        (lambda: noise_floor(sliced_wasserstein, _MIX, 10, rng=0, repeats=1), "repeats must be an int >= 2"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="metric must be a callable"):
        noise_floor(1.0, _MIX, 10)
    with pytest.raises(TypeError, match="sampler must have a method sample"):
        noise_floor(mmd, object(), 10)
    with pytest.raises(TypeError, match="mixture must be a refdiff.analytic.GaussianMixture"):
        mode_weights(_X, object())
    with pytest.raises(TypeError, match="x must be real"):
        mmd(_X + 0j, _X, 1.0)


def test_score_error_by_time_is_zero_for_the_exact_score_and_scale_free():
    from refdiff.metrics import score_error_by_time
    from refdiff.sde import VPSDE
    from refdiff.targets import ring_mixture

    ring, vp = ring_mixture(), VPSDE()
    x0 = ring.sample(500, rng=0)
    exact = score_error_by_time(lambda x, t: ring.score(x, vp, t), ring, vp, (0.1, 0.5), x0, rng=1)
    assert [r["rel_mse"] for r in exact] == [0.0, 0.0] and exact[1]["sigma"] == pytest.approx(float(vp.std(0.5)))
    off = score_error_by_time(lambda x, t: 1.1 * ring.score(x, vp, t), ring, vp, (0.1, 0.5), x0, rng=1)
    assert [r["rel_mse"] for r in off] == pytest.approx([0.01, 0.01], rel=1e-10)


def test_far_from_modes_names_a_per_sample_t():
    x = ring_mixture().sample(3, rng=0)
    with pytest.raises(ValueError, match=r"t must be one time for every sample \(a scalar\), got shape \(3,\)"):
        far_from_modes(x, ring_mixture(), VPSDE(), np.array([0.1, 0.2, 0.3]))
