r"""Discrete noise schedules (Ho et al. 2020) and their derived tables.

Notation (DDPM, Ho et al. 2020; Nichol & Dhariwal 2021):

==================  ==========================================================
``t``               step index in 1..T; arrays have length T+1 and index 0 is
                    the clean data, so ``alpha_bar[t]`` is the paper's
                    :math:`\bar\alpha_t` with no shift.
``betas[t]``        :math:`\beta_t`, ``betas[0] == 0``
``alphas[t]``       :math:`\alpha_t = 1-\beta_t`
``alpha_bar[t]``    :math:`\bar\alpha_t=\prod_{s=1}^{t}\alpha_s`, ``alpha_bar[0] == 1``
``mean_coef(t)``    :math:`\gamma_t=\sqrt{\bar\alpha_t}` (the VP "alpha_t" of
                    Kingma et al. 2021)
``std(t)``          :math:`\sigma_t=\sqrt{1-\bar\alpha_t}`
``log_snr[t]``      :math:`\lambda_t=\log\bar\alpha_t-\log(1-\bar\alpha_t)`
==================  ==========================================================

so that :math:`q(x_t\mid x_0)=\mathcal N(\gamma_t x_0,\sigma_t^2 I)`.

Every table is float64 and derived in log space: :math:`\log\bar\alpha_t` is
the cumulative sum of ``log1p(-beta)``, and :math:`1-\bar\alpha_t` is
``-expm1(log_alpha_bar)``, exact to a few ulp even where
:math:`\bar\alpha_t` rounds to 1 in float32 or float16 (see PITFALLS 1-3:
diffusers builds betas in float32, OpenAI and Ho et al. in float64).

The schedule is also a *process* in refdiff's sense: it has ``mean_coef``,
``std``, ``log_snr`` and ``transition`` methods taking integer steps, the same
interface the continuous SDEs in :mod:`refdiff.sde` offer for real times, so
:mod:`refdiff.forward`, :mod:`refdiff.param` and :mod:`refdiff.analytic` work
with either.

Relation to the VP SDE (Song et al. 2021, appendix B): with
``betas = linear_betas(T, beta_min / T, beta_max / T)`` step ``t``
approximates time ``t / T`` of ``VPSDE(beta_min, beta_max)``, and
``alpha_bar[t]`` converges to :math:`\exp(-\int_0^{t/T}\beta(s)ds)` at rate
O(1/T). ``VPSDE.discretize(T)`` gives the schedule whose ``alpha_bar`` equals
the SDE's at every grid point exactly.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import InitVar, dataclass, field

import numpy as np

from .backend import to_numpy

__all__ = [
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "sigmoid_betas",
    "betas_from_alpha_bar",
    "make_betas",
    "rescale_zero_terminal_snr",
    "spaced_timesteps",
    "DiscreteSchedule",
    "SCHEDULE_NAMES",
]


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral):
        raise TypeError(f"T must be an int, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return int(T)


def _check_beta_range(beta_start, beta_end):
    for name, b in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(b, numbers.Real) and math.isfinite(b) and 0.0 < b < 1.0):
            raise ValueError(f"{name} must be a finite number in (0, 1), got {b!r}")


def _with_zero(betas_1_to_T: np.ndarray) -> np.ndarray:
    out = np.empty(betas_1_to_T.shape[0] + 1, dtype=np.float64)
    out[0] = 0.0
    out[1:] = betas_1_to_T
    return out


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    r"""Linear schedule of Ho et al. (2020): :math:`\beta_t` linear in t from ``beta_start`` to ``beta_end``.

    Returns float64 of length T+1 with ``betas[0] == 0``, ``betas[1] ==
    beta_start`` and ``betas[T] == beta_end`` (for T = 1 the one beta is
    ``beta_start``, as ``linspace`` gives).
    """
    T = _check_T(T)
    _check_beta_range(beta_start, beta_end)
    return _with_zero(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    r"""Latent-diffusion schedule: :math:`\sqrt{\beta_t}` linear in t (Rombach et al. 2022).

    Returns float64 of length T+1 with ``betas[0] == 0``.
    """
    T = _check_T(T)
    _check_beta_range(beta_start, beta_end)
    return _with_zero(np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2)


def sigmoid_betas(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02, low: float = -6.0, high: float = 6.0
) -> np.ndarray:
    r"""Sigmoid schedule of GeoDiff (Xu et al. 2022), as diffusers' ``"sigmoid"``.

    :math:`\beta_t = \beta_{start} + (\beta_{end}-\beta_{start})\,
    \mathrm{sigmoid}(u_t)` with :math:`u_t` linear from ``low`` to ``high``.
    """
    T = _check_T(T)
    _check_beta_range(beta_start, beta_end)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"low and high must be finite with low < high, got low={low!r}, high={high!r}")
    u = np.linspace(low, high, T, dtype=np.float64)
    return _with_zero(beta_start + (beta_end - beta_start) / (1.0 + np.exp(-u)))


def betas_from_alpha_bar(fn, T: int, max_beta: float | None = 0.999) -> np.ndarray:
    r"""Betas whose cumulative product follows ``fn`` (Nichol & Dhariwal 2021, eq. 17).

    :math:`\beta_t = \min(1 - f(t/T)/f((t-1)/T),\ \text{max\_beta})`. ``fn``
    maps a float64 array of u in [0, 1] to :math:`\bar\alpha` up to a constant
    factor (only ratios are used). ``1 - ratio`` is evaluated as
    ``-expm1(log f(t/T) - log f((t-1)/T))`` so tiny betas keep full precision;
    ``fn(1) == 0`` gives :math:`\beta_T = 1` when ``max_beta`` is None.

    Parameters
    ----------
    max_beta : float in (0, 1] or None
        Clip applied to every beta; the cosine schedule needs it (its last
        beta is 1 - 6e-17 otherwise). ``None`` disables clipping.
    """
    T = _check_T(T)
    if max_beta is not None and not (isinstance(max_beta, numbers.Real) and 0.0 < max_beta <= 1.0):
        raise ValueError(f"max_beta must be in (0, 1] or None, got {max_beta!r}")
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.asarray(fn(u), dtype=np.float64)
    if f.shape != u.shape:
        raise ValueError(f"fn must map an array of shape {u.shape} to the same shape, got {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0) or f[0] <= 0 or np.any(np.diff(f) > 0):
        raise ValueError("fn must be finite, positive at u=0, non-negative and non-increasing on [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_f = np.log(f)
        betas = -np.expm1(log_f[1:] - log_f[:-1])
    if np.any(f[:-1] == 0):
        raise ValueError("fn may reach 0 only at u = 1 (alpha_bar = 0 before the last step)")
    if max_beta is not None:
        betas = np.minimum(betas, max_beta)
    return _with_zero(betas)


def cosine_betas(T: int, s: float = 0.008, max_beta: float | None = 0.999) -> np.ndarray:
    r"""Cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    :math:`\bar\alpha(u) = \cos^2\!\big(\tfrac{u+s}{1+s}\tfrac{\pi}{2}\big)/
    \cos^2\!\big(\tfrac{s}{1+s}\tfrac{\pi}{2}\big)` at u = t/T, betas clipped
    to ``max_beta``. The clip makes :math:`\bar\alpha_T \approx 2.4\cdot10^{-9}`
    at T = 1000, not 0 (PITFALLS 4); use :func:`rescale_zero_terminal_snr` for
    a schedule that reaches zero SNR.
    """
    if not (isinstance(s, numbers.Real) and math.isfinite(s) and s >= 0):
        raise ValueError(f"s must be a finite number >= 0, got {s!r}")
    half_pi = 0.5 * math.pi

    def alpha_bar(u):
        return np.cos((u + s) / (1.0 + s) * half_pi) ** 2

    return betas_from_alpha_bar(alpha_bar, T, max_beta)


#: Names accepted by :func:`make_betas`, with the diffusers spelling as aliases.
SCHEDULE_NAMES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "squaredcos_cap_v2": cosine_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: str, T: int, **kwargs) -> np.ndarray:
    """Betas of the named schedule (one of :data:`SCHEDULE_NAMES`), keyword arguments passed on."""
    try:
        fn = SCHEDULE_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown schedule name {name!r}; expected one of {sorted(SCHEDULE_NAMES)}") from None
    return fn(T, **kwargs)


def _prefix_sums(terms) -> np.ndarray:
    """Cumulative sums of float64 ``terms``, each within about an ulp of the exact prefix sum.

    Neumaier's compensated summation: ``np.cumsum`` rounds once per term, so
    its error grows with the length (log alpha-bar of a 1578-step schedule
    came out 1e-12 relative from the exact product, against 1e-15 here).
    A -inf term (beta = 1) makes that sum and every later one -inf.
    """
    terms = np.asarray(terms, dtype=np.float64)
    out = np.empty_like(terms)
    s = c = 0.0
    for i, x in enumerate(terms.tolist()):
        t = s + x
        if not math.isfinite(t):
            out[i:] = t
            break
        c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s  # the rounding error of s + x, exactly
        s = t
        out[i] = s + c
    return out


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    r"""Rescale betas so that :math:`\bar\alpha_T = 0` exactly (Lin et al. 2024, Algorithm 1).

    :math:`\sqrt{\bar\alpha_t}` is shifted so its last value is 0 and scaled
    so its first value (t = 1) is unchanged; the betas are then re-derived,
    giving :math:`\beta_T = 1`. In the :class:`DiscreteSchedule` built from
    them, ``alpha_bar[T]``, ``sqrt_alpha_bar[T]`` and ``alphas[T]`` are 0 and
    ``log_alpha_bar[T] = log_snr[T] = -inf``, which is the truth; with
    ``log_snr[0] = +inf`` (as in every schedule) these are the only
    non-finite entries: the posterior tables stay finite at t = T.

    Formed without cancellation. With :math:`r_t=\sqrt{\bar\alpha_t}` of the
    input, the rescaled :math:`\sqrt{\bar\alpha_t}` is proportional to
    :math:`r_t-r_T`, so that :math:`\beta_t=u_t(2-u_t)` with
    :math:`u_t=1-\frac{r_t-r_T}{r_{t-1}-r_T}=d_t/\sum_{j\ge t}d_j` and
    :math:`d_t=r_{t-1}-r_t=-r_{t-1}\,\mathrm{expm1}(\tfrac12\log(1-\beta_t))`,
    a sum of positive terms (compensated). :math:`\beta_1` is kept as given
    (the rescaling holds :math:`\bar\alpha_1`), :math:`\beta_T=1` exactly;
    :math:`1-\bar\alpha_t/\bar\alpha_{t-1}` of the rescaled values lost
    up to 8e-8 of a :math:`\beta_t` of 1e-9.
    """
    betas = _validated_betas(betas)
    with np.errstate(divide="ignore"):  # beta_T = 1 (already zero SNR) gives log 0 = -inf, which is right
        half_log_alphas = 0.5 * np.log1p(-betas[1:])  # t = 1..T
    r = np.exp(_prefix_sums(half_log_alphas))  # sqrt(alpha_bar_t), t = 1..T
    d = -r[:-1] * np.expm1(half_log_alphas[1:])  # r_{t-1} - r_t >= 0, t = 2..T
    tail = _prefix_sums(d[::-1])[::-1]  # r_{t-1} - r_T, t = 2..T
    if not tail.size or not tail[0] > 0.0:
        raise ValueError("betas: alpha_bar must decrease from t=1 to t=T to be rescaled")
    with np.errstate(invalid="ignore"):  # 0 / 0 where alpha_bar stays put up to some t: beta_t = 0 there
        u = np.where(d > 0.0, d / tail, 0.0)  # 1 - sqrt(alpha_t) of the rescaled schedule
    out = np.empty_like(betas)
    out[0], out[1] = 0.0, betas[1]
    out[2:] = u * (2.0 - u)
    out[-1] = 1.0  # u_T = d_T / d_T
    return _with_zero(out[1:])


_SPACINGS = ("linspace", "leading", "trailing")


def _check_spacing(spacing):
    """``spacing`` if it is one of the known ones (:func:`spaced_timesteps`), else a ValueError."""
    if spacing not in _SPACINGS:
        raise ValueError(f"spacing must be one of {_SPACINGS}, got {spacing!r}")
    return spacing


def spaced_timesteps(T: int, n: int, spacing: str = "trailing") -> np.ndarray:
    r"""``n`` distinct steps of 1..T, increasing, as other libraries space them.

    Steps are the paper's t (1-based); diffusers' 0-based ``timesteps`` are
    these minus 1. A sampler walks them from last to first.

    ``"linspace"``
        ``1 + round(linspace(0, T - 1, n))`` (diffusers' formula, shifted):
        reaches t = T and t = 1 for n >= 2 (n = 1 gives ``[1]``). Rounding
        the 0-based grid is not the same as rounding ``linspace(1, T, n)``:
        NumPy rounds halves to even, so T = 1000, n = 3 gives 501, not 500.
    ``"leading"``
        ``1 + k * (T // n)`` for k = 0..n-1 (diffusers' ``"leading"`` with
        ``steps_offset=0``): starts at t = 1 and does **not** reach t = T
        unless ``T // n * (n - 1) == T - 1`` (PITFALLS 11: 50 steps of 1000
        end at t = 981, so the sampler starts from a noisier-than-trained
        prior).
    ``"trailing"``
        ``round(T - k * T / n)`` for k = 0..n-1 (Lin et al. 2024, Table 2):
        reaches t = T; its smallest step is ``round(T / n)``.

    Raises
    ------
    ValueError
        If ``n`` is not in 1..T or ``spacing`` is unknown.
    """
    T = _check_T(T)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= T:
        raise ValueError(f"n must be an int in 1..T={T}, got {n!r}")
    _check_spacing(spacing)
    if spacing == "linspace":
        steps = 1 + np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    elif spacing == "leading":
        steps = 1 + np.arange(n, dtype=np.int64) * (T // n)
    else:  # "trailing"
        steps = np.round(np.arange(T, 0, -T / n)).astype(np.int64)[:n][::-1]
    steps = np.ascontiguousarray(steps)
    assert steps.shape == (n,) and np.all(np.diff(steps) > 0) and steps[0] >= 1 and steps[-1] <= T
    return steps


def _validated_betas(betas, ones_before_T: bool = False) -> np.ndarray:
    raw = to_numpy(betas)
    if np.iscomplexobj(raw):
        raise TypeError(f"betas must be real, got dtype {raw.dtype}")
    try:
        b = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"betas must be a real 1-D array, got {type(betas).__name__}") from exc
    if b.ndim != 1 or b.shape[0] < 2:
        raise ValueError(f"betas must be 1-D of length T+1 >= 2, got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("betas must be finite, got NaN or infinity")
    if b[0] != 0.0:
        raise ValueError(
            f"betas[0] must be 0 (arrays are indexed by the paper's t, index 0 is the data), got {b[0]!r}; "
            "prepend a 0 to a length-T array"
        )
    # beta_t = 1 before T would zero alpha_bar early; a schedule built from exact log alpha_bar may
    # still hold betas that round to 1 (alpha_bar ratios below 1e-16), its tables do not depend on them
    inner = b[1:-1] if not ones_before_T else b[1:-1][b[1:-1] < 1]
    if np.any(b[1:] <= 0) or np.any(inner >= 1) or np.any(b > 1):
        bad = b[1:][(b[1:] <= 0) | (b[1:] > 1)]
        raise ValueError(
            "betas[1:T] must lie in (0, 1) and betas[T] in (0, 1]"
            + (f", got values such as {bad[:3].tolist()}" if bad.size else ", got beta = 1 before t = T")
        )
    return b


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    r"""A discrete schedule :math:`\beta_1..\beta_T` and every table derived from it.

    Parameters
    ----------
    betas : array_like, shape (T+1,)
        ``betas[0] == 0``; ``0 < betas[t] < 1`` for t < T and
        ``0 < betas[T] <= 1`` (1 only for a zero-terminal-SNR schedule).
    model_steps : array_like of int, shape (T+1,), optional
        For a respaced schedule, the step of the original schedule that each
        index stands for (``model_steps[0] == 0``). A model trained on the
        original schedule is called with ``model_steps[t]``. Default: identity.

    Attributes (float64, read-only, length T+1)
    -------------------------------------------
    alphas, alpha_bar, log_alpha_bar
        :math:`\alpha_t`, :math:`\bar\alpha_t`, :math:`\log\bar\alpha_t`.
    alpha_bar_prev
        :math:`\bar\alpha_{t-1}`; ``alpha_bar_prev[0] = 1`` by convention.
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar
        :math:`\gamma_t` and :math:`\sigma_t` of :math:`q(x_t|x_0)`.
    posterior_variance
        :math:`\tilde\beta_t = \beta_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)`
        (Ho et al. eq. 7). At t = 1 it is exactly 0: :math:`q(x_0|x_1,x_0)`
        is a point mass. diffusers clamps this to 1e-20 and OpenAI's tables
        hold 0 (improved-diffusion); refdiff keeps 0. Index 0 holds 0.
    posterior_log_variance
        :math:`\log\tilde\beta_t` for t >= 2, with t = 1 (and index 0) set to
        :math:`\log\tilde\beta_2` as in improved-diffusion's
        ``posterior_log_variance_clipped``, because log 0 is not usable in the
        decoder term of the VLB. For T = 1 it is :math:`\log\beta_1`.
    posterior_mean_coef_x0, posterior_mean_coef_xt
        :math:`\sqrt{\bar\alpha_{t-1}}\beta_t/(1-\bar\alpha_t)` and
        :math:`\sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)` (Ho et al.
        eq. 7); 1 and 0 at t = 1 (and at index 0), so the posterior mean is
        x_0 there.
    log_snr
        :math:`\log\bar\alpha_t - \log(1-\bar\alpha_t)`; ``+inf`` at t = 0 and
        ``-inf`` at t = T for a zero-terminal-SNR schedule.
    """

    betas: np.ndarray
    model_steps: np.ndarray | None = field(default=None)
    log_alpha_bar_exact: InitVar[np.ndarray | None] = None

    @classmethod
    def from_log_alpha_bar(cls, log_alpha_bar, model_steps=None) -> "DiscreteSchedule":
        r"""The schedule with the given :math:`\log\bar\alpha_t` (t = 0..T, starting at 0), kept exactly.

        Betas are derived as :math:`1-\bar\alpha_t/\bar\alpha_{t-1}`, but the
        alpha-bar tables come from ``log_alpha_bar`` itself: a beta close to 1
        cannot carry :math:`\bar\alpha_t` to full relative precision.
        """
        lab = np.array(to_numpy(log_alpha_bar), dtype=np.float64)
        if lab.ndim != 1 or lab.shape[0] < 2 or lab[0] != 0.0:
            raise ValueError(f"log_alpha_bar must be 1-D of length T+1 >= 2 with log_alpha_bar[0] == 0, got shape {lab.shape}")
        if np.any(np.isnan(lab)) or np.any(np.isposinf(lab)) or np.any(np.isneginf(lab[:-1])):
            raise ValueError("log_alpha_bar must be finite (-inf allowed only at t = T)")
        with np.errstate(invalid="ignore"):
            steps = np.diff(lab)
        if np.any(steps >= 0):
            raise ValueError("log_alpha_bar must decrease strictly")
        return cls(_with_zero(-np.expm1(steps)), model_steps=model_steps, log_alpha_bar_exact=lab)

    def __post_init__(self, log_alpha_bar_exact):
        b = _validated_betas(self.betas, ones_before_T=log_alpha_bar_exact is not None)
        T = b.shape[0] - 1
        if self.model_steps is None:
            ts = np.arange(T + 1, dtype=np.int64)
        else:
            ts = np.array(to_numpy(self.model_steps))
            if ts.shape != (T + 1,) or not np.issubdtype(ts.dtype, np.integer):
                raise ValueError(f"model_steps must be integers of shape ({T + 1},), got {ts.dtype} {ts.shape}")
            if ts[0] != 0 or np.any(np.diff(ts) <= 0):
                raise ValueError("model_steps must start at 0 and increase strictly")
            ts = ts.astype(np.int64)
        set_ = object.__setattr__
        set_(self, "betas", _readonly(b))
        set_(self, "model_steps", _readonly(ts))

        if log_alpha_bar_exact is None:
            with np.errstate(divide="ignore"):
                log_alphas = np.log1p(-b)  # -inf where beta_T == 1
            log_alpha_bar = _prefix_sums(log_alphas)
        else:
            log_alpha_bar = np.array(log_alpha_bar_exact, dtype=np.float64)
            if log_alpha_bar.shape != b.shape:
                raise ValueError(f"log_alpha_bar_exact must have the shape of betas {b.shape}")
            with np.errstate(invalid="ignore"):
                log_alphas = np.concatenate(([0.0], np.diff(log_alpha_bar)))
        alpha_bar = np.exp(log_alpha_bar)
        one_minus_ab = 0.0 - np.expm1(log_alpha_bar)  # 1 - alpha_bar without cancellation; 0 - : no -0 at t = 0
        ab_prev = np.concatenate(([1.0], alpha_bar[:-1]))
        omab_prev = np.concatenate(([0.0], one_minus_ab[:-1]))

        # posterior q(x_{t-1} | x_t, x_0), Ho et al. eq. 6-7; index 0 is a placeholder
        denom = one_minus_ab[1:]
        post_var = np.zeros(T + 1)
        post_var[1:] = b[1:] * omab_prev[1:] / denom
        coef_x0 = np.ones(T + 1)
        coef_x0[1:] = np.sqrt(ab_prev[1:]) * b[1:] / denom
        coef_x0[1] = 1.0  # beta_1 / (1 - alpha_bar_1) is exactly 1; do not let rounding say otherwise
        coef_xt = np.zeros(T + 1)
        coef_xt[1:] = np.exp(0.5 * log_alphas[1:]) * omab_prev[1:] / denom
        post_log_var = np.empty(T + 1)
        with np.errstate(divide="ignore"):
            post_log_var[1:] = np.log(post_var[1:])
        post_log_var[1] = post_log_var[2] if T >= 2 else math.log(b[1])
        post_log_var[0] = post_log_var[1]

        with np.errstate(divide="ignore"):
            log_snr = log_alpha_bar - np.log(one_minus_ab)

        tables = {
            "alphas": 1.0 - b if log_alpha_bar_exact is None else np.exp(log_alphas),
            "log_alpha_bar": log_alpha_bar,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": ab_prev,
            "one_minus_alpha_bar": one_minus_ab,
            "sqrt_alpha_bar": np.exp(0.5 * log_alpha_bar),
            "sqrt_one_minus_alpha_bar": np.sqrt(one_minus_ab),
            "posterior_variance": post_var,
            "posterior_log_variance": post_log_var,
            "posterior_mean_coef_x0": coef_x0,
            "posterior_mean_coef_xt": coef_xt,
            "log_snr": log_snr,
        }
        for name, value in tables.items():
            set_(self, name, _readonly(value))

    # ------------------------------------------------------------------ basics
    @property
    def T(self) -> int:
        """Number of steps."""
        return self.betas.shape[0] - 1

    def __repr__(self) -> str:
        respaced = "" if np.array_equal(self.model_steps, np.arange(self.T + 1)) else ", respaced"
        return (
            f"DiscreteSchedule(T={self.T}{respaced}, beta_1={self.betas[1]:.3g}, beta_T={self.betas[-1]:.3g}, "
            f"alpha_bar_T={self.alpha_bar[-1]:.3g})"
        )

    def check_step(self, t, name: str = "t", lo: int = 0) -> np.ndarray:
        """Validate integer step(s) ``t`` in ``lo..T`` and return them as host int64.

        Raises
        ------
        TypeError
            If ``t`` is not integral (floats are refused rather than truncated:
            PITFALLS 14).
        ValueError
            If any step is outside ``lo..T``.
        """
        if isinstance(t, bool):
            raise TypeError(f"{name} must be an integer step, got bool")
        arr = to_numpy(t)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{name} must be an integer step in {lo}..{self.T} (discrete schedules index by the paper's t), "
                f"got dtype {arr.dtype}"
            )
        if arr.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D (one step per example), got shape {arr.shape}")
        if arr.size and (arr.min() < lo or arr.max() > self.T):
            raise ValueError(f"{name} must lie in {lo}..{self.T}, got values in {arr.min()}..{arr.max()}")
        return arr.astype(np.int64)

    # ------------------------------------------------------- process interface
    def mean_coef(self, t) -> np.ndarray:
        r""":math:`\gamma_t=\sqrt{\bar\alpha_t}` at integer step(s) t (float64)."""
        return self.sqrt_alpha_bar[self.check_step(t)]

    def std(self, t) -> np.ndarray:
        r""":math:`\sigma_t=\sqrt{1-\bar\alpha_t}` at integer step(s) t (float64)."""
        return self.sqrt_one_minus_alpha_bar[self.check_step(t)]

    def variance(self, t) -> np.ndarray:
        r""":math:`\sigma_t^2=1-\bar\alpha_t`, without cancellation (float64)."""
        return self.one_minus_alpha_bar[self.check_step(t)]

    def log_snr_at(self, t) -> np.ndarray:
        r""":math:`\lambda_t` at integer step(s) t (float64); see ``log_snr``."""
        return self.log_snr[self.check_step(t)]

    def transition(self, s, t):
        r"""Coefficients of :math:`q(x_t|x_s)=\mathcal N(\gamma_{t|s}x_s,\sigma^2_{t|s}I)`, s <= t.

        :math:`\gamma_{t|s}=\sqrt{\bar\alpha_t/\bar\alpha_s}` and
        :math:`\sigma^2_{t|s}=1-\bar\alpha_t/\bar\alpha_s`, both from the
        difference of log tables (``expm1``), so s close to t loses nothing.

        Returns
        -------
        gamma_ts, sigma2_ts : float64 arrays of the broadcast shape of s and t
        """
        s = self.check_step(s, "s")
        t = self.check_step(t, "t")
        if np.any(s > t):
            raise ValueError("s must not exceed t in q(x_t | x_s)")
        same = np.broadcast_to(s == t, np.broadcast(s, t).shape)
        with np.errstate(invalid="ignore"):
            d = self.log_alpha_bar[t] - self.log_alpha_bar[s]  # nan only for s == t == T at zero SNR
        d = np.where(same, 0.0, d)
        return np.exp(0.5 * d), 0.0 - np.expm1(d)  # 0.0 - : no negative zero at s == t

    # ------------------------------------------------------------- spacing
    def timesteps(self, n: int, spacing: str = "trailing") -> np.ndarray:
        """``n`` steps of this schedule spaced as ``spacing``; see :func:`spaced_timesteps`."""
        return spaced_timesteps(self.T, n, spacing)

    def respace(self, timesteps) -> "DiscreteSchedule":
        r"""The schedule restricted to ``timesteps`` (Nichol & Dhariwal 2021, sec. 4).

        The result has :math:`\bar\alpha` equal to this schedule's at each
        kept step, and betas :math:`1-\bar\alpha_{t_i}/\bar\alpha_{t_{i-1}}`
        (with :math:`\bar\alpha_{t_0}=1`). Its ``model_steps`` attribute maps
        the new indices back to this schedule's steps (composed, if this
        schedule was itself respaced).

        Parameters
        ----------
        timesteps : array_like of int
            Distinct steps in 1..T, in any order.
        """
        if np.size(to_numpy(timesteps)) == 0:
            raise ValueError("timesteps must be a non-empty 1-D list of steps, got none")
        kept = self.check_step(timesteps, "timesteps", lo=1)
        if kept.ndim != 1:
            raise ValueError(f"timesteps must be a 1-D list of steps, got shape {kept.shape}")
        kept = np.sort(kept)
        if np.any(np.diff(kept) == 0):
            raise ValueError("timesteps must be distinct")
        log_ab = self.log_alpha_bar[np.concatenate(([0], kept))]
        return DiscreteSchedule.from_log_alpha_bar(log_ab, model_steps=np.concatenate(([0], self.model_steps[kept])))
