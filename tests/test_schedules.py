r"""Tests for refdiff.schedules: named beta schedules, derived tables, transitions, spacing and respacing.

Every expected value is derived here without the library's code path: cumulative
products by Python loops, :math:`1-\bar\alpha_t` by the all-positive recurrence
:math:`1-\bar\alpha_t=(1-\bar\alpha_{t-1})+\bar\alpha_{t-1}\beta_t` (no
cancellation), the posterior by Bayes' rule for two Gaussians, spacings by exact
integer arithmetic.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import schedules as sch
from refdiff.schedules import DiscreteSchedule
from strategies import NAMES, build, schedule_specs

RTOL = 1e-12  # float64 closed forms


# ------------------------------------------------- independent references
def ref_alpha_bar(betas):
    """Python-loop cumulative product, alpha_bar[0] = 1."""
    out = [1.0]
    for b in betas[1:]:
        out.append(out[-1] * (1.0 - float(b)))
    return np.array(out)


def ref_one_minus_alpha_bar(betas):
    """1 - alpha_bar_t by the recurrence om_t = om_{t-1} + alpha_bar_{t-1} beta_t (positive terms only)."""
    ab = ref_alpha_bar(betas)
    out = [0.0]
    for t in range(1, len(betas)):
        out.append(out[-1] + ab[t - 1] * float(betas[t]))
    return np.array(out)


def ref_transition(betas, s, t):
    """gamma_{t|s}^2 = prod_{k=s+1}^t alpha_k and sigma^2_{t|s} = 1 - that, both by loops without cancellation."""
    g2, om = 1.0, 0.0
    for k in range(s + 1, t + 1):
        om = om + g2 * float(betas[k])
        g2 = g2 * (1.0 - float(betas[k]))
    return math.sqrt(g2), om


def assert_rel(actual, expected, rtol=RTOL, atol=1e-300):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def assert_log_close(actual, expected, tol=RTOL):
    """Log-domain values: |error| <= tol * max(1, |value|) (the relative error of exp of the value)."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])  # +-inf must match exactly
    err = np.abs(actual[finite] - expected[finite]) / np.maximum(1.0, np.abs(expected[finite]))
    assert np.all(err <= tol), f"max error {err.max()} > {tol}"


# ------------------------------------------------------- derived tables
@given(spec=schedule_specs())
def test_tables_match_independent_loops(spec):
    S = build(spec)
    b = S.betas
    T = S.T
    assert b.dtype == np.float64 and b.shape == (T + 1,) and b[0] == 0.0
    ab = ref_alpha_bar(b)
    om = ref_one_minus_alpha_bar(b)

    np.testing.assert_array_equal(S.alphas, np.array([1.0 - float(x) for x in b]))
    assert S.alpha_bar[0] == 1.0
    assert_rel(S.alpha_bar, ab)
    assert_rel(S.alpha_bar, np.cumprod(1.0 - b))
    assert_rel(S.alpha_bar_prev, np.concatenate(([1.0], ab[:-1])))
    assert_rel(S.one_minus_alpha_bar, om)
    assert_rel(S.sqrt_alpha_bar, np.sqrt(ab))
    assert_rel(S.sqrt_one_minus_alpha_bar, np.sqrt(om))
    with np.errstate(divide="ignore"):
        assert_log_close(S.log_alpha_bar, np.log(ab))
        assert_log_close(S.log_snr[1:], np.log(ab[1:]) - np.log(om[1:]))
    assert S.log_snr[0] == np.inf
    # variance preservation: gamma_t^2 + sigma_t^2 = 1
    np.testing.assert_allclose(S.sqrt_alpha_bar**2 + S.sqrt_one_minus_alpha_bar**2, 1.0, rtol=0, atol=1e-12)
    # the process interface reads the same tables at scalar and per-example steps
    ts = np.array([0, T // 3, T])
    assert_rel(S.mean_coef(ts), np.sqrt(ab[ts]))
    assert_rel(S.std(ts), np.sqrt(om[ts]))
    assert_rel(S.variance(ts), om[ts])
    assert float(S.mean_coef(T)) == pytest.approx(math.sqrt(ab[T]), rel=RTOL, abs=1e-300)
    np.testing.assert_array_equal(S.log_snr_at(ts), S.log_snr[ts])


@given(spec=schedule_specs(zero_snr=True))
def test_zero_terminal_snr_schedule(spec):
    S = build(spec)
    T = S.T
    assert S.betas[T] == 1.0 and S.alpha_bar[T] == 0.0 and S.mean_coef(T) == 0.0
    assert S.std(T) == 1.0 and S.log_snr[T] == -np.inf
    assert np.all(np.isfinite(S.log_snr[1:T]))
    for name in ("posterior_variance", "posterior_log_variance", "posterior_mean_coef_x0", "posterior_mean_coef_xt"):
        assert np.all(np.isfinite(getattr(S, name))), name
    # Lin et al. 2024, Algorithm 1: sqrt(alpha_bar) is shifted to end at 0 and scaled to keep t = 1
    name, _, kwargs, _ = spec
    old = np.sqrt(ref_alpha_bar(sch.make_betas(name, T, **kwargs)))
    new = np.sqrt(ref_alpha_bar(S.betas))
    expected = (old - old[T]) * (old[1] / (old[1] - old[T]))
    assert new[1] == pytest.approx(old[1], rel=RTOL)
    np.testing.assert_allclose(new[1:], expected[1:], rtol=0, atol=RTOL * old[1])


@pytest.mark.parametrize("betas", [sch.linear_betas(1000), sch.cosine_betas(1000), sch.linear_betas(2, 0.1, 0.2)],
                         ids=["linear", "cosine", "T2"])
def test_zero_terminal_snr_non_finite_entries(betas):
    """After rescaling, log_alpha_bar[T] and log_snr[T] are -inf and log_snr[0] is +inf; every other entry is finite."""
    S = DiscreteSchedule(sch.rescale_zero_terminal_snr(betas))
    T = S.T
    tables = ("betas", "alphas", "log_alpha_bar", "alpha_bar", "alpha_bar_prev", "one_minus_alpha_bar",
              "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "posterior_variance", "posterior_log_variance",
              "posterior_mean_coef_x0", "posterior_mean_coef_xt", "log_snr")
    expected = {("log_alpha_bar", T): -np.inf, ("log_snr", 0): np.inf, ("log_snr", T): -np.inf}
    found = {}
    for name in tables:
        table = getattr(S, name)
        found.update({(name, int(i)): table[i] for i in np.flatnonzero(~np.isfinite(table))})
    assert found == expected
    assert S.alpha_bar[T] == S.sqrt_alpha_bar[T] == S.alphas[T] == 0.0


@pytest.mark.parametrize(
    "betas",
    [sch.rescale_zero_terminal_snr(sch.linear_betas(1000)), sch.cosine_betas(100, max_beta=None),
     np.array([0.0, 0.5, 1.0])],
    ids=["rescaled_linear", "cosine_unclipped", "T2"],
)
def test_rescale_is_idempotent_on_zero_snr_schedules(betas):
    """A schedule that already ends at beta_T = 1 (alpha_bar_T = 0) is left as it is, without warnings."""
    assert betas[-1] == 1.0
    out = sch.rescale_zero_terminal_snr(betas)
    np.testing.assert_allclose(out, betas, rtol=1e-12, atol=0)


def _rescaled_betas_in_decimal(betas, digits=60):
    """Lin et al.'s Algorithm 1 in 60-digit decimal arithmetic: the ground truth of rescale_zero_terminal_snr."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = digits
        alpha_bar, r = Decimal(1), []
        for b in betas[1:]:
            alpha_bar *= 1 - Decimal(float(b))
            r.append(alpha_bar.sqrt())
        s = [(x - r[-1]) * r[0] / (r[0] - r[-1]) for x in r]
        out = [1 - s[0] ** 2] + [1 - (s[t] / s[t - 1]) ** 2 for t in range(1, len(s) - 1)] + [Decimal(1)]
        return np.array([float(v) for v in out])


@pytest.mark.parametrize("betas", [sch.linear_betas(1000), sch.linear_betas(1000, 1e-9, 0.02), sch.cosine_betas(1000),
                                   sch.scaled_linear_betas(1000), np.array([0.0, 0.3, 0.5, 0.9])],
                         ids=["linear", "linear_1e-9", "cosine", "scaled_linear", "T3"])
def test_rescale_zero_terminal_snr_to_a_few_ulp(betas):
    """Every rescaled beta within 6 ulp of the algorithm in exact arithmetic, and beta_1 unchanged (the rescaling
    holds alpha_bar_1). 1 - alpha_bar_t / alpha_bar_{t-1} of the rescaled alpha_bar lost 1e4 ulp of a beta of 1e-4
    and 4e8 of one of 1e-9."""
    got = sch.rescale_zero_terminal_snr(betas)
    assert got[0] == 0.0 and got[1] == betas[1] and got[-1] == 1.0
    np.testing.assert_allclose(got[1:], _rescaled_betas_in_decimal(betas), rtol=6 * np.finfo(np.float64).eps, atol=0)


def test_no_table_holds_a_negative_zero():
    """1 - alpha_bar_0 = -expm1(0) was -0: sigma_0, sigma_0^2 and the posterior variance at t = 1 came out -0, and an
    SNR formed from them at t = 0 as -inf (the continuous VP process gives +inf)."""
    S = DiscreteSchedule(sch.linear_betas(10))
    for name in dir(S):
        table = getattr(S, name)
        if isinstance(table, np.ndarray) and table.dtype.kind == "f":
            assert not np.any((table == 0.0) & np.signbit(table)), name
    assert not np.signbit(S.std(0)) and not np.signbit(S.variance(0))
    with np.errstate(divide="ignore"):
        assert S.alpha_bar[0] / S.one_minus_alpha_bar[0] == np.inf


def test_tables_are_read_only():
    S = DiscreteSchedule(sch.linear_betas(10))
    for name in ("betas", "alpha_bar", "posterior_variance", "log_snr", "model_steps"):
        with pytest.raises(ValueError):
            getattr(S, name)[1] = 0.5
    with pytest.raises(AttributeError):
        S.betas = np.zeros(11)


# ----------------------------------------------------------- posterior
@given(spec=schedule_specs())
def test_posterior_coefficients_match_bayes_rule(spec):
    r"""q(x_{t-1}|x_t,x_0) is proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0).

    Precision alpha_t/beta_t + 1/(1-abar_{t-1}); mean = var * (sqrt(alpha_t)/beta_t x_t
    + sqrt(abar_{t-1})/(1-abar_{t-1}) x_0), for t >= 2 (at t = 1 the second factor is a point mass).
    """
    S = build(spec)
    b, T = S.betas, S.T
    ab, om = ref_alpha_bar(b), ref_one_minus_alpha_bar(b)
    t = np.arange(2, T + 1)
    alpha = 1.0 - b[t]
    precision = alpha / b[t] + 1.0 / om[t - 1]
    var = 1.0 / precision
    assert_rel(S.posterior_variance[t], var)
    assert_rel(S.posterior_mean_coef_xt[t], var * np.sqrt(alpha) / b[t])
    assert_rel(S.posterior_mean_coef_x0[t], var * np.sqrt(ab[t - 1]) / om[t - 1])
    assert_log_close(S.posterior_log_variance[t], np.log(var))
    # t = 1: the posterior is the point mass at x_0; the log variance is clipped to t = 2's
    assert S.posterior_variance[1] == 0.0 and S.posterior_mean_coef_xt[1] == 0.0
    assert S.posterior_mean_coef_x0[1] == pytest.approx(1.0, rel=RTOL)  # beta_1 / (1 - alpha_bar_1)
    expected_log1 = S.posterior_log_variance[2] if T >= 2 else math.log(b[1])
    assert S.posterior_log_variance[1] == expected_log1 == S.posterior_log_variance[0]
    assert S.posterior_variance[0] == 0.0 and S.posterior_mean_coef_x0[0] == 1.0 and S.posterior_mean_coef_xt[0] == 0.0


# ---------------------------------------------------------- transitions
@given(spec=schedule_specs(), data=st.data())
def test_transition_matches_loops_and_composes(spec, data):
    S = build(spec)
    T = S.T
    s, u, t = sorted(data.draw(st.lists(st.integers(0, T), min_size=3, max_size=3), label="s<=u<=t"))
    g_ts, v_ts = S.transition(s, t)
    g_ref, v_ref = ref_transition(S.betas, s, t)
    assert float(g_ts) == pytest.approx(g_ref, rel=RTOL, abs=1e-300)
    assert float(v_ts) == pytest.approx(v_ref, rel=RTOL, abs=0.0)
    # VP: gamma_{t|s}^2 + sigma^2_{t|s} = 1
    assert float(g_ts) ** 2 + float(v_ts) == pytest.approx(1.0, abs=1e-12)
    # q(x_t|x_u) after q(x_u|x_s) is q(x_t|x_s): means multiply, variances add
    g_tu, v_tu = S.transition(u, t)
    g_us, v_us = S.transition(s, u)
    assert float(g_tu * g_us) == pytest.approx(g_ref, rel=RTOL, abs=1e-300)
    assert float(g_tu**2 * v_us + v_tu) == pytest.approx(v_ref, rel=RTOL, abs=0.0)
    # with s = 0: q(x_t|x_u) after q(x_u|x_0) is q(x_t|x_0)
    ab, om = ref_alpha_bar(S.betas), ref_one_minus_alpha_bar(S.betas)
    assert float(g_tu * S.mean_coef(u)) == pytest.approx(math.sqrt(ab[t]), rel=RTOL, abs=1e-300)
    assert float(g_tu**2 * S.variance(u) + v_tu) == pytest.approx(om[t], rel=RTOL, abs=0.0)
    # s == t is the identity, even at a zero-SNR t = T
    g_tt, v_tt = S.transition(t, t)
    assert float(g_tt) == 1.0 and float(v_tt) == 0.0 and not np.signbit(v_tt)


@given(spec=schedule_specs(), data=st.data())
def test_transition_per_example(spec, data):
    S = build(spec)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, S.T), st.integers(0, S.T)), min_size=1, max_size=6))
    s = np.array([min(p) for p in pairs])
    t = np.array([max(p) for p in pairs])
    g, v = S.transition(s, t)
    assert g.shape == v.shape == s.shape
    for i in range(len(s)):
        g_ref, v_ref = ref_transition(S.betas, int(s[i]), int(t[i]))
        assert g[i] == pytest.approx(g_ref, rel=RTOL, abs=1e-300)
        assert v[i] == pytest.approx(v_ref, rel=RTOL, abs=0.0)


def test_transition_rejects_s_after_t():
    S = DiscreteSchedule(sch.linear_betas(20))
    with pytest.raises(ValueError, match="s must not exceed t"):
        S.transition(5, 4)
    with pytest.raises(ValueError, match="s must not exceed t"):
        S.transition(np.array([1, 6]), np.array([2, 5]))


# ----------------------------------------------------- named schedules
def _frac(t, T):
    return (t - 1) / (T - 1)


@given(T=st.integers(2, 2000), start=st.floats(1e-5, 0.5), end=st.floats(1e-5, 0.9))
def test_linear_and_scaled_linear_formulas(T, start, end):
    b = sch.linear_betas(T, start, end)
    assert b.dtype == np.float64 and b.shape == (T + 1,) and b[0] == 0.0
    assert b[1] == start and b[T] == end
    expected = [0.0] + [start + (end - start) * _frac(t, T) for t in range(1, T + 1)]
    np.testing.assert_allclose(b, expected, rtol=RTOL, atol=RTOL * max(start, end))
    b2 = sch.scaled_linear_betas(T, start, end)
    r0, r1 = math.sqrt(start), math.sqrt(end)
    expected2 = [0.0] + [(r0 + (r1 - r0) * _frac(t, T)) ** 2 for t in range(1, T + 1)]
    np.testing.assert_allclose(b2, expected2, rtol=RTOL, atol=RTOL * max(start, end))
    assert b2[1] == pytest.approx(start, rel=RTOL) and b2[T] == pytest.approx(end, rel=RTOL)


def test_single_step_schedules():
    """T = 1: linspace of one point is beta_start."""
    np.testing.assert_array_equal(sch.linear_betas(1, 0.3, 0.5), [0.0, 0.3])
    S = DiscreteSchedule(sch.linear_betas(1, 0.3, 0.5))
    assert S.posterior_log_variance[1] == math.log(0.3)
    assert S.alpha_bar[1] == pytest.approx(0.7, rel=RTOL)


@given(
    T=st.integers(2, 2000),
    start=st.floats(1e-5, 0.05),
    end=st.floats(1e-5, 0.5),
    low=st.floats(-12.0, 0.0),
    width=st.floats(0.1, 20.0),
)
def test_sigmoid_formula(T, start, end, low, width):
    high = low + width
    b = sch.sigmoid_betas(T, start, end, low, high)
    expected = [0.0]
    for t in range(1, T + 1):
        u = low + (high - low) * _frac(t, T)
        expected.append(start + (end - start) / (1.0 + math.exp(-u)))
    np.testing.assert_allclose(b, expected, rtol=RTOL, atol=RTOL * max(start, end))


@given(T=st.integers(1, 2000), s=st.floats(0.0, 0.2), max_beta=st.sampled_from([0.999, 0.9, 0.02, None]))
def test_cosine_formula(T, s, max_beta):
    r"""Nichol & Dhariwal eq. 17, with 1 - f(t/T)/f((t-1)/T) written as sin(b-a) sin(b+a)/cos^2 a (no cancellation).

    The library evaluates f = cos^2 itself, which near u = 0 is 1 to within one
    ulp, so its betas carry an absolute error of a few 1e-16 (1e-11 relative
    for the smallest betas, 1e-6 at T = 2000, s = 0): hence the absolute term.
    """
    b = sch.cosine_betas(T, s=s, max_beta=max_beta)
    half_pi = math.pi / 2
    expected = [0.0]
    for t in range(1, T + 1):
        a_prev = ((t - 1) / T + s) / (1 + s) * half_pi
        a_cur = (t / T + s) / (1 + s) * half_pi
        diff = (1.0 / T) / (1 + s) * half_pi
        beta = math.sin(diff) * math.sin(a_cur + a_prev) / math.cos(a_prev) ** 2
        expected.append(beta if max_beta is None else min(beta, max_beta))
    np.testing.assert_allclose(b, expected, rtol=RTOL, atol=2e-15)
    # where no beta was clipped, alpha_bar follows f(t/T) / f(0) exactly
    S = DiscreteSchedule(b)
    f0 = math.cos(s / (1 + s) * half_pi) ** 2
    for t in range(1, T + 1):
        if max_beta is not None and expected[t] >= max_beta:
            break
        if t == T and max_beta is None:
            assert S.alpha_bar[T] < 1e-30  # f(1) = cos^2(pi / 2) = 0
            break
        f = math.cos((t / T + s) / (1 + s) * half_pi) ** 2
        assert S.alpha_bar[t] == pytest.approx(f / f0, rel=RTOL, abs=1e-300), t


def test_cosine_default_terminal_alpha_bar():
    """PITFALLS 4: the clipped cosine schedule ends near 2.4e-9 at T = 1000, not at 0."""
    S = DiscreteSchedule(sch.cosine_betas(1000))
    assert 1e-9 < S.alpha_bar[-1] < 1e-8
    assert S.betas[-1] == 0.999


@given(T=st.integers(1, 500), c=st.floats(1e-4, 5.0))
def test_betas_from_alpha_bar_exponential(T, c):
    """f(u) = exp(-c u) has constant ratio exp(-c/T), so every beta is -expm1(-c/T).

    f is known to one ulp, so log f and the betas carry an absolute error of a few ulp of |log f| <= c.
    """
    b = sch.betas_from_alpha_bar(lambda u: np.exp(-c * u), T, max_beta=None)
    np.testing.assert_allclose(b[1:], -math.expm1(-c / T), rtol=RTOL, atol=1e-15 * (1.0 + c))
    assert b[0] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_make_betas_names(name):
    fn = {
        "linear": sch.linear_betas,
        "scaled_linear": sch.scaled_linear_betas,
        "cosine": sch.cosine_betas,
        "squaredcos_cap_v2": sch.cosine_betas,
        "sigmoid": sch.sigmoid_betas,
    }[name]
    np.testing.assert_array_equal(sch.make_betas(name, 37), fn(37))
    assert set(sch.SCHEDULE_NAMES) >= set(NAMES)


def test_make_betas_passes_keywords():
    np.testing.assert_array_equal(
        sch.make_betas("linear", 10, beta_start=0.01, beta_end=0.2), sch.linear_betas(10, 0.01, 0.2)
    )


@pytest.mark.parametrize("bad", ["Linear", "quadratic", "", None, 3])
def test_make_betas_unknown_name(bad):
    with pytest.raises(ValueError, match="schedule name"):
        sch.make_betas(bad, 10)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [sch.linear_betas, sch.scaled_linear_betas, sch.cosine_betas, sch.sigmoid_betas])
@pytest.mark.parametrize(
    "T, exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError), ("10", TypeError)]
)
def test_bad_T(fn, T, exc):
    with pytest.raises(exc, match="T must"):
        fn(T)


def test_numpy_int_T_is_accepted():
    np.testing.assert_array_equal(sch.linear_betas(np.int64(5)), sch.linear_betas(5))


@pytest.mark.parametrize("fn", [sch.linear_betas, sch.scaled_linear_betas, sch.sigmoid_betas])
@pytest.mark.parametrize("which", ["beta_start", "beta_end"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), "0.1"])
def test_bad_beta_range(fn, which, value):
    with pytest.raises(ValueError, match=which):
        fn(10, **{which: value})


def test_bad_shape_parameters():
    with pytest.raises(ValueError, match="low"):
        sch.sigmoid_betas(10, low=2.0, high=1.0)
    with pytest.raises(ValueError, match="low"):
        sch.sigmoid_betas(10, low=float("nan"))
    with pytest.raises(ValueError, match="s must"):
        sch.cosine_betas(10, s=-0.1)
    with pytest.raises(ValueError, match="s must"):
        sch.cosine_betas(10, s=float("nan"))
    for mb in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="max_beta"):
            sch.cosine_betas(10, max_beta=mb)
    with pytest.raises(ValueError, match="fn"):
        sch.betas_from_alpha_bar(lambda u: np.ones(3), 10)
    with pytest.raises(ValueError, match="fn"):
        sch.betas_from_alpha_bar(lambda u: 1.0 + u, 10)  # increasing
    with pytest.raises(ValueError, match="fn"):
        sch.betas_from_alpha_bar(lambda u: np.where(u < 0.5, 1.0 - u, 0.0), 10)  # 0 before u = 1


def _good(T=5):
    return sch.linear_betas(T, 0.01, 0.2)


def _with(idx, value):
    b = _good().copy()
    b[idx] = value
    return b


@pytest.mark.parametrize(
    "betas, pattern",
    [
        (_with(2, np.nan), "betas must be finite"),
        (_with(3, np.inf), "betas must be finite"),
        (_with(0, 0.01), r"betas\[0\]"),
        (_with(2, 1.5), "betas"),
        (_with(5, 1.0 + 1e-12), "betas"),
        (_with(2, 1.0), "betas"),  # beta = 1 before t = T
        (_with(3, 0.0), "betas"),
        (_with(4, -0.1), "betas"),
        (np.zeros(1), "betas"),
        (np.zeros((2, 3)), "betas"),
    ],
    ids=["nan", "inf", "beta0", "gt1", "T_gt1", "one_early", "zero", "negative", "length1", "2d"],
)
def test_bad_betas(betas, pattern):
    with pytest.raises(ValueError, match=pattern):
        DiscreteSchedule(betas)
    with pytest.raises(ValueError, match=pattern):
        sch.rescale_zero_terminal_snr(betas)


@pytest.mark.parametrize("bad", [np.array([0.0, 0.1 + 1j]), ["0", "x"], object()])
def test_non_real_betas(bad):
    with pytest.raises(TypeError, match="betas"):
        DiscreteSchedule(bad)


def test_betas_as_list_and_last_beta_one_accepted():
    S = DiscreteSchedule([0.0, 0.5, 1.0])
    assert S.alpha_bar[-1] == 0.0
    assert S.posterior_variance[2] == pytest.approx(0.5, rel=RTOL)


def test_rescale_needs_decreasing_alpha_bar():
    with pytest.raises(ValueError, match="betas"):
        sch.rescale_zero_terminal_snr(np.array([0.0, 0.1]))  # T = 1: nothing to shift


@pytest.mark.parametrize(
    "model_steps, pattern",
    [(np.arange(5), "model_steps"), (np.arange(1, 7), "model_steps"), (np.array([0, 2, 2, 3, 4, 5]), "model_steps"),
     (np.linspace(0, 5, 6), "model_steps")],
)
def test_bad_model_steps(model_steps, pattern):
    with pytest.raises(ValueError, match=pattern):
        DiscreteSchedule(_good(), model_steps=model_steps)


@pytest.mark.parametrize(
    "t, exc",
    [(1.0, TypeError), (np.float64(3.0), TypeError), (np.array([1.0, 2.0]), TypeError), (True, TypeError),
     (-1, ValueError), (6, ValueError), (np.array([0, 6]), ValueError), (np.ones((2, 2), dtype=int), ValueError)],
    ids=["float", "np.float64", "float_array", "bool", "minus1", "T+1", "array_T+1", "2d"],
)
@pytest.mark.parametrize("method", ["mean_coef", "std", "variance", "log_snr_at"])
def test_bad_steps(t, exc, method):
    S = DiscreteSchedule(_good())
    with pytest.raises(exc, match=r"\bt\b"):
        getattr(S, method)(t)


def test_steps_accept_numpy_ints_and_lists():
    S = DiscreteSchedule(_good())
    np.testing.assert_array_equal(S.std([0, 5]), S.sqrt_one_minus_alpha_bar[[0, 5]])
    assert S.std(np.int32(5)) == S.sqrt_one_minus_alpha_bar[5]


# ---------------------------------------------------------------- spacing
def assert_rounds(steps, num, den):
    """steps == round(num / den) for integer num, den: half-to-even, or either neighbour at an exact tie
    (the library rounds a float, which may land on either side of a .5)."""
    q, r = np.divmod(np.asarray(num, dtype=np.int64), den)
    lo = np.where(2 * r > den, q + 1, q)
    hi = np.where(2 * r == den, q + 1, lo)
    assert np.all((steps >= lo) & (steps <= hi)), (steps, lo, hi)


@given(data=st.data(), T=st.integers(1, 3000))
def test_spaced_timesteps_formulas(data, T):
    n = data.draw(st.integers(1, T), label="n")
    out = {}
    for spacing in ("linspace", "leading", "trailing"):
        steps = sch.spaced_timesteps(T, n, spacing)
        assert steps.shape == (n,) and np.issubdtype(steps.dtype, np.integer)
        assert np.all(np.diff(steps) > 0) and steps[0] >= 1 and steps[-1] <= T
        out[spacing] = steps
    k = np.arange(n, dtype=np.int64)
    # "linspace": round(linspace(1, T, n)) = round(1 + k (T - 1) / (n - 1)), exact rationals
    if n == 1:
        np.testing.assert_array_equal(out["linspace"], [1])
    else:
        assert_rounds(out["linspace"], (n - 1) + k * (T - 1), n - 1)
        assert out["linspace"][0] == 1 and out["linspace"][-1] == T
    # "leading": 1 + k * (T // n), exactly
    np.testing.assert_array_equal(out["leading"], [1 + j * (T // n) for j in range(n)])
    assert (out["leading"][-1] == T) == (T // n * (n - 1) == T - 1)
    # "trailing": round(T - k T / n), walked backwards; reaches T, smallest is round(T / n)
    assert_rounds(out["trailing"][::-1], T * (n - k), n)
    assert out["trailing"][-1] == T
    assert_rounds(out["trailing"][:1], np.array([T]), n)
    S = DiscreteSchedule(sch.linear_betas(T, 1e-4, 0.02))
    np.testing.assert_array_equal(S.timesteps(n), out["trailing"])
    np.testing.assert_array_equal(S.timesteps(n, "leading"), out["leading"])


def test_leading_misses_T_for_1000_50():
    """PITFALLS 11: 50 'leading' steps of 1000 end at t = 981; 'linspace' and 'trailing' reach t = 1000."""
    leading = sch.spaced_timesteps(1000, 50, "leading")
    assert leading[0] == 1 and leading[-1] == 981
    assert sch.spaced_timesteps(1000, 50, "linspace")[-1] == 1000
    trailing = sch.spaced_timesteps(1000, 50, "trailing")
    assert trailing[-1] == 1000 and trailing[0] == 20
    assert sch.spaced_timesteps(1000, 50)[-1] == 1000  # default is trailing


@pytest.mark.parametrize("n", [0, -1, 11, 2.0, True, "5"])
def test_spaced_timesteps_bad_n(n):
    with pytest.raises(ValueError, match="n must"):
        sch.spaced_timesteps(10, n)


@pytest.mark.parametrize("spacing", ["uniform", "Leading", "", None])
def test_spaced_timesteps_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        sch.spaced_timesteps(10, 5, spacing)


@pytest.mark.parametrize("T, exc", [(0, ValueError), (2.5, TypeError)])
def test_spaced_timesteps_bad_T(T, exc):
    with pytest.raises(exc, match="T must"):
        sch.spaced_timesteps(T, 1)


# --------------------------------------------------------------- respace
@given(spec=schedule_specs(), data=st.data())
def test_respace_keeps_alpha_bar_and_composes(spec, data):
    S = build(spec)
    T = S.T
    kept = data.draw(st.lists(st.integers(1, T), min_size=1, max_size=min(T, 60), unique=True), label="kept")
    R = S.respace(kept)  # any order
    order = np.sort(np.array(kept))
    assert R.T == len(kept)
    np.testing.assert_array_equal(R.model_steps, np.concatenate(([0], order)))
    assert R.alpha_bar[0] == 1.0
    assert_rel(R.alpha_bar[1:], ref_alpha_bar(S.betas)[order])
    # betas 1 - abar_{t_i} / abar_{t_{i-1}}, i.e. sigma^2 of q(x_{t_i} | x_{t_{i-1}}) (a loop, no cancellation)
    prev = np.concatenate(([0], order[:-1]))
    assert_rel(R.betas[1:], [ref_transition(S.betas, int(p), int(q))[1] for p, q in zip(prev, order)])
    # respacing a respaced schedule: alpha_bar and the map to the original steps compose
    kept2 = data.draw(st.lists(st.integers(1, R.T), min_size=1, max_size=R.T, unique=True), label="kept2")
    R2 = R.respace(np.array(kept2))
    order2 = np.sort(np.array(kept2))
    original = order[order2 - 1]
    np.testing.assert_array_equal(R2.model_steps, np.concatenate(([0], original)))
    assert_rel(R2.alpha_bar[1:], ref_alpha_bar(S.betas)[original])
    assert ("respaced" in repr(R2)) == (not np.array_equal(R2.model_steps, np.arange(R2.T + 1)))


@pytest.mark.parametrize("n", [10, 50])
def test_respace_cosine_trailing_keeps_terminal_alpha_bar(n):
    """DDIM-style respacing of the cosine schedule: the kept alpha_bar (down to 2.4e-9 at t = T) is unchanged.

    The last respaced beta is 1 - alpha_bar_1000 / alpha_bar_{1000 - 1000/n}, within 1e-6 of 1, so alpha = 1 - beta
    must not be formed from a rounded beta.
    """
    S = DiscreteSchedule(sch.cosine_betas(1000))
    kept = S.timesteps(n)
    R = S.respace(kept)
    assert_rel(R.alpha_bar[1:], ref_alpha_bar(S.betas)[kept])


def test_respace_when_a_kept_alpha_bar_is_below_float64_resolution():
    """alpha_bar_260 ~ 1e-16 here, so the first respaced beta 1 - alpha_bar_260 rounds to 1; that is a valid
    schedule (keeping t = 260 and 261 of this one), not an error."""
    S = DiscreteSchedule(sch.linear_betas(261, 0.015625, 0.25))
    R = S.respace([260, 261])
    assert_rel(R.alpha_bar[1:], ref_alpha_bar(S.betas)[[260, 261]])


def test_respace_identity_and_spaced():
    S = DiscreteSchedule(sch.linear_betas(1000))
    full = S.respace(np.arange(1, 1001))
    assert_rel(full.alpha_bar, S.alpha_bar)
    np.testing.assert_array_equal(full.model_steps, np.arange(1001))
    R = S.respace(S.timesteps(50, "leading"))
    assert R.model_steps[-1] == 981 and R.alpha_bar[-1] == pytest.approx(S.alpha_bar[981], rel=RTOL)


@pytest.mark.parametrize(
    "timesteps, exc",
    [
        (np.array([], dtype=np.int64), ValueError),
        ([0, 3], ValueError),
        ([3, 11], ValueError),
        ([2, 2], ValueError),
        ([1.0, 2.0], TypeError),
        (np.ones((2, 2), dtype=int), ValueError),
    ],
    ids=["empty", "zero", "T+1", "duplicate", "float", "2d"],
)
def test_respace_bad_timesteps(timesteps, exc):
    S = DiscreteSchedule(sch.linear_betas(10))
    with pytest.raises(exc, match="timesteps"):
        S.respace(timesteps)


@pytest.mark.parametrize("T, beta", [(1578, 0.017578125), (4000, 0.004), (1000, 0.02)])
def test_alpha_bar_of_a_long_schedule_is_the_exact_product(T, beta):
    """alpha_bar_t = prod (1 - beta_k), exactly in rationals: within 1e-14 relative. A plain cumsum of the
    logs was 1e-12 off at T = 1578 (a case hypothesis found against the loop reference)."""
    from fractions import Fraction

    S = DiscreteSchedule(sch.linear_betas(T, beta, beta))
    exact, one_minus_beta = Fraction(1), 1 - Fraction(float(S.betas[1]))
    for t in range(1, T + 1):
        exact *= one_minus_beta
        if t % 97 == 0 or t == T:
            assert abs(float((Fraction(float(S.alpha_bar[t])) - exact) / exact)) < 1e-14, t
