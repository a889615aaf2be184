r"""Continuous diffusion processes: VP, cosine VP, sub-VP and VE SDEs (Song et al. 2021).

Notation (Song et al. 2021, "Score-based generative modeling through SDEs";
Kingma et al. 2021 for the signal-to-noise ratio):

=====================  =======================================================
``t``                  time in [0, 1]; t = 0 is the data
``drift(x, t)``        :math:`f(x,t)=f(t)x` of :math:`dx=f(t)x\,dt+g(t)\,dw`
``diffusion(t)``       :math:`g(t)`
``mean_coef(t)``       :math:`\gamma_t`, so :math:`q(x_t|x_0)=\mathcal N(\gamma_t x_0,\sigma_t^2I)`
``std(t)``             :math:`\sigma_t`
``log_snr(t)``         :math:`\lambda_t=\log(\gamma_t^2/\sigma_t^2)`
``beta(t)``            VP family: :math:`\beta(t)`, with :math:`f=-\beta/2`
``integral_beta(t)``   VP family: :math:`B(t)=\int_0^t\beta(s)ds`
``sigma(t)``           VE: the noise level :math:`\sigma_{min}(\sigma_{max}/\sigma_{min})^t`
=====================  =======================================================

For every linear SDE the moments obey :math:`d\gamma/dt=f\gamma` and
:math:`d\sigma^2/dt=2f\sigma^2+g^2`; the closed forms below are the solutions
(``refdiff verify`` entry 7 integrates these ODEs numerically against them):

* VP:     :math:`\gamma=e^{-B/2}`, :math:`\sigma^2=1-e^{-B}` (``-expm1(-B)``)
* sub-VP: :math:`\gamma=e^{-B/2}`, :math:`\sigma=1-e^{-B}`,
  :math:`g^2=\beta(t)(1-e^{-2B})` (Song et al. eq. 29). Some lecture notes
  write :math:`\sigma^2=(1-e^{-B})` for sub-VP; the exponent 2 is right.
* VE:     :math:`\gamma=1`, :math:`\sigma^2=\sigma(t)^2-\sigma_{min}^2`. This is
  the exact marginal of the SDE started at t = 0. score_sde uses
  :math:`\sigma_t=\sigma(t)`, i.e. it treats the data as already perturbed
  with :math:`\sigma_{min}`; the two differ by at most
  :math:`\sigma_{min}^2` in variance.

All coefficients are computed in float64 on the host from host times and cast
to the data's dtype and device at use. Reverse-time drifts follow Anderson
(1982): :math:`f-g^2\nabla\log p_t` for the reverse SDE and
:math:`f-\tfrac12 g^2\nabla\log p_t` for the probability-flow ODE.
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

from .backend import finite_float_array, namespace, per_example, standard_normal, to_numpy

__all__ = ["SDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "sde_from_config"]


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive(name, value):
    if not (_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def _time_range(t_min, t_max):
    """Validated constructor times: ``0 < t_min < t_max <= 1``, as floats."""
    if not (_real(t_max) and 0.0 < t_max <= 1.0):
        raise ValueError(f"t_max must be a number in (0, 1], got {t_max!r}")
    if not (_real(t_min) and 0.0 < t_min < t_max):
        raise ValueError(f"t_min must be a number in (0, t_max) with t_max = {float(t_max)}, got {t_min!r}")
    return float(t_min), float(t_max)


class SDE:
    """Interface shared by the linear SDEs (the paper's objects, Song et al. 2021 sec. 3).

    Subclasses implement ``drift_coef``, ``diffusion``, ``log_mean_coef``,
    ``variance``, ``log_snr`` and ``t_from_log_snr`` on float64 host times;
    everything else is derived here. Data arguments (``x0``, ``x`` and a
    given ``noise``) must be finite: NaN or infinity raises ``ValueError``
    naming the argument.

    Attributes
    ----------
    t_min : float
        Smallest time a sampler should reach (the score is singular at t=0);
        a constructor refuses any outside (0, t_max) with ``ValueError``.
    t_max : float
        Largest usable time (1, except where the process is singular at t=1),
        in (0, 1].
    """

    t_min: float = 1e-3
    t_max: float = 1.0

    # --------------------------------------------------------- time handling
    def check_time(self, t, name: str = "t") -> np.ndarray | np.float64:
        """Validate time(s) ``t`` in [0, 1] and return them as host float64: a NumPy scalar for a Python or
        NumPy float, else an array of t's shape (0-d for other scalars).

        Raises
        ------
        TypeError
            If ``t`` is not real.
        ValueError
            If ``t`` is not finite, outside [0, 1], or more than 1-D.
        """
        if type(t) in (float, np.float64) and 0.0 <= t <= 1.0:  # the common scalar, without the array checks (each step)
            return np.float64(t)  # a NumPy scalar: arithmetic on it costs a fifth of a 0-d array's
        if isinstance(t, bool):
            raise TypeError(f"{name} must be a real time in [0, 1], got bool")
        arr = to_numpy(t)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must be a real time in [0, 1], got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if arr.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D (one time per example), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got NaN or infinity")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{arr.min()}, {arr.max()}]")
        return arr

    def _check_pair(self, s, t):
        """Validated host times (s, t) of q(x_t | x_s), with s <= t."""
        s, t = self.check_time(s, "s"), self.check_time(t, "t")
        if np.any(s > t):
            raise ValueError("s must not exceed t in q(x_t | x_s)")
        return s, t

    # ------------------------------------------------- per-subclass formulas
    def drift_coef(self, t) -> np.ndarray:
        """:math:`f(t)` in :math:`f(x,t)=f(t)x` (float64)."""
        raise NotImplementedError

    def diffusion(self, t) -> np.ndarray:
        """:math:`g(t)` (float64)."""
        raise NotImplementedError

    def log_mean_coef(self, t) -> np.ndarray:
        r""":math:`\log\gamma_t` (float64)."""
        raise NotImplementedError

    def variance(self, t) -> np.ndarray:
        r""":math:`\sigma_t^2` (float64), computed without cancellation."""
        raise NotImplementedError

    def log_snr(self, t) -> np.ndarray:
        r""":math:`\lambda_t=\log(\gamma_t^2/\sigma_t^2)`; ``+inf`` at t = 0."""
        raise NotImplementedError

    def t_from_log_snr(self, lam) -> np.ndarray:
        r"""Inverse of :meth:`log_snr` (needed by DPM-Solver, Lu et al. 2022)."""
        raise NotImplementedError

    # -------------------------------------------------------------- derived
    def mean_coef(self, t) -> np.ndarray:
        r""":math:`\gamma_t` (float64)."""
        return np.exp(self.log_mean_coef(t))

    def std(self, t) -> np.ndarray:
        r""":math:`\sigma_t` (float64)."""
        return np.sqrt(self.variance(t))

    def log_snr_at(self, t) -> np.ndarray:
        """Alias of :meth:`log_snr`, the name discrete schedules use."""
        return self.log_snr(t)

    def transition(self, s, t):
        r"""Coefficients of :math:`q(x_t|x_s)=\mathcal N(\gamma_{t|s}x_s,\sigma_{t|s}^2I)`, s <= t.

        :math:`\gamma_{t|s}=\gamma_t/\gamma_s`,
        :math:`\sigma^2_{t|s}=\sigma_t^2-\gamma_{t|s}^2\sigma_s^2`; subclasses
        override the variance where a cancellation-free form exists.
        """
        s, t = self._check_pair(s, t)
        gamma_ts = np.exp(self.log_mean_coef(t) - self.log_mean_coef(s))
        sigma2_ts = np.maximum(self.variance(t) - gamma_ts**2 * self.variance(s), 0.0)
        return gamma_ts, sigma2_ts

    def drift(self, x, t):
        """:math:`f(x,t)=f(t)x`, in ``x``'s dtype."""
        return self._drift(finite_float_array(x, "x"), t)

    def _drift(self, x, t):
        return per_example(self.drift_coef(t), x) * x

    def marginal(self, x0, t):
        r"""Mean and standard deviation of :math:`q(x_t|x_0)`.

        Returns
        -------
        mean : array like ``x0``
        std : array of shape () or (N, 1, ..., 1), ``x0``'s dtype
        """
        return self._marginal(finite_float_array(x0, "x0"), t)

    def _marginal(self, x0, t):
        return per_example(self.mean_coef(t), x0) * x0, per_example(self.std(t), x0)

    def sample_marginal(self, x0, t, rng=None, noise=None):
        r"""Draw :math:`x_t\sim q(x_t|x_0)`: :math:`\gamma_t x_0+\sigma_t\epsilon`."""
        x0 = finite_float_array(x0, "x0")
        if noise is None:
            noise = standard_normal(x0.shape, rng, like=x0)
        else:
            noise = finite_float_array(noise, "noise")
            if tuple(noise.shape) != tuple(x0.shape):
                raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        mean, std = self._marginal(x0, t)
        return mean + std * noise

    def prior_std(self) -> float:
        r"""Standard deviation of the prior :math:`p_1=\mathcal N(0,\sigma^2 I)`."""
        return 1.0

    def prior_sample(self, shape, rng=None, like=None, dtype=None):
        """Draw from the prior at t = 1 (on ``like``'s device and dtype if given)."""
        return self.prior_std() * standard_normal(shape, rng, like=like, dtype=dtype)

    def prior_log_prob(self, x):
        r"""Log-density of the prior, summed over every axis but the first.

        Works for any data shape (N, ...), not just images (PITFALLS 32).
        """
        x = finite_float_array(x, "x")
        xp = namespace(x)
        if x.ndim < 1:
            raise ValueError("x must have a batch axis, got a scalar")
        d = math.prod(x.shape[1:])
        var = self.prior_std() ** 2
        sq = xp.sum(xp.reshape(x * x, (x.shape[0], -1)), axis=1)
        return -0.5 * sq / var - 0.5 * d * math.log(2.0 * math.pi * var)

    def _score_at(self, x, t, score):
        if callable(score):
            score = score(x, t)
        if tuple(score.shape) != tuple(x.shape):
            raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
        return score

    def reverse_drift(self, x, t, score):
        r"""Drift of the reverse-time SDE, :math:`f(x,t)-g(t)^2\nabla\log p_t(x)` (Anderson 1982).

        ``score`` is the score at (x, t), or a callable ``score(x, t)``.
        Integrated from t = 1 to 0 with :math:`dt<0`.
        """
        x = finite_float_array(x, "x")
        return self._reverse_drift(x, t, self._score_at(x, t, score))

    def _squared_diffusion(self, x, t):
        """g(t)^2 as a factor of x's rows; a ValueError where it is infinite (a process singular at t)."""
        g2 = np.asarray(self.diffusion(t), dtype=np.float64) ** 2
        if not np.all(np.isfinite(g2)):
            t_bad = float(np.broadcast_to(t, g2.shape)[~np.isfinite(g2)].flat[0])
            raise ValueError(
                f"g(t)^2 is infinite at t = {t_bad:g}: {self!r} is singular there, and the SDE's drift with it. "
                "Start below it (a CosineVPSDE's default t_max = 0.9946 is), or use a sampler that steps there "
                "through the exact transition (ddpm, ddim, predictor_corrector's reverse-diffusion predictor)"
            )
        return per_example(g2, x)

    def _reverse_drift(self, x, t, score):
        """:meth:`reverse_drift` of a checked x and a score array (the samplers check both once a step)."""
        return self._drift(x, t) - self._squared_diffusion(x, t) * score

    def ode_drift(self, x, t, score):
        r"""Velocity of the probability-flow ODE, :math:`f(x,t)-\tfrac12 g(t)^2\nabla\log p_t(x)` (Song et al. eq. 13)."""
        x = finite_float_array(x, "x")
        return self._ode_drift(x, t, self._score_at(x, t, score))

    def _ode_drift(self, x, t, score):
        """:meth:`ode_drift` of a checked x and a score array."""
        return self._drift(x, t) - 0.5 * self._squared_diffusion(x, t) * score


class _VPFamily(SDE):
    r"""VP-type processes: :math:`f(t)=-\beta(t)/2`, :math:`\gamma_t=e^{-B(t)/2}`."""

    def beta(self, t) -> np.ndarray:
        r""":math:`\beta(t)` (float64)."""
        raise NotImplementedError

    def integral_beta(self, t) -> np.ndarray:
        r""":math:`B(t)=\int_0^t\beta(s)\,ds` (float64)."""
        raise NotImplementedError

    def integral_beta_between(self, s, t) -> np.ndarray:
        r""":math:`B(t)-B(s)=\int_s^t\beta`; subclasses give a form that does not cancel for close s, t."""
        return self.integral_beta(t) - self.integral_beta(s)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def log_mean_coef(self, t):
        return -0.5 * self.integral_beta(t)

    def transition(self, s, t):
        r"""For VP processes :math:`\gamma_{t|s}=e^{-\Delta B/2}` and :math:`\sigma^2_{t|s}=1-e^{-\Delta B}` (``-expm1``)."""
        s, t = self._check_pair(s, t)
        dB = np.where(s == t, 0.0, self.integral_beta_between(s, t))  # s == t == 1 is 0 * inf for cosine
        return np.exp(-0.5 * dB), 0.0 - np.expm1(-dB)


class VPSDE(_VPFamily):
    r"""Variance-preserving SDE with linear :math:`\beta(t)=\beta_{min}+t(\beta_{max}-\beta_{min})`.

    The continuous limit of DDPM (Song et al. 2021, eq. 11):
    ``linear_betas(T, beta_min / T, beta_max / T)`` is its discretisation on
    the grid t = i / T (see :meth:`from_linear_betas`, :meth:`discretize`).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got {beta_max} < {beta_min}")
        self.t_min, _ = _time_range(t_min, self.t_max)

    def __repr__(self):
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def config(self) -> dict:
        """Constructor arguments plus ``kind``: :func:`sde_from_config` rebuilds the process."""
        return {"kind": type(self).__name__, "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def beta(self, t):
        t = self.check_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t):
        t = self.check_time(t)
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def _t_from_integral(self, B):
        # root of (d/2) t^2 + beta_min t - B = 0, written without cancellation
        d = self.beta_max - self.beta_min
        with np.errstate(invalid="ignore"):  # B = inf (lambda = -inf) is t = inf, not inf / inf
            t = 2.0 * B / (self.beta_min + np.sqrt(self.beta_min**2 + 2.0 * d * B))
        return np.where(B == np.inf, np.inf, t)

    def diffusion(self, t):
        return np.sqrt(self.beta(t))

    def variance(self, t):
        return -np.expm1(-self.integral_beta(t))

    def integral_beta_between(self, s, t):
        s, t = self._check_pair(s, t)
        return (t - s) * (self.beta_min + 0.5 * (t + s) * (self.beta_max - self.beta_min))

    def log_snr(self, t):
        with np.errstate(divide="ignore"):
            return -np.log(np.expm1(self.integral_beta(t)))

    def t_from_log_snr(self, lam):
        lam = _check_lam(lam)
        B = np.logaddexp(0.0, -lam)  # log(1 + e^{-lambda}) without overflow
        return _check_inverse_time(self._t_from_integral(B))

    def discretize(self, T: int):
        r"""The :class:`~refdiff.schedules.DiscreteSchedule` with :math:`\bar\alpha_i=e^{-B(i/T)}` exactly.

        :math:`\beta_i = 1-e^{-(B(i/T)-B((i-1)/T))}`.
        """
        from .schedules import DiscreteSchedule, _check_T

        T = _check_T(T)
        return DiscreteSchedule.from_log_alpha_bar(-self.integral_beta(np.arange(T + 1) / T))

    @classmethod
    def from_linear_betas(cls, betas, rtol: float = 1e-9):
        r"""The VP SDE that ``linear_betas(T, beta_min / T, beta_max / T)`` discretises.

        Raises ``ValueError`` if ``betas`` are not linear in t.
        """
        from .schedules import _validated_betas

        b = _validated_betas(betas)
        T = b.shape[0] - 1
        line = np.linspace(b[1], b[-1], T)
        if not np.allclose(b[1:], line, rtol=rtol, atol=0.0):
            raise ValueError("betas must be linear in t to map to a VPSDE")
        return cls(beta_min=T * b[1], beta_max=T * b[-1])


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE (Song et al. 2021, eq. 29): VP drift, :math:`g^2=\beta(t)(1-e^{-2B(t)})`.

    Its marginal variance :math:`(1-e^{-B})^2` lies below the VP one.
    """

    def diffusion(self, t):
        return np.sqrt(self.beta(t) * -np.expm1(-2.0 * self.integral_beta(t)))

    def variance(self, t):
        return np.expm1(-self.integral_beta(t)) ** 2

    def transition(self, s, t):
        r""":math:`\sigma^2_{t|s}=(1-e^{-\Delta B})(1-e^{-(B(s)+B(t))})`, the sub-VP variance without cancellation."""
        s, t = self._check_pair(s, t)
        dB = self.integral_beta_between(s, t)
        sum_B = self.integral_beta(s) + self.integral_beta(t)
        return np.exp(-0.5 * dB), np.expm1(-dB) * np.expm1(-sum_B)

    def log_snr(self, t):
        B = self.integral_beta(t)
        with np.errstate(divide="ignore"):
            return -B - 2.0 * np.log(-np.expm1(-B))

    def t_from_log_snr(self, lam):
        lam = _check_lam(lam)
        # gamma / sigma = e^{lam/2} with sigma = 1 - gamma^2 gives 1/gamma = y + sqrt(y^2 + 1), y = e^{-lam/2}/2
        B = 2.0 * np.arcsinh(0.5 * np.exp(-0.5 * lam))
        return _check_inverse_time(self._t_from_integral(B))

    def discretize(self, T: int):
        raise TypeError("a sub-VP SDE has no DDPM discretisation (its variance is not 1 - alpha_bar)")


class CosineVPSDE(_VPFamily):
    r"""VP SDE with the cosine schedule (Nichol & Dhariwal 2021), in continuous time.

    :math:`\gamma_t=\cos(a_t)/\cos(a_0)` with :math:`a_t=\frac{t+s}{1+s}\frac\pi2`,
    :math:`\beta(t)=\frac{\pi}{1+s}\tan a_t`. The process is singular at
    t = 1 (:math:`\gamma_1=0`, :math:`\beta=\infty`), so ``t_max`` defaults to
    0.9946, where DPM-Solver clips it (PITFALLS 7). There the log-SNR
    :math:`\lambda_t=\log(\gamma_t^2/\sigma_t^2)` of :meth:`log_snr` is -9.56;
    DPM-Solver's :math:`\lambda_t=\log(\alpha_t/\sigma_t)` (its
    :math:`\alpha_t` is :math:`\gamma_t` here) is half the log-SNR, -4.78.
    :math:`\sigma_t^2=\sin(a_t+a_0)\sin(a_t-a_0)/\cos^2a_0` has no cancellation
    near t = 0.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not (_real(s) and math.isfinite(s) and s >= 0):
            raise ValueError(f"s must be a finite number >= 0, got {s!r}")
        self.s = float(s)
        self.t_min, self.t_max = _time_range(t_min, t_max)
        self._a0 = self.s / (1.0 + self.s) * 0.5 * math.pi

    def __repr__(self):
        return f"CosineVPSDE(s={self.s}, t_max={self.t_max})"

    def config(self) -> dict:
        """Constructor arguments plus ``kind``: :func:`sde_from_config` rebuilds the process."""
        return {"kind": "CosineVPSDE", "s": self.s, "t_min": self.t_min, "t_max": self.t_max}

    def _angles(self, t):
        """(a_t, a_t - a_0, pi/2 - a_t), each formed directly so that none cancels near t = 0 or t = 1."""
        t = self.check_time(t)
        scale = 0.5 * math.pi / (1.0 + self.s)
        d = t * scale
        return self._a0 + d, d, (1.0 - t) * scale

    def _cos_a(self, t):
        return np.sin(self._angles(t)[2])  # cos a_t = sin(pi/2 - a_t): exactly 0 at t = 1

    def beta(self, t):
        a, _, e = self._angles(t)
        with np.errstate(divide="ignore"):  # beta(1) = inf: the process is singular there
            return math.pi / (1.0 + self.s) * np.cos(e) / np.sin(e)

    def integral_beta(self, t):
        return -np.log1p(-self.variance(t))

    def integral_beta_between(self, s, t):
        # B(t) - B(s) = -2 log(cos a_t / cos a_s), and cos(a_s + d)/cos a_s - 1 = -2 sin^2(d/2) - tan(a_s) sin d
        s, t = self._check_pair(s, t)
        a_s, _, e_s = self._angles(s)
        _, _, e_t = self._angles(t)
        d = (t - s) / (1.0 + self.s) * 0.5 * math.pi
        with np.errstate(divide="ignore", invalid="ignore"):
            # tan a_s = sin a_s / sin(pi/2 - a_s): exactly 0 at s = 0 when the offset is 0
            close = -2.0 * np.log1p(-2.0 * np.sin(0.5 * d) ** 2 - np.sin(a_s) / np.sin(e_s) * np.sin(d))
            far = -2.0 * (np.log(np.sin(e_t)) - np.log(np.sin(e_s)))  # exact 0 -> inf at t = 1
        # the log1p form is exact while the ratio is near 1; the difference of logs is exact away from it
        return np.where(np.abs(far) < 1.0, close, far)

    def diffusion(self, t):
        return np.sqrt(self.beta(t))

    def log_mean_coef(self, t):
        with np.errstate(divide="ignore"):
            return np.log(self._cos_a(t)) - math.log(math.cos(self._a0))

    def variance(self, t):
        a, d, _ = self._angles(t)
        return np.sin(a + self._a0) * np.sin(d) / math.cos(self._a0) ** 2

    def log_snr(self, t):
        a, d, e = self._angles(t)
        with np.errstate(divide="ignore"):
            return 2.0 * np.log(np.sin(e)) - np.log(np.sin(a + self._a0) * np.sin(d))

    def t_from_log_snr(self, lam):
        lam = _check_lam(lam)
        a0 = self._a0
        var = np.exp(-np.logaddexp(0.0, lam))  # sigma^2 = sigmoid(-lam)
        # cos^2 a = (1 - var) cos^2 a0 and sin^2 a = sin^2 a0 + var cos^2 a0; atan2 is well conditioned
        cos_a = np.exp(-0.5 * np.logaddexp(0.0, -lam)) * math.cos(a0)
        a = np.arctan2(np.sqrt(math.sin(a0) ** 2 + var * math.cos(a0) ** 2), cos_a)
        # small d = a - a0 from sin(a + a0) sin(d) = var cos^2 a0, which has no cancellation
        with np.errstate(invalid="ignore", divide="ignore"):
            d_small = np.arcsin(np.minimum(var * math.cos(a0) ** 2 / np.sin(a + a0), 1.0))
        d_small = np.where(var == 0, 0.0, d_small)  # lam = +inf is t = 0, also when s = 0
        d = np.where(a - a0 < 0.5, d_small, a - a0)
        return _check_inverse_time(d * 2.0 * (1.0 + self.s) / math.pi)


class VESDE(SDE):
    r"""Variance-exploding SDE (Song et al. 2021, eq. 9; NCSN's continuous limit).

    :math:`\sigma(t)=\sigma_{min}(\sigma_{max}/\sigma_{min})^t`, :math:`f=0`,
    :math:`g(t)=\sigma(t)\sqrt{2\log(\sigma_{max}/\sigma_{min})}`; exact
    marginal std :math:`\sqrt{\sigma(t)^2-\sigma_{min}^2}` (see module notes
    for score_sde's convention). The prior is
    :math:`\mathcal N(0,(\sigma_{max}^2-\sigma_{min}^2)I)`.
    """

    t_min = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
        # the variances are sigma_min^2 expm1(2 L t), up to sigma_max^2: both squares must be normal float64
        if self.sigma_min * self.sigma_min < sys.float_info.min:
            raise ValueError(f"sigma_min must be at least 1.5e-154 (its square a normal float64), got {sigma_min!r}")
        if not math.isfinite(self.sigma_max * self.sigma_max):
            raise ValueError(f"sigma_max must be below 1.3e154 (its square a finite float64), got {sigma_max!r}")
        self.t_min, _ = _time_range(t_min, self.t_max)
        self._L = math.log(self.sigma_max / self.sigma_min)

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def config(self) -> dict:
        """Constructor arguments plus ``kind``: :func:`sde_from_config` rebuilds the process."""
        return {"kind": "VESDE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}

    def sigma(self, t):
        r"""Noise level :math:`\sigma(t)` (float64)."""
        return self.sigma_min * np.exp(self.check_time(t) * self._L)

    def drift_coef(self, t):
        return np.zeros_like(self.check_time(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._L)

    def log_mean_coef(self, t):
        return np.zeros_like(self.check_time(t))

    def variance(self, t):
        return self.sigma_min**2 * np.expm1(2.0 * self._L * self.check_time(t))

    def transition(self, s, t):
        r""":math:`\sigma^2_{t|s}=\sigma_{min}^2e^{2Ls}(e^{2L(t-s)}-1)`, from ``expm1``."""
        s, t = self._check_pair(s, t)
        sigma2 = self.sigma_min**2 * np.exp(2.0 * self._L * s) * np.expm1(2.0 * self._L * (t - s))
        return np.ones_like(sigma2), sigma2

    def log_snr(self, t):
        with np.errstate(divide="ignore"):
            return -np.log(self.variance(t))

    def t_from_log_snr(self, lam):
        lam = _check_lam(lam)
        return _check_inverse_time(np.logaddexp(0.0, -lam - 2.0 * math.log(self.sigma_min)) / (2.0 * self._L))

    def prior_std(self) -> float:
        r""":math:`\sqrt{(\sigma_{max}-\sigma_{min})(\sigma_{max}+\sigma_{min})}`: the difference is exact where
        sigma_max is within a factor 2 of sigma_min, where the difference of the squares would cancel."""
        return math.sqrt((self.sigma_max - self.sigma_min) * (self.sigma_max + self.sigma_min))


def _check_lam(lam) -> np.ndarray:
    arr = np.asarray(to_numpy(lam), dtype=np.float64)
    if np.any(np.isnan(arr)):
        raise ValueError("lam must not be NaN")
    return arr


def _check_inverse_time(t) -> np.ndarray:
    if not np.all((t >= 0.0) & (t <= 1.0 + 1e-12)):  # also NaN
        raise ValueError(
            f"lam lies outside the range of log_snr on [0, 1] (it maps to t in [{np.min(t)}, {np.max(t)}])"
        )
    return np.clip(t, 0.0, 1.0)


def sde_from_config(config: dict) -> SDE:
    """Rebuild a process from its :meth:`config` (as stored in checkpoints)."""
    kinds = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "CosineVPSDE": CosineVPSDE, "VESDE": VESDE}
    if not isinstance(config, dict) or config.get("kind") not in kinds:
        got = config.get("kind") if isinstance(config, dict) else config
        raise ValueError(f"process kind must be one of {sorted(kinds)}, got {got!r}")
    args = {k: v for k, v in config.items() if k != "kind"}
    return kinds[config["kind"]](**args)
