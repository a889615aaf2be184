"""kernels/mlp_numba.py against its reference twins in refdiff/nn/fused.py, and the MLP step on both backends."""

import importlib.util

import numpy as np
import pytest

from refdiff.nn import MLP, Adam, check_network, clip_grad_norm
from refdiff.nn import fused
from refdiff.nn.layers import sinusoidal_frequencies
from refdiff.train import regression_loss
from jit_mode import JIT_OFF

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
# as plain Python the float64 sigmoid is 13 FMAs of exact integer arithmetic a value
LARGE_FLOAT64_JIT_OFF = "as plain Python the smaller float64 sizes take the same lines (NUMBA_DISABLE_JIT)"
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason='numba is not installed (pip install "refdiff[fast]")')
BACKENDS = ["numpy", pytest.param("numba", marks=needs_numba)]
DTYPES = [np.float32, np.float64]
# db is summed in another order by the twin: a few ulp of the sum's magnitude times sqrt(N)
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def ops_of(backend):
    if backend == "numpy":
        return fused
    from refdiff.kernels import mlp_numba

    return mlp_numba


@pytest.fixture(params=["numpy", pytest.param("numba", marks=needs_numba),
                        pytest.param("numba-parallel", marks=needs_numba)])
def ops(request, force_parallel):
    """The reference, the Numba twins as they choose (one thread at these sizes) and on Numba's threads."""
    module = ops_of(request.param.split("-")[0])
    return force_parallel(module) if request.param == "numba-parallel" else module


def _inputs(n, w, dtype, seed=0):
    gen = np.random.default_rng([seed, n, w])
    draw = lambda *shape: (3 * gen.standard_normal(shape)).astype(dtype)  # noqa: E731
    return draw(n, w), draw(w), draw(n, w), draw(n, w), draw(n, w)  # a, b, residual, dh, dh_add


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [1, 5, 128])
@pytest.mark.parametrize("n", [0, 1, 7, 257, 1031])
def test_bias_silu_twin_matches_reference(ops, dtype, w, n):
    """n = 0: an empty batch adds exactly 0 to the bias gradient (the twin read a first block it does not have)."""
    if JIT_OFF and ops is not fused and dtype == np.float64 and n * w > 10_000:
        pytest.skip(LARGE_FLOAT64_JIT_OFF)
    a, b, r, dh, dh_add = _inputs(n, w, dtype)
    if n:
        a[0, 0] = 200.0  # saturated sigmoid: tanh(100) = 1
        a[-1, -1] = -200.0
        # past the twin exp's clamp (-87, -708): sigma was e^-87, and z sigma grew again with |z| (-5.6 here)
        a[-1, 0] = np.finfo(dtype).min
    for bias, residual in [(b, r), (None, None)]:
        a_ref, a_twin = a.copy(), a.copy()
        h_ref, s_ref = fused.bias_silu_forward(a_ref, bias, residual)
        h, s = ops.bias_silu_forward(a_twin, bias, residual)
        for got in (a_twin, s, h):
            assert got.dtype == dtype and got.shape == (n, w)
        np.testing.assert_array_equal(a_twin, a_ref)  # a + b: the same operation in the same dtype
        # sigma: the reference's 1/2 + tanh(a/2)/2 is exact to about an ulp of 1/2 (absolute), the twin's to
        # a few ulp of sigma (relative); h = a sigma (+ r) carries that difference times |a|
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(s, s_ref, rtol=4 * eps, atol=eps)
        bound = 4 * eps * (np.abs(a_ref) + np.abs(h_ref) + (0 if residual is None else np.abs(residual)))
        assert np.all(np.abs(h - h_ref) <= bound)
        if n:  # far in the tail both sigmas are 0 and h is the residual alone (that bound scales with |a|)
            assert s[-1, 0] == s_ref[-1, 0] == 0 and h[-1, 0] == h_ref[-1, 0]
    for add in [None, dh_add]:
        db_ref, db = np.full(w, 0.5, dtype), np.full(w, 0.5, dtype)
        dh_ref, dh_twin = dh.copy(), dh.copy()
        da_ref = fused.bias_silu_backward(dh_ref, a_ref, s_ref, db_ref, add)
        da = ops.bias_silu_backward(dh_twin, a_ref, s_ref, db, add)
        assert da.dtype == dtype and db.dtype == dtype
        np.testing.assert_array_equal(da, da_ref)
        np.testing.assert_array_equal(dh_twin, dh_ref)
        scale = np.abs(da_ref).sum(axis=0) + 0.5
        np.testing.assert_array_less(np.abs(db - db_ref), RTOL[dtype] * scale)
        assert ops.bias_silu_backward(dh.copy(), a_ref, s_ref).shape == (n, w)  # db=None


def test_fused_reference_is_the_layer_formula():
    """h = r + a sigma(a) and the SiLU derivative, in float64 against scipy-free closed forms."""
    a, b, r, dh, _ = _inputs(9, 4, np.float64)
    a0 = a + b
    h, s = fused.bias_silu_forward(a.copy(), b, r)
    sig = 1.0 / (1.0 + np.exp(-a0))
    np.testing.assert_allclose(s, sig, rtol=1e-14, atol=1e-15)  # 1/2 + tanh/2 cancels where sigma ~ 0
    np.testing.assert_allclose(h, r + a0 * sig, rtol=1e-13, atol=1e-13)
    db = np.zeros(4)
    da = fused.bias_silu_backward(dh, a0, s, db)
    np.testing.assert_allclose(da, dh * sig * (1 + a0 * (1 - sig)), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, da.sum(axis=0), rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 1031, 20011])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_twin_matches_reference(ops, dtype, size, weight_decay):
    gen = np.random.default_rng(size)
    theta = gen.standard_normal(size).astype(dtype)
    m = (0.1 * gen.standard_normal(size)).astype(dtype)
    v = (0.1 * gen.standard_normal(size) ** 2).astype(dtype)
    state_ref, state = [x.copy() for x in (theta, m, v)], [x.copy() for x in (theta, m, v)]
    for step in (1, 2, 3):
        g = gen.standard_normal(size).astype(dtype)
        g[0] = 0.0
        fused.adam_update(*state_ref[:1], g, *state_ref[1:], 1e-3, 0.9, 0.999, 1e-8, weight_decay, step)
        ops.adam_update(state[0], g, state[1], state[2], 1e-3, 0.9, 0.999, 1e-8, weight_decay, step)
        for got, want in zip(state, state_ref):
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [2, 6, 32])
@pytest.mark.parametrize("n", [0, 1, 7, 1031])
def test_sinusoidal_embedding_twin_matches_reference(ops, dtype, dim, n):
    """The same phases: float64 cosines and sines within 2 ulp of NumPy's (each within 1 of the truth). float32:
    the reference within 2e-7 (absolute) of the float64 values, as it rounds the reduced phase to float32 first;
    the twin within an ulp of the rounded float64 values, relative, and so within 2.5e-7 of the reference."""
    gen = np.random.default_rng([n, dim])
    u = np.concatenate([gen.integers(1, 1001, n // 2).astype(np.float64), gen.uniform(-3.0, 1000.0, n - n // 2)])
    got = ops.sinusoidal_embedding(u, dim, dtype=dtype)
    want = fused.sinusoidal_embedding(u, dim, dtype=dtype)
    assert got.dtype == dtype and got.shape == (n, dim)
    phase = np.multiply.outer(u, sinusoidal_frequencies(dim))
    exact = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)  # float64, each within 1 ulp
    if dtype == np.float64:
        assert np.all(np.abs(got - exact) <= 2 * np.spacing(np.maximum(np.abs(exact), 1e-300)))
    elif ops is fused:
        np.testing.assert_allclose(got, exact, rtol=0, atol=2e-7)
    else:
        rounded = exact.astype(np.float32)
        assert np.all(np.abs(got - rounded) <= np.spacing(np.abs(rounded)))
        np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)


@needs_numba
def test_sinusoidal_embedding_twin_leaves_what_it_cannot_take_to_the_reference():
    """Phases of 2**20 and more (beyond the twin's sine and cosine), NaN, other dtypes: the reference's output;
    a bad dim or shape: the reference's error."""
    from refdiff.kernels import mlp_numba

    for u, dtype in [(np.array([1.0, 2.0**21]), np.float32), (np.array([3.0, np.nan]), np.float64),
                     (np.array([5.0, 7.0]), np.float16)]:
        got = mlp_numba.sinusoidal_embedding(u, 8, dtype=dtype)
        np.testing.assert_array_equal(got, fused.sinusoidal_embedding(u, 8, dtype=dtype))
        assert got.dtype == dtype
    # a max_period below 1: the frequencies grow with k, and the last one, not the first, sets the largest phase
    # (the twin tested omega_0 and took phases of 3e10 at u = 1e6, 6.7e-7 off)
    u = np.array([1e6, 3.0])
    np.testing.assert_array_equal(mlp_numba.sinusoidal_embedding(u, 8, 1e-6), fused.sinusoidal_embedding(u, 8, 1e-6))
    with pytest.raises(ValueError, match="dim must be an even int"):
        mlp_numba.sinusoidal_embedding(np.ones(3), 5)
    with pytest.raises(ValueError, match="u must have shape"):
        mlp_numba.sinusoidal_embedding(np.ones((3, 2)), 4)


def test_fused_numpy_mlp_is_the_layer_path_bit_for_bit():
    """The default backend computes exactly what Linear + SiLU layers compute."""
    for n_classes in (None, 3):
        net = MLP(data_shape=3, width=16, depth=3, emb_dim=8, n_classes=n_classes)
        layers = MLP(data_shape=3, width=16, depth=3, emb_dim=8, n_classes=n_classes)
        layers.activation = "silu (layer path)"  # any name but "silu" takes the Linear + SiLU layer path
        p = net.init(0, np.float32)
        gen = np.random.default_rng(1)
        x, t = gen.standard_normal((11, 3)).astype(np.float32), gen.integers(1, 1000, 11)
        y = None if n_classes is None else gen.integers(0, 4, 11)
        results = []
        for model in (net, layers):
            out, cache = model.forward(p, x, t, y)
            g = p.zeros_like()
            dx = model.backward(p, g, cache, np.cos(out), need_dx=True)
            results.append((out, g.flat, dx))
        for got, want in zip(*results):
            np.testing.assert_array_equal(got, want)


def _train(backend, dtype, n_classes=None, steps=4, n=257, width=32):
    net = MLP(data_shape=2, width=width, depth=3, emb_dim=8, n_classes=n_classes, backend=backend)
    p = net.init(0, dtype)
    g = p.zeros_like()
    opt = Adam(p, lr=1e-2, weight_decay=0.01, backend=backend)
    gen = np.random.default_rng(2)
    x, t, target = gen.standard_normal((n, 2)), gen.integers(1, 1000, n), gen.standard_normal((n, 2))
    y = None if n_classes is None else gen.integers(0, n_classes + 1, n)
    losses = []
    for _ in range(steps):
        out, cache = net.forward(p, x.astype(dtype), t, y)
        loss, dout = regression_loss(out, target.astype(dtype))
        g.flat.fill(0)
        net.backward(p, g, cache, dout)
        clip_grad_norm(g, 1.0)
        opt.step(p, g)
        losses.append(loss)
    return np.array(losses), p.flat


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [None, 3])
def test_mlp_training_step_numba_matches_numpy(dtype, n_classes):
    losses_ref, p_ref = _train("numpy", dtype, n_classes)
    losses, p = _train("numba", dtype, n_classes)
    # the bias gradients (and, with the tiles, the products) are summed in another order: rounding-level differences
    tol = {np.float32: 1e-4, np.float64: 1e-11}[dtype]
    np.testing.assert_allclose(losses, losses_ref, rtol=tol)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=tol * np.abs(p_ref).max())


@needs_numba
def test_mlp_gradcheck_numba_float64():
    net = MLP(data_shape=2, width=8, depth=3, emb_dim=4, n_classes=2, backend="numba")
    gen = np.random.default_rng(3)
    res = check_network(net, gen.standard_normal((5, 2)), gen.integers(1, 100, 5), y=np.array([0, 1, 2, 0, 1]))
    assert res.passed(1e-6), res


def test_backend_is_not_part_of_the_architecture():
    a, b = MLP(width=8, backend="auto"), MLP(width=8)
    assert a.config() == b.config() and a.backend == "auto" and b.backend == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        MLP(width=8, backend="cupy")
    with pytest.raises(ValueError, match="backend must be one of"):
        Adam(b.init(0), backend="torch")
    assert "backend" not in Adam(b.init(0), backend="auto").hyper()


@needs_numba
def test_numba_backend_needs_silu():
    with pytest.raises(ValueError, match="silu"):
        MLP(width=8, activation="gelu", backend="numba")
    MLP(width=8, activation="gelu", backend="auto")  # auto falls back to NumPy


def test_missing_numba_names_the_extra(monkeypatch):
    monkeypatch.setattr(fused, "numba_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "refdiff\[fast\]"'):
        MLP(width=8, backend="numba")
    with pytest.raises(ImportError, match=r'refdiff\[fast\]'):
        Adam(MLP(width=8).init(0), backend="numba")
    assert fused.elementwise("auto", 10**9) is fused  # auto falls back quietly


@needs_numba
def test_auto_picks_by_size(monkeypatch):
    from refdiff.kernels import mlp_numba

    assert fused.elementwise("auto", fused.AUTO_MIN_SIZE - 1) is fused
    assert fused.elementwise("auto", fused.AUTO_MIN_SIZE) is mlp_numba
    assert fused.elementwise("numba", 1) is mlp_numba
    assert fused.elementwise("numpy", 10**9) is fused
    monkeypatch.setattr(mlp_numba, "numba_yields_to_blas", lambda: False)  # spinning workers beside BLAS: one thread
    monkeypatch.setattr(mlp_numba, "TILES", False)
    assert fused.elementwise("auto", 10**9) is mlp_numba and not mlp_numba.runs_parallel(10**9)


@needs_numba
def test_threads_follow_the_workers_and_who_forms_the_products(monkeypatch):
    """Sleeping workers: products by BLAS, twins parallel from PARALLEL_MIN. Spinning workers: products by tiles
    on them and twins parallel from SPIN_PARALLEL_MIN where the tiles suit the CPU; else everything on one
    thread beside BLAS."""
    from refdiff.kernels import mlp_numba as m

    for yields, tiles, layer in [(True, True, "workqueue"), (True, False, "omp"), (False, True, "omp"),
                                 (False, False, "omp"), (False, True, "tbb")]:
        monkeypatch.setattr(m, "numba_yields_to_blas", lambda: yields)
        monkeypatch.setattr(m, "numba_threading_layer", lambda: layer)
        monkeypatch.setattr(m, "TILES", tiles)
        assert m.products_by_tiles() == (tiles and not yields and layer == "omp")
        for beside in (False, True):
            if yields:
                assert m.runs_parallel(m.PARALLEL_MIN, beside) and not m.runs_parallel(m.PARALLEL_MIN - 1, beside)
            elif m.products_by_tiles() and beside:  # the bias + SiLU twins between the tiles
                assert m.runs_parallel(m.SPIN_PARALLEL_MIN, beside)
                assert not m.runs_parallel(m.SPIN_PARALLEL_MIN - 1, beside)
            else:  # Adam, or twins beside BLAS's threads
                assert not m.runs_parallel(10**9, beside)
    assert m.SPIN_PARALLEL_MIN < m.PARALLEL_MIN


@needs_numba
def test_block_rows_reach_every_thread_and_keep_the_bits():
    from refdiff.kernels import _numba_gemm as gemm

    assert gemm.block_rows(4096, 512, 4, 2) == gemm.BLOCK_ROWS  # 64 (AVX-512) x 4 blocks
    assert gemm.block_rows(128, 128, 4, 2) == gemm.BLOCK_ROWS and gemm.block_rows(128, 128, 4, 16) == gemm.TILE_ROWS
    assert gemm.block_rows(128, 512, 4, 8) == gemm.BLOCK_ROWS and gemm.block_rows(8, 16, 8, 64) == gemm.TILE_ROWS
    gen = np.random.default_rng(6)
    A, B = gen.standard_normal((70, 33)).astype(np.float32), gen.standard_normal((33, 40)).astype(np.float32)
    runs = []
    for rows in (8, 16, 64):
        C = np.full((70, 40), np.nan, np.float32)
        gemm.blocked_matmul(A, B, C, True, rows)
        runs.append(C)
    np.testing.assert_array_equal(runs[0], runs[2])
    np.testing.assert_array_equal(runs[1], runs[2])


def _spy(monkeypatch, module, names):
    """Count the calls of ``module``'s functions ``names`` (still calling them)."""
    calls = dict.fromkeys(names, 0)

    def wrap(name, f):
        def counted(*args):
            calls[name] += 1
            return f(*args)

        return counted

    for name in names:
        monkeypatch.setattr(module, name, wrap(name, getattr(module, name)))
    return calls


PRODUCT_KERNELS = ("blocked_matmul", "rows_times_narrow", "columns_times_narrow")


@pytest.fixture
def by_tiles(monkeypatch):
    """``(mlp_numba, calls)``: the twins with their products by tiles (spinning OpenMP workers), each product
    kernel's calls counted; skipped where Numba does not compile for 512-bit vectors (or runs as Python)."""
    m = pytest.importorskip("refdiff.kernels.mlp_numba", exc_type=ImportError)
    if not m.TILES:
        pytest.skip("Numba does not compile for 512-bit vectors here (or runs as Python): the products are NumPy's")
    monkeypatch.setattr(m, "numba_yields_to_blas", lambda: False)
    monkeypatch.setattr(m, "numba_threading_layer", lambda: "omp")
    return m, _spy(monkeypatch, m, PRODUCT_KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_twin_is_the_product_on_each_of_its_paths(dtype, monkeypatch, by_tiles):
    m, calls = by_tiles
    gen = np.random.default_rng(4)
    lanes = 64 // np.dtype(dtype).itemsize  # columns of one vector: from there on the tiles, below it narrow
    h, w, dy = (gen.standard_normal(shape).astype(dtype) for shape in [(131, 40), (40, 48), (131, 48)])
    w_out, dout = gen.standard_normal((40, 2)).astype(dtype), gen.standard_normal((131, 2)).astype(dtype)
    cases = [  # the MLP step's products, then operands the kernels take only after a copy
        (h, w, "blocked_matmul"), (h.T, dy, "blocked_matmul"), (dy, w.T, "blocked_matmul"),
        (h, w_out, "rows_times_narrow"), (h.T, dout, "columns_times_narrow"), (dout, w_out.T, "blocked_matmul"),
        (h[:, ::2], w[::2, :2], "rows_times_narrow"), (h[::-1], w[::-1], "blocked_matmul"),
        (h, w[:, :lanes], "blocked_matmul"), (h, w[:, : lanes - 1], "rows_times_narrow"),
        (h.T, dy[:, : lanes - 1], "columns_times_narrow"),
    ]
    for a, b, kernel in cases:
        before = dict(calls)
        got = m.matmul(a, b)
        assert got.dtype == dtype and got.shape == (a.shape[0], b.shape[1])
        np.testing.assert_allclose(got, a @ b, rtol=RTOL[dtype], atol=RTOL[dtype] * np.sqrt(a.shape[1]))
        assert calls[kernel] == before[kernel] + 1 and sum(calls.values()) == sum(before.values()) + 1, kernel
    for a, b in [(h, w.astype(np.float32 if dtype == np.float64 else np.float64)), (h[None], w), (h, w[:7])]:
        try:  # mixed dtypes, 3-D, mismatched shapes: NumPy's product, or NumPy's error
            want = a @ b
        except ValueError:
            with pytest.raises(ValueError):
                m.matmul(a, b)
        else:
            np.testing.assert_array_equal(m.matmul(a, b), want)
    monkeypatch.setattr(m, "numba_yields_to_blas", lambda: True)  # sleeping workers: BLAS
    np.testing.assert_array_equal(m.matmul(h, w), h @ w)
    assert sum(calls.values()) == sum(1 for _ in cases)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_step_by_tiles_matches_numpy(dtype, by_tiles):
    """The numba backend with every product by tiles: each kernel reached, the step the reference's to rounding."""
    _, calls = by_tiles
    losses_ref, p_ref = _train("numpy", dtype, 3, steps=2, n=300, width=48)
    losses, p = _train("numba", dtype, 3, steps=2, n=300, width=48)
    # a step (depth 3): forward in, h1, h2 by tiles and out (2 columns) narrow; backward dW_out narrow, dh by
    # tiles, dW and dx of h2 and h1 and dW_in by tiles (no dx of the input)
    assert calls == {"blocked_matmul": 2 * 9, "rows_times_narrow": 2, "columns_times_narrow": 2}, calls
    tol = {np.float32: 1e-4, np.float64: 1e-11}[dtype]
    np.testing.assert_allclose(losses, losses_ref, rtol=tol)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=tol * np.abs(p_ref).max())


@needs_numba
@pytest.mark.parametrize("threads,layer,wait,tbb,expected", [
    (1, "default", "", False, True),  # no workers to spin
    (2, "workqueue", "", False, True),
    (2, "omp", "PASSIVE", False, True),
    (2, "omp", "passive ", False, True),
    (2, "omp", "", False, False),  # libgomp spins by default
    (2, "omp", "ACTIVE", False, False),
    (2, "default", "passive", False, True),  # the default resolves to OpenMP without TBB
    (2, "default", "", False, False),
    (2, "default", "passive", True, False),  # ... and to TBB with it (not measured: not trusted)
    (2, "tbb", "", False, False),
])
def test_numba_yields_to_blas_reads_the_layer_and_wait_policy(monkeypatch, threads, layer, wait, tbb, expected):
    import importlib.util

    import numba

    def no_layer_yet():
        raise ValueError("no threading layer loaded")

    monkeypatch.setattr(numba, "threading_layer", no_layer_yet)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", threads)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", layer)
    monkeypatch.setenv("OMP_WAIT_POLICY", wait)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tbb" and tbb else
                        (None if name == "tbb" else real_find_spec(name, *a)))
    assert fused.numba_yields_to_blas() is expected
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")  # once loaded, the loaded layer decides
    assert fused.numba_yields_to_blas() is True


@needs_numba
def test_unet_twins_run_in_parallel_only_when_large_and_the_workers_sleep(monkeypatch):
    """The U-Net's twins run between BLAS products (the MLP's rule, which also knows the tiles, is tested above)."""
    from refdiff.kernels import conv_numba as module

    monkeypatch.setattr(module, "numba_yields_to_blas", lambda: True)
    assert not module.runs_parallel(module.PARALLEL_MIN - 1) and module.runs_parallel(module.PARALLEL_MIN)
    monkeypatch.setattr(module, "numba_yields_to_blas", lambda: False)
    assert not module.runs_parallel(10 * module.PARALLEL_MIN)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_with_a_beta_of_zero(ops, dtype):
    """beta2 = 0 makes v = g^2 exactly, beta1 = 0 m = g: with the moments formed as m + (1 - b)(g - m), a
    gradient far smaller than the last one left g^2 - v = -v and v = 0 beside m != 0, a step of lr m / eps
    (991.8 against torch's 0.1 with betas (0, 0), float32)."""
    for betas in ((0.0, 0.0), (0.9, 0.0)):
        theta, m, v = (np.zeros(1, dtype) for _ in range(3))
        for step, g in enumerate((100.0, 1e-4), start=1):
            before = theta.copy()
            ops.adam_update(theta, np.array([g], dtype), m, v, 0.1, *betas, 1e-8, 0.0, step)
        np.testing.assert_allclose(v, [1e-8], rtol=1e-6)  # g^2
        if betas[0] == 0.0:
            np.testing.assert_allclose(m, [1e-4], rtol=1e-6)
            np.testing.assert_allclose(before - theta, [0.1], rtol=1e-4)  # lr g / |g|
        else:  # m = 0.9 * 10 + 1e-5, v = 1e-8: lr / 0.19 * m / (1e-4 + 1e-8), as torch's
            np.testing.assert_allclose(before - theta, 0.1 / 0.19 * m / (1e-4 + 1e-8), rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_gradient_is_one_for_large_inputs(ops, dtype):
    """d(a sigma(a))/da -> 1: y + s(1 - y) cancelled to 0 once s rounds to 1 and y = a is large (a >= 2**24 in
    float32, 2**53 in float64); s + y(1 - s) does not."""
    a = np.array([[1e7, 2e7, 1e20, -1e20, 0.0, 3.0]], dtype)
    _, s = fused.bias_silu_forward(a.copy())
    da = ops.bias_silu_backward(np.ones_like(a), a, s)
    sig3 = 1.0 / (1.0 + np.exp(-3.0))
    np.testing.assert_allclose(da[0], [1.0, 1.0, 1.0, 0.0, 0.5, sig3 * (1 + 3 * (1 - sig3))], rtol=1e-6, atol=1e-30)
