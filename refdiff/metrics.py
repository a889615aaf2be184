r"""Sample-based distances between point clouds, and the noise floor they are judged against.

======================  ===========================================================  ==========================
function                quantity                                                     source
======================  ===========================================================  ==========================
``sliced_wasserstein``  :math:`(E_\theta W_p^p(\theta^\top X,\theta^\top Y))^{1/p}`  Bonneel et al. 2015
``mmd``                 unbiased :math:`\mathrm{MMD}^2`, RBF kernel                  Gretton et al. 2012, eq. 3
``energy_distance``     :math:`2E|X-Y|-E|X-X'|-E|Y-Y'|`, U-statistic                 Székely & Rizzo 2013
``mode_weights``        fraction of samples whose most probable component
                        is k
``mode_weight_error``   :math:`\max_k|\hat w_k-w_k|`
``far_from_modes``      fraction outside every component's :math:`(1-\alpha)`
                        ellipsoid
``noise_floor``         a metric between two independent exact samples
======================  ===========================================================  ==========================

Notation: x is (N, D), y is (M, D); :math:`|\cdot|` is the Euclidean norm.

A metric between an approximate sample and an exact one is only meaningful
next to its *noise floor*, the same metric between two exact samples of the
same size: :func:`noise_floor` measures it, so a test can assert
``sliced_wasserstein(samples, exact) <= 1.5 * floor.mean``.

All computation is float64 on the host: other array types are copied with
:func:`refdiff.backend.to_numpy`. Pairwise sums (MMD, energy) run over
``block x block`` tiles, so memory stays :math:`O(\text{block}^2)` whatever N;
the sliced Wasserstein distance processes its projections in chunks for the
same reason.

Squared distances inside a tile are taken as :math:`\sum_d(a_d-b_d)^2` for
:math:`D\le 2` (exact up to rounding) and, above that, through the Gram form
:math:`|a|^2+|b|^2-2a^\top b` on data centred at the pooled mean (matrix
products, but an absolute error of a few :math:`\varepsilon(|a|^2+|b|^2)`,
clipped at 0).

Cost at N = M: sliced Wasserstein sorts 2P projections, :math:`O(PN\log N)`;
MMD evaluates one ``exp`` per pair (:math:`\approx 2N^2` of them, the
within-sample sums using symmetry), which dominates its time; the energy
distance one ``sqrt`` per pair. Above D = 2 each tile costs one small
matrix product (inner dimension D); on a few cores shared with other work,
a multi-threaded BLAS can spend more time synchronising on these than
computing them (``OPENBLAS_NUM_THREADS=1`` avoids that).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .backend import as_float_array, as_rng, check_finite, to_numpy

__all__ = [
    "sliced_wasserstein",
    "mmd",
    "median_bandwidth",
    "energy_distance",
    "mode_weights",
    "mode_weight_error",
    "far_from_modes",
    "NoiseFloor",
    "noise_floor",
    "score_error_by_time",
]

#: Projections per chunk in :func:`sliced_wasserstein` are chosen so that the
#: sorted projections of one chunk take about this many bytes.
_CHUNK_BYTES = 1 << 25
#: Dimensions up to which tile distances are summed coordinate by coordinate.
_EXACT_DIMS = 2
#: Points of the pooled sample the median heuristic looks at (all of them below this).
_MEDIAN_POINTS = 2000


# ------------------------------------------------------------------ validation
def _points(x, name: str, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 host array of shape (N, D) with N >= min_rows."""
    a = np.asarray(to_numpy(as_float_array(x, name)), dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, D), got shape {a.shape}")
    if a.shape[0] < min_rows or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= {min_rows} and D >= 1, got shape {a.shape}")
    check_finite(a, name)
    return a


def _pair(x, y, min_rows: int = 1):
    x = _points(x, "x", min_rows)
    y = _points(y, "y", min_rows)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"y must have D={x.shape[1]} columns like x, got shape {y.shape}")
    return x, y


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


# ------------------------------------------------------------ sliced Wasserstein
def _merged_quantile_grid(n: int, m: int):
    """Interval lengths and sorted-sample indices of the merged quantile grid of sizes n and m.

    The quantile function of an n-point empirical measure is constant on
    :math:`((i-1)/n, i/n]`; the union of both grids splits [0, 1] into at most
    n + m - 1 intervals, on each of which both quantile functions are
    constant. Levels are held as integers in units of :math:`1/(nm)`, so the
    grid is exact.
    """
    b = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    lengths = np.diff(b, prepend=0) / (n * m)
    ix = (b + m - 1) // m - 1  # ceil(u n) - 1 at the interval's upper level u = b / (n m)
    iy = (b + n - 1) // n - 1
    return lengths, ix, iy


def sliced_wasserstein(x, y, n_projections: int = 256, rng=None, p: float = 2, *, chunk: int | None = None) -> float:
    r"""Sliced Wasserstein distance between the empirical measures of x and y.

    .. math::

        SW_p(x, y)=\Big(\frac1P\sum_{l=1}^P W_p^p\big(\theta_l^\top x,\ \theta_l^\top y\big)\Big)^{1/p},
        \qquad
        W_p^p(\mu,\nu)=\int_0^1|F_\mu^{-1}(u)-F_\nu^{-1}(u)|^p\,du,

    with directions :math:`\theta_l` uniform on the unit sphere (Bonneel et
    al. 2015; Rabin et al. 2011). For the default p = 2 this is the square
    root of the mean over projections of the squared 1-D W2.

    Each 1-D distance is exact for the two empirical measures, also when
    N != M: the quantile functions are step functions, constant on the
    intervals of the merged grid :math:`\{i/N\}\cup\{j/M\}`, and the integral
    is the sum over those (at most N + M - 1) intervals of length times
    :math:`|x_{(i)}-y_{(j)}|^p` (sorted projections). For N = M it reduces to
    :math:`\frac1N\sum_i|x_{(i)}-y_{(i)}|^p`.

    For a shift :math:`Y=X+m u` (:math:`|u|=1`) in D dimensions,
    :math:`SW_2^2=m^2E[(u^\top\theta)^2]=m^2/D`.

    Parameters
    ----------
    x : array_like, shape (N, D)
    y : array_like, shape (M, D)
    n_projections : int
        Number P of random directions. The Monte Carlo error over directions
        is relative and of order :math:`P^{-1/2}`.
    rng : None, int, SeedSequence or Generator
        Source of the directions (standard normal rows, normalised); the same
        seed gives the same directions, hence the same value. A Generator
        passed in advances by P * D normal draws.
    p : float, >= 1
    chunk : int, optional
        Projections processed at once; by default about 32 MiB of sorted
        projections per chunk. The result does not depend on it.

    Returns
    -------
    float

    References
    ----------
    N. Bonneel, J. Rabin, G. Peyré, H. Pfister, "Sliced and Radon Wasserstein
    barycenters of measures", J. Math. Imaging Vis. 51 (2015) 22-45.
    J. Rabin, G. Peyré, J. Delon, M. Bernot, "Wasserstein barycenter and its
    application to texture mixing", SSVM 2011, LNCS 6667, 435-446.
    """
    x, y = _pair(x, y)
    P = _positive_int(n_projections, "n_projections")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (1 <= p < np.inf):
        raise ValueError(f"p must be a real number >= 1, got {p!r}")
    (N, D), M = x.shape, y.shape[0]
    theta = as_rng(rng).standard_normal((P, D))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)  # (P, D), uniform on the sphere
    if N == M:
        lengths = ix = iy = None
        L = N
    else:
        lengths, ix, iy = _merged_quantile_grid(N, M)
        L = lengths.shape[0]
    if chunk is None:
        chunk = max(1, _CHUNK_BYTES // (8 * (N + M + 2 * L)))
    chunk = _positive_int(chunk, "chunk")
    total = 0.0
    for s in range(0, P, chunk):
        th = theta[s : s + chunk].T  # (D, c)
        xs = np.sort(th.T @ x.T, axis=1)  # (c, N) sorted projections
        ys = np.sort(th.T @ y.T, axis=1)  # (c, M)
        diff = xs - ys if N == M else xs[:, ix] - ys[:, iy]  # (c, L)
        np.abs(diff, out=diff)
        cost = diff * diff if p == 2 else diff**p
        total += float(np.sum(cost.mean(axis=1) if lengths is None else cost @ lengths))
    return float((total / P) ** (1.0 / p))


# -------------------------------------------------------------- pairwise sums
def _tile_sq_dists(a, b, a2, b2, exact: bool, out, tmp) -> np.ndarray:
    """Squared distances between the rows of a (n, D) and b (m, D), written to ``out`` (n, m).

    ``tmp`` is scratch of the same shape (used by the exact path when D > 1).
    """
    if exact:
        np.subtract.outer(a[:, 0], b[:, 0], out=out)
        np.multiply(out, out, out=out)
        for j in range(1, a.shape[1]):
            np.subtract.outer(a[:, j], b[:, j], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            out += tmp
        return out
    np.matmul(a, b.T, out=out)
    out *= -2.0
    out += a2[:, None]
    out += b2[None, :]
    return np.maximum(out, 0.0, out=out)


def _pair_sum(a, b, fn, block: int, exact: bool) -> float:
    r""":math:`\sum_{i,j}f(|a_i-b_j|^2)` over all pairs, or over :math:`i\ne j` when ``b is None`` (b = a).

    ``fn(d2, scratch)`` maps a tile of squared distances to a tile of values,
    in place or in ``scratch``. Within one sample only tiles on and above
    the diagonal are evaluated, off-diagonal ones counted twice. Two
    ``block x block`` buffers are allocated once and reused (fresh large
    arrays per tile cost page faults).
    """
    symmetric = b is None
    if symmetric:
        b = a
    a2, b2 = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    size = min(block, a.shape[0]) * min(block, b.shape[0])
    buf, scratch = np.empty(size), np.empty(size)
    total = 0.0
    for i in range(0, a.shape[0], block):
        ai, a2i = a[i : i + block], a2[i : i + block]
        for j in range(i if symmetric else 0, b.shape[0], block):
            bj, b2j = b[j : j + block], b2[j : j + block]
            shape = (ai.shape[0], bj.shape[0])
            out = buf[: shape[0] * shape[1]].reshape(shape)  # contiguous views of the buffers
            tmp = scratch[: shape[0] * shape[1]].reshape(shape)
            v = fn(_tile_sq_dists(ai, bj, a2i, b2j, exact, out, tmp), tmp)
            if symmetric and i == j:
                np.fill_diagonal(v, 0.0)  # the U-statistic leaves out i == j
                total += float(v.sum())
            else:
                total += (2.0 if symmetric else 1.0) * float(v.sum())
    return total


def _centred(x, y):
    """x and y shifted by the pooled mean, and whether tiles use exact coordinate sums."""
    D = x.shape[1]
    if D <= _EXACT_DIMS:
        return x, y, True
    c = (x.sum(axis=0) + y.sum(axis=0)) / (x.shape[0] + y.shape[0])
    return x - c, y - c, False


def median_bandwidth(x, y) -> float:
    r"""The median heuristic: the median of :math:`|z_i-z_j|,\ i<j`, over the pooled sample z = (x, y).

    When the pool has more than 2000 points, the median is taken over the
    pairs of 2000 of them picked at evenly spaced positions of the pooled
    array (deterministic; x and y contribute in proportion to their sizes).

    References
    ----------
    A. Gretton, K. Borgwardt, M. Rasch, B. Schölkopf, A. Smola, "A kernel
    two-sample test", JMLR 13 (2012), section 8.
    """
    from scipy.spatial.distance import pdist

    x, y = _pair(x, y)
    z = np.concatenate([x, y], axis=0)
    if z.shape[0] > _MEDIAN_POINTS:
        z = z[np.round(np.linspace(0, z.shape[0] - 1, _MEDIAN_POINTS)).astype(np.int64)]
    h = float(np.median(pdist(z)))
    if not h > 0:
        raise ValueError(
            "bandwidth: the median heuristic gave 0 (more than half of the pooled pairs coincide); pass bandwidth explicitly"
        )
    return h


def mmd(x, y, bandwidth=None, *, block: int = 1024) -> float:
    r"""Unbiased squared maximum mean discrepancy with a Gaussian (RBF) kernel.

    .. math::

        \mathrm{MMD}_u^2=\frac{1}{N(N-1)}\sum_{i\ne j}k(x_i,x_j)
        +\frac{1}{M(M-1)}\sum_{i\ne j}k(y_i,y_j)-\frac{2}{NM}\sum_{i,j}k(x_i,y_j),

    (Gretton et al. 2012, eq. 3, with N and M allowed to differ), where
    :math:`k(a,b)=\sum_s\exp(-|a-b|^2/2h_s^2)`. The estimate is unbiased for
    :math:`\mathrm{MMD}^2`, so it is negative about half the time when x and
    y come from the same law.

    Parameters
    ----------
    x : array_like, shape (N, D), N >= 2
    y : array_like, shape (M, D), M >= 2
    bandwidth : float, sequence of floats or None
        Kernel widths :math:`h_s`; a sequence gives the sum of the kernels.
        ``None`` takes the median heuristic on the pooled sample
        (:func:`median_bandwidth`). The heuristic depends on the data, so
        with it the estimate is unbiased only conditionally on h; pass a
        fixed h to compare several runs.
    block : int
        Rows per tile: memory holds two ``block x block`` float64 buffers
        (8 MiB each by default), never N x N. The result does not depend on
        it beyond rounding.

    Returns
    -------
    float

    References
    ----------
    A. Gretton, K. Borgwardt, M. Rasch, B. Schölkopf, A. Smola, "A kernel
    two-sample test", JMLR 13 (2012) 723-773.
    """
    x, y = _pair(x, y, min_rows=2)
    block = _positive_int(block, "block")
    if bandwidth is None:
        hs = np.array([median_bandwidth(x, y)])
    else:
        try:
            hs = np.atleast_1d(np.asarray(bandwidth, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bandwidth must be None, a positive float or a sequence of them, got {bandwidth!r}") from exc
        if hs.ndim != 1 or hs.size == 0 or not np.all(np.isfinite(hs)) or np.any(hs <= 0):
            raise ValueError(f"bandwidth must be None, a positive finite float or a sequence of them, got {bandwidth!r}")
    scales = -0.5 / hs**2

    def kernel(d2, scratch):
        if scales.size == 1:
            d2 *= scales[0]
            return np.exp(d2, out=d2)
        acc = np.zeros_like(d2)
        for c in scales:
            acc += np.exp(np.multiply(d2, c, out=scratch), out=scratch)
        return acc

    N, M = x.shape[0], y.shape[0]
    x, y, exact = _centred(x, y)
    kxx = _pair_sum(x, None, kernel, block, exact) / (N * (N - 1))
    kyy = _pair_sum(y, None, kernel, block, exact) / (M * (M - 1))
    kxy = _pair_sum(x, y, kernel, block, exact) / (N * M)
    return kxx + kyy - 2.0 * kxy


def energy_distance(x, y, *, block: int = 1024) -> float:
    r"""Squared energy distance, with U-statistics for the within-sample terms.

    .. math::

        \mathcal E(x,y)=\frac{2}{NM}\sum_{i,j}|x_i-y_j|
        -\frac{1}{N(N-1)}\sum_{i\ne j}|x_i-x_j|-\frac{1}{M(M-1)}\sum_{i\ne j}|y_i-y_j|,

    an unbiased estimate of :math:`2E|X-Y|-E|X-X'|-E|Y-Y'|` (Székely &
    Rizzo 2013), which is non-negative and zero only when X and Y have the
    same law; the estimate itself can be slightly negative.
    ``scipy.stats.energy_distance`` (1-D only) returns instead the square
    root of the V-statistic version, whose within-sample means divide by
    :math:`N^2` and :math:`M^2`.

    Parameters
    ----------
    x : array_like, shape (N, D), N >= 2
    y : array_like, shape (M, D), M >= 2
    block : int
        Rows per tile, as in :func:`mmd`.

    Returns
    -------
    float

    References
    ----------
    G. J. Székely, M. L. Rizzo, "Energy statistics: a class of statistics
    based on distances", J. Stat. Plan. Inference 143 (2013) 1249-1272.
    """
    x, y = _pair(x, y, min_rows=2)
    block = _positive_int(block, "block")
    N, M = x.shape[0], y.shape[0]
    x, y, exact = _centred(x, y)

    def dist(d2, scratch):
        return np.sqrt(d2, out=d2)

    exy = _pair_sum(x, y, dist, block, exact) / (N * M)
    exx = _pair_sum(x, None, dist, block, exact) / (N * (N - 1))
    eyy = _pair_sum(y, None, dist, block, exact) / (M * (M - 1))
    return 2.0 * exy - exx - eyy


# ------------------------------------------------------------------------ modes
def _check_mixture(x, mixture):
    if not (hasattr(mixture, "component_posterior") and hasattr(mixture, "weights")):
        raise TypeError(f"mixture must be a refdiff.analytic.GaussianMixture, got {type(mixture).__name__}")
    x = _points(x, "x")
    if x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (N, {mixture.dim}) to match the mixture, got {x.shape}")
    return x


def mode_weights(x, mixture, process=None, t=None) -> np.ndarray:
    r"""Fraction of samples assigned to each component by maximum posterior.

    .. math::

        \hat w_k=\frac1N\#\{i:\ \arg\max_j p(j|x_i)=k\},

    with :math:`p(j|x)` from ``mixture.component_posterior(x, process, t)``
    (the diffused mixture at time t when a process is given; its weights are
    those of the mixture). For well separated components :math:`N\hat w_k`
    is Binomial(N, :math:`w_k`) under exact sampling.

    Parameters
    ----------
    x : array_like, shape (N, D)
    mixture : refdiff.analytic.GaussianMixture
    process, t : optional
        A process and a time (scalar or one per row), both or neither.

    Returns
    -------
    numpy.ndarray, shape (K,), summing to 1.
    """
    x = _check_mixture(x, mixture)
    post = np.asarray(to_numpy(mixture.component_posterior(x, process, t)), dtype=np.float64)  # (N, K)
    labels = np.argmax(post, axis=1)
    return np.bincount(labels, minlength=mixture.n_components) / x.shape[0]


def mode_weight_error(x, mixture, process=None, t=None) -> float:
    r""":math:`\max_k|\hat w_k-w_k|`, with :math:`\hat w` from :func:`mode_weights`."""
    return float(np.max(np.abs(mode_weights(x, mixture, process, t) - mixture.weights)))


def far_from_modes(x, mixture, process=None, t=None, alpha: float = 1e-4) -> float:
    r"""Fraction of samples outside the :math:`(1-\alpha)` ellipsoid of every component.

    Sample i counts when, for every component k with :math:`w_k>0`,
    :math:`(x_i-\mu_k)^\top\Sigma_k^{-1}(x_i-\mu_k)>\chi^2_D(1-\alpha)`.
    A draw from component k lands outside its own ellipsoid with probability
    :math:`\alpha`, so under exact sampling the expected fraction is at most
    :math:`\alpha`; a sampler that puts mass between or beyond the modes
    shows a larger one.

    Parameters
    ----------
    x : array_like, shape (N, D)
    mixture : refdiff.analytic.GaussianMixture
    process, t : optional
        A process and a scalar time, both or neither: the components are
        then those of ``mixture.diffuse(process, t)``.
    alpha : float in (0, 1)

    Returns
    -------
    float
    """
    from scipy.special import chdtri

    x = _check_mixture(x, mixture)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0 < alpha < 1):
        raise ValueError(f"alpha must be a real number in (0, 1), got {alpha!r}")
    if process is not None or t is not None:
        if process is None or t is None:
            raise ValueError("process and t: pass both or neither")
        if np.ndim(t) != 0:
            raise ValueError(f"t must be one time for every sample (a scalar), got shape {np.shape(t)}")
        mixture = mixture.diffuse(process, t)
    r2 = chdtri(x.shape[1], alpha)  # squared radius of the (1 - alpha) ellipsoid
    far = np.ones(x.shape[0], dtype=bool)
    covs = mixture.full_covs()  # (K, D, D)
    for k in np.flatnonzero(mixture.weights > 0):
        L = np.linalg.cholesky(covs[k])
        z = np.linalg.solve(L, (x - mixture.means[k]).T)  # (D, N) whitened offsets
        far &= np.einsum("dn,dn->n", z, z) > r2
    return float(np.mean(far))


# ------------------------------------------------------------------ noise floor
@dataclass(frozen=True)
class NoiseFloor:
    """A metric between two independent exact samples of size ``n``, over ``values.size`` repeats.

    Attributes
    ----------
    mean, std : float
        Mean and sample standard deviation (ddof=1) of ``values``.
    values : numpy.ndarray, shape (repeats,)
    n : int
    """

    mean: float
    std: float
    values: np.ndarray
    n: int

    def upper(self, k: float = 3.0) -> float:
        r"""``mean + k * std``: a bound for metrics whose floor is centred near 0 (unbiased MMD, energy).

        A rough bound: the standard deviation of a handful of repeats is
        itself uncertain (about 25% relative at 8 repeats), and the null law
        of :math:`\mathrm{MMD}_u^2` is right-skewed (a weighted sum of
        centred chi-squares), so an exact sample exceeds ``upper(3)`` more
        often than a normal tail suggests. Use it to detect errors well
        above the floor, with 10 or more repeats.
        """
        return self.mean + k * self.std


def noise_floor(metric, sampler, n: int, rng=None, repeats: int = 5) -> NoiseFloor:
    r"""The value of ``metric`` between two independent exact samples of size n, repeated.

    Repeat r draws ``a = sampler.sample(n, rng_{2r})`` and
    ``b = sampler.sample(n, rng_{2r+1})`` from independent streams spawned
    from ``rng`` and records ``metric(a, b)``. A sampler's output of size n
    is then "as close as exact sampling" when its metric against an exact
    sample stays within a small factor of the floor's mean (biased,
    positive metrics such as :func:`sliced_wasserstein`) or below
    :meth:`NoiseFloor.upper` (unbiased ones such as :func:`mmd`, whose
    floor has mean near 0). For SW2 between exact 3-D Gaussian samples of
    size 1000 the ratio of one value to the mean has a relative standard
    deviation of about 0.14 and a 99th percentile of about 1.4, so
    ``1.5 * floor.mean`` fails an exact sampler about 1% of the time.

    Parameters
    ----------
    metric : callable
        ``metric(x, y) -> float``; fix its own randomness (e.g.
        ``functools.partial(sliced_wasserstein, rng=0)``) to reuse the same
        projections in the comparison.
    sampler : object with ``sample(n, rng)``
        Such as a :class:`~refdiff.analytic.GaussianMixture`.
    n : int, >= 2
    rng : None, int, SeedSequence or Generator
    repeats : int, >= 2

    Returns
    -------
    NoiseFloor
    """
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(x, y), got {type(metric).__name__}")
    if not callable(getattr(sampler, "sample", None)):
        raise TypeError(f"sampler must have a method sample(n, rng), got {type(sampler).__name__}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 2:
        raise ValueError(f"repeats must be an int >= 2 (the floor reports a standard deviation), got {repeats!r}")
    streams = as_rng(rng).spawn(2 * int(repeats))
    values = np.empty(int(repeats))
    for r in range(int(repeats)):
        a = sampler.sample(int(n), streams[2 * r])
        b = sampler.sample(int(n), streams[2 * r + 1])
        values[r] = float(metric(a, b))
    values.flags.writeable = False
    return NoiseFloor(float(values.mean()), float(values.std(ddof=1)), values, int(n))


def score_error_by_time(score_fn, mixture, process, times, x0, rng=None) -> list:
    r"""Error of a score model against a mixture's exact score, at each of ``times``.

    At each t, :math:`x_t\sim q(x_t|x_0)` from the data ``x0`` (the same
    ``x0`` for every t, fresh noise from ``rng`` per t), and

    * ``rel_mse`` = :math:`E|s_\theta-s^*|^2/E|s^*|^2` (scale-free; 1 is no better than 0),
    * ``rms`` = :math:`\sqrt{E|s_\theta-s^*|^2}`,

    with ``sigma`` the process's noise std at t. Returns one dict per time.
    """
    x0 = _points(x0, "x0")
    gens = np.random.SeedSequence(as_rng(rng).integers(2**63)).spawn(len(times))
    rows = []
    for t, g in zip(times, gens):
        t = float(t)
        x_t = process.sample_marginal(x0, t, rng=g)
        exact = mixture.score(x_t, process, t)
        err = np.sum((np.asarray(score_fn(x_t, t), dtype=np.float64) - exact) ** 2, axis=1)
        rows.append({"t": t, "sigma": float(process.std(t)), "rel_mse": float(err.mean() / np.mean(np.sum(exact**2, axis=1))),
                     "rms": float(np.sqrt(err.mean()))})
    return rows
