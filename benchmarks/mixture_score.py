"""Time the exact mixture score: refdiff's reference (NumPy, (K, N) layout) vs its Numba twin vs PyTorch eager.

The problem: an isotropic Gaussian mixture (K components in D dimensions,
means 3 N(0, I), variances U(0.1, 0.5)) diffused by the VP SDE to t = 0.5,
its score at N float32 points. Sizes (N, D, K) default to the issue's
(1e5, 2, 8), (1e5, 16, 32), (1e4, 64, 128).

Before timing, each backend's score is checked against the float64
reference (max error relative to the largest score entry below 1e-4); the
script stops with exit status 2 otherwise. PyTorch runs in its own
interpreter (``--torch-python``, default /opt/torchenv/bin/python when it
exists) with the same pinned thread count; it computes the score the way a
PyTorch user would (``torch.cdist``, ``softmax``, a matrix product), is given
the same points and mixture, and is checked the same way. ``--crossover``
also times both refdiff backends at small N (the size at which Numba starts
to pay sets ``refdiff.analytic.NUMBA_MIN_WORK``).

Usage::

    .venv/bin/python benchmarks/mixture_score.py [--threads 2] [--repeat 30]
        [--sizes 100000,2,8 ...] [--crossover] [--torch-python PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, machine_info, recorded_env, summary_ms, time_calls, write_json  # noqa: E402

DEFAULT_SIZES = ["100000,2,8", "100000,16,32", "10000,64,128"]
TORCH_PYTHON = "/opt/torchenv/bin/python"


def problem(N, D, K, seed=0):
    """Host float64 mixture data, gamma_t, sigma_t^2 and float32 points."""
    import numpy as np

    from refdiff.sde import VPSDE

    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((K, D))
    variances = rng.uniform(0.1, 0.5, K)
    x = (3.0 * rng.standard_normal((N, D))).astype(np.float32)
    process = VPSDE()
    return means, variances, x, float(process.mean_coef(0.5)), float(process.variance(0.5))


def refdiff_worker(sizes, repeat, crossover):
    import numpy as np

    from refdiff.analytic import GaussianMixture
    from refdiff.backend import keep_freed_memory
    from refdiff.sde import VPSDE

    keep_freed_memory()
    out = []
    for N, D, K in sizes:
        means, variances, x, _, _ = problem(N, D, K)
        gm, process = GaussianMixture(np.full(K, 1.0 / K), means, variances), VPSDE()
        want = gm.score(x.astype(np.float64), process, 0.5, backend="numpy")
        row = {"N": N, "D": D, "K": K}
        for backend in ("numpy", "numba"):
            got = gm.score(x, process, 0.5, backend=backend)  # also compiles / loads the cache
            err = float(np.abs(got - want).max() / np.abs(want).max())
            if not err < 1e-4:
                raise SystemExit(f"{backend} score differs from the float64 reference: {err:.3g}")
            times = time_calls(lambda: gm.score(x, process, 0.5, backend=backend), 2, repeat, max_seconds=20)
            row[backend] = dict(summary_ms(times), rel_err=err)
        out.append(row)
    cross = []
    if crossover:
        for N in (10, 100, 300, 1000, 3000, 10000):
            for D, K in ((2, 8), (16, 32)):
                means, variances, x, _, _ = problem(N, D, K)
                gm = GaussianMixture(np.full(K, 1.0 / K), means, variances)
                row = {"N": N, "D": D, "K": K, "work": N * D * K}
                for backend in ("numpy", "numba"):
                    times = time_calls(lambda: gm.score(x, VPSDE(), 0.5, backend=backend), 3, 200, max_seconds=1)
                    row[backend] = summary_ms(times)["median_ms"]
                cross.append(row)
    return {"rows": out, "crossover": cross}


def torch_worker(sizes, repeat, threads):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    out = []
    for N, D, K in sizes:
        means, variances, x, g, v = problem_np(N, D, K)
        c = g * g * variances + v  # (K,)
        const = np.log(1.0 / K) - 0.5 * D * np.log(2 * np.pi * c)
        X, GMU = torch.from_numpy(x), torch.from_numpy((g * means).astype(np.float32))
        C, CONST = torch.from_numpy(c.astype(np.float32)), torch.from_numpy(const.astype(np.float32))

        def score():
            logits = CONST - 0.5 * torch.cdist(X, GMU).square() / C  # (N, K)
            rc = torch.softmax(logits, dim=1) / C  # r_k / c_k
            return rc @ GMU - rc.sum(1, keepdim=True) * X

        with torch.inference_mode():
            got = score().numpy()
            times = time_calls(score, 2, repeat, max_seconds=20)
        out.append({"N": N, "D": D, "K": K, "torch": summary_ms(times)})
        np.save(os.environ["REFDIFF_BENCH_OUT"] + f".{N}_{D}_{K}.npy", got)
    return {"rows": out, "torch": torch.__version__}


def problem_np(N, D, K, seed=0):
    """:func:`problem` without refdiff (the PyTorch interpreter may lack it): VP SDE at t = 0.5 by formula."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((K, D))
    variances = rng.uniform(0.1, 0.5, K)
    x = (3.0 * rng.standard_normal((N, D))).astype(np.float32)
    t, beta_min, beta_max = 0.5, 0.1, 20.0  # refdiff.sde.VPSDE defaults
    log_gamma = -0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min
    return means, variances, x, float(np.exp(log_gamma)), float(-np.expm1(2 * log_gamma))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--torch-python", default=TORCH_PYTHON if os.path.exists(TORCH_PYTHON) else None)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "mixture_score.json"))
    ap.add_argument("--worker", choices=("refdiff", "torch"))
    args = ap.parse_args(argv)
    sizes = [tuple(int(s) for s in spec.split(",")) for spec in args.sizes]
    if args.worker == "refdiff":
        print(json.dumps(refdiff_worker(sizes, args.repeat, args.crossover)))
        return 0
    if args.worker == "torch":
        print(json.dumps(torch_worker(sizes, args.repeat, args.threads)))
        return 0

    env = child_env(args.threads)
    common = ["--threads", str(args.threads), "--repeat", str(args.repeat), "--sizes", *args.sizes]
    run = subprocess.run(
        [sys.executable, __file__, "--worker", "refdiff", *common] + (["--crossover"] if args.crossover else []),
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if run.returncode:
        sys.stderr.write(run.stderr)
        return 2
    result = json.loads(run.stdout)
    torch_info = None
    if args.torch_python:
        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            tenv = dict(env, REFDIFF_BENCH_OUT=str(Path(tmp) / "score"))
            trun = subprocess.run([args.torch_python, __file__, "--worker", "torch", *common], env=tenv, capture_output=True, text=True)
            if trun.returncode:
                sys.stderr.write(trun.stderr)
                return 2
            tres = json.loads(trun.stdout)
            torch_info = tres["torch"]
            from refdiff.analytic import GaussianMixture
            from refdiff.sde import VPSDE

            for row, trow in zip(result["rows"], tres["rows"]):
                N, D, K = row["N"], row["D"], row["K"]
                means, variances, x, _, _ = problem(N, D, K)
                want = GaussianMixture(np.full(K, 1.0 / K), means, variances).score(x.astype(np.float64), VPSDE(), 0.5, backend="numpy")
                got = np.load(Path(tmp) / f"score.{N}_{D}_{K}.npy")
                err = float(np.abs(got - want).max() / np.abs(want).max())
                if not err < 1e-4:
                    print(f"torch score differs from the float64 reference at {(N, D, K)}: {err:.3g}", file=sys.stderr)
                    return 2
                row["torch"] = dict(trow["torch"], rel_err=err)
    for row in result["rows"]:
        ref = row["numpy"]["median_ms"]
        row["speedup_numba_vs_numpy"] = ref / row["numba"]["median_ms"]
        if "torch" in row:
            row["speedup_numba_vs_torch"] = row["torch"]["median_ms"] / row["numba"]["median_ms"]
    payload = {
        "benchmark": "mixture_score",
        "dtype": "float32",
        "covariance": "isotropic",
        "threads": args.threads,
        "machine": machine_info(),
        "env": recorded_env(env),
        "torch": torch_info,
        **result,
    }
    path = write_json(args.json, payload)
    print(f"{'N':>7} {'D':>3} {'K':>4} {'numpy ms':>9} {'numba ms':>9} {'torch ms':>9} {'numba/np':>8} {'vs torch':>8}")
    for r in result["rows"]:
        t = r.get("torch", {}).get("median_ms", float("nan"))
        print(f"{r['N']:>7} {r['D']:>3} {r['K']:>4} {r['numpy']['median_ms']:9.2f} {r['numba']['median_ms']:9.2f} {t:9.2f} "
              f"{r['speedup_numba_vs_numpy']:8.1f} {r.get('speedup_numba_vs_torch', float('nan')):8.2f}")  # fmt: skip
    for r in result["crossover"]:
        print(f"crossover N={r['N']:>6} D={r['D']:>3} K={r['K']:>3} work={r['work']:>9}: numpy {r['numpy']:.3f} ms, numba {r['numba']:.3f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
