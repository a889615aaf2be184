"""kernels/conv_numba.py against its reference twins in refdiff/nn/conv.py, and the U-Net on both backends."""

import importlib.util

import numpy as np
import pytest

from refdiff.nn import conv
from refdiff.nn.conv import GroupNorm, GroupNormSiLU
from refdiff.nn.gradcheck import check_layer
from refdiff.nn.layers import SiLU
from refdiff.nn.params import Layout, Params
from refdiff.nn.unet import UNet
from jit_mode import JIT_OFF

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason='numba is not installed (pip install "refdiff[fast]")')
BACKENDS = ["numpy", pytest.param("numba", marks=needs_numba)]
# the twins as they choose (one thread at the tests' sizes) and forced onto Numba's threads
TWINS = BACKENDS + [pytest.param("numba-parallel", marks=needs_numba)]
DTYPES = [np.float32, np.float64]
# the twin sums in another order: a few ulp of each sum's magnitude
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def ops_of(backend, force_parallel=None):
    """The reference or the twins (``"numba-parallel"``: on Numba's threads, through ``force_parallel``)."""
    if backend == "numpy":
        return conv
    from refdiff.kernels import conv_numba

    return force_parallel(conv_numba) if backend == "numba-parallel" else conv_numba


def _close(got, want, dtype, scale=None):
    """|got - want| <= RTOL * scale elementwise (scale defaults to max |want| + 1)."""
    scale = np.max(np.abs(want)) + 1.0 if scale is None else scale
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), RTOL[dtype] * scale)


def _inputs(n, s, c, dtype, seed=0):
    gen = np.random.default_rng([seed, n, s, c])
    x = (2 * gen.standard_normal((n, s, c)) + 0.7).astype(dtype)
    gamma = (1 + 0.5 * gen.standard_normal(c)).astype(dtype)
    beta = gen.standard_normal(c).astype(dtype)
    dh = gen.standard_normal((n, s, c)).astype(dtype)
    return x, gamma, beta, dh


@pytest.mark.parametrize("backend", TWINS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,s,c,groups", [(1, 1, 2, 1), (3, 7, 6, 3), (2, 16, 12, 4), (5, 9, 96, 8), (17, 64, 5, 5), (4, 3, 30, 1)])
def test_group_norm_silu_twin_matches_reference(backend, dtype, n, s, c, groups, force_parallel):
    ops = ops_of(backend, force_parallel)
    x, gamma, beta, dh = _inputs(n, s, c, dtype)
    x[0, 0, 0] = 300.0  # a saturated sigmoid and a large group variance
    ref = conv.group_norm_silu_forward(x, gamma, beta, groups, 1e-5)
    got = ops.group_norm_silu_forward(x, gamma, beta, groups, 1e-5)
    for g_arr, w_arr in zip(got, ref):  # h, s, mu, rstd
        _close(g_arr, w_arr, dtype)
    for need_dx in (True, False):
        dgamma_ref, dbeta_ref = np.full(c, 0.5, dtype), np.full(c, -0.25, dtype)
        dgamma, dbeta = dgamma_ref.copy(), dbeta_ref.copy()
        dx_ref = conv.group_norm_silu_backward(dh, x, *ref, gamma, groups, dgamma_ref, dbeta_ref, need_dx=need_dx)
        dx = ops.group_norm_silu_backward(dh, x, *ref, gamma, groups, dgamma, dbeta, need_dx=need_dx)
        if need_dx:
            _close(dx, dx_ref, dtype)
        else:
            assert dx is None and dx_ref is None
        scale = n * s * (np.max(np.abs(dh)) + 1.0)
        _close(dgamma, dgamma_ref, dtype, scale)
        _close(dbeta, dbeta_ref, dtype, scale)
    # without parameter gradients
    dx = ops.group_norm_silu_backward(dh, x, *ref, gamma, groups)
    assert dx.shape == x.shape and dx.dtype == dtype


@pytest.mark.parametrize("backend", TWINS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_silu_empty_batch(backend, dtype, force_parallel):
    """N = 0: empty results, and the parameter gradients incremented by exactly 0 (the twin summed its per-image
    parts from a first one that an empty batch does not have, reading past the array; the reference's reshape
    to (0, G, -1) failed)."""
    ops = ops_of(backend, force_parallel)
    x, gamma, beta, dh = _inputs(0, 5, 6, dtype)
    out = ops.group_norm_silu_forward(x, gamma, beta, 3, 1e-5)
    assert [(a.shape, a.dtype) for a in out] == [((0, 5, 6), dtype), ((0, 5, 6), dtype), ((0, 6), dtype), ((0, 6), dtype)]
    dgamma, dbeta = np.full(6, 0.5, dtype), np.full(6, -0.25, dtype)
    dx = ops.group_norm_silu_backward(dh, x, *out, gamma, 3, dgamma, dbeta)
    assert dx.shape == (0, 5, 6) and dx.dtype == dtype
    np.testing.assert_array_equal(dgamma, np.full(6, 0.5, dtype))
    np.testing.assert_array_equal(dbeta, np.full(6, -0.25, dtype))


@pytest.mark.parametrize("backend", TWINS)
def test_group_norm_silu_twin_leaves_inputs_alone(backend, force_parallel):
    ops = ops_of(backend, force_parallel)
    x, gamma, beta, dh = _inputs(3, 5, 4, np.float32)
    before = [a.copy() for a in (x, gamma, beta, dh)]
    h, s, mu, rstd = ops.group_norm_silu_forward(x, gamma, beta, 2, 1e-5)
    cache = [a.copy() for a in (h, s, mu, rstd)]
    ops.group_norm_silu_backward(dh, x, h, s, mu, rstd, gamma, 2, np.zeros(4, np.float32), np.zeros(4, np.float32))
    for a, b in zip((x, gamma, beta, dh, h, s, mu, rstd), before + cache):
        np.testing.assert_array_equal(a, b)


def test_group_norm_silu_reference_is_group_norm_then_silu():
    """The fused reference is GroupNorm followed by SiLU, layer for layer (float64)."""
    gen = np.random.default_rng(4)
    gn, act = GroupNorm("gn", 3, 6, channels_last=True), SiLU()
    fused_layer = GroupNormSiLU("gn", 3, 6, channels_last=True)
    gn_layout = Layout(tuple(fused_layer.specs()))
    p = Params(gn_layout, gen.standard_normal(12))
    x = gen.standard_normal((4, 3, 5, 6))
    dy = gen.standard_normal(x.shape)
    z, c_gn = gn.forward(p, x)
    h, c_act = act.forward(p, z)
    g_ref = Params(gn_layout, np.zeros(12))
    dx_ref = gn.backward(p, g_ref, c_gn, act.backward(p, None, c_act, dy))
    h2, cache = fused_layer.forward(p, x)
    g = Params(gn_layout, np.zeros(12))
    dx = fused_layer.backward(p, g, cache, dy)
    np.testing.assert_allclose(h2, h, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.flat, g_ref.flat, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_group_norm_silu_gradcheck(backend, channels_last):
    if JIT_OFF and backend == "numba":  # some 750 forward passes of plain-Python float64 sigmoids
        pytest.skip("as plain Python the twin tests take the same lines, against the reference (NUMBA_DISABLE_JIT)")
    layer = GroupNormSiLU("gn", 2, 6, channels_last=channels_last, backend=backend)
    shape = (3, 4, 5, 6) if channels_last else (3, 6, 4, 5)
    x = 2.0 * np.random.default_rng(5).standard_normal(shape) + 0.5
    result = check_layer(layer, x, rng=6)
    assert result.passed(1e-6), result.errors
    assert set(result.errors) == {"gn.gamma", "gn.beta", "x"}


def test_backend_is_checked_and_not_in_config():
    with pytest.raises(ValueError, match="backend"):
        UNet(backend="cuda")
    net = UNet(backend="auto")
    assert net.backend == "auto" and "backend" not in net.config()
    assert all(b.backend == "auto" for b in [*net.down, net.mid, *net.up.values()])
    convs = [net.conv_in, net.conv_out] + [c for b in [*net.down, net.mid, *net.up.values()]
                                           for c in (b.conv1, b.conv2, b.skip) if c is not None]
    assert any(b.skip is not None for b in net.down) and all(c.backend == "auto" for c in convs)
    net.backend = "numpy"
    assert net.norm_out.backend == "numpy" and net.mid.norm2.backend == "numpy"
    assert all(c.backend == "numpy" for c in convs)
    with pytest.raises(ValueError, match="backend"):
        net.backend = "gpu"


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,groups", [(6, 3), (16, 4)])  # 16 and 32 channels: the forward products by tiles too
def test_unet_backends_agree(dtype, channels, groups, monkeypatch):
    monkeypatch.setattr(conv, "CHUNK_BYTES", 3000 * channels // 6)  # several images per patch chunk, a ragged last
    cfg = dict(image_shape=(2, 4, 4), channels=channels, channel_mult=(1, 2), emb_dim=8, groups=groups, n_classes=2)
    ref, twin = UNet(**cfg, backend="numpy"), UNet(**cfg, backend="numba")
    gen = np.random.default_rng(7)
    p = Params(ref.layout, (0.3 * gen.standard_normal(ref.n_params)).astype(dtype))
    x = gen.standard_normal((5, 2, 4, 4)).astype(dtype)
    t, y = np.array([1.0, 3.0, 10.0, 50.0, 999.0]), np.array([0, 1, 2, 1, 0])
    dout = gen.standard_normal(x.shape).astype(dtype)
    from refdiff.kernels import conv_numba

    calls = []  # the twin's convolutions hand their chunk products to the tiles (where the CPU has them)
    tile_product = conv_numba._tile_product
    monkeypatch.setattr(conv_numba, "_tile_product", lambda a, b, out: calls.append(1) or tile_product(a, b, out))
    results = []
    for net in (ref, twin):
        out, cache = net.forward(p, x, t, y)
        g = p.zeros_like()
        dx = net.backward(p, g, cache, dout, need_dx=True)
        results.append((out, dx, g.flat))
        if net is ref:
            assert not calls
    assert bool(calls) == conv_numba.TILES
    for got, want in zip(results[1], results[0]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=50 * RTOL[dtype], atol=50 * RTOL[dtype] * np.max(np.abs(want)))


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_within_a_few_ulp(dtype):
    """The twin's sigmoid (``_numba_math.sigmoid``): within 4 ulp of 1/(1 + exp(-z)), relative, far tails included,
    up to the rounding of z itself (the reference's 1/2 + tanh(z/2)/2 is exact only to about an ulp of 1/2)."""
    m = 10 if JIT_OFF else 1  # as plain Python, every tenth point
    z = np.concatenate([np.linspace(-80, 30, 200_001)[::m], 10.0 ** np.linspace(-9, 1.5, 5001)[::m],
                        -(10.0 ** np.linspace(-9, 1.5, 5001)[::m])])
    x = z.astype(dtype).reshape(1, -1, 1)
    one, zero = np.ones(1, dtype), np.zeros(1, dtype)
    from refdiff.kernels import conv_numba

    # GroupNorm of one value per group normalises it to 0: use many values, then undo the normalisation
    h, s, mu, rstd = conv_numba.group_norm_silu_forward(x, one, zero, 1, 1e-5)
    wide = np.longdouble if dtype == np.float64 else np.float64
    zz = (x.astype(wide) - wide(mu[0, 0])) * wide(rstd[0, 0])  # the z the kernel saw, up to rounding of z itself
    exact = 1 / (1 + np.exp(-zz))
    eps = np.finfo(dtype).eps
    slope = exact * (1 - exact) * np.abs(zz) * 3 * eps  # allowance for the rounding of z
    assert np.all(np.abs(s.astype(wide) - exact) <= 4 * eps * exact + slope)
    assert np.all((s > 0) & (s <= 1))


@needs_numba
def test_auto_picks_the_twin_by_size():
    from refdiff.kernels import conv_numba

    assert conv.fused_ops("auto", conv.AUTO_MIN_SIZE - 1) is conv
    assert conv.fused_ops("auto", conv.AUTO_MIN_SIZE) is conv_numba
    assert conv.fused_ops("numba", 1) is conv_numba and conv.fused_ops("numpy", 10**9) is conv


# (rows, inner, columns) of a patch chunk's products: the forward's and dx's (tall), a weight gradient's (a transposed
# chunk times a chunk), a product to one channel and one whose columns fill one and a half vectors
CHUNK_SHAPES = [(448, 288, 32, False), (200, 72, 64, False), (32, 448, 288, True), (130, 27, 1, False),
                (96, 40, 24, False)]


@needs_numba
@pytest.mark.parametrize("rows,inner,cols,transposed", CHUNK_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_matmul_twin_matches_reference(rows, inner, cols, transposed, dtype, monkeypatch):
    """Same product to the rounding of a sum of ``inner`` terms; the tiles take it wherever the twin says they do."""
    from refdiff.kernels import conv_numba

    calls = []
    tile_product = conv_numba._tile_product
    monkeypatch.setattr(conv_numba, "_tile_product", lambda a, b, out: calls.append(1) or tile_product(a, b, out))
    gen = np.random.default_rng([rows, inner, cols])
    a = gen.standard_normal((inner, rows) if transposed else (rows, inner)).astype(dtype)
    a = a.T if transposed else a
    b = gen.standard_normal((inner, cols)).astype(dtype)
    want = conv.chunk_matmul(a, b, np.empty((rows, cols), dtype))
    out = np.full((rows, cols), np.nan, dtype)
    assert conv_numba.chunk_matmul(a, b, out) is out
    bound = inner * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
    assert np.all(np.abs(out.astype(np.float64) - a.astype(np.float64) @ b) <= bound)
    assert np.all(np.abs(want.astype(np.float64) - a.astype(np.float64) @ b) <= bound)
    assert bool(calls) == (conv_numba.TILES and cols * np.dtype(dtype).itemsize >= conv_numba.TILE_MIN_BYTES)


@needs_numba
def test_chunk_matmul_twin_leaves_what_the_tiles_cannot_read_to_numpy(monkeypatch):
    from refdiff.kernels import conv_numba

    monkeypatch.setattr(conv_numba, "_tile_product", lambda a, b, out: pytest.fail("tiles called"))
    gen = np.random.default_rng(3)
    a = gen.standard_normal((64, 40)).astype(np.float32)
    b = gen.standard_normal((40, 32)).astype(np.float32)
    for args in [(a, np.asfortranarray(b), np.empty((64, 32), np.float32)),  # b's rows not contiguous
                 (a, b.astype(np.float64), np.empty((64, 32), np.float64)),  # mixed dtypes
                 (a, b, np.empty((32, 64), np.float32).T),  # out not C-contiguous
                 (a[:, :32], a[:32, :32].copy(), a[:, :32])]:  # out overlaps a
        want = np.matmul(args[0], args[1], out=np.empty_like(args[2]))  # the same kind of out: NumPy's same loop
        np.testing.assert_array_equal(conv_numba.chunk_matmul(*args), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_weight_gradient_adds_each_chunk_in_the_products_dtype(backend, monkeypatch):
    """float32 dy and params with float64 x: each chunk's dW product is added as `@` gives it (float64), rounded once."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1500)  # many chunks
    layer = conv.Conv2d("c", 5, 20, 3, stride=2, padding=1, channels_last=True, backend=backend)
    layout = Layout(layer.specs())
    gen = np.random.default_rng(11)
    p = Params(layout, gen.standard_normal(layout.size).astype(np.float32))
    x = gen.standard_normal((3, 7, 7, 5))
    y, cache = layer.forward(p, x)
    dy = gen.standard_normal(y.shape).astype(np.float32)
    g = p.zeros_like()
    layer.backward(p, g, cache, dy)
    dy2, rows = dy.reshape(-1, 20), y.shape[1] * y.shape[2]
    dw = np.zeros((20, 45), np.float32)
    for start, stop, cols in conv.patch_chunks(x, 3, 2, 1):
        dw += dy2[start * rows : stop * rows].T @ cols
    want = dw.reshape(20, 3, 3, 5).transpose(0, 3, 1, 2)
    if backend == "numpy":
        np.testing.assert_array_equal(g["c.W"], want)
    else:
        np.testing.assert_allclose(g["c.W"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
