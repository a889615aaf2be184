r"""Tests for refdiff.sde: VP, sub-VP, cosine VP and VE processes (Song et al. 2021).

Expected values come from the paper's formulas written out here (reference
functions below), from the moment ODEs :math:`d\gamma/dt=f\gamma`,
:math:`d\sigma^2/dt=2f\sigma^2+g^2` integrated with ``scipy.integrate.solve_ivp``,
from the discrete DDPM schedule, and from seeded Monte Carlo with stated z-tests.
"""

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from refdiff import backend, sde
from refdiff.schedules import DiscreteSchedule, cosine_betas, linear_betas

RTOL = 1e-12
KINDS = ("vp", "subvp", "cosine", "ve")
TOL = {np.float32: 2e-6, np.float64: 1e-12}


# ------------------------------------------------------------ strategies
@st.composite
def sde_specs(draw, kinds=KINDS):
    kind = draw(st.sampled_from(kinds))
    if kind in ("vp", "subvp"):
        beta_min = draw(st.floats(0.01, 2.0))
        return kind, (beta_min, beta_min + draw(st.floats(0.0, 30.0)))
    if kind == "cosine":
        return kind, (draw(st.floats(0.0, 0.1)),)
    sigma_min = draw(st.floats(1e-3, 1.0))
    return kind, (sigma_min, sigma_min * draw(st.floats(1.5, 1e4)))


def make(spec):
    kind, params = spec
    return {"vp": sde.VPSDE, "subvp": sde.SubVPSDE, "cosine": sde.CosineVPSDE, "ve": sde.VESDE}[kind](*params)


DEFAULTS = [("vp", (0.1, 20.0)), ("subvp", (0.1, 20.0)), ("cosine", (0.008,)), ("ve", (0.01, 50.0))]
# t = 0, 1 and [1e-100, 1]: below ~1e-150 sigma_t^2 underflows, which tests only the arithmetic of underflow
TIMES = st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-100, 1.0))
SHAPES = st.one_of(
    st.tuples(st.integers(1, 5), st.integers(1, 4)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)
DTYPES = st.sampled_from([np.float32, np.float64])


# -------------------------------------------- independent reference formulas
class Ref:
    """The paper's coefficients for one process, float64, vectorised over t."""

    def __init__(self, spec):
        self.kind, self.params = spec

    def _B(self, t):
        bmin, bmax = self.params
        return bmin * t + 0.5 * (bmax - bmin) * t * t

    def _dB(self, s, t):  # B(t) - B(s) without cancellation
        bmin, bmax = self.params
        return (t - s) * (bmin + 0.5 * (bmax - bmin) * (t + s))

    def _angle(self, t):
        (s,) = self.params
        return (t + s) / (1.0 + s) * (math.pi / 2)

    def _cos_angle(self, t):
        """cos a_t = sin(pi/2 - a_t) = sin((1 - t) / (1 + s) * pi/2): accurate up to t = 1, where it is 0."""
        (s,) = self.params
        return np.sin((1.0 - t) / (1.0 + s) * (math.pi / 2))

    def _L(self):
        smin, smax = self.params
        return math.log(smax / smin)

    def f(self, t):
        t = np.asarray(t, dtype=float)
        if self.kind in ("vp", "subvp"):
            bmin, bmax = self.params
            return -0.5 * (bmin + t * (bmax - bmin))
        if self.kind == "cosine":
            (s,) = self.params
            with np.errstate(divide="ignore"):  # beta(1) = inf
                return -0.5 * math.pi / (1.0 + s) * np.sin(self._angle(t)) / self._cos_angle(t)
        return np.zeros_like(t)

    def g2(self, t):
        t = np.asarray(t, dtype=float)
        if self.kind == "vp" or self.kind == "cosine":
            return -2.0 * self.f(t)
        if self.kind == "subvp":
            return -2.0 * self.f(t) * -np.expm1(-2.0 * self._B(t))
        smin, _ = self.params
        return (smin * np.exp(self._L() * t)) ** 2 * 2.0 * self._L()

    def gamma(self, t):
        t = np.asarray(t, dtype=float)
        if self.kind in ("vp", "subvp"):
            return np.exp(-0.5 * self._B(t))
        if self.kind == "cosine":
            return self._cos_angle(t) / math.cos(self._angle(0.0))
        return np.ones_like(t)

    def var(self, t):
        t = np.asarray(t, dtype=float)
        if self.kind == "vp":
            return -np.expm1(-self._B(t))
        if self.kind == "subvp":
            return np.expm1(-self._B(t)) ** 2
        if self.kind == "cosine":
            (s,) = self.params
            a0 = self._angle(0.0)
            # 1 - cos^2 a / cos^2 a0 = sin(a + a0) sin(a - a0) / cos^2 a0, with a - a0 formed directly
            return np.sin(self._angle(t) + a0) * np.sin(t / (1.0 + s) * (math.pi / 2)) / math.cos(a0) ** 2
        smin, _ = self.params
        return smin**2 * np.expm1(2.0 * self._L() * t)

    def transition(self, s, t):
        s, t = np.asarray(s, dtype=float), np.asarray(t, dtype=float)
        if self.kind in ("vp", "subvp"):
            dB = self._dB(s, t)
            g = np.exp(-0.5 * dB)
            if self.kind == "vp":
                return g, -np.expm1(-dB)
            # sigma_t^2 - g^2 sigma_s^2 with sigma = 1 - e^{-B} factorises as (1 - e^{-dB})(1 - e^{-(B_t + B_s)})
            return g, np.expm1(-dB) * np.expm1(-(self._B(t) + self._B(s)))
        if self.kind == "cosine":
            (sc,) = self.params
            a_s, a_t = self._angle(s), self._angle(t)
            d = (t - s) / (1.0 + sc) * (math.pi / 2)
            c_s = self._cos_angle(s)
            # sin(a_t + a_s) = sin(e_t + e_s) with e = pi/2 - a: take the sum that is not near pi
            e_sum = (2.0 - t - s) / (1.0 + sc) * (math.pi / 2)
            sin_sum = np.where(a_t + a_s <= math.pi / 2, np.sin(a_t + a_s), np.sin(e_sum))
            with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 at s = t = 1: the identity
                g, v = self._cos_angle(t) / c_s, np.sin(d) * sin_sum / c_s**2
            return np.where(s == t, 1.0, g), np.where(s == t, 0.0, v)
        smin, _ = self.params
        L = self._L()
        return np.ones_like(t), smin**2 * np.exp(2.0 * L * s) * np.expm1(2.0 * L * (t - s))

    def log_snr(self, t):
        """log gamma^2 - log sigma^2, each log formed without cancellation."""
        t = np.asarray(t, dtype=float)
        with np.errstate(divide="ignore"):
            if self.kind == "vp":
                return -self._B(t) - np.log(-np.expm1(-self._B(t)))
            if self.kind == "subvp":
                return -self._B(t) - 2.0 * np.log(-np.expm1(-self._B(t)))
            if self.kind == "cosine":
                (s,) = self.params
                a0 = self._angle(0.0)
                log_var = np.log(np.sin(self._angle(t) + a0)) + np.log(np.sin(t / (1.0 + s) * (math.pi / 2)))
                return 2.0 * np.log(self._cos_angle(t)) - log_var
            smin, _ = self.params
            return -2.0 * math.log(smin) - np.log(np.expm1(2.0 * self._L() * t))

    def prior_std(self):
        if self.kind == "ve":
            smin, smax = self.params
            return math.sqrt(smax**2 - smin**2)
        return 1.0


def rel_close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------- coefficients
@given(spec=sde_specs(), t=st.lists(TIMES, min_size=1, max_size=5))
def test_coefficients_match_paper_formulas(spec, t):
    P, R = make(spec), Ref(spec)
    t = np.array(t)
    # f and g^2 are O(1) near t = 0 and exactly 0 there for cosine s = 0: one ulp of pi is allowed
    rel_close(P.drift_coef(t), R.f(t), atol=1e-15)
    rel_close(P.diffusion(t) ** 2, R.g2(t), atol=1e-15)
    rel_close(P.mean_coef(t), R.gamma(t), atol=1e-300)
    rel_close(P.variance(t), R.var(t))
    rel_close(P.std(t), np.sqrt(R.var(t)))
    lam = R.log_snr(t)
    got = P.log_snr(t)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(lam))
    fin = np.isfinite(lam)
    assert np.all(np.abs(got[fin] - lam[fin]) <= RTOL * np.maximum(1.0, np.abs(lam[fin])))
    np.testing.assert_array_equal(P.log_snr_at(t), got)
    # scalar times give 0-d results with the same values
    assert float(P.std(float(t[0]))) == pytest.approx(float(np.sqrt(R.var(t[0]))), rel=RTOL, abs=0.0)
    if spec[0] != "ve":
        rel_close(P.beta(t), -2.0 * R.f(t), atol=1e-15)
    if spec[0] in ("vp", "subvp"):
        rel_close(P.integral_beta(t), R._B(t))


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_endpoints(spec):
    P = make(spec)
    assert P.mean_coef(0.0) == 1.0 and P.variance(0.0) == 0.0 and P.std(0.0) == 0.0
    assert P.log_snr(0.0) == np.inf
    assert 0.0 < P.t_min < P.t_max <= 1.0
    ends = [P.mean_coef(1.0), P.variance(1.0), P.log_snr(1.0), P.drift_coef(1.0), P.diffusion(1.0)]
    if spec[0] == "cosine":  # singular at t = 1: gamma = 0, lambda = -inf, beta = inf
        assert P.t_max < 1.0
        assert P.mean_coef(1.0) == 0.0 and P.variance(1.0) == pytest.approx(1.0, abs=1e-15)
        assert P.log_snr(1.0) == -np.inf and P.drift_coef(1.0) == -np.inf and P.diffusion(1.0) == np.inf
        assert np.all(np.isfinite([P.mean_coef(P.t_max), P.log_snr(P.t_max), P.diffusion(P.t_max)]))
    else:
        assert np.all(np.isfinite(ends))


@given(spec=sde_specs(kinds=("vp", "cosine")), t=st.lists(TIMES, min_size=1, max_size=5))
def test_variance_preserving(spec, t):
    """VP and cosine VP: gamma_t^2 + sigma_t^2 = 1, also for every transition."""
    P = make(spec)
    t = np.sort(np.array(t))
    np.testing.assert_allclose(P.mean_coef(t) ** 2 + P.variance(t), 1.0, rtol=0, atol=1e-12)
    g, v = P.transition(t[0], t)
    np.testing.assert_allclose(g**2 + v, 1.0, rtol=0, atol=1e-12)


@given(spec=sde_specs(kinds=("subvp",)), t=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=5))
def test_sub_vp_variance_below_vp(spec, t):
    """Sub-VP: sigma_t^2 = (1 - e^{-B})^2 < 1 - e^{-B}, the VP variance with the same beta."""
    t = np.array(t)
    sub, vp = make(spec), sde.VPSDE(*spec[1])
    assert np.all(sub.variance(t) < vp.variance(t))
    np.testing.assert_array_equal(sub.mean_coef(t), vp.mean_coef(t))


def test_cosine_sde_matches_discrete_cosine_schedule():
    """Nichol & Dhariwal: alpha_bar_t = f(t/T) / f(0), which the continuous process has at t/T (before clipping)."""
    T = 1000
    S = DiscreteSchedule(cosine_betas(T))
    P = sde.CosineVPSDE(0.008)
    t = np.arange(T + 1)
    unclipped = t[: np.argmax(S.betas >= 0.999)]  # betas clip only near t = T
    assert unclipped.size > 900
    rel_close(P.mean_coef(unclipped / T) ** 2, S.alpha_bar[unclipped])


# -------------------------------------------------------- moment ODEs
@settings(deadline=None)
@given(spec=sde_specs(), t_end=st.floats(0.05, 1.0))
def test_marginals_solve_the_moment_odes(spec, t_end):
    r"""gamma and sigma^2 solve d gamma/dt = f gamma, d sigma^2/dt = 2 f sigma^2 + g^2 from (1, 0).

    f and g are the process's own ``drift_coef`` and ``diffusion``, so this checks
    the drift/diffusion pair against the closed-form marginals.
    """
    P = make(spec)
    t_end = min(t_end, P.t_max)

    def rhs(t, y):
        f = float(P.drift_coef(t))
        return [f * y[0], 2.0 * f * y[1] + float(P.diffusion(t)) ** 2]

    t_eval = np.linspace(0.0, t_end, 9)
    sol = integrate.solve_ivp(rhs, (0.0, t_end), [1.0, 0.0], method="DOP853", t_eval=t_eval, rtol=1e-12, atol=1e-15)
    assert sol.success, sol.message
    np.testing.assert_allclose(P.mean_coef(t_eval), sol.y[0], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(P.variance(t_eval), sol.y[1], rtol=1e-9, atol=1e-13)


# ----------------------------------------------------------- transitions
@given(spec=sde_specs(), times=st.lists(TIMES, min_size=3, max_size=3))
def test_transition_composes_and_matches_closed_form(spec, times):
    P, R = make(spec), Ref(spec)
    s, u, t = sorted(times)
    g_ts, v_ts = P.transition(s, t)
    g_ref, v_ref = R.transition(s, t)
    # q(x_t|x_s) after q(x_s|x_0) is q(x_t|x_0)
    rel_close(g_ts * P.mean_coef(s), R.gamma(t), atol=1e-300)
    rel_close(g_ts**2 * P.variance(s) + v_ts, R.var(t))
    # q(x_t|x_u) after q(x_u|x_s) is q(x_t|x_s)
    g_tu, v_tu = P.transition(u, t)
    g_us, v_us = P.transition(s, u)
    rel_close(g_tu * g_us, g_ref, atol=1e-300)
    rel_close(g_tu**2 * v_us + v_tu, v_ref, atol=1e-15 * R.var(t))
    rel_close(g_ts, g_ref, atol=1e-300)
    if t - s >= 1e-3:  # well separated times; nearly equal ones: test_transition_variance_for_close_times
        rel_close(v_ts, v_ref, rtol=1e-11)
    # s == t: the identity
    g_tt, v_tt = P.transition(t, t)
    assert float(g_tt) == 1.0 and float(v_tt) == 0.0


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
@pytest.mark.parametrize("s, dt", [(0.5, 1e-9), (0.3, 1e-6), (0.9, 1e-7)])
def test_transition_variance_for_close_times(spec, s, dt):
    r"""sigma^2_{t|s} for t close to s keeps full relative precision (no cancellation).

    Independent forms: VP 1 - e^{-dB} with dB = (t-s)(beta_min + (beta_max-beta_min)(t+s)/2);
    sub-VP (1 - e^{-dB})(1 - e^{-(B_t+B_s)}); cosine sin(a_t-a_s) sin(a_t+a_s)/cos^2 a_s;
    VE sigma_min^2 e^{2Ls}(e^{2L(t-s)} - 1). A form that subtracts B(t) - B(s) or
    sigma_t^2 - gamma^2 sigma_s^2 loses about eps * B / dB, 1e-8 relative here.
    """
    P, R = make(spec), Ref(spec)
    t = s + dt
    _, v = P.transition(s, t)
    _, v_ref = R.transition(s, t)
    rel_close(v, v_ref, rtol=1e-12)


@given(spec=sde_specs(), pairs=st.lists(st.tuples(TIMES, TIMES), min_size=1, max_size=5))
def test_transition_per_example(spec, pairs):
    P, R = make(spec), Ref(spec)
    s = np.array([min(p) for p in pairs])
    t = np.array([max(p) for p in pairs])
    g, v = P.transition(s, t)
    assert g.shape == v.shape == s.shape
    g_ref, v_ref = R.transition(s, t)
    rel_close(g, g_ref, atol=1e-300)
    # nearly equal times are left to test_transition_variance_for_close_times: allow eps * sigma_t^2 here
    assert np.all(np.abs(v - v_ref) <= 1e-12 * v_ref + 1e-15 * R.var(t))


@pytest.mark.parametrize("s", [0.0, 0.5, 0.945, 0.99, 0.9946, 1.0 - 1e-9])
def test_cosine_transition_to_t_equal_one(s):
    """gamma_1 = 0: q(x_1 | x_s) = N(0, I) from every s < 1 (cos a_1 / cos a_s = 0)."""
    g, v = sde.CosineVPSDE(0.008).transition(s, 1.0)
    assert float(g) == 0.0 and float(v) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_transition_rejects_s_after_t(spec):
    with pytest.raises(ValueError, match="s must not exceed t"):
        make(spec).transition(0.6, 0.5)


# -------------------------------------------------------- log-SNR inverse
@given(spec=sde_specs(), t=st.lists(TIMES, min_size=1, max_size=6))
def test_t_from_log_snr_inverts_log_snr(spec, t):
    r"""t -> lambda -> t. d lambda/dt = -g^2/sigma^2, so lambda's rounding error (eps |lambda|)
    moves t by eps |lambda| sigma^2/g^2: that conditioning term is added to 1e-12 t."""
    P, R = make(spec), Ref(spec)
    t = np.array(t)
    lam = P.log_snr(t)
    back = P.t_from_log_snr(lam)
    assert back.shape == t.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        dt_dlam = np.where(t > 0, R.var(t) / R.g2(t), 0.0)  # 0 at t = 0 and (g = inf) at cosine t = 1
    fin = np.isfinite(lam)
    bound = 1e-12 * t + 8e-16 * np.where(fin, np.maximum(1.0, np.abs(np.where(fin, lam, 0.0))), 1.0) * dt_dlam
    assert np.all(np.abs(back - t) <= bound), (back, t)


@given(spec=sde_specs(), u=st.floats(0.0, 1.0))
def test_log_snr_of_t_from_log_snr(spec, u):
    r"""lambda -> t -> lambda over [lambda(t_max), lambda(1e-6)]. t is rounded to a float (relative
    eps), which moves lambda by eps t g^2/sigma^2; that conditioning term is added to 1e-11 |lambda|."""
    P, R = make(spec), Ref(spec)
    lo, hi = float(P.log_snr(P.t_max)), float(P.log_snr(1e-6))
    lam = lo + u * (hi - lo)
    t = float(P.t_from_log_snr(lam))
    assert 0.0 <= t <= 1.0
    bound = 1e-11 * max(1.0, abs(lam)) + 1e-15 * t * float(R.g2(t) / R.var(t))
    assert abs(float(P.log_snr(t)) - lam) <= bound


@pytest.mark.parametrize("spec", DEFAULTS + [("cosine", (0.0,))], ids=KINDS + ("cosine_s0",))
def test_t_from_log_snr_at_infinity_is_zero(spec):
    """lambda = +inf is t = 0 (the data)."""
    P = make(spec)
    assert P.t_from_log_snr(np.inf) == 0.0
    assert P.t_from_log_snr(P.log_snr(0.0)) == 0.0


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_t_from_log_snr_rejects_out_of_range(spec):
    P = make(spec)
    lo = float(P.log_snr(1.0))
    if spec[0] == "cosine":  # gamma_1 = 0: every lambda is reached, -inf at t = 1
        assert lo == -np.inf and P.t_from_log_snr(-np.inf) == 1.0
        assert 0.999 < P.t_from_log_snr(-1e3) <= 1.0
    else:
        for lam in (lo - 1.0, -np.inf):  # -inf: VP and sub-VP formed inf / inf, NaN, and returned it
            with pytest.raises(ValueError, match="lam"):
                P.t_from_log_snr(lam)
    with pytest.raises(ValueError, match="lam"):
        P.t_from_log_snr(np.array([0.0, np.nan]))


# ------------------------------------------------ DDPM and the VP SDE
def _B(t, beta_min=0.1, beta_max=20.0):
    return beta_min * t + 0.5 * (beta_max - beta_min) * t * t


def test_ddpm_alpha_bar_converges_to_vp_at_rate_one_over_T():
    r"""linear_betas(T, 0.1/T, 20/T) approximates VPSDE(0.1, 20) at t = i/T with error O(1/T).

    Doubling T halves the max error over the grid: error(T)/error(2T) in [1.8, 2.2].
    """
    errors = {}
    for T in (250, 500, 1000, 2000, 4000):
        S = DiscreteSchedule(linear_betas(T, 0.1 / T, 20.0 / T))
        i = np.arange(T + 1)
        errors[T] = np.max(np.abs(S.alpha_bar - np.exp(-_B(i / T))))
    for T in (250, 500, 1000, 2000):
        assert 1.8 <= errors[T] / errors[2 * T] <= 2.2, (T, errors)
    assert errors[4000] < 3e-4


@given(beta_min=st.floats(0.01, 2.0), width=st.floats(0.0, 30.0), T=st.integers(1, 2000))
def test_discretize_has_exact_alpha_bar(beta_min, width, T):
    P = sde.VPSDE(beta_min, beta_min + width)
    S = P.discretize(T)
    assert isinstance(S, DiscreteSchedule) and S.T == T
    t = np.arange(T + 1) / T
    rel_close(S.alpha_bar, np.exp(-_B(t, beta_min, beta_min + width)))
    rel_close(S.one_minus_alpha_bar, -np.expm1(-_B(t, beta_min, beta_min + width)))


@given(beta_min=st.floats(0.01, 2.0), width=st.floats(0.0, 18.0), T=st.integers(21, 2000))
def test_from_linear_betas_round_trip(beta_min, width, T):
    beta_max = beta_min + width
    P = sde.VPSDE.from_linear_betas(linear_betas(T, beta_min / T, beta_max / T))
    assert type(P) is sde.VPSDE
    assert P.beta_min == pytest.approx(beta_min, rel=RTOL)
    assert P.beta_max == pytest.approx(beta_max, rel=RTOL)


def test_from_linear_betas_rejects_nonlinear_and_sub_vp_has_no_discretisation():
    with pytest.raises(ValueError, match="betas"):
        sde.VPSDE.from_linear_betas(cosine_betas(100))
    with pytest.raises(ValueError, match="betas"):
        sde.VPSDE.from_linear_betas(np.array([0.1, 0.2]))  # betas[0] != 0
    with pytest.raises(TypeError, match="sub-VP"):
        sde.SubVPSDE().discretize(10)
    with pytest.raises(ValueError, match="T must"):
        sde.VPSDE().discretize(0)


# --------------------------------------------------- drifts and scores
@given(spec=sde_specs(), shape=SHAPES, dtype=DTYPES, per_example=st.booleans(), seed=st.integers(0, 2**16))
def test_drifts_match_formulas(spec, shape, dtype, per_example, seed):
    P, R = make(spec), Ref(spec)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    score = rng.standard_normal(shape).astype(dtype)
    t = rng.uniform(0.0, min(P.t_max, 1.0), size=shape[0]) if per_example else float(rng.uniform(0.0, P.t_max))
    bshape = (shape[0],) + (1,) * (len(shape) - 1) if per_example else ()
    f = np.reshape(R.f(t), bshape)
    g2 = np.reshape(R.g2(t), bshape)
    x64, s64 = x.astype(np.float64), score.astype(np.float64)
    tol = TOL[dtype]
    for got, want, scale in [
        (P.drift(x, t), f * x64, np.abs(f * x64)),
        (P.reverse_drift(x, t, score), f * x64 - g2 * s64, np.abs(f * x64) + np.abs(g2 * s64)),
        (P.ode_drift(x, t, score), f * x64 - 0.5 * g2 * s64, np.abs(f * x64) + np.abs(0.5 * g2 * s64)),
        (P.ode_drift(x, t, lambda xx, tt: score), f * x64 - 0.5 * g2 * s64, np.abs(f * x64) + np.abs(g2 * s64)),
    ]:
        assert got.dtype == dtype and got.shape == shape
        assert np.all(np.abs(got - want) <= tol * (scale + 1e-30))


@given(spec=sde_specs(), t=st.floats(0.01, 0.99), c=st.floats(0.1, 3.0))
def test_ode_drift_transports_gaussian_marginals(spec, t, c):
    r"""For data N(0, c^2 I), p_t = N(0, v_t I) with v_t = gamma_t^2 c^2 + sigma_t^2 and score -x / v_t.

    A linear velocity field x v_t' / (2 v_t) keeps a centred Gaussian with variance v_t, so the
    PF-ODE velocity must equal it; v_t' comes from central differences of the marginals (h = 1e-5).
    """
    P = make(spec)
    t = min(t, P.t_max - 2e-5)
    h = 1e-5

    def v(tt):
        return float(P.mean_coef(tt)) ** 2 * c * c + float(P.variance(tt))

    dv = (v(t + h) - v(t - h)) / (2 * h)
    x = np.linspace(-2.0, 2.0, 6).reshape(3, 2)
    vel = P.ode_drift(x, t, -x / v(t))
    # central differences: truncation ~h^2 (relative), rounding ~eps v / h (absolute in dv)
    np.testing.assert_allclose(vel, x * dv / (2 * v(t)), rtol=1e-6, atol=2.0 * 1e-10)
    # the reverse SDE drift differs from the PF-ODE velocity by -g^2 score / 2
    g2 = float(P.diffusion(t)) ** 2
    np.testing.assert_allclose(P.reverse_drift(x, t, -x / v(t)) - vel, 0.5 * g2 * x / v(t), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_sample_marginal_moments(spec):
    r"""Monte Carlo check of x_t ~ N(gamma_t x_0, sigma_t^2 I) (fixed seed).

    Test: n = 400000 draws of r = x_t - gamma_t x_0 (200000 rows x 2 columns, x_0 varying per row)
    at three times; z = mean(r) / (sigma_t / sqrt(n)) and z = (var(r) / sigma_t^2 - 1) / sqrt(2 / (n - 1))
    must satisfy |z| < 5. Under the null each |z| exceeds 5 with probability 5.7e-7, so the
    false-failure rate of the 6 statistics is about 3.4e-6 (and 0 for the fixed seed). It detects a
    relative error in sigma_t^2 above 5 sqrt(2/n) = 1.1%, or a mean bias above 0.008 sigma_t.
    """
    P, R = make(spec), Ref(spec)
    rng = np.random.default_rng(20240611)
    x0 = rng.uniform(-2.0, 2.0, size=(200_000, 2))
    n = x0.size
    for t in (0.05, 0.5, P.t_max):
        xt = P.sample_marginal(x0, t, rng=rng)
        assert xt.shape == x0.shape and xt.dtype == np.float64
        r = (xt - float(R.gamma(t)) * x0).ravel()
        sigma2 = float(R.var(t))
        z_mean = r.mean() / math.sqrt(sigma2 / n)
        z_var = (r.var(ddof=1) / sigma2 - 1.0) / math.sqrt(2.0 / (n - 1))
        assert abs(z_mean) < 5 and abs(z_var) < 5, (t, z_mean, z_var)


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_sample_marginal_noise_and_seeds(spec):
    P = make(spec)
    x0 = np.linspace(-1, 1, 12).reshape(3, 4)
    noise = np.random.default_rng(1).standard_normal((3, 4))
    t = np.array([0.0, 0.3, 0.9])
    mean, std = P.marginal(x0, t)
    np.testing.assert_array_equal(P.sample_marginal(x0, t, noise=noise), mean + std * noise)
    # an int seed draws the same float64 host noise as backend.standard_normal
    host = np.random.default_rng(7).standard_normal((3, 4))
    np.testing.assert_array_equal(P.sample_marginal(x0, t, rng=7), mean + std * host)
    np.testing.assert_array_equal(P.sample_marginal(x0, t, rng=7), P.sample_marginal(x0, t, rng=7))
    gen = np.random.default_rng(7)
    first = P.sample_marginal(x0, t, rng=gen)
    assert not np.array_equal(first, P.sample_marginal(x0, t, rng=gen))  # the caller's Generator advances
    np.testing.assert_array_equal(P.sample_marginal(x0, 0.0, rng=3), x0)  # t = 0 is the data


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_prior_sample_and_log_prob(spec):
    r"""Prior N(0, s^2 I): s = 1 for the VP family, sqrt(sigma_max^2 - sigma_min^2) for VE.

    z-test on the variance of 400000 draws (|z| < 5, false-failure rate 5.7e-7).
    """
    P, R = make(spec), Ref(spec)
    assert P.prior_std() == pytest.approx(R.prior_std(), rel=RTOL)
    x = P.prior_sample((200_000, 2), rng=5)
    n = x.size
    z = (x.var(ddof=1) / R.prior_std() ** 2 - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(z) < 5
    like = np.zeros((1, 3), dtype=np.float32)
    x32 = P.prior_sample((4, 3), rng=5, like=like)
    assert x32.dtype == np.float32 and x32.shape == (4, 3)


@pytest.mark.parametrize("sigma_min, sigma_max", [(0.01, 50.0), (1.0, 1.0 + 1e-10), (0.3, 0.30000000000000004),
                                                (0.01, 1e150), (2e-154, 1.0), (1.0, 1.3e154)])
def test_ve_prior_std_is_exact_near_sigma_min_and_up_to_the_largest_sigma_max(sigma_min, sigma_max):
    """sqrt(sigma_max^2 - sigma_min^2) to the last bit, against exact rational arithmetic: the squares' difference
    cancels where sigma_max is a few ulp above sigma_min (9% off at 0.3 and the next float), and overflowed
    past sigma_max = 1.3e154."""
    exact_var = Fraction(sigma_max) ** 2 - Fraction(sigma_min) ** 2
    with decimal.localcontext(decimal.Context(prec=80)):
        want = float((decimal.Decimal(exact_var.numerator) / decimal.Decimal(exact_var.denominator)).sqrt())
    assert sde.VESDE(sigma_min=sigma_min, sigma_max=sigma_max).prior_std() == want


@given(spec=sde_specs(), shape=SHAPES, dtype=DTYPES, seed=st.integers(0, 2**16))
def test_prior_log_prob_matches_scipy(spec, shape, dtype, seed):
    P, R = make(spec), Ref(spec)
    x = (np.random.default_rng(seed).standard_normal(shape) * R.prior_std()).astype(dtype)
    lp = P.prior_log_prob(x)
    assert lp.shape == (shape[0],) and lp.dtype == dtype
    want = stats.norm.logpdf(x.astype(np.float64), scale=R.prior_std()).reshape(shape[0], -1).sum(axis=1)
    np.testing.assert_allclose(lp, want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10 * np.prod(shape[1:]))


# -------------------------------------------------------------- dtypes
@given(spec=sde_specs(), shape=SHAPES, t=st.one_of(TIMES, st.sampled_from([0.0, 1.0])), seed=st.integers(0, 2**16))
def test_float32_in_float32_out_and_finite(spec, shape, t, seed):
    P = make(spec)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    score = rng.standard_normal(shape).astype(np.float32)
    mean, std = P.marginal(x, t)
    outs = [mean, std, P.sample_marginal(x, t, rng=seed), P.prior_log_prob(x)]
    if t <= P.t_max:  # the cosine process is singular at t = 1 (beta = inf)
        outs += [P.drift(x, t), P.reverse_drift(x, t, score), P.ode_drift(x, t, score)]
    for out in outs:
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
@pytest.mark.parametrize(
    "t, exc, pattern",
    [
        (1.5, ValueError, r"t must lie in \[0, 1\]"),
        (-0.1, ValueError, r"t must lie in \[0, 1\]"),
        (np.array([0.2, 1.0 + 1e-12]), ValueError, r"t must lie"),
        (float("nan"), ValueError, "t must be finite"),
        (np.array([0.5, np.inf]), ValueError, "t must be finite"),
        (0.5 + 0.1j, TypeError, "t must be a real"),
        (np.array([0.5 + 0j]), TypeError, "t must be a real"),
        (True, TypeError, "t must be a real"),
        ("0.5", TypeError, "t must be a real"),
        (np.full((2, 2), 0.5), ValueError, "t must be a scalar or 1-D"),
    ],
    ids=["1.5", "neg", "just_above_1", "nan", "inf", "complex", "complex_array", "bool", "str", "2d"],
)
def test_bad_times(spec, t, exc, pattern):
    P = make(spec)
    x = np.zeros((2, 2))
    with pytest.raises(exc, match=pattern):
        P.marginal(x, t)
    with pytest.raises(exc, match=pattern):
        P.drift(x, t)
    with pytest.raises(exc, match=pattern):
        P.std(t)


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_bad_shapes_and_data(spec):
    P = make(spec)
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"\bt\b"):
        P.marginal(x, np.array([0.1, 0.2]))  # one time per example, but 3 examples
    with pytest.raises(ValueError, match="noise"):
        P.sample_marginal(x, 0.5, noise=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="score"):
        P.reverse_drift(x, 0.5, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="score"):
        P.ode_drift(x, 0.5, lambda xx, tt: np.zeros(3))
    with pytest.raises(ValueError, match=r"\bx\b"):
        P.prior_log_prob(np.float64(1.0))
    with pytest.raises(TypeError, match="x0"):
        P.marginal(x + 1j, 0.5)
    with pytest.raises(TypeError, match=r"\bx\b"):
        P.drift(x.astype(np.complex128), 0.5)


@pytest.mark.parametrize(
    "factory, pattern",
    [
        (lambda: sde.VPSDE(beta_min=0.0), "beta_min"),
        (lambda: sde.VPSDE(beta_min=-1.0), "beta_min"),
        (lambda: sde.VPSDE(beta_min=float("nan")), "beta_min"),
        (lambda: sde.VPSDE(beta_max=float("inf")), "beta_max"),
        (lambda: sde.VPSDE(beta_min=2.0, beta_max=1.0), "beta_max"),
        (lambda: sde.SubVPSDE(beta_min=1.0, beta_max=0.5), "beta_max"),
        (lambda: sde.VPSDE(t_min=0.0), "t_min"),
        (lambda: sde.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sde.VESDE(sigma_min=2.0, sigma_max=1.0), "sigma_max"),
        (lambda: sde.VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_max"),
        (lambda: sde.VESDE(sigma_max=1.4e154), "sigma_max"),  # sigma_max^2 overflows
        (lambda: sde.VESDE(sigma_min=1e-155), "sigma_min"),  # sigma_min^2 is subnormal
        (lambda: sde.CosineVPSDE(s=-0.1), "s must"),
        (lambda: sde.CosineVPSDE(s=float("nan")), "s must"),
        (lambda: sde.CosineVPSDE(t_max=0.0), "t_max"),
        (lambda: sde.CosineVPSDE(t_max=1.5), "t_max"),
    ],
)
def test_bad_parameters(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()


@pytest.mark.parametrize(
    "factory, pattern",
    [
        (lambda: sde.VPSDE(t_min=2.0), "t_min"),
        (lambda: sde.VPSDE(t_min=1.0), "t_min"),
        (lambda: sde.VPSDE(t_min=float("inf")), "t_min"),
        (lambda: sde.SubVPSDE(t_min=1.5), "t_min"),
        (lambda: sde.VESDE(t_min=1.0), "t_min"),
        (lambda: sde.VESDE(t_min=-1e-5), "t_min"),
        (lambda: sde.CosineVPSDE(t_min=0.995), "t_min.*t_max = 0.9946"),  # above the default t_max
        (lambda: sde.CosineVPSDE(t_min=0.5, t_max=0.4), "t_min.*t_max = 0.4"),
        (lambda: sde.CosineVPSDE(t_max=True), "t_max"),
        (lambda: sde.CosineVPSDE(s=True), "s must"),
        (lambda: sde.VPSDE(beta_min=True), "beta_min"),
        (lambda: sde.sde_from_config({"kind": "VPSDE", "beta_min": 0.1, "beta_max": 20.0, "t_min": 2.0}), "t_min"),
    ],
    ids=["vp_2", "vp_1", "vp_inf", "subvp_1.5", "ve_1", "ve_neg", "cosine_above_t_max", "cosine_reversed",
         "cosine_t_max_bool", "cosine_s_bool", "vp_beta_bool", "from_config"],
)
def test_bad_time_range_is_refused_at_construction(factory, pattern):
    """t_min outside (0, t_max) and bools fail in the constructor, naming the argument, not later in a sampler."""
    with pytest.raises(ValueError, match=pattern):
        factory()


@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_data_names_the_argument(spec, bad):
    P = make(spec)
    x = np.zeros((3, 2))
    x[1, 0] = bad
    score = np.zeros((3, 2))
    calls = {
        "x0": [lambda: P.marginal(x, 0.5), lambda: P.sample_marginal(x, 0.5, rng=0)],
        "x": [lambda: P.drift(x, 0.5), lambda: P.prior_log_prob(x), lambda: P.reverse_drift(x, 0.5, score),
              lambda: P.ode_drift(x, 0.5, lambda xx, tt: score)],
        "noise": [lambda: P.sample_marginal(np.zeros((3, 2)), 0.5, noise=x)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=rf"^{name} must be finite, got 1 non-finite value"):
                fn()
    # float32 data and per-example times take the same check
    with pytest.raises(ValueError, match="^x0 must be finite"):
        P.marginal(x.astype(np.float32), np.array([0.1, 0.2, 0.3]))


# ------------------------------------------------------ array API strict
@pytest.mark.parametrize("spec", DEFAULTS, ids=KINDS)
def test_closed_forms_on_namespace(xp, float_dtype, spec):
    """marginal, drift, reverse_drift, ode_drift, prior_log_prob, sample_marginal on ``xp`` arrays equal NumPy's."""
    P = make(spec)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((3, 2, 2)).astype(float_dtype)
    s_np = rng.standard_normal((3, 2, 2)).astype(float_dtype)
    x, score = xp.asarray(x_np), xp.asarray(s_np)
    tol = 1e-12 if float_dtype == "float64" else 1e-6
    for t in (0.3, np.array([0.0, 0.5, P.t_max])):
        pairs = [
            (P.marginal(x, t)[0], P.marginal(x_np, t)[0]),
            (P.marginal(x, t)[1], P.marginal(x_np, t)[1]),
            (P.drift(x, t), P.drift(x_np, t)),
            (P.reverse_drift(x, t, score), P.reverse_drift(x_np, t, s_np)),
            (P.ode_drift(x, t, score), P.ode_drift(x_np, t, s_np)),
            (P.sample_marginal(x, t, rng=3), P.sample_marginal(x_np, t, rng=3)),
            (P.prior_log_prob(x), P.prior_log_prob(x_np)),
        ]
        for got, want in pairs:
            assert type(got) is type(x) and got.dtype == x.dtype
            np.testing.assert_allclose(backend.to_numpy(got), want, rtol=tol, atol=tol)
