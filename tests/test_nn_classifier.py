"""MLP classifier: cross-entropy formula and gradients, accuracy per class, training runs, errors."""

import numpy as np
import pytest

from refdiff.nn.classifier import (
    Classifier,
    DenseStack,
    cross_entropy,
    log_softmax,
    per_class_accuracy,
    predict,
    train_classifier,
)
from refdiff.nn.gradcheck import numerical_gradient, relative_error
from refdiff.nn.params import Layout, Params


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
def test_loss_gradient_by_central_differences(activation):
    clf = Classifier((2, 3), 4, width=7, depth=2, activation=activation)
    gen = np.random.default_rng(0)
    p = Params(clf.layout, 0.5 * gen.standard_normal(clf.layout.size))
    x = gen.standard_normal((5, 2, 3))
    y = np.array([0, 3, 1, 1, 2])
    g = p.zeros_like()
    logits, cache = clf.forward(p, x)
    loss, dlogits = cross_entropy(logits, y)
    assert loss == pytest.approx(clf.loss(p, x, y))
    dx = clf.backward(p, g, cache, dlogits, need_dx=True)
    assert relative_error(g.flat, numerical_gradient(lambda: clf.loss(p, x, y), p.flat)) < 1e-6
    assert dx.shape == x.shape
    assert relative_error(dx, numerical_gradient(lambda: clf.loss(p, x, y), x)) < 1e-6


def test_dense_stack_layout_and_shapes():
    net = DenseStack("m", 3, 5, 2, 4)
    layout = Layout(tuple(net.specs()))
    assert layout.names == ("m.l0.W", "m.l0.b", "m.l1.W", "m.l1.b", "m.out.W", "m.out.b")
    y, _ = net.forward(Params.init(layout, 0, np.float64), np.ones((6, 3)))
    assert y.shape == (6, 4)


def test_cross_entropy_matches_direct_formula():
    gen = np.random.default_rng(1)
    logits = gen.normal(0, 2, (8, 5))
    y = gen.integers(0, 5, 8)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss, d = cross_entropy(logits, y)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(8), y])), rel=1e-13)
    np.testing.assert_allclose(d, (p - np.eye(5)[y]) / 8, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize(
    "labels, match",
    [([0, -1], "lie in 0..2"), ([0, 3], "lie in 0..2"), ([0.0, 1.0], "must be ints"), ([0], "shape")],
)
def test_cross_entropy_refuses_labels_outside_the_classes(labels, match):
    with pytest.raises(ValueError, match=match):  # -1 once indexed the last class without a word
        cross_entropy(np.zeros((2, 3)), np.array(labels))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_at_extreme_logits(dtype):
    # exp(1e4) overflows; any RuntimeWarning is an error in this suite
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [3e4, 3e4, 0.0]], dtype=dtype)
    y = np.array([1, 2, 0])
    loss, d = cross_entropy(logits, y)
    assert np.isfinite(loss) and d.dtype == dtype
    # per row: 1e4, log 3, log 2
    assert loss == pytest.approx((1e4 + np.log(3.0) + np.log(2.0)) / 3, rel=1e-6)
    expected = np.array([[1.0, -1.0, 0.0], [1 / 3, 1 / 3, -2 / 3], [-0.5, 0.5, 0.0]]) / 3
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-7)


def test_per_class_accuracy_hand_made():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 0, 1, 0, 2, 2, 2])
    acc = per_class_accuracy(pred, labels, 4)
    np.testing.assert_allclose(acc[:3], [0.75, 0.5, 1.0])
    assert np.isnan(acc[3])  # no example of class 3


def test_per_class_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match="0..2"):
        per_class_accuracy(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="shape"):
        per_class_accuracy(np.array([0]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="1-D"):
        per_class_accuracy(np.array([0]), np.array([[0]]), 3)


def _blobs(n_per, rng):
    gen = np.random.default_rng(rng)
    centres = np.array([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])
    x = np.concatenate([c + gen.standard_normal((n_per, 2)) for c in centres])
    y = np.repeat(np.arange(3), n_per)
    return x, y


def test_trains_on_separable_blobs():
    x, y = _blobs(200, 0)
    clf, p, hist = train_classifier(x, y, steps=200, batch_size=64, lr=3e-3, seed=0, width=16)
    assert clf.n_classes == 3 and hist["loss"].shape == (200,)
    assert hist["loss"][-20:].mean() < 0.5 * hist["loss"][:5].mean()
    xt, yt = _blobs(300, 1)
    pred = predict(clf, p, xt)
    assert np.mean(pred == yt) > 0.97
    assert np.all(per_class_accuracy(pred, yt, 3) > 0.95)


def test_training_is_deterministic():
    x, y = _blobs(30, 2)
    a = train_classifier(x, y, steps=10, batch_size=16, seed=3, width=8)
    b = train_classifier(x, y, steps=10, batch_size=16, seed=3, width=8)
    np.testing.assert_array_equal(a[1].flat, b[1].flat)
    np.testing.assert_array_equal(a[2]["loss"], b[2]["loss"])
    c = train_classifier(x, y, steps=10, batch_size=16, seed=4, width=8)
    assert not np.array_equal(a[1].flat, c[1].flat)


@pytest.mark.parametrize(
    "images, labels, kw, exc, match",
    [
        (np.zeros((4, 2)), np.array([0, 1, 2]), {}, ValueError, r"shape \(4,\)"),
        (np.zeros((4, 2)), np.array([0, 1, 2, -1]), {}, ValueError, "labels must lie"),
        (np.zeros((4, 2)), np.array([0, 1, 2, 3]), {"n_classes": 3}, ValueError, r"0..2"),
        (np.zeros((4, 2)), np.array([0.0, 1, 0, 1]), {}, TypeError, "integers"),
        (np.array([[0.0, np.nan]] * 4), np.array([0, 1, 0, 1]), {}, ValueError, "finite"),
        (np.zeros(4), np.array([0, 1, 0, 1]), {}, ValueError, r"\(N, ...\)"),
        (np.zeros((4, 2)), np.array([0, 1, 0, 1]), {"batch_size": 5}, ValueError, "batch_size"),
        (np.zeros((4, 2)), np.array([0, 1, 0, 1]), {"lr": 0.0}, ValueError, "lr"),
    ],
)
def test_train_classifier_rejects_bad_input(images, labels, kw, exc, match):
    args = {"steps": 1, "batch_size": 2, **kw}
    with pytest.raises(exc, match=match):
        train_classifier(images, labels, **args)


def test_predict_checks_the_input_shape():
    clf = Classifier((1, 8, 8), 10)
    p = clf.init(0)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        predict(clf, p, np.zeros((3, 64)))
    assert predict(clf, p, np.zeros((3, 1, 8, 8))).shape == (3,)


def test_sklearn_digits_held_out_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8) in [-1, 1]
    y = digits.target
    perm = np.random.default_rng(0).permutation(len(y))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    clf, p, _ = train_classifier(x[tr], y[tr], steps=300, batch_size=128, lr=2e-3, seed=0)
    pred = predict(clf, p, x[te])
    assert np.mean(pred == y[te]) > 0.9


def test_progress_only_when_asked_or_on_a_tty(capsys):
    x, y = _blobs(10, 0)
    train_classifier(x, y, steps=2, batch_size=4, width=4)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    train_classifier(x, y, steps=2, batch_size=4, width=4, progress=True)
    err = capsys.readouterr().err
    assert "train_classifier" in err and "loss" in err


def test_cross_entropy_of_no_examples():
    """The mean over an empty batch is NaN (as torch's), its gradient empty: it was a ZeroDivisionError."""
    loss, dlogits = cross_entropy(np.zeros((0, 3)), np.zeros(0, int))
    assert np.isnan(loss) and dlogits.shape == (0, 3)
