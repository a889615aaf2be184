r"""Linear multistep samplers: PLMS (Liu et al. 2022) and DEIS (Zhang & Chen 2022).

Both reuse past eps-predictions, one model evaluation per step.

PLMS ("pseudo linear multistep", Liu et al. 2022, eq. 12-13) keeps DDIM's
transfer :math:`\phi(x_t,\epsilon,t\to s)=\gamma_s\frac{x_t-\sigma_t\epsilon}{\gamma_t}+\sigma_s\epsilon`
and feeds it the fourth-order Adams-Bashforth combination
:math:`\epsilon'=\frac1{24}(55\epsilon_i-59\epsilon_{i-1}+37\epsilon_{i-2}-9\epsilon_{i-3})`.
The paper warms up with three pseudo Runge-Kutta steps (4 NFE each); refdiff
warms up with the lower-order Adams-Bashforth combinations (orders 1, 2, 3),
1 NFE each. diffusers' ``PNDMScheduler`` with ``skip_prk_steps`` (and
CompVis's PLMS) differ: their first step averages the eps at t and at the
step's end, one extra model evaluation, so their samples are not refdiff's.
The first-order first step leaves a global order of 2 (measured on a
Gaussian's PF-ODE). The coefficients assume equally spaced steps; use a
uniform grid.

DEIS (Zhang & Chen 2022, "ρAB-DEIS", sec. 4): in
:math:`\tilde x=x/\gamma_t` and :math:`\rho=\sigma_t/\gamma_t` the
probability-flow ODE is :math:`d\tilde x/d\rho=\hat\epsilon(x,t(\rho))`
exactly, so

.. math:: \tilde x_{i+1}=\tilde x_i+\sum_{j=0}^{k-1}\hat\epsilon_{i-j}\int_{\rho_i}^{\rho_{i+1}}\ell_j(\rho)\,d\rho,

with :math:`\ell_j` the Lagrange basis through the last k nodes
:math:`\rho_{i-j}`; the integrals are exact polynomial integrals on any
(non-uniform) grid. Order 1 is DDIM.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.polynomial import polynomial as P

from ..backend import per_example
from ._common import (
    ModelCall,
    SampleResult,
    final_denoise_step,
    finish_step,
    prior_std_of,
    start,
)
from .dpm import lower_order_final_applies
from .grids import resolve_grid

__all__ = ["plms", "deis", "ADAMS_BASHFORTH", "lagrange_integrals"]

#: Adams-Bashforth weights for equally spaced steps, newest first, by order.
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def plms(
    model,
    process,
    x_T,
    *,
    prediction="eps",
    steps=None,
    grid=None,
    spacing="trailing",
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Pseudo linear multistep (PLMS, Liu et al. 2022) with Adams-Bashforth warm-up; 1 NFE per step.

    Works on a DiscreteSchedule (``steps`` spaced by ``spacing``) or an SDE
    (uniform grid in t by default).

    Returns
    -------
    SampleResult ``(x, nfe)``.
    """
    grid = resolve_grid(process, steps, grid, default_steps=50, default_kind="uniform", spacing=spacing)
    if np.any(np.asarray(process.mean_coef(grid[:-1]), dtype=np.float64) == 0):
        raise ValueError("plms needs gamma_t > 0 where it steps from (zero terminal SNR has x0 = (x - sigma eps) / 0 "
                         "at t = T); start below t = T, or use ddim")
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=prior_std_of(process))
    history = []  # eps predictions, newest first
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        history.insert(0, f(x, t, "eps", i))
        del history[4:]
        weights = ADAMS_BASHFORTH[len(history)]
        eps = weights[0] * history[0]
        for w, e in zip(weights[1:], history[1:]):
            eps = eps + w * e
        # DDIM's transfer phi(x_t, eps', t -> s)
        x0 = (x - per_example(process.std(t), x) * eps) / per_example(process.mean_coef(t), x)
        x = per_example(process.mean_coef(s), x) * x0 + per_example(process.std(s), x) * eps
        x = finish_step(i, s, x, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def lagrange_integrals(nodes, a: float, b: float) -> np.ndarray:
    r""":math:`\int_a^b\ell_j(\rho)\,d\rho` for the Lagrange basis :math:`\ell_j` through ``nodes``.

    The weights of the polynomial that interpolates values at ``nodes``,
    integrated over [a, b]; exact for polynomials of degree < len(nodes).
    Computed in a shifted and scaled variable for conditioning.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    scale = b - a
    u = (nodes - a) / scale  # the step [a, b] becomes [0, 1]
    out = np.empty(nodes.shape[0])
    for j in range(nodes.shape[0]):
        poly = np.array([1.0])
        for m in range(nodes.shape[0]):
            if m != j:
                poly = P.polymul(poly, np.array([-u[m], 1.0]) / (u[j] - u[m]))
        antider = P.polyint(poly)
        out[j] = scale * (P.polyval(1.0, antider) - P.polyval(0.0, antider))
    return out


def deis(
    model,
    process,
    x_T,
    *,
    prediction="eps",
    order=3,
    steps=None,
    grid=None,
    spacing="trailing",
    lower_order_final=True,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""ρAB-DEIS (Zhang & Chen 2022), exponential-integrator multistep of order 1-4; 1 NFE per step.

    Order ramps up from 1 as history accumulates; ``lower_order_final``
    drops to first order on the last of fewer than 15 steps. Default grid for
    an SDE: uniform in log-SNR.

    Returns
    -------
    SampleResult ``(x, nfe)``.
    """
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    grid = resolve_grid(process, steps, grid, default_steps=20, default_kind="log_snr", spacing=spacing)
    n = grid.shape[0] - 1
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=prior_std_of(process))
    gamma = np.asarray(process.mean_coef(grid), dtype=np.float64)
    with np.errstate(divide="ignore"):  # gamma = 0 at zero terminal SNR: refused just below, without a warning
        rho = np.asarray(process.std(grid), dtype=np.float64) / gamma
    if np.any(~np.isfinite(rho)):
        raise ValueError("deis needs gamma_t > 0 on the grid (zero terminal SNR has rho = inf); start below t = T")
    history, nodes = [], []
    x_tilde = x / per_example(gamma[0], x)
    for i in range(n):
        history.insert(0, f(per_example(gamma[i], x) * x_tilde, grid[i], "eps", i))
        nodes.insert(0, rho[i])
        del history[order:], nodes[order:]
        k = 1 if lower_order_final_applies(i, n, lower_order_final) else len(history)
        weights = lagrange_integrals(nodes[:k], rho[i], rho[i + 1])
        for w, e in zip(weights, history[:k]):
            x_tilde = x_tilde + float(w) * e
        x = finish_step(i, grid[i + 1], per_example(gamma[i + 1], x) * x_tilde, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)
