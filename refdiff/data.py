r"""Toy 2-D data sets and small single-channel image sets for training tests.

2-D sets: functions ``(n, rng=None, dtype=np.float64) -> array (n, 2)``.

==================  =====================================================  ===================  ==================
name                what                                                   scale (per axis)     source
==================  =====================================================  ===================  ==================
``ring8``           :func:`refdiff.targets.ring_mixture`: 8 Gaussian       std 2.64 / 2.79,     exact density
                    modes on a circle of radius 4, std 0.25, weights       mean (-0.45, -1.07)  (:func:`ring8_density`)
                    1:2:...:8
``moons``           two interleaved half circles of radius 2               std 1.73 / 0.99,     written here, after
                                                                           mean 0               sklearn's make_moons
``swiss_roll``      2-D spiral :math:`(t\cos t, t\sin t)/5`,               std 1.33 / 1.39,     written here, after
                    :math:`t\in[1.5\pi, 4.5\pi]`, minus its mean           mean 0               Marsland 2009
``checkerboard``    uniform on the 8 dark squares of a 4 x 4 board on      std 2.31 / 2.31,     written here, after
                    :math:`[-4, 4]^2`                                      mean 0               Grathwohl et al. 2019
``rings``           three concentric circles, radii 1, 2, 3, points        std 1.73 / 1.73,     written here
                    in proportion to circumference                         mean 0
==================  =====================================================  ===================  ==================

``ring8`` is the only set with an exact density; the others are empirical
shapes. Every ``noise`` argument is the standard deviation of isotropic
Gaussian jitter in the units of the returned coordinates (not, as in
scikit-learn's ``make_moons``, in units of a unit-radius moon). The "scale"
column gives the population standard deviation and mean of each axis with
the default arguments (x / y).

Image sets: ``(images, labels)`` with images of shape ``(N, 1, H, W)``, values
in [-1, 1] (background -1, ink +1) and int64 labels 0..9.

==========  ====================================  =========  ===============================================
name        function                              size       source, licence
==========  ====================================  =========  ===============================================
``digits``  :func:`load_digits`                   1797, 8x8  UCI Optical Recognition of Handwritten Digits
                                                             (test set) as shipped in scikit-learn
                                                             (BSD-3-Clause; UCI lists CC BY 4.0); needs the
                                                             ``images`` extra
``glyphs``  :func:`glyph_digits`                  any n,     generated here from a 5 x 7 bitmap font with
                                                  size >= 8  random affine jitter, stroke width and noise
==========  ====================================  =========  ===============================================

Plus :func:`split` (a seeded train/test permutation) and
:func:`check_training_data` (the input validation the training loops run
before their first step).

All generators draw from ``rng`` (SPEC 7, see :func:`refdiff.backend.as_rng`):
an int seed gives the same array on every run. Everything is generated in
float64 on the host and cast to ``dtype`` at the end.
"""

from __future__ import annotations

import numbers

import numpy as np

from .backend import as_float_array, as_rng, namespace
from .targets import ring_mixture

__all__ = [
    "ring8",
    "ring8_density",
    "two_moons",
    "swiss_roll",
    "checkerboard",
    "concentric_rings",
    "DATASETS_2D",
    "sample_2d",
    "load_digits",
    "glyph_digits",
    "GLYPHS",
    "IMAGE_DATASETS",
    "load_images",
    "split",
    "check_training_data",
]


# --- argument checks -----------------------------------------------------------


def _check_count(n, name: str = "n", minimum: int = 1) -> int:
    """``n`` as a Python int, or ValueError naming ``name``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def _check_dtype(dtype) -> np.dtype:
    """``dtype`` as a real floating NumPy dtype, or TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a real floating dtype (float32 or float64), got {dtype!r}") from exc
    if dt.kind != "f":
        raise TypeError(f"dtype must be a real floating dtype (float32 or float64), got {dt}")
    return dt


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


# --- 2-D data sets -------------------------------------------------------------


def ring8_density():
    """The exact density behind :func:`ring8`: ``refdiff.targets.ring_mixture()``.

    Returns
    -------
    refdiff.analytic.GaussianMixture
        8 isotropic modes at radius 4, std 0.25, weights proportional to 1..8.
    """
    return ring_mixture()


def ring8(n: int, rng=None, dtype=np.float64) -> np.ndarray:
    """Samples of :func:`ring8_density` (8 modes on a circle of radius 4, weights 1:2:...:8).

    The one 2-D set with an exact density: score, denoiser and log-density at
    every diffusion time are available from the mixture.

    Parameters
    ----------
    n : int >= 1
    rng : None, int, SeedSequence or Generator
    dtype : float dtype

    Returns
    -------
    numpy.ndarray, shape (n, 2)
    """
    n, dt = _check_count(n), _check_dtype(dtype)
    return ring8_density().sample(n, rng).astype(dt)


def two_moons(n: int, rng=None, noise: float = 0.1, dtype=np.float64) -> np.ndarray:
    r"""Two interleaved half circles of radius 2, centred on the origin.

    The upper moon is :math:`2(\cos\theta, \sin\theta) - (1, 0.5)`, the lower
    :math:`2(1-\cos\theta, -\sin\theta) + (-1, 0.5)`, with
    :math:`\theta\sim U[0,\pi]`; that is scikit-learn's ``make_moons``
    doubled and shifted so that the mean is 0. The first ``ceil(n/2)`` rows
    are the upper moon.

    Parameters
    ----------
    n : int >= 1
    rng : None, int, SeedSequence or Generator
    noise : float >= 0
        Standard deviation of the Gaussian jitter, in output units.
    dtype : float dtype

    Returns
    -------
    numpy.ndarray, shape (n, 2); per-axis std about 1.7 and 1.0.
    """
    n, dt, noise = _check_count(n), _check_dtype(dtype), _check_noise(noise)
    gen = as_rng(rng)
    n_up = (n + 1) // 2
    theta = np.pi * gen.random(n)
    c, s = np.cos(theta), np.sin(theta)
    upper = np.arange(n) < n_up
    x = np.where(upper, 2.0 * c - 1.0, 1.0 - 2.0 * c)
    y = np.where(upper, 2.0 * s - 0.5, 0.5 - 2.0 * s)
    out = np.stack([x, y], axis=1) + noise * gen.standard_normal((n, 2))  # (n, 2)
    return out.astype(dt)


def swiss_roll(n: int, rng=None, noise: float = 0.05, dtype=np.float64) -> np.ndarray:
    r"""A 2-D spiral :math:`(t\cos t,\ t\sin t)/5 - m` with :math:`t\sim U[1.5\pi, 4.5\pi]`.

    The 2-D section of Marsland's swiss roll (as in scikit-learn's
    ``make_swiss_roll``), divided by 5 so that it lies within radius 2.83 of
    its centre; neighbouring arms are :math:`2\pi/5\approx1.26` apart. The
    exact mean of the spiral, :math:`m=(2/5,\ 2/(15\pi))` (from
    :math:`\int t\cos t\,dt=t\sin t+\cos t` and
    :math:`\int t\sin t\,dt=\sin t-t\cos t`), is subtracted, so the
    spiral's centre of rotation sits at :math:`-m`.

    Parameters
    ----------
    n : int >= 1
    rng : None, int, SeedSequence or Generator
    noise : float >= 0
        Standard deviation of the Gaussian jitter, in output units.
    dtype : float dtype

    Returns
    -------
    numpy.ndarray, shape (n, 2); mean 0, per-axis std about 1.33 and 1.39.
    """
    n, dt, noise = _check_count(n), _check_dtype(dtype), _check_noise(noise)
    gen = as_rng(rng)
    t = 1.5 * np.pi * (1.0 + 2.0 * gen.random(n))
    mean = np.array([2.0 / 5.0, 2.0 / (15.0 * np.pi)])
    out = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0 - mean + noise * gen.standard_normal((n, 2))
    return out.astype(dt)


def checkerboard(n: int, rng=None, dtype=np.float64) -> np.ndarray:
    r"""Uniform on the dark squares of a 4 x 4 checkerboard covering :math:`[-4, 4]^2`.

    Squares have side 2; square :math:`(i, j)` with
    :math:`i=\lfloor (x+4)/2\rfloor`, :math:`j=\lfloor (y+4)/2\rfloor` is dark
    when :math:`i+j` is even (8 of the 16). The marginal of each axis is
    uniform on [-4, 4]: mean 0, std :math:`8/\sqrt{12}\approx2.31`.

    Parameters
    ----------
    n : int >= 1
    rng : None, int, SeedSequence or Generator
    dtype : float dtype

    Returns
    -------
    numpy.ndarray, shape (n, 2)
    """
    n, dt = _check_count(n), _check_dtype(dtype)
    gen = as_rng(rng)
    i = gen.integers(0, 4, n)
    # the j of the dark square in column i: same parity as i
    j = 2 * gen.integers(0, 2, n) + (i % 2)
    corner = np.stack([i, j], axis=1) * 2.0 - 4.0  # (n, 2) lower-left corners
    return (corner + 2.0 * gen.random((n, 2))).astype(dt)


def concentric_rings(n: int, rng=None, radii=(1.0, 2.0, 3.0), noise: float = 0.05, dtype=np.float64) -> np.ndarray:
    r"""Points on concentric circles, jittered by isotropic Gaussian noise.

    A point picks ring k with probability :math:`r_k/\sum_j r_j` (the same
    density per unit length on every ring) and a uniform angle. With the
    default radii 1, 2, 3 the per-axis std is
    :math:`\sqrt{E[r^2]/2+\text{noise}^2}\approx1.73`, mean 0.

    Parameters
    ----------
    n : int >= 1
    rng : None, int, SeedSequence or Generator
    radii : sequence of float > 0
    noise : float >= 0
        Standard deviation of the Gaussian jitter, in output units.
    dtype : float dtype

    Returns
    -------
    numpy.ndarray, shape (n, 2)
    """
    n, dt, noise = _check_count(n), _check_dtype(dtype), _check_noise(noise)
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or r.size < 1 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"radii must be a non-empty 1-D sequence of finite numbers > 0, got {radii!r}")
    gen = as_rng(rng)
    k = np.minimum(np.searchsorted(np.cumsum(r) / r.sum(), gen.random(n), side="right"), r.size - 1)
    phi = 2.0 * np.pi * gen.random(n)
    out = r[k, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1) + noise * gen.standard_normal((n, 2))
    return out.astype(dt)


#: The built-in 2-D data sets: name -> (function, description).
DATASETS_2D = {
    "ring8": (ring8, "8 Gaussian modes on a circle of radius 4, std 0.25, weights 1:2:...:8 (exact density)"),
    "moons": (two_moons, "two interleaved half circles of radius 2, noise 0.1"),
    "swiss_roll": (swiss_roll, "2-D spiral (t cos t, t sin t)/5, t in [1.5 pi, 4.5 pi], noise 0.05"),
    "checkerboard": (checkerboard, "uniform on the 8 dark squares of a 4 x 4 board on [-4, 4]^2"),
    "rings": (concentric_rings, "concentric circles of radii 1, 2, 3, noise 0.05"),
}


def sample_2d(name: str, n: int, rng=None, dtype=np.float64, **options) -> np.ndarray:
    """Draw ``n`` points of the 2-D data set ``name`` (see :data:`DATASETS_2D`).

    ``options`` (e.g. ``noise``) go to the set's function.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the choices) or a bad ``n``.
    """
    if not isinstance(name, str) or name not in DATASETS_2D:
        raise ValueError(f"name must be one of {sorted(DATASETS_2D)}, got {name!r}")
    return DATASETS_2D[name][0](n, rng=rng, dtype=dtype, **options)


# --- image data sets -------------------------------------------------------------


def load_digits(dtype=np.float32):
    """The 1797 8x8 handwritten digits shipped with scikit-learn, scaled to [-1, 1].

    Source: the test set of the UCI "Optical Recognition of Handwritten
    Digits" data (Alpaydin & Kaynak, 1998), as distributed inside
    scikit-learn (``sklearn.datasets.load_digits``, BSD-3-Clause licence; UCI
    lists the data under CC BY 4.0). Each pixel counts the set pixels of a
    4 x 4 block of a 32 x 32 bitmap, 0..16; it is mapped by
    :math:`x/8-1`, so 0 -> -1 (background) and 16 -> 1.

    scikit-learn is optional (the ``images`` extra) and imported only here.

    Parameters
    ----------
    dtype : float dtype

    Returns
    -------
    images : numpy.ndarray, shape (1797, 1, 8, 8), values in [-1, 1]
    labels : numpy.ndarray of int64, shape (1797,), 0..9 (about 180 each)

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    """
    dt = _check_dtype(dtype)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise ImportError(
            'load_digits needs scikit-learn, which is optional: pip install "refdiff[images]"'
        ) from exc
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    images = (images / 8.0 - 1.0)[:, None, :, :].astype(dt)  # (1797, 1, 8, 8)
    return images, np.asarray(bunch.target, dtype=np.int64)


#: A 5 x 7 bitmap font for the digits 0-9 ('#' ink, '.' background).
GLYPHS = (
    (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),  # 0
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),  # 1
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),  # 2
    (".###.", "#...#", "....#", "..##.", "....#", "#...#", ".###."),  # 3
    ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),  # 4
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),  # 5
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),  # 6
    ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),  # 7
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),  # 8
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),  # 9
)


def _glyph_strokes(rows) -> np.ndarray:
    """Centre-line segments of a bitmap glyph, shape (S, 2, 2) as (segment, end, (row, col)).

    Ink pixels are joined to their ink 4-neighbours, and to a diagonal
    neighbour only when neither pixel between them is ink (so an L corner
    stays square instead of being cut). Centred on the glyph's middle.
    """
    ink = np.array([[c == "#" for c in row] for row in rows])
    H, W = ink.shape
    segs = []
    for r, c in zip(*np.nonzero(ink)):
        alone = True
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1), (0, -1), (-1, 0), (-1, -1), (-1, 1)):
            r2, c2 = r + dr, c + dc
            if not (0 <= r2 < H and 0 <= c2 < W and ink[r2, c2]):
                continue
            alone = False
            if (dr, dc) not in ((0, 1), (1, 0), (1, 1), (1, -1)):
                continue  # each pair once, from its upper/left end
            if dr and dc and (ink[r, c2] or ink[r2, c]):
                continue
            segs.append(((r, c), (r2, c2)))
        if alone:
            segs.append(((r, c), (r, c)))
    centre = np.array([(H - 1) / 2.0, (W - 1) / 2.0])
    return np.array(segs, dtype=np.float64) - centre


def _stroke_table():
    """All glyphs' segments padded to one length (by repeating the last): (10, S_max, 2, 2)."""
    strokes = [_glyph_strokes(g) for g in GLYPHS]
    s_max = max(len(s) for s in strokes)
    return np.stack([np.concatenate([s, np.repeat(s[-1:], s_max - len(s), axis=0)]) for s in strokes])


def _segment_distance(p, a, b):
    """Distance from points p (P, 2) to segments a-b (B, S, 2) -> (B, P, S)."""
    ab = b - a  # (B, S, 2)
    ap = p[None, :, None, :] - a[:, None, :, :]  # (B, P, S, 2)
    len2 = np.maximum(np.sum(ab * ab, axis=-1), 1e-12)[:, None, :]  # (B, 1, S); 0-length -> the point a
    u = np.clip(np.sum(ap * ab[:, None], axis=-1) / len2, 0.0, 1.0)  # (B, P, S)
    d = ap - u[..., None] * ab[:, None]
    return np.sqrt(np.sum(d * d, axis=-1))


def glyph_digits(n: int, size: int = 8, rng=None, dtype=np.float32):
    """Generated handwritten-looking digits: the 5 x 7 :data:`GLYPHS` font, jittered.

    Each image is drawn as follows (all lengths in canvas pixels, scaled
    with ``size``; unit = ``0.7 * size / 6`` per font cell):

    1. the glyph's centre-line strokes (:data:`GLYPHS`, ink pixels joined to
       their neighbours) are scaled by 0.85..1.1 vertically and 0.8..1.15
       horizontally, sheared (slant -0.25..0.25) and rotated (+-0.15 rad);
    2. centred on the canvas, then moved by a random integer shift among
       those that keep the strokes inside the canvas;
    3. inked with a stroke of half-width 0.5..0.75 units and an edge blur
       of 0.4..0.8 pixel (times size / 8), intensity 0.8..1;
    4. Gaussian pixel noise (std 0.03) is added, clipped to [0, 1] and mapped
       to [-1, 1] by 2x - 1 (background -1, ink +1, as :func:`load_digits`).

    Labels are balanced: each digit appears ``n // 10`` or ``n // 10 + 1``
    times, in random order.

    Parameters
    ----------
    n : int >= 1
    size : int >= 8
        Height and width of the canvas.
    rng : None, int, SeedSequence or Generator
    dtype : float dtype

    Returns
    -------
    images : numpy.ndarray, shape (n, 1, size, size), values in [-1, 1]
    labels : numpy.ndarray of int64, shape (n,), 0..9
    """
    n, dt = _check_count(n), _check_dtype(dtype)
    size = _check_count(size, "size", minimum=8)
    gen = as_rng(rng)
    labels = gen.permutation(np.arange(n) % 10).astype(np.int64)
    unit = 0.7 * size / 6.0  # font cells -> pixels: the 6-cell-tall centre line fills 70% of the canvas

    # 1. per-example affine map A = rotation @ shear @ diag(scale), acting on (row, col)
    s_row = unit * gen.uniform(0.85, 1.1, n)
    s_col = unit * gen.uniform(0.8, 1.15, n)
    slant = gen.uniform(-0.25, 0.25, n)
    angle = gen.uniform(-0.15, 0.15, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    shear = np.zeros((n, 2, 2))
    shear[:, 0, 0] = shear[:, 1, 1] = 1.0
    shear[:, 1, 0] = -slant  # col -= slant * row: a positive slant leans the top to the right
    A = rot @ shear * np.stack([s_row, s_col], -1)[:, None, :]  # (n, 2, 2), scales the columns
    strokes = _stroke_table()[labels]  # (n, S, 2, 2) in font cells
    strokes = np.einsum("nij,nsej->nsei", A, strokes)  # (n, S, 2, 2) in pixels

    # 2. centre the bounding box, then a random integer shift that keeps the strokes inside
    half_width = unit * gen.uniform(0.5, 0.75, n)  # (n,) stroke half-width in pixels
    lo = strokes.min(axis=(1, 2)) - half_width[:, None]  # (n, 2)
    hi = strokes.max(axis=(1, 2)) + half_width[:, None]
    offset = (size - 1) / 2.0 - (lo + hi) / 2.0  # (n, 2)
    k_lo = np.ceil(-0.5 - (lo + offset))
    k_hi = np.floor(size - 0.5 - (hi + offset))
    k_lo, k_hi = np.minimum(k_lo, 0.0), np.maximum(k_hi, 0.0)  # a glyph wider than the canvas stays centred
    shift = k_lo + np.floor(gen.random((n, 2)) * (k_hi - k_lo + 1.0))
    strokes = strokes + (offset + shift)[:, None, None, :]

    # 3. ink = a soft-edged disc swept along the strokes
    blur = gen.uniform(0.4, 0.8, n) * size / 8.0
    level = gen.uniform(0.8, 1.0, n)
    noise = gen.standard_normal((n, size * size))
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2)  # (P, 2)
    grid = grid.astype(np.float64)
    ink = np.empty((n, size * size))
    block = max(1, 2**16 // (size * size * strokes.shape[1]))  # bounds the (B, P, S, 2) temporaries
    for start in range(0, n, block):
        sl = slice(start, start + block)
        d = _segment_distance(grid, strokes[sl, :, 0], strokes[sl, :, 1]).min(axis=2)  # (B, P)
        edge = (half_width[sl, None] - d) / blur[sl, None] + 0.5
        ink[sl] = level[sl, None] * np.clip(edge, 0.0, 1.0)

    # 4. pixel noise, then [0, 1] -> [-1, 1]
    ink = np.clip(ink + 0.03 * noise, 0.0, 1.0)
    images = (2.0 * ink - 1.0).reshape(n, 1, size, size)
    return images.astype(dt), labels


#: The image data sets: name -> (function, description).
IMAGE_DATASETS = {
    "digits": (load_digits, "1797 8x8 handwritten digits from UCI via scikit-learn (needs refdiff[images])"),
    "glyphs": (glyph_digits, "generated digits from a 5x7 bitmap font with random jitter, any n, size >= 8"),
}


def load_images(name: str, n=None, rng=None, dtype=np.float32, **options):
    """Load or generate the image data set ``name`` (see :data:`IMAGE_DATASETS`).

    Parameters
    ----------
    name : {"digits", "glyphs"}
    n : int or None
        "digits": None gives all 1797 images in their fixed order, an int a
        random subset of that many (without replacement, drawn from ``rng``).
        "glyphs": the number of images to generate (required).
    rng : None, int, SeedSequence or Generator
    dtype : float dtype
    **options
        Passed on to :func:`glyph_digits` (``size``).

    Returns
    -------
    images : numpy.ndarray, shape (N, 1, H, W), values in [-1, 1]
    labels : numpy.ndarray of int64, shape (N,)
    """
    if not isinstance(name, str) or name not in IMAGE_DATASETS:
        raise ValueError(f"name must be one of {sorted(IMAGE_DATASETS)}, got {name!r}")
    if name == "glyphs":
        if n is None:
            raise ValueError("n must be an int >= 1 for the generated 'glyphs' set, got None")
        return glyph_digits(n, rng=rng, dtype=dtype, **options)
    if options:
        raise TypeError(f"load_images('digits') takes no options, got {sorted(options)}")
    images, labels = load_digits(dtype=dtype)
    if n is None:
        return images, labels
    n = _check_count(n)
    if n > images.shape[0]:
        raise ValueError(f"n must be at most {images.shape[0]} for 'digits', got {n}")
    pick = as_rng(rng).choice(images.shape[0], size=n, replace=False)
    return images[pick], labels[pick]


# --- splitting and validation ------------------------------------------------------


def split(x, labels=None, test_fraction: float = 0.2, rng=None):
    """Split the rows of ``x`` (and ``labels``) into a training and a test part at random.

    The rows are permuted with ``rng``; the test part holds
    ``round(test_fraction * N)`` rows, the training part the rest.

    Parameters
    ----------
    x : array, shape (N, ...)
    labels : array of shape (N,) or None
    test_fraction : float in (0, 1)
    rng : None, int, SeedSequence or Generator

    Returns
    -------
    x_train, x_test : arrays
        Without labels.
    x_train, x_test, labels_train, labels_test : arrays
        With labels.

    Raises
    ------
    ValueError
        If either part would be empty, ``test_fraction`` is outside (0, 1),
        ``x`` has no rows axis or ``labels`` does not have one entry per row.
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have shape (N, ...), got a scalar of shape {tuple(x.shape)}")
    N = x.shape[0]
    if labels is not None:
        if not hasattr(labels, "shape"):
            labels = np.asarray(labels)
        if labels.ndim < 1 or labels.shape[0] != N:
            raise ValueError(f"labels must have one entry per row of x ({N}), got shape {tuple(labels.shape)}")
    if not isinstance(test_fraction, numbers.Real) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    n_test = int(round(test_fraction * N))
    if n_test < 1 or n_test > N - 1:
        raise ValueError(
            f"test_fraction={test_fraction} of {N} rows gives {n_test} test and {N - n_test} training rows; "
            "both parts must be non-empty"
        )
    perm = as_rng(rng).permutation(N)
    test, train = perm[:n_test], perm[n_test:]
    if labels is None:
        return x[train], x[test]
    return x[train], x[test], labels[train], labels[test]


def check_training_data(x, name: str = "data", *, image=None, min_rows: int = 1):
    """Validate a training set before the first step, and return it as a float array.

    Parameters
    ----------
    x : array_like, shape (N, D...) or (N, C, H, W)
        NumPy, CuPy or any array-API array; integer and boolean arrays are
        promoted to float64, floating arrays are returned unchanged.
    name : str
        The argument's name in error messages.
    image : tuple (C, H, W) or None
        If given, ``x`` must have shape (N, C, H, W) with these trailing axes.
        Otherwise ``x`` needs at least 2 axes (one row per example).
    min_rows : int >= 1
        The fewest rows N accepted (a batch size, say).

    Returns
    -------
    array
        ``x`` as a real floating array of its own namespace.

    Raises
    ------
    TypeError
        If ``x`` is not numeric (strings, objects, complex).
    ValueError
        If ``x`` is empty, has fewer than ``min_rows`` rows, the wrong number
        of axes or the wrong image shape, or holds NaN or infinity (with
        their count).
    """
    min_rows = _check_count(min_rows, "min_rows")
    if image is not None:
        if (
            not isinstance(image, (tuple, list))
            or len(image) != 3
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in image)
        ):
            raise ValueError(f"image must be a tuple (C, H, W) of 3 positive ints, got {image!r}")
        image = tuple(int(s) for s in image)
    x = as_float_array(x, name)
    xp = namespace(x)
    shape = tuple(x.shape)
    if x.ndim >= 1 and 0 in shape:
        raise ValueError(f"{name} is empty: got shape {shape}")
    if image is not None and x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) = (N, {', '.join(map(str, image))}), got shape {shape}")
    if image is None and x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, D, ...) with at least 2 axes, got shape {shape}")
    if shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {shape[0]} (shape {shape})")
    if image is not None and shape[1:] != image:
        raise ValueError(f"{name} must have image shape (C, H, W) = {image}, got {shape[1:]} (shape {shape})")
    n_nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int64)))
    n_inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int64)))
    if n_nan or n_inf:
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite value(s) among {int(np.prod(shape))}"
        )
    return x
