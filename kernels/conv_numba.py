"""Numba twins of the U-Net's fused GroupNorm + SiLU (:mod:`refdiff.nn.conv`).

Reference twins, same names, arguments and argument order:

* :func:`group_norm_silu_forward`  <- ``refdiff.nn.conv.group_norm_silu_forward``
* :func:`group_norm_silu_backward` <- ``refdiff.nn.conv.group_norm_silu_backward``

They differ from the reference only in the order of the sums (the group
statistics, and dgamma/dbeta: per-image partial sums added image by image in
order, so the result does not depend on the thread count); every elementwise
operation is the reference's, in the same order and dtype.

One ``prange`` iteration is one image: its (S, C) slice (at most a few tens
of kB here) stays in L1/L2 while the kernel takes its channel sums, its group
statistics and writes the outputs, instead of NumPy's five to eight passes
over the whole batch. The sigmoid is :math:`\\tfrac12 + \\tfrac12\\tanh(z/2)`
with NumPy's SIMD ``np.tanh`` run between two fused passes (Numba's
``math.tanh`` is a scalar libm call), as :mod:`refdiff.kernels.mlp_numba`
does. Constants are passed in the array's dtype so float32 stays float32.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.conv_numba needs numba: pip install "refdiff[fast]"') from exc

__all__ = ["group_norm_silu_forward", "group_norm_silu_backward"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")

#: Bytes per (N, S, C) array of the images that the forward pass takes through
#: its three passes (statistics, np.tanh, finish) before the next images, so
#: that they stay in the L2 cache between the passes.
CHUNK_BYTES = 1 << 17


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


@njit(parallel=True, **_JIT)
def _gn_forward(x, gamma, beta, groups, eps, count, half, one, h, s, xc, rstd):
    """Per image: mean, centred x, variance, rstd; h <- z, s <- z/2 with z = xc (rstd gamma) + beta."""
    n, hw, c = x.shape
    for i in prange(n):
        acc = np.zeros(c, dtype=x.dtype)
        mu = np.empty(c, dtype=x.dtype)
        for q in range(hw):
            for j in range(c):
                acc[j] += x[i, q, j]
        _group_mean(acc, mu, groups, count)
        acc[:] = 0
        for q in range(hw):
            for j in range(c):
                d = x[i, q, j] - mu[j]
                xc[i, q, j] = d
                acc[j] += d * d
        var = np.empty(c, dtype=x.dtype)
        _group_mean(acc, var, groups, count)
        a = np.empty(c, dtype=x.dtype)
        for j in range(c):
            r = one / np.sqrt(var[j] + eps)
            rstd[i, j] = r
            a[j] = r * gamma[j]
        for q in range(hw):
            for j in range(c):
                z = xc[i, q, j] * a[j] + beta[j]
                h[i, q, j] = z
                s[i, q, j] = z * half


@njit(parallel=True, **_JIT)
def _silu_finish(h, s, half):
    """s holds tanh(z/2): s <- tanh/2 + 1/2 = sigma(z); h <- z s."""
    n, hw, c = h.shape
    for i in prange(n):
        for q in range(hw):
            for j in range(c):
                t = s[i, q, j] * half + half
                s[i, q, j] = t
                h[i, q, j] = h[i, q, j] * t


def group_norm_silu_forward(x, gamma, beta, groups, eps):
    """Twin of :func:`refdiff.nn.conv.group_norm_silu_forward`: ``(h, s, xc, rstd)``."""
    n, hw, c = x.shape
    dt = np.result_type(x.dtype, gamma.dtype)
    kind = dt.type
    h = np.empty((n, hw, c), dtype=dt)
    s = np.empty_like(h)
    xc = np.empty_like(h)
    rstd = np.empty((n, c), dtype=dt)
    b = max(1, CHUNK_BYTES // (hw * c * dt.itemsize))  # images per chunk
    args = (int(groups), kind(eps), kind(hw * (c // groups)), kind(0.5), kind(1.0))
    for i in range(0, n, b):
        j = min(n, i + b)
        _gn_forward(x[i:j], gamma, beta, *args, h[i:j], s[i:j], xc[i:j], rstd[i:j])
        np.tanh(s[i:j], out=s[i:j])
        _silu_finish(h[i:j], s[i:j], kind(0.5))
    return h, s, xc, rstd


@njit(parallel=True, **_JIT)
def _gn_silu_backward(dh, h, s, xc, rstd, gamma, groups, count, one, need_dx, dx, part_dyx, part_dy):
    """Per image: dz = dh (h + s (1 - h)); channel sums of dz and dz xhat; dx from the group means."""
    n, hw, c = dh.shape
    for i in prange(n):
        sdy = np.zeros(c, dtype=dh.dtype)
        sdyx = np.zeros(c, dtype=dh.dtype)
        for q in range(hw):
            for j in range(c):
                hv = h[i, q, j]
                dz = ((one - hv) * s[i, q, j] + hv) * dh[i, q, j]
                sdy[j] += dz
                sdyx[j] += dz * xc[i, q, j]
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
                    dz = ((one - hv) * s[i, q, j] + hv) * dh[i, q, j]
                    dx[i, q, j] = (dz * a[j] - xc[i, q, j] * b[j]) - d[j]


@njit(**_JIT)
def _add_rows(out, parts):
    """out += sum of the rows of parts, row by row in order."""
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            total[j] += parts[k, j]
    for j in range(out.shape[0]):
        out[j] += total[j]


def group_norm_silu_backward(dh, h, s, xc, rstd, gamma, groups, dgamma=None, dbeta=None, need_dx=True):
    """Twin of :func:`refdiff.nn.conv.group_norm_silu_backward`: the input gradient or None."""
    n, hw, c = h.shape
    dt = h.dtype
    kind = dt.type
    dx = np.empty((n, hw, c), dtype=dt) if need_dx else np.empty((0, 0, 0), dtype=dt)
    part_dyx = np.empty((n, c), dtype=dt)
    part_dy = np.empty((n, c), dtype=dt)
    _gn_silu_backward(dh, h, s, xc, rstd, gamma, int(groups), kind(hw * (c // groups)), kind(1.0), bool(need_dx),
                      dx, part_dyx, part_dy)
    if dgamma is not None:
        _add_rows(dgamma, part_dyx)
    if dbeta is not None:
        _add_rows(dbeta, part_dy)
    return dx if need_dx else None
