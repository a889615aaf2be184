r"""Ancestral samplers: DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song, Meng & Ermon 2021).

Both move from :math:`t` to an earlier :math:`s` on a grid (every step of a
discrete schedule, a spaced subset of it, or continuous times of an SDE) using
the model's :math:`\hat x_0=E[x_0|x_t]` and the closed-form Gaussian
:math:`q(x_s|x_t,x_0)` of :mod:`refdiff.forward`:

=========================  ==================================================================
``ddpm``                   :math:`x_s=\tilde\mu_{s|t}(x_t,\hat x_0)+\sigma z`, with
                           :math:`\sigma^2=\tilde\beta_{s|t}=\sigma^2_{t|s}\sigma_s^2/\sigma_t^2`
                           (``variance="beta_tilde"``) or :math:`\sigma^2_{t|s}`
                           (``"beta"``; :math:`\beta_t` for s = t - 1)
``ddim``                   :math:`x_s=\gamma_s\hat x_0+\sqrt{\sigma_s^2-\sigma_\eta^2}\,\hat\epsilon+\sigma_\eta z`,
                           :math:`\sigma_\eta^2=\eta^2\tilde\beta_{s|t}` (Song et al. 2021 eq. 12, 16)
=========================  ==================================================================

For s = t - 1 the DDPM mean is Ho et al. eq. 11,
:math:`\frac1{\sqrt{\alpha_t}}(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\epsilon)`;
on a subset of steps it is exactly DDPM on the respaced schedule (Nichol &
Dhariwal 2021). DDIM with :math:`\eta=1` is the ``beta_tilde`` DDPM step and
with :math:`\eta=0` it is DPM-Solver-1 (Lu et al. 2022, sec. 4.1).

No noise is added on a step that lands on a zero-noise point (s = 0 of a
discrete schedule): Algorithm 2's ``z = 0 if t = 1``. On a continuous grid
ending at :math:`t_{min}>0`, ``final_denoise`` replaces the last state by
Tweedie's :math:`\hat x_0` (one more model evaluation).

``clip_x0`` (off by default) clips :math:`\hat x_0` to a range as Ho et al.'s
code does for images (it is not in Algorithm 2; PITFALLS 15-17), the final
denoise's too, so the samples lie in the range; with it the
:math:`\hat\epsilon` that DDIM uses is recomputed from the clipped
:math:`\hat x_0`.
"""

from __future__ import annotations

import numpy as np

from ..backend import namespace, per_example
from ..forward import posterior_coefs
from ..param import convert
from ..schedules import DiscreteSchedule
from ._common import (
    ModelCall,
    SampleResult,
    check_positive,
    final_denoise_step,
    finish_step,
    prior_std_of,
    start,
)
from .grids import resolve_grid

__all__ = ["ddpm", "ddim"]

_VARIANCES = ("beta_tilde", "beta")


def _default_steps(process, continuous: int):
    """Every step of a discrete schedule (None); ``continuous`` uniform steps for an SDE."""
    return None if isinstance(process, DiscreteSchedule) else continuous


def _check_clip(clip_x0):
    if clip_x0 is None:
        return None
    try:
        lo, hi = (float(v) for v in clip_x0)
    except (TypeError, ValueError):  # not two numbers
        raise ValueError(f"clip_x0 must be a range (lo, hi) with lo < hi, got {clip_x0!r}") from None
    if not lo < hi:
        raise ValueError(f"clip_x0 must be a range (lo, hi) with lo < hi, got {clip_x0!r}")
    return lo, hi


def ddpm(
    model,
    process,
    x_T,
    *,
    prediction: str = "eps",
    steps=None,
    grid=None,
    spacing: str = "trailing",
    variance: str = "beta_tilde",
    clip_x0=None,
    final_denoise: bool = True,
    rng=None,
    callback=None,
):
    r"""Ancestral sampling, Ho et al. 2020 Algorithm 2, on every step or a respaced subset.

    Parameters
    ----------
    model : callable ``f(x, t)``; see :class:`~refdiff.samplers.ModelCall`.
    process : DiscreteSchedule or SDE
    x_T : array (N, ...) or shape tuple (drawn from :math:`\mathcal N(0,I)`)
    prediction : {"eps", "x0", "score", "v"}
    steps : int, optional
        Number of steps: a discrete schedule visits ``schedule.timesteps(steps,
        spacing)`` (all T steps if None); an SDE gets a uniform grid of
        ``steps`` (default 1000 for ddpm, 100 for ddim).
    grid : array or kind name, optional
        An explicit decreasing grid (``steps``, if also given, must equal its
        number of steps); on a discrete schedule a final 0 is added when missing.
    variance : {"beta_tilde", "beta"}
        :math:`\sigma_t^2=\tilde\beta_t` (Ho et al.'s lower bound, exact for a
        point mass) or :math:`\beta_t` (their upper bound, exact for
        :math:`x_0\sim\mathcal N(0,I)`).
    clip_x0 : (lo, hi), optional
        Clip every :math:`\hat x_0` to this range, the final denoise's included (e.g. (-1, 1) for pixel data).
    final_denoise : bool
        On a continuous grid ending at :math:`t_{min}>0`, end with Tweedie's :math:`\hat x_0` (one more model call).
    rng : SPEC 7 seed of the per-example noise.
    callback : callable ``(i, t, x)`` after each step, optional.

    Returns
    -------
    SampleResult ``(x, nfe)``.
    """
    if variance not in _VARIANCES:
        raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}")
    clip_x0 = _check_clip(clip_x0)
    grid = resolve_grid(process, steps, grid, default_steps=_default_steps(process, 1000), spacing=spacing)
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=prior_std_of(process))
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        # 1. predict x0 from x_t (one model call)
        x0 = f(x, t, "x0", i)
        if clip_x0 is not None:
            x0 = namespace(x).clip(x0, *clip_x0)
        # 2. mean of q(x_s | x_t, x0_hat) and the step's variance
        coef_x0, coef_xt, var = posterior_coefs(process, s, t)
        if variance == "beta":
            var = process.transition(s, t)[1]
        x_next = per_example(coef_x0, x) * x0 + per_example(coef_xt, x) * x
        # 3. noise, except on a step that lands on a zero-noise point (Algorithm 2: z = 0 at t = 1)
        if float(process.variance(s)) > 0.0:
            x_next = x_next + per_example(np.sqrt(var), x) * noise.normal(x.shape, like=x)
        x = finish_step(i, s, x_next, callback)
    x = final_denoise_step(f, x, grid, final_denoise, callback, clip=clip_x0)
    return SampleResult(x, f.nfe, grid=grid)


def ddim(
    model,
    process,
    x_T,
    *,
    prediction: str = "eps",
    eta: float = 0.0,
    steps=None,
    grid=None,
    spacing: str = "trailing",
    clip_x0=None,
    final_denoise: bool = True,
    rng=None,
    callback=None,
):
    r"""DDIM, Song, Meng & Ermon 2021 eq. 12: deterministic at :math:`\eta=0`, ancestral at :math:`\eta=1`.

    Parameters are those of :func:`ddpm`, with ``eta`` in [0, 1] scaling the
    step's noise: :math:`\sigma_\eta=\eta\sqrt{\tilde\beta_{s|t}}`.
    """
    eta = check_positive(eta, "eta", allow_zero=True)
    if eta > 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    clip_x0 = _check_clip(clip_x0)
    grid = resolve_grid(process, steps, grid, default_steps=_default_steps(process, 100), spacing=spacing)
    f = ModelCall(model, prediction, process)
    x, noise = start(x_T, rng, prior_std=prior_std_of(process))
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        # 1. x0_hat and eps_hat from one model call (eps re-derived from a clipped x0_hat)
        pred = f.predict(x, t, i)
        x0 = f.to(pred, "x0", x, t)
        if clip_x0 is not None:
            x0 = namespace(x).clip(x0, *clip_x0)
            eps = convert(x0, "x0", "eps", x, process, t)
        else:
            eps = f.to(pred, "eps", x, t)
        # 2. sigma_eta^2 = eta^2 * beta_tilde_{s|t}; the rest of sigma_s^2 goes to the eps direction
        var_s = float(process.variance(s))
        sigma_eta2 = eta**2 * posterior_coefs(process, s, t)[2]
        x_next = per_example(process.mean_coef(s), x) * x0 + per_example(np.sqrt(var_s - sigma_eta2), x) * eps
        # 3. fresh noise of variance sigma_eta^2
        if eta > 0 and var_s > 0.0:
            x_next = x_next + per_example(np.sqrt(sigma_eta2), x) * noise.normal(x.shape, like=x)
        x = finish_step(i, s, x_next, callback)
    x = final_denoise_step(f, x, grid, final_denoise, callback, clip=clip_x0)
    return SampleResult(x, f.nfe, grid=grid)
