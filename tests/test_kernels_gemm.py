"""The register-tiled product of the Numba kernels (refdiff.kernels._numba_gemm.tile_matmul) against exact sums.

Shapes cover every band of rows (8 or 6, 4, 1 and their mixes), full and half
column tiles and the columns that fill no vector, an empty inner dimension,
and A given with any strides (negative, stepped, zero). The reference is the product in extended
precision, held to the error bound of a sum of E rounded terms; and every
entry must come out the same whichever tile computed it (row by row, column
by column, or all at once), which is what lets a kernel's result not depend
on how many points share a block.
"""

import numpy as np
import pytest

from jit_mode import JIT_OFF

gemm = pytest.importorskip("refdiff.kernels._numba_gemm", exc_type=ImportError)

# K: every band of rows (8 and 16; 4; 1 to 3; 8 + 4 + 3; with the 6-row tiles of 256-bit vectors 6, 6 + 4, 12 + 1,
# 12 + 3); L: below one vector of float32 (16 lanes, or 8) and of float64 (8, or 4), one vector, one and a half, two
# (a full tile), and ragged ends after each
SHAPES = [(1, 1, 1), (3, 5, 7), (4, 16, 16), (8, 7, 32), (15, 33, 47), (16, 64, 129), (12, 3, 24), (9, 1, 33),
          (2, 0, 17), (13, 129, 8), (9, 600, 40), (6, 9, 20), (10, 17, 12)]  # E = 600: three slices of the inner index


def product_bound(A, B):
    """Extended-precision A @ B, and the bound gamma_E |A| |B| on a sum of E terms each rounded once in A's dtype."""
    E = A.shape[1]
    u = np.finfo(A.dtype).eps / 2
    exact = A.astype(np.longdouble) @ B.astype(np.longdouble)
    gamma = E * u / (1 - E * u) if E else 0.0
    return exact, gamma * (np.abs(A).astype(np.longdouble) @ np.abs(B).astype(np.longdouble))


def operands(K, E, L, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, E)).astype(dtype), rng.standard_normal((E, L)).astype(dtype)


def run(A, B):
    C = np.full((A.shape[0], B.shape[1]), np.nan, B.dtype)  # every entry must be written
    gemm.tile_matmul(A, B, C)
    return C


@pytest.mark.parametrize("K,E,L", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_matmul_is_the_product_to_its_rounding(K, E, L, dtype):
    if JIT_OFF and dtype == np.float64 and K * E * L > 2000:
        pytest.skip("as plain Python float32 takes the same lines, its FMAs cheaper (NUMBA_DISABLE_JIT)")
    A, B = operands(K, E, L, dtype)
    C = run(A, B)
    assert C.dtype == dtype and np.isfinite(C).all()
    exact, bound = product_bound(A, B)
    assert np.all(np.abs(C.astype(np.longdouble) - exact) <= bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_matmul_gives_each_entry_the_same_bits_whichever_tile_holds_it(dtype):
    """Row by row (bands of one), column by column (no vector), a transposed or Fortran-ordered A: the same bits."""
    K, E, L = (13, 9, 35) if JIT_OFF else (21, 300, 67)
    A, B = operands(K, E, L, dtype, seed=3)
    whole = run(A, B)
    rows = np.vstack([run(A[k : k + 1], B) for k in range(K)])
    columns = np.hstack([run(A, np.ascontiguousarray(B[:, l : l + 1])) for l in range(L)])
    np.testing.assert_array_equal(rows, whole)
    np.testing.assert_array_equal(columns, whole)
    np.testing.assert_array_equal(run(np.asfortranarray(A), B), whole)
    np.testing.assert_array_equal(run(np.ascontiguousarray(A.T).T, B), whole)
    np.testing.assert_array_equal(run(np.ascontiguousarray(A[::-1])[::-1], B), whole)  # negative row stride
    wide = np.zeros((K, 3 * E), dtype)
    wide[:, ::3] = A
    np.testing.assert_array_equal(run(wide[:, ::3], B), whole)  # a stepped column stride
    row = np.broadcast_to(A[4], (K, E))  # row stride 0
    np.testing.assert_array_equal(run(row, B), np.broadcast_to(whole[4], (K, L)))


def test_tile_shape_follows_the_vector_width_numba_compiles_for():
    """64-byte vectors in tiles of 8 rows with AVX-512, 32-byte ones in tiles of 6 rows otherwise (16 registers:
    12 accumulators, two vectors of B and a broadcast entry of A); the tiles' callers take AVX2 only with FMA."""
    assert gemm.tile_shape({"NUMBA_CPU_FEATURES": "+avx2,+avx512f,+fma"}) == (64, 8)
    assert gemm.tile_shape({"NUMBA_CPU_FEATURES": "+avx2,-avx512f,+fma"}) == (32, 6)
    assert gemm.tile_shape({"NUMBA_CPU_NAME": "generic"}) == (32, 6)
    assert gemm.compiles_avx2({"NUMBA_CPU_FEATURES": "+avx2,+fma"})
    assert not gemm.compiles_avx2({"NUMBA_CPU_FEATURES": "+avx2,-fma"})
    assert not gemm.compiles_avx2({"NUMBA_CPU_FEATURES": "+avx,+fma"})
    assert gemm.compiles_tiles({"NUMBA_CPU_FEATURES": "+avx2,+fma"}) and gemm.compiles_tiles({"NUMBA_CPU_FEATURES": "+avx512f"})
    assert not gemm.compiles_tiles({"NUMBA_CPU_NAME": "generic"})
    assert (gemm.VECTOR_BYTES, gemm.TILE_ROWS) == gemm.tile_shape()
    assert gemm.BLOCK_ROWS % gemm.TILE_ROWS == 0


def test_tile_matmul_sums_in_order_with_one_rounding_per_term():
    """float32 terms whose sum depends on the order: 2^24 + 1 - 2^24 is 0 in order, 1 if the last two went first."""
    A = np.ones((9, 3), np.float32)
    B = np.tile(np.array([[2.0**24], [1.0], [-(2.0**24)]], np.float32), (1, 40))
    np.testing.assert_array_equal(run(A, B), np.zeros((9, 40), np.float32))
    # and one rounding per term: fma(1 + 2^-12, 1 - 2^-12, -1) = -2^-24 exactly; a rounded product gives 0
    A = np.full((9, 2), 1 + 2.0**-12, np.float32)
    A[:, 1] = -1.0
    B = np.full((2, 40), 1 - 2.0**-12, np.float32)
    B[1] = 1.0
    np.testing.assert_array_equal(run(A, B), np.full((9, 40), -(2.0**-24), np.float32))


@pytest.mark.skipif(JIT_OFF, reason="the plain-Python tile takes any operands (NUMBA_DISABLE_JIT)")
def test_tile_matmul_refuses_operands_its_vector_loads_cannot_read():
    from numba.core.errors import TypingError

    A, B = operands(4, 6, 32, np.float32)
    C = np.zeros((4, 32), np.float32)
    with pytest.raises(TypingError):
        gemm.tile_matmul(A, np.asfortranarray(B), C)  # B's rows are not contiguous
    with pytest.raises(TypingError):
        gemm.tile_matmul(A, B.astype(np.float64), C)  # mixed dtypes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_tile_moves_one_square_tile_and_nothing_else(dtype):
    """dst[d0 + b, e0 + a] = src[r0 + a, c0 + b] for a, b below one vector's lanes, at offsets inside wider arrays
    whose row lengths are not multiples of a vector; every other entry of dst keeps its value."""
    from numba import njit

    V = gemm.VECTOR_BYTES // np.dtype(dtype).itemsize
    src = np.random.default_rng(3).standard_normal((2 * V + 3, 3 * V + 5)).astype(dtype)

    @njit
    def place(src, r0, c0, dst, d0, e0):
        gemm.transpose_tile(src, r0, c0, dst, d0, e0)

    for r0, c0, d0, e0 in [(0, 0, 0, 0), (V + 3, 2 * V + 5, 1, 7), (1, 2, V, 0)]:
        dst = np.full((2 * V + 1, V + 9), np.nan, dtype)
        place(src, r0, c0, dst, d0, e0)
        want = np.full_like(dst, np.nan)
        want[d0 : d0 + V, e0 : e0 + V] = src[r0 : r0 + V, c0 : c0 + V].T
        np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_points_to_rows4_and_back_move_one_vector_of_points_and_nothing_else(dtype):
    """points_to_rows4: rows r0 .. r0 + 3 of dst, lanes [i, i + V), get coordinate c of points p .. p + V - 1 of an
    (N, 4) array, in order; rows_to_points4 puts such rows back into the points. Offsets that are not multiples
    of a vector, inside wider arrays; every other entry keeps its value (NaN here)."""
    from numba import njit

    V = gemm.VECTOR_BYTES // np.dtype(dtype).itemsize
    points = np.random.default_rng(4).standard_normal((3 * V + 5, 4)).astype(dtype)
    flat = points.reshape(-1)

    @njit
    def to_rows(src, p, dst, r0, i):
        gemm.points_to_rows4(src, p, dst, r0, i)

    @njit
    def to_points(src, r0, i, dst, p):
        gemm.rows_to_points4(src, r0, i, dst, p)

    for p, r0, i in [(0, 0, 0), (V + 3, 5, 7), (2 * V + 5, 2, V + 1)]:
        rows = np.full((10, 2 * V + 9), np.nan, dtype)
        to_rows(flat, np.uint64(p), rows, r0, i)
        want = np.full_like(rows, np.nan)
        want[r0 : r0 + 4, i : i + V] = points[p : p + V].T
        np.testing.assert_array_equal(rows, want)
        back = np.full_like(flat, np.nan)
        to_points(rows, r0, i, back, np.uint64(p))
        want_back = np.full_like(points, np.nan)
        want_back[p : p + V] = points[p : p + V]
        np.testing.assert_array_equal(back, want_back.reshape(-1))


# K across BLOCK_ROWS (64 with AVX-512's 8-row tiles, 48 with AVX2's 6-row ones), L across BLOCK_COLUMNS = 128 (float32: 144 columns in vectors, then 6 ragged; float64:
# 144 then 6 as well), E across INNER_BLOCK = 256 where the plain-Python loops are fast enough
BLOCKED_SHAPES = [(1, 1, 1), (67, 5, 150), (64, 3, 128), (7, 2, 20)] + ([] if JIT_OFF else [(131, 300, 290)])


@pytest.mark.parametrize("K,E,L", BLOCKED_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_blocked_matmul_has_the_bits_of_tile_matmul(K, E, L, dtype, parallel):
    """Block by block, on one thread or many: every entry summed by the same tile in the same order."""
    A, B = operands(K, E, L, dtype, seed=5)
    C = np.full((K, L), np.nan, dtype)
    gemm.blocked_matmul(A, B, C, parallel)
    np.testing.assert_array_equal(C, run(A, B))
    C = np.full((K, L), np.nan, dtype)
    gemm.blocked_matmul(np.asfortranarray(A), B, C, parallel)  # A by columns, as x.T of a row-major x is
    np.testing.assert_array_equal(C, run(A, B))


# K across NARROW_ROWS = 256; L = 1 to 3, fewer columns than a vector holds in either dtype
NARROW_SHAPES = [(1, 1, 1), (300, 7, 2), (256, 40, 3), (9, 0, 2), (5, 33, 1)]


@pytest.mark.parametrize("K,E,L", NARROW_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_narrow_products_are_the_product_to_its_rounding(K, E, L, dtype, parallel):
    A, B = operands(K, E, L, dtype, seed=7)
    exact, bound = product_bound(A, B)
    rows = np.full((K, L), np.nan, dtype)
    gemm.rows_times_narrow(A, np.ascontiguousarray(B.T), rows, parallel)  # reassociated: within the bound of any order
    assert np.all(np.abs(rows.astype(np.longdouble) - exact) <= bound)
    columns = np.full((K, L), np.nan, dtype)
    gemm.columns_times_narrow(np.ascontiguousarray(A.T), B, columns, parallel)
    np.testing.assert_array_equal(columns, run(A, B))  # in order, one FMA per term: tile_matmul's ragged columns
