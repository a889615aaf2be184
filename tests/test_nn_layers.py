"""Dense layers, parameters and the MLP: every backward pass against central differences."""

import numpy as np
import pytest

from refdiff.nn import MLP, Layout, Params, ParamSpec, check_layer, check_network
from refdiff.nn.gradcheck import relative_error
from refdiff.nn.layers import GELU, ClassEmbedding, Linear, ReLU, SiLU, sigmoid, sinusoidal_embedding

TOL = 1e-6


# --- params -------------------------------------------------------------------


def test_views_share_the_flat_buffer():
    layout = Layout((ParamSpec("a", (2, 3), "zeros"), ParamSpec("b", (4,), "ones")))
    p = Params.init(layout, rng=0, dtype=np.float64)
    assert layout.size == 10 and p.flat.shape == (10,)
    np.testing.assert_array_equal(p.flat, [0] * 6 + [1] * 4)
    p["a"] += 2.0
    assert p.flat[:6].tolist() == [2.0] * 6
    p.flat[6:] = 5.0
    assert p["b"].tolist() == [5.0] * 4
    assert np.shares_memory(p["a"], p.flat)


def test_uniform_fan_in_bounds_and_determinism():
    layout = Layout((ParamSpec("W", (100, 50), fan_in=100),))
    a = Params.init(layout, rng=3)
    b = Params.init(layout, rng=3)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert a.flat.dtype == np.float32
    assert np.abs(a.flat).max() <= 0.1 and np.abs(a.flat).max() > 0.09
    assert not np.array_equal(a.flat, Params.init(layout, rng=4).flat)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(name="", shape=(2,)), "non-empty"),
        (dict(name="a", shape=(0, 2)), "positive"),
        (dict(name="a", shape=(2,), init="xavier"), "init must be"),
        (dict(name="a", shape=(2,), init="uniform_fan_in"), "fan_in"),
    ],
)
def test_param_spec_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ParamSpec(**bad)


def test_layout_rejects_duplicates_and_params_check_buffer():
    with pytest.raises(ValueError, match="unique"):
        Layout((ParamSpec("a", (1,), "zeros"), ParamSpec("a", (2,), "zeros")))
    layout = Layout((ParamSpec("a", (3,), "zeros"),))
    with pytest.raises(ValueError, match="3 entries"):
        Params(layout, np.zeros(4))
    with pytest.raises(TypeError, match="float32 or float64"):
        Params(layout, np.zeros(3, dtype=np.int64))
    with pytest.raises(KeyError, match="no parameter named 'b'"):
        Params(layout, np.zeros(3))["b"]


# --- activations and layers -----------------------------------------------------


def test_sigmoid_matches_expit_and_saturates_without_warnings():
    from scipy.special import expit

    x = np.linspace(-20, 20, 2001)
    assert np.abs(sigmoid(x) - expit(x)).max() < 1e-15
    big = np.array([-1e4, -100.0, 100.0, 1e4], dtype=np.float32)
    s = sigmoid(big)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, [0, 0, 1, 1])


def test_activation_values():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    from scipy.special import expit

    np.testing.assert_allclose(SiLU().forward(None, x)[0], x * expit(x), rtol=1e-14)
    np.testing.assert_array_equal(ReLU().forward(None, x)[0], np.maximum(x, 0))
    c = np.sqrt(2 / np.pi)
    np.testing.assert_allclose(GELU().forward(None, x)[0], 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3))), rtol=1e-14)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (Linear("l", 3, 4), (6, 3)),
        (Linear("l", 5, 1, bias=False), (2, 5)),
        (Linear("l", 1, 7), (1, 1)),
        (SiLU(), (5, 4)),
        (ReLU(), (5, 4)),
        (GELU(), (5, 4)),
    ],
)
def test_layer_gradcheck(layer, shape):
    x = 2.0 * np.random.default_rng(1).standard_normal(shape)
    res = check_layer(layer, x, rng=2)
    assert res.passed(TOL), res.errors
    assert "x" in res.errors


def test_gradcheck_catches_a_wrong_backward():
    class BrokenSiLU(SiLU):
        def backward(self, p, g, cache, dy, need_dx=True):
            s, y = cache
            return dy * s  # drops the x s (1 - s) term

    res = check_layer(BrokenSiLU(), np.random.default_rng(0).standard_normal((4, 3)))
    assert not res.passed(1e-3)


def test_linear_skips_gradients_when_asked():
    lin = Linear("l", 3, 2)
    p = Params.init(Layout(tuple(lin.specs())), 0, np.float64)
    x = np.ones((4, 3))
    y, cache = lin.forward(p, x)
    assert lin.backward(p, None, cache, np.ones_like(y), need_dx=False) is None
    np.testing.assert_allclose(y, x @ p["l.W"] + p["l.b"])


def test_class_embedding_accumulates_repeated_labels():
    emb = ClassEmbedding("c", 3, 2)
    p = Params.init(Layout(tuple(emb.specs())), 0, np.float64)
    y = np.array([0, 2, 0, 3])
    out, cache = emb.forward(p, y)
    np.testing.assert_array_equal(out, p["c.E"][y])
    g = p.zeros_like()
    dy = np.arange(8.0).reshape(4, 2)
    emb.backward(p, g, cache, dy)
    np.testing.assert_array_equal(g["c.E"], [[4, 6], [0, 0], [2, 3], [6, 7]])
    assert emb.null == 3


def test_sinusoidal_embedding():
    u = np.array([0.0, 1.0, 999.0])
    e = sinusoidal_embedding(u, 8, dtype=np.float32)
    assert e.shape == (3, 8) and e.dtype == np.float32
    np.testing.assert_array_equal(e[0], [1, 1, 1, 1, 0, 0, 0, 0])
    omega = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(e[2].astype(np.float64), np.r_[np.cos(999 * omega), np.sin(999 * omega)], atol=1e-7)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(u, 7)
    for bad in (5.0, np.zeros((2, 1))):  # a scalar once gave dim / 2 rows, each the one time's features
        with pytest.raises(ValueError, match=r"u must have shape \(N,\)"):
            sinusoidal_embedding(bad, 8)


# --- MLP --------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
@pytest.mark.parametrize("n_classes", [None, 4])
def test_mlp_gradcheck(activation, n_classes):
    net = MLP(3, width=16, depth=3, emb_dim=8, time_scale=10.0, n_classes=n_classes, activation=activation)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((7, 3))
    t = gen.uniform(0, 100, 7)
    y = None if n_classes is None else np.array([0, 1, 2, 3, 4, 0, 4])
    res = check_network(net, x, t, y, rng=1)
    assert res.passed(TOL), res.errors
    assert set(res.errors) == set(net.layout.names) | {"x"}


def test_mlp_on_image_shaped_data_and_depth_one():
    net = MLP((1, 3, 2), width=8, depth=1)
    x = np.random.default_rng(0).standard_normal((4, 1, 3, 2))
    res = check_network(net, x, 5.0)
    assert res.passed(TOL), res.errors
    out = net.apply(net.init(0), x, 5.0)
    assert out.shape == x.shape and out.dtype == np.float32


def test_mlp_float32_matches_float64():
    net = MLP(2, width=32, depth=3, time_scale=1000.0)
    p64 = net.init(0, np.float64)
    x = np.random.default_rng(0).standard_normal((50, 2))
    t = np.linspace(0, 1, 50)
    out64 = net.apply(p64, x, t)
    out32 = net.apply(p64.astype(np.float32), x.astype(np.float32), t)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)


def test_vjp_equals_jacobian_transpose_product():
    net = MLP(2, width=16, depth=2)
    p = net.init(0, np.float64)
    x = np.random.default_rng(0).standard_normal((3, 2))
    v = np.random.default_rng(1).standard_normal((3, 2))
    h = 1e-6
    J = np.zeros((3, 2, 2))  # per example: d out / d x
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        J[:, :, j] = (net.apply(p, x + e, 4.0) - net.apply(p, x - e, 4.0)) / (2 * h)
    expected = np.einsum("ni,nij->nj", v, J)
    assert relative_error(net.vjp(p, x, 4.0, v), expected) < 1e-8


def test_bound_network_returns_input_dtype_and_fixes_labels():
    net = MLP(2, width=8, depth=2, n_classes=3)
    p = net.init(0)
    f = net.bind(p, y=1)
    x = np.zeros((5, 2))
    assert f(x, 0.3).dtype == np.float64
    np.testing.assert_array_equal(f(x, 0.3), net.apply(p, x, 0.3, np.full(5, 1)).astype(np.float64))
    assert not np.allclose(f(x, 0.3), f.with_labels(None)(x, 0.3))
    xi = np.array([[1, 2], [3, 4]])  # integer points: the parameters' dtype, not outputs truncated to integers
    for g, dtype in ((net.bind(p, y=1), np.float32), (net.bind(p.astype(np.float64), y=1), np.float64)):
        out = g(xi, 0.3)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, g(xi.astype(dtype), 0.3))
        assert g.vjp(xi, 0.3, np.ones_like(out)).dtype == dtype


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((4, 3)), t=0.0), r"shape \(N, 2\)"),
        (dict(x=np.zeros((4, 2)), t=np.zeros(3)), "t must be a scalar or have shape"),
        (dict(x=np.zeros((4, 2)), t=0.0, y=np.array([0, 1, 2, 9])), "labels must lie"),
        (dict(x=np.zeros((4, 2)), t=0.0, y=np.zeros(4)), "integer labels"),
        (dict(x=np.array([[np.nan, 0.0]] * 4), t=0.0), "x must be finite"),
        (dict(x=np.zeros((4, 2)), t=np.nan), "t must be finite"),
        (dict(x=np.zeros((4, 2)), t=np.array([0.0, 1.0, np.inf, 0.0])), "t must be finite"),
    ],
)
def test_mlp_input_errors(kwargs, match):
    net = MLP(2, width=8, depth=1, n_classes=3)
    with pytest.raises(ValueError, match=match):
        net.apply(net.init(0), **kwargs)


def test_unconditional_mlp_refuses_labels_and_foreign_params():
    net = MLP(2, width=8, depth=1)
    with pytest.raises(ValueError, match="unconditional"):
        net.apply(net.init(0), np.zeros((2, 2)), 0.0, np.array([0, 1]))
    other = MLP(2, width=9, depth=1)
    with pytest.raises(TypeError, match="params"):
        net.apply(other.init(0), np.zeros((2, 2)), 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(width=0), dict(depth=0), dict(emb_dim=7), dict(time_scale=0.0), dict(n_classes=0), dict(activation="tanh")],
)
def test_mlp_constructor_errors(kwargs):
    with pytest.raises(ValueError):
        MLP(2, **kwargs)


def test_config_round_trip():
    net = MLP((1, 4, 4), width=24, depth=2, emb_dim=16, time_scale=3.0, n_classes=5, activation="gelu")
    again = MLP(**net.config())
    assert again.layout == net.layout and again.config() == net.config()


def test_float32_time_features_stay_within_an_ulp_of_float64():
    u = np.random.default_rng(0).uniform(0, 1000, 5000)
    e32 = sinusoidal_embedding(u, 32, dtype=np.float32)
    e64 = sinusoidal_embedding(u, 32)
    assert e32.dtype == np.float32
    assert np.abs(e32 - e64).max() < 3e-7  # an unreduced float32 phase errs by ~1e-4 at u = 1000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_at_the_ends_of_the_range(dtype):
    """SiLU's derivative is 1 for large x (y + s(1 - y) cancelled to 0 from 2**24 in float32), 0 for very negative
    x; ReLU(-inf) is 0 (x * mask was -inf * 0 = NaN)."""
    x = np.array([1e7, 2e7, 1e20, -1e20, 0.0], dtype)
    act = SiLU()
    y, cache = act.forward(None, x)
    np.testing.assert_array_equal(act.backward(None, None, cache, np.ones_like(x)), [1.0, 1.0, 1.0, 0.0, 0.5])
    y, mask = ReLU().forward(None, np.array([-np.inf, -1.0, 2.0, np.inf], dtype))
    np.testing.assert_array_equal(y, [0.0, 0.0, 2.0, np.inf])
