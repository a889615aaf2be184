r"""Catalogue entries 12-15: samplers, guidance and likelihood against exact answers.

Kept apart from :mod:`refdiff.verify` (entries 1-11, the closed forms) because
these run samplers; :mod:`refdiff.verify` lists them in ``ENTRIES``.

12. Langevin dynamics and annealed Langevin (NCSN) reach the target
13. Euler-Maruyama, Euler, Heun, RK4, RK45, DDIM, DPM-Solver: measured orders
14. classifier guidance and classifier-free guidance identities
15. PF-ODE log-likelihood equals the exact log-density of a mixture

Orders are least-squares slopes of log error against log step count, on the
closed-form probability-flow ODE solution of a Gaussian (deterministic
solvers) or on exact moments (Euler-Maruyama's weak order); each must lie
within 0.3 of the method's order.
"""

from __future__ import annotations

import math

import numpy as np

from .analytic import Gaussian
from .sde import VPSDE

__all__ = ["entry_12", "entry_13", "entry_14", "entry_15"]

Z_MAX = 5.0
ORDER_TOL = 0.3


def _check(*args):
    from .verify import Check

    return Check(*args)


def _slope(steps, errors) -> float:
    """Convergence order: minus the least-squares slope of log(error) on log(steps)."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


def _gaussian():
    return Gaussian(np.array([1.0, -2.0]), np.array([[0.5, 0.2], [0.2, 0.3]]))


def _moment_z(samples, mean, var):
    """Largest z-score of the sample mean and variance against exact values (per dimension)."""
    n = samples.shape[0]
    z_mean = np.abs(samples.mean(0) - mean) / np.sqrt(var / n)
    # Var of the sample variance of a Gaussian: 2 var^2 / (n - 1)
    z_var = np.abs(samples.var(0, ddof=1) - var) / (var * math.sqrt(2.0 / (n - 1)))
    return float(max(z_mean.max(), z_var.max()))


def entry_12():
    from .metrics import mode_weight_error
    from .samplers import annealed_langevin, langevin, mala, ula_stationary_variance
    from .targets import ring_mixture

    mean, var = np.array([1.0, -0.5]), np.array([0.3, 1.2])
    target = Gaussian(mean, var)
    eta, n = 0.1, 40_000
    x_init = np.zeros((n, 2))
    x, _ = langevin(target.score, x_init, step_size=eta, n_steps=400, rng=12)
    checks = [
        _check(
            "12.1",
            "ULA stationary variance = s^2 / (1 - eta / 2s^2) on a Gaussian (|z| of mean, variance)",
            _moment_z(x, mean, ula_stationary_variance(var, eta)),
            Z_MAX,
            "Roberts & Tweedie 1996; AR(1) stationary law",
        )
    ]
    x, _ = mala(target.score, target.log_prob, x_init, step_size=eta, n_steps=400, rng=12)
    checks.append(
        _check("12.2", "MALA leaves the target exactly invariant (|z| of mean, variance)", _moment_z(x, mean, var), Z_MAX, "Roberts & Tweedie 1996")
    )
    ring = ring_mixture()
    x, _ = annealed_langevin(lambda y, t: ring.score(y, VPSDE(), t), VPSDE(), (4000, 2), levels=20, n_steps_each=50, rng=12)
    checks.append(
        _check(
            "12.3",
            "annealed Langevin recovers the unequal mode weights of an 8-mode ring (max abs error)",
            mode_weight_error(x, ring),
            0.03,
            "Song & Ermon 2019, Algorithm 1",
        )
    )
    return checks


def _ode_orders():
    """Measured orders of the deterministic solvers on the exact Gaussian PF-ODE flow."""
    from .samplers import ddim, dpm_solver, ode_euler, ode_heun, ode_rk4, time_grid

    process, g = VPSDE(), _gaussian()
    t_max, t_min = 1.0, 0.05
    x1 = np.random.default_rng(13).standard_normal((64, 2))
    exact = g.ode_solution(x1, process, t_max, t_min)

    def score(x, t):
        return g.score(x, process, t)

    cases = [
        ("13.1", "Euler", ode_euler, {}, 1, "uniform", (16, 32, 64, 128)),
        ("13.2", "Heun (EDM)", ode_heun, {}, 2, "karras", (8, 16, 32, 64)),
        ("13.3", "RK4", ode_rk4, {}, 4, "log_snr", (8, 16, 32, 64)),
        ("13.4", "DPM-Solver-1", dpm_solver, {"order": 1}, 1, "log_snr", (16, 32, 64, 128)),
        ("13.5", "DPM-Solver-2", dpm_solver, {"order": 2}, 2, "log_snr", (8, 16, 32, 64)),
        ("13.6", "DPM-Solver-3", dpm_solver, {"order": 3}, 3, "log_snr", (8, 16, 32, 64)),
    ]
    checks = []
    for cid, name, fn, kw, order, kind, steps in cases:
        errs = []
        for n in steps:
            grid = time_grid(process, n, kind, t_max=t_max, t_min=t_min)
            x, _ = fn(score, process, x1, prediction="score", grid=grid, final_denoise=False, **kw)
            errs.append(np.max(np.abs(x - exact)))
        measured = _slope(steps, errs)
        checks.append(_check(cid, f"{name} converges with order {order} (measured {measured:.2f}; error is |measured - {order}|)", abs(measured - order), ORDER_TOL, "Gaussian PF-ODE in closed form"))
    grid = time_grid(process, 25, "log_snr", t_max=t_max, t_min=t_min)
    a, _ = ddim(score, process, x1, prediction="score", grid=grid, final_denoise=False)
    b, _ = dpm_solver(score, process, x1, prediction="score", order=1, grid=grid, final_denoise=False)
    checks.append(_check("13.7", "DDIM (eta = 0) equals DPM-Solver-1 step for step (max abs difference)", float(np.max(np.abs(a - b))), 1e-12, "Lu et al. 2022a, sec. 4.1"))
    return checks


def _em_weak_order():
    """Euler-Maruyama's weak order from exact-in-law moments of a 1-D Gaussian target."""
    from .samplers import euler_maruyama

    process, mu, s2 = VPSDE(), 1.5, 0.4
    g = Gaussian(np.array([mu]), np.array([s2]))
    t_min = 0.05
    exact_mean = math.exp(float(process.log_mean_coef(t_min))) * mu
    exact_var = float(process.mean_coef(t_min)) ** 2 * s2 + float(process.variance(t_min))
    steps, n = (16, 32, 64, 128), 400_000
    mean_errs, var_errs = [], []
    for k in steps:
        grid = np.linspace(1.0, t_min, k + 1)
        x_T = g.diffuse(process, 1.0).sample(n, rng=130 + k)  # start from the exact p_1
        x, _ = euler_maruyama(lambda y, t: g.score(y, process, t), process, x_T, grid=grid, final_denoise=False, rng=13 + k)
        mean_errs.append(abs(x.mean() - exact_mean))
        var_errs.append(abs(x.var() - exact_var))
    checks = []
    for cid, what, errs in (("13.8", "mean", mean_errs), ("13.9", "variance", var_errs)):
        measured = _slope(steps, errs)
        checks.append(_check(cid, f"Euler-Maruyama weak order 1 on the {what} (measured {measured:.2f}; error is |measured - 1|)", abs(measured - 1.0), ORDER_TOL, "Kloeden & Platen 1992, ch. 14"))
    return checks


def _rk45_converges():
    from .samplers import ode_rk45

    process, g = VPSDE(), _gaussian()
    x1 = np.random.default_rng(131).standard_normal((64, 2))
    exact = g.ode_solution(x1, process, process.t_max, process.t_min)
    x, nfe = ode_rk45(lambda y, t: g.score(y, process, t), process, x1, rtol=1e-9, atol=1e-9, final_denoise=False)
    return _check("13.10", f"RK45 at rtol = atol = 1e-9 matches the exact flow ({nfe} NFE; max abs error)", float(np.max(np.abs(x - exact))), 1e-6, "Dormand & Prince 1980")


def entry_13():
    return _ode_orders() + _em_weak_order() + [_rk45_converges()]


def _labelled_ring():
    """``(lm, process, x, t)``: the 8-mode ring in two classes (even and odd modes) and points of its p_t."""
    from .guidance import LabelledMixture
    from .targets import ring_mixture

    process, t = VPSDE(), 0.3
    ring = ring_mixture()
    lm = LabelledMixture(ring, np.arange(8) % 2)
    return lm, process, ring.diffuse(process, t).sample(256, rng=14), t


def entry_14():
    from .guidance import classifier_free_guidance
    from .metrics import mode_weights
    from .param import convert
    from .samplers import dpm_solver_pp

    lm, process, x, t = _labelled_ring()
    ring = lm.mixture
    exact_cond = lm.cond_model(1, process)(x, t)
    err_cg = np.max(np.abs(lm.guided_model(1, 1.0, process, kind="classifier")(x, t) - exact_cond))
    err_cfg = np.max(np.abs(lm.guided_model(1, 1.0, process, kind="cfg")(x, t) - exact_cond))
    scale = max(1.0, float(np.max(np.abs(exact_cond))))
    checks = [
        _check("14.1", "classifier guidance at gamma = 1 is the exact conditional score", err_cg / scale, 1e-10, "Dhariwal & Nichol 2021; Song et al. 2021 sec. 5"),
        _check("14.2", "classifier-free guidance at gamma = 1 is the exact conditional score", err_cfg / scale, 1e-10, "Ho & Salimans 2022"),
    ]
    # CFG in eps form equals CFG in score form after conversion
    gamma = 3.0
    u_s, c_s = lm.uncond_model(process)(x, t), lm.cond_model(1, process)(x, t)
    as_score = classifier_free_guidance(lambda y, s: u_s, lambda y, s: c_s, gamma)(x, t)
    u_e, c_e = (convert(v, "score", "eps", x, process, t) for v in (u_s, c_s))
    as_eps = classifier_free_guidance(lambda y, s: u_e, lambda y, s: c_e, gamma, prediction="eps")(x, t)
    err = np.max(np.abs(convert(as_eps, "eps", "score", x, process, t) - as_score)) / max(1.0, float(np.max(np.abs(as_score))))
    checks.append(_check("14.3", "CFG in eps form equals CFG in score form (gamma = 3)", float(err), 1e-12, "linearity of eps = -sigma_t score"))
    # gamma = 1 guided sampling draws the class-conditional sub-mixture
    xs, _ = dpm_solver_pp(lm.guided_model(1, 1.0, process, kind="classifier"), process, (4000, 2), prediction="score", steps=30, rng=14)
    w = mode_weights(xs, ring)
    cond = lm.conditional(1)
    target = np.zeros(8)
    target[1::2] = cond.weights
    checks.append(_check("14.4", "gamma = 1 guided samples have the conditional mode weights (max abs error)", float(np.max(np.abs(w - target))), 0.03, "Dhariwal & Nichol 2021"))
    return checks + _classifier_checks(lm, process, x, t) + _guidance_scale_law(lm, process, x, t)


def _classifier_checks(lm, process, x, t):
    r"""The exact noisy classifier of a labelled mixture: Bayes' rule on SciPy's densities, and its gradient.

    :math:`\log p_t(y|x)=\log\sum_{c(k)=y}w_k\mathcal N(x;\gamma_t\mu_k,C_k)-\log\sum_kw_k\mathcal N(x;\gamma_t\mu_k,C_k)`,
    :math:`C_k=\gamma_t^2\Sigma_k+\sigma_t^2I`, written with ``scipy.stats`` (nothing of refdiff but the
    process's coefficients); the gradient that classifier guidance adds is then held to central
    differences of :meth:`~refdiff.guidance.LabelledMixture.class_log_prob`, so 14.1 does not rest on
    the gradient's own definition (conditional score minus unconditional score).
    """
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from .verify import FD_TOL, _fd_grad, _rel_norm

    gm = lm.mixture
    g, v = float(process.mean_coef(t)), float(process.variance(t))
    covs = g**2 * gm.full_covs() + v * np.eye(gm.dim)
    log_joint = np.stack([np.log(gm.weights[k]) + multivariate_normal(g * gm.means[k], covs[k]).logpdf(x) for k in range(gm.n_components)], 1)
    y = lm.classes[np.random.default_rng(141).integers(0, lm.n_classes, size=x.shape[0])]  # one label per row
    in_class = lm.labels[None, :] == y[:, None]
    bayes = logsumexp(np.where(in_class, log_joint, -np.inf), axis=1) - logsumexp(log_joint, axis=1)
    err_bayes = _rel_norm(lm.class_log_prob(x, y, process, t), bayes)
    fd = _fd_grad(lambda z: lm.class_log_prob(z, y, process, t), x)
    err_fd = _rel_norm(lm.classifier_log_prob_grad(x, y, process, t), fd)
    return [
        _check("14.5", "noisy classifier log p_t(y|x) equals Bayes' rule on SciPy's diffused densities", err_bayes, 1e-10, "Bayes' rule; Dhariwal & Nichol 2021"),
        _check("14.6", "classifier gradient equals central differences of log p_t(y|x)", err_fd, FD_TOL, "Dhariwal & Nichol 2021 sec. 4.1"),
    ]


def _guidance_scale_law(lm, process, x, t):
    r"""The guidance scale law at :math:`\gamma\ne1`, against the formulas written out from the model outputs.

    Classifier-free: :math:`(1-\gamma)u+\gamma c` in score and in eps form (Ho & Salimans 2022 eq. 6,
    with :math:`\gamma=1+w`). Classifier: :math:`s+\gamma\nabla\log p_t(y|x)`, and in eps form
    :math:`\epsilon-\gamma\sigma_t\nabla\log p_t(y|x)` (Dhariwal & Nichol 2021, Algorithm 2).
    The error is relative to the largest magnitude of the reference, over gamma in (0.5, 3).
    """
    from .guidance import classifier_free_guidance, classifier_guidance

    models = {kind: (lm.uncond_model(process, kind), lm.cond_model(1, process, kind)) for kind in ("score", "eps")}
    grad = lm.classifier_grad(1, process)
    g_x, sigma = grad(x, t), float(process.std(t))
    err_cfg, err_cg = 0.0, 0.0
    for gamma in (0.5, 3.0):
        for kind, (uncond, cond) in models.items():
            u, c = uncond(x, t), cond(x, t)
            ref = (1.0 - gamma) * u + gamma * c
            got = classifier_free_guidance(uncond, cond, gamma, prediction=kind)(x, t)
            err_cfg = max(err_cfg, float(np.max(np.abs(got - ref))) / max(1.0, float(np.max(np.abs(ref)))))
            ref = u + gamma * g_x if kind == "score" else u - gamma * sigma * g_x
            got = classifier_guidance(uncond, grad, gamma, prediction=kind, process=process)(x, t)
            err_cg = max(err_cg, float(np.max(np.abs(got - ref))) / max(1.0, float(np.max(np.abs(ref)))))
    return [
        _check("14.7", "classifier-free guidance at gamma = 0.5, 3 is (1 - gamma) u + gamma c (score and eps)", err_cfg, 1e-12, "Ho & Salimans 2022 eq. 6"),
        _check("14.8", "classifier guidance at gamma = 0.5, 3 is s + gamma grad log p_t(y|x) (eps: eps - gamma sigma_t grad)", err_cg, 1e-12, "Dhariwal & Nichol 2021 Algorithms 1-2"),
    ]


def entry_15():
    from .likelihood import ode_log_likelihood
    from .targets import ring_mixture

    process = VPSDE()
    ring = ring_mixture()
    x0 = ring.sample(64, rng=15)
    res = ode_log_likelihood(
        process,
        lambda y, t: ring.score(y, process, t),
        x0,
        score_divergence=lambda y, t: ring.score_divergence(y, process, t),
        prior_log_prob=lambda y: ring.log_prob(y, process, process.t_max),
        rtol=1e-8,
        atol=1e-8,
    )
    exact = ring.log_prob(x0, process, process.t_min)
    err = float(np.mean(np.abs(res.log_prob - exact)))
    return [_check("15.1", f"PF-ODE log-likelihood (exact divergence, {res.nfe} NFE) equals log p of the 2-D ring (mean abs nats)", err, 1e-3, "Song et al. 2021 sec. 4.3; Chen et al. 2018")]
