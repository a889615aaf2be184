r"""The equation catalogue behind ``refdiff verify``: each identity, its measured error and tolerance.

Each entry function returns a list of :class:`Check`; ``run()`` collects
them. The test suite runs the same functions (``tests/test_verify.py``), so
the report and the suite cannot disagree.

Errors are relative unless a check says otherwise; Monte Carlo checks report
a z-score against a threshold of 5 (two-sided false-failure rate about
6e-7 per check) with fixed seeds, and finite-difference checks use central
differences with a tolerance of 1e-6.

Entries (DESIGN.md's numbering):

1. forward step q(x_t|x_{t-1}); its t-fold composition equals q(x_t|x_0)
2. alpha_t = 1 - beta_t, alpha_bar_t = prod alpha_s; schedule identities
3. posterior q(x_{t-1}|x_t,x_0) from Bayes' rule
4. the posterior mean written with eps; eps/x0/score/v conversions
5. Gaussian KL in closed form; the VLB as L_T + sum L_{t-1} + L_0
6. DDPM ancestral step with sigma_t^2 = beta_t or beta-tilde_t; the ddpm sampler's exact law
7. SDE marginals; DDPM tends to the VP SDE
8. reverse SDE and PF-ODE give the marginals of the forward process
9. denoising score matching: minimiser is the true score; s = -eps/sigma_t
10. loss weightings
11. the normaliser of an unnormalised density cancels (MALA); EBM score = -grad E
12. Langevin dynamics and annealed Langevin (NCSN) reach the target
13. Euler-Maruyama, Euler, Heun, RK4, RK45, DDIM, DPM-Solver: measured orders
14. classifier guidance and classifier-free guidance identities
15. PF-ODE log-likelihood equals the exact log-density of a mixture

Entries 12-15 run samplers and live in :mod:`refdiff.verify_sampling`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .analytic import EmpiricalData, Gaussian, GaussianMixture
from .forward import posterior_coefs, posterior_mean_from_eps, q_posterior, q_sample, q_step
from .losses import dsm_loss, eps_mse, normal_kl, vlb_terms
from .param import PREDICTIONS, convert
from .schedules import DiscreteSchedule, cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas, sigmoid_betas
from .sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from .verify_sampling import entry_12, entry_13, entry_14, entry_15

__all__ = ["Check", "ENTRIES", "run"]

Z_MAX = 5.0  # Monte Carlo threshold: P(|z| > 5) = 5.7e-7 under the null
FD_TOL = 1e-6


@dataclass(frozen=True)
class Check:
    """One verified identity."""

    id: str
    title: str
    error: float
    tolerance: float
    source: str

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _rel(a, b) -> float:
    """Max relative error of a against reference b (absolute where |b| < 1e-300)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _rel_norm(a, b) -> float:
    """Error of a against b relative to b's largest magnitude."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _schedules():
    T = 1000
    return {
        "linear": DiscreteSchedule(linear_betas(T)),
        "cosine": DiscreteSchedule(cosine_betas(T)),
        "sigmoid": DiscreteSchedule(sigmoid_betas(T)),
        "zero-SNR": DiscreteSchedule(rescale_zero_terminal_snr(scaled_linear_betas(T))),
    }


def _processes():
    return {**_schedules(), "VP": VPSDE(), "sub-VP": SubVPSDE(), "cosine-VP": CosineVPSDE(), "VE": VESDE()}


def _grid(process, n=41):
    """Interior times (s, t) pairs with s < t for a process."""
    if isinstance(process, DiscreteSchedule):
        t = np.unique(np.linspace(1, process.T, n).astype(np.int64))
        return t[:-1], t[1:]
    t = np.linspace(0.0, process.t_max, n)
    return t[:-1], t[1:]


def _ring(K=8, radius=2.0, std=0.3):
    angles = 2 * np.pi * np.arange(K) / K
    return GaussianMixture(np.full(K, 1.0 / K), radius * np.stack([np.cos(angles), np.sin(angles)], 1), np.full(K, std**2))


def _random_full_mixture(seed=0, K=3, D=3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    w = rng.random(K) + 0.2
    return GaussianMixture(w / w.sum(), 2.0 * rng.standard_normal((K, D)), A @ A.transpose(0, 2, 1) + 0.2 * np.eye(D))


def _fd_grad(f, x, h=1e-5):
    """Central-difference gradient of a scalar-per-row function f: (N, D) -> (N,)."""
    D = x.shape[1]
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(D)], axis=1)


# --------------------------------------------------------------------- 1
def entry_1():
    checks = []
    err = 0.0
    for sch in _schedules().values():
        m, v = 1.0, 0.0  # compose x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z, from x_0 exactly
        ms, vs = [m], [v]
        for t in range(1, sch.T + 1):
            m, v = math.sqrt(1.0 - sch.betas[t]) * m, (1.0 - sch.betas[t]) * v + sch.betas[t]
            ms.append(m)
            vs.append(v)
        err = max(err, _rel(ms, sch.sqrt_alpha_bar), _rel(vs[1:], sch.one_minus_alpha_bar[1:]))
    checks.append(Check("1.1", "t-fold composition of q(x_t|x_{t-1}) equals q(x_t|x_0)", err, 1e-12, "Ho et al. 2020 eq. 2, 4"))

    err = 0.0
    for proc in _processes().values():
        s, t = _grid(proc)
        u = s[: len(s) // 2]  # u < s < t: compose q(x_s|x_u) then q(x_t|x_s)
        s2, t2 = s[len(s) // 2 :][: len(u)], t[len(t) // 2 :][: len(u)]
        g_su, v_su = proc.transition(u, s2)
        g_ts, v_ts = proc.transition(s2, t2)
        g_tu, v_tu = proc.transition(u, t2)
        err = max(err, _rel(g_ts * g_su, g_tu), _rel(v_ts + g_ts**2 * v_su, v_tu))
        g_t0, v_t0 = proc.transition(np.zeros_like(t), t)
        err = max(err, _rel(g_t0, proc.mean_coef(t)), _rel(v_t0, proc.variance(t)))
    checks.append(Check("1.2", "q(x_t|x_s) composed with q(x_s|x_u) is q(x_t|x_u), every process", err, 1e-12, "Kingma et al. 2021 eq. 22-23"))

    sch = _schedules()["linear"]
    rng = np.random.default_rng(1)
    n, t, x0 = 200_000, 300, 0.7
    x = np.full((n, 1), x0)
    for step in range(1, t + 1):
        x = q_step(sch, x, step, rng.standard_normal((n, 1)))
    mean, var = sch.sqrt_alpha_bar[t] * x0, sch.one_minus_alpha_bar[t]
    z_mean = (x.mean() - mean) / math.sqrt(var / n)
    z_var = (x.var() - var) / (var * math.sqrt(2.0 / n))
    checks.append(Check("1.3", "sampled chain of 300 q_step draws matches q(x_t|x_0) (|z| of mean, variance)", max(abs(z_mean), abs(z_var)), Z_MAX, "Ho et al. 2020 eq. 4"))
    return checks


# --------------------------------------------------------------------- 2
def entry_2():
    err_a, err_ab, err_snr = 0.0, 0.0, 0.0
    for sch in _schedules().values():
        err_a = max(err_a, _rel(sch.alphas[1:], 1.0 - sch.betas[1:]))
        ab = np.cumprod(1.0 - sch.betas)  # direct product, independent of the log-space tables
        err_ab = max(err_ab, _rel(sch.alpha_bar, ab), _rel(sch.alpha_bar_prev[1:], ab[:-1]))
        inner = slice(1, sch.T) if sch.alpha_bar[-1] == 0 else slice(1, sch.T + 1)
        err_snr = max(err_snr, _rel(sch.log_snr[inner], np.log(ab[inner] / (1.0 - ab[inner]))))
    return [
        Check("2.1", "alpha_t = 1 - beta_t", err_a, 1e-15, "Ho et al. 2020 sec. 2"),
        Check("2.2", "alpha_bar_t = prod_{s<=t} alpha_s (and alpha_bar_prev)", err_ab, 1e-12, "Ho et al. 2020 sec. 2"),
        Check("2.3", "log SNR = log(alpha_bar / (1 - alpha_bar))", err_snr, 1e-9, "Kingma et al. 2021 eq. 2"),
    ]


# --------------------------------------------------------------------- 3
def entry_3():
    err = 0.0
    for sch in _schedules().values():
        t = np.arange(2, sch.T + 1)
        a, b, ab_prev = 1.0 - sch.betas[t], sch.betas[t], sch.alpha_bar[t - 1]
        # product of N(x_t; sqrt(a) x_{t-1}, b) and N(x_{t-1}; sqrt(ab_prev) x_0, 1 - ab_prev) in x_{t-1}
        precision = a / b + 1.0 / (1.0 - ab_prev)
        var = 1.0 / precision
        coef_xt = var * np.sqrt(a) / b
        coef_x0 = var * np.sqrt(ab_prev) / (1.0 - ab_prev)
        c0, ct, v = posterior_coefs(sch, t - 1, t)
        err = max(err, _rel(v, var), _rel(ct, coef_xt), _rel(c0, coef_x0))
    checks = [Check("3.1", "posterior q(x_{t-1}|x_t,x_0) equals the product of Gaussians (t >= 2)", err, 1e-11, "Ho et al. 2020 eq. 6-7")]
    err = 0.0
    for name in ("VP", "sub-VP", "VE", "cosine-VP"):
        proc = _processes()[name]
        s, t = _grid(proc)
        s = s[1:]
        t = t[1:]
        g_ts, v_ts = proc.transition(s, t)
        g_s, v_s = proc.mean_coef(s), proc.variance(s)
        precision = g_ts**2 / v_ts + 1.0 / v_s
        var = 1.0 / precision
        c0, ct, v = posterior_coefs(proc, s, t)
        err = max(err, _rel(v, var), _rel(ct, var * g_ts / v_ts), _rel(c0, var * g_s / v_s))
    checks.append(Check("3.2", "posterior q(x_s|x_t,x_0) for SDEs equals the product of Gaussians", err, 1e-11, "Kingma et al. 2021 eq. 28"))
    return checks


# --------------------------------------------------------------------- 4
def entry_4():
    rng = np.random.default_rng(4)
    err_mean, err_conv = 0.0, 0.0
    for name, proc in _processes().items():
        N, D = 64, 3
        if isinstance(proc, DiscreteSchedule):
            t = rng.integers(1, proc.T, size=N)  # below T: eps cannot give x0 at zero SNR
            s = t - 1
        else:
            t = rng.uniform(0.05, proc.t_max, size=N)
            s = t * rng.uniform(0.0, 0.95, size=N)
        x0, eps = rng.standard_normal((N, D)), rng.standard_normal((N, D))
        x_t = q_sample(proc, x0, t, eps)
        mean, _, _ = q_posterior(proc, x_t, x0, t, s)
        err_mean = max(err_mean, _rel_norm(posterior_mean_from_eps(proc, x_t, eps, t, s), mean))
        g, sig = proc.mean_coef(t)[:, None], proc.std(t)[:, None]
        truth = {"eps": eps, "x0": x0, "score": -eps / sig, "v": g * eps - sig * x0}
        for src in PREDICTIONS:
            for dst in PREDICTIONS:
                err_conv = max(err_conv, _rel_norm(convert(truth[src], src, dst, x_t, proc, t), truth[dst]))
    return [
        Check("4.1", "posterior mean through eps equals the mean through x0", err_mean, 1e-12, "Ho et al. 2020 eq. 11"),
        Check("4.2", "eps / x0 / score / v conversions agree, every process", err_conv, 1e-12, "Salimans & Ho 2022; Song et al. 2021"),
    ]


# --------------------------------------------------------------------- 5
def entry_5():
    from scipy.integrate import quad

    err = 0.0
    for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.2, -1.0, 2.0), (2.0, 5.0, 1.5, 0.5), (0.0, 1e-3, 0.01, 1e-3)]:
        def integrand(x):
            lp = -0.5 * ((x - m1) ** 2 / v1 + math.log(2 * math.pi * v1))
            lq = -0.5 * ((x - m2) ** 2 / v2 + math.log(2 * math.pi * v2))
            return math.exp(lp) * (lp - lq)

        s = math.sqrt(v1)
        ref, _ = quad(integrand, m1 - 40 * s, m1 + 40 * s, epsabs=1e-14, epsrel=1e-12, limit=200, points=[m1])
        got = float(normal_kl(m1, math.log(v1), m2, math.log(v2)))
        err = max(err, abs(got - ref) / max(abs(ref), 1e-3))
    checks = [Check("5.1", "closed-form Gaussian KL equals its integral", err, 1e-9, "standard; Ho et al. 2020 eq. 5")]

    # L = E_q[log q(x_{1:T}|x_0) - log p(x_{0:T})] sampled directly vs the sum of closed-form terms
    sch = DiscreteSchedule(linear_betas(4, 0.1, 0.4))
    gm = GaussianMixture(np.array([0.3, 0.7]), np.array([[-1.0], [0.8]]), np.array([0.05, 0.2]))
    model = lambda x, t: 0.9 * gm.eps(x, sch, t)  # an imperfect model keeps every term non-zero
    n = 200_000
    x0 = gm.sample(n, rng=5)
    terms = vlb_terms(model, sch, x0, rng=6, variance="beta", decoder="gaussian").total
    rng = np.random.default_rng(7)
    xs = [x0]
    log_ratio = np.zeros(n)
    for t in range(1, sch.T + 1):
        x_next = q_step(sch, xs[-1], t, rng.standard_normal((n, 1)))
        log_ratio += _log_normal(x_next, math.sqrt(sch.alphas[t]) * xs[-1], sch.betas[t])
        xs.append(x_next)
    log_ratio -= _log_normal(xs[-1], 0.0, 1.0)
    for t in range(1, sch.T + 1):
        mean = posterior_mean_from_eps(sch, xs[t], model(xs[t], np.full(n, t)), np.full(n, t))
        log_ratio -= _log_normal(xs[t - 1], mean, sch.betas[t])
    z = (log_ratio.mean() - terms.mean()) / math.sqrt(log_ratio.var() / n + terms.var() / n)
    checks.append(Check("5.2", "VLB sampled directly equals L_T + sum L_{t-1} + L_0 (|z|)", abs(z), Z_MAX, "Ho et al. 2020 eq. 3, 5"))
    return checks


def _log_normal(x, mean, var):
    return np.sum(-0.5 * ((x - mean) ** 2 / var + math.log(2 * math.pi * var)), axis=1)


# --------------------------------------------------------------------- 6
def entry_6():
    sch = _schedules()["linear"]
    t = np.arange(2, sch.T + 1)
    N = t.shape[0]
    # (a) point-mass data x_0 = c: the exact eps is (x_t - gamma c)/sigma, and beta-tilde is the exact variance
    c = np.full((N, 1), 0.37)
    x_t = np.linspace(-3, 3, N)[:, None]
    eps = (x_t - sch.sqrt_alpha_bar[t][:, None] * c) / sch.sqrt_one_minus_alpha_bar[t][:, None]
    mean = posterior_mean_from_eps(sch, x_t, eps, t)
    true_mean, true_var, _ = q_posterior(sch, x_t, c, t)
    err_a = max(_rel_norm(mean, true_mean), _rel(sch.posterior_variance[t], true_var[:, 0]))
    # (b) data N(0, 1): q(x_t) = N(0, 1) for all t, the exact eps is sigma_t x_t and the
    # true reverse q(x_{t-1}|x_t) = N(sqrt(alpha_t) x_t, beta_t) by Bayes' rule
    eps = sch.sqrt_one_minus_alpha_bar[t][:, None] * x_t
    mean = posterior_mean_from_eps(sch, x_t, eps, t)
    a = sch.alphas[t]
    rev_var = 1.0 / (1.0 + a / sch.betas[t])  # prior N(0,1) times likelihood N(x_t; sqrt(a) x, beta)
    rev_mean = rev_var * np.sqrt(a) / sch.betas[t] * x_t[:, 0]
    # the schedule's one-step variance (what ddpm's variance="beta" draws with) is that reverse variance
    err_b = max(_rel_norm(mean[:, 0], rev_mean), _rel(sch.transition(t - 1, t)[1], rev_var))
    return [
        Check("6.1", "ancestral step with sigma^2 = beta-tilde is exact for point-mass data", err_a, 1e-12, "Ho et al. 2020 sec. 3.2"),
        Check("6.2", "ancestral step with sigma^2 = beta is exact for N(0, I) data", err_b, 1e-12, "Ho et al. 2020 sec. 3.2"),
    ] + _ddpm_sampler_law()


def _ddpm_sampler_law():
    r"""Run ``samplers.ddpm`` with the exact eps of 1-D Gaussian data and compare with the exact law of the chain.

    For data :math:`N(m, s^2)`, :math:`x_t\sim N(\sqrt{\bar\alpha_t}m, v_t)` with
    :math:`v_t=\bar\alpha_t s^2+1-\bar\alpha_t`, and the exact model is
    :math:`E[\epsilon|x_t]=\sqrt{1-\bar\alpha_t}(x_t-\sqrt{\bar\alpha_t}m)/v_t`, affine in
    :math:`x_t`. Each step of Algorithm 2 (eq. 11 mean, noise :math:`\sigma_t z`, z = 0 at t = 1) is
    then :math:`x_{t-1}=a_tx_t+b_t+\sigma_tz`, so the chain stays Gaussian and its mean and variance
    propagate exactly: :math:`M\to a_tM+b_t`, :math:`V\to a_t^2V+\sigma_t^2`. The recursion is
    written here from the betas alone (its own cumulative product), independent of the sampler.
    Neither variance choice gives :math:`N(m, s^2)` exactly (``beta_tilde`` drops the posterior
    spread of :math:`x_0`), so both are held to their own exact law.
    """
    from .samplers import ddpm

    T, m, s2, n = 100, 0.8, 0.25, 40_000
    betas = linear_betas(T, 0.1 / T, 20.0 / T)  # Ho et al.'s range rescaled to T steps
    ab = np.cumprod(1.0 - betas)

    def eps_model(x, t):
        return math.sqrt(1.0 - ab[t]) * (x - math.sqrt(ab[t]) * m) / (ab[t] * s2 + 1.0 - ab[t])

    mean_T, var_T = math.sqrt(ab[T]) * m, ab[T] * s2 + 1.0 - ab[T]
    x_T = mean_T + math.sqrt(var_T) * np.random.default_rng(6).standard_normal((n, 1))  # the exact x_T marginal
    checks = []
    for cid, variance, seed in (("6.3", "beta_tilde", 61), ("6.4", "beta", 62)):
        M, V = mean_T, var_T
        for t in range(T, 0, -1):
            k = math.sqrt(1.0 - ab[t]) / (ab[t] * s2 + 1.0 - ab[t])  # eps = k (x_t - sqrt(ab_t) m)
            c, root_alpha = betas[t] / math.sqrt(1.0 - ab[t]), math.sqrt(1.0 - betas[t])  # eq. 11: (x_t - c eps) / sqrt(alpha_t)
            a, b = (1.0 - c * k) / root_alpha, c * k * math.sqrt(ab[t]) * m / root_alpha
            sigma2 = 0.0 if t == 1 else betas[t] * ((1.0 - ab[t - 1]) / (1.0 - ab[t]) if variance == "beta_tilde" else 1.0)
            M, V = a * M + b, a * a * V + sigma2
        x, _ = ddpm(eps_model, DiscreteSchedule(betas), x_T, prediction="eps", variance=variance, rng=seed)
        z_mean = (float(x.mean()) - M) / math.sqrt(V / n)
        z_var = (float(x.var(ddof=1)) - V) / (V * math.sqrt(2.0 / (n - 1)))
        title = f"ddpm sampler, variance={variance!r}: exact law of its chain on N(m, s^2) data (|z| of mean, variance)"
        checks.append(Check(cid, title, max(abs(z_mean), abs(z_var)), Z_MAX, "Ho et al. 2020 Algorithm 2, eq. 11"))
    return checks


# --------------------------------------------------------------------- 7
def entry_7():
    from scipy.integrate import quad, solve_ivp

    checks = []
    err = 0.0
    for proc in (VPSDE(), SubVPSDE(), CosineVPSDE()):
        for t in np.linspace(0.05, proc.t_max, 9):
            B, _ = quad(lambda s: float(proc.beta(s)), 0.0, t, epsabs=0, epsrel=1e-13, limit=200)
            err = max(err, _rel(proc.mean_coef(t), math.exp(-0.5 * B)))
            if not isinstance(proc, SubVPSDE):
                err = max(err, _rel(proc.variance(t), -math.expm1(-B)))
            else:
                err = max(err, _rel(proc.std(t), -math.expm1(-B)))
    checks.append(Check("7.1", "gamma_t = exp(-1/2 int beta); VP sigma^2 = 1 - exp(-int beta); sub-VP sigma = 1 - exp(-int beta)", err, 1e-11, "Song et al. 2021 eq. 11, 29"))

    err = 0.0
    for proc in (VPSDE(), SubVPSDE(), CosineVPSDE(), VESDE()):
        def rhs(t, y):
            f, g2 = float(proc.drift_coef(t)), float(proc.diffusion(t)) ** 2
            return [f * y[0], 2 * f * y[1] + g2]

        ts = np.linspace(0.0, 0.99 * proc.t_max, 12)
        sol = solve_ivp(rhs, (0.0, ts[-1]), [1.0, 0.0], t_eval=ts[1:], rtol=1e-12, atol=1e-14, method="DOP853")
        err = max(err, _rel(sol.y[0], proc.mean_coef(ts[1:])), _rel(sol.y[1], proc.variance(ts[1:])))
    checks.append(Check("7.2", "closed-form marginals solve the moment ODEs (VP, sub-VP, cosine-VP, VE)", err, 1e-8, "Song et al. 2021 eq. 5.50-5.51 (Sarkka & Solin)"))

    vp = VPSDE()
    errs = []
    for T in (500, 1000, 2000):
        sch = DiscreteSchedule(linear_betas(T, vp.beta_min / T, vp.beta_max / T))
        errs.append(np.max(np.abs(sch.alpha_bar - vp.mean_coef(np.arange(T + 1) / T) ** 2)))
    rates = [errs[0] / errs[1], errs[1] / errs[2]]
    checks.append(Check("7.3", "DDPM alpha_bar -> exp(-int beta) at rate 1/T (|error ratio - 2| on doubling T)", max(abs(r - 2.0) for r in rates), 0.05, "Song et al. 2021 appendix B"))
    T = 1000
    exact = vp.discretize(T)
    checks.append(Check("7.4", "VPSDE.discretize(T) has alpha_bar_i = exp(-B(i/T)) exactly", _rel(exact.alpha_bar, np.exp(-vp.integral_beta(np.arange(T + 1) / T))), 1e-12, "Song et al. 2021 appendix B"))
    return checks


# --------------------------------------------------------------------- 8
def entry_8():
    from scipy.integrate import solve_ivp

    checks = []
    gm = _ring()
    rng = np.random.default_rng(8)
    x = gm.sample(16, rng=rng) + 0.3 * rng.standard_normal((16, 2))
    err = {"fp": 0.0, "ode": 0.0, "rsde": 0.0}
    for proc in (VPSDE(), SubVPSDE(), VESDE(sigma_min=0.05, sigma_max=5.0)):
        for t in (0.2, 0.5):
            h_t, h = 1e-5, 1e-4
            p = lambda y, tt=t: np.exp(gm.log_prob(y, proc, tt))
            dp_dt = (p(x, t + h_t) - p(x, t - h_t)) / (2 * h_t)
            f, g2 = float(proc.drift_coef(t)), float(proc.diffusion(t)) ** 2
            score = lambda y: gm.score(y, proc, t)

            def div(field):  # divergence of field(y) * p(y) by central differences
                return sum((field(x + h * e)[:, j] * p(x + h * e) - field(x - h * e)[:, j] * p(x - h * e)) / (2 * h) for j, e in enumerate(np.eye(2)))

            lap_p = sum((p(x + h * e) - 2 * p(x) + p(x - h * e)) / h**2 for e in np.eye(2))
            fokker_planck = -div(lambda y: f * y) + 0.5 * g2 * lap_p
            pf_ode = -div(lambda y: proc.ode_drift(y, t, score(y)))
            reverse_sde = -div(lambda y: proc.reverse_drift(y, t, score(y))) - 0.5 * g2 * lap_p
            scale = np.max(np.abs(dp_dt))
            err["fp"] = max(err["fp"], np.max(np.abs(fokker_planck - dp_dt)) / scale)
            err["ode"] = max(err["ode"], np.max(np.abs(pf_ode - dp_dt)) / scale)
            err["rsde"] = max(err["rsde"], np.max(np.abs(reverse_sde - dp_dt)) / scale)
    checks.append(Check("8.1", "diffused mixture densities solve the Fokker-Planck equation", err["fp"], 1e-5, "Song et al. 2021 eq. 5; Sarkka & Solin"))
    checks.append(Check("8.2", "PF-ODE velocity transports the same densities (continuity equation)", err["ode"], 1e-5, "Song et al. 2021 eq. 13"))
    checks.append(Check("8.3", "reverse SDE drift gives the same densities backwards in time", err["rsde"], 1e-5, "Anderson 1982; Song et al. 2021 eq. 6"))

    g = Gaussian(np.array([1.0, -0.5]), np.array([[1.5, 0.4], [0.4, 0.3]]))
    err = 0.0
    for proc in (VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)):
        x1 = proc.prior_sample((4, 2), rng=9)
        t_end = proc.t_min * 10

        def rhs(t, y):
            y = y.reshape(4, 2)
            return proc.ode_drift(y, t, g.score(y, proc, t)).ravel()

        sol = solve_ivp(rhs, (1.0, t_end), x1.ravel(), rtol=1e-11, atol=1e-12, method="DOP853")
        exact = g.ode_solution(x1, proc, 1.0, t_end)
        err = max(err, _rel_norm(sol.y[:, -1].reshape(4, 2), exact))
    checks.append(Check("8.4", "Gaussian data: numerical PF-ODE solution equals the closed-form flow", err, 1e-8, "Song et al. 2021 eq. 13"))
    return checks


# --------------------------------------------------------------------- 9
def entry_9():
    checks = []
    gm = _random_full_mixture()
    proc = VPSDE()
    rng = np.random.default_rng(9)
    t = rng.uniform(0.05, 1.0, size=32)
    x_t = gm.sample(32, rng=rng) * proc.mean_coef(t)[:, None] + proc.std(t)[:, None] * rng.standard_normal((32, 3))
    score = gm.score(x_t, proc, t)
    from_eps = convert(gm.eps(x_t, proc, t), "eps", "score", x_t, proc, t)
    checks.append(Check("9.1", "score = -E[eps|x_t] / sigma_t for the exact mixture", _rel_norm(from_eps, score), 1e-12, "Vincent 2011; Song et al. 2021"))
    fd = _fd_grad(lambda y: gm.log_prob(y, proc, t), x_t)
    checks.append(Check("9.2", "mixture score equals finite differences of log p_t", _rel_norm(score, fd), FD_TOL, "analytic"))

    data = EmpiricalData(rng.standard_normal((40, 2)))
    x_t = rng.standard_normal((16, 2))
    tt = 0.3
    w = data.posterior(x_t, proc, tt)  # p(x_0 = x_i | x_t)
    g, v = float(proc.mean_coef(tt)), float(proc.variance(tt))
    target_mean = np.einsum("nm,nmd->nd", w, -(x_t[:, None, :] - g * data.points[None]) / v)
    fd = _fd_grad(lambda y: data.log_prob(y, proc, tt), x_t)
    checks.append(Check("9.3", "DSM minimiser E[grad log q(x_t|x_0) | x_t] is the score (finite data)", _rel_norm(target_mean, fd), FD_TOL, "Vincent 2011 eq. 11"))
    return checks


# -------------------------------------------------------------------- 10
def entry_10():
    rng = np.random.default_rng(10)
    proc = VPSDE()
    x0 = rng.standard_normal((64, 3))
    t = rng.uniform(0.01, 1.0, size=64)
    noise = rng.standard_normal((64, 3))
    model = lambda x, tt: -x * 0.7 + 0.1  # any score model
    dsm = dsm_loss(model, x0, proc, t, weighting="sigma2", noise=noise)
    x_t = q_sample(proc, x0, t, noise)
    eps_theta = -proc.std(t)[:, None] * model(x_t, t)
    checks = [Check("10.1", "sigma^2-weighted DSM equals the eps-MSE of eps_theta = -sigma s_theta", _rel(dsm, eps_mse(eps_theta, noise, reduce="sum")), 1e-12, "Song et al. 2021 sec. 3.3; Ho et al. 2020 eq. 14")]
    lik = dsm_loss(model, x0, proc, t, weighting="likelihood", noise=noise)
    ratio = proc.diffusion(t) ** 2 / proc.variance(t)
    checks.append(Check("10.2", "likelihood weighting lambda = g^2 equals g^2/sigma^2 times the eps-MSE", _rel(lik, ratio * eps_mse(eps_theta, noise, reduce="sum")), 1e-12, "Song et al. 2021b (likelihood weighting)"))

    sch = _schedules()["linear"]
    t = np.arange(2, sch.T + 1)
    N = t.shape[0]
    x0, eps, eps_theta = (rng.standard_normal((N, 2)) for _ in range(3))
    x_t = q_sample(sch, x0, t, eps)
    q_mean, q_var, q_logvar = q_posterior(sch, x_t, x0, t)
    p_mean = posterior_mean_from_eps(sch, x_t, eps_theta, t)
    kl = np.sum(normal_kl(q_mean, q_logvar, p_mean, q_logvar), axis=1)
    b, a, ab, bt = sch.betas[t], sch.alphas[t], sch.alpha_bar[t], sch.posterior_variance[t]
    ho_weight = b**2 / (2 * bt * a * (1 - ab))
    checks.append(Check("10.3", "L_{t-1} = beta^2 / (2 sigma^2 alpha (1 - alpha_bar)) ||eps - eps_theta||^2", _rel(kl, ho_weight * np.sum((eps - eps_theta) ** 2, axis=1)), 1e-11, "Ho et al. 2020 eq. 12"))
    snr = np.exp(sch.log_snr)
    x0_theta = convert(eps_theta, "eps", "x0", x_t, sch, t)
    vdm = 0.5 * (snr[t - 1] - snr[t]) * np.sum((x0 - x0_theta) ** 2, axis=1)
    checks.append(Check("10.4", "L_{t-1} = 1/2 (SNR(t-1) - SNR(t)) ||x_0 - x0_theta||^2", _rel(kl, vdm), 1e-11, "Kingma et al. 2021 eq. 13"))
    return checks


# -------------------------------------------------------------------- 11
def entry_11():
    from scipy.stats import multivariate_normal

    gm = _random_full_mixture(seed=11)
    rng = np.random.default_rng(11)
    x = gm.sample(16, rng=rng)
    score = gm.score(x)
    checks = [_mala_ignores_normaliser(gm)]

    # energy of an unnormalised mixture, written with SciPy's densities, independent of refdiff
    w_tilde = gm.weights * 3.7
    covs = gm.full_covs()

    def energy(y):
        dens = sum(w_tilde[k] * multivariate_normal(gm.means[k], covs[k]).pdf(y) for k in range(gm.n_components))
        return -np.log(dens)

    checks.append(Check("11.2", "EBM score -grad E equals the mixture score", _rel_norm(-_fd_grad(energy, x), score), FD_TOL, "LeCun et al. 2006; Song & Ermon 2019"))
    return checks


def _mala_ignores_normaliser(gm):
    """MALA on the unnormalised log-density log p + log Z runs the same chain as on log p, draw for draw.

    The one place refdiff takes an unnormalised log-density is MALA's
    accept/reject test (a score needs no normaliser); only differences of
    log p enter it, so Z must cancel. The error is the largest difference of the final states and
    acceptance rates over several log Z; it is NaN when the chain rejected
    nothing (or everything), since then the test never looked at log p.
    """
    from .samplers import mala

    x_init = gm.sample(256, rng=110)
    step = 0.3  # large enough that a good share of proposals is rejected
    ref = mala(gm.score, gm.log_prob, x_init, step_size=step, n_steps=30, rng=111)
    rate = float(np.mean(ref.info["acceptance_rate"]))
    err = 0.0
    for log_Z in (-3.0, 7.5, 50.0):
        out = mala(gm.score, lambda y, c=log_Z: gm.log_prob(y) + c, x_init, step_size=step, n_steps=30, rng=111)
        d_rate = np.abs(out.info["acceptance_rate"] - ref.info["acceptance_rate"])
        err = max(err, float(np.max(np.abs(out.x - ref.x))), float(np.max(d_rate)))
    if not 0.0 < rate < 1.0:
        err = float("nan")
    return Check("11.1", f"MALA on Z * p runs the same chain as on p, log Z in (-3, 7.5, 50) (acceptance {rate:.2f}; max abs difference)",
                 err, 1e-12, "Roberts & Tweedie 1996; Hyvarinen 2005")


#: Entry number -> function returning its checks, in catalogue order.
ENTRIES = {
    str(i): fn
    for i, fn in enumerate(
        (entry_1, entry_2, entry_3, entry_4, entry_5, entry_6, entry_7, entry_8, entry_9, entry_10, entry_11)
        + (entry_12, entry_13, entry_14, entry_15),
        start=1,
    )
}


def run(only=None, progress=None) -> list:
    """Run the catalogue (or the entries whose numbers are in ``only``) and return every :class:`Check`.

    ``progress`` is called as ``progress(entry_id)`` before each entry.
    """
    ids = list(ENTRIES) if not only else [str(i) for i in only]
    unknown = [i for i in ids if i not in ENTRIES]
    if unknown:
        raise ValueError(f"unknown catalogue entries {unknown}; expected some of {list(ENTRIES)}")
    checks = []
    for i in ids:
        if progress is not None:
            progress(i)
        checks.extend(ENTRIES[i]())
    return checks
