"""Parameters in one flat buffer, seen through named views.

Every network in :mod:`refdiff.nn` keeps all of its weights in one contiguous
1-D array. Each named parameter (``"in.W"``, ``"block1.conv.b"``) is a
reshaped *view* into that buffer, so

* the optimiser, gradient clipping and the EMA are a few whole-buffer array
  operations (no Python loop over tensors);
* the gradients live in a second buffer with the same layout, zeroed in one
  call per step;
* a checkpoint is one array plus the layout (names and shapes).

A :class:`Layout` is the frozen list of ``(name, shape)`` pairs and their
offsets; a :class:`Params` is a layout plus a buffer. Weight matrices of
linear maps are stored as ``(fan_in, fan_out)`` so the forward pass is
``x @ W`` and neither pass needs a transposed copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import as_rng

__all__ = ["ParamSpec", "Layout", "Params", "FLOAT_DTYPES"]

#: dtypes a network's buffer may have.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_INITS = ("zeros", "ones", "uniform_fan_in", "normal")


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter: its shape and how to initialise it.

    ``init`` is one of

    * ``"uniform_fan_in"``: :math:`U(-1/\\sqrt{\\text{fan\\_in}}, 1/\\sqrt{\\text{fan\\_in}})`,
      PyTorch's default for ``Linear`` and ``Conv2d`` weights and biases;
      ``fan_in`` must be given;
    * ``"normal"``: :math:`\\mathcal N(0, \\text{scale}^2)`;
    * ``"zeros"``, ``"ones"``.
    """

    name: str
    shape: tuple
    init: str = "uniform_fan_in"
    fan_in: int | None = None
    scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"parameter name must be a non-empty str, got {self.name!r}")
        shape = tuple(int(s) for s in self.shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"parameter {self.name!r}: shape must be positive, got {shape}")
        object.__setattr__(self, "shape", shape)
        if self.init not in _INITS:
            raise ValueError(f"parameter {self.name!r}: init must be one of {_INITS}, got {self.init!r}")
        if self.init == "uniform_fan_in" and (self.fan_in is None or self.fan_in < 1):
            raise ValueError(f"parameter {self.name!r}: init 'uniform_fan_in' needs fan_in >= 1, got {self.fan_in!r}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def draw(self, gen: np.random.Generator) -> np.ndarray:
        """Initial values in float64 (cast by the caller)."""
        if self.init == "zeros":
            return np.zeros(self.shape)
        if self.init == "ones":
            return np.ones(self.shape)
        if self.init == "normal":
            return self.scale * gen.standard_normal(self.shape)
        bound = 1.0 / math.sqrt(self.fan_in)
        return gen.uniform(-bound, bound, self.shape)


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the parameters in a flat buffer."""

    specs: tuple
    offsets: tuple = field(init=False)
    size: int = field(init=False)

    def __post_init__(self):
        specs = tuple(self.specs)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"parameter names must be unique, got duplicates {dup}")
        offsets, total = [], 0
        for s in specs:
            offsets.append(total)
            total += s.size
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "size", total)

    @property
    def names(self) -> tuple:
        return tuple(s.name for s in self.specs)

    def describe(self) -> list:
        """``[[name, [shape...]], ...]``: the JSON form stored in checkpoints."""
        return [[s.name, list(s.shape)] for s in self.specs]

    def matches(self, described) -> bool:
        """True if ``described`` (from :meth:`describe`) is this layout."""
        try:
            return [[str(n), [int(d) for d in shp]] for n, shp in described] == self.describe()
        except (TypeError, ValueError):
            return False


class Params:
    """A flat buffer with a named view per parameter.

    ``params["in.W"]`` is a view into ``params.flat``: writing through it
    changes the buffer and the other way round. Views are made once here, so
    indexing by name costs one dict lookup.

    Parameters
    ----------
    layout : Layout
    flat : 1-D float32 or float64 array of ``layout.size`` entries, used as is
        (not copied).
    """

    __slots__ = ("layout", "flat", "_views")

    def __init__(self, layout: Layout, flat: np.ndarray):
        if not isinstance(flat, np.ndarray) or flat.ndim != 1 or flat.shape[0] != layout.size:
            got = f"shape {getattr(flat, 'shape', None)}" if hasattr(flat, "shape") else type(flat).__name__
            raise ValueError(f"flat must be a 1-D array of {layout.size} entries, got {got}")
        if flat.dtype not in FLOAT_DTYPES:
            raise TypeError(f"flat must be float32 or float64, got dtype {flat.dtype}")
        if not flat.flags.c_contiguous:
            raise ValueError("flat must be C-contiguous")
        self.layout, self.flat = layout, flat
        self._views = {
            s.name: flat[o : o + s.size].reshape(s.shape) for s, o in zip(layout.specs, layout.offsets)
        }

    @classmethod
    def init(cls, layout: Layout, rng=None, dtype=np.float32) -> "Params":
        """Draw initial values for every parameter from ``rng`` (in layout order, in float64, then cast)."""
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        gen = as_rng(rng)
        flat = np.empty(layout.size, dtype=dtype)
        for s, o in zip(layout.specs, layout.offsets):
            flat[o : o + s.size] = s.draw(gen).ravel()
        return cls(layout, flat)

    @classmethod
    def zeros(cls, layout: Layout, dtype=np.float32) -> "Params":
        return cls(layout, np.zeros(layout.size, dtype=np.dtype(dtype)))

    def zeros_like(self) -> "Params":
        return Params(self.layout, np.zeros_like(self.flat))

    def copy(self) -> "Params":
        return Params(self.layout, self.flat.copy())

    def astype(self, dtype) -> "Params":
        return Params(self.layout, self.flat.astype(dtype))

    @property
    def dtype(self):
        return self.flat.dtype

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._views[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; the layout has {list(self._views)}") from None

    def __setitem__(self, name: str, value) -> None:
        """Write ``value`` into the named view (``g[name] += dW`` updates the buffer in place)."""
        view = self[name]
        if value is not view:
            view[...] = value

    def __contains__(self, name) -> bool:
        return name in self._views

    def __iter__(self):
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def items(self):
        return self._views.items()

    def __repr__(self):
        return f"Params({len(self)} tensors, {self.layout.size} values, {self.flat.dtype})"
