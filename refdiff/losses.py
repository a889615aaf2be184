r"""Training objectives and the variational bound.

==========================  ===================================================  ============================
function                    quantity                                             source
==========================  ===================================================  ============================
``normal_kl``               :math:`KL(\mathcal N_1\|\mathcal N_2)`, elementwise   closed form
``discretized_gaussian_``   :math:`\log\int_{bin(x)}\mathcal N(\mu,s^2)`         Ho et al. 2020 eq. 13
``log_likelihood``
``eps_mse``                 :math:`L_{simple}=\|\epsilon-\epsilon_\theta\|^2`    Ho et al. 2020 eq. 14
``dsm_loss``                :math:`\lambda(t)\|s_\theta(x_t,t)+\epsilon/\sigma_t\|^2`  Vincent 2011; Song et al. 2021 eq. 7
``vlb_terms``               :math:`L_T,\ L_{t-1},\ L_0` of the bound             Ho et al. 2020 eq. 5
``bits_per_dim``            nats per example to bits per dimension
==========================  ===================================================  ============================

Every per-example quantity is summed over the non-batch axes unless a
``reduce`` argument says otherwise, and is in nats.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .backend import (as_float_array, as_rng, check_finite, finite_float_array, has_nan, is_numpy_namespace, namespace,
                      per_example, standard_normal, to_numpy)
from .forward import posterior_mean_from_eps, q_posterior, q_sample
from .schedules import DiscreteSchedule

__all__ = [
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "eps_mse",
    "dsm_loss",
    "VLBTerms",
    "vlb_terms",
    "bits_per_dim",
]


def _reduce(a, reduce: str):
    xp = namespace(a)
    flat = xp.reshape(a, (a.shape[0], -1))
    if reduce == "sum":
        return xp.sum(flat, axis=1)
    if reduce == "mean":
        return xp.mean(flat, axis=1)
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def _not_finite(a, xp, minus_inf_ok):
    """Whether ``a`` (a Python number or an array) holds NaN or +inf, or -inf where that is not allowed."""
    if isinstance(a, (int, float)):
        return a != a or a == math.inf or (a == -math.inf and not minus_inf_ok)
    bad = xp.isnan(a) | (a == xp.inf)
    if not minus_inf_ok:
        bad = bad | (a == -xp.inf)
    return bool(xp.any(bad))


def normal_kl(mean1, logvar1, mean2, logvar2):
    r""":math:`KL(\mathcal N(\mu_1,e^{v_1})\,\|\,\mathcal N(\mu_2,e^{v_2}))` elementwise (broadcasting).

    :math:`\tfrac12\big(v_2-v_1+e^{v_1-v_2}+(\mu_1-\mu_2)^2e^{-v_2}-1\big)`.
    """
    xp = namespace(mean1, logvar1, mean2, logvar2)
    # Python numbers stay Python numbers: they take the arrays' dtype (float32 stays float32), as in an expression
    args = [a if isinstance(a, (int, float)) and not isinstance(a, bool) else xp.asarray(a)
            for a in (mean1, logvar1, mean2, logvar2)]
    for a, name in zip(args, ("mean1", "logvar1", "mean2", "logvar2")):
        # a log-variance of -inf is a point mass (q_posterior's at s = 0): its KL is +inf, as it should be
        log_variance = name.startswith("logvar")
        if _not_finite(a, xp, minus_inf_ok=log_variance):
            raise ValueError(f"{name} must be finite{' or -inf' if log_variance else ''}, got NaN or an infinity")
    if all(isinstance(a, (int, float)) for a in args):  # numbers alone: a float64 result, as before
        args[0] = xp.asarray(float(args[0]), dtype=xp.float64)
    mean1, logvar1, mean2, logvar2 = args
    point = logvar2 == -math.inf  # Python bool, or a bool array
    if not (bool(xp.any(point)) if hasattr(point, "shape") else point):
        return _normal_kl(xp, mean1, logvar1, mean2, logvar2)
    # against a point mass (logvar2 = -inf) the formula is inf - inf: the KL is 0 from the same point mass and +inf
    # from anything else (a wider Gaussian, or a point mass elsewhere). The formula runs on finite stand-ins there.
    same = (logvar1 == -math.inf) & (mean1 == mean2)
    if hasattr(point, "shape"):
        kl = _normal_kl(xp, mean1, xp.where(point, 0.0, logvar1), mean2, xp.where(point, 0.0, logvar2))
    else:
        kl = _normal_kl(xp, mean1, xp.zeros_like(logvar1) if hasattr(logvar1, "shape") else 0.0, mean2, 0.0)
    at_point = xp.where(xp.asarray(same), xp.asarray(0.0, dtype=kl.dtype), xp.asarray(math.inf, dtype=kl.dtype))
    return xp.where(xp.asarray(point), at_point, kl)


def _weak(xp, fn, v):
    """``xp.fn(v)``; for a Python number its value as a Python float, which takes the arrays' dtype (NumPy's float64
    scalar would promote float32 arrays)."""
    if isinstance(v, (int, float)):
        with np.errstate(over="ignore"):
            return float(getattr(np, fn)(float(v)))
    return getattr(xp, fn)(v)


def _normal_kl(xp, mean1, logvar1, mean2, logvar2):
    """:func:`normal_kl`'s formula on checked arguments whose log-variances are not both -inf."""
    d = logvar1 - logvar2
    # e^d - 1 - d, written with expm1 so that equal variances give exactly 0
    return 0.5 * ((_weak(xp, "expm1", d) - d) + (mean1 - mean2) ** 2 * _weak(xp, "exp", -logvar2))


def _log_ndtr(z):
    """log Phi(z) in z's namespace (SciPy on NumPy, cupyx on CuPy, through the host otherwise)."""
    xp = namespace(z)
    if is_numpy_namespace(xp):
        from scipy.special import log_ndtr

        return log_ndtr(z)
    if type(z).__module__.startswith("cupy"):
        from cupyx.scipy.special import log_ndtr

        return log_ndtr(z)
    from scipy.special import log_ndtr

    return xp.asarray(log_ndtr(to_numpy(z)), device=z.device)


def discretized_gaussian_log_likelihood(x, mean, log_scale, n_bits: int = 8):
    r"""Log-probability of the bin of ``x`` under :math:`\mathcal N(\mu, e^{2\,\mathrm{log\_scale}})` (Ho et al. eq. 13).

    Data are :math:`2^{n}` levels spaced evenly on [-1, 1]; the bin of x is
    :math:`[x-\delta, x+\delta]` with :math:`\delta=1/(2^n-1)`, widened to
    :math:`-\infty` at x = -1 and :math:`+\infty` at x = 1. Bin masses are
    computed from ``log_ndtr`` on the side of the bin away from the mode, so
    no tail mass cancels to 0 (improved-diffusion uses a tanh approximation
    of the CDF instead).

    Returns an array of x's shape (elementwise log-likelihood, nats). x must
    lie in [-1, 1] (checked); only on the levels :math:`2k/(2^n-1)-1` do the
    bins tile [-1, 1] and the masses sum to 1 over the data's values: an x
    between levels gets the mass of its own interval, not checked.
    """
    x = as_float_array(x, "x")
    xp = namespace(x)
    check_finite(x, "x")
    if isinstance(n_bits, bool) or not isinstance(n_bits, numbers.Integral) or not 1 <= n_bits <= 24:
        raise ValueError(f"n_bits must be an int in 1..24, got {n_bits!r}")
    if bool(xp.any(xp.abs(x) > 1.0)):
        raise ValueError("x must lie in [-1, 1] (data scaled from 2**n_bits levels)")
    mean, log_scale = xp.asarray(mean, dtype=x.dtype), xp.asarray(log_scale, dtype=x.dtype)
    for a, name in ((mean, "mean"), (log_scale, "log_scale")):
        check_finite(a, name, xp)
        try:
            np.broadcast_shapes(tuple(a.shape), tuple(x.shape))
        except ValueError:
            raise ValueError(f"{name} of shape {tuple(a.shape)} does not broadcast against x of shape "
                             f"{tuple(x.shape)}") from None
    delta = 1.0 / (2**n_bits - 1)
    inv_s = xp.exp(-log_scale)
    a = (x - delta - mean) * inv_s
    b = (x + delta - mean) * inv_s
    right = (a + b) > 0  # bin centre above the mean: work with upper tails
    lo, hi = xp.where(right, -b, a), xp.where(right, -a, b)  # Phi(hi) - Phi(lo) is the bin mass either way
    log_hi, log_lo = _log_ndtr(hi), _log_ndtr(lo)
    width = hi - lo
    narrow = width < 1e-6  # midpoint rule, relative error below 1e-13
    with np.errstate(divide="ignore"):
        log_mass = log_hi + xp.log(-xp.expm1(xp.where(narrow, -1.0, log_lo - log_hi)))
    c = 0.5 * (hi + lo)
    log_mid = xp.log(xp.where(narrow, width, 1.0)) - 0.5 * c * c - 0.5 * math.log(2.0 * math.pi)
    interior = xp.where(narrow, log_mid, log_mass)
    edge_lo = x <= -1.0 + 1e-12  # the lowest level takes the whole lower tail
    edge_hi = x >= 1.0 - 1e-12
    return xp.where(edge_lo, _log_ndtr(b), xp.where(edge_hi, _log_ndtr(-a), interior))


def eps_mse(eps_pred, eps, reduce: str = "mean"):
    r""":math:`L_{simple}` per example: :math:`\|\epsilon-\epsilon_\theta\|^2` averaged (default) or summed over features."""
    eps = finite_float_array(eps, "eps")
    eps_pred = finite_float_array(eps_pred, "eps_pred")
    if tuple(eps_pred.shape) != tuple(eps.shape):
        raise ValueError(f"eps_pred must have the shape of eps {tuple(eps.shape)}, got {tuple(eps_pred.shape)}")
    d = eps_pred - eps
    return _reduce(d * d, reduce)


_WEIGHTINGS = ("sigma2", "likelihood", "none")


def dsm_loss(score, x0, process, t, weighting: str = "sigma2", rng=None, noise=None, reduce: str = "sum"):
    r"""Denoising score matching per example (Vincent 2011; Song et al. 2021 eq. 7).

    :math:`\lambda(t)\,\|s_\theta(x_t,t)-\nabla\log q(x_t|x_0)\|^2` with
    :math:`x_t=\gamma_tx_0+\sigma_t\epsilon` and
    :math:`\nabla\log q(x_t|x_0)=-\epsilon/\sigma_t`.

    Parameters
    ----------
    score : callable ``score(x_t, t) -> array like x_t``
    weighting : {"sigma2", "likelihood", "none"}
        :math:`\lambda=\sigma_t^2` (then the loss is the eps-MSE of
        :math:`\epsilon_\theta=-\sigma_ts_\theta`), :math:`\lambda=g(t)^2`
        (likelihood weighting, Song et al. 2021b; SDEs only) or 1.
    noise : array like x0, optional
        The :math:`\epsilon` to use; drawn from ``rng`` otherwise.
    reduce : {"sum", "mean"} over the non-batch axes. No factor 1/2.
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    x0 = finite_float_array(x0, "x0")
    if noise is None:
        noise = standard_normal(x0.shape, rng, like=x0)
    x_t = q_sample(process, x0, t, noise)
    sigma = process.std(t)
    if np.any(sigma == 0):
        raise ValueError("dsm_loss needs sigma_t > 0 (t = 0 has no noise to denoise)")
    s = score(x_t, t)
    if tuple(s.shape) != tuple(x0.shape):
        raise ValueError(f"score returned shape {tuple(s.shape)}, expected {tuple(x0.shape)}")
    check_finite(s, "the score model's output")
    if weighting == "sigma2":
        lam = sigma**2
    elif weighting == "likelihood":
        if isinstance(process, DiscreteSchedule):
            raise ValueError("likelihood weighting needs a continuous SDE (g(t)); got a DiscreteSchedule")
        lam = process.diffusion(t) ** 2
    else:
        lam = np.ones_like(sigma)
    r = s + noise / per_example(sigma, x0)
    return _reduce(per_example(lam, r) * r * r, reduce)


@dataclass(frozen=True)
class VLBTerms:
    r"""The terms of the DDPM bound :math:`L=L_T+\sum_{t=2}^TL_{t-1}+L_0` (Ho et al. eq. 5), nats per example.

    Attributes
    ----------
    prior : (N,)  :math:`L_T=KL(q(x_T|x_0)\|\mathcal N(0,I))`
    terms : (N, T)  ``terms[:, 0]`` is :math:`L_0=-\log p_\theta(x_0|x_1)`;
        ``terms[:, t - 1]`` is :math:`L_{t-1}=KL(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t))`.
    total : (N,)  prior + terms summed.
    """

    prior: object
    terms: object
    total: object


def _model_log_variance(schedule, t, variance):
    """Host float64 log sigma_t^2 of p_theta(x_{t-1}|x_t) for ``variance`` in {"beta_tilde", "beta"}."""
    if variance == "beta_tilde":
        return schedule.posterior_log_variance[t]  # clipped at t = 1, where beta_tilde_1 = 0
    if variance == "beta":
        return np.log(schedule.betas[t])
    raise ValueError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")


def vlb_terms(eps_model, schedule: DiscreteSchedule, x0, rng=None, variance: str = "beta_tilde", decoder: str = "discretized"):
    r"""Every term of the variational bound for an eps-prediction model, one model call per step.

    For each t, :math:`x_t\sim q(x_t|x_0)` is drawn independently, the model
    mean is :func:`~refdiff.forward.posterior_mean_from_eps` of
    ``eps_model(x_t, schedule.model_steps[t])`` and the model variance is
    :math:`\tilde\beta_t` (``"beta_tilde"``, with improved-diffusion's clip at
    t = 1 where :math:`\tilde\beta_1=0`) or :math:`\beta_t` (``"beta"``, Ho et
    al.'s :math:`\sigma_t^2=\beta_t` at every t; improved-diffusion uses
    :math:`\tilde\beta_2` at t = 1 and diffusers :math:`\beta_1`).

    Parameters
    ----------
    decoder : {"discretized", "gaussian"}
        :math:`L_0` as the discretised Gaussian of Ho et al. eq. 13 (x0 in
        [-1, 1], checked; a likelihood of the data only where x0 lies on the
        256 levels :math:`2k/255-1`, which is not checked) or the continuous
        Gaussian density.

    Returns
    -------
    VLBTerms

    Raises
    ------
    ValueError
        For a zero-terminal-SNR schedule: at t = T an eps-prediction carries
        no information about x0, so the model mean is undefined there.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    if decoder not in ("discretized", "gaussian"):
        raise ValueError(f"decoder must be 'discretized' or 'gaussian', got {decoder!r}")
    _model_log_variance(schedule, 1, variance)  # validate early
    x0 = as_float_array(x0, "x0")
    xp = namespace(x0)
    check_finite(x0, "x0")
    gen = as_rng(rng)
    N, T = x0.shape[0], schedule.T
    terms = []
    for t in range(1, T + 1):
        t_vec = np.full(N, t, dtype=np.int64)
        x_t = q_sample(schedule, x0, t_vec, standard_normal(x0.shape, gen, like=x0))
        eps = eps_model(x_t, schedule.model_steps[t_vec])
        mean = posterior_mean_from_eps(schedule, x_t, eps, t_vec)
        log_var = _model_log_variance(schedule, t, variance)
        if t == 1:
            if decoder == "discretized":
                ll = discretized_gaussian_log_likelihood(x0, mean, xp.asarray(0.5 * log_var, dtype=x0.dtype))
            else:
                ll = -0.5 * (math.log(2.0 * math.pi) + log_var + (x0 - mean) ** 2 * math.exp(-log_var))
            terms.append(-_reduce(ll, "sum"))
        else:
            q_mean, _, q_log_var = q_posterior(schedule, x_t, x0, t_vec)
            terms.append(_reduce(normal_kl(q_mean, q_log_var, mean, xp.asarray(log_var, dtype=x0.dtype)), "sum"))
    # L_T: q(x_T|x_0) = N(gamma_T x0, sigma_T^2) against N(0, 1); log sigma_T^2 from the cancellation-free table
    gamma_T, var_T = schedule.sqrt_alpha_bar[T], schedule.one_minus_alpha_bar[T]
    prior = _reduce(normal_kl(float(gamma_T) * x0, xp.asarray(math.log(var_T), dtype=x0.dtype), 0.0, 0.0), "sum")
    terms = xp.stack(terms, axis=1)
    return VLBTerms(prior=prior, terms=terms, total=prior + xp.sum(terms, axis=1))


def bits_per_dim(nll, dims: int, bin_width: float | None = None):
    r"""Convert a negative log-likelihood in nats per example to bits per dimension.

    ``bin_width``: for a *continuous* density of quantised data, the width of
    one quantisation bin in the model's units (``2 / 256`` for 8-bit data
    uniformly dequantised and scaled to [-1, 1]); adds
    :math:`-D\log(\text{bin\_width})` so the result is the discrete data's
    bits per dimension (score_sde's "+7" offset is this for that one case,
    PITFALLS 25). Leave it None for a discrete likelihood such as the VLB with
    the discretised decoder.
    """
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise ValueError(f"dims must be a positive int, got {dims!r}")
    if has_nan(as_float_array(nll, "nll")):
        raise ValueError("nll must not be NaN (+inf, an impossible example, is allowed)")
    offset = 0.0
    if bin_width is not None:
        if not (0.0 < bin_width and math.isfinite(bin_width)):
            raise ValueError(f"bin_width must be a positive finite number, got {bin_width!r}")
        offset = -dims * math.log(bin_width)
    return (nll + offset) / (dims * math.log(2.0))
