r"""DPM-Solver (singlestep, orders 1-3) and DPM-Solver++(2M), Lu et al. 2022a, 2022b.

Notation (Lu et al.): :math:`\alpha_t=\gamma_t`, :math:`\sigma_t`, and the
*half* log-SNR :math:`\lambda_t=\log(\alpha_t/\sigma_t)`, which is
``0.5 * process.log_snr(t)`` (refdiff's ``log_snr`` is
:math:`\log(\alpha^2/\sigma^2)`). From :math:`s` to :math:`t<s`,
:math:`h=\lambda_t-\lambda_s>0`. The exact solution of the probability-flow
ODE in eps form is the exponential integrator (Lu et al. 2022a, eq. 3.4)

.. math:: x_t=\frac{\alpha_t}{\alpha_s}x_s-\alpha_t\int_{\lambda_s}^{\lambda_t}e^{-\lambda}\hat\epsilon(x_\lambda,\lambda)\,d\lambda,

and Taylor-expanding :math:`\hat\epsilon` in :math:`\lambda` gives the
solvers below (:math:`\phi_1=e^h-1`, computed with ``expm1``).

DPM-Solver-1 (= DDIM with :math:`\eta=0`):
:math:`x_t=\frac{\alpha_t}{\alpha_s}x_s-\sigma_t\phi_1\hat\epsilon_s`.

DPM-Solver-2 (Algorithm 4, :math:`r_1=\tfrac12`):
:math:`u=\frac{\alpha_{s_1}}{\alpha_s}x_s-\sigma_{s_1}(e^{r_1h}-1)\hat\epsilon_s`,
:math:`x_t=\frac{\alpha_t}{\alpha_s}x_s-\sigma_t\phi_1\hat\epsilon_s-\frac{\sigma_t}{2r_1}\phi_1(\hat\epsilon(u,s_1)-\hat\epsilon_s)`.

DPM-Solver-3 (Algorithm 5, :math:`r_1=\tfrac13`, :math:`r_2=\tfrac23`):
:math:`u_1=\frac{\alpha_{s_1}}{\alpha_s}x_s-\sigma_{s_1}(e^{r_1h}-1)\hat\epsilon_s`,
:math:`D_1=\hat\epsilon(u_1,s_1)-\hat\epsilon_s`,
:math:`u_2=\frac{\alpha_{s_2}}{\alpha_s}x_s-\sigma_{s_2}(e^{r_2h}-1)\hat\epsilon_s-\frac{\sigma_{s_2}r_2}{r_1}\big(\frac{e^{r_2h}-1}{r_2h}-1\big)D_1`,
:math:`D_2=\hat\epsilon(u_2,s_2)-\hat\epsilon_s`,
:math:`x_t=\frac{\alpha_t}{\alpha_s}x_s-\sigma_t\phi_1\hat\epsilon_s-\frac{\sigma_t}{r_2}\big(\frac{\phi_1}{h}-1\big)D_2`.

DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) uses the data prediction
:math:`\hat x_0` and the previous step's:
:math:`x_t=\frac{\sigma_t}{\sigma_s}x_s-\alpha_t(e^{-h}-1)D` with
:math:`D=(1+\frac1{2r})\hat x_{0,s}-\frac1{2r}\hat x_{0,prev}`,
:math:`r=h_{prev}/h` (first step: :math:`D=\hat x_{0,s}`).
"""

from __future__ import annotations

import numbers

import numpy as np

from ..backend import per_example
from ._common import (
    ModelCall,
    SampleResult,
    final_denoise_step,
    finish_step,
    require_sde,
    start,
)
from .grids import resolve_grid

__all__ = ["dpm_solver", "dpm_solver_pp", "lower_order_final_applies"]


def _lam(process, t):
    """Lu et al.'s half log-SNR :math:`\\lambda_t=\\log(\\alpha_t/\\sigma_t)` (float64)."""
    return 0.5 * np.asarray(process.log_snr(t), dtype=np.float64)


def _lands_on_data(process, t):
    """Whether a step ends where sigma_t = 0 (an explicit grid ending at t = 0): lambda_t = inf there."""
    return float(process.variance(t)) == 0.0


def _step_to_data(f, process, x, s, t, i):
    r"""A step from s to a t with :math:`\sigma_t=0`: the limit :math:`h\to\infty` of the first-order
    step, :math:`\alpha_t\hat x_0(x_s)` (Tweedie's denoiser; one model call). The higher-order terms have no
    finite limit there (DPM-Solver++(2M)'s weight 1 / (2 r), r = h_prev / h, grows without bound), so the last
    step is first order, as in diffusers with ``final_sigmas_type="zero"``."""
    return per_example(process.mean_coef(t), x) * f(x, s, "x0", i)


def _t_at(process, lam):
    """Time whose half log-SNR is ``lam``."""
    return float(process.t_from_log_snr(2.0 * lam))


def lower_order_final_applies(step: int, n_steps: int, enabled: bool) -> bool:
    """Whether a multistep solver drops to first order on this step.

    As diffusers' multistep schedulers do: on the last step when there are
    fewer than 15 steps in all (PITFALLS 19: second-order multistep steps are
    unstable close to t = 0 at few steps).
    """
    return enabled and step == n_steps - 1 and n_steps < 15


def dpm_solver(
    model,
    process,
    x_T,
    *,
    prediction="eps",
    order=3,
    steps=None,
    grid=None,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""Singlestep DPM-Solver of order 1, 2 or 3 (Lu et al. 2022a, Algorithms 1, 4, 5); ``order`` NFE per step.

    Parameters
    ----------
    model : callable ``f(x, t)``
    process : SDE
    x_T : array (N, ...) or shape tuple
    prediction : {"eps", "x0", "score", "v"}
    order : {1, 2, 3}
    steps : int
        Outer steps; the default grid is uniform in log-SNR (Lu et al.'s
        recommendation for singlestep solvers).
    grid : array or kind name, optional

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``nfe = order * steps (+1)``; a step that
    lands on t = 0 (an explicit grid ending there) takes one evaluation, not ``order``.
    """
    require_sde(process, "dpm_solver")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    grid = resolve_grid(process, steps, grid, default_steps=10, default_kind="log_snr")
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=process.prior_std())
    r1, r2 = (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)

    def advance(x, s, t_to, h, eps_s):
        """First-order move from s to t_to: the shared part of every stage."""
        ratio = np.exp(process.log_mean_coef(t_to) - process.log_mean_coef(s))
        return per_example(ratio, x) * x - per_example(process.std(t_to) * np.expm1(h), x) * eps_s

    for i in range(grid.shape[0] - 1):
        s, t = grid[i], grid[i + 1]
        if _lands_on_data(process, t):
            x = finish_step(i, t, _step_to_data(f, process, x, s, t, i), callback)
            continue
        lam_s, lam_t = _lam(process, s), _lam(process, t)
        h = lam_t - lam_s
        eps_s = f(x, s, "eps", i)
        x_t = advance(x, s, t, h, eps_s)
        phi_1 = np.expm1(h)
        sigma_t = process.std(t)
        if order == 2:
            s1 = _t_at(process, lam_s + r1 * h)
            u = advance(x, s, s1, r1 * h, eps_s)
            d1 = f(u, s1, "eps", i) - eps_s
            x_t = x_t - per_example(sigma_t / (2.0 * r1) * phi_1, x) * d1
        elif order == 3:
            s1, s2 = _t_at(process, lam_s + r1 * h), _t_at(process, lam_s + r2 * h)
            u1 = advance(x, s, s1, r1 * h, eps_s)
            d1 = f(u1, s1, "eps", i) - eps_s
            phi_22 = np.expm1(r2 * h) / (r2 * h) - 1.0
            u2 = advance(x, s, s2, r2 * h, eps_s) - per_example(process.std(s2) * r2 / r1 * phi_22, x) * d1
            d2 = f(u2, s2, "eps", i) - eps_s
            x_t = x_t - per_example(sigma_t / r2 * (phi_1 / h - 1.0), x) * d2
        x = finish_step(i, t, x_t, callback)
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)


def dpm_solver_pp(
    model,
    process,
    x_T,
    *,
    prediction="eps",
    steps=None,
    grid=None,
    lower_order_final=True,
    final_denoise=True,
    rng=None,
    callback=None,
):
    r"""DPM-Solver++(2M), the second-order multistep data-prediction solver (Lu et al. 2022b, Algorithm 2).

    One NFE per step. The first step is first order (no history); with
    ``lower_order_final`` the last step is too when ``steps < 15``
    (:func:`lower_order_final_applies`). Default grid: uniform in log-SNR.

    Returns
    -------
    SampleResult ``(x, nfe)`` with ``nfe = steps (+1)``.
    """
    require_sde(process, "dpm_solver_pp")
    grid = resolve_grid(process, steps, grid, default_steps=20, default_kind="log_snr")
    n = grid.shape[0] - 1
    f = ModelCall(model, prediction, process)
    x, _ = start(x_T, rng, prior_std=process.prior_std())
    x0_prev, h_prev = None, None
    for i in range(n):
        s, t = grid[i], grid[i + 1]
        if _lands_on_data(process, t):
            x = finish_step(i, t, _step_to_data(f, process, x, s, t, i), callback)
            continue
        h = _lam(process, t) - _lam(process, s)
        x0_s = f(x, s, "x0", i)
        if x0_prev is None or lower_order_final_applies(i, n, lower_order_final):
            D = x0_s  # DPM-Solver++(1), i.e. DDIM
        else:
            r = h_prev / h
            D = per_example(1.0 + 0.5 / r, x) * x0_s - per_example(0.5 / r, x) * x0_prev
        sigma_ratio = np.exp(0.5 * (np.log(process.variance(t)) - np.log(process.variance(s))))
        x = per_example(sigma_ratio, x) * x - per_example(process.mean_coef(t) * np.expm1(-h), x) * D
        x = finish_step(i, t, x, callback)
        x0_prev, h_prev = x0_s, h
    return SampleResult(final_denoise_step(f, x, grid, final_denoise, callback), f.nfe, grid=grid)
