"""Figures of the lecture notes, one call each (matplotlib, imported lazily; Agg when headless).

=========================  ==================================================================
function                   figure
=========================  ==================================================================
``density_and_score``      log-density contours of p_t with the score field over them
``forward_strip``          data pushed through q(x_t | x_0) at a few times
``trajectories``           reverse-time paths of a few particles over the density
``samples_vs_truth``       sample scatter panels next to exact samples
``image_grid``             (N, 1, H, W) images as a grid, one row per class if asked
``error_vs_nfe``           solver error against model evaluations, log-log
``score_error_over_t``     relative error of a learned score against the exact one, over t
``loss_curve``             training loss and its moving average
``benchmark_bars``         timings of several implementations side by side
=========================  ==================================================================

Every function returns the :class:`matplotlib.figure.Figure` and, given
``path``, saves it (PNG, SVG or anything matplotlib writes, by extension)
through a temporary file, so a figure is never half-written.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = [
    "density_and_score",
    "forward_strip",
    "trajectories",
    "samples_vs_truth",
    "image_grid",
    "error_vs_nfe",
    "score_error_over_t",
    "loss_curve",
    "benchmark_bars",
    "save",
]


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('refdiff.plot needs matplotlib: pip install "refdiff[plot]"') from None
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # headless: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    """Save ``fig`` to ``path`` atomically (format from the extension); return the path."""
    if path is None:
        return None
    from ._atomic import atomic_write

    ext = os.path.splitext(os.fspath(path))[1] or ".png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), suffix=ext, binary=None)


def _grid(lim, n):
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


def density_and_score(mixture, process=None, t=None, *, lim=5.0, n_grid=120, n_arrows=21, ax=None, title=None, path=None):
    """Contours of :math:`\\log p_t` and the score :math:`\\nabla\\log p_t` as arrows (a 2-D mixture)."""
    plt = _plt()
    if mixture.dim != 2:
        raise ValueError(f"density_and_score draws 2-D mixtures, got dimension {mixture.dim}")
    fig, ax = (plt.subplots(figsize=(5, 5)) if ax is None else (ax.figure, ax))
    xx, yy, pts = _grid(lim, n_grid)
    logp = mixture.log_prob(pts, process, t).reshape(xx.shape)
    ax.contourf(xx, yy, np.maximum(logp, logp.max() - 12), levels=20, cmap="Blues")
    ax_, ay_, arrows = _grid(lim * 0.95, n_arrows)
    s = mixture.score(arrows, process, t)
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    s = s / np.maximum(norm, 1e-12) * np.log1p(norm)  # directions exact, lengths compressed for legibility
    ax.quiver(ax_, ay_, s[:, 0].reshape(ax_.shape), s[:, 1].reshape(ax_.shape), color="k", alpha=0.7, width=0.003)
    ax.set_aspect("equal")
    ax.set_title(title or ("data density and score" if t is None else f"p_t and its score at t = {float(t):g}"))
    save(fig, path)
    return fig


def forward_strip(x0, process, times, *, rng=0, lim=5.0, path=None):
    """Scatter of :math:`x_t \\sim q(x_t|x_0)` at each of ``times`` (2-D data)."""
    plt = _plt()
    times = [float(t) for t in np.ravel(times)]  # one time or several
    if not times:
        raise ValueError("times must hold at least one time")
    fig, axes = plt.subplots(1, len(times), figsize=(3 * len(times), 3.2), squeeze=False)
    gen = np.random.default_rng(rng)
    for ax, t in zip(axes[0], times):
        x = x0 if float(t) == 0.0 else process.sample_marginal(x0, float(t), rng=gen)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"t = {float(t):g}")
    fig.suptitle("forward process: the data dissolve into noise")
    save(fig, path)
    return fig


def trajectories(paths, mixture=None, *, lim=5.0, path=None, title="reverse-time trajectories"):
    """Lines through ``paths`` of shape (steps + 1, n, 2), over the data density when given."""
    plt = _plt()
    paths = np.asarray(paths)
    fig, ax = plt.subplots(figsize=(5, 5))
    if mixture is not None:
        xx, yy, pts = _grid(lim, 100)
        ax.contour(xx, yy, mixture.log_prob(pts).reshape(xx.shape), levels=8, colors="0.7", linewidths=0.6)
    for i in range(paths.shape[1]):
        ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.7, alpha=0.8)
        ax.plot(paths[-1, i, 0], paths[-1, i, 1], "k.", ms=3)  # where each path ends
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    save(fig, path)
    return fig


def samples_vs_truth(samples: dict, truth, *, lim=5.0, max_points=4000, path=None):
    """One scatter panel per entry of ``samples`` ({name: (n, 2) array}) after a panel of ``truth``."""
    plt = _plt()
    panels = [("exact samples", np.asarray(truth))] + [(k, np.asarray(v)) for k, v in samples.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels):
        ax.scatter(x[:max_points, 0], x[:max_points, 1], s=1, alpha=0.4)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    save(fig, path)
    return fig


def image_grid(images, *, rows=None, path=None, title=None):
    """Images (N, 1, H, W) or (N, H, W) with values in [-1, 1] as a grid (``rows`` rows)."""
    x = np.asarray(images)
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 1)) or x.shape[0] == 0:
        raise ValueError(f"images must be one-channel, (N, 1, H, W) or (N, H, W) with N >= 1, got shape {x.shape}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1):
        raise ValueError(f"rows must be an int >= 1 or None, got {rows!r}")
    plt = _plt()
    x = x[:, 0] if x.ndim == 4 else x
    n, h, w = x.shape
    rows = min(rows or int(np.ceil(np.sqrt(n))), n)
    cols = int(np.ceil(n / rows))
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), -1.0)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(cols * 0.45 + 0.5, rows * 0.45 + 0.5))
    ax.imshow(np.clip(canvas, -1, 1), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    save(fig, path)
    return fig


def error_vs_nfe(results: dict, *, path=None, ylabel="RMS error against the reference solution"):
    """``results`` maps a solver name to [(nfe, error), ...]; log-log lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, pts in results.items():
        nfe, err = zip(*sorted(pts))
        ax.loglog(nfe, err, "o-", label=name)
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path)
    return fig


def score_error_over_t(rows, *, path=None):
    """``rows``: dicts with ``t`` and ``rel_mse`` (as :func:`refdiff.train`'s scripts report)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog([r["t"] for r in rows], [r["rel_mse"] for r in rows], "o-")
    ax.set_xlabel("t")
    ax.set_ylabel("E|s - s*|^2 / E|s*|^2")
    ax.set_title("learned against exact score")
    ax.grid(True, which="both", alpha=0.3)
    save(fig, path)
    return fig


def loss_curve(losses, *, decay=0.99, path=None):
    """Per-step losses and their exponential moving average."""
    from .train import moving_average

    plt = _plt()
    losses = np.asarray(losses, dtype=np.float64)
    ema = moving_average(losses, decay)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(losses, lw=0.3, alpha=0.5, label="loss")
    ax.plot(ema, lw=1.5, label=f"moving average ({decay})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    save(fig, path)
    return fig


def benchmark_bars(table: dict, *, unit="ms", path=None, title=None):
    """``table`` maps a configuration to {implementation: time}; grouped bars, log scale."""
    plt = _plt()
    configs = list(table)
    impls = sorted({k for v in table.values() for k in v})
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(configs) * len(impls) / 2), 4))
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        vals = [table[c].get(impl, np.nan) for c in configs]
        ax.bar(np.arange(len(configs)) + j * width, vals, width, label=impl)
    ax.set_xticks(np.arange(len(configs)) + 0.4 - width / 2, configs, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel(unit)
    ax.legend()
    if title:
        ax.set_title(title)
    save(fig, path)
    return fig
