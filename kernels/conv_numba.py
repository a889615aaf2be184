"""Numba twins of the U-Net's fused GroupNorm + SiLU and of its convolutions' chunk products (:mod:`refdiff.nn.conv`).

Reference twins, same names, arguments and argument order:

* :func:`group_norm_silu_forward`  <- ``refdiff.nn.conv.group_norm_silu_forward``
* :func:`group_norm_silu_backward` <- ``refdiff.nn.conv.group_norm_silu_backward``
* :func:`chunk_matmul`             <- ``refdiff.nn.conv.chunk_matmul`` (a patch
  chunk's product: register tiles on the calling thread, :data:`TILES`)

They differ from the reference in the order of the sums (the group
statistics, and dgamma/dbeta: per-image partial sums added image by image in
order, so the result does not depend on the thread count; each entry of a
chunk product summed over its inner index in order, one FMA per term) and
in the forward's sigmoid (below); every other elementwise operation is the
reference's, in the same order and dtype.

In the GroupNorm + SiLU twins one loop iteration is one image (on Numba's threads from :data:`PARALLEL_MIN`
values where the workers sleep between kernels, :func:`runs_parallel`; on the
calling thread otherwise, still 3-5x faster than NumPy): its (S, C) slice (at most a few tens
of kB here) stays in L1/L2 while the kernel takes its channel sums, its group
statistics and writes the outputs, instead of NumPy's five to eight passes
over the whole batch. These passes are memory-bound, so the cache holds as
little as it can: x (kept by the caller anyway), the (N, C) mean and rstd,
the output h and the sigmoid s; the centred x is recomputed, not stored. The
sigmoid is ``_numba_math.sigmoid`` inside the one pass, in both dtypes, as in
:mod:`refdiff.kernels.mlp_numba`: within 4 ulp of the true value, where the
reference's :math:`\\tfrac12 + \\tfrac12\\tanh(z/2)` is exact to about an ulp of
1/2. (Before, float64 ran NumPy's ``np.tanh`` between two passes, and float32
a rational tanh within 6 ulp of tanh, whose sigmoid was 0 from z = -16 down.)
Constants are passed in the array's dtype so float32 stays float32.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.conv_numba needs numba: pip install "refdiff[fast]"') from exc

from refdiff.kernels._numba_gemm import TILES, tile_matmul
from refdiff.kernels._numba_math import PRANGE_ONLY, add_block_sums, sigmoid
from refdiff.nn.fused import numba_yields_to_blas

__all__ = ["group_norm_silu_forward", "group_norm_silu_backward", "chunk_matmul", "PARALLEL_MIN", "TILES",
           "runs_parallel"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")

#: Values per batch from which a twin runs its images on Numba's threads (below it, one thread). Float32,
#: 2 threads, forward + backward, 8 groups, times in us: 32 x 8x8 x 32 channels (65k values) NumPy 386,
#: serial 113, parallel 206; 256 x 4x4 x 64 (262k) 1710, 540, 459; 256 x 8x8 x 32 (524k) 5219, 974, 726.
PARALLEL_MIN = 1 << 17


def runs_parallel(size: int) -> bool:
    """Whether a twin call on ``size`` values runs in parallel: from :data:`PARALLEL_MIN` on, and only where
    Numba's workers sleep between kernels (:func:`refdiff.nn.fused.numba_yields_to_blas`)."""
    return size >= PARALLEL_MIN and numba_yields_to_blas()


@njit(inline="always", **_JIT)
def _group_mean(sums, out, groups, count):
    """out[j] <- (sum of ``sums`` over channel j's group) / count, for each of the C channels."""
    c = sums.shape[0]
    cg = c // groups
    for k in range(groups):
        t = sums[k * cg]
        for j in range(k * cg + 1, (k + 1) * cg):
            t += sums[j]
        t = t / count
        for j in range(k * cg, (k + 1) * cg):
            out[j] = t


@njit(inline="always", **_JIT)
def _image_stats(x, i, gamma, groups, eps, count, one, mu, rstd, a):
    """Image i of x (n, hw, c): its group means into mu, 1/sqrt(var + eps) into rstd[i] and rstd * gamma into a."""
    hw, c = x.shape[1], x.shape[2]
    acc = np.empty(c, dtype=x.dtype)
    for j in range(c):
        acc[j] = 0
    for q in range(hw):
        for j in range(c):
            acc[j] += x[i, q, j]
    _group_mean(acc, mu, groups, count)
    for j in range(c):
        acc[j] = 0
    for q in range(hw):
        for j in range(c):
            d = x[i, q, j] - mu[j]
            acc[j] += d * d
    var = np.empty(c, dtype=x.dtype)
    _group_mean(acc, var, groups, count)
    for j in range(c):
        r = one / np.sqrt(var[j] + eps)
        rstd[i, j] = r
        a[j] = r * gamma[j]


@njit(inline="always", **_JIT)
def _gn_silu_forward_image(x, gamma, beta, groups, eps, count, one, h, s, mean, rstd, i):
    """Image i in one pass: statistics, then z = (x - mean) (rstd gamma) + beta, s = sigma(z) and h = z s."""
    hw, c = x.shape[1], x.shape[2]
    mu, a = mean[i], np.empty(c, dtype=x.dtype)
    _image_stats(x, i, gamma, groups, eps, count, one, mu, rstd, a)
    for q in range(hw):
        for j in range(c):
            z = (x[i, q, j] - mu[j]) * a[j] + beta[j]
            t = sigmoid(z, one)
            s[i, q, j] = t
            h[i, q, j] = z * t


@njit(parallel=PRANGE_ONLY, **_JIT)
def _gn_silu_forward(x, gamma, beta, groups, eps, count, one, h, s, mean, rstd, parallel):
    if parallel:
        for i in prange(x.shape[0]):
            _gn_silu_forward_image(x, gamma, beta, groups, eps, count, one, h, s, mean, rstd, i)
    else:
        for i in range(x.shape[0]):
            _gn_silu_forward_image(x, gamma, beta, groups, eps, count, one, h, s, mean, rstd, i)


def group_norm_silu_forward(x, gamma, beta, groups, eps):
    """Twin of :func:`refdiff.nn.conv.group_norm_silu_forward`: ``(h, s, mu, rstd)``."""
    n, hw, c = x.shape
    dt = np.result_type(x.dtype, gamma.dtype)
    kind = dt.type
    h = np.empty((n, hw, c), dtype=dt)
    s = np.empty_like(h)
    mu = np.empty((n, c), dtype=dt)
    rstd = np.empty((n, c), dtype=dt)
    _gn_silu_forward(x, gamma, beta, int(groups), kind(eps), kind(hw * (c // groups)), kind(1.0), h, s, mu, rstd,
                     runs_parallel(x.size))
    return h, s, mu, rstd


@njit(inline="always", **_JIT)
def _gn_silu_backward_image(dh, x, h, s, mu, rstd, gamma, groups, count, one, need_dx, dx, part_dyx, part_dy, i):
    """Image i: dz = dh (s + h (1 - s)); channel sums of dz and dz xhat; dx from the group means."""
    hw, c = dh.shape[1], dh.shape[2]
    sdy = np.empty(c, dtype=dh.dtype)
    sdyx = np.empty(c, dtype=dh.dtype)
    for j in range(c):
        sdy[j] = 0
        sdyx[j] = 0
    for q in range(hw):
        for j in range(c):
            hv = h[i, q, j]
            dz = ((one - s[i, q, j]) * hv + s[i, q, j]) * dh[i, q, j]
            sdy[j] += dz
            sdyx[j] += dz * (x[i, q, j] - mu[i, j])
    for j in range(c):
        sdyx[j] = sdyx[j] * rstd[i, j]
        part_dy[i, j] = sdy[j]
        part_dyx[i, j] = sdyx[j]
    if need_dx:
        m1 = np.empty(c, dtype=dh.dtype)
        m2 = np.empty(c, dtype=dh.dtype)
        for j in range(c):
            sdy[j] = sdy[j] * gamma[j]
            sdyx[j] = sdyx[j] * gamma[j]
        _group_mean(sdy, m1, groups, count)
        _group_mean(sdyx, m2, groups, count)
        a = np.empty(c, dtype=dh.dtype)
        b = np.empty(c, dtype=dh.dtype)
        d = np.empty(c, dtype=dh.dtype)
        for j in range(c):
            r = rstd[i, j]
            a[j] = r * gamma[j]
            b[j] = r * r * m2[j]
            d[j] = r * m1[j]
        for q in range(hw):
            for j in range(c):
                hv = h[i, q, j]
                dz = ((one - s[i, q, j]) * hv + s[i, q, j]) * dh[i, q, j]
                dx[i, q, j] = (dz * a[j] - (x[i, q, j] - mu[i, j]) * b[j]) - d[j]


@njit(parallel=PRANGE_ONLY, **_JIT)
def _gn_silu_backward(dh, x, h, s, mu, rstd, gamma, groups, count, one, need_dx, dx, part_dyx, part_dy, parallel):
    if parallel:
        for i in prange(dh.shape[0]):
            _gn_silu_backward_image(dh, x, h, s, mu, rstd, gamma, groups, count, one, need_dx, dx, part_dyx, part_dy, i)
    else:
        for i in range(dh.shape[0]):
            _gn_silu_backward_image(dh, x, h, s, mu, rstd, gamma, groups, count, one, need_dx, dx, part_dyx, part_dy, i)


def group_norm_silu_backward(dh, x, h, s, mu, rstd, gamma, groups, dgamma=None, dbeta=None, need_dx=True):
    """Twin of :func:`refdiff.nn.conv.group_norm_silu_backward`: the input gradient or None."""
    n, hw, c = h.shape
    dt = h.dtype
    kind = dt.type
    dx = np.empty((n, hw, c), dtype=dt) if need_dx else np.empty((0, 0, 0), dtype=dt)
    part_dyx = np.empty((n, c), dtype=dt)
    part_dy = np.empty((n, c), dtype=dt)
    _gn_silu_backward(dh, x, h, s, mu, rstd, gamma, int(groups), kind(hw * (c // groups)), kind(1.0), bool(need_dx),
                      dx, part_dyx, part_dy, runs_parallel(h.size))
    if dgamma is not None:
        add_block_sums(dgamma, part_dyx)
    if dbeta is not None:
        add_block_sums(dbeta, part_dy)
    return dx if need_dx else None


#: :func:`chunk_matmul`: the tiles take products whose rows of ``b`` are at least this long (one vector);
#: narrower ones (a convolution to one channel) would run entirely in the tiles' one-entry-at-a-time edge.
TILE_MIN_BYTES = 64


@njit(**_JIT)
def _tile_product(a, b, out):
    tile_matmul(a, b, out)


def chunk_matmul(a, b, out):
    """Twin of :func:`refdiff.nn.conv.chunk_matmul`: ``out = a @ b``, returns ``out``.

    By ``_numba_gemm.tile_matmul`` on the calling thread where :data:`TILES`,
    the three arrays share a float dtype, ``b`` and ``out`` are C-contiguous
    (``a`` any strides: a chunk of patches, or the transpose of one for a
    weight gradient), ``b``'s rows fill a vector (:data:`TILE_MIN_BYTES`) and
    ``out`` shares no memory with ``a`` or ``b``; NumPy's BLAS otherwise.
    Each entry is summed over the inner index in order, one FMA per term.
    Float32, the benchmark U-Net's forward convolutions (256 images of 8 x 8
    or 4 x 4, chunks of a few hundred rows, k k C = 288 to 864, C_out = 32)
    with their patch copies: 1.7-5.0 ms against 3.8-10.6 by OpenBLAS's
    Haswell kernels on two threads and 3.2-8.7 by its AVX-512 ones: OpenBLAS
    ran the chunk products at some 90 GFLOP/s, waking its second thread for
    each.
    """
    if TILES and a.ndim == b.ndim == out.ndim == 2 and a.dtype == b.dtype == out.dtype \
            and a.dtype in (np.float32, np.float64) and b.flags.c_contiguous and out.flags.c_contiguous \
            and out.flags.writeable and out.shape == (a.shape[0], b.shape[1]) and a.shape[1] == b.shape[0] \
            and b.shape[1] * b.itemsize >= TILE_MIN_BYTES \
            and not np.may_share_memory(out, a) and not np.may_share_memory(out, b):  # NumPy copies an overlap
        _tile_product(a, b, out)
        return out
    np.matmul(a, b, out=out)
    return out
