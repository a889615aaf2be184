r"""Exact likelihoods through the probability-flow ODE, PF-ODE encoding, and bits per dimension.

Notation (Song et al. 2021, "Score-based generative modeling through SDEs",
sec. 4.3 and appendix D.2; Chen et al. 2018; Grathwohl et al. 2019, FFJORD):

==========================  ====================================================
:math:`v(x,t)`              PF-ODE velocity :math:`f(t)x-\tfrac12g(t)^2s(x,t)`
                            (``process.ode_drift``), :math:`s\approx\nabla\log p_t`
:math:`\nabla\cdot v`       :math:`Df(t)-\tfrac12g(t)^2\,\nabla\cdot s(x,t)`, D features
:math:`\Delta(x_0)`         :math:`\int_{t_0}^{t_1}\nabla\cdot v(x_t,t)\,dt` along the ODE path
:math:`t_0,\ t_1`           ``t_start`` (default ``process.t_min``), ``t_end``
                            (default ``process.t_max``)
:math:`J`                   the Jacobian :math:`\partial s/\partial x`; ``score_vjp(x, t, u)``
                            returns :math:`J^\top u`
==========================  ====================================================

Instantaneous change of variables (Chen et al. 2018, thm. 1): along a path of
:math:`\dot x=v(x,t)`, :math:`\frac{d}{dt}\log p_t(x_t)=-\nabla\cdot v(x_t,t)`.
Integrating the augmented system

.. math::

    \frac{d}{dt}\begin{bmatrix}x\\ \Delta\end{bmatrix}=
    \begin{bmatrix}v(x,t)\\ \nabla\cdot v(x,t)\end{bmatrix},\qquad
    x(t_0)=x_0,\ \Delta(t_0)=0,

from :math:`t_0` up to :math:`t_1` gives
:math:`\log p_{t_0}(x_0)=\log p_{t_1}(x(t_1))+\Delta(t_1)`, with the prior
:math:`\mathcal N(0,\sigma_{prior}^2I)` standing in for :math:`p_{t_1}` (Song
et al. eq. 39-40). The divergence of the score is

* ``"exact"``: from ``score_divergence(x, t)`` if given, otherwise
  :math:`\sum_je_j^\top J^\top e_j` from D calls of ``score_vjp`` with the basis
  vectors;
* ``"hutchinson"``: :math:`\mathbb E[u^\top J^\top u]=\mathrm{tr}\,J` for probes
  with :math:`\mathbb E[uu^\top]=I` (Rademacher or Gaussian; Hutchinson 1989,
  FFJORD sec. 3.1). Each example keeps its probes for the whole solve, so the
  integrand is a smooth function of t and the estimate of
  :math:`\Delta` is unbiased.

The whole batch is one ODE system for :func:`scipy.integrate.solve_ivp`: one
vectorised model call per right-hand-side evaluation. Adaptive step control
couples the examples only through the shared step sizes (an example's result
agrees with the same example solved alone to within the tolerances, not bit
for bit), and every batch finishes after the same number of model calls
(PITFALLS 28: no rank waits on another). The state is float64 on the host;
models receive float64 NumPy arrays of ``x0``'s shape and a Python float t.
solve_ivp's per-call overhead (PITFALLS 23) is small next to a neural
network's forward pass.

Discrete data (:func:`bits_per_dim`) are dequantised uniformly (Theis et al.
2016; Song et al. 2021 appendix D.2): see that function for the exact map
from integer levels to bins and the resulting offset.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import losses
from .backend import as_float_array, as_rng, check_finite, to_numpy

__all__ = [
    "LikelihoodResult",
    "ODEMap",
    "RoundTrip",
    "ode_log_likelihood",
    "encode",
    "decode",
    "round_trip_error",
    "dequantize",
    "bits_per_dim",
]

_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
_PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class LikelihoodResult:
    r"""What :func:`ode_log_likelihood` returns.

    Attributes
    ----------
    log_prob : ndarray, shape (N,)
        :math:`\log p_{t_0}(x_0)` in nats (for Hutchinson, the mean over probes).
    x_end : ndarray, shape of ``x0``
        The ODE state at ``t_end`` (the encoding of ``x0``).
    prior_log_prob : ndarray, shape (N,)
        :math:`\log p_{t_1}(x(t_1))` as given by the prior.
    delta : ndarray, shape (N,) or (N, n_probes)
        :math:`\int\nabla\cdot v\,dt`; one column per probe for Hutchinson.
    std_err : ndarray of shape (N,), or None
        Standard error of ``log_prob`` over the probes (Hutchinson with
        ``n_probes > 1``): sample std (ddof=1) of ``delta`` / sqrt(n_probes).
    nfe : int
        Right-hand-side evaluations of the ODE, which equals the number of
        ``score_fn`` calls (each over the whole batch).
    n_vjp, n_divergence : int
        Calls of ``score_vjp`` (D per evaluation for the exact divergence
        from vjps, ``n_probes`` for Hutchinson) and of ``score_divergence``
        (one per evaluation). Through a network a vjp costs a forward and a
        backward pass; converting the counts to time is left to the caller.
    """

    log_prob: np.ndarray
    x_end: np.ndarray
    prior_log_prob: np.ndarray
    delta: np.ndarray
    std_err: np.ndarray | None
    nfe: int
    n_vjp: int
    n_divergence: int


class ODEMap(NamedTuple):
    """``(x, nfe)``: the PF-ODE image of the input and the ``score_fn`` calls it took."""

    x: np.ndarray
    nfe: int


class RoundTrip(NamedTuple):
    """Reconstruction error of ``decode(encode(x0))``: max and mean absolute error over all entries."""

    max_abs: float
    mean_abs: float
    nfe_encode: int
    nfe_decode: int


# ------------------------------------------------------------------ validation
def _check_process(process):
    needed = ("ode_drift", "drift_coef", "diffusion", "prior_log_prob", "t_min", "t_max")
    missing = [a for a in needed if not hasattr(process, a)]
    if missing:
        raise TypeError(
            f"process must be a continuous-time SDE (refdiff.sde: VPSDE, SubVPSDE, VESDE, ...) with {', '.join(needed)}; "
            f"got {type(process).__name__}, which lacks {', '.join(missing)}"
        )


def _check_callable(fn, name):
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_tol(value, name):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_span(process, t_start, t_end):
    """Validated (t_start, t_end) with 0 <= t_start < t_end <= min(1, process.t_max), defaults from the process."""
    t0 = process.t_min if t_start is None else t_start
    t1 = process.t_max if t_end is None else t_end
    for name, t in (("t_start", t0), ("t_end", t1)):
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"{name} must be a real scalar in [0, 1], got {t!r}")
    if not t0 < t1:
        raise ValueError(f"t_start must be smaller than t_end, got t_start={t0!r}, t_end={t1!r}")
    t_max = float(process.t_max)
    if t1 > t_max:  # e.g. the cosine VP process, whose diffusion is infinite at t = 1
        raise ValueError(f"t_end must be at most the process's t_max = {t_max!r}, got {t1!r}")
    return float(t0), float(t1)


def _check_method(method):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def _host_batch(x, name):
    """``x`` as a finite float64 host array of shape (N, ...) with N >= 1 and at least one feature."""
    x = as_float_array(x, name)
    if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) < 1:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1 and at least one feature axis, got {tuple(x.shape)}")
    check_finite(x, name)
    host = np.asarray(to_numpy(x))
    return host.astype(np.float64), host.dtype


def _checked(out, name, shape, t):
    """A model output as float64 host array of ``shape``, or a ValueError naming the callable and t."""
    out = np.asarray(to_numpy(out), dtype=np.float64)
    if out.shape != shape:
        raise ValueError(f"{name} returned shape {out.shape} at t={t:.6g}; expected {shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} returned {int(np.sum(~np.isfinite(out)))} non-finite value(s) at t={t:.6g}")
    return out


def _solve(fun, t_span, y0, rtol, atol, method, what, calls):
    """One solve_ivp run keeping only the final state; a RuntimeError if the solver fails."""
    from scipy.integrate import solve_ivp

    sol = solve_ivp(fun, t_span, y0, method=method, rtol=rtol, atol=atol, t_eval=[t_span[1]])
    if not sol.success:
        raise RuntimeError(f"{what}: solve_ivp ({method}) failed after {calls()} model evaluations: {sol.message}")
    return sol.y[:, -1]


# ------------------------------------------------------------- the likelihood
def _divergence_fn(score_divergence, score_vjp, divergence, probes, shape, counts):
    """The divergence of the score at (x, t): (N,) exact, or (N, P) one column per Hutchinson probe."""
    N = shape[0]
    D = math.prod(shape[1:])
    if divergence == "exact" and score_divergence is not None:

        def div(x, t):
            counts["div"] += 1
            return _checked(score_divergence(x, t), "score_divergence", (N,), t)

    elif divergence == "exact":
        basis = np.zeros((N, D))

        def div(x, t):
            out = np.zeros(N)
            for j in range(D):  # e_j^T J^T e_j, summed over j, is tr J
                basis[:, j] = 1.0
                counts["vjp"] += 1
                out += _checked(score_vjp(x, t, basis.reshape(shape)), "score_vjp", shape, t).reshape(N, D)[:, j]
                basis[:, j] = 0.0
            return out

    else:

        def div(x, t):
            cols = []
            for p in range(probes.shape[1]):  # u^T J^T u for this example's fixed probe p
                u = probes[:, p, :]
                counts["vjp"] += 1
                Ju = _checked(score_vjp(x, t, u.reshape(shape)), "score_vjp", shape, t).reshape(N, D)
                cols.append(np.sum(u * Ju, axis=1))
            return np.stack(cols, axis=1)

    return div


def _draw_probes(kind, N, P, D, rng):
    """Probes of shape (N, P, D) with E[u u^T] = I; example i's are the i-th block of the stream, whatever N is."""
    gen = as_rng(rng)
    if kind == "rademacher":
        return np.where(gen.random((N, P, D)) < 0.5, -1.0, 1.0)
    return gen.standard_normal((N, P, D))


def ode_log_likelihood(
    process,
    score_fn,
    x0,
    *,
    divergence="exact",
    score_divergence=None,
    score_vjp=None,
    probe="rademacher",
    n_probes=1,
    t_start=None,
    t_end=None,
    rtol=1e-6,
    atol=1e-6,
    prior_log_prob=None,
    rng=None,
    method="RK45",
):
    r"""Log-likelihood :math:`\log p_{t_0}(x_0)` by the instantaneous change of variables along the PF-ODE.

    Song et al. 2021, sec. 4.3 and appendix D.2 (eq. 39-40); Chen et al.
    2018, thm. 1; Grathwohl et al. 2019 (FFJORD). Integrates
    :math:`\tfrac{d}{dt}[x,\Delta]=[v,\nabla\cdot v]` from ``t_start`` to
    ``t_end`` with :math:`v=f(t)x-\tfrac12g(t)^2s(x,t)` and
    :math:`\nabla\cdot v=Df(t)-\tfrac12g(t)^2\nabla\cdot s`, then returns
    :math:`\log p_{t_1}(x(t_1))+\Delta`. See the module notes.

    Parameters
    ----------
    process : SDE
        A continuous process of :mod:`refdiff.sde`.
    score_fn : callable
        ``score_fn(x, t) -> array`` of ``x``'s shape, the score at the scalar
        time ``t`` (a Python float); ``x`` is a float64 NumPy array (N, ...).
    x0 : array, shape (N, ...)
        Points whose log-density at ``t_start`` is wanted; finite.
    divergence : {"exact", "hutchinson"}
        How :math:`\nabla\cdot s` is obtained (see module notes).
    score_divergence : callable, optional
        ``score_divergence(x, t) -> (N,)``, the exact divergence of the
        score; used by ``"exact"`` in preference to ``score_vjp``.
    score_vjp : callable, optional
        ``score_vjp(x, t, u) -> array`` of ``x``'s shape, the product
        :math:`J^\top u` of ``u`` with the score's Jacobian (for an exact
        score J is a symmetric Hessian, so a jvp serves as well). Needed by
        ``"hutchinson"``, and by ``"exact"`` without ``score_divergence``
        (D calls per evaluation).
    probe : {"rademacher", "gaussian"}
        Hutchinson probe distribution: entries :math:`\pm1` with probability
        1/2 (smaller variance: :math:`2\sum_{i\ne j}J_{ij}^2` against
        Gaussian's :math:`2\|J\|_F^2` for symmetric J) or standard normal.
    n_probes : int
        Probes per example (Hutchinson); each has its own :math:`\Delta`
        column, and ``log_prob`` uses their mean. Must be 1 for ``"exact"``.
    t_start, t_end : float, optional
        :math:`0\le t_0<t_1\le 1`; default ``process.t_min``,
        ``process.t_max``.
    rtol, atol : float
        solve_ivp tolerances on the whole state (x and :math:`\Delta`).
    prior_log_prob : callable, optional
        ``(x) -> (N,)``, the log-density at ``t_end``; default
        ``process.prior_log_prob``. Passing the exact :math:`\log p_{t_1}`
        of a known density removes the prior mismatch (tests do this).
    rng : None, int, SeedSequence, BitGenerator or Generator
        Source of the Hutchinson probes (SPEC 7), drawn once before the
        solve as an (N, n_probes, D) array: example i's probes do not depend
        on the batch size.
    method : str
        A solve_ivp method: "RK45" (default), "RK23", "DOP853", "Radau",
        "BDF" or "LSODA".

    Returns
    -------
    LikelihoodResult
        ``log_prob`` (N,), ``x_end``, ``prior_log_prob``, ``delta``,
        ``std_err`` (Hutchinson with n_probes > 1, else None), ``nfe``
        (score calls = ODE right-hand-side evaluations), ``n_vjp``,
        ``n_divergence``. Arrays are in ``x0``'s floating dtype.

    Raises
    ------
    TypeError
        For a process that is not a continuous SDE, or a non-callable model.
    ValueError
        For bad shapes, non-finite ``x0``, times outside
        :math:`0\le t_0<t_1\le1`, unknown names, a missing ``score_vjp``,
        or a model output of the wrong shape or with NaN/infinity (the
        message names the callable and the time).
    RuntimeError
        If solve_ivp fails.
    """
    _check_process(process)
    _check_callable(score_fn, "score_fn")
    x, dtype = _host_batch(x0, "x0")
    shape = x.shape
    N, D = shape[0], math.prod(shape[1:])
    t0, t1 = _check_span(process, t_start, t_end)
    rtol, atol = _check_tol(rtol, "rtol"), _check_tol(atol, "atol")
    _check_method(method)
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if probe not in _PROBES:
        raise ValueError(f"probe must be one of {_PROBES}, got {probe!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, numbers.Integral) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    for name, fn in (("score_divergence", score_divergence), ("score_vjp", score_vjp), ("prior_log_prob", prior_log_prob)):
        if fn is not None:
            _check_callable(fn, name)
    if divergence == "exact":
        if score_divergence is None and score_vjp is None:
            raise ValueError("divergence='exact' needs score_divergence(x, t) or score_vjp(x, t, u); got neither")
        if n_probes != 1:
            raise ValueError(f"n_probes applies to divergence='hutchinson' only; got n_probes={n_probes} with 'exact'")
    else:
        if score_vjp is None:
            raise ValueError("divergence='hutchinson' needs score_vjp(x, t, u); got None")
        if score_divergence is not None:
            raise ValueError("score_divergence is used by divergence='exact' only; pass one or the other")
    P = int(n_probes) if divergence == "hutchinson" else 0
    probes = _draw_probes(probe, N, P, D, rng) if P else None

    counts = {"score": 0, "vjp": 0, "div": 0}
    div_s = _divergence_fn(score_divergence, score_vjp, divergence, probes, shape, counts)
    n_delta = max(P, 1)

    def rhs(t, y):
        t = float(t)
        xt = y[: N * D].reshape(shape)
        counts["score"] += 1
        s = _checked(score_fn(xt, t), "score_fn", shape, t)
        v = process.ode_drift(xt, t, s)  # f(t) x - g(t)^2 s / 2
        f, g2 = float(process.drift_coef(t)), float(process.diffusion(t)) ** 2
        div_v = D * f - 0.5 * g2 * div_s(xt, t)  # (N,) or (N, P)
        return np.concatenate([np.reshape(v, -1), np.reshape(div_v, -1)])

    y0 = np.concatenate([x.reshape(-1), np.zeros(N * n_delta)])
    y1 = _solve(rhs, (t0, t1), y0, rtol, atol, method, "ode_log_likelihood", lambda: counts["score"])
    x_end = y1[: N * D].reshape(shape)
    delta = y1[N * D :].reshape(N, n_delta) if P else y1[N * D :]
    prior = process.prior_log_prob if prior_log_prob is None else prior_log_prob
    log_p1 = np.asarray(to_numpy(prior(x_end)), dtype=np.float64)
    if log_p1.shape != (N,) or not np.all(np.isfinite(log_p1)):
        raise ValueError(f"prior_log_prob must return {N} finite values (shape ({N},)), got shape {log_p1.shape}")
    est = delta.mean(axis=1) if P else delta
    std_err = delta.std(axis=1, ddof=1) / math.sqrt(P) if P > 1 else None
    def cast(a):
        return a.astype(dtype, copy=False)

    return LikelihoodResult(
        log_prob=cast(log_p1 + est),
        x_end=cast(x_end),
        prior_log_prob=cast(log_p1),
        delta=cast(delta),
        std_err=None if std_err is None else cast(std_err),
        nfe=counts["score"],
        n_vjp=counts["vjp"],
        n_divergence=counts["div"],
    )


# ------------------------------------------------------------ encode / decode
def _pf_ode_map(process, score_fn, x, t_from, t_to, rtol, atol, method, what):
    """Integrate the PF-ODE dx/dt = f x - g^2 s / 2 from ``t_from`` to ``t_to`` (either direction)."""
    shape = x.shape
    calls = [0]

    def rhs(t, y):
        t = float(t)
        xt = y.reshape(shape)
        calls[0] += 1
        s = _checked(score_fn(xt, t), "score_fn", shape, t)
        return np.reshape(process.ode_drift(xt, t, s), -1)

    y1 = _solve(rhs, (t_from, t_to), x.reshape(-1), rtol, atol, method, what, lambda: calls[0])
    return y1.reshape(shape), calls[0]


def _map_args(process, score_fn, x, name, t_start, t_end, rtol, atol, method):
    _check_process(process)
    _check_callable(score_fn, "score_fn")
    x, dtype = _host_batch(x, name)
    t0, t1 = _check_span(process, t_start, t_end)
    _check_method(method)
    return x, dtype, t0, t1, _check_tol(rtol, "rtol"), _check_tol(atol, "atol")


def encode(process, score_fn, x0, *, t_start=None, t_end=None, rtol=1e-6, atol=1e-6, method="RK45"):
    r"""Encode data: the PF-ODE (Song et al. 2021 eq. 13) from ``t_start`` to ``t_end``, :math:`x_{t_0}\mapsto x_{t_1}`.

    The map is deterministic and invertible (up to the solver's error), the
    latent code of Song et al. sec. 4.3. Same model contract, times and
    tolerances as :func:`ode_log_likelihood`; one solve_ivp run for the batch.

    Returns
    -------
    ODEMap
        ``(x, nfe)``: the encodings in ``x0``'s shape and floating dtype, and
        the number of ``score_fn`` calls.
    """
    x, dtype, t0, t1, rtol, atol = _map_args(process, score_fn, x0, "x0", t_start, t_end, rtol, atol, method)
    out, nfe = _pf_ode_map(process, score_fn, x, t0, t1, rtol, atol, method, "encode")
    return ODEMap(out.astype(dtype, copy=False), nfe)


def decode(process, score_fn, x_T, *, t_start=None, t_end=None, rtol=1e-6, atol=1e-6, method="RK45"):
    r"""Decode latents: the PF-ODE backwards from ``t_end`` to ``t_start``, :math:`x_{t_1}\mapsto x_{t_0}`.

    The inverse of :func:`encode` (same arguments); with prior samples as
    ``x_T`` it is a deterministic sampler.

    Returns
    -------
    ODEMap
        ``(x, nfe)`` as for :func:`encode`.
    """
    x, dtype, t0, t1, rtol, atol = _map_args(process, score_fn, x_T, "x_T", t_start, t_end, rtol, atol, method)
    out, nfe = _pf_ode_map(process, score_fn, x, t1, t0, rtol, atol, method, "decode")
    return ODEMap(out.astype(dtype, copy=False), nfe)


def round_trip_error(process, score_fn, x0, *, t_start=None, t_end=None, rtol=1e-6, atol=1e-6, method="RK45"):
    r"""Max and mean absolute error of ``decode(encode(x0))`` against ``x0``.

    Measures the solver error of the PF-ODE map at the given tolerances (an
    exact flow is a bijection); arguments as for :func:`encode`.

    Returns
    -------
    RoundTrip
        ``(max_abs, mean_abs, nfe_encode, nfe_decode)``.
    """
    kw = {"t_start": t_start, "t_end": t_end, "rtol": rtol, "atol": atol, "method": method}
    x, _ = _host_batch(x0, "x0")
    z, nfe_e = encode(process, score_fn, x, **kw)
    x_rec, nfe_d = decode(process, score_fn, z, **kw)
    err = np.abs(np.asarray(x_rec, dtype=np.float64) - x)
    return RoundTrip(float(err.max()), float(err.mean()), nfe_e, nfe_d)


# ---------------------------------------------------------------- bits / dim
def _check_levels(codes, bits):
    """Integer levels k in {0, ..., 2**bits - 1} as a float64 host array (N, ...)."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in [1, 32], got {bits!r}")
    k = as_float_array(codes, "codes")
    if k.ndim < 2 or k.shape[0] < 1 or math.prod(k.shape[1:]) < 1:
        raise ValueError(f"codes must have shape (N, ...) with N >= 1 and at least one feature axis, got {tuple(k.shape)}")
    k = np.asarray(to_numpy(k), dtype=np.float64)
    check_finite(k, "codes")
    n_levels = 2**bits
    bad = (k != np.round(k)) | (k < 0) | (k > n_levels - 1)
    if np.any(bad):
        raise ValueError(
            f"codes must be integers in [0, {n_levels - 1}] (the levels of {bits}-bit data, not values scaled to a range); "
            f"got {int(bad.sum())} value(s) outside, e.g. {float(k[bad].flat[0])!r}"
        )
    return k


def _check_range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data_range must be a pair (lo, hi) of finite numbers with lo < hi, got {data_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be a pair (lo, hi) of finite numbers with lo < hi, got {data_range!r}")
    return lo, hi


def dequantize(codes, *, bits=8, data_range=(-1.0, 1.0), rng=None):
    r"""Uniformly dequantised data :math:`x=lo+(k+u)\,w`, :math:`u\sim U(0,1)`, :math:`w=(hi-lo)/2^{bits}`.

    Level k owns the bin :math:`[lo+kw,\ lo+(k+1)w)`; the :math:`2^{bits}`
    bins tile :math:`[lo, hi)` without gaps or overlap. For 8-bit data and
    the default range this is score_sde's ``(k + u) / 256`` followed by
    ``2 x - 1``: bins of width 2/256 on [-1, 1). The noise is drawn with
    shape ``codes.shape`` (example i uses the i-th block of the stream, so it
    does not depend on the batch size).

    Returns
    -------
    ndarray, float64, shape of ``codes``
    """
    k = _check_levels(codes, bits)
    lo, hi = _check_range(data_range)
    w = (hi - lo) / 2**bits
    return lo + (k + as_rng(rng).random(k.shape)) * w


def bits_per_dim(log_prob_fn, codes, *, bits=8, data_range=(-1.0, 1.0), n_samples=1, rng=None):
    r"""Bits per dimension of discrete data under a continuous density, by uniform dequantisation.

    Theis et al. 2016, sec. 3.1; Song et al. 2021, appendix D.2 (Ho et al.
    2020 instead use a discretised decoder, :func:`refdiff.losses.vlb_terms`).
    With :math:`w=(hi-lo)/2^{bits}` and :math:`x=lo+(k+u)w` (:func:`dequantize`),

    .. math::

        \log P(k)=\log\int_{[0,1)^D}p(lo+(k+u)w)\,w^D\,du
        \ \ge\ \mathbb E_u[\log p(lo+(k+u)w)]+D\log w

    (Jensen), so the returned value
    :math:`-\big(\tfrac1S\sum_s\log p(x^{(s)})+D\log w\big)/(D\ln2)` estimates
    an upper bound on the discrete model's bits per dimension: the true
    discrete bpd is never larger than its expectation. It is exact when
    :math:`p` is constant on every bin.

    The offset :math:`-\log_2w=bits-\log_2(hi-lo)` is 7 for 8-bit data on
    [-1, 1] and 8 on [0, 1]: score_sde's ``offset = 7 - inverse_scaler(-1)``
    hard-codes these two 8-bit cases (PITFALLS 25). Without dequantisation
    noise a continuous density can put unbounded mass density on the levels,
    giving meaningless (even negative) bpd (PITFALLS 26). Data scaled as in
    Ho et al. (:math:`x=k/127.5-1`, levels at :math:`-1+2k/255` including
    both ends) are not on this grid: recover the levels first,
    ``k = round((x + 1) * 127.5)``. Adding :math:`U(0,2/256)` noise to those
    values directly gives bins of width 2/256 at spacing 2/255, which
    neither tile the range nor bound the discrete likelihood.

    ``log_prob_fn`` is whatever continuous density the model defines; a
    PF-ODE likelihood gives :math:`\log p_{t_0}` at ``t_start`` (Song et al.
    evaluate at :math:`t_0=10^{-5}`), not the density at t = 0.

    Parameters
    ----------
    log_prob_fn : callable
        ``log_prob_fn(x) -> (N,)``, the model's log-density (nats) of the
        dequantised data ``x`` (float64, ``codes``' shape), e.g.
        ``lambda x: ode_log_likelihood(process, score, x).log_prob``.
    codes : array, shape (N, ...)
        Integer levels in :math:`\{0,\dots,2^{bits}-1\}` (integer or
        integral float dtype).
    bits : int
        Bit depth: :math:`2^{bits}` levels per dimension.
    data_range : (float, float)
        The interval :math:`[lo, hi)` the model's inputs live on.
    n_samples : int
        Dequantisation draws per example; log p is averaged over them (one
        ``log_prob_fn`` call per draw, over the batch).
    rng : None, int, SeedSequence, BitGenerator or Generator
        Dequantisation noise (SPEC 7), drawn as (N, n_samples, ...) so that
        example i's draws do not depend on the batch size.

    Returns
    -------
    ndarray, shape (N,)
        Bits per dimension of each example; the data set's value is the mean.
        Computed by :func:`refdiff.losses.bits_per_dim` with
        ``bin_width = w``.
    """
    _check_callable(log_prob_fn, "log_prob_fn")
    k = _check_levels(codes, bits)
    lo, hi = _check_range(data_range)
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    N, D = k.shape[0], math.prod(k.shape[1:])
    w = (hi - lo) / 2**bits
    u = as_rng(rng).random((N, int(n_samples)) + k.shape[1:])  # (N, S, ...)
    total = np.zeros(N)
    for s in range(int(n_samples)):
        x = lo + (k + u[:, s]) * w
        logp = np.asarray(to_numpy(log_prob_fn(x)), dtype=np.float64)
        if logp.shape != (N,) or not np.all(np.isfinite(logp)):
            raise ValueError(f"log_prob_fn must return {N} finite values (shape ({N},)), got shape {logp.shape}")
        total += logp
    return losses.bits_per_dim(-total / n_samples, D, bin_width=w)
