"""Checkpoints: one ``.npz`` with the weights, EMA, optimiser state and a JSON description.

Format ``refdiff-checkpoint`` version 1 (``np.savez``, loaded with
``allow_pickle=False``):

==============  ==========================================================
entry           content
==============  ==========================================================
``metadata``    uint8 bytes of a UTF-8 JSON object: ``format``, ``version``,
                ``network`` (``kind`` and ``config``), ``layout`` (names
                and shapes), ``dtype``, ``step``, ``optimizer`` (hyper-
                parameters and step, or null), ``train`` (the training
                configuration, or null), ``extra`` (free-form JSON)
``params``      the flat parameter buffer
``ema``         the EMA buffer (optional)
``adam_m``,     Adam's moment buffers (optional)
``adam_v``
``x.<name>``    further arrays a caller stores (loss history, ...)
==============  ==========================================================

Writing goes through a temporary file in the target folder, written through
an open file object (``np.savez`` appends ``.npz`` to a string path) and
``os.replace``-d over the target: a crash never leaves half a checkpoint. A
truncated, foreign or newer-format file raises ``ValueError`` saying which.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .._atomic import atomic_write
from .network import Network
from .params import Params

__all__ = ["FORMAT", "VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint"]

FORMAT = "refdiff-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    network: Network
    params: Params
    ema: Params | None
    optimizer: dict | None  # {"m", "v", "step", "hyper"} or None
    step: int
    train: dict | None
    extra: dict
    arrays: dict = field(default_factory=dict)

    def model(self, use_ema: bool = True, y=None):
        """The bound ``f(x, t)`` of the EMA weights (or the raw ones), for samplers."""
        p = self.ema if (use_ema and self.ema is not None) else self.params
        return self.network.bind(p, y=y)


def _same_layout(name, buf, params):
    if buf is not None and (not isinstance(buf, Params) or buf.layout != params.layout or buf.dtype != params.dtype):
        raise ValueError(f"{name} must be Params with the same layout and dtype as params")


def save_checkpoint(
    path,
    network: Network,
    params: Params,
    *,
    ema: Params | None = None,
    optimizer=None,
    step: int = 0,
    train: dict | None = None,
    extra: dict | None = None,
    arrays: dict | None = None,
) -> str:
    """Write a checkpoint atomically to ``path``; return the path.

    ``optimizer`` is an :class:`~refdiff.nn.optim.Adam` (its state is saved)
    or None. ``train`` and ``extra`` must be JSON-serialisable; ``arrays``
    maps names to further arrays (stored as ``x.<name>``).
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a refdiff.nn Network, got {type(network).__name__}")
    if not isinstance(params, Params) or params.layout != network.layout:
        raise ValueError("params must be Params of this network's layout")
    _same_layout("ema", ema, params)
    if optimizer is not None:  # checked here: load_checkpoint refuses state of another size or dtype
        for name in ("m", "v"):
            buf = getattr(optimizer, name, None)
            if not isinstance(buf, np.ndarray) or buf.shape != params.flat.shape or buf.dtype != params.dtype:
                got = (buf.shape, buf.dtype) if isinstance(buf, np.ndarray) else type(buf).__name__
                raise ValueError(f"optimizer.{name} must have shape {params.flat.shape} and dtype {params.dtype} as "
                                 f"params, got {got}")
    stored = {}
    for name, a in (arrays or {}).items():
        a = np.asarray(a)
        if a.dtype.hasobject:  # np.savez would pickle it, and a checkpoint is read without pickles
            raise TypeError(f"arrays[{name!r}] has dtype {a.dtype}: a checkpoint stores numeric, bool or string arrays")
        stored[f"x.{name}"] = a
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "network": {"kind": network.kind, "config": network.config()},
        "layout": params.layout.describe(),
        "dtype": str(params.dtype),
        "step": int(step),
        "optimizer": None if optimizer is None else {"hyper": optimizer.hyper(), "step": optimizer.step_count},
        "train": train,
        "extra": extra or {},
    }
    try:
        blob = json.dumps(meta).encode("utf-8")
    except TypeError as exc:
        raise TypeError(f"train and extra must be JSON-serialisable: {exc}") from exc
    entries = {"metadata": np.frombuffer(blob, dtype=np.uint8), "params": params.flat}
    if ema is not None:
        entries["ema"] = ema.flat
    if optimizer is not None:
        entries["adam_m"], entries["adam_v"] = optimizer.m, optimizer.v
    entries.update(stored)

    return atomic_write(path, lambda fh: np.savez(fh, **entries), suffix=".npz")


def _read(path):
    # np.load would open a .npy (or a pickle) as something else entirely: insist on a zip archive first
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!s} is not a readable refdiff checkpoint (truncated, or not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{path!s} is not a readable refdiff checkpoint (truncated, or not an .npz file): {exc}"
        ) from exc


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not an ``.npz``, not a refdiff checkpoint,
        of a newer format version, or inconsistent (layout vs arrays).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    data = _read(path)
    if "metadata" not in data or "params" not in data:
        raise ValueError(f"{path} is an .npz file but not a refdiff checkpoint (no 'metadata' / 'params' entry)")
    try:
        meta = json.loads(data["metadata"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the metadata entry is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ValueError(f"{path}: format version {meta.get('version')!r} is newer than this refdiff reads ({VERSION})")

    from . import build_network

    try:
        network = build_network(meta["network"]["kind"], meta["network"]["config"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the network description is incomplete or wrong ({exc})") from exc
    layout = network.layout
    if not layout.matches(meta.get("layout", [])):
        raise ValueError(f"{path}: the stored layout does not match the network it describes")

    def buffer(name):
        a = data[name]
        if a.ndim != 1 or a.shape[0] != layout.size or a.dtype != np.dtype(meta["dtype"]):
            raise ValueError(
                f"{path}: entry {name!r} has shape {a.shape} and dtype {a.dtype}, "
                f"expected ({layout.size},) {meta['dtype']}"
            )
        return Params(layout, np.ascontiguousarray(a))

    params = buffer("params")
    ema = buffer("ema") if "ema" in data else None
    optimizer = None
    if meta.get("optimizer") is not None:
        if "adam_m" not in data or "adam_v" not in data:
            raise ValueError(f"{path}: the optimiser state is described but its buffers are missing")
        optimizer = {
            "m": buffer("adam_m").flat,
            "v": buffer("adam_v").flat,
            "step": int(meta["optimizer"]["step"]),
            "hyper": meta["optimizer"]["hyper"],
        }
    arrays = {k[2:]: v for k, v in data.items() if k.startswith("x.")}
    return Checkpoint(network, params, ema, optimizer, int(meta.get("step", 0)), meta.get("train"), meta.get("extra", {}), arrays)
