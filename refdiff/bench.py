"""``refdiff bench``: run the speed benchmarks of the source checkout and put their ratios in one table.

The scripts live in ``benchmarks/`` next to the package in a source checkout
(they are not installed). Each runs as a subprocess under this interpreter,
writes its own JSON, and is read back here into rows: refdiff's fastest
backend against the NumPy reference and against the peer (PyTorch on the same
CPU; for the fused sampler, JAX's whole-loop jit, measured when the script
could run JAX, else its recorded time, and diffusers' DDPMScheduler loop for
its DDPM row), with the goal and whether it is met.
Every ratio is "other time / refdiff time", so > 1 means refdiff is faster,
whatever convention the script itself prints.

Nothing here imports NumPy; the functions that build command lines and parse
payloads run without the heavy scripts.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "BENCHMARKS", "QUICK_ARGS", "find_benchmarks", "find_torch_python", "skip_reason", "build_command",
    "parse_result", "format_table", "run_one",
]

#: The speed benchmarks, fastest first (the quality scripts take minutes to hours and are not run).
BENCHMARKS = ("mixture_score", "fused_sampler", "cnn_step", "mlp_step")

#: Options that make each script short: its own --quick, or fewer repeats at the same sizes.
QUICK_ARGS = {
    "mlp_step": ["--quick"],
    "cnn_step": ["--warmup", "1", "--repeat", "5", "--rounds", "1"],
    "mixture_score": ["--repeat", "5", "--no-torch-compile"],
    "fused_sampler": ["--repeat", "1", "--ref-steps", "20"],
}

#: Benchmarks that time a Numba twin and cannot run without Numba.
NEEDS_NUMBA = ("mixture_score", "fused_sampler")

#: Benchmarks with PyTorch as a peer (fused_sampler: its DDPM row, diffusers' DDPMScheduler on torch eager).
TORCH_PEER = ("mlp_step", "cnn_step", "mixture_score", "fused_sampler")

#: Environment variable naming an interpreter with PyTorch (the peers run in their own virtualenvs).
TORCH_PYTHON_VAR = "REFDIFF_TORCH_PYTHON"

#: Goal on "peer time / refdiff time" where the script records none (DESIGN.md: twins beat every peer).
BEAT_PEER = 1.0


def find_benchmarks(package_file=None) -> Path:
    """The ``benchmarks/`` folder of the source checkout holding the package (``refdiff/..``).

    Raises ``FileNotFoundError`` with a message for the user when it is not
    there (an installed, non-editable refdiff has no benchmarks).
    """
    if package_file is None:
        from . import __file__ as package_file
    folder = Path(package_file).resolve().parent.parent / "benchmarks"
    missing = [n for n in BENCHMARKS if not (folder / f"{n}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"the benchmark scripts live in the source checkout (benchmarks/ next to refdiff/), not in the installed "
            f"package; {folder} has no {', '.join(m + '.py' for m in missing)}. Clone the repository and install it "
            f"with 'pip install -e .' to run them")
    return folder


def find_torch_python(requested=None, default=None, timeout=120):
    """``(interpreter, torch version, reason)``: an interpreter that imports torch, or None and why not.

    ``requested`` is a path, ``"none"`` (skip PyTorch) or None (``default``, else
    ``$REFDIFF_TORCH_PYTHON``, when it names a file, else this interpreter).
    """
    if requested is not None and requested.lower() == "none":
        return None, None, "--torch-python none"
    default = default or os.environ.get(TORCH_PYTHON_VAR, "")
    python = requested or (default if default and os.path.exists(default) else sys.executable)
    try:
        done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, None, f"cannot run {python}: {exc}"
    if done.returncode:
        return None, None, f"torch is not importable by {python}; pass --torch-python"
    return python, done.stdout.strip().splitlines()[-1], None


def have_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def skip_reason(name, numba_available) -> str | None:
    """Why benchmark ``name`` cannot run at all here, or None."""
    if name in NEEDS_NUMBA and not numba_available:
        return "numba is not installed (pip install 'refdiff[fast]')"
    return None


def build_command(name, folder, json_path, quick=False, torch_python=None, python=None) -> list:
    """The command line that runs benchmark ``name`` and writes its JSON to ``json_path``.

    ``torch_python`` None leaves PyTorch out where the script allows it
    (mlp_step ``--torch-python none``, mixture_score and fused_sampler
    ``--torch-python ''``; cnn_step then tries this interpreter and skips
    PyTorch if it lacks torch). It is always passed to a script that would
    otherwise fall back to ``$REFDIFF_TORCH_PYTHON`` on its own, so that
    ``refdiff bench --torch-python`` (``none`` included) holds for every row.
    """
    if name not in QUICK_ARGS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    cmd = [python or sys.executable, str(Path(folder) / f"{name}.py")]
    if quick:
        cmd += QUICK_ARGS[name]
    if name == "mlp_step":
        cmd += ["--torch-python", torch_python or "none"]
    elif name in ("mixture_score", "fused_sampler"):
        cmd += ["--torch-python", torch_python or ""]
    elif name == "cnn_step" and torch_python:
        cmd += ["--torch-python", torch_python]
    return cmd + ["--json", str(json_path)]


# --- parsers: one script's JSON -> rows ----------------------------------------------------------


def _row(benchmark, size, refdiff_ms, backend, reference_ms=None, peer=None, peer_ms=None, vs_reference=None,
         vs_peer=None, goal=None, met=None, note=None):
    return {"benchmark": benchmark, "size": size, "refdiff_ms": refdiff_ms, "backend": backend,
            "reference_ms": reference_ms, "peer": peer, "peer_ms": peer_ms, "vs_reference": vs_reference,
            "vs_peer": vs_peer, "goal": goal, "met": met, "note": note}


def _ratio(other, ours):
    return None if other is None or ours is None or not ours else other / ours


#: The issue's goals where a script states none. U-Net step: within 2x of PyTorch eager.
CNN_WITHIN = 0.5
#: Mixture score: at least as fast as JAX jit, measured on this 2-core CPU before refdiff existed
#: (float32; (N, D, K) -> ms). The goal where the script's JSON has no JAX time of its own.
JAX_MIXTURE_MS = {(100_000, 2, 8): 1.78, (100_000, 16, 32): 2.1, (10_000, 64, 128): 1.16}


def _at_least(value, goal):
    return None if value is None else bool(value >= goal)


def parse_mlp_step(payload) -> list:
    """One row per (width, batch) and OPENBLAS_CORETYPE variant: medians, fastest backend vs fastest torch Adam."""
    goal = float(payload["goal"]["ratio_at_least"])
    runs = payload["runs"]
    rows = []
    for run in runs:
        suffix = "" if len(runs) == 1 else (" coretype unset" if run["coretype_unset"] else " coretype set")
        for c in run["configs"]:
            best = c["refdiff_best"]
            ours = c["refdiff"]["median_ms"]
            ref = c["refdiff_backends"].get("numpy", {}).get("median_ms")
            peer = peer_ms = None
            if "torch" in c:
                peer = f"torch ({c['torch_best']} Adam)"
                peer_ms = c["torch"][c["torch_best"]]["median_ms"]
            vs_peer = c.get("ratio_median", _ratio(peer_ms, ours))
            rows.append(_row("mlp_step", f"W{c['width']} N{c['batch']} {run['dtype']}{suffix}", ours, best, ref, peer,
                             peer_ms, _ratio(ref, ours), vs_peer, f"vs peer >= {goal:g}", _at_least(vs_peer, goal)))
    return rows


def parse_cnn_step(payload) -> list:
    """One row: the U-Net step (its GroupNorm + SiLU on the recorded backend) against PyTorch eager, medians."""
    cfg = payload["model"]["config"]
    shape = "x".join(str(s) for s in cfg["image_shape"])
    size = f"U-Net {shape} ch {cfg['channels']}x{','.join(str(m) for m in cfg['channel_mult'])} B{payload['batch']}"
    ours = payload["refdiff"]["median_ms"]
    backend = payload.get("backend", "numpy")  # older JSON: the NumPy-only U-Net
    torch = payload.get("torch")
    peer_ms = torch["median_ms"] if torch else None
    vs_peer = _ratio(peer_ms, ours)
    return [_row("cnn_step", size, ours, backend, ours if backend == "numpy" else None, "torch" if torch else None,
                 peer_ms, 1.0 if backend == "numpy" else None, vs_peer, f"vs peer >= {CNN_WITHIN:g} (within 2x)",
                 _at_least(vs_peer, CNN_WITHIN))]


def parse_mixture_score(payload) -> list:
    """One row per (N, D, K): fastest of the numpy/numba backends against NumPy and torch, medians.

    The goal is JAX jit's median as the script measured it, else the recorded :data:`JAX_MIXTURE_MS`;
    at D <= 4 also the share of the machine's floor the row records, at least 40%: ``floor_same_run`` (its
    exp rate measured beside the timing, in the same process) where the script recorded one, else ``floor``
    (the peaks of machine_peak.py's JSON). Where the
    script also ran refdiff without OPENBLAS_CORETYPE (keys ending ``_coretype_unset``), each size gets a
    second row, "coretype unset", against the same peers.
    """
    rows = []
    for r in payload["rows"]:
        tags = [""] + (["_coretype_unset"] if "numba_coretype_unset" in r else [])
        for tag in tags:
            backends = {b: r[b + tag]["median_ms"] for b in ("numpy", "numba", "cupy") if b + tag in r}
            best = min(backends, key=backends.get)
            ours, ref = backends[best], backends.get("numpy")
            peer_ms = r["torch"]["median_ms"] if "torch" in r else None
            vs_peer = _ratio(peer_ms, ours)
            if "jax" in r:
                jax_ms = r["jax"]["median_ms"]
                goal = f"<= JAX jit {jax_ms:.3g} ms (measured)"
            else:
                jax_ms = JAX_MIXTURE_MS.get((int(r["N"]), int(r["D"]), int(r["K"])))
                goal = None if jax_ms is None else f"<= JAX jit {jax_ms:g} ms (recorded)"
            met = None if jax_ms is None else bool(ours <= jax_ms)
            same_run = not tag and "floor_same_run" in r
            floor = r["floor_same_run"] if same_run else r.get("floor" + tag)
            if floor and int(r["D"]) <= 4:  # and at least 40% of the machine's floor at D <= 4
                a = floor["achieved"]
                floor_goal = (f">= {a['goal']:.0%} of the machine floor (at {a['floor_fraction']:.0%}"
                              + (", exp rate of the same run)" if same_run else ")"))
                goal = floor_goal if goal is None else f"{goal}; {floor_goal}"
                met = bool(a["goal_met"]) if met is None else met and bool(a["goal_met"])
            size = f"N={r['N']} D={r['D']} K={r['K']} {payload.get('dtype', '')}".strip()
            if len(tags) == 2:  # the first run as the environment had it: with OPENBLAS_CORETYPE, if it was set
                size += " coretype unset" if tag else (" coretype set" if payload.get("openblas_coretype") else " as is")
            rows.append(_row("mixture_score", size, ours, best, ref, "torch" if peer_ms is not None else None,
                             peer_ms, _ratio(ref, ours), vs_peer, goal, met))
    return rows


def parse_fused_sampler(payload) -> list:
    """The fused Numba loop against the NumPy loop (extrapolated) and JAX's whole-loop jit, minima.

    JAX as the script measured it, or its recorded time (``jax_whole_loop_source``; older JSON: recorded). The
    recorded time is for one size only: elsewhere the script leaves the speedup and ``goal_met`` null (its
    ``jax_goal_reason`` says why) and the row has no peer time, no ratio and no verdict, its goal marked not
    comparable.
    A second row where the script ran its DDPM section (``ddpm_vs_diffusers``): the fused DDPM run against
    diffusers' DDPMScheduler loop, minima, goal :data:`BEAT_PEER`.
    """
    s = payload["sizes"]
    size = f"n={s['n']} steps={s['steps']} {s['dtype']}"
    check = payload.get("check", {})
    if not check.get("ok", False):
        return [_row("fused_sampler", size, None, "numba", note=f"check failed: max |diff| {check.get('max_abs_diff')}")]
    note = f"reference timed on {payload['numpy_reference_measured']['rows']} steps, extrapolated; minima"
    if payload["goal_met"] is None:  # no JAX time at this size: nothing to set the kernel against
        reason = payload.get("jax_goal_reason") or "no JAX time at this size"
        rows = [_row("fused_sampler", size, payload["numba"]["min_ms"], "numba",
                     payload["numpy_reference_extrapolated_ms"], "JAX jit (recorded at another size)", None,
                     payload["speedup_vs_reference"], None, "vs peer >= 3: not comparable", None, f"{note}; {reason}")]
    else:
        peer = f"JAX jit ({payload.get('jax_whole_loop_source') or 'recorded'})"
        rows = [_row("fused_sampler", size, payload["numba"]["min_ms"], "numba",
                     payload["numpy_reference_extrapolated_ms"], peer, payload["jax_whole_loop_s"] * 1e3,
                     payload["speedup_vs_reference"], payload["speedup_vs_jax_whole_loop"], "vs peer >= 3",
                     bool(payload["goal_met"]), note)]
    ddpm = payload.get("ddpm_vs_diffusers")
    if ddpm and ddpm.get("status") == "ok":  # skipped or failed: the script's own table says why
        ours, theirs = ddpm["refdiff"]["numba"]["min_ms"], ddpm["diffusers"]["times"]["min_ms"]
        vs_peer = _ratio(theirs, ours)
        rows.append(_row("fused_sampler", f"DDPM n={s['n']} steps={ddpm['schedule']['steps']} {ddpm['refdiff']['dtype']}",
                         ours, "numba", None, "diffusers DDPMScheduler (torch eager)", theirs, None, vs_peer,
                         f"vs peer >= {BEAT_PEER:g}", _at_least(vs_peer, BEAT_PEER), "minima; diffusers in float32"))
    return rows


PARSERS = {"mlp_step": parse_mlp_step, "cnn_step": parse_cnn_step, "mixture_score": parse_mixture_score,
           "fused_sampler": parse_fused_sampler}


def parse_result(name, payload) -> list:
    """Rows of benchmark ``name``'s JSON ``payload`` (``ValueError`` naming the missing key when it has another shape)."""
    try:
        return PARSERS[name](payload)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{name}: unexpected JSON ({type(exc).__name__}: {exc})") from None


# --- running and printing ------------------------------------------------------------------------


def run_one(name, cmd, log_path, cwd=None, timeout=None) -> tuple:
    """Run one benchmark command with stdout and stderr going to ``log_path``: ``(exit status, seconds)``."""
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\nrefdiff bench: {name} stopped after {timeout} s\n")
            rc = 124
    return rc, time.perf_counter() - t0


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def format_table(results) -> str:
    """The rows of every benchmark as one text table; ``results`` is a list of {name, status, reason, rows}."""
    head = ("benchmark", "size", "refdiff ms", "backend", "reference ms", "peer", "peer ms", "vs ref", "vs peer",
            "goal", "result")
    lines = []
    for res in results:
        if res["status"] != "ok":
            lines.append((res["name"], f"{res['status']} ({res['reason']})"))
            continue
        for r in res["rows"]:
            met = "n/a" if r["met"] is None else ("met" if r["met"] else "NOT met")
            peer = r["peer"] or f"skipped ({res.get('peer_reason') or 'no peer in the JSON'})"
            lines.append((r["benchmark"], r["size"], _ms(r["refdiff_ms"]), r["backend"], _ms(r["reference_ms"]), peer,
                          _ms(r["peer_ms"]), _x(r["vs_reference"]), _x(r["vs_peer"]), r["goal"] or "-", met))
    full = [ln for ln in lines if len(ln) == len(head)]
    widths = [max(len(str(x[i])) for x in [head, *full]) for i in range(len(head))]
    right = {2, 4, 6, 7, 8}

    def fmt(cells):
        if len(cells) != len(head):
            return f"{cells[0].ljust(widths[0])}  {cells[1]}"
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(ln) for ln in lines]
    return "\n".join(out)
