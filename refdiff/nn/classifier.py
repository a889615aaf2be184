r"""A plain MLP classifier with softmax cross-entropy, to check class-conditional samples.

A class-conditional diffusion model is only as good as the classes of its
samples: this module trains an ordinary classifier on the real data and asks
it which class each generated sample belongs to.

==========================  ================================================================  ==========================
object                      formula                                                           source
==========================  ================================================================  ==========================
``DenseStack``              :math:`h_0=x`, :math:`h_l=\phi(h_{l-1}W_l+b_l)`, :math:`l=1..L`,     plain MLP (no residuals,
                            :math:`y=h_LW_{out}+b_{out}`                                       no conditioning)
``log_softmax``             :math:`\log p_k=(\ell_k-m)-\log\sum_j e^{\ell_j-m}`,               max subtraction: no
                            :math:`m=\max_j\ell_j`                                            overflow at any finite
                                                                                              logit
``cross_entropy``           :math:`L=-\frac1N\sum_n\log p_{n,y_n}`,                           Bishop 2006, eq. 4.108
                            :math:`\partial L/\partial\ell_n=(p_n-e_{y_n})/N`
``Classifier``              ``DenseStack`` on flattened inputs -> K logits
``train_classifier``        Adam on minibatch cross-entropy; the batch of step k is a         Kingma & Ba 2015
                            pure function of (seed, k)
==========================  ================================================================  ==========================

Layers follow :mod:`refdiff.nn.layers`: ``specs()``,
``forward(p, x) -> (y, cache)`` and ``backward(p, g, cache, dy, need_dx)``,
which *adds* parameter gradients into ``g`` (skipped when ``g`` is None).
:class:`DenseStack` is also the generator and discriminator of
:mod:`refdiff.gan`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..backend import check_int
from .._progress import ProgressLine
from .layers import Linear, make_activation
from .optim import Adam
from .params import FLOAT_DTYPES, Layout, Params

__all__ = [
    "DenseStack",
    "Classifier",
    "log_softmax",
    "cross_entropy",
    "train_classifier",
    "predict",
    "per_class_accuracy",
]

#: Middle word of the SeedSequence entropy ``[seed, tag, k]`` of each random stream
#: (fixed length and non-zero tags, so no two streams share a seed).
_TAG_INIT, _TAG_STEP = 1, 2


def _seed(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative int, got {value!r}")
    return int(value)


def _lr(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"lr must be a finite number > 0, got {value!r}")
    return float(value)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# ------------------------------------------------------------------ dense stack
class DenseStack:
    r"""Linear -> activation, ``depth`` times, then a last Linear: (N, d_in) -> (N, d_out).

    Parameter names are ``{prefix}.l0.W``, ..., ``{prefix}.out.W`` (and ``.b``).

    Parameters
    ----------
    prefix : str
    d_in, width, d_out : int
    depth : int
        Number of hidden layers (activations), >= 1.
    activation : {"silu", "relu", "gelu"}
    """

    def __init__(self, prefix: str, d_in: int, width: int, depth: int, d_out: int, activation: str = "relu"):
        self.d_in, self.width = check_int(d_in, "d_in"), check_int(width, "width")
        self.depth, self.d_out = check_int(depth, "depth"), check_int(d_out, "d_out")
        self.activation = activation
        self.layers = []
        d = self.d_in
        for l in range(self.depth):
            self.layers += [Linear(f"{prefix}.l{l}", d, self.width), make_activation(activation)]
            d = self.width
        self.layers.append(Linear(f"{prefix}.out", d, self.d_out))

    def specs(self):
        return [s for layer in self.layers for s in layer.specs()]

    def forward(self, p, x):
        caches = []
        for layer in self.layers:
            x, c = layer.forward(p, x)
            caches.append(c)
        return x, caches  # (N, d_out)

    def backward(self, p, g, cache, dy, need_dx=True):
        """Add parameter gradients into ``g`` (unless None); return dL/dx (None unless ``need_dx``)."""
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(p, g, cache[i], dy, need_dx=need_dx or i > 0)
        return dy


# ------------------------------------------------------------- cross-entropy
def log_softmax(logits: np.ndarray) -> np.ndarray:
    r""":math:`\ell_k - m - \log\sum_j e^{\ell_j - m}` along the last axis, :math:`m=\max_j\ell_j`.

    Every exponent is <= 0, so nothing overflows; terms far below the maximum
    underflow to exactly 0, which is their correct contribution.
    """
    z = logits - logits.max(axis=-1, keepdims=True)  # (N, K), max 0 per row
    z -= np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return z


def cross_entropy(logits: np.ndarray, labels: np.ndarray):
    r"""Mean softmax cross-entropy and its gradient with respect to the logits.

    .. math::

        L=-\frac1N\sum_{n=1}^N\log\operatorname{softmax}(\ell_n)_{y_n},\qquad
        \frac{\partial L}{\partial\ell_{n}}=\frac{\operatorname{softmax}(\ell_n)-e_{y_n}}{N}.

    Parameters
    ----------
    logits : array, shape (N, K), finite
    labels : int array, shape (N,), values in 0..K-1

    Returns
    -------
    (float, array of shape (N, K) in the logits' dtype)
    """
    n, k = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be ints of shape ({n},), got dtype {labels.dtype} and shape {labels.shape}")
    if n and not (labels.min() >= 0 and labels.max() < k):
        raise ValueError(f"labels must lie in 0..{k - 1}, got values from {labels.min()} to {labels.max()}")
    if n == 0:  # the mean over no examples: NaN, as torch's; nothing to differentiate
        return math.nan, np.zeros_like(logits)
    rows = np.arange(n)
    logp = log_softmax(logits)  # (N, K)
    loss = -float(np.sum(logp[rows, labels], dtype=np.float64)) / n
    dlogits = np.exp(logp)  # softmax
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return loss, dlogits


# ------------------------------------------------------------------ classifier
class Classifier:
    """MLP classifier: examples of shape ``input_shape`` are flattened and mapped to ``n_classes`` logits.

    Parameters
    ----------
    input_shape : int or tuple
        Shape of one example, e.g. ``(1, 8, 8)``.
    n_classes : int, >= 2
    width : int
    depth : int
        Hidden layers, >= 1 (``depth=2`` on 8x8 images: 64 -> 128 -> 128 -> 10).
    activation : {"silu", "relu", "gelu"}
    """

    def __init__(self, input_shape, n_classes: int, width: int = 128, depth: int = 2, activation: str = "silu"):
        shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
        self.input_shape = tuple(check_int(s, "input_shape") for s in shape)
        self.dim = math.prod(self.input_shape)
        self.n_classes = check_int(n_classes, "n_classes")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
        self.width, self.depth, self.activation = int(width), int(depth), activation
        self.net = DenseStack("clf", self.dim, width, depth, self.n_classes, activation)
        self.layout = Layout(tuple(self.specs()))

    def specs(self):
        return self.net.specs()

    def init(self, rng=None, dtype=np.float32) -> Params:
        """Fresh parameters (PyTorch's default uniform fan-in init) drawn from ``rng``."""
        return Params.init(self.layout, rng, dtype)

    def forward(self, p, x):
        """Logits (N, n_classes) of x (N, *input_shape), and the cache."""
        n = x.shape[0]
        return self.net.forward(p, x.reshape(n, self.dim))

    def backward(self, p, g, cache, dlogits, need_dx=False):
        """Add parameter gradients into ``g``; return dL/dx shaped (N, *input_shape) when ``need_dx``."""
        dx = self.net.backward(p, g, cache, dlogits, need_dx=need_dx)
        return None if dx is None else dx.reshape((dx.shape[0],) + self.input_shape)

    def loss(self, p, x, labels, grads=None) -> float:
        """Mean cross-entropy of ``(x, labels)``; gradients are added into ``grads`` when given."""
        logits, cache = self.forward(p, x)
        loss, dlogits = cross_entropy(logits, labels)
        if grads is not None:
            self.backward(p, grads, cache, dlogits)
        return loss

    def config(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "width": self.width,
            "depth": self.depth,
            "activation": self.activation,
        }

    def __repr__(self):
        return f"Classifier({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


# ------------------------------------------------------------------ validation
def _check_inputs(x, name, input_shape=None):
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {x.shape}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, input_shape))}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(x)))} non-finite value(s)")
    return x


def _check_labels(labels, n, n_classes, name="labels"):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per example), got {labels.shape}")
    if n and (labels.min() < 0 or (n_classes is not None and labels.max() >= n_classes)):
        hi = "n_classes - 1" if n_classes is None else str(n_classes - 1)
        raise ValueError(f"{name} must lie in 0..{hi}, got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


# --------------------------------------------------------------------- training
def train_classifier(
    images,
    labels,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    *,
    n_classes: int | None = None,
    width: int = 128,
    depth: int = 2,
    activation: str = "silu",
    weight_decay: float = 0.0,
    dtype=np.float32,
    progress=None,
):
    """Train a :class:`Classifier` by Adam on minibatch cross-entropy.

    Step k draws its batch (without replacement) from
    ``np.random.default_rng([seed, 2, k])`` and the initial weights come from
    ``[seed, 1, 0]``, so a run is a pure function of its arguments.

    Parameters
    ----------
    images : array, shape (N, *input_shape), finite
    labels : int array, shape (N,), values in 0..n_classes-1
    steps, batch_size : int, batch_size <= N
    lr : float
    seed : int
    n_classes : int or None
        None takes ``labels.max() + 1``.
    width, depth, activation : see :class:`Classifier`
    weight_decay : float
        AdamW's decoupled decay (0: Adam).
    dtype : float32 or float64
    progress : bool or None
        Progress line on stderr; None shows it only when stderr is a terminal.

    Returns
    -------
    (Classifier, Params, dict)
        The history dict holds ``"loss"`` (one minibatch loss per step),
        ``"time_s"``, ``"seed"`` and ``"steps"``.

    Raises
    ------
    RuntimeError
        If the loss becomes non-finite (naming the step).
    """
    x = _check_inputs(images, "images")
    n = x.shape[0]
    if n_classes is None:
        y = _check_labels(labels, n, None)
        n_classes = max(int(y.max()) + 1, 2)
    y = _check_labels(labels, n, check_int(n_classes, "n_classes"))
    steps, batch_size = check_int(steps, "steps"), check_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size must be <= the number of examples ({n}), got {batch_size}")
    seed, lr, dtype = _seed(seed), _lr(lr), _float_dtype(dtype)
    clf = Classifier(x.shape[1:], n_classes, width, depth, activation)
    x = x.astype(dtype, copy=False)
    params = clf.init(np.random.default_rng([seed, _TAG_INIT, 0]), dtype)
    grads = params.zeros_like()
    opt = Adam(params, lr=lr, weight_decay=weight_decay)
    losses = np.empty(steps)
    bar = ProgressLine(steps, "train_classifier", enabled=progress)
    t0 = time.perf_counter()
    try:
        for k in range(steps):
            idx = np.random.default_rng([seed, _TAG_STEP, k]).choice(n, batch_size, replace=False)
            grads.flat[...] = 0.0
            losses[k] = clf.loss(params, x[idx], y[idx], grads)
            if not math.isfinite(losses[k]):
                raise RuntimeError(f"train_classifier: the loss is {losses[k]} at step {k} (lower lr?)")
            opt.step(params, grads)
            bar.update(k + 1, loss=float(losses[k]))
    finally:
        bar.close()
    history = {"loss": losses, "time_s": time.perf_counter() - t0, "seed": seed, "steps": steps}
    return clf, params, history


def predict(classifier: Classifier, params: Params, x, batch: int = 4096) -> np.ndarray:
    """Most probable class of each example of x (N, *input_shape) -> int64 (N,)."""
    x = _check_inputs(x, "x", classifier.input_shape).astype(params.dtype, copy=False)
    out = np.empty(x.shape[0], dtype=np.int64)
    for i in range(0, x.shape[0], batch):
        out[i : i + batch] = np.argmax(classifier.forward(params, x[i : i + batch])[0], axis=1)
    return out


def per_class_accuracy(pred, labels, n_classes: int) -> np.ndarray:
    r"""Accuracy within each true class: :math:`a_k=\#\{n: y_n=k, \hat y_n=k\}/\#\{n: y_n=k\}`.

    Classes absent from ``labels`` get NaN.

    Returns
    -------
    float64 array, shape (n_classes,)
    """
    n_classes = check_int(n_classes, "n_classes")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    labels = _check_labels(labels, labels.shape[0], n_classes)
    pred = _check_labels(pred, labels.shape[0], None, name="pred")
    total = np.bincount(labels, minlength=n_classes)
    right = np.bincount(labels[pred == labels], minlength=n_classes)
    acc = np.full(n_classes, np.nan)
    np.divide(right, total, out=acc, where=total > 0)
    return acc
