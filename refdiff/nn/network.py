"""What every refdiff network shares: inputs, time features, the bound model, the VJP.

A network ``f_theta(x, t[, y])`` is a :class:`Network` subclass that defines

``specs()``
    its parameters;
``forward(p, x, t, y=None) -> (out, cache)``
    ``x`` of shape (N, *data_shape), ``t`` a scalar or (N,) times, ``y`` (N,)
    integer labels or None; ``out`` has x's shape;
``backward(p, g, cache, dout, need_dx=False) -> dx``
    parameter gradients added into ``g`` (skipped when ``g`` is None) and the
    input gradient when ``need_dx``.

Everything else is here: checking inputs (:meth:`Network.inputs`), the time
features (:meth:`Network.time_features`: sinusoidal features of
``t * time_scale``), :meth:`Network.apply`, the vector-Jacobian product
:meth:`Network.vjp` that :mod:`refdiff.likelihood` needs, and
:meth:`Network.bind`, which turns ``(network, params)`` into the ``f(x, t)``
callable every sampler takes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import check_finite
from .layers import sinusoidal_embedding
from .params import Layout, Params

__all__ = ["Network", "BoundNetwork"]


class Network:
    """Base class of refdiff's networks (see the module docstring).

    Subclasses set ``data_shape`` (the shape of one example), ``n_classes``
    (None for an unconditional network), ``time_scale``, ``emb_dim`` and
    ``kind`` (the architecture name stored in checkpoints), and implement
    ``specs``, ``forward``, ``backward`` and ``config``.
    """

    kind = "network"
    data_shape: tuple = ()
    n_classes: int | None = None
    time_scale: float = 1.0
    emb_dim: int = 32

    @property
    def layout(self) -> Layout:
        if getattr(self, "_layout", None) is None:
            self._layout = Layout(tuple(self.specs()))
        return self._layout

    def init(self, rng=None, dtype=np.float32) -> Params:
        """Fresh parameters drawn from ``rng`` (SPEC 7 seed)."""
        return Params.init(self.layout, rng, dtype)

    @property
    def n_params(self) -> int:
        return self.layout.size

    @property
    def null_class(self):
        """The label that means "no class" (classifier-free guidance), or None."""
        return None if self.n_classes is None else self.n_classes

    # --- inputs --------------------------------------------------------------

    def inputs(self, p: Params, x, t, y=None):
        """Check ``(x, t, y)`` against this network; return them as arrays in ``p``'s dtype.

        ``t`` may be a scalar (every example at one time) or one time per
        example; ``y`` None means the null class for a conditional network.
        """
        if not isinstance(p, Params) or (p.layout is not self.layout and p.layout != self.layout):
            raise TypeError(f"params must be this {self.kind}'s Params (from .init() or a checkpoint)")
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
        if x.ndim != 1 + len(self.data_shape) or tuple(x.shape[1:]) != tuple(self.data_shape):
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.data_shape))}) for this {self.kind}, "
                f"got {tuple(x.shape)}"
            )
        n = x.shape[0]
        x = check_finite(x.astype(p.dtype, copy=False), "x")
        t = np.asarray(t, dtype=np.float64)
        if t.ndim == 0:
            t = np.full(n, float(t))
        elif t.shape != (n,):
            raise ValueError(f"t must be a scalar or have shape ({n},), got shape {t.shape}")
        check_finite(t, "t")
        if self.n_classes is None:
            if y is not None:
                raise ValueError(f"this {self.kind} is unconditional (n_classes=None); got labels y")
            return x, t, None
        if y is None or isinstance(y, numbers.Integral):
            y = np.full(n, self.null_class if y is None else int(y), dtype=np.int64)
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or y.shape != (n,):
            raise ValueError(f"y must be {n} integer labels, got dtype {y.dtype} and shape {y.shape}")
        if n and (y.min() < 0 or y.max() > self.n_classes):
            raise ValueError(
                f"labels must lie in 0..{self.n_classes} ({self.n_classes} = no class), got [{y.min()}, {y.max()}]"
            )
        return x, t, y.astype(np.int64, copy=False)

    def _set_time_features(self, emb_dim, time_scale) -> None:
        """Check and set ``emb_dim`` (even, >= 2) and ``time_scale`` (finite, > 0)."""
        from ..backend import check_int

        emb_dim = check_int(emb_dim, "emb_dim")
        if emb_dim % 2:
            raise ValueError(f"emb_dim must be even, got {emb_dim}")
        if isinstance(time_scale, bool) or not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale)
                                                and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        self.emb_dim, self.time_scale = emb_dim, float(time_scale)

    def time_features(self, t, dtype):
        """Sinusoidal features of ``t * time_scale`` (N, emb_dim)."""
        return sinusoidal_embedding(t * self.time_scale, self.emb_dim, dtype=dtype)

    # --- derived calls ---------------------------------------------------------

    def apply(self, p: Params, x, t, y=None):
        """``f_theta(x, t, y)`` without keeping the cache."""
        return self.forward(p, x, t, y)[0]

    def vjp(self, p: Params, x, t, v, y=None):
        r""":math:`v^T\,\partial f_\theta(x, t, y)/\partial x`, shape of x (no parameter gradients)."""
        out, cache = self.forward(p, x, t, y)
        v = np.asarray(v, dtype=out.dtype)
        if v.shape != out.shape:
            raise ValueError(f"v must have the output's shape {out.shape}, got {v.shape}")
        return self.backward(p, None, cache, v, need_dx=True)

    def bind(self, params: Params, y=None, out_dtype=None) -> "BoundNetwork":
        """The callable ``f(x, t)`` of these parameters (labels ``y`` fixed), for samplers."""
        return BoundNetwork(self, params, y, out_dtype)

    def config(self) -> dict:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"


def _result_dtype(x, out):
    """x's dtype where it is a float one, else the network's (an integer x holds no network output)."""
    dt = np.asarray(x).dtype
    return dt if dt.kind == "f" else out.dtype


class BoundNetwork:
    """``f(x, t) = network.apply(params, x, t, y)``, returning x's dtype (the parameters' for an integer x).

    The form every sampler and :mod:`refdiff.likelihood` takes as a model.
    ``y`` is fixed at binding (an int, one label per example, or None for
    the null class); :meth:`vjp` exposes the input VJP for likelihoods.
    """

    def __init__(self, network: Network, params: Params, y=None, out_dtype=None):
        self.network, self.params, self.y, self.out_dtype = network, params, y, out_dtype

    def __call__(self, x, t):
        out = self.network.apply(self.params, x, t, self.y)
        return out.astype(self.out_dtype or _result_dtype(x, out), copy=False)

    def vjp(self, x, t, v):
        dx = self.network.vjp(self.params, x, t, v, self.y)
        return dx.astype(self.out_dtype or _result_dtype(x, dx), copy=False)

    def with_labels(self, y) -> "BoundNetwork":
        return BoundNetwork(self.network, self.params, y, self.out_dtype)
