r"""Numba twin of :func:`refdiff.samplers.fused.run_table`: a whole sampler in one kernel call.

Reference twin: ``refdiff/samplers/fused.py`` (``run_table``; same arguments,
same semantics, the table format and the noise mapping are documented there).
Particles run in blocks of ``LANES`` (``prange`` over blocks, outermost only);
a block runs every row of the table on its own small scratch arrays: the
exact mixture score, the Philox4x32-10 + Box-Muller normals of
:mod:`refdiff.noise` (implemented here word for word) and the linear update,
with no per-step traffic to the (N, D) state.

SIMD. Every loop over a block's lanes is innermost and element-wise, so
LLVM's loop vectorizer takes it (the lane count is a run-time value: a
constant trip count gets unrolled instead, and Numba leaves the SLP
vectorizer off). Numba's ``math.exp/log/cos/sin`` are scalar libm calls
here (no SVML) and would keep those loops scalar, so the kernel has its own
branch-free ``_exp_weight``, ``_log`` and ``_sincos`` (fdlibm/musl
algorithms, at most 2 ulp; tests/test_kernels_fused_math.py). A lane's
arithmetic does not depend on the block or lane it lands in (no
reductions across lanes; a call uses min(LANES, N) lanes per block and
pads the last block with lanes whose results are dropped), so a
particle's path does not depend on N. Where a lane's value is chosen (a
dropped weight, a running maximum) the choice is a select between computed
values and the store happens on every lane: a store that LLVM could skip on
some lanes (the old value kept) was vectorised as a masked store
(vmaskmovpd), and an exp inside a branch put what followed it under a mask
too; AMD's Zen 3 runs those far slower than plain stores. Rewritten, the
Euler-Maruyama benchmark below went from 2.3-2.6 to 1.9 s on such a CPU
(float64, 2 threads), its score part from 1.8 to 1.35 s, with the same numbers. Each block asks for 512-bit vectors
(``prefer_wide_vectors``; LLVM's tuning for recent AVX-512 CPUs prefers 256):
the Euler-Maruyama benchmark, 1e5 particles by 1000 steps on 2 threads,
went from 0.950 to 0.709 s, with the same numbers.

Precision. Every row is computed in float64 and the state is rounded to its
dtype (float32 or float64) when stored, once per row; the reference computes
a float32 row in float32, so float32 results agree to float32 rounding, not
bit for bit. Normals are float64 as the contract requires (within 1 ulp of
NumPy's libm here, far inside the contract's 1e-14). The softmax weights
use an FMA polynomial exp (2 ulp), so float64 trajectories agree with the
reference to rounding (~1e-13 after 1000 steps), not bit for bit.

The block score is ``mixture_numba._score_block`` (the same lane-block
mixture score the scalar-t mixture twin runs), on the constants of
:func:`refdiff.samplers.fused.score_constants`.

Numba settings per DESIGN: ``cache=True, nogil=True, error_model="numpy"``,
no fastmath (explicit ``llvm.fma`` calls only), no ``np.random``. Under
``NUMBA_DISABLE_JIT=1`` the bit casts and the FMA fall back to exact Python
equivalents, so the plain-Python run computes the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError("refdiff.kernels.fused_numba needs numba: pip install 'refdiff[fast]'") from exc

from refdiff.kernels._numba_math import _log, _sincos, prefer_wide_vectors
from refdiff.kernels.mixture_numba import _quiet, _score_block, mixture_arrays, mixture_score_point
from refdiff.samplers.fused import score_constants, start_state

__all__ = ["run_table", "philox4x32_10", "normals"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

LANES = 64  # particles per block: every per-particle loop runs over these lanes (SIMD), never across them

# Philox4x32 constants (refdiff.noise), as uint64 so the 32x32 -> 64-bit products are exact.
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_TWO_PI = 6.283185307179586  # the float64 nearest 2 pi, as refdiff.noise.TWO_PI
_TWO_M32 = 2.0**-32



# --------------------------------------------------------------------------- the noise contract
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
    r = math.sqrt(-2.0 * _log(u_r))
    theta = _TWO_PI * u_t
    sn, cs = _sincos(theta)
    return r * cs, r * sn


@njit(inline="always", **_OPTS)
def _normals_into(z, key0, key1, particle, draw):
    """The contract's normals for (seed, particle, draw) into z[:D] (one particle; pairs past D skipped)."""
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
def _normals_block(z, wr, wt, key0, key1, p_lo, p_hi, draw):
    """The contract's normals for one draw and LANES particles into z (D, LANES); same arithmetic per lane as _normals_into."""
    D, L = z.shape
    k = np.uint64(draw)
    for j in range((D + 3) // 4):
        cj = np.uint64(j)
        n_pairs = 1 if 4 * j + 2 >= D else 2
        for l in range(L):
            w0, w1, w2, w3 = _philox(cj, k, p_lo[l], p_hi[l], key0, key1)
            wr[0, l] = w0
            wt[0, l] = w1
            wr[1, l] = w2
            wt[1, l] = w3
        for h in range(n_pairs):
            d = 4 * j + 2 * h
            if d + 1 < D:
                for l in range(L):
                    z0, z1 = _box_muller(wr[h, l], wt[h, l])
                    z[d, l] = z0
                    z[d + 1, l] = z1
            else:
                for l in range(L):
                    z0, z1 = _box_muller(wr[h, l], wt[h, l])
                    z[d, l] = z0


# --------------------------------------------------------------------------- the run
@njit(inline="always", **_OPTS)
def _score_block_dividing(xs, g, v, log_w, mu, lam, U, kind, pt, res, work, out):
    """The score at the lanes xs (D, LANES) into ``out``, one lane at a time by the pointwise kernel of the mixture
    twin, which divides by c_k = g^2 lambda_k + v in float64: for a row where 1 / c_k overflows (c_k subnormal),
    so that a particle at that component's mean keeps the weight the reference gives it. Rare, and scalar."""
    D, L = xs.shape
    for l in range(L):
        for j in range(D):
            pt[j] = xs[j, l]
        mixture_score_point(pt, g, v, log_w, mu, lam, U, kind, res, work)
        for j in range(D):
            out[j, l] = res[j]


@njit(**_OPTS)
def _run_block(x, coefs, draws, first, key0, key1, offset, means, inv_c, log_norm, U, full, dividing, gv, log_w, mu,
               lam, kind, lanes, draw_start, prior_std, blk):
    """Every row of the table for block ``blk`` of :func:`_run`: the body of its ``prange`` loop.

    A function of its own, not the loop's body, so that Numba's parallel passes analyse a one-line body: the
    first call's compile went from 44 to 31 s (float32, one thread busy).
    """
    N, D = x.shape
    R, K = coefs.shape[0], log_norm.shape[1]
    L = lanes  # a run-time value, so that LLVM's loop vectorizer (not full unrolling) takes the lane loops
    prefer_wide_vectors()
    p0 = blk * L
    n_lanes = min(L, N - p0)
    xs = np.zeros((D, L), dtype=np.float64)  # the state, float64 within a row
    xb = np.zeros((D, L), dtype=x.dtype)  # ... rounded to the state dtype
    s = np.zeros((D, L), dtype=np.float64)
    s_prev = np.zeros((D, L), dtype=np.float64)
    z = np.zeros((D, L), dtype=np.float64)
    v = np.empty((D, L), dtype=np.float64)
    logit = np.empty((K, L), dtype=np.float64)
    q = np.empty((K, D, L), dtype=np.float64)
    ya = np.empty(L, dtype=np.float64)
    quad = np.empty(L, dtype=np.float64)
    m = np.empty(L, dtype=np.float64)
    tot = np.empty(L, dtype=np.float64)
    acc = np.empty(L, dtype=np.float64)
    wr = np.empty((2, L), dtype=np.uint64)
    wt = np.empty((2, L), dtype=np.uint64)
    p_lo = np.empty(L, dtype=np.uint64)
    p_hi = np.empty(L, dtype=np.uint64)
    pt, res, work = np.empty(D), np.empty(D), np.empty(D)
    for l in range(L):
        particle = offset + np.uint64(p0 + l)
        p_lo[l] = particle & _MASK
        p_hi[l] = particle >> _S32
    if draw_start:
        _normals_block(z, wr, wt, key0, key1, p_lo, p_hi, np.int64(0))
        for j in range(D):
            for l in range(L):
                xb[j, l] = prior_std * z[j, l]
                xs[j, l] = xb[j, l]
    else:
        for l in range(n_lanes):
            for j in range(D):
                xb[j, l] = x[p0 + l, j]
                xs[j, l] = xb[j, l]
    for i in range(R):
        a, b, bp, c = coefs[i, 0], coefs[i, 1], coefs[i, 2], coefs[i, 3]
        if b != 0.0 and dividing[i]:
            _score_block_dividing(xs, gv[i, 0], gv[i, 1], log_w, mu, lam, U, kind, pt, res, work, s)
        elif b != 0.0:
            _score_block(xs, i, means, inv_c, log_norm, U, full, logit, q, ya, quad, m, tot, acc, s)
        for j in range(D):
            for l in range(L):
                v[j, l] = a * xs[j, l] + b * s[j, l]
        if bp != 0.0:
            for j in range(D):
                for l in range(L):
                    v[j, l] += bp * s_prev[j, l]
        if draws[i] >= 0:
            _normals_block(z, wr, wt, key0, key1, p_lo, p_hi, first + draws[i])
            for j in range(D):
                for l in range(L):
                    v[j, l] += c * z[j, l]
        for j in range(D):
            for l in range(L):
                xb[j, l] = v[j, l]
                xs[j, l] = xb[j, l]
        if b != 0.0:
            for j in range(D):
                for l in range(L):
                    s_prev[j, l] = s[j, l]
    for l in range(n_lanes):
        for j in range(D):
            x[p0 + l, j] = xb[j, l]


@njit(parallel=True, **_OPTS)
def _run(x, coefs, draws, first, key0, key1, offset, means, inv_c, log_norm, U, full, dividing, gv, log_w, mu, lam,
         kind, lanes, draw_start, prior_std):
    """Run every row for every particle, in place on x (N, D); coefs (R, 4) = a, b, b_prev, c.

    ``prange`` over blocks of LANES particles (the last block padded with
    zero-state lanes whose results are dropped); a block keeps its state in
    float64 (D, L) and rounds it to the state dtype once per row. With
    ``draw_start`` x is not read: the start is ``prior_std * z`` at draw 0,
    rounded to the state dtype, as the reference's host draw. Rows where ``dividing`` (R,) is set take the
    score from the mixture's arrays (log_w, mu, lam, U, kind: ``mixture_arrays``) at gv (R, 2) = (gamma,
    sigma^2), dividing by c_k (:func:`_score_block_dividing`).
    """
    N = x.shape[0]
    n_blocks = (N + lanes - 1) // lanes
    for blk in prange(n_blocks):
        # int64: prange's index is int64 when Numba types this function and uint64 in the loop it outlines,
        # and two argument types would compile the block twice
        _run_block(x, coefs, draws, first, key0, key1, offset, means, inv_c, log_norm, U, full, dividing, gv, log_w,
                   mu, lam, kind, lanes, draw_start, prior_std, np.int64(blk))
    return x


def run_table(table, mixture, x_T, *, rng=None, seed=None, offset=0, dtype=None):
    """Numba twin of :func:`refdiff.samplers.fused.run_table` (same arguments and result)."""
    x, noise, first = start_state(table, mixture, x_T, rng, seed, offset, dtype, draw=False)
    draw_start = first == 1  # x is unset: the kernel draws the start
    x = np.ascontiguousarray(x)
    const = score_constants(table, mixture)
    log_w, mu, lam, U, kind = mixture_arrays(mixture)  # U: const["U"], or a read-only stand-in (one kernel for both)
    full = const["U"] is not None
    # rows where 1 / c_k overflows float64, the kernel's arithmetic (see score_constants)
    dividing = np.ascontiguousarray(~(const["c"].min(axis=(1, 2), initial=np.inf) >= np.finfo(np.float64).tiny))
    gv = np.ascontiguousarray(np.stack([table.gamma, table.sigma2], axis=1))
    coefs = np.ascontiguousarray(np.stack([table.a, table.b, table.b_prev, table.c], axis=1))  # (R, 4)
    draws = np.ascontiguousarray(table.draw)
    with _quiet():  # a narrow component's field may overflow where its weight is dropped (NumPy warns without the JIT)
        _run(x, coefs, draws, np.int64(first), np.uint64(noise.seed & 0xFFFFFFFF), np.uint64(noise.seed >> 32),
             np.uint64(noise.offset), const["means"], const["inv_c"], const["log_norm"], U, full, dividing, gv, log_w,
             mu, lam, kind, np.int64(min(LANES, x.shape[0])), draw_start, float(table.prior_std))  # fmt: skip
    if not np.all(np.isfinite(x)):
        raise ValueError("the state became non-finite (a step too large for this target, or a score past the dtype's "
                         "range; the NumPy reference, refdiff.samplers.fused.run_table, names the row)")
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
