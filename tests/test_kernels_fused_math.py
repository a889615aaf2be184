"""The branch-free exp / log / sin-cos of the Numba fused kernel (refdiff.kernels.fused_numba) against NumPy.

The kernel's Box-Muller normals must match :mod:`refdiff.noise` to 1e-14 and
its softmax weights drive float64 trajectories that must match the reference
to 1e-10, so each function is checked in ulps on millions of points over the
whole range it is used on, edges included: ``_log`` on every kind of uniform
``(w + 0.5) 2**-32`` (2**-33 ... 1 - 2**-33), ``_sincos`` on theta = 2 pi u
(quadrant boundaries and the exact quarter points included), ``_exp_weight``
on [-708, 0] (and its clamp below), and the sigmoid built on it. Under NUMBA_DISABLE_JIT=1 the sizes shrink
(plain Python is slow) but the same assertions run.
"""

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("numba") is None:
    pytest.skip("numba is not installed (pip install 'refdiff[fast]')", allow_module_level=True)

import numba  # noqa: E402

from refdiff.kernels import _numba_math as NM  # noqa: E402
from refdiff.kernels import fused_numba as FN  # noqa: E402
from refdiff.noise import TWO_PI, counter_normals  # noqa: E402

JIT = not numba.config.DISABLE_JIT
BIG = 4_000_000 if JIT else 2_000


@numba.njit(error_model="numpy")
def _apply(which, x, out0, out1):
    for i in range(x.shape[0]):
        if which == 0:
            out0[i] = NM._exp_weight(x[i])
        elif which == 1:
            out0[i] = NM._log(x[i])
        else:
            s, c = NM._sincos(x[i])
            out0[i] = s
            out1[i] = c


def _run(which, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out0, out1 = np.empty_like(x), np.empty_like(x)
    _apply(which, x, out0, out1)
    return out0, out1


def _ulps(got, want):
    """|got - want| in units of the last place of want (spacing of the smallest normal for want = 0)."""
    scale = np.spacing(np.maximum(np.abs(want), np.finfo(np.float64).tiny))
    return np.abs(got - want) / scale


def _uniforms(n, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2**32, size=n, dtype=np.uint64)
    edges = np.array([0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 3, 2**32 - 2, 2**32 - 1], dtype=np.uint64)
    quarters = np.arange(0, 2**32, 2**24, dtype=np.uint64)  # u near k/256: theta near multiples of pi/128
    small = (np.uint64(1) << np.arange(32, dtype=np.uint64)) - np.uint64(1)  # u = (2**m - 0.5) 2**-32
    w = np.concatenate([edges, quarters, quarters - np.uint64(1), small, w[: max(n - 1000, 0)]])
    return (w.astype(np.float64) + 0.5) * 2.0**-32


def test_log_on_every_uniform_within_one_ulp():
    u = _uniforms(BIG, 0)
    got, _ = _run(1, u)
    assert np.max(_ulps(got, np.log(u))) <= 1.0
    x = np.exp(np.random.default_rng(1).uniform(-700.0, 700.0, BIG // 4))  # the whole normal range
    got, _ = _run(1, x)
    assert np.max(_ulps(got, np.log(x))) <= 1.0
    assert _run(1, np.array([1.0]))[0][0] == 0.0


def test_sincos_on_two_pi_u_within_one_ulp():
    u = np.concatenate([_uniforms(BIG, 2), [0.25, 0.5, 0.75, 0.125, 0.375, 0.625, 0.875]])
    theta = TWO_PI * u
    s, c = _run(2, theta)
    assert np.max(_ulps(s, np.sin(theta))) <= 1.0  # relative: even next to the zeros of sin and cos
    assert np.max(_ulps(c, np.cos(theta))) <= 1.0
    theta = np.random.default_rng(3).uniform(0.0, 2 * np.pi, BIG)  # arbitrary doubles in [0, 2 pi)
    theta[:3] = [0.0, np.nextafter(2 * np.pi, 0.0), np.pi / 4]
    s, c = _run(2, theta)
    assert np.max(_ulps(s, np.sin(theta))) <= 1.0
    assert np.max(_ulps(c, np.cos(theta))) <= 1.0


def test_exp_weight_within_two_ulp_and_clamped():
    x = -np.random.default_rng(4).uniform(0.0, 708.0, BIG)
    x[:6] = [0.0, -0.0, -1e-300, -5e-324, -708.0, -0.5 * np.log(2.0)]
    got, _ = _run(0, x)
    assert np.max(_ulps(got, np.exp(x))) <= 2.0
    got, _ = _run(0, np.array([-708.0, -708.5, -745.0, -1e300, -np.inf, np.nan]))
    assert np.all(got[1:5] == got[0]) and np.isnan(got[5])  # clamped to exp(-708): never subnormal, never 0
    assert _ulps(got[:1], np.exp([-708.0]))[0] <= 2.0


@numba.njit(error_model="numpy")
def _exp_any(x, out):
    for i in range(x.shape[0]):
        out[i] = NM.exp_weight(x[i])


def test_float32_exp_weight_within_two_ulp_and_clamped():
    """_exp_weight32 (through the dtype-generic exp_weight) against exp in float64, rounded to float32."""
    x = (-np.random.default_rng(5).uniform(0.0, 87.0, BIG)).astype(np.float32)
    x[:5] = [0.0, -0.0, -1e-30, -87.0, -0.5 * np.log(2.0)]
    got = np.empty_like(x)
    _exp_any(x, got)
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    assert got.dtype == np.float32
    assert np.max(np.abs(got.astype(np.float64) - want) / np.spacing(want)) <= 2.0
    edge = np.array([-87.0, -87.5, -100.0, -3e38, -np.inf, np.nan], dtype=np.float32)
    got = np.empty_like(edge)
    _exp_any(edge, got)
    assert np.all(got[1:5] == got[0]) and np.isnan(got[5])  # clamped to exp(-87): a normal float32, never 0
    assert got[0] >= np.finfo(np.float32).tiny
    x64 = np.array([-1.0, -700.0])
    got64 = np.empty_like(x64)
    _exp_any(x64, got64)  # float64 input takes the float64 exp
    assert np.max(_ulps(got64, np.exp(x64))) <= 2.0


@numba.njit(error_model="numpy")
def _sigmoid_all(x, one, out):
    for i in range(x.shape[0]):
        out[i] = NM.sigmoid(x[i], one)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_within_four_ulp_where_numpys_tanh_form_is_not(dtype):
    """NM.sigmoid against 1/(1 + exp(-z)) in a wider type, relative, over the range where the result is normal:
    NumPy's 1/2 + tanh(z/2)/2 (the reference) is exact only to half an ulp of 1/2, so for z << 0 it is off by
    many of its own ulps; the twin's form is not. Then the saturated ends, the clamp and NaN."""
    lim = 87.0 if dtype == np.float32 else 700.0
    z = np.random.default_rng(11).uniform(-lim, 30.0, BIG).astype(dtype)
    z[:6] = [0.0, -0.0, 1e-30, -1e-30, -lim, 30.0]
    got = np.empty_like(z)
    _sigmoid_all(z, dtype(1.0), got)
    wide = np.longdouble if dtype == np.float64 else np.float64
    want = (1 / (1 + np.exp(-z.astype(wide)))).astype(dtype)
    assert got.dtype == dtype
    ulps = np.abs(got.astype(wide) - want.astype(wide)) / np.spacing(want).astype(wide)
    assert ulps.max() <= 4.0
    tanh_form = (0.5 + 0.5 * np.tanh(z / 2)).astype(dtype)
    far = z < -20
    assert (np.abs(tanh_form[far].astype(wide) - want[far]) / np.spacing(want[far])).max() > 1e3  # the contrast
    edge = np.array([np.inf, 1e30, -1e30, -np.inf, np.nan], dtype=dtype)
    got = np.empty_like(edge)
    _sigmoid_all(edge, dtype(1.0), got)
    assert got[0] == got[1] == 1.0 and np.isnan(got[4])
    assert got[2] == got[3] == 0.0  # past the exp's clamp: 0, not e^-87 (e^-708), as NumPy's form gives
    clamp = -87.0 if dtype == np.float32 else -708.0
    ends = np.array([clamp, np.nextafter(dtype(clamp), dtype(-np.inf))], dtype=dtype)
    _sigmoid_all(ends, dtype(1.0), got[:2])
    assert got[0] > 0 and got[1] == 0.0


@numba.njit(error_model="numpy")
def _pow2_all(q, l, cut, shift, poly, out):
    for i in range(q.shape[0]):
        out[i] = NM.scaled_pow2(q[i], l, shift[0], NM.pow2_row(poly, 0), q[i] < cut)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nu", [1.0, 0.7 * 2.0**86, 3.3e-20, 1.7, 1.3 * 2.0**-100, 0.0])
def test_scaled_pow2_within_two_ulp_of_nu_times_the_power(dtype, nu):
    """scaled_pow2 against nu 2**(q l) in long double, l = -1 / ln 2 and -1 / (2 c ln 2): within 2 ulp of the
    dtype wherever the result is e**10 above the smallest normal number (the kernels' cut; nu's own rounding
    to the dtype included), exactly 0 where keep is false, NaN q included."""
    tiny = np.finfo(dtype).tiny
    shift, poly = np.empty(1, dtype), np.empty((1, 7 if dtype == np.float32 else 12), dtype)
    NM.pow2_factors(np.array([nu]), shift, poly)
    rng = np.random.default_rng(7)
    for l64 in (-1.0 / np.log(2.0), -0.5 / (0.37 * np.log(2.0))):
        l = dtype(l64)
        if nu > 0:
            log2_floor = np.log2(tiny) + 10.0 / np.log(2.0) - np.log2(nu)  # the kernels' cut, in q l
            span = min(-log2_floor, 2000.0)
        else:
            span = 200.0
        q = (rng.uniform(0.0, span / -float(l), BIG) ).astype(dtype)
        q[:4] = [0.0, 1e-30, 0.5 / -float(l), span / -float(l)]
        cut = dtype(np.inf) if nu > 0 else dtype(-np.inf)
        got = np.empty_like(q)
        _pow2_all(q, l, cut, shift, poly, got)
        want = np.longdouble(nu) * np.exp2(q.astype(np.longdouble) * np.longdouble(l))
        if nu == 0:
            assert np.all(got == 0)
            continue
        ok = want > np.longdouble(tiny) * np.exp(np.longdouble(10.0))
        assert ok.sum() > 0.9 * BIG
        ulps = np.abs(got[ok].astype(np.longdouble) - want[ok]) / np.spacing(want[ok].astype(dtype)).astype(np.longdouble)
        assert got.dtype == dtype and float(ulps.max()) <= 2.0
    edge = np.array([1.0, np.nan, np.inf, 3.0], dtype=dtype)
    out = np.empty_like(edge)
    _pow2_all(edge, dtype(-1.0), dtype(2.0), shift, poly, out)  # keep: q < 2
    assert out[0] > 0 or nu == 0
    assert np.all(out[1:] == 0)  # NaN, inf and past the cut: exactly zero, never NaN


def test_pow2_factors_carry_nu_in_shift_and_polynomial():
    """nu = m 2**e: the polynomial's constant term is m times POW2_POLY's (m in [1, 2)) and shift - 1.5 2**p is e,
    in both dtypes; the float32 polynomial is the sixth-degree one, the float64 the eleventh."""
    nu = np.array([1.0, 3.0, 2.0**-100, 2.0**86 * 1.5, 0.0])
    for dtype, n, base in ((np.float32, 7, 1.5 * 2.0**23), (np.float64, 12, 1.5 * 2.0**52)):
        shift, poly = np.empty(nu.size, dtype), np.empty((nu.size, n), dtype)
        NM.pow2_factors(nu, shift, poly)
        coefs = np.array(NM.POW2_POLY32 if dtype == np.float32 else NM.POW2_POLY64)
        e = (shift.astype(np.float64) - base)
        np.testing.assert_array_equal(e, [0, 1, -100, 86, -1])
        m = poly[:, 0].astype(np.float64) / coefs[0]
        np.testing.assert_allclose(m[:4] * 2.0**e[:4], nu[:4], rtol=2 * np.finfo(dtype).eps)
        assert np.all(poly[4] == 0)
        np.testing.assert_allclose(poly[1] / poly[1, 0], coefs / coefs[0], rtol=np.finfo(dtype).eps)


def test_kernel_normals_match_the_contract_on_many_particles():
    """FN.normals (the kernel's Box-Muller) against refdiff.noise on many draws: 1e-14 as the contract says."""
    n = 200_000 if JIT else 500
    particles = np.random.default_rng(5).integers(0, 2**63, size=n, dtype=np.uint64)
    for seed, draw, dim in ((0, 0, 4), (2**64 - 1, 2**32 - 1, 7), (12345, 17, 2)):
        want = counter_normals(seed, particles, draw, dim)
        got = FN.normals(seed, particles, draw, dim)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
        assert np.max(_ulps(got, want)[np.abs(want) > 1e-3]) <= 4.0


@numba.njit(error_model="numpy")
def _fma_all(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = NM.fma(a[i], b[i], c[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fma_rounds_once_in_the_operands_dtype(dtype):
    """fma(a, b, c) is a * b + c rounded once: exact where the product's low half is all that is left
    (a * b + c with c = -round(a * b) is the rounding error of the product, which plain a * b + c loses)."""
    from fractions import Fraction

    rng = np.random.default_rng(5)
    a = (1.0 + rng.random(500)).astype(dtype)
    b = (1.0 + rng.random(500)).astype(dtype)
    c = -(a * b)  # rounded product, negated
    out = np.empty_like(a)
    _fma_all(a, b, c, out)
    assert out.dtype == dtype
    exact = np.array([float(Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r))) for p, q, r in zip(a, b, c)])
    np.testing.assert_array_equal(out.astype(np.float64), exact.astype(dtype).astype(np.float64))
    assert np.count_nonzero(out) > 400  # the plain product-then-sum gives 0 everywhere
    if dtype == np.float64:  # zeros, results in and next to the subnormal range, a tie broken by the low bits
        a = np.array([0.0, 3.0, 1.5 * 2.0**-520, 1.5 * 2.0**-520, 1.0 + 2.0**-52, 1e300])
        b = np.array([5.0, -0.0, 1.25 * 2.0**-520, -1.25 * 2.0**-520, 1.0 + 2.0**-52, 1e10])
        c = np.array([-0.0, 2.0, 2.0**-1060, 2.0**-1022, 2.0**-105, -1e300])
        out = np.empty_like(a)
        _fma_all(a, b, c, out)
        for p, q, r, got in zip(a, b, c, out):
            exact = Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r))
            assert got == (float(exact) if abs(exact) < 2**1024 else (1 if exact > 0 else -1) * np.inf), (p, q, r)


def _axpy_asm(wide):
    """The assembly of a fresh (uncached) lane loop, with or without prefer_wide_vectors()."""

    def axpy(a, x, y):
        if wide:
            NM.prefer_wide_vectors()
        for i in range(x.shape[0]):
            y[i] += a * x[i]

    f = numba.njit(error_model="numpy")(axpy)
    x = np.ones(64)
    f(2.0, x, x.copy())
    return "".join(f.inspect_asm().values())


@numba.njit
def _aligned_pair(n):
    return NM.aligned_empty((3, n), np.float32), NM.aligned_empty((n,), np.float64)


@pytest.mark.parametrize("n", [1, 5, 512])
def test_aligned_empty_starts_on_a_cache_line(n):
    for _ in range(5):  # several allocations: the offset must not depend on where the allocator lands
        a, b = _aligned_pair(n)
        assert a.shape == (3, n) and a.dtype == np.float32 and a.flags.c_contiguous
        assert b.shape == (n,) and b.dtype == np.float64
        assert a.ctypes.data % NM.CACHE_LINE == 0 and b.ctypes.data % NM.CACHE_LINE == 0
        a[...] = 1.0  # the whole view is writable memory of its own
        assert a.sum() == 3 * n


@pytest.mark.skipif(not JIT, reason="assembly needs the JIT")
def test_prefer_wide_vectors_gives_512_bit_lane_loops():
    """With the attribute the loop's arithmetic runs on zmm registers where the CPU has AVX-512. Without it LLVM's
    tuning for Intel's AVX-512 CPUs (Skylake-SP to Sapphire Rapids) keeps to ymm, which is why the hot kernels ask;
    its tuning for AMD's (Zen 4 on) takes zmm either way, and there the attribute must cost nothing."""
    import llvmlite.binding as ll

    if "+avx512f" not in ll.get_host_cpu_features().flatten().split(","):
        pytest.skip("the CPU has no AVX-512")

    def zmm_arithmetic(asm):
        return sum(1 for line in asm.splitlines()
                   if line.strip().startswith(("vmul", "vadd", "vfmadd")) and "%zmm" in line)

    wide, plain = zmm_arithmetic(_axpy_asm(True)), zmm_arithmetic(_axpy_asm(False))
    assert wide > 0 and wide >= plain


@pytest.mark.skipif(not JIT, reason="assembly needs the JIT")
def test_prefer_wide_vectors_realigns_the_stack_to_a_cache_line():
    """The function that asks for wide vectors aligns its frame to 64 bytes in its prologue, so that the 512-bit
    vectors it spills (and reloads in its loops) each lie in one cache line; Numba's frames are 16-byte aligned."""
    import platform
    import re

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the prologue checked is x86-64's")
    realign = re.compile(r"andq\s+\$-64, %rsp")
    assert realign.search(_axpy_asm(True))
    assert not realign.search(_axpy_asm(False))
