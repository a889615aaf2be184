r"""Time grids for samplers: where a sampler evaluates the model, from noisy to clean.

A grid is a strictly decreasing float64 array :math:`t_0>t_1>\dots>t_n` of
continuous times (an SDE), or a strictly decreasing int64 array of steps ending
at 0 (a :class:`~refdiff.schedules.DiscreteSchedule`). A sampler with ``n``
steps moves from :math:`t_i` to :math:`t_{i+1}`, i = 0..n-1.

=============  ===============================================================  =========================
kind           points                                                           source
=============  ===============================================================  =========================
``uniform``    :math:`t_i=t_{max}+\tfrac in(t_{min}-t_{max})`                   Song et al. 2021
``log_snr``    uniform in :math:`\lambda=\log(\gamma^2/\sigma^2)`               Lu et al. 2022 (DPM-Solver)
``karras``     :math:`\tilde\sigma_i=(\tilde\sigma_{max}^{1/\rho}+\tfrac in     Karras et al. 2022 eq. 5
               (\tilde\sigma_{min}^{1/\rho}-\tilde\sigma_{max}^{1/\rho}))^\rho`
=============  ===============================================================  =========================

Here :math:`\tilde\sigma=\sigma_t/\gamma_t=e^{-\lambda/2}` is EDM's noise level
of the scaled variable :math:`x/\gamma_t`, so the Karras grid applies to every
process (for VE, :math:`\tilde\sigma` is the usual :math:`\sigma`). Times are
recovered with the process's exact ``t_from_log_snr``; the end points are set
to :math:`t_{max}` and :math:`t_{min}` exactly.

Discrete spacings (``linspace``, ``leading``, ``trailing``) are those of
:func:`refdiff.schedules.spaced_timesteps`; :func:`step_grid` walks them from
the largest step down and appends step 0 (the data), so the last transition of
DDPM or DDIM lands on :math:`\hat x_0` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..schedules import DiscreteSchedule, _check_spacing
from ._common import check_int, check_positive, check_process

__all__ = ["GRID_KINDS", "time_grid", "step_grid", "describe_grid", "GridInfo", "resolve_grid"]

#: Continuous grid kinds understood by :func:`time_grid`.
GRID_KINDS = ("uniform", "log_snr", "karras")


#: A grid may start this far above the process's t_max, relatively: a float32 grid that starts at t_max (0.99
#: rounds up to 0.9900000095) is the process's own end, not a time past it.
_T_MAX_SLACK = 1.0 + 2.0**-23


def _time_bounds(process, t_max, t_min):
    t_max = process.t_max if t_max is None else float(t_max)
    t_min = process.t_min if t_min is None else float(t_min)
    process.check_time(np.array([t_min, t_max]), "grid end points")
    if not t_min < t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min}, t_max={t_max}")
    if t_max > _T_MAX_SLACK * process.t_max:  # e.g. the cosine VP process, singular at t = 1
        raise ValueError(f"t_max must be at most the process's t_max = {process.t_max}, got {t_max}")
    return t_max, t_min


def time_grid(process, steps: int, kind: str = "uniform", t_max=None, t_min=None, rho: float = 7.0) -> np.ndarray:
    r"""A decreasing grid of ``steps + 1`` times from ``t_max`` to ``t_min`` (defaults: the process's).

    Parameters
    ----------
    process : SDE
    steps : int >= 1
    kind : one of :data:`GRID_KINDS`
    rho : float
        Karras et al.'s :math:`\rho` (7 in EDM); only for ``kind="karras"``.

    Returns
    -------
    float64 array of shape (steps + 1,), strictly decreasing.
    """
    if isinstance(process, DiscreteSchedule):
        raise TypeError("time_grid is for continuous processes; use step_grid for a DiscreteSchedule")
    steps = check_int(steps, "steps")
    t_max, t_min = _time_bounds(process, t_max, t_min)
    frac = np.arange(steps + 1, dtype=np.float64) / steps
    if kind == "uniform":
        grid = t_max + frac * (t_min - t_max)
        grid[0], grid[-1] = t_max, t_min
    else:
        if t_min == 0.0 and kind == "log_snr":  # Karras spaces sigma~ = exp(-lambda / 2), which is 0 there
            raise ValueError("a 'log_snr' grid is spaced in log-SNR, which is infinite at t = 0: t_min must be > 0")
        with np.errstate(divide="ignore"):  # log-SNR(0) = +inf: a Karras grid's sigma~ is then exactly 0
            lam_max, lam_min = float(process.log_snr(t_max)), float(process.log_snr(t_min))
        if not lam_max > -np.inf:  # the cosine VP process at t = 1: gamma = 0
            raise ValueError(f"a {kind!r} grid is spaced in log-SNR, which is -inf at t_max = {t_max:g} ({process!r} "
                             "is singular there): take t_max below it")
        if kind == "log_snr":
            lam = lam_max + frac * (lam_min - lam_max)
        elif kind == "karras":
            inv_rho = 1.0 / check_positive(rho, "rho")
            s_max, s_min = np.exp(-0.5 * lam_max) ** inv_rho, np.exp(-0.5 * lam_min) ** inv_rho
            with np.errstate(divide="ignore"):  # the last point, sigma~ = 0 at t_min = 0, is lambda = +inf
                lam = -2.0 * rho * np.log(s_max + frac * (s_min - s_max))
        else:
            raise ValueError(f"kind must be one of {GRID_KINDS}, got {kind!r}")
        grid = np.asarray(process.t_from_log_snr(lam[1:-1]), dtype=np.float64)
        grid = np.concatenate(([t_max], grid, [t_min]))
    if not np.all(np.diff(grid) < 0):
        raise ValueError(f"{steps} steps are too many to space distinctly between t_min={t_min} and t_max={t_max}")
    return grid


def step_grid(schedule: DiscreteSchedule, steps=None, spacing: str = "trailing") -> np.ndarray:
    """The decreasing steps a discrete sampler visits, ending at 0.

    ``steps=None`` visits every step T, T-1, ..., 1, 0; an int ``n`` takes
    ``schedule.timesteps(n, spacing)`` (see
    :func:`refdiff.schedules.spaced_timesteps`) in decreasing order, then 0.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"step_grid needs a DiscreteSchedule, got {type(schedule).__name__}")
    _check_spacing(spacing)  # with steps=None too, where it picks nothing
    if steps is None:
        kept = np.arange(1, schedule.T + 1)
    else:
        steps = check_int(steps, "steps")
        if steps > schedule.T:
            raise ValueError(f"steps must be an int in 1..T={schedule.T} for this schedule, got {steps}")
        kept = schedule.timesteps(steps, spacing)
    return np.concatenate((kept[::-1], [0])).astype(np.int64)


def _check_explicit(process, grid) -> np.ndarray:
    arr = to_numpy(grid)
    discrete = isinstance(process, DiscreteSchedule)
    if arr.ndim != 1 or arr.shape[0] < (1 if discrete else 2):
        least = "1 step (a discrete grid gets its final 0 added)" if discrete else "2 points (1 step)"
        raise ValueError(f"grid must be 1-D with at least {least}, got shape {arr.shape}")
    if discrete:
        arr = process.check_step(arr, "grid")
        if arr[-1] != 0:
            arr = np.concatenate((arr, [0]))
        if arr.shape[0] < 2:
            raise ValueError("grid must hold a step above 0: [0] alone is no step")
    else:
        arr = process.check_time(arr, "grid")
        if arr[0] > _T_MAX_SLACK * process.t_max:
            raise ValueError(f"grid must start at or below the process's t_max = {process.t_max}, got {arr[0]}")
    bad = np.flatnonzero(np.diff(arr) >= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"grid must be strictly decreasing (from noise to data), but grid[{i}]={arr[i]} <= grid[{i + 1}]={arr[i + 1]}"
        )
    return arr


def resolve_grid(
    process, steps, grid, default_kind: str = "uniform", default_steps=None, spacing: str = "trailing", rho: float = 7.0
):
    """The grid a sampler runs on: ``grid`` if it is an array, else one built from ``steps``.

    ``grid`` may be an explicit decreasing array (of times, or of steps for a
    discrete schedule), a kind name from :data:`GRID_KINDS`, or None (the
    sampler's ``default_kind``). ``steps=None`` means the sampler's
    ``default_steps``, at most every step of a discrete schedule (``None``
    there means every step), and ``spacing`` picks the subset otherwise; it is
    checked whatever the grid (a misspelt one is an error, not ignored).
    """
    check_process(process)
    _check_spacing(spacing)
    if grid is not None and not isinstance(grid, str):
        arr = _check_explicit(process, grid)
        if steps is not None and check_int(steps, "steps") != arr.shape[0] - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid of {arr.shape[0] - 1} steps")
        return arr
    if steps is None and default_steps is not None and isinstance(process, DiscreteSchedule):
        steps = min(default_steps, process.T)  # a default never asks a short schedule for more steps than it has
    steps = default_steps if steps is None else steps
    if isinstance(process, DiscreteSchedule):
        if grid is not None:
            raise ValueError("grid kinds are for continuous processes; a DiscreteSchedule takes steps and spacing")
        return step_grid(process, steps, spacing)
    if steps is None:
        raise ValueError("steps is required for a continuous process (or pass an explicit grid)")
    return time_grid(process, steps, default_kind if grid is None else grid, rho=rho)


@dataclass(frozen=True)
class GridInfo:
    """What a grid covers: its ends, its terminal SNR and its log-SNR range."""

    steps: int
    first: float
    last: float
    terminal_snr: float
    log_snr_first: float
    log_snr_last: float
    max_log_snr_step: float

    def __str__(self):
        return (
            f"{self.steps} steps from t={self.first:.6g} to t={self.last:.6g}; terminal SNR {self.terminal_snr:.3g}; "
            f"log-SNR {self.log_snr_first:.3f} -> {self.log_snr_last:.3f} (largest step {self.max_log_snr_step:.3f})"
        )


def describe_grid(process, grid) -> GridInfo:
    """First and last t, the SNR at the first point, and the log-SNR range and largest log-SNR step of ``grid``.

    A first point whose SNR is far above 0 starts the sampler from a prior
    that the data never reach (PITFALLS 9, 11); a large log-SNR step is where
    a solver's error concentrates.
    """
    arr = _check_explicit(process, grid)
    lam = np.asarray(process.log_snr_at(arr), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        dlam = np.diff(lam)
    finite = dlam[np.isfinite(dlam)]
    return GridInfo(
        steps=arr.shape[0] - 1,
        first=float(arr[0]),
        last=float(arr[-1]),
        terminal_snr=float(np.exp(lam[0])),
        log_snr_first=float(lam[0]),
        log_snr_last=float(lam[-1]),
        max_log_snr_step=float(finite.max()) if finite.size else float("inf"),
    )
