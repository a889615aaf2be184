r"""Langevin dynamics: unadjusted (ULA), Metropolis-adjusted (MALA) and annealed (NCSN).

One step convention throughout (PITFALLS 24 lists the three in use):

.. math:: x\leftarrow x+\eta\,\nabla\log p(x)+\sqrt{2\eta}\,z,

the Euler-Maruyama step of :math:`dx=\nabla\log p\,dt+\sqrt2\,dw`, whose
stationary law is p. NCSN's toy code writes :math:`x+\tfrac\epsilon2 s+\sqrt\epsilon z`,
the same update with :math:`\epsilon=2\eta`.

The discretisation biases the stationary law. For a Gaussian target
:math:`\mathcal N(\mu,s^2)` the update is the AR(1) chain
:math:`x-\mu\leftarrow(1-\eta/s^2)(x-\mu)+\sqrt{2\eta}z`, whose stationary
variance is exactly

.. math:: \frac{2\eta}{1-(1-\eta/s^2)^2}=\frac{s^2}{1-\eta/(2s^2)},

(:func:`ula_stationary_variance`), larger than :math:`s^2` by a factor that
tends to 1 as :math:`\eta\to0`; the chain diverges for :math:`\eta\ge2s^2`.
MALA removes the bias with a Metropolis-Hastings test (Roberts & Tweedie 1996).

Plain Langevin cannot move mass between well-separated modes in any
practical time, so it keeps the mode weights of its starting point rather
than the target's (Song & Ermon 2019, sec. 3.2). Annealing fixes that: it
runs Langevin on :math:`p_{\sigma_1},\dots,p_{\sigma_L}` with geometrically
decreasing noise, where the large-noise marginals still connect the modes.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import namespace
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
from .grids import time_grid

__all__ = ["langevin", "mala", "annealed_langevin", "ula_stationary_variance"]


def ula_stationary_variance(target_variance, step_size):
    r"""Exact stationary variance :math:`s^2/(1-\eta/(2s^2))` of unadjusted Langevin on :math:`\mathcal N(\mu,s^2)`.

    Raises ``ValueError`` where the chain has no stationary law (:math:`\eta\ge2s^2`).
    """
    s2 = np.asarray(target_variance, dtype=np.float64)
    eta = float(step_size)
    if np.any(eta >= 2.0 * s2):
        raise ValueError(f"unadjusted Langevin diverges for step_size >= 2 * variance; got step_size={eta}")
    return s2 / (1.0 - eta / (2.0 * s2))


def _score_of(model, x, i):
    out = model(x)
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"score output at step {i} has shape {got}, expected x's shape {tuple(x.shape)}")
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(out))):
        raise ValueError(f"score returned non-finite values at step {i}")
    return out


def _log_prob_of(log_prob, x, i):
    """``log_prob(x)``, checked: shape (N,), no NaN, no +inf (-inf, outside the support, is a valid value)."""
    out = log_prob(x)
    if not hasattr(out, "shape") or tuple(out.shape) != (x.shape[0],):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"log_prob output at step {i} has shape {got}, expected ({x.shape[0]},): one value per example")
    xp = namespace(x)
    if bool(xp.any(xp.isnan(out))) or bool(xp.any(out == xp.inf)):
        raise ValueError(f"log_prob returned NaN or +inf at step {i} (-inf is allowed: a point outside the support)")
    return out


def langevin(score, x_init, *, step_size, n_steps=1000, rng=None, callback=None):
    r"""Unadjusted Langevin algorithm: :math:`x\leftarrow x+\eta s(x)+\sqrt{2\eta}z`.

    Parameters
    ----------
    score : callable ``s(x) -> array``
        The score of the fixed target (e.g. ``GaussianMixture.score``).
    x_init : array (N, ...) or shape tuple (standard normal start)
    step_size : float
        :math:`\eta`.
    n_steps : int
    callback : ``(i, t, x)`` with t the elapsed Langevin time :math:`(i+1)\eta`.

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``nfe = n_steps``.
    """
    eta = check_positive(step_size, "step_size")
    n_steps = check_int(n_steps, "n_steps")
    if not callable(score):
        raise TypeError(f"score must be a callable s(x), got {type(score).__name__}")
    x, noise = start(x_init, rng, name="x_init")
    for i in range(n_steps):
        x = x + eta * _score_of(score, x, i) + math.sqrt(2.0 * eta) * noise.normal(x.shape, like=x)
        x = finish_step(i, (i + 1) * eta, x, callback)
    return SampleResult(x, n_steps)


def mala(score, log_prob, x_init, *, step_size, n_steps=1000, rng=None, callback=None):
    r"""Metropolis-adjusted Langevin (Roberts & Tweedie 1996): the ULA proposal plus an accept/reject test.

    Proposal :math:`y=x+\eta s(x)+\sqrt{2\eta}z`, accepted with probability
    :math:`\min\{1,\frac{p(y)q(x|y)}{p(x)q(y|x)}\}`,
    :math:`q(y|x)=\mathcal N(y;x+\eta s(x),2\eta I)`. The chain leaves p
    invariant exactly, for any step size.

    Parameters
    ----------
    score, log_prob : callables of x; ``log_prob`` returns shape (N,)
        (normalising constants cancel): NaN or +inf raises ValueError, -inf
        (a proposal outside the support) is rejected.

    Returns
    -------
    SampleResult ``(x, nfe)``: ``nfe`` counts score evaluations;
    ``info["acceptance_rate"]`` is per example.
    """
    eta = check_positive(step_size, "step_size")
    n_steps = check_int(n_steps, "n_steps")
    if not (callable(score) and callable(log_prob)):
        raise TypeError("score and log_prob must be callables of x")
    x, noise = start(x_init, rng, name="x_init")
    xp = namespace(x)
    n = x.shape[0]

    def log_q(to, frm, s_frm):  # log N(to; frm + eta s(frm), 2 eta I) up to a constant
        d = xp.reshape(to - frm - eta * s_frm, (n, -1))
        return -xp.sum(d * d, axis=1) / (4.0 * eta)

    s_x, lp_x = _score_of(score, x, 0), _log_prob_of(log_prob, x, 0)
    accepted = np.zeros(n, dtype=np.int64)
    for i in range(n_steps):
        y = x + eta * s_x + math.sqrt(2.0 * eta) * noise.normal(x.shape, like=x)
        s_y, lp_y = _score_of(score, y, i), _log_prob_of(log_prob, y, i)
        log_alpha = lp_y - lp_x + log_q(x, y, s_y) - log_q(y, x, s_x)
        u = noise.uniform((n,), like=lp_x)
        ok = xp.log(u) < log_alpha
        okx = xp.reshape(ok, (n,) + (1,) * (x.ndim - 1))
        x, s_x, lp_x = xp.where(okx, y, x), xp.where(okx, s_y, s_x), xp.where(ok, lp_y, lp_x)
        accepted += np.asarray(ok, dtype=np.int64)
        x = finish_step(i, (i + 1) * eta, x, callback)
    return SampleResult(x, n_steps + 1, acceptance_rate=accepted / n_steps)


def annealed_langevin(
    model,
    process,
    x_T,
    *,
    prediction="score",
    levels=20,
    n_steps_each=100,
    eps=None,
    t_max=None,
    t_min=None,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on the marginals of any process.

    Noise levels :math:`\tilde\sigma_1>\dots>\tilde\sigma_L` are geometric
    (uniform in log-SNR) between the process's :math:`t_{max}` and
    :math:`t_{min}`; at level i, ``n_steps_each`` Langevin steps target
    :math:`p_{t_i}` with step :math:`\alpha_i=\epsilon\,\sigma_i^2/\sigma_L^2`
    (:math:`\sigma_i` the process's noise std at :math:`t_i`; for a VE process
    these are NCSN's :math:`\sigma_i`). The default
    :math:`\epsilon=0.2\,\sigma_L^2` makes every level's step
    :math:`0.2\,\sigma_i^2`: NCSN's ratio :math:`\epsilon/\sigma_L^2` (2e-5 at
    :math:`\sigma_L=0.01`), read in refdiff's convention; theirs is :math:`x+\tfrac\alpha2s+\sqrt\alpha z`
    (:math:`\eta=\alpha/2`), and stable for any process (a fixed
    :math:`\epsilon` diverges wherever :math:`\epsilon\sigma_1^2/\sigma_L^2`
    exceeds twice the first level's variance). ``final_denoise`` applies Tweedie's
    formula at the last level (Jolicoeur-Martineau et al. 2021; Song & Ermon
    2020).

    Each level's chain is unadjusted (no Metropolis test), so even run to
    convergence it targets a law wider than :math:`p_{t_i}`: on a Gaussian
    direction of variance v the step :math:`x\leftarrow(1-\alpha/v)x+\sqrt{2\alpha}z`
    is stationary at variance :math:`v/(1-\alpha/(2v))`. At the default
    :math:`\alpha_i=0.2\sigma_i^2` that variance is up to 11% too large (the
    standard deviation 5.4%), in directions
    where the data's own variance is small beside :math:`\sigma_i^2`; a
    smaller ``eps`` (with more ``n_steps_each``) shrinks it in proportion.

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``nfe = levels * n_steps_each (+1)``.
    """
    require_sde(process, "annealed_langevin")
    levels = check_int(levels, "levels", lo=2)
    n_steps_each = check_int(n_steps_each, "n_steps_each")
    ts = time_grid(process, levels - 1, "log_snr", t_max=t_max, t_min=t_min)
    sigma2 = np.asarray(process.variance(ts), dtype=np.float64)
    eps = 0.2 * sigma2[-1] if eps is None else check_positive(eps, "eps")
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=process.prior_std())
    step = 0
    for i, t in enumerate(ts):
        alpha = float(eps * sigma2[i] / sigma2[-1])
        for _ in range(n_steps_each):
            x = x + alpha * f(x, t, "score", step) + math.sqrt(2.0 * alpha) * noise.normal(x.shape, like=x)
            x = finish_step(step, t, x, callback)
            step += 1
    return SampleResult(final_denoise_step(f, x, ts, final_denoise, callback, step), f.nfe, levels=ts)
