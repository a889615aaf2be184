r"""Probability-flow ODE solvers: Euler, RK4 and adaptive RK45 in t; Heun in EDM's variables.

The probability-flow ODE (Song et al. 2021, eq. 13) shares its marginals with
the forward SDE:

.. math:: \frac{dx}{dt}=f(t)x-\tfrac12 g(t)^2\nabla\log p_t(x).

Integrated from :math:`t_{max}` down to :math:`t_{min}`, it maps the prior to
the data deterministically. Written in EDM's variables (Karras et al. 2022,
eq. 4 and sec. 4) :math:`\tilde x=x/\gamma_t`,
:math:`\tilde\sigma=\sigma_t/\gamma_t`, the same ODE reads

.. math:: \frac{d\tilde x}{d\tilde\sigma}=\frac{\tilde x-D(\tilde x;\tilde\sigma)}{\tilde\sigma},

with :math:`D=E[x_0|x_t]` the denoiser; this holds for every process whose
marginal is :math:`\mathcal N(\gamma_tx_0,\sigma_t^2I)`, since the ODE depends
only on the marginals.

==============  =====================  ================  =========================
sampler         variable               NFE               order
==============  =====================  ================  =========================
``ode_euler``   t                      n                 1
``ode_rk4``     t                      4n                4 (classical tableau)
``ode_rk45``    t                      adaptive          5(4), Dormand-Prince
``ode_heun``    :math:`\tilde\sigma`   2n                2 (Karras et al. Alg. 1)
==============  =====================  ================  =========================

(+1 NFE each for the final denoising step; on a grid ending at t = 0, Heun's
last step is its Euler step alone, 2n - 1.) Euler and RK4 run one generic
explicit Runge-Kutta step over a Butcher tableau, in the manner of
``scipy.integrate``.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import as_float_array, per_example, to_numpy
from ._common import (
    ModelCall,
    SampleResult,
    check_positive,
    final_denoise_step,
    finish_step,
    require_sde,
    start,
)
from .grids import _time_bounds, resolve_grid

__all__ = ["ode_euler", "ode_rk4", "ode_heun", "ode_rk45", "EULER", "RK4"]


class Tableau:
    """An explicit Runge-Kutta method as data: nodes ``c``, matrix ``A`` (strictly lower) and weights ``b``."""

    def __init__(self, name, c, A, b, order):
        self.name, self.order = name, order
        self.c, self.A, self.b = (np.asarray(v, dtype=np.float64) for v in (c, A, b))

    def __repr__(self):
        return f"Tableau({self.name}, stages={self.b.shape[0]}, order={self.order})"


EULER = Tableau("euler", [0.0], [[0.0]], [1.0], order=1)
RK4 = Tableau(
    "rk4",
    [0.0, 0.5, 0.5, 1.0],
    [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]],
    [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    order=4,
)


def _velocity(f, process, x, t, i):
    """Probability-flow velocity :math:`f(t)x-\\tfrac12g(t)^2s(x,t)` from one model call."""
    return process._ode_drift(x, t, f(x, t, "score", i))


def _explicit_rk(tableau, model, process, x_T, prediction, steps, grid, final_denoise, rng, callback, name, default_steps):
    require_sde(process, name)
    grid = resolve_grid(process, steps, grid, default_kind="karras", default_steps=default_steps)
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=process.prior_std())
    n_stages = tableau.b.shape[0]
    for i in range(grid.shape[0] - 1):
        t, h = grid[i], grid[i + 1] - grid[i]  # h < 0: integrating backwards in time
        k = []
        for j in range(n_stages):
            x_j = x
            for m in range(j):
                if tableau.A[j, m] != 0.0:
                    x_j = x_j + float(h * tableau.A[j, m]) * k[m]
            k.append(_velocity(f, process, x_j, t + tableau.c[j] * h, i))
        for j in range(n_stages):
            x = x + float(h * tableau.b[j]) * k[j]
        x = finish_step(i, grid[i + 1], x, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def ode_euler(model, process, x_T, *, prediction="score", steps=None, grid=None, final_denoise=True, rng=None, callback=None):
    r"""Euler's method on the probability-flow ODE in t: :math:`x_{i+1}=x_i+(t_{i+1}-t_i)v(x_i,t_i)`.

    Parameters
    ----------
    model : callable ``f(x, t)``
    process : SDE
    x_T : array (N, ...) or shape tuple (drawn from the prior with ``rng``)
    prediction : {"score", "eps", "x0", "v"}
    steps : int
        Number of steps; the default grid is Karras et al.'s
        (:func:`~refdiff.samplers.time_grid` ``kind="karras"``).
    grid : array or kind name, optional
    final_denoise : bool
        Replace the state at :math:`t_{min}` by Tweedie's :math:`\hat x_0`
        (one more model call; none where the grid ends at zero variance).
    rng : seed for the start when ``x_T`` is a shape.
    callback : callable ``callback(i, t, x)``, optional
        Called after step i = 0..steps-1 with the state at its end time
        :math:`t_{i+1}`, then once more (i = steps, t = 0) with Tweedie's
        :math:`\hat x_0` when the final denoising step runs.

    Returns
    -------
    SampleResult ``(x, nfe)``; ``nfe = steps (+1)``.
    """
    return _explicit_rk(EULER, model, process, x_T, prediction, steps, grid, final_denoise, rng, callback, "ode_euler", 200)


def ode_rk4(model, process, x_T, *, prediction="score", steps=None, grid=None, final_denoise=True, rng=None, callback=None):
    """The classical fourth-order Runge-Kutta method on the probability-flow ODE in t (4 NFE per step).

    Parameters as :func:`ode_euler`.
    """
    return _explicit_rk(RK4, model, process, x_T, prediction, steps, grid, final_denoise, rng, callback, "ode_rk4", 50)


def ode_heun(
    model,
    process,
    x_T,
    *,
    prediction="score",
    steps=None,
    grid=None,
    rho=7.0,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 1) for any process.

    In :math:`\tilde x=x/\gamma_t`, :math:`\tilde\sigma=\sigma_t/\gamma_t`:
    :math:`d_i=(\tilde x_i-D(\tilde x_i;\tilde\sigma_i))/\tilde\sigma_i`, an
    Euler step to :math:`\tilde\sigma_{i+1}`, then the trapezoidal correction
    with :math:`d'` evaluated there. The default Karras grid (``rho``) with 17
    steps and the final denoising step (an Euler step to
    :math:`\tilde\sigma=0`, which lands on :math:`D`) is EDM's 18-step,
    35-NFE sampler. ``callback`` is called as in :func:`ode_euler`.
    """
    require_sde(process, "ode_heun")
    grid = resolve_grid(process, steps, grid, default_steps=17, default_kind="karras", rho=rho)
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=process.prior_std())
    x = edm_heun_loop(f, process, x, grid, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def edm_heun_loop(f, process, x, grid, callback, noise=None, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0):
    r"""Karras et al. 2022 Algorithm 2 over ``grid`` (Algorithm 1 when ``S_churn = 0``), one comment per step.

    Works in :math:`\tilde x=x/\gamma_t`, :math:`\tilde\sigma=\sigma_t/\gamma_t`
    and returns x at the last grid time; ``noise`` (a NoiseStream) is only
    drawn from when the churn raises the noise level.
    """
    sigma = np.exp(-0.5 * np.asarray(process.log_snr(grid), dtype=np.float64))  # sigma~ along the grid
    sigma_cap = float(np.exp(-0.5 * process.log_snr(process.t_max)))
    n_points = grid.shape[0]
    x_tilde = x / per_example(process.mean_coef(grid[0]), x)

    def denoiser_slope(x_t, sig, t, i):
        """d = (x~ - D(x~; sigma~)) / sigma~, with the model called on x = gamma_t x~."""
        return (x_t - f(per_example(process.mean_coef(t), x) * x_t, t, "x0", i)) / float(sig)

    for i in range(n_points - 1):
        t_cur, t_next = grid[i], grid[i + 1]
        # increase noise temporarily: gamma_i, sigma_hat, x_hat
        gamma_i = min(S_churn / n_points, math.sqrt(2.0) - 1.0) if S_tmin <= sigma[i] <= S_tmax else 0.0
        sigma_hat = min(sigma[i] * (1.0 + gamma_i), max(sigma_cap, sigma[i]))
        t_hat = t_cur if sigma_hat == sigma[i] else float(process.t_from_log_snr(-2.0 * math.log(sigma_hat)))
        x_hat = x_tilde
        if sigma_hat > sigma[i]:
            x_hat = x_tilde + math.sqrt(sigma_hat**2 - sigma[i] ** 2) * S_noise * noise.normal(x.shape, like=x)
        # Euler step from sigma_hat to sigma_{i+1}
        d_cur = denoiser_slope(x_hat, sigma_hat, t_hat, i)
        x_next = x_hat + float(sigma[i + 1] - sigma_hat) * d_cur
        # second-order correction with the slope at the new point; none at sigma_{i+1} = 0, where the slope is
        # 0 / 0 and the Euler step has landed on D (an explicit grid ending at t = 0; Algorithm 1's "if")
        if sigma[i + 1] != 0.0:
            d_next = denoiser_slope(x_next, sigma[i + 1], t_next, i)
            x_next = x_hat + float(sigma[i + 1] - sigma_hat) * 0.5 * (d_cur + d_next)
        x_tilde = x_next
        x = finish_step(i, t_next, per_example(process.mean_coef(t_next), x) * x_tilde, callback)
    return x


def ode_rk45(
    model,
    process,
    x_T,
    *,
    prediction="score",
    rtol=1e-5,
    atol=1e-5,
    t_max=None,
    t_min=None,
    method="RK45",
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Adaptive Dormand-Prince RK45 on the probability-flow ODE via :func:`scipy.integrate.solve_ivp`.

    The whole batch is one ODE system (vectorised model calls), so step-size
    control couples the examples: a sample agrees with the same example
    solved alone to within the tolerances, not bit for bit. The state is
    float64 on the host; the result is cast back to the input's dtype.

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``info["n_steps"]`` (accepted steps) and
    ``info["status"]`` from solve_ivp. solve_ivp keeps no intermediate
    states here, so ``callback(i, t, x)`` is called once at :math:`t_{min}`
    (i = n_steps - 1) and, when the final denoising step runs (``final_denoise``,
    the default, with :math:`\sigma_{t_{min}}>0`), once more with
    :math:`\hat x_0` (i = n_steps, t = 0).
    """
    from scipy.integrate import solve_ivp

    require_sde(process, "ode_rk45")
    rtol, atol = check_positive(rtol, "rtol"), check_positive(atol, "atol")
    t_max, t_min = _time_bounds(process, t_max, t_min)  # errors name t_max and t_min
    grid = resolve_grid(process, None, np.array([t_max, t_min]))
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=process.prior_std())
    x = as_float_array(x, "x_T")
    shape, dtype = tuple(x.shape), x.dtype
    y0 = np.asarray(to_numpy(x), dtype=np.float64).ravel()

    def fun(t, y):
        xt = y.reshape(shape)
        return np.asarray(_velocity(f, process, xt, t, f.nfe), dtype=np.float64).ravel()

    sol = solve_ivp(fun, (t_max, t_min), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"ode_rk45: solve_ivp failed after {f.nfe} model evaluations: {sol.message}")
    out = sol.y[:, -1].reshape(shape)
    n_steps = sol.t.shape[0] - 1
    out = finish_step(n_steps - 1, t_min, out, callback)
    out = final_denoise_step(f, out, grid, final_denoise, callback, n_steps)
    out = np.asarray(to_numpy(out)).astype(dtype, copy=False)
    return SampleResult(out, f.nfe, n_steps=int(sol.t.shape[0] - 1), status=int(sol.status))
