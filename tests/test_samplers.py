"""Tests of refdiff.samplers: the shared contract, exact identities between samplers, grids and errors.

Small sizes throughout (the statistical checks of sample quality at 20 000
samples live in test_samplers_slow.py). Every check has a fixed seed; where a
tolerance is a multiple of a standard error the comment says how many.

What is checked here:

* every sampler of ``DIFFUSION_SAMPLERS`` runs on a VPSDE (and the four that
  take one on a DiscreteSchedule), returns finite output of the right shape
  and dtype, and reports the NFE it documents, equal to the model calls counted;
* float32 in, float32 out;
* batch invariance of every stochastic sampler (PITFALLS 29);
* exact identities: DDIM(eta=0) = DPM-Solver-1 = DEIS-1, DDIM(eta=1) = DDPM
  (beta-tilde), DDPM on a spaced subset = DDPM on the respaced schedule,
  EDM stochastic with S_churn = 0 = Heun, PLMS's first step = DDIM,
  predictor-corrector without corrector = DDPM or Euler-Maruyama, and the
  same path whether the model gives score, eps, x0 or v;
* convergence orders of Euler, Heun, RK4, DPM-Solver++(2M) and DEIS-3 on the
  exact Gaussian PF-ODE flow;
* Langevin: the exact ULA stationary variance, MALA's exact invariance, and
  why annealing is needed (plain Langevin keeps the start's mode weights);
* the time and step grids, ``describe_grid``, the errors users see, and the
  callback's ``(i, t, x)`` once per step.
"""

import functools
import math

import numpy as np
import pytest

from refdiff.analytic import Gaussian, GaussianMixture
from refdiff.metrics import mode_weights
from refdiff.samplers import (
    DIFFUSION_SAMPLERS,
    GRID_KINDS,
    ddim,
    ddpm,
    deis,
    describe_grid,
    dpm_solver,
    dpm_solver_pp,
    edm_stochastic,
    euler_maruyama,
    langevin,
    mala,
    ode_euler,
    ode_heun,
    ode_rk4,
    ode_rk45,
    plms,
    predictor_corrector,
    sde_adaptive,
    step_grid,
    time_grid,
    ula_stationary_variance,
)
from refdiff.schedules import DiscreteSchedule, linear_betas, spaced_timesteps
from refdiff.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from refdiff.targets import ring_mixture

PROCESS = VPSDE()
RING = ring_mixture()
SCHEDULE = DiscreteSchedule(linear_betas(1000))
DISCRETE_SAMPLERS = ("ddpm", "ddim", "plms", "deis")


def ring_score(x, t):
    return RING.score(x, PROCESS, t)


def ring_eps_discrete(x, t):
    return RING.eps(x, SCHEDULE, t)


class Counted:
    """A model that counts its calls (to check each sampler's reported NFE)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


# Small settings for each sampler on the VPSDE, and the NFE its docstring promises
# (None: adaptive, checked separately). Every entry ends with the final denoising call.
SETTINGS = {
    "annealed_langevin": ({"levels": 4, "n_steps_each": 3}, 4 * 3 + 1),
    "ddpm": ({"steps": 6}, 6 + 1),
    "ddim": ({"steps": 6}, 6 + 1),
    "euler_maruyama": ({"steps": 6}, 6 + 1),
    "predictor_corrector": ({"steps": 5, "n_corrector": 2}, 5 * (1 + 2) + 1),
    "sde_adaptive": ({"eps_abs": 0.05, "eps_rel": 0.2}, None),
    "edm_stochastic": ({"steps": 8}, 2 * 8 + 1),
    "ode_euler": ({"steps": 6}, 6 + 1),
    "ode_heun": ({"steps": 8}, 2 * 8 + 1),
    "ode_rk4": ({"steps": 3}, 4 * 3 + 1),
    "ode_rk45": ({"rtol": 1e-3, "atol": 1e-3}, None),
    "dpm_solver": ({"steps": 3, "order": 3}, 3 * 3 + 1),
    "dpm_solver_pp": ({"steps": 6}, 6 + 1),
    "plms": ({"steps": 6}, 6 + 1),
    "deis": ({"steps": 6}, 6 + 1),
}


def test_settings_cover_every_sampler():
    assert set(SETTINGS) == set(DIFFUSION_SAMPLERS)
    assert len(DIFFUSION_SAMPLERS) == 15


# ----------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_runs_on_vpsde_with_documented_nfe(name):
    kwargs, want_nfe = SETTINGS[name]
    model = Counted(ring_score)
    seen = []
    res = DIFFUSION_SAMPLERS[name](model, PROCESS, (256, 2), prediction="score", rng=0, callback=lambda i, t, x: seen.append(i), **kwargs)
    x, nfe = res
    assert x.shape == (256, 2) and x.dtype == np.float64
    assert np.all(np.isfinite(x))
    assert nfe == res.nfe == model.calls
    if want_nfe is not None:
        assert nfe == want_nfe
    elif name == "sde_adaptive":
        # 2 calls per iteration while any example runs, + 1 final denoise; callback once per iteration + once at the end
        iterations = len(seen) - 1
        assert nfe == 2 * iterations + 1
        trials = res.info["accepted"] + res.info["rejected"]
        assert trials.max() == iterations and np.all(res.info["accepted"] >= 1)
    else:  # ode_rk45: Dormand-Prince, 6 evaluations per attempted step at least
        assert res.info["status"] == 0 and nfe >= 6 * res.info["n_steps"] + 1
    # samples are spread over the ring (radius 4), not collapsed or blown up
    r = np.linalg.norm(x, axis=1)
    assert 1.5 < np.median(r) < 6.0, np.median(r)


@pytest.mark.parametrize("name", DISCRETE_SAMPLERS)
def test_runs_on_discrete_schedule_with_documented_nfe(name):
    model = Counted(ring_eps_discrete)
    res = DIFFUSION_SAMPLERS[name](model, SCHEDULE, (256, 2), prediction="eps", steps=10, rng=0)
    assert res.x.shape == (256, 2) and res.x.dtype == np.float64
    assert np.all(np.isfinite(res.x))
    # the grid ends at step 0, where sigma = 0: no final denoising call
    assert res.nfe == model.calls == 10
    np.testing.assert_array_equal(res.info["grid"], step_grid(SCHEDULE, 10))


def test_ddpm_on_every_step_of_a_discrete_schedule():
    """Algorithm 2 over all T = 1000 steps: T model calls, at t = T, ..., 1 (and none at t = 0)."""
    ts = []
    res = ddpm(lambda x, t: (ts.append(t), RING.eps(x, SCHEDULE, t))[1], SCHEDULE, (8, 2), rng=0)
    assert res.nfe == 1000 and ts == list(range(1000, 0, -1))
    assert all(type(t) is int for t in ts)
    assert np.all(np.isfinite(res.x))


@pytest.mark.parametrize("name", ("ddpm", "euler_maruyama", "ode_euler", "dpm_solver_pp"))
def test_final_denoise_false_drops_the_last_call(name):
    kwargs, want_nfe = SETTINGS[name]
    res = DIFFUSION_SAMPLERS[name](ring_score, PROCESS, (16, 2), prediction="score", rng=0, final_denoise=False, **kwargs)
    assert res.nfe == want_nfe - 1


@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_float32_stays_float32(name):
    kwargs, _ = SETTINGS[name]
    x32 = np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32)
    out32 = DIFFUSION_SAMPLERS[name](ring_score, PROCESS, x32, prediction="score", rng=0, **kwargs).x
    out64 = DIFFUSION_SAMPLERS[name](ring_score, PROCESS, x32.astype(np.float64), prediction="score", rng=0, **kwargs).x
    assert out32.dtype == np.float32
    # same start, same noise: the float32 path follows the float64 one (data scale 4)
    np.testing.assert_allclose(out32, out64, atol=1e-2)


@pytest.mark.parametrize("name", DISCRETE_SAMPLERS)
def test_float32_stays_float32_on_discrete_schedule(name):
    x32 = np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32)
    out = DIFFUSION_SAMPLERS[name](ring_eps_discrete, SCHEDULE, x32, steps=10, rng=0).x
    assert out.dtype == np.float32


def test_langevin_and_mala_keep_float32():
    x32 = np.zeros((32, 2), dtype=np.float32)
    assert langevin(RING.score, x32, step_size=0.01, n_steps=5, rng=0).x.dtype == np.float32
    assert mala(RING.score, RING.log_prob, x32, step_size=0.01, n_steps=5, rng=0).x.dtype == np.float32


# ------------------------------------------------------------ batch invariance
STOCHASTIC = {
    "ddpm": lambda shape: ddpm(ring_eps_discrete, SCHEDULE, shape, steps=10, rng=3),
    "ddim_eta1": lambda shape: ddim(ring_eps_discrete, SCHEDULE, shape, eta=1.0, steps=10, rng=3),
    "euler_maruyama": lambda shape: euler_maruyama(ring_score, PROCESS, shape, steps=10, rng=3),
    "predictor_corrector": lambda shape: predictor_corrector(ring_score, PROCESS, shape, steps=8, rng=3),
    "edm_stochastic": lambda shape: edm_stochastic(ring_score, PROCESS, shape, steps=6, rng=3),
    "annealed_langevin": lambda shape: DIFFUSION_SAMPLERS["annealed_langevin"](ring_score, PROCESS, shape, levels=4, n_steps_each=3, rng=3),
    "sde_adaptive": lambda shape: DIFFUSION_SAMPLERS["sde_adaptive"](ring_score, PROCESS, shape, eps_abs=0.05, eps_rel=0.2, rng=3),
    "langevin": lambda shape: langevin(RING.score, shape, step_size=0.01, n_steps=10, rng=3),
    "mala": lambda shape: mala(RING.score, RING.log_prob, shape, step_size=0.05, n_steps=10, rng=3),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_example_does_not_depend_on_its_batch(name):
    run = STOCHASTIC[name]
    one, seven, many = run((1, 2)).x, run((7, 2)).x, run((1000, 2)).x
    np.testing.assert_allclose(seven[:1], one, rtol=0, atol=1e-12)
    np.testing.assert_allclose(many[:7], seven, rtol=0, atol=1e-12)
    # the examples themselves differ (each has its own noise), so the check has teeth
    assert np.min(np.abs(np.diff(seven[:, 0]))) > 1e-6


# ------------------------------------------------------ identities between samplers
def _start(n=128, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 2))


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_ddim_eta0_is_dpm_solver_1_and_deis_1(kind):
    """Lu et al. 2022a sec. 4.1; Zhang & Chen 2022: all three are the first-order exponential integrator."""
    grid = time_grid(PROCESS, 12, kind)
    eps = lambda x, t: RING.eps(x, PROCESS, t)
    a = ddim(eps, PROCESS, _start(), grid=grid).x
    b = dpm_solver(eps, PROCESS, _start(), order=1, grid=grid).x
    c = deis(eps, PROCESS, _start(), order=1, grid=grid).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_ddim_eta0_is_dpm_solver_1_with_score_model():
    grid = time_grid(PROCESS, 9, "uniform")
    a = ddim(ring_score, PROCESS, _start(), prediction="score", grid=grid, final_denoise=False).x
    b = dpm_solver(ring_score, PROCESS, _start(), prediction="score", order=1, grid=grid, final_denoise=False).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_ddim_eta1_is_ddpm_beta_tilde_on_sde_grid(kind):
    grid = time_grid(PROCESS, 12, kind)
    eps = lambda x, t: RING.eps(x, PROCESS, t)
    a = ddim(eps, PROCESS, (128, 2), eta=1.0, grid=grid, rng=5).x
    b = ddpm(eps, PROCESS, (128, 2), variance="beta_tilde", grid=grid, rng=5).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    c = ddpm(eps, PROCESS, (128, 2), variance="beta", grid=grid, rng=5).x
    assert np.max(np.abs(a - c)) > 1e-3  # the other variance is a different sampler


def test_ddim_eta1_is_ddpm_beta_tilde_on_discrete_schedule():
    a = ddim(ring_eps_discrete, SCHEDULE, (128, 2), eta=1.0, steps=20, rng=5).x
    b = ddpm(ring_eps_discrete, SCHEDULE, (128, 2), variance="beta_tilde", steps=20, rng=5).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_ddpm_on_spaced_steps_is_ddpm_on_respaced_schedule():
    """Nichol & Dhariwal 2021 sec. 4: the respaced schedule, model called with the original steps."""
    calls_a, calls_b = [], []
    a = ddpm(lambda x, t: (calls_a.append(t), RING.eps(x, SCHEDULE, t))[1], SCHEDULE, (128, 2), steps=50, rng=7).x
    respaced = SCHEDULE.respace(SCHEDULE.timesteps(50))
    b = ddpm(lambda x, t: (calls_b.append(t), RING.eps(x, SCHEDULE, t))[1], respaced, (128, 2), rng=7).x
    assert calls_a == calls_b == list(SCHEDULE.timesteps(50)[::-1])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["ancestral", "euler_maruyama"])
def test_predictor_alone_is_the_plain_sampler(kind):
    """Predictor-corrector without a corrector: the ancestral predictor is DDPM (beta-tilde), EM is euler_maruyama."""
    grid = time_grid(PROCESS, 10, "uniform")
    a = predictor_corrector(ring_score, PROCESS, (128, 2), predictor=kind, corrector=None, grid=grid, rng=4).x
    plain = ddpm if kind == "ancestral" else euler_maruyama
    b = plain(ring_score, PROCESS, (128, 2), prediction="score", grid=grid, rng=4).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    c = predictor_corrector(ring_score, PROCESS, (128, 2), predictor=kind, n_corrector=1, grid=grid, rng=4).x
    assert np.max(np.abs(a - c)) > 1e-3  # the corrector does change the path


def test_edm_stochastic_without_churn_is_heun():
    grid = time_grid(PROCESS, 8, "karras")
    a = edm_stochastic(ring_score, PROCESS, _start(), grid=grid, S_churn=0.0, rng=0).x
    b = ode_heun(ring_score, PROCESS, _start(), grid=grid).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    c = edm_stochastic(ring_score, PROCESS, _start(), grid=grid, S_churn=10.0, rng=0).x
    assert np.max(np.abs(a - c)) > 1e-3


def test_plms_first_step_is_ddim():
    grid = time_grid(PROCESS, 1, "uniform", t_max=0.6, t_min=0.5)
    eps = lambda x, t: RING.eps(x, PROCESS, t)
    a = plms(eps, PROCESS, _start(), grid=grid, final_denoise=False).x
    b = ddim(eps, PROCESS, _start(), grid=grid, final_denoise=False).x
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_ode_heun_default_is_edm_35_nfe():
    res = ode_heun(ring_score, PROCESS, (8, 2))
    assert res.nfe == 35 and res.info["grid"].shape == (18,)


def test_prediction_kinds_agree():
    """The same exact model given as score, eps, x0 or v gives the same DPM-Solver++ path."""
    from refdiff.param import convert

    grid = time_grid(PROCESS, 10, "log_snr")
    outs = []
    for kind in ("score", "eps", "x0", "v"):
        model = lambda x, t, k=kind: convert(ring_score(x, t), "score", k, x, PROCESS, t)
        outs.append(dpm_solver_pp(model, PROCESS, _start(), prediction=kind, grid=grid).x)
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=0, atol=1e-10)


# ----------------------------------------------------------- convergence orders
@pytest.mark.parametrize(
    "solver, order, kind, steps",
    [
        (ode_euler, 1, "uniform", (16, 32, 64)),
        (ode_heun, 2, "karras", (8, 16, 32)),
        (ode_rk4, 4, "uniform", (16, 32, 64)),
        (dpm_solver_pp, 2, "log_snr", (32, 64, 128)),
        (deis, 3, "log_snr", (32, 64, 128)),
        (functools.partial(dpm_solver, order=3), 3, "log_snr", (8, 16, 32)),
    ],
    ids=["euler", "heun", "rk4", "dpm_solver_pp", "deis3", "dpm_solver3"],
)
def test_ode_solver_order_on_exact_gaussian_flow(solver, order, kind, steps):
    """Slope of log error against log steps, within 0.3 of the order (Euler, Heun and RK4 are also verify
    entry 13; DPM-Solver++(2M) and DEIS-3 are not there: their first steps are lower order, so they are
    measured at more steps)."""
    g = Gaussian(np.array([1.0, -2.0]), np.array([[0.5, 0.2], [0.2, 0.3]]))
    x1 = np.random.default_rng(13).standard_normal((16, 2))
    exact = g.ode_solution(x1, PROCESS, 1.0, 0.05)
    errs = []
    for n in steps:
        grid = time_grid(PROCESS, n, kind, t_max=1.0, t_min=0.05)
        x = solver(lambda y, t: g.score(y, PROCESS, t), PROCESS, x1, prediction="score", grid=grid, final_denoise=False).x
        errs.append(np.max(np.abs(x - exact)))
    measured = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(measured - order) < 0.3, (errs, measured)


@pytest.mark.parametrize("sampler", ["ode_heun", "edm_stochastic"])
def test_edm_samplers_end_an_explicit_grid_at_t_zero_with_an_euler_step(sampler):
    """A grid ending at t = 0: the last step is Euler's alone, which lands on D (Karras et al. 2022,
    Algorithm 1 takes no correction at sigma = 0, where the slope is 0 / 0; the state became NaN). Without
    churn that is the final denoising step of the grid without its 0, call for call."""
    g = Gaussian(np.array([0.7]), np.array([[0.3]]))
    x1 = np.random.default_rng(15).standard_normal((6, 1))
    grid = time_grid(PROCESS, 6, "karras")
    run = {"ode_heun": ode_heun, "edm_stochastic": functools.partial(edm_stochastic, S_churn=0.0)}[sampler]
    score = lambda y, t: g.score(y, PROCESS, t)  # noqa: E731
    to_zero = run(score, PROCESS, x1, grid=np.append(grid, 0.0), rng=1)
    denoised = run(score, PROCESS, x1, grid=grid, final_denoise=True, rng=1)
    np.testing.assert_allclose(to_zero.x, denoised.x, rtol=1e-12, atol=1e-12)
    assert to_zero.nfe == denoised.nfe
    churned = edm_stochastic(score, PROCESS, x1, grid=np.append(grid, 0.0), rng=1)
    assert np.all(np.isfinite(churned.x))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solvers_end_an_explicit_grid_at_t_zero_on_the_denoiser(order):
    """A grid ending at t = 0 (lambda = inf): the last step is the first-order step's limit, gamma_0 x0(x_s)
    (it formed sigma_t (e^h - 1) = 0 * inf, and log 0 in DPM-Solver++). For the singlestep solver that is the
    final denoising step of the grid without its 0, call for call; DPM-Solver++ ends finite (its step before
    the last is then second order, so the two runs differ)."""
    g = Gaussian(np.array([0.7]), np.array([[0.3]]))
    x1 = np.random.default_rng(16).standard_normal((6, 1))
    grid = time_grid(PROCESS, 5, "log_snr")
    score = lambda y, t: g.score(y, PROCESS, t)  # noqa: E731
    to_zero = dpm_solver(score, PROCESS, x1, prediction="score", order=order, grid=np.append(grid, 0.0))
    denoised = dpm_solver(score, PROCESS, x1, prediction="score", order=order, grid=grid, final_denoise=True)
    np.testing.assert_allclose(to_zero.x, denoised.x, rtol=1e-13, atol=1e-13)
    assert to_zero.nfe == denoised.nfe == order * 5 + 1
    pp = dpm_solver_pp(score, PROCESS, x1, prediction="score", grid=np.append(grid, 0.0))
    assert np.all(np.isfinite(pp.x)) and pp.nfe == 6


def test_rk45_is_close_to_exact_gaussian_flow():
    g = Gaussian(np.array([1.0, -2.0]), np.array([[0.5, 0.2], [0.2, 0.3]]))
    x1 = np.random.default_rng(14).standard_normal((8, 2))
    exact = g.ode_solution(x1, PROCESS, PROCESS.t_max, PROCESS.t_min)
    loose = ode_rk45(lambda y, t: g.score(y, PROCESS, t), PROCESS, x1, rtol=1e-4, atol=1e-4, final_denoise=False)
    tight = ode_rk45(lambda y, t: g.score(y, PROCESS, t), PROCESS, x1, rtol=1e-8, atol=1e-8, final_denoise=False)
    err_loose, err_tight = np.max(np.abs(loose.x - exact)), np.max(np.abs(tight.x - exact))
    assert err_tight < 1e-5 and err_tight < err_loose and tight.nfe > loose.nfe


# ---------------------------------------------------------------------- Langevin
def _z_var(x, var):
    """z-score of the sample variance of n Gaussian draws against ``var`` (sd of s^2 is var sqrt(2/(n-1)))."""
    n = x.shape[0]
    return (x.var(ddof=1) - var) / (var * math.sqrt(2.0 / (n - 1)))


def test_ula_stationary_variance_closed_form():
    """AR(1) chain on N(1, 0.5) with eta = 0.25: variance 0.5 / (1 - 0.25) = 2/3, not 0.5."""
    mean, var, eta, n = 1.0, 0.5, 0.25, 20_000
    target = Gaussian(np.array([mean]), np.array([var]))
    want = ula_stationary_variance(var, eta)
    assert want == pytest.approx(2.0 / 3.0, rel=1e-15)
    # 60 steps of a chain contracting by 1 - eta/var = 1/2 per step: the start's offset is gone (2^-60)
    x = langevin(target.score, np.zeros((n, 1)), step_size=eta, n_steps=60, rng=1).x
    assert abs(_z_var(x, want)) < 4.0  # 4 sigma: false-failure rate 6e-5
    assert abs(x.mean() - mean) < 4.0 * math.sqrt(want / n)
    assert _z_var(x, var) > 20.0  # and the bias is resolved: the target's own variance is far off
    with pytest.raises(ValueError, match="diverges"):
        ula_stationary_variance(var, 1.0)


def test_mala_leaves_target_invariant():
    mean, var, eta, n = 1.0, 0.5, 0.25, 20_000
    target = Gaussian(np.array([mean]), np.array([var]))
    res = mala(target.score, target.log_prob, np.zeros((n, 1)), step_size=eta, n_steps=100, rng=1)
    x = res.x
    assert res.nfe == 101
    assert 0.8 < res.info["acceptance_rate"].mean() < 1.0
    assert abs(_z_var(x, var)) < 4.0
    assert abs(x.mean() - mean) < 4.0 * math.sqrt(var / n)
    assert _z_var(x, ula_stationary_variance(var, eta)) < -20.0  # MALA removed ULA's bias


TWO_MODES = GaussianMixture(np.array([0.8, 0.2]), np.array([[-6.0], [6.0]]), np.array([0.25, 0.25]))


def test_plain_langevin_keeps_the_wrong_mode_weights():
    """Song & Ermon 2019 sec. 3.2: modes at -6 and 6 (std 0.5) never exchange mass, so a
    symmetric start keeps weights 1/2 instead of 0.8 / 0.2: annealing is needed."""
    half = np.concatenate([np.full((500, 1), -6.0), np.full((500, 1), 6.0)])
    x = langevin(TWO_MODES.score, half, step_size=0.05, n_steps=1000, rng=2).x  # Langevin time 50 = 200 relaxation times
    w_hat = mode_weights(x, TWO_MODES)
    assert abs(w_hat[0] - 0.8) > 0.2
    # each mode is at equilibrium locally: the chain did move
    assert np.std(x[:500]) == pytest.approx(0.5, rel=0.15)


def test_annealed_langevin_recovers_the_mode_weights():
    ve = VESDE(sigma_max=20.0)
    x = DIFFUSION_SAMPLERS["annealed_langevin"](lambda y, t: TWO_MODES.score(y, ve, t), ve, (2000, 1), rng=2).x
    w_hat = mode_weights(x, TWO_MODES)
    # sd of w_hat at n = 2000 is 0.009; the defaults' bias is about 0.02
    assert abs(w_hat[0] - 0.8) < 0.05


# ------------------------------------------------------------------------ grids
PROCESSES = [VPSDE(), SubVPSDE(), CosineVPSDE(), VESDE()]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("kind", GRID_KINDS)
@pytest.mark.parametrize("steps", [1, 7, 200])
def test_time_grid_is_decreasing_from_t_max(process, kind, steps):
    grid = time_grid(process, steps, kind)
    assert grid.shape == (steps + 1,) and grid.dtype == np.float64
    assert grid[0] == process.t_max
    assert grid[-1] == pytest.approx(process.t_min, rel=1e-10)
    assert np.all(np.diff(grid) < 0)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("kind", GRID_KINDS)
def test_time_grid_ends_at_t_min_exactly(process, kind):
    for steps in (1, 7, 200):
        grid = time_grid(process, steps, kind)
        assert grid[-1] == process.t_min, (steps, grid[-1])
        grid = time_grid(process, steps, kind, t_max=0.7, t_min=0.3)
        assert grid[0] == 0.7 and grid[-1] == 0.3, (steps, grid[-1])


def test_uniform_grid_is_linspace():
    np.testing.assert_allclose(time_grid(PROCESS, 10, "uniform"), np.linspace(1.0, 1e-3, 11), rtol=0, atol=1e-15)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_log_snr_grid_has_equal_log_snr_steps(process):
    steps = 13
    lam = process.log_snr(time_grid(process, steps, "log_snr"))
    lam_max, lam_min = process.log_snr(process.t_max), process.log_snr(process.t_min)
    np.testing.assert_allclose(np.diff(lam), (lam_min - lam_max) / steps, rtol=1e-8)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_grid_matches_edm_formula(process, rho):
    """Karras et al. 2022 eq. 5 in sigma~ = exp(-log_snr / 2)."""
    steps = 17
    grid = time_grid(process, steps, "karras", rho=rho)
    sig = np.exp(-0.5 * process.log_snr(grid))
    s_max, s_min = np.exp(-0.5 * process.log_snr(process.t_max)), np.exp(-0.5 * process.log_snr(process.t_min))
    i = np.arange(steps + 1)
    want = (s_max ** (1 / rho) + i / steps * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig, want, rtol=1e-8)


def test_ve_karras_grid_is_the_ve_sigma():
    ve = VESDE(sigma_min=0.002, sigma_max=80.0)
    grid = time_grid(ve, 5, "karras")
    # for VE, sigma~ is the marginal std sqrt(sigma(t)^2 - sigma_min^2)
    np.testing.assert_allclose(np.exp(-0.5 * ve.log_snr(grid)), ve.std(grid), rtol=1e-12)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 10, 50, 999, 1000])
def test_step_grid_matches_spaced_timesteps(spacing, n):
    grid = step_grid(SCHEDULE, n, spacing)
    assert grid.dtype == np.int64 and grid[-1] == 0
    assert np.all(np.diff(grid) < 0)
    np.testing.assert_array_equal(grid, np.concatenate((spaced_timesteps(1000, n, spacing)[::-1], [0])))


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "plms", "deis"])
def test_discrete_samplers_call_the_model_at_the_spaced_steps(name, spacing):
    """Each sampler with a ``spacing`` argument asks the model at SCHEDULE.timesteps(n, spacing), last to first
    (ddpm and ddim took the trailing steps whatever the argument)."""
    seen = []

    def model(x, t):
        seen.append(int(np.asarray(t).reshape(-1)[0]))
        return np.zeros_like(x)

    sampler = {"ddpm": ddpm, "ddim": ddim, "plms": plms, "deis": deis}[name]
    sampler(model, SCHEDULE, (2, 1), steps=5, spacing=spacing, rng=0)
    want = list(SCHEDULE.timesteps(5, spacing)[::-1])
    assert sorted(set(seen), reverse=True) == want, (seen, want)


def test_step_grid_all_steps():
    np.testing.assert_array_equal(step_grid(SCHEDULE), np.arange(1000, -1, -1))
    assert step_grid(SCHEDULE, 50, "trailing")[0] == 1000
    assert step_grid(SCHEDULE, 50, "leading")[0] == 981  # PITFALLS 11: leading never reaches T


def _vp_log_snr(t, beta_min=0.1, beta_max=20.0):
    B = beta_min * t + 0.5 * (beta_max - beta_min) * t * t  # integral of beta
    return -B - np.log(-np.expm1(-B))


def test_describe_grid_on_known_sde_grid():
    grid = np.array([1.0, 0.5, 0.1, 1e-3])
    info = describe_grid(PROCESS, grid)
    lam = _vp_log_snr(grid)
    assert info.steps == 3 and info.first == 1.0 and info.last == 1e-3
    assert info.terminal_snr == pytest.approx(math.exp(-10.05) / -math.expm1(-10.05), rel=1e-12)
    assert info.log_snr_first == pytest.approx(lam[0], rel=1e-12)
    assert info.log_snr_last == pytest.approx(lam[-1], rel=1e-12)
    assert info.max_log_snr_step == pytest.approx(np.max(np.diff(lam)), rel=1e-12)
    assert "3 steps" in str(info)


def test_describe_grid_on_discrete_grid():
    info = describe_grid(SCHEDULE, step_grid(SCHEDULE, 10))
    ab = SCHEDULE.alpha_bar
    assert info.steps == 10 and info.first == 1000 and info.last == 0
    assert info.terminal_snr == pytest.approx(ab[1000] / (1 - ab[1000]), rel=1e-12)
    assert info.log_snr_last == np.inf  # t = 0 is the data
    lam = np.log(ab[[1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]] / (1 - ab[[1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]]))
    assert info.max_log_snr_step == pytest.approx(np.max(np.diff(lam)), rel=1e-12)


# ---------------------------------------------------------------------- errors
def test_steps_must_be_positive_int():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            ode_euler(ring_score, PROCESS, (4, 2), steps=bad)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        ddpm(ring_eps_discrete, SCHEDULE, (4, 2), steps=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        time_grid(PROCESS, 0)


@pytest.mark.parametrize(
    "grid", [np.array([1.0, 0.5, 0.5, 0.1]), np.array([0.1, 0.5]), np.array([1.0, 0.2, 0.4])], ids=["flat", "increasing", "turns"]
)
def test_non_decreasing_grid_is_refused(grid):
    with pytest.raises(ValueError, match="strictly decreasing"):
        ode_euler(ring_score, PROCESS, (4, 2), grid=grid)
    with pytest.raises(ValueError, match="strictly decreasing"):
        describe_grid(PROCESS, grid)


def test_non_decreasing_step_grid_is_refused():
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddpm(ring_eps_discrete, SCHEDULE, (4, 2), grid=np.array([10, 20, 0]))
    with pytest.raises(ValueError, match="disagrees"):
        ode_euler(ring_score, PROCESS, (4, 2), steps=3, grid=np.array([1.0, 0.5]))


@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_wrong_output_shape_is_refused(name):
    kwargs, _ = SETTINGS[name]
    with pytest.raises(ValueError, match=r"model output at step 0 .* has shape \(4, 1\), expected x's shape \(4, 2\)"):
        DIFFUSION_SAMPLERS[name](lambda x, t: x[:, :1], PROCESS, (4, 2), prediction="score", rng=0, **kwargs)


def _nan_on_call(k):
    calls = [0]

    def model(x, t):
        calls[0] += 1
        out = np.array(RING.score(x, PROCESS, t))
        if calls[0] == k:
            out[1, 0] = np.nan
        return out

    return model


# The step (as counted by the sampler) of the 4th model call, for samplers with several calls per step.
NAN_STEP = {
    "ode_heun": 1,  # 2 calls per step
    "edm_stochastic": 1,
    "ode_rk4": 0,  # 4 calls per step
    "sde_adaptive": 1,  # 2 calls per iteration
    "dpm_solver": 1,  # order 3: 3 calls per step
    "predictor_corrector": 1,  # 1 corrector + 1 predictor call per step
}


@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_nan_from_model_names_the_step(name):
    kwargs, _ = SETTINGS[name]
    with pytest.raises(ValueError, match=rf"non-finite value\(s\) at step {NAN_STEP.get(name, 3)} \(t="):
        DIFFUSION_SAMPLERS[name](_nan_on_call(4), PROCESS, (4, 2), prediction="score", rng=0, **kwargs)


def test_nan_message_names_step_and_time():
    grid = time_grid(PROCESS, 8, "uniform")
    with pytest.raises(ValueError, match=rf"1 non-finite value\(s\) at step 3 \(t={grid[3]:.6g}\)"):
        ddpm(_nan_on_call(4), PROCESS, (4, 2), prediction="score", grid=grid)


def test_diverging_state_names_the_step():
    # a finite model output so large that the Euler step overflows: the state check catches it
    huge = lambda x, t: np.full_like(x, 1e308)
    with np.errstate(over="ignore"), pytest.raises(ValueError, match=r"state became non-finite at step 0"):
        ode_euler(huge, PROCESS, (4, 2), steps=3)
    target = Gaussian(np.array([0.0]), np.array([0.5]))
    # factor -19 per step: the exact score stays finite (far points included) until the state itself overflows
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(ValueError, match=r"state became non-finite at step \d+"):
        langevin(target.score, np.ones((4, 1)), step_size=10.0, n_steps=1000, rng=0)


@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_bad_prediction_name(name):
    kwargs, _ = SETTINGS[name]
    with pytest.raises(ValueError, match="prediction must be one of"):
        DIFFUSION_SAMPLERS[name](ring_score, PROCESS, (4, 2), prediction="noise", rng=0, **kwargs)


@pytest.mark.parametrize("name", sorted(set(DIFFUSION_SAMPLERS) - set(DISCRETE_SAMPLERS) - {"ddpm", "ddim"}))
def test_continuous_only_samplers_refuse_a_discrete_schedule(name):
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        DIFFUSION_SAMPLERS[name](ring_eps_discrete, SCHEDULE, (4, 2), prediction="eps")


def test_time_grid_refuses_discrete_and_bad_kind():
    with pytest.raises(TypeError, match="step_grid"):
        time_grid(SCHEDULE, 10)
    with pytest.raises(ValueError, match="kind must be one of"):
        time_grid(PROCESS, 10, "cosine")
    with pytest.raises(ValueError, match="t_min must be smaller than t_max"):
        time_grid(PROCESS, 10, t_max=0.2, t_min=0.5)
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        step_grid(PROCESS, 10)
    with pytest.raises(ValueError, match="grid kinds are for continuous"):
        ddpm(ring_eps_discrete, SCHEDULE, (4, 2), grid="karras")


def test_option_errors():
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 4"):
        dpm_solver(ring_score, PROCESS, (4, 2), prediction="score", order=4)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got 1.5"):
        ddim(ring_score, PROCESS, (4, 2), prediction="score", steps=3, eta=1.5)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ddim(ring_score, PROCESS, (4, 2), prediction="score", steps=3, eta=-0.1)
    with pytest.raises(ValueError, match="predictor must be one of .*got 'heun'"):
        predictor_corrector(ring_score, PROCESS, (4, 2), predictor="heun")
    with pytest.raises(ValueError, match="corrector must be"):
        predictor_corrector(ring_score, PROCESS, (4, 2), corrector="mala")
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm(ring_eps_discrete, SCHEDULE, (4, 2), variance="fixed")
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4"):
        deis(ring_score, PROCESS, (4, 2), prediction="score", order=5)
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        ode_euler(ring_score, PROCESS, (0, 2), steps=2)
    with pytest.raises(ValueError, match="x_T must be finite"):
        ode_euler(ring_score, PROCESS, np.full((4, 2), np.nan), steps=2)
    with pytest.raises(TypeError, match="model must be a callable"):
        ode_euler("score", PROCESS, (4, 2), steps=2)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        langevin(RING.score, (4, 2), step_size=0.0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        DIFFUSION_SAMPLERS["annealed_langevin"](ring_score, PROCESS, (4, 2), levels=1)
    with pytest.raises(ValueError, match="clip_x0 must be a range"):
        ddpm(ring_eps_discrete, SCHEDULE, (4, 2), clip_x0=(1.0, -1.0))


@pytest.mark.parametrize("sampler", [ddpm, ddim], ids=["ddpm", "ddim"])
@pytest.mark.parametrize("process", [VPSDE(), DiscreteSchedule(linear_betas(100))], ids=["vp", "discrete"])
def test_clip_x0_keeps_the_samples_in_range(sampler, process):
    """clip_x0 clips every x0 estimate, the final denoise's too: on a continuous process the samples once came
    out of [-1, 1] by 3% (that last estimate was not clipped). A range the estimates never reach changes nothing."""
    g = Gaussian(np.zeros(1), np.full(1, 0.36))
    eps = lambda x, t: g.eps(x, process, t)  # noqa: E731
    clipped = sampler(eps, process, (2000, 1), steps=10, clip_x0=(-1.0, 1.0), rng=0).x
    free = sampler(eps, process, (2000, 1), steps=10, rng=0).x
    assert np.abs(free).max() > 1.2  # std 0.6: the bound matters
    assert clipped.min() >= -1.0 and clipped.max() <= 1.0
    wide = sampler(eps, process, (2000, 1), steps=10, clip_x0=(-1e3, 1e3), rng=0).x  # DDIM's eps is re-derived
    np.testing.assert_allclose(wide, free, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler, steps", [(ddpm, 1000), (ddim, 100)], ids=["ddpm", "ddim"])
def test_ddpm_ddim_default_steps_on_sde(sampler, steps):
    """Documented defaults on an SDE: a uniform grid of 1000 (ddpm) or 100 (ddim) steps, + 1 final denoise."""
    res = sampler(ring_score, PROCESS, (2, 2), prediction="score", rng=0)
    np.testing.assert_array_equal(res.info["grid"], time_grid(PROCESS, steps, "uniform"))
    assert res.nfe == steps + 1 and np.all(np.isfinite(res.x))


# -------------------------------------------------------------------- callback
@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler_maruyama", "predictor_corrector", "edm_stochastic", "ode_euler", "ode_heun", "ode_rk4", "dpm_solver", "dpm_solver_pp", "plms", "deis"])
def test_callback_once_per_step(name):
    kwargs, _ = SETTINGS[name]
    seen = []
    res = DIFFUSION_SAMPLERS[name](
        ring_score, PROCESS, (8, 2), prediction="score", rng=0, final_denoise=False, callback=lambda i, t, x: seen.append((i, t, np.array(x))), **kwargs
    )
    grid = res.info["grid"]
    n = grid.shape[0] - 1
    assert [i for i, _, _ in seen] == list(range(n))
    np.testing.assert_array_equal([t for _, t, _ in seen], grid[1:])
    assert all(x.shape == (8, 2) for _, _, x in seen)
    np.testing.assert_array_equal(seen[-1][2], res.x)


def test_callback_sees_final_denoise_and_discrete_steps():
    seen = []
    res = ode_euler(ring_score, PROCESS, (8, 2), steps=4, callback=lambda i, t, x: seen.append((i, t)))
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4] and seen[-1][1] == 0.0 and res.nfe == 5
    seen.clear()
    ddpm(ring_eps_discrete, SCHEDULE, (8, 2), steps=5, callback=lambda i, t, x: seen.append((i, int(t))))
    assert seen == [(0, 800), (1, 600), (2, 400), (3, 200), (4, 0)]


@pytest.mark.parametrize("name", list(DIFFUSION_SAMPLERS))
def test_callback_step_indices_count_up_through_final_denoise(name):
    kwargs, _ = SETTINGS[name]
    seen = []
    res = DIFFUSION_SAMPLERS[name](ring_score, PROCESS, (8, 2), prediction="score", rng=0, callback=lambda i, t, x: seen.append((i, t)), **kwargs)
    indices = [i for i, _ in seen]
    if name == "ode_rk45":  # one call at t_min (after info["n_steps"] steps), then the denoised state
        assert indices == [res.info["n_steps"] - 1, res.info["n_steps"]]
    else:
        assert indices == list(range(len(seen)))
    assert seen[-1][1] == 0.0  # the final denoise lands on t = 0


def test_annealed_langevin_callback_and_levels():
    seen = []
    res = DIFFUSION_SAMPLERS["annealed_langevin"](
        ring_score, PROCESS, (8, 2), levels=3, n_steps_each=2, final_denoise=False, callback=lambda i, t, x: seen.append((i, t))
    )
    lv = res.info["levels"]
    np.testing.assert_allclose(lv, time_grid(PROCESS, 2, "log_snr"))
    assert seen == [(0, lv[0]), (1, lv[0]), (2, lv[1]), (3, lv[1]), (4, lv[2]), (5, lv[2])]


def test_too_many_steps_for_a_schedule_names_steps():
    sched = DiscreteSchedule(linear_betas(50))
    with pytest.raises(ValueError, match=r"steps must be an int in 1..T=50 for this schedule, got 60"):
        ddpm(lambda x, t: x, sched, (2, 2), steps=60)


# --------------------------------------------------------------------------- API edges
def test_sde_adaptive_hands_the_callback_a_copy_and_stops_at_max_iters():
    from refdiff.samplers import sde_adaptive

    states = []
    res = sde_adaptive(ring_score, PROCESS, (3, 2), rng=0, final_denoise=False, callback=lambda i, t, x: states.append(x))
    # x is updated in place row by row: the callback once got that one array every time (all equal to the end)
    assert len({id(s) for s in states}) == len(states) and not np.array_equal(states[0], res.x)
    np.testing.assert_array_equal(states[-1], res.x)
    again = sde_adaptive(ring_score, PROCESS, (3, 2), rng=0, final_denoise=False, max_iters=len(states))
    np.testing.assert_array_equal(again.x, res.x)  # exactly enough iterations: once refused as too few
    with pytest.raises(RuntimeError, match=f"within max_iters={len(states) - 1}"):
        sde_adaptive(ring_score, PROCESS, (3, 2), rng=0, final_denoise=False, max_iters=len(states) - 1)


def test_sde_adaptive_takes_a_model_conditioned_per_example():
    """The model sees the whole batch on every call: one with a label per row once failed when an example finished."""
    from refdiff.guidance import LabelledMixture
    from refdiff.samplers import sde_adaptive

    lm = LabelledMixture(RING, np.arange(8) % 2)
    y = np.array([0, 1, 1, 0, 1])
    res = sde_adaptive(lm.guided_model(y, 1.0, PROCESS), PROCESS, (5, 2), rng=0)
    for i in (0, 1):  # each row is the run of its own label alone (the noise is per example)
        alone = sde_adaptive(lm.guided_model(int(y[i]), 1.0, PROCESS), PROCESS, (5, 2), rng=0)
        np.testing.assert_allclose(res.x[i], alone.x[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "log_prob, match",
    [
        (lambda x: RING.log_prob(x) * np.nan, "log_prob returned NaN or \\+inf"),
        (lambda x: RING.log_prob(x)[:, None], r"log_prob output at step 0 has shape \(3, 1\), expected \(3,\)"),
        (lambda x: 0.5, "log_prob output at step 0 has shape float"),
    ],
)
def test_mala_checks_log_prob(log_prob, match):
    # a NaN log-density once rejected every proposal without a word
    with pytest.raises(ValueError, match=match):
        mala(RING.score, log_prob, np.zeros((3, 2)), step_size=0.05, n_steps=5, rng=0)


def test_mala_rejects_proposals_outside_the_support():
    def log_prob(x):  # the right half-plane only
        return np.where(x[:, 0] > 0, RING.log_prob(x), -np.inf)

    res = mala(RING.score, log_prob, np.full((50, 2), [4.0, 0.0]), step_size=0.5, n_steps=40, rng=0)
    assert np.all(res.x[:, 0] > 0) and 0 < res.info["acceptance_rate"].mean() < 1


def test_multistep_defaults_fit_a_short_schedule():
    short = DiscreteSchedule(linear_betas(20))
    eps = lambda x, t: np.zeros_like(x)  # noqa: E731
    assert plms(eps, short, (2, 2)).nfe == 20  # the default of 50 steps once exceeded T = 20
    assert deis(eps, DiscreteSchedule(linear_betas(10)), (2, 2)).nfe == 10


def test_plms_names_a_zero_terminal_snr_start():
    from refdiff.schedules import rescale_zero_terminal_snr

    zero = DiscreteSchedule(rescale_zero_terminal_snr(linear_betas(100)))
    with pytest.raises(ValueError, match="plms needs gamma_t > 0"):
        plms(lambda x, t: x, zero, (3, 2), prediction="v", steps=10)


def test_grids_past_the_process_t_max_are_refused():
    cosine = CosineVPSDE()  # t_max 0.9946: beta is infinite at t = 1
    score = lambda x, t: RING.score(x, cosine, t)  # noqa: E731
    for run in (lambda: ode_euler(score, cosine, (3, 2), grid=np.array([1.0, 0.5, 0.01])),
                lambda: predictor_corrector(score, cosine, (3, 2), grid=np.array([1.0, 0.5, 0.01]))):
        with pytest.raises(ValueError, match="grid must start at or below the process's t_max = 0.9946"):
            run()
    with pytest.raises(ValueError, match="t_max must be at most the process's t_max = 0.9946"):
        ode_rk45(score, cosine, (3, 2), t_max=1.0)
    with pytest.raises(ValueError, match="t_max must be at most"):
        time_grid(cosine, 5, t_max=1.0)
    with pytest.raises(ValueError, match="infinite at t = 0: t_min must be > 0"):
        time_grid(PROCESS, 4, "log_snr", t_min=0.0)
    karras = time_grid(PROCESS, 5, "karras", t_min=0.0)  # sigma~ -> 0 there: a valid end
    assert karras[-1] == 0.0 and np.all(np.diff(karras) < 0)
    # a float32 grid that starts at t_max (0.99 rounds up in float32) is the process's own end
    short = CosineVPSDE(t_max=0.99)
    grid32 = time_grid(short, 10).astype(np.float32)
    assert float(grid32[0]) > 0.99
    x32 = np.zeros((3, 2), np.float32)
    assert ode_euler(lambda x, t: RING.score(x, short, t), short, x32, grid=grid32).x.dtype == np.float32


@pytest.mark.parametrize(
    "run, exc, match",
    [
        (lambda: ddpm(ring_eps_discrete, SCHEDULE, (4, 2), clip_x0=(1.0,)), ValueError, "clip_x0 must be a range"),
        (lambda: ddpm(ring_eps_discrete, SCHEDULE, (4, 2), clip_x0=1.0), ValueError, "clip_x0 must be a range"),
        (lambda: deis(ring_score, PROCESS, (4, 2), prediction="score", order=2.0), ValueError, "order must be 1, 2, 3 or 4"),
        (lambda: dpm_solver(ring_score, PROCESS, (4, 2), prediction="score", order=2.0), ValueError, "order must be 1, 2 or 3"),
        (lambda: ddim(ring_score, "vp", (4, 2), prediction="score"), TypeError, "process must be a DiscreteSchedule or an SDE"),
        (lambda: ode_euler(ring_score, PROCESS, (4, 2), steps=2, callback=5), TypeError, "callback must be a callable"),
        (lambda: langevin(RING.score, np.zeros((0, 2)), step_size=0.1), ValueError, "x_init must have shape"),
    ],
)
def test_sampler_arguments_are_named_in_errors(run, exc, match):
    with pytest.raises(exc, match=match):
        run()


def test_a_list_start_is_data_and_a_tuple_is_a_shape():
    start = [[0.1, 0.2], [0.3, 0.4]]  # once read as a shape, and refused as one
    got = ode_euler(ring_score, PROCESS, start, steps=3, final_denoise=False).x
    np.testing.assert_array_equal(got, ode_euler(ring_score, PROCESS, np.array(start), steps=3, final_denoise=False).x)
    assert ode_euler(ring_score, PROCESS, (3, 2), steps=3, rng=0).x.shape == (3, 2)


def test_a_one_point_discrete_grid_gets_its_zero():
    res = ddpm(lambda x, t: np.zeros_like(x), DiscreteSchedule(linear_betas(20)), (2, 2), grid=[15], rng=0)
    assert res.nfe == 1 and list(res.info["grid"]) == [15, 0]


# --------------------------------------------------------------------------- coefficients against the papers
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_adams_bashforth_weights_integrate_the_lagrange_basis(k):
    """Order-k weights (newest first) are the integrals over one step of the Lagrange basis through the
    k previous points: PLMS used order 2 and 3 only briefly, and no run could tell a wrong weight."""
    from refdiff.samplers.multistep import ADAMS_BASHFORTH, lagrange_integrals

    np.testing.assert_allclose(ADAMS_BASHFORTH[k], lagrange_integrals(-np.arange(k, dtype=float), 0.0, 1.0),
                               rtol=1e-13, atol=1e-15)


def test_dpm_solver_pp_on_an_uneven_grid_is_algorithm_2():
    """Lu et al. 2022b, Algorithm 2, written out here with r_i = h_{i-1} / h_i: on a grid uniform in t the
    steps in lambda differ, so the ratio must be the right way up (a log-SNR grid has r = 1)."""
    g = Gaussian(np.array([0.7, -0.4]), np.array([[0.3, 0.1], [0.1, 0.2]]))
    grid = time_grid(PROCESS, 12, "uniform")
    x0_model = lambda x, t: g.denoise(x, PROCESS, t)  # noqa: E731
    x = _start()
    got = dpm_solver_pp(x0_model, PROCESS, x, prediction="x0", grid=grid, lower_order_final=False,
                        final_denoise=False).x
    lam = 0.5 * np.asarray(PROCESS.log_snr(grid), dtype=np.float64)  # log(alpha / sigma)
    alpha, sigma = np.asarray(PROCESS.mean_coef(grid)), np.asarray(PROCESS.std(grid))
    prev = None
    for i in range(grid.shape[0] - 1):
        h = lam[i + 1] - lam[i]
        x0 = g.denoise(x, PROCESS, grid[i])
        if prev is None:
            D = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * D
        prev = x0
    np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)


def test_predictor_corrector_step_is_written_out():
    """One corrector step at t with epsilon = 2 gamma_{s|t}^2 (r sigma_t)^2 (Song et al. Algorithm 5 with the
    scaling of the module notes), then the Euler-Maruyama predictor, on the sampler's own noise stream."""
    from refdiff.noise import NoiseStream

    t, s, snr = 0.6, 0.5, 0.16
    x = _start()
    got = predictor_corrector(ring_score, PROCESS, x, predictor="euler_maruyama", snr=snr, n_corrector=1,
                              grid=np.array([t, s]), final_denoise=False, rng=9).x
    noise = NoiseStream(9, n=x.shape[0])
    eps = 2.0 * float(PROCESS.transition(s, t)[0]) ** 2 * (snr * float(PROCESS.std(t))) ** 2
    y = x + eps * ring_score(x, t) + np.sqrt(2 * eps) * noise.normal(x.shape)
    h = t - s
    want = y - h * PROCESS.reverse_drift(y, t, ring_score(y, t)) + float(PROCESS.diffusion(t)) * np.sqrt(h) * noise.normal(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_ddim_eta_scales_the_noise_variance():
    """One DDIM step at eta = 0.5 from a fixed x_t: x_s - its eta-free part is sigma_eta z with
    sigma_eta^2 = eta^2 beta-tilde_{s|t} (Song et al. eq. 16); the noise is the sampler's own stream."""
    from refdiff.forward import posterior_coefs
    from refdiff.noise import NoiseStream

    t, s, eta = 0.6, 0.4, 0.5
    g = Gaussian(np.array([0.7, -0.4]), np.array([[0.3, 0.1], [0.1, 0.2]]))
    eps_model = lambda x, tt: g.eps(x, PROCESS, tt)  # noqa: E731
    x = _start()
    got = ddim(eps_model, PROCESS, x, eta=eta, grid=np.array([t, s]), final_denoise=False, rng=5).x
    var_eta = eta**2 * float(posterior_coefs(PROCESS, s, t)[2])
    eps = eps_model(x, t)
    x0 = (x - float(PROCESS.std(t)) * eps) / float(PROCESS.mean_coef(t))
    det = float(PROCESS.mean_coef(s)) * x0 + np.sqrt(float(PROCESS.variance(s)) - var_eta) * eps
    z = NoiseStream(5, n=x.shape[0]).normal(x.shape)
    np.testing.assert_allclose(got, det + np.sqrt(var_eta) * z, rtol=1e-12, atol=1e-12)


def test_ddim_recomputes_eps_from_a_clipped_x0():
    """With a clip that bites, the eps DDIM carries forward is the one implied by the clipped x0 (PITFALLS 16):
    x_s = gamma_s c + sigma_s (x_t - gamma_t c) / sigma_t, c = clip(x0_hat)."""
    t, s = 0.6, 0.4
    g = Gaussian(np.array([0.7, -0.4]), np.array([[0.3, 0.1], [0.1, 0.2]]))
    eps_model = lambda x, tt: g.eps(x, PROCESS, tt)  # noqa: E731
    x = 2.0 * _start()
    got = ddim(eps_model, PROCESS, x, grid=np.array([t, s]), clip_x0=(-0.5, 0.5), final_denoise=False).x
    c = np.clip(g.denoise(x, PROCESS, t), -0.5, 0.5)
    assert np.any(np.abs(g.denoise(x, PROCESS, t)) > 0.5)  # the clip bites
    gt, st = float(PROCESS.mean_coef(t)), float(PROCESS.std(t))
    want = float(PROCESS.mean_coef(s)) * c + float(PROCESS.std(s)) * (x - gt * c) / st
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- singular ends and bad arguments
_SINGULAR = CosineVPSDE(t_max=1.0)  # gamma_1 = 0, beta(1) = inf: accepted, as ddpm and ddim step to t = 1 exactly


def _zero_x0(x, t):
    return np.zeros_like(x)


@pytest.mark.parametrize("sampler,match", [
    (lambda: ode_euler(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=10, rng=0), "log-SNR, which is -inf"),
    (lambda: ode_heun(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=5, rng=0), "log-SNR, which is -inf"),
    (lambda: dpm_solver(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=6, rng=0), "log-SNR, which is -inf"),
    (lambda: deis(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=6, rng=0), "log-SNR, which is -inf"),
    (lambda: ode_euler(_zero_x0, _SINGULAR, (4, 1), prediction="x0", grid="uniform", steps=10, rng=0),
     r"g\(t\)\^2 is infinite at t = 1"),
    (lambda: euler_maruyama(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=10, rng=0),
     r"g\(t\)\^2 is infinite at t = 1"),
    (lambda: sde_adaptive(_zero_x0, _SINGULAR, (4, 1), prediction="x0", rng=0), r"g\(t\)\^2 is infinite at t = 1"),
    (lambda: predictor_corrector(_zero_x0, _SINGULAR, (4, 1), prediction="x0", predictor="euler_maruyama",
                                 steps=10, rng=0), r"g\(t\)\^2 is infinite at t = 1"),
], ids=["ode_euler", "ode_heun", "dpm_solver", "deis", "ode_euler_uniform", "euler_maruyama", "sde_adaptive",
        "pc_euler_maruyama"])  # fmt: skip
def test_samplers_refuse_to_start_where_the_process_is_singular(sampler, match):
    """A cosine VP process with t_max = 1: the samplers that space a grid in log-SNR or evaluate the SDE's drift there
    raise an error that says so (they said 'lam must not be NaN', 'the step size is too large', or ran 100 000
    iterations of sde_adaptive), without warnings; the exact-transition samplers still run."""
    with pytest.raises(ValueError, match=match):
        sampler()
    for ok in (ddpm, ddim):
        assert np.all(np.isfinite(ok(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=10, rng=0).x))
    x = predictor_corrector(_zero_x0, _SINGULAR, (4, 1), prediction="x0", steps=10, rng=0).x
    assert np.all(np.isfinite(x))


def test_spacing_is_checked_whatever_the_steps():
    """A misspelt spacing was ignored where it picks nothing (every step of the schedule)."""
    S = DiscreteSchedule(linear_betas(10))
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddpm(_zero_x0, S, (2, 1), prediction="x0", spacing="nonsense", rng=0)
    with pytest.raises(ValueError, match="spacing must be one of"):
        step_grid(S, None, "nonsense")
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddim(_zero_x0, VPSDE(), (2, 1), prediction="x0", steps=4, spacing="Trailing", rng=0)


def test_deis_refuses_zero_terminal_snr_without_a_warning():
    """rho = sigma / gamma is infinite at gamma_T = 0: the clear error, not a RuntimeWarning first (errors here)."""
    from refdiff.schedules import rescale_zero_terminal_snr

    Z = DiscreteSchedule(rescale_zero_terminal_snr(linear_betas(100)))
    with pytest.raises(ValueError, match="deis needs gamma_t > 0"):
        deis(_zero_x0, Z, (2, 1), prediction="v", steps=10)
