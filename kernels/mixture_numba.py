r"""Numba twins of :meth:`refdiff.analytic.GaussianMixture.score` and ``log_prob``.

Reference twin: ``GaussianMixture._stream`` in refdiff/analytic.py (the
specification). Same arguments, same numbers to the precision of the dtype:

    mixture_score(mixture, x, process=None, t=None)     -> (N, D), x's dtype
    mixture_log_prob(mixture, x, process=None, t=None)  -> (N,),   x's dtype

With :math:`C_k=\gamma_t^2\Sigma_k+\sigma_t^2I=U_k\,\mathrm{diag}(c_k)U_k^\top`
and :math:`z_k=x-\gamma_t\mu_k`,

.. math::

    \ell_k=\log w_k-\tfrac12\big(D\log2\pi+\textstyle\sum_i\log c_{k,i}\big)-\tfrac12 z_k^\top C_k^{-1}z_k,\qquad
    \log p_t(x)=\mathrm{LSE}_k\,\ell_k,\qquad
    \nabla\log p_t(x)=-\textstyle\sum_k\mathrm{softmax}(\ell)_k\,C_k^{-1}z_k .

Every quantity is formed from the difference :math:`z_k` (never from the
cancelling :math:`|x|^2-2x\cdot\mu+|\mu|^2`). The scalar-t kernel forms the
quadratic forms and the score in x's dtype, as the reference does (float32
data: twice the SIMD lanes), from constants derived in float64; logits, the
log-sum-exp and the softmax weights are float64. The per-point function works
in float64 throughout.

Two kernels:

* scalar t (every particle at one noise level): per-component constants are
  computed once per call on the host in float64 (``_constants``: the
  whitening :math:`W_k=\mathrm{diag}(c_k^{-1/2})U_k^\top`, or
  :math:`c_k^{-1/2}` per axis; the log-normaliser with :math:`\log w_k`;
  :math:`\gamma_t\mu_k`). The kernel (``_score_blocked``) takes particles in
  blocks of ``BLOCK``, transposes each block to (D, B) and holds its logits as
  (K, B), so every inner loop runs over the B particles of a block: loads are
  contiguous, there is no reduction over a short axis, and LLVM vectorises
  the loops without reassociating a sum. Numba's ``math.exp`` is a scalar
  libm call here (no SVML), which would floor the kernel at N*K calls; the
  softmax uses ``_exp_nonpos`` instead, a branch-free Cody-Waite exp
  (degree-12 polynomial, 2^n built from its bits, about 1 ulp) that
  vectorises with the rest of the loop.
* one t per particle (``_score_pointwise``): each particle calls
  :func:`mixture_score_point`, which forms :math:`c_k` for its own t (one
  streaming pass, online log-sum-exp).

``prange`` runs over particle blocks only (the outermost loop); there is no
``fastmath`` and no random number inside a kernel.

Per-point device function
-------------------------
Another kernel (a fused sampler loop) can call, inside its own particle loop::

    logp = mixture_score_point(x, g, v, log_w, mu, lam, U, kind, out, work)

======== ===================== ====================================================
argument shape, dtype          meaning
======== ===================== ====================================================
x        (D,) float32/float64  the point x_t (read only)
g, v     float64 scalars       gamma_t and sigma_t^2 of the process at this t
log_w    (K,) float64          log w_k of the active (w_k > 0) components
mu       (K, D) float64        component means mu_k (not scaled by gamma)
lam      (K, D) float64        eigenvalues of Sigma_k (isotropic: the variance
                               repeated D times; diagonal: the variances)
U        (K, D, D) float64     eigenvectors of Sigma_k as columns (kind 2 only;
                               pass any 3-D float64 array, e.g. (1, 1, 1), else)
kind     int                   0 isotropic, 1 diagonal, 2 full
out      (D,) float64          overwritten with the score grad log p_t(x)
work     (D,) float64          scratch
returns  float64               log p_t(x)
======== ===================== ====================================================

``mixture_arrays(mixture)`` returns ``(log_w, mu, lam, U, kind)`` for a
:class:`~refdiff.analytic.GaussianMixture`. The function allocates nothing and
releases the GIL with its caller (``nogil``); it costs O(K D) (O(K D^2) for
full covariances) plus K logs and K exps per call.

Requires the ``fast`` extra (``pip install "refdiff[fast]"``).
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.mixture_numba needs numba: pip install "refdiff[fast]"') from exc

__all__ = ["mixture_score", "mixture_log_prob", "mixture_score_point", "mixture_arrays", "BLOCK"]

#: Particles per block of the scalar-t kernel (one block's (K, B) logits stay in L1/L2).
BLOCK = 64

_LOG_2PI = math.log(2.0 * math.pi)
_ISOTROPIC, _DIAGONAL, _FULL = 0, 1, 2
_JIT = dict(cache=True, nogil=True, error_model="numpy")

# --------------------------------------------------------------------------- vectorisable exp
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm): n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_EXP_MIN = -708.0  # exp(-708) is still a normal float64; below it the result is returned as 0

if numba.config.DISABLE_JIT:  # plain Python: the bit cast below has no Python implementation

    def _exp_nonpos(v):
        return math.exp(v)

else:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _bits_as_float64(typingctx, bits):
        """Reinterpret an int64 as the float64 with the same bits (LLVM bitcast; vectorises)."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(types.int64), codegen

    @njit(inline="always", **_JIT)
    def _exp_nonpos(v):
        """exp(v) for v <= 0 without a libm call: v = n ln2 + r, |r| <= ln2/2, exp(r) by Taylor to r^12 (error < 2.5e-16)."""
        u = max(v, _EXP_MIN)
        n = np.int64(u * _LOG2E + 1024.5) - 1024  # floor(u / ln2 + 1/2), the operand is positive
        nf = np.float64(n)
        r = (u - nf * _LN2_HI) - nf * _LN2_LO
        p = 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        e = p * _bits_as_float64((n + 1023) << 52)  # p * 2^n, n in [-1021, 0]
        return e if v >= _EXP_MIN else 0.0


# --------------------------------------------------------------------------- scalar t: blocked kernel
@njit(parallel=True, **_JIT)
def _score_blocked(x, gmu, scale, W, const, full, want_score, tiny, score, logp):
    """Scalar-t twin of ``_stream``: logits (K, B) per block of B particles, then the softmax-weighted score.

    x (N, D); gmu (K, D) = gamma mu_k; scale (K, D) = c_k^{-1/2} (kinds 0, 1);
    W (K, D, D) whitening diag(c_k^{-1/2}) U_k^T (kind 2, ``full``); const (K,)
    = log w_k - (D log 2pi + log det C_k) / 2. Writes score (N, D) if
    ``want_score`` and logp (N,). Softmax weights below ``tiny`` (the
    smallest normal number of x's dtype) count as 0, and a component whose
    weights are all 0 in a block is skipped there (in high dimension the
    posterior is nearly one-hot, so most are).
    """
    N, D = x.shape
    K = gmu.shape[0]
    B = BLOCK
    n_blocks = (N + B - 1) // B
    for ib in prange(n_blocks):
        lo = ib * B
        nb = min(B, N - lo)
        xt = np.empty((D, B), x.dtype)  # the block, transposed
        z = np.empty((D, B), x.dtype)  # x - gamma mu_k
        y = np.empty((D, B), x.dtype)  # whitened z
        quad = np.empty(B, x.dtype)
        L = np.empty((K, B))  # logits, then exp(logit - max), float64
        m = np.full(B, -np.inf)
        total = np.zeros(B)
        r = np.empty(B, x.dtype)
        for d in range(D):
            for b in range(nb):
                xt[d, b] = x[lo + b, d]
        # pass 1: logits l_k = const_k - |W_k z_k|^2 / 2, held as (K, B)
        for k in range(K):
            quad[:nb] = 0.0
            if full:
                for d in range(D):
                    for b in range(nb):
                        z[d, b] = xt[d, b] - gmu[k, d]
                for e in range(D):
                    y[e, :nb] = 0.0
                    for d in range(D):
                        w = W[k, e, d]
                        for b in range(nb):
                            y[e, b] += w * z[d, b]
                    for b in range(nb):
                        quad[b] += y[e, b] * y[e, b]
            else:
                for d in range(D):
                    g, s = gmu[k, d], scale[k, d]
                    for b in range(nb):
                        yy = (xt[d, b] - g) * s
                        quad[b] += yy * yy
            for b in range(nb):
                L[k, b] = const[k] - 0.5 * np.float64(quad[b])
                m[b] = max(m[b], L[k, b])
        # log-sum-exp down the K axis
        for k in range(K):
            for b in range(nb):
                e_kb = _exp_nonpos(L[k, b] - m[b])
                L[k, b] = e_kb
                total[b] += e_kb
        for b in range(nb):
            logp[lo + b] = m[b] + math.log(total[b])
        if not want_score:
            continue
        # pass 2: score = -sum_k r_k C_k^{-1} z_k with r_k the softmax weight
        acc = np.zeros((D, B), x.dtype)  # the score block, transposed
        for k in range(K):
            r_max = 0.0
            for b in range(nb):
                w = L[k, b] / total[b]  # softmax weight r_k
                w = w if w >= tiny else 0.0  # flush weights below the dtype's normal range (subnormals are slow)
                r[b] = w
                r_max = max(r_max, w)
            if r_max == 0.0:  # component k adds exactly nothing to this block
                continue
            if full:
                for d in range(D):
                    for b in range(nb):
                        z[d, b] = xt[d, b] - gmu[k, d]
                for e in range(D):
                    y[e, :nb] = 0.0
                    for d in range(D):
                        w = W[k, e, d]
                        for b in range(nb):
                            y[e, b] += w * z[d, b]
                    for b in range(nb):
                        y[e, b] *= r[b]
                for e in range(D):  # acc -= W_k^T (r_k y_k)
                    for d in range(D):
                        w = W[k, e, d]
                        for b in range(nb):
                            acc[d, b] -= w * y[e, b]
            else:
                for d in range(D):
                    g, s = gmu[k, d], scale[k, d]
                    s2 = s * s
                    for b in range(nb):
                        acc[d, b] -= r[b] * ((xt[d, b] - g) * s2)
        for d in range(D):
            for b in range(nb):
                score[lo + b, d] = acc[d, b]


# --------------------------------------------------------------------------- one t per particle
@njit(**_JIT)
def mixture_score_point(x, g, v, log_w, mu, lam, U, kind, out, work):
    """Score (into ``out``) and log-density (returned) of the diffused mixture at one point; see the module docstring."""
    D = x.shape[0]
    K = log_w.shape[0]
    q = work  # C_k^{-1} z in eigen coordinates, (D,)
    for d in range(D):
        out[d] = 0.0
    m = -np.inf
    total = 0.0
    g2 = g * g
    for k in range(K):
        quad = 0.0
        logdet = 0.0
        if kind == _FULL:
            for e in range(D):
                ye = 0.0
                for d in range(D):
                    ye += U[k, d, e] * (x[d] - g * mu[k, d])
                c = g2 * lam[k, e] + v
                q[e] = ye / c
                quad += ye * q[e]
                logdet += math.log(c)
        else:
            c0 = g2 * lam[k, 0] + v
            if kind == _ISOTROPIC:
                logdet = D * math.log(c0)
            for d in range(D):
                c = c0 if kind == _ISOTROPIC else g2 * lam[k, d] + v
                zd = x[d] - g * mu[k, d]
                q[d] = zd / c
                quad += zd * q[d]
                if kind == _DIAGONAL:
                    logdet += math.log(c)
        logit = log_w[k] - 0.5 * (D * _LOG_2PI + logdet) - 0.5 * quad
        # online log-sum-exp: rescale what was accumulated to the new running max
        if logit > m:
            a, b = math.exp(m - logit), 1.0
            m = logit
        else:
            a, b = 1.0, math.exp(logit - m)
        total = total * a + b
        if kind == _FULL:
            for d in range(D):
                s = 0.0
                for e in range(D):
                    s += U[k, d, e] * q[e]
                out[d] = out[d] * a - b * s
        else:
            for d in range(D):
                out[d] = out[d] * a - b * q[d]
    for d in range(D):
        out[d] /= total
    return m + math.log(total)


@njit(parallel=True, **_JIT)
def _score_pointwise(x, gamma, var, log_w, mu, lam, U, kind, want_score, score, logp):
    """One t per particle: gamma, var (N,) float64; calls :func:`mixture_score_point` per particle."""
    N, D = x.shape
    B = BLOCK
    n_blocks = (N + B - 1) // B
    for ib in prange(n_blocks):
        out = np.empty(D)
        work = np.empty(D)
        for n in range(ib * B, min(N, ib * B + B)):
            logp[n] = mixture_score_point(x[n], gamma[n], var[n], log_w, mu, lam, U, kind, out, work)
            if want_score:
                for d in range(D):
                    score[n, d] = out[d]


# --------------------------------------------------------------------------- host side
def mixture_arrays(mixture):
    """``(log_w, mu, lam, U, kind)`` float64 arrays of the active components, as :func:`mixture_score_point` takes them."""
    active = mixture._active
    K, D = active.shape[0], mixture.dim
    kind = {"isotropic": _ISOTROPIC, "diagonal": _DIAGONAL, "full": _FULL}[mixture.kind]
    lam = np.broadcast_to(mixture._lam[active].reshape(K, -1), (K, D))
    U = mixture._U[active] if kind == _FULL else np.zeros((1, 1, 1))
    return (
        np.log(mixture.weights[active]),
        np.ascontiguousarray(mixture.means[active]),
        np.ascontiguousarray(lam, dtype=np.float64),
        np.ascontiguousarray(U, dtype=np.float64),
        kind,
    )


def _constants(log_w, mu, lam, U, kind, g, v):
    """Per-component float64 constants of the scalar-t kernel: (gmu, scale, W, const)."""
    K, D = mu.shape
    c = g * g * lam + v  # (K, D) eigenvalues of C_k
    const = log_w - 0.5 * (D * _LOG_2PI + np.sum(np.log(c), axis=1))
    scale = 1.0 / np.sqrt(c)
    W = (np.swapaxes(U, 1, 2) * scale[:, :, None]) if kind == _FULL else np.zeros((1, 1, 1))
    return np.ascontiguousarray(g * mu), scale, np.ascontiguousarray(W), const


def _evaluate(mixture, x, process, t, want_score):
    from refdiff.analytic import _check_points, _process_coefs
    from refdiff.backend import per_example

    x = _check_points(x, mixture.dim)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"the numba twin takes NumPy arrays, got {type(x).__module__}.{type(x).__qualname__}")
    dtype = x.dtype
    xk = np.ascontiguousarray(x if dtype in (np.float32, np.float64) else x.astype(np.float64))
    gamma, var = _process_coefs(process, t)
    per_example(gamma, x, "t")  # shape check of a per-example t
    N, D = xk.shape
    log_w, mu, lam, U, kind = mixture_arrays(mixture)
    score = np.empty((N, D) if want_score else (0, D), dtype=xk.dtype)
    logp = np.empty(N, dtype=xk.dtype)
    if N:
        if gamma.ndim == 0:
            gmu, scale, W, const = _constants(log_w, mu, lam, U, kind, float(gamma), float(var))
            gmu, scale, W = (a.astype(xk.dtype) for a in (gmu, scale, W))  # the quadratic forms run in x's dtype
            _score_blocked(xk, gmu, scale, W, const, kind == _FULL, want_score, float(np.finfo(xk.dtype).tiny), score, logp)
        else:
            g = np.ascontiguousarray(gamma, dtype=np.float64)
            v = np.ascontiguousarray(np.broadcast_to(var, g.shape), dtype=np.float64)
            _score_pointwise(xk, g, v, log_w, mu, lam, U, kind, want_score, score, logp)
    return (score if want_score else logp).astype(dtype, copy=False)


def mixture_score(mixture, x, process=None, t=None):
    r"""Numba twin of :meth:`GaussianMixture.score <refdiff.analytic.GaussianMixture.score>`: :math:`\nabla_x\log p_t(x)`, (N, D)."""
    return _evaluate(mixture, x, process, t, True)


def mixture_log_prob(mixture, x, process=None, t=None):
    r"""Numba twin of :meth:`GaussianMixture.log_prob <refdiff.analytic.GaussianMixture.log_prob>`: :math:`\log p_t(x)`, (N,)."""
    return _evaluate(mixture, x, process, t, False)
