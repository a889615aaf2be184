r"""Exact ground truth: Gaussian mixtures, a single Gaussian and finite data sets, at any noise level.

Under any linear process (a :class:`~refdiff.schedules.DiscreteSchedule` or an
SDE of :mod:`refdiff.sde`) with :math:`q(x_t|x_0)=\mathcal N(\gamma_tx_0,\sigma_t^2I)`,
a mixture :math:`\sum_k w_k\mathcal N(\mu_k,\Sigma_k)` diffuses to

.. math::

    p_t(x)=\sum_k w_k\,\mathcal N(x;\gamma_t\mu_k,\ C_k),\qquad C_k=\gamma_t^2\Sigma_k+\sigma_t^2I,

so the density, the score :math:`\nabla\log p_t`, the class posterior
:math:`p(k|x_t)` and Tweedie's denoiser

.. math::

    E[x_0|x_t]=\sum_k p(k|x_t)\big(\mu_k+\gamma_t\Sigma_kC_k^{-1}(x_t-\gamma_t\mu_k)\big)

are exact at every t. Each :math:`\Sigma_k=U_k\,\mathrm{diag}(\lambda_k)U_k^\top`
is diagonalised once (``numpy.linalg.eigh``), which diagonalises every
:math:`C_k=U_k\,\mathrm{diag}(\gamma_t^2\lambda_k+\sigma_t^2)U_k^\top` too: a
per-example t costs no factorisation, and no inverse is ever formed.

Layout. Points are worked on transposed, as a contiguous (D, N) array, and
the component logits are held as a (K, N) array: every reduction (over D for
a quadratic form, over K for the log-sum-exp and the softmax average) runs
along the leading axis, adding whole contiguous rows of length N. The usual
(N, K) form reduces over a short last axis, which NumPy does slowly; the
(K, N) form measured 1.4-5x faster here. The density and the score take two
passes over the components (logits, then the softmax-weighted fields), so
memory stays O((K + D) N), never the (N, K, D) broadcast.

Backends. :meth:`GaussianMixture.score` and :meth:`GaussianMixture.log_prob`
take ``backend="auto" | "numpy" | "numba" | "cupy"``: "numpy" is the array-API
reference below (it runs on any namespace, CuPy included); "numba"
(:mod:`refdiff.kernels.mixture_numba`) and "cupy"
(:mod:`refdiff.kernels.mixture_cupy`) are its fused twins. "auto" picks cupy
for CuPy arrays, numba for NumPy arrays when numba is importable and the
problem is large enough to repay the call (:data:`NUMBA_MIN_WORK`), and the
reference otherwise.

Far points. Where x is so far from every component that each quadratic form
overflows x's dtype (some 1e19 standard deviations out in float32, 1e154 in
float64), log p_t is -inf (it underflows) but the posterior and the score are
finite: their weights come from the quadratic forms scaled by a power of two
(:meth:`GaussianMixture._far_weights`), and every twin does the same.

The denoiser is evaluated in the form above, not as
:math:`(x_t+\sigma_t^2\nabla\log p_t)/\gamma_t`, so it stays finite at zero
SNR (:math:`\gamma_t=0`), where it equals the data mean.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys

import numpy as np

from .backend import as_float_array, as_rng, check_finite, device_of, has_nan, namespace, per_example, to_numpy
from .schedules import DiscreteSchedule

__all__ = ["GaussianMixture", "Gaussian", "EmpiricalData", "NUMBA_MIN_WORK"]

_LOG_2PI = math.log(2.0 * math.pi)

#: ``backend="auto"`` uses the Numba twin for NumPy input when N * K * D
#: reaches this. Once compiled, the twin wins per call at every size measured
#: (benchmarks/mixture_score.py --crossover, 2-core Xeon: 0.31 vs 0.38 ms at
#: N=10, D=2, K=8; 0.19 vs 1.3 ms at N=10, D=16, K=32); the threshold keeps
#: small one-off calls from paying numba's import and cache load (about half
#: a second, once per process).
NUMBA_MIN_WORK = 20_000

_BACKENDS = ("auto", "numpy", "numba", "cupy")
_EXTRA = {"numba": ("numba", "fast", "mixture_numba"), "cupy": ("cupy", "gpu-cuda12", "mixture_cupy")}


def _process_coefs(process, t):
    """Host float64 (gamma, sigma^2) for a process and time(s); (1, 0) when process is None."""
    if process is None:
        if t is not None:
            raise ValueError("t was given without a process; pass both or neither")
        return np.float64(1.0), np.float64(0.0)
    if t is None:
        raise ValueError("a process was given without t; pass both or neither")
    return np.asarray(process.mean_coef(t), dtype=np.float64), np.asarray(process.variance(t), dtype=np.float64)


def _smallest_variance(lam, gamma, var):
    """The least eigenvalue c = gamma^2 lam + sigma^2 of any diffused covariance C_k, over the components and the
    t given (host float64: lam a NumPy array, (K, D) or any shape; gamma and var () or (N,)).

    The twins multiply by 1 / c in the points' dtype where the reference divides by c: below the dtype's
    smallest normal number 1 / c overflows (or nearly), and a point at or near such a component's mean lost
    the weight the reference gives it. They take their exact form instead when this is that small."""
    lam_min = float(lam.min()) if lam.size else math.inf  # the method: half np.min's time on a small array
    if np.ndim(gamma) == 0 and np.ndim(var) == 0:  # Python floats: a microsecond, not five (small twin calls)
        return float(gamma) ** 2 * lam_min + float(var)
    if np.size(gamma) == 0:  # a per-example t of no rows
        return math.inf
    return float(np.min(np.asarray(gamma, dtype=np.float64) ** 2 * lam_min + np.asarray(var, dtype=np.float64)))


def _check_points(x, D, name="x", finite=True):
    """x as a float array of shape (N, D); NaN or infinity raise too unless ``finite`` is False (a twin
    that checks on its own: the Numba GEMM kernel counts non-finite rows as it reads them)."""
    x = as_float_array(x, name)
    if x.ndim != 2 or x.shape[1] != D:
        raise ValueError(f"{name} must have shape (N, {D}), got {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def _on(x, host):
    """Host float64 array moved to x's device in x's dtype."""
    xp = namespace(x)
    return xp.astype(xp.asarray(host, device=device_of(x)), x.dtype)


def _rotate(U, z):
    """U @ z for z (D, N): one point (N = 1) goes through the same matrix-matrix product as many, twice over, so
    that its result does not depend on the batch (BLAS takes a matrix-vector product for one column, which rounds
    its sums otherwise: a float32 path moved by 2e-7 between N = 1 and N = 2000)."""
    xp = namespace(z)
    if z.shape[1] == 1:
        return xp.matmul(U, xp.concat([z, z], axis=1))[:, :1]
    return xp.matmul(U, z)


def _transpose(a):
    """(N, D) -> (D, N) (and back), C-contiguous for NumPy so that axis-0 reductions add contiguous rows."""
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a.T)
    return namespace(a).permute_dims(a, (1, 0))


def _per_column(coef, xT):
    """A per-example float64 coefficient () or (N,) as a scalar or a (1, N) row in xT's dtype and device."""
    c = _on(xT, coef)
    return c if c.ndim == 0 else namespace(xT).reshape(c, (1, -1))


def _softmax_parts(logits):
    """``(m, e, total)`` of (K, N) logits, the softmax down axis 0: the column maxima m, e = exp(logits - m) (its
    largest entry per column 1) and total, the column sums of e (in [1, K]). Where a whole column is -inf (every
    q_k overflowed) m is -inf and e and total are 0 there (not NaN), so log p = m + log(total) is -inf."""
    xp = namespace(logits)
    m = xp.max(logits, axis=0)
    e = xp.exp(logits - xp.where(m > -math.inf, m, xp.zeros_like(m)))
    return m, e, xp.sum(e, axis=0)


def _kernel_module(backend):
    """Import refdiff.kernels.mixture_<backend>, or an ImportError naming the extra to install."""
    package, extra, module = _EXTRA[backend]
    loaded = sys.modules.get("refdiff.kernels." + module)
    if loaded is not None and package in sys.modules:  # imported: no find_spec (0.5 us a call)
        return loaded
    if importlib.util.find_spec(package) is None:
        raise ImportError(f'backend="{backend}" needs {package}, which is not installed: pip install "refdiff[{extra}]"')
    return importlib.import_module("refdiff.kernels." + module)


def _pick_backend(backend, x, work):
    """The backend that evaluates x: "numpy", "numba" or "cupy" (see the module docstring)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    on_cupy = type(x).__module__.startswith("cupy")
    if backend == "auto":
        if on_cupy:
            return "cupy"
        if isinstance(x, np.ndarray) and work >= NUMBA_MIN_WORK and importlib.util.find_spec("numba") is not None:
            return "numba"
        return "numpy"
    if backend == "numba" and not isinstance(x, np.ndarray):
        raise TypeError(f'backend="numba" takes NumPy arrays, got {type(x).__module__}.{type(x).__qualname__}')
    if backend == "cupy" and not on_cupy:
        raise TypeError(f'backend="cupy" takes CuPy arrays, got {type(x).__module__}.{type(x).__qualname__}')
    return backend


class GaussianMixture:
    r"""A mixture :math:`\sum_k w_k\mathcal N(\mu_k,\Sigma_k)` in D dimensions.

    Parameters
    ----------
    weights : array_like, shape (K,)
        Non-negative, summing to 1 to within 1e-9, or to within 4 K
        rounding errors of their dtype if that is more (float32 weights
        that sum to 1 in float32); they are divided by their sum (float64).
    means : array_like, shape (K, D)
    covs : array_like
        ``(K, D, D)`` full, ``(K, D)`` diagonal or ``(K,)`` isotropic
        (variances, not standard deviations). Must be positive definite.

    Methods taking ``(x, process=None, t=None)`` evaluate the mixture itself
    when no process is given and its exact diffused marginal :math:`p_t`
    otherwise; ``t`` may be a scalar or one time per row of ``x``.

    Raises
    ------
    ValueError
        On bad shapes, non-finite values, negative or non-normalised
        weights, or a covariance that is not symmetric positive definite.
    """

    def __init__(self, weights, means, covs):
        w_given = np.asarray(to_numpy(as_float_array(weights, "weights")))
        w = np.array(w_given, dtype=np.float64)
        mu = np.array(to_numpy(as_float_array(means, "means")), dtype=np.float64)
        cov = np.array(to_numpy(as_float_array(covs, "covs")), dtype=np.float64)
        if w.ndim != 1 or w.shape[0] < 1:
            raise ValueError(f"weights must be 1-D of length K >= 1, got shape {w.shape}")
        K = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape (K={K}, D), got {mu.shape}")
        D = mu.shape[1]
        for name, a in (("weights", w), ("means", mu), ("covs", cov)):
            check_finite(a, name)
        if np.any(w < 0):
            raise ValueError(f"weights must be non-negative, got min {w.min()}")
        tol = max(1e-9, 4 * K * float(np.finfo(w_given.dtype).eps))
        if not abs(w.sum() - 1.0) <= tol:
            raise ValueError(f"weights must sum to 1 (to {tol:.2g}), got sum {w.sum()!r}")
        w = w / w.sum()  # the density integrates to 1 whatever the rounding of the weights given
        if cov.shape == (K,):
            kind, lam, U = "isotropic", cov.copy(), None
        elif cov.shape == (K, D):
            kind, lam, U = "diagonal", cov.copy(), None
        elif cov.shape == (K, D, D):
            kind = "full"
            asym = np.abs(cov - np.swapaxes(cov, 1, 2)).max(axis=(1, 2))
            scale = np.abs(cov).max(axis=(1, 2))
            bad = np.flatnonzero(asym > 1e-10 * scale)
            if bad.size:
                raise ValueError(f"covs[{bad[0]}] is not symmetric (max asymmetry {asym[bad[0]]:.3g})")
            lam, U = np.linalg.eigh(cov)  # (K, D), (K, D, D)
        else:
            raise ValueError(f"covs must have shape (K,), (K, D) or (K, D, D) with K={K}, D={D}; got {cov.shape}")
        lam_min = lam.reshape(K, -1).min(axis=1)
        if np.any(lam_min <= 0):
            k = int(np.argmin(lam_min))
            raise ValueError(f"covs[{k}] is not positive definite (smallest eigenvalue {lam_min[k]:.3g})")
        self.weights, self.means, self.covs, self.kind = w, mu, cov, kind
        self._lam, self._U = lam, U
        self._active = np.flatnonzero(w > 0)  # zero-weight components never contribute
        for a in (self.weights, self.means, self.covs, self._lam) + ((U,) if U is not None else ()):
            a.flags.writeable = False

    @functools.cached_property
    def _active_arrays(self):
        """``(log_w, means, lam, U)`` of the components of nonzero weight: float64, C-contiguous, read-only; lam
        (K_active, D) the covariances' eigenvalues (an isotropic variance repeated D times), U (K_active, D, D)
        their eigenvectors, or None unless ``kind == "full"``. What the twins take; made on first use and kept
        (the mixture is immutable: a twin's call for ten points spent a fifth of its time making them)."""
        act = self._active
        K, D = act.shape[0], self.dim
        arrays = (np.log(self.weights[act]), np.ascontiguousarray(self.means[act]),
                  np.ascontiguousarray(np.broadcast_to(self._lam[act].reshape(K, -1), (K, D)), dtype=np.float64),
                  np.ascontiguousarray(self._U[act]) if self.kind == "full" else None)
        for a in arrays:
            if a is not None:
                a.flags.writeable = False
        return arrays

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __repr__(self):
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, covs={self.kind})"

    def full_covs(self) -> np.ndarray:
        """Covariances as a (K, D, D) float64 array, whatever the stored kind."""
        K, D = self.n_components, self.dim
        if self.kind == "full":
            return self.covs.copy()
        diag = np.broadcast_to(self._lam.reshape(K, -1), (K, D))
        return diag[:, :, None] * np.eye(D)

    def mean(self) -> np.ndarray:
        r"""Mixture mean :math:`\sum_k w_k\mu_k` (float64)."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        r"""Mixture covariance :math:`\sum_k w_k(\Sigma_k+\mu_k\mu_k^\top)-mm^\top` (float64)."""
        m = self.mean()
        second = np.einsum("k,kij->ij", self.weights, self.full_covs() + self.means[:, :, None] * self.means[:, None, :])
        return second - np.outer(m, m)

    # ------------------------------------------------------------- diffusion
    def diffuse(self, process, t) -> "GaussianMixture":
        r"""The exact marginal at scalar time t: means :math:`\gamma_t\mu_k`, covariances :math:`\gamma_t^2\Sigma_k+\sigma_t^2I`."""
        gamma, var = _process_coefs(process, t)
        if gamma.ndim != 0:
            raise ValueError("diffuse takes a scalar t; evaluate per-example times with the (process, t) methods")
        if self.kind == "full":
            covs = gamma**2 * self.covs + var * np.eye(self.dim)
        else:
            covs = gamma**2 * self.covs + var
        return GaussianMixture(self.weights, gamma * self.means, covs)

    def _components(self, xT, gamma, var, want, vT=None, logits=True):
        """Yield, per active component k, its logit log w_k N(x; gamma mu_k, C_k) (N,) and requested fields.

        Works in the transposed layout: ``xT`` is (D, N) and every field is
        (D, N) (``vT`` too). ``gamma``, ``var`` are host float64, () or (N,).
        ``want`` holds any of "grad" (the component's score), "x0" (its
        Tweedie denoiser) and "inv_v" (C_k^{-1} v), each (D, N), and
        "inv_trace" (tr C_k^{-1}, shape () or (N,)). With ``logits=False``
        the logit is not formed and None is yielded in its place.
        """
        xp = namespace(xT)
        D = xT.shape[0]
        per_t = gamma.ndim == 1
        g_row = _per_column(gamma, xT)  # () or (1, N)
        for k in self._active:
            lam = self._lam[k]
            # eigenvalues of C_k, host float64: () or (N,) isotropic, (D,) or (N, D) otherwise
            c = np.multiply.outer(gamma**2, lam) + (var[:, None] if per_t and lam.ndim else var)
            if lam.ndim == 0:  # isotropic: one eigenvalue of multiplicity D
                logdet, c_T, lam_T = D * np.log(c), _per_column(c, xT), _on(xT, lam)
            else:  # (D, 1) or (D, N)
                logdet, c_T, lam_T = np.sum(np.log(c), axis=-1), _on(xT, c.T if per_t else c[:, None]), _on(xT, lam[:, None])
            mu = _on(xT, self.means[k][:, None])  # (D, 1)
            U = None if self._U is None else _on(xT, self._U[k])  # (D, D), columns are eigenvectors
            z = xT - g_row * mu  # (D, N)
            y = z if U is None else _rotate(xp.permute_dims(U, (1, 0)), z)  # eigen coordinates U^T z
            q = y / c_T  # C_k^{-1} z in eigen coordinates
            logit = None
            if logits:
                const = math.log(self.weights[k]) - 0.5 * (D * _LOG_2PI + logdet)  # host float64, () or (N,)
                logit = _on(xT, const) - 0.5 * xp.sum(y * q, axis=0)  # (N,)
            fields = {}
            if "grad" in want:
                fields["grad"] = -q if U is None else -_rotate(U, q)
            if "x0" in want:
                shift = lam_T * q if U is None else _rotate(U, lam_T * q)
                fields["x0"] = mu + g_row * shift
            if "inv_trace" in want:  # tr C_k^{-1} = sum of 1 / eigenvalues
                fields["inv_trace"] = _on(xT, D / c if lam.ndim == 0 else np.sum(1.0 / c, axis=-1))
            if "inv_v" in want:
                fields["inv_v"] = vT / c_T if U is None else _rotate(U, _rotate(xp.permute_dims(U, (1, 0)), vT) / c_T)
            yield logit, fields

    def _coefs(self, x, process, t):
        """Host float64 (gamma, sigma^2), () or (N,), checked against the rows of x."""
        gamma, var = _process_coefs(process, t)
        per_example(gamma, x, "t")  # raises on a per-example t of the wrong length
        return gamma, var

    def _stream(self, x, process, t, want):
        """log p_t(x) (N,) and the posterior averages of the requested fields (N, D), in two passes.

        Pass 1 holds the logits as (K, N) and takes the log-sum-exp down
        axis 0; pass 2 adds the fields, each (D, N), weighted by the softmax
        rows :math:`p(k|x_t)`.
        """
        xp = namespace(x)
        gamma, var = self._coefs(x, process, t)
        xT = _transpose(x)  # (D, N)
        m, e, total = self._softmax(xT, gamma, var)  # (N,), (K, N), (N,)
        logp = m + xp.log(total)  # -inf where every logit was (m = -inf, total >= 1)
        if not want:
            return logp, {}
        r = e / total  # p(k | x_t), (K, N)
        # A weight that underflowed to exactly 0 must add exactly 0, but its field (C_k^{-1} z_k of a narrow
        # component far away) may have overflowed to infinity, and 0 * inf is NaN. Masking every term cost
        # 20-30%, so the plain sums come first, are checked for NaN once, and only then summed again with
        # those terms dropped.
        acc = self._posterior_sums(xT, gamma, var, want, r, drop_zero_weights=False)
        if any(has_nan(v) for v in acc.values()):
            acc = self._posterior_sums(xT, gamma, var, want, r, drop_zero_weights=True)
        return logp, {f: _transpose(v) for f, v in acc.items()}

    def _softmax(self, xT, gamma, var):
        """:func:`_softmax_parts` of the logits of the (D, N) points xT, with the weights of the far points filled in.

        A point so far from every component that each quadratic form q_k
        overflows x's dtype has every logit -inf: its log-density is -inf
        (it underflows), but its posterior p(k|x) and its score are finite.
        For those columns (m = -inf) e and total come from
        :meth:`_far_weights` instead; m stays -inf, so log p does too.
        """
        with np.errstate(over="ignore"):  # an overflowed q_k is a logit of -inf, and its point is taken up below
            logits = self._stacked_logits(xT, gamma, var)
        m, e, total = _softmax_parts(logits)
        far_mask = m == -math.inf  # not ~(total > 0): a NaN point keeps its NaN
        if not bool(namespace(far_mask).any(far_mask)):  # one scalar back from a device, not N
            return m, e, total
        xp = namespace(xT)
        far = np.flatnonzero(to_numpy(far_mask))
        e_host, x_far = np.array(to_numpy(e)), np.asarray(to_numpy(xT)[:, far], dtype=np.float64)
        e_host[:, far] = self._far_weights(x_far, gamma[far] if gamma.ndim else gamma, var[far] if var.ndim else var)
        e = _on(xT, e_host)
        return m, e, xp.sum(e, axis=0)

    def _far_weights(self, x, gamma, var):
        r"""exp(l_k - max_j l_j) (K_active, n), float64, for host float64 points x (D, n) whose quadratic forms
        overflow: the differences of the logits from quadratic forms scaled by a power of two.

        With :math:`2^E` the largest of :math:`|x_j|` and :math:`|\gamma\mu_{kj}|` (per point),
        :math:`\tilde q_k=(2^{-E}z_k)^\top C_k^{-1}(2^{-E}z_k)=2^{-2E}q_k` is finite, and
        :math:`l_k-l_j=(c_k-c_j)-2^{2E}(\tilde q_k-\tilde q_j)/2` with :math:`c_k` the log-normalisers:
        scaling by powers of two is exact, so these are the logit differences the dtype would give if q_k
        did not overflow (the nearest components by q_k; among equal q_k, the log-normalisers decide).
        ``gamma``, ``var`` host float64, () or (n,).
        """
        D, n = x.shape
        g = np.broadcast_to(gamma, (n,))
        big = np.max(np.abs(x), axis=0)
        for k in self._active:
            big = np.maximum(big, np.max(np.abs(np.multiply.outer(self.means[k], g)), axis=0))
        E = np.frexp(big)[1]  # 2**(E - 1) <= big < 2**E
        logits = np.empty((self._active.shape[0], n))
        q = np.empty_like(logits)
        for i, k in enumerate(self._active):
            lam = self._lam[k]
            c = np.multiply.outer(g**2, np.broadcast_to(lam, (D,))) + np.asarray(var, dtype=np.float64)[..., None]  # (n, D)
            z = np.ldexp(x, -E) - np.ldexp(np.multiply.outer(self.means[k], g), -E)  # (D, n)
            y = z if self._U is None else self._U[k].T @ z
            q[i] = np.sum(y * y / c.T, axis=0)
            logits[i] = math.log(self.weights[k]) - 0.5 * (D * _LOG_2PI + np.sum(np.log(c), axis=1))
        with np.errstate(over="ignore"):  # a difference beyond the range is an infinitely smaller weight
            logits -= 0.5 * np.ldexp(q - np.min(q, axis=0), 2 * E)
        return np.exp(logits - np.max(logits, axis=0))

    def _posterior_sums(self, xT, gamma, var, want, r, drop_zero_weights, vT=None):
        r"""Pass 2 of :meth:`_stream`: :math:`\sum_kr_kf_k` for each requested field f of
        :meth:`_components` (``vT`` as there), from the posterior r (K, N). With ``drop_zero_weights`` a
        component adds nothing where its r_k is exactly 0, whatever its field holds there (infinity or NaN);
        without, such a term is 0 * f, as written. The NaN that an overflowed field makes here (0 * inf, or
        inside the product by U_k) is not reported: pass 1 reported the overflow, and a NaN left in the sums
        shows in them."""
        xp = namespace(xT)
        acc = {}
        with np.errstate(invalid="ignore"):
            for i, (_, fields) in enumerate(self._components(xT, gamma, var, want, vT=vT, logits=False)):
                r_i = r[i, :]
                live = r_i > 0 if drop_zero_weights else None
                for f, v in fields.items():  # (D, N)
                    if drop_zero_weights:
                        v = xp.where(live, v, 0.0)
                    acc[f] = r_i * v if i == 0 else acc[f] + r_i * v  # no named temporary: freed at once
        return acc

    def _stream_hessian(self, x, process, t, v):
        r"""One streaming pass for the Hessian :math:`H` of :math:`\log p_t`: its trace (N,) if ``v`` is None, else :math:`Hv` (N, D).

        :math:`H=\sum_kr_k(-C_k^{-1})+\mathrm{Cov}_r[s_k]`, with the
        posterior covariance of the component scores accumulated by West's
        weighted update (West 1979): the running mean :math:`s` moves by
        :math:`(b/W)\delta` and the spread grows by
        :math:`b\,W_{old}/W\;\delta\delta^\top` with :math:`\delta=s_k-s`, so
        :math:`\sum_kr_k|s_k|^2-|s|^2` is never formed as a difference of
        large numbers. Weights are rescaled to the running maximum logit
        (a streaming log-sum-exp). Works in the (D, N) layout of
        :meth:`_components`.

        A component whose weight underflowed to 0 may have fields that
        overflowed (0 * inf is NaN), and a first logit of -inf makes
        exp(-inf + inf); where the result holds a NaN, it is summed again by
        :meth:`_hessian_dropping_zero_weights` (as :meth:`_stream` does).
        """
        xp = namespace(x)
        N, D = x.shape
        dev = device_of(x)
        gamma, var = self._coefs(x, process, t)
        xT = _transpose(x)
        hvp = v is not None
        vT = _transpose(v) if hvp else None
        want = ("grad", "inv_v") if hvp else ("grad", "inv_trace")
        m = xp.full((N,), -xp.inf, dtype=x.dtype, device=dev)
        W = xp.zeros((N,), dtype=x.dtype, device=dev)  # sum of weights b_k so far
        s = xp.zeros((D, N), dtype=x.dtype, device=dev)  # running posterior mean of the component scores
        out_shape = (D, N) if hvp else (N,)
        curv = xp.zeros(out_shape, dtype=x.dtype, device=dev)  # sum_k b_k (-C_k^{-1}) [v]
        spread = xp.zeros(out_shape, dtype=x.dtype, device=dev)  # sum_k b_k (s_k - s)(s_k - s)^T [v]
        # a NaN made here is caught below (see _posterior_sums); a far point's fields and their spread may overflow, as
        # its score's do (the weights come from _softmax there, quietly)
        with np.errstate(invalid="ignore", over="ignore"):
            for logit, fields in self._components(xT, gamma, var, want, vT=vT):
                m_new = xp.maximum(m, logit)
                a, b = xp.exp(m - m_new), xp.exp(logit - m_new)
                W_old = W * a
                W = W_old + b
                delta = fields["grad"] - s  # (D, N)
                s = s + (b / W) * delta
                frac = b * W_old / W  # (N,)
                if hvp:
                    spread = spread * a + (frac * xp.sum(delta * vT, axis=0)) * delta
                    curv = curv * a - b * fields["inv_v"]
                else:
                    spread = spread * a + frac * xp.sum(delta * delta, axis=0)
                    curv = curv * a - b * fields["inv_trace"]
                m = m_new
        out = (curv + spread) / W
        if has_nan(out):
            out = self._hessian_dropping_zero_weights(xT, gamma, var, vT)
        return _transpose(out) if hvp else out

    def _hessian_dropping_zero_weights(self, xT, gamma, var, vT):
        r""":meth:`_stream_hessian`'s sums, (N,) or (D, N), from the final posterior r (K, N), a component adding
        exactly 0 where its :math:`r_k` is exactly 0. Three passes over the components: the logits; then
        :math:`s=\sum_kr_ks_k` and :math:`\sum_kr_k(-C_k^{-1})[v]`; then the centred spread
        :math:`\sum_kr_k(s_k-s)(s_k-s)^\top[v]` (no difference of large numbers either)."""
        xp = namespace(xT)
        hvp = vT is not None
        inv = "inv_v" if hvp else "inv_trace"
        _, e, total = self._softmax(xT, gamma, var)
        r = e / total  # p(k | x_t), (K, N)
        sums = self._posterior_sums(xT, gamma, var, ("grad", inv), r, drop_zero_weights=True, vT=vT)
        s, curv = sums["grad"], -sums[inv]  # (D, N); (D, N) or (N,)
        spread = 0.0
        with np.errstate(invalid="ignore", over="ignore"):  # as in _stream_hessian
            for i, (_, fields) in enumerate(self._components(xT, gamma, var, ("grad",), logits=False)):
                r_i = r[i, :]
                delta = xp.where(r_i > 0, fields["grad"], s) - s  # s_k - s, and 0 where r_k = 0
                spread = spread + r_i * (xp.sum(delta * vT, axis=0) * delta if hvp else xp.sum(delta * delta, axis=0))
        return curv + spread

    def _logits(self, x, process, t):
        """Per-component logits as a (K_active, N) array (components on the leading axis)."""
        gamma, var = self._coefs(x, process, t)
        return self._stacked_logits(_transpose(x), gamma, var)

    def _stacked_logits(self, xT, gamma, var):
        """:meth:`_components`' logits from the (D, N) layout, stacked as (K_active, N)."""
        return namespace(xT).stack([logit for logit, _ in self._components(xT, gamma, var, ())], axis=0)

    # --------------------------------------------------------------- queries
    def _twin(self, x, backend):
        """The kernel module that evaluates x, or None for the reference."""
        work = x.shape[0] * self._active.shape[0] * self.dim
        name = _pick_backend(backend, x, work)
        return None if name == "numpy" else _kernel_module(name)

    def log_prob(self, x, process=None, t=None, *, backend="auto"):
        r""":math:`\log p_t(x)` per row of x, shape (N,).

        ``backend`` is "auto", "numpy" (the reference), "numba" or "cupy"
        (see the module docstring); a twin returns the same numbers to the
        precision of the dtype. An explicitly requested twin whose package
        is missing raises ImportError naming the extra to install.
        """
        x = _check_points(x, self.dim, finite=False)
        twin = self._twin(x, backend)
        if twin is not None:  # the twin checks x (no second pass over it here)
            return twin.mixture_log_prob(self, x, process, t)
        check_finite(x, "x")
        return self._stream(x, process, t, ())[0]

    def score(self, x, process=None, t=None, *, backend="auto"):
        r""":math:`\nabla_x\log p_t(x)=\sum_kp(k|x_t)\,C_k^{-1}(\gamma_t\mu_k-x)`, shape (N, D).

        ``backend`` as in :meth:`log_prob`.
        """
        x = _check_points(x, self.dim, finite=False)
        twin = self._twin(x, backend)
        if twin is not None:  # the twin checks x (no second pass over it here)
            return twin.mixture_score(self, x, process, t)
        check_finite(x, "x")
        return self._stream(x, process, t, ("grad",))[1]["grad"]

    def score_divergence(self, x, process=None, t=None):
        r"""Divergence of the score, the Laplacian :math:`\Delta\log p_t(x)=\mathrm{tr}\,\nabla^2\log p_t(x)`, shape (N,).

        Differentiating :math:`s=\sum_kr_ks_k` with
        :math:`s_k=-C_k^{-1}(x-\gamma_t\mu_k)` and
        :math:`\nabla r_k=r_k(s_k-s)` gives

        .. math::

            \nabla^2\log p_t=\sum_kr_k\big(-C_k^{-1}+s_ks_k^\top\big)-ss^\top,
            \qquad
            \Delta\log p_t=\sum_kr_k\big(|s_k|^2-\mathrm{tr}\,C_k^{-1}\big)-|s|^2,

        with :math:`\mathrm{tr}\,C_k^{-1}=\sum_i1/(\gamma_t^2\lambda_{k,i}+\sigma_t^2)`
        from the stored eigenvalues. The second moment minus :math:`|s|^2` is
        accumulated as a posterior variance (no cancellation). This is the
        exact divergence the probability-flow likelihood needs
        (:func:`refdiff.likelihood.ode_log_likelihood`).
        """
        x = _check_points(x, self.dim)
        return self._stream_hessian(x, process, t, None)

    def score_hvp(self, x, v, process=None, t=None):
        r"""Hessian-vector product :math:`\nabla^2\log p_t(x)\,v`, shape (N, D), one ``v`` row per example.

        :math:`\sum_kr_k\big(-C_k^{-1}v+s_k(s_k\cdot v)\big)-s(s\cdot v)`
        (see :meth:`score_divergence`). The Jacobian of the score is this
        symmetric Hessian, so the result is both the score's Jacobian-vector
        and vector-Jacobian product.
        """
        x = _check_points(x, self.dim)
        v = _check_points(v, self.dim, "v")
        if v.shape[0] != x.shape[0]:
            raise ValueError(f"v must have one row per row of x, shape {tuple(x.shape)}, got {tuple(v.shape)}")
        xp = namespace(x, v)
        return self._stream_hessian(x, process, t, xp.astype(v, x.dtype))

    def component_posterior(self, x, process=None, t=None):
        r""":math:`p(k|x_t)`, shape (N, K); zero for zero-weight components."""
        x = _check_points(x, self.dim)
        xp = namespace(x)
        gamma, var = self._coefs(x, process, t)
        _, e, total = self._softmax(_transpose(x), gamma, var)  # (K_active, N)
        r = e / total
        if self._active.shape[0] == self.n_components:
            return xp.permute_dims(r, (1, 0))
        full = xp.zeros((self.n_components, x.shape[0]), dtype=x.dtype, device=device_of(x))
        for i, k in enumerate(self._active):
            full[int(k), :] = r[i, :]
        return xp.permute_dims(full, (1, 0))

    def denoise(self, x_t, process, t):
        r"""Tweedie's :math:`E[x_0|x_t]` for data from this mixture, shape (N, D)."""
        x_t = _check_points(x_t, self.dim, "x_t")
        return self._stream(x_t, process, t, ("x0",))[1]["x0"]

    def eps(self, x_t, process, t):
        r""":math:`E[\epsilon|x_t]=(x_t-\gamma_tE[x_0|x_t])/\sigma_t`, the optimal eps-prediction."""
        x_t = _check_points(x_t, self.dim, "x_t")
        gamma, var = _process_coefs(process, t)
        if np.any(var == 0):
            raise ValueError("eps is undefined at sigma_t = 0 (t = 0)")
        x0 = self._stream(x_t, process, t, ("x0",))[1]["x0"]
        return (x_t - per_example(gamma, x_t) * x0) / per_example(np.sqrt(var), x_t)

    def sample(self, n: int, rng=None, return_labels: bool = False):
        """Draw ``n`` samples (float64 NumPy, shape (n, D)).

        Each example uses the i-th draw of two streams spawned from ``rng``
        (one for the component, one for the Gaussian), so example i does not
        depend on ``n``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        pick_rng, noise_rng = as_rng(rng).spawn(2)
        u = pick_rng.random(n)
        labels = np.minimum(np.searchsorted(np.cumsum(self.weights), u, side="right"), self.n_components - 1)
        while np.any(self.weights[labels] == 0):  # a rounding edge landed on an empty component
            labels = np.where(self.weights[labels] == 0, labels - 1, labels)
        z = noise_rng.standard_normal((n, self.dim))
        scale = np.sqrt(self._lam)
        if self.kind == "isotropic":
            x = self.means[labels] + scale[labels, None] * z
        elif self.kind == "diagonal":
            x = self.means[labels] + scale[labels] * z
        else:
            x = self.means[labels] + np.einsum("nij,nj->ni", self._U[labels], scale[labels] * z)
        return (x, labels) if return_labels else x


class Gaussian(GaussianMixture):
    r"""A single Gaussian :math:`\mathcal N(\mu,\Sigma)`, with the exact probability-flow ODE map.

    Parameters
    ----------
    mean : array_like, shape (D,)
    cov : array_like, shape (D, D), (D,) or scalar (variance)
    """

    def __init__(self, mean, cov):
        mu = np.asarray(to_numpy(as_float_array(mean, "mean")), dtype=np.float64)
        if mu.ndim != 1:
            raise ValueError(f"mean must be 1-D, got shape {mu.shape}")
        c = np.asarray(to_numpy(as_float_array(cov, "cov")), dtype=np.float64)
        if c.ndim > 2:
            raise ValueError(f"cov must be a scalar, (D,) or (D, D), got shape {c.shape}")
        super().__init__(np.ones(1), mu[None, :], c[None, ...] if c.ndim else np.reshape(c, (1,)))

    def ode_solution(self, x, process, t_from, t_to):
        r"""Exact solution of the probability-flow ODE from time ``t_from`` to ``t_to``.

        For Gaussian data every :math:`C_t=\gamma_t^2\Sigma+\sigma_t^2I`
        shares the eigenvectors of :math:`\Sigma`, and in those coordinates
        :math:`(x_t-\gamma_t\mu)/\sqrt{c_t}` is constant along the ODE
        (:math:`\dot c=2fc+g^2` gives :math:`\tfrac{d}{dt}\log\sqrt c=f+g^2/2c`,
        the ODE's own rate). Hence
        :math:`x_{t'}=\gamma_{t'}\mu+U\,\mathrm{diag}(\sqrt{c_{t'}/c_t})\,U^\top(x_t-\gamma_t\mu)`.
        Either time may be a scalar or one per row.
        """
        x = _check_points(x, self.dim)
        for t, name in ((t_from, "t_from"), (t_to, "t_to")):  # named here: the coefficients' own check calls it t
            if isinstance(process, DiscreteSchedule):
                process.check_step(t, name)
            elif process is not None and t is not None:
                process.check_time(t, name)
        g0, v0 = _process_coefs(process, t_from)
        g1, v1 = _process_coefs(process, t_to)
        lam = self._lam[0]
        c0 = np.multiply.outer(g0**2, lam) + (v0[..., None] if np.ndim(lam) else v0)
        c1 = np.multiply.outer(g1**2, lam) + (v1[..., None] if np.ndim(lam) else v1)
        if np.any(c0 == 0):
            raise ValueError("t_from has zero marginal variance; the ODE map starts from a point mass there")
        ratio = np.sqrt(c1 / c0)
        mu = _on(x, self.means[0])
        z = x - per_example(g0, x, "t_from") * mu
        U = None if self._U is None else _on(x, self._U[0])
        if np.ndim(lam) == 0:
            scaled = per_example(ratio, x, "t") * z
        else:
            y = z if U is None else z @ U
            scaled = _on(x, ratio) * y
            scaled = scaled if U is None else scaled @ U.T
        return per_example(g1, x, "t_to") * mu + scaled


class EmpiricalData:
    r"""A finite data set :math:`\{x^{(i)}\}_{i=1}^M`, its diffused marginals and exact optimal denoiser.

    :math:`p_t=\frac1M\sum_i\mathcal N(\gamma_tx^{(i)},\sigma_t^2I)`: what a
    perfectly memorising model learns (Karras et al. 2022, appendix B.3).
    Its denoiser is the softmax-weighted average
    :math:`E[x_0|x_t]=\sum_i \mathrm{softmax}_i(-\|x_t-\gamma_tx^{(i)}\|^2/2\sigma_t^2)\,x^{(i)}`.
    Only t with :math:`\sigma_t>0` is allowed: at t = 0 the data are point masses.

    Parameters
    ----------
    points : array_like, shape (M, D)
    block : int
        Rows of x evaluated at once; bounds memory to about ``block * M * D``
        numbers (squared distances are taken directly, not through the
        cancelling :math:`\|a\|^2-2a\cdot b+\|b\|^2`).
    """

    def __init__(self, points, block: int = 256):
        p = np.array(to_numpy(as_float_array(points, "points")), dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < 1:
            raise ValueError(f"points must have shape (M, D) with M >= 1, got {p.shape}")
        check_finite(p, "points")
        if not isinstance(block, (int, np.integer)) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        p.flags.writeable = False
        self.points, self.block = p, int(block)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def __repr__(self):
        return f"EmpiricalData(M={self.points.shape[0]}, D={self.dim})"

    def _posterior(self, x, process, t):
        """(log p_t(x) (N,), softmax weights (N, M))."""
        xp = namespace(x)
        N, D = x.shape
        M = self.points.shape[0]
        gamma, var = _process_coefs(process, t)
        if np.any(var == 0):
            raise ValueError("EmpiricalData needs sigma_t > 0 (at t = 0 the data are point masses)")
        g_x, v_x = per_example(gamma, x, "t"), per_example(var, x, "t")
        pts = _on(x, self.points)
        logps, weights = [], []
        for start in range(0, N, self.block):
            xb = x[start : start + self.block, :]
            gb = g_x if gamma.ndim == 0 else g_x[start : start + self.block, :]
            vb = v_x if var.ndim == 0 else v_x[start : start + self.block, :]
            diff = xb[:, None, :] - gb[:, :, None] * pts[None, :, :] if gamma.ndim else xb[:, None, :] - gb * pts
            with np.errstate(over="ignore"):  # a far point's |x - gamma x_i|^2 overflows: taken below
                d2 = xp.sum(diff * diff, axis=2)  # (n, M)
                logits = -0.5 * d2 / vb
            mx = xp.max(logits, axis=1, keepdims=True)
            far = mx == -math.inf  # (n, 1): every logit overflowed, log p underflows
            if bool(xp.any(far)):
                g_host = gamma if gamma.ndim == 0 else gamma[start : start + self.block]
                v_host = var if var.ndim == 0 else var[start : start + self.block]
                rel = _on(x, self._far_logits(to_numpy(xb).astype(np.float64), g_host, v_host))
                logits = xp.where(far, rel, logits)
                mx = xp.where(far, xp.zeros_like(mx), mx)
            e = xp.exp(logits - mx)
            s = xp.sum(e, axis=1, keepdims=True)
            weights.append(e / s)
            logps.append(xp.reshape(xp.where(far, -math.inf, mx + xp.log(s)), (-1,)))
        logp = xp.concat(logps) - math.log(M) - 0.5 * D * _on(x, np.log(2.0 * math.pi * var))
        return logp, xp.concat(weights, axis=0)

    def _far_logits(self, x, gamma, var):
        r"""The logits less their row maximum, :math:`-(d_i-\min_jd_j)/2\sigma^2` with
        :math:`d_i=\|x-\gamma x^{(i)}\|^2`, host float64 (n, M), for points x (n, D) so far from the data that
        :math:`d_i/2\sigma^2` overflows: the distances are taken of the differences scaled by :math:`2^{-E}`,
        :math:`2^E` above every :math:`|x_j|` and :math:`|\gamma x^{(i)}_j|` of the row (exact), as
        :meth:`GaussianMixture._far_weights` does. ``gamma``, ``var`` host float64, () or (n,)."""
        g = np.broadcast_to(gamma, (x.shape[0],))
        big = np.maximum(np.max(np.abs(x), axis=1), np.abs(g) * np.max(np.abs(self.points)))
        E = np.frexp(big)[1][:, None]  # (n, 1)
        z = np.ldexp(x, -E)[:, None, :] - np.ldexp(g[:, None, None] * self.points[None], -E[:, :, None])  # (n, M, D)
        d = np.sum(z * z, axis=2)  # (n, M), 2^-2E d_i
        with np.errstate(over="ignore"):  # past the range: an infinitely smaller weight
            return -0.5 * np.ldexp(d - np.min(d, axis=1, keepdims=True), 2 * E) / np.broadcast_to(var, g.shape)[:, None]

    def log_prob(self, x, process, t):
        r""":math:`\log p_t(x)`, shape (N,)."""
        x = _check_points(x, self.dim)
        return self._posterior(x, process, t)[0]

    def posterior(self, x_t, process, t):
        r""":math:`p(x_0=x^{(i)}|x_t)`, shape (N, M)."""
        x_t = _check_points(x_t, self.dim, "x_t")
        return self._posterior(x_t, process, t)[1]

    def denoise(self, x_t, process, t):
        r"""The optimal denoiser :math:`E[x_0|x_t]`, shape (N, D)."""
        x_t = _check_points(x_t, self.dim, "x_t")
        return self._posterior(x_t, process, t)[1] @ _on(x_t, self.points)

    def score(self, x_t, process, t):
        r""":math:`\nabla\log p_t(x_t)=(\gamma_tE[x_0|x_t]-x_t)/\sigma_t^2`."""
        x_t = _check_points(x_t, self.dim, "x_t")
        gamma, var = _process_coefs(process, t)
        x0 = self.denoise(x_t, process, t)
        return (per_example(gamma, x_t) * x0 - x_t) / per_example(var, x_t)

    def eps(self, x_t, process, t):
        r"""The optimal eps-prediction :math:`(x_t-\gamma_tE[x_0|x_t])/\sigma_t`."""
        x_t = _check_points(x_t, self.dim, "x_t")
        gamma, var = _process_coefs(process, t)
        x0 = self.denoise(x_t, process, t)
        return (x_t - per_example(gamma, x_t) * x0) / per_example(np.sqrt(var), x_t)
