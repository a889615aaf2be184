r"""Numba twin of :func:`refdiff.samplers.fused.run_table`: a whole sampler in one kernel call.

Reference twin: ``refdiff/samplers/fused.py`` (``run_table``; same arguments,
same semantics, the table format and the noise mapping are documented there).
Each particle runs every row of the table in registers (``prange`` over
particles, outermost only): the exact mixture score, the Philox4x32-10 +
Box-Muller normals of :mod:`refdiff.noise` (implemented here word for word)
and the linear update, with no per-step array traffic.

Precision. Every row is computed in float64 and the state is rounded to its
dtype (float32 or float64) when stored, once per row; the reference computes
a float32 row in float32, so float32 results agree to float32 rounding, not
bit for bit. Normals are float64 as the contract requires.

The per-point score (``_score``) is a plain loop over the active components
(two passes: logits, then softmax weights) on the constants of
:func:`refdiff.samplers.fused.score_constants`; it covers isotropic,
diagonal (U = identity, ``full=False``) and full covariances (eigen
coordinates). It is kept small so a shared per-point mixture kernel can
replace it later.

Numba settings per DESIGN: ``cache=True, nogil=True, error_model="numpy"``,
no fastmath, no ``np.random``.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError("refdiff.kernels.fused_numba needs numba: pip install 'refdiff[fast]'") from exc

from refdiff.samplers.fused import score_constants, start_state

__all__ = ["run_table", "philox4x32_10", "normals"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

# Philox4x32 constants (refdiff.noise), as uint64 so the 32x32 -> 64-bit products are exact.
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_TWO_PI = 6.283185307179586  # the float64 nearest 2 pi, as refdiff.noise.TWO_PI
_TWO_M32 = 2.0**-32


@njit(inline="always", **_OPTS)
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 values below 2**32 (refdiff.noise._philox_rounds, one counter)."""
    for r in range(10):
        if r > 0:  # Weyl key schedule between rounds
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = c0 * _M0  # (hi0, lo0) = mulhilo(M0, c0)
        p1 = c2 * _M1  # (hi1, lo1) = mulhilo(M1, c2)
        c0 = (p1 >> _S32) ^ c1 ^ k0
        c2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _MASK
        c3 = p0 & _MASK
    return c0, c1, c2, c3


@njit(inline="always", **_OPTS)
def _box_muller(w_r, w_theta):
    """(r cos theta, r sin theta) from two words, in the contract's order of operations."""
    u_r = (np.float64(w_r) + 0.5) * _TWO_M32
    u_t = (np.float64(w_theta) + 0.5) * _TWO_M32
    r = math.sqrt(-2.0 * math.log(u_r))
    theta = _TWO_PI * u_t
    return r * math.cos(theta), r * math.sin(theta)


@njit(inline="always", **_OPTS)
def _normals_into(z, key0, key1, particle, draw):
    """The contract's normals for (seed, particle, draw) into z[:D] (blocks of 4; pairs past D skipped)."""
    D = z.shape[0]
    p_lo = particle & _MASK
    p_hi = particle >> _S32
    k = np.uint64(draw)
    for j in range((D + 3) // 4):
        w0, w1, w2, w3 = _philox(np.uint64(j), k, p_lo, p_hi, key0, key1)
        z0, z1 = _box_muller(w0, w1)
        z[4 * j] = z0
        if 4 * j + 1 < D:
            z[4 * j + 1] = z1
        if 4 * j + 2 < D:
            z2, z3 = _box_muller(w2, w3)
            z[4 * j + 2] = z2
            if 4 * j + 3 < D:
                z[4 * j + 3] = z3


@njit(inline="always", **_OPTS)
def _score(x, i, means, inv_c, log_norm, U, full, logit, q, out):
    """Exact mixture score at one point x (D,) for table row i, into ``out`` (D,); two passes over components.

    Pass 1 keeps each component's logit and q_k = C_k^{-1} y_k (eigen coordinates,
    y_k = U_k^T (x - gamma mu_k)); pass 2 sums the softmax weights times -U_k q_k.
    """
    K, D = log_norm.shape[1], x.shape[0]
    m = -np.inf
    for k in range(K):
        quad = 0.0
        for a in range(D):
            if full:
                ya = 0.0
                for j in range(D):
                    ya += U[k, j, a] * (x[j] - means[i, k, j])
            else:
                ya = x[a] - means[i, k, a]
            qa = ya * inv_c[i, k, a]
            quad += ya * qa
            q[k, a] = qa
        logit[k] = log_norm[i, k] - 0.5 * quad
        m = max(m, logit[k])
    total = 0.0
    for j in range(D):
        out[j] = 0.0
    for k in range(K):
        w = math.exp(logit[k] - m)
        total += w
        for j in range(D):
            if full:
                acc = 0.0
                for a in range(D):
                    acc += U[k, j, a] * q[k, a]
            else:
                acc = q[k, j]
            out[j] -= w * acc
    for j in range(D):
        out[j] /= total


@njit(parallel=True, **_OPTS)
def _run(x, coefs, draws, first, key0, key1, offset, means, inv_c, log_norm, U, full):
    """Run every row for every particle, in place on x (N, D); coefs (R, 4) = a, b, b_prev, c."""
    N, D = x.shape
    R, K = coefs.shape[0], log_norm.shape[1]
    for p in prange(N):
        xs = np.empty(D, dtype=np.float64)  # the state, kept in float64 within a row
        s = np.zeros(D, dtype=np.float64)
        s_prev = np.zeros(D, dtype=np.float64)
        z = np.zeros(D, dtype=np.float64)
        logit = np.empty(K, dtype=np.float64)
        q = np.empty((K, D), dtype=np.float64)
        row = x[p]  # the particle's own row: rounded to the state dtype once per table row
        for j in range(D):
            xs[j] = row[j]
        particle = offset + np.uint64(p)
        for i in range(R):
            a, b, bp, c = coefs[i, 0], coefs[i, 1], coefs[i, 2], coefs[i, 3]
            if b != 0.0:
                _score(xs, i, means, inv_c, log_norm, U, full, logit, q, s)
            noisy = draws[i] >= 0
            if noisy:
                _normals_into(z, key0, key1, particle, first + draws[i])
            for j in range(D):
                v = a * xs[j] + b * s[j]
                if bp != 0.0:
                    v += bp * s_prev[j]
                if noisy:
                    v += c * z[j]
                row[j] = v
                xs[j] = row[j]
            if b != 0.0:
                for j in range(D):
                    s_prev[j] = s[j]
    return x


def run_table(table, mixture, x_T, *, rng=None, seed=None, offset=0, dtype=None):
    """Numba twin of :func:`refdiff.samplers.fused.run_table` (same arguments and result)."""
    x, noise, first = start_state(table, mixture, x_T, rng, seed, offset, dtype)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"the state dtype must be float32 or float64, got {x.dtype}")
    x = np.ascontiguousarray(x)
    const = score_constants(table, mixture)
    full = const["U"] is not None
    U = const["U"] if full else np.zeros((1, 1, 1))
    coefs = np.ascontiguousarray(np.stack([table.a, table.b, table.b_prev, table.c], axis=1))  # (R, 4)
    draws = np.ascontiguousarray(table.draw)
    _run(x, coefs, draws, np.int64(first), np.uint64(noise.seed & 0xFFFFFFFF), np.uint64(noise.seed >> 32),
         np.uint64(noise.offset), const["means"], const["inv_c"], const["log_norm"], U, full)  # fmt: skip
    if not np.all(np.isfinite(x)):
        raise ValueError("the state became non-finite (the step size is too large for this target)")
    return x



# --------------------------------------------------------------------------- the noise alone, for tests
@njit(parallel=True, **_OPTS)
def _philox_many(counters, key0, key1, out):
    for n in prange(counters.shape[0]):
        w = _philox(np.uint64(counters[n, 0]), np.uint64(counters[n, 1]), np.uint64(counters[n, 2]),
                    np.uint64(counters[n, 3]), key0, key1)  # fmt: skip
        for m in range(4):
            out[n, m] = w[m]
    return out


def philox4x32_10(counter, key):
    """Philox4x32-10 words (uint32, shape (N, 4)) for counters (N, 4) and a key (k0, k1): twin of ``refdiff.noise.philox4x32``."""
    counters = np.ascontiguousarray(np.asarray(counter, dtype=np.uint64).reshape(-1, 4))
    out = np.empty(counters.shape, dtype=np.uint64)
    _philox_many(counters, np.uint64(key[0]), np.uint64(key[1]), out)
    return out.astype(np.uint32)


@njit(parallel=True, **_OPTS)
def _normals_many(key0, key1, particles, draw, out):
    for n in prange(particles.shape[0]):
        _normals_into(out[n], key0, key1, np.uint64(particles[n]), draw)
    return out


def normals(seed, particles, draw, dim):
    """Twin of ``refdiff.noise.counter_normals`` at one draw index, through the kernel's own code: float64 (N, dim)."""
    particles = np.ascontiguousarray(np.asarray(particles, dtype=np.uint64))
    out = np.zeros((particles.shape[0], int(dim)), dtype=np.float64)
    return _normals_many(np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), particles, np.int64(draw), out)


def threading_layer() -> str:
    """Numba's threading layer in use (after a first parallel call) and its thread count, for benchmark records."""
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    return f"{layer} x {numba.get_num_threads()}"
