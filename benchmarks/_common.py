"""Helpers shared by the benchmark scripts: timing, thread pinning, machine facts, JSON, bar plots.

Nothing here imports refdiff, NumPy, PyTorch or matplotlib at module level, so
a worker process running under another interpreter (PyTorch's venv) can use
it too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Variables that set a BLAS / OpenMP / Numba pool size; all pinned to one value.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

#: Set on some processors for old OpenBLAS builds; they slow a current NumPy.
CORETYPE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

#: Environment facts recorded with every result.
RECORDED_VARS = THREAD_VARS + CORETYPE_VARS + (
    "NUMBA_THREADING_LAYER",
    "OMP_WAIT_POLICY",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "NVPL_BLAS_DEBUG_CPU_TYPE",
)


def child_env(threads: int, unset_coretype: bool = False, base=None, numba_layer: str = "workqueue",
              omp_wait_policy: str | None = "PASSIVE") -> dict:
    """The environment of a benchmark worker: thread pools pinned to ``threads``.

    ``PYTHONPATH``/``PYTHONHOME``/``PYTHONSTARTUP`` are dropped (a worker finds
    the checkout itself); ``NUMBA_THREADING_LAYER`` defaults to
    ``numba_layer``: ``workqueue`` (OpenMP spin-waits collapse on two shared
    cores), or ``omp``, with ``OMP_WAIT_POLICY`` defaulting to
    ``omp_wait_policy`` (None: OpenMP's own, which spins a while before it
    sleeps). PASSIVE workers sleep at once: the fused sampler's times are the
    same either way and steadier, but waking them costs each call some 70 us,
    a third of the D = 2 mixture score (0.28 ms passive, 0.20 by default),
    so that worker keeps the default. A PyTorch worker keeps its own OpenMP
    policy. ``unset_coretype`` removes ``OPENBLAS_CORETYPE`` and
    ``OPENBLAS_L2_SIZE`` together.
    """
    env = dict(os.environ if base is None else base)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(k, None)
    for k in THREAD_VARS:
        env[k] = str(int(threads))
    env.setdefault("NUMBA_THREADING_LAYER", numba_layer)
    if env["NUMBA_THREADING_LAYER"] == "omp" and omp_wait_policy is not None:
        env.setdefault("OMP_WAIT_POLICY", omp_wait_policy)
    if unset_coretype:
        for k in CORETYPE_VARS:
            env.pop(k, None)
    return env


#: ``--coretype`` choices of the scripts whose refdiff worker runs with and without OPENBLAS_CORETYPE.
CORETYPE_CHOICES = ("auto", "keep", "unset", "both")


def coretype_variants(choice: str, environ=None) -> tuple:
    """``(OPENBLAS_CORETYPE or None, [unset_coretype, ...])``: the worker runs a ``--coretype`` choice asks for.

    ``auto`` runs as is and, where the variable is set, once more without it; ``keep`` as is; ``unset``
    without it; ``both`` both ways whatever the environment holds.
    """
    coretype = (os.environ if environ is None else environ).get("OPENBLAS_CORETYPE")
    if choice == "auto":
        return coretype, [False, True] if coretype else [False]
    if choice not in CORETYPE_CHOICES:
        raise ValueError(f"coretype must be one of {CORETYPE_CHOICES}, got {choice!r}")
    return coretype, {"keep": [False], "unset": [True], "both": [False, True]}[choice]


def jax_env(env, threads):
    """``env`` plus what pins JAX's CPU client to ``threads``.

    XLA:CPU sizes its intra-op pool from ``PJRT_NPROC`` (else every core);
    ``OMP_NUM_THREADS`` and friends do not reach it, and XLA_FLAGS has no
    thread-count flag. ``--xla_cpu_multi_thread_eigen=true`` (the default) is
    written out so the record says the Eigen pool was on.
    """
    flags = " ".join(f for f in (env.get("XLA_FLAGS"), "--xla_cpu_multi_thread_eigen=true") if f)
    return dict(env, PJRT_NPROC=str(int(threads)), XLA_FLAGS=flags, JAX_PLATFORMS="cpu")


#: Environment variables naming the interpreters of the peers (each framework in its own virtualenv).
PEER_PYTHON_VARS = {"torch": "REFDIFF_TORCH_PYTHON", "jax": "REFDIFF_JAX_PYTHON"}


def peer_python(framework: str):
    """The interpreter of a peer framework from ``$REFDIFF_TORCH_PYTHON`` / ``$REFDIFF_JAX_PYTHON``, or None.

    None (the peer is reported as skipped) when the variable is unset or names
    no file; the ``--torch-python`` / ``--jax-python`` options override it.
    """
    path = os.environ.get(PEER_PYTHON_VARS[framework], "")
    return path if path and os.path.isfile(path) else None


def run_worker(cmd, env, name):
    """Run a worker process; ``(the JSON of its last stdout line, None)``, or ``(None, why it failed)``.

    A failed worker's stderr is copied to this process's stderr.
    """
    import subprocess

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return None, f"the {name} worker exited with {proc.returncode}: {tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def recorded_env(env=None) -> dict:
    """The values of :data:`RECORDED_VARS` in ``env`` (None where unset)."""
    env = os.environ if env is None else env
    return {k: env.get(k) for k in RECORDED_VARS}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")) -> list:
    """Which of ``wanted`` the first CPU lists in /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def machine_info() -> dict:
    """Facts about this machine that a result depends on (no per-library details)."""
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def blas_info() -> list:
    """threadpoolctl's view of the loaded BLAS / OpenMP pools ([] without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def time_calls(fn, warmup: int, repeat: int, max_seconds: float | None = None, min_repeat: int = 5) -> list:
    """Seconds taken by each of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls.

    Stops early once ``max_seconds`` of timed calls have passed, but never
    before ``min_repeat`` samples.
    """
    for _ in range(warmup):
        fn()
    times, spent = [], 0.0
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if max_seconds is not None and spent > max_seconds and i + 1 >= min_repeat:
            break
    return times


def positive_int(text) -> int:
    """An ``argparse`` type: ``text`` as an int of at least 1 (``--repeat 0`` would leave nothing to summarise).

    Raises ``argparse.ArgumentTypeError``, which argparse reports with the
    option's name, for anything else.
    """
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), not {text!r}")
    return value


def summary_ms(times) -> dict:
    """min / median / max of ``times`` (seconds) in milliseconds, and the sample count.

    Raises ``ValueError`` when ``times`` is empty: a summary of no timed call
    would be made up.
    """
    times = list(times)
    if not times:
        raise ValueError("summary_ms: times is empty; time at least one call (repeat >= 1)")
    return {
        "min_ms": min(times) * 1e3,
        "median_ms": statistics.median(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "samples": len(times),
    }


def write_json(path, payload) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (temporary file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# --- plots ----------------------------------------------------------------------------------------
# matplotlib is imported inside plot_bar_groups only: a worker under another interpreter, or a machine
# without matplotlib, imports this module all the same.


def plot_path(json_path) -> Path:
    """Where a benchmark's plot goes: next to its JSON, same stem, ``.png``."""
    return Path(json_path).with_suffix(".png")


def bar(name, stats=None, value=None, scale=1.0):
    """One bar of :func:`plot_bar_groups`: ``(name, median, low, high)``, or None where nothing was measured.

    ``stats`` is a :func:`summary_ms` dict (the bar is its median, the whisker
    its min-max range), ``value`` a single figure (no whisker); both are
    multiplied by ``scale`` (e.g. 1e-3 for milliseconds to seconds).
    """
    if stats is not None:
        return (name, stats["median_ms"] * scale, stats["min_ms"] * scale, stats["max_ms"] * scale)
    if value is not None:
        return (name, value * scale, None, None)
    return None


def bar_layout(groups, width=0.8) -> tuple:
    """x positions of the bars of ``groups``: ``([(x, group index, name, median, low, high), ...], bar width)``.

    ``groups`` is a list of dicts with ``"bars"``: a list of :func:`bar`
    tuples (None entries dropped). Group g is centred on x = g; its bars sit
    side by side in their order, each ``width / (most bars in any group)``
    wide. Pure (no matplotlib), so the layout is testable.
    """
    kept = [[b for b in g["bars"] if b is not None] for g in groups]
    w = width / max([len(k) for k in kept] + [1])
    out = []
    for gi, bars in enumerate(kept):
        for j, (name, med, lo, hi) in enumerate(bars):
            out.append((gi + (j - (len(bars) - 1) / 2) * w, gi, name, med, lo, hi))
    return out, w


def plot_bar_groups(path, groups, *, ylabel, title, log=True, value_fmt=None, marker_label="machine floor"):
    """Draw grouped bars to the PNG ``path``; returns the path, or None (with a message) without matplotlib.

    ``groups``: list of dicts with ``"label"`` (x tick), ``"bars"`` (see
    :func:`bar`; a name keeps its colour across groups), optionally
    ``"marker"`` (a value drawn as a dashed line across the group, labelled
    ``marker_label``) and ``"note"`` (a line under the group's label). ``value_fmt``
    (a function of the median) writes each bar's value above it.
    """
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot written ({path})")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars, w = bar_layout(groups)
    names = list(dict.fromkeys(b[2] for b in bars))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    values = [v for b in bars for v in b[3:] if v is not None and v > 0]
    values += [g["marker"] for g in groups if g.get("marker")]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(bars) + 1.0), 4.5))
    labelled = set()
    for x, _, name, med, lo, hi in bars:
        err = None if lo is None else [[med - lo], [hi - med]]
        ax.bar(x, med, w * 0.92, yerr=err, capsize=3, color=colors[name], label=None if name in labelled else name)
        labelled.add(name)
        if value_fmt is not None:
            top = med if hi is None else hi
            ax.text(x, top * (1.12 if log else 1.02), value_fmt(med), ha="center", va="bottom", fontsize=7)
    for gi, g in enumerate(groups):
        n_bars = max(1, sum(b is not None for b in g["bars"]))
        half = n_bars * w / 2 + 0.04
        if g.get("marker"):
            ax.hlines(g["marker"], gi - half, gi + half, colors="k", linestyles="--", linewidth=1.2,
                      label=None if marker_label in labelled else marker_label)
            labelled.add(marker_label)
    ticks = [g["label"] + (f"\n{g['note']}" if g.get("note") else "") for g in groups]
    ax.set_xticks(range(len(groups)), ticks, fontsize=8)
    if log:
        ax.set_yscale("log")
        if values:
            ax.set_ylim(min(values) / 3, max(values) * 3)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", which="major", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
