r"""Tests for refdiff.param: eps <-> x0 <-> score <-> v conversions for discrete schedules and every SDE.

The truth is built from (x_0, eps): x_t = gamma_t x_0 + sigma_t eps, score = -eps / sigma_t,
v = gamma_t eps - sigma_t x_0. Every conversion is linear, dst = a x_t + b pred, with (a, b)
derived by hand in ``COEFS``; the allowed error is tol * (|a x_t| + |b pred| + |dst|), the size
of the terms a correct evaluation adds up (so the bound grows where a conversion divides by a
small gamma_t or sigma_t, as it must).
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from refdiff import backend, param, sde
from refdiff import schedules as sch
from refdiff.schedules import DiscreteSchedule
from strategies import build, schedule_specs

KINDS = param.PREDICTIONS
PAIRS = [(a, b) for a, b in itertools.product(KINDS, KINDS) if a != b]
TOL = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 4e-12}
SHAPES = st.one_of(
    st.tuples(st.integers(1, 5), st.integers(1, 4)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)
DTYPES = st.sampled_from([np.float32, np.float64])
SDES = {
    "vp": lambda: sde.VPSDE(0.1, 20.0),
    "subvp": lambda: sde.SubVPSDE(0.1, 20.0),
    "cosine": lambda: sde.CosineVPSDE(0.008),
    "ve": lambda: sde.VESDE(0.01, 50.0),
}


def COEFS(src, dst, g, s):
    """(a, b) with dst = a x_t + b pred, from x_t = g x0 + s eps, score = -eps/s, v = g eps - s x0."""
    r2 = g * g + s * s
    return {
        ("eps", "x0"): (1 / g, -s / g),
        ("eps", "score"): (0.0 * g, -1 / s),
        ("eps", "v"): (-s / g, r2 / g),
        ("x0", "eps"): (1 / s, -g / s),
        ("x0", "score"): (-1 / s**2, g / s**2),
        ("x0", "v"): (g / s, -r2 / s),
        ("score", "eps"): (0.0 * g, -s),
        ("score", "x0"): (1 / g, s * s / g),
        ("score", "v"): (-s / g, -s * r2 / g),
        ("v", "eps"): (s / r2, g / r2),
        ("v", "x0"): (g / r2, -s / r2),
        ("v", "score"): (-1 / r2, -g / (s * r2)),
    }[(src, dst)]


# Conversions that divide by sigma_t (undefined at t = 0) or by gamma_t (undefined at zero SNR)
NEEDS_SIGMA = {("eps", "score"), ("x0", "eps"), ("x0", "score"), ("x0", "v"), ("v", "score")}
NEEDS_GAMMA = {("eps", "x0"), ("eps", "v"), ("score", "x0"), ("score", "v")}


# ------------------------------------------------------------ strategies
def discrete_gamma_sigma(S, t):
    """gamma_t, sigma_t by Python loops (cumulative product; 1 - alpha_bar by a positive recurrence)."""
    ab, om = [1.0], [0.0]
    for b in S.betas[1:]:
        om.append(om[-1] + ab[-1] * float(b))
        ab.append(ab[-1] * (1.0 - float(b)))
    return np.sqrt(np.array(ab)[t]), np.sqrt(np.array(om)[t])


@st.composite
def cases(draw, interior=True):
    """(process, strategy of t) with gamma_t > 0 and sigma_t > 0 at every t it draws when ``interior``."""
    if draw(st.booleans(), label="discrete"):
        P = build(draw(schedule_specs(variants=False), label="schedule"))
        zero_snr = P.alpha_bar[P.T] == 0.0
        hi = P.T - 1 if (interior and zero_snr) else P.T
        lo = 1 if interior else 0
        ts = st.integers(lo, hi)  # zero SNR needs T >= 2, so lo <= hi
    else:
        kind = draw(st.sampled_from(sorted(SDES)), label="sde")
        P = SDES[kind]()
        ts = st.floats(1e-4 if interior else 0.0, P.t_max)
    return P, ts


def gamma_sigma(P, t):
    if isinstance(P, DiscreteSchedule):
        return discrete_gamma_sigma(P, t)
    return P.mean_coef(t), P.std(t)  # checked against the paper in tests/test_sde.py


def truth(x0, eps, g, s):
    return {"x_t": g * x0 + s * eps, "eps": eps, "x0": x0, "score": -eps / s, "v": g * eps - s * x0}


def col(v, ndim):
    v = np.asarray(v, dtype=np.float64)
    return v if v.ndim == 0 else v.reshape((-1,) + (1,) * (ndim - 1))


def check_linear(got, want, a, b, x_t, pred, dtype):
    got = np.asarray(got, dtype=np.float64)
    bound = TOL[np.dtype(dtype)] * (np.abs(a * x_t) + np.abs(b * pred) + np.abs(want)) + 1e-300
    err = np.abs(got - want)
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound)}"


# ------------------------------------------------------------ conversions
@given(case=cases(), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_every_pair_against_truth_and_round_trip(case, shape, dtype, seed, data):
    P, ts = case
    if data.draw(st.booleans(), label="per_example"):
        t = np.array(data.draw(st.lists(ts, min_size=shape[0], max_size=shape[0]), label="t"))
    else:
        t = data.draw(ts, label="t")
    g, s = (col(c, len(shape)) for c in gamma_sigma(P, t))
    # float32 cannot hold x_0 = (x_t - sigma eps) / gamma once gamma_t < ~1e-30 (its rounding error / gamma
    # overflows); where gamma_t underflows to 0 in float32 the ValueError is tested in
    # test_float32_finite_at_every_step
    assume(dtype == np.float64 or np.all(g >= 1e-30))
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(shape), rng.standard_normal(shape)
    tr = truth(x0, eps, g, s)
    x_t = tr["x_t"].astype(dtype)
    x_t64 = x_t.astype(np.float64)
    for src, dst in PAIRS:
        pred = tr[src].astype(dtype)
        pred64 = pred.astype(np.float64)
        out = param.convert(pred, src, dst, x_t, P, t)
        assert out.dtype == dtype and out.shape == shape, (src, dst)
        assert np.all(np.isfinite(out)), (src, dst)
        a, b = COEFS(src, dst, g, s)
        # against the closed form applied to the (rounded) inputs, and against the float64 truth
        check_linear(out, a * x_t64 + b * pred64, a, b, x_t64, pred64, dtype)
        check_linear(out, tr[dst], a, b, x_t64, pred64, dtype)
        # round trip: back to src
        back = param.convert(out, dst, src, x_t, P, t)
        a2, b2 = COEFS(dst, src, g, s)
        out64 = out.astype(np.float64)
        slack = np.abs(b2) * (np.abs(a * x_t64) + np.abs(b * pred64) + np.abs(out64))
        bound = TOL[np.dtype(dtype)] * (np.abs(a2 * x_t64) + np.abs(b2 * out64) + np.abs(pred64) + slack) + 1e-300
        assert np.all(np.abs(back.astype(np.float64) - pred64) <= bound), (src, dst)


@given(case=cases(), shape=SHAPES, seed=st.integers(0, 2**16), data=st.data())
def test_named_helpers_match_truth(case, shape, seed, data):
    P, ts = case
    t = data.draw(ts, label="t")
    g, s = (float(c) for c in gamma_sigma(P, t))
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(shape), rng.standard_normal(shape)
    tr = truth(x0, eps, g, s)
    x_t = tr["x_t"]
    scale = np.abs(x_t) + np.abs(x0) + np.abs(eps)
    tol = TOL[np.dtype(np.float64)]
    assert np.all(np.abs(param.x0_from_eps(x_t, eps, P, t) - x0) <= tol * (scale / g + np.abs(x0)))
    assert np.all(np.abs(param.eps_from_x0(x_t, x0, P, t) - eps) <= tol * (scale * (1 + g) / s + np.abs(eps)))
    np.testing.assert_allclose(param.score_from_eps(eps, P, t), -eps / s, rtol=tol)
    np.testing.assert_allclose(param.eps_from_score(-eps / s, P, t), eps, rtol=tol)
    assert np.all(np.abs(param.v_from_eps_x0(eps, x0, P, t) - tr["v"]) <= tol * (g * np.abs(eps) + s * np.abs(x0)))


@given(case=cases(), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_same_kind_is_identity(case, shape, dtype, seed, data):
    P, ts = case
    t = data.draw(ts, label="t")
    pred = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    for kind in KINDS:
        np.testing.assert_array_equal(param.convert(pred, kind, kind, pred, P, t), pred)


@given(case=cases(), mu=st.floats(-3.0, 3.0), c=st.floats(0.05, 3.0), data=st.data())
def test_tweedie_posterior_mean_of_a_gaussian(case, mu, c, data):
    r"""Data N(mu, c^2): p_t = N(gamma mu, v) with v = gamma^2 c^2 + sigma^2, score -(x_t - gamma mu)/v.

    Tweedie: E[x_0|x_t] = (x_t + sigma^2 score)/gamma = mu + gamma c^2 (x_t - gamma mu)/v (Gaussian
    conditioning), and E[eps|x_t] = sigma (x_t - gamma mu)/v = -sigma score.
    """
    P, ts = case
    t = data.draw(ts, label="t")
    g, s = (float(c_) for c_ in gamma_sigma(P, t))
    v = g * g * c * c + s * s
    x_t = np.linspace(-3.0, 3.0, 7).reshape(7, 1) * math.sqrt(v) + g * mu
    score = -(x_t - g * mu) / v
    post_x0 = mu + g * c * c * (x_t - g * mu) / v
    post_eps = s * (x_t - g * mu) / v
    got_x0 = param.convert(score, "score", "x0", x_t, P, t)
    a, b = COEFS("score", "x0", g, s)
    # the reference itself adds mu and a term of similar size: its rounding is part of the bound
    ref_terms = abs(mu) + np.abs(g * c * c * (x_t - g * mu) / v) + np.abs(x_t) * g * c * c / v
    # + 1e-300: with a subnormal mu (hypothesis draws 1e-308) the relative bound underflows
    bound = 4e-12 * (np.abs(a * x_t) + np.abs(b * score) + ref_terms) + 1e-300
    assert np.all(np.abs(got_x0 - post_x0) <= bound)
    got_eps = param.convert(score, "score", "eps", x_t, P, t)
    np.testing.assert_allclose(got_eps, post_eps, rtol=1e-12, atol=1e-300)
    back = param.convert(post_eps, "eps", "score", x_t, P, t)
    np.testing.assert_allclose(back, score, rtol=1e-12, atol=1e-300)


# ------------------------------------------------------ zero sigma / gamma
def _endpoint_cases():
    out = []
    for name in ("linear", "cosine", "scaled_linear", "sigmoid"):
        betas = sch.make_betas(name, 1000)
        out.append((f"{name}_t0", DiscreteSchedule(betas), 0, "sigma"))
        out.append((f"{name}_zero_snr_T", DiscreteSchedule(sch.rescale_zero_terminal_snr(betas)), 1000, "gamma"))
    for kind in sorted(SDES):
        out.append((f"{kind}_t0", SDES[kind](), 0.0, "sigma"))
    return out


ENDPOINTS = _endpoint_cases()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, P, t, zero", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_division_by_zero_raises_and_the_rest_is_finite(name, P, t, zero, dtype):
    """sigma_t = 0 (t = 0) and gamma_t = 0 (t = T of a zero-terminal-SNR schedule): the conversions that
    divide by it raise ValueError; every other one returns finite values of the input dtype."""
    g, s = float(P.mean_coef(t)), float(P.std(t))
    assert (s if zero == "sigma" else g) == 0.0
    must_raise = NEEDS_SIGMA if zero == "sigma" else NEEDS_GAMMA
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    x_t = (g * x0 + s * eps).astype(dtype)
    preds = {"eps": eps, "x0": x0, "v": g * eps - s * x0, "score": eps}  # score is not finite at s = 0: any value
    for src, dst in PAIRS:
        pred = preds[src].astype(dtype)
        if (src, dst) in must_raise:
            with pytest.raises(ValueError, match="sigma_t" if zero == "sigma" else "gamma_t"):
                param.convert(pred, src, dst, x_t, P, t)
            # also when only one example of a batch sits at the singular time
            mid = 500 if isinstance(P, DiscreteSchedule) else 0.5
            with pytest.raises(ValueError):
                param.convert(pred, src, dst, x_t, P, np.array([mid, t, mid, mid]))
        else:
            out = param.convert(pred, src, dst, x_t, P, t)
            assert out.dtype == dtype and np.all(np.isfinite(out)), (src, dst)
    if zero == "sigma":
        with pytest.raises(ValueError, match="sigma_t"):
            param.score_from_eps(eps.astype(dtype), P, t)
    else:
        with pytest.raises(ValueError, match="gamma_t"):
            param.x0_from_eps(x_t, eps.astype(dtype), P, t)


def test_mixed_batch_with_one_singular_time_raises():
    S = DiscreteSchedule(sch.rescale_zero_terminal_snr(sch.linear_betas(100)))
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="gamma_t"):
        param.convert(x, "eps", "x0", x, S, np.array([5, 100, 50]))
    with pytest.raises(ValueError, match="sigma_t"):
        param.convert(x, "x0", "eps", x, S, np.array([5, 0, 50]))
    out = param.convert(x, "eps", "x0", x, S, np.array([5, 99, 50]))
    assert np.all(np.isfinite(out))


@given(spec=schedule_specs(variants=False), dtype=DTYPES, seed=st.integers(0, 2**16))
@example(spec=("linear", 1429, {"beta_start": 0.015625, "beta_end": 0.25}, False), dtype=np.float32, seed=0)
def test_float32_finite_at_every_step(spec, dtype, seed):
    """Every defined conversion at every step t = 0..T returns finite values of the input dtype.

    Defined means gamma_t > 0 and sigma_t > 0 where the conversion divides by them. A coefficient that
    is positive in float64 but 0 in the data's dtype (gamma_t < 1e-45 in float32, i.e. alpha_bar_t < 1e-90)
    must give a ValueError naming it; between that and 1e-30 (where float32 rounding divided by gamma_t
    nears overflow) a finite result or that ValueError are both fine. Never inf, NaN or a RuntimeWarning.
    """
    S = build(spec)
    T = S.T
    t_all = np.arange(T + 1)
    g, s = discrete_gamma_sigma(S, t_all)
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal((T + 1, 2)), rng.standard_normal((T + 1, 2))
    tr = truth(x0, eps, g[:, None], np.where(s > 0, s, 1.0)[:, None])  # score at t = 0: any finite value
    x_t = (g[:, None] * x0 + s[:, None] * eps).astype(dtype)
    g_d, s_d = g.astype(dtype), s.astype(dtype)
    for src, dst in PAIRS:
        defined = np.ones(T + 1, dtype=bool)  # in exact arithmetic
        clear = np.ones(T + 1, dtype=bool)  # representable with room to spare in dtype
        zero = np.zeros(T + 1, dtype=bool)  # 0 in dtype although positive in float64
        if (src, dst) in NEEDS_SIGMA:
            defined &= s > 0
            clear &= s_d >= 1e-30
            zero |= (s > 0) & (s_d == 0)
        if (src, dst) in NEEDS_GAMMA:
            defined &= g > 0
            clear &= (g_d >= 1e-30) if dtype == np.float32 else (g_d > 0)
            zero |= (g > 0) & (g_d == 0)

        def run(rows):
            return param.convert(tr[src][rows].astype(dtype), src, dst, x_t[rows], S, t_all[rows])

        out = run(defined & clear)
        assert out.dtype == dtype and np.all(np.isfinite(out)), (src, dst)
        if np.any(zero):
            with pytest.raises(ValueError, match="gamma_t|sigma_t"):
                run(zero)
        middle = defined & ~clear & ~zero
        if np.any(middle):
            try:
                out = run(middle)
            except ValueError as exc:
                assert "gamma_t" in str(exc) or "sigma_t" in str(exc)
            else:
                assert out.dtype == dtype and np.all(np.isfinite(out)), (src, dst)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda S, x: param.convert(x, "noise", "x0", x, S, 3), ValueError, "src"),
        (lambda S, x: param.convert(x, "eps", "epsilon", x, S, 3), ValueError, "dst"),
        (lambda S, x: param.convert(x, "eps", None, x, S, 3), ValueError, "dst"),
        (lambda S, x: param.convert(x[:2], "eps", "x0", x, S, 3), ValueError, "pred"),
        (lambda S, x: param.convert(x + 1j, "eps", "x0", x, S, 3), TypeError, "pred"),
        (lambda S, x: param.convert(x, "eps", "x0", x + 1j, S, 3), TypeError, "x_t"),
        (lambda S, x: param.convert(x, "eps", "x0", x, S, np.array([1, 2])), ValueError, r"\bt\b"),
        (lambda S, x: param.convert(x, "eps", "x0", x, S, 3.0), TypeError, r"\bt\b"),
        (lambda S, x: param.convert(x, "eps", "x0", x, S, 11), ValueError, r"\bt\b"),
        (lambda S, x: param.convert(x, "eps", "x0", x, sde.VPSDE(), 1.5), ValueError, r"\bt\b"),
        (lambda S, x: param.convert(x, "eps", "x0", x, sde.VPSDE(), float("nan")), ValueError, r"\bt\b"),
        (lambda S, x: param.v_from_eps_x0(x, x[:1], S, 3), ValueError, "x0"),
        (lambda S, x: param.score_from_eps(x + 1j, S, 3), TypeError, "eps"),
        (lambda S, x: param.eps_from_score(x.astype(np.complex64), S, 3), TypeError, "score"),
    ],
)
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(DiscreteSchedule(sch.linear_betas(10)), np.ones((3, 2)))


# ------------------------------------------------------ array API strict
@pytest.mark.parametrize("proc", ["discrete", "zero_snr"] + sorted(SDES))
def test_convert_on_namespace(xp, float_dtype, proc):
    """param.convert and the named helpers on ``xp`` arrays equal NumPy's (float64 to 1e-12)."""
    if proc in SDES:
        P, t = SDES[proc](), np.array([0.1, 0.5, 0.9])
    else:
        betas = sch.linear_betas(50)
        P = DiscreteSchedule(sch.rescale_zero_terminal_snr(betas) if proc == "zero_snr" else betas)
        t = np.array([1, 25, 49])
    rng = np.random.default_rng(2)
    a_np, b_np = (rng.standard_normal((3, 2, 2)).astype(float_dtype) for _ in range(2))
    a, b = xp.asarray(a_np), xp.asarray(b_np)
    tol = 1e-12 if float_dtype == "float64" else 1e-6
    calls = [lambda u, v, src=src, dst=dst: param.convert(u, src, dst, v, P, t) for src, dst in PAIRS]
    calls += [
        lambda u, v: param.x0_from_eps(v, u, P, t),
        lambda u, v: param.eps_from_x0(v, u, P, t),
        lambda u, v: param.score_from_eps(u, P, t),
        lambda u, v: param.eps_from_score(u, P, t),
        lambda u, v: param.v_from_eps_x0(u, v, P, t),
    ]
    for call in calls:
        got, want = call(a, b), call(a_np, b_np)
        assert type(got) is type(a) and got.dtype == a.dtype
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=tol, atol=tol * np.max(np.abs(want)))


def test_non_finite_predictions_and_points_are_refused_by_name():
    vp, ok, a = sde.VPSDE(), np.zeros((1, 2)), np.array([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="pred must be finite"):
        param.convert(a, "eps", "x0", ok, vp, 0.5)
    with pytest.raises(ValueError, match="x_t must be finite"):
        param.convert(ok, "eps", "x0", a, vp, 0.5)
    with pytest.raises(ValueError, match="eps must be finite"):
        param.score_from_eps(a, vp, 0.5)
