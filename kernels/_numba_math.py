r"""Branch-free float64 math for Numba lane loops: bit casts, FMA, exp, log, sin/cos.

Numba's ``math.exp/log/cos/sin`` are scalar libm calls here (no SVML), which
stops LLVM from vectorising a loop over particle lanes. These are the
fdlibm/musl algorithms written without branches (special cases that cannot
occur in the kernels are not handled); against NumPy on 2e7 points each:
``_log`` and ``_sincos`` at most 1 ulp, ``_exp_weight`` at most 2 ulp
(tests/test_kernels_fused_math.py). Used by ``fused_numba`` and
``mixture_numba``. Under ``NUMBA_DISABLE_JIT=1`` the bit casts and the FMA
have plain-Python equivalents, so the kernels compute the same numbers.
Also :data:`PRANGE_ONLY`, the ``parallel=`` option of the kernels with a
one-thread path (``mlp_numba``, ``conv_numba``), :func:`add_block_sums`
(their per-block parameter gradients, summed in order), :func:`aligned_empty`
(cache-line aligned scratch), the dtype-generic
:func:`fma` and :func:`sigmoid`, and :func:`prefer_wide_vectors` (512-bit lane loops).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

try:
    import numba
    from numba import njit
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels._numba_math needs numba: pip install "refdiff[fast]"') from exc

from ._numba_cache import drop_stale_kernel_caches

__all__ = []

# Every Numba kernel module imports this one before it compiles or calls anything: drop cached kernels built
# from other sources of this folder first (Numba checks only each kernel's own file; see _numba_cache).
drop_stale_kernel_caches()

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

#: Numba's parallel transforms limited to the explicit ``prange``. With all of them on, the array
#: expressions of a block body became parallel regions of their own on a kernel's one-thread path, a
#: launch each; ``np.zeros`` does even so, so such bodies allocate with ``np.empty`` and zero in a loop
#: (GroupNorm + SiLU forward and backward took 80 us on one thread at 128 values instead of 7).
PRANGE_ONLY = dict(prange=True, comprehension=False, reduction=False, inplace_binop=False, setitem=False,
                   numpy=False, stencil=False, fusion=False)


#: Scratch alignment in bytes: a cache line, so that no 512-bit load or store of a row (rows a multiple of 64
#: bytes wide) spans two lines.
CACHE_LINE = 64


@njit(inline="always", **_OPTS)
def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` (C order), its data aligned to :data:`CACHE_LINE` bytes.

    Numba's allocator gives data 32 bytes past a 64-byte boundary, every time:
    each 512-bit access to such a row spans two cache lines. Aligning the
    one-pass mixture kernel's scratch took 0-6% off its time at N = 1e5,
    D = 2 to 4, two threads (alternating runs, noisy), never adding any.
    """
    n = 1
    for s in shape:
        n *= s
    raw = np.empty(n + CACHE_LINE, dtype)
    off = (CACHE_LINE - raw.ctypes.data % CACHE_LINE) % CACHE_LINE // raw.itemsize
    return raw[off:off + n].reshape(shape)


@njit(**_OPTS)
def add_block_sums(out, parts):
    """out += the sum of the rows of ``parts`` (one per block of a parallel kernel), added row by row in order,
    so that the result does not depend on the thread count; no rows (an empty batch) add nothing."""
    if parts.shape[0] == 0:
        return
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            total[j] += parts[k, j]
    for j in range(out.shape[0]):
        out[j] += total[j]


# --------------------------------------------------------------------------- float64 <-> int64 bit casts
if numba.config.DISABLE_JIT:  # plain Python (NUMBA_DISABLE_JIT=1): the same bits through NumPy views

    def _f2i(x):
        return int(np.array(x, dtype=np.float64).view(np.int64))

    def _i2f(i):
        return float(np.array(int(i) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64).view(np.float64))  # int64 wrap-around

    def _fma(a, b, c):
        """a * b + c rounded once, as llvm.fma: exact integer arithmetic, one correctly rounded conversion."""
        a, b, c = float(a), float(b), float(c)
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
            return a * b + c  # NaN / infinity: one rounding or two give the same
        try:
            if hasattr(math, "fma"):  # Python >= 3.13
                return math.fma(a, b, c)
            return _fma_by_integers(a, b, c)
        except OverflowError:  # beyond the largest float: llvm.fma gives the infinity of that sign, as this does
            return a * b + c

    def _fma_by_integers(a, b, c):
        """:func:`_fma` for finite floats before Python 3.13: the 53-bit significands as integers, the exact sum
        cut to 55 bits with a sticky bit (so the conversion to float rounds as the exact value would), scaled by
        its power of two. A result in the subnormal range (where that scaling would round a second time)
        takes exact rationals instead. Five times faster than rationals throughout, which made a float64
        sigmoid (an exp: 13 FMAs a value) the slowest part of the plain-Python kernel tests."""
        if a == 0.0 or b == 0.0:
            return a * b + c  # an exact (signed) zero product: one rounding
        if c == 0.0:
            return a * b  # a nonzero exact sum: c's sign cannot matter
        ma, ea = math.frexp(a)
        mb, eb = math.frexp(b)
        mc, ec = math.frexp(c)
        ep, ec = ea + eb - 106, ec - 53  # a b = ia ib 2**ep, c = ic 2**ec
        e = min(ep, ec)
        total = ((int(ma * 2.0**53) * int(mb * 2.0**53)) << (ep - e)) + (int(mc * 2.0**53) << (ec - e))
        if total == 0:
            return 0.0  # exact cancellation: +0 when rounding to nearest
        mag = abs(total)
        cut = mag.bit_length() - 55
        if cut > 0:
            mag = (mag >> cut) | (1 if mag & ((1 << cut) - 1) else 0)
            e += cut
        if mag.bit_length() + e <= -1022:  # below 2**-1022: subnormal, or near enough to round into it
            return float(Fraction(a) * Fraction(b) + Fraction(c))
        return math.ldexp(float(mag) if total > 0 else -float(mag), e)

    def _f2i32(x):
        return int(np.array(x, dtype=np.float32).view(np.int32))

    def _i2f32(i):
        return np.array(int(i) & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]

    def _fma32(a, b, c):
        """float32 a * b + c: the product is exact in float64, so this rounds twice (float64, then float32)
        where llvm.fma.f32 rounds once; the two differ only on rare halfway cases (not bit-exact to JIT)."""
        return np.float32(float(a) * float(b) + float(c))

    def prefer_wide_vectors():
        """No-op without the JIT (see the compiled version)."""

    def fma(a, b, c):
        """a * b + c in the operands' dtype: :func:`_fma32` for three float32, :func:`_fma` otherwise."""
        if all(isinstance(v, np.float32) for v in (a, b, c)):
            return _fma32(a, b, c)
        return _fma(a, b, c)

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

    @intrinsic
    def _f2i32(typingctx, x):
        """The bits of a float32 as an int32 (an LLVM bitcast)."""
        if not isinstance(x, types.Float) or x.bitwidth != 32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _i2f32(typingctx, i):
        """The float32 with the bits of the low 32 bits of an integer (truncate, then an LLVM bitcast)."""
        if not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if i.bitwidth > 32:
                v = builder.trunc(v, ir.IntType(32))
            elif i.bitwidth < 32:
                v = builder.sext(v, ir.IntType(32)) if i.signed else builder.zext(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())

        return types.float32(i), codegen

    @intrinsic
    def _fma32(typingctx, a, b, c):
        """float32 a * b + c with one rounding (llvm.fma.f32)."""
        if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
            return None

        def codegen(context, builder, signature, args):
            f = ir.FloatType()
            fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
            return builder.call(fn, args)

        return types.float32(types.float32, types.float32, types.float32), codegen

    @intrinsic
    def prefer_wide_vectors(typingctx):
        """Let LLVM vectorise the function this is called in with 512-bit registers where the CPU has them.

        LLVM's tuning for recent AVX-512 CPUs (Skylake-SP to Sapphire Rapids) prefers 256-bit vectors, so
        Numba's lane loops use half the SIMD width. This sets the function's ``prefer-vector-width``
        attribute to 512 (the clang ``-mprefer-vector-width=512`` of one function; a CPU without AVX-512 is
        unaffected). Called at the top of a ``prange`` body it reaches the loop's outlined function, where
        the lane loops are. llvmlite's attribute set admits only its known names, so the key-value attribute
        goes into the underlying set as the text LLVM reads. Measured: the D = 2 mixture score kernel,
        0.437 -> 0.345 ms on one thread (N = 1e5, K = 8, float32).

        It also sets ``alignstack(64)``: a loop with more loop-invariant vectors than registers (the
        one-pass mixture kernel's component constants) reloads them from stack slots each iteration, and
        Numba's functions keep the stack 16-byte aligned, so three in four 512-bit reloads spanned two cache
        lines. With the stack realigned to 64 bytes in the prologue, the slots are whole lines: the D = 4
        one-pass kernel went from 0.143 to 0.135 ms (N = 1e5, K = 8, float32, two threads; the same bits),
        D = 2 from 0.0945 to 0.0931; the GEMM kernel at D = 16 and 64 was unchanged.
        """

        def codegen(context, builder, signature, args):
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            set.add(builder.function.attributes, "alignstack(64)")
            return context.get_dummy_value()

        return types.none(), codegen

    @intrinsic
    def fma(typingctx, a, b, c):
        """a * b + c with one rounding in the operands' dtype (all three float32 or all float64): llvm.fma."""
        if not (isinstance(a, types.Float) and a.bitwidth in (32, 64) and b == a and c == a):
            return None

        def codegen(context, builder, signature, args):
            f = ir.FloatType() if a.bitwidth == 32 else ir.DoubleType()
            fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
            return builder.call(fn, args)

        return a(a, a, a), codegen


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
    return _exp_unclamped(_EXP_MIN if x < _EXP_MIN else x)


@njit(inline="always", **_OPTS)
def _exp_unclamped(xc):
    """:func:`_exp_weight` without its clamp: exp(xc) for -708 <= xc <= 0; meaningless below (see
    :func:`_exp_unclamped32`)."""
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


_F32 = np.float32
_SHIFT32 = _F32(12582912.0)  # 1.5 * 2**23: rounds a float32 below 2**22 in magnitude to an integer
_SHIFT32_BITS = np.int32(0x4B400000)  # its bits (int32: the lane arithmetic stays 32-bit)
_INVLN2_32 = _F32(_INVLN2)
_LN2_HI32 = _F32(0.693359375)  # ln 2 to 9 bits (Cephes expf): k * _LN2_HI32 is exact for |k| < 2**15
_LN2_LO32 = _F32(-2.12194440e-4)  # ln 2 - _LN2_HI32
_F2, _F3, _F4, _F5, _F6, _F7 = (_F32(1.0 / math.factorial(n)) for n in range(2, 8))
_ONE32 = _F32(1.0)
_EXP_MIN32 = _F32(-87.0)  # exp(-87) ~ 1.6e-38 is still a normal float32


@njit(inline="always", **_OPTS)
def _exp_weight32(x):
    """float32 exp(x) for float32 x <= 0 to 2 ulp, as a softmax weight: exp(max(x, -87)), never subnormal.

    The float32 twin of :func:`_exp_weight`: Cody-Waite reduction with the
    Cephes split of ln 2 (two FMAs), the Taylor polynomial of degree 7 (its
    truncation, r^8/8! < 6e-9 for |r| <= ln2/2, is a tenth of an ulp), times
    2**k from its bits. Every operation stays in float32, so a loop of them
    vectorises over twice the lanes of the float64 exp, with a shorter polynomial.
    """
    return _exp_unclamped32(_EXP_MIN32 if x < _EXP_MIN32 else x)


@njit(inline="always", **_OPTS)
def _exp_unclamped32(xc):
    """:func:`_exp_weight32` without its clamp: exp(xc) for -87 <= xc <= 0; below that a meaningless finite
    or NaN value (2**k from bits out of range), for callers that clamp first or discard those lanes."""
    t = _fma32(xc, _INVLN2_32, _SHIFT32)
    k = _f2i32(t) - _SHIFT32_BITS  # k = round(x / ln 2), in [-126, 0]
    kf = t - _SHIFT32
    r = _fma32(-kf, _LN2_HI32, xc)
    r = _fma32(-kf, _LN2_LO32, r)
    p = _fma32(_F7, r, _F6)
    p = _fma32(p, r, _F5)
    p = _fma32(p, r, _F4)
    p = _fma32(p, r, _F3)
    p = _fma32(p, r, _F2)
    p = _fma32(p, r, _ONE32)
    p = _fma32(p, r, _ONE32)
    return p * _i2f32((k + np.int32(127)) << np.int32(23))


# --------------------------------------------------------------------------- nu 2**(q l): a scaled power of two
#: Minimax polynomials of 2**f on [-1/2, 1/2], the constant term first (a Remez exchange on the relative
#: error, in 40-digit arithmetic): degree 6 for float32 (relative error 1.9e-9, a sixtieth of an ulp) and
#: degree 11 for float64 (3.1e-18, a thirty-sixth of an ulp).
POW2_POLY32 = (1.000000000554166299263, 0.6931472057372526753556, 0.2402264689063957213406,
               0.05550328776997663763859, 0.009618488956522791570503, 0.001339993120947414049318,
               0.000153458121587401824768)
POW2_POLY64 = (0.9999999999999999971004, 0.6931471805599453304614, 0.2402265069591015620459,
               0.05550410866481992148303, 0.009618129107588335083319, 0.00133335581467899503225,
               0.0001540353046251461302565, 0.00001525273348996080460015, 0.000001321543308959462903694,
               1.017819803332852766156e-7, 7.074105626245659370846e-9, 4.435280944610336161055e-10)
_POW2_COEFS32, _POW2_COEFS64 = np.array(POW2_POLY32), np.array(POW2_POLY64)


@njit(**_OPTS)
def pow2_factors(nu, shift, poly):
    """Split the prior factors nu (K,) (float64) for :func:`scaled_pow2` into ``shift`` (K,) and ``poly``
    (K, 7) for float32 or (K, 12) for float64, in the kernel's dtype: with nu = m 2**e, m in [1, 2), shift is
    1.5 2**23 + e (float32; 1.5 2**52 + e for float64), the rounding constant that then carries e into the
    result's exponent, and poly is m times :data:`POW2_POLY32` (:data:`POW2_POLY64`). nu = 0 gives a zero
    polynomial (and e = -1); :func:`scaled_pow2` is then meaningless, and callers drop such a factor."""
    single = poly.shape[1] == len(POW2_POLY32)
    coefs = _POW2_COEFS32 if single else _POW2_COEFS64
    base = np.float64(_SHIFT32) if single else _SHIFT
    for k in range(nu.shape[0]):
        m, e = math.frexp(nu[k])  # nu = m 2**e, m in [1/2, 1)
        shift[k] = base + (e - 1)
        for i in range(coefs.shape[0]):
            poly[k, i] = 2.0 * m * coefs[i]


@njit(inline="always", **_OPTS)
def _scaled_pow2_32(q, l, shift, p, keep):
    """float32 :func:`scaled_pow2`."""
    t = _fma32(q, l, shift)  # shift + n, n = round(q l), in shift's low bits (with e)
    f = _fma32(q, l, shift - t)  # q l - n, |f| <= 1/2: the exact product less an integer, rounded once
    w = _fma32(p[6], f, p[5])
    w = _fma32(w, f, p[4])
    w = _fma32(w, f, p[3])
    w = _fma32(w, f, p[2])
    w = _fma32(w, f, p[1])
    w = _fma32(w, f, p[0])
    bits = _f2i32(w) + (_f2i32(t) << 23)  # m 2**f times 2**(e + n), added to its exponent field
    return _i2f32(bits if keep else 0)


@njit(inline="always", **_OPTS)
def _scaled_pow2_64(q, l, shift, p, keep):
    """float64 :func:`scaled_pow2`."""
    t = _fma(q, l, shift)
    f = _fma(q, l, shift - t)
    w = _fma(p[11], f, p[10])
    w = _fma(w, f, p[9])
    w = _fma(w, f, p[8])
    w = _fma(w, f, p[7])
    w = _fma(w, f, p[6])
    w = _fma(w, f, p[5])
    w = _fma(w, f, p[4])
    w = _fma(w, f, p[3])
    w = _fma(w, f, p[2])
    w = _fma(w, f, p[1])
    w = _fma(w, f, p[0])
    bits = _f2i(w) + (_f2i(t) << 52)
    return _i2f(bits if keep else 0)


def scaled_pow2(q, l, shift, p, keep):
    r"""nu 2**(q l) in the dtype of q where ``keep``, else exactly 0, for a nu split by :func:`pow2_factors` into
    ``shift`` and the polynomial tuple ``p`` (7 coefficients for float32, 12 for float64; :func:`pow2_row`
    gives a row as a tuple).

    One FMA rounds q l to n + f (n an integer, |f| <= 1/2); the polynomial,
    with nu's mantissa m folded into its coefficients, gives m 2**f; nu's
    exponent e rides in ``shift`` and e + n is added to the exponent field of
    the result as an integer. So nu multiplies at no cost and 2**n needs no
    multiply. Six FMAs of polynomial in float32 (eleven in float64), three
    operations of reduction, two of integer arithmetic. The product q l is
    reduced exactly and rounded once with n; the relative error of the
    result is that rounding, |q l| times one ulp relative at most, plus the
    polynomial's (under an ulp, measured). Valid only while nu 2**(q l) is a
    normal number: below that the exponent field wraps and the value is
    meaningless, so ``keep`` must be false there (and for NaN, and for
    nu = 0); the callers' cut is e**10 above the smallest normal number.
    """
    if isinstance(q, np.float32):
        return _scaled_pow2_32(q, l, shift, p, keep)
    return _scaled_pow2_64(q, l, shift, p, keep)


def pow2_row(poly, k):
    """Row k of :func:`pow2_factors`' polynomial array as a tuple (7 or 12 entries by dtype): loop-invariant
    scalars the compiler keeps out of the lane loop."""
    return tuple(poly[k])


def exp_weight(x):
    """:func:`_exp_weight32` for a float32 ``x``, :func:`_exp_weight` otherwise (kernels generic in the dtype call this)."""
    return _exp_weight32(x) if isinstance(x, np.float32) else _exp_weight(x)


def exp_clamp(x):
    """The argument below which :func:`exp_weight` clamps, in x's type: -87 for a float32 ``x``, else -708."""
    return _EXP_MIN32 if isinstance(x, np.float32) else np.float64(_EXP_MIN)


@njit(inline="always", **_OPTS)
def sigmoid(z, one):
    """The logistic sigmoid 1/(1 + exp(-z)) in z's dtype (``one`` is 1 in that dtype), branch-free.

    With e = exp(-|z|) <= 1 (:func:`exp_weight`, never overflowing): 1/(1 + e)
    for z >= 0 and e/(1 + e) below, so it is within 4 ulp relative everywhere, small values included
    (NumPy's 1/2 + tanh(z/2)/2 is exact only to half an ulp of 1/2). Below -87 (float32) or -708
    (float64), where the exp clamps, it gives 0 (so does NumPy's form from about -17 and -38); NaN gives NaN.
    """
    e = exp_weight(-abs(z))
    r = one / (one + e)
    # below the exp's clamp e is exp(clamp), not exp(z): 0 there, as NumPy's form gives, so that z s (SiLU) and
    # its derivative go to 0 and do not grow again with |z| (-5.6 at z = -3.4e38 in float32)
    return r if z >= 0 else (e * r if not z < exp_clamp(z) else one - one)  # NaN stays NaN


if not numba.config.DISABLE_JIT:
    import warnings

    from numba.core.errors import NumbaIRAssumptionWarning
    from numba.extending import overload

    # Inlining the overload at the IR level (a call would stop the lane loops vectorising: the D = 16 mixture
    # score ran 1.8x slower) trips a pedantic SSA check of Numba's about the lambdas' variables; the code it
    # compiles is correct (every kernel using it is tested against its reference). Silence that message only.
    for _name in ("_exp_weight_by_type", "_exp_clamp_by_type", "_scaled_pow2_by_type", "_pow2_row_by_type"):
        warnings.filterwarnings("ignore", message=f"variable '{_name}", category=NumbaIRAssumptionWarning)

    @overload(exp_weight, inline="always")
    def _exp_weight_by_type(x):
        if isinstance(x, types.Float):
            return (lambda x: _exp_weight32(x)) if x.bitwidth == 32 else (lambda x: _exp_weight(x))
        return None

    @overload(exp_clamp, inline="always")
    def _exp_clamp_by_type(x):
        if isinstance(x, types.Float):
            return (lambda x: _EXP_MIN32) if x.bitwidth == 32 else (lambda x: _EXP_MIN)
        return None

    @overload(scaled_pow2, inline="always")
    def _scaled_pow2_by_type(q, l, shift, p, keep):
        if isinstance(q, types.Float):
            if q.bitwidth == 32:
                return lambda q, l, shift, p, keep: _scaled_pow2_32(q, l, shift, p, keep)
            return lambda q, l, shift, p, keep: _scaled_pow2_64(q, l, shift, p, keep)
        return None

    @overload(pow2_row, inline="always")
    def _pow2_row_by_type(poly, k):
        if isinstance(poly, types.Array) and isinstance(poly.dtype, types.Float):
            if poly.dtype.bitwidth == 32:
                return lambda poly, k: (poly[k, 0], poly[k, 1], poly[k, 2], poly[k, 3], poly[k, 4], poly[k, 5],
                                        poly[k, 6])
            return lambda poly, k: (poly[k, 0], poly[k, 1], poly[k, 2], poly[k, 3], poly[k, 4], poly[k, 5],
                                    poly[k, 6], poly[k, 7], poly[k, 8], poly[k, 9], poly[k, 10], poly[k, 11])
        return None


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
    return _log_pow2(x, 0)


@njit(inline="always", **_OPTS)
def _log_pow2(x, e):
    """log(x 2**e) for finite normal x > 0 and an integer e, without forming x 2**e (which may be subnormal or
    overflow): :func:`_log` with e added to the exponent it splits off, so k ln 2 stays exact (a two-part ln 2)."""
    hx = _f2i(x)
    # x = 2**k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)): shift the high word by 1 - 0x3fe6a09e
    hi = (hx >> 32) + (0x3FF00000 - 0x3FE6A09E)
    k = (hi >> 20) - 0x3FF + e
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
