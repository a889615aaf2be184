r"""Reverse-SDE samplers: Euler-Maruyama, predictor-corrector, adaptive steps, EDM's churn.

The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6)

.. math:: dx=[f(t)x-g(t)^2\nabla\log p_t(x)]\,dt+g(t)\,d\bar w,

integrated from :math:`t_{max}` down to :math:`t_{min}` (dt < 0), has the
forward process's marginals. With a step :math:`h=t_i-t_{i+1}>0`:

=======================  ============================================================================
Euler-Maruyama           :math:`x\leftarrow x-h[f x-g^2s]+g\sqrt h\,z` (Song et al. 2021, app. G)
reverse diffusion        :math:`x\leftarrow x-(\gamma_{t|s}-1)x+\sigma^2_{t|s}s+\sigma_{t|s}z`: the
                         reverse of the forward step :math:`x_t=\gamma_{t|s}x_s+\sigma_{t|s}z`
                         (Song et al.'s ``ReverseDiffusionPredictor``, for any process)
ancestral                :math:`x\leftarrow\tilde\mu_{s|t}(x,\hat x_0)+\tilde\beta_{s|t}^{1/2}z` (DDPM)
Langevin corrector       :math:`x\leftarrow x+\epsilon s+\sqrt{2\epsilon}z`,
                         :math:`\epsilon=2\gamma_{t|s}^2(r\sigma_t)^2`
=======================  ============================================================================

Song et al.'s VP ancestral predictor uses :math:`\beta_i` as its variance; the
one here uses :math:`\tilde\beta` like DDPM's ``beta_tilde``, the same for
every process.

The corrector's step. Song et al. (Algorithm 5) set
:math:`\epsilon=2\alpha(r\|z\|/\|s\|)^2` with the norms averaged over the
batch, which ties one sample's step to the rest of its batch (PITFALLS 29).
Taken per example instead, the rule explodes wherever the score is small (at
a mode's centre :math:`\|s\|\to0`), and in low dimension that happens
often. refdiff uses the rule's large-dimension value: for data perturbed at
level :math:`\sigma_t`, :math:`\|z\|^2\approx d` and
:math:`\|s\|^2\approx d/\sigma_t^2`, so :math:`\epsilon=2\alpha(r\sigma_t)^2`,
with :math:`\alpha=\gamma_{t|s}^2` (Song et al.'s :math:`\alpha_i=1-\beta_i`
for VP, 1 for VE). It is deterministic and the same for every example.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import namespace, per_example
from ..forward import posterior_coefs
from ._common import (
    ModelCall,
    SampleResult,
    check_int,
    check_positive,
    final_denoise_step,
    finish_step,
    require_sde,
    start,
)
from .grids import resolve_grid
from .ode import edm_heun_loop

__all__ = ["euler_maruyama", "predictor_corrector", "sde_adaptive", "edm_stochastic", "PREDICTORS"]

#: Predictors of :func:`predictor_corrector`.
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral")


def _row_norms(a):
    xp = namespace(a)
    return xp.sqrt(xp.sum(xp.reshape(a * a, (a.shape[0], -1)), axis=1))


def euler_maruyama(
    model, process, x_T, *, prediction="score", steps=None, grid=None, final_denoise=True, rng=None, callback=None
):
    r"""Euler-Maruyama on the reverse SDE of any process (Song et al. 2021, Algorithm 1 without corrector).

    Parameters
    ----------
    model : callable ``f(x, t)``
    process : SDE
    x_T : array (N, ...) or shape tuple (drawn from the prior)
    prediction : {"score", "eps", "x0", "v"}
    steps : int
        Number of steps on a uniform grid in t (or pass ``grid``).
    final_denoise : bool
        Replace the state at :math:`t_{min}` by Tweedie's :math:`\hat x_0`
        (Song et al.'s "noise removal").
    rng : SPEC 7 seed of the per-example noise streams.

    Returns
    -------
    SampleResult ``(x, nfe)``.
    """
    require_sde(process, "euler_maruyama")
    grid = resolve_grid(process, steps, grid, default_steps=1000, default_kind="uniform")
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=process.prior_std())
    for i in range(grid.shape[0] - 1):
        t, h = grid[i], float(grid[i] - grid[i + 1])
        drift = process._reverse_drift(x, t, f(x, t, "score", i))
        x = x - h * drift + per_example(process.diffusion(t) * math.sqrt(h), x) * noise.normal(x.shape, like=x)
        x = finish_step(i, grid[i + 1], x, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def _predictor_step(kind, f, process, x, t, s, i, noise):
    """One predictor move from t to s < t."""
    z = noise.normal(x.shape, like=x)
    if kind == "euler_maruyama":
        h = float(t - s)
        drift = process._reverse_drift(x, t, f(x, t, "score", i))
        return x - h * drift + per_example(process.diffusion(t) * math.sqrt(h), x) * z
    if kind == "reverse_diffusion":
        gamma_ts, sigma2_ts = process.transition(s, t)
        score = f(x, t, "score", i)
        return per_example(2.0 - gamma_ts, x) * x + per_example(sigma2_ts, x) * score + per_example(np.sqrt(sigma2_ts), x) * z
    coef_x0, coef_xt, var = posterior_coefs(process, s, t)  # ancestral
    x0 = f(x, t, "x0", i)
    return per_example(coef_x0, x) * x0 + per_example(coef_xt, x) * x + per_example(np.sqrt(var), x) * z


def predictor_corrector(
    model,
    process,
    x_T,
    *,
    prediction="score",
    predictor="reverse_diffusion",
    corrector="langevin",
    snr=0.16,
    n_corrector=1,
    steps=None,
    grid=None,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3 and 4-5).

    At each grid time :math:`t_i`: ``n_corrector`` Langevin steps targeting
    :math:`p_{t_i}` with the signal-to-noise step size, then one predictor
    step to :math:`t_{i+1}`.

    Parameters
    ----------
    predictor : one of :data:`PREDICTORS`
    corrector : "langevin" or None
    snr : float
        The corrector's target signal-to-noise ratio r (0.16 in Song et al.).
    n_corrector : int >= 0

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``nfe = steps * (1 + n_corrector) (+1)``.
    """
    require_sde(process, "predictor_corrector")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in ("langevin", None):
        raise ValueError(f"corrector must be 'langevin' or None, got {corrector!r}")
    snr = check_positive(snr, "snr")
    n_corrector = check_int(n_corrector, "n_corrector", lo=0) if corrector else 0
    grid = resolve_grid(process, steps, grid, default_steps=1000, default_kind="uniform")
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=process.prior_std())
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        # corrector: Langevin at t with step 2 alpha (r sigma_t)^2 (see the module notes)
        alpha = float(process.transition(s, t)[0]) ** 2
        eps = 2.0 * alpha * (snr * float(process.std(t))) ** 2
        for _ in range(n_corrector):
            score = f(x, t, "score", i)
            x = x + eps * score + math.sqrt(2.0 * eps) * noise.normal(x.shape, like=x)
        # predictor: t -> s
        x = finish_step(i, s, _predictor_step(predictor, f, process, x, t, s, i, noise), callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def sde_adaptive(
    model,
    process,
    x_T,
    *,
    prediction="score",
    eps_abs=0.0078,
    eps_rel=0.05,
    h_init=0.01,
    safety=0.9,
    exponent=0.9,
    max_iters=100_000,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Adaptive-step reverse-SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta go fast", Algorithm 1).

    Each example keeps its own time and step :math:`h`. A trial step pairs
    Euler-Maruyama :math:`x'` with an improved-Euler :math:`x''` (same noise
    z); the scaled error
    :math:`E_2=\|(x'-x'')/\delta\|_2/\sqrt n`, with
    :math:`\delta=\max(\epsilon_{abs},\epsilon_{rel}\max(|x'|,|x'_{prev}|))`,
    accepts the step (keeping :math:`x''`) when :math:`E_2\le1`; then
    :math:`h\leftarrow\min(t-t_{min},\theta hE_2^{-r})`. An example's noise
    draw is indexed by its own trial count, so a sample does not depend on
    its batch. Defaults: the paper's :math:`\epsilon_{abs}=0.0078`,
    :math:`\epsilon_{rel}=0.05`, :math:`h_{init}=0.01`, :math:`\theta=0.9`,
    :math:`r=0.9`.

    Accepting or rejecting a step by an error that depends on the step's own
    noise z biases the law of the result (rejection favours some noise
    draws). Measured with the exact score of a 2-D Gaussian with variances
    (0.04, 0.5) on ``VPSDE()``, 200 000 samples, ``rng=0`` (standard errors
    0.0002 and 0.002): at these defaults the sample variances are
    (0.077, 0.665), too large on both axes, with 43% of trial steps rejected
    (323 NFE); halving both tolerances rejects as many (44%) and does not
    remove the bias, (0.082, 0.691); fewer rejections (``safety=0.5``, 22%)
    reduce it to (0.067, 0.598). :func:`euler_maruyama` with 160 steps (161
    NFE) gives (0.041, 0.504). Prefer :func:`euler_maruyama` or
    :func:`predictor_corrector` where the law matters more than the NFE.

    Returns
    -------
    SampleResult ``(x, nfe)``: ``nfe`` counts batched model calls (2 per
    iteration while any example is running; each call takes the whole batch,
    finished examples at :math:`t_{min}`, so that a model conditioned per
    example sees its own rows); ``info`` holds per-example ``accepted`` and
    ``rejected`` step counts and the tolerances. ``callback(i, t, x)`` gets
    a copy of the state after each iteration, with ``t`` per example.
    """
    require_sde(process, "sde_adaptive")
    eps_abs, eps_rel = check_positive(eps_abs, "eps_abs"), check_positive(eps_rel, "eps_rel", allow_zero=True)
    h_init, safety = check_positive(h_init, "h_init"), check_positive(safety, "safety")
    exponent = check_positive(exponent, "exponent")
    max_iters = check_int(max_iters, "max_iters")
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=process.prior_std())
    xp = namespace(x)
    x = xp.asarray(x, copy=True)  # updated in place, example by example
    x_prev = xp.asarray(x, copy=True)
    n = x.shape[0]
    dim = math.prod(x.shape[1:])
    t_min, t_max = process.t_min, process.t_max
    t = np.full(n, t_max)
    h = np.full(n, min(h_init, t_max - t_min))
    trials = np.full(n, noise.draws, dtype=np.int64)  # draw indices after the start's
    accepted = np.zeros(n, dtype=np.int64)
    for it in range(max_iters):
        active = np.flatnonzero(t > t_min)
        xa, ta, ha = x[active], t[active], h[active]
        z = noise.normal_at(trials, x.shape, like=x)[active]  # draw index = each example's own trial count
        trials[active] += 1
        sqrt_h = per_example(np.sqrt(ha), xa)
        # Euler-Maruyama trial x'. The model sees the whole batch (finished examples at t_min, their results
        # unused): a model with per-example conditioning (labels, guidance) is built for the batch's rows
        x1 = xa - per_example(ha, xa) * process._reverse_drift(xa, ta, f(x, t, "score", it)[active]) + per_example(process.diffusion(ta), xa) * sqrt_h * z
        # improved Euler: the drift at (x', t - h), same noise
        ts = np.where(ha >= ta - t_min, t_min, ta - ha)  # land on t_min exactly
        x1_all, ts_all = xp.asarray(x, copy=True), t.copy()
        x1_all[active], ts_all[active] = x1, ts
        x_tilde = xa - per_example(ha, xa) * process._reverse_drift(x1, ts, f(x1_all, ts_all, "score", it)[active]) + per_example(process.diffusion(ts), xa) * sqrt_h * z
        x2 = 0.5 * (x1 + x_tilde)
        # scaled error and acceptance
        delta = xp.maximum(eps_abs, eps_rel * xp.maximum(xp.abs(x1), xp.abs(x_prev[active])))
        err = _row_norms((x1 - x2) / delta) / math.sqrt(dim)
        err = np.asarray(err, dtype=np.float64)
        ok = err <= 1.0
        idx = active[ok]
        x[idx] = x2[ok]
        x_prev[idx] = x1[ok]
        t[idx] = ts[ok]
        accepted[idx] += 1
        grow = safety * ha * np.where(err > 0, err, np.inf) ** (-exponent)  # inf ** -r = 0: a zero error...
        grow = np.where(err > 0, grow, np.inf)  # ...lets the step grow to the end
        h[active] = np.minimum(t[active] - t_min, grow)
        # the callback gets a copy: x is updated in place, row by row, on the next iteration
        finish_step(it, t.copy(), x if callback is None else xp.asarray(x, copy=True), callback)
        if not np.any(t > t_min):
            break
    else:
        raise RuntimeError(f"sde_adaptive did not reach t_min within max_iters={max_iters} iterations")
    x = final_denoise_step(f, x, np.array([t_max, t_min]), final_denoise, callback, it + 1)
    rejected = trials - noise.draws - accepted
    return SampleResult(x, f.nfe, accepted=accepted, rejected=rejected, eps_abs=eps_abs, eps_rel=eps_rel)


def edm_stochastic(
    model,
    process,
    x_T,
    *,
    prediction="score",
    steps=None,
    grid=None,
    rho=7.0,
    S_churn=10.0,
    S_tmin=0.05,
    S_tmax=50.0,
    S_noise=1.003,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for any process.

    In :math:`\tilde x=x/\gamma_t`, :math:`\tilde\sigma=\sigma_t/\gamma_t`
    (see :mod:`refdiff.samplers.ode`): at each step, if
    :math:`S_{tmin}\le\tilde\sigma_i\le S_{tmax}`, raise the noise level to
    :math:`\hat\sigma=\tilde\sigma_i(1+\gamma_i)`,
    :math:`\gamma_i=\min(S_{churn}/N,\sqrt2-1)` with N the number of grid
    points, by adding :math:`\sqrt{\hat\sigma^2-\tilde\sigma_i^2}\,S_{noise}\,\epsilon`;
    then a Heun step from :math:`\hat\sigma` to :math:`\tilde\sigma_{i+1}`.
    :math:`\hat\sigma` is capped at the process's largest
    :math:`\tilde\sigma` (EDM's VE range is unbounded; a VP process is not).
    ``S_churn=0`` is :func:`~refdiff.samplers.ode_heun`.
    """
    require_sde(process, "edm_stochastic")
    for name, v in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
        check_positive(v, name, allow_zero=True)
    if not S_tmax >= S_tmin:
        raise ValueError(f"S_tmax must be >= S_tmin, got S_tmin={S_tmin}, S_tmax={S_tmax}")
    grid = resolve_grid(process, steps, grid, default_steps=40, default_kind="karras", rho=rho)
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=process.prior_std())
    x = edm_heun_loop(f, process, x, grid, callback, noise, S_churn, S_tmin, S_tmax, S_noise)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)
