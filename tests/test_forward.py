r"""Tests for refdiff.forward: q(x_t|x_{t-1}), q(x_t|x_0), q(x_t|x_s), the posterior and its eps form.

Discrete expectations come from Python loops over the betas (cumulative products,
the positive recurrence for 1 - alpha_bar); continuous ones from the process's
marginals, which tests/test_sde.py checks against the paper's formulas. The
posterior is checked against Bayes' rule for two Gaussians, written here as a
sum of precisions, not as the library's coefficient formulas.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import backend, forward, sde
from refdiff import schedules as sch
from refdiff.schedules import DiscreteSchedule
from strategies import build, schedule_specs

TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}
SHAPES = st.one_of(
    st.tuples(st.integers(1, 5), st.integers(1, 4)),  # (N, D)
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),  # (N, C, H, W)
)
DTYPES = st.sampled_from([np.float32, np.float64])
# continuous times: 0, 1 and [1e-100, 1] (below ~1e-150 sigma_t^2 underflows to 0)
TIMES = st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-100, 1.0))


# ------------------------------------------------------------ strategies
SDES = {
    "vp": lambda: sde.VPSDE(0.1, 20.0),
    "subvp": lambda: sde.SubVPSDE(0.1, 20.0),
    "cosine": lambda: sde.CosineVPSDE(0.008),
    "ve": lambda: sde.VESDE(0.01, 50.0),
}


def ref_tables(betas):
    """alpha_bar and 1 - alpha_bar by Python loops (the latter by om_t = om_{t-1} + alpha_bar_{t-1} beta_t)."""
    ab, om = [1.0], [0.0]
    for b in betas[1:]:
        om.append(om[-1] + ab[-1] * float(b))
        ab.append(ab[-1] * (1.0 - float(b)))
    return np.array(ab), np.array(om)


def ref_transition(betas, s, t):
    """(gamma_{t|s}, sigma^2_{t|s}) by a loop over alpha_{s+1..t}."""
    g2, om = 1.0, 0.0
    for k in range(int(s) + 1, int(t) + 1):
        om += g2 * float(betas[k])
        g2 *= 1.0 - float(betas[k])
    return math.sqrt(g2), om


def col(v, ndim):
    """Per-example float64 values as a column (N, 1, ..., 1); scalars stay scalars."""
    v = np.asarray(v, dtype=np.float64)
    return v if v.ndim == 0 else v.reshape((-1,) + (1,) * (ndim - 1))


def assert_lin_close(got, want, scale, dtype):
    """|got - want| <= tol(dtype) * scale, where scale bounds the magnitude of the summed terms."""
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - want)
    bound = TOL[np.dtype(dtype)] * (np.asarray(scale) + 1e-300)
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound)}"


def draw_t(data, S, shape, lo=0, label="t"):
    if data.draw(st.booleans(), label="per_example"):
        return np.array(data.draw(st.lists(st.integers(lo, S.T), min_size=shape[0], max_size=shape[0]), label=label))
    return data.draw(st.integers(lo, S.T), label=label)


def data_arrays(seed, shape, dtype, k=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(k)]


# --------------------------------------------------------------- q_sample
@given(spec=schedule_specs(variants=False), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_q_sample_discrete_closed_form(spec, shape, dtype, seed, data):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. eq. 4)."""
    S = build(spec)
    t = draw_t(data, S, shape)
    x0, noise = data_arrays(seed, shape, dtype)
    ab, om = ref_tables(S.betas)
    g, s = col(np.sqrt(ab[t]), len(shape)), col(np.sqrt(om[t]), len(shape))
    got = forward.q_sample(S, x0, t, noise)
    assert got.dtype == dtype and got.shape == shape
    x64, n64 = x0.astype(np.float64), noise.astype(np.float64)
    assert_lin_close(got, g * x64 + s * n64, np.abs(g * x64) + np.abs(s * n64), dtype)


@pytest.mark.parametrize("kind", sorted(SDES))
@given(shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), t=TIMES, per_example=st.booleans())
def test_q_sample_sde_closed_form(kind, shape, dtype, seed, t, per_example):
    P = SDES[kind]()
    x0, noise = data_arrays(seed, shape, dtype)
    if per_example:
        t = np.random.default_rng(seed).uniform(0.0, 1.0, size=shape[0])
    g, s = col(P.mean_coef(t), len(shape)), col(P.std(t), len(shape))
    got = forward.q_sample(P, x0, t, noise)
    assert got.dtype == dtype and got.shape == shape
    x64, n64 = x0.astype(np.float64), noise.astype(np.float64)
    assert_lin_close(got, g * x64 + s * n64, np.abs(g * x64) + np.abs(s * n64), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_q_sample_at_t0_is_x0(dtype):
    x0, noise = data_arrays(0, (4, 3), dtype)
    S = DiscreteSchedule(sch.linear_betas(100))
    np.testing.assert_array_equal(forward.q_sample(S, x0, 0, noise), x0)
    for make in SDES.values():
        np.testing.assert_array_equal(forward.q_sample(make(), x0, 0.0, noise), x0)


# ---------------------------------------------------------- q_sample_from
@given(spec=schedule_specs(variants=False), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_q_sample_from_discrete(spec, shape, dtype, seed, data):
    S = build(spec)
    s = data.draw(st.integers(0, S.T), label="s")
    t = data.draw(st.integers(s, S.T), label="t")
    x_s, noise = data_arrays(seed, shape, dtype)
    g, v = ref_transition(S.betas, s, t)
    got = forward.q_sample_from(S, x_s, s, t, noise)
    assert got.dtype == dtype and got.shape == shape
    x64, n64 = x_s.astype(np.float64), noise.astype(np.float64)
    sd = math.sqrt(v)
    assert_lin_close(got, g * x64 + sd * n64, np.abs(g * x64) + np.abs(sd * n64), dtype)
    if s == 0:  # q(x_t | x_0)
        assert_lin_close(got, forward.q_sample(S, x_s, t, noise), np.abs(g * x64) + np.abs(sd * n64), dtype)


def test_q_posterior_log_variance_of_a_row_does_not_depend_on_the_others():
    """Rows (s, t) = (0, 1) and (2, 5): the first keeps the clipped table value as it does alone (it was -inf
    batched with a row whose s is not t - 1), the second is log of its variance."""
    S = DiscreteSchedule(sch.linear_betas(10))
    x_t, x0 = data_arrays(4, (2, 3), np.float64)
    _, _, alone = forward.q_posterior(S, x_t[:1], x0[:1], np.array([1]), s=np.array([0]))
    _, var, both = forward.q_posterior(S, x_t, x0, np.array([1, 5]), s=np.array([0, 2]))
    np.testing.assert_array_equal(both[0], alone[0])
    assert np.all(both[0] == S.posterior_log_variance[2])
    np.testing.assert_allclose(both[1], np.log(var[1]), rtol=1e-15)


@given(
    spec=st.one_of(schedule_specs(variants=False), st.sampled_from(sorted(SDES))),
    shape=SHAPES,
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_sample_paths_compose(spec, shape, dtype, seed, data):
    r"""x_s = gamma_s x_0 + sigma_s e1, then x_t = gamma_{t|s} x_s + sigma_{t|s} e2, is
    q_sample(x_0, t, eps) with eps = (gamma_{t|s} sigma_s e1 + sigma_{t|s} e2) / sigma_t (float64 algebra)."""
    if isinstance(spec, str):
        P = SDES[spec]()
        s, t = sorted(data.draw(st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=2), label="s, t"))
        gamma_s, var_s, var_t = float(P.mean_coef(s)), float(P.variance(s)), float(P.variance(t))
        g_ts, v_ts = (float(c) for c in P.transition(s, t))
    else:
        P = build(spec)
        s, t = sorted(data.draw(st.lists(st.integers(1, P.T), min_size=2, max_size=2), label="s, t"))
        ab, om = ref_tables(P.betas)
        gamma_s, var_s, var_t = math.sqrt(ab[s]), om[s], om[t]
        g_ts, v_ts = ref_transition(P.betas, s, t)
    x0, e1, e2 = data_arrays(seed, shape, dtype, k=3)
    x_s = forward.q_sample(P, x0, s, e1)
    x_t = forward.q_sample_from(P, x_s, s, t, e2)
    assert x_s.dtype == x_t.dtype == dtype
    e1_64, e2_64 = e1.astype(np.float64), e2.astype(np.float64)
    eps = (g_ts * math.sqrt(var_s) * e1_64 + math.sqrt(v_ts) * e2_64) / math.sqrt(var_t)
    scale = (np.abs(x0) + np.abs(e1) + np.abs(e2)).astype(np.float64) * max(1.0, math.sqrt(var_t))
    assert_lin_close(x_t, forward.q_sample(P, x0.astype(np.float64), t, eps), scale, dtype)
    assert_lin_close(x_s, gamma_s * x0.astype(np.float64) + math.sqrt(var_s) * e1_64, scale, dtype)


# ----------------------------------------------------------------- q_step
@given(spec=schedule_specs(variants=False), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_q_step_formula(spec, shape, dtype, seed, data):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (Ho et al. eq. 2)."""
    S = build(spec)
    t = draw_t(data, S, shape, lo=1)
    x, noise = data_arrays(seed, shape, dtype)
    b = np.asarray(S.betas)[t]
    a_col = col(np.sqrt(1.0 - b), len(shape))
    b_col = col(np.sqrt(b), len(shape))
    got = forward.q_step(S, x, t, noise)
    assert got.dtype == dtype and got.shape == shape
    x64, n64 = x.astype(np.float64), noise.astype(np.float64)
    assert_lin_close(got, a_col * x64 + b_col * n64, np.abs(a_col * x64) + np.abs(b_col * n64), dtype)


@given(spec=schedule_specs(max_T=60, variants=False), shape=SHAPES, seed=st.integers(0, 2**16), data=st.data())
def test_chain_of_steps_is_q_sample_pathwise(spec, shape, seed, data):
    r"""Applying q_step for k = 1..t with noises e_k gives q_sample(x_0, t, eps) with
    eps = sum_k (prod_{j>k} sqrt(alpha_j)) sqrt(beta_k) e_k / sigma_t: the t-fold composition, exactly."""
    S = build(spec)
    t = data.draw(st.integers(1, S.T), label="t")
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(shape)
    x = x0
    acc = np.zeros(shape)
    scale = np.abs(x0)
    for k in range(1, t + 1):
        e = rng.standard_normal(shape)
        x = forward.q_step(S, x, k, e)
        acc = math.sqrt(1.0 - float(S.betas[k])) * acc + math.sqrt(float(S.betas[k])) * e
        scale = scale + np.abs(e)
    _, om = ref_tables(S.betas)
    eps = acc / math.sqrt(om[t])
    np.testing.assert_allclose(x, forward.q_sample(S, x0, t, eps), rtol=0, atol=1e-12 * float(np.max(scale)))


@pytest.mark.parametrize(
    "betas, t",
    [
        (sch.linear_betas(100, 1e-3, 0.05), 100),
        (sch.linear_betas(100, 1e-3, 0.05), 7),
        (sch.cosine_betas(50), 50),
        (sch.rescale_zero_terminal_snr(sch.linear_betas(20, 1e-3, 0.1)), 20),
        (sch.rescale_zero_terminal_snr(sch.linear_betas(20, 1e-3, 0.1)), 19),
    ],
    ids=["linear_T", "linear_7", "cosine_T", "zero_snr_T", "zero_snr_T-1"],
)
def test_chain_of_steps_matches_q_sample_in_distribution(betas, t):
    r"""Moment z-test: t forward steps from x_0 against q(x_t|x_0) = N(gamma_t x_0, sigma_t^2 I) (fixed seed).

    n = 400000 residuals r = x_t - gamma_t x_0 (gamma_t, sigma_t from loops; x_0 varies per row).
    z = mean(r) sqrt(n) / sigma_t and z = (var(r) / sigma_t^2 - 1) / sqrt(2 / (n - 1)); both must have |z| < 5.
    Under the null each exceeds 5 with probability 5.7e-7 (about 5.7e-6 for the 10 statistics of this
    test); the test catches a variance error above 1.1% (e.g. sigma_t = 1 - alpha_bar instead of its root)
    and a mean bias above 0.008 sigma_t.
    """
    S = DiscreteSchedule(betas)
    rng = np.random.default_rng(12345)
    x0 = rng.uniform(-2.0, 2.0, size=(200_000, 2))
    x = x0
    for k in range(1, t + 1):
        x = forward.q_step(S, x, k, rng.standard_normal(x0.shape))
    ab, om = ref_tables(S.betas)
    r = (x - math.sqrt(ab[t]) * x0).ravel()
    n = r.size
    z_mean = r.mean() * math.sqrt(n / om[t])
    z_var = (r.var(ddof=1) / om[t] - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)


# ------------------------------------------------------------- posterior
def bayes_posterior(g_ts, v_ts, gamma_s, var_s, x_t, x0):
    r"""q(x_s|x_t,x_0) from q(x_t|x_s) = N(g_ts x_s, v_ts) and q(x_s|x_0) = N(gamma_s x_0, var_s): precisions add."""
    precision = g_ts**2 / v_ts + 1.0 / var_s
    var = 1.0 / precision
    return var * (g_ts / v_ts * x_t + gamma_s / var_s * x0), var


@given(spec=schedule_specs(variants=False), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16), data=st.data())
def test_q_posterior_discrete_matches_bayes(spec, shape, dtype, seed, data):
    r"""Ho et al. eq. 6-7 against Bayes: precision alpha_t/beta_t + 1/(1-abar_{t-1}),
    mean var (sqrt(alpha_t)/beta_t x_t + sqrt(abar_{t-1})/(1-abar_{t-1}) x_0), for t >= 2."""
    S = build(spec)
    if S.T < 2:
        return
    t = data.draw(st.integers(2, S.T), label="t")
    x_t, x0 = data_arrays(seed, shape, dtype)
    ab, om = ref_tables(S.betas)
    beta = float(S.betas[t])
    mean_ref, var_ref = bayes_posterior(math.sqrt(1.0 - beta), beta, math.sqrt(ab[t - 1]), om[t - 1],
                                        x_t.astype(np.float64), x0.astype(np.float64))
    mean, var, log_var = forward.q_posterior(S, x_t, x0, t)
    assert mean.dtype == var.dtype == log_var.dtype == dtype
    assert mean.shape == var.shape == log_var.shape == shape
    assert not var.flags.writeable and not log_var.flags.writeable
    scale = np.abs(x_t.astype(np.float64)) + np.abs(x0.astype(np.float64))
    assert_lin_close(mean, mean_ref, scale, dtype)
    np.testing.assert_allclose(var, var_ref, rtol=TOL[np.dtype(dtype)])
    log_tol = TOL[np.dtype(dtype)] * max(1.0, abs(math.log(var_ref)))
    np.testing.assert_allclose(log_var, math.log(var_ref), rtol=0, atol=log_tol)
    # the same posterior asked for with an explicit s = t - 1
    mean2, var2, _ = forward.q_posterior(S, x_t, x0, t, s=t - 1)
    np.testing.assert_array_equal(var2, var)
    assert_lin_close(mean2, mean_ref, scale, dtype)


@pytest.mark.parametrize("betas", [sch.linear_betas(10), sch.linear_betas(1, 0.2, 0.3)], ids=["T10", "T1"])
def test_q_posterior_at_t1_is_point_mass_at_x0(betas):
    S = DiscreteSchedule(betas)
    x_t, x0 = data_arrays(3, (3, 2), np.float64)
    mean, var, log_var = forward.q_posterior(S, x_t, x0, 1)
    np.testing.assert_allclose(mean, x0, rtol=1e-15, atol=0)
    assert np.all(var == 0.0)
    clipped = S.posterior_log_variance[2] if S.T >= 2 else math.log(S.betas[1])
    assert np.all(log_var == clipped) and np.all(np.isfinite(log_var))


@given(
    spec=st.one_of(schedule_specs(variants=False), st.sampled_from(sorted(SDES))),
    shape=SHAPES,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_q_posterior_general_s(spec, shape, seed, data):
    """q(x_s|x_t,x_0) for any s < t (Kingma et al. 2021 eq. 28) against Bayes; s = 0 is the point mass at x_0."""
    if isinstance(spec, str):
        P = SDES[spec]()
        s, t = sorted(data.draw(st.lists(TIMES, min_size=2, max_size=2, unique=True), label="s, t"))
        g_ts, v_ts = (float(c) for c in P.transition(s, t))
        gamma_s, var_s = float(P.mean_coef(s)), float(P.variance(s))
    else:
        P = build(spec)
        s, t = sorted(data.draw(st.lists(st.integers(0, P.T), min_size=2, max_size=2, unique=True), label="s, t"))
        ab, om = ref_tables(P.betas)
        g_ts, v_ts = ref_transition(P.betas, s, t)
        gamma_s, var_s = math.sqrt(ab[s]), om[s]
    x_t, x0 = data_arrays(seed, shape, np.float64)
    mean, var, log_var = forward.q_posterior(P, x_t, x0, t, s=s)
    scale = np.abs(x_t) + np.abs(x0)
    if var_s == 0.0:
        assert_lin_close(mean, x0, scale, np.float64)
        assert np.all(var == 0.0)
        if isinstance(P, DiscreteSchedule) and t == 1:  # s = t - 1: the table's clipped log variance
            assert np.all(log_var == P.posterior_log_variance[1]) and np.all(np.isfinite(log_var))
        else:
            assert np.all(log_var == -np.inf)
        return
    mean_ref, var_ref = bayes_posterior(g_ts, v_ts, gamma_s, var_s, x_t, x0)
    assert_lin_close(mean, mean_ref, scale, np.float64)
    np.testing.assert_allclose(var, var_ref, rtol=1e-12)
    np.testing.assert_allclose(log_var, math.log(var_ref), rtol=0, atol=1e-12 * max(1.0, abs(math.log(var_ref))))


@given(
    spec=st.one_of(schedule_specs(variants=False), st.sampled_from(sorted(SDES))),
    shape=SHAPES,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_posterior_mean_from_eps(spec, shape, seed, data):
    r"""With x_t = gamma_t x_0 + sigma_t eps, the eps form equals the x_0 form of the posterior mean.

    For s = t - 1 it is Ho et al. eq. 11: (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t).
    Both subtract nearly equal terms and divide by gamma_{t|s}, so the bound scales with 1 / gamma_{t|s}.
    """
    x0, eps = data_arrays(seed, shape, np.float64)
    if isinstance(spec, str):
        P = SDES[spec]()
        s, t = sorted(data.draw(st.lists(st.floats(1e-3, P.t_max), min_size=2, max_size=2, unique=True), label="s, t"))
        gamma_t, sigma_t = float(P.mean_coef(t)), float(P.std(t))
        g_ts = float(P.transition(s, t)[0])
    else:
        P = build(spec)
        t = data.draw(st.integers(1, P.T - 1 if spec[3] else P.T), label="t")  # zero SNR: t = T raises (below)
        s = t - 1
        ab, om = ref_tables(P.betas)
        gamma_t, sigma_t = math.sqrt(ab[t]), math.sqrt(om[t])
        beta = float(P.betas[t])
        g_ts = math.sqrt(1.0 - beta)
    x_t = gamma_t * x0 + sigma_t * eps
    mean_x0, _, _ = forward.q_posterior(P, x_t, x0, t, s=s)
    got = forward.posterior_mean_from_eps(P, x_t, eps, t, s=s)
    scale = (np.abs(x_t) + np.abs(eps) + np.abs(x0)) / g_ts
    assert_lin_close(got, mean_x0, scale, np.float64)
    if not isinstance(spec, str):
        ho = (x_t - beta / sigma_t * eps) / g_ts
        assert_lin_close(got, ho, scale, np.float64)
        assert_lin_close(forward.posterior_mean_from_eps(P, x_t, eps, t), ho, scale, np.float64)


@given(spec=schedule_specs(zero_snr=True, variants=False))
def test_posterior_mean_from_eps_raises_at_zero_snr(spec):
    S = build(spec)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="zero SNR"):
        forward.posterior_mean_from_eps(S, x, x, S.T)
    with pytest.raises(ValueError, match="zero SNR"):
        forward.posterior_mean_from_eps(S, x, x, np.array([1, S.T]))
    # the x_0 form is fine there: mean = sqrt(abar_{T-1}) x_0, variance 1 - abar_{T-1}
    ab, om = ref_tables(S.betas)
    mean, var, _ = forward.q_posterior(S, x, 2 * x, S.T)
    np.testing.assert_allclose(mean, 2 * math.sqrt(ab[S.T - 1]) * x, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(var, om[S.T - 1], rtol=1e-12)


# ----------------------------------------------------- float32 everywhere
SCHEDULES_F32 = {
    **{name: sch.make_betas(name, 1000) for name in ("linear", "scaled_linear", "cosine", "sigmoid")},
    **{f"{name}_zero_snr": sch.rescale_zero_terminal_snr(sch.make_betas(name, 1000))
       for name in ("linear", "scaled_linear", "cosine", "sigmoid")},
    "cosine_unclipped": sch.cosine_betas(1000, max_beta=None),
    "T1": sch.linear_betas(1, 0.5, 0.5),
    "T2_zero_snr": sch.rescale_zero_terminal_snr(sch.linear_betas(2, 0.1, 0.2)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES_F32))
def test_float32_outputs_finite_at_every_step(name):
    """float32 in, float32 out, finite, at every t = 0..T (posterior: t = 1..T), zero terminal SNR included."""
    _check_float32_every_step(DiscreteSchedule(SCHEDULES_F32[name]))


@given(spec=schedule_specs(variants=False))
def test_float32_outputs_finite_random_schedules(spec):
    _check_float32_every_step(build(spec))


def _check_float32_every_step(S):
    T = S.T
    rng = np.random.default_rng(0)
    n = T + 1
    x0 = rng.standard_normal((n, 2)).astype(np.float32)
    noise = rng.standard_normal((n, 2)).astype(np.float32)
    t_all = np.arange(n)
    outs = [
        forward.q_sample(S, x0, t_all, noise),
        forward.q_sample_from(S, x0, np.maximum(t_all - 1, 0), t_all, noise),
        forward.q_sample_from(S, x0, np.zeros(n, dtype=int), t_all, noise),
        forward.q_sample_from(S, x0, t_all, t_all, noise),
    ]
    t1 = t_all[1:]
    outs += list(forward.q_posterior(S, x0[1:], noise[1:], t1))
    # s = 0 for every t: mean and variance (the log variance is -inf there, by definition)
    outs += list(forward.q_posterior(S, x0[1:], noise[1:], t1, s=np.zeros(T, dtype=int))[:2])
    outs.append(forward.q_step(S, x0[1:], t1, noise[1:]))
    zero_snr = S.alpha_bar[T] == 0.0
    t_eps = t1[:-1] if zero_snr else t1
    if t_eps.size:
        outs.append(forward.posterior_mean_from_eps(S, x0[1 : 1 + t_eps.size], noise[1 : 1 + t_eps.size], t_eps))
    for t in (0, 1, T):  # scalar steps too
        outs.append(forward.q_sample(S, x0, t, noise))
        if t >= 1:
            outs.extend(forward.q_posterior(S, x0, noise, t))
    for out in outs:
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
    if zero_snr:
        with pytest.raises(ValueError, match="zero SNR"):
            forward.posterior_mean_from_eps(S, x0, noise, T)


@pytest.mark.parametrize("kind", sorted(SDES))
def test_float32_outputs_finite_sde(kind):
    P = SDES[kind]()
    rng = np.random.default_rng(1)
    x0, noise = (rng.standard_normal((7, 3)).astype(np.float32) for _ in range(2))
    t = np.array([0.0, 1e-6, 0.1, 0.5, 0.9, P.t_max, 1.0])
    s = np.array([0.0, 0.0, 0.05, 0.5, 0.2, 0.0, 0.999])
    outs = [forward.q_sample(P, x0, t, noise), forward.q_sample_from(P, x0, s, t, noise)]
    outs += list(forward.q_posterior(P, x0[1:], noise[1:], t[1:], s=0.5 * t[1:]))
    outs.append(forward.posterior_mean_from_eps(P, x0[1:6], noise[1:6], t[1:6], s=s[1:6] * 0.5))
    for out in outs:
        assert out.dtype == np.float32 and np.all(np.isfinite(out))


# ------------------------------------------------------ float16 pitfall
@given(
    name=st.sampled_from(["linear", "scaled_linear"]),
    T=st.integers(10, 2000),
    beta_start=st.floats(1e-6, 2e-4),
    beta_end=st.floats(1e-3, 0.05),
    seed=st.integers(0, 2**16),
)
def test_float16_naive_tables_break_cast_at_use_does_not(name, T, beta_start, beta_end, seed):
    r"""PITFALLS 1: float16 rounds alpha_bar_t to 1 for small t (1 - 2^-12 and above round up).

    A table stored in float16 then has sigma_t = sqrt(1 - alpha_bar_t) = 0 and an infinite posterior
    coefficient beta_t sqrt(abar_{t-1}) / (1 - abar_t); refdiff's float64 tables cast at use give
    sigma_t > 0 in float16, so q_sample adds the noise.
    """
    S = DiscreteSchedule(sch.make_betas(name, T, beta_start=beta_start, beta_end=beta_end))
    ab16 = S.alpha_bar.astype(np.float16)
    small = np.flatnonzero(ab16[1:] == 1) + 1  # steps t >= 1 where float16 gives alpha_bar_t = 1
    assert small.size >= 1 and small[0] == 1  # beta_1 < 2^-12 guarantees t = 1 at least
    with np.errstate(divide="ignore", invalid="ignore"):
        naive_sigma = np.sqrt(np.float16(1) - ab16[small])
        naive_coef = S.betas[small].astype(np.float16) * np.sqrt(ab16[small - 1]) / (np.float16(1) - ab16[small])
    assert np.all(naive_sigma == 0) and not np.any(np.isfinite(naive_coef))

    rng = np.random.default_rng(seed)
    noise = (np.sign(rng.standard_normal((small.size, 3))) * rng.uniform(0.5, 2.0, (small.size, 3))).astype(np.float16)
    x0 = np.zeros((small.size, 3), dtype=np.float16)
    sigma16 = backend.per_example(S.std(small), x0)
    assert sigma16.dtype == np.float16 and np.all(sigma16 > 0)
    xt = forward.q_sample(S, x0, small, noise)
    assert xt.dtype == np.float16
    assert np.all(xt != 0) and np.all(np.sign(xt) == np.sign(noise))  # the naive table would return x_0 = 0
    np.testing.assert_allclose(xt.astype(np.float64), np.sqrt(1.0 - S.alpha_bar[small])[:, None] * noise, rtol=2e-3)
    mean, var, log_var = forward.q_posterior(S, noise, x0 + np.float16(1), small)
    assert mean.dtype == np.float16 and np.all(np.isfinite(mean)) and np.all(np.isfinite(log_var))


# ------------------------------------------------------------- bad input
def _S(T=10):
    return DiscreteSchedule(sch.linear_betas(T))


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda S, x: forward.q_sample(S, x, 3, np.zeros((3, 2))), ValueError, "noise"),
        (lambda S, x: forward.q_sample(S, x, np.array([1, 2]), x), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_sample(S, x, np.array([1, 2, 3, 4]), x), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_sample(S, x, -1, x), ValueError, r"t must lie in 0\.\.10"),
        (lambda S, x: forward.q_sample(S, x, 11, x), ValueError, r"t must lie in 0\.\.10"),
        (lambda S, x: forward.q_sample(S, x, 3.0, x), TypeError, r"\bt must be an integer"),
        (lambda S, x: forward.q_sample(S, x, np.array([1.0, 2.0, 3.0]), x), TypeError, r"\bt must be an integer"),
        (lambda S, x: forward.q_sample(S, x + 1j, 3, x), TypeError, "x0"),
        (lambda S, x: forward.q_sample(S, x, 3, x.astype(np.complex64)), TypeError, "noise"),
        (lambda S, x: forward.q_sample_from(S, x, 5, 4, x), ValueError, "s must not exceed t"),
        (lambda S, x: forward.q_sample_from(S, x, 1, 3, x[:2]), ValueError, "noise"),
        (lambda S, x: forward.q_sample_from(S, x, 1.0, 3, x), TypeError, r"\bs must be an integer"),
        (lambda S, x: forward.q_step(S, x, 0, x), ValueError, r"t must lie in 1\.\.10"),
        (lambda S, x: forward.q_step(S, x, 11, x), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_step(sde.VPSDE(), x, 1, x), TypeError, "schedule"),
        (lambda S, x: forward.q_step(S, x, 2, x[:, :2]), ValueError, "noise"),
        (lambda S, x: forward.q_posterior(S, x, x[:2], 3), ValueError, "x0"),
        (lambda S, x: forward.q_posterior(S, x, x, 0), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_posterior(S, x, x, 3, s=3), ValueError, r"\bs\b"),
        (lambda S, x: forward.q_posterior(S, x, x, 3, s=5), ValueError, r"\bs\b"),
        (lambda S, x: forward.q_posterior(sde.VPSDE(), x, x, 0.5), ValueError, r"\bs\b"),
        (lambda S, x: forward.q_posterior(sde.VPSDE(), x, x, 0.5, s=0.5), ValueError, r"\bs\b"),
        (lambda S, x: forward.posterior_mean_from_eps(S, x, x[:1], 3), ValueError, "eps"),
        (lambda S, x: forward.posterior_mean_from_eps(sde.VESDE(), x, x, 0.5), ValueError, r"\bs\b"),
        (lambda S, x: forward.q_sample(sde.VPSDE(), x, 1.5, x), ValueError, r"t must lie in \[0, 1\]"),
        (lambda S, x: forward.q_sample(sde.VPSDE(), x, float("nan"), x), ValueError, "t must be finite"),
        (lambda S, x: forward.q_sample(sde.VESDE(), x, np.array([0.1, 0.2]), x), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_sample_from(sde.VESDE(), x, 0.5, 1.5, x), ValueError, r"\bt\b"),
        (lambda S, x: forward.q_sample_from(sde.VESDE(), x, 0.6, 0.5, x), ValueError, "s must not exceed t"),
    ],
)
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(_S(), np.zeros((3, 3)))


# ------------------------------------------------------ array API strict
@pytest.mark.parametrize("proc", ["discrete", "zero_snr"] + sorted(SDES))
def test_closed_forms_on_namespace(xp, float_dtype, proc):
    """q_sample, q_sample_from, q_posterior, q_step, posterior_mean_from_eps on ``xp`` arrays equal NumPy's."""
    rng = np.random.default_rng(4)
    a_np, b_np = (rng.standard_normal((3, 2, 2)).astype(float_dtype) for _ in range(2))
    a, b = xp.asarray(a_np), xp.asarray(b_np)
    tol = 1e-12 if float_dtype == "float64" else 1e-6
    if proc in SDES:
        P = SDES[proc]()
        t, s = np.array([0.2, 0.5, 0.9]), np.array([0.1, 0.5, 0.3])
        calls = [
            lambda u, v: forward.q_sample(P, u, t, v),
            lambda u, v: forward.q_sample_from(P, u, s, t, v),
            lambda u, v: forward.posterior_mean_from_eps(P, u, v, t, s=s * 0.5),
        ] + [lambda u, v, i=i: forward.q_posterior(P, u, v, t, s=s * 0.5)[i] for i in range(3)]
    else:
        betas = sch.linear_betas(50)
        P = DiscreteSchedule(sch.rescale_zero_terminal_snr(betas) if proc == "zero_snr" else betas)
        t, s = np.array([1, 25, 50]), np.array([0, 25, 10])
        calls = [
            lambda u, v: forward.q_sample(P, u, t, v),
            lambda u, v: forward.q_sample(P, u, 50, v),
            lambda u, v: forward.q_sample_from(P, u, s, t, v),
            lambda u, v: forward.q_step(P, u, t, v),
            lambda u, v: forward.posterior_mean_from_eps(P, u, v, t - 1 + (t == 1)),
        ] + [lambda u, v, i=i: forward.q_posterior(P, u, v, t)[i] for i in range(3)] + [
            lambda u, v, i=i: forward.q_posterior(P, u, v, t, s=np.array([0, 3, 40]))[i] for i in range(2)
        ]
    for call in calls:
        got, want = call(a, b), call(a_np, b_np)
        assert type(got) is type(a) and got.dtype == a.dtype
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda a, ok, s, vp: forward.q_sample(vp, a, 0.5, ok), "x0"),
        (lambda a, ok, s, vp: forward.q_sample(vp, ok, 0.5, a), "noise"),
        (lambda a, ok, s, vp: forward.q_sample_from(vp, a, 0.2, 0.5, ok), "x_s"),
        (lambda a, ok, s, vp: forward.q_step(s, a, 3, ok), "x_prev"),
        (lambda a, ok, s, vp: forward.q_posterior(s, ok, a, 3), "x0"),
        (lambda a, ok, s, vp: forward.q_posterior(s, a, ok, 3), "x_t"),
        (lambda a, ok, s, vp: forward.posterior_mean_from_eps(s, ok, a, 3), "eps"),
    ],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_refused_by_name(call, name, bad):
    """NaN or infinity in the data once went through as NaN results, without a word."""
    a, ok = np.array([[bad, 0.0]]), np.zeros((1, 2))
    with pytest.raises(ValueError, match=f"{name} must be finite, got 1 non-finite value"):
        call(a, ok, DiscreteSchedule(sch.linear_betas(10)), sde.VPSDE())
