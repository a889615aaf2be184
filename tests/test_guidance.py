"""Tests of refdiff.guidance against exact labelled-mixture quantities, finite differences and SciPy densities."""

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from refdiff.analytic import GaussianMixture
from refdiff.backend import to_numpy
from refdiff.guidance import LabelledMixture, classifier_free_guidance, classifier_guidance
from refdiff.param import convert, v_from_eps_x0
from refdiff.schedules import DiscreteSchedule, linear_betas
from refdiff.sde import VESDE, VPSDE

KINDS = ("full", "diagonal", "isotropic")


def make_labelled(kind="full", K=5, D=2, seed=0):
    """Five components in three classes (labels 0, 2, 5: not contiguous on purpose)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    full = 0.3 * A @ A.transpose(0, 2, 1) + 0.2 * np.eye(D)
    covs = {"full": full, "diagonal": np.diagonal(full, axis1=1, axis2=2).copy(), "isotropic": full[:, 0, 0].copy()}[kind]
    w = rng.random(K) + 0.2
    gm = GaussianMixture(w / w.sum(), 2.0 * rng.standard_normal((K, D)), covs)
    return LabelledMixture(gm, np.array([0, 2, 0, 5, 2])[:K])


def fd_grad(f, x, h=1e-5):
    """Central differences of a per-row scalar function f: (N, D) -> (N,)."""
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], axis=1)


def scale_of(a):
    return np.max(np.abs(a))


PROCESSES = {"vp": VPSDE(), "ve": VESDE(sigma_max=10.0), "ddpm": DiscreteSchedule(linear_betas(1000))}


def times(process, n, rng):
    if isinstance(process, DiscreteSchedule):
        return rng.integers(1, process.T + 1, size=n)
    return rng.uniform(0.05, 0.9, size=n)


# ------------------------------------------------------- labelled mixture
def test_conditional_and_prior_are_renormalised_sub_mixtures():
    lm = make_labelled()
    gm = lm.mixture
    assert lm.classes.tolist() == [0, 2, 5]
    prior = lm.class_prior()
    np.testing.assert_allclose(prior, [gm.weights[[0, 2]].sum(), gm.weights[[1, 4]].sum(), gm.weights[3]], rtol=1e-15)
    assert abs(prior.sum() - 1.0) < 1e-15
    for c, idx in ((0, [0, 2]), (2, [1, 4]), (5, [3])):
        sub = lm.conditional(c)
        assert abs(sub.weights.sum() - 1.0) < 1e-15
        np.testing.assert_allclose(sub.weights, gm.weights[idx] / gm.weights[idx].sum(), rtol=1e-15)
        np.testing.assert_array_equal(sub.means, gm.means[idx])
        np.testing.assert_array_equal(sub.covs, gm.covs[idx])
    assert lm.conditional(np.int64(2)) is lm.conditional(2)  # built once


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["vp", "ve", "ddpm"])
def test_class_posterior_is_summed_component_posterior_and_bayes(kind, pname):
    lm, process = make_labelled(kind), PROCESSES[pname]
    rng = np.random.default_rng(1)
    x = 2.0 * rng.standard_normal((12, 2))
    t = times(process, 12, rng)
    post = lm.class_posterior(x, process, t)
    assert post.shape == (12, 3)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    comp = lm.mixture.component_posterior(x, process, t)
    for j, c in enumerate(lm.classes):  # slow inline sum over the components of each class
        want = sum(comp[:, k] for k in range(lm.mixture.n_components) if lm.labels[k] == c)
        np.testing.assert_allclose(post[:, j], want, rtol=1e-13, atol=1e-15)
    # Bayes with SciPy densities of the diffused components, one row at a time
    gamma, var = process.mean_coef(t), process.variance(t)
    covs = lm.mixture.full_covs()
    for i in range(12):
        comps = zip(lm.mixture.means, covs)
        dens = np.array(
            [multivariate_normal(gamma[i] * m, gamma[i] ** 2 * C + var[i] * np.eye(2)).logpdf(x[i]) for m, C in comps]
        )
        logj = np.log(lm.mixture.weights) + dens
        want = [np.exp(logsumexp(logj[lm.labels == c]) - logsumexp(logj)) for c in lm.classes]
        np.testing.assert_allclose(post[i], want, rtol=1e-10, atol=1e-14)
    # log p(y|x) from the two log-densities agrees with the posterior table
    for j, c in enumerate(lm.classes):
        np.testing.assert_allclose(lm.class_log_prob(x, int(c), process, t), np.log(post[:, j]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["vp", "ve"])
def test_classifier_gradient_matches_finite_differences(kind, pname):
    lm, process = make_labelled(kind), PROCESSES[pname]
    rng = np.random.default_rng(2)
    x = 2.0 * rng.standard_normal((9, 2))
    t = rng.uniform(0.05, 0.9, size=9)
    y = rng.choice(lm.classes, size=9)  # per-example labels, per-example times
    assert len(np.unique(y)) > 1
    got = lm.classifier_log_prob_grad(x, y, process, t)
    want = fd_grad(lambda z: lm.class_log_prob(z, y, process, t), x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * max(1.0, scale_of(want)))
    # one label for all rows, one scalar time, and at the data itself (no process)
    for proc, tt in ((process, 0.3), (None, None)):
        got = lm.classifier_log_prob_grad(x, 2, proc, tt)
        want = fd_grad(lambda z, proc=proc, tt=tt: lm.class_log_prob(z, 2, proc, tt), x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * max(1.0, scale_of(want)))


def test_per_example_labels_match_row_by_row():
    lm, process = make_labelled(), VPSDE()
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((7, 2)), rng.uniform(0.05, 0.9, size=7)
    y = np.array([0, 5, 2, 2, 0, 5, 0])
    grad = lm.classifier_log_prob_grad(x, y, process, t)
    cond = lm.cond_model(y, process)(x, t)
    for i in range(7):
        row = lm.classifier_log_prob_grad(x[i : i + 1], int(y[i]), process, t[i])
        np.testing.assert_allclose(grad[i : i + 1], row, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(cond[i : i + 1], lm.conditional(int(y[i])).score(x[i : i + 1], process, t[i]), rtol=1e-14)


# --------------------------------------------------------------- guidance
@pytest.mark.parametrize("pname", ["vp", "ve", "ddpm"])
@pytest.mark.parametrize("y", [2, np.array([0, 5, 2, 2, 0, 5, 0, 2])])
def test_gamma_one_is_the_conditional_score_and_gamma_zero_the_unconditional(pname, y):
    lm, process = make_labelled(), PROCESSES[pname]
    rng = np.random.default_rng(4)
    x, t = 2.0 * rng.standard_normal((8, 2)), times(process, 8, rng)
    uncond, cond = lm.uncond_model(process), lm.cond_model(y, process)
    labels = np.broadcast_to(y, (8,))
    exact_cond = np.concatenate([lm.conditional(int(c)).score(x[i : i + 1], process, t[i]) for i, c in enumerate(labels)])
    exact_uncond = lm.mixture.score(x, process, t)
    tol = 1e-10 * scale_of(exact_cond)
    cg = classifier_guidance(uncond, lm.classifier_grad(y, process), 1.0)
    cfg = classifier_free_guidance(uncond, cond, 1.0)
    np.testing.assert_allclose(cg(x, t), exact_cond, rtol=1e-10, atol=tol)
    np.testing.assert_allclose(cfg(x, t), exact_cond, rtol=1e-10, atol=tol)
    for kind in ("classifier", "cfg"):
        np.testing.assert_allclose(lm.guided_model(y, 1.0, process, kind)(x, t), exact_cond, rtol=1e-10, atol=tol)
        np.testing.assert_allclose(lm.guided_model(y, 0.0, process, kind)(x, t), exact_uncond, rtol=1e-10, atol=tol)
    cg0 = classifier_guidance(uncond, lm.classifier_grad(y, process), 0.0)
    np.testing.assert_allclose(cg0(x, t), exact_uncond, rtol=1e-14)
    np.testing.assert_allclose(classifier_free_guidance(uncond, cond, 0)(x, t), exact_uncond, rtol=1e-14)


@pytest.mark.parametrize("pname", ["vp", "ve"])
@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_classifier_and_cfg_agree_for_exact_ingredients(pname, gamma):
    lm, process = make_labelled("diagonal"), PROCESSES[pname]
    rng = np.random.default_rng(5)
    x, t = 2.0 * rng.standard_normal((10, 2)), rng.uniform(0.05, 0.9, size=10)
    a = lm.guided_model(5, gamma, process, "classifier")(x, t)
    b = lm.guided_model(5, gamma, process, "cfg")(x, t)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * scale_of(a))
    # and both are u + gamma (c - u) = (1 + w) c - w u with w = gamma - 1 (PITFALLS 18)
    u, c = lm.mixture.score(x, process, t), lm.conditional(5).score(x, process, t)
    w = gamma - 1.0
    np.testing.assert_allclose(a, (1 + w) * c - w * u, rtol=1e-10, atol=1e-10 * scale_of(a))


@pytest.mark.parametrize("pname", ["vp", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_commutes_with_conversion(pname, prediction):
    """CFG on eps / x0 / v predictions (from Tweedie's denoiser, not from the score) equals CFG on scores, converted."""
    lm, process = make_labelled(), PROCESSES[pname]
    rng = np.random.default_rng(6)
    x, t = 2.0 * rng.standard_normal((10, 2)), rng.uniform(0.05, 0.9, size=10)
    y, gamma = 0, 2.5
    sub = lm.conditional(y)

    def pred_of(gm):
        if prediction == "eps":
            return lambda z, s: gm.eps(z, process, s)
        if prediction == "x0":
            return lambda z, s: gm.denoise(z, process, s)
        return lambda z, s: v_from_eps_x0(gm.eps(z, process, s), gm.denoise(z, process, s), process, s)

    guided_pred = classifier_free_guidance(pred_of(lm.mixture), pred_of(sub), gamma, prediction=prediction)(x, t)
    guided_score = classifier_free_guidance(lm.uncond_model(process), lm.cond_model(y, process), gamma)(x, t)
    want = convert(guided_score, "score", prediction, x, process, t)
    np.testing.assert_allclose(guided_pred, want, rtol=1e-9, atol=1e-9 * scale_of(want))
    back = convert(guided_pred, prediction, "score", x, process, t)
    np.testing.assert_allclose(back, guided_score, rtol=1e-8, atol=1e-9 * scale_of(guided_score))
    # the mixture's own guided model in that kind, and classifier guidance on that kind
    own = lm.guided_model(y, gamma, process, "cfg", prediction)(x, t)
    np.testing.assert_allclose(own, want, rtol=1e-9, atol=1e-9 * scale_of(want))
    cg = classifier_guidance(pred_of(lm.mixture), lm.classifier_grad(y, process), gamma, prediction, process)(x, t)
    np.testing.assert_allclose(cg, want, rtol=1e-9, atol=1e-9 * scale_of(want))


def test_classifier_guidance_eps_form_is_dhariwal_nichol():
    """eps_hat = eps - gamma sigma_t grad log p(y|x_t) (Dhariwal & Nichol 2021, Algorithm 2)."""
    lm, process = make_labelled(), VPSDE()
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((6, 2)), rng.uniform(0.05, 0.9, size=6)
    eps_fn = lambda z, s: lm.mixture.eps(z, process, s)
    got = classifier_guidance(eps_fn, lm.classifier_grad(2, process), 4.0, "eps", process)(x, t)
    want = eps_fn(x, t) - 4.0 * process.std(t)[:, None] * lm.classifier_log_prob_grad(x, 2, process, t)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_larger_gamma_raises_class_probability_faster():
    """d/dh log p(y | x + h s_gamma) at h = 0 is g.s + gamma |g|^2: increasing in gamma; checked by finite steps."""
    lm, process = make_labelled(), VPSDE()
    rng = np.random.default_rng(8)
    x, t, y = 2.0 * rng.standard_normal((20, 2)), 0.3, 0
    h = 1e-4
    base = lm.class_log_prob(x, y, process, t)
    rises = []
    for gamma in (0.0, 1.0, 2.0, 4.0):
        s = lm.guided_model(y, gamma, process)(x, t)
        rises.append((lm.class_log_prob(x + h * s, y, process, t) - base) / h)
    rises = np.array(rises)  # (4, N)
    assert np.all(np.diff(rises, axis=0) > 0)


def test_tilted_density_on_a_grid_1d():
    """p^(1-g) p_y^g normalised on a grid: its score is the guided score at t = 0, and it puts more mass on y as g grows."""
    gm = GaussianMixture([0.7, 0.3], [[-1.0], [1.5]], [0.5, 0.8])
    lm, process, y = LabelledMixture(gm, [0, 1]), VPSDE(), 1
    grid = np.linspace(-8.0, 10.0, 20001)[:, None]
    dx = grid[1, 0] - grid[0, 0]
    log_p, log_py = gm.log_prob(grid), lm.conditional(y).log_prob(grid)
    post_y = lm.class_posterior(grid)[:, 1]
    masses = []
    for gamma in (0.0, 0.5, 1.0, 2.0, 4.0):
        log_tilt = (1 - gamma) * log_p + gamma * log_py
        dens = np.exp(log_tilt - log_tilt.max())
        dens /= dens.sum() * dx
        masses.append(np.sum(dens * post_y) * dx)  # E_tilted[p(y | x)]
        # score of the tilted density by differences on the grid vs the guided model at t = 0 (gamma_0 = 1, sigma_0 = 0)
        pts = grid[5000:15001:1000]
        fd = (np.interp(pts[:, 0] + 1e-4, grid[:, 0], log_tilt) - np.interp(pts[:, 0] - 1e-4, grid[:, 0], log_tilt)) / 2e-4
        for kind in ("classifier", "cfg"):
            guided = lm.guided_model(y, gamma, process, kind)(pts, 0.0)[:, 0]
            np.testing.assert_allclose(guided, fd, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(masses[0], 0.3, rtol=1e-10)  # E_p[p(y|x)] = p(y)
    assert np.all(np.diff(masses) > 1e-3)


def test_float32_in_float32_out():
    lm, process = make_labelled(), VPSDE()
    x = np.random.default_rng(9).standard_normal((4, 2)).astype(np.float32)
    for kind in ("classifier", "cfg"):
        out = lm.guided_model(2, 2.0, process, kind)(x, 0.4)
        assert out.dtype == np.float32
        want = lm.guided_model(2, 2.0, process, kind)(x.astype(np.float64), 0.4)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * scale_of(want))
    assert lm.class_posterior(x, process, 0.4).dtype == np.float32


def test_zero_weight_component_keeps_its_class_usable():
    gm = GaussianMixture([0.5, 0.0, 0.5], [[0.0], [3.0], [-3.0]], [1.0, 1.0, 1.0])
    lm = LabelledMixture(gm, [0, 0, 1])
    x = np.array([[2.9], [0.1], [-3.0]])
    np.testing.assert_allclose(lm.class_posterior(x).sum(axis=1), 1.0, atol=1e-15)
    np.testing.assert_allclose(lm.conditional(0).weights, [1.0, 0.0])
    np.testing.assert_allclose(lm.conditional(0).score(x), -x, rtol=1e-14)  # only N(0, 1) carries weight


def test_runs_on_namespace(xp):
    """Same numbers on any array-API namespace: labels stay on the host, the arithmetic follows x. NumPy's
    arithmetic (NumPy, array_api_strict) gives the same bits; CuPy's scores come from the CUDA twin, whose
    exp and log differ from the host's in the last places."""
    lm, process = make_labelled(), VPSDE()
    x = np.random.default_rng(10).standard_normal((5, 2))
    t, y = np.linspace(0.1, 0.9, 5), np.array([0, 2, 5, 0, 2])
    xs = xp.asarray(x)
    tol = 0.0 if xp.__name__ in ("numpy", "array_api_strict") else 1e-12
    for kind in ("classifier", "cfg"):
        for prediction in ("score", "eps"):
            got = lm.guided_model(y, 2.0, process, kind, prediction)(xs, t)
            assert type(got) is type(xs)
            want = lm.guided_model(y, 2.0, process, kind, prediction)(x, t)
            np.testing.assert_allclose(to_numpy(got), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(to_numpy(lm.class_posterior(xs, process, t)), lm.class_posterior(x, process, t),
                               rtol=tol, atol=tol)  # fmt: skip


# ---------------------------------------------------------------- errors
def test_bad_inputs_raise_with_the_argument_named():
    lm, process = make_labelled(), VPSDE()
    u, c = lm.uncond_model(process), lm.cond_model(0, process)
    with pytest.raises(ValueError, match="labels must have shape"):
        LabelledMixture(lm.mixture, [0, 1])
    with pytest.raises(TypeError, match="labels must be an integer"):
        LabelledMixture(lm.mixture, np.zeros(5))
    with pytest.raises(TypeError, match="mixture must be a GaussianMixture"):
        LabelledMixture("gm", [0])
    with pytest.raises(ValueError, match="class 1 has weight 0"):
        LabelledMixture(GaussianMixture([1.0, 0.0], [[0.0], [1.0]], [1.0, 1.0]), [0, 1])
    with pytest.raises(ValueError, match=r"y must be one of the classes \[0, 2, 5\], got \[1\]"):
        lm.conditional(1)
    with pytest.raises(ValueError, match="y must be one of the classes"):
        lm.guided_model(np.array([0, 7]), 1.0, process)
    with pytest.raises(TypeError, match="y must be an int"):
        lm.classifier_log_prob_grad(np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match=r"y must be a scalar or shape \(3,\)"):
        lm.classifier_log_prob_grad(np.zeros((3, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="conditional takes one label"):
        lm.conditional(np.array([0, 2]))
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
            classifier_free_guidance(u, c, bad)
        with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
            lm.guided_model(0, bad, process)
    for bad in (True, "2", None):
        with pytest.raises(TypeError, match="gamma must be a real number"):
            classifier_guidance(u, lm.classifier_grad(0, process), bad)
    with pytest.raises(ValueError, match=r"prediction must be one of \('eps', 'x0', 'score', 'v'\), got 'noise'"):
        classifier_free_guidance(u, c, 2.0, prediction="noise")
    with pytest.raises(ValueError, match="prediction must be one of"):
        lm.guided_model(0, 2.0, process, prediction="sample")
    with pytest.raises(ValueError, match="kind must be one of"):
        lm.guided_model(0, 2.0, process, kind="free")
    with pytest.raises(ValueError, match="needs the process"):
        classifier_guidance(u, lm.classifier_grad(0, process), 2.0, prediction="eps")
    with pytest.raises(ValueError, match="needs a process"):
        lm.uncond_model(None)
    with pytest.raises(TypeError, match="cond_fn must be a callable"):
        classifier_free_guidance(u, np.zeros(2), 2.0)
    with pytest.raises(ValueError, match=r"cond_fn\(x, t\) must return an array of x's shape \(3, 2\), got \(3,\)"):
        classifier_free_guidance(u, lambda x, t: x[:, 0], 2.0)(np.zeros((3, 2)), 0.5)


@pytest.mark.parametrize("dtype,far", [(np.float32, 1e20), (np.float64, 1e160)])
def test_class_log_prob_far_from_every_component(dtype, far):
    """Both log-densities underflow to -inf there, and their difference was NaN; class_posterior, from the scaled
    quadratic forms, is [1, 0] (the component wide along the far axis is the nearer by q)."""
    gm = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [4.0, 0.0]], [[1.0, 1.0], [1e-2, 3.0]])
    lm = LabelledMixture(gm, [0, 1])
    x = np.array([[far, 0.0], [1.0, 0.5]], dtype)
    post = lm.class_posterior(x)
    np.testing.assert_array_equal(post[0], [1.0, 0.0])
    got0, got1 = lm.class_log_prob(x, 0), lm.class_log_prob(x, 1)
    assert got0[0] == 0.0 and got1[0] == -np.inf
    np.testing.assert_allclose(np.exp([got0[1], got1[1]]), post[1], rtol=1e-5)  # near points: as before
    np.testing.assert_array_equal(lm.class_log_prob(x, np.array([1, 0]))[:1], [-np.inf])
