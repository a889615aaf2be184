r"""A register-tiled matrix product for Numba kernels: :func:`tile_matmul`, C = A @ B, without BLAS.

For products where a BLAS call costs its setup, must be kept on the calling
thread, or would wake BLAS's threads beside Numba's: ``mixture_numba`` forms
the GEMM path's two products with it inside its ``prange`` tasks
(``gemm_products``), ``conv_numba.chunk_matmul`` those of the U-Net's patch
chunks, and ``mlp_numba.matmul`` all of the MLP step's, spread over Numba's
threads by :func:`blocked_matmul` (C in blocks, one task each), with
:func:`rows_times_narrow` and :func:`columns_times_narrow` for results with
fewer columns than a vector holds. The MLP and the U-Net take them on CPUs
with 512-bit vectors (:data:`TILES`), the mixture wherever Numba compiles
for AVX2 or better (:func:`compiles_tiles`).

The work is done by :func:`gemm_tile`, an LLVM intrinsic: a tile of ``mr``
rows of C by ``nv`` vectors of :data:`VECTOR_BYTES` (64 bytes, 16 float32 or
8 float64 columns, where Numba compiles for AVX-512; 32 elsewhere) lives in
``mr * nv`` vector accumulators for the whole loop over the inner index j;
each step loads ``nv`` vectors of B's row j and broadcasts ``mr`` entries of
A's column j, then issues ``mr * nv`` vector FMAs. At 8 rows by 2 vectors
(:data:`TILE_ROWS` with AVX-512) that is 16 independent FMAs per 10 loads
and no store; at AVX2's 6 rows (16 registers), 12 per 8. Either way the FMA
ports set the pace. Numba's loops cannot hold such a tile in registers (a
loop over C's columns loads and stores C for every few FMAs, and LLVM does
not vectorise an outer loop), which is why this is written as IR. Measured
on the README's benchmark VM (AMD EPYC, FMA peak 255 GFLOP/s a core), one
thread, float32: 175-256 GFLOP/s at K x E x L = 32 x 16 x 128 to
96 x 96 x 384 (the short inner loops are the slow end), where loops over C's
columns (four FMAs per load and store of C, the form Numba's loops take) ran
101-199.

Each entry of C is A's row times B's column summed over j in order, one FMA
(one rounding) per term, starting from zero (every product here but
:func:`rows_times_narrow`): the same numbers whatever the
tile, the shape or the thread count, and the same as BLAS up to the order in
which BLAS adds its partial sums. Under ``NUMBA_DISABLE_JIT=1`` the same loop
runs in Python through ``_numba_math.fma``: the same bits in float64; in
float32 it rounds each term twice (through float64), which differs from the
one rounding of the compiled FMA on rare halfway cases.

:func:`transpose_tile` moves one square tile of a vector's width through
vector registers by shuffles; the mixture's GEMM path brings its blocks in
and its score out with it (at D = 16, K = 32, N = 1e5, float32, two threads
the score took 1.08 ms against 1.33 with the scalar 8 x 8 copy).
:func:`points_to_rows4` and :func:`rows_to_points4` do the same for points
of four coordinates, a vector's width of them at a time: the one-pass
mixture kernel brings its D = 4 points into rows and its score back out
with them.

The vectors and the tiles follow the CPU Numba compiles for
(:func:`tile_shape`): a tile of 8 rows by two 64-byte vectors needs 16 of
AVX-512's 32 registers, and on 256-bit registers it would be split into 32
and spill, so AVX2 takes 32-byte vectors in tiles of 6 rows (12
accumulators of 16 registers). There the tiles run at the core's FMA peak
on the mixture's short products (82-95 GFLOP/s a thread on Zen 3, whose peak
is 93) but lose to OpenBLAS on whole products (see :data:`TILES`), so only
the mixture's GEMM path takes them on such CPUs.
"""

from __future__ import annotations

import os

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels._numba_gemm needs numba: pip install "refdiff[fast]"') from exc

from ._numba_math import PRANGE_ONLY, fma

__all__ = []

_OPTS = dict(cache=True, nogil=True, error_model="numpy")



def compiles_avx512(environ=None) -> bool:
    """Whether Numba compiles for 512-bit vectors here, read as Numba reads its target: ``NUMBA_CPU_FEATURES``
    where set, none for ``NUMBA_CPU_NAME=generic`` (a portable build), else the host's features (``environ``:
    default ``os.environ``)."""
    return _compiles_for(("avx512f",), environ)


def compiles_avx2(environ=None) -> bool:
    """Whether Numba compiles for 256-bit vectors with FMA here (AVX2 and FMA; read as :func:`compiles_avx512`)."""
    return _compiles_for(("avx2", "fma"), environ)


def _compiles_for(names, environ):
    environ = os.environ if environ is None else environ
    features = environ.get("NUMBA_CPU_FEATURES")
    if features is not None:
        return all("+" + name in features.split(",") for name in names)
    if environ.get("NUMBA_CPU_NAME", "").strip().lower() == "generic":
        return False
    try:
        from llvmlite import binding as ll

        host = ll.get_host_cpu_features()
        return all(bool(host.get(name, False)) for name in names)
    except Exception:  # no feature query on this platform: assume no wide vectors
        return False


def tile_shape(environ=None):
    """``(vector_bytes, tile_rows)`` of the tiles for this process's target: 64-byte vectors and tiles of 8 rows
    (16 of the 32 vector registers accumulate) with AVX-512; 32-byte vectors and 6 rows (12 of 16) otherwise,
    so that a tile, its row of B and the broadcast entry of A stay in registers."""
    return (64, 8) if compiles_avx512(environ) else (32, 6)


#: Bytes per vector of a tile, and rows of C per tile in :func:`tile_matmul` (then 4, then 1 for the rows left
#: over), by :func:`tile_shape`. :func:`_tile` passes the row counts to :func:`gemm_tile` as constants: they
#: must be among 8, 6, 4 and 1.
VECTOR_BYTES, TILE_ROWS = tile_shape()
#: Vectors of C's columns per tile (then 1 for a half tile; columns left after that are summed one at a time):
#: :func:`_band` passes 2 and 1 as constants.
TILE_VECTORS = 2
#: Inner indices per pass over the tiles: the rows of B one pass reads (128 KiB float32 at 128 columns) stay in
#: the core's cache while every band of C's rows reuses them.
INNER_BLOCK = 256


if numba.config.DISABLE_JIT:  # plain Python: the same sums, one term at a time

    def gemm_tile(A, B, C, k0, l0, j0, j1, mr, nv, more):
        """The tile of C at (k0, l0), ``mr`` rows by ``nv * lanes`` columns, ``lanes`` = VECTOR_BYTES // itemsize:
        the sum over j in [j0, j1) of A[k, j] B[j, l], added to C's entries where ``more``, else from zero (see the
        compiled version)."""
        width = nv * (VECTOR_BYTES // C.itemsize)
        for k in range(k0, k0 + mr):
            for l in range(l0, l0 + width):
                acc = C[k, l] if more else C.dtype.type(0)
                for j in range(j0, j1):
                    acc = fma(A[k, j], B[j, l], acc)
                C[k, l] = acc

    def transpose_tile(src, r0, c0, dst, d0, e0):
        """dst[d0 + b, e0 + a] = src[r0 + a, c0 + b] for a, b < V = VECTOR_BYTES // itemsize (see the compiled
        version)."""
        V = VECTOR_BYTES // dst.itemsize
        for a in range(V):
            for b in range(V):
                dst[d0 + b, e0 + a] = src[r0 + a, c0 + b]

    def points_to_rows4(src, p, dst, r0, i):
        """dst[r0 + c, i + l] = src[4 (p + l) + c] for c < 4, l < V = VECTOR_BYTES // itemsize (see the compiled
        version)."""
        for l in range(VECTOR_BYTES // dst.itemsize):
            for c in range(4):
                dst[r0 + c, i + l] = src[4 * (p + l) + c]

    def rows_to_points4(src, r0, i, dst, p):
        """dst[4 (p + l) + c] = src[r0 + c, i + l] for c < 4, l < V (see the compiled version)."""
        for l in range(VECTOR_BYTES // dst.itemsize):
            for c in range(4):
                dst[4 * (p + l) + c] = src[r0 + c, i + l]

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def gemm_tile(typingctx, A, B, C, k0, l0, j0, j1, mr, nv, more):
        """The tile of C at (k0, l0), ``mr`` rows by ``nv * V`` columns (V = VECTOR_BYTES // itemsize): the sum over
        j in [j0, j1) of A[k, j] B[j, l], added to the tile's entries of C where ``more``, else from zero.

        A (K, E), any strides; B (E, >= L) and C (K, L) C-contiguous (only B's first L columns are read); one float
        dtype for all three; ``mr`` and ``nv`` compile-time constants. No
        bounds check: the caller keeps the tile inside C and [j0, j1) inside
        E. The accumulators are an ``alloca`` of ``mr * nv`` vectors indexed
        by constants, which LLVM's SROA turns into registers (loop-carried
        values of the j loop). With ``more``, splitting [0, E) into
        consecutive ranges gives the bits of one range: the sum continues in
        the same order.
        """
        arrays = (A, B, C)
        if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
            return None
        if not (A.dtype == B.dtype == C.dtype and A.dtype in (types.float32, types.float64)):
            return None
        if B.layout != "C" or C.layout != "C" or not C.mutable:
            return None
        if not (isinstance(mr, types.IntegerLiteral) and isinstance(nv, types.IntegerLiteral)):
            return None
        if not all(isinstance(t, types.Integer) for t in (k0, l0, j0, j1)):
            return None
        if not isinstance(more, types.Boolean):
            return None
        MR, NV = mr.literal_value, nv.literal_value
        if MR < 1 or NV < 1:
            return None
        bits = A.dtype.bitwidth
        lanes = VECTOR_BYTES * 8 // bits

        def codegen(context, builder, signature, args):
            a, b, c = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3]))
            intp = context.get_value_type(types.intp)
            k0v, l0v, j0v, j1v = (context.cast(builder, v, t, types.intp)
                                  for v, t in zip(args[3:7], signature.args[3:7]))

            def const(i):
                return ir.Constant(intp, i)

            fty = ir.FloatType() if bits == 32 else ir.DoubleType()
            vty = ir.VectorType(fty, lanes)
            vptr = vty.as_pointer()
            fma_v = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                                   f"llvm.fma.v{lanes}f{bits}")
            ldb = builder.extract_value(b.shape, 1)
            ldc = builder.extract_value(c.shape, 1)
            sa0 = builder.extract_value(a.strides, 0)
            sa1 = builder.extract_value(a.strides, 1)
            a_bytes = builder.bitcast(a.data, ir.IntType(8).as_pointer())
            acc = cgutils.alloca_once(builder, vty, size=MR * NV)

            def c_vector(r, v):  # a pointer to vector v of row r of the tile in C
                c_row = builder.add(builder.mul(builder.add(k0v, const(r)), ldc), l0v)
                return builder.bitcast(builder.gep(c.data, [builder.add(c_row, const(v * lanes))]), vptr)

            go_on = context.cast(builder, args[9], signature.args[9], types.boolean)
            for r in range(MR):
                for v in range(NV):  # the tile lies inside C: loading it is safe either way
                    start = builder.select(go_on, builder.load(c_vector(r, v), align=bits // 8), ir.Constant(vty, None))
                    builder.store(start, builder.gep(acc, [const(r * NV + v)]))
            a_rows = [builder.gep(a_bytes, [builder.mul(builder.add(k0v, const(r)), sa0)]) for r in range(MR)]
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            with cgutils.for_range_slice(builder, j0v, j1v, const(1), inc=True) as (j, _):
                b_row = builder.add(builder.mul(j, ldb), l0v)
                bv = [builder.load(builder.bitcast(builder.gep(b.data, [builder.add(b_row, const(v * lanes))]), vptr),
                                   align=bits // 8) for v in range(NV)]
                a_col = builder.mul(j, sa1)
                for r in range(MR):
                    s = builder.load(builder.bitcast(builder.gep(a_rows[r], [a_col]), fty.as_pointer()))
                    sv = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)),
                                                undef, splat)
                    for v in range(NV):
                        slot = builder.gep(acc, [const(r * NV + v)])
                        builder.store(builder.call(fma_v, [sv, bv[v], builder.load(slot)]), slot)
            for r in range(MR):
                for v in range(NV):
                    builder.store(builder.load(builder.gep(acc, [const(r * NV + v)])), c_vector(r, v), align=bits // 8)
            return context.get_dummy_value()

        return types.none(A, B, C, k0, l0, j0, j1, mr, nv, more), codegen

    @intrinsic
    def transpose_tile(typingctx, src, r0, c0, dst, d0, e0):
        """dst[d0 + b, e0 + a] = src[r0 + a, c0 + b] for a, b < V = VECTOR_BYTES // itemsize (16 float32, 8 float64 with AVX-512):
        one square tile through V vector registers.

        src and dst C-contiguous, one float dtype. No bounds check: the caller
        keeps the tile inside both. The V rows are loaded whole, then
        log2(V) rounds of two-source shuffles swap the off-diagonal blocks of
        each size (V / 2 by V / 2 down to 1 by 1: at size h, rows i and i + h
        trade the entries whose lane has bit h set), and the rows, now
        columns, are stored whole: V log2(V) shuffles for V^2 entries, where
        the scalar copy that LLVM makes of constant-count loops moves one entry
        an instruction.
        """
        if not all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" for t in (src, dst)):
            return None
        if not (src.dtype == dst.dtype and src.dtype in (types.float32, types.float64) and dst.mutable):
            return None
        if not all(isinstance(t, types.Integer) for t in (r0, c0, d0, e0)):
            return None
        bits = src.dtype.bitwidth
        V = VECTOR_BYTES * 8 // bits

        def codegen(context, builder, signature, args):
            s, d = (context.make_array(t)(context, builder, v) for t, v in ((signature.args[0], args[0]),
                                                                          (signature.args[3], args[3])))
            intp = context.get_value_type(types.intp)
            r0v, c0v, d0v, e0v = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 4, 5))
            fty = ir.FloatType() if bits == 32 else ir.DoubleType()
            vptr = ir.VectorType(fty, V).as_pointer()
            lds = builder.extract_value(s.shape, 1)
            ldd = builder.extract_value(d.shape, 1)

            def row(data, ld, r, col):  # a pointer to the vector at (r, col) of a C-contiguous array
                at = builder.add(builder.mul(r, ld), col)
                return builder.bitcast(builder.gep(data, [at]), vptr)

            rows = [builder.load(row(s.data, lds, builder.add(r0v, ir.Constant(intp, i)), c0v), align=bits // 8)
                    for i in range(V)]
            h = 1
            while h < V:
                low = [l if l & h == 0 else V + l - h for l in range(V)]
                high = [l + h if l & h == 0 else V + l for l in range(V)]
                for i in range(V):
                    if i & h == 0:
                        a, b = rows[i], rows[i + h]
                        rows[i] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), V), low))
                        rows[i + h] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), V), high))
                h *= 2
            for i in range(V):
                builder.store(rows[i], row(d.data, ldd, builder.add(d0v, ir.Constant(intp, i)), e0v), align=bits // 8)
            return context.get_dummy_value()

        return types.none(src, r0, c0, dst, d0, e0), codegen

    def _transpose_quarters(builder, rows, V):
        """The four vectors of V lanes ``rows``, each read as V / 4 quarters of four lanes, with every quarter's
        4 x 4 block transposed: lane 4q + m of result c is lane 4q + c of rows[m]. Two rounds of two-source
        shuffles (unpack low and high pairs of single lanes, then of lane pairs: the four-by-four transpose of
        SSE's _MM_TRANSPOSE4_PS in each 128-bit lane of float32 vectors), eight shuffles for 4 V entries. Its
        own inverse."""
        i32 = ir.IntType(32)

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, V), mask))

        quarters = range(0, V, 4)
        lo = [m for b in quarters for m in (b, V + b, b + 1, V + b + 1)]
        hi = [m for b in quarters for m in (b + 2, V + b + 2, b + 3, V + b + 3)]
        lo2 = [m for b in quarters for m in (b, b + 1, V + b, V + b + 1)]
        hi2 = [m for b in quarters for m in (b + 2, b + 3, V + b + 2, V + b + 3)]
        t0, t1 = shuffle(rows[0], rows[1], lo), shuffle(rows[0], rows[1], hi)
        t2, t3 = shuffle(rows[2], rows[3], lo), shuffle(rows[2], rows[3], hi)
        return [shuffle(t0, t2, lo2), shuffle(t0, t2, hi2), shuffle(t1, t3, lo2), shuffle(t1, t3, hi2)]

    def _points_rows_typing(flat, rows, ints):
        if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
            return False
        if not (isinstance(rows, types.Array) and rows.ndim == 2 and rows.layout == "C"):
            return False
        if not (flat.dtype == rows.dtype and flat.dtype in (types.float32, types.float64)):
            return False
        return all(isinstance(t, types.Integer) for t in ints)

    def _points_rows_codegen(to_rows):
        """The code of :func:`points_to_rows4` (``to_rows``) or :func:`rows_to_points4`: the V points' four
        coordinates move as V / 4 quarter vectors (one point each, 16 or 32 bytes) and four vectors of a row each,
        through :func:`_transpose_quarters`."""

        def codegen(context, builder, signature, args):
            if to_rows:
                flat_t, p_t, rows_t, r0_t, i_t = signature.args
                flat_v, p_v, rows_v, r0_v, i_v = args
            else:
                rows_t, r0_t, i_t, flat_t, p_t = signature.args
                rows_v, r0_v, i_v, flat_v, p_v = args
            flat = context.make_array(flat_t)(context, builder, flat_v)
            rows = context.make_array(rows_t)(context, builder, rows_v)
            intp = context.get_value_type(types.intp)
            p, r0, i = (context.cast(builder, v, t, types.intp) for v, t in ((p_v, p_t), (r0_v, r0_t), (i_v, i_t)))
            bits = flat_t.dtype.bitwidth
            V = VECTOR_BYTES * 8 // bits
            fty = ir.FloatType() if bits == 32 else ir.DoubleType()
            i32 = ir.IntType(32)
            ld = builder.extract_value(rows.shape, 1)

            def const(n):
                return ir.Constant(intp, n)

            def point(n):  # a pointer to the four coordinates of point p + n
                at = builder.mul(builder.add(p, const(n)), const(4))
                return builder.bitcast(builder.gep(flat.data, [at]), ir.VectorType(fty, 4).as_pointer())

            def row(c):  # a pointer to lanes [i, i + V) of row r0 + c
                at = builder.add(builder.mul(builder.add(r0, const(c)), ld), i)
                return builder.bitcast(builder.gep(rows.data, [at]), ir.VectorType(fty, V).as_pointer())

            align = bits // 8
            if to_rows:  # vector k holds points k, k + 4, k + 8, ..: after the transpose, row c in the points' order
                vectors = []
                for k in range(4):
                    parts = [builder.load(point(k + 4 * q), align=align) for q in range(V // 4)]
                    while len(parts) > 1:
                        n = 2 * parts[0].type.count
                        parts = [builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, n), list(range(n))))
                                 for a, b in zip(parts[::2], parts[1::2])]
                    vectors.append(parts[0])
                for c, v in enumerate(_transpose_quarters(builder, vectors, V)):
                    builder.store(v, row(c), align=align)
            else:
                vectors = _transpose_quarters(builder, [builder.load(row(c), align=align) for c in range(4)], V)
                for k, v in enumerate(vectors):
                    for q in range(V // 4):
                        quarter = ir.Constant(ir.VectorType(i32, 4), list(range(4 * q, 4 * q + 4)))
                        builder.store(builder.shuffle_vector(v, v, quarter), point(k + 4 * q), align=align)
            return context.get_dummy_value()

        return codegen

    @intrinsic
    def points_to_rows4(typingctx, src, p, dst, r0, i):
        """dst[r0 + c, i + l] = src[4 (p + l) + c] for c < 4 and l < V = VECTOR_BYTES // itemsize: V points of four
        coordinates (src an (N, 4) array, flattened) into four rows of lanes, in the points' order.

        src 1-D and dst 2-D, C-contiguous, one float dtype. No bounds check:
        the caller keeps the V points inside src and the lanes inside dst.
        The points are read as V / 4 vectors of four quarters each (vector k
        holds points k, k + 4, ..), so one transpose of each quarter's 4 x 4
        block (:func:`_transpose_quarters`) leaves row c holding coordinate c in
        order: V / 4 loads of a point a vector and eight shuffles for V points.
        LLVM's own code for the plain loop (four strided reads a lane) took
        0.069 ms for 1e5 points, float32, on Zen 3; this takes 0.037.
        """
        if not _points_rows_typing(src, dst, (p, r0, i)) or not dst.mutable:
            return None
        return types.none(src, p, dst, r0, i), _points_rows_codegen(True)

    @intrinsic
    def rows_to_points4(typingctx, src, r0, i, dst, p):
        """dst[4 (p + l) + c] = src[r0 + c, i + l] for c < 4 and l < V: :func:`points_to_rows4` the other way (the
        transpose is its own inverse), each point stored as one quarter of a vector."""
        if not _points_rows_typing(dst, src, (r0, i, p)) or not dst.mutable:
            return None
        return types.none(src, r0, i, dst, p), _points_rows_codegen(False)


@njit(inline="always", **_OPTS)
def _tile(A, B, C, k0, l, j0, j1, mr, nv, more):
    """:func:`gemm_tile` with ``mr`` rows (8, 6, 4 or 1, each a constant of its own call) and ``nv`` vectors."""
    if mr == 8:
        gemm_tile(A, B, C, k0, l, j0, j1, 8, nv, more)
    elif mr == 6:
        gemm_tile(A, B, C, k0, l, j0, j1, 6, nv, more)
    elif mr == 4:
        gemm_tile(A, B, C, k0, l, j0, j1, 4, nv, more)
    else:
        gemm_tile(A, B, C, k0, l, j0, j1, 1, nv, more)


@njit(inline="always", **_OPTS)
def _band(A, B, C, k0, mr, l0, l1, j0, j1, more):
    """Tiles of ``mr`` rows from row k0 over columns [l0, l1) of C (a whole number of vectors): full tiles, then a
    half tile where one vector's width is left."""
    width = TILE_VECTORS * (VECTOR_BYTES // C.itemsize)
    l2 = l0 + (l1 - l0) // width * width
    for l in range(l0, l2, width):
        _tile(A, B, C, k0, l, j0, j1, mr, 2, more)
    if l2 < l1:
        _tile(A, B, C, k0, l2, j0, j1, mr, 1, more)


@njit(inline="always", **_OPTS)
def _block(A, B, C, k0, k1, l0, l1):
    """C[k0:k1, l0:l1] = A[k0:k1] @ B[:, l0:l1] by tiles, l1 - l0 a whole number of vectors: rows in bands of
    :data:`TILE_ROWS` (then 4, then 1), the inner index in slices of :data:`INNER_BLOCK` that continue the sums of
    the slice before."""
    E = A.shape[1]
    kt = k0 + (k1 - k0) // TILE_ROWS * TILE_ROWS
    k4 = kt + (k1 - kt) // 4 * 4
    for j0 in range(0, max(E, 1), INNER_BLOCK):
        j1 = min(E, j0 + INNER_BLOCK)
        more = j0 > 0
        for k in range(k0, kt, TILE_ROWS):
            _band(A, B, C, k, TILE_ROWS, l0, l1, j0, j1, more)
        for k in range(kt, k4, 4):
            _band(A, B, C, k, 4, l0, l1, j0, j1, more)
        for k in range(k4, k1):
            _band(A, B, C, k, 1, l0, l1, j0, j1, more)


@njit(inline="always", **_OPTS)
def _ragged_columns(A, B, C, k0, k1, l0):
    """C[k0:k1, l0:] one entry at a time, each summed over the inner index in order (the columns that fill no
    vector)."""
    zero = np.zeros(1, C.dtype)[0]
    for k in range(k0, k1):
        for l in range(l0, C.shape[1]):
            acc = zero
            for j in range(A.shape[1]):
                acc = fma(A[k, j], B[j, l], acc)
            C[k, l] = acc


@njit(**_OPTS)  # called, not inlined: a caller links one compiled copy instead of optimising the tiles again
def tile_matmul(A, B, C):
    """C = A @ B[:, :L] by :func:`gemm_tile` on the calling thread: A (K, E) any strides, B (E, >= L) and C (K, L)
    C-contiguous, one float dtype (the mixture's GEMM path hands in B rows wider than C's).

    Rows of C in bands of :data:`TILE_ROWS` (then 4, then 1); columns in
    tiles of two vectors, then one; the inner index in slices of
    :data:`INNER_BLOCK`, each slice's tiles continuing the sums of the one
    before (the bits of one pass). The last columns that fill no vector (L not
    a multiple of VECTOR_BYTES // itemsize: 16 float32 or 8 float64 with
    AVX-512, half that with AVX2) go one entry at a time, summed in the same
    order.
    E = 0 gives zeros. Shapes are the caller's to get right (no checks: this
    runs inside kernels).
    """
    K, L = C.shape
    lanes = VECTOR_BYTES // C.itemsize
    L1 = L // lanes * lanes
    _block(A, B, C, 0, K, 0, L1)
    if L1 < L:
        _ragged_columns(A, B, C, 0, K, L1)


#: Rows (at most; see :func:`block_rows`) and columns of C per block of :func:`blocked_matmul`: a block's slice of
#: B (INNER_BLOCK x BLOCK_COLUMNS, 128 KiB float32) stays in the core's L2 while its bands of rows pass over it.
BLOCK_ROWS = 8 * TILE_ROWS
BLOCK_COLUMNS = 128


def block_rows(K: int, L: int, itemsize: int, threads: int) -> int:
    """Rows per block of :func:`blocked_matmul` for a (K, L) product on ``threads`` threads: :data:`BLOCK_ROWS`,
    halved (down to one tile's :data:`TILE_ROWS`) while the blocks are fewer than the threads, so that a small
    product (a (128, 128) weight gradient) still reaches every core. The bits do not depend on it."""
    lanes = VECTOR_BYTES // itemsize
    n_cols = max(-(-(L // lanes * lanes) // BLOCK_COLUMNS), 1)
    rows = BLOCK_ROWS
    while rows > TILE_ROWS and -(-K // rows) * n_cols < threads:
        rows //= 2
    return rows


@njit(inline="always", **_OPTS)
def _matmul_block(A, B, C, task, n_cols, L1, rows):
    """Block ``task`` of :func:`blocked_matmul` (row block task // n_cols, column block task % n_cols), with the
    columns that fill no vector where it is the last of its rows."""
    K, L = C.shape
    r, q = task // n_cols, task % n_cols
    k0, k1 = r * rows, min(K, (r + 1) * rows)
    l0, l1 = q * BLOCK_COLUMNS, min(L1, (q + 1) * BLOCK_COLUMNS)
    if l0 < l1:
        _block(A, B, C, k0, k1, l0, l1)
    if q == n_cols - 1 and L1 < L:
        _ragged_columns(A, B, C, k0, k1, L1)


@njit(parallel=PRANGE_ONLY, **_OPTS)
def blocked_matmul(A, B, C, parallel, rows=BLOCK_ROWS):
    """C = A @ B with the bits of :func:`tile_matmul`, block by block: on Numba's threads where ``parallel``.

    Operands as for :func:`tile_matmul`. C is cut into blocks of ``rows``
    (a multiple of :data:`TILE_ROWS`) x :data:`BLOCK_COLUMNS` (the last of
    each a remainder), one ``prange`` task each; columns that fill no vector
    go with their rows' last block. Every entry is summed in the same order
    as :func:`tile_matmul` sums it, so the result depends neither on
    ``parallel``, nor on ``rows``, nor on the thread count.
    """
    K, L = C.shape
    L1 = L // (VECTOR_BYTES // C.itemsize) * (VECTOR_BYTES // C.itemsize)
    n_cols = max((L1 + BLOCK_COLUMNS - 1) // BLOCK_COLUMNS, 1)
    n_tasks = (K + rows - 1) // rows * n_cols
    if parallel:
        for task in prange(n_tasks):
            _matmul_block(A, B, C, task, n_cols, L1, rows)
    else:
        for task in range(n_tasks):
            _matmul_block(A, B, C, task, n_cols, L1, rows)


#: Rows of C per block of the narrow products (:func:`rows_times_narrow`, :func:`columns_times_narrow`).
NARROW_ROWS = 256


@njit(inline="always", fastmath={"reassoc", "contract"}, **_OPTS)
def _rows_times_narrow_block(A, Bt, C, r):
    zero = np.zeros(1, C.dtype)[0]
    for k in range(r * NARROW_ROWS, min(C.shape[0], (r + 1) * NARROW_ROWS)):
        for l in range(C.shape[1]):
            acc = zero
            for j in range(A.shape[1]):
                acc += A[k, j] * Bt[l, j]
            C[k, l] = acc


@njit(parallel=PRANGE_ONLY, fastmath={"reassoc", "contract"}, **_OPTS)
def rows_times_narrow(A, Bt, C, parallel):
    """C = A @ Bt.T for C with fewer columns than a vector holds: each entry the dot product of a row of A with a
    row of Bt (both C-contiguous), summed in vector lanes (reassociated, as BLAS sums: the one product here not
    summed in order), in blocks of :data:`NARROW_ROWS` rows, on Numba's threads where ``parallel``."""
    n_blocks = (C.shape[0] + NARROW_ROWS - 1) // NARROW_ROWS
    if parallel:
        for r in prange(n_blocks):
            _rows_times_narrow_block(A, Bt, C, r)
    else:
        for r in range(n_blocks):
            _rows_times_narrow_block(A, Bt, C, r)


@njit(inline="always", **_OPTS)
def _columns_times_narrow_block(At, B, C, r):
    k0, k1 = r * NARROW_ROWS, min(C.shape[0], (r + 1) * NARROW_ROWS)
    L = C.shape[1]
    T = np.empty((L, k1 - k0), C.dtype)  # C's block, transposed: contiguous along the rows of C
    for l in range(L):
        for k in range(k1 - k0):
            T[l, k] = 0
    for j in range(At.shape[0]):
        a = At[j, k0:k1]  # slices, so that the loop over k starts at 0 and LLVM vectorises it
        for l in range(L):
            b = B[j, l]
            t = T[l]
            for k in range(k1 - k0):
                t[k] = fma(a[k], b, t[k])
    for k in range(k1 - k0):
        for l in range(L):
            C[k0 + k, l] = T[l, k]


@njit(parallel=PRANGE_ONLY, **_OPTS)
def columns_times_narrow(At, B, C, parallel):
    """C = At.T @ B for C with fewer columns than a vector holds, At (E, K) C-contiguous (A stored by columns, as
    the transpose of a row-major array is): each entry summed over the inner index in order, one FMA per term,
    vectorised over C's rows, in blocks of :data:`NARROW_ROWS` rows, on Numba's threads where ``parallel``."""
    n_blocks = (C.shape[0] + NARROW_ROWS - 1) // NARROW_ROWS
    if parallel:
        for r in prange(n_blocks):
            _columns_times_narrow_block(At, B, C, r)
    else:
        for r in range(n_blocks):
            _columns_times_narrow_block(At, B, C, r)


def compiles_tiles(environ=None) -> bool:
    """Whether Numba compiles for vectors the tiles suit here: 512-bit (:func:`compiles_avx512`) or 256-bit with
    FMA (:func:`compiles_avx2`); with neither, a tile's FMAs would be split or made by libm calls."""
    return compiles_avx512(environ) or compiles_avx2(environ)


#: Whether the callers that form whole products with the tiles (``conv_numba.chunk_matmul``,
#: ``mlp_numba.matmul``) may use them in this process: where Numba compiles for 512-bit vectors
#: (:func:`compiles_avx512`), and not as plain Python (``NUMBA_DISABLE_JIT``: the tile's Python form, one FMA at
#: a time, would take minutes per training step; ``tests/test_kernels_gemm.py`` covers it). Read once, at import.
#: With 256-bit vectors the tiles lose to BLAS on whole products: :func:`blocked_matmul` made 73-168 GFLOP/s
#: where OpenBLAS made 165-183 (float32, two threads, Zen 3, 4096 x 512 x 512 down to 128 x 4096 x 128); the
#: mixture's GEMM path still takes them there (``mixture_numba.gemm_products``: its products are short).
TILES = compiles_avx512() and not numba.config.DISABLE_JIT
