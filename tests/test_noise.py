"""Tests for refdiff.noise: Philox4x32 known answers, the counter layout, batch invariance, statistics.

Statistical tests use fixed seeds; each states the probability that it would
fail for a correct generator if the seed were drawn at random.
"""

import doctest
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import noise
from refdiff.backend import to_numpy
from refdiff.noise import (
    NoiseStream,
    counter_normals,
    counter_uniforms,
    normal_from_bits,
    philox4x32,
    uniform_from_bits,
)

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
MASK32 = 0xFFFFFFFF

# ----------------------------------------------------------------------------- known answers
# Random123 known-answer vectors, "philox4x32" lines of the kat_vectors file of the
# Random123 distribution (D. E. Shaw Research, github.com/DEShawResearch/random123,
# tests/kat_vectors). Transcribed from DEShawResearch/Random123-Boost,
# libs/random/test/test_philox.cpp (test_kat_philox4x32, commit 916db91a), whose
# comment says they are cut and pasted from that file.
# Columns: rounds, counter (4 words), key (2 words), expected output (4 words).
KAT_PHILOX4X32 = """
7  00000000 00000000 00000000 00000000 00000000 00000000   5f6fb709 0d893f64 4f121f81 4f730a48
7  ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   5207ddc2 45165e59 4d8ee751 8c52f662
7  243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   4dfccaba 190a87f0 c47362ba b6b5242a
10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
"""


def _kat_rows():
    rows = []
    for line in KAT_PHILOX4X32.strip().splitlines():
        rounds, *words = line.split()
        words = [int(w, 16) for w in words]
        rows.append((int(rounds), words[0:4], words[4:6], words[6:10]))
    return rows


@pytest.mark.parametrize("rounds, counter, key, expected", _kat_rows())
def test_philox4x32_known_answers(rounds, counter, key, expected):
    out = philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32), rounds=rounds)
    assert out.dtype == np.uint32 and out.shape == (4,)
    assert [hex(int(w)) for w in out] == [hex(w) for w in expected]


def test_philox4x32_known_answers_as_one_batch():
    rows = [r for r in _kat_rows() if r[0] == 10]
    counters = np.array([r[1] for r in rows], dtype=np.uint32)  # (3, 4)
    keys = np.array([r[2] for r in rows], dtype=np.uint32)  # (3, 2)
    np.testing.assert_array_equal(philox4x32(counters, keys), np.array([r[3] for r in rows], dtype=np.uint32))


def test_philox4x32_default_is_ten_rounds():
    c, k = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
    np.testing.assert_array_equal(philox4x32(c, k), philox4x32(c, k, rounds=10))
    assert not np.array_equal(philox4x32(c, k), philox4x32(c, k, rounds=7))


# ----------------------------------------------------------------------------- scalar reference
def philox4x32_scalar(counter, key, rounds=10):
    """Philox4x32-R on Python ints, one round at a time (Salmon et al. 2011; Random123 philox.h).

    The key is bumped *before* every round but the first, as Random123's
    ``philox4x32_R`` unrolls it.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r > 0:
            k0 = (k0 + 0x9E3779B9) % 2**32
            k1 = (k1 + 0xBB67AE85) % 2**32
        hi0, lo0 = divmod(0xD2511F53 * c0, 2**32)
        hi1, lo1 = divmod(0xCD9E8D57 * c2, 2**32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def row_scalar(seed, p, k, dim):
    """One row of counter_uniforms / counter_normals from the documented layout, with math."""
    key = [seed % 2**32, seed // 2**32]
    uniforms, normals = [], []
    for j in range(-(-dim // 4)):
        w = philox4x32_scalar([j, k, p % 2**32, p // 2**32], key)
        u = [(wm + 0.5) / 2**32 for wm in w]
        uniforms += u
        for a, b in ((u[0], u[1]), (u[2], u[3])):
            r, theta = math.sqrt(-2.0 * math.log(a)), 2.0 * math.pi * b
            normals += [r * math.cos(theta), r * math.sin(theta)]
    return np.array(uniforms[:dim]), np.array(normals[:dim])


def test_scalar_reference_passes_the_known_answers():
    for rounds, counter, key, expected in _kat_rows():
        assert philox4x32_scalar(counter, key, rounds) == expected


@given(counter=st.tuples(U32, U32, U32, U32), key=st.tuples(U32, U32), rounds=st.integers(0, 16))
def test_philox4x32_matches_scalar_reference(counter, key, rounds):
    out = philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32), rounds=rounds)
    assert out.tolist() == philox4x32_scalar(counter, key, rounds)


@given(
    rows=st.lists(st.tuples(st.tuples(U32, U32, U32, U32), st.tuples(U32, U32)), min_size=1, max_size=8),
    shared_key=st.booleans(),
)
def test_philox4x32_batches_and_broadcasts_keys(rows, shared_key):
    counters = np.array([r[0] for r in rows], dtype=np.uint32)  # (n, 4)
    keys = np.array([r[1] for r in rows], dtype=np.uint32)  # (n, 2)
    if shared_key:
        keys = keys[0]  # (2,) broadcast against (n, 4)
    out = philox4x32(counters, keys)
    assert out.shape == counters.shape and out.dtype == np.uint32
    for i, c in enumerate(counters.tolist()):
        k = keys.tolist() if shared_key else keys[i].tolist()
        assert out[i].tolist() == philox4x32_scalar(c, k)


@given(seed=U64, p=U64, k=U32, dim=st.integers(1, 13))
def test_counter_layout_matches_scalar_reference(seed, p, k, dim):
    u_ref, z_ref = row_scalar(seed, p, k, dim)
    # words and uniforms are exact integer / float64 arithmetic: bit for bit
    np.testing.assert_array_equal(counter_uniforms(seed, [p], k, dim)[0], u_ref)
    # normals go through log, cos and sin, which libm need not round correctly
    np.testing.assert_allclose(counter_normals(seed, [p], k, dim)[0], z_ref, rtol=1e-14, atol=1e-14)


def test_counter_layout_in_terms_of_philox4x32():
    seed, p, k, dim = 2**63 + 12345, 2**40 + 7, 99, 10  # high words of seed and p are non-zero
    blocks = [[j, k, p & MASK32, p >> 32] for j in range(3)]
    words = philox4x32(np.array(blocks, dtype=np.uint64), np.array([seed & MASK32, seed >> 32]))  # (3, 4)
    np.testing.assert_array_equal(counter_uniforms(seed, [p], k, dim)[0], uniform_from_bits(words).ravel()[:dim])
    np.testing.assert_array_equal(counter_normals(seed, [p], k, dim)[0], normal_from_bits(words).ravel()[:dim])


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 6, 7])
def test_first_dims_do_not_depend_on_dim(dim):
    p = np.arange(6)
    full = counter_normals(11, p, 4, 8)
    np.testing.assert_array_equal(counter_normals(11, p, 4, dim), full[:, :dim])
    np.testing.assert_array_equal(counter_uniforms(11, p, 4, dim), counter_uniforms(11, p, 4, 8)[:, :dim])


# ----------------------------------------------------------------------------- bits -> floats
def test_uniform_from_bits_is_exact_and_strictly_inside():
    w = np.array([0, 1, 2**31, MASK32 - 1, MASK32], dtype=np.uint32)
    u = uniform_from_bits(w)
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u, [2.0**-33, 3 * 2.0**-33, 0.5 + 2.0**-33, 1 - 3 * 2.0**-33, 1 - 2.0**-33])
    assert np.all((u > 0) & (u < 1))


def test_normal_from_bits_extreme_words_are_finite_and_bounded():
    edge = [0, 1, 2**30, 2**31, 3 * 2**30, MASK32 - 1, MASK32]
    words = np.array(np.meshgrid(edge, edge, edge, edge, indexing="ij")).reshape(4, -1).T  # (7**4, 4)
    z = normal_from_bits(words)
    assert z.shape == words.shape and z.dtype == np.float64
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) <= math.sqrt(66 * math.log(2)) * (1 + 1e-15)  # |z| <= sqrt(-2 log 2**-33)
    # w_r = 0 gives the largest radius; w_theta = 0 gives theta = 2 pi 2**-33
    z0 = normal_from_bits(np.array([0, 0], dtype=np.uint32))
    r, theta = math.sqrt(-2.0 * math.log(2.0**-33)), 2.0 * math.pi * 2.0**-33
    np.testing.assert_allclose(z0, [r * math.cos(theta), r * math.sin(theta)], rtol=1e-15)


def test_normal_from_bits_pairs_along_last_axis():
    words = np.array([[1, 2**31, 3, 2**30], [5, 6, 7, 8]], dtype=np.uint32)
    z = normal_from_bits(words)
    np.testing.assert_array_equal(z[:, 0:2], normal_from_bits(words[:, 0:2]))
    np.testing.assert_array_equal(z[:, 2:4], normal_from_bits(words[:, 2:4]))
    u = uniform_from_bits(words)
    np.testing.assert_allclose(z[0, 0], math.sqrt(-2 * math.log(u[0, 0])) * math.cos(2 * math.pi * u[0, 1]), rtol=1e-14)
    np.testing.assert_allclose(z[0, 1], math.sqrt(-2 * math.log(u[0, 0])) * math.sin(2 * math.pi * u[0, 1]), rtol=1e-14)


# ----------------------------------------------------------------------------- batch invariance
def test_rows_do_not_depend_on_batch_size():
    big = counter_normals(2024, np.arange(10_000), 3, 6)  # (10000, 6)
    for i in (0, 1, 17, 4321, 9_999):
        np.testing.assert_array_equal(counter_normals(2024, [i], 3, 6)[0], big[i])
    # any subset, in any order
    idx = np.array([9_998, 5, 77, 5])
    np.testing.assert_array_equal(counter_normals(2024, idx, 3, 6), big[idx])
    big_u = counter_uniforms(2024, np.arange(10_000), 3, 6)
    np.testing.assert_array_equal(counter_uniforms(2024, idx, 3, 6), big_u[idx])


def test_draw_array_equals_per_row_scalar_draws():
    p = np.arange(100, 140)
    draws = np.random.default_rng(0).integers(0, 2**32, size=p.shape)
    draws[:3] = [0, MASK32, 0]
    z = counter_normals(5, p, draws, 7)
    u = counter_uniforms(5, p, draws, 7)
    for i in range(p.size):
        np.testing.assert_array_equal(z[i], counter_normals(5, [p[i]], int(draws[i]), 7)[0])
        np.testing.assert_array_equal(u[i], counter_uniforms(5, [p[i]], int(draws[i]), 7)[0])
    # a constant array is the scalar draw; a 0-d array counts as a scalar
    np.testing.assert_array_equal(counter_normals(5, p, np.full(p.shape, 9), 7), counter_normals(5, p, 9, 7))
    np.testing.assert_array_equal(counter_normals(5, p, np.int64(9), 7), counter_normals(5, p, np.array(9), 7))


def test_stream_chunks_reproduce_the_whole_batch():
    seed = 0xDEADBEEF_12345678
    whole = NoiseStream.from_seed(seed, n=10)
    left = NoiseStream.from_seed(seed, n=5)
    right = NoiseStream(seed=seed, n=5, offset=5)
    for shape in [(10, 3), (10, 2, 2), (10,)]:
        zw = whole.normal(shape)
        np.testing.assert_array_equal(left.normal((5,) + shape[1:]), zw[:5])
        np.testing.assert_array_equal(right.normal((5,) + shape[1:]), zw[5:])
    uw = whole.uniform((10, 5))
    np.testing.assert_array_equal(right.uniform((5, 5)), uw[5:])
    np.testing.assert_array_equal(right.particles, np.arange(5, 10, dtype=np.uint64))
    assert right.particles.dtype == np.uint64


def test_stream_seeded_with_an_int_reproduces_chunks():
    whole, part = NoiseStream(42, n=10), NoiseStream(42, n=4, offset=3)
    assert whole.seed == part.seed
    np.testing.assert_array_equal(part.normal((4, 3)), whole.normal((10, 3))[3:7])


# ----------------------------------------------------------------------------- different inputs, different numbers
def test_different_draws_particles_and_seeds_differ():
    p = np.arange(1000)
    base = counter_normals(7, p, 0, 8)
    # no two rows equal anywhere (a shared value would have probability ~ 1e-10)
    assert np.unique(base).size == base.size
    for other in (
        counter_normals(7, p, 1, 8),  # next draw
        counter_normals(7, p + 1000, 0, 8),  # other particles
        counter_normals(8, p, 0, 8),  # next seed
        counter_normals(7 + 2**32, p, 0, 8),  # seed's high word
        counter_normals(7, p + 2**32, 0, 8),  # particle's high word
        counter_normals(7, p, 2**32 - 1, 8),  # last draw index
    ):
        assert not np.any(other == base)
    # the blocks of one row differ too (block index j is in the counter)
    z = counter_normals(7, [0], 0, 4096).reshape(1024, 4)
    assert np.unique(z).size == z.size


def test_streams_of_different_seeds_differ():
    a, b = NoiseStream.from_seed(1, n=100), NoiseStream.from_seed(2, n=100)
    assert not np.any(a.normal((100, 4)) == b.normal((100, 4)))


# ----------------------------------------------------------------------------- statistics
# Tests at |z| < 5 per statistic: a correct generator fails one with probability
# 5.7e-7 (normal approximation), under 5e-6 for each test function below.
Z_MAX = 5.0


def _normal_moment_z(z):
    """z-scores of the first four moments of samples that should be N(0, 1) (known mean and variance)."""
    n = z.size
    z2 = z * z
    return {
        "mean": z.mean() * math.sqrt(n),  # Var z = 1
        "variance": (z2.mean() - 1.0) / math.sqrt(2.0 / n),  # Var z^2 = 2
        "skewness": (z2 * z).mean() / math.sqrt(15.0 / n),  # Var z^3 = E z^6 = 15
        "excess kurtosis": ((z2 * z2).mean() - 3.0) / math.sqrt(96.0 / n),  # Var z^4 = 105 - 9
    }


def test_normal_moments_one_million():
    # 1e6 numbers: the variance test catches a 0.4% error in scale.
    z = counter_normals(20240601, np.arange(1000), 3, 1000)
    scores = _normal_moment_z(z.ravel())
    assert all(abs(s) < Z_MAX for s in scores.values()), scores


def test_box_muller_pair_and_neighbours_uncorrelated():
    z = counter_normals(77, np.arange(2000), 0, 500)  # (2000, 500): 1e6 numbers
    z_next = counter_normals(77, np.arange(2000), 1, 500)
    pairs = {
        "z0 z1 (one Box-Muller pair)": z[:, 0::2] * z[:, 1::2],
        "z1 z2 (across pairs)": z[:, 1:-1:2] * z[:, 2::2],
        "z3 z4 (across blocks)": z[:, 3:-1:4] * z[:, 4::4],
        "row i, row i+1 (particles)": z[:-1] * z[1:],
        "draw k, draw k+1": z * z_next,
    }
    # E[z_a z_b] = 0 and Var = 1 for independent standard normals
    scores = {name: prod.mean() * math.sqrt(prod.size) for name, prod in pairs.items()}
    assert all(abs(s) < Z_MAX for s in scores.values()), scores


def test_uniform_moments_one_million():
    u = counter_uniforms(99, np.arange(1000), 0, 1000).ravel()
    n = u.size
    assert np.all((u > 0) & (u < 1))
    scores = {
        "mean": (u.mean() - 0.5) / math.sqrt(1 / 12 / n),
        "variance": (((u - 0.5) ** 2).mean() - 1 / 12) / math.sqrt((1 / 80 - 1 / 144) / n),  # E(u-1/2)^4 = 1/80
    }
    assert all(abs(s) < Z_MAX for s in scores.values()), scores


def test_ks_against_normal_and_uniform():
    stats = pytest.importorskip("scipy.stats")
    # KS p < 1e-4 has probability 1e-4 per test for a correct generator
    z = counter_normals(3, np.arange(500), 7, 400).ravel()  # 2e5
    assert stats.kstest(z, "norm").pvalue > 1e-4
    u = counter_uniforms(3, np.arange(500), 8, 400).ravel()
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    # each dimension of a block separately, across particles
    z = counter_normals(4, np.arange(50_000), 0, 4)
    for m in range(4):
        assert stats.kstest(z[:, m], "norm").pvalue > 1e-4, m


@pytest.mark.slow
def test_normal_moments_and_tails_thirty_two_million():
    # 3.2e7 numbers: the variance test catches a 0.06% scale error
    acc = np.zeros(5)
    n = 0
    tail = 0
    for k in range(8):
        z = counter_normals(123, np.arange(4000), k, 1000).ravel()
        acc += [z.sum(), (z**2).sum(), (z**3).sum(), (z**4).sum(), 0.0]
        tail += int(np.count_nonzero(np.abs(z) > 4.0))
        n += z.size
    m1, m2, m3, m4 = acc[:4] / n
    scores = {
        "mean": m1 * math.sqrt(n),
        "variance": (m2 - 1) / math.sqrt(2 / n),
        "skewness": m3 / math.sqrt(15 / n),
        "excess kurtosis": (m4 - 3) / math.sqrt(96 / n),
    }
    # P(|Z| > 4) = 6.334e-5; the count is Poisson-like with that mean
    p4 = math.erfc(4 / math.sqrt(2))
    scores["P(|z| > 4)"] = (tail - n * p4) / math.sqrt(n * p4)
    assert all(abs(s) < Z_MAX for s in scores.values()), scores


@pytest.mark.slow
def test_uniform_chi_square_sixteen_million():
    stats = pytest.importorskip("scipy.stats")
    counts = np.zeros(4096)
    for k in range(4):
        u = counter_uniforms(5, np.arange(4000), k, 1000).ravel()
        counts += np.bincount((u * 4096).astype(np.int64), minlength=4096)
    # chi-square with 4095 degrees of freedom; p < 1e-6 has probability 1e-6
    assert stats.chisquare(counts).pvalue > 1e-6


# ----------------------------------------------------------------------------- NoiseStream
def test_stream_seed_is_one_draw_from_rng():
    expected = int(np.random.default_rng(123).integers(0, 2**64, dtype=np.uint64))
    assert NoiseStream(123, n=3).seed == expected == NoiseStream(np.random.default_rng(123), n=3).seed
    gen, twin = np.random.default_rng(9), np.random.default_rng(9)
    s = NoiseStream(gen, n=2)
    assert s.seed == int(twin.integers(0, 2**64, dtype=np.uint64))
    assert gen.random() == twin.random()  # the generator advanced by exactly one draw
    assert NoiseStream(None, n=1).seed != NoiseStream(None, n=1).seed  # fresh entropy (fails w.p. 2**-64)


def test_stream_draw_counter():
    s = NoiseStream.from_seed(2**64 - 1, n=3, offset=2**64 - 3)  # the last three particles
    np.testing.assert_array_equal(s.particles, np.array([2**64 - 3, 2**64 - 2, 2**64 - 1], dtype=np.uint64))
    assert (s.seed, s.n, s.offset, s.draws) == (2**64 - 1, 3, 2**64 - 3, 0)
    z0 = s.normal((3, 5))
    u1 = s.uniform((3, 5))
    z2 = s.normal((3, 5))
    assert s.draws == 3
    p = s.particles
    np.testing.assert_array_equal(z0, counter_normals(s.seed, p, 0, 5))
    np.testing.assert_array_equal(u1, counter_uniforms(s.seed, p, 1, 5))
    np.testing.assert_array_equal(z2, counter_normals(s.seed, p, 2, 5))
    # explicit draw indices do not advance the counter
    np.testing.assert_array_equal(s.normal_at(0, (3, 5)), z0)
    np.testing.assert_array_equal(s.uniform_at(1, (3, 5)), u1)
    per_row = s.normal_at(np.array([2, 0, 2]), (3, 5))
    np.testing.assert_array_equal(per_row, np.stack([z2[0], z0[1], z2[2]]))
    assert s.draws == 3
    assert "draws=3" in repr(s)


def test_stream_shapes():
    s = NoiseStream.from_seed(8, n=4)
    z = s.normal((4, 2, 3))
    assert z.shape == (4, 2, 3) and z.dtype == np.float64
    np.testing.assert_array_equal(z.reshape(4, 6), counter_normals(8, np.arange(4), 0, 6))
    assert s.normal((4,)).shape == (4,)
    assert s.uniform([4, 1]).shape == (4, 1)
    assert s.normal((4, 0)).shape == (4, 0)
    assert NoiseStream.from_seed(8, n=0).normal((0, 3)).shape == (0, 3)


def test_stream_like_dtype_and_namespace(xp, float_dtype):
    s = NoiseStream.from_seed(31, n=6)
    like = xp.zeros((6, 5), dtype=getattr(xp, float_dtype))
    z = s.normal((6, 5), like=like)
    u = s.uniform((6, 5), like=like)
    assert z.dtype == like.dtype and u.dtype == like.dtype
    assert type(z) is type(like)
    # same numbers as the float64 host draw, cast once
    np.testing.assert_array_equal(to_numpy(z), counter_normals(31, np.arange(6), 0, 5).astype(float_dtype))
    np.testing.assert_array_equal(to_numpy(u), counter_uniforms(31, np.arange(6), 1, 5).astype(float_dtype))
    za = s.normal_at(np.array([0, 0, 0, 0, 0, 0]), (6, 5), like=like)
    np.testing.assert_array_equal(to_numpy(za), to_numpy(z))


def test_stream_refuses_a_dtype_that_is_not_floating():
    s = NoiseStream.from_seed(31, n=2)
    for kw in (dict(like=np.zeros((2, 3), bool)), dict(like=np.zeros((2, 3), np.int64)), dict(dtype=np.int32)):
        with pytest.raises(TypeError, match="noise needs a real floating dtype"):
            s.normal((2, 3), **kw)
        with pytest.raises(TypeError, match="noise needs a real floating dtype"):
            s.uniform((2, 3), **kw)
    assert s.draws == 0  # a refused call takes no draw index


def test_stream_explicit_dtype():
    s = NoiseStream.from_seed(31, n=2)
    z = s.normal((2, 3), dtype=np.float32)
    assert z.dtype == np.float32
    like = np.zeros((2, 3), dtype=np.float32)
    assert s.normal((2, 3), like=like, dtype=np.float64).dtype == np.float64


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"particles": [0, -1]}, ValueError, "particles"),
        ({"particles": np.array([3, -2])}, ValueError, "particles"),
        ({"particles": [0.0, 1.0]}, TypeError, "particles"),
        ({"particles": np.array([0.0, 1.0])}, TypeError, "particles"),
        ({"particles": [[0, 1]]}, ValueError, "particles"),
        ({"particles": [2**64]}, ValueError, "particles"),
        ({"draw": -1}, ValueError, "draw"),
        ({"draw": 2**32}, ValueError, "draw"),
        ({"draw": np.array([0, 2**32])}, ValueError, "draw"),
        ({"draw": np.array([0, 1, 2])}, ValueError, "draw"),
        ({"draw": 1.0}, TypeError, "draw"),
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": 2.0}, TypeError, "dim"),
    ],
)
def test_counter_functions_reject_bad_input(kwargs, exc, match):
    args = {"seed": 1, "particles": [0, 1], "draw": 0, "dim": 3} | kwargs
    for fn in (counter_normals, counter_uniforms):
        with pytest.raises(exc, match=match):
            fn(**args)


def test_large_particle_lists_are_exact():
    # Python ints at and above 2**63 must neither fail nor round through float64
    z = counter_normals(1, [2**63, 2**63 + 1, 1], 0, 2)
    np.testing.assert_array_equal(z[1], counter_normals(1, np.array([2**63 + 1], dtype=np.uint64), 0, 2)[0])
    assert not np.array_equal(z[0], z[1])


@pytest.mark.parametrize(
    "counter, key, rounds, exc, match",
    [
        ([0, 0, 0], [0, 0], 10, ValueError, "counter"),
        ([0, 0, 0, 0], [0, 0, 0], 10, ValueError, "key"),
        ([0, 0, 0, 2**32], [0, 0], 10, ValueError, "counter"),
        ([0, 0, 0, -1], [0, 0], 10, ValueError, "counter"),
        ([0, 0, 0, 0], [0, 2**32], 10, ValueError, "key"),
        ([0.0, 0, 0, 0], [0, 0], 10, TypeError, "counter"),
        (np.zeros((3, 4), dtype=np.uint32), np.zeros((2, 2), dtype=np.uint32), 10, ValueError, "broadcast"),
        ([0, 0, 0, 0], [0, 0], -1, ValueError, "rounds"),
        ([0, 0, 0, 0], [0, 0], 10.0, TypeError, "rounds"),
    ],
)
def test_philox4x32_rejects_bad_input(counter, key, rounds, exc, match):
    with pytest.raises(exc, match=match):
        philox4x32(counter, key, rounds=rounds)


def test_bits_functions_reject_bad_input():
    with pytest.raises(ValueError, match="w"):
        uniform_from_bits([2**32])
    with pytest.raises(ValueError, match="words"):
        normal_from_bits(np.zeros(3, dtype=np.uint32))
    with pytest.raises(TypeError, match="words"):
        normal_from_bits(np.zeros(4))


def test_stream_rejects_bad_input():
    s = NoiseStream.from_seed(1, n=4)
    with pytest.raises(ValueError, match=r"shape\[0\] must equal the stream's n = 4"):
        s.normal((5, 3))
    with pytest.raises(ValueError, match="shape"):
        s.uniform((4, -1))
    with pytest.raises(ValueError, match="draw"):
        s.normal_at(np.array([0, 1]), (4, 2))
    with pytest.raises(ValueError, match="draw"):
        s.normal_at(-1, (4, 2))
    assert s.draws == 0  # a call that fails uses no draw index
    with pytest.raises(TypeError, match="n"):
        NoiseStream(1)
    with pytest.raises(ValueError, match="n"):
        NoiseStream(1, n=-1)
    with pytest.raises(ValueError, match="offset"):
        NoiseStream(1, n=2, offset=2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        NoiseStream.from_seed(2**64, n=2)
    with pytest.raises(TypeError, match="either rng or seed"):
        NoiseStream(1, n=2, seed=3)
    with pytest.raises(TypeError, match="rng"):
        NoiseStream(np.random.RandomState(0), n=2)


def test_doc_examples_run():
    result = doctest.testmod(noise, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
