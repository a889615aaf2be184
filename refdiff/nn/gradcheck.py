r"""Central-difference checks of hand-written backward passes, in float64.

For a random cotangent :math:`w` the scalar :math:`L(\theta, x) = \sum w \odot f(\theta, x)`
has gradient :math:`\partial L/\partial\theta = w^T J_\theta` (what ``backward``
computes with ``dout = w``). Each checked entry is compared with

.. math:: \frac{L(\theta + h e_i) - L(\theta - h e_i)}{2h},

whose error is :math:`O(h^2)` truncation plus :math:`O(\epsilon/h)`
round-off: about 1e-10 relative at :math:`h = 10^{-6}` in float64. The
result per tensor is the relative error
:math:`\|g_{analytic} - g_{numeric}\|_2 / \max(\|g_{analytic}\|_2, \|g_{numeric}\|_2)`
over the checked entries (an elementwise ratio is meaningless where both are
near 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import as_rng
from .params import Layout, Params

__all__ = ["GradCheck", "relative_error", "numerical_gradient", "check_layer", "check_network"]


def relative_error(a, b) -> float:
    """:math:`\\|a-b\\|_2/\\max(\\|a\\|_2,\\|b\\|_2)`; 0 when both are 0."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(a - b) / scale)


@dataclass
class GradCheck:
    """Relative error per checked tensor (parameter names, and ``"x"`` for the input)."""

    errors: dict
    checked: dict

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def passed(self, tol: float = 1e-6) -> bool:
        return self.max_error < tol

    def __repr__(self):
        worst = max(self.errors, key=self.errors.get) if self.errors else None
        return f"GradCheck(max_error={self.max_error:.2e} at {worst!r}, tensors={len(self.errors)})"


def _entries(size, max_entries, gen):
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(gen.choice(size, max_entries, replace=False))


def numerical_gradient(loss, target, entries=None, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``loss()`` in the flat ``entries`` of ``target`` (all by default).

    ``target`` is an array that ``loss`` reads (a parameter view, an input);
    each entry is moved by :math:`\\pm h` in place and restored. Returns the
    derivatives in the order of ``entries``, or shaped like ``target`` when
    all entries are taken.
    """
    flat = target.reshape(-1)
    if not np.shares_memory(flat, target):
        raise ValueError("target must be contiguous: its entries are perturbed in place")
    idx = np.arange(flat.size) if entries is None else entries
    numeric = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        numeric[j] = (up - down) / (2.0 * h)
    return numeric.reshape(target.shape) if entries is None else numeric


def _compare(loss, analytic, target, entries, h):
    numeric = numerical_gradient(loss, target, entries, h)
    return relative_error(analytic.reshape(-1)[entries], numeric)


def _check(forward, backward, params, x, rng, h, max_entries, check_x):
    gen = as_rng(rng)
    out = forward(params, x)
    w = gen.standard_normal(out.shape)

    def loss():
        return float(np.sum(w * forward(params, x)))

    grads = params.zeros_like()
    dx = backward(params, grads, w)
    errors, checked = {}, {}
    for name, view in params.items():
        entries = _entries(view.size, max_entries, gen)
        errors[name] = _compare(loss, grads[name], view, entries, h)
        checked[name] = len(entries)
    if check_x:
        entries = _entries(x.size, max_entries, gen)
        errors["x"] = _compare(loss, dx, x, entries, h)
        checked["x"] = len(entries)
    return GradCheck(errors, checked)


def _float64_params(layout: Layout, gen):
    # Every entry random (zero-initialised layers included), so no gradient
    # is checked only at a point where it happens to vanish.
    return Params(layout, 0.5 * gen.standard_normal(layout.size))


def check_layer(layer, x, rng=0, h: float = 1e-6, max_entries=None) -> GradCheck:
    """Check ``layer.backward`` against central differences at input ``x`` (float64).

    Parameters get random N(0, 0.25) values; ``x`` is copied to float64.
    ``max_entries`` limits the entries checked per tensor (random subset).
    """
    gen = as_rng(rng)
    params = _float64_params(Layout(tuple(layer.specs())), gen)
    x = np.array(x, dtype=np.float64)
    cache = {}

    def forward(p, xx):
        y, cache["c"] = layer.forward(p, xx)
        return y

    def backward(p, g, w):
        forward(p, x)
        return layer.backward(p, g, cache["c"], w, need_dx=True)

    return _check(forward, backward, params, x, gen, h, max_entries, check_x=True)


def check_network(network, x, t, y=None, rng=0, h: float = 1e-6, max_entries=None, params=None) -> GradCheck:
    """Check a :class:`~refdiff.nn.network.Network`'s backward pass (parameters and input) in float64."""
    gen = as_rng(rng)
    if params is None:
        params = _float64_params(network.layout, gen)
    else:
        params = params.astype(np.float64)
    x = np.array(x, dtype=np.float64)
    cache = {}

    def forward(p, xx):
        out, cache["c"] = network.forward(p, xx, t, y)
        return out

    def backward(p, g, w):
        forward(p, x)
        return network.backward(p, g, cache["c"], w, need_dx=True)

    return _check(forward, backward, params, x, gen, h, max_entries, check_x=True)
