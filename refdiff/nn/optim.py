r"""Adam / AdamW over one flat parameter buffer, gradient clipping, warm-up, EMA.

Because every parameter lives in one buffer (:mod:`refdiff.nn.params`), an
optimiser step is a handful of whole-buffer array operations, done in place
with one scratch buffer, whatever the number of tensors.

==================  ===============================================================  ==========================
object              update                                                           source
==================  ===============================================================  ==========================
``Adam``            :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,                   Kingma & Ba 2015, Alg. 1
                    :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`,
                    :math:`\theta \leftarrow \theta - \eta\,\hat m/(\sqrt{\hat v}+\epsilon)`
``Adam(weight_``    AdamW: also :math:`\theta \leftarrow \theta(1 - \eta\lambda)`      Loshchilov & Hutter 2019
``decay=...)``      before the Adam step (decoupled decay)
``clip_grad_norm``  :math:`g \leftarrow g\,\min(1, c/\|g\|_2)`                        Pascanu et al. 2013
``warmup_lr``       :math:`\eta_k = \eta\min(1, (k+1)/K)`                               Goyal et al. 2017
``ema_update``      :math:`\bar\theta \leftarrow \bar\theta + (1-d)(\theta - \bar\theta)`  Polyak averaging
==================  ===============================================================  ==========================

:math:`\hat m = m/(1-\beta_1^k)`, :math:`\hat v = v/(1-\beta_2^k)` at step
:math:`k` (1-based). ``eps`` is added to :math:`\sqrt{\hat v}` as PyTorch
does, so the two libraries take the same step.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import check_int
from . import fused
from .params import Params

__all__ = ["Adam", "clip_grad_norm", "warmup_lr", "ema_update"]


def _finite_number(value, name, lo=None, lo_open=False, hi=None, hi_open=False):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo}, "
        hi_s = "inf)" if hi is None else f"{hi}" + (")" if hi_open else "]")
        raise ValueError(f"{name} must be a finite number in {lo_s or '(-inf, '}{hi_s}, got {value!r}")
    return float(value)


class Adam:
    """Adam (or AdamW with ``weight_decay > 0``) over a :class:`Params` buffer.

    The state (``m``, ``v``, ``step``) is explicit: :meth:`state` and
    :meth:`load_state` move it to and from a checkpoint.

    Parameters
    ----------
    params : Params
        Only its layout and dtype are used: the state buffers match them.
    lr : float
        Default step size (a call to :meth:`step` may pass another, e.g. from
        :func:`warmup_lr`).
    betas : (float, float)
    eps : float
    weight_decay : float
        Decoupled weight decay :math:`\\lambda` (AdamW); 0 gives Adam.
    backend : {"numpy", "numba", "auto"}
        Where the update runs: :func:`refdiff.nn.fused.adam_update` (NumPy,
        several whole-buffer passes), its Numba twin (one SIMD pass, on every
        core from a million values where that is safe; the same bits; the
        ``fast`` extra), or "auto" (Numba when installed and the buffer holds
        at least :data:`refdiff.nn.fused.AUTO_MIN_SIZE` values). A run-time
        choice: not part of :meth:`hyper` or the state.
    """

    def __init__(self, params: Params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend="numpy"):
        self.lr = _finite_number(lr, "lr", lo=0.0, lo_open=True)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = betas
        self.beta1 = _finite_number(b1, "betas[0]", lo=0.0, hi=1.0, hi_open=True)
        self.beta2 = _finite_number(b2, "betas[1]", lo=0.0, hi=1.0, hi_open=True)
        self.eps = _finite_number(eps, "eps", lo=0.0, lo_open=True)
        self.weight_decay = _finite_number(weight_decay, "weight_decay", lo=0.0)
        self.m = np.zeros_like(params.flat)
        self.v = np.zeros_like(params.flat)
        self._tmp = np.empty_like(params.flat)
        self.step_count = 0
        self.backend = fused.check_backend(backend)

    def step(self, params: Params, grads: Params, lr=None) -> None:
        """One update of ``params.flat`` in place from ``grads.flat``."""
        g, theta, m, v, tmp = grads.flat, params.flat, self.m, self.v, self._tmp
        if g.shape != m.shape or theta.shape != m.shape:
            raise ValueError(f"params and grads must have {m.shape[0]} entries, got {theta.shape[0]} and {g.shape[0]}")
        lr = self.lr if lr is None else _finite_number(lr, "lr", lo=0.0, lo_open=True)
        self.step_count += 1
        ops = fused.elementwise(self.backend, theta.shape[0])
        ops.adam_update(theta, g, m, v, lr, self.beta1, self.beta2, self.eps, self.weight_decay, self.step_count, tmp)

    def state(self) -> dict:
        """``{"m", "v", "step"}`` (arrays are the live buffers, not copies)."""
        return {"m": self.m, "v": self.v, "step": self.step_count}

    def load_state(self, state: dict) -> None:
        """Take ``{"m", "v", "step"}`` (as :meth:`state` gives it); checked whole before anything changes."""
        m, v, step = np.asarray(state["m"]), np.asarray(state["v"]), state["step"]
        if m.shape != self.m.shape or v.shape != self.v.shape:
            raise ValueError(f"optimiser state must have {self.m.shape[0]} entries, got {m.shape} and {v.shape}")
        step = check_int(step, "optimiser state step", lo=0)
        self.m[...] = m
        self.v[...] = v
        self.step_count = int(step)

    def hyper(self) -> dict:
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps, "weight_decay": self.weight_decay}


def clip_grad_norm(grads: Params, max_norm: float) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``; return the norm before.

    A non-finite norm is returned unchanged (and nothing is scaled) so that
    the caller can report the step that produced it.
    """
    max_norm = _finite_number(max_norm, "max_norm", lo=0.0, lo_open=True)
    g = grads.flat
    with np.errstate(over="ignore"):
        norm = math.sqrt(float(np.dot(g, g)))
    if norm == math.inf and np.all(np.isfinite(g)):  # g . g overflowed (float32: |g| past 1.8e19), not |g|
        top = float(np.max(np.abs(g)))
        r = g.astype(np.float64) / top
        norm = top * math.sqrt(float(np.dot(r, r)))
    if math.isfinite(norm) and norm > max_norm:
        g *= max_norm / norm
    return norm


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up: ``lr * min(1, (step + 1) / warmup_steps)`` for 0-based ``step``."""
    check_int(step, "step", lo=0)
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def ema_update(ema: Params, params: Params, decay: float) -> None:
    r"""Exponential moving average of the weights, in place: :math:`\bar\theta \leftarrow d\bar\theta + (1-d)\theta`."""
    decay = _finite_number(decay, "decay", lo=0.0, hi=1.0)
    if decay == 0.0:  # a copy: ema + (theta - ema) rounds where the two differ much in size
        ema.flat[...] = params.flat
        return
    if decay < 0.5:  # d ema + (1 - d) theta: ema + (1 - d)(theta - ema) rounds to ema's ulp, large beside theta's
        ema.flat *= decay
        ema.flat += (1.0 - decay) * params.flat
        return
    # ema += (1 - d)(theta - ema): one scratch array, and exact where theta = ema
    diff = params.flat - ema.flat
    diff *= 1.0 - decay
    ema.flat += diff
