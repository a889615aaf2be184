r"""Dense layers with hand-written backward passes.

Every layer is functional (CS231n's scaffold): it holds only its
configuration and the names of its parameters, never activations.

``specs()``
    the :class:`~refdiff.nn.params.ParamSpec` of each parameter it owns;
``forward(p, x) -> (y, cache)``
    ``p`` maps parameter names to arrays (a :class:`~refdiff.nn.params.Params`);
    ``cache`` is what the backward pass needs, returned to the caller;
``backward(p, g, cache, dy, need_dx=True) -> dx``
    adds the parameter gradients into ``g`` (same names as ``p``; skipped when
    ``g`` is None, as in a vector-Jacobian product with respect to the input)
    and returns the input gradient (None when ``need_dx`` is False, which
    saves the first layer's largest product during training).

==================  ==========================================================  =============================
layer               forward                                                     backward (input gradient)
==================  ==========================================================  =============================
``Linear``          :math:`y = xW + b`, ``W`` of shape (in, out)                 :math:`dx = dy\,W^T`, :math:`dW = x^T dy`, :math:`db=\sum_n dy`
``SiLU``            :math:`y = x\,\sigma(x)`                                      :math:`dx = dy\,(\sigma(x) + y(1 - \sigma(x)))`
``ReLU``            :math:`y = \max(x, 0)`                                        :math:`dx = dy\,[x > 0]`
``GELU``            :math:`\tfrac12x(1+\tanh u)`, :math:`u=c(x+0.044715x^3)`      product rule; tanh form as
                                                                                PyTorch ``approximate="tanh"``
``ClassEmbedding``  row ``y`` of a (classes + 1, dim) table; row ``classes``     :math:`dE_{k} = \sum_{n:y_n=k} dy_n`
                    is the null class of classifier-free guidance
==================  ==========================================================  =============================

:func:`sinusoidal_embedding` (Vaswani et al. 2017; Ho et al. 2020, appendix B)
has no parameters and is never differentiated (time is not an input we take
gradients for).
"""

from __future__ import annotations

import math

import numpy as np

from .params import ParamSpec

__all__ = [
    "Linear",
    "SiLU",
    "ReLU",
    "GELU",
    "ACTIVATIONS",
    "make_activation",
    "ClassEmbedding",
    "sinusoidal_embedding",
    "sinusoidal_frequencies",
    "sigmoid",
]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """:math:`1/(1+e^{-x})` in x's dtype, a new array.

    Computed as :math:`\tfrac12(1+\tanh(x/2))`: the same function, bounded
    for every x (``exp(-x)`` overflows below -88 in float32) and about a
    third faster than exp plus reciprocal in NumPy's float32 loops.
    """
    s = np.multiply(x, 0.5)
    np.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


class Linear:
    """Affine map :math:`y = xW + b` on (N, in) rows.

    Weights and bias start :math:`U(\\pm 1/\\sqrt{\\text{in}})` (PyTorch's
    default), or at zero with ``zero_init=True`` (common for a network's last
    layer, which then starts by predicting 0).
    """

    def __init__(self, name: str, d_in: int, d_out: int, *, bias: bool = True, zero_init: bool = False):
        self.name, self.d_in, self.d_out, self.bias = name, int(d_in), int(d_out), bool(bias)
        self.W, self.b = f"{name}.W", f"{name}.b"
        self.zero_init = bool(zero_init)

    def specs(self):
        init = "zeros" if self.zero_init else "uniform_fan_in"
        out = [ParamSpec(self.W, (self.d_in, self.d_out), init, fan_in=self.d_in)]
        if self.bias:
            out.append(ParamSpec(self.b, (self.d_out,), init, fan_in=self.d_in))
        return out

    def forward(self, p, x):
        y = x @ p[self.W]  # (N, out)
        if self.bias:
            y += p[self.b]
        return y, x

    def backward(self, p, g, cache, dy, need_dx=True):
        x = cache
        if g is not None:
            g[self.W] += x.T @ dy  # (in, out)
            if self.bias:
                # a GEMV with ones: 2-3x faster than dy.sum(axis=0) over the rows
                g[self.b] += np.ones(dy.shape[0], dtype=dy.dtype) @ dy
        return dy @ p[self.W].T if need_dx else None


class SiLU:
    """:math:`x\\,\\sigma(x)` (Elfwing et al. 2018; "swish")."""

    def specs(self):
        return []

    def forward(self, p, x):
        s = sigmoid(x)
        y = x * s
        return y, (s, y)

    def backward(self, p, g, cache, dy, need_dx=True):
        s, y = cache
        # d/dx [x s] = s + x s (1 - s) = s + y (1 - s): y + s (1 - y) cancelled to 0 once s rounds to 1 and y = x
        # is large (x >= 2**24 in float32), where the derivative is 1
        dx = 1.0 - s
        dx *= y
        dx += s
        dx *= dy
        return dx


class ReLU:
    """:math:`\\max(x, 0)`; the derivative at 0 is taken as 0."""

    def specs(self):
        return []

    def forward(self, p, x):
        mask = x > 0
        return np.maximum(x, 0), mask  # x * mask was NaN at x = -inf (-inf * 0)

    def backward(self, p, g, cache, dy, need_dx=True):
        return dy * cache


_GELU_C = math.sqrt(2.0 / math.pi)


class GELU:
    """GELU in its tanh form (Hendrycks & Gimpel 2016, eq. for the fast
    approximation; PyTorch ``GELU(approximate="tanh")``)."""

    def specs(self):
        return []

    def forward(self, p, x):
        u = _GELU_C * (x + 0.044715 * x**3)
        th = np.tanh(u)
        y = 0.5 * x * (1.0 + th)
        return y, (x, th)

    def backward(self, p, g, cache, dy, need_dx=True):
        x, th = cache
        du = _GELU_C * (1.0 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)


#: Activation names accepted by the models.
ACTIVATIONS = {"silu": SiLU, "relu": ReLU, "gelu": GELU}


def make_activation(name: str):
    """A new activation layer called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ClassEmbedding:
    """A learned vector per class plus one for "no class" (index ``n_classes``).

    Classifier-free guidance (Ho & Salimans 2022) trains one network on both
    the conditional and the unconditional task by replacing the label with
    the null class a fraction of the time; the null row is that class.
    Rows start :math:`\\mathcal N(0, \\text{scale}^2)`.
    """

    def __init__(self, name: str, n_classes: int, dim: int, scale: float = 1.0):
        self.name, self.n_classes, self.dim = name, int(n_classes), int(dim)
        self.E = f"{name}.E"
        self.scale = float(scale)

    @property
    def null(self) -> int:
        return self.n_classes

    def specs(self):
        return [ParamSpec(self.E, (self.n_classes + 1, self.dim), "normal", scale=self.scale)]

    def forward(self, p, y):
        return p[self.E][y], y  # (N, dim)

    def backward(self, p, g, cache, dy, need_dx=False):
        if g is not None:
            np.add.at(g[self.E], cache, dy)
        return None


def sinusoidal_frequencies(dim: int, max_period: float = 10000.0) -> np.ndarray:
    r""":math:`\omega_k = \text{max\_period}^{-k/(dim/2)}`, :math:`k < dim/2`, float64: the frequencies of
    :func:`sinusoidal_embedding` (and of its Numba twin, which must form the same phases)."""
    half = dim // 2
    return np.exp(-math.log(max_period) * np.arange(half) / half)


def sinusoidal_embedding(u, dim: int, max_period: float = 10000.0, dtype=np.float64) -> np.ndarray:
    r"""Sinusoidal features of the scalar times ``u`` (shape (N,)) -> (N, dim).

    :math:`[\cos(u\,\omega_k), \sin(u\,\omega_k)]_{k<dim/2}`,
    :math:`\omega_k = \text{max\_period}^{-k/(dim/2)}`: periods from
    :math:`2\pi` up to :math:`2\pi\,\text{max\_period}^{1-2/dim}` (k stops
    short of dim/2: 2 pi 5623 for dim 32), so ``u`` should span
    a range of order a thousand (discrete steps 1..T, or continuous t scaled
    by 1000). The phase :math:`u\,\omega_k` reaches 1000, where a float32
    product would lose its last digits, so it is formed in float64. For a
    float32 result it is then reduced to :math:`[-\pi, \pi]` (still in
    float64) and only the cosine and sine run in float32, five times faster
    than float64 ones. Rounding the reduced phase to float32 moves it by up
    to 1.2e-7 (half an ulp of pi), so the features are within 2e-7 of the
    float64 ones (absolute; 1.8e-7 measured): near a zero of the cosine or
    sine that is many ulps of the small value. The Numba twin
    (``refdiff.kernels.mlp_numba``) rounds the float64 values instead.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1:
        raise ValueError(f"u must have shape (N,), got shape {u.shape}")
    arg = np.multiply.outer(u, sinusoidal_frequencies(dim, max_period))  # (N, dim / 2)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        arg -= (2 * np.pi) * np.rint(arg * (1 / (2 * np.pi)))
        arg = arg.astype(np.float32)
    out = np.empty((arg.shape[0], dim), dtype=arg.dtype)
    half = dim // 2
    np.cos(arg, out=out[:, :half])
    np.sin(arg, out=out[:, half:])
    return out.astype(dtype, copy=False)
