"""Numba twins of :mod:`refdiff.nn.fused` (the MLP step's elementwise work).

Reference twins, same names, arguments and argument order:

* :func:`bias_silu_forward`  <- ``refdiff.nn.fused.bias_silu_forward`` (same bits)
* :func:`bias_silu_backward` <- ``refdiff.nn.fused.bias_silu_backward`` (same bits
  except ``db``, summed over fixed 64-row blocks, then over blocks in order:
  the result does not depend on the thread count)
* :func:`adam_update`        <- ``refdiff.nn.fused.adam_update`` (same bits)

The forward pass is two fused passes around NumPy's SIMD ``np.tanh``
(Numba's own ``math.tanh`` is a scalar libm call, 20x slower): pass one adds
the bias and halves, pass two finishes the sigmoid, multiplies and adds the
residual. Every constant is passed in the array's dtype so that float32
arithmetic stays float32 (Numba would otherwise promote ``x * 0.5`` to
float64). Each kernel is a loop over row blocks (flat blocks for Adam),
run on Numba's threads (``prange``) only for arrays of at least
:data:`PARALLEL_MIN` values where the workers sleep between kernels
(:func:`runs_parallel`), else on the calling thread: waking the workers
costs more than the work below a million values, and spinning workers
starve the BLAS threads of the matrix products around them. The blocks and
their order are the same either way, so the results are too.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.mlp_numba needs numba: pip install "refdiff[fast]"') from exc

from refdiff.kernels._numba_math import PRANGE_ONLY, add_block_sums
from refdiff.nn.fused import numba_yields_to_blas

__all__ = ["bias_silu_forward", "bias_silu_backward", "adam_update", "PARALLEL_MIN", "runs_parallel"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")
_ROWS = 64  # rows per parallel block of an (N, W) pass
_FLAT = 8192  # values per parallel block of a flat pass

#: Values per array from which a twin runs its blocks on Numba's threads (below it, one thread). Float32,
#: 2 threads, forward + backward of one layer, times in us: (N, W) = (256, 128) NumPy 57, serial Numba 42,
#: parallel 305 (a parallel launch wakes the workers); (4096, 128) 2180, 1300, 1490; (4096, 512) 9000,
#: 5200, 4400.
PARALLEL_MIN = 1 << 20


def runs_parallel(size: int) -> bool:
    """Whether a twin call on arrays of ``size`` values runs in parallel: from :data:`PARALLEL_MIN` on, and
    only where Numba's workers sleep between kernels (:func:`refdiff.nn.fused.numba_yields_to_blas`)."""
    return size >= PARALLEL_MIN and numba_yields_to_blas()


@njit(inline="always", **_JIT)
def _bias_half_rows(a, b, has_b, s, half, k):
    """Rows of block k: a <- a + b; s <- a * 1/2."""
    for i in range(k * _ROWS, min(a.shape[0], (k + 1) * _ROWS)):
        if has_b:
            for j in range(a.shape[1]):
                z = a[i, j] + b[j]
                a[i, j] = z
                s[i, j] = z * half
        else:
            for j in range(a.shape[1]):
                s[i, j] = a[i, j] * half


@njit(parallel=PRANGE_ONLY, **_JIT)
def _bias_half(a, b, has_b, s, half, parallel):
    n_blocks = (a.shape[0] + _ROWS - 1) // _ROWS
    if parallel:
        for k in prange(n_blocks):
            _bias_half_rows(a, b, has_b, s, half, k)
    else:
        for k in range(n_blocks):
            _bias_half_rows(a, b, has_b, s, half, k)


@njit(inline="always", **_JIT)
def _silu_residual_rows(a, s, r, has_r, h, half, k):
    """Rows of block k: s <- tanh(a/2)/2 + 1/2 (s holds tanh(a/2)); h <- a s (+ r)."""
    for i in range(k * _ROWS, min(a.shape[0], (k + 1) * _ROWS)):
        if has_r:
            for j in range(a.shape[1]):
                t = s[i, j] * half + half
                s[i, j] = t
                h[i, j] = a[i, j] * t + r[i, j]
        else:
            for j in range(a.shape[1]):
                t = s[i, j] * half + half
                s[i, j] = t
                h[i, j] = a[i, j] * t


@njit(parallel=PRANGE_ONLY, **_JIT)
def _silu_residual(a, s, r, has_r, h, half, parallel):
    n_blocks = (a.shape[0] + _ROWS - 1) // _ROWS
    if parallel:
        for k in prange(n_blocks):
            _silu_residual_rows(a, s, r, has_r, h, half, k)
    else:
        for k in range(n_blocks):
            _silu_residual_rows(a, s, r, has_r, h, half, k)


def bias_silu_forward(a, b=None, residual=None):
    """Twin of :func:`refdiff.nn.fused.bias_silu_forward`: ``(h, s)``, ``a`` overwritten with ``a + b``."""
    half = a.dtype.type(0.5)
    s = np.empty_like(a)
    h = np.empty_like(a)
    par = runs_parallel(a.size)
    _bias_half(a, np.empty(0, a.dtype) if b is None else b, b is not None, s, half, par)
    np.tanh(s, out=s)
    _silu_residual(a, s, a if residual is None else residual, residual is not None, h, half, par)
    return h, s


@njit(inline="always", **_JIT)
def _silu_backward_rows(dh, a, s, dh_add, has_add, da, parts, one, k):
    """Rows of block k: dh <- dh + dh_add (optional); da <- dh (y + s (1 - y)), y = a s; parts[k] <- column sums."""
    acc = parts[k]
    for j in range(a.shape[1]):
        acc[j] = 0
    for i in range(k * _ROWS, min(a.shape[0], (k + 1) * _ROWS)):
        for j in range(a.shape[1]):
            g = dh[i, j]
            if has_add:
                g = g + dh_add[i, j]
                dh[i, j] = g
            sj = s[i, j]
            y = a[i, j] * sj
            d = ((one - y) * sj + y) * g
            da[i, j] = d
            acc[j] += d


@njit(parallel=PRANGE_ONLY, **_JIT)
def _silu_backward(dh, a, s, dh_add, has_add, da, parts, one, parallel):
    if parallel:
        for k in prange(parts.shape[0]):
            _silu_backward_rows(dh, a, s, dh_add, has_add, da, parts, one, k)
    else:
        for k in range(parts.shape[0]):
            _silu_backward_rows(dh, a, s, dh_add, has_add, da, parts, one, k)


def bias_silu_backward(dh, a, s, db=None, dh_add=None):
    """Twin of :func:`refdiff.nn.fused.bias_silu_backward`: a new (N, W) array; ``db`` incremented."""
    n, w = a.shape
    da = np.empty_like(a)
    parts = np.empty(((n + _ROWS - 1) // _ROWS, w), dtype=a.dtype)
    _silu_backward(dh, a, s, dh if dh_add is None else dh_add, dh_add is not None, da, parts, a.dtype.type(1.0),
                   runs_parallel(a.size))
    if db is not None:
        add_block_sums(db, parts)
    return da


@njit(inline="always", **_JIT)
def _adam_values(theta, g, m, v, c1, c2, decay, inv_sqrt_bc2, eps, step_size, k):
    """Values of flat block k: one Adam(W) step.

    The block is taken as slices, so the loop index starts at 0 (LLVM left a
    loop from ``k * _FLAT`` scalar: it could not rule out a negative index),
    and ``decay`` is exactly 1 without weight decay (theta * 1 is theta, bit
    for bit), so the loop has no branch either: 1.8 ns a value before, one
    float32 SIMD pass now."""
    lo, hi = k * _FLAT, min(theta.shape[0], (k + 1) * _FLAT)
    th, gb, mb, vb = theta[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for i in range(hi - lo):
        gi = gb[i]
        mi = mb[i] + (gi - mb[i]) * c1
        mb[i] = mi
        vi = vb[i] + (gi * gi - vb[i]) * c2
        vb[i] = vi
        th[i] = th[i] * decay - (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size


@njit(parallel=PRANGE_ONLY, **_JIT)
def _adam(theta, g, m, v, c1, c2, decay, inv_sqrt_bc2, eps, step_size, parallel):
    n_blocks = (theta.shape[0] + _FLAT - 1) // _FLAT
    if parallel:
        for k in prange(n_blocks):
            _adam_values(theta, g, m, v, c1, c2, decay, inv_sqrt_bc2, eps, step_size, k)
    else:
        for k in range(n_blocks):
            _adam_values(theta, g, m, v, c1, c2, decay, inv_sqrt_bc2, eps, step_size, k)


def adam_update(theta, g, m, v, lr, beta1, beta2, eps, weight_decay, step, tmp=None):
    """Twin of :func:`refdiff.nn.fused.adam_update` (one pass; ``tmp`` is accepted and not needed)."""
    c = theta.dtype.type
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    _adam(theta, g, m, v, c(1.0 - beta1), c(1.0 - beta2), c(1.0 - lr * weight_decay), c(1.0 / math.sqrt(bc2)),
          c(eps), c(lr / bc1), runs_parallel(theta.size))
