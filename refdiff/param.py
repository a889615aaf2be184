r"""Conversions between the four things a diffusion model may predict: eps, x0, score and v.

All follow from :math:`x_t=\gamma_t x_0+\sigma_t\epsilon` for the process's
:math:`\gamma_t` (``mean_coef``) and :math:`\sigma_t` (``std``):

=========  ==========================================================  ======================
name       definition                                                  source
=========  ==========================================================  ======================
``eps``    :math:`\epsilon=(x_t-\gamma_t x_0)/\sigma_t`                Ho et al. 2020 eq. 4
``x0``     :math:`x_0=(x_t-\sigma_t\epsilon)/\gamma_t`                 Ho et al. 2020 eq. 15
``score``  :math:`\nabla\log q(x_t|x_0)=-\epsilon/\sigma_t`; its       Vincent 2011;
           conditional mean given :math:`x_t` is
           :math:`\nabla\log p_t(x_t)` (Tweedie:
           :math:`E[x_0|x_t]=(x_t+\sigma_t^2\nabla\log p_t)/\gamma_t`)  Efron 2011
``v``      :math:`v=\gamma_t\epsilon-\sigma_t x_0`                     Salimans & Ho 2022
=========  ==========================================================  ======================

Slides sometimes write the score as :math:`-\epsilon\,\sigma_t` or drop the
:math:`1/\sigma_t` in the eps form of the reverse SDE; :math:`-\epsilon/\sigma_t`
is right. Inverting v uses :math:`\gamma_t^2+\sigma_t^2` (1 for VP processes),
so it holds for VE and sub-VP processes too:
:math:`x_0=(\gamma_t x_t-\sigma_t v)/(\gamma_t^2+\sigma_t^2)`,
:math:`\epsilon=(\sigma_t x_t+\gamma_t v)/(\gamma_t^2+\sigma_t^2)`.

A conversion that must divide by :math:`\gamma_t=0` (zero terminal SNR) or
:math:`\sigma_t=0` (t = 0) raises ``ValueError`` instead of returning inf.
"""

from __future__ import annotations

import numpy as np

from .backend import finite_float_array, namespace, per_example

__all__ = ["PREDICTIONS", "convert", "x0_from_eps", "eps_from_x0", "score_from_eps", "eps_from_score", "v_from_eps_x0"]

#: The prediction kinds :func:`convert` understands.
PREDICTIONS = ("eps", "x0", "score", "v")


def _divisor(coef, what, x):
    """``coef`` (host float64) cast and shaped for x, refusing 0 in float64 or after the cast to x's dtype."""
    if np.any(coef == 0):
        raise ValueError(f"{what} is 0 at the requested time, so this conversion is undefined there")
    c = per_example(coef, x)
    xp = namespace(x)
    if bool(xp.any(c == 0)):
        raise ValueError(f"{what} underflows to 0 in {x.dtype} at the requested time; convert in float64")
    return c


def convert(pred, src: str, dst: str, x_t, process, t):
    r"""Convert a model output ``pred`` of kind ``src`` into kind ``dst`` at (x_t, t).

    Parameters
    ----------
    pred, x_t : arrays of shape (N, ...)
    src, dst : one of :data:`PREDICTIONS`
    process : DiscreteSchedule or SDE
    t : step(s) or time(s), scalar or one per example

    Raises
    ------
    ValueError
        For an unknown kind, mismatched shapes, or a division by
        :math:`\gamma_t=0` or :math:`\sigma_t=0`.
    """
    for name, kind in (("src", src), ("dst", dst)):
        if kind not in PREDICTIONS:
            raise ValueError(f"{name} must be one of {PREDICTIONS}, got {kind!r}")
    x_t = finite_float_array(x_t, "x_t")
    pred = finite_float_array(pred, "pred")
    if tuple(pred.shape) != tuple(x_t.shape):
        raise ValueError(f"pred must have the shape of x_t {tuple(x_t.shape)}, got {tuple(pred.shape)}")
    return _convert(pred, src, dst, x_t, process, t)


def _convert(pred, src, dst, x_t, process, t):
    """:func:`convert` without its argument checks, for callers that made them (the samplers check the model's
    output and their state once a step; checking again in every conversion cost 10-25% with a cheap model)."""
    if src == dst:
        return pred
    gamma_h, sigma_h = process.mean_coef(t), process.std(t)  # float64, host
    gamma, sigma = per_example(gamma_h, x_t), per_example(sigma_h, x_t)

    def eps():
        if src == "x0":
            return (x_t - gamma * pred) / _divisor(sigma_h, "sigma_t", x_t)
        if src == "score":
            return -sigma * pred
        r2 = per_example(gamma_h**2 + sigma_h**2, x_t)
        return (sigma * x_t + gamma * pred) / r2  # src == "v"

    def x0():
        if src == "eps":
            return (x_t - sigma * pred) / _divisor(gamma_h, "gamma_t", x_t)
        if src == "score":
            return (x_t + per_example(sigma_h**2, x_t) * pred) / _divisor(gamma_h, "gamma_t", x_t)
        r2 = per_example(gamma_h**2 + sigma_h**2, x_t)
        return (gamma * x_t - sigma * pred) / r2  # src == "v"

    if dst == "eps":
        return eps()
    if dst == "x0":
        return x0()
    if dst == "score":
        if src == "x0":  # (gamma x0 - x_t) / sigma^2, no eps detour
            return (gamma * pred - x_t) / _divisor(sigma_h**2, "sigma_t^2", x_t)
        return -(pred if src == "eps" else eps()) / _divisor(sigma_h, "sigma_t", x_t)
    # dst == "v"
    e = pred if src == "eps" else eps()
    x = pred if src == "x0" else x0()
    return gamma * e - sigma * x


def x0_from_eps(x_t, eps, process, t):
    r""":math:`x_0=(x_t-\sigma_t\epsilon)/\gamma_t` (Ho et al. eq. 15)."""
    return convert(eps, "eps", "x0", x_t, process, t)


def eps_from_x0(x_t, x0, process, t):
    r""":math:`\epsilon=(x_t-\gamma_t x_0)/\sigma_t`."""
    return convert(x0, "x0", "eps", x_t, process, t)


def score_from_eps(eps, process, t):
    r""":math:`s=-\epsilon/\sigma_t` (Song et al. 2021, appendix; Vincent 2011)."""
    eps = finite_float_array(eps, "eps")
    return -eps / _divisor(process.std(t), "sigma_t", eps)


def eps_from_score(score, process, t):
    r""":math:`\epsilon=-\sigma_t s`."""
    score = finite_float_array(score, "score")
    return -per_example(process.std(t), score) * score


def v_from_eps_x0(eps, x0, process, t):
    r""":math:`v=\gamma_t\epsilon-\sigma_t x_0` (Salimans & Ho 2022, sec. 4)."""
    eps = finite_float_array(eps, "eps")
    x0 = finite_float_array(x0, "x0")
    if tuple(eps.shape) != tuple(x0.shape):
        raise ValueError(f"x0 must have the shape of eps {tuple(eps.shape)}, got {tuple(x0.shape)}")
    return per_example(process.mean_coef(t), eps) * eps - per_example(process.std(t), eps) * x0
