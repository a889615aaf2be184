"""What every sampler shares: the model contract, the start, the noise, the step bookkeeping.

A sampler's loop only does its algorithm's arithmetic; everything that must be
the same in every sampler lives here, once:

* :class:`ModelCall` calls the user's model ``f(x, t)``, checks the output
  (shape, finiteness) naming the step, converts it to the kind the algorithm
  needs (score, eps or x0, through :func:`refdiff.param.convert`) and counts
  model evaluations (NFE).
* :func:`start` turns ``x_T`` or a shape into the starting array and a
  :class:`refdiff.noise.NoiseStream`, so every example draws its own noise:
  example i's path is a function of (seed, i) alone, never of the batch size
  (PITFALLS 29).
* :class:`SampleResult` is the ``(x, nfe)`` pair each sampler returns, with an
  ``info`` dict for extra statistics (accepted steps, acceptance rates).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import as_float_array, namespace
from ..noise import NoiseStream
from ..param import PREDICTIONS, _convert
from ..schedules import DiscreteSchedule

__all__ = [
    "SampleResult",
    "ModelCall",
    "start",
    "prior_std_of",
    "require_sde",
    "final_denoise_step",
    "finish_step",
    "check_int",
    "check_positive",
]


class SampleResult(tuple):
    """``(x, nfe)``: the samples and the number of model evaluations, plus ``info``.

    Unpacks as a pair (``x, nfe = ddpm(...)``); ``result.x``, ``result.nfe``
    and ``result.info`` (a dict of sampler-specific statistics) name the parts.
    """

    def __new__(cls, x, nfe: int, **info):
        self = super().__new__(cls, (x, int(nfe)))
        self.info = info
        return self

    @property
    def x(self):
        return self[0]

    @property
    def nfe(self) -> int:
        return self[1]

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.info.items() if np.ndim(v) == 0)
        return f"SampleResult(x.shape={tuple(self.x.shape)}, nfe={self.nfe}{extra})"


def check_int(value, name: str, lo: int = 1) -> int:
    """``value`` as an int >= ``lo``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), or a ValueError naming ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _describe_time(t):
    a = np.asarray(t)
    if a.ndim == 0:
        return f"{a.item():.6g}"
    return f"[{a.min():.6g}, {a.max():.6g}]"


def check_process(process):
    """TypeError unless ``process`` is a DiscreteSchedule or an SDE (a name such as "vp" is neither)."""
    from ..sde import SDE

    if not isinstance(process, (DiscreteSchedule, SDE)):
        raise TypeError(f"process must be a DiscreteSchedule or an SDE from refdiff.sde, got {type(process).__name__}"
                        f"{f' {process!r}' if isinstance(process, str) else ''}")
    return process


class ModelCall:
    """The one model contract of every sampler.

    Parameters
    ----------
    model : callable ``f(x, t) -> array``
        ``t`` is what the model was trained with: a float time for an SDE, an
        integer step for a :class:`~refdiff.schedules.DiscreteSchedule` (the
        schedule's ``model_steps[t]`` for a respaced schedule, so a model
        trained on the full schedule sees its own steps), or a per-example
        array of either for adaptive samplers.
    prediction : {"score", "eps", "x0", "v"}
        What the model returns.
    process : SDE or DiscreteSchedule
    """

    def __init__(self, model, prediction: str, process):
        check_process(process)
        if not callable(model):
            raise TypeError(f"model must be a callable f(x, t), got {type(model).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.model, self.prediction, self.process = model, prediction, process
        self.nfe = 0

    def _model_time(self, t):
        if isinstance(self.process, DiscreteSchedule):
            steps = self.process.model_steps[self.process.check_step(t)]
            return int(steps) if steps.ndim == 0 else steps
        return float(t) if np.ndim(t) == 0 else np.asarray(t, dtype=np.float64)

    def predict(self, x, t, step: int):
        """The model's raw prediction at (x, t), checked; ``step`` names the sampler step in errors."""
        out = self.model(x, self._model_time(t))
        self.nfe += 1
        if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(
                f"model output at step {step} (t={_describe_time(t)}) has shape {got}, expected x's shape {tuple(x.shape)}"
            )
        xp = namespace(x)
        out = xp.astype(as_float_array(out, "model output"), x.dtype)
        finite = xp.isfinite(out)
        if not bool(xp.all(finite)):
            n_bad = int(xp.sum(xp.astype(xp.logical_not(finite), xp.int64)))
            raise ValueError(f"model returned {n_bad} non-finite value(s) at step {step} (t={_describe_time(t)})")
        return out

    def to(self, pred, want: str, x, t):
        """Convert a raw prediction made at (x, t) to ``want`` (no model call)."""
        return _convert(pred, self.prediction, want, x, self.process, t)  # pred checked by predict, x by finish_step

    def __call__(self, x, t, want: str, step: int):
        """The model's prediction at (x, t) converted to ``want`` (score, eps, x0 or v)."""
        return self.to(self.predict(x, t, step), want, x, t)


def start(x_T, rng, prior_std: float = 1.0, dtype=None, name: str = "x_T"):
    """The starting array and the per-example noise stream.

    Parameters
    ----------
    x_T : array (N, ...) or tuple of ints
        A starting point (an array, or a list that becomes one, as in NumPy), or a tuple: the shape to draw
        :math:`\\mathcal N(0,\\text{prior\\_std}^2I)` for (draw 0 of the noise stream, so the start is
        per-example too).
    rng : SPEC 7 seed; the stream's 64-bit key is drawn from it once.
    dtype : dtype of a drawn start (default float64).
    name : the sampler's name for ``x_T``, in errors.
    """
    if isinstance(x_T, tuple):
        shape = x_T
        if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"{name}: a shape must be a tuple of positive ints (N, ...), got {x_T!r}")
        noise = NoiseStream(rng, n=shape[0])
        x = noise.normal(shape)
        if dtype is not None:
            x = x.astype(dtype)
        return prior_std * x, noise
    x = as_float_array(x_T, name)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} must be finite, got NaN or infinity")
    return x, NoiseStream(rng, n=x.shape[0])


def prior_std_of(process) -> float:
    """Standard deviation of the process's prior (1 for a discrete schedule)."""
    return float(process.prior_std()) if hasattr(process, "prior_std") else 1.0


def require_sde(process, name):
    """Refuse a DiscreteSchedule where ``name`` needs a continuous process."""
    if isinstance(process, DiscreteSchedule):
        raise TypeError(f"{name} needs a continuous process (an SDE from refdiff.sde), got a DiscreteSchedule")


def final_denoise_step(f, x, grid, final_denoise, callback, n_steps=None, clip=None):
    r"""Tweedie's denoiser at the last time, reported to ``callback`` as step ``n_steps`` (default: the grid's);
    ``clip`` (lo, hi) clips it as the steps before clipped their :math:`\hat x_0`."""
    if final_denoise and float(f.process.variance(grid[-1])) > 0.0:
        n = grid.shape[0] - 1 if n_steps is None else n_steps
        x0 = f(x, grid[-1], "x0", n)
        if clip is not None:
            x0 = namespace(x0).clip(x0, *clip)
        x = finish_step(n, 0.0, x0, callback)
    return x


def finish_step(i: int, t, x, callback):
    """Check the state after step ``i`` (at time ``t``) and hand it to ``callback(i, t, x)``."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable (i, t, x) or None, got {type(callback).__name__}")
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(
            f"the sampler state became non-finite at step {i} (t={_describe_time(t)}); "
            "the step size is too large for this model or the model diverged"
        )
    if callback is not None:
        callback(i, t, x)
    return x
