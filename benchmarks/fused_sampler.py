"""Time a whole reverse-SDE sampler on the exact 8-mode ring score: NumPy per-step loop vs fused Numba kernel vs JAX.

Euler-Maruyama on the VP SDE (``refdiff.samplers.fused.euler_maruyama_table``,
1000 steps + the final denoising row), N = 1e5 particles, D = 2, K = 8
(``refdiff.targets.ring_mixture()``), counter-based noise included. The
reference is :func:`refdiff.samplers.fused.run_table` (a NumPy loop over
steps, the exact score one vectorised call per step); it is timed on
``--ref-steps`` steps (default 100) and its time per step extrapolated to
1000 (the loop's cost is linear in the steps; the JSON says so). The goal of
the issue: the fused kernel at least 3x faster than JAX's whole-loop jit,
i.e. fused time <= JAX time / 3.

The JAX peer runs in the same invocation under ``--jax-python`` (default
/opt/jaxenv/bin/python when it exists; without one it is reported as skipped
and the goal uses the issue's recorded 3.0 s). It cannot import refdiff, so
this process builds the table (a, b, c per row) and the per-row score
constants (``fused.score_constants``: scaled means, inverse variances, log
normalisers) with refdiff and hands them over in an .npz; the worker runs
all rows as one ``jax.jit`` of a ``jax.lax.fori_loop`` in the state dtype
(float64 through ``jax_enable_x64``), the score in the expanded-distance
form of ``mixture_score.py``, noise from ``jax.random``. It is timed after a
warm-up call (compile plus one run, recorded as ``first_call_s``), minima
like the fused kernel.
XLA's thread pool is pinned with ``PJRT_NPROC`` (see ``mixture_score.py``);
XLA:CPU threads the matrix products but runs the element-wise fusions on
one thread. JAX cannot reproduce refdiff's Philox stream, so its
sample is checked in distribution against the fused sample of the timed
run: per-mode weights (nearest ring mode) within max(0.01, 5 standard
errors), the mean and covariance entries within 5 standard errors.

Before timing, NumPy and Numba run the same table on 2 000 particles and
must agree to 1e-10 (float64), or the script exits with status 2; so does a
failed JAX run or JAX check (the JSON is still written).

The timed parts run in child processes whose thread pools are pinned
(``_common.child_env``: ``--threads``, NUMBA_THREADING_LAYER=workqueue),
one after the other.

    .venv/bin/python benchmarks/fused_sampler.py [--n 100000] [--steps 1000] [--threads 2] [--jax-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

JAX_WHOLE_LOOP_S = 3.0  # JAX whole-loop jit on this machine, from the issue (the goal's peer when JAX is not run)
JAX_PYTHON = "/opt/jaxenv/bin/python"
#: The JAX sample agrees with the fused one when every statistic is within this many standard errors.
Z_TOL = 5.0
#: ... and every mode weight within this much (or Z_TOL standard errors, if larger: small n).
WEIGHT_TOL = 0.01


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ref-steps", type=int, default=100, help="steps the NumPy reference is timed on (extrapolated)")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jax-python", default=JAX_PYTHON if os.path.exists(JAX_PYTHON) else None,
                    help="interpreter with jax (not refdiff); '' skips JAX")
    ap.add_argument("--json", default=str(_common.REPO / "benchmarks" / "results" / "fused_sampler.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--jax-worker", metavar="NPZ", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def worker(args) -> dict:
    import numpy as np

    from refdiff.kernels import fused_numba
    from refdiff.samplers import fused
    from refdiff.sde import VPSDE
    from refdiff.targets import ring_mixture

    mix, vp = ring_mixture(), VPSDE()
    table = fused.euler_maruyama_table(vp, steps=args.steps)
    ref_table = fused.euler_maruyama_table(vp, steps=args.ref_steps, final_denoise=False)
    shape = (args.n, 2)
    # agreement first, on a smaller batch (the same particles as the timed run's first rows)
    want = fused.run_table(table, mix, (2000, 2), seed=args.seed, dtype=args.dtype)
    got = fused_numba.run_table(table, mix, (2000, 2), seed=args.seed, dtype=args.dtype)
    err = float(np.max(np.abs(got - want)))
    tol = 1e-10 if args.dtype == "float64" else 1e-3
    if not err <= tol:
        return {"check": {"max_abs_diff": err, "tol": tol, "ok": False}}
    last = {}

    def run_numba():
        last["x"] = fused_numba.run_table(table, mix, shape, seed=args.seed, dtype=args.dtype)

    numba_times = _common.time_calls(run_numba, warmup=1, repeat=args.repeat)
    if os.environ.get("REFDIFF_BENCH_OUT"):  # the sample the JAX one is compared with
        np.save(os.environ["REFDIFF_BENCH_OUT"] + ".numba.npy", last["x"])
    ref_times = _common.time_calls(lambda: fused.run_table(ref_table, mix, shape, seed=args.seed, dtype=args.dtype),
                                   warmup=0, repeat=max(1, args.repeat - 1), min_repeat=1)  # fmt: skip
    scale = table.n_rows / ref_table.n_rows
    numba_s = min(numba_times)
    ref_s = min(ref_times) * scale
    return {
        "check": {"max_abs_diff": err, "tol": tol, "ok": True},
        "numba": _common.summary_ms(numba_times),
        "numpy_reference_measured": {**_common.summary_ms(ref_times), "rows": ref_table.n_rows},
        "numpy_reference_extrapolated_ms": ref_s * 1e3,
        "speedup_vs_reference": ref_s / numba_s,
        "threading": fused_numba.threading_layer(),
        "rows": table.n_rows,
    }


# --- the JAX peer ---------------------------------------------------------------------------------


def write_jax_inputs(args, path):
    """The table and per-row score constants the JAX worker runs, from refdiff, as an .npz at ``path``."""
    import numpy as np

    from refdiff.samplers import fused
    from refdiff.sde import VPSDE
    from refdiff.targets import ring_mixture

    mix = ring_mixture()
    table = fused.euler_maruyama_table(VPSDE(), steps=args.steps)
    if table.b_prev.any() or mix.kind != "isotropic":  # Euler-Maruyama has no corrector rows; the ring is isotropic
        raise ValueError("the JAX worker runs tables without b_prev on isotropic mixtures")
    const = fused.score_constants(table, mix)
    np.savez(path, a=table.a, b=table.b, c=table.c, means=const["means"], inv_c=const["inv_c"][:, :, 0],
             log_norm=const["log_norm"], prior_std=table.prior_std)  # fmt: skip
    return mix


def jax_worker(args) -> dict:
    """Run the .npz table as one jitted fori_loop; its sample goes to ``$REFDIFF_BENCH_OUT.jax.npy``."""
    import time
    from functools import partial

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # same state dtype as the fused kernel
    import jax.numpy as jnp
    import numpy as np

    d = np.load(args.jax_worker)
    names = ("a", "b", "c", "means", "inv_c", "log_norm")
    a, b, c, means, inv_c, log_norm = (jnp.asarray(d[k], dtype=args.dtype) for k in names)
    prior_std = float(d["prior_std"])

    def score(x, mu, ic, ln):
        # mu: (K, D), ic, ln: (K,). Distances expanded into a matrix product, as in mixture_score.py: on this
        # XLA:CPU some 1.3x faster than the direct (N, K, D) difference, whose fusions run on one thread
        d2 = jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * (x @ mu.T) + jnp.sum(mu * mu, axis=1)
        rc = jax.nn.softmax(ln - 0.5 * d2 * ic, axis=1) * ic  # r_k / c_k
        return rc @ mu - rc.sum(axis=1, keepdims=True) * x

    @partial(jax.jit, static_argnames="n")
    def sample(key, a, b, c, means, inv_c, log_norm, n):
        x = prior_std * jax.random.normal(jax.random.fold_in(key, 0), (n, means.shape[2]), a.dtype)

        def row(i, x):  # c == 0 on the final denoising row: its draw is wasted, as a JAX user would leave it
            z = jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, x.dtype)
            return a[i] * x + b[i] * score(x, means[i], inv_c[i], log_norm[i]) + c[i] * z

        return jax.lax.fori_loop(0, a.shape[0], row, x)

    key = jax.random.key(args.seed)

    def call():
        return sample(key, a, b, c, means, inv_c, log_norm, n=args.n).block_until_ready()

    t0 = time.perf_counter()
    call()  # compiles, then runs once
    first_s = time.perf_counter() - t0
    last = {}

    def timed():
        last["x"] = call()

    times = _common.time_calls(timed, warmup=0, repeat=args.repeat)
    np.save(os.environ["REFDIFF_BENCH_OUT"] + ".jax.npy", np.asarray(last["x"]))
    return {"times": _common.summary_ms(times), "first_call_s": first_s, "version": jax.__version__,
            "devices": [str(dv) for dv in jax.devices()], "x64": bool(jax.config.jax_enable_x64)}  # fmt: skip


def compare_samples(x_ref, x_jax, mode_means) -> dict:
    """Do two samples of one sampler agree in distribution? Mode weights, mean, covariance, with standard errors."""
    import numpy as np

    K, D = mode_means.shape
    iu = np.triu_indices(D)

    def features(x):
        nearest = np.argmin(((x[:, None, :] - mode_means[None]) ** 2).sum(-1), axis=1)
        xc = x - x.mean(0)
        return np.eye(K)[nearest], x, (xc[:, :, None] * xc[:, None, :])[:, iu[0], iu[1]]

    out, ok = {}, True
    for name, f_ref, f_jax in zip(("mode_weights", "mean", "cov"), features(x_ref), features(x_jax)):
        m_ref, m_jax = f_ref.mean(0), f_jax.mean(0)
        se = np.sqrt(f_ref.var(0) / len(f_ref) + f_jax.var(0) / len(f_jax))
        diff = np.abs(m_jax - m_ref)
        z = diff / np.maximum(se, 1e-300)
        if name == "mode_weights":
            tol = np.maximum(WEIGHT_TOL, Z_TOL * se)
            good = bool(np.all(diff <= tol))
            out[name] = {"numba": m_ref.tolist(), "jax": m_jax.tolist(), "max_abs_diff": float(diff.max()),
                         "tol": float(tol.max()), "ok": good}  # fmt: skip
        else:
            good = bool(np.all(z <= Z_TOL))
            out[name] = {"numba": m_ref.tolist(), "jax": m_jax.tolist(), "max_abs_diff": float(diff.max()), "ok": good}
        out[name]["max_z"] = float(z.max())
        ok = ok and good
    out.update(n_numba=len(x_ref), n_jax=len(x_jax), z_tol=Z_TOL, ok=ok)
    return out


def run_jax(args, env, tmp, prefix) -> dict:
    """Run the JAX worker on this run's table and check its sample; the payload's ``jax`` section."""
    import numpy as np

    info = {"status": "skipped", "reason": "no --jax-python", "recorded_whole_loop_s": JAX_WHOLE_LOOP_S}
    if not args.jax_python:
        return info
    npz = os.path.join(tmp, "jax_inputs.npz")
    mix = write_jax_inputs(args, npz)
    jenv = dict(_common.jax_env(env, args.threads), REFDIFF_BENCH_OUT=prefix)
    cmd = [args.jax_python, os.path.abspath(__file__), "--jax-worker", npz, "--n", str(args.n),
           "--steps", str(args.steps), "--dtype", args.dtype, "--repeat", str(args.repeat), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=jenv, capture_output=True, text=True)
    info.update(python=args.jax_python, env={k: jenv[k] for k in ("PJRT_NPROC", "XLA_FLAGS", "JAX_PLATFORMS")},
                form="jax.jit of a jax.lax.fori_loop over the rows, jax.random noise, expanded-distance score")
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return {**info, "status": "failed", "reason": f"the JAX worker exited with {proc.returncode}: {tail}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    check = compare_samples(np.load(prefix + ".numba.npy"), np.load(prefix + ".jax.npy"), mix.means)
    info.update(res, status="ok" if check["ok"] else "failed", check=check, reason=None)
    if not check["ok"]:
        info["reason"] = "the JAX sample does not match the fused sample in distribution"
    return info


def print_table(payload):
    """Times in seconds (minima rule the ratios) and the ratios against JAX."""
    rows = [("numpy loop (extrapolated)", None), ("fused numba", payload.get("numba"))]
    jax = payload["jax"]
    if jax["status"] == "ok":
        rows.append(("jax jit (fori_loop)", jax["times"]))
    print(f"{'':26} {'min s':>8} {'median s':>8} {'max s':>8}")
    for name, t in rows:
        if t is None:
            print(f"{name:26} {payload['numpy_reference_extrapolated_ms'] / 1e3:8.3f}")
        else:
            print(f"{name:26} {t['min_ms'] / 1e3:8.3f} {t['median_ms'] / 1e3:8.3f} {t['max_ms'] / 1e3:8.3f}")
    src = payload["jax_whole_loop_source"]
    if src == "recorded":
        src = "recorded at n=100000 steps=1000:"
    print(f"fused numba / JAX time: {payload['numba_over_jax']:.3f} (JAX {src} {payload['jax_whole_loop_s']:.3f} s; "
          f"speedup {payload['speedup_vs_jax_whole_loop']:.2f}x; "
          f"goal >= 3x: {'met' if payload['goal_met'] else 'NOT met'})")
    if jax["status"] != "ok":
        print(f"jax: {jax['status']} ({jax['reason']})")
    else:
        w = jax["check"]["mode_weights"]
        print(f"jax sample vs fused sample: mode weights max |diff| {w['max_abs_diff']:.4f} (tol {w['tol']:.4f}), "
              f"max z {max(jax['check'][k]['max_z'] for k in ('mode_weights', 'mean', 'cov')):.2f} (tol {Z_TOL:g}): ok")


def main(argv=None):
    args = parse_args(argv)
    if args.jax_worker:
        print(json.dumps(jax_worker(args)))
        return 0
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + [a for a in (argv or sys.argv[1:]) if a != "--worker"]
    env = _common.child_env(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sample")
        wenv = dict(env, REFDIFF_BENCH_OUT=prefix)  # where the worker leaves its sample for the JAX check
        proc = subprocess.run(cmd, cwd=_common.REPO, env=wenv, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        ok = result["check"]["ok"]
        if ok:
            jax = run_jax(args, env, tmp, prefix)
        else:
            jax = {"status": "skipped", "reason": "the refdiff check failed", "recorded_whole_loop_s": JAX_WHOLE_LOOP_S}
    payload = {
        "benchmark": "fused_sampler",
        "what": "reverse-SDE Euler-Maruyama, VP SDE, 8-mode ring (K=8, D=2), noise included",
        "sizes": {"n": args.n, "steps": args.steps, "ref_steps": args.ref_steps, "dtype": args.dtype},
        "machine": {**_common.machine_info(), "environment": _common.recorded_env(env)},
        **result,
        "jax": jax,
    }
    if ok:
        # the goal's peer: JAX as measured in this run when it ran and passed its check, else the recorded figure
        measured = jax["status"] == "ok"
        jax_s = jax["times"]["min_ms"] / 1e3 if measured else JAX_WHOLE_LOOP_S
        numba_s = result["numba"]["min_ms"] / 1e3
        payload.update(jax_whole_loop_s=jax_s, jax_whole_loop_source="measured" if measured else "recorded",
                       numba_over_jax=numba_s / jax_s, speedup_vs_jax_whole_loop=jax_s / numba_s,
                       speedup_vs_jax_recorded=JAX_WHOLE_LOOP_S / numba_s, goal_met=numba_s <= jax_s / 3.0)  # fmt: skip
    path = _common.write_json(args.json, payload)
    print(json.dumps({k: payload[k] for k in payload if k not in ("machine", "jax")}, indent=2))
    if ok:
        print_table(payload)
    print(f"wrote {path}")
    return 0 if ok and jax["status"] != "failed" else 2


if __name__ == "__main__":
    sys.exit(main())
