"""The CuPy twins on a GPU: against the device's measured ceilings, and against PyTorch and JAX on the same device.

One run measures every GPU goal of the kernels, each implementation checked
before it is timed:

* ``ceilings``: the device's name and multiprocessors; a device-to-device
  copy of ``--copy-mib`` MiB of float32 (bytes read plus bytes written over
  the time); an fp32 FMA kernel (eight independent chains per thread, 2048
  threads per multiprocessor; an FMA counts 2 flops). Each is the fastest of
  ``--repeat`` calls.
* ``mixture_score``: ``refdiff.kernels.mixture_cupy.mixture_score`` on the CPU
  benchmark's problems (``mixture_score.problem``: isotropic, VP SDE at
  t = 0.5, float32) at ``--sizes`` (default (N, D, K) = (1e8, 2, 8),
  (1e7, 16, 32), (1e6, 64, 128): each point array several times the L2
  cache). Checked on the first 20 000 rows against the NumPy reference in
  float64 (max abs error over max(1, max |score|) within 1e-4). Timed twice:
  the whole call (its argument checks, the constants' copies to the device,
  the launches) by the wall clock, and the kernels alone by CUDA events
  around batches of ``KERNEL_BATCH`` launches of one prepared evaluation;
  the general kernel (``mixture_score``, which the special case
  ``mixture_score_diag`` replaces for one t) is timed the same way beside it.
  The floor counts ``N K (6 D + 2)`` flops and ``2 N D 4`` bytes, as
  ``machine_peak.mixture_score_floor`` does, against the two ceilings; the
  goal is the kernel at 50% of that floor or better (floor / the kernels'
  median time >= 0.5). The call's fraction is reported beside it.
* ``fused_sampler``: Euler-Maruyama on the VP SDE, ``--steps`` steps plus
  the final denoising row, on the 8-mode ring (D = 2, K = 8), ``--n``
  particles (default 1e6), ``--dtype`` state (default float32), noise
  included. refdiff: ``refdiff.kernels.fused_cupy.run_table`` with a drawn
  start (the kernel draws it), checked against the NumPy reference on 2000
  particles (the same Philox stream: the same trajectories, to 1e-3 in
  float32). Peers, each in its own process (``--worker``) so that its
  allocator does not share the card with CuPy's pool:

  - PyTorch eager: the loop a PyTorch user writes, one row at a time on
    the device (the exact score by expanded distances, ``softmax`` and a
    matrix product, as in ``mixture_score.py``; ``torch.randn`` noise);
  - JAX: ``fused_sampler.py``'s worker, one ``jax.jit`` of a
    ``lax.fori_loop`` over the rows, on JAX's default device (with
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``); the devices it ran on are
    recorded.

  Each peer's sample is checked in distribution against refdiff's
  (``fused_sampler.compare_samples``: mode weights, mean, covariance). Goals:
  PyTorch eager time / refdiff time >= 20 and JAX time / refdiff time >= 2.

Times are wall-clock around calls that end in a device synchronisation,
after ``--warmup`` calls (compilation and module loads stay out), as
min / median / max over ``--repeat`` calls; ratios use medians. The JSON goes
to ``--json`` (default benchmarks/results/gpu.json) and a table is printed
last. ``--quick`` shrinks every size (a smoke run: its times mean nothing).
Peers run under ``--torch-python`` / ``--jax-python`` (default: this
interpreter; '' skips one); ``--peer-device`` moves them (``cpu``: a smoke
run without a GPU).

Usage::

    python benchmarks/gpu.py [--quick] [--n 1000000] [--steps 1000] [--dtype float32]
        [--sizes 10000000,2,8 ...] [--repeat 5] [--torch-python PY] [--jax-python PY] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import _common
import fused_sampler

SIZES = ("100000000,2,8", "10000000,16,32", "1000000,64,128")
QUICK_SIZES = ("1000,2,8", "300,16,32", "100,64,128")
CHECK_ROWS = 20_000
KERNEL_BATCH = 20  # launches between two events: the launch latency is spread over them
SCORE_TOL = 1e-4
SAMPLER_TOL = {"float32": 1e-3, "float64": 1e-10}
GOALS = {"mixture_floor_fraction": 0.5, "torch_over_refdiff": 20.0, "jax_over_refdiff": 2.0}

FMA_SOURCE = r"""
extern "C" __global__ void fma_peak(float* out, int iters, float s) {
    float a0 = threadIdx.x * 1e-3f, a1 = a0 + 1.f, a2 = a0 + 2.f, a3 = a0 + 3.f;
    float a4 = a0 + 4.f, a5 = a0 + 5.f, a6 = a0 + 6.f, a7 = a0 + 7.f;
    for (int i = 0; i < iters; ++i) {  // eight independent chains: enough in flight to fill the pipes
        a0 = fmaf(a0, s, 0.5f); a1 = fmaf(a1, s, 0.5f); a2 = fmaf(a2, s, 0.5f); a3 = fmaf(a3, s, 0.5f);
        a4 = fmaf(a4, s, 0.5f); a5 = fmaf(a5, s, 0.5f); a6 = fmaf(a6, s, 0.5f); a7 = fmaf(a7, s, 0.5f);
    }
    out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run)")
    ap.add_argument("--n", type=int, default=None, help="sampler particles (default 1e6; --quick 3000)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default 1000; --quick 20)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="the sampler's state dtype")
    ap.add_argument("--sizes", nargs="+", default=None, metavar="N,D,K", help="mixture score sizes")
    ap.add_argument("--copy-mib", type=int, default=None, help="the copy ceiling's array (default 2048; --quick 4)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=_common.positive_int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter with torch; '' skips PyTorch")
    ap.add_argument("--jax-python", default=sys.executable, help="interpreter with jax; '' skips JAX")
    ap.add_argument("--peer-device", default="cuda", help="the peers' device: cuda, or cpu for a smoke run")
    ap.add_argument("--json", default=str(_common.REPO / "benchmarks" / "results" / "gpu.json"))
    ap.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    ap.add_argument("--npz", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.n = args.n or (3000 if args.quick else 1_000_000)
    args.steps = args.steps or (20 if args.quick else 1000)
    args.sizes = [tuple(int(v) for v in s.split(",")) for s in (args.sizes or (QUICK_SIZES if args.quick else SIZES))]
    args.copy_mib = args.copy_mib or (4 if args.quick else 2048)
    return args


def _timed(fn, sync, args):
    """min / median / max ms of ``fn()`` followed by ``sync()``, after ``args.warmup`` calls."""
    return _common.summary_ms(_common.time_calls(lambda: (fn(), sync()), warmup=args.warmup, repeat=args.repeat))


def _kernel_timed(cupy, launch, args):
    """min / median / max ms of one ``launch()`` on the device, by CUDA events around ``KERNEL_BATCH``
    launches (``args.repeat`` batches, after ``args.warmup`` launches): the kernels' time, without the
    host's work before them."""
    for _ in range(args.warmup):
        launch()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(args.repeat):
        start.record()
        for _ in range(KERNEL_BATCH):
            launch()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3 / KERNEL_BATCH)
    return _common.summary_ms(times)


# --- refdiff on the device ---------------------------------------------------------------------------


def ceilings(cupy, args) -> dict:
    """The device, and its copy bandwidth and fp32 FMA rate as measured here."""
    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    sms = int(props["multiProcessorCount"])
    n = args.copy_mib * (1 << 20) // 4
    a = cupy.arange(n, dtype=cupy.float32)
    b = cupy.empty_like(a)
    copy = _timed(lambda: b.__setitem__(Ellipsis, a), device.synchronize, args)
    kernel = cupy.RawKernel(FMA_SOURCE, "fma_peak")
    block, iters = 256, 64 if args.quick else 4096
    threads = sms * 2048
    out = cupy.empty(threads, dtype=cupy.float32)
    fma = _timed(lambda: kernel((threads // block,), (block,), (out, cupy.int32(iters), cupy.float32(0.999))),
                 device.synchronize, args)  # fmt: skip
    return {
        "device": name, "multiprocessors": sms, "clock_khz": int(props.get("clockRate", 0)),
        "copy": {**copy, "bytes": 2 * n * 4, "bytes_per_s": 2 * n * 4 / (copy["min_ms"] * 1e-3)},
        "fp32": {**fma, "flops": 2 * 8 * iters * threads, "flops_per_s": 2 * 8 * iters * threads / (fma["min_ms"] * 1e-3)},
    }  # fmt: skip


def mixture_rows(cupy, args, ceiling) -> list:
    """Check and time the mixture score kernel at each size, with its floor."""
    import numpy as np
    from mixture_score import problem

    from refdiff.analytic import GaussianMixture
    from refdiff.kernels import mixture_cupy
    from refdiff.sde import VPSDE

    rows, sync = [], cupy.cuda.Device().synchronize
    for N, D, K in args.sizes:
        means, variances, x, _, _ = problem(N, D, K, seed=args.seed)
        gm, process = GaussianMixture(np.full(K, 1.0 / K), means, variances), VPSDE()
        xd = cupy.asarray(x)
        m = min(N, CHECK_ROWS)
        want = gm.score(x[:m].astype(np.float64), process, 0.5, backend="numpy")
        got = cupy.asnumpy(mixture_cupy.mixture_score(gm, xd[:m], process, 0.5)).astype(np.float64)
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        row = {"N": N, "D": D, "K": K, "check": {"max_rel_err": err, "tol": SCORE_TOL, "ok": err <= SCORE_TOL}}
        if row["check"]["ok"]:
            row["cupy"] = _timed(lambda: mixture_cupy.mixture_score(gm, xd, process, 0.5), sync, args)
            launch = mixture_cupy._prepare(gm, xd, process, 0.5, True)[0]
            row["kernel"] = _kernel_timed(cupy, launch, args)
            # the general kernel (any kind, t per row) on the same problem: what the special case gains
            row["general_kernel"] = _kernel_timed(cupy, mixture_cupy._prepare(gm, xd, process, 0.5, True, general=True)[0], args)
            flops, nbytes = N * K * (6 * D + 2), 2 * N * D * 4
            bounds = {"flops": flops / ceiling["fp32"]["flops_per_s"], "bytes": nbytes / ceiling["copy"]["bytes_per_s"]}
            floor = max(bounds.values())
            row.update(flops=flops, bytes=nbytes, floor_ms=floor * 1e3, bound=max(bounds, key=bounds.get),
                       floor_fraction=floor / (row["kernel"]["median_ms"] * 1e-3),
                       call_floor_fraction=floor / (row["cupy"]["median_ms"] * 1e-3))  # fmt: skip
        rows.append(row)
    return rows


def sampler(cupy, args, prefix) -> dict:
    """Check and time the fused CuPy sampler; its sample goes to ``prefix.refdiff.npy``."""
    import numpy as np

    from refdiff.kernels import fused_cupy
    from refdiff.samplers import fused
    from refdiff.sde import VPSDE
    from refdiff.targets import ring_mixture

    mix, table = ring_mixture(), fused.euler_maruyama_table(VPSDE(), steps=args.steps)
    m = min(args.n, 2000)
    want = fused.run_table(table, mix, (m, 2), seed=args.seed, dtype=args.dtype)
    got = cupy.asnumpy(fused_cupy.run_table(table, mix, (m, 2), seed=args.seed, dtype=args.dtype))
    err, tol = float(np.max(np.abs(got.astype(np.float64) - want))), SAMPLER_TOL[args.dtype]
    out = {"n": args.n, "steps": args.steps, "rows": table.n_rows, "dtype": args.dtype,
           "check": {"max_abs_diff": err, "tol": tol, "ok": err <= tol}}  # fmt: skip
    if not out["check"]["ok"]:
        return out
    last = {}

    def run():
        last["x"] = fused_cupy.run_table(table, mix, (args.n, 2), seed=args.seed, dtype=args.dtype)

    out["cupy"] = _timed(run, cupy.cuda.Device().synchronize, args)
    np.save(prefix + ".refdiff.npy", cupy.asnumpy(last["x"]))
    return out


# --- the peers ----------------------------------------------------------------------------------------


def torch_worker(args) -> dict:
    """The PyTorch eager loop on ``--peer-device`` over the .npz table; its sample goes to ``$REFDIFF_BENCH_OUT.torch.npy``."""
    import numpy as np
    import torch

    dev = torch.device(args.peer_device)
    dtype = getattr(torch, args.dtype)
    d = np.load(args.npz)
    a, b, c = (d[k].tolist() for k in ("a", "b", "c"))
    means, inv_c, log_norm = (torch.as_tensor(d[k], dtype=dtype, device=dev) for k in ("means", "inv_c", "log_norm"))
    prior_std, n, D = float(d["prior_std"]), args.n, means.shape[2]
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    def score(x, mu, ic, ln):  # expanded distances, as mixture_score.py's PyTorch worker
        d2 = (x * x).sum(1, keepdim=True) - 2.0 * (x @ mu.T) + (mu * mu).sum(1)
        rc = torch.softmax(ln - 0.5 * d2 * ic, dim=1) * ic  # r_k / c_k
        return rc @ mu - rc.sum(1, keepdim=True) * x

    def run():
        x = prior_std * torch.randn((n, D), generator=gen, device=dev, dtype=dtype)
        for i in range(len(a)):
            v = a[i] * x
            if b[i] != 0.0:
                v = v + b[i] * score(x, means[i], inv_c[i], log_norm[i])
            if c[i] != 0.0:
                v = v + c[i] * torch.randn(x.shape, generator=gen, device=dev, dtype=dtype)
            x = v
        return x

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    last = {}
    times = _timed(lambda: last.__setitem__("x", run()), sync, args)
    np.save(os.environ["REFDIFF_BENCH_OUT"] + ".torch.npy", last["x"].cpu().numpy())
    return {"times": times, "version": torch.__version__, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}  # fmt: skip


def run_peers(args, tmp, prefix) -> dict:
    """Run the PyTorch and JAX workers on this run's table; check each sample against refdiff's."""
    import numpy as np

    npz = os.path.join(tmp, "table.npz")
    mix = fused_sampler.write_jax_inputs(args, npz)  # the table, score constants and prior scale, from refdiff
    env = dict(os.environ, REFDIFF_BENCH_OUT=prefix, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if args.peer_device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    common = ["--n", str(args.n), "--steps", str(args.steps), "--dtype", args.dtype, "--repeat", str(args.repeat),
              "--seed", str(args.seed)]  # fmt: skip
    workers = {
        "torch": (args.torch_python, [os.path.abspath(__file__), "--worker", "torch", "--npz", npz,
                                      "--peer-device", args.peer_device, "--warmup", str(args.warmup), *common]),
        "jax": (args.jax_python, [os.path.abspath(fused_sampler.__file__), "--jax-worker", npz, *common]),
    }  # fmt: skip
    x_ref, out = np.load(prefix + ".refdiff.npy"), {}
    for name, (python, cmd) in workers.items():
        if not python:
            out[name] = {"status": "skipped", "reason": f"no --{name}-python"}
            continue
        res, failure = _common.run_worker([python, *cmd], env, name)
        if failure:
            out[name] = {"status": "failed", "reason": failure}
            continue
        check = fused_sampler.compare_samples(x_ref, np.load(f"{prefix}.{name}.npy"), mix.means, names=("refdiff", name))
        out[name] = {**res, "check": check, "status": "ok" if check["ok"] else "failed"}
        if not check["ok"]:
            out[name]["reason"] = f"the {name} sample does not match refdiff's in distribution"
    return out


# --- report -------------------------------------------------------------------------------------------


def goals(payload) -> list:
    """``(what, value, goal, met)`` per GPU goal measured in ``payload`` (None where it could not be)."""
    rows = []
    for r in payload["mixture_score"]:
        frac = r.get("floor_fraction")
        rows.append((f"mixture score N={r['N']} D={r['D']} K={r['K']}: floor / kernel time ({r.get('bound', '-')} bound)",
                     frac, GOALS["mixture_floor_fraction"], None if frac is None else frac >= GOALS["mixture_floor_fraction"]))
    s = payload["fused_sampler"]
    for peer in ("torch", "jax"):
        p = payload["peers"].get(peer, {})
        ratio = None
        if "cupy" in s and p.get("status") == "ok":
            ratio = p["times"]["median_ms"] / s["cupy"]["median_ms"]
        goal = GOALS[f"{peer}_over_refdiff"]
        rows.append((f"fused sampler N={s['n']}: {peer} / refdiff", ratio, goal, None if ratio is None else ratio >= goal))
    return rows


def print_table(payload):
    c = payload["ceilings"]
    print(f"{c['device']}: {c['multiprocessors']} SMs; copy {c['copy']['bytes_per_s'] / 1e9:.0f} GB/s, "
          f"fp32 {c['fp32']['flops_per_s'] / 1e12:.1f} TFLOP/s (measured)")  # fmt: skip
    for r in payload["mixture_score"]:
        t = r.get("cupy", {}).get("median_ms")
        print(f"mixture score N={r['N']:<9d} D={r['D']:<3d} K={r['K']:<4d} check {r['check']['max_rel_err']:.1e}  "
              + (f"call {t:9.3f} ms, kernels {r['kernel']['median_ms']:9.3f} ms (general kernel "
                 f"{r['general_kernel']['median_ms']:.3f}), floor {r['floor_ms']:.3f} ms ({r['bound']}): call "
                 f"{r['call_floor_fraction']:.2f} of the floor" if t is not None else "not timed"))
    s = payload["fused_sampler"]
    print(f"fused sampler N={s['n']} steps={s['steps']} {s['dtype']}: check {s['check']['max_abs_diff']:.1e}  "
          + (f"refdiff {s['cupy']['median_ms']:.2f} ms" if "cupy" in s else "not timed"))
    for name, p in payload["peers"].items():
        print(f"  {name}: " + (f"{p['times']['median_ms']:.2f} ms" if p.get("status") == "ok" else
                               f"{p.get('status')}: {p.get('reason')}"))  # fmt: skip
    for what, value, goal, met in goals(payload):
        shown = "-" if value is None else f"{value:.2f}"
        print(f"{what}: {shown} (goal >= {goal}) {'met' if met else 'NOT met' if met is not None else 'not measured'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker == "torch":
        import json

        print(json.dumps(torch_worker(args)))
        return 0
    import cupy

    payload = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "npz")}, "goals": GOALS,
               "machine": _common.machine_info()}  # fmt: skip
    payload["ceilings"] = ceilings(cupy, args)
    payload["mixture_score"] = mixture_rows(cupy, args, payload["ceilings"])
    with tempfile.TemporaryDirectory(prefix="refdiff-gpu-") as tmp:
        prefix = os.path.join(tmp, "sample")
        payload["fused_sampler"] = sampler(cupy, args, prefix)
        payload["peers"] = run_peers(args, tmp, prefix) if "cupy" in payload["fused_sampler"] else {}
    payload["goal_status"] = [dict(zip(("what", "value", "goal", "met"), g)) for g in goals(payload)]
    _common.write_json(args.json, payload)
    print_table(payload)
    failed = [r for r in payload["mixture_score"] if not r["check"]["ok"]]
    return 1 if failed or not payload["fused_sampler"]["check"]["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
