"""refdiff.nn.conv: gradient checks, naive-loop references, dtypes and layouts."""

import importlib.util

import numpy as np
import pytest

from refdiff.nn import conv
from refdiff.nn.conv import AvgPool2d, Conv2d, GroupNorm, ResBlock, Upsample2d, col2im, im2col, patch_chunks
from refdiff.nn.gradcheck import check_layer
from refdiff.nn.params import Layout, Params, ParamSpec

TOL = 1e-6  # gradcheck relative error, float64


def random_params(layer, rng, dtype=np.float64):
    layout = Layout(tuple(layer.specs()))
    return Params(layout, (0.5 * rng.standard_normal(layout.size)).astype(dtype))


@pytest.fixture
def small_chunks(monkeypatch):
    """Patch matrices of one image at a time, so the chunk loops run once per image."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)


# --- naive references written as loops ------------------------------------------------


def conv2d_loop(x, W, b, stride, padding):
    """Direct cross-correlation, (N, C, H, W) in and out, one output value at a time."""
    n, c, h, w = x.shape
    c_out, _, k, _ = W.shape
    xp = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    xp[:, :, padding : padding + h, padding : padding + w] = x
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    y = np.zeros((n, c_out, ho, wo))
    for i in range(n):
        for o in range(c_out):
            for r in range(ho):
                for s in range(wo):
                    patch = xp[i, :, r * stride : r * stride + k, s * stride : s * stride + k]
                    y[i, o, r, s] = np.sum(patch * W[o]) + (0.0 if b is None else b[o])
    return y


def group_norm_loop(x, groups, gamma, beta, eps):
    n, c, h, w = x.shape
    y = np.empty_like(x)
    cg = c // groups
    for i in range(n):
        for gi in range(groups):
            block = x[i, gi * cg : (gi + 1) * cg]
            mu, var = block.mean(), block.var()
            y[i, gi * cg : (gi + 1) * cg] = (block - mu) / np.sqrt(var + eps)
    return y * gamma[None, :, None, None] + beta[None, :, None, None]


# --- Conv2d ----------------------------------------------------------------------------

CONV_CASES = [
    # c_in, c_out, k, stride, padding, (N, C, H, W)
    (3, 5, 3, 1, 1, (2, 3, 5, 7)),
    (3, 5, 3, 1, 0, (2, 3, 5, 7)),
    (3, 2, 3, 2, 0, (2, 3, 7, 6)),
    (2, 4, 3, 2, 1, (3, 2, 7, 6)),
    (4, 2, 1, 1, 0, (2, 4, 3, 5)),
    (2, 3, 2, 2, 0, (2, 2, 4, 6)),
    (2, 3, 3, 1, 2, (2, 2, 3, 4)),  # padding = k-1: dx is a correlation without padding
    (2, 3, 2, 1, 3, (1, 2, 3, 3)),  # padding > k-1: dx by col2im
]


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,shape", CONV_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_gradcheck(c_in, c_out, k, stride, padding, shape, channels_last, small_chunks):
    layer = Conv2d("c", c_in, c_out, k, stride=stride, padding=padding, channels_last=channels_last)
    x = np.random.default_rng(1).standard_normal(shape)
    if channels_last:
        x = x.transpose(0, 2, 3, 1).copy()
    result = check_layer(layer, x, rng=2)
    assert result.passed(TOL), result.errors
    assert set(result.errors) == {"c.W", "c.b", "x"}


def test_conv2d_without_bias_gradcheck():
    layer = Conv2d("c", 3, 4, 3, padding=1, bias=False)
    assert [s.name for s in layer.specs()] == ["c.W"]
    result = check_layer(layer, np.random.default_rng(0).standard_normal((2, 3, 4, 5)))
    assert result.passed(TOL), result.errors


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,shape", CONV_CASES)
def test_conv2d_matches_loop(c_in, c_out, k, stride, padding, shape, small_chunks):
    rng = np.random.default_rng(3)
    layer = Conv2d("c", c_in, c_out, k, stride=stride, padding=padding)
    p = random_params(layer, rng)
    x = rng.standard_normal(shape)
    y, _ = layer.forward(p, x)
    ref = conv2d_loop(x, p["c.W"], p["c.b"], stride, padding)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


def test_conv2d_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    layer = Conv2d("c", 3, 4, 3, padding=1)
    p = random_params(layer, rng)
    x = rng.standard_normal((7, 3, 5, 6))
    dy = rng.standard_normal((7, 4, 5, 6))
    results = []
    for chunk in (1 << 30, 5 * 6 * 27 * 8 * 2):  # one chunk; chunks of 2 images (last one partial)
        monkeypatch.setattr(conv, "CHUNK_BYTES", chunk)
        y, cache = layer.forward(p, x)
        g = p.zeros_like()
        dx = layer.backward(p, g, cache, dy)
        results.append((y, g.flat.copy(), dx))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_conv2d_weights_and_init():
    layer = Conv2d("c", 3, 8, 3, padding=1)
    (w, b) = layer.specs()
    assert w.shape == (8, 3, 3, 3) and b.shape == (8,)
    assert w.init == b.init == "uniform_fan_in" and w.fan_in == b.fan_in == 27
    p = Params.init(Layout(tuple(layer.specs())), rng=0)
    assert np.abs(p["c.W"]).max() <= 1 / np.sqrt(27)
    zero = Conv2d("z", 3, 2, 3, zero_init=True)
    assert all(s.init == "zeros" for s in zero.specs())


def test_im2col_col2im_adjoint():
    # <im2col(x), c> == <x, col2im(c)>: col2im is the transpose of im2col
    rng = np.random.default_rng(5)
    for k, stride, padding in [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 1, 0)]:
        x = rng.standard_normal((2, 5, 6, 3))
        cols = im2col(x, k, stride, padding)
        c = rng.standard_normal(cols.shape)
        back = col2im(c, x.shape, k, stride, padding)
        assert np.isclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12)
        chunks = np.concatenate([cc.copy() for _, _, cc in patch_chunks(x, k, stride, padding, chunk_bytes=1)])
        np.testing.assert_array_equal(chunks, cols)


# --- GroupNorm -------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_gradcheck(groups, channels_last):
    layer = GroupNorm("gn", groups, 6, channels_last=channels_last)
    x = np.random.default_rng(groups).standard_normal((3, 6, 4, 5)) * 2.0 + 0.5
    if channels_last:
        x = x.transpose(0, 2, 3, 1).copy()
    result = check_layer(layer, x, rng=7)
    assert result.passed(TOL), result.errors
    assert set(result.errors) == {"gn.gamma", "gn.beta", "x"}


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_matches_loop(groups):
    rng = np.random.default_rng(8)
    layer = GroupNorm("gn", groups, 4, eps=1e-3)
    p = random_params(layer, rng)
    x = rng.standard_normal((3, 4, 3, 5)) + 3.0
    y, _ = layer.forward(p, x)
    np.testing.assert_allclose(y, group_norm_loop(x, groups, p["gn.gamma"], p["gn.beta"], 1e-3), rtol=0, atol=1e-12)


def test_group_norm_init_normalises():
    layer = GroupNorm("gn", 2, 4)
    p = Params.init(Layout(tuple(layer.specs())), rng=0, dtype=np.float64)
    x = np.random.default_rng(9).standard_normal((5, 4, 6, 6)) * 3.0 - 1.0
    y = layer.forward(p, x)[0].reshape(5, 2, -1)
    np.testing.assert_allclose(y.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=2), 1.0, rtol=1e-4)  # var/(var+eps)


# --- pooling, up-sampling ------------------------------------------------------------


@pytest.mark.parametrize(
    "layer", [AvgPool2d(), Upsample2d(), AvgPool2d(3), Upsample2d(3)], ids=["pool2", "up2", "pool3", "up3"]
)
def test_resample_gradcheck(layer):
    shape = (2, 3, 6, 12) if isinstance(layer, AvgPool2d) else (2, 3, 2, 3)
    result = check_layer(layer, np.random.default_rng(10).standard_normal(shape))
    assert result.passed(TOL), result.errors


def test_pool_and_upsample_values():
    x = np.random.default_rng(11).standard_normal((2, 3, 4, 6))
    pooled = AvgPool2d().forward(None, x)[0]
    ref = np.array([[[[x[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(3)] for i in range(2)] for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(pooled, ref, rtol=0, atol=1e-15)
    up = Upsample2d().forward(None, x)[0]
    assert up.shape == (2, 3, 8, 12)
    np.testing.assert_array_equal(up, x.repeat(2, axis=2).repeat(2, axis=3))
    np.testing.assert_allclose(AvgPool2d().forward(None, up)[0], x, rtol=0, atol=1e-15)


def test_pool_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        AvgPool2d().forward(None, np.zeros((1, 1, 5, 4)))


# --- ResBlock --------------------------------------------------------------------------


class ResBlockWithEmb:
    """A ResBlock seen as a one-input layer: its embedding is an extra parameter ``emb``, so
    check_layer also checks the gradient with respect to the embedding."""

    def __init__(self, block, n):
        self.block, self.n = block, n

    def specs(self):
        return self.block.specs() + [ParamSpec("emb", (self.n, self.block.emb_dim), "normal")]

    def forward(self, p, x):
        return self.block.forward(p, x, p["emb"])

    def backward(self, p, g, cache, dy, need_dx=True):
        dx, demb = self.block.backward(p, g, cache, dy, need_dx=need_dx)
        if g is not None:
            g["emb"] += demb
        return dx


@pytest.mark.parametrize("c_in,c_out", [(4, 4), (4, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_resblock_gradcheck(c_in, c_out, channels_last):
    block = ResBlock("rb", c_in, c_out, emb_dim=5, groups=2, channels_last=channels_last)
    x = np.random.default_rng(12).standard_normal((3, c_in, 4, 5))
    if channels_last:
        x = x.transpose(0, 2, 3, 1).copy()
    result = check_layer(ResBlockWithEmb(block, 3), x, rng=13, max_entries=25)
    assert result.passed(TOL), result.errors
    assert "emb" in result.errors and ("rb.skip.W" in result.errors) == (c_in != c_out)


def test_resblock_need_dx_false_gives_same_parameter_gradients():
    rng = np.random.default_rng(14)
    block = ResBlock("rb", 4, 8, emb_dim=6, groups=4)
    p = random_params(block, rng)
    x, emb = rng.standard_normal((2, 4, 4, 4)), rng.standard_normal((2, 6))
    y, cache = block.forward(p, x, emb)
    dy = rng.standard_normal(y.shape)
    g1, g2 = p.zeros_like(), p.zeros_like()
    dx, demb1 = block.backward(p, g1, cache, dy, need_dx=True)
    none, demb2 = block.backward(p, g2, cache, dy, need_dx=False)
    assert none is None and dx.shape == x.shape
    np.testing.assert_array_equal(g1.flat, g2.flat)
    np.testing.assert_array_equal(demb1, demb2)
    dx3, _ = block.backward(p, None, cache, dy)  # no parameter gradients: same input gradient
    np.testing.assert_array_equal(dx3, dx)


def test_resblock_rejects_wrong_embedding():
    block = ResBlock("rb", 4, 4, emb_dim=6, groups=2)
    p = random_params(block, np.random.default_rng(0))
    with pytest.raises(ValueError, match="emb"):
        block.forward(p, np.zeros((2, 4, 4, 4)), np.zeros((2, 5)))


# --- dtypes, shapes, layouts, errors ----------------------------------------------------

LAYERS = [
    (lambda cl: Conv2d("c", 3, 4, 3, padding=1, channels_last=cl), (4, 3, 6, 5)),
    (lambda cl: Conv2d("c", 3, 4, 3, stride=2, padding=1, channels_last=cl), (4, 3, 6, 5)),
    (lambda cl: Conv2d("c", 3, 4, 1, channels_last=cl), (4, 3, 6, 5)),
    (lambda cl: GroupNorm("gn", 3, 6, channels_last=cl), (4, 6, 3, 5)),
    (lambda cl: AvgPool2d(channels_last=cl), (4, 3, 6, 4)),
    (lambda cl: Upsample2d(channels_last=cl), (4, 3, 3, 2)),
]


@pytest.mark.parametrize("make,shape", LAYERS)
def test_float32_matches_float64_and_keeps_dtype(make, shape):
    rng = np.random.default_rng(15)
    layer = make(False)
    p64 = random_params(layer, rng)
    x = rng.standard_normal(shape)
    y64, c64 = layer.forward(p64, x)
    y32, c32 = layer.forward(p64.astype(np.float32), x.astype(np.float32))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y64.shape)
    g64, g32 = p64.zeros_like(), p64.astype(np.float32).zeros_like()
    dx64 = layer.backward(p64, g64, c64, dy)
    dx32 = layer.backward(p64.astype(np.float32), g32, c32, dy.astype(np.float32))
    assert dx32.dtype == np.float32 and dx32.shape == x.shape
    np.testing.assert_allclose(dx32, dx64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g32.flat, g64.flat, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make,shape", LAYERS)
def test_channels_last_is_the_transposed_layer(make, shape):
    rng = np.random.default_rng(16)
    first, last = make(False), make(True)
    p = random_params(first, rng)
    x = rng.standard_normal(shape)
    y, cache = first.forward(p, x)
    yl, cache_l = last.forward(p, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(yl, y.transpose(0, 2, 3, 1), rtol=0, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    g, gl = p.zeros_like(), p.zeros_like()
    dx = first.backward(p, g, cache, dy)
    dxl = last.backward(p, gl, cache_l, dy.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dxl, dx.transpose(0, 2, 3, 1), rtol=0, atol=1e-13)
    np.testing.assert_allclose(gl.flat, g.flat, rtol=0, atol=1e-12)


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,shape", CONV_CASES)
def test_conv2d_weight_gradient_same_without_dx(c_in, c_out, k, stride, padding, shape, small_chunks):
    """need_dx=False takes dW from the patches of x; with dx (stride 1), from those of dy: one answer."""
    rng = np.random.default_rng(18)
    layer = Conv2d("c", c_in, c_out, k, stride=stride, padding=padding)
    p = random_params(layer, rng)
    y, cache = layer.forward(p, rng.standard_normal(shape))
    dy = rng.standard_normal(y.shape)
    g_dx, g_no = p.zeros_like(), p.zeros_like()
    assert layer.backward(p, g_dx, cache, dy).shape == shape
    assert layer.backward(p, g_no, cache, dy, need_dx=False) is None
    np.testing.assert_allclose(g_dx.flat, g_no.flat, rtol=1e-13, atol=1e-13)


def test_need_dx_false_returns_none():
    rng = np.random.default_rng(17)
    layer = Conv2d("c", 2, 3, 3, padding=1)
    p = random_params(layer, rng)
    y, cache = layer.forward(p, rng.standard_normal((2, 2, 4, 4)))
    g = p.zeros_like()
    assert layer.backward(p, g, cache, np.ones_like(y), need_dx=False) is None
    assert np.all(g["c.b"] == 32.0)


@pytest.mark.parametrize("stride, padding, channels_last", [(1, 1, False), (2, 1, False), (1, 0, True), (1, 3, False)])
def test_conv2d_backward_of_an_empty_batch(stride, padding, channels_last):
    rng = np.random.default_rng(18)
    layer = Conv2d("c", 2, 3, 3, stride=stride, padding=padding, channels_last=channels_last)
    p = random_params(layer, rng, np.float32)
    shape = (0, 5, 5, 2) if channels_last else (0, 2, 5, 5)
    y, cache = layer.forward(p, np.zeros(shape, np.float32))
    g = p.zeros_like()
    dx = layer.backward(p, g, cache, y)
    assert dx.shape == shape and dx.dtype == np.float32
    assert not np.any(g.flat)
    assert layer.backward(p, g, cache, y, need_dx=False) is None


def test_conv_errors():
    layer = Conv2d("c", 3, 4, 3)
    p = random_params(layer, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 input channels"):
        layer.forward(p, np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="smaller than"):
        layer.forward(p, np.zeros((1, 3, 2, 5)))
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(p, np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d("c", 3, 4, 0)
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm("gn", 4, 6)


# --- PyTorch (optional) ------------------------------------------------------------------


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv2d_matches_torch(stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    layer = Conv2d("c", 3, 5, 3, stride=stride, padding=padding)
    p = random_params(layer, rng)
    x = rng.standard_normal((4, 3, 7, 6))
    y, cache = layer.forward(p, x)
    dy = rng.standard_normal(y.shape)
    g = p.zeros_like()
    dx = layer.backward(p, g, cache, dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(p["c.W"].copy(), requires_grad=True)
    bt = torch.tensor(p["c.b"].copy(), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["c.W"], wt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["c.b"], bt.grad.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_matches_torch(groups):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(19)
    layer = GroupNorm("gn", groups, 8)
    p = random_params(layer, rng)
    x = rng.standard_normal((3, 8, 5, 4)) * 2.0 + 1.0
    y, cache = layer.forward(p, x)
    dy = rng.standard_normal(y.shape)
    g = p.zeros_like()
    dx = layer.backward(p, g, cache, dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(p["gn.gamma"].copy(), requires_grad=True)
    bt = torch.tensor(p["gn.beta"].copy(), requires_grad=True)
    yt = torch.nn.functional.group_norm(xt, groups, wt, bt, eps=1e-5)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["gn.gamma"], wt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["gn.beta"], bt.grad.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"))])
def test_group_norm_silu_gradient_is_one_for_large_outputs(backend):
    """The GroupNorm + SiLU backward's dz = dh (s + h (1 - s)): h + s (1 - h) was 0 where the normalised value
    is large enough that s rounds to 1 (here gamma = 1e8, float32)."""
    if backend == "numba":
        from refdiff.kernels import conv_numba as ops
    else:
        ops = conv
    x = np.array([[[-1.0], [1.0]]], np.float32)  # (N, S, C) = (1, 2, 1): normalised to -1 and 1
    gamma, beta = np.array([1e8], np.float32), np.array([0.0], np.float32)
    h, s, mu, rstd = ops.group_norm_silu_forward(x, gamma, beta, 1, 1e-5)
    dgamma, dbeta = np.zeros(1, np.float32), np.zeros(1, np.float32)
    ops.group_norm_silu_backward(np.ones_like(x), x, h, s, mu, rstd, gamma, 1, dgamma, dbeta, need_dx=False)
    np.testing.assert_allclose(dbeta, [1.0], rtol=1e-6)  # dz = 0 at -1e8, 1 at +1e8


def test_upsample_by_one_is_a_new_array():
    x = np.ones((1, 1, 2, 2))
    y, _ = Upsample2d(1).forward(None, x)
    y += 1.0  # a read-only view of x before
    np.testing.assert_array_equal(x, 1.0)
