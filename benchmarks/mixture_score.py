"""Time the exact mixture score: refdiff's reference (NumPy, (K, N) layout) vs its Numba twin vs PyTorch and JAX.

The problem: an isotropic Gaussian mixture (K components in D dimensions,
means 3 N(0, I), variances U(0.1, 0.5)) diffused by the VP SDE to t = 0.5,
its score at N float32 points. Sizes (N, D, K) default to the issue's
(1e5, 2, 8), (1e5, 16, 32), (1e4, 64, 128), and (1e5, 4, 8): the issue's
floor bound covers every D <= 4, and D = 4 is its hardest case (twice the
coordinates per point of D = 2 against the same count of exps).

Before timing, each backend's score is checked against the float64
reference (max error relative to the largest score entry below 1e-4); the
script stops with exit status 2 otherwise. The peers run in the same
invocation, one after the other, each in its own interpreter with the same
pinned thread count, given the same points and mixture (``problem_np``: they
cannot import refdiff), and are checked the same way:

* PyTorch (``--torch-python``, default ``$REFDIFF_TORCH_PYTHON``): the
  score the way a PyTorch user would write it (``torch.cdist``,
  ``softmax``, a matrix product), eager and through ``torch.compile``
  (``--no-torch-compile`` leaves the second out; a compile that fails, e.g.
  without a C++ compiler, is recorded as skipped with its reason). The JSON
  has each size's compile time, which Inductor's on-disk cache shortens on
  a rerun (some 20 s per size cold on 2 cores, 0.1-3 s warm).
* JAX (``--jax-python``, default ``$REFDIFF_JAX_PYTHON``):
  ``jax.jit`` of the expanded-distance form, ``jax.nn.softmax`` and a matrix
  product, ``block_until_ready`` inside the timed call. XLA's CPU thread pool
  is sized by ``PJRT_NPROC`` (set to ``--threads``; XLA_FLAGS has no thread
  count option, and a bare ``intra_op_parallelism_threads=N`` there is
  silently ignored); the JSON records what was set.

refdiff's worker runs Numba on its OpenMP layer with OpenMP's default wait
policy, as a plain environment has it (``_common.child_env``: workers told
to sleep at once cost each call some 70 us to wake).

The GEMM path (D >= 5) forms its products with its own register tiles on
a CPU with AVX-512, and with BLAS from inside its kernel elsewhere
(``mixture_numba.gemm_products``), where its speed depends on the kernels
OpenBLAS picks; the NumPy reference's products go through BLAS everywhere.
On an AVX-512 CPU the coretype rerun below therefore changes only the NumPy
reference's time, not refdiff's.
Where ``OPENBLAS_CORETYPE`` is set
(``Haswell`` confines OpenBLAS to 256-bit kernels on an AVX-512 CPU), the
default ``--coretype auto`` runs refdiff's worker a second time without it
and ``OPENBLAS_L2_SIZE`` (``numba_coretype_unset`` / ``numpy_coretype_unset``
in each row, with their own floor share under ``floor_coretype_unset``);
``keep`` runs the environment as it is, ``unset`` only without them, ``both``
both ways whatever the environment holds. The peers run once: neither JAX nor
PyTorch calls OpenBLAS for these products.

A peer whose interpreter is not given is reported as skipped. ``--crossover``
also times both refdiff backends at small N (the size at which Numba starts
to pay sets ``refdiff.analytic.NUMBA_MIN_WORK``).

Each row also gets the machine's floor for that problem
(``machine_peak.mixture_score_floor``: flops, exps and bytes against the
peaks measured by benchmarks/machine_peak.py, whose JSON is reused when it is
recent) and the fraction of it the Numba twin reaches, with the issue's bound
(at least 40% at D <= 4); ``--no-floor`` leaves it out. Beside it,
``floor_same_run`` is the same floor at the float32 exp rate measured just
before and just after the Numba twin's timing, in its process
(``exp_per_s_around``; ``machine_peak.project_exp_rate``, some 0.3 s each):
on a shared VM that rate moved by a third from one day to the next, and a
floor is a ratio to be taken in one run. ``refdiff bench`` judges the goal by
it where it is there.

Next to the JSON goes a plot (same stem, ``.png``; ``--no-plot`` leaves it
out, and it is skipped with a message without matplotlib): per size, the
median milliseconds (min-max whiskers, log scale) of every implementation
that ran, and the machine floor as a dashed line across the group.

Usage::

    .venv/bin/python benchmarks/mixture_score.py [--threads 2] [--repeat 30]
        [--sizes 100000,2,8 ...] [--crossover] [--torch-python PATH] [--no-torch-compile]
        [--jax-python PATH] [--coretype auto|keep|unset|both] [--no-floor] [--no-plot] [--json PATH]
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
from _common import (  # noqa: E402
    CORETYPE_CHOICES, REPO, bar, child_env, coretype_variants, jax_env, machine_info, peer_python, plot_bar_groups,
    plot_path, positive_int, recorded_env, run_worker, summary_ms, time_calls, write_json,
)

DEFAULT_SIZES = ["100000,2,8", "100000,4,8", "100000,16,32", "10000,64,128"]

#: The timed variants of each peer worker, as the row keys and score file names.
PEER_VARIANTS = {"torch": ("torch", "torch_compile"), "jax": ("jax",)}

#: Every implementation a row may hold, in plot order, with its legend name.
PLOT_NAMES = {"numpy": "numpy reference", "numba": "numba", "numba_coretype_unset": "numba, OPENBLAS_CORETYPE unset",
              "torch": "torch eager", "torch_compile": "torch.compile", "jax": "jax jit"}

#: Suffix of a row's keys measured by the second refdiff worker, without OPENBLAS_CORETYPE.
UNSET = "_coretype_unset"


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


def refdiff_worker(sizes, repeat, crossover, exp_rates=False):
    """refdiff's timings, per size; with ``exp_rates`` also the project's float32 exp throughput on Numba's
    threads measured just before and just after the Numba twin is timed (``exp_per_s_around``)."""
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
            if backend == "numba" and exp_rates:
                import machine_peak
                import numba

                before = machine_peak.project_exp_rate(numba.get_num_threads())
            times = time_calls(lambda: gm.score(x, process, 0.5, backend=backend), 2, repeat, max_seconds=20)
            row[backend] = dict(summary_ms(times), rel_err=err)
            if backend == "numba" and exp_rates:
                row["exp_per_s_around"] = [before, machine_peak.project_exp_rate(numba.get_num_threads())]
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


def peer_arrays(N, D, K):
    """float32 peer inputs: points, scaled means gamma mu_k, c_k = gamma^2 v_k + sigma^2, log normalisers."""
    import numpy as np

    means, variances, x, g, v = problem_np(N, D, K)
    c = g * g * variances + v  # (K,)
    const = np.log(1.0 / K) - 0.5 * D * np.log(2 * np.pi * c)
    return x, (g * means).astype(np.float32), c.astype(np.float32), const.astype(np.float32)


def _save_score(variant, N, D, K, got):
    import numpy as np

    np.save(os.environ["REFDIFF_BENCH_OUT"] + f".{variant}.{N}_{D}_{K}.npy", np.asarray(got))


def torch_worker(sizes, repeat, threads, compile_too):
    import time

    import torch

    torch.set_num_threads(threads)

    def score(X, GMU, C, CONST):
        logits = CONST - 0.5 * torch.cdist(X, GMU).square() / C  # (N, K)
        rc = torch.softmax(logits, dim=1) / C  # r_k / c_k
        return rc @ GMU - rc.sum(1, keepdim=True) * X

    # torch.compile (Inductor) needs a C++ compiler on CPU; where it fails the eager numbers still stand
    compiled = {"status": "ok", "backend": "inductor", "dynamic": False} if compile_too else {"status": "off"}
    out = []
    for N, D, K in sizes:
        args = [torch.from_numpy(a) for a in peer_arrays(N, D, K)]
        row = {"N": N, "D": D, "K": K}
        with torch.inference_mode():
            _save_score("torch", N, D, K, score(*args).numpy())
            row["torch"] = summary_ms(time_calls(lambda: score(*args), 2, repeat, max_seconds=20))
            if compiled["status"] == "ok":
                try:
                    torch._dynamo.reset()  # one compile per size, timed on its own
                    fn = torch.compile(score, dynamic=False)
                    t0 = time.perf_counter()
                    got = fn(*args).numpy()
                    compile_s = time.perf_counter() - t0
                except Exception as exc:  # any backend failure: skipped, with its reason
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    compiled = {"status": "skipped", "reason": f"{type(exc).__name__}: {first}"}
                else:
                    _save_score("torch_compile", N, D, K, got)
                    times = time_calls(lambda: fn(*args), 2, repeat, max_seconds=20)
                    row["torch_compile"] = dict(summary_ms(times), compile_s=compile_s)
        out.append(row)
    return {"rows": out, "torch": torch.__version__, "torch_compile": compiled}


def jax_worker(sizes, repeat):
    import jax
    import jax.numpy as jnp
    import numpy as np

    @jax.jit
    def score(x, gmu, c, const):
        # |x - gamma mu_k|^2 expanded, so the (N, K) distances are one matrix product, as a JAX user writes it
        d2 = jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * (x @ gmu.T) + jnp.sum(gmu * gmu, axis=1)
        rc = jax.nn.softmax(const - 0.5 * d2 / c, axis=1) / c  # r_k / c_k
        return rc @ gmu - rc.sum(axis=1, keepdims=True) * x

    out = []
    for N, D, K in sizes:
        args = [jnp.asarray(a) for a in peer_arrays(N, D, K)]  # on the device before timing
        got = np.asarray(score(*args))  # the first call compiles
        # dispatch is asynchronous: without block_until_ready only the launch would be timed
        times = time_calls(lambda: score(*args).block_until_ready(), 2, repeat, max_seconds=20)
        _save_score("jax", N, D, K, got)
        out.append({"N": N, "D": D, "K": K, "jax": summary_ms(times)})
    return {"rows": out, "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}


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


def run_peer(kind, python, args, env, rows, reference):
    """Run peer worker ``kind`` under ``python`` and check its scores; its JSON, or None after printing why not.

    Each timed variant's score lands in ``rows`` (with its error against the
    float64 ``reference(N, D, K)``). A variant whose error is 1e-4 or more is
    left out of that row, with a warning and its error under
    ``row["peer_check_failed"]``: its time is not compared (torch eager's
    cdist form once came back 1.4e-3 off at N = 1e5, D = 2, K = 8, in one
    run of five, and 4e-7 off in the others).
    """
    import numpy as np

    common = ["--threads", str(args.threads), "--repeat", str(args.repeat), "--sizes", *args.sizes]
    extra = ["--no-torch-compile"] if kind == "torch" and not args.torch_compile else []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "score")
        cmd = [python, __file__, "--worker", kind, *common, *extra]
        res, failure = run_worker(cmd, dict(env, REFDIFF_BENCH_OUT=prefix), f"{kind} ({python})")
        if failure:
            print(failure, file=sys.stderr)
            return None
        for row, prow in zip(rows, res["rows"]):
            N, D, K = row["N"], row["D"], row["K"]
            want = reference(N, D, K)
            for variant in (v for v in PEER_VARIANTS[kind] if v in prow):
                got = np.load(f"{prefix}.{variant}.{N}_{D}_{K}.npy")
                err = float(np.abs(got - want).max() / np.abs(want).max())
                if not err < 1e-4:
                    print(f"warning: {variant} score differs from the float64 reference at {(N, D, K)}: {err:.3g}; "
                          "left out of the comparison", file=sys.stderr)  # fmt: skip
                    row.setdefault("peer_check_failed", {})[variant] = err
                    continue
                row[variant] = dict(prow[variant], rel_err=err)
    return res


def plot_groups(rows) -> list:
    """The plot's groups (``_common.plot_bar_groups``): one per size, a bar per implementation that ran, the floor.

    Times in ms; the marker is the row's machine floor (``r["floor"]["floor_s"]``) where it was computed,
    with the Numba twin's share of it as the group's note.
    """
    groups = []
    for r in rows:
        floor = r.get("floor")
        note = None
        if floor and "achieved" in floor:
            note = f"numba at {floor['achieved']['floor_fraction']:.0%} of floor"
        groups.append({
            "label": f"N={r['N']}\nD={r['D']} K={r['K']}",
            "bars": [bar(name, r[key]) for key, name in PLOT_NAMES.items() if key in r],
            "marker": floor["floor_s"] * 1e3 if floor else None,
            "note": note,
        })  # fmt: skip
    return groups


def plot(path, payload):
    """Draw ``payload``'s rows to the PNG ``path`` (None without matplotlib)."""
    return plot_bar_groups(
        path, plot_groups(payload["rows"]), ylabel="ms per score evaluation (median, min-max)",
        title=f"Exact mixture score, {payload['dtype']}, {payload['threads']} threads "
              f"(dashed: machine floor from machine_peak.py)",
    )  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=positive_int, default=30)
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--torch-python", default=peer_python("torch"))
    ap.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                    help="time PyTorch eager only (a cold torch.compile takes some 20 s per size on 2 cores)")
    ap.add_argument("--jax-python", default=peer_python("jax"))
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "mixture_score.json"))
    ap.add_argument("--coretype", choices=CORETYPE_CHOICES, default="auto",
                    help="OPENBLAS_CORETYPE in refdiff's worker: auto = both ways when it is set, else as is")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the machine floor (machine_peak.py: reuses its JSON when recent, else measures, ~30 s)")
    ap.add_argument("--no-plot", dest="plot", action="store_false", help="write no PNG next to the JSON")
    ap.add_argument("--worker", choices=("refdiff", "torch", "jax"))
    args = ap.parse_args(argv)
    sizes = [tuple(int(s) for s in spec.split(",")) for spec in args.sizes]
    if args.worker == "refdiff":
        print(json.dumps(refdiff_worker(sizes, args.repeat, args.crossover, args.floor)))
        return 0
    if args.worker == "torch":
        print(json.dumps(torch_worker(sizes, args.repeat, args.threads, args.torch_compile)))
        return 0
    if args.worker == "jax":
        print(json.dumps(jax_worker(sizes, args.repeat)))
        return 0

    env = child_env(args.threads)  # the peers'
    coretype, variants = coretype_variants(args.coretype)
    common = ["--threads", str(args.threads), "--repeat", str(args.repeat), "--sizes", *args.sizes]
    results, refdiff_envs = [], []
    for unset in variants:
        refdiff_env = child_env(args.threads, unset_coretype=unset, numba_layer="omp", omp_wait_policy=None)
        run = subprocess.run(
            [sys.executable, __file__, "--worker", "refdiff", *common] + (["--crossover"] if args.crossover else [])
            + ([] if args.floor else ["--no-floor"]),
            env=refdiff_env, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        if run.returncode:
            sys.stderr.write(run.stderr)
            return 2
        results.append(json.loads(run.stdout))
        refdiff_envs.append(refdiff_env)
    result, refdiff_env = results[0], refdiff_envs[0]
    if len(results) == 2:  # the second run, without OPENBLAS_CORETYPE, beside the first in each row
        for row, other in zip(result["rows"], results[1]["rows"]):
            for backend in ("numpy", "numba"):
                row[backend + UNSET] = other[backend]
    refs = {}

    def reference(N, D, K):
        if (N, D, K) not in refs:
            import numpy as np

            from refdiff.analytic import GaussianMixture
            from refdiff.sde import VPSDE

            means, variances, x, _, _ = problem(N, D, K)
            gm = GaussianMixture(np.full(K, 1.0 / K), means, variances)
            refs[N, D, K] = gm.score(x.astype(np.float64), VPSDE(), 0.5, backend="numpy")
        return refs[N, D, K]

    # the peers run after refdiff, one at a time, so no two frameworks share the cores
    torch_info, torch_compile = None, {"status": "skipped", "reason": "no --torch-python"}
    if args.torch_python:
        tres = run_peer("torch", args.torch_python, args, env, result["rows"], reference)
        if tres is None:
            return 2
        torch_info, torch_compile = tres["torch"], tres["torch_compile"]
    jax_info = {"status": "skipped", "reason": "no --jax-python"}
    if args.jax_python:
        jenv = jax_env(env, args.threads)
        jres = run_peer("jax", args.jax_python, args, jenv, result["rows"], reference)
        if jres is None:
            return 2
        jax_info = {"status": "ok", "version": jres["jax"], "devices": jres["devices"],
                    "env": {k: jenv[k] for k in ("PJRT_NPROC", "XLA_FLAGS", "JAX_PLATFORMS")},
                    "form": "jax.jit: expanded distances (one matmul), jax.nn.softmax, matmul"}  # fmt: skip
    for row in result["rows"]:
        for tag in ("", UNSET):
            if "numba" + tag not in row:
                continue
            numba = row["numba" + tag]["median_ms"]
            row[f"speedup_numba{tag}_vs_numpy"] = row["numpy" + tag]["median_ms"] / numba
            for variant in ("torch", "torch_compile", "jax"):
                if variant in row:
                    row[f"speedup_numba{tag}_vs_{variant}"] = row[variant]["median_ms"] / numba
    floor_info = None
    if args.floor:  # the bound: at D <= 4, at least 40% of the machine's floor (flops, exps, bytes)
        import machine_peak

        peaks = machine_peak.load_or_measure_peaks(threads=args.threads)
        floor_info = {"peak": peaks["peak"], "measured_at": peaks.get("measured_at"), "goal": machine_peak.GOAL_FRACTION}
        exp_bytes = 4 if "float32" in peaks["peak"].get("exp_per_s", {}) else 8  # float32 data may use a float32 exp
        for r in result["rows"]:
            fl = machine_peak.mixture_score_floor(r["N"], r["D"], r["K"], peaks, dtype_bytes=4, exp_dtype_bytes=exp_bytes)
            r["floor"] = dict(fl, achieved=machine_peak.achieved(fl, r["numba"]["median_ms"] / 1e3))
            if "numba" + UNSET in r:
                r["floor" + UNSET] = dict(fl, achieved=machine_peak.achieved(fl, r["numba" + UNSET]["median_ms"] / 1e3))
            if "exp_per_s_around" in r and exp_bytes == 4:  # the same floor, at the exp rate of the moment
                exp_now = dict(peaks["peak"]["exp_per_s"], float32=sum(r["exp_per_s_around"]) / 2)
                now = dict(peaks["peak"], exp_per_s=exp_now)
                fl = machine_peak.mixture_score_floor(r["N"], r["D"], r["K"], now, dtype_bytes=4, exp_dtype_bytes=4)
                r["floor_same_run"] = dict(fl, achieved=machine_peak.achieved(fl, r["numba"]["median_ms"] / 1e3))
    payload = {
        "benchmark": "mixture_score",
        "dtype": "float32",
        "covariance": "isotropic",
        "threads": args.threads,
        "machine": machine_info(),
        "env": recorded_env(refdiff_env),
        "coretype_unset_env": recorded_env(refdiff_envs[1]) if len(refdiff_envs) == 2 else None,
        "openblas_coretype": None if variants[0] else coretype,  # the first run's (the rows' plain keys)
        "peer_env": recorded_env(env),
        "torch": torch_info,
        "torch_compile": torch_compile,
        "jax": jax_info,
        "floor": floor_info,
        **result,
    }
    path = write_json(args.json, payload)
    cols = ("numpy", "numba", "torch", "torch_compile", "jax")
    heads = ("numpy ms", "numba ms", "torch ms", "t.comp ms", "jax ms", "numba/np", "vs torch", "vs t.comp", "vs jax")
    print(f"{'N':>7} {'D':>3} {'K':>4} " + " ".join(f"{h:>9}" for h in heads))
    for r in result["rows"]:
        ms = [r[c]["median_ms"] if c in r else float("nan") for c in cols]
        ratios = [r.get(f"speedup_numba_vs_{c}", float("nan")) for c in ("numpy", "torch", "torch_compile", "jax")]
        print(f"{r['N']:>7} {r['D']:>3} {r['K']:>4} " + " ".join(f"{v:9.2f}" for v in ms + ratios))
    for r in result["rows"]:
        if "numba" + UNSET in r:
            print(f"OPENBLAS_CORETYPE unset: N={r['N']} D={r['D']} K={r['K']}: numpy {r['numpy' + UNSET]['median_ms']:.2f} ms, "
                  f"numba {r['numba' + UNSET]['median_ms']:.3f} ms"
                  + (f", vs jax {r['speedup_numba' + UNSET + '_vs_jax']:.2f}" if "jax" in r else ""))
    for r in result["rows"]:
        for tag, label in (("", "numba"), (UNSET, "numba (OPENBLAS_CORETYPE unset)"), ("_same_run", "numba")):
            if "floor" + tag not in r:
                continue
            if tag == "_same_run":
                label += (f" (float32 exp {r['exp_per_s_around'][0] / 1e9:.2f} and {r['exp_per_s_around'][1] / 1e9:.2f} "
                          f"G/s just before and after it, where the peaks give {floor_info['peak']['exp_per_s']['float32'] / 1e9:.2f})")
            a = r["floor" + tag]["achieved"]
            goal = f"; goal >= {a['goal']:.0%} at D <= 4: {'met' if a['goal_met'] else 'not met'}" if r["D"] <= 4 else ""
            print(f"floor N={r['N']} D={r['D']} K={r['K']}: {r['floor' + tag]['floor_s'] * 1e3:.3f} ms ({a['bound']}-bound); "
                  f"{label} at {a['floor_fraction']:.0%} of it ({a['gflops']:.1f} GFLOP/s, {a['gexp_per_s']:.2f} Gexp/s, "
                  f"{a['gbs']:.1f} GB/s){goal}")
    for name, info in (("torch.compile", torch_compile), ("jax", jax_info)):
        if info["status"] != "ok":
            print(f"{name}: {info['status']}" + (f" ({info['reason']})" if info.get("reason") else ""))
    for r in result["crossover"]:
        print(f"crossover N={r['N']:>6} D={r['D']:>3} K={r['K']:>3} work={r['work']:>9}: numpy {r['numpy']:.3f} ms, numba {r['numba']:.3f} ms")
    print(f"wrote {path}")
    if args.plot:
        png = plot(plot_path(path), payload)
        if png is not None:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
