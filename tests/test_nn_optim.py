"""Adam / AdamW, clipping, warm-up, EMA and checkpoints."""

import json
import os
import zipfile

import numpy as np
import pytest

from refdiff.nn import MLP, Adam, Layout, Params, ParamSpec, clip_grad_norm, ema_update, load_checkpoint, save_checkpoint, warmup_lr


def _params(values):
    layout = Layout((ParamSpec("a", (len(values),), "zeros"),))
    return Params(layout, np.array(values, dtype=np.float64))


def _adam_reference(theta, grads_seq, lr, b1, b2, eps, wd):
    """Algorithm 1 of Kingma & Ba (AdamW's decay first), one scalar loop per entry."""
    theta = [float(v) for v in theta]
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    for k, g in enumerate(grads_seq, start=1):
        for i in range(len(theta)):
            theta[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            mhat = m[i] / (1 - b1**k)
            vhat = v[i] / (1 - b2**k)
            theta[i] -= lr * mhat / (np.sqrt(vhat) + eps)
    return np.array(theta)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_the_scalar_algorithm(wd):
    gen = np.random.default_rng(0)
    p = _params(gen.standard_normal(5))
    start = p.flat.copy()
    grads_seq = [gen.standard_normal(5) for _ in range(7)]
    opt = Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    for g in grads_seq:
        opt.step(p, _params(g))
    np.testing.assert_allclose(p.flat, _adam_reference(start, grads_seq, 0.01, 0.8, 0.95, 1e-6, wd), rtol=1e-13)
    assert opt.step_count == 7


def test_adam_first_step_is_lr_times_sign():
    p = _params([0.0, 0.0, 0.0])
    Adam(p, lr=0.1, eps=1e-12).step(p, _params([3.0, -0.01, 5e3]))
    np.testing.assert_allclose(p.flat, [-0.1, 0.1, -0.1], rtol=1e-9)


def test_adam_minimises_a_quadratic():
    p = _params([5.0, -3.0])
    opt = Adam(p, lr=0.05)
    for _ in range(2000):
        opt.step(p, _params(2 * p.flat))
    assert np.abs(p.flat).max() < 1e-2


def test_adam_state_round_trip_and_errors():
    p = _params([1.0, 2.0])
    opt = Adam(p)
    opt.step(p, _params([1.0, 1.0]))
    other = Adam(p)
    other.load_state({k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in opt.state().items()})
    np.testing.assert_array_equal(other.m, opt.m)
    assert other.step_count == 1
    with pytest.raises(ValueError, match="lr"):
        Adam(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="entries"):
        opt.step(p, _params([1.0, 2.0, 3.0]))


def test_adam_refuses_bad_betas_lr_and_state_before_changing_anything():
    p = _params([1.0, 2.0])
    for betas in (0.5, (0.9, 0.99, 0.9), "ab"):
        with pytest.raises(ValueError, match="betas must be a pair"):
            Adam(p, betas=betas)
    opt = Adam(p)
    for lr in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="lr"):
            opt.step(p, _params([1.0, 1.0]), lr=lr)
    np.testing.assert_array_equal(p.flat, [1.0, 2.0])
    zeros = np.zeros(2)
    for step in (-1, 2.9, True, "3"):
        with pytest.raises(ValueError, match="step must be an int >= 0"):
            opt.load_state({"m": zeros + 1, "v": zeros + 1, "step": step})
        assert opt.step_count == 0 and not np.any(opt.m) and not np.any(opt.v)
    opt.load_state({"m": zeros, "v": zeros, "step": np.int64(3)})
    assert opt.step_count == 3


def test_clip_grad_norm_of_a_float32_gradient_whose_square_overflows():
    layout = Layout((ParamSpec("a", (3,), "zeros"),))
    g = Params(layout, np.array([1e20, 0.0, -1e20], np.float32))
    norm = clip_grad_norm(g, 1.0)
    assert norm == pytest.approx(1e20 * np.sqrt(2), rel=1e-6)
    np.testing.assert_allclose(g.flat, [2**-0.5, 0.0, -(2**-0.5)], rtol=1e-6)
    g = Params(layout, np.array([np.inf, 0.0, 1.0], np.float32))
    assert clip_grad_norm(g, 1.0) == np.inf and g.flat[0] == np.inf  # a gradient that is not finite stays as it is


def test_clip_grad_norm():
    g = _params([3.0, 4.0])
    assert clip_grad_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(g.flat, [0.6, 0.8])
    g = _params([0.3, 0.4])
    clip_grad_norm(g, 1.0)
    np.testing.assert_array_equal(g.flat, [0.3, 0.4])
    g = _params([np.nan, 1.0])
    assert np.isnan(clip_grad_norm(g, 1.0))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(g, 0.0)


def test_warmup_and_ema():
    assert [warmup_lr(k, 1.0, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(0, 0.3, 0) == 0.3
    ema, p = _params([0.0, 10.0]), _params([1.0, 0.0])
    ema_update(ema, p, 0.9)
    np.testing.assert_allclose(ema.flat, [0.1, 9.0])
    ema_update(ema, p, 0.0)
    np.testing.assert_array_equal(ema.flat, p.flat)
    ema, p = _params([1.0, 100.0, 0.7]), _params([1e-3, 0.1, 0.3])  # ema + (p - ema) rounds: 8.7e-19, -5.7e-15 off
    ema_update(ema, p, 0.0)
    np.testing.assert_array_equal(ema.flat, p.flat)
    for decay in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="decay"):
            ema_update(ema, p, decay)
    for step in (-5, 1.5):
        with pytest.raises(ValueError, match="step must be an int >= 0"):
            warmup_lr(step, 1e-3, 4)


# --- checkpoints -------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path):
    net = MLP(2, width=8, depth=2, n_classes=3)
    p = net.init(0)
    opt = Adam(p)
    opt.step(p, Params(p.layout, np.ones_like(p.flat)))
    ema = p.copy()
    ema.flat *= 0.5
    path = tmp_path / "model.npz"
    save_checkpoint(path, net, p, ema=ema, optimizer=opt, step=7, train={"lr": 1e-3}, arrays={"losses": np.arange(7.0)})
    return net, p, ema, opt, path


def test_checkpoint_round_trip(trained):
    net, p, ema, opt, path = trained
    ck = load_checkpoint(path)
    assert ck.network.config() == net.config() and ck.step == 7 and ck.train == {"lr": 1e-3}
    np.testing.assert_array_equal(ck.params.flat, p.flat)
    np.testing.assert_array_equal(ck.ema.flat, ema.flat)
    np.testing.assert_array_equal(ck.optimizer["v"], opt.v)
    assert ck.optimizer["step"] == 1 and ck.params.dtype == np.float32
    np.testing.assert_array_equal(ck.arrays["losses"], np.arange(7.0))
    x = np.zeros((3, 2))
    np.testing.assert_array_equal(ck.model(use_ema=False)(x, 0.5), net.bind(p)(x, 0.5))
    assert sorted(os.listdir(path.parent)) == ["model.npz"]  # no temporary left behind


def test_checkpoint_is_loaded_without_pickle(trained):
    *_, path = trained
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["metadata"].tobytes())
    assert meta["format"] == "refdiff-checkpoint" and meta["version"] == 1
    assert meta["network"]["kind"] == "mlp"


def test_truncated_foreign_and_missing_files(trained, tmp_path):
    *_, path = trained
    blob = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(cut)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable refdiff checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a refdiff checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.npz")


def test_newer_version_and_wrong_buffer_are_refused(trained, tmp_path):
    *_, path = trained
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(entries["metadata"].tobytes())
    meta["version"] = 99
    newer = dict(entries, metadata=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez(tmp_path / "newer.npz", **newer)
    with pytest.raises(ValueError, match="newer"):
        load_checkpoint(tmp_path / "newer.npz")
    short = dict(entries, params=entries["params"][:-1])
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(ValueError, match="entry 'params'"):
        load_checkpoint(tmp_path / "short.npz")


def test_save_refuses_what_load_would_refuse(trained, tmp_path):
    net, p, *_ = trained
    with pytest.raises(ValueError, match="optimizer.m must have shape"):
        save_checkpoint(tmp_path / "a.npz", net, p, optimizer=Adam(p.astype(np.float64)))
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path / "b.npz", net, p, arrays={"names": np.array(["a", None], dtype=object)})
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()
    save_checkpoint(tmp_path / "c.npz", net, p, arrays={"names": np.array(["ab", "c"])})
    assert load_checkpoint(tmp_path / "c.npz").arrays["names"].tolist() == ["ab", "c"]


def test_failed_write_leaves_the_old_file(trained, monkeypatch):
    net, p, ema, opt, path = trained
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, net, p)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.npz"]
    assert zipfile.is_zipfile(path)


def test_ema_with_a_small_decay_and_weights_of_other_sizes():
    """d ema + (1 - d) theta: ema + (1 - d)(theta - ema) rounded to ema's ulp (1e8 and 1 with d = 1e-6 gave 104 in
    float32, where the average is 101)."""
    layout = Layout((ParamSpec("w", (2,), "zeros"),))
    for d in (1e-6, 0.3, 0.999):
        ema = Params(layout, np.array([1e8, 1.0], np.float32))
        ema_update(ema, Params(layout, np.array([1.0, 1.0], np.float32)), d)
        np.testing.assert_allclose(ema.flat, [d * 1e8 + (1 - d), 1.0], rtol=2e-7)
