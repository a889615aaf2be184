r"""The forward process: :math:`q(x_t|x_{t-1})`, :math:`q(x_t|x_0)`, :math:`q(x_t|x_s)` and the posterior.

Notation: a *process* is a :class:`~refdiff.schedules.DiscreteSchedule`
(integer t in 0..T) or an SDE of :mod:`refdiff.sde` (real t in [0, 1]); both
give :math:`\gamma_t` (``mean_coef``), :math:`\sigma_t` (``std``) and
:math:`q(x_t|x_s)=\mathcal N(\gamma_{t|s}x_s,\sigma^2_{t|s}I)` (``transition``).

Posterior (Bayes' rule for two Gaussians; Ho et al. 2020 eq. 6-7 for
s = t - 1, Kingma et al. 2021 eq. 28 in general):

.. math::

    q(x_s|x_t,x_0)=\mathcal N\Big(
      \frac{\gamma_s\sigma^2_{t|s}}{\sigma_t^2}x_0+
      \frac{\gamma_{t|s}\sigma_s^2}{\sigma_t^2}x_t,\ 
      \frac{\sigma^2_{t|s}\sigma_s^2}{\sigma_t^2}I\Big).

With :math:`x_0=(x_t-\sigma_t\epsilon)/\gamma_t` the mean becomes
:math:`(x_t-\sigma^2_{t|s}\epsilon/\sigma_t)/\gamma_{t|s}`, which for
s = t - 1 is Ho et al.'s :math:`\frac{1}{\sqrt{\alpha_t}}(x_t-
\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon)` (eq. 11). Some lecture slides
drop the square root on :math:`1-\bar\alpha_t` there; it belongs.

Every function takes data of shape (N, ...) and t as a scalar or one value per
example, and returns arrays of the data's dtype and namespace.
"""

from __future__ import annotations

import numpy as np

from .backend import finite_float_array, namespace, per_example
from .schedules import DiscreteSchedule

__all__ = [
    "q_step",
    "q_sample",
    "q_sample_from",
    "q_posterior",
    "posterior_coefs",
    "posterior_mean_from_eps",
]


def _check_like(a, x, name, ref="x"):
    a = finite_float_array(a, name)
    if tuple(a.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of {ref} {tuple(x.shape)}, got {tuple(a.shape)}")
    return a


def _earlier_time(process, t, s):
    """``s``, defaulting to t - 1 for a discrete schedule; an SDE needs it given."""
    if s is not None:
        return s
    if not isinstance(process, DiscreteSchedule):
        raise ValueError("s is required for a continuous process (the posterior is q(x_s | x_t, x_0), s < t)")
    return process.check_step(t, "t", lo=1) - 1


def q_step(schedule: DiscreteSchedule, x_prev, t, noise):
    r"""One forward step :math:`x_t=\sqrt{\alpha_t}x_{t-1}+\sqrt{\beta_t}\epsilon` (Ho et al. eq. 2).

    Parameters
    ----------
    schedule : DiscreteSchedule
    x_prev : array, shape (N, ...)
        :math:`x_{t-1}`.
    t : int or int array of shape (N,)
        Step(s) in 1..T.
    noise : array like ``x_prev``
        Standard normal :math:`\epsilon`.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    x_prev = finite_float_array(x_prev, "x_prev")
    noise = _check_like(noise, x_prev, "noise", "x_prev")
    t = schedule.check_step(t, lo=1)
    return (
        per_example(np.sqrt(schedule.alphas[t]), x_prev) * x_prev
        + per_example(np.sqrt(schedule.betas[t]), x_prev) * noise
    )


def q_sample(process, x0, t, noise):
    r"""Draw from :math:`q(x_t|x_0)`: :math:`\gamma_t x_0+\sigma_t\epsilon` (Ho et al. eq. 4).

    For a discrete schedule :math:`\gamma_t=\sqrt{\bar\alpha_t}`,
    :math:`\sigma_t=\sqrt{1-\bar\alpha_t}` (not :math:`1-\bar\alpha_t`: the
    square root is easy to lose when copying the slide). t = 0 returns x0.
    """
    x0 = finite_float_array(x0, "x0")
    noise = _check_like(noise, x0, "noise", "x0")
    return per_example(process.mean_coef(t), x0) * x0 + per_example(process.std(t), x0) * noise


def q_sample_from(process, x_s, s, t, noise):
    r"""Draw from :math:`q(x_t|x_s)=\mathcal N(\gamma_{t|s}x_s,\sigma^2_{t|s}I)`, s <= t."""
    x_s = finite_float_array(x_s, "x_s")
    noise = _check_like(noise, x_s, "noise", "x_s")
    gamma_ts, sigma2_ts = process.transition(s, t)
    return per_example(gamma_ts, x_s) * x_s + per_example(np.sqrt(sigma2_ts), x_s) * noise


def posterior_coefs(process, s, t):
    r"""Float64 coefficients of :math:`q(x_s|x_t,x_0)`: ``(coef_x0, coef_xt, variance)``.

    For a discrete schedule and s = t - 1 these are the schedule's tables
    ``posterior_mean_coef_x0``, ``posterior_mean_coef_xt`` and
    ``posterior_variance``; otherwise the general form in the module notes,
    with :math:`\sigma_s^2` and :math:`\sigma^2_{t|s}` from cancellation-free
    evaluations.

    Raises
    ------
    ValueError
        If s >= t somewhere (the posterior needs s < t).
    """
    if isinstance(process, DiscreteSchedule):
        s_arr, t_arr = process.check_step(s, "s"), process.check_step(t, "t", lo=1)
        if np.all(s_arr == t_arr - 1):
            return (
                process.posterior_mean_coef_x0[t_arr],
                process.posterior_mean_coef_xt[t_arr],
                process.posterior_variance[t_arr],
            )
        if np.any(s_arr >= t_arr):
            raise ValueError("s must be smaller than t in q(x_s | x_t, x_0)")
    elif np.any(process.check_time(s, "s") >= process.check_time(t, "t")):
        raise ValueError("s must be smaller than t in q(x_s | x_t, x_0)")
    gamma_ts, sigma2_ts = process.transition(s, t)
    var_s, var_t = process.variance(s), process.variance(t)
    coef_x0 = process.mean_coef(s) * sigma2_ts / var_t
    coef_xt = gamma_ts * var_s / var_t
    return coef_x0, coef_xt, sigma2_ts * var_s / var_t


def q_posterior(process, x_t, x0, t, s=None):
    r"""Mean, variance and log-variance of :math:`q(x_s|x_t,x_0)` (Ho et al. eq. 6-7).

    Parameters
    ----------
    process : DiscreteSchedule or SDE
    x_t, x0 : arrays of shape (N, ...)
    t : step(s) in 1..T, or time(s) in (0, 1]
    s : earlier step(s) or time(s); default t - 1 for a discrete schedule
        (required for an SDE).

    Returns
    -------
    mean : array like ``x_t``
    variance, log_variance : arrays broadcast to ``x_t``'s shape (read-only
        views). For a discrete schedule, in the rows with s = t - 1,
        ``log_variance`` is the schedule's ``posterior_log_variance`` (clipped
        at t = 1, where the true variance is 0); otherwise it is the log of
        the variance, and ``-inf`` where the variance is 0 (s = 0).
    """
    x_t = finite_float_array(x_t, "x_t")
    x0 = _check_like(x0, x_t, "x0", "x_t")
    s = _earlier_time(process, t, s)
    coef_x0, coef_xt, var = posterior_coefs(process, s, t)
    with np.errstate(divide="ignore"):
        log_var = np.log(var)
    if isinstance(process, DiscreteSchedule):  # row by row: a row's value must not depend on the others'
        t_step = process.check_step(t)
        log_var = np.where(process.check_step(s, "s") == t_step - 1, process.posterior_log_variance[t_step], log_var)
    xp = namespace(x_t)
    mean = per_example(coef_x0, x_t) * x0 + per_example(coef_xt, x_t) * x_t
    variance = xp.broadcast_to(per_example(var, x_t), x_t.shape)
    log_variance = xp.broadcast_to(per_example(log_var, x_t), x_t.shape)
    return mean, variance, log_variance


def posterior_mean_from_eps(process, x_t, eps, t, s=None):
    r"""Posterior mean with :math:`x_0` written through :math:`\epsilon`: :math:`(x_t-\sigma^2_{t|s}\epsilon/\sigma_t)/\gamma_{t|s}`.

    For s = t - 1 this is Ho et al. eq. 11,
    :math:`\frac{1}{\sqrt{\alpha_t}}\big(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon\big)`,
    the mean of DDPM's ancestral step.

    Raises
    ------
    ValueError
        Where :math:`\gamma_{t|s}=0` (the last step of a zero-terminal-SNR
        schedule: there :math:`\epsilon` carries no information about
        :math:`x_0`; predict v or x0 instead, Lin et al. 2024).
    """
    x_t = finite_float_array(x_t, "x_t")
    eps = _check_like(eps, x_t, "eps", "x_t")
    s = _earlier_time(process, t, s)
    gamma_ts, sigma2_ts = process.transition(s, t)
    if np.any(gamma_ts == 0):
        raise ValueError(
            "the posterior mean cannot be formed from eps at zero SNR (gamma_{t|s} = 0); use x0 or v prediction"
        )
    sigma_t = process.std(t)
    return (x_t - per_example(sigma2_ts / sigma_t, x_t) * eps) / per_example(gamma_ts, x_t)
