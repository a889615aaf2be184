r"""Numba twins of :meth:`refdiff.analytic.GaussianMixture.score` and ``log_prob``.

Reference twin: ``GaussianMixture._stream`` in refdiff/analytic.py (the
specification). Same arguments, same numbers to the precision of the dtype:

    mixture_score(mixture, x, process=None, t=None)     -> (N, D), x's dtype
    mixture_log_prob(mixture, x, process=None, t=None)  -> (N,),   x's dtype

With :math:`C_k=\gamma_t^2\Sigma_k+\sigma_t^2I=U_k\,\mathrm{diag}(c_k)U_k^\top`
and :math:`z_k=x-\gamma_t\mu_k`,

.. math::

    \ell_k=\log w_k-\tfrac12\big(D\log2\pi+\textstyle\sum_i\log c_{k,i}\big)-\tfrac12 z_k^\top C_k^{-1}z_k,\qquad
    \log p_t(x)=\mathrm{LSE}_k\,\ell_k,\qquad
    \nabla\log p_t(x)=-\textstyle\sum_k\mathrm{softmax}(\ell)_k\,C_k^{-1}z_k .

Three paths, chosen by :func:`mixture_score` / :func:`mixture_log_prob`:

* **lanes** (scalar t; D <= 4, full covariances, or K*D < :data:`GEMM_MIN_KD`):
  ``_score_lanes`` takes particles in blocks of :data:`LANES`, transposed to
  (D, LANES), and runs ``_score_block`` on each: pass 1 holds the logits as
  (K, LANES) from the differences :math:`z_k` (never from the cancelling
  :math:`|x|^2-2x\cdot\mu+|\mu|^2`), pass 2 sums the softmax weights times
  :math:`-C_k^{-1}z_k`. Every loop over lanes is innermost and element-wise,
  so LLVM vectorises it; the lane count is a run-time value (a constant trip
  count is unrolled instead), and the exp is ``exp_weight`` from
  ``_numba_math`` (Numba's ``math.exp`` is a scalar libm call here). A task
  of :data:`BLOCKS_PER_TASK` blocks shares one set of scratch arrays
  (``prange`` over tasks). The block works in x's dtype, as the reference's
  quadratic forms do (float32: twice the SIMD lanes and the float32 exp);
  the log-sum-exp adds in float64.
  For D <= 4 (:data:`ONE_PASS_MAX_D`) with isotropic or diagonal covariances
  ``_score_lanes_1pass`` runs instead, in one pass: the weights are :math:`\nu_k e^{-q_k/2}` with prior
  factors :math:`\nu_k` taken relative to the largest log-normaliser (formed
  in float64), not relative to each point's largest logit, so no pass has to
  find that first; four components per lane loop keep their constants and
  the running sums in registers (two coordinates for D <= 2, four for D = 3
  and 4, padded with zeros). The weight is ``scaled_pow2`` from
  ``_numba_math``: :math:`\nu_k` rides in the power of two's polynomial and
  exponent, so it costs no multiply, and 2**n is an integer addition to the
  exponent field; isotropic components form :math:`|z_k|^2` without a
  product by :math:`C_k^{-1}` and scale the field once. A weight below e**10
  times the smallest normal number is dropped, not clamped (a far, narrow component's field
  times a clamped weight can outweigh the score), and log p adds back the
  shift as a power of two. A point so far from every component that its
  weights leave that range (:data:`SHIFT_LIMIT`) joins its task's list,
  redone at the task's end with the two-pass block's arithmetic, LANES
  points at a time, in the task's own rows. A task is a thread's share in a
  few chunks of :data:`ONE_PASS_LANES` points; it names its rows once (a
  view made in a loop costs a pair of atomic reference-count updates). The
  N = 1e5, K = 8 float32 score took 1.17 ms on one thread with the two-pass
  block (0.4 of it in the copies in and out and a log per point the score
  does not use), 0.44 in one pass, 0.35 with 512-bit vectors. At D = 4,
  K = 8 it took 1.15 ms before the far points (0.5% of the benchmark's) were
  gathered, when each was redone on its own lane with scratch made per
  block, and before the views left the block loop; 0.66 after; on two
  threads 0.32-0.34 ms with an exp and a product by :math:`\nu_k`
  (33 vector operations per component and 16 lanes, isotropic), 0.22-0.24
  with ``scaled_pow2`` (27) and chunks of 512 points instead of 64 (the
  component constants were set up per block: 9% of the time). Of those, the
  components' loop is some 0.14 ms (at the two ports' rate for 27
  operations), the copies in and out (transposes: 12 shuffles each per 16
  points at D = 4) and the division by t most of the rest.
  The shift does not suit the GEMM path: at D = 64 a point's best logit lies
  some D/2 plus the spread of the log-determinants below the largest
  log-normaliser, more than float32's window of about 60 e-folds, and most
  points would be redone.
* **gemm** (scalar t; isotropic or diagonal; D >= 5 and
  K*D >= :data:`GEMM_MIN_KD`): per block of points the quadratic forms
  :math:`q_k=\sum_d s_{kd}(x_d-\gamma\mu_{kd})^2`, :math:`s_k=c_k^{-1}`, come
  from a matrix product in x's dtype (BLAS, or the register tiles below), :math:`-2\sum_d s_{kd}\gamma\mu_{kd}x_d`
  (isotropic; plus :math:`s_k|x|^2`) or that plus :math:`\sum_d s_{kd}x_d^2`
  (diagonal: the block augmented with its squares), plus
  :math:`\sum_d s_{kd}\gamma^2\mu_{kd}^2`; the score is a second product,
  :math:`\sum_k r_k s_k\odot\gamma\mu_k`, minus :math:`x\odot\sum_k r_k s_k`.
  By BLAS, both products are called from inside the ``prange`` task (Numba's
  ``np.dot``), in slices small enough that BLAS stays on the calling thread
  (:data:`GEMM_BLOCK_WORK`); BLAS threads spinning beside Numba's halved the
  speed of a host-side version. The block is as many points as keep the
  first product one such call (:func:`gemm_lanes`), copied in transposed
  (8 x 8 tiles) so that both products take C-ordered operands, and the
  score comes out of the second product row by row, the layout it is
  stored in. On a CPU with 512-bit vectors, or AVX2 with FMA, the kernel
  forms both products with its own register tiles instead
  (:func:`gemm_products`, ``_numba_gemm.tile_matmul``): blocks of up to
  :data:`FMA_PRODUCT_LANES` points; where D fills whole tiles
  (:func:`_rows_out`: 32 float32 or 16 float64 columns with AVX-512, 16 or 8
  with AVX2) the second product lands straight in the block's rows of
  the score, elsewhere it is transposed, (D, points), so that the score is
  formed in that layout and goes out through the same 8 x 8 tiles as the
  block came in. The kernel counts
  the points whose :math:`|x|^2` is not finite as it reads them, which
  stands in for a separate finiteness pass
  over x (one fewer read of the input). The expanded form cancels when a point is
  much farther from the origin than from a component mean: its error bound
  is about :math:`\gamma_{D+1}\,2(\max_d s_{kd}|x|^2+\sum_d s_{kd}\gamma^2\mu_{kd}^2)`
  where the difference form's is :math:`\gamma_D\,q_k`
  (:math:`\gamma_n\approx n\epsilon`), so a (particle, component) logit is
  recomputed from the difference, in float64, wherever the first bound
  exceeds :data:`REFINE_KAPPA` times :math:`q_k+D` (:math:`D` is the typical
  :math:`q_k` of a point under its own component): every logit that carries
  weight is about as accurate as the reference's. The score's own expanded
  sum, :math:`\sum_kr_ks_k\gamma\mu_k-x\sum_kr_ks_k`, cancels the same way
  further out: a point for which the same test with :data:`SCORE_KAPPA`
  fails (:math:`|x|/|x-\gamma\mu_k|` above about 32, more than 5 bits
  lost) takes its score from the differences, in float64. Tested on
  overlapping components far from the origin, where the plain expanded form
  misses the dtype's tolerance: 40 and 1000 away in float32, 1e4 and 1e6 in
  float64. Each pass keeps a lane-wise minimum of the test's margin over
  the components (it vectorises), and only lanes where it is negative are
  revisited, component by component. Near the data (small t) a point's own
  component fails the logit test; the revisit is scalar (both tests per
  component, D flops a recomputed logit), which took the D = 16, K = 32,
  N = 1e5 float32 score on one thread from 5.2 ms at t = 0.5 to 14.5 ms at
  t = 0.01 for points drawn from the mixture (the score test failed for
  none of them).
* **pointwise** (one t per particle, any kind and dtype): each particle calls
  :func:`mixture_score_point`, which forms :math:`c_k` for its own t (one
  streaming pass, online log-sum-exp). It divides by :math:`c_k` in float64,
  as the reference divides, so a scalar t takes it too where some
  :math:`c_k` lies below x's dtype's smallest normal number: the other paths
  multiply by :math:`1/c_k` in x's dtype, which overflows there, and a point
  on or near that component's mean would lose the weight it carries.

``prange`` runs over particle tasks only (the outermost loop), and each task
asks for 512-bit vectors (``prefer_wide_vectors``: LLVM's tuning for these
CPUs prefers 256); there is no ``fastmath`` and no random number inside a
kernel. The GEMM path works in x's dtype (float32 runs twice the SIMD lanes
of float64, and the float32 exp ``_exp_weight32``),
keeps its softmax weights unnormalised until the score (one division per
point) and drops (sets to 0) the weights whose log lies below
``log(tiny) + log K + 20``, so no operand is subnormal (``_weight_floor``).
The lane kernels drop theirs below ``_log_weight_floor`` the same way. A
dropped weight is not raised to the floor: times the field of a narrow
component far away (C_k^{-1} z_k, some 1e39 at a variance of 1e-30 and
z = 1e9) a raised weight outweighed the score, and where such a field
overflows the dtype the two-pass block adds nothing for it (0 * inf would
be NaN).

A point so far from every component that each quadratic form overflows x's
dtype has no weight left in any kernel (every logit -inf); its log p is -inf,
and its score comes from :func:`_far_score` (weights from the quadratic forms
scaled by a power of two, in float64), the twin of the reference's
``GaussianMixture._far_weights``. Its fields are formed in float64 there, so
within a factor of a few of the dtype's largest number a twin may return a
finite score where the reference's fields, in x's dtype, overflowed.

Per-point device function
-------------------------
Another kernel (a fused sampler loop) can call, inside its own particle loop::

    logp = mixture_score_point(x, g, v, log_w, mu, lam, U, kind, out, work)

======== ===================== ====================================================
argument shape, dtype          meaning
======== ===================== ====================================================
x        (D,) float32/float64  the point x_t (read only)
g, v     float64 scalars       gamma_t and sigma_t^2 of the process at this t
log_w    (K,) float64          log w_k of the active (w_k > 0) components
mu       (K, D) float64        component means mu_k (not scaled by gamma)
lam      (K, D) float64        eigenvalues of Sigma_k (isotropic: the variance
                               repeated D times; diagonal: the variances)
U        (K, D, D) float64     eigenvectors of Sigma_k as columns (kind 2 only;
                               pass any 3-D float64 array, e.g. (1, 1, 1), else)
kind     int                   0 isotropic, 1 diagonal, 2 full
out      (D,) float64          overwritten with the score grad log p_t(x)
work     (D,) float64          scratch
returns  float64               log p_t(x)
======== ===================== ====================================================

``mixture_arrays(mixture)`` returns ``(log_w, mu, lam, U, kind)`` for a
:class:`~refdiff.analytic.GaussianMixture`. The function releases the GIL
with its caller (``nogil``); it costs O(K D) (O(K D^2) for full covariances)
plus K logs and K exps per call, and allocates nothing but at a point so far
from every component that each quadratic form overflows (its score then
comes from ``_far_score``, as in every kernel here).

A lane-block kernel (the fused sampler) calls ``_score_block`` instead: the
score of LANES points at once, in the layout of
:func:`refdiff.samplers.fused.score_constants`.

Requires the ``fast`` extra (``pip install "refdiff[fast]"``).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # the `fast` extra is not installed
    raise ImportError('refdiff.kernels.mixture_numba needs numba: pip install "refdiff[fast]"') from exc

from refdiff import backend as _backend  # its checks looked up at the call (tests count them)
from refdiff.analytic import _check_points, _process_coefs, _smallest_variance
from refdiff.kernels._numba_gemm import (TILE_VECTORS, VECTOR_BYTES, compiles_tiles, points_to_rows4, rows_to_points4,
                                         tile_matmul, transpose_tile)
from refdiff.kernels._numba_math import (_INVLN2, _LN2_HI, _LN2_LO, _log, _log_pow2, aligned_empty, exp_weight, fma,
                                         pow2_factors, pow2_row, prefer_wide_vectors, scaled_pow2)

__all__ = ["mixture_score", "mixture_log_prob", "mixture_score_point", "mixture_arrays", "LANES", "GEMM_MIN_KD"]

#: Particles per block of the lane kernels: every per-particle loop runs over these lanes (SIMD).
LANES = 64
#: Blocks that share one set of scratch arrays (one ``prange`` task): allocation stays off the per-block path.
BLOCKS_PER_TASK = 8
#: Scalar t, isotropic/diagonal, D > ONE_PASS_MAX_D: K * D at or above this takes the GEMM path (D <= 4
#: has its own one-pass lane loop, faster than the GEMM path at every K measured).
GEMM_MIN_KD = 32
#: GEMM path: m * n * k of one BLAS call at most. OpenBLAS runs a GEMM of m n k <= 2^18 on the calling
#: thread (180-200 GFLOP/s float32 per core at these shapes, the core's peak; 128 x 64 x 128 in one call
#: ran at 140); a larger one inside ``prange`` starts its own threads and was measured 100x slower, so
#: the products are issued in slices below this.
GEMM_BLOCK_WORK = 2**18
#: GEMM path with its products by register tiles (:func:`gemm_products`): points per block, at most (fewer
#: points take the multiple of 16 that holds them). No BLAS call bounds it; 64, 128 and 256 were within 5%
#: of each other at D = 16 and 64 (128 best or level).
FMA_PRODUCT_LANES = 128
#: GEMM path with BLAS products: points per block, at most (:func:`gemm_lanes`).
BLAS_MAX_LANES = 128
#: GEMM path: the width of a task's logit and per-lane scratch rows, the most lanes either kind of product takes
#: (:func:`_score_gemm` refuses more). A width fixed at compile time puts the rows a constant stride apart, so
#: that LLVM vectorises the passes that take four components per lane loop (:func:`_logit_pass`) without
#: run-time alias checks, which it gives up on.
GEMM_ROW = max(FMA_PRODUCT_LANES, BLAS_MAX_LANES)
#: GEMM path: a logit is recomputed from the difference where the expanded form's error bound
#: exceeds this multiple of the difference form's (see the module docstring).
REFINE_KAPPA = 4.0
#: GEMM path: a point's score is recomputed from the differences where the same test with this multiple
#: (at least REFINE_KAPPA) fails for one of its components: |x| / |x - gamma mu_k| above about sqrt(SCORE_KAPPA / 2) = 32, where
#: the expanded sum of the score, sum_k w_k s_k gamma mu_k - x sum_k w_k s_k, loses more than 5 bits.
SCORE_KAPPA = 2048.0

#: Whether the GEMM path moves its blocks in and its score out by the vector shuffles of
#: ``_numba_gemm.transpose_tile`` (where Numba compiles for 512-bit vectors, or 256-bit ones with FMA), rather than
#: by scalar copies of 8 x 8 tiles (:func:`_transpose_into`).
SHUFFLE_TILES = compiles_tiles() and not numba.config.DISABLE_JIT

_LOG_2PI = math.log(2.0 * math.pi)
_ISOTROPIC, _DIAGONAL, _FULL = 0, 1, 2
_NO_ROTATION = np.zeros((1, 1, 1))  # the U argument of a mixture without full covariances
_NO_ROTATION.flags.writeable = False
_JIT = dict(cache=True, nogil=True, error_model="numpy")


# --------------------------------------------------------------------------- lanes: the block score
@njit(inline="always", **_JIT)
def _log_weight_floor(a):
    """Floor of the lane kernels' log-weights (relative to the largest), in a's dtype: a weight below exp(floor) is
    dropped (0), so every weight kept times any field above 1e-13 is a normal number (a subnormal operand costs a
    microcode assist per SIMD instruction). exp(-57) ~ 2e-25 for float32, exp(-678) ~ 1e-294 for float64: far
    below the dtype's rounding of the largest weight, 1 (a dropped weight changes the score by less than
    exp(floor) times its field)."""
    return a.dtype.type(-57.0 if a.itemsize == 4 else -678.0)


@njit(**_JIT)
def _far_score(pt, gmu, ic, U, full, ln, out):
    r"""The score, into ``out`` (float64 (D,)), at a point ``pt`` (float64 (D,)) so far from every component that
    each quadratic form q_k overflowed x's dtype (every logit -inf, no weight left): twin of the reference's
    ``GaussianMixture._far_weights``.

    gmu, ic (K, >= D): gamma mu_k and C_k^{-1} (in eigen coordinates where ``full``, U (K, D, D) the
    eigenvectors as columns), ln (K,): the log-normalisers, as the lane kernels hold them. With 2**E the
    largest of |pt_j| and |gamma mu_kj|, q~_k = q_k 2**-2E is formed in float64 from the differences scaled
    by 2**-E (exactly), and the logits less their common part, l_k = ln_k - 2**2E (q~_k - min_j q~_j) / 2
    (+inf where that product overflows), give the weights: the nearest components by q_k, and among equal
    q_k the log-normalisers. The fields
    -C_k^{-1} z_k are formed unscaled, in float64 (they may overflow, as the score itself may). Rare: a
    kernel calls this only for a lane whose weights all vanished, so it may allocate."""
    D, K = pt.shape[0], ln.shape[0]
    big = 0.0
    for j in range(D):
        big = max(big, abs(pt[j]))
        for k in range(K):
            big = max(big, abs(np.float64(gmu[k, j])))
    E = math.frexp(big)[1]  # 2**(E - 1) <= big < 2**E
    q = np.empty(K)
    y = np.empty(D)
    q_min = np.inf
    for k in range(K):
        acc = 0.0
        for a in range(D):
            if full:
                ya = 0.0
                for j in range(D):
                    ya += U[k, j, a] * (math.ldexp(pt[j], -E) - math.ldexp(np.float64(gmu[k, j]), -E))
            else:
                ya = math.ldexp(pt[a], -E) - math.ldexp(np.float64(gmu[k, a]), -E)
            acc += ya * ya * ic[k, a]
        q[k] = acc
        q_min = min(q_min, acc)
    lg = np.empty(K)
    top = -np.inf
    for k in range(K):
        d = q[k] - q_min
        # 2**2E d past the range is an infinitely smaller weight (tested before ldexp: plain Python would raise)
        lg[k] = np.float64(ln[k]) - (0.0 if d == 0.0 else np.inf if math.frexp(d)[1] + 2 * E > 1000 else
                                     0.5 * math.ldexp(d, 2 * E))
        top = max(top, lg[k])
    for j in range(D):
        out[j] = 0.0
    total = 0.0
    for k in range(K):
        w = math.exp(lg[k] - top)
        if w == 0.0:  # its field may have overflowed: 0 * inf
            continue
        total += w
        for a in range(D):
            if full:
                ya = 0.0
                for j in range(D):
                    ya += U[k, j, a] * (pt[j] - gmu[k, j])
                y[a] = ya * ic[k, a]
            else:
                y[a] = (pt[a] - gmu[k, a]) * ic[k, a]
        for j in range(D):
            if full:
                f = 0.0
                for a in range(D):
                    f += U[k, j, a] * y[a]
            else:
                f = y[j]
            out[j] -= w * f
    for j in range(D):
        out[j] /= total


@njit(inline="always", **_JIT)
def _far_lanes(xs, means_i, inv_c_i, log_norm_i, U, full, tot, out):
    """The lanes of a block whose weights all vanished (tot = 0: every quadratic form overflowed) get their score
    from :func:`_far_score`, and tot = 1, so that the block's last division leaves it."""
    D, L = xs.shape
    for l in range(L):
        if tot[l] == 0.0:
            pt, res = np.empty(D), np.empty(D)
            for j in range(D):
                pt[j] = xs[j, l]
            _far_score(pt, means_i, inv_c_i, U, full, log_norm_i, res)
            for j in range(D):
                out[j, l] = res[j]
            tot[l] = 1.0


@njit(inline="always", **_JIT)
def _running_max(ml, lg, zero):
    """The lane kernels' running maximum of the logits: ``lg if lg > ml else ml`` (a NaN lg leaves ml), plus
    ``zero``.

    Stored back where ml was loaded, the bare select let LLVM drop the store on the lanes that keep ml, and
    the vectoriser then wrote the others with masked stores (vmaskmovpd), which AMD's Zen 3 runs far slower
    than a plain store: a running maximum over 8 x 64 values took 0.49 ns a value that way and 0.11 with
    the +0, which keeps the store whole (and makes it a vmaxpd). The +0 changes nothing but a -0 maximum,
    into +0: the same exp(l - m) and the same comparisons."""
    return (lg if lg > ml else ml) + zero


@njit(inline="always", **_JIT)
def _score_block_2d(xs, i, means, inv_c, log_norm, logit, m, tot, out):
    """_score_block for D = 2 and diagonal covariances: the same arithmetic, one lane loop per component and pass."""
    K, L = log_norm.shape[1], xs.shape[1]
    half, floor, zero = xs.dtype.type(0.5), _log_weight_floor(xs), xs.dtype.type(0.0)
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
            lg = ln - half * quad
            lk[l] = lg
            m[l] = _running_max(m[l], lg, zero)
    for l in range(L):
        tot[l] = 0.0
        o0[l] = 0.0
        o1[l] = 0.0
    for k in range(K):
        mu0, mu1, ic0, ic1 = means[i, k, 0], means[i, k, 1], inv_c[i, k, 0], inv_c[i, k, 1]
        lk = logit[k]
        for l in range(L):
            d = lk[l] - m[l]
            keep = d > floor  # else the weight is dropped and adds nothing, even where its field overflowed
            e = exp_weight(d)  # on every lane: in a branch it put what follows under masked loads and stores
            w = e if keep else zero
            tot[l] += w
            # minus 0 where dropped rather than a kept o0[l]: a store on every lane, not a masked one (see
            # _running_max); the same bits. The field stays inside the condition: as plain Python, 0 * an
            # overflowed field would warn
            o0[l] = o0[l] - (w * ((x0[l] - mu0) * ic0) if keep else zero)
            o1[l] = o1[l] - (w * ((x1[l] - mu1) * ic1) if keep else zero)
    _far_lanes(xs, means[i], inv_c[i], log_norm[i], _NO_ROTATION, False, tot, out)
    for l in range(L):
        o0[l] /= tot[l]
        o1[l] /= tot[l]


@njit(inline="always", **_JIT)
def _score_block(xs, i, means, inv_c, log_norm, U, full, logit, q, ya, quad, m, tot, acc, out):
    """Exact mixture score at LANES points xs (D, LANES) for table row i, into ``out`` (D, LANES).

    Pass 1 keeps each component's logit and, for full covariances, q_k = C_k^{-1} y_k
    (eigen coordinates, y_k = U_k^T (x - gamma mu_k)); pass 2 sums the softmax weights
    times -U_k q_k (diagonal C_k: -C_k^{-1}(x - gamma mu_k), formed there again, the
    same numbers). A weight below exp(floor) (:func:`_log_weight_floor`) is dropped
    and adds nothing, even where its field overflowed. Every loop over lanes is
    innermost and element-wise (SIMD); per lane the arithmetic and its order are
    those of one point alone.
    """
    K, D, L = log_norm.shape[1], xs.shape[0], xs.shape[1]
    if D == 2 and not full:
        _score_block_2d(xs, i, means, inv_c, log_norm, logit, m, tot, out)
        return
    half, floor, zero = xs.dtype.type(0.5), _log_weight_floor(xs), xs.dtype.type(0.0)
    for l in range(L):
        m[l] = -np.inf
    for k in range(K):
        for l in range(L):
            quad[l] = 0.0
        for a in range(D):
            ic = inv_c[i, k, a]
            if full:
                for l in range(L):
                    ya[l] = 0.0
                for j in range(D):
                    u = U[k, j, a]
                    mu = means[i, k, j]
                    for l in range(L):
                        ya[l] += u * (xs[j, l] - mu)
                for l in range(L):
                    qa = ya[l] * ic
                    quad[l] += ya[l] * qa
                    q[k, a, l] = qa
            else:  # diagonal: q_ka = (x_a - mu_ka) / c_ka is formed again in pass 2, not stored (faster)
                mu = means[i, k, a]
                for l in range(L):
                    y = xs[a, l] - mu
                    quad[l] += y * (y * ic)
        ln = log_norm[i, k]
        for l in range(L):
            lg = ln - half * quad[l]
            logit[k, l] = lg
            m[l] = _running_max(m[l], lg, zero)
    for l in range(L):
        tot[l] = 0.0
    for j in range(D):
        for l in range(L):
            out[j, l] = 0.0
    # a weight below the floor is dropped (0), not raised to it: times the field of a narrow component far
    # away, exp(floor) outweighed the score. A dropped weight adds nothing, even where its field overflowed (q
    # is infinite where the quadratic form was, and 0 * inf is NaN): each term is tested. With the diagonal
    # field formed here instead of stored in pass 1, the block ran 1-7% faster than it had untested (D = 5..16,
    # K D < 32, one thread), and the test cost the full blocks nothing measurable
    for k in range(K):
        for l in range(L):
            d = logit[k, l] - m[l]
            e = exp_weight(d)  # clamps its argument: never subnormal; on every lane, not in a branch (masked)
            w = e if d > floor else zero
            logit[k, l] = w  # now the unnormalised weight, 0 where dropped
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
                    w = logit[k, l]
                    out[j, l] = out[j, l] - (w * acc[l] if w > zero else zero)  # a store on every lane
            else:
                mu, ic = means[i, k, j], inv_c[i, k, j]
                for l in range(L):
                    w = logit[k, l]
                    out[j, l] = out[j, l] - (w * ((xs[j, l] - mu) * ic) if w > zero else zero)
    _far_lanes(xs, means[i], inv_c[i], log_norm[i], U, full, tot, out)
    for j in range(D):
        for l in range(L):
            out[j, l] /= tot[l]


@njit(inline="always", **_JIT)
def _block_scratch(x, K, D, L):
    """The scratch of ``_score_block`` for L lanes, in x's dtype: out (D, L), logit (K, L), q (K, D, L) (used with
    full covariances), and ya, quad, m, tot, acc (L,)."""
    dt = x.dtype
    return (np.zeros((D, L), dt), np.zeros((K, L), dt), np.zeros((K, D, L), dt), np.zeros(L, dt), np.zeros(L, dt),
            np.zeros(L, dt), np.zeros(L, dt), np.zeros(L, dt))


@njit(parallel=True, **_JIT)
def _score_lanes(x, means, inv_c, log_norm, U, full, want_score, lanes, score, logp):
    """Scalar-t twin of ``_stream``: ``_score_block`` on blocks of ``lanes`` particles (see the module docstring).

    x (N, D) float32/float64; means, inv_c (1, K, D), log_norm (1, K), U as
    :func:`refdiff.samplers.fused.score_constants` gives them for one row, in
    x's dtype (the block works in it: float32 runs twice the lanes and the
    float32 exp). Writes score (N, D) if ``want_score``, else logp (N,).
    """
    N = x.shape[0]
    n_blocks = (N + lanes - 1) // lanes
    n_tasks = (n_blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK
    for task in prange(n_tasks):
        _lanes_task(x, means, inv_c, log_norm, U, full, want_score, lanes, task * BLOCKS_PER_TASK,
                    min(n_blocks, (task + 1) * BLOCKS_PER_TASK), score, logp)


@njit(**_JIT)
def _lanes_task(x, means, inv_c, log_norm, U, full, want_score, lanes, blk0, blk1, score, logp):
    """Blocks [blk0, blk1) of :func:`_score_lanes`: one task of its ``prange`` loop, in a function of its own (see
    :func:`_gemm_task`; the first float32 call, full covariances, D = 16: 30 against 26 s)."""
    N, D = x.shape
    K = log_norm.shape[1]
    L = lanes  # a run-time value, so that LLVM's loop vectorizer (not full unrolling) takes the lane loops
    prefer_wide_vectors()
    xs = np.zeros((D, L), x.dtype)
    out, logit, q, ya, quad, m, tot, acc = _block_scratch(x, K, D, L)
    sf = score.reshape(-1)
    for blk in range(blk0, blk1):
        p0 = np.uint64(blk * L)  # unsigned offsets: no negative-index wrap-around test in the copy loops
        n_lanes = min(L, N - blk * L)
        if D == 2:  # two named rows: the copy vectorises (a loop over j of run-time length would not)
            x0, x1 = xs[0], xs[1]
            for l in range(n_lanes):
                x0[l] = x[p0 + np.uint64(l), 0]
                x1[l] = x[p0 + np.uint64(l), 1]
        else:
            for l in range(n_lanes):
                for j in range(D):
                    xs[j, l] = x[p0 + np.uint64(l), j]
        _score_block(xs, 0, means, inv_c, log_norm, U, full, logit, q, ya, quad, m, tot, acc, out)
        if not want_score:
            for l in range(n_lanes):
                logp[p0 + np.uint64(l)] = np.float64(m[l]) + _log(np.float64(tot[l]))
        elif D == 2:
            o0, o1 = out[0], out[1]
            for l in range(n_lanes):
                sf[np.uint64(2) * (p0 + np.uint64(l))] = o0[l]
                sf[np.uint64(2) * (p0 + np.uint64(l)) + np.uint64(1)] = o1[l]
        else:
            for l in range(n_lanes):
                for j in range(D):
                    score[p0 + np.uint64(l), j] = out[j, l]


# --------------------------------------------------------------------------- lanes, D <= 4: one pass
#: Lanes path: isotropic or diagonal covariances up to this dimension take the one-pass kernel.
ONE_PASS_MAX_D = 4
#: Lanes path, D <= 4: the prior factors are nu_k = exp(log_norm_k - max_j log_norm_j) 2**bits, bits by dtype
#: (float32, float64): a power of two (about exp(60), exp(600)), so log p = max_j log_norm_j + log(t 2**-bits)
#: scales exactly and keeps the two-pass block's accuracy (the log takes -bits into its exponent: t 2**-bits
#: itself may be subnormal in float64); see :func:`_one_pass`.
SHIFT_BITS = (86, 865)
#: Lanes path, D <= 4: a point whose weights sum below exp(this), by dtype, is redone with the two-pass
#: block's arithmetic (:func:`_redo_far`): its best component lies so far below the largest log-normaliser (about
#: 100 e-folds in float32, 1200 in float64) that the weights dropped near the subnormal range, at most
#: nu_k exp(cut_k) = e**10 tiny each, would no longer be negligible beside its sum (float32: e**-40 against
#: e**-77; float64: e**-600 against e**-698). Beside a component much narrower than the broadest, whose field
#: C_k^{-1} z_k outweighs such a ratio, :func:`_one_pass` raises the bound for the call (see there).
SHIFT_LIMIT = (-40.0, -600.0)
#: Lanes path, D <= 4: the points of one chunk, by dtype (float32, float64): 2 KiB of each of ten rows, in L1.
#: A chunk sets up its components' constants once, so larger chunks spend less on it (it was 9% of the
#: D = 4 kernel's time with blocks of 64 points).
ONE_PASS_LANES = (512, 256)
ONE_PASS_ROW = 512  # the row width of a task's scratch: the largest of ONE_PASS_LANES
#: Lanes path, D <= 4: isotropic components take the isotropic form (the field scaled once, w h_k) only while
#: every h_k = 1 / (2 c_k) lies in this range, by dtype (float32, float64), else the diagonal one (w (h_k z)):
#: w h_k stays finite for the largest weight (1.42 2**86, 1.42 2**865) and keeps its precision, as a normal
#: number, for every weight that counts beside a sum t at SHIFT_LIMIT (t 2**-24, t 2**-53).
ISO_H_RANGE = ((2.0**-20, 2.0**40), (2.0**-50, 2.0**150))
#: Lanes path, D <= 4: a call of at most this many (point, component, coordinate) triples (coordinates counted
#: 2 for D <= 2, else 4) runs on the calling thread: waking Numba's other threads cost more. Two threads,
#: default OpenMP wait policy: N = 2000, D = 4, K = 8 took 31 us in parallel and 26 on one thread, N = 8000,
#: D = 2 40 and 39, N = 32000, D = 2 86 and 104. Larger calls stay parallel even on one thread: outside a
#: ``prange`` body each chunk pays reference counts for its rows (N = 1e5, D = 4: 0.495 ms against 0.474).
ONE_PASS_SERIAL_WORK = 2**17
#: Lanes path, D <= 4: tasks per thread (each some chunks of ONE_PASS_LANES points): enough to even out the
#: threads' loads, few enough that the per-call costs of a task stay small.
ONE_PASS_TASKS_PER_THREAD = 4
_LOG2E = 1.0 / math.log(2.0)


@njit(inline="always", **_JIT)
def _weight(q, l, shift, p, qcut):
    """``(w, keep)``: w = nu_k exp(-q_k / 2) = nu_k 2**(q l) (:func:`scaled_pow2`, nu_k folded into ``shift``
    and ``p``) where keep = q < qcut, else exactly 0: where the weight would fall below e**10 times the
    smallest normal number (near subnormal numbers, a microcode assist per SIMD instruction, and
    :func:`scaled_pow2` is not valid there), where q is NaN or infinite, and for nu_k = 0. A weight so small
    is dropped, not clamped: a far component's field times a clamped weight can outweigh the score."""
    keep = q < qcut
    return scaled_pow2(q, l, shift, p, keep), keep


@njit(inline="always", **_JIT)
def _component_2d(mu, h, l, shift, qcut, poly, k):
    """Component k's constants, one tuple of scalars: they stay in registers across the lane loop."""
    return mu[k, 0], mu[k, 1], h[k, 0], h[k, 1], l[k], shift[k], qcut[k], pow2_row(poly, k)


@njit(inline="always", **_JIT)
def _accumulate_2d(x0, x1, c, t, a0, a1):
    r"""One component's share at one point, diagonal C_k: t + w and a - w g, w = nu_k exp(-q_k / 2),
    g = C_k^{-1} z_k / 2 (h = C_k^{-1} / 2), q_k / 2 = z_k . g from the difference z_k = x - gamma mu_k, as in
    the two-pass block; ``l`` = -1 / ln 2 turns it into the power of two."""
    mu0, mu1, h0, h1, l, shift, qcut, p = c
    y0 = x0 - mu0
    y1 = x1 - mu1
    g0 = y0 * h0
    g1 = y1 * h1
    w, keep = _weight(fma(y1, g1, y0 * g0), l, shift, p, qcut)
    # a dropped weight adds nothing, even where g overflowed (0 * inf is NaN): merge-masked FMAs, no extra step
    return t + w, fma(-w, g0, a0) if keep else a0, fma(-w, g1, a1) if keep else a1


@njit(inline="always", **_JIT)
def _accumulate_2d_iso(x0, x1, c, t, a0, a1):
    r""":func:`_accumulate_2d` for C_k = c_k I: q_k = |z_k|^2 / c_k, so the quadratic form needs no product by
    C_k^{-1} (``l`` = -1 / (2 c_k ln 2) scales it) and the field takes one: a - (w h) z_k, h = 1 / (2 c_k)."""
    mu0, mu1, h, _, l, shift, qcut, p = c
    y0 = x0 - mu0
    y1 = x1 - mu1
    w, _ = _weight(fma(y1, y1, y0 * y0), l, shift, p, qcut)
    wh = w * h  # finite and normal for every weight that counts: the kernel takes this form only for such h
    return t + w, fma(-wh, y0, a0), fma(-wh, y1, a1)


@njit(inline="always", **_JIT)
def _component_4d(mu, h, l, shift, qcut, poly, k):
    """:func:`_component_2d` for four coordinates (D = 3 comes padded with a zero one)."""
    return mu[k, 0], mu[k, 1], mu[k, 2], mu[k, 3], h[k, 0], h[k, 1], h[k, 2], h[k, 3], l[k], shift[k], qcut[k], \
        pow2_row(poly, k)


@njit(inline="always", **_JIT)
def _accumulate_4d(x0, x1, x2, x3, c, t, a0, a1, a2, a3):
    """:func:`_accumulate_2d` for four coordinates."""
    mu0, mu1, mu2, mu3, h0, h1, h2, h3, l, shift, qcut, p = c
    y0 = x0 - mu0
    y1 = x1 - mu1
    y2 = x2 - mu2
    y3 = x3 - mu3
    g0 = y0 * h0
    g1 = y1 * h1
    g2 = y2 * h2
    g3 = y3 * h3
    w, keep = _weight(fma(y3, g3, fma(y2, g2, fma(y1, g1, y0 * g0))), l, shift, p, qcut)
    return t + w, fma(-w, g0, a0) if keep else a0, fma(-w, g1, a1) if keep else a1, \
        fma(-w, g2, a2) if keep else a2, fma(-w, g3, a3) if keep else a3


@njit(inline="always", **_JIT)
def _accumulate_4d_iso(x0, x1, x2, x3, c, t, a0, a1, a2, a3):
    """:func:`_accumulate_2d_iso` for four coordinates."""
    mu0, mu1, mu2, mu3, h, _, _, _, l, shift, qcut, p = c
    y0 = x0 - mu0
    y1 = x1 - mu1
    y2 = x2 - mu2
    y3 = x3 - mu3
    w, _ = _weight(fma(y3, y3, fma(y2, y2, fma(y1, y1, y0 * y0))), l, shift, p, qcut)
    wh = w * h
    return t + w, fma(-wh, y0, a0), fma(-wh, y1, a1), fma(-wh, y2, a2), fma(-wh, y3, a3)


@njit(**_JIT)
def _components_2d(gmu, h, l, shift, qcut, poly, iso, n, x0, x1, t, a0, a1):
    """Every component's share at the lanes ``[:n]`` of the rows x0, x1 (D <= 2), added to the rows t, a0, a1;
    four components per lane loop, their constants and the running sums in registers."""
    prefer_wide_vectors()
    K = l.shape[0]
    K4 = K - K % 4
    for k in range(0, K4, 4):
        c0, c1 = _component_2d(gmu, h, l, shift, qcut, poly, k), _component_2d(gmu, h, l, shift, qcut, poly, k + 1)
        c2, c3 = _component_2d(gmu, h, l, shift, qcut, poly, k + 2), _component_2d(gmu, h, l, shift, qcut, poly, k + 3)
        if iso:
            for i in range(n):
                u, v, s, b0, b1 = x0[i], x1[i], t[i], a0[i], a1[i]
                s, b0, b1 = _accumulate_2d_iso(u, v, c0, s, b0, b1)
                s, b0, b1 = _accumulate_2d_iso(u, v, c1, s, b0, b1)
                s, b0, b1 = _accumulate_2d_iso(u, v, c2, s, b0, b1)
                t[i], a0[i], a1[i] = _accumulate_2d_iso(u, v, c3, s, b0, b1)
        else:
            for i in range(n):
                u, v, s, b0, b1 = x0[i], x1[i], t[i], a0[i], a1[i]
                s, b0, b1 = _accumulate_2d(u, v, c0, s, b0, b1)
                s, b0, b1 = _accumulate_2d(u, v, c1, s, b0, b1)
                s, b0, b1 = _accumulate_2d(u, v, c2, s, b0, b1)
                t[i], a0[i], a1[i] = _accumulate_2d(u, v, c3, s, b0, b1)
    for k in range(K4, K):
        c0 = _component_2d(gmu, h, l, shift, qcut, poly, k)
        if iso:
            for i in range(n):
                t[i], a0[i], a1[i] = _accumulate_2d_iso(x0[i], x1[i], c0, t[i], a0[i], a1[i])
        else:
            for i in range(n):
                t[i], a0[i], a1[i] = _accumulate_2d(x0[i], x1[i], c0, t[i], a0[i], a1[i])


@njit(**_JIT)
def _components_4d(gmu, h, l, shift, qcut, poly, iso, n, x0, x1, x2, x3, t, a0, a1, a2, a3):
    """:func:`_components_2d` for four coordinates (D = 3 and 4)."""
    prefer_wide_vectors()
    K = l.shape[0]
    K4 = K - K % 4
    for k in range(0, K4, 4):
        c0, c1 = _component_4d(gmu, h, l, shift, qcut, poly, k), _component_4d(gmu, h, l, shift, qcut, poly, k + 1)
        c2, c3 = _component_4d(gmu, h, l, shift, qcut, poly, k + 2), _component_4d(gmu, h, l, shift, qcut, poly, k + 3)
        if iso:
            for i in range(n):
                u0, u1, u2, u3 = x0[i], x1[i], x2[i], x3[i]
                s, b0, b1, b2, b3 = _accumulate_4d_iso(u0, u1, u2, u3, c0, t[i], a0[i], a1[i], a2[i], a3[i])
                s, b0, b1, b2, b3 = _accumulate_4d_iso(u0, u1, u2, u3, c1, s, b0, b1, b2, b3)
                s, b0, b1, b2, b3 = _accumulate_4d_iso(u0, u1, u2, u3, c2, s, b0, b1, b2, b3)
                t[i], a0[i], a1[i], a2[i], a3[i] = _accumulate_4d_iso(u0, u1, u2, u3, c3, s, b0, b1, b2, b3)
        else:
            for i in range(n):
                u0, u1, u2, u3 = x0[i], x1[i], x2[i], x3[i]
                s, b0, b1, b2, b3 = _accumulate_4d(u0, u1, u2, u3, c0, t[i], a0[i], a1[i], a2[i], a3[i])
                s, b0, b1, b2, b3 = _accumulate_4d(u0, u1, u2, u3, c1, s, b0, b1, b2, b3)
                s, b0, b1, b2, b3 = _accumulate_4d(u0, u1, u2, u3, c2, s, b0, b1, b2, b3)
                t[i], a0[i], a1[i], a2[i], a3[i] = _accumulate_4d(u0, u1, u2, u3, c3, s, b0, b1, b2, b3)
    for k in range(K4, K):
        c0 = _component_4d(gmu, h, l, shift, qcut, poly, k)
        if iso:
            for i in range(n):
                t[i], a0[i], a1[i], a2[i], a3[i] = _accumulate_4d_iso(x0[i], x1[i], x2[i], x3[i], c0, t[i], a0[i],
                                                                      a1[i], a2[i], a3[i])
        else:
            for i in range(n):
                t[i], a0[i], a1[i], a2[i], a3[i] = _accumulate_4d(x0[i], x1[i], x2[i], x3[i], c0, t[i], a0[i], a1[i],
                                                                  a2[i], a3[i])


@njit(inline="always", **_JIT)
def _load_lanes(xf, D, p0, n_lanes, rows, x0, x1, x2, x3):
    """x0[l], .., x{D-1}[l] = the coordinates of point p0 + l of xf (x, C-contiguous, flattened) for the block's
    lanes (D <= 4; the rows past D stay as they are: zero; x0 .. x3 are rows 0 .. 3 of ``rows``). One branch per
    D with a literal stride: LLVM reads the points as one interleaved group (a run-time stride or a loop over j
    would make gathers or keep the copy scalar); at D = 4 a vector's width of points at a time goes through
    ``_numba_gemm.points_to_rows4`` instead (1e5 points, float32, one thread: 0.069 -> 0.037 ms). No
    finiteness test here: a point with a coordinate that is not finite gets no weight, and the caller meets it
    among the far lanes."""
    if D == 2:
        for l in range(n_lanes):
            p = np.uint64(2) * (p0 + np.uint64(l))
            x0[l] = xf[p]
            x1[l] = xf[p + np.uint64(1)]
    elif D == 3:
        for l in range(n_lanes):
            p = np.uint64(3) * (p0 + np.uint64(l))
            x0[l] = xf[p]
            x1[l] = xf[p + np.uint64(1)]
            x2[l] = xf[p + np.uint64(2)]
    elif D == 4:
        V = VECTOR_BYTES // xf.itemsize
        n_vec = n_lanes - n_lanes % V
        for l in range(0, n_vec, V):
            points_to_rows4(xf, p0 + np.uint64(l), rows, 0, l)
        for l in range(n_vec, n_lanes):
            p = np.uint64(4) * (p0 + np.uint64(l))
            x0[l] = xf[p]
            x1[l] = xf[p + np.uint64(1)]
            x2[l] = xf[p + np.uint64(2)]
            x3[l] = xf[p + np.uint64(3)]
    else:
        for l in range(n_lanes):
            x0[l] = xf[p0 + np.uint64(l)]


@njit(inline="always", **_JIT)
def _store_lanes(sf, D, p0, n_lanes, rows, a0, a1, a2, a3, t):
    """The score of the block's lanes, a_j 2 / t (a is half the weighted sum: doubling is exact), into sf (the
    (N, D) score, flattened): :func:`_load_lanes`' copy the other way. The quotient is formed here, once a lane,
    not stored in a row of its own (3% of the D = 4 kernel's time). At D = 4 the products overwrite a0 .. a3
    (rows 5 .. 8 of ``rows``), which ``_numba_gemm.rows_to_points4`` then stores a vector's width of points at
    a time (1e5 points, float32: 0.070 -> 0.062 ms, this scaling pass included)."""
    two = sf.dtype.type(2.0)
    if D == 2:
        for l in range(n_lanes):
            p = np.uint64(2) * (p0 + np.uint64(l))
            r = two / t[l]
            sf[p] = a0[l] * r
            sf[p + np.uint64(1)] = a1[l] * r
    elif D == 3:
        for l in range(n_lanes):
            p = np.uint64(3) * (p0 + np.uint64(l))
            r = two / t[l]
            sf[p] = a0[l] * r
            sf[p + np.uint64(1)] = a1[l] * r
            sf[p + np.uint64(2)] = a2[l] * r
    elif D == 4:
        for l in range(n_lanes):
            r = two / t[l]
            a0[l] *= r
            a1[l] *= r
            a2[l] *= r
            a3[l] *= r
        V = VECTOR_BYTES // sf.itemsize
        n_vec = n_lanes - n_lanes % V
        for l in range(0, n_vec, V):
            rows_to_points4(rows, 5, l, sf, p0 + np.uint64(l))
        for l in range(n_vec, n_lanes):
            p = np.uint64(4) * (p0 + np.uint64(l))
            sf[p] = a0[l]
            sf[p + np.uint64(1)] = a1[l]
            sf[p + np.uint64(2)] = a2[l]
            sf[p + np.uint64(3)] = a3[l]
    else:
        for l in range(n_lanes):
            sf[p0 + np.uint64(l)] = a0[l] * (two / t[l])


@njit(inline="always", **_JIT)
def _redo_far(x, idx, n, mu, ic, ln, want_score, rows, score, logp):
    """The two-pass block's arithmetic (``_score_block``, diagonal C_k; weights below its floor dropped) on the
    points ``idx[:n]`` of x: the ones
    the one-pass kernel left because their weights fell out of its range. They are gathered LANES at a time
    into the first rows of ``rows`` (rows D .. 3 are zeroed, as are their constants), which also hold the
    pass's lane sums: no scratch of K rows, so a task needs none made. mu, ic (K, 4): gamma mu_k and
    C_k^{-1}, zero padded; ln (K,): the log-normalisers. Writes the points' score or log p."""
    D = x.shape[1]
    K = ln.shape[0]
    half, floor = x.dtype.type(0.5), _log_weight_floor(x)
    x0, x1, x2, x3, m, t, a0, a1, a2, a3 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], rows[6], rows[7], \
        rows[8], rows[9]
    for j in range(D, 4):
        for c in range(LANES):
            rows[j, c] = 0.0
    for c0 in range(0, n, LANES):
        nc = min(LANES, n - c0)
        for c in range(nc):
            for j in range(D):
                rows[j, c] = x[idx[c0 + c], j]
            m[c] = -np.inf
            t[c] = 0.0
            a0[c] = 0.0
            a1[c] = 0.0
            a2[c] = 0.0
            a3[c] = 0.0
        for k in range(K):  # pass 1: each point's largest logit
            u0, u1, u2, u3, i0, i1, i2, i3, lk = mu[k, 0], mu[k, 1], mu[k, 2], mu[k, 3], ic[k, 0], ic[k, 1], ic[k, 2], \
                ic[k, 3], ln[k]
            for c in range(nc):
                y0, y1, y2, y3 = x0[c] - u0, x1[c] - u1, x2[c] - u2, x3[c] - u3
                quad = y0 * (y0 * i0)  # the block's order: ((0 + y0 q0) + y1 q1) + ..., the padding adds +0
                quad += y1 * (y1 * i1)
                quad += y2 * (y2 * i2)
                quad += y3 * (y3 * i3)
                lg = lk - half * quad
                m[c] = lg if lg > m[c] else m[c]
        for k in range(K):  # pass 2: the weights relative to it, and their fields
            u0, u1, u2, u3, i0, i1, i2, i3, lk = mu[k, 0], mu[k, 1], mu[k, 2], mu[k, 3], ic[k, 0], ic[k, 1], ic[k, 2], \
                ic[k, 3], ln[k]
            for c in range(nc):
                y0, y1, y2, y3 = x0[c] - u0, x1[c] - u1, x2[c] - u2, x3[c] - u3
                g0, g1, g2, g3 = y0 * i0, y1 * i1, y2 * i2, y3 * i3
                quad = y0 * g0
                quad += y1 * g1
                quad += y2 * g2
                quad += y3 * g3
                d = (lk - half * quad) - m[c]
                if d > floor:  # a weight below the floor is dropped: its field may have overflowed (0 * inf)
                    w = exp_weight(d)
                    t[c] += w
                    a0[c] -= w * g0
                    a1[c] -= w * g1
                    a2[c] -= w * g2
                    a3[c] -= w * g3
        if want_score:  # a point whose every quadratic form overflowed (t = 0): its score, and t = 1
            _far_lanes(rows[:D, :nc], mu, ic, ln, _NO_ROTATION, False, t[:nc], rows[6:6 + D, :nc])
        for c in range(nc):
            i = idx[c0 + c]
            if want_score:
                for j in range(D):
                    score[i, j] = rows[6 + j, c] / t[c]
            else:
                logp[i] = np.float64(m[c]) + _log(np.float64(t[c]))


@njit(inline="always", **_JIT)
def _one_pass(x, log_w, mu, lam, g, v, bits, iso, limit, want_score, lanes, tasks, score, logp):
    r"""``_score_lanes`` for D <= 4, isotropic or diagonal: one pass over the components, in ``tasks`` tasks
    (a ``prange`` loop: :func:`_score_lanes_1pass` runs it on Numba's threads,
    :func:`_score_lanes_1pass_serial` on the calling one).

    Takes the active components' arrays as :func:`mixture_arrays` gives them,
    gamma_t = g, sigma_t^2 = v, b = ``bits`` (:data:`SHIFT_BITS`) and
    ``iso`` (every C_k a multiple of I), and forms its constants with
    :func:`_lane_operands` itself (a separate call from Python cost 9 us, a
    third of a small call). The two-pass block finds each point's largest
    logit before it takes the exps. Here the weights are
    :math:`\nu_k e^{-q_k/2}` with the prior factors
    :math:`\nu_k=e^{\log\nu_k-\text{top}}\,2^b` (``top`` = max_k
    log_norm_k), formed in float64: the logits are formed once, the exp's
    argument is -q_k/2 <= 0 (rounded at q_k's magnitude, as in the block),
    and log p = top + log(t 2^-b), an exact scaling. The weight is
    :func:`scaled_pow2` (a power of two with nu_k folded into its
    polynomial and exponent: no multiply for nu_k or for 2^n); one below
    e**10 times the smallest normal number is exactly 0 (:func:`_weight`).
    Isotropic components (with every 1 / (2 c_k) in :data:`ISO_H_RANGE`)
    form |z_k|^2 and scale the field once. Four components run per lane
    loop, their constants in registers, with t and a, the sums of the
    weights and of -w g, in registers across them; the lane loop takes two
    coordinates (D <= 2) or four (D = 3 and 4; the missing ones are zeros,
    with zero constants). A task is a few chunks of :data:`ONE_PASS_LANES`
    points, each transposed into rows of one array.

    A point whose weights sum below ``limit`` (its best component some 100
    e-folds below the largest log-normaliser in float32: about 14 standard
    deviations from every component at D = 2) joins its task's list and is redone at the
    task's end with the two-pass block's arithmetic (:func:`_redo_far`); so
    is a point with a coordinate that is not finite (its weights are all
    dropped), which is counted instead. Returns that count (the caller
    raises). A task makes its scratch once, and names its rows once: a view
    made inside a loop costs a reference-count pair (two atomic operations),
    which at D = 4 was half the kernel's time when blocks were 64 points. The
    count of non-finite points is kept per task: Numba's ``prange`` reduction
    loses an update made in a loop under a branch of the body (0.68: ``for i
    in prange(n): if c: for j in range(8): s += 1`` returns 0).
    """
    N, D = x.shape
    # the field of a weight, |w g_j| <= 2**bits sqrt(h_j) for h = 1 / (2 c), summed over K, must stay finite:
    # lower the shift for very narrow components (float32: c below about 1e-24), which redoes more points
    h_hi, h_lo = 0.0, math.inf
    for k in range(lam.shape[0]):
        for j in range(lam.shape[1]):
            hk = 0.5 / (g * g * lam[k, j] + v)
            h_hi, h_lo = max(h_hi, hk), min(h_lo, hk)
    h_max = max(1.0, h_hi)
    room = (128 if x.itemsize == 4 else 1024) - 2 - math.log2(lam.shape[0]) - 0.5 * math.log2(h_max)
    # room is -inf where 1 / c overflowed (a subnormal c): as low a shift as any (int(-inf) raises in Python)
    bits = min(bits, int(math.floor(max(room, -1e9))))
    # A weight below W = e**10 tiny is dropped (_weight), and a point stays in this pass while its sum t >= limit.
    # Its score then misses at most K terms 2 W |g| / t, |g| = sqrt(h q / 2) <= sqrt(h_hi Q / 2) with Q the largest
    # q at which a weight can reach W (nu_k <= 2**bits). Those are kept below the dtype's epsilon times
    # sqrt(h_lo), the broadest component's field at one standard deviation, by redoing the points whose t is
    # smaller: beside a narrow component (float32: c = 1e-37, a field of some 1e19) the missed terms were the
    # size of the score itself at t = e**-40. For components of like widths SHIFT_LIMIT is the larger bound.
    log_w_drop = np.log(np.finfo(x.dtype).tiny) + 10.0  # as _lane_operands' cut
    log_eps = np.log(np.finfo(x.dtype).eps)
    q_drop = max(1.0, 2.0 * (bits * math.log(2.0) - log_w_drop))
    need = math.log(2.0 * lam.shape[0]) + log_w_drop + 0.5 * math.log(h_hi * q_drop / (2.0 * h_lo)) - log_eps
    if limit > 0:  # a limit of 0 never redoes (the tests show that a case needs the redo)
        limit = max(limit, x.dtype.type(math.exp(need)))
    means, inv_c, log_norm, nu, cut, top = _lane_operands(log_w, mu, lam, g, v, bits, x)
    K = log_norm.shape[1]
    L = lanes
    dt = x.dtype.type
    gmu = np.zeros((K, 4), x.dtype)
    ic = np.zeros((K, 4), x.dtype)
    h = np.zeros((K, 4), x.dtype)
    el = np.empty(K, x.dtype)
    qcut = np.empty(K, x.dtype)
    shift = np.empty(K, x.dtype)
    poly = np.empty((K, 7 if x.itemsize == 4 else 12), x.dtype)
    pow2_factors(nu, shift, poly)
    h_lo, h_hi = ISO_H_RANGE[0] if x.itemsize == 4 else ISO_H_RANGE[1]
    iso_form = iso
    for k in range(K):
        hk = 0.5 * np.float64(inv_c[0, k, 0])
        iso_form &= h_lo <= hk <= h_hi
    for k in range(K):
        for j in range(D):
            gmu[k, j] = means[0, k, j]
            ic[k, j] = inv_c[0, k, j]
            h[k, j] = dt(0.5) * inv_c[0, k, j]
        # 2**(q l) = exp(-q_k / 2): q = z . (C^{-1} z) / 2 and l = -1 / ln 2, or (isotropic) q = |z|^2, l = -1 / (2 c ln 2)
        el[k] = -0.5 * _LOG2E * np.float64(inv_c[0, k, 0]) if iso_form else -_LOG2E
        qcut[k] = cut[k] * _LOG2E / np.float64(el[k])  # q l > cut_k log2(e): q < qcut (l < 0)
    ln = log_norm[0]
    n_chunks = (N + L - 1) // L
    n_tasks = min(n_chunks, tasks)
    bad = np.zeros(n_tasks, np.int64)
    for task in prange(n_tasks):
        start, stop = task * n_chunks // n_tasks * L, min(N, (task + 1) * n_chunks // n_tasks * L)
        bad[task] = _one_pass_task(x, gmu, ic, h, el, shift, qcut, poly, iso_form, ln, top, bits, limit, want_score,
                                   L, start, stop, score, logp)
    return bad.sum()


@njit(**_JIT)
def _one_pass_task(x, gmu, ic, h, el, shift, qcut, poly, iso_form, ln, top, bits, limit, want_score, L, start, stop,
                   score, logp):
    """Points [start, stop) of :func:`_one_pass` (one task: chunks of L points, then the task's far points);
    returns its count of points that are not finite. A function of its own, called from both kernels' task
    loops, so that Numba's parallel passes see a one-line body and the two kernels share one compiled task
    (inlined, the body was compiled twice, and took most of each kernel's compile time)."""
    N, D = x.shape
    P = 2 if D <= 2 else 4
    bad = 0
    prefer_wide_vectors()
    # a chunk's points, transposed (rows D .. P - 1 zero), then t and a_0 .. a_3 (and a row more for _redo_far):
    # rows of one array of a fixed width, so that LLVM sees the rows a constant stride apart and vectorises
    # without run-time alias checks
    buf = aligned_empty((10, ONE_PASS_ROW), x.dtype)
    x0, x1, x2, x3, t, a0, a1, a2, a3 = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8]
    xf, sf = x.reshape(-1), score.reshape(-1)
    fa = np.empty(stop - start, np.int64)  # the task's far points
    n_far = 0
    for c_start in range(start, stop, L):
        n = min(L, stop - c_start)
        p0 = np.uint64(c_start)
        _load_lanes(xf, D, p0, n, buf, x0, x1, x2, x3)
        for j in range(D, P):
            for i in range(n):
                buf[j, i] = 0.0
        for j in range(4, 5 + P):
            for i in range(n):
                buf[j, i] = 0.0
        if P == 2:
            _components_2d(gmu, h, el, shift, qcut, poly, iso_form, n, x0, x1, t, a0, a1)
        else:
            _components_4d(gmu, h, el, shift, qcut, poly, iso_form, n, x0, x1, x2, x3, t, a0, a1, a2, a3)
        far = False
        if want_score:
            for i in range(n):
                far |= not t[i] >= limit
            _store_lanes(sf, D, p0, n, buf, a0, a1, a2, a3, t)
        else:
            for i in range(n):
                far |= not t[i] >= limit
                logp[p0 + np.uint64(i)] = top + _log_pow2(np.float64(t[i]), -bits)  # t 2**-b may be subnormal
        if far:  # rare: lanes whose weights left the range, or whose x is not finite (all weights dropped)
            for c0 in range(0, n, LANES):  # a vectorised test per LANES lanes, a scalar one only where it found some
                c1 = min(c0 + LANES, n)
                some = False
                for i in range(c0, c1):
                    some |= not t[i] >= limit
                if some:
                    for i in range(c0, c1):
                        if not t[i] >= limit:
                            finite = True
                            for j in range(D):
                                finite &= np.isfinite(buf[j, i])
                            bad += not finite
                            if finite:
                                fa[n_far] = c_start + i
                                n_far += 1
    if n_far:
        _redo_far(x, fa, n_far, gmu, ic, ln, want_score, buf, score, logp)
    return bad


@njit(parallel=True, **_JIT)
def _score_lanes_1pass(x, log_w, mu, lam, g, v, bits, iso, limit, want_score, lanes, tasks, score, logp):
    """:func:`_one_pass` with its tasks on Numba's threads."""
    return _one_pass(x, log_w, mu, lam, g, v, bits, iso, limit, want_score, lanes, tasks, score, logp)


@njit(**_JIT)
def _score_lanes_1pass_serial(x, log_w, mu, lam, g, v, bits, iso, limit, want_score, lanes, tasks, score, logp):
    """:func:`_one_pass` on the calling thread, for calls too small to repay waking the others
    (:data:`ONE_PASS_SERIAL_WORK`); ``_evaluate`` gives it one task, so that it makes its scratch once."""
    return _one_pass(x, log_w, mu, lam, g, v, bits, iso, limit, want_score, lanes, tasks, score, logp)


# --------------------------------------------------------------------------- gemm: BLAS quadratic forms
@njit(inline="always", **_JIT)
def _dot_rows(A, B, C, rows):
    """C = A @ B by BLAS, ``rows`` rows of A at a time (each call small enough to stay on the calling thread)."""
    for r0 in range(0, A.shape[0], rows):
        np.dot(A[r0 : r0 + rows], B, C[r0 : r0 + rows])


@njit(inline="always", **_JIT)
def _dot_tn(W, A, P, tmp, rows):
    """P = W.T @ A by BLAS, summed over slices of ``rows`` rows of W and A (the inner dimension)."""
    np.dot(W[0:rows].T, A[0:rows], P)
    for r0 in range(rows, W.shape[0], rows):
        np.dot(W[r0 : r0 + rows].T, A[r0 : r0 + rows], tmp)
        P += tmp


@njit(inline="always", **_JIT)
def _transpose_into(src, s0, k, m, dst, d0):
    """dst[d0 + b, a] = src[s0 + a, b] for a < k, b < m: square tiles, then the ragged edges one entry at a time.
    Offsets rather than views: a view made per block costs a pair of atomic reference counts.

    Where Numba compiles for wide vectors (:data:`SHUFFLE_TILES`) a tile is
    one vector wide and goes through the shuffles of
    :func:`~refdiff.kernels._numba_gemm.transpose_tile`; elsewhere it is
    8 x 8, constant trip counts that LLVM unrolls into scalar copies.

    The GEMM path's block comes in this way, (points, D) to (D, points), and
    its score goes out the same way back. A whole-block transpose is cheaper
    than handing BLAS the row-major block as a transposed operand (measured
    1.8x slower products at D = 16)."""
    V = VECTOR_BYTES // dst.itemsize if SHUFFLE_TILES else 8
    kv, mv = k // V * V, m // V * V
    for a0 in range(0, kv, V):
        for b0 in range(0, mv, V):
            if SHUFFLE_TILES:
                transpose_tile(src, s0 + a0, b0, dst, d0 + b0, a0)
            else:
                for a in range(8):
                    for b in range(8):
                        dst[d0 + b0 + b, a0 + a] = src[s0 + a0 + a, b0 + b]
        for a in range(V):
            for b in range(mv, m):
                dst[d0 + b, a0 + a] = src[s0 + a0 + a, b]
    for a in range(kv, k):
        for b in range(m):
            dst[d0 + b, a] = src[s0 + a, b]


@njit(inline="always", **_JIT)
def _rows_out(D, itemsize):
    """Whether the GEMM path's second product by tiles lands in the score's rows: where D fills whole tiles of two
    vectors (32 float32 or 16 float64 with AVX-512; 16 or 8 with AVX2). Other D keep the (D, points) layout, whose
    tiles run over the points (at D = 16 with AVX-512 a rows layout would be half tiles; it was not measured).
    AVX-512, float32, 2 threads, old against
    new in one process: 1.09 against 1.04 ms at D = 64, K = 128, N = 1e4; 0.785 against 0.722 at D = 32,
    K = 64, N = 2e4."""
    return D % (TILE_VECTORS * VECTOR_BYTES // itemsize) == 0


@njit(inline="always", **_JIT)
def _copy_lanes(src, dst, L):
    """dst[:, :L] = src[:, :L], row by row."""
    for k in range(src.shape[0]):
        for l in range(L):
            dst[k, l] = src[k, l]


@njit(inline="always", **_JIT)
def _logit_cell(g, ck, ek, bk, hk, kappa2, x2l, ml, gl):
    """One entry of :func:`_logit_pass`: ``(l, max(m, l), min(gap, margin))`` from the product's entry g."""
    lg = ck + g - hk * x2l
    margin = ek - kappa2 * lg - bk * x2l
    return lg, lg if lg > ml else ml, margin if margin < gl else gl


@njit(inline="always", **_JIT)
def _logit_pass(G, logit, L, c, e, b, h, kappa2, x2, m, gap):
    """The GEMM path's logits l_k = c_k + G_k - h_k |x|^2 from the first product G into ``logit``, with each
    lane's largest (m) and the least margin of its error test (gap), lanes ``[:L]``.

    Four components per lane loop, m and gap in registers across them. This
    vectorises only where ``logit``'s rows lie a compile-time constant apart
    (rows of :data:`GEMM_ROW`); at a run-time width the four written rows
    need alias checks that LLVM gives up on, and the loop stayed scalar (4.6
    against 1.0 ms at D = 64, K = 128). G is only read, so its width may be
    any. Each lane still meets the components in ascending k, as with one per
    loop, so the results (NaN logits included) are the same bits."""
    K = G.shape[0]
    K4 = K - K % 4
    for k in range(0, K4, 4):
        c0, c1, c2, c3 = c[k], c[k + 1], c[k + 2], c[k + 3]
        e0, e1, e2, e3 = e[k], e[k + 1], e[k + 2], e[k + 3]
        b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        for l in range(L):
            x2l, ml, gl = x2[l], m[l], gap[l]
            logit[k, l], ml, gl = _logit_cell(G[k, l], c0, e0, b0, h0, kappa2, x2l, ml, gl)
            logit[k + 1, l], ml, gl = _logit_cell(G[k + 1, l], c1, e1, b1, h1, kappa2, x2l, ml, gl)
            logit[k + 2, l], ml, gl = _logit_cell(G[k + 2, l], c2, e2, b2, h2, kappa2, x2l, ml, gl)
            logit[k + 3, l], m[l], gap[l] = _logit_cell(G[k + 3, l], c3, e3, b3, h3, kappa2, x2l, ml, gl)
    for k in range(K4, K):
        ck, ek, bk, hk = c[k], e[k], b[k], h[k]
        for l in range(L):
            logit[k, l], m[l], gap[l] = _logit_cell(G[k, l], ck, ek, bk, hk, kappa2, x2[l], m[l], gap[l])


@njit(inline="always", **_JIT)
def _weight_cell(lg, ml, cut, zero, sk, t, u):
    """One entry of :func:`_weight_pass`: ``(w, t + w, u + w s_k)``, w = exp(l - m), dropped (exactly 0) below
    exp(cut) rather than raised to it (:func:`_weight_floor`); exp_weight clamps its argument: never subnormal."""
    dl = lg - ml
    e = exp_weight(dl)  # on every lane: in a branch, what follows it was vectorised with masked stores
    w = e if dl > cut else zero
    return w, t + w, u + w * sk


@njit(inline="always", **_JIT)
def _weight_pass(logit, L, s0, cut, zero, m, tot, ts):
    """The GEMM path's unnormalised weights w_k = exp(l_k - m) <= 1 in place of the logits, and their sums over
    k, tot and ts (weighted by s_k: the isotropic score's x-term), lanes ``[:L]``; four components per lane
    loop, as in :func:`_logit_pass`. The sums still run over k in order."""
    K = logit.shape[0]
    K4 = K - K % 4
    for k in range(0, K4, 4):
        s_0, s_1, s_2, s_3 = s0[k], s0[k + 1], s0[k + 2], s0[k + 3]
        for l in range(L):
            ml, t, u = m[l], tot[l], ts[l]
            logit[k, l], t, u = _weight_cell(logit[k, l], ml, cut, zero, s_0, t, u)
            logit[k + 1, l], t, u = _weight_cell(logit[k + 1, l], ml, cut, zero, s_1, t, u)
            logit[k + 2, l], t, u = _weight_cell(logit[k + 2, l], ml, cut, zero, s_2, t, u)
            logit[k + 3, l], tot[l], ts[l] = _weight_cell(logit[k + 3, l], ml, cut, zero, s_3, t, u)
    for k in range(K4, K):
        sk = s0[k]
        for l in range(L):
            logit[k, l], tot[l], ts[l] = _weight_cell(logit[k, l], m[l], cut, zero, sk, tot[l], ts[l])


@njit(parallel=True, **_JIT)
def _score_gemm(x, M1, A, B, s_iso, gmu, s, const, kc, want_score, lanes, by_fma, score, logp):
    """The GEMM path: per block of ``lanes`` points, G = M1 @ [x; x^2]^T and P = W^T @ A, in x's dtype.

    ``by_fma``: both products by ``tile_matmul`` instead of BLAS (see
    :func:`gemm_products`). The second lands straight in the block's rows of
    ``score`` (W^T A, (points, D)) where D fills whole tiles
    (:func:`_rows_out`); otherwise it is P^T = A^T W, (D, points), so that
    the score is formed over the points and stored by
    :func:`_transpose_into`. Either way each entry is the same sum in the same
    order, so the two give the same bits.

    x (N, D); M1 (K, E): rows a_k = s_k * gmu_k (isotropic, ``s_iso``, E = D)
    or [a_k, -s_k / 2] (diagonal, E = 2 D: the block is augmented with its
    squares), so that the logit is l_k = c_k + G_k - h_k |x|^2; A (K, D) the
    a_k; B (K, D) the s_k (diagonal; the second product for the x-term) or
    a (1, D) placeholder (isotropic: that term is the per-point sum of
    w_k s_k, accumulated with the weights). gmu (K, D), s = 1/c (K, D) and const (K,)
    float64, for the exact recomputation. ``kc`` (7, >= max(K, 4)) in x's
    dtype, from :func:`_gemm_operands`: c_k = const_k - q2_k / 2 (q2_k =
    sum_d s_kd gmu_kd^2), e_k = kappa (2 const_k + D) - 2 q2_k, b_k = 2 max_d
    s_kd, h_k (s_k / 2 isotropic, 0 diagonal), s_k (isotropic), e_k with
    SCORE_KAPPA, and in kc[6, :4] 2 kappa, the log-weight below which a
    weight is dropped (:func:`_weight_floor`), 1 and 2 SCORE_KAPPA (constants in x's dtype: a
    Python float would promote float32 arithmetic to float64).

    A logit is suspect (recomputed from the difference, in float64) where
    b_k |x|^2 + 2 q2_k > kappa (q_k + D), q_k = 2 (const_k - l_k) its
    quadratic form, i.e. where e_k - 2 kappa l_k - b_k |x|^2 < 0: pass 1
    keeps that margin's minimum over k per lane (a lane-wise min vectorises;
    a reduction over lanes would not), and only lanes with a negative minimum
    are revisited, component by component. The same margin with SCORE_KAPPA
    marks the points whose score is summed from the differences (it implies
    the first, so only the revisited lanes take it).

    The first product lands in a (K, L) array; the logits, and then the
    weights in their place, in rows of the fixed width :data:`GEMM_ROW`,
    whose passes take four components per lane loop (:func:`_logit_pass`,
    :func:`_weight_pass`; D = 64, K = 128, N = 1e4: 0.95 against 1.02 ms,
    D = 16, K = 32, N = 1e5: 1.32 against 1.48, float32, 2 threads). BLAS's
    second product takes a copy of the weights as whole rows.

    Writes score (N, D) if ``want_score``, else logp (N,); returns the number
    of points whose |x|^2 is not finite (NaN or infinity in x, or an
    overflow: the caller tells the two apart). Every BLAS call is
    kept below :data:`GEMM_BLOCK_WORK` multiply-adds so that it runs on the
    calling thread (``prange`` is the only parallel layer): the first product
    in slices of M1's rows, the second summed over slices of the components.
    ``lanes`` is at most :data:`GEMM_ROW` (raises otherwise: the scratch rows are that wide).
    """
    N, D = x.shape
    K, E = M1.shape
    L = lanes
    if not 0 < L <= GEMM_ROW:
        raise ValueError("the GEMM path's lanes must lie in [1, GEMM_ROW]")
    n_blocks = (N + L - 1) // L
    per_task = max(1, min(BLOCKS_PER_TASK, n_blocks // 16))  # at least 16 tasks where there are 16 blocks
    n_tasks = (n_blocks + per_task - 1) // per_task
    n_bad = 0
    rows_out = by_fma and _rows_out(D, x.itemsize)
    At = np.ascontiguousarray(A.T) if by_fma and not rows_out else A[:0]  # the second product's operands as (D, K)
    Bt = np.ascontiguousarray(B.T) if by_fma and not rows_out and not s_iso else B[:0]
    for task in prange(n_tasks):
        n_bad += _gemm_task(x, M1, A, B, At, Bt, s_iso, gmu, s, const, kc, want_score, L, by_fma, rows_out,
                            task * per_task, min(n_blocks, (task + 1) * per_task), score, logp)
    return n_bad


@njit(**_JIT)
def _gemm_task(x, M1, A, B, At, Bt, s_iso, gmu, s, const, kc, want_score, L, by_fma, rows_out, blk0, blk1, score, logp):
    """Blocks [blk0, blk1) of :func:`_score_gemm` (one ``prange`` task; its arguments as there, with At and Bt the
    second product's operands as (D, K)); returns the task's count of points to redo. A function of its own, not
    the loop's body, so that Numba's parallel passes analyse a one-line body: inlined there (with the tile product
    inlined too), the task took most of the kernel's compile time (float32, AVX2: 108 against 38 s for the first
    call)."""
    N, D = x.shape
    K, E = M1.shape
    c, e, b, h, s0, e_s = kc[0], kc[1], kc[2], kc[3], kc[4], kc[5]
    kappa2, cut, one, kappa2_s = kc[6, 0], kc[6, 1], kc[6, 2], kc[6, 3]
    zero = one - one
    rows1 = max(1, GEMM_BLOCK_WORK // (E * L))
    rows2 = max(1, GEMM_BLOCK_WORK // (D * L))
    big = np.finfo(x.dtype).max
    n_bad = 0
    prefer_wide_vectors()
    xs = np.zeros((E, L), x.dtype)  # the block, transposed (and its squares below it, diagonal)
    G = np.zeros((K, L), x.dtype)  # the first product (and BLAS's operand of the second)
    logit = np.zeros((K, GEMM_ROW), x.dtype)  # the logits, then the weights: lanes [:L] of fixed-width rows
    per_lane = np.zeros((5, GEMM_ROW), x.dtype)
    P = np.zeros((D, L) if by_fma and not rows_out else (0 if rows_out else L, D), x.dtype)  # sum_k w_k s_k gmu_k
    acc = np.zeros(D)
    Q = np.zeros((D, L) if by_fma and not rows_out else (0 if rows_out and s_iso else L, D), x.dtype)
    tmp = np.zeros((0 if by_fma else L, D), x.dtype)  # BLAS's partial products
    x2, gap = per_lane[0], per_lane[1]  # gap: per lane, min over k of e_k - 2 kappa l_k - b_k |x|^2
    redo = np.zeros(L, np.bool_)  # points whose score is summed from the differences
    m, tot, ts = per_lane[2], per_lane[3], per_lane[4]
    rcp = np.zeros(L if by_fma and not rows_out else 0, x.dtype)  # 1 / tot, (D, points) layout only
    for blk in range(blk0, blk1):
        p0 = blk * L
        n_lanes = min(L, N - p0)
        _transpose_into(x, p0, n_lanes, D, xs, 0)
        for j in range(D):
            for l in range(n_lanes, L):
                xs[j, l] = 0.0
        for l in range(L):
            x2[l] = 0.0
            gap[l] = one
            redo[l] = False
            m[l] = -np.inf
            tot[l] = 0.0
            ts[l] = 0.0
        for j in range(D):
            for l in range(L):
                x2[l] += xs[j, l] * xs[j, l]
        for l in range(n_lanes):
            n_bad += np.int64(not x2[l] <= big)
        if not s_iso:
            for j in range(D):
                for l in range(L):
                    xs[D + j, l] = xs[j, l] * xs[j, l]
        if by_fma:
            tile_matmul(M1, xs, G)
        else:
            _dot_rows(M1, xs, G, rows1)
        _logit_pass(G, logit, L, c, e, b, h, kappa2, x2, m, gap)
        for l in range(n_lanes):
            if not gap[l] < 0:
                continue
            mx = -np.inf
            for k in range(K):
                bx = b[k] * x2[l]
                # the score's test implies the logit's (SCORE_KAPPA >= REFINE_KAPPA): only these lanes need it
                redo[l] |= e_s[k] - kappa2_s * logit[k, l] - bx < 0
                if e[k] - kappa2 * logit[k, l] - bx < 0:
                    qk = 0.0
                    for j in range(D):
                        zj = x[p0 + l, j] - gmu[k, j]
                        qk += zj * (zj * s[k, j])
                    logit[k, l] = const[k] - qk / 2
                mx = max(mx, logit[k, l])
            m[l] = mx
        # unnormalised weights and their sums: the score divides by the sum once, after the product
        _weight_pass(logit, L, s0, cut, zero, m, tot, ts)
        for l in range(n_lanes):  # every q_k overflowed (no weight left): the caller redoes the point
            n_bad += np.int64(tot[l] == 0)
        if not want_score:
            for l in range(n_lanes):
                logp[p0 + l] = np.float64(m[l]) + _log(np.float64(tot[l]))
            continue
        if rows_out:  # (points, D): sum_k w_k s_k gmu_k straight into the block's rows of score
            sc = score[p0 : p0 + n_lanes]
            wt = logit[:, :n_lanes].T
            tile_matmul(wt, A, sc)
            if not s_iso:
                tile_matmul(wt, B, Q[:n_lanes])  # sum_k w_k s_k, per axis
            for l in range(n_lanes):
                r = one / tot[l]
                if s_iso:
                    t_l = ts[l]
                    for j in range(D):
                        sc[l, j] = (sc[l, j] - x[p0 + l, j] * t_l) * r
                else:
                    for j in range(D):
                        sc[l, j] = (sc[l, j] - x[p0 + l, j] * Q[l, j]) * r
        elif by_fma:  # (D, points): the loops run over the points, and the block goes out as it came in
            tile_matmul(At, logit, P)  # sum_k w_k s_k gmu_k
            for l in range(L):
                rcp[l] = one / tot[l]
            if s_iso:
                for j in range(D):
                    for l in range(L):
                        P[j, l] = (P[j, l] - xs[j, l] * ts[l]) * rcp[l]
            else:
                tile_matmul(Bt, logit, Q)  # sum_k w_k s_k, per axis
                for j in range(D):
                    for l in range(L):
                        P[j, l] = (P[j, l] - xs[j, l] * Q[j, l]) * rcp[l]
            _transpose_into(P, 0, D, n_lanes, score, p0)
        else:  # BLAS
            _copy_lanes(logit, G, L)  # BLAS takes whole contiguous rows
            _dot_tn(G, A, P, tmp, rows2)  # sum_k w_k s_k gmu_k
            if s_iso:
                for l in range(n_lanes):
                    r, t_l = one / tot[l], ts[l]
                    for j in range(D):
                        score[p0 + l, j] = (P[l, j] - x[p0 + l, j] * t_l) * r
            else:
                _dot_tn(G, B, Q, tmp, rows2)  # sum_k w_k s_k, per axis
                for l in range(n_lanes):
                    r = one / tot[l]
                    for j in range(D):
                        score[p0 + l, j] = (P[l, j] - x[p0 + l, j] * Q[l, j]) * r
        # far from the origin and near the means, sum_k w_k s_k gmu_k - x sum_k w_k s_k cancels as the
        # logits did: where it loses more than 5 bits (SCORE_KAPPA) the score comes from the differences
        for l in range(n_lanes):
            if redo[l]:
                _score_from_differences(x, p0 + l, logit, l, gmu, s, tot[l], acc, score)
    return n_bad


@njit(inline="always", **_JIT)
def _score_from_differences(x, p, W, l, gmu, s, tot, acc, score):
    """score[p] = sum_k W[k, l] s_k (gmu_k - x_p) / tot, accumulated in float64 (acc: (D,) float64 scratch)."""
    D = x.shape[1]
    for j in range(D):
        acc[j] = 0.0
    for k in range(W.shape[0]):
        w = np.float64(W[k, l])
        for j in range(D):
            acc[j] += w * (s[k, j] * (gmu[k, j] - x[p, j]))
    for j in range(D):
        score[p, j] = acc[j] / np.float64(tot)


@njit(inline="always", **_JIT)
def _weight_floor(tiny, K):
    """log-weight floor log(tiny) + log K + 20 of the GEMM path: a weight below it is dropped (0), so every weight
    kept, its share of the sum and that times a moderate factor stay normal numbers. A subnormal operand costs
    a microcode assist per SIMD instruction (the D = 64, K = 128 score ran 1.5x slower without it); a dropped
    weight is below 1e-26 of the largest in float32 (1e-290 in float64), far under the dtype's rounding. It
    is dropped, not raised to the floor: times a narrow component's s_k (1e30 at a variance of 1e-30) a
    raised weight outweighed the score."""
    return np.log(tiny) + np.log(K) + 20.0


@njit(**_JIT)
def _gemm_operands(log_w, mu, lam, g, v, kappa, kappa_s, isotropic, x):
    """Everything :func:`_score_gemm` takes besides the points, in one compiled call (as NumPy
    expressions these were some 20 small array operations, 65 us a call):
    ``(M1, A, B, kc)`` in x's dtype and ``(gmu, s, const)`` in float64, from the
    active components' log w_k, means and eigenvalues (K, D) and the process's
    gamma_t = g, sigma_t^2 = v, and whether M1, A, B and kc's rows 0, 2, 3, 4
    are finite in x's dtype. ``kappa`` and ``kappa_s`` are :data:`REFINE_KAPPA`
    and :data:`SCORE_KAPPA`; ``inf`` never refines (the tests use it to show a
    case needs refining)."""
    K, D = mu.shape
    dt = x.dtype
    finite = np.isfinite(kappa)
    E = D if isotropic else 2 * D
    gmu = np.empty((K, D))
    s = np.empty((K, D))
    const = np.empty(K)
    M1 = np.empty((K, E), dt)
    A = np.empty((K, D), dt)
    B = np.empty((K, D), dt) if not isotropic else np.zeros((1, D), dt)  # unread for isotropic components
    kc = np.zeros((7, max(K, 4)), dt)  # row 6 holds four scalars
    c = np.empty(D)  # eigenvalues of C_k
    log_c = np.empty(D)
    for k in range(K):
        for d in range(D):
            c[d] = g * g * lam[k, d] + v
        if isotropic:  # one log (a K x D loop of libm logs took 40 us at D = 64, K = 128)
            logdet = D * np.log(c[0])
        else:
            for d in range(D):
                log_c[d] = _log(c[d])  # the lane log: this loop vectorises
            logdet = 0.0
            for d in range(D):
                logdet += log_c[d]
        for d in range(D):  # apart from the sums below, the quotients vectorise (a third of the call at D = 64)
            s[k, d] = 1.0 / c[d]
        q2, smax = 0.0, 0.0
        for d in range(D):
            gm = g * mu[k, d]
            sk = s[k, d]
            ak = sk * gm
            gmu[k, d] = gm
            q2 += ak * gm
            smax = max(smax, sk)
            A[k, d] = ak
            M1[k, d] = ak
            if not isotropic:
                M1[k, D + d] = -0.5 * sk
                B[k, d] = sk
        const[k] = log_w[k] - 0.5 * (D * _LOG_2PI + logdet)
        kc[0, k] = const[k] - 0.5 * q2
        kc[1, k] = kappa * (2.0 * const[k] + D) - 2.0 * q2 if finite else np.inf
        kc[2, k] = 2.0 * smax
        kc[3, k] = 0.5 * s[k, 0] if isotropic else 0.0
        kc[4, k] = s[k, 0]
        kc[5, k] = kappa_s * (2.0 * const[k] + D) - 2.0 * q2 if np.isfinite(kappa_s) else np.inf
    kc[6, 0] = 2.0 * kappa if finite else 0.0
    kc[6, 1] = _weight_floor(np.finfo(dt).tiny, K)
    kc[6, 2] = 1.0
    kc[6, 3] = 2.0 * kappa_s if np.isfinite(kappa_s) else 0.0
    finite_ops = np.isfinite(M1).all() and np.isfinite(A).all() and np.isfinite(B).all()
    for row in (0, 2, 3, 4):
        finite_ops = finite_ops and np.isfinite(kc[row]).all()
    return M1, A, B, kc, gmu, s, const, finite_ops


@njit(**_JIT)
def _lane_operands(log_w, mu, lam, g, v, bits, x):
    """The lane kernels' constants in one compiled call, from the active components' log w_k, means and
    eigenvalues (K, D) and gamma_t = g, sigma_t^2 = v: ``(means, inv_c, log_norm)`` as (1, K, D), (1, K, D),
    (1, K) in x's dtype (gamma mu_k, 1 / c_k, log w_k - (D log 2 pi + sum log c_k) / 2), and for the one-pass
    kernel ``nu`` and ``cut`` (K,) and ``top``, in float64: nu_k = exp(log_norm_k - top) 2**bits,
    top = max_k log_norm_k, and cut_k the exponent at or below which :func:`_weight` drops the weight: where
    nu_k exp(cut_k) would fall below e**10 times x's smallest normal number."""
    K, D = mu.shape
    means = np.empty((1, K, D), x.dtype)
    inv_c = np.empty((1, K, D), x.dtype)
    log_norm = np.empty((1, K), x.dtype)
    const = np.empty(K)
    for k in range(K):
        logdet = 0.0
        for d in range(D):
            c = g * g * lam[k, d] + v
            logdet += np.log(c)
            means[0, k, d] = g * mu[k, d]
            inv_c[0, k, d] = 1.0 / c
        const[k] = log_w[k] - 0.5 * (D * _LOG_2PI + logdet)
        log_norm[0, k] = const[k]
    top = const.max()
    nu = np.empty(K)
    cut = np.empty(K)
    log_tiny = np.log(np.finfo(x.dtype).tiny)
    for k in range(K):
        d = const[k] - top
        log_nu = d + bits * math.log(2.0)
        # nu_k = e**d 2**bits as e**r 2**(bits + n), d = n ln 2 + r (Cody-Waite): e**d alone is subnormal below
        # d = -708 and 0 below -745, yet in float64 a component down to some e**-1200 of the largest may
        # dominate a point that is not redone (SHIFT_LIMIT); below n = -4000 nu_k is 0 in any dtype
        n = max(np.round(d * _INVLN2), -4000.0)
        nu[k] = np.ldexp(np.exp((d - n * _LN2_HI) - n * _LN2_LO), bits + int(n))
        cut[k] = log_tiny + 10.0 - log_nu if nu[k] > 0 else np.inf
    return means, inv_c, log_norm, nu, cut, top


def gemm_lanes(K, E):
    """Points per block of the GEMM path: as many as keep the first product one BLAS call of at most
    :data:`GEMM_BLOCK_WORK` (best measured: 128 at D = 16, K = 32; 32 at D = 64, K = 128), at most
    :data:`BLAS_MAX_LANES` and at least 8; 0 where a slice of 8 points by one row would exceed it (the path
    does not apply)."""
    if 8 * E > GEMM_BLOCK_WORK:
        return 0
    return max(8, min(BLAS_MAX_LANES, GEMM_BLOCK_WORK // (K * E) // 8 * 8))


# --------------------------------------------------------------------------- one t per particle
@njit(**_JIT)
def mixture_score_point(x, g, v, log_w, mu, lam, U, kind, out, work):
    """Score (into ``out``) and log-density (returned) of the diffused mixture at one point; see the module docstring."""
    D = x.shape[0]
    K = log_w.shape[0]
    q = work  # C_k^{-1} z in eigen coordinates, (D,)
    for d in range(D):
        out[d] = 0.0
    m = -np.inf
    total = 0.0
    g2 = g * g
    for k in range(K):
        quad = 0.0
        logdet = 0.0
        if kind == _FULL:
            for e in range(D):
                ye = 0.0
                for d in range(D):
                    ye += U[k, d, e] * (x[d] - g * mu[k, d])
                c = g2 * lam[k, e] + v
                q[e] = ye / c
                quad += ye * q[e]
                logdet += math.log(c)
        else:
            c0 = g2 * lam[k, 0] + v
            if kind == _ISOTROPIC:
                logdet = D * math.log(c0)
            for d in range(D):
                c = c0 if kind == _ISOTROPIC else g2 * lam[k, d] + v
                zd = x[d] - g * mu[k, d]
                q[d] = zd / c
                quad += zd * q[d]
                if kind == _DIAGONAL:
                    logdet += math.log(c)
        logit = log_w[k] - 0.5 * (D * _LOG_2PI + logdet) - 0.5 * quad
        if not logit > -np.inf:  # a zero weight (w_k = 0, or q_k = inf) adds exactly 0, even where q overflowed
            continue
        # online log-sum-exp: rescale what was accumulated to the new running max
        if logit > m:
            a, b = math.exp(m - logit), 1.0
            m = logit
        else:
            a, b = 1.0, math.exp(logit - m)
            if b == 0.0:  # as above: an underflowed weight times an overflowed field would be 0 * inf
                continue
        total = total * a + b
        if kind == _FULL:
            for d in range(D):
                s = 0.0
                for e in range(D):
                    s += U[k, d, e] * q[e]
                out[d] = out[d] * a - b * s
        else:
            for d in range(D):
                out[d] = out[d] * a - b * q[d]
    if total == 0.0:  # every quadratic form overflowed: log p = -inf, the score finite
        _far_score_point(x, g, v, log_w, mu, lam, U, kind, out)
        return -np.inf
    for d in range(D):
        out[d] /= total
    return m + math.log(total)


@njit(**_JIT)
def _far_score_point(x, g, v, log_w, mu, lam, U, kind, out):
    """:func:`_far_score` from :func:`mixture_score_point`'s arguments (its constants made here, in float64)."""
    K, D = mu.shape
    gmu, ic, ln, pt = np.empty((K, D)), np.empty((K, D)), np.empty(K), np.empty(D)
    for k in range(K):
        logdet = 0.0
        for d in range(D):
            c = g * g * lam[k, d] + v
            logdet += math.log(c)
            gmu[k, d] = g * mu[k, d]
            ic[k, d] = 1.0 / c
        ln[k] = log_w[k] - 0.5 * (D * _LOG_2PI + logdet)
    for d in range(D):
        pt[d] = x[d]
    _far_score(pt, gmu, ic, U, kind == _FULL, ln, out)


@njit(parallel=True, **_JIT)
def _score_pointwise(x, gamma, var, log_w, mu, lam, U, kind, want_score, score, logp):
    """One t per particle: gamma, var (N,) float64; calls :func:`mixture_score_point` per particle."""
    N, D = x.shape
    B = LANES
    n_blocks = (N + B - 1) // B
    for ib in prange(n_blocks):
        out = np.empty(D)
        work = np.empty(D)
        for n in range(ib * B, min(N, ib * B + B)):
            logp[n] = mixture_score_point(x[n], gamma[n], var[n], log_w, mu, lam, U, kind, out, work)
            if want_score:
                for d in range(D):
                    score[n, d] = out[d]


# --------------------------------------------------------------------------- host side
def mixture_arrays(mixture):
    """``(log_w, mu, lam, U, kind)`` float64 arrays of the active components, as :func:`mixture_score_point` takes them."""
    log_w, mu, lam, U = mixture._active_arrays
    kind = {"isotropic": _ISOTROPIC, "diagonal": _DIAGONAL, "full": _FULL}[mixture.kind]
    return log_w, mu, lam, _NO_ROTATION if U is None else U, kind


def gemm_products(environ=None, wide=None) -> str:
    """How the GEMM path forms its two products: ``"fma"`` (:func:`~refdiff.kernels._numba_gemm.tile_matmul`, the
    kernel's own register-tiled FMA loops) or ``"blas"`` (NumPy's BLAS, from inside the kernel).

    ``"fma"`` where Numba compiles for 512-bit vectors, or 256-bit ones with
    FMA (``wide``, default: ``_numba_gemm.compiles_tiles`` of ``environ``,
    default ``os.environ``); the tiles are 8 rows by two vectors with AVX-512,
    6 by two with AVX2 (``_numba_gemm.tile_shape``). With AVX-512 they run at
    up to the core's FMA peak (175-256 GFLOP/s a thread, float32, at the
    path's shapes, the short inner loops of D = 16 at the slow end); OpenBLAS
    ran 55-106 there with ``OPENBLAS_CORETYPE=Haswell`` and 168-248 with its
    own AVX-512 kernels. The float32 score, two threads: D = 16, K = 32,
    N = 1e5 1.45-1.55 ms by the tiles, 1.47 by OpenBLAS's AVX-512 kernels,
    2.8-3.2 by its Haswell ones; D = 64, K = 128, N = 1e4 1.08-1.13, 1.14
    and 2.7. On an AVX2 CPU (Zen 3, peak 93 GFLOP/s a thread) the tiles made
    82-95 GFLOP/s at these shapes, OpenBLAS 80-84 in one call, and the score
    took 3.2-3.7 ms by the tiles against 7.0 by BLAS at D = 16 and 2.9-3.7
    against 5.4 at D = 64 (minima of runs, one process, alternating; the
    README's bench medians, 3.59 and 3.78, are of another run on the same
    noisy VM). Elsewhere ``"blas"``.
    The two differ in rounding only (both round every term in x's dtype;
    BLAS may add partial sums in another order).
    """
    return "fma" if (compiles_tiles(environ) if wide is None else wide) else "blas"


#: :func:`gemm_products` of this process.
GEMM_PRODUCTS = gemm_products()


def choose_path(kind, dtype, K, D, per_example_t):
    """Which kernel evaluates a call: "pointwise", "gemm" or "lanes" (see the module docstring)."""
    if per_example_t:
        return "pointwise"
    if kind != _FULL and D > ONE_PASS_MAX_D and K * D >= GEMM_MIN_KD and gemm_lanes(K, D if kind == _ISOTROPIC else 2 * D):
        return "gemm"
    return "lanes"


def _quiet():
    """Silence NumPy's floating-point warnings where a kernel runs as plain Python (``NUMBA_DISABLE_JIT=1``: NumPy
    scalars warn on the NaN, overflow and division a far or non-finite point meets before it is caught); compiled
    kernels raise none, and ``np.errstate`` cost 0.8 us a call."""
    return np.errstate(invalid="ignore", over="ignore", divide="ignore") if numba.config.DISABLE_JIT else \
        contextlib.nullcontext()


def _evaluate(mixture, x, process, t, want_score, path=None, products=None):
    """Shared body of the twins; ``path`` ("lanes", "gemm", "pointwise") and ``products`` ("blas", "fma": the GEMM
    path's, :data:`GEMM_PRODUCTS` by default) override the choice (tests)."""
    x = _check_points(x, mixture.dim, finite=False)  # checked below, or by the kernel as it reads x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"the numba twin takes NumPy arrays, got {type(x).__module__}.{type(x).__qualname__}")
    dtype = x.dtype
    xk = np.ascontiguousarray(x if dtype in (np.float32, np.float64) else x.astype(np.float64))
    gamma, var = _process_coefs(process, t)
    if gamma.ndim:
        _backend.per_example(gamma, x, "t")  # shape check of a per-example t
    N, D = xk.shape
    log_w, mu, lam, U, kind = mixture_arrays(mixture)
    K = log_w.shape[0]
    if path is None and gamma.ndim == 0 and not _smallest_variance(lam, gamma, var) >= np.finfo(xk.dtype).tiny:
        # every scalar-t kernel multiplies by 1 / c_k in x's dtype, which overflows here (a point at or near the
        # narrow component's mean lost its weight); the pointwise one divides by c_k, in float64
        gamma, var = np.full(N, gamma), np.full(N, var)
    default = choose_path(kind, xk.dtype, K, D, gamma.ndim > 0)
    path = default if path is None else path
    if path not in ("lanes", "gemm", "pointwise") or (path == "gemm" and kind == _FULL) or ((path == "pointwise") != (gamma.ndim > 0)):
        raise ValueError(f"path {path!r} does not apply to this mixture and t")
    products = GEMM_PRODUCTS if products is None else products
    if products not in ("blas", "fma"):
        raise ValueError(f'products must be "blas" or "fma", not {products!r}')
    if path == "gemm":
        with _quiet():  # an operand may overflow x's dtype, as checked here (NumPy warns under NUMBA_DISABLE_JIT)
            *operands, finite_ops = _gemm_operands(log_w, mu, lam, float(gamma), float(var), REFINE_KAPPA,
                                                   SCORE_KAPPA, kind == _ISOTROPIC, xk[:0])
        if not finite_ops:  # a variance so small that C_k^{-1} gamma mu_k overflows x's dtype: the products would
            path = "lanes"  # form 0 * inf where a weight is dropped; the lane kernels work from the differences
    one_pass = path == "lanes" and D <= ONE_PASS_MAX_D and kind != _FULL  # _score_lanes_1pass
    if path != "gemm" and not one_pass:  # those two kernels count non-finite values as they read x
        _backend.check_finite(xk, "x")
    score = np.empty((N, D) if want_score else (0, D), dtype=xk.dtype)
    logp = np.empty(N if not want_score or path == "pointwise" else 0, dtype=xk.dtype)  # pointwise writes both
    if N:
        if path == "pointwise":
            g = np.ascontiguousarray(gamma, dtype=np.float64)
            v = np.ascontiguousarray(np.broadcast_to(var, g.shape), dtype=np.float64)
            with _quiet():  # a far point's quadratic forms overflow before its score is taken from _far_score
                _score_pointwise(xk, g, v, log_w, mu, lam, U, kind, want_score, score, logp)
        elif path == "gemm":
            isotropic = kind == _ISOTROPIC
            by_fma = products == "fma"
            if by_fma:  # no BLAS call to keep small: any D
                lanes = min(FMA_PRODUCT_LANES, -(-N // 16) * 16)
            else:
                lanes = gemm_lanes(K, D if isotropic else 2 * D)
                if not lanes:
                    raise ValueError(f'path "gemm" with BLAS products does not apply to D = {D}: 8 points of one row '
                                     'would exceed GEMM_BLOCK_WORK')
            M1, A, B, kc, gmu, s, const = operands
            # the kernel meets a non-finite x before it can refuse it (NumPy scalars warn under NUMBA_DISABLE_JIT)
            with _quiet():
                n_bad = _score_gemm(xk, M1, A, B, isotropic, gmu, s, const, kc, want_score, lanes, by_fma, score, logp)
            if n_bad:
                _backend.check_finite(xk, "x")  # raises unless |x|^2 merely overflowed, or every q_k did
                # there the expanded logits are not finite: redo those points from the differences (any point whose
                # |x|^2, summed in float64, lies within a factor 4 of the overflow, to cover the kernel's rounding),
                # and the points with no weight left, whose score is NaN (the lane kernels' _far_score takes them)
                with np.errstate(over="ignore"):
                    sq = np.einsum("nd,nd->n", xk, xk, dtype=np.float64)
                far = ~(sq <= np.finfo(xk.dtype).max / 4)
                if want_score:
                    far |= np.isnan(score).any(axis=1)
                rows = np.flatnonzero(far)
                redone = _evaluate(mixture, xk[rows], process, t, want_score, path="lanes")
                (score if want_score else logp)[rows] = redone
        else:
            dt = xk.dtype
            i = int(dt == np.float64)
            lanes = min(LANES, N)
            if one_pass:
                # as for the GEMM kernel; and a far point's weights may all be dropped (t = 0: the lane is redone)
                with _quiet():
                    if N * K * (2 if D <= 2 else 4) <= ONE_PASS_SERIAL_WORK:  # one task: one scratch to make
                        run, tasks = _score_lanes_1pass_serial, 1
                    else:
                        run, tasks = _score_lanes_1pass, ONE_PASS_TASKS_PER_THREAD * numba.get_num_threads()
                    limit = dt.type(math.exp(SHIFT_LIMIT[i]))
                    n_bad = run(xk, log_w, mu, lam, float(gamma), float(var), SHIFT_BITS[i], kind == _ISOTROPIC, limit,
                                want_score, min(ONE_PASS_LANES[i], N), tasks, score, logp)
                if n_bad:
                    _backend.check_finite(xk, "x")  # raises
            else:
                means, inv_c, log_norm, _, _, _ = _lane_operands(log_w, mu, lam, float(gamma), float(var), SHIFT_BITS[i],
                                                                 xk[:0])
                with _quiet():  # a narrow component's field may overflow where its weight is dropped
                    _score_lanes(xk, means, inv_c, log_norm, U.astype(dt), kind == _FULL, want_score, lanes, score,
                                 logp)
    return score.astype(dtype, copy=False) if want_score else logp.astype(dtype, copy=False)


def mixture_score(mixture, x, process=None, t=None):
    r"""Numba twin of :meth:`GaussianMixture.score <refdiff.analytic.GaussianMixture.score>`: :math:`\nabla_x\log p_t(x)`, (N, D)."""
    return _evaluate(mixture, x, process, t, True)


def mixture_log_prob(mixture, x, process=None, t=None):
    r"""Numba twin of :meth:`GaussianMixture.log_prob <refdiff.analytic.GaussianMixture.log_prob>`: :math:`\log p_t(x)`, (N,)."""
    return _evaluate(mixture, x, process, t, False)
