"""Tests of refdiff.data: toy 2-D sets, image sets, split and check_training_data.

Statistical checks use fixed seeds; each tolerance is a multiple (5 or more)
of the binomial or sampling standard deviation at the n used, so they do
not fail by chance, while the errors they guard against (wrong weights,
points off the shape, shuffled labels) are many times larger.
"""

import sys

import numpy as np
import pytest

from refdiff import data
from refdiff.analytic import GaussianMixture
from refdiff.metrics import mode_weights
from refdiff.targets import ring_mixture

NAMES_2D = ["ring8", "moons", "swiss_roll", "checkerboard", "rings"]


# --- 2-D sets: common contract --------------------------------------------------


def test_registry_names_and_descriptions():
    assert sorted(data.DATASETS_2D) == sorted(NAMES_2D)
    for name, (fn, desc) in data.DATASETS_2D.items():
        assert callable(fn) and isinstance(desc, str) and desc, name


@pytest.mark.parametrize("name", NAMES_2D)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2d_shape_dtype_finite(name, dtype):
    x = data.sample_2d(name, 257, rng=0, dtype=dtype)
    assert x.shape == (257, 2)
    assert x.dtype == dtype
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", NAMES_2D)
def test_2d_generated_in_float64_then_cast(name):
    fn = data.DATASETS_2D[name][0]
    np.testing.assert_array_equal(fn(100, 5, dtype=np.float32), fn(100, 5).astype(np.float32))


@pytest.mark.parametrize("name", NAMES_2D)
def test_2d_deterministic_per_seed(name):
    fn = data.DATASETS_2D[name][0]
    np.testing.assert_array_equal(fn(300, 11), fn(300, 11))
    np.testing.assert_array_equal(fn(300, np.random.SeedSequence(11)), fn(300, 11))
    assert not np.allclose(fn(300, 11), fn(300, 12))
    # a Generator is owned by the caller: its state advances
    gen = np.random.default_rng(3)
    assert not np.allclose(fn(300, gen), fn(300, gen))


@pytest.mark.parametrize("name", NAMES_2D)
def test_sample_2d_matches_function(name):
    np.testing.assert_array_equal(data.sample_2d(name, 50, rng=9), data.DATASETS_2D[name][0](50, 9))


def test_sample_2d_passes_options():
    np.testing.assert_array_equal(data.sample_2d("moons", 40, 1, noise=0.0), data.two_moons(40, 1, noise=0.0))


def test_sample_2d_unknown_name_lists_choices():
    choices = r"\['checkerboard', 'moons', 'ring8', 'rings', 'swiss_roll'\]"
    with pytest.raises(ValueError, match=rf"name must be one of {choices}, got 'spiral'"):
        data.sample_2d("spiral", 10)


@pytest.mark.parametrize("name", NAMES_2D)
@pytest.mark.parametrize("n", [0, -3, 2.5, True, "5", None])
def test_2d_bad_n(name, n):
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got"):
        data.sample_2d(name, n, rng=0)


@pytest.mark.parametrize("name", NAMES_2D)
def test_2d_bad_dtype(name):
    with pytest.raises(TypeError, match=r"dtype must be a real floating dtype .* got int64"):
        data.sample_2d(name, 10, rng=0, dtype=np.int64)


@pytest.mark.parametrize("fn", [data.two_moons, data.swiss_roll, data.concentric_rings])
@pytest.mark.parametrize("noise", [-0.1, np.nan, "0.1", True])
def test_2d_bad_noise(fn, noise):
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0"):
        fn(10, 0, noise=noise)


@pytest.mark.parametrize("radii", [(), (1.0, -2.0), (1.0, np.inf), [[1.0, 2.0]]])
def test_rings_bad_radii(radii):
    with pytest.raises(ValueError, match=r"radii must be a non-empty 1-D sequence"):
        data.concentric_rings(10, 0, radii=radii)


# --- 2-D sets: the documented scale ------------------------------------------------

_MIX = ring_mixture()
# (mean, std) per axis, as in the module docstring; ring8, checkerboard and
# rings are exact, moons and swiss_roll measured once with 4e5 points.
SCALE = {
    "ring8": (_MIX.mean(), np.sqrt(np.diag(_MIX.covariance()))),
    "moons": ((0.0, 0.0), (1.73, 0.99)),
    "swiss_roll": ((0.0, 0.0), (1.33, 1.39)),
    "checkerboard": ((0.0, 0.0), (8 / np.sqrt(12), 8 / np.sqrt(12))),
    "rings": ((0.0, 0.0), (np.sqrt(3 + 0.05**2),) * 2),
}


@pytest.mark.parametrize("name", NAMES_2D)
def test_2d_documented_scale(name):
    # n = 20000: sd of a sample mean <= 2.9/141 = 0.02, of a sample std about
    # 0.015 (more for the bimodal marginals); 0.1 is > 5 of either.
    x = data.sample_2d(name, 20000, rng=1)
    mean, std = SCALE[name]
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.1)
    np.testing.assert_allclose(x.std(axis=0), std, atol=0.1)


# --- 2-D sets: shapes ----------------------------------------------------------------


def test_ring8_density_is_the_target():
    mix = data.ring8_density()
    assert isinstance(mix, GaussianMixture)
    ref = ring_mixture()
    np.testing.assert_array_equal(mix.weights, ref.weights)
    np.testing.assert_array_equal(mix.means, ref.means)
    np.testing.assert_allclose(mix.weights, np.arange(1, 9) / 36.0, rtol=1e-15)


def test_ring8_mode_weights():
    # Modes are 12 std apart, so assignment errors are negligible and
    # n * w_hat_k is Binomial(n, w_k): sd <= sqrt(0.23 * 0.77 / n) = 0.003 at
    # n = 20000. Tolerance 5 sd; equal weights would be off by up to 0.1.
    n = 20000
    mix = data.ring8_density()
    w_hat = mode_weights(data.ring8(n, rng=2), mix)
    sd = np.sqrt(mix.weights * (1 - mix.weights) / n)
    assert np.all(np.abs(w_hat - mix.weights) < 5 * sd), (w_hat, mix.weights)


def test_moons_exact_geometry_without_noise():
    n = 1001
    x = data.two_moons(n, rng=3, noise=0.0)
    up, lo = x[: (n + 1) // 2], x[(n + 1) // 2 :]
    assert up.shape[0] == 501 and lo.shape[0] == 500
    c_up, c_lo = np.array([-1.0, -0.5]), np.array([1.0, 0.5])
    np.testing.assert_allclose(np.linalg.norm(up - c_up, axis=1), 2.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(lo - c_lo, axis=1), 2.0, rtol=1e-12)
    assert np.all(up[:, 1] >= c_up[1] - 1e-12) and np.all(lo[:, 1] <= c_lo[1] + 1e-12)


def _arc_distance(p, centre, sign):
    """Distance from points p (N, 2) to the half circle of radius 2 about centre on the side sign * y >= 0."""
    q = p - centre
    on_side = sign * q[:, 1] >= 0
    to_circle = np.abs(np.linalg.norm(q, axis=1) - 2.0)
    to_ends = np.minimum(np.linalg.norm(q - [2.0, 0.0], axis=1), np.linalg.norm(q + [2.0, 0.0], axis=1))
    return np.where(on_side, to_circle, to_ends)


def test_moons_two_clusters_with_noise():
    n = 20000
    half = n // 2
    up_arc = lambda p: _arc_distance(p, np.array([-1.0, -0.5]), +1)  # noqa: E731
    lo_arc = lambda p: _arc_distance(p, np.array([1.0, 0.5]), -1)  # noqa: E731
    # the two arcs are 1 apart at their closest (inner tips at distance 1
    # from the other moon's centre)
    clean = data.two_moons(n, rng=4, noise=0.0)
    gap = min(lo_arc(clean[:half]).min(), up_arc(clean[half:]).min())
    assert 0.99 < gap < 1.01
    # with noise 0.1 every point stays nearest its own arc (a 5-sigma move
    # would be needed to cross over), and its residual has sd 0.1
    x = data.two_moons(n, rng=4, noise=0.1)
    own = np.concatenate([up_arc(x[:half]), lo_arc(x[half:])])
    other = np.concatenate([lo_arc(x[:half]), up_arc(x[half:])])
    assert np.mean(own < other) > 0.999
    assert abs(np.sqrt(np.mean(own**2)) - 0.1) < 0.01


def test_swiss_roll_exact_geometry_without_noise():
    x = data.swiss_roll(2000, rng=5, noise=0.0)
    p = x + np.array([2.0 / 5.0, 2.0 / (15.0 * np.pi)])  # back to the spiral's centre
    t = 5.0 * np.linalg.norm(p, axis=1)
    assert np.all((t >= 1.5 * np.pi - 1e-9) & (t <= 4.5 * np.pi + 1e-9))
    # the angle of each point equals its parameter t, modulo 2 pi
    wrapped = np.angle(np.exp(1j * (np.arctan2(p[:, 1], p[:, 0]) - t)))
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-9)


def test_checkerboard_only_dark_squares_evenly():
    n = 20000
    x = data.checkerboard(n, rng=6)
    assert np.all((x >= -4.0) & (x <= 4.0))
    i, j = np.floor((x + 4.0) / 2.0).astype(int).T
    assert np.all((i + j) % 2 == 0)
    counts = np.bincount(4 * i + j, minlength=16)
    dark = [4 * a + b for a in range(4) for b in range(4) if (a + b) % 2 == 0]
    # each dark square has probability 1/8: sd = sqrt(1/8 * 7/8 / n) = 0.0023
    np.testing.assert_allclose(counts[dark] / n, 1 / 8, atol=5 * 0.0024)
    assert counts.sum() == counts[dark].sum()


def test_rings_radii_cluster_in_proportion():
    n = 20000
    x = data.concentric_rings(n, rng=7)
    r = np.linalg.norm(x, axis=1)
    k = np.argmin(np.abs(r[:, None] - np.array([1.0, 2.0, 3.0])), axis=1)
    # noise 0.05: a point 0.3 from its ring is a 6-sigma event
    assert np.all(np.abs(r - (k + 1.0)) < 0.3)
    frac = np.bincount(k, minlength=3) / n
    # proportional to circumference 1:2:3; sd <= sqrt(0.25 / n) = 0.0035
    np.testing.assert_allclose(frac, [1 / 6, 1 / 3, 1 / 2], atol=5 * 0.0036)


def test_rings_custom_radii():
    x = data.concentric_rings(500, rng=8, radii=[0.5], noise=0.0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 0.5, rtol=1e-12)


# --- glyph digits --------------------------------------------------------------------


def test_glyph_font_well_formed():
    assert len(data.GLYPHS) == 10
    for g in data.GLYPHS:
        assert len(g) == 7 and all(len(row) == 5 and set(row) <= {"#", "."} for row in g)
    assert len({"".join(g) for g in data.GLYPHS}) == 10


@pytest.mark.parametrize("size", [8, 11, 16])
def test_glyph_shapes_dtypes_ranges(size):
    images, labels = data.glyph_digits(103, size=size, rng=0)
    assert images.shape == (103, 1, size, size) and images.dtype == np.float32
    assert labels.shape == (103,) and labels.dtype == np.int64
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.9
    # balanced: 103 = 10 * 10 + 3
    assert sorted(np.bincount(labels, minlength=10)) == [10] * 7 + [11] * 3
    # dark background, and ink in every image
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() < -0.9
    assert np.all(images.reshape(103, -1).max(axis=1) > 0.0)


def test_glyph_float64_and_determinism():
    a, la = data.glyph_digits(50, rng=4, dtype=np.float64)
    b, lb = data.glyph_digits(50, rng=4, dtype=np.float64)
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    c, _ = data.glyph_digits(50, rng=5, dtype=np.float64)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(data.glyph_digits(50, rng=4)[0], a.astype(np.float32))


@pytest.mark.parametrize("size", [8, 16])
def test_glyph_classes_distinguishable(size):
    # Nearest-class-mean on fresh samples: measured 0.84 (size 8) and 0.72
    # (size 16) for these seeds; chance is 0.1 and the sd of an accuracy over
    # 1000 images is < 0.016, so 0.5 only fails if classes blur together.
    P = size * size
    train, y_train = data.glyph_digits(2000, size=size, rng=10)
    test, y_test = data.glyph_digits(1000, size=size, rng=11)
    means = np.stack([train[y_train == c].reshape(-1, P).mean(axis=0) for c in range(10)])  # (10, P)
    d2 = np.sum((test.reshape(-1, 1, P) - means[None]) ** 2, axis=-1)  # (N, 10)
    accuracy = np.mean(np.argmin(d2, axis=1) == y_test)
    assert accuracy > 0.5, accuracy
    # class means differ clearly: RMS pixel difference >= 0.12 for every pair
    # (measured >= 0.2 at size 8); with shuffled labels it would be ~0.05
    rms = np.sqrt(np.mean((means[:, None] - means[None]) ** 2, axis=-1))
    assert rms[~np.eye(10, dtype=bool)].min() > 0.12


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, r"n must be an int >= 1, got 0"),
    ({"n": 10, "size": 7}, r"size must be an int >= 8, got 7"),
    ({"n": 10, "size": 8.0}, r"size must be an int >= 8, got 8.0"),
])
def test_glyph_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.glyph_digits(**kwargs)


def test_glyph_bad_dtype():
    with pytest.raises(TypeError, match=r"dtype must be a real floating dtype"):
        data.glyph_digits(10, dtype=np.uint8)


# --- scikit-learn digits and load_images -------------------------------------------------


def test_load_digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = data.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == -1.0 and images.max() == 1.0
    assert np.all(np.bincount(labels, minlength=10) >= 170)
    raw = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(images[:, 0], (raw.images / 8.0 - 1.0).astype(np.float32))
    np.testing.assert_array_equal(labels, raw.target)
    assert data.load_digits(dtype=np.float64)[0].dtype == np.float64


def test_load_digits_without_sklearn(monkeypatch):
    # a None entry in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "refdiff\[images\]"'):
        data.load_digits()


def test_image_registry():
    assert sorted(data.IMAGE_DATASETS) == ["digits", "glyphs"]
    assert data.IMAGE_DATASETS["digits"][0] is data.load_digits
    assert data.IMAGE_DATASETS["glyphs"][0] is data.glyph_digits


def test_load_images_glyphs():
    a, la = data.load_images("glyphs", 30, rng=1, size=16)
    b, lb = data.glyph_digits(30, size=16, rng=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    with pytest.raises(ValueError, match=r"n must be an int >= 1 for the generated 'glyphs' set, got None"):
        data.load_images("glyphs")


def test_load_images_digits_subset():
    pytest.importorskip("sklearn")
    full, full_labels = data.load_images("digits")
    assert full.shape == (1797, 1, 8, 8)
    sub, sub_labels = data.load_images("digits", 100, rng=0)
    assert sub.shape == (100, 1, 8, 8)
    again, _ = data.load_images("digits", 100, rng=0)
    np.testing.assert_array_equal(sub, again)
    with pytest.raises(ValueError, match=r"n must be at most 1797 for 'digits', got 1798"):
        data.load_images("digits", 1798)


def test_load_images_unknown_name():
    with pytest.raises(ValueError, match=r"name must be one of \['digits', 'glyphs'\], got 'mnist'"):
        data.load_images("mnist", 10)


# --- split ------------------------------------------------------------------------------


def test_split_is_a_permutation():
    x = np.arange(50.0).reshape(25, 2)
    y = np.arange(25)
    x_tr, x_te, y_tr, y_te = data.split(x, y, test_fraction=0.2, rng=0)
    assert x_tr.shape == (20, 2) and x_te.shape == (5, 2)
    # labels stay with their rows, and every row appears exactly once
    np.testing.assert_array_equal(x_tr[:, 0], 2.0 * y_tr)
    np.testing.assert_array_equal(x_te[:, 0], 2.0 * y_te)
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])), y)


def test_split_deterministic_and_seeded():
    x = np.arange(100.0)[:, None]
    a_tr, a_te = data.split(x, rng=3)
    b_tr, b_te = data.split(x, rng=3)
    np.testing.assert_array_equal(a_te, b_te)
    np.testing.assert_array_equal(a_tr, b_tr)
    c_tr, c_te = data.split(x, rng=4)
    assert not np.array_equal(a_te, c_te)
    assert a_te.shape == (20, 1)


@pytest.mark.parametrize("n, frac", [(1, 0.5), (10, 0.01), (10, 0.99)])
def test_split_empty_part(n, frac):
    with pytest.raises(ValueError, match=r"both parts must be non-empty"):
        data.split(np.zeros((n, 2)), test_fraction=frac)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.2, "0.2"])
def test_split_bad_fraction(frac):
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\)"):
        data.split(np.zeros((10, 2)), test_fraction=frac)


def test_split_labels_mismatch():
    with pytest.raises(ValueError, match=r"labels must have one entry per row of x \(10\), got shape \(9,\)"):
        data.split(np.zeros((10, 2)), np.zeros(9))


# --- check_training_data ---------------------------------------------------------------


def test_check_returns_float_array():
    x = np.ones((4, 2), dtype=np.float32)
    assert data.check_training_data(x) is x
    ints = data.check_training_data(np.arange(6).reshape(3, 2))
    assert ints.dtype == np.float64
    np.testing.assert_array_equal(ints, np.arange(6.0).reshape(3, 2))
    assert data.check_training_data([[True], [False]]).dtype == np.float64
    images = np.zeros((2, 1, 8, 8))
    assert data.check_training_data(images, image=(1, 8, 8)) is images


def test_check_empty():
    with pytest.raises(ValueError, match=r"x0 is empty: got shape \(0, 2\)"):
        data.check_training_data(np.empty((0, 2)), "x0")
    with pytest.raises(ValueError, match=r"data is empty: got shape \(0,\)"):
        data.check_training_data([])


def test_check_non_finite_counts():
    x = np.zeros((10, 3))
    x[1, 2] = x[4, 0] = np.nan
    x[7, 1] = -np.inf
    with pytest.raises(ValueError, match=r"x must be finite, got 2 NaN and 1 infinite value\(s\) among 30"):
        data.check_training_data(x, "x")


def test_check_ndim():
    with pytest.raises(ValueError, match=r"data must have shape \(N, D, \.\.\.\) with at least 2 axes, got shape \(5,\)"):
        data.check_training_data(np.zeros(5))
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\) = \(N, 1, 8, 8\), got shape \(5, 64\)"):
        data.check_training_data(np.zeros((5, 64)), "images", image=(1, 8, 8))


def test_check_image_shape():
    with pytest.raises(ValueError, match=r"must have image shape \(C, H, W\) = \(1, 16, 16\), got \(1, 8, 8\)"):
        data.check_training_data(np.zeros((5, 1, 8, 8)), image=(1, 16, 16))


def test_check_min_rows():
    with pytest.raises(ValueError, match=r"data must have at least 4 rows, got 3"):
        data.check_training_data(np.zeros((3, 2)), min_rows=4)
    with pytest.raises(ValueError, match=r"min_rows must be an int >= 1, got 0"):
        data.check_training_data(np.zeros((3, 2)), min_rows=0)


@pytest.mark.parametrize("image", [(8, 8), (1, 0, 8), (1.0, 8, 8), "1x8x8"])
def test_check_bad_image_spec(image):
    with pytest.raises(ValueError, match=r"image must be a tuple \(C, H, W\) of 3 positive ints"):
        data.check_training_data(np.zeros((2, 1, 8, 8)), image=image)


@pytest.mark.parametrize("bad", [np.array([["a", "b"]]), [[1, "a"]], None, np.ones((2, 2), dtype=complex)])
def test_check_non_numeric(bad):
    with pytest.raises(TypeError, match=r"data must be"):
        data.check_training_data(bad)


def test_check_other_namespace(xp):
    x = xp.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert data.check_training_data(x) is x
    bad = xp.asarray([[1.0, float("nan")], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"got 1 NaN and 0 infinite"):
        data.check_training_data(bad)
