"""Fused sampler tables (refdiff.samplers.fused) and their Numba and CUDA twins (refdiff.kernels.fused_*).

* every table run by the NumPy reference reproduces the sampler it came from
  (same rng -> same samples to 1e-12 in float64), on VP, sub-VP and VE
  processes, for isotropic, diagonal and full covariances;
* the DDPM and Euler-Maruyama tables on a Gaussian target match the exact
  discrete-time law of the iteration (the recursion for mean and variance);
* the Numba twin: Philox words bit for bit, normals to 1e-14, the same
  trajectory as the reference (float64 to 1e-10, float32 to float32 rounding),
  batch invariance (N = 1 vs N = 1031), every table kind and size 1 / primes;
* the CuPy twin (launcher and kernels/fused_sampler.cu) agrees with the reference, run on the host
  by the CuPy stand-in of tests/cuda_host.py and on a GPU where there is one
  (tests/test_cuda_sources.py compile-checks the .cu with nvcc and NVRTC).
Sizes are small so the file also runs under NUMBA_DISABLE_JIT=1.
"""

import importlib.util

import numpy as np
import pytest

from refdiff.analytic import Gaussian, GaussianMixture
from refdiff.noise import counter_normals, philox4x32
from refdiff.samplers import annealed_langevin, ddpm, euler_maruyama, langevin, ode_euler, ode_heun
from refdiff.samplers import fused as F
from refdiff.schedules import DiscreteSchedule, linear_betas
from refdiff.sde import VESDE, VPSDE, SubVPSDE

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (pip install 'refdiff[fast]')")


def _mixtures():
    rng = np.random.default_rng(5)
    w = np.array([0.2, 0.5, 0.3])
    means = 2.0 * rng.standard_normal((3, 3))
    q = np.linalg.qr(rng.standard_normal((3, 3, 3)))[0]
    full = np.einsum("kij,kj,klj->kil", q, rng.uniform(0.1, 0.6, (3, 3)), q)
    return {
        "isotropic": GaussianMixture(w, means, np.array([0.1, 0.3, 0.2])),
        "diagonal": GaussianMixture(w, means, rng.uniform(0.1, 0.5, (3, 3))),
        "full": GaussianMixture(w, means, full),
    }


MIXTURES = _mixtures()
PROCESSES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_max=10.0)}


def _tables(process):
    """(name, table, the existing sampler run as a function of (mixture, x_T, rng))."""

    def model(m):
        return lambda x, t: m.score(x, process, t)

    return [
        ("euler_maruyama", F.euler_maruyama_table(process, steps=12),
         lambda m, x, r: euler_maruyama(model(m), process, x, steps=12, rng=r).x),
        ("ddpm", F.ddpm_table(process, steps=12),
         lambda m, x, r: ddpm(model(m), process, x, prediction="score", steps=12, rng=r).x),
        ("annealed_langevin", F.annealed_langevin_table(process, levels=3, n_steps_each=3),
         lambda m, x, r: annealed_langevin(model(m), process, x, levels=3, n_steps_each=3, rng=r).x),
        ("ode_euler", F.ode_euler_table(process, steps=10),
         lambda m, x, r: ode_euler(model(m), process, x, steps=10, rng=r).x),
        ("ode_heun", F.ode_heun_table(process, steps=6),
         lambda m, x, r: ode_heun(model(m), process, x, steps=6, rng=r).x),
    ]  # fmt: skip


# --------------------------------------------------------------------------- the reference tables
@pytest.mark.parametrize("cov", list(MIXTURES))
@pytest.mark.parametrize("proc", list(PROCESSES))
def test_table_reproduces_its_sampler(proc, cov):
    m = MIXTURES[cov]
    for name, table, sampler in _tables(PROCESSES[proc]):
        for x_T in ((5, 3), np.random.default_rng(1).standard_normal((5, 3))):  # drawn start, given start
            want = sampler(m, x_T, 11)
            got = F.run_table(table, m, x_T, rng=11)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("proc", list(PROCESSES))
def test_tables_on_a_grid_ending_at_zero_reproduce_their_samplers(proc):
    """An explicit grid down to t = 0: the last step lands on the denoised value. Heun has no corrector
    there (the slope at sigma = 0 is 0 / 0); its table once kept one and returned the midpoint of x and D."""
    process, m = PROCESSES[proc], MIXTURES["diagonal"]
    grid = np.array([1.0, 0.5, 0.1, 0.0])
    x_T = np.random.default_rng(8).standard_normal((6, 3))

    def model(x, t):
        return m.score(x, process, t)

    runs = {
        "ode_heun": (F.ode_heun_table(process, grid=grid), lambda: ode_heun(model, process, x_T, grid=grid).x),
        "ode_euler": (F.ode_euler_table(process, grid=grid), lambda: ode_euler(model, process, x_T, grid=grid).x),
        "euler_maruyama": (F.euler_maruyama_table(process, grid=grid),
                           lambda: euler_maruyama(model, process, x_T, grid=grid, rng=3).x),
        "ddpm": (F.ddpm_table(process, grid=grid),
                 lambda: ddpm(model, process, x_T, prediction="score", grid=grid, rng=3).x),
    }  # fmt: skip
    for name, (table, sampler) in runs.items():
        np.testing.assert_allclose(F.run_table(table, m, x_T, rng=3), sampler(), rtol=1e-11, atol=1e-11, err_msg=name)
    heun = runs["ode_heun"][0]
    assert heun.n_rows == 5 and heun.nfe == 5  # predictor and corrector twice, then the predictor alone


def test_langevin_and_discrete_ddpm_tables_reproduce_their_samplers():
    m = MIXTURES["full"]
    want = langevin(m.score, (4, 3), step_size=0.01, n_steps=25, rng=2).x
    np.testing.assert_array_equal(F.run_table(F.langevin_table(step_size=0.01, n_steps=25), m, (4, 3), rng=2), want)
    sched = DiscreteSchedule(linear_betas(50))
    for steps in (None, 7):
        want = ddpm(lambda x, t: m.score(x, sched, t), sched, (4, 3), prediction="score", steps=steps, rng=3).x
        got = F.run_table(F.ddpm_table(sched, steps=steps), m, (4, 3), rng=3)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_table_rows_and_validation():
    t = F.ode_heun_table(VPSDE(), steps=4)
    assert t.n_rows == 9 and t.nfe == 9 and t.n_draws == 0  # 2 rows per step + the final denoise
    assert np.all(t.b_prev[1:-1:2] != 0) and np.all(t.b_prev[0::2] == 0)
    e = F.euler_maruyama_table(VPSDE(), steps=5, final_denoise=False)
    assert e.n_draws == 5 and list(e.draw) == [0, 1, 2, 3, 4]
    d = F.ddpm_table(DiscreteSchedule(linear_betas(10)))
    assert d.draw[-1] == -1 and d.c[-1] == 0 and d.n_draws == 9  # Algorithm 2: z = 0 at t = 1
    with pytest.raises(ValueError, match="b_prev"):
        F.FusedTable("x", [0, 0], [1, 1], [0, 1], [0, 1], [0, 0], [1, 1], [0, 0], [-1, -1])
    with pytest.raises(ValueError, match="draw"):
        F.FusedTable("x", [0], [1], [1], [0], [1.0], [1], [0], [-1])
    with pytest.raises(ValueError, match="shape"):
        F.run_table(e, MIXTURES["full"], (3, 2), seed=0)


def test_table_columns_are_refused_not_converted():
    """A float draw number was truncated (0.7 -> 0), strings were parsed and a 2-D column flattened; 2**63 raised
    NumPy's OverflowError."""
    base = dict(t=[0, 0], a=[1, 1], b=[0, 0], b_prev=[0, 0], c=[1, 1], gamma=[1, 1], sigma2=[0, 0], draw=[0, 1])
    for column, value, error, match in [("draw", [0.7, 1.9], TypeError, "draw must hold integers"),
                                        ("a", ["1", "2"], TypeError, "a must hold real numbers"),
                                        ("a", [[1, 1]], ValueError, "a must be 1-D"),
                                        ("draw", np.array([0, 2**63], np.uint64), ValueError, "past int64"),
                                        ("draw", [0, 2**64], TypeError, "draw must hold integers")]:
        with pytest.raises(error, match=match):
            F.FusedTable("x", **dict(base, **{column: value}))
    assert F.FusedTable("x", **base).n_draws == 2


def test_start_state_drawn_given_and_left_to_the_kernel():
    m, table = MIXTURES["diagonal"], F.euler_maruyama_table(VPSDE(), steps=3)
    x, noise, first = F.start_state(table, m, (4, 3), seed=9)
    assert first == 1 and x.dtype == np.float64
    np.testing.assert_array_equal(x, table.prior_std * counter_normals(9, np.arange(4), 0, 3))
    for dtype in (None, np.float32):  # a twin's kernel draws the start: only its shape and dtype come back
        u, noise_u, first_u = F.start_state(table, m, (4, 3), seed=9, dtype=dtype, draw=False)
        assert first_u == 1 and u.shape == (4, 3) and u.dtype == (np.float64 if dtype is None else dtype)
        assert noise_u.seed == noise.seed
    given = np.ones((4, 3), np.float32)
    g, _, first_g = F.start_state(table, m, given, seed=9, draw=False)
    assert first_g == 0 and g.dtype == np.float32 and g is not given
    np.testing.assert_array_equal(g, given)
    with pytest.raises(ValueError, match="shape"):
        F.start_state(table, m, (4, 2), seed=9, draw=False)
    # the kernels' state types only (an int32 state ran the table with b cast to 0, and returned the start)
    for x_T, dtype in (((4, 3), np.int32), ((4, 3), np.float16), (given, np.int64), (given.astype(np.float16), None)):
        for draw in (True, False):
            with pytest.raises(TypeError, match="float32 or float64"):
                F.start_state(table, m, x_T, seed=9, dtype=dtype, draw=draw)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.run_table(table, m, (4, 3), seed=9, dtype=np.int32)


def _gaussian_law(table, mu, var, m0, v0):
    """Mean and variance after the table's rows for x ~ N(m0, v0) on N(mu, var) (1-D, per dimension)."""
    for i in range(table.n_rows):
        g, s2, a, b, c = table.gamma[i], table.sigma2[i], table.a[i], table.b[i], table.c[i]
        C = g * g * var + s2  # s(x) = -(x - g mu) / C
        k = a - b / C
        m0, v0 = k * m0 + b * g * mu / C, k * k * v0 + c * c
    return m0, v0


@pytest.mark.parametrize("kind", ["euler_maruyama", "ddpm"])
def test_stochastic_tables_match_the_exact_gaussian_law(kind):
    """The iteration is linear on a Gaussian target: its law after R rows is known exactly.

    30 000 samples: the mean is checked at 5 standard errors, the variance at
    5 standard errors of a sample variance (false-failure rate below 1e-6).
    """
    mu, var = np.array([1.0, -2.0]), np.array([0.3, 0.05])
    target = Gaussian(mu, var)
    vp = VPSDE()
    table = F.euler_maruyama_table(vp, steps=20) if kind == "euler_maruyama" else F.ddpm_table(vp, steps=20)
    x = F.run_table(table, target, (30_000, 2), seed=123)
    m_exact, v_exact = _gaussian_law(table, mu, var, 0.0, table.prior_std**2)
    n = x.shape[0]
    assert np.all(np.abs(x.mean(0) - m_exact) < 5 * np.sqrt(v_exact / n))
    assert np.all(np.abs(x.var(0) - v_exact) < 5 * v_exact * np.sqrt(2.0 / n))


def test_reference_is_batch_invariant_and_chunks():
    m, table = MIXTURES["diagonal"], F.euler_maruyama_table(VPSDE(), steps=8)
    whole = F.run_table(table, m, (13, 3), seed=2**63 + 7)
    part = F.run_table(table, m, (6, 3), seed=2**63 + 7, offset=7)
    np.testing.assert_array_equal(part, whole[7:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_path_of_one_particle_with_full_covariances(dtype):
    """One particle alone follows its path in a batch bit for bit: the rotations by U_k of a single point went
    through BLAS's matrix-vector product, which rounds otherwise (2.4e-7 apart in float32, Euler-Maruyama)."""
    m = MIXTURES["full"]
    for table in (F.euler_maruyama_table(VPSDE(), steps=12), F.ode_heun_table(VPSDE(), steps=4)):
        whole = F.run_table(table, m, (64, 3), seed=99, dtype=dtype)
        for p in (0, 41):
            np.testing.assert_array_equal(F.run_table(table, m, (1, 3), seed=99, offset=p, dtype=dtype)[0], whole[p])


# --------------------------------------------------------------------------- the Numba twin
@pytest.fixture(scope="module")
def FN():
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed (pip install 'refdiff[fast]')")
    from refdiff.kernels import fused_numba

    return fused_numba


@needs_numba
def test_numba_philox_words_bit_for_bit_and_normals(FN):
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(37, 4), dtype=np.uint64)
    counters[0] = 0
    counters[1] = 2**32 - 1
    for key in ((0, 0), (2**32 - 1, 2**32 - 1), (123456789, 987654321)):
        np.testing.assert_array_equal(FN.philox4x32_10(counters, key), philox4x32(counters, list(key)))
    particles = np.array([0, 1, 2**32 - 1, 2**32, 2**63 + 11, 2**64 - 1], dtype=np.uint64)
    for seed, draw, dim in ((0, 0, 1), (2**64 - 1, 2**32 - 1, 7), (42, 5, 9)):
        want = counter_normals(seed, particles, draw, dim)
        np.testing.assert_allclose(FN.normals(seed, particles, draw, dim), want, rtol=1e-14, atol=1e-14)


@needs_numba
@pytest.mark.parametrize("cov", list(MIXTURES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_twin_matches_reference(FN, cov, dtype):
    m = MIXTURES[cov]
    tables = [t for _, t, _ in _tables(VPSDE())] + [F.langevin_table(step_size=0.005, n_steps=10)]
    tables.append(F.euler_maruyama_table(VESDE(sigma_max=10.0), steps=10))
    tables.append(F.ode_heun_table(VPSDE(), grid=[1.0, 0.5, 0.1, 0.0]))  # a last step without its corrector
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for n in (1, 7):
        for table in tables:
            want = F.run_table(table, m, (n, 3), seed=99, dtype=dtype)
            got = FN.run_table(table, m, (n, 3), seed=99, dtype=dtype)
            assert got.dtype == dtype and got.shape == (n, 3)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=table.kind)
    x_T = np.random.default_rng(3).standard_normal((5, 3)).astype(dtype)  # a given start: draws from 0
    table = F.ddpm_table(VPSDE(), steps=9)
    np.testing.assert_allclose(FN.run_table(table, m, x_T, rng=4), F.run_table(table, m, x_T, rng=4), rtol=rtol, atol=rtol)


@needs_numba
def test_numba_path_does_not_depend_on_batch_size(FN):
    m = MIXTURES["full"]
    table = F.ddpm_table(VPSDE(), steps=3)
    big = FN.run_table(table, m, (1031, 3), seed=5)
    for p in (0, 500, 1030):
        one = FN.run_table(table, m, (1, 3), seed=5, offset=p)
        np.testing.assert_array_equal(one[0], big[p])
    np.testing.assert_allclose(big[:3], F.run_table(table, m, (3, 3), seed=5), rtol=1e-10, atol=1e-10)


def check_sizes(run_table, dims):
    """A twin's ``run_table`` (its result as a NumPy array) against the reference at each D of ``dims``, on
    two-component mixtures of every covariance kind, with 1 and 13 particles."""
    table = F.euler_maruyama_table(VPSDE(), steps=5)
    for D in dims:
        rng = np.random.default_rng(D)
        for kind, covs in (("iso", np.array([0.2, 0.4])), ("diag", rng.uniform(0.1, 0.5, (2, D))),
                           ("full", np.stack([np.eye(D) * 0.3, np.eye(D) * 0.2]))):  # fmt: skip
            m = GaussianMixture([0.4, 0.6], rng.standard_normal((2, D)), covs)
            for n in (1, 13):
                want = F.run_table(table, m, (n, D), seed=8)
                got = run_table(table, m, (n, D), seed=8)
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f"D={D} {kind} n={n}")


@needs_numba
def test_numba_sizes_one_and_primes(FN):
    check_sizes(FN.run_table, (1, 2, 5))


# --------------------------------------------------------------------------- the CUDA twin
# "host": kernels/fused_sampler.cu and its launcher run on the host by the CuPy stand-in of tests/cuda_host.py
CUDA_DEVICES = [pytest.param("host", marks=pytest.mark.cuda_host), pytest.param("gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=CUDA_DEVICES)
def cupy_twin(request):
    """(cupy, refdiff.kernels.fused_cupy) on the host stand-in or on a GPU."""
    if request.param == "host":
        request.getfixturevalue("cuda_host")
    import cupy

    from refdiff.kernels import fused_cupy

    return cupy, fused_cupy


@pytest.mark.parametrize("cov", list(MIXTURES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cupy_twin_matches_reference(cupy_twin, cov, dtype):
    cupy, fused_cupy = cupy_twin
    m = MIXTURES[cov]
    tables = [t for _, t, _ in _tables(VPSDE())] + [F.langevin_table(step_size=0.005, n_steps=10)]
    tables.append(F.euler_maruyama_table(VESDE(sigma_max=10.0), steps=10))
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for n in (1, 131):  # one particle; a block of 128 and a partial one
        for table in tables:
            want = F.run_table(table, m, (n, 3), seed=99, dtype=dtype)
            got = fused_cupy.run_table(table, m, (n, 3), seed=99, dtype=dtype)
            assert isinstance(got, cupy.ndarray) and got.dtype == dtype and got.shape == (n, 3)
            np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=rtol, atol=rtol, err_msg=table.kind)
    x_T = np.random.default_rng(3).standard_normal((5, 3)).astype(dtype)  # a given start: draws from 0
    table = F.ddpm_table(VPSDE(), steps=9)
    got = cupy.asnumpy(fused_cupy.run_table(table, m, x_T, rng=4))
    np.testing.assert_allclose(got, F.run_table(table, m, x_T, rng=4), rtol=rtol, atol=rtol)


def test_cupy_twin_every_register_bound(cupy_twin):
    """D = 1, 2, 3, 5 and 17: the kernel's instances for MAXD = 2, 4, 16 and 64, with D below each bound but
    one; a partial last group of four normals (D = 1, 2, 3, 5, 17 mod 4 = 1, 2, 3, 1, 1); every covariance
    kind."""
    cupy, fused_cupy = cupy_twin
    check_sizes(lambda *a, **kw: cupy.asnumpy(fused_cupy.run_table(*a, **kw)), (1, 2, 3, 5, 17))
    table = F.euler_maruyama_table(VPSDE(), steps=5)
    with pytest.raises(ValueError, match="D <= 64"):
        fused_cupy.run_table(table, GaussianMixture([1.0], np.zeros((1, 65)), np.ones(1)), (2, 65), seed=1)


def test_cupy_path_does_not_depend_on_batch_size(cupy_twin):
    cupy, fused_cupy = cupy_twin
    m = MIXTURES["full"]
    table = F.ddpm_table(VPSDE(), steps=6)
    big = cupy.asnumpy(fused_cupy.run_table(table, m, (1031, 3), seed=5))
    for p in (0, 500, 1030):
        one = cupy.asnumpy(fused_cupy.run_table(table, m, (1, 3), seed=5, offset=p))
        np.testing.assert_array_equal(one[0], big[p])


# --------------------------------------------------------------------------- every twin
@pytest.fixture(params=[pytest.param("numba")] + CUDA_DEVICES)
def twin_run(request):
    """``run_table`` of the Numba twin or of the CUDA twin (host stand-in, GPU), returning a host array."""
    if request.param == "numba":
        return request.getfixturevalue("FN").run_table
    if request.param == "host":
        request.getfixturevalue("cuda_host")
    import cupy

    from refdiff.kernels import fused_cupy

    return lambda *a, **kw: cupy.asnumpy(fused_cupy.run_table(*a, **kw))


@pytest.mark.parametrize("dtype,covs,far", [(np.float64, [1e-300, 1.0], 1e5), (np.float32, [1e-30, 1.0], 1e5),
                                            (np.float32, [1.0, 1e-36], 1e3)])
def test_every_twin_drops_a_component_whose_weight_is_zero(twin_run, dtype, covs, far):
    """At x = ``far`` the narrow component's quadratic form overflows: its logit is -inf and its field may be
    infinite. It must add exactly 0, first in the loop or not (the CUDA kernel's streaming log-sum-exp took a
    first logit of -inf as its maximum, exp(-inf + inf), or multiplied an infinite field by a weight of 0, and
    raised that the state became non-finite)."""
    m = GaussianMixture([0.5, 0.5], [[0.0], [0.0]], covs)
    table = F.langevin_table(step_size=1e-3, n_steps=2)
    x_T = np.array([[far], [1.0], [-far]], dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # the reference's field does overflow
        want = F.run_table(table, m, x_T, seed=1)
    assert np.all(np.isfinite(want))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(twin_run(table, m, x_T, seed=1), want, rtol=rtol)


@pytest.mark.parametrize("dtype,narrow", [(np.float64, 1e-310), (np.float32, 1e-40), (np.float32, 1e-30)])
@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_every_twin_weighs_a_particle_at_a_component_whose_inverse_variance_overflows(twin_run, dtype, narrow, kind):
    """A component whose variance c is subnormal in the kernel's arithmetic (float64 for the Numba twin, the state
    dtype for the CUDA one): 1 / c overflows, and a particle at or near its mean lost that component's weight (its
    score came from the broad component alone: x <- x + s(x) moved the mean to 3, where the reference keeps it
    put). One noiseless row x <- x + s(x), at the mean, about one standard deviation either side, and near the broad
    component; the reference divides by c. A normal c (1e-30) takes the common path on every twin."""
    m = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 0.0]], [np.diag([narrow, 1.0]), np.eye(2)] if kind == "full"
                        else [[narrow, 1.0], [1.0, 1.0]])  # fmt: skip
    table = F.FusedTable("step", t=[0.0], a=[1.0], b=[1.0], b_prev=[0.0], c=[0.0], gamma=[1.0], sigma2=[0.0], draw=[-1])
    near = np.sqrt(narrow)
    x_T = np.array([[0.0, 0.0], [near, 0.0], [-near, 0.5], [3.5, 0.0]], dtype=dtype)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # the reference's fields do overflow
        want = F.run_table(table, m, x_T, seed=1)
    np.testing.assert_allclose(want[1:3, 0], [-1.0 / near, 1.0 / near], rtol=1e-4)  # the narrow component's field
    # float32: the reference holds a subnormal c to fewer digits (5e-6 relative at 1e-40); the twins hold it in float64
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(twin_run(table, m, x_T, seed=1), want, rtol=rtol, atol=1e-300)


@pytest.mark.parametrize("cov", ["isotropic", "full"])
@pytest.mark.parametrize("dtype,far", [(np.float32, 1e20), (np.float64, 1e160)])
def test_every_twin_takes_particles_far_from_every_component(twin_run, cov, dtype, far):
    """Particles so far out that every quadratic form overflows the dtype, beside ordinary ones, on a
    deterministic and a stochastic table: the reference takes their scores from the forms scaled by a power of
    two, and so must the twins (the CUDA kernel's sum of weights was 0 there, its score 0 * inf, and the run
    raised that the state became non-finite). A step that really diverges still raises."""
    m = MIXTURES[cov]
    x_T = np.array([[far, -far, 0.5], [0.1, 0.2, 0.3], [0.0, 0.0, -far], [-1.0, 2.0, 0.5]], dtype=dtype)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for table in (F.ode_euler_table(VPSDE(), steps=3), F.euler_maruyama_table(VPSDE(), steps=3)):
        with np.errstate(over="ignore", invalid="ignore"):  # the reference's forms do overflow
            want = F.run_table(table, m, x_T, seed=1)
        assert np.all(np.isfinite(want)) and np.abs(want).max() > 1e-3 * far  # the far particles moved, finitely
        np.testing.assert_allclose(twin_run(table, m, x_T, seed=1), want, rtol=rtol, atol=rtol, err_msg=table.kind)
    with pytest.raises(ValueError, match="non-finite"):
        twin_run(F.langevin_table(step_size=1e6, n_steps=400), m, x_T[1:2], seed=1)


def test_cupy_twin_without_cupy_names_the_extra(monkeypatch):
    import sys

    from refdiff.kernels import fused_cupy

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(ImportError, match=r"refdiff\[gpu-cuda12\]"):
        fused_cupy.run_table(F.langevin_table(step_size=0.1, n_steps=1), MIXTURES["isotropic"], (2, 3), seed=1)
