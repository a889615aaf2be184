"""The mixture score / log-density twins (refdiff.kernels.mixture_numba, mixture_cupy) against the reference.

One test body runs every backend (numpy reference, numba, cupy on a GPU, and
the cupy twin's launcher and kernel compiled for the host, tests/cuda_host.py) on
awkward sizes (1, primes, not multiples of the kernels' block of 64), every
covariance kind, float32 and float64, and times from the data (no process)
through t near 0 and t = 1 to one t per row; the oracle is a slow plain loop
over components with a dense solve and slogdet per component (no eigen
decomposition, no shared code with refdiff.analytic).
"""

import functools
import importlib.util
import math
import sys

import numpy as np
import pytest

from refdiff import analytic
from refdiff.analytic import GaussianMixture
from refdiff.sde import VESDE, VPSDE
from jit_mode import JIT_OFF

KINDS = ("isotropic", "diagonal", "full")
# (N, K, D): every N in (1, 2, 7, 31, 67, 1000, 1031), K in (1, 3, 5, 8), D in (1, 2, 3, 4, 16) at least once;
# D = 6, 17, 40 and 65 reach the CUDA kernels' register instances for D <= 8, 32 and 64 and the instance for any D
SIZES = [(1, 1, 1), (2, 3, 2), (7, 8, 3), (31, 8, 16), (1000, 3, 1), (1031, 8, 2), (1031, 1, 16), (67, 5, 4),
         (11, 4, 6), (13, 3, 17), (3, 2, 40), (5, 2, 65)]
TIMES = ["data", "t=1e-4", "t=0.5", "t=1", "per-row"]
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=2e-4, atol=2e-4)}
PROCESS = VPSDE()

# the kernels run as plain Python (CI's coverage pass): the largest cases are left to the compiled runs, which
# take the same lines of code
# as plain Python every FMA is a Python call (float64's exact integer arithmetic, about 3 us, twice float32's): both
# dtypes take the same lines of the loops
FMA64_JIT_OFF = "the FMA products run in float32 only as plain Python (NUMBA_DISABLE_JIT)"
# the numba twin's scalar-t kernels take a time only through gamma_t and sigma_t^2: as plain Python the data (gamma 1,
# sigma 0) and t = 1e-4 (narrow components: the far points, redone and refined) stand for the broad t = 0.5 and 1
BROAD_TIMES_JIT_OFF = "as plain Python the data and t = 1e-4 stand for t = 0.5 and 1 (NUMBA_DISABLE_JIT)"

gpu_backend = pytest.param("cupy", marks=pytest.mark.gpu)
# "cupy-host": the CuPy twin's launcher and kernel (kernels/mixture_score.cu), run on the host by the CuPy
# stand-in of tests/cuda_host.py; the tests then call it as backend="cupy"
BACKENDS = ["numpy", "numba", pytest.param("cupy-host", marks=pytest.mark.cuda_host), gpu_backend]


def make_mixture(kind, K, D, seed=0):
    """Means ~ 2 N(0, I), covariances with eigenvalues >= 0.2; component 1 has weight 0 when K >= 3."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, D, D))
    full = A @ A.transpose(0, 2, 1) / D + 0.2 * np.eye(D)
    covs = {"full": full, "diagonal": np.diagonal(full, axis1=1, axis2=2).copy(), "isotropic": full[:, 0, 0].copy()}[kind]
    w = rng.random(K) + 0.1
    if K >= 3:
        w[1] = 0.0
    return GaussianMixture(w / w.sum(), 2.0 * rng.standard_normal((K, D)), covs)


def process_and_t(times, N, seed=1):
    if times == "data":
        return None, None
    if times == "per-row":
        return PROCESS, np.random.default_rng(seed).uniform(1e-4, 1.0, size=N)
    return PROCESS, float(times[2:])


def oracle(gm, x, process, t):
    """float64 (log p_t(x), score) by a plain loop over components: dense C_k, solve and slogdet per row."""
    N, D = x.shape
    if process is None:
        gamma, var = np.ones(N), np.zeros(N)
    else:
        gamma = np.broadcast_to(np.asarray(process.mean_coef(t), dtype=np.float64), (N,))
        var = np.broadcast_to(np.asarray(process.variance(t), dtype=np.float64), (N,))
    covs = gm.full_covs()
    logits, grads = [], []
    for k in range(gm.n_components):
        if gm.weights[k] == 0:
            continue
        C = gamma[:, None, None] ** 2 * covs[k] + var[:, None, None] * np.eye(D)  # (N, D, D)
        z = x - gamma[:, None] * gm.means[k]  # (N, D)
        sol = np.linalg.solve(C, z[:, :, None])[:, :, 0]  # C^{-1} z
        logdet = np.linalg.slogdet(C)[1]
        logits.append(math.log(gm.weights[k]) - 0.5 * (D * math.log(2 * math.pi) + logdet + np.sum(z * sol, axis=1)))
        grads.append(-sol)
    L = np.stack(logits)  # (K, N)
    m = L.max(axis=0)
    e = np.exp(L - m)
    logp = m + np.log(e.sum(axis=0))
    r = e / e.sum(axis=0)  # not exp(L - logp): at logits of 1e27 its rounding (1e11) is no small error
    return logp, np.einsum("kn,knd->nd", r, np.stack(grads))


@functools.cache
def case(kind, N, K, D, times):
    gm = make_mixture(kind, K, D, seed=N + 10 * K + 100 * D)
    x = 3.0 * np.random.default_rng(N * D).standard_normal((N, D))
    process, t = process_and_t(times, N)
    x32 = x.astype(np.float32)
    expected = {"float64": oracle(gm, x, process, t), "float32": oracle(gm, x32.astype(np.float64), process, t)}
    return gm, {"float64": x, "float32": x32}, process, t, expected


def on_backend(backend, a):
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    return a


def to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def check(got, want, dtype_name, what):
    tol = TOL[dtype_name]
    scale = max(1.0, float(np.max(np.abs(want))))  # atol relative to the result's size
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "numba":
        pytest.importorskip("numba", reason="numba is not installed (pip install 'refdiff[fast]')")
    if request.param == "cupy-host":
        request.getfixturevalue("cuda_host")
        return "cupy"
    return request.param


@pytest.mark.parametrize("times", TIMES)
@pytest.mark.parametrize("N,K,D", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_twin_matches_oracle(backend, dtype_name, kind, N, K, D, times):
    if JIT_OFF and backend == "numba" and times in ("t=0.5", "t=1"):
        pytest.skip(BROAD_TIMES_JIT_OFF)
    gm, xs, process, t, expected = case(kind, N, K, D, times)
    x = on_backend(backend, xs[dtype_name])
    score = gm.score(x, process, t, backend=backend)
    logp = gm.log_prob(x, process, t, backend=backend)
    assert type(score) is type(x) and score.dtype == x.dtype and score.shape == (N, D)
    assert type(logp) is type(x) and logp.dtype == x.dtype and logp.shape == (N,)
    check(to_host(logp), expected[dtype_name][0], dtype_name, "log_prob")
    check(to_host(score), expected[dtype_name][1], dtype_name, "score")


@pytest.mark.parametrize("device", [pytest.param("host", marks=pytest.mark.cuda_host), pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_cuda_diag_kernel_matches_the_general_kernel(request, monkeypatch, device, dtype_name, kind):
    """mixture_score_diag, the CUDA kernel for one t with isotropic or diagonal covariances, against the general
    kernel on the same points: score and log p, at D reaching each of its register bounds (2, 4, 8, 16, 32, 64)."""
    if device == "host":
        request.getfixturevalue("cuda_host")
    import cupy

    from refdiff.kernels import mixture_cupy

    names, kernel = [], mixture_cupy._kernel
    monkeypatch.setattr(mixture_cupy, "_kernel", lambda *a, **kw: names.append(mixture_cupy.name_expression(*a, **kw))
                        or kernel(*a, **kw))  # fmt: skip
    for D in (1, 3, 6, 16, 17, 40):
        gm = make_mixture(kind, K=5, D=D, seed=D)
        x = cupy.asarray(3.0 * np.random.default_rng(D).standard_normal((37, D)).astype(dtype_name))
        for process, t in ((None, None), (PROCESS, 0.5)):
            for want_score in (True, False):
                results = []
                for general in (False, True):
                    launch, finish = mixture_cupy._prepare(gm, x, process, t, want_score, general=general)
                    launch()
                    results.append(to_host(finish()).astype(np.float64))
                check(*results, dtype_name, f"D={D} t={t} {'score' if want_score else 'log_prob'}")
                special, general = names[-2:]  # the two kernels did run
                assert special.startswith("mixture_score_diag<") and general.startswith("mixture_score<"), names[-2:]


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_every_backend_drops_a_component_whose_inverse_variance_overflows(backend, dtype_name, kind, D):
    """A component so narrow that 1 / c overflows the dtype (a subnormal variance): its quadratic form is inf,
    or NaN (0 * inf) at a coordinate where the difference is 0, as at the padding of a kernel's register
    bound; its weight is 0 either way, and the other component alone gives the result. Once, the CUDA kernel
    for one t took such a NaN into its sums and returned NaN rows."""
    tiny = {"float32": 1e-39, "float64": 1e-310}[dtype_name]
    means = np.stack([np.zeros(D), np.ones(D)])
    variances = np.array([tiny, 1.0]) if kind == "isotropic" else np.stack([np.full(D, tiny), np.ones(D)])
    gm = GaussianMixture([0.5, 0.5], means, variances)
    x64 = np.array([[1.0] * D, [0.5] * D, [0.25, -0.5, 2.0][:D]])  # no coordinate at component 0's mean
    x = on_backend(backend, x64.astype(dtype_name))
    with np.errstate(over="ignore"):  # 1 / c does overflow (NumPy says so in the reference and the launchers)
        score, logp = gm.score(x, backend=backend), gm.log_prob(x, backend=backend)
    z = x64.astype(dtype_name).astype(np.float64) - 1.0  # component 1 alone: N(1, I)
    check(to_host(score), -z, dtype_name, "score")
    check(to_host(logp), math.log(0.5) - 0.5 * (D * math.log(2 * math.pi) + np.sum(z * z, axis=1)), dtype_name, "log_prob")


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("process,t", [(None, None), (PROCESS, 0.0), (PROCESS, np.zeros(5))])
def test_every_backend_weighs_a_point_at_a_component_whose_inverse_variance_overflows(backend, dtype_name, kind, D,
                                                                                      process, t):
    """The component of that test, at points on and near its mean: there it carries all the weight (its
    log-normaliser is some 90 e-folds (float32) or 710 (float64) above the other's). The reference divides by
    c_k; the twins multiplied by 1 / c_k = inf in the dtype, which made a NaN (0 * inf) or an infinite quadratic
    form and dropped the component: score and log p then came from the other component alone. They now take
    their exact forms for such a mixture (and float64 on the GPU, whose float32 flushes a subnormal c_k to 0).
    The last point is so far out that every quadratic form overflows: the far pass takes it, where 0 * (1 / c_k)
    at its zero coordinates was NaN."""
    tiny = {"float32": 1e-39, "float64": 1e-310}[dtype_name]
    means = np.stack([np.zeros(D), np.ones(D)])
    variances = np.array([tiny, 1.0]) if kind == "isotropic" else np.stack([np.full(D, tiny), np.ones(D)])
    gm = GaussianMixture([0.5, 0.5], means, variances)
    near = 0.7 * math.sqrt(tiny)  # q_0 = 0.49 per coordinate so displaced
    far = {"float32": 1e30, "float64": 1e200}[dtype_name]  # every quadratic form overflows the dtype
    x64 = np.array([[0.0] * D, [near] + [0.0] * (D - 1), [near, -near, 0.5 * near][:D], [0.5] * D,
                    [far] + [0.0] * (D - 1)])
    x_d = x64.astype(dtype_name)
    # the exact result in long double (whose range holds 1 / 1e-310), by the reference's division
    L = np.longdouble
    xl = x_d.astype(L)
    c = np.array([L(tiny), L(1.0)])
    logits = np.stack([L(math.log(0.5)) - L(0.5) * (D * L(math.log(2 * math.pi)) + D * np.log(c[k]))
                       - L(0.5) * np.sum((xl - L(k)) * ((xl - L(k)) / c[k]), axis=1) for k in (0, 1)])
    top = logits.max(axis=0)
    w = np.exp(logits - top)
    with np.errstate(over="ignore"):  # the far row's log p, some -1e400, is -inf in float64
        want_logp = (top + np.log(w.sum(axis=0))).astype(np.float64)
    want_score = (-sum(w[k][:, None] * ((xl - L(k)) / c[k]) for k in (0, 1)) / w.sum(axis=0)[:, None]).astype(np.float64)
    assert np.all(want_logp[:3] > 40.0) and want_logp[3] < 0  # the narrow component dominates its three points
    x = on_backend(backend, x_d)
    with np.errstate(over="ignore"):  # 1 / c overflows (the reference's constants, a launcher's, NumPy says so)
        score, logp = to_host(gm.score(x, process, t, backend=backend)), to_host(gm.log_prob(x, process, t, backend=backend))
    for i in range(x64.shape[0]):  # row by row: the scores range from 0 to 1e19 (float32) and 1e155
        check(score[i], want_score[i], dtype_name, f"score of row {i}")
        if i < 4:  # the far row's log p underflows the dtype, in float32 from a finite float64 value
            check(logp[i:i + 1], want_logp[i:i + 1], dtype_name, f"log_prob of row {i}")
    t1 = t if t is None or np.ndim(t) == 0 else t[1:2]  # one row: a per-row t of one row is one t to the launchers
    with np.errstate(over="ignore"):
        check(to_host(gm.score(x[1:2], process, t1, backend=backend))[0], want_score[1], dtype_name, "one row's score")


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("dtype_name,c_narrow", [("float32", 1e-37), ("float32", 1e-34), ("float32", 1e-30),
                                                 ("float64", 1e-300), ("float64", 1e-100)])
def test_every_backend_keeps_a_dropped_weight_whose_field_is_large(backend, dtype_name, c_narrow, D):
    """A narrow component (variance c along coordinate 0, a normal number) beside a unit one, and a point where the
    narrow one's weight just falls below the Numba one-pass kernel's drop (e**10 tiny, in its scaled units) while the
    unit one's keeps the sum just above that kernel's old redo bound (SHIFT_LIMIT). The dropped weight is some
    e**-37 (float32) of the sum, but its field z / c is some 1e19 (1e150): the kernel's score came back as the unit
    component's alone (9.08 where the reference gives -1343.6). The point is placed by the kernel's own
    arithmetic: its shift bits (lowered for narrow components) and the drop."""
    dt = np.dtype(dtype_name)
    log_2pi = math.log(2.0 * math.pi)
    ln_narrow, ln_unit = math.log(0.5) - 0.5 * (log_2pi + math.log(c_narrow)), math.log(0.5) - 0.5 * log_2pi
    bits = min(86 if dt == np.float32 else 865,
               math.floor((128 if dt == np.float32 else 1024) - 3 - 0.5 * math.log2(0.5 / c_narrow)))
    shift = bits * math.log(2.0)
    limit = -40.0 if dt == np.float32 else -600.0
    q_unit = 2.0 * ((ln_unit - ln_narrow) + shift - limit - 0.5)  # the unit one's log weight 0.5 above the bound
    q_narrow = 2.0 * (shift - (math.log(np.finfo(dt).tiny) + 10.0) + 0.3)  # the narrow one's 0.3 below the drop
    x0 = math.sqrt(q_narrow * c_narrow)
    means = np.zeros((2, D))
    means[1, 0] = x0 + math.sqrt(q_unit)
    variances = np.ones((2, D))
    variances[0, 0] = c_narrow
    gm = GaussianMixture([0.5, 0.5], means, variances)
    x = np.zeros((1, D), dt)
    x[0, 0] = x0
    want = gm.score(x.astype(np.float64), backend="numpy")
    unit_alone = means[1, 0] - float(x[0, 0])  # the score's coordinate 0 without the narrow component
    assert abs(want[0, 0] - unit_alone) > 0.02 * abs(want[0, 0])  # the dropped term counts, 100x the tolerance
    check(to_host(gm.score(on_backend(backend, x), backend=backend)).astype(np.float64), want, dtype_name, "score")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_far_point_stays_finite(backend, dtype_name, kind):
    """Every logit is about -1e7, so exp underflows for all of them; the log-sum-exp must stay finite and exact."""
    gm = make_mixture(kind, K=3, D=3)
    x64 = np.array([[1e3, -2e3, 5e2], [0.0, 0.0, 3e3], [0.1, 0.2, 0.3]])
    x = on_backend(backend, x64.astype(dtype_name))
    for process, t in ((None, None), (PROCESS, 0.5), (PROCESS, np.array([1e-4, 0.3, 1.0]))):
        logp, score = gm.log_prob(x, process, t, backend=backend), gm.score(x, process, t, backend=backend)
        want_logp, want_score = oracle(gm, to_host(x).astype(np.float64), process, t)
        assert np.all(np.isfinite(to_host(logp))) and np.all(np.isfinite(to_host(score)))
        assert want_logp.min() < -1e5  # the case is the one described
        check(to_host(logp), want_logp, dtype_name, "log_prob")
        check(to_host(score), want_score, dtype_name, "score")


#: The scalar-t kernels of the numba twin: the lane kernels, and the GEMM path with its products by BLAS or by
#: its own register-tiled FMA loops (``gemm_products``: which one a process takes depends on the CPU).
NUMBA_PATHS = {"lanes": ("lanes", None), "gemm": ("gemm", "blas"), "gemm-fma": ("gemm", "fma")}


def oracle_extended(gm, x, process, t):
    """(log p_t(x), score) as :func:`oracle` gives them, in np.longdouble: for points so far out that every quadratic
    form overflows float64 (its range, to about 1e4932 on x86, holds them)."""
    L = np.longdouble
    N, D = x.shape
    gamma = np.ones(N) if process is None else np.broadcast_to(np.asarray(process.mean_coef(t), dtype=np.float64), (N,))
    var = np.zeros(N) if process is None else np.broadcast_to(np.asarray(process.variance(t), dtype=np.float64), (N,))
    lam, U = np.linalg.eigh(gm.full_covs())
    xl = x.astype(L)
    logits, grads = [], []
    for k in np.flatnonzero(gm.weights > 0):
        c = gamma[:, None].astype(L) ** 2 * lam[k].astype(L) + var[:, None].astype(L)  # (N, D) eigenvalues of C_k
        y = (xl - gamma[:, None].astype(L) * gm.means[k].astype(L)) @ U[k].astype(L)  # eigen coordinates
        logits.append(L(math.log(gm.weights[k])) - (D * L(math.log(2 * math.pi)) + np.sum(np.log(c), axis=1)
                                                   + np.sum(y * y / c, axis=1)) / 2)
        grads.append(-(y / c) @ U[k].T.astype(L))
    lg = np.stack(logits)
    m = lg.max(axis=0)
    e = np.exp(lg - m)
    return m + np.log(e.sum(axis=0)), np.einsum("kn,knd->nd", e / e.sum(axis=0), np.stack(grads))


def far_out_points(D, dtype_name, seed=5):
    """Points whose quadratic forms all overflow the dtype, the score still well inside it: three scales in each of
    two random directions (float32 1e22 to 1e30, float64 1e160 to 1e300), one with a negligible other coordinate."""
    scales = (1e22, 3e25, 1e30) if dtype_name == "float32" else (1e160, 1e230, 1e300)
    u = np.random.default_rng(seed).standard_normal((2, D))
    u[1, 1:] *= 1e-30
    return np.array([s * v for s in scales for v in u])


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp < 2048, reason="np.longdouble is float64 here: no oracle")
@pytest.mark.parametrize("kind,K,D", [("isotropic", 4, 2), ("diagonal", 5, 3), ("full", 4, 3), ("isotropic", 1, 2),
                                      ("diagonal", 6, 8), ("full", 3, 6)])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_points_beyond_the_quadratic_forms_range_get_a_finite_score(backend, dtype_name, kind, K, D):
    """Where every q_k overflows x's dtype, log p_t is -inf (it underflows) but the score is finite: the weights come
    from quadratic forms scaled by a power of two (the nearest components by q_k, the log-normalisers among equals).
    Each row's score to its dtype's tolerance relative to its size, against extended precision."""
    gm = make_mixture(kind, K, D, seed=K + D)
    x64 = far_out_points(D, dtype_name).astype(dtype_name).astype(np.float64)
    x = on_backend(backend, x64.astype(dtype_name))
    for process, t in ((None, None), (PROCESS, 0.3), (PROCESS, np.linspace(1e-3, 1.0, x64.shape[0]))):
        want_logp, want_score = oracle_extended(gm, x64, process, t)
        assert np.all(want_logp < -np.finfo(dtype_name).max)  # the case is the one described
        logp, score = to_host(gm.log_prob(x, process, t, backend=backend)), to_host(gm.score(x, process, t, backend=backend))
        assert np.all(logp == -np.inf)
        err = np.max(np.abs(score - want_score), axis=1) / np.max(np.abs(want_score), axis=1)
        assert np.all(err <= TOL[dtype_name]["rtol"]), (err, score, want_score)


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp < 2048, reason="np.longdouble is float64 here: no oracle")
@pytest.mark.parametrize("path", list(NUMBA_PATHS))
@pytest.mark.parametrize("kind,K,D", [("isotropic", 4, 2), ("diagonal", 5, 3), ("isotropic", 8, 8), ("diagonal", 6, 8)])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_every_numba_path_scores_points_beyond_the_quadratic_forms_range(numba_twin, path, dtype_name, kind, K, D):
    """As above, through every scalar-t kernel of the numba twin, forced (one pass, two passes, the GEMM path)."""
    path, products = NUMBA_PATHS[path]
    if path == "gemm" and D <= numba_twin.ONE_PASS_MAX_D:
        path = "lanes"  # below the GEMM path's dimensions: the two-pass block, with points far and near
    gm = make_mixture(kind, K, D, seed=K + D)
    x64 = far_out_points(D, dtype_name).astype(dtype_name).astype(np.float64)
    near = np.random.default_rng(1).standard_normal((5, D))
    xs = np.vstack([x64, near])
    want_score = np.vstack([oracle_extended(gm, x64, PROCESS, 0.3)[1].astype(np.float64), oracle(gm, near, PROCESS, 0.3)[1]])
    score = numba_twin._evaluate(gm, xs.astype(dtype_name), PROCESS, 0.3, True, path=path, products=products)
    err = np.max(np.abs(score - want_score), axis=1) / np.max(np.abs(want_score), axis=1)
    assert np.all(err <= TOL[dtype_name]["rtol"]), err


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp < 2048, reason="np.longdouble is float64 here: no oracle")
@pytest.mark.parametrize("path", list(NUMBA_PATHS))
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_points_whose_quadratic_forms_overflow_before_their_square_norm_are_scored(numba_twin, path, dtype_name):
    """Narrow components (c = 1e-2): at |x|^2 = max / 10 every q_k = |x - gamma mu_k|^2 / c overflows while |x|^2
    does not, so the GEMM path's own test for far points (|x|^2 near the overflow) misses them; the points with no
    weight left are redone all the same."""
    path, products = NUMBA_PATHS[path]
    if JIT_OFF and products == "fma" and dtype_name == "float64":
        pytest.skip(FMA64_JIT_OFF)
    rng = np.random.default_rng(11)
    K, D = 4, 8
    gm = GaussianMixture(np.full(K, 1.0 / K), rng.standard_normal((K, D)), np.full(K, 1e-2))
    u = rng.standard_normal((3, D))
    far = u / np.linalg.norm(u, axis=1, keepdims=True) * math.sqrt(float(np.finfo(dtype_name).max) / 10)
    x64 = np.vstack([far, rng.standard_normal((4, D))]).astype(dtype_name).astype(np.float64)
    want = oracle_extended(gm, x64, None, None)[1].astype(np.float64)
    score = numba_twin._evaluate(gm, x64.astype(dtype_name), None, None, True, path=path, products=products)
    err = np.max(np.abs(score - want), axis=1) / np.max(np.abs(want), axis=1)
    assert np.all(err <= TOL[dtype_name]["rtol"]), err
    logp = numba_twin._evaluate(gm, x64.astype(dtype_name), None, None, False, path=path, products=products)
    assert np.all(logp[:3] == -np.inf) and np.all(np.isfinite(logp[3:]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind,K,D", [("isotropic", 12, 8), ("diagonal", 12, 8), ("full", 3, 3), ("isotropic", 4, 2),
                                      ("diagonal", 5, 2), ("diagonal", 6, 3), ("isotropic", 8, 4), ("isotropic", 2, 1)])
@pytest.mark.parametrize("per_example_t", [False, True])
@pytest.mark.parametrize("row", [217, 299])  # inside a full block; in the last, partial one
def test_non_finite_points_raise(backend, kind, K, D, bad, per_example_t, row):
    """Every backend and path names x when it holds NaN or infinity (the GEMM path finds them as it reads x)."""
    gm = make_mixture(kind, K, D)
    x64 = np.random.default_rng(2).standard_normal((300, D))
    x64[row, (D - 1) * ((row // 2) % 2)] = bad  # one value: row 217 in the first column, 299 in the last
    x = on_backend(backend, x64.astype(np.float32))
    t = np.full(300, 0.5) if per_example_t else 0.5
    for method in (gm.score, gm.log_prob):
        with pytest.raises(ValueError, match="x must be finite"):
            method(x, PROCESS, t, backend=backend)


def test_gemm_path_takes_points_whose_squared_norm_overflows(numba_twin, monkeypatch):
    """|x|^2 overflows float32 at |x| ~ 2e19 while x is finite: the kernel counts the point, the precise check
    that follows finds x finite, and the call returns (the values there are undefined: the reference gives NaN)."""
    from refdiff import backend

    calls = []
    real = backend.check_finite
    monkeypatch.setattr(backend, "check_finite", lambda x, name, xp=None: calls.append(name) or real(x, name, xp))
    gm = make_mixture("isotropic", 12, 8)
    x = np.zeros((300, 8), dtype=np.float32)
    assert numba_twin.choose_path(0, x.dtype, 12, 8, False) == "gemm"
    numba_twin.mixture_score(gm, x)
    assert calls == []  # finite |x|^2 everywhere: no second pass over x
    x[299] = 1e19  # in the last, partial block
    assert numba_twin.mixture_score(gm, x).shape == (300, 8)
    assert calls[0] == "x"


@pytest.mark.parametrize("products", ["blas", "fma"])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name,variance,scale", [("float32", 1e12, 2e19), ("float64", 1e300, 1e154)])
def test_gemm_path_redoes_points_whose_squared_norm_overflows(numba_twin, kind, dtype_name, variance, scale, products):
    """Broad components (variance 1e12 in float32, 1e300 in float64): at |x_j| = 2e19 (1e154) |x|^2 overflows
    the dtype, yet x^T C^{-1} x is moderate (about 1e27, 1e8). The expanded form's logits are not finite there
    (log p was -inf and the score NaN); such points are redone from the differences (by the lane kernels), in
    the last rows of a block and the first of the next (the FMA products' blocks are 128 points)."""
    if JIT_OFF and products == "fma" and dtype_name == "float64":
        pytest.skip(FMA64_JIT_OFF)
    K, D = 8, 5
    covs = np.full(K, variance) if kind == "isotropic" else np.full((K, D), variance)
    gm = GaussianMixture(np.full(K, 1.0 / K), np.random.default_rng(0).standard_normal((K, D)), covs)
    x = np.random.default_rng(1).standard_normal((200, D)).astype(dtype_name)
    far = [3, 64, 127, 128, 199]
    x[far] = scale * np.sign(x[far])
    assert numba_twin.choose_path(0 if kind == "isotropic" else 1, x.dtype, K, D, False) == "gemm"
    want_logp, want_score = oracle(gm, x.astype(np.float64), None, None)
    check(numba_twin._evaluate(gm, x, None, None, True, products=products), want_score, dtype_name, "score")
    check(numba_twin._evaluate(gm, x, None, None, False, products=products), want_logp, dtype_name, "log_prob")


@pytest.fixture
def numba_twin():
    return pytest.importorskip("refdiff.kernels.mixture_numba", exc_type=ImportError)


# (300, 48, 40): sparse posteriors; (133, 9, 32): the FMA products' score straight into its rows (D fills
# whole tiles in both dtypes), a block of 128 points and one of 5; (19, 9000, 4): blocks of 8 points, each
# BLAS product split over slices
SPLIT_PRODUCTS = pytest.param(19, 9000, 4, marks=pytest.mark.skipif(JIT_OFF, reason="K = 9000 is minutes under NUMBA_DISABLE_JIT"))


@pytest.mark.parametrize("path", list(NUMBA_PATHS))
@pytest.mark.parametrize("times", ["data", "t=1e-4", "t=0.5", "t=1"])
@pytest.mark.parametrize("N,K,D", SIZES + [(257, 40, 7), (300, 48, 40), (133, 9, 32), SPLIT_PRODUCTS])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_every_numba_path_matches_oracle(numba_twin, path, dtype_name, kind, N, K, D, times):
    """Every scalar-t kernel of the numba twin, forced, whatever K * D the automatic choice would take."""
    if JIT_OFF and N * K * D > 10_000 and times != "t=1e-4":  # t near 0 (narrow components) reaches the most lines
        pytest.skip("as plain Python a large case runs at one time only (NUMBA_DISABLE_JIT)")
    if JIT_OFF and times in ("t=0.5", "t=1"):
        pytest.skip(BROAD_TIMES_JIT_OFF)
    path, products = NUMBA_PATHS[path]
    if JIT_OFF and products == "fma" and dtype_name == "float64":
        pytest.skip(FMA64_JIT_OFF)
    gm, xs, process, t, expected = case(kind, N, K, D, times)
    score = numba_twin._evaluate(gm, xs[dtype_name], process, t, True, path=path, products=products)
    logp = numba_twin._evaluate(gm, xs[dtype_name], process, t, False, path=path, products=products)
    assert score.dtype == logp.dtype == np.dtype(dtype_name)
    check(logp, expected[dtype_name][0], dtype_name, "log_prob")
    check(score, expected[dtype_name][1], dtype_name, "score")


def far_cluster_case(offset, D=24, K=16, N=512, spread=0.3, seed=7):
    """Overlapping components (means 0.3 N(0, I) apart) far from the origin, points drawn from the mixture.

    |x|^2 ~ offset^2 D while x'C^-1 x ~ D: the expanded form of the logits
    misses the score by about 1e-2 in float32 at offset 40, and by about 1e-6
    in float64 at offset 1e4; the difference form holds both to their dtype.
    Further out (1000 in float32, 1e6 in float64) the score's own expanded
    sum, sum_k w_k s_k gmu_k - x sum_k w_k s_k, cancels past the tolerance
    too, even with exact logits.
    """
    rng = np.random.default_rng(seed)
    means = offset + spread * rng.standard_normal((K, D))
    gm = GaussianMixture(np.full(K, 1.0 / K), means, rng.uniform(0.05, 0.2, K))
    return gm, gm.sample(N, rng=rng)


@pytest.mark.parametrize("D", [24, 32])  # 32: the FMA products' score lands in its rows (_rows_out), refined after
@pytest.mark.parametrize("products", ["blas", "fma"])
@pytest.mark.parametrize("dtype_name,offset", [("float32", 40.0), ("float32", 1000.0), ("float64", 1e4), ("float64", 1e6)])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
def test_gemm_path_refines_where_the_expanded_form_cancels(numba_twin, monkeypatch, kind, dtype_name, offset, products,
                                                           D):
    """Near means far from the origin |x|^2 - 2 x.mu + |mu|^2 loses the digits that matter; the refined logits don't."""
    if JIT_OFF and products == "fma" and dtype_name == "float64":
        pytest.skip(FMA64_JIT_OFF)
    if JIT_OFF and products == "blas" and D == 32:
        pytest.skip("as plain Python D = 32 adds lines to the FMA products only (NUMBA_DISABLE_JIT)")
    gm, x = far_cluster_case(offset, D=D, N=512 if D == 24 else 515)  # 515: redone points in a partial block too
    if kind == "diagonal":
        gm = GaussianMixture(gm.weights, gm.means, np.repeat(gm.covs[:, None], gm.dim, axis=1))
    x = x.astype(dtype_name)
    want_logp, want_score = oracle(gm, x.astype(np.float64), None, None)
    assert gm.kind == kind and numba_twin.choose_path(0 if kind == "isotropic" else 1, x.dtype, 16, D, False) == "gemm"
    check(numba_twin._evaluate(gm, x, None, None, True, products=products), want_score, dtype_name, "score")
    check(numba_twin._evaluate(gm, x, None, None, False, products=products), want_logp, dtype_name, "log_prob")
    monkeypatch.setattr(numba_twin, "REFINE_KAPPA", np.inf)  # never refine: the case must be one that needs it
    monkeypatch.setattr(numba_twin, "SCORE_KAPPA", np.inf)
    with pytest.raises(AssertionError):
        check(numba_twin._evaluate(gm, x, None, None, True, products=products), want_score, dtype_name, "score")


def test_gemm_kernel_refuses_blocks_wider_than_its_scratch_rows(numba_twin, monkeypatch):
    """The GEMM kernel's logits live in rows GEMM_ROW wide: more lanes would run into the next row, unchecked."""
    seen = []
    kernel = numba_twin._score_gemm

    def spy(*args):
        seen.append(args)
        return kernel(*args)

    monkeypatch.setattr(numba_twin, "_score_gemm", spy)
    gm, x = make_mixture("isotropic", 8, 6), np.random.default_rng(0).standard_normal((300, 6))
    numba_twin._evaluate(gm, x, None, None, True, path="gemm")
    (args,) = seen
    wide = list(args)
    for lanes in (numba_twin.GEMM_ROW + 8, 0):
        wide[10] = lanes
        with pytest.raises(ValueError, match="lanes"):
            kernel(*wide)


def test_gemm_products_follow_the_cpu(numba_twin):
    """Own register tiles where Numba compiles for 512-bit vectors or for AVX2 with FMA, whatever OPENBLAS_CORETYPE
    says; BLAS elsewhere."""
    choose = numba_twin.gemm_products
    for env in ({}, {"OPENBLAS_CORETYPE": "Haswell"}, {"OPENBLAS_CORETYPE": "SkylakeX"}):
        assert choose(env, wide=True) == "fma"
        assert choose(env, wide=False) == "blas"
    assert choose({"NUMBA_CPU_FEATURES": "+avx2,+avx512f,+fma"}) == "fma"
    assert choose({"NUMBA_CPU_FEATURES": "+avx2,-avx512f,+fma"}) == "fma"
    assert choose({"NUMBA_CPU_FEATURES": "+avx2,-avx512f,-fma"}) == "blas"
    assert choose({"NUMBA_CPU_FEATURES": "+avx,+sse4.2"}) == "blas"
    assert choose({"NUMBA_CPU_NAME": "generic"}) == "blas"  # Numba's portable build: no wide vectors, whatever the host
    assert choose({"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "+avx512f"}) == "fma"
    assert numba_twin.GEMM_PRODUCTS == choose()
    with pytest.raises(ValueError, match="products"):
        numba_twin._evaluate(make_mixture("isotropic", 4, 8), np.zeros((3, 8)), None, None, True, products="mkl")


@pytest.mark.parametrize("D", [1, 2, 3, 4])
@pytest.mark.parametrize("K", [1, 4, 5, 8])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_one_pass_kernel_redoes_points_far_from_every_component(numba_twin, monkeypatch, dtype_name, kind, K, D):
    """D <= 4 shifts the weights by the largest log-normaliser, not each point's best logit; points whose best
    component lies beyond SHIFT_LIMIT of it are redone by the two-pass block (here scattered through full and partial
    blocks),
    and a component of prior weight 1e-30 sits among them (its nu_k is tiny, never subnormal in float64)."""
    if JIT_OFF and K in (4, 8):  # K = 5 takes the lines of both (a group of four components, then one alone)
        pytest.skip("as plain Python K = 1 and 5 take every line (NUMBA_DISABLE_JIT)")
    gm = make_mixture(kind, K, D, seed=K + 10 * D)
    w = gm.weights.copy()
    w[0] = 1e-30
    gm = GaussianMixture(w / w.sum(), gm.means, gm.covs)
    rng = np.random.default_rng(K + 10 * D)
    x64 = 2.0 * rng.standard_normal((1000, D))
    far = rng.choice(1000, 60, replace=False)
    radius = 40.0 if dtype_name == "float32" else 150.0  # q_k / 2 some 100 resp. 1200 above SHIFT_LIMIT at t = 0.5
    direction = rng.standard_normal((far.size, D))
    x64[far] = radius * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    x = x64.astype(dtype_name)
    want_logp, want_score = oracle(gm, x.astype(np.float64), PROCESS, 0.5)
    assert numba_twin.choose_path(0 if kind == "isotropic" else 1, x.dtype, K, D, False) == "lanes"
    check(numba_twin._evaluate(gm, x, PROCESS, 0.5, True), want_score, dtype_name, "score")
    check(numba_twin._evaluate(gm, x, PROCESS, 0.5, False), want_logp, dtype_name, "log_prob")
    monkeypatch.setattr(numba_twin, "SHIFT_LIMIT", (-np.inf, -np.inf))  # never redo: the case must need it
    if K > 1:  # one component's clamped weight cancels from its score, not from log p
        with pytest.raises(AssertionError):
            check(numba_twin._evaluate(gm, x, PROCESS, 0.5, True), want_score, dtype_name, "score")
    with pytest.raises(AssertionError):
        check(numba_twin._evaluate(gm, x, PROCESS, 0.5, False), want_logp, dtype_name, "log_prob")


@pytest.mark.parametrize("D", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_one_pass_kernel_redoes_tasks_of_far_points(numba_twin, monkeypatch, dtype_name, D):
    """When most points lie beyond SHIFT_LIMIT of every component (narrow components, as near t = 0), a task
    gathers hundreds of them and redoes them LANES at a time: here every chunk holds more than LANES far points,
    in a count that is no multiple of LANES, and the last chunk is a partial one."""
    gm = make_mixture("diagonal", 5, D, seed=D)
    rng = np.random.default_rng(D)
    n = 2 * numba_twin.ONE_PASS_LANES[0] + 77
    direction = rng.standard_normal((n, D))
    radius = 40.0 if dtype_name == "float32" else 150.0  # as in the test above: far from every component
    x64 = radius * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    near = rng.choice(n, 100, replace=False)
    x64[near] = gm.means[rng.integers(0, 5, near.size)] + 0.3 * rng.standard_normal((near.size, D))
    x = x64.astype(dtype_name)
    want_logp, want_score = oracle(gm, x.astype(np.float64), PROCESS, 0.5)
    check(numba_twin._evaluate(gm, x, PROCESS, 0.5, True, path="lanes"), want_score, dtype_name, "score")
    check(numba_twin._evaluate(gm, x, PROCESS, 0.5, False, path="lanes"), want_logp, dtype_name, "log_prob")
    monkeypatch.setattr(numba_twin, "SHIFT_LIMIT", (-np.inf, -np.inf))  # never redo: the case must need it
    with pytest.raises(AssertionError):
        check(numba_twin._evaluate(gm, x, PROCESS, 0.5, False, path="lanes"), want_logp, dtype_name, "log_prob")


@pytest.mark.parametrize("D", [2, 3])
@pytest.mark.parametrize("kind", ["isotropic", "diagonal"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_one_pass_kernel_gives_each_point_the_same_bits_however_tasks_split(numba_twin, monkeypatch, dtype_name,
                                                                            kind, D):
    """A thread's share is a few tasks of several chunks of ONE_PASS_LANES points: one task per thread, three,
    or one per chunk (here 12 chunks of 128 or 96 points, the last partial, chunks that are no multiple of
    LANES, far points in some), in parallel or on the calling thread (small calls), give the same bits, and a
    point's score does not depend on N (its first 300 points alone, a call small enough for the calling
    thread)."""
    monkeypatch.setattr(numba_twin, "ONE_PASS_LANES", (128, 96))  # smaller than the defaults: fast without the JIT
    gm = make_mixture(kind, 6, D, seed=3 + D)
    rng = np.random.default_rng(D)
    n = 11 * numba_twin.ONE_PASS_LANES[dtype_name == "float64"] + 45
    x64 = 2.0 * rng.standard_normal((n, D))
    far = rng.choice(n, 12, replace=False)
    x64[far] *= 40.0 if dtype_name == "float32" else 150.0
    x = x64.astype(dtype_name)
    got = []
    for per_thread, serial_work in ((1, 0), (3, 0), (64, 0), (3, 2**62)):  # the last on the calling thread
        monkeypatch.setattr(numba_twin, "ONE_PASS_TASKS_PER_THREAD", per_thread)
        monkeypatch.setattr(numba_twin, "ONE_PASS_SERIAL_WORK", serial_work)
        got.append((numba_twin._evaluate(gm, x, PROCESS, 0.5, True, path="lanes"),
                    numba_twin._evaluate(gm, x, PROCESS, 0.5, False, path="lanes")))
    for score, logp in got[1:]:
        np.testing.assert_array_equal(score, got[0][0])
        np.testing.assert_array_equal(logp, got[0][1])
    np.testing.assert_array_equal(numba_twin._evaluate(gm, x[:300], PROCESS, 0.5, True, path="lanes"), got[0][0][:300])
    want_logp, want_score = oracle(gm, x.astype(np.float64), PROCESS, 0.5)
    check(got[0][0], want_score, dtype_name, "score")
    check(got[0][1], want_logp, dtype_name, "log_prob")


def test_one_pass_kernel_drops_weights_below_the_exps_range(numba_twin):
    """A component far from the points with a narrow variance: its weight underflows, while its field
    (x - gamma mu_k) / c_k is some 1e10. Clamping the weight at the exp's floor instead of dropping it
    (exp(-87) times the prior factor's 2**86) put 1e-3 relative error into the float32 score at x = 10.5."""
    gm = GaussianMixture(np.array([0.5, 0.5]), np.array([[0.0], [1e6]]), np.array([1.0, 1e-4]))
    x = np.linspace(-12.0, 12.0, 301)[:, None].astype(np.float32)
    want_logp, want_score = oracle(gm, x.astype(np.float64), None, None)
    check(numba_twin._evaluate(gm, x, None, None, True, path="lanes"), want_score, "float32", "score")
    check(numba_twin._evaluate(gm, x, None, None, False, path="lanes"), want_logp, "float32", "log_prob")


def test_one_pass_kernel_log_prob_between_the_subnormal_range_and_the_redo(numba_twin):
    """float64 points whose weights sum t lies between SHIFT_LIMIT (e**-600) and 2**865 times the smallest
    normal number (e**-109): t 2**-865 is subnormal there, where the log is not valid; the log takes -865 into
    its exponent instead (forming the product gave -707.0 for a log p of -999.4, and -710.0 for -722.9)."""
    gm = GaussianMixture(np.array([0.5, 0.5]), np.array([[-5.0, 0.0], [5.0, 0.0]]), np.array([[0.01, 0.01]] * 2))
    x = np.array([[0.0, 0.0], [0.5, 0.0], [1.2, 0.3], [2.0, 1.0], [4.0, 0.1]])
    want_logp, want_score = oracle(gm, x, PROCESS, 1e-3)
    assert np.sum((want_logp < -110.0) & (want_logp > -1190.0)) >= 3  # the case: in that window, one beyond
    np.testing.assert_allclose(numba_twin._evaluate(gm, x, PROCESS, 1e-3, False, path="lanes"), want_logp, rtol=1e-14)
    np.testing.assert_allclose(numba_twin._evaluate(gm, x, PROCESS, 1e-3, True, path="lanes"), want_score, rtol=1e-12)
    one = GaussianMixture(np.array([1.0]), np.array([[0.0]]), np.array([1.0]))
    x1 = np.array([[38.0], [30.0], [-40.0]])
    np.testing.assert_allclose(numba_twin._evaluate(one, x1, None, None, False), oracle(one, x1, None, None)[0],
                               rtol=1e-14)


# at D = 1 a gap of 1150 needs a weight of e**-920: 0 in float64
@pytest.mark.parametrize("D,gap", [(D, gap) for D in (1, 2, 3, 4) for gap in (730.0, 900.0, 1150.0) if D > 1 or gap < 1000])
def test_every_backend_keeps_a_component_far_below_the_largest_log_normaliser(backend, D, gap):
    """float64: N(0, I) and a broad N(0, 1e200 I) whose log-normaliser lies ``gap`` e-folds below, by its weight.
    At |x| = sqrt(2 gap) + 0.5 the broad one dominates, yet the unit one's weight, e**-(gap + 20) or more, keeps
    the point off the Numba one-pass kernel's redo (SHIFT_LIMIT: e**-1200). That kernel formed the broad one's
    prior factor e**-gap 2**865 as 2**865 times e**-gap, which is subnormal past 708 (log p off by 1e-7 at 730)
    and 0 past 745 (the component dropped)."""
    log_ratio = -gap + 0.5 * D * math.log(1e200)  # log w_broad - log w_unit
    w = np.array([1.0, math.exp(log_ratio)]) if log_ratio < 0 else np.array([math.exp(-log_ratio), 1.0])
    gm = GaussianMixture(w / w.sum(), np.zeros((2, D)), np.array([1.0, 1e200]))
    assert np.all(gm.weights > 0)
    direction = np.random.default_rng(D).standard_normal((3, D))
    x = (math.sqrt(2.0 * gap) + 0.5) * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    want_logp, want_score = oracle(gm, x, None, None)
    xb = on_backend(backend, x)
    np.testing.assert_allclose(to_host(gm.log_prob(xb, backend=backend)), want_logp, rtol=1e-13)
    check(to_host(gm.score(xb, backend=backend)), want_score, "float64", "score")


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("variance", [1e-60, 1e-30, 1e-14, 1e-9, 1e9, 1e20, 1e30, 1e60])
def test_one_pass_kernel_isotropic_components_of_extreme_variance(numba_twin, dtype_name, variance):
    """The isotropic form scales the field once, w / (2 c_k), which overflows or loses its precision for
    extreme c_k (float32: the score of c = 1e-14 came back -inf, that of c = 1e30 0 where -1.4e-14 was
    right); outside ISO_H_RANGE the kernel takes the diagonal form, and for c below about 1e-24 (float32) it
    lowers its shift so that the weights times the field stay finite (the score was infinite at c = 1e-30).
    Two components of that variance, points out to 13.5 standard deviations, the score to 1e-5 (float64:
    1e-12) relative to its scale."""
    if dtype_name == "float32" and not 1e-37 < variance < 1e37:
        pytest.skip("a float32 variance")
    sd = np.sqrt(variance)
    gm = GaussianMixture(np.array([0.3, 0.7]), np.array([[0.0], [3.0 * sd]]), np.array([variance, variance]))
    x = (sd * np.linspace(-13.5, 16.5, 61))[:, None].astype(dtype_name)  # out to the edge of the one-pass window
    _, want_score = oracle(gm, x.astype(np.float64), None, None)
    got = numba_twin._evaluate(gm, x, None, None, True, path="lanes")
    tol = 1e-5 if dtype_name == "float32" else 1e-12  # relative to the field's scale, 1 / sd here
    np.testing.assert_allclose(got.astype(np.float64), want_score, rtol=tol, atol=tol * np.max(np.abs(want_score)))


def test_one_pass_kernel_dropped_weight_adds_nothing_where_the_field_overflows(numba_twin):
    """A diagonal component of variance 1e-30 far from a point: h z overflows float32 to infinity, its weight
    is dropped (0), and 0 times infinity must not make the score NaN (it did, before the FMA was masked)."""
    gm = GaussianMixture(np.array([0.5, 0.5]), np.array([[0.0], [1e9]]), np.array([[1e-30], [1e6]]))
    x = np.array([[1e9], [1e9 + 1e3], [2e9]], dtype=np.float32)
    _, want_score = oracle(gm, x.astype(np.float64), None, None)
    got = numba_twin._evaluate(gm, x, None, None, True, path="lanes")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got.astype(np.float64), want_score, rtol=1e-5, atol=1e-12)


def narrow_and_far(kind, D):
    """Equal weights on N(0, 1e-30 I) and N(1e9 (1, .., 1), I), covariances of the given kind."""
    means = np.zeros((2, D))
    means[1] = 1e9
    covs = {"isotropic": np.array([1e-30, 1.0]), "diagonal": np.array([[1e-30] * D, [1.0] * D]),
            "full": np.stack([1e-30 * np.eye(D), np.eye(D)])}[kind]
    return GaussianMixture(np.array([0.5, 0.5]), means, covs)


@pytest.mark.parametrize("path,kind,D", [("lanes", "isotropic", 6), ("lanes", "diagonal", 5), ("lanes", "full", 2),
                                          ("lanes", "full", 6), ("gemm", "isotropic", 16), ("gemm", "diagonal", 6)])
def test_two_pass_and_gemm_paths_drop_a_weight_whose_field_overflows(numba_twin, path, kind, D):
    """float32 points at and beside 1e9, where the narrow component's weight underflows and its field
    C^{-1}(x - mu), about 1e39, overflows. The two-pass lane block raised that weight to its floor, exp(-57), and
    multiplied it by the infinite field (score -inf; NaN with full covariances, inside the rotation); the GEMM
    path raised it to exp(cut), which times s_k = 1e30 gave -1.1e10 where the score is 0."""
    gm = narrow_and_far(kind, D)
    x = np.array([[1e9] * D, [1e9 + 64] * D], dtype=np.float32)  # both exact in float32
    want_logp, want_score = oracle(gm, x.astype(np.float64), None, None)
    np.testing.assert_array_equal(want_score, [[0.0] * D, [-64.0] * D])
    np.testing.assert_array_equal(numba_twin._evaluate(gm, x, None, None, True, path=path), want_score)
    check(numba_twin._evaluate(gm, x, None, None, False, path=path), want_logp, "float32", "log_prob")


@pytest.mark.parametrize("kind,D", [("isotropic", 2), ("isotropic", 6), ("diagonal", 5), ("full", 2), ("full", 6)])
def test_every_backend_drops_a_weight_whose_field_overflows(backend, kind, D):
    """The case above through each backend's default path (the CUDA kernel's online log-sum-exp took the narrow
    component's logit of -inf as its first maximum and rescaled an infinite sum by 0)."""
    gm = narrow_and_far(kind, D)
    x = on_backend(backend, np.array([[1e9] * D, [1e9 + 64] * D], dtype=np.float32))
    with np.errstate(over="ignore"):  # the reference's field does overflow
        score, logp = gm.score(x, backend=backend), gm.log_prob(x, backend=backend)
    np.testing.assert_array_equal(to_host(score), [[0.0] * D, [-64.0] * D])
    check(to_host(logp), oracle(gm, to_host(x).astype(np.float64), None, None)[0], "float32", "log_prob")


@pytest.mark.parametrize("per_example_t", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype_name,far", [("float32", 1e20), ("float64", 2e154)])
def test_every_backend_forms_the_quadratic_form_without_overflowing_first(backend, dtype_name, far, kind,
                                                                          per_example_t):
    """VE at t = 1 (every C_k about 2500 I) at x = ``far``: z_d^2 overflows the dtype, z_d (z_d / c) does not.
    The CUDA kernel formed z_d z_d / c (log p = -inf, the score NaN) where the others are finite."""
    gm = make_mixture(kind, 3, 3, seed=4)
    x_host = np.array([[far, far, far], [far, -far, 0.5 * far], [0.1, 0.2, 0.3]], dtype=dtype_name)
    process, t = VESDE(), (np.ones(3) if per_example_t else 1.0)
    want_logp, want_score = oracle(gm, x_host.astype(np.float64), process, np.broadcast_to(t, (3,)))
    assert np.all(np.isfinite(want_logp)) and np.all(np.isfinite(want_score))
    x = on_backend(backend, x_host)
    check(to_host(gm.score(x, process, t, backend=backend)), want_score, dtype_name, "score")
    check(to_host(gm.log_prob(x, process, t, backend=backend)), want_logp, dtype_name, "log_prob")


@pytest.mark.parametrize("per_example_t", [False, True])
def test_every_backend_drops_a_logit_of_minus_infinity(backend, per_example_t):
    """float64, means 0 and 1e5 at variance 1e-300: at x = (1e5, 0) the first component's q_k (1e310) overflows,
    so its logit is -inf and it must add exactly 0 (the per-particle-t Numba kernel's online log-sum-exp took
    it as its first maximum, exp(-inf + inf), and returned NaN). At x = (5e5, 0) every q_k overflows and log p
    underflows to -inf (the reference formed exp(-inf + inf) there too); the score at that point, -4e305 / 1e-5,
    is not checked. The time is t = 0 of the VP process (gamma = 1, sigma^2 = 0), per particle or not."""
    gm = GaussianMixture(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1e5, 0.0]]), np.array([1e-300, 1e-300]))
    x_host = np.array([[0.0, 0.0], [1e5, 0.0], [5e5, 0.0]])
    x = on_backend(backend, x_host)
    process, t = (VPSDE(), np.zeros(3)) if per_example_t else (None, None)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the reference does overflow
        score, logp = to_host(gm.score(x, process, t, backend=backend)), to_host(gm.log_prob(x, process, t, backend=backend))
    np.testing.assert_array_equal(score[:2], np.zeros((2, 2)))
    want = math.log(0.5) - math.log(2 * math.pi * 1e-300)  # either component at its mean (D = 2)
    np.testing.assert_allclose(logp, [want, want, -np.inf], rtol=1e-14)


def test_gemm_path_hands_over_operands_that_overflow(numba_twin):
    """At D = 16 the narrow component's C^{-1} gamma mu_k (1e30 * 1e9) overflows float32 in the GEMM operands,
    and the products formed 0 * inf (NaN) at points near the unit component, where the score is -x: such a
    call runs on the lane kernels."""
    means = np.zeros((2, 16))
    means[1] = 1e9
    gm = GaussianMixture([0.5, 0.5], means, np.array([1.0, 1e-30]))  # the unit component at 0, the narrow at 1e9
    assert numba_twin.choose_path(numba_twin.mixture_arrays(gm)[4], np.dtype(np.float32), 2, 16, False) == "gemm"
    x = np.full((3, 16), 3.0, dtype=np.float32)
    x[1] = -2.0
    with np.errstate(over="ignore"):
        want_logp, want_score = oracle(gm, x.astype(np.float64), None, None)
    np.testing.assert_allclose(gm.score(x, backend="numba"), want_score, rtol=1e-6)
    check(gm.log_prob(x, backend="numba"), want_logp, "float32", "log_prob")


def test_two_dimensional_lane_block_drops_a_weight_whose_field_overflows(numba_twin):
    """The block score of the fused sampler at D = 2, diagonal covariances (its own loop, _score_block_2d; the
    mixture twin takes the one-pass kernel there) on the case above: it too raised the weight to its floor."""
    gm = narrow_and_far("diagonal", 2)
    x = np.array([[1e9, 1e9], [1e9 + 64, 1e9 + 64]], dtype=np.float32)
    log_w, mu, lam, U, _ = numba_twin.mixture_arrays(gm)
    means, inv_c, log_norm, _, _, _ = numba_twin._lane_operands(log_w, mu, lam, 1.0, 0.0, numba_twin.SHIFT_BITS[0],
                                                                x[:0])
    out, logit, q, ya, quad, m, tot, acc = numba_twin._block_scratch(x, 2, 2, 2)
    with np.errstate(over="ignore"):  # run as plain Python (NUMBA_DISABLE_JIT), the field's overflow warns
        numba_twin._score_block(np.ascontiguousarray(x.T), 0, means, inv_c, log_norm, U.astype(np.float32), False,
                                logit, q, ya, quad, m, tot, acc, out)
    np.testing.assert_array_equal(out.T, [[0.0, 0.0], [-64.0, -64.0]])


@pytest.mark.parametrize("D", [1, 2, 4])
def test_one_pass_kernel_log_prob_to_float64_precision(numba_twin, D):
    """log p = max_k log_norm_k + log(t 2**-865): the power-of-two scaling is exact, so log p near 0 keeps
    float64's precision (a shift of about 600 added back, as first written, left 1e-13 absolute error)."""
    gm = make_mixture("diagonal", 3, D, seed=3)
    x = gm.means[0] + 0.1 * np.random.default_rng(4).standard_normal((2000, D))
    want_logp, _ = oracle(gm, x, None, None)
    got = numba_twin._evaluate(gm, x, None, None, False, path="lanes")
    assert np.max(np.abs(got - want_logp)) <= 1e-14 * max(1.0, np.max(np.abs(want_logp)))


def test_path_choice(numba_twin):
    choose = numba_twin.choose_path
    assert choose(0, np.float32, 32, 16, True) == "pointwise"
    assert choose(0, np.float32, 8, 2, False) == "lanes"
    assert choose(1, np.float32, 32, 16, False) == "gemm"
    assert choose(2, np.float32, 32, 16, False) == "lanes"  # full covariances: no GEMM form
    assert choose(0, np.float64, 4, 4, False) == "lanes"  # K * D below GEMM_MIN_KD
    assert choose(0, np.float32, 1000, 2, False) == "lanes"  # D <= 4 has its own one-pass lane loop
    assert choose(1, np.float32, 128, 4, False) == "lanes" and choose(1, np.float32, 128, 5, False) == "gemm"
    assert choose(0, np.float64, 1, 40_000, False) == "lanes"  # 8 points of one row would be too big a GEMM
    with pytest.raises(ValueError, match="path"):
        numba_twin._evaluate(make_mixture("full", 3, 2), np.zeros((4, 2)), None, None, True, path="gemm")
    assert numba_twin.gemm_lanes(32, 16) == 128 and numba_twin.gemm_lanes(128, 64) == 32
    assert numba_twin.gemm_lanes(40_000, 4) == 8 and numba_twin.gemm_lanes(1, 40_000) == 0
    wide = GaussianMixture(np.ones(1), np.zeros((1, 40_000)), np.ones(1))
    x = np.full((2, 40_000), 0.5, dtype=np.float32)  # float32: quick as plain Python too
    with pytest.raises(ValueError, match="GEMM_BLOCK_WORK"):  # forced where one BLAS row would be too big
        numba_twin._evaluate(wide, x, None, None, True, path="gemm", products="blas")
    # the FMA products call no BLAS: any D
    np.testing.assert_allclose(numba_twin._evaluate(wide, x, None, None, True, path="gemm", products="fma"), -x,
                               rtol=1e-6)


def test_backends_agree_at_float64_precision():
    """The numba twin and the reference agree far tighter than the oracle test asks (same formulas)."""
    pytest.importorskip("numba")
    gm = make_mixture("full", K=8, D=5)
    x = np.random.default_rng(3).standard_normal((200, 5)) * 2
    for t in (0.3, np.linspace(0.01, 1.0, 200)):
        a, b = gm.score(x, PROCESS, t, backend="numpy"), gm.score(x, PROCESS, t, backend="numba")
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
        np.testing.assert_allclose(gm.log_prob(x, PROCESS, t, backend="numba"), gm.log_prob(x, PROCESS, t, backend="numpy"), rtol=1e-13)


def test_score_point_function():
    """mixture_score_point, the per-point function fused samplers call, on its own."""
    mn = pytest.importorskip("refdiff.kernels.mixture_numba", exc_type=ImportError)
    for kind in KINDS:
        gm = make_mixture(kind, K=3, D=4)
        log_w, mu, lam, U, code = mn.mixture_arrays(gm)
        x = np.random.default_rng(5).standard_normal((3, 4))
        want_logp, want_score = oracle(gm, x, PROCESS, 0.4)
        g, v = float(PROCESS.mean_coef(0.4)), float(PROCESS.variance(0.4))
        out, work = np.empty(4), np.empty(4)
        for n in range(3):
            logp = mn.mixture_score_point(x[n], g, v, log_w, mu, lam, U, code, out, work)
            np.testing.assert_allclose(logp, want_logp[n], rtol=1e-12)
            np.testing.assert_allclose(out, want_score[n], rtol=1e-10, atol=1e-12)


def test_empty_input(backend):
    """No points, with no process, one t, and a per-example t of no rows (the CUDA launcher once took the least
    variance over that empty t and raised)."""
    gm = make_mixture("diagonal", K=3, D=2)
    for process, t in ((None, None), (PROCESS, 0.5), (PROCESS, np.zeros(0))):
        score = gm.score(on_backend(backend, np.zeros((0, 2))), process, t, backend=backend)
        assert to_host(score).shape == (0, 2)
        logp = gm.log_prob(on_backend(backend, np.zeros((0, 2), np.float32)), process, t, backend=backend)
        assert to_host(logp).shape == (0,) and logp.dtype == np.float32


def test_array_api_strict_runs_the_reference():
    xps = pytest.importorskip("array_api_strict")
    gm = make_mixture("full", K=3, D=2)
    x = np.random.default_rng(6).standard_normal((5, 2))
    for backend in ("auto", "numpy"):
        got = gm.score(xps.asarray(x), PROCESS, 0.5, backend=backend)
        np.testing.assert_allclose(np.asarray(got), oracle(gm, x, PROCESS, 0.5)[1], rtol=1e-12, atol=1e-13)


# --- dispatch ---------------------------------------------------------------


def test_auto_dispatch(monkeypatch):
    x = np.zeros((10, 2))
    assert analytic._pick_backend("auto", x, 10) == "numpy"
    has_numba = importlib.util.find_spec("numba") is not None
    assert analytic._pick_backend("auto", x, analytic.NUMBA_MIN_WORK) == ("numba" if has_numba else "numpy")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert analytic._pick_backend("auto", x, 10**9) == "numpy"


def test_bad_backend_raises():
    gm = make_mixture("isotropic", K=2, D=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        gm.score(np.zeros((1, 2)), backend="jax")
    with pytest.raises(TypeError, match="CuPy arrays"):
        gm.score(np.zeros((1, 2)), backend="cupy")


@pytest.mark.parametrize("backend,extra", [("numba", "refdiff[fast]"), ("cupy", "refdiff[gpu-cuda12]")])
def test_missing_package_names_the_extra(monkeypatch, backend, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    try:  # imported first, as after an earlier call (mixture_cupy imports without cupy)
        importlib.import_module("refdiff.kernels.mixture_" + backend)
    except ImportError:  # numba is not installed
        pass
    monkeypatch.delitem(sys.modules, backend, raising=False)  # the package itself: never imported
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        analytic._kernel_module(backend)
