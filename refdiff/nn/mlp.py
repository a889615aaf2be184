r"""A time-conditioned MLP (optionally class-conditioned) for low-dimensional data.

.. math::

    h_0 &= \phi\big([x, e(t)]\,W_{in} + b_{in} + E_y\big) \\
    h_{l} &= h_{l-1} + \phi(h_{l-1} W_l + b_l), \quad l = 1..\text{depth}-1 \\
    f_\theta(x, t, y) &= h_{\text{depth}-1} W_{out} + b_{out}

with :math:`e(t)` the sinusoidal features of ``t * time_scale``, :math:`E_y`
the class embedding (null row for "no class"), :math:`\phi` the activation
(SiLU by default). Data of any trailing shape are flattened to D features.
The residual hidden layers keep deeper networks trainable with Adam's default
step; ``benchmarks/mlp_step.py`` builds the same network in PyTorch.

Backends. With the SiLU activation the products, the bias add, the activation
and the residual add of each layer run as the steps of :mod:`refdiff.nn.fused`
(the same arithmetic as :class:`~refdiff.nn.layers.Linear` followed by
:class:`~refdiff.nn.layers.SiLU`), on the backend named by the attribute
``backend``: ``"numpy"`` (default), ``"numba"`` (their Numba twins, the
``fast`` extra) or ``"auto"`` (Numba when installed and N * width >=
:data:`refdiff.nn.fused.AUTO_MIN_SIZE`). The backend is a run-time choice,
not part of the architecture: :meth:`MLP.config` leaves it out, so it does not
change checkpoints, and it may be changed on a live network
(``net.backend = "numba"``). ReLU and GELU networks always run on NumPy.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import check_int
from . import fused
from .layers import ClassEmbedding, Linear, make_activation
from .network import Network

__all__ = ["MLP"]


class MLP(Network):
    """Time-conditioned residual MLP ``f(x, t[, y])`` with the output shaped like x.

    Parameters
    ----------
    data_shape : int or tuple
        Shape of one example (``2`` for points in the plane); flattened to D.
    width : int
        Hidden width.
    depth : int
        Number of hidden layers (activations), >= 1.
    emb_dim : int
        Size of the sinusoidal time features (even).
    time_scale : float
        The features see ``t * time_scale``; use 1 for discrete steps 1..T and
        1000 for continuous t in [0, 1] (the trainers set it).
    n_classes : int or None
        Number of classes for a conditional network (adds a null class).
    activation : {"silu", "relu", "gelu"}
    backend : {"numpy", "numba", "auto"}
        Where the products and the elementwise work of a SiLU network run
        (see the module docstring); not stored in :meth:`config` or
        checkpoints.
    """

    kind = "mlp"

    def __init__(self, data_shape=2, width=128, depth=3, emb_dim=32, time_scale=1.0, n_classes=None, activation="silu",
                 backend="numpy"):
        shape = (data_shape,) if isinstance(data_shape, (int, np.integer)) else tuple(data_shape)
        self.data_shape = tuple(check_int(s, "data_shape") for s in shape)
        self.dim = math.prod(self.data_shape)
        self.width = check_int(width, "width")
        self.depth = check_int(depth, "depth")
        self._set_time_features(emb_dim, time_scale)
        self.n_classes = None if n_classes is None else check_int(n_classes, "n_classes")
        self.activation = activation
        self.act = make_activation(activation)
        self.inp = Linear("in", self.dim + self.emb_dim, self.width)
        self.hidden = [Linear(f"h{l}", self.width, self.width) for l in range(1, self.depth)]
        self.out = Linear("out", self.width, self.dim)
        self.cls = None if self.n_classes is None else ClassEmbedding("cls", self.n_classes, self.width)
        self.backend = backend

    @property
    def backend(self) -> str:
        """``"numpy"``, ``"numba"`` or ``"auto"``: where a SiLU network's products and elementwise work run."""
        return self._backend

    @backend.setter
    def backend(self, value):
        fused.check_backend(value)
        if value == "numba" and self.activation != "silu":
            raise ValueError(f'backend="numba" needs activation="silu" (fused twins exist for it only), '
                             f"got activation={self.activation!r}")
        self._backend = value

    def config(self) -> dict:
        return {
            "data_shape": list(self.data_shape),
            "width": self.width,
            "depth": self.depth,
            "emb_dim": self.emb_dim,
            "time_scale": self.time_scale,
            "n_classes": self.n_classes,
            "activation": self.activation,
        }

    def specs(self):
        layers = [self.inp, *self.hidden, self.out] + ([self.cls] if self.cls else [])
        return [s for layer in layers for s in layer.specs()]

    def forward(self, p, x, t, y=None):
        x, t, y = self.inputs(p, x, t, y)
        n = x.shape[0]
        if self.activation == "silu":
            ops = fused.elementwise(self.backend, n * self.width)
            e = ops.sinusoidal_embedding(t * self.time_scale, self.emb_dim, dtype=p.dtype)  # self.time_features
            return self._forward_fused(ops, p, np.concatenate([x.reshape(n, self.dim), e], axis=1), y, x.shape)
        z = np.concatenate([x.reshape(n, self.dim), self.time_features(t, p.dtype)], axis=1)  # (N, D + E)
        a, c_in = self.inp.forward(p, z)  # (N, W)
        if self.cls is not None:
            a += self.cls.forward(p, y)[0]
        h, c_act = self.act.forward(p, a)
        caches = [(c_in, c_act)]
        for layer in self.hidden:
            a, c_lin = layer.forward(p, h)
            r, c_act = self.act.forward(p, a)
            h = h + r
            caches.append((c_lin, c_act))
        out, c_out = self.out.forward(p, h)  # (N, D)
        return out.reshape(x.shape), (x.shape, y, caches, c_out, None)

    def _forward_fused(self, ops, p, z, y, shape):
        """Linear + bias + SiLU (+ residual) per layer with ``ops`` (refdiff.nn.fused or its Numba twin)."""
        a = ops.matmul(z, p[self.inp.W])  # (N, W)
        b = p[self.inp.b]
        if self.cls is not None:
            a += b  # (z W + b) + E_y, the order of the layer path
            a += self.cls.forward(p, y)[0]
            b = None
        h, s = ops.bias_silu_forward(a, b)
        caches = [(z, a, s)]  # (layer input, pre-activation, sigmoid)
        for layer in self.hidden:
            a = ops.matmul(h, p[layer.W])  # (N, W)
            h_next, s = ops.bias_silu_forward(a, p[layer.b], residual=h)
            caches.append((h, a, s))
            h = h_next
        out = ops.matmul(h, p[self.out.W])  # (N, D): self.out.forward with the products of ops
        out += p[self.out.b]
        return out.reshape(shape), (shape, y, caches, h, ops)

    def backward(self, p, g, cache, dout, need_dx=False):
        shape, y, caches, c_out, ops = cache
        n = shape[0]
        if ops is not None:
            return self._backward_fused(ops, p, g, caches, c_out, dout.reshape(n, self.dim), y, shape, need_dx)
        dh = self.out.backward(p, g, c_out, dout.reshape(n, self.dim))  # (N, W)
        for layer, (c_lin, c_act) in zip(reversed(self.hidden), reversed(caches[1:])):
            da = self.act.backward(p, g, c_act, dh)
            dh += layer.backward(p, g, c_lin, da)  # residual: the skip passes dh through
        c_in, c_act = caches[0]
        da = self.act.backward(p, g, c_act, dh)
        if self.cls is not None:
            self.cls.backward(p, g, y, da)
        dz = self.inp.backward(p, g, c_in, da, need_dx=need_dx)
        return None if dz is None else dz[:, : self.dim].reshape(shape)

    def _backward_fused(self, ops, p, g, caches, h, dout, y, shape, need_dx):
        if g is not None:  # self.out.backward with the products of ops
            g[self.out.W] += ops.matmul(h.T, dout)  # (W, D)
            g[self.out.b] += np.ones(dout.shape[0], dtype=dout.dtype) @ dout
        dh = ops.matmul(dout, p[self.out.W].T)  # (N, W)
        dx = None  # gradient of the layer above with respect to its input, not yet added into dh
        for layer, (h_in, a, s) in zip(reversed(self.hidden), reversed(caches[1:])):
            # dh += dx (the residual passes dh through), then da through bias + SiLU
            da = ops.bias_silu_backward(dh, a, s, None if g is None else g[layer.b], dh_add=dx)
            if g is not None:
                g[layer.W] += ops.matmul(h_in.T, da)  # (W, W)
            dx = ops.matmul(da, p[layer.W].T)  # (N, W)
        z, a, s = caches[0]
        da = ops.bias_silu_backward(dh, a, s, None if g is None else g[self.inp.b], dh_add=dx)
        if g is not None:
            if self.cls is not None:
                self.cls.backward(p, g, y, da)
            g[self.inp.W] += ops.matmul(z.T, da)  # (D + E, W)
        if not need_dx:
            return None
        return ops.matmul(da, p[self.inp.W].T)[:, : self.dim].reshape(shape)  # (N, D + E) -> the data columns
