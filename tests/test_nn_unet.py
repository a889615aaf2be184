"""refdiff.nn.unet: gradient checks, dtypes, configuration, conditioning, checkpoints."""

import json

import numpy as np
import pytest

from refdiff.nn import conv
from refdiff.nn.checkpoint import load_checkpoint, save_checkpoint
from refdiff.nn.gradcheck import check_network
from refdiff.nn.params import Params
from refdiff.nn.unet import UNet

TOL = 1e-6


def tiny(**kw):
    """A U-Net small enough for central differences in a second."""
    cfg = dict(image_shape=(2, 4, 6), channels=4, channel_mult=(1, 2), emb_dim=8, groups=2)
    cfg.update(kw)
    return UNet(**cfg)


def random_params(net, seed=0, dtype=np.float64):
    """Every parameter random (conv_out included, which starts at zero), so no path is dead."""
    gen = np.random.default_rng(seed)
    return Params(net.layout, (0.3 * gen.standard_normal(net.n_params)).astype(dtype))


def test_default_unet_size_and_config_round_trip():
    net = UNet()
    assert net.kind == "unet" and net.data_shape == (1, 8, 8)
    assert net.n_params == 335_745
    cfg = net.config()
    assert json.loads(json.dumps(cfg)) == cfg
    again = UNet(**cfg)
    assert again.layout == net.layout and again.config() == cfg
    cond = UNet(image_shape=(1, 16, 16), channels=16, channel_mult=(1, 2, 2), n_classes=10, groups=4, time_scale=1000.0)
    assert UNet(**json.loads(json.dumps(cond.config()))).layout == cond.layout
    assert "cls.E" in cond.layout.names and "cls.E" not in net.layout.names


@pytest.mark.parametrize("levels,shape", [((1, 2), (2, 4, 6)), ((1, 1, 2), (1, 8, 8))])
def test_unet_gradcheck_unconditional(levels, shape):
    # (Below 2x2 pixels at the lowest level, a group of GroupNorm has so few values
    # that some gradients shrink to the round-off floor of central differences.)
    net = tiny(channel_mult=levels, image_shape=shape)
    gen = np.random.default_rng(1)
    x = gen.standard_normal((3, *net.data_shape))
    t = np.array([1.0, 17.0, 500.0])
    result = check_network(net, x, t, rng=2, max_entries=6, params=random_params(net))
    assert result.passed(TOL), sorted(result.errors.items(), key=lambda kv: -kv[1])[:5]
    assert set(result.errors) == set(net.layout.names) | {"x"}


def test_unet_gradcheck_conditional(monkeypatch):
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)  # one image per patch chunk
    net = tiny(n_classes=3)
    gen = np.random.default_rng(3)
    x = gen.standard_normal((4, *net.data_shape))
    y = np.array([0, 3, 1, 1])  # 3 is the null class
    result = check_network(net, x, 250.0, y=y, rng=4, max_entries=6, params=random_params(net, 5))
    assert result.passed(TOL), sorted(result.errors.items(), key=lambda kv: -kv[1])[:5]
    assert "cls.E" in result.errors


def test_untrained_unet_predicts_zero_in_the_input_dtype():
    net = UNet()
    for dtype in (np.float32, np.float64):
        p = net.init(rng=0, dtype=dtype)
        x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(dtype)
        out = net.apply(p, x, np.arange(1, 6))
        assert out.shape == x.shape and out.dtype == dtype
        assert np.all(out == 0.0)


def test_float32_forward_matches_float64():
    net = tiny(n_classes=2)
    p64 = random_params(net, 6)
    x = np.random.default_rng(7).standard_normal((5, *net.data_shape))
    t, y = np.array([1.0, 2.0, 40.0, 300.0, 999.0]), np.array([0, 1, 2, 0, 1])
    out64 = net.apply(p64, x, t, y)
    out32 = net.apply(p64.astype(np.float32), x.astype(np.float32), t, y)
    assert out32.dtype == np.float32 and out64.dtype == np.float64 and out32.shape == x.shape
    scale = np.abs(out64).max()
    np.testing.assert_allclose(out32, out64, rtol=0, atol=2e-5 * scale)
    # the input gradient too
    v = np.random.default_rng(8).standard_normal(x.shape)
    dx64 = net.vjp(p64, x, t, v, y)
    dx32 = net.vjp(p64.astype(np.float32), x.astype(np.float32), t, v.astype(np.float32), y)
    assert dx32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, rtol=0, atol=2e-5 * np.abs(dx64).max())


def test_examples_are_independent_of_the_batch(monkeypatch):
    # GroupNorm is per example and the conv chunks split the batch: neither may mix examples.
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1000)
    net = tiny()
    p = random_params(net, 9)
    x = np.random.default_rng(10).standard_normal((5, *net.data_shape))
    t = np.array([3.0, 30.0, 300.0, 7.0, 70.0])
    whole = net.apply(p, x, t)
    for i in range(5):
        np.testing.assert_allclose(net.apply(p, x[i : i + 1], t[i : i + 1]), whole[i : i + 1], rtol=0, atol=1e-12)


def test_conditioning_changes_the_output():
    net = tiny(n_classes=3)
    p = random_params(net, 11)
    x = np.random.default_rng(12).standard_normal((2, *net.data_shape))
    a, b = net.apply(p, x, 10.0, 0), net.apply(p, x, 10.0, 1)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(net.apply(p, x, 10.0), net.apply(p, x, 10.0, 3))  # None = the null class
    assert not np.allclose(net.apply(p, x, 10.0, 0), net.apply(p, x, 20.0, 0))


def test_backward_modes_agree():
    net = tiny()
    p = random_params(net, 13)
    gen = np.random.default_rng(14)
    x = gen.standard_normal((3, *net.data_shape))
    out, cache = net.forward(p, x, 5.0)
    dout = gen.standard_normal(out.shape)
    g1, g2 = p.zeros_like(), p.zeros_like()
    dx = net.backward(p, g1, cache, dout, need_dx=True)
    assert net.backward(p, g2, cache, dout) is None  # need_dx defaults to False for training
    np.testing.assert_array_equal(g1.flat, g2.flat)
    np.testing.assert_array_equal(net.vjp(p, x, 5.0, dout), dx)
    assert dx.shape == x.shape and dx.flags.c_contiguous


def test_backward_of_an_empty_batch():
    net = tiny()
    p = random_params(net, 13, np.float32)
    x = np.zeros((0, *net.data_shape), np.float32)
    out, cache = net.forward(p, x, 5.0)
    g = p.zeros_like()
    dx = net.backward(p, g, cache, out, need_dx=True)
    assert dx.shape == x.shape and not np.any(g.flat)
    assert net.vjp(p, x, 5.0, out).shape == x.shape


def test_checkpoint_round_trip(tmp_path):
    net = tiny(n_classes=2, time_scale=1000.0)
    p = random_params(net, 15, np.float32)
    path = save_checkpoint(tmp_path / "unet.npz", net, p, step=3)
    ck = load_checkpoint(path)
    assert isinstance(ck.network, UNet) and ck.network.config() == net.config()
    x = np.random.default_rng(16).standard_normal((2, *net.data_shape)).astype(np.float32)
    np.testing.assert_array_equal(ck.network.apply(ck.params, x, 0.5, 1), net.apply(p, x, 0.5, 1))


def test_unet_errors():
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_shape=(1, 6, 8), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="groups"):
        UNet(channels=12, groups=8)
    with pytest.raises(ValueError, match="image_shape"):
        UNet(image_shape=(8, 8))
    with pytest.raises(ValueError, match="emb_dim"):
        UNet(emb_dim=7)
    net = tiny()
    p = random_params(net)
    with pytest.raises(ValueError, match="shape"):
        net.apply(p, np.zeros((2, 1, 4, 6)), 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        net.apply(p, np.zeros((2, 2, 4, 6)), 1.0, np.array([0, 1]))
