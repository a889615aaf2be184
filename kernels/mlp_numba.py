"""Numba twins of :mod:`refdiff.nn.fused` (the MLP step's products and elementwise work).

Reference twins, same names, arguments and argument order:

* :func:`matmul`             <- ``refdiff.nn.fused.matmul`` (the product; sums
  in another order than BLAS: see below)
* :func:`bias_silu_forward`  <- ``refdiff.nn.fused.bias_silu_forward`` (a + b the
  same bits; the sigmoid to a few ulp, see below)
* :func:`bias_silu_backward` <- ``refdiff.nn.fused.bias_silu_backward`` (same bits
  except ``db``, summed over fixed 64-row blocks, then over blocks in order:
  the result does not depend on the thread count)
* :func:`adam_update`        <- ``refdiff.nn.fused.adam_update`` (same bits)
* :func:`sinusoidal_embedding` <- ``refdiff.nn.fused.sinusoidal_embedding`` (the
  same phases; their cosine and sine to 1 ulp in float64, then rounded to the
  dtype: see its docstring)

The forward pass is one fused pass: bias, sigmoid, product and residual per
value, the sigmoid by ``_numba_math.sigmoid`` (1/(1 + e) or e/(1 + e) with
e = exp(-|a|), a branch-free exp that vectorises; within 4 ulp of the true
sigmoid, where the reference's 1/2 + tanh(a/2)/2 is exact only to about an
ulp of 1/2). It replaced two passes around ``np.tanh``, whose float32 loop
took 1.4-1.7 ms at 4096 x 128 on this AVX2 CPU: one layer's forward went
from 1.8 to 0.7 ms there (float32, one thread). Every constant is passed in
the array's dtype so that float32 arithmetic stays float32 (Numba would otherwise promote ``x * 0.5`` to
float64). Each kernel is a loop over row blocks (flat blocks for Adam); the
blocks and their order are the same on one thread or many, so the results
are too.

Who gets the cores (:func:`products_by_tiles`, :func:`runs_parallel`):

* Numba's workers spin between kernels (its default OpenMP layer) and the
  CPU has 512-bit vectors: :func:`matmul` forms every product of the step as
  register tiles (``_numba_gemm``) on Numba's threads, and the bias + SiLU
  twins go parallel from :data:`SPIN_PARALLEL_MIN` values (spinning workers
  wake at once). What BLAS still does in the step (the output bias's GEMV,
  the gradient norm's dot product) stays on one BLAS thread at these sizes:
  the step took the same time with ``OPENBLAS_NUM_THREADS=1``. Adam keeps
  the rule below: it also serves networks whose products are BLAS's.
  Float32, 2 cores, ms per step (width, batch): (128, 256) 0.54,
  (128, 4096) 4.1, (512, 256) 3.7, (512, 4096) 38, against 0.62, 7.8, 5.4
  and 69 with the products by OpenBLAS's Haswell kernels and the twins on
  the calling thread (``benchmarks/mlp_step.py``, one run each of this
  version and the one before).
* The workers spin and the CPU lacks the vectors, or the layer is TBB's (not
  measured): products by BLAS, twins on the calling thread (spinning
  workers would starve BLAS's threads).
* The workers sleep between kernels (workqueue, ``OMP_WAIT_POLICY=PASSIVE``,
  one thread): products by BLAS (the workqueue layer barely spread the
  tiles over two threads), twins parallel from :data:`PARALLEL_MIN`.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.mlp_numba needs numba: pip install "refdiff[fast]"') from exc

from refdiff.kernels._numba_gemm import (TILES, VECTOR_BYTES, block_rows, blocked_matmul, columns_times_narrow,
                                         rows_times_narrow)
from refdiff.kernels._numba_math import PRANGE_ONLY, _sincos, add_block_sums, sigmoid
from refdiff.nn import layers
from refdiff.nn.fused import numba_threading_layer, numba_yields_to_blas

__all__ = ["matmul", "bias_silu_forward", "bias_silu_backward", "adam_update", "sinusoidal_embedding", "PARALLEL_MIN",
           "SPIN_PARALLEL_MIN", "TILES", "products_by_tiles", "runs_parallel"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")
_ROWS = 64  # rows per parallel block of an (N, W) pass
_FLAT = 8192  # values per parallel block of a flat pass

#: Values per array from which a twin runs its blocks on Numba's threads (below it, one thread). Float32,
#: 2 threads, forward + backward of one layer, times in us: (N, W) = (256, 128) NumPy 57, serial Numba 42,
#: parallel 305 (a parallel launch wakes the workers); (4096, 128) 2180, 1300, 1490; (4096, 512) 9000,
#: 5200, 4400.
PARALLEL_MIN = 1 << 20


#: Values per array from which a twin runs on Numba's threads where the step's products are tiles on those same
#: threads (:func:`products_by_tiles`): their workers spin between kernels, so waking them costs little.
#: Float32, 2 cores, ms per MLP step at (width, batch) = (128, 4096), (512, 256), (512, 4096): 5.3, 4.1, 44.8
#: with the elementwise twins on the calling thread; 4.3, 3.7, 40.1 in parallel from 65536 values on; 4.2, 4.0,
#: 38.1 from 262144. Only (512, 256), 131072 values an array, is decided differently by the two thresholds; the
#: other differences between those two rows are the machine's noise.
SPIN_PARALLEL_MIN = 1 << 16


def products_by_tiles() -> bool:
    """Whether :func:`matmul` forms products by register tiles on Numba's threads: where :data:`TILES` and the
    workers spin between kernels under OpenMP (Numba's default layer without TBB;
    :func:`refdiff.nn.fused.numba_yields_to_blas` false), so that a parallel product costs no wake-up.

    Float32, 2 cores, ms: C = A B at 256 x 128 x 128 took 0.019 on the spinning workers, 0.035 on one
    thread, 0.048 under the workqueue layer (which barely spread it: 7.3 against 9.2 at 4096 x 512 x 512,
    4.7 on spinning workers). Where the workers sleep, the products stay with BLAS.
    """
    return TILES and numba_threading_layer() == "omp" and not numba_yields_to_blas()


def matmul(a, b):
    """Twin of :func:`refdiff.nn.fused.matmul`: ``a @ b``, by register tiles on Numba's threads where
    :func:`products_by_tiles`, by NumPy otherwise.

    The tiles take 2-D float arrays of one dtype; ``b`` is copied to rows
    first where its rows are not contiguous (a weight's transpose: a copy of
    (in, out) values for a product of N times as many). A product whose
    result fills no vector per row (the output layer's D columns) is a
    narrow product: sums vectorised over ``a``'s rows where ``a`` is the
    transpose of a row-major array (as in ``h.T @ dout``), else dot products
    of ``a``'s rows (``a`` copied to rows first if need be). Each entry of a
    product is summed over the inner index in order, one FMA per term, but
    for the dot products (vector lanes); BLAS differs by the order of its
    partial sums. Rows per block: ``_numba_gemm.block_rows``.
    """
    if not (a.ndim == b.ndim == 2 and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and a.shape[1] == b.shape[0] and products_by_tiles()):
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    if b.shape[1] * b.itemsize >= VECTOR_BYTES:
        rows = block_rows(out.shape[0], out.shape[1], out.itemsize, numba.get_num_threads())
        blocked_matmul(a, np.ascontiguousarray(b), out, True, rows)
    elif a.T.flags.c_contiguous:
        columns_times_narrow(a.T, b, out, True)
    else:
        rows_times_narrow(np.ascontiguousarray(a), np.ascontiguousarray(b.T), out, True)
    return out


def runs_parallel(size: int, beside_tiles: bool = False) -> bool:
    """Whether a twin call on arrays of ``size`` values runs in parallel: from :data:`PARALLEL_MIN` on where
    Numba's workers sleep between kernels (:func:`refdiff.nn.fused.numba_yields_to_blas`); where they spin, from
    :data:`SPIN_PARALLEL_MIN` on for a twin whose products are the same workers' tiles (``beside_tiles``: the
    MLP's bias + SiLU twins, where :func:`products_by_tiles`), and never beside BLAS's threads (Adam, which
    also serves networks whose products are BLAS's)."""
    if numba_yields_to_blas():
        return size >= PARALLEL_MIN
    return beside_tiles and products_by_tiles() and size >= SPIN_PARALLEL_MIN


@njit(inline="always", **_JIT)
def _bias_silu_rows(a, b, has_b, r, has_r, h, s, one, k):
    """Rows of block k: a <- a + b; s <- sigma(a); h <- a s (+ r)."""
    for i in range(k * _ROWS, min(a.shape[0], (k + 1) * _ROWS)):
        for j in range(a.shape[1]):
            z = a[i, j]
            if has_b:
                z = z + b[j]
                a[i, j] = z
            t = sigmoid(z, one)
            s[i, j] = t
            y = z * t
            h[i, j] = y + r[i, j] if has_r else y


@njit(parallel=PRANGE_ONLY, **_JIT)
def _bias_silu(a, b, has_b, r, has_r, h, s, one, parallel):
    n_blocks = (a.shape[0] + _ROWS - 1) // _ROWS
    if parallel:
        for k in prange(n_blocks):
            _bias_silu_rows(a, b, has_b, r, has_r, h, s, one, k)
    else:
        for k in range(n_blocks):
            _bias_silu_rows(a, b, has_b, r, has_r, h, s, one, k)


def bias_silu_forward(a, b=None, residual=None):
    """Twin of :func:`refdiff.nn.fused.bias_silu_forward`: ``(h, s)``, ``a`` overwritten with ``a + b``."""
    s = np.empty_like(a)
    h = np.empty_like(a)
    _bias_silu(a, np.empty(0, a.dtype) if b is None else b, b is not None, a if residual is None else residual,
               residual is not None, h, s, a.dtype.type(1.0), runs_parallel(a.size, beside_tiles=True))
    return h, s


@njit(inline="always", **_JIT)
def _silu_backward_rows(dh, a, s, dh_add, has_add, da, parts, one, k):
    """Rows of block k: dh <- dh + dh_add (optional); da <- dh (s + y (1 - s)), y = a s; parts[k] <- column sums."""
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
            d = ((one - sj) * y + sj) * g
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
                   runs_parallel(a.size, beside_tiles=True))
    if db is not None:
        add_block_sums(db, parts)
    return da


@njit(inline="always", **_JIT)
def _adam_values(theta, g, m, v, b1, c1, b2, c2, decay, inv_sqrt_bc2, eps, step_size, k):
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
        mi = mb[i] * b1 + gi * c1
        mb[i] = mi
        vi = vb[i] * b2 + (gi * gi) * c2
        vb[i] = vi
        th[i] = th[i] * decay - (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size


@njit(parallel=PRANGE_ONLY, **_JIT)
def _adam(theta, g, m, v, b1, c1, b2, c2, decay, inv_sqrt_bc2, eps, step_size, parallel):
    n_blocks = (theta.shape[0] + _FLAT - 1) // _FLAT
    if parallel:
        for k in prange(n_blocks):
            _adam_values(theta, g, m, v, b1, c1, b2, c2, decay, inv_sqrt_bc2, eps, step_size, k)
    else:
        for k in range(n_blocks):
            _adam_values(theta, g, m, v, b1, c1, b2, c2, decay, inv_sqrt_bc2, eps, step_size, k)


def adam_update(theta, g, m, v, lr, beta1, beta2, eps, weight_decay, step, tmp=None):
    """Twin of :func:`refdiff.nn.fused.adam_update` (one pass; ``tmp`` is accepted and not needed)."""
    c = theta.dtype.type
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    _adam(theta, g, m, v, c(beta1), c(1.0 - beta1), c(beta2), c(1.0 - beta2), c(1.0 - lr * weight_decay),
          c(1.0 / math.sqrt(bc2)),
          c(eps), c(lr / bc1), runs_parallel(theta.size))


#: The phases u omega_k the twin's sine and cosine take (``_numba_math._sincos``: |x| < 2**20); beyond, or for a
#: phase that is not finite, the twin hands the whole call to the reference.
_SINCOS_MAX = 2.0**20


@njit(**_JIT)
def _cos_sin_features(u, omega, out):
    """out[n, k] = cos(u_n omega_k), out[n, half + k] = sin(u_n omega_k), in float64, stored in out's dtype.

    Each row's values go to two float64 buffers first: with both stores into ``out``'s row the loop stayed
    scalar (0.72 against 0.23 ms at N = 4096, dim = 32, float32)."""
    half = omega.shape[0]
    cos_row, sin_row = np.empty(half), np.empty(half)
    for n in range(u.shape[0]):
        un = u[n]
        for k in range(half):
            sin_row[k], cos_row[k] = _sincos(un * omega[k])
        for k in range(half):
            out[n, k] = cos_row[k]
            out[n, half + k] = sin_row[k]


def sinusoidal_embedding(u, dim: int, max_period: float = 10000.0, dtype=np.float64):
    """Twin of :func:`refdiff.nn.layers.sinusoidal_embedding`: the same phases u omega_k (the same float64
    product), their cosine and sine in one pass by the branch-free float64 ``_sincos`` (within 1 ulp), rounded
    once to ``dtype``. In float32 that is closer than the reference, which rounds the reduced phase to float32
    and takes NumPy's float32 cosine and sine (within 2e-7 of the float64 values, absolute): the two differ by
    up to about two float32 ulps of 1. A phase of 2**20 or more in magnitude, or one that is not finite,
    leaves the call to the reference. At N = 4096, dim = 32, on this AVX2 CPU, one thread: float32 0.5-0.7 ms
    for the reference's NumPy passes against 0.23 for the twin; float64 2.6 against 0.24."""
    dtype = np.dtype(dtype)
    if dim < 2 or dim % 2 or dtype not in (np.float32, np.float64):
        return layers.sinusoidal_embedding(u, dim, max_period, dtype)
    u = np.ascontiguousarray(u, dtype=np.float64)
    if u.ndim != 1:
        return layers.sinusoidal_embedding(u, dim, max_period, dtype)  # its error names the shape
    omega = layers.sinusoidal_frequencies(dim, max_period)
    if u.size and not np.abs(u).max() * omega.max() < _SINCOS_MAX:  # omega_0 = 1, unless max_period < 1
        return layers.sinusoidal_embedding(u, dim, max_period, dtype)
    out = np.empty((u.shape[0], dim), dtype)
    _cos_sin_features(u, omega, out)
    return out
