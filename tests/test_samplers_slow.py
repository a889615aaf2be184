"""Slow statistical tests of refdiff.samplers on exact Gaussian-mixture targets (``python -m pytest -m slow``).

Each sampler, at its documented default settings, draws n = 20 000 samples of

(a) ``ring_mixture()``: 2-D, 8 modes on a circle, weights 1:2:...:8;
(b) ``random_mixture()``: 16-D, 10 full-covariance components, Dirichlet weights,

from the exact analytic model, and must

* recover every mode weight within 0.02 (``mode_weight_error``; under exact
  sampling the error's standard deviation is at most 0.0035 per mode, so
  0.02 is about 5.7 standard errors, and a sampler that equalises or drops
  modes is caught);
* reach a count-matched sliced 2-Wasserstein distance (SW2) within 1.5x of
  its noise floor: the exact sample it is compared with has, per component,
  as many points as the sampler put there (points labelled by their most
  probable component), and the floor is the mean of the same distance over
  8 exact samples, with the same projections.

The plain SW2 to a fresh exact sample, over ``noise_floor``'s mean, is
printed for every case but not asserted: at n = 20 000 it is dominated by
the multinomial fluctuation of the mode counts (mass moved between modes 3
apart), so its floor is wide. Over 16 exact samples of the ring its ratio to
the floor mean ranged 0.54-1.61 (coefficient of variation 0.33; 2 of 16
above 1.5: annealed Langevin's ring sample scores 1.69 with mode weights
within 0.006 and a count-matched ratio of 0.94), and it does not see modes
10% too wide (ratio 1.00) or a ring radius 0.05 too large (1.12). The
count-matched SW2 takes the mode counts out (the mode weights check them)
and measures the shape of every mode: its floor varies by 8% (ring; largest
ratio 1.18 over 16 exact samples) and 3% (16-D; 1.05), while modes 5% or 10%
too wide give 1.41 and 2.24, and a radius 0.05 too large 3.69.

Then the error-vs-NFE table against a tight RK45 reference from one start
array, and the sampling entries 12-15 of ``refdiff verify``.

Run with ``-s`` to see each case's numbers and runtime. On a small shared
machine set ``OPENBLAS_NUM_THREADS=1``: the 16-D mixture's score is 3-5x
slower with OpenBLAS threads competing for two cores.
"""

import functools
import itertools
import time

import numpy as np
import pytest

from refdiff.analytic import Gaussian
from refdiff.backend import as_rng
from refdiff.metrics import mode_weight_error, noise_floor, sliced_wasserstein
from refdiff.samplers import (
    DIFFUSION_SAMPLERS,
    ddpm,
    deis,
    dpm_solver,
    dpm_solver_pp,
    ode_euler,
    ode_heun,
    ode_rk45,
)
from refdiff.schedules import DiscreteSchedule, linear_betas
from refdiff.sde import VPSDE
from refdiff.targets import random_mixture, ring_mixture

pytestmark = pytest.mark.slow

N = 20_000
MODE_TOL = 0.02
SW_FACTOR = 1.5
MIXTURES = {"ring": ring_mixture, "random16": random_mixture}


def _sw(x, y):
    return sliced_wasserstein(x, y, n_projections=256, rng=0)  # the same projections for every comparison


def _count_matched_exact(x, gm, rng):
    """An exact sample with, per component k, as many points as x has labelled k (most probable component)."""
    labels = np.argmax(gm.component_posterior(x), axis=1)
    counts = np.bincount(labels, minlength=gm.n_components)
    covs, streams = gm.full_covs(), as_rng(rng).spawn(gm.n_components)
    parts = [Gaussian(gm.means[k], covs[k]).sample(int(c), rng=streams[k]) for k, c in enumerate(counts) if c > 0]
    return np.concatenate(parts)


def _matched_sw(x, gm, rng):
    return _sw(x, _count_matched_exact(x, gm, rng))


@functools.cache
def _reference(name):
    """The mixture, an exact sample to compare with, and the floors of SW2 and count-matched SW2 at n = N."""
    gm = MIXTURES[name]()
    floor = noise_floor(_sw, gm, N, rng=101, repeats=8)
    matched = np.array([_matched_sw(gm.sample(N, rng=400 + r), gm, 500 + r) for r in range(8)])
    exact = gm.sample(N, rng=202)
    return gm, exact, floor, matched.mean()


def _score_model(gm, process):
    return lambda x, t: gm.score(x, process, t)


def _run(sampler, gm, rng):
    """Run ``sampler`` at its documented defaults (ddpm: on the discrete schedule with an eps model)."""
    process = VPSDE()
    shape = (N, gm.dim)
    if sampler == "ddpm":
        schedule = DiscreteSchedule(linear_betas(1000))
        return ddpm(lambda x, t: gm.eps(x, schedule, t), schedule, shape, prediction="eps", rng=rng)  # all 1000 steps
    if sampler == "euler_maruyama":
        return DIFFUSION_SAMPLERS[sampler](_score_model(gm, process), process, shape, prediction="score", steps=1000, rng=rng)
    return DIFFUSION_SAMPLERS[sampler](_score_model(gm, process), process, shape, prediction="score", rng=rng)


SAMPLERS = [
    "euler_maruyama",
    "predictor_corrector",
    "ddpm",
    "annealed_langevin",
    "ode_euler",
    "ode_heun",
    "ode_rk4",
    "ode_rk45",
    "dpm_solver",
    "dpm_solver_pp",
    "plms",
    "deis",
    "ddim",
]


# Measured shortfalls of DEFAULT settings at n = 20 000. None is an implementation bug (each sampler passes
# the exact identities and order checks of test_samplers.py, and converges as its NFE grows): the default
# NFE leaves an error that 20 000 samples resolve. Strict, so raising a default makes them XPASS.
_DEFAULTS_TOO_COARSE = {
    ("ring", "ode_heun"): "not a bug: 35 NFE (EDM's default) leave the ring's radius 0.036 too large "
    "(mean radius 4.046 vs 4.010); count-matched SW2/floor 3.0; 68 steps give 4.009",
    ("ring", "dpm_solver_pp"): "not a bug: at 20 steps the modes come out 7% too wide across the ring "
    "(tangential std 0.268 vs 0.25); count-matched SW2/floor 2.0; 80 steps give 0.253",
    ("ring", "deis"): "not a bug: at 20 steps the modes come out 11% too wide across the ring "
    "(tangential std 0.279 vs 0.25); count-matched SW2/floor 2.6",
    ("random16", "ode_heun"): "not a bug: 35 NFE; count-matched SW2/floor 1.76 on the 16-D mixture",
    ("random16", "deis"): "not a bug: 20 steps; count-matched SW2/floor 1.66 on the 16-D mixture",
    ("random16", "annealed_langevin"): "not a bug: 20 levels x 100 steps do not re-weight the 16-D modes "
    "(max weight error 0.046; at n = 4000: 0.051 by default, 0.029 with 400 steps per level, 0.013 with 80 levels)",
}


def _cases():
    for mixture in MIXTURES:
        for sampler in SAMPLERS:
            reason = _DEFAULTS_TOO_COARSE.get((mixture, sampler))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(mixture, sampler, marks=marks, id=f"{mixture}-{sampler}")


@pytest.mark.parametrize("mixture, sampler", list(_cases()))
def test_sampler_recovers_mixture(mixture, sampler):
    """Mode weights within 0.02 and count-matched SW2 within 1.5x of its floor (global SW2 is printed only)."""
    gm, exact, floor, matched_floor = _reference(mixture)
    t0 = time.perf_counter()
    res = _run(sampler, gm, rng=7)
    seconds = time.perf_counter() - t0
    x = res.x
    assert x.shape == (N, gm.dim) and np.all(np.isfinite(x))
    err = mode_weight_error(x, gm)
    ratio = _sw(x, exact) / floor.mean
    matched_ratio = _matched_sw(x, gm, 606) / matched_floor
    print(
        f"\n[{mixture:8s} {sampler:20s}] nfe={res.nfe:5d}  mode-weight error={err:.4f}  SW2/floor={ratio:.3f} "
        f"(floor {floor.mean:.4g} +- {floor.std:.2g})  matched SW2/floor={matched_ratio:.3f} (floor {matched_floor:.4g})  "
        f"{seconds:.1f} s"
    )
    assert err <= MODE_TOL
    assert matched_ratio <= SW_FACTOR


def test_exact_samples_pass_their_own_bar():
    """The bars have teeth and no false alarm: an exact sample passes, slightly wrong ones fail."""
    gm, exact, floor, matched_floor = _reference("ring")
    fresh = gm.sample(N, rng=303)
    assert mode_weight_error(fresh, gm) <= MODE_TOL
    assert _sw(fresh, exact) <= SW_FACTOR * floor.mean
    assert _matched_sw(fresh, gm, 304) <= SW_FACTOR * matched_floor
    wide = ring_mixture(std=0.25 * 1.1).sample(N, rng=303)  # modes 10% too wide: only the matched SW2 sees it
    assert _matched_sw(wide, gm, 304) > SW_FACTOR * matched_floor
    far = ring_mixture(radius=4.05).sample(N, rng=303)  # ring radius 0.05 too large
    assert _matched_sw(far, gm, 304) > SW_FACTOR * matched_floor
    flat = ring_mixture(weights="equal").sample(N, rng=303)  # equal weights: seen by the mode weights and SW2
    assert mode_weight_error(flat, gm) > MODE_TOL
    assert _sw(flat, exact) > SW_FACTOR * floor.mean


# ------------------------------------------------------------- error vs NFE
N_TABLE = 4000


def test_error_vs_nfe_table():
    """Terminal error against RK45 at rtol = atol = 1e-9 from the same x_T, on the ring.

    Every solver starts from the same explicit array and applies the final
    denoising step (final_denoise=True for all), so Heun's 17 steps are EDM's
    35 NFE. The error is the RMS over samples of |x - x_ref|; the table also
    shows its median and the fraction of samples that end in another mode
    than the reference (which dominate the RMS).

    Measured here: DPM-Solver++(2M) at 21 NFE (RMS 0.18) and Heun at 35 NFE
    (0.15) do NOT beat Euler at 201 NFE (0.071) on this target (8 modes of
    std 0.25 down to t_min = 1e-3): at that few steps 1% and 0.7% of their
    samples switch modes against 0.2% for Euler, and their medians (0.023,
    0.042) are above Euler's (0.005) too. DPM-Solver++ agrees with an
    independent transcription of Lu et al.'s Algorithm 2 to 1e-12 and its
    median error falls at order 2 (0.023, 0.0046, 0.0011, 0.00026 at 20, 40,
    80, 160 steps), so this is the pre-asymptotic regime, not a bug. What
    holds, and is asserted: at equal or fewer NFE both beat Euler, and
    DPM-Solver++ at 81 NFE and Heun at 137 NFE beat Euler at 201.
    """
    gm, process = ring_mixture(), VPSDE()
    score = _score_model(gm, process)
    x_T = np.random.default_rng(55).standard_normal((N_TABLE, 2))
    t0 = time.perf_counter()
    ref = ode_rk45(score, process, x_T, rtol=1e-9, atol=1e-9)
    ref_labels = np.argmax(gm.component_posterior(ref.x), axis=1)
    print(f"\nreference: ode_rk45 rtol=atol=1e-9, {ref.nfe} NFE, {time.perf_counter() - t0:.1f} s; {N_TABLE} samples of the ring")

    rows = []

    def add(name, steps, res):
        e = np.linalg.norm(res.x - ref.x, axis=1)
        switched = float(np.mean(np.argmax(gm.component_posterior(res.x), axis=1) != ref_labels))
        rows.append((name, steps, res.nfe, float(np.sqrt(np.mean(e**2))), float(np.median(e)), switched))

    for name, fn, steps_list in [
        ("ode_euler", ode_euler, (20, 50, 100, 200)),
        ("ode_heun", ode_heun, (5, 9, 17, 34, 68)),
        ("dpm_solver_pp", dpm_solver_pp, (10, 20, 50, 80)),
        ("dpm_solver (3)", dpm_solver, (3, 7, 17)),
        ("deis (3)", deis, (10, 20, 50)),
    ]:
        for steps in steps_list:
            add(name, steps, fn(score, process, x_T, prediction="score", steps=steps))
    for tol in (1e-3, 1e-5):
        add(f"ode_rk45 tol {tol:g}", None, ode_rk45(score, process, x_T, rtol=tol, atol=tol))
    print(f"{'solver':20s} {'steps':>5s} {'NFE':>5s} {'RMS error':>10s} {'median':>10s} {'switched':>8s}")
    for name, steps, nfe, rms, med, switched in rows:
        print(f"{name:20s} {steps if steps else '-':>5} {nfe:5d} {rms:10.3e} {med:10.3e} {switched:8.4f}")
    rms_of = {(name, nfe): rms for name, _, nfe, rms, _, _ in rows}
    euler = {nfe: rms for (name, nfe), rms in rms_of.items() if name == "ode_euler"}
    print(
        f"DPM++ at 21 NFE / Euler at 201: {rms_of[('dpm_solver_pp', 21)] / euler[201]:.2f}; "
        f"Heun at 35 NFE / Euler at 201: {rms_of[('ode_heun', 35)] / euler[201]:.2f}"
    )
    assert rms_of[("dpm_solver_pp", 21)] < euler[21] and rms_of[("dpm_solver_pp", 51)] < euler[51]
    assert rms_of[("ode_heun", 35)] < euler[51]
    assert rms_of[("dpm_solver_pp", 81)] < euler[201] and rms_of[("ode_heun", 137)] < euler[201]
    assert rms_of[("ode_rk45 tol 1e-05", rows[-1][2])] < 1e-2
    for name in ("ode_euler", "ode_heun", "dpm_solver_pp", "dpm_solver (3)", "deis (3)"):
        errs = [rms for n, _, _, rms, _, _ in rows if n == name]
        assert all(a > b for a, b in itertools.pairwise(errs)), (name, errs)


# -------------------------------------------------------- verify entries 12-15
@pytest.mark.parametrize("entry", ["entry_12", "entry_13", "entry_14", "entry_15"])
def test_verify_sampling_entry_passes(entry):
    from refdiff import verify_sampling

    t0 = time.perf_counter()
    checks = getattr(verify_sampling, entry)()
    print(f"\n{entry} ({time.perf_counter() - t0:.1f} s)")
    for c in checks:
        print(f"  {c.id:5s} {'ok ' if c.passed else 'BAD'} error {c.error:.3g} <= {c.tolerance:.3g}  {c.title}")
    assert checks
    assert all(c.passed for c in checks), [c.id for c in checks if not c.passed]
