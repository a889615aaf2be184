"""Second derivatives of the exact log-density: GaussianMixture.score_divergence and score_hvp.

Checked against central finite differences of ``score`` (float64, h = 1e-5;
truncation error O(h^2) times the third derivative, rounding O(eps/h)): the
relative error bound is 1e-8, measured 2e-11 to 1e-9. Also checked against
each other and against the closed form for a single Gaussian.
"""

import numpy as np
import pytest

from refdiff.analytic import Gaussian, GaussianMixture
from refdiff.sde import VESDE, VPSDE, SubVPSDE

KINDS = ("full", "diagonal", "isotropic")

# (process, t) pairs: the mixture itself (t = 0), scalar t and one t per example
TIMES = {
    "t0": (None, None),
    "vp-scalar": (VPSDE(), 0.3),
    "vp-per-example": (VPSDE(), "per-example"),
    "subvp-per-example": (SubVPSDE(), "per-example"),
    "ve-scalar": (VESDE(sigma_max=5.0), 0.4),
}


def make_mixture(kind, K=4, D=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    full = 0.3 * A @ A.transpose(0, 2, 1) + 0.1 * np.eye(D)
    covs = {"full": full, "diagonal": np.diagonal(full, axis1=1, axis2=2).copy(), "isotropic": full[:, 0, 0].copy()}[kind]
    w = rng.random(K) + 0.1
    return GaussianMixture(w / w.sum(), 1.5 * rng.standard_normal((K, D)), covs)


def resolve_time(name, n, rng):
    process, t = TIMES[name]
    if isinstance(t, str):
        t = rng.uniform(0.01, 0.9, size=n)
    return process, t


def fd_jacobian(gm, x, process, t, h=1e-5):
    """J[n, i, j] = d score_i / d x_j by central differences, shape (N, D, D)."""
    cols = [(gm.score(x + h * e, process, t) - gm.score(x - h * e, process, t)) / (2 * h) for e in np.eye(x.shape[1])]
    return np.stack(cols, axis=2)


def rel_err(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("when", sorted(TIMES))
@pytest.mark.parametrize("kind", KINDS)
def test_divergence_and_hvp_match_finite_differences(kind, when):
    gm = make_mixture(kind)
    rng = np.random.default_rng(1)
    n = 12
    process, t = resolve_time(when, n, rng)
    # points near and between the components, where the posterior switches and Cov_r[s_k] matters
    x = gm.sample(n, rng=2) + 0.7 * rng.standard_normal((n, gm.dim))
    J = fd_jacobian(gm, x, process, t)
    assert rel_err(gm.score_divergence(x, process, t), np.trace(J, axis1=1, axis2=2)) < 1e-8
    v = rng.standard_normal((n, gm.dim))
    assert rel_err(gm.score_hvp(x, v, process, t), np.einsum("nij,nj->ni", J, v)) < 1e-8


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_is_trace_of_hvp_and_hessian_is_symmetric(kind):
    gm = make_mixture(kind, K=5, D=4, seed=3)
    rng = np.random.default_rng(4)
    process, t = VPSDE(), rng.uniform(0.0, 1.0, size=7)
    x = 2.0 * rng.standard_normal((7, 4))
    cols = [gm.score_hvp(x, np.tile(e, (7, 1)), process, t) for e in np.eye(4)]
    H = np.stack(cols, axis=2)  # (N, D, D)
    np.testing.assert_allclose(gm.score_divergence(x, process, t), np.trace(H, axis1=1, axis2=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H, np.swapaxes(H, 1, 2), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kind", KINDS)
def test_single_gaussian_closed_form(kind):
    """For one Gaussian the Hessian is -C_t^{-1} everywhere: divergence -tr C^{-1}, hvp -C^{-1} v."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 3))
    full = A @ A.T + 0.5 * np.eye(3)
    cov = {"full": full, "diagonal": np.diag(full).copy(), "isotropic": full[0, 0]}[kind]
    g = Gaussian(np.array([0.5, -1.0, 2.0]), cov)
    process, t = VPSDE(), 0.25
    C = g.diffuse(process, t).full_covs()[0]
    x, v = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    Cinv = np.linalg.inv(C)
    np.testing.assert_allclose(g.score_divergence(x, process, t), np.full(6, -np.trace(Cinv)), rtol=1e-12)
    np.testing.assert_allclose(g.score_hvp(x, v, process, t), -v @ Cinv, rtol=1e-10, atol=1e-12)


def test_far_points_and_zero_weights():
    """Far out the posterior is one-hot on the widest component (var 0.5): Laplacian -2/0.5, no overflow."""
    gm = GaussianMixture(np.array([0.0, 0.3, 0.7]), np.array([[9.0, 9.0], [-1.0, 0.0], [1.0, 0.0]]), np.array([1.0, 0.5, 0.25]))
    x = np.array([[1e4, 0.0], [-1e4, 0.0]])
    div = gm.score_divergence(x)
    np.testing.assert_allclose(div, [-2 / 0.5, -2 / 0.5], rtol=1e-10)
    hv = gm.score_hvp(x, np.ones((2, 2)))
    np.testing.assert_allclose(hv, np.full((2, 2), -2.0), rtol=1e-10)
    # between the two live components both posterior weights and the spread term are O(1)
    mid = np.array([[0.1, 0.0]])
    np.testing.assert_allclose(gm.score_divergence(mid), GaussianMixture(gm.weights[1:], gm.means[1:], gm.covs[1:]).score_divergence(mid), rtol=1e-13)


def test_float32_in_float32_out():
    gm = make_mixture("full")
    x = np.random.default_rng(6).standard_normal((5, 3))
    v = np.ones((5, 3))
    d32 = gm.score_divergence(x.astype(np.float32), VPSDE(), 0.5)
    h32 = gm.score_hvp(x.astype(np.float32), v.astype(np.float32), VPSDE(), 0.5)
    assert d32.dtype == np.float32 and h32.dtype == np.float32
    np.testing.assert_allclose(d32, gm.score_divergence(x, VPSDE(), 0.5), rtol=1e-4)
    np.testing.assert_allclose(h32, gm.score_hvp(x, v, VPSDE(), 0.5), rtol=1e-4, atol=1e-4)


def test_array_api_strict_matches_numpy():
    xps = pytest.importorskip("array_api_strict")
    gm = make_mixture("full")
    rng = np.random.default_rng(7)
    x, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    t = np.linspace(0.1, 0.9, 4)
    div = gm.score_divergence(xps.asarray(x), VPSDE(), t)
    hv = gm.score_hvp(xps.asarray(x), xps.asarray(v), VPSDE(), t)
    np.testing.assert_allclose(np.asarray(div), gm.score_divergence(x, VPSDE(), t), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(hv), gm.score_hvp(x, v, VPSDE(), t), rtol=1e-12)


def test_bad_inputs():
    gm = make_mixture("diagonal")
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match="v must have one row per row of x"):
        gm.score_hvp(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"v must have shape \(N, 3\)"):
        gm.score_hvp(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="v must be finite"):
        gm.score_hvp(x, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        gm.score_divergence(np.zeros(3))
    with pytest.raises(ValueError, match="without t"):
        gm.score_divergence(x, VPSDE())


@pytest.mark.parametrize("dtype,far", [(np.float32, 1e20), (np.float64, 1e160)])
def test_hessian_far_from_every_component_is_quiet(dtype, far):
    """The far point's fields and their spread overflow inside the pass (as the score's do), which warned (an error
    here) though the result is right: the Hessian of the nearer component by q, -C_0^{-1}."""
    gm = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [4.0, 0.0]], [[1.0, 1.0], [1e-2, 3.0]])
    x = np.array([[far, 0.0]], dtype)
    np.testing.assert_array_equal(gm.score_divergence(x), [-2.0])
    np.testing.assert_array_equal(gm.score_hvp(x, np.ones_like(x)), [[-1.0, -1.0]])
