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
particle's path does not depend on N.

Precision. Every row is computed in float64 and the state is rounded to its
dtype (float32 or float64) when stored, once per row; the reference computes
a float32 row in float32, so float32 results agree to float32 rounding, not
bit for bit. Normals are float64 as the contract requires (within 1 ulp of
NumPy's libm here, far inside the contract's 1e-14). The softmax weights
use an FMA polynomial exp (2 ulp), so float64 trajectories agree with the
reference to rounding (~1e-13 after 1000 steps), not bit for bit.

The block score (``_score_block``) is two passes over the active components
(logits, then softmax weights) on the constants of
:func:`refdiff.samplers.fused.score_constants`; it covers isotropic,
diagonal (U = identity, ``full=False``) and full covariances (eigen
coordinates), with a D = 2 diagonal fast path (``_score_block_2d``, the
same arithmetic in one loop per component and pass).

Numba settings per DESIGN: ``cache=True, nogil=True, error_model="numpy"``,
no fastmath (explicit ``llvm.fma`` calls only), no ``np.random``. Under
``NUMBA_DISABLE_JIT=1`` the bit casts and the FMA fall back to exact Python
equivalents, so the plain-Python run computes the same numbers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError("refdiff.kernels.fused_numba needs numba: pip install 'refdiff[fast]'") from exc

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


# --------------------------------------------------------------------------- float64 <-> int64 bit casts
if numba.config.DISABLE_JIT:  # plain Python (NUMBA_DISABLE_JIT=1): the same bits through NumPy views

    def _f2i(x):
        return int(np.array(x, dtype=np.float64).view(np.int64))

    def _i2f(i):
        return float(np.array(int(i) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64).view(np.float64))  # int64 wrap-around

    def _fma(a, b, c):
        """a * b + c rounded once, as llvm.fma (exact rationals, one correctly rounded division)."""
        if hasattr(math, "fma"):  # Python >= 3.13
            return math.fma(float(a), float(b), float(c))
        a, b, c = float(a), float(b), float(c)
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
            return a * b + c  # NaN / infinity: one rounding or two give the same
        return float(Fraction(a) * Fraction(b) + Fraction(c))

else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _f2i(typingctx, x):
        """The bits of a float64 as an int64 (an LLVM bitcast: free, and vectorisable)."""
        if not isinstance(x, types.Float) or x.bitwidth != 64:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(64))

        return types.int64(types.float64), codegen

    @intrinsic
    def _i2f(typingctx, i):
        """The float64 with the bits of an int64 (an LLVM bitcast)."""
        if not isinstance(i, types.Integer) or i.bitwidth != 64:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(i), codegen

    @intrinsic
    def _fma(typingctx, a, b, c):
        """a * b + c with one rounding (llvm.fma: an FMA instruction where the CPU has one, else libm fma)."""
        if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
            return None

        def codegen(context, builder, signature, args):
            d = ir.DoubleType()
            fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
            return builder.call(fn, args)

        return types.float64(types.float64, types.float64, types.float64), codegen


# --------------------------------------------------------------------------- branch-free exp, log, sin/cos
# Numba's math.exp/log/cos/sin are scalar libm calls here (no SVML), which stops LLVM from
# vectorising the loops over lanes. These are the fdlibm/musl algorithms written without
# branches (special cases that cannot occur here are not handled); against NumPy on 2e7
# points each: _log and _sincos at most 1 ulp, _exp_weight at most 2 ulp
# (tests/test_kernels_fused_math.py).
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: x + _SHIFT - _SHIFT rounds x to an integer (|x| < 2**51)
_SHIFT_BITS = 0x4338000000000000  # its bits: the integer sits in the low bits
_INVLN2 = 1.44269504088896338700e00
_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 33 bits: k * _LN2_HI is exact for |k| < 2**20
_LN2_LO = 1.90821492927058770002e-10
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12 = (1.0 / math.factorial(n) for n in range(2, 13))
_EXP_MIN = -708.0  # exp(-708) ~ 3.3e-308 is still normal


@njit(inline="always", **_OPTS)
def _exp_weight(x):
    """exp(x) for x <= 0 to 2 ulp, as a softmax weight: exp(max(x, -708)) (never subnormal), NaN for NaN.

    Branch-free, vectorisable: x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, two FMAs),
    exp(r) by its Taylor polynomial of degree 12 in Horner form with FMAs (truncation
    below 2e-16 relative), times 2**k built from its bits.
    """
    xc = _EXP_MIN if x < _EXP_MIN else x
    t = _fma(xc, _INVLN2, _SHIFT)
    k = _f2i(t) - _SHIFT_BITS  # k = round(x / ln 2), in [-1021, 0]
    kf = t - _SHIFT
    r = _fma(-kf, _LN2_HI, xc)  # exact
    r = _fma(-kf, _LN2_LO, r)
    p = _fma(_E12, r, _E11)
    p = _fma(p, r, _E10)
    p = _fma(p, r, _E9)
    p = _fma(p, r, _E8)
    p = _fma(p, r, _E7)
    p = _fma(p, r, _E6)
    p = _fma(p, r, _E5)
    p = _fma(p, r, _E4)
    p = _fma(p, r, _E3)
    p = _fma(p, r, _E2)
    p = _fma(p, r, 1.0)
    p = _fma(p, r, 1.0)
    return p * _i2f((k + 1023) << 52)


_LG1 = 6.666666666666735130e-01  # fdlibm/musl log.c
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@njit(inline="always", **_OPTS)
def _log(x):
    """log(x) for finite normal x > 0 (musl log.c), branch-free."""
    hx = _f2i(x)
    # x = 2**k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)): shift the high word by 1 - 0x3fe6a09e
    hi = (hx >> 32) + (0x3FF00000 - 0x3FE6A09E)
    k = (hi >> 20) - 0x3FF
    hi = (hi & 0x000FFFFF) + 0x3FE6A09E
    f = _i2f((hi << 32) | (hx & 0xFFFFFFFF)) - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    R = t2 + t1
    dk = np.float64(k)
    return s * (hfsq + R) + dk * _LN2_LO - hfsq + f + dk * _LN2_HI


_INVPIO2 = 6.36619772367581382433e-01  # musl __rem_pio2.c
_PIO2_1 = 1.57079632673412561417e00  # pi/2 to 33 bits
_PIO2_2 = 6.07710050630396597660e-11  # the next 33 bits
_PIO2_2T = 2.02226624879595063154e-21  # pi/2 - (_PIO2_1 + _PIO2_2)
_S1 = -1.66666666666666324348e-01  # musl __sin.c
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02  # musl __cos.c
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11


@njit(inline="always", **_OPTS)
def _sincos(x):
    """(sin x, cos x) for 0 <= x < 2**20, branch-free: a two-step Cody-Waite reduction by pi/2
    (musl __rem_pio2, medium case; the reduced argument is exact to ~1e-30 here) and musl's
    __sin/__cos kernels on [-pi/4, pi/4]."""
    t = x * _INVPIO2 + _SHIFT
    n = _f2i(t) - _SHIFT_BITS  # quadrant: round(x / (pi/2))
    fn = t - _SHIFT
    r0 = x - fn * _PIO2_1  # exact
    w0 = fn * _PIO2_2  # exact
    r1 = r0 - w0
    w1 = fn * _PIO2_2T - ((r0 - r1) - w0)
    y = r1 - w1
    z = y * y
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    sn = y + z * y * (_S1 + z * r)
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    v = 1.0 - hz
    cs = v + (((1.0 - v) - hz) + z * r)
    odd = (n & 1) != 0
    s_out = cs if odd else sn
    c_out = sn if odd else cs
    s_out = -s_out if (n & 2) != 0 else s_out
    c_out = -c_out if ((n + 1) & 2) != 0 else c_out
    return s_out, c_out


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


# --------------------------------------------------------------------------- the score and the run
@njit(inline="always", **_OPTS)
def _score_block_2d(xs, i, means, inv_c, log_norm, logit, m, tot, out):
    """_score_block for D = 2 and diagonal covariances: the same arithmetic, one lane loop per component and pass."""
    K, L = log_norm.shape[1], xs.shape[1]
    x0, x1, o0, o1 = xs[0], xs[1], out[0], out[1]
    for l in range(L):
        m[l] = -np.inf
    for k in range(K):
        mu0, mu1, ic0, ic1, ln = means[i, k, 0], means[i, k, 1], inv_c[i, k, 0], inv_c[i, k, 1], log_norm[i, k]
        lk = logit[k]
        for l in range(L):
            y0 = x0[l] - mu0
            y1 = x1[l] - mu1
            quad = y0 * (y0 * ic0)  # >= +0, so equal to the general path's 0.0 + y0 * q0
            quad += y1 * (y1 * ic1)
            lg = ln - 0.5 * quad
            lk[l] = lg
            m[l] = lg if lg > m[l] else m[l]
    for l in range(L):
        tot[l] = 0.0
        o0[l] = 0.0
        o1[l] = 0.0
    for k in range(K):
        mu0, mu1, ic0, ic1 = means[i, k, 0], means[i, k, 1], inv_c[i, k, 0], inv_c[i, k, 1]
        lk = logit[k]
        for l in range(L):
            w = _exp_weight(lk[l] - m[l])
            tot[l] += w
            o0[l] -= w * ((x0[l] - mu0) * ic0)
            o1[l] -= w * ((x1[l] - mu1) * ic1)
    for l in range(L):
        o0[l] /= tot[l]
        o1[l] /= tot[l]


@njit(inline="always", **_OPTS)
def _score_block(xs, i, means, inv_c, log_norm, U, full, logit, q, ya, quad, m, tot, acc, out):
    """Exact mixture score at LANES points xs (D, LANES) for table row i, into ``out`` (D, LANES).

    Pass 1 keeps each component's logit and q_k = C_k^{-1} y_k (eigen coordinates,
    y_k = U_k^T (x - gamma mu_k)); pass 2 sums the softmax weights times -U_k q_k.
    Every loop over lanes is innermost and element-wise (SIMD); per lane the
    arithmetic and its order are those of one point alone.
    """
    K, D, L = log_norm.shape[1], xs.shape[0], xs.shape[1]
    if D == 2 and not full:
        _score_block_2d(xs, i, means, inv_c, log_norm, logit, m, tot, out)
        return
    for l in range(L):
        m[l] = -np.inf
    for k in range(K):
        for l in range(L):
            quad[l] = 0.0
        for a in range(D):
            if full:
                for l in range(L):
                    ya[l] = 0.0
                for j in range(D):
                    u = U[k, j, a]
                    mu = means[i, k, j]
                    for l in range(L):
                        ya[l] += u * (xs[j, l] - mu)
            else:
                mu = means[i, k, a]
                for l in range(L):
                    ya[l] = xs[a, l] - mu
            ic = inv_c[i, k, a]
            for l in range(L):
                qa = ya[l] * ic
                quad[l] += ya[l] * qa
                q[k, a, l] = qa
        ln = log_norm[i, k]
        for l in range(L):
            lg = ln - 0.5 * quad[l]
            logit[k, l] = lg
            m[l] = lg if lg > m[l] else m[l]
    for l in range(L):
        tot[l] = 0.0
    for j in range(D):
        for l in range(L):
            out[j, l] = 0.0
    for k in range(K):
        for l in range(L):
            w = _exp_weight(logit[k, l] - m[l])
            logit[k, l] = w  # now the unnormalised weight
            tot[l] += w
        for j in range(D):
            if full:
                for l in range(L):
                    acc[l] = 0.0
                for a in range(D):
                    u = U[k, j, a]
                    for l in range(L):
                        acc[l] += u * q[k, a, l]
                for l in range(L):
                    out[j, l] -= logit[k, l] * acc[l]
            else:
                for l in range(L):
                    out[j, l] -= logit[k, l] * q[k, j, l]
    for j in range(D):
        for l in range(L):
            out[j, l] /= tot[l]


@njit(parallel=True, **_OPTS)
def _run(x, coefs, draws, first, key0, key1, offset, means, inv_c, log_norm, U, full, lanes):
    """Run every row for every particle, in place on x (N, D); coefs (R, 4) = a, b, b_prev, c.

    ``prange`` over blocks of LANES particles (the last block padded with
    zero-state lanes whose results are dropped); a block keeps its state in
    float64 (D, L) and rounds it to the state dtype once per row.
    """
    N, D = x.shape
    R, K = coefs.shape[0], log_norm.shape[1]
    L = lanes  # a run-time value, so that LLVM's loop vectorizer (not full unrolling) takes the lane loops
    n_blocks = (N + L - 1) // L
    for blk in prange(n_blocks):
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
        for l in range(L):
            particle = offset + np.uint64(p0 + l)
            p_lo[l] = particle & _MASK
            p_hi[l] = particle >> _S32
        for l in range(n_lanes):
            for j in range(D):
                xb[j, l] = x[p0 + l, j]
                xs[j, l] = xb[j, l]
        for i in range(R):
            a, b, bp, c = coefs[i, 0], coefs[i, 1], coefs[i, 2], coefs[i, 3]
            if b != 0.0:
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
         np.uint64(noise.offset), const["means"], const["inv_c"], const["log_norm"], U, full, np.int64(min(LANES, x.shape[0])))  # fmt: skip
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
