"""refdiff.targets: the analytic targets the samplers are measured on, and their argument checks."""

import numpy as np
import pytest

from refdiff.targets import TARGETS, make_target, random_mixture, ring_mixture


def test_ring_mixture_geometry_and_weights():
    m = ring_mixture(n_modes=4, radius=2.0, std=0.5)
    np.testing.assert_allclose(np.linalg.norm(m.means, axis=1), 2.0)
    np.testing.assert_allclose(m.weights, np.arange(1, 5) / 10.0)
    np.testing.assert_allclose(ring_mixture(3, weights="equal").weights, 1 / 3)
    np.testing.assert_allclose(m.full_covs(), np.broadcast_to(0.25 * np.eye(2), (4, 2, 2)))


def test_random_mixture_is_a_function_of_its_seed():
    a, b = random_mixture(dim=3, n_components=4, rng=5), random_mixture(dim=3, n_components=4, rng=5)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.full_covs(), b.full_covs())
    eig = np.linalg.eigvalsh(random_mixture(dim=5, n_components=3, rng=1, eig_range=(0.1, 0.2)).full_covs())
    assert eig.min() >= 0.1 * (1 - 1e-12) and eig.max() <= 0.2 * (1 + 1e-12)
    assert set(TARGETS) == {"ring8", "mixture16"} and make_target("mixture16").dim == 16


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ring_mixture(n_modes=0), "n_modes must be a positive int"),
        (lambda: ring_mixture(std=-1.0), "std must be a finite number > 0"),  # once taken as std 1
        (lambda: ring_mixture(std=0.0), "std must be a finite number > 0"),
        (lambda: ring_mixture(radius=np.nan), "radius must be a finite number >= 0"),
        (lambda: ring_mixture(2, weights=[1.0, -1.0]), "weights must be None, 'equal' or 2 finite numbers >= 0"),
        (lambda: ring_mixture(3, weights=[1.0, 2.0]), "weights must be None, 'equal' or 3"),
        (lambda: ring_mixture(2, weights=[0.0, 0.0]), "with a positive sum"),
        (lambda: random_mixture(dim=0), "dim must be a positive int"),
        (lambda: random_mixture(n_components=2.0), "n_components must be a positive int"),
        (lambda: random_mixture(eig_range=(-1.0, 0.05)), "eig_range must be two finite numbers 0 < low <= high"),
        (lambda: random_mixture(eig_range=(0.5, 0.05)), "eig_range must be two finite numbers 0 < low <= high"),
        (lambda: random_mixture(eig_range=0.5), "eig_range must be two finite numbers"),
        (lambda: random_mixture(mean_scale=-1.0), "mean_scale must be a finite number >= 0"),
        (lambda: make_target("ring9"), "unknown target 'ring9'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()
