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
float64). ``prange`` runs over row blocks (flat blocks for Adam) only; the
threading layer is Numba's choice or ``NUMBA_THREADING_LAYER`` (CI and the
benchmarks set ``workqueue``).
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.mlp_numba needs numba: pip install "refdiff[fast]"') from exc

__all__ = ["bias_silu_forward", "bias_silu_backward", "adam_update"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")
_ROWS = 64  # rows per parallel block of an (N, W) pass
_FLAT = 8192  # values per parallel block of a flat pass


@njit(parallel=True, **_JIT)
def _bias_half(a, b, has_b, s, half):
    """a <- a + b; s <- a * 1/2."""
    n, w = a.shape
    for k in prange((n + _ROWS - 1) // _ROWS):
        for i in range(k * _ROWS, min(n, (k + 1) * _ROWS)):
            if has_b:
                for j in range(w):
                    z = a[i, j] + b[j]
                    a[i, j] = z
                    s[i, j] = z * half
            else:
                for j in range(w):
                    s[i, j] = a[i, j] * half


@njit(parallel=True, **_JIT)
def _silu_residual(a, s, r, has_r, h, half):
    """s <- tanh(a/2)/2 + 1/2 (s holds tanh(a/2)); h <- a s (+ r)."""
    n, w = a.shape
    for k in prange((n + _ROWS - 1) // _ROWS):
        for i in range(k * _ROWS, min(n, (k + 1) * _ROWS)):
            if has_r:
                for j in range(w):
                    t = s[i, j] * half + half
                    s[i, j] = t
                    h[i, j] = a[i, j] * t + r[i, j]
            else:
                for j in range(w):
                    t = s[i, j] * half + half
                    s[i, j] = t
                    h[i, j] = a[i, j] * t


def bias_silu_forward(a, b=None, residual=None):
    """Twin of :func:`refdiff.nn.fused.bias_silu_forward`: ``(h, s)``, ``a`` overwritten with ``a + b``."""
    half = a.dtype.type(0.5)
    s = np.empty_like(a)
    h = np.empty_like(a)
    _bias_half(a, np.empty(0, a.dtype) if b is None else b, b is not None, s, half)
    np.tanh(s, out=s)
    _silu_residual(a, s, a if residual is None else residual, residual is not None, h, half)
    return h, s


@njit(parallel=True, **_JIT)
def _silu_backward(dh, a, s, dh_add, has_add, da, parts, one):
    """dh <- dh + dh_add (optional); da <- dh (y + s (1 - y)), y = a s; parts[k] <- column sums of block k."""
    n, w = a.shape
    for k in prange((n + _ROWS - 1) // _ROWS):
        acc = parts[k]
        for j in range(w):
            acc[j] = 0
        for i in range(k * _ROWS, min(n, (k + 1) * _ROWS)):
            for j in range(w):
                g = dh[i, j]
                if has_add:
                    g = g + dh_add[i, j]
                    dh[i, j] = g
                sj = s[i, j]
                y = a[i, j] * sj
                d = ((one - y) * sj + y) * g
                da[i, j] = d
                acc[j] += d


@njit(**_JIT)
def _add_column_sums(db, parts):
    """db += sum over blocks of parts, block by block in order."""
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            total[j] += parts[k, j]
    for j in range(db.shape[0]):
        db[j] += total[j]


def bias_silu_backward(dh, a, s, db=None, dh_add=None):
    """Twin of :func:`refdiff.nn.fused.bias_silu_backward`: a new (N, W) array; ``db`` incremented."""
    n, w = a.shape
    da = np.empty_like(a)
    parts = np.empty(((n + _ROWS - 1) // _ROWS, w), dtype=a.dtype)
    _silu_backward(dh, a, s, dh if dh_add is None else dh_add, dh_add is not None, da, parts, a.dtype.type(1.0))
    if db is not None:
        _add_column_sums(db, parts)
    return da


@njit(parallel=True, **_JIT)
def _adam(theta, g, m, v, c1, c2, decay, has_decay, inv_sqrt_bc2, eps, step_size):
    n = theta.shape[0]
    for k in prange((n + _FLAT - 1) // _FLAT):
        for i in range(k * _FLAT, min(n, (k + 1) * _FLAT)):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * c1
            m[i] = mi
            vi = v[i] + (gi * gi - v[i]) * c2
            v[i] = vi
            th = theta[i]
            if has_decay:
                th = th * decay
            theta[i] = th - (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size


def adam_update(theta, g, m, v, lr, beta1, beta2, eps, weight_decay, step, tmp=None):
    """Twin of :func:`refdiff.nn.fused.adam_update` (one pass; ``tmp`` is accepted and not needed)."""
    c = theta.dtype.type
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    _adam(theta, g, m, v, c(1.0 - beta1), c(1.0 - beta2), c(1.0 - lr * weight_decay), bool(weight_decay),
          c(1.0 / math.sqrt(bc2)), c(eps), c(lr / bc1))
