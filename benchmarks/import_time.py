"""Time `import refdiff` and `refdiff --help` against their budgets.

Each is measured in a fresh interpreter, best of 5 runs:

* ``import refdiff``: wall time of the import statement alone (time.perf_counter
  around it, inside the child), budget 0.15 s;
* ``import numpy``: the same, as a baseline without a budget (refdiff cannot
  import faster than NumPy does);
* ``refdiff --help``: wall time of the whole command, interpreter start-up
  included, as a user waits for it, budget 0.2 s. It runs the console script
  installed beside this Python, or ``python -m refdiff`` without one.

The refdiff measured is the one ``python -c 'import refdiff'`` finds from the
repository root (the checkout, first on sys.path). Prints one line per
measurement and exits 1 when one is over its budget. ``--json PATH`` also writes
the results with the machine and versions.

Usage: python benchmarks/import_time.py [--repeat 5] [--json PATH]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPORT_BUDGET_S = 0.15
HELP_BUDGET_S = 0.2

TIME_IMPORT = "import time; t0 = time.perf_counter(); import {module}; print(time.perf_counter() - t0)"


def child_env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def time_import(repeat, module="refdiff"):
    """Seconds taken by `import module` in each of ``repeat`` fresh interpreters."""
    times = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", TIME_IMPORT.format(module=module)], cwd=REPO, env=child_env(), capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def help_command():
    script = Path(sys.executable).parent / "refdiff"
    if script.is_file():
        return [str(script), "--help"]
    return [sys.executable, "-m", "refdiff", "--help"]


def time_help(repeat):
    """Wall seconds of each of ``repeat`` runs of `refdiff --help`."""
    command, times = help_command(), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return command, times


def summary(name, times, budget, **extra):
    best = min(times)
    return {
        "name": name,
        "budget_s": budget,
        "min_s": best,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "runs": len(times),
        "within_budget": budget is None or best < budget,
        **extra,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per measurement (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeat < 1:  # nothing to take the minimum of (this script imports no helpers: it times imports)
        parser.error(f"--repeat must be a positive integer (1 or more), not {args.repeat}")

    # `import numpy` has no budget of its own: it is the floor under refdiff's.
    baseline = summary("import numpy (baseline)", time_import(args.repeat, "numpy"), None)
    results = [summary("import refdiff", time_import(args.repeat), IMPORT_BUDGET_S)]
    if (REPO / "refdiff" / "cli.py").exists():
        command, times = time_help(args.repeat)
        results.append(summary("refdiff --help", times, HELP_BUDGET_S, command=" ".join(command)))
    else:
        print("refdiff --help: skipped, refdiff/cli.py does not exist")

    for r in [baseline, *results]:
        if r["budget_s"] is None:
            verdict = "no budget"
        else:
            verdict = f"budget {r['budget_s'] * 1e3:.0f} ms: " + ("ok" if r["within_budget"] else "OVER BUDGET")
        print(
            f"{r['name']}: best of {r['runs']} {r['min_s'] * 1e3:.1f} ms "
            f"(median {r['median_s'] * 1e3:.1f} ms, max {r['max_s'] * 1e3:.1f} ms), {verdict}"
        )

    if args.json:
        import numpy

        payload = {
            "benchmark": "import_time",
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "versions": {"python": platform.python_version(), "numpy": numpy.__version__},
            "baseline": baseline,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    return 0 if all(r["within_budget"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
