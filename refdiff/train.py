r"""Training loops for refdiff's networks: Algorithm 1, weighted DSM, NCSN, classifier-free conditioning.

:func:`train` runs any objective of :mod:`refdiff.objectives` on any
:class:`~refdiff.nn.network.Network`:

1. draw a batch of data rows (and labels) with replacement;
2. with labels, replace each by the null class with probability
   ``p_uncond`` (classifier-free guidance, Ho & Salimans 2022, Algorithm 1);
3. build the regression batch (t, noise, :math:`x_t`, target, weight);
4. forward, loss :math:`\frac1N\sum_n w_n \frac1D\|F_n - r_n\|^2`, backward with
   :math:`\partial L/\partial F_n = \frac{2 w_n}{N D}(F_n - r_n)`;
5. clip the global gradient norm, Adam(W) step with linear warm-up, EMA.

Reproducibility: every random draw of step k comes from
``numpy.random.default_rng([seed, k])``, a pure function of the seed and the
step. Together with the saved weights, EMA and Adam moments, resuming from a
checkpoint therefore continues exactly as if training had never stopped
(same losses, same weights, bit for bit). A checkpoint records what it was
trained on (the data's shape and a SHA-256 of its values and labels, plus an
optional ``data_source`` description); a resume on other data is refused
before any step runs. A checkpoint written before that record existed is
resumed with a ``UserWarning`` that the data could not be checked.

Failure: bad input (empty data, NaN, batch larger than the data, a shape the
network does not take, labels out of range, a checkpoint in a folder that
does not exist) raises ``ValueError`` before any step runs. A non-finite
loss or gradient stops training with :class:`TrainingDiverged`, naming the
step; the parameters are left as they were after the last good step and a
checkpoint already on disk is not overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._progress import ProgressLine
from .backend import to_numpy
from .nn.checkpoint import load_checkpoint, save_checkpoint
from .nn.network import Network
from .nn.optim import Adam, clip_grad_norm, ema_update, warmup_lr
from .objectives import EpsObjective, same_objective

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "regression_loss", "moving_average"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became non-finite; ``step`` names the step (0-based)."""

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train` (stored in checkpoints; a resume must match them)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("warmup", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        _number(self.lr, "lr", 0.0, open_lo=True)
        _number(self.weight_decay, "weight_decay", 0.0)
        if self.grad_clip is not None:
            _number(self.grad_clip, "grad_clip", 0.0, open_lo=True)
        _number(self.ema_decay, "ema_decay", 0.0, hi=1.0)
        _number(self.p_uncond, "p_uncond", 0.0, hi=1.0)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _number(v, name, lo, open_lo=False, hi=None):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"{'(' if open_lo else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {v!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the network, raw and EMA weights, the loss history."""

    network: Network
    objective: object
    params: object
    ema: object
    optimizer: Adam
    losses: np.ndarray
    step: int
    seconds: float
    config: TrainConfig
    checkpoint: str | None = None
    info: dict = field(default_factory=dict)

    def model(self, use_ema: bool = True, y=None):
        """``f(x, t)`` of the trained network, returning ``objective.prediction``, for samplers."""
        return self.objective.model(self.network, self.ema if use_ema else self.params, y=y)

    @property
    def prediction(self) -> str:
        return self.objective.prediction

    @property
    def ema_losses(self) -> np.ndarray:
        """Exponential moving average of the loss (decay 0.99), as printed in the progress line."""
        return moving_average(self.losses, 0.99)

    @property
    def steps_per_second(self) -> float:
        return self.info.get("steps_run", 0) / self.seconds if self.seconds > 0 else float("nan")


def moving_average(losses, decay: float = 0.99) -> np.ndarray:
    """Exponential moving average of a loss history, starting at its first value (as the progress line shows)."""
    losses = np.asarray(losses, dtype=np.float64)
    out = np.empty_like(losses)
    acc = None
    for i, v in enumerate(losses):
        acc = v if acc is None else decay * acc + (1 - decay) * v
        out[i] = acc
    return out


def regression_loss(out, target, weight=None):
    r"""Loss :math:`\frac1N\sum_n w_n\frac1D\|F_n-r_n\|^2` and its gradient with respect to ``out``."""
    n = out.shape[0]
    d = out.size // n
    r = out - target
    per_example = np.einsum("ij,ij->i", r.reshape(n, d), r.reshape(n, d))  # (N,)
    scale = 2.0 / (n * d)
    if weight is None:
        loss = float(per_example.sum()) / (n * d)
        r *= scale
    else:
        w = np.asarray(weight, dtype=np.float64)
        loss = float(np.dot(w, per_example)) / (n * d)
        r *= (scale * w).astype(r.dtype).reshape((n,) + (1,) * (r.ndim - 1))
    return loss, r


def _check_inputs(network, data, labels, config):
    from .data import check_training_data

    if not isinstance(network, Network):
        raise TypeError(f"network must be a refdiff.nn Network, got {type(network).__name__}")
    data = check_training_data(data, "data", image=network.data_shape if len(network.data_shape) > 1 else None)
    if tuple(data.shape[1:]) != tuple(network.data_shape):
        raise ValueError(
            f"data rows must have shape {tuple(network.data_shape)} for this {network.kind}, got {tuple(data.shape[1:])}"
        )
    n = data.shape[0]
    if config.batch_size > n:
        raise ValueError(f"batch_size ({config.batch_size}) is larger than the data ({n} rows)")
    if network.n_classes is None:
        if labels is not None:
            raise ValueError("labels were given but the network is unconditional (n_classes=None)")
        return data, None
    if labels is None:
        raise ValueError(f"this network is class-conditional (n_classes={network.n_classes}); pass labels")
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {n} integers (one per data row), got dtype {labels.dtype} shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= network.n_classes:
        raise ValueError(f"labels must lie in 0..{network.n_classes - 1}, got [{labels.min()}, {labels.max()}]")
    return data, labels.astype(np.int64)


def _data_record(data, labels, source):
    """What defines the training data: shape, dtype and SHA-256 of the rows (and labels), plus ``source``."""

    def digest(a):
        return hashlib.sha256(np.ascontiguousarray(to_numpy(a)).tobytes()).hexdigest()

    return {
        "shape": [int(s) for s in data.shape],
        "dtype": str(data.dtype),
        "sha256": digest(data),
        "labels_sha256": None if labels is None else digest(labels),
        "source": source,
    }


def _check_same_data(path, stored, mine):
    """Refuse a resume on other data than the checkpoint's; warn when an older checkpoint cannot tell."""
    if stored is None:
        warnings.warn(f"{path} records no training data (written by an older refdiff): resuming without "
                      f"checking that the data are the same", UserWarning, stacklevel=4)
        return
    if stored.get("source") is not None and mine["source"] is not None and stored["source"] != mine["source"]:
        keys = sorted(k for k in {**stored["source"], **mine["source"]}
                      if stored["source"].get(k) != mine["source"].get(k))
        raise ValueError(f"cannot resume from {path}: data_source differs in {keys}: it was trained on "
                         f"{stored['source']}, got {mine['source']}")
    if stored.get("shape") != mine["shape"]:
        raise ValueError(f"cannot resume from {path}: it was trained on data of shape {tuple(stored.get('shape'))}, "
                         f"got shape {tuple(mine['shape'])}")
    if stored.get("sha256") != mine["sha256"]:
        raise ValueError(f"cannot resume from {path}: the data differ from the ones it was trained on (same shape "
                         f"{tuple(mine['shape'])}, other values)")
    if stored.get("labels_sha256") != mine["labels_sha256"]:
        raise ValueError(f"cannot resume from {path}: the labels differ from the ones it was trained on")


def _resume_state(path, network, objective, config, data_record, params, ema, optimizer):
    """Load ``path`` into the live buffers; return (step, losses)."""
    ckpt = load_checkpoint(path)
    if ckpt.network.kind != network.kind or ckpt.network.config() != network.config():
        raise ValueError(f"cannot resume from {path}: it holds a different network ({ckpt.network!r})")
    train_meta = ckpt.train or {}
    if not same_objective(train_meta.get("objective"), objective.config()):
        raise ValueError(f"cannot resume from {path}: it was trained with another objective or process")
    stored = dict(train_meta.get("config", {}))
    mine = config.as_dict()
    differ = sorted(k for k in mine if k != "steps" and stored.get(k) != mine[k])
    if differ:
        raise ValueError(f"cannot resume from {path}: training settings differ in {differ}")
    if ckpt.params.dtype != params.dtype or ckpt.optimizer is None or ckpt.ema is None:
        raise ValueError(f"cannot resume from {path}: dtype differs or optimiser/EMA state is missing")
    _check_same_data(path, train_meta.get("data"), data_record)
    if ckpt.step > config.steps:  # the run cannot go back; saving would label step-N weights as an earlier step
        raise ValueError(f"cannot resume from {path}: it is at step {ckpt.step}, past steps={config.steps}")
    params.flat[...] = ckpt.params.flat
    ema.flat[...] = ckpt.ema.flat
    optimizer.load_state(ckpt.optimizer)
    losses = np.asarray(ckpt.arrays.get("losses", np.zeros(0)), dtype=np.float64)
    if losses.shape[0] != ckpt.step:
        raise ValueError(f"cannot resume from {path}: {losses.shape[0]} stored losses for step {ckpt.step}")
    return ckpt.step, losses


def train(
    network: Network,
    data,
    objective=None,
    *,
    labels=None,
    config: TrainConfig | None = None,
    dtype=np.float32,
    params=None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    data_source: dict | None = None,
    progress=None,
    callback=None,
    **overrides,
) -> TrainResult:
    """Train ``network`` on ``data`` with ``objective`` (default: eps prediction, linear 1000-step schedule).

    Parameters
    ----------
    network : Network
        Its ``time_scale`` must be ``objective.time_scale`` (checked).
    data : array (N, *network.data_shape)
    objective : EpsObjective, DSMObjective or NCSNObjective
    labels : (N,) int array, for a class-conditional network
    config : TrainConfig; keyword ``overrides`` (``steps=...``, ``lr=...``) replace its fields
    dtype : float32 or float64, the parameters' dtype (ignored when ``params`` is given)
    params : initial Params (default: ``network.init(seed, dtype)``)
    checkpoint : path of the checkpoint to write (every ``checkpoint_every`` steps and at the end)
    resume : continue from ``checkpoint`` if it exists; the network, objective, settings (but ``steps``) and
        data must be the ones it was trained with
    data_source : JSON-serialisable dict or None
        Where ``data`` came from (say ``{"name": "ring8", "n": 5000, "seed": 0}``), stored in the checkpoint
        next to a SHA-256 of the data; a resume with another ``data_source`` is refused, naming the keys.
    progress : None (a line on stderr when it is a terminal), True or False
    callback : ``callback(step, loss)`` after every step

    Returns
    -------
    TrainResult
    """
    config = TrainConfig(**{**(config.as_dict() if config else {}), **overrides})
    if objective is None:
        from .schedules import DiscreteSchedule, linear_betas

        objective = EpsObjective(DiscreteSchedule(linear_betas(1000)))
    if not hasattr(objective, "batch") or not hasattr(objective, "prediction"):
        raise TypeError(f"objective must come from refdiff.objectives, got {type(objective).__name__}")
    data, labels = _check_inputs(network, data, labels, config)
    if not math.isclose(network.time_scale, objective.time_scale, rel_tol=1e-12):
        raise ValueError(
            f"network.time_scale is {network.time_scale} but this objective needs {objective.time_scale}: "
            f"build the network with time_scale=objective.time_scale"
        )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if checkpoint is not None and not os.path.isdir(os.path.dirname(os.path.abspath(checkpoint))):
        raise ValueError(f"checkpoint {os.fspath(checkpoint)!r} cannot be written: its folder "
                         f"{os.path.dirname(os.path.abspath(checkpoint))} does not exist")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int or None, got {checkpoint_every!r}")
    if data_source is not None:
        try:
            if not isinstance(data_source, dict):
                raise TypeError(f"got {type(data_source).__name__}")
            data_source = json.loads(json.dumps(data_source, allow_nan=False))  # as a checkpoint stores it
        except (TypeError, ValueError) as exc:
            raise TypeError(f"data_source must be a JSON-serialisable dict or None ({exc})") from None

    params = network.init(config.seed, dtype) if params is None else params.copy()
    data = data.astype(params.dtype, copy=False)
    data_record = None if checkpoint is None else _data_record(data, labels, data_source)
    grads = params.zeros_like()
    ema = params.copy()
    optimizer = Adam(params, config.lr, weight_decay=config.weight_decay)
    start, losses = 0, np.zeros(0)
    if resume and os.path.exists(checkpoint):
        start, losses = _resume_state(checkpoint, network, objective, config, data_record, params, ema, optimizer)
    losses = np.concatenate([losses, np.full(max(config.steps - start, 0), np.nan)])
    meta = {"objective": objective.config(), "config": config.as_dict(), "data": data_record}

    def save(step):
        if checkpoint is not None:
            save_checkpoint(checkpoint, network, params, ema=ema, optimizer=optimizer, step=step, train=meta,
                            arrays={"losses": losses[:step]})

    bar = ProgressLine(config.steps, "train", enabled=progress)
    t0 = time.perf_counter()
    ema_loss = None
    try:
        for step in range(start, config.steps):
            gen = np.random.default_rng([config.seed, step])
            idx = gen.integers(0, data.shape[0], size=config.batch_size)
            y = None
            if labels is not None:
                y = labels[idx]
                y = np.where(gen.random(config.batch_size) < config.p_uncond, network.null_class, y)
            batch = objective.batch(data[idx], y, gen)
            out, cache = network.forward(params, batch.x, batch.t, batch.y)
            loss, dout = regression_loss(out, batch.target, batch.weight)
            if not math.isfinite(loss):
                raise TrainingDiverged(_diverged("loss", step, checkpoint), step)
            grads.flat.fill(0.0)
            network.backward(params, grads, cache, dout)
            if config.grad_clip is not None:
                norm = clip_grad_norm(grads, config.grad_clip)
                if not math.isfinite(norm):
                    raise TrainingDiverged(_diverged("gradient", step, checkpoint), step)
            optimizer.step(params, grads, warmup_lr(step, config.lr, config.warmup))
            ema_update(ema, params, config.ema_decay)
            losses[step] = loss
            ema_loss = loss if ema_loss is None else 0.99 * ema_loss + 0.01 * loss
            bar.update(step + 1, loss=loss, ema_loss=ema_loss)
            if callback is not None:
                callback(step, loss)
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
                save(step + 1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    save(config.steps)
    return TrainResult(network, objective, params, ema, optimizer, losses, config.steps, seconds, config,
                       checkpoint, {"steps_run": config.steps - start, "resumed_from": start})


def _diverged(what, step, checkpoint):
    where = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
    return f"training diverged: the {what} became non-finite at step {step}{where} (try a smaller lr)"
