"""Time one training step of refdiff's MLP against the same network in PyTorch (CPU, eager).

One step, as :func:`refdiff.train.train` takes it: forward on a fixed batch
``(x, t)`` (the sinusoidal time features computed inside the step in both
libraries: refdiff forms the phase in float64, reduces it and takes cos/sin
in float32; PyTorch works in the model's dtype, as its users do), the mean squared error against a fixed
target (:func:`refdiff.train.regression_loss`; ``F.mse_loss`` in PyTorch),
backward (gradients zeroed first), global-norm clipping at 1.0, one Adam step
(lr 1e-3). The network is ``MLP(data_shape=2, depth=3, emb_dim=32, SiLU)``:
an input Linear on ``[x, e(t)]``, residual hidden layers
``h = h + silu(Linear(h))``, an output Linear. The PyTorch twin is built from
``nn.Linear``/``nn.SiLU`` with the same residual structure; every
``torch.optim.Adam`` implementation available on the CPU (for-loop, foreach,
fused) is timed and the fastest is the one compared.

Both workers first call :func:`refdiff.backend.keep_freed_memory` (glibc
recycles freed large blocks instead of faulting fresh pages in every step;
PyTorch's step barely changes with it, refdiff's gains up to a third).

Each library runs in its own interpreter (this script re-launches itself with
``--worker``): refdiff under this Python, PyTorch under ``--torch-python``
(default ``$REFDIFF_TORCH_PYTHON``; otherwise PyTorch is skipped).
Both get the same pinned thread count (``--threads``, default 2) through
OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS and ``torch.set_num_threads``, and Numba
its default OpenMP layer with OpenMP's own wait policy, as a plain environment
has it (there the numba backend forms the products as register tiles on Numba's
threads: ``products_by_tiles`` in ``kernels/mlp_numba.py``). For each
configuration the two workers alternate ``--rounds`` times and the samples are
pooled, so a change of machine load hits both alike. When OPENBLAS_CORETYPE
is set in the environment every measurement is taken twice, with it and with
it (and OPENBLAS_L2_SIZE) removed from both workers' environments.

Before anything is timed, refdiff's initial weights are copied into PyTorch
(Linear ``W`` is stored (in, out) by refdiff and (out, in) by PyTorch) and one
float64 step is taken in both: the loss, the gradient norm and every
parameter after the step must agree to ``--tol`` (1e-10), for every Adam
implementation, or the script stops with exit status 2. The check runs once
with clipping inactive (the two libraries then agree to ~1e-15) and once with
it active at a large gradient norm: ``clip_grad_norm_`` scales by
``c / (norm + 1e-6)`` where refdiff scales by ``c / norm``, which moves a
parameter by up to about ``lr * 1e-6 / (4 norm)`` after one step (7e-11 at a
norm of 2.8), so the active check keeps the norm large.

refdiff is timed on each backend of ``--refdiff-backend`` (default ``numpy
numba``: ``MLP(..., backend=b)`` and ``Adam(..., backend=b)``, see
:mod:`refdiff.nn.fused`), each in its own worker; the float64 check compares
every further backend with the first to ``--tol`` as well, and the headline
ratio uses the fastest backend (every backend's ratio is in the JSON).

Reported per configuration: min / median / max ms per step, the ratio
torch_median / refdiff_median (> 1 means refdiff is faster), achieved
GFLOP/s, the time the step's matrix products alone take in each library (the
GEMM floor; for refdiff as its backend forms them) and where a step's time goes (phase medians). JSON goes to
``--json`` (default benchmarks/results/mlp_step.json), a bar chart to
``--plot PNG``.

Usage::

    .venv/bin/python benchmarks/mlp_step.py [--quick] [--threads 2] [--rounds 2]
        [--widths 128 512] [--batches 256 4096] [--torch-python PATH]
        [--coretype auto|keep|unset|both] [--refdiff-backend numpy numba]
        [--json PATH] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks folder, first on sys.path)

REPO = _common.REPO
DEFAULT_JSON = REPO / "benchmarks" / "results" / "mlp_step.json"
GOAL_RATIO = 1.3  # the kernels issue: at least 1.3x PyTorch CPU eager at every width / batch

# The network and the step (fixed by the benchmark's definition).
DATA_DIM = 2
DEPTH = 3
EMB_DIM = 32
MAX_PERIOD = 10000.0
LR = 1e-3
CLIP = 1.0
T_MAX = 1000  # discrete times 1..T_MAX, time_scale 1


# --------------------------------------------------------------------------
# shared by both workers (NumPy only)


def make_batch(seed, batch, target_scale=1.0):
    """Fixed inputs (x, t, target) in float64 from ``seed``: the same arrays in both workers."""
    import numpy as np

    gen = np.random.default_rng([seed, batch])
    x = gen.standard_normal((batch, DATA_DIM))
    t = gen.integers(1, T_MAX + 1, size=batch).astype(np.float64)
    target = target_scale * gen.standard_normal((batch, DATA_DIM))
    return x, t, target


def layer_shapes(width):
    """(fan_in, fan_out) of each Linear, first to last."""
    return [(DATA_DIM + EMB_DIM, width)] + [(width, width)] * (DEPTH - 1) + [(width, DATA_DIM)]


def step_gemms(width, batch):
    """The matrix products of one training step as (M, K, N) triples (C = A B, A of shape (M, K)).

    Forward ``x W`` and ``dW = x^T dy`` for every layer, ``dx = dy W^T`` for all
    but the first (time features and data are not differentiated).
    """
    out = []
    for i, (fi, fo) in enumerate(layer_shapes(width)):
        out.append((batch, fi, fo))  # forward
        out.append((fi, batch, fo))  # dW
        if i > 0:
            out.append((batch, fo, fi))  # dx
    return out


def step_flops(width, batch):
    return sum(2 * m * k * n for m, k, n in step_gemms(width, batch))


def phase_medians(samples):
    """{phase: median ms} from a list of {phase: seconds} dicts."""
    import statistics

    return {k: statistics.median(s[k] for s in samples) * 1e3 for k in samples[0]}


# --------------------------------------------------------------------------
# refdiff worker


def _refdiff_setup(width, batch, dtype, seed, target_scale=1.0, backend="numpy"):
    sys.path.insert(0, str(REPO))
    from refdiff.nn.mlp import MLP
    from refdiff.nn.optim import Adam

    net = MLP(data_shape=DATA_DIM, width=width, depth=DEPTH, emb_dim=EMB_DIM, time_scale=1.0, activation="silu",
              backend=backend)
    params = net.init(seed, dtype=dtype)
    grads = params.zeros_like()
    opt = Adam(params, lr=LR, backend=backend)
    x, t, target = make_batch(seed, batch, target_scale)
    return net, params, grads, opt, x.astype(dtype), t, target.astype(dtype)


def _refdiff_step_fn(net, params, grads, opt, x, t, target):
    from refdiff.nn.optim import clip_grad_norm
    from refdiff.train import regression_loss

    def step():
        out, cache = net.forward(params, x, t)
        loss, dout = regression_loss(out, target)
        grads.flat.fill(0.0)
        net.backward(params, grads, cache, dout)
        norm = clip_grad_norm(grads, CLIP)
        opt.step(params, grads)
        return loss, norm

    def phases():
        clock = time.perf_counter
        t0 = clock()
        out, cache = net.forward(params, x, t)
        t1 = clock()
        loss, dout = regression_loss(out, target)
        t2 = clock()
        grads.flat.fill(0.0)
        t3 = clock()
        net.backward(params, grads, cache, dout)
        t4 = clock()
        clip_grad_norm(grads, CLIP)
        t5 = clock()
        opt.step(params, grads)
        t6 = clock()
        return {"forward": t1 - t0, "loss": t2 - t1, "zero_grad": t3 - t2, "backward": t4 - t3,
                "clip": t5 - t4, "adam": t6 - t5}

    return step, phases


def _refdiff_gemm_floor(width, batch, dtype, backend, warmup, repeat, max_seconds):
    """Seconds for the step's matrix products alone, as ``backend`` forms them: NumPy's BLAS with the outputs
    preallocated, or the ``matmul`` of the backend's twins (register tiles where they pay, see
    ``kernels/mlp_numba.py``), which allocates its outputs as it does in the step."""
    import numpy as np

    from refdiff.nn import fused

    ops = fused.elementwise(backend, batch * width)

    gen = np.random.default_rng(0)
    products = []
    for i, (fi, fo) in enumerate(layer_shapes(width)):
        x = gen.standard_normal((batch, fi)).astype(dtype)
        w = gen.standard_normal((fi, fo)).astype(dtype)
        dy = gen.standard_normal((batch, fo)).astype(dtype)
        products.append((x, w, np.empty((batch, fo), dtype)))  # forward x W
        products.append((x.T, dy, np.empty((fi, fo), dtype)))  # dW = x^T dy
        if i > 0:
            products.append((dy, w.T, np.empty((batch, fi), dtype)))  # dx = dy W^T

    def run():
        for a, b, c in products:
            if ops is fused:
                np.matmul(a, b, out=c)
            else:
                ops.matmul(a, b)

    return _common.time_calls(run, warmup, repeat, max_seconds)


def _numba_info(backend):
    """Numba's version, threading layer and thread count when the worker used it."""
    if backend == "numpy":
        return {}
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {"numba": numba.__version__, "numba_threading_layer": layer, "numba_threads": numba.get_num_threads()}


def refdiff_check(spec):
    import numpy as np

    net, params, grads, opt, x, t, target = _refdiff_setup(spec["width"], spec["batch"], np.float64, spec["seed"],
                                                           spec["target_scale"], spec.get("backend", "numpy"))
    step, _ = _refdiff_step_fn(net, params, grads, opt, x, t, target)
    names = [s.name for s in params.layout.specs]
    shapes = [list(s.shape) for s in params.layout.specs]
    initial = params.flat.copy()
    losses, norms = [], []
    for _ in range(spec["steps"]):
        loss, norm = step()
        losses.append(loss)
        norms.append(norm)
    np.savez(spec["npz"], initial=initial, final=params.flat.copy(), x=x, t=t, target=target,
             losses=np.array(losses), norms=np.array(norms))
    return {"names": names, "shapes": shapes}


def refdiff_time(spec):
    import numpy as np

    dtype = np.dtype(spec["dtype"])
    setup = _refdiff_setup(spec["width"], spec["batch"], dtype, spec["seed"], backend=spec.get("backend", "numpy"))
    step, phases = _refdiff_step_fn(*setup)
    times = _common.time_calls(step, spec["warmup"], spec["repeat"], spec["max_seconds"])
    phase = phase_medians([phases() for _ in range(spec["phase_repeat"])])
    floor = _refdiff_gemm_floor(spec["width"], spec["batch"], dtype, spec.get("backend", "numpy"), 2, spec["repeat"],
                                spec["max_seconds"] / 2)
    return {
        "times_s": times,
        "phases_ms": phase,
        "gemm_floor_s": floor,
        "versions": {"numpy": np.__version__, **_numba_info(spec.get("backend", "numpy"))},
        "blas": _common.blas_info(),
        "n_params": int(setup[1].flat.size),
    }


# --------------------------------------------------------------------------
# torch worker


def _torch_model(width, dtype):
    import numpy as np
    import torch
    from torch import nn

    half = EMB_DIM // 2
    # the same omega as refdiff.nn.layers.sinusoidal_embedding, bit for bit
    omega = np.exp(-math.log(MAX_PERIOD) * np.arange(half) / half)

    class TorchMLP(nn.Module):
        """refdiff's MLP in PyTorch: Linear on [x, e(t)], residual SiLU layers, Linear out."""

        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(DATA_DIM + EMB_DIM, width)
            self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(DEPTH - 1))
            self.out = nn.Linear(width, DATA_DIM)
            self.act = nn.SiLU()
            self.register_buffer("omega", torch.from_numpy(omega), persistent=False)  # float64

        def forward(self, x, t):
            # In the model's dtype, as PyTorch code usually does; float64 in the correctness check.
            arg = t[:, None].to(x.dtype) * self.omega.to(x.dtype)  # (N, half)
            e = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
            h = self.act(self.inp(torch.cat([x, e], dim=1)))  # (N, W)
            for layer in self.hidden:
                h = h + self.act(layer(h))
            return self.out(h)  # (N, D)

    model = TorchMLP().to(dtype)
    model.omega = torch.from_numpy(omega)  # .to(dtype) cast the buffer too; keep it float64
    return model


def _torch_pairs(model):
    """(refdiff name, torch parameter, transpose?) in refdiff's layout order."""
    layers = [("in", model.inp)] + [(f"h{i + 1}", m) for i, m in enumerate(model.hidden)] + [("out", model.out)]
    for name, m in layers:
        yield f"{name}.W", m.weight, True
        yield f"{name}.b", m.bias, False


def _torch_adam(params, variant):
    import torch

    kw = {"foreach": False} if variant == "for-loop" else {variant: True}
    return torch.optim.Adam(params, lr=LR, **kw)


def _torch_step_fn(model, opt, x, t, target):
    import torch
    import torch.nn.functional as F

    params = list(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, t), target)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss, norm

    def phases():
        clock = time.perf_counter
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        t1 = clock()
        loss = F.mse_loss(model(x, t), target)
        t2 = clock()
        loss.backward()
        t3 = clock()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        t4 = clock()
        opt.step()
        t5 = clock()
        return {"zero_grad": t1 - t0, "forward+loss": t2 - t1, "backward": t3 - t2, "clip": t4 - t3, "adam": t5 - t4}

    return step, phases


def _torch_setup(torch, width, batch, dtype, seed):
    model = _torch_model(width, dtype)
    x, t, target = make_batch(seed, batch)
    return model, torch.from_numpy(x).to(dtype), torch.from_numpy(t), torch.from_numpy(target).to(dtype)


def _torch_info(torch, threads):
    return {
        "versions": {"torch": torch.__version__, "numpy": __import__("numpy").__version__},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": _common.blas_info(),
        "parallel_info": torch.__config__.parallel_info().strip().splitlines()[:8],
    }


def torch_check(spec):
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    ref = np.load(spec["npz"])
    names = spec["names"]
    offsets = np.cumsum([0] + [math.prod(s) for s in spec["shapes"]])
    results = {}
    for variant in ("for-loop", "foreach", "fused"):
        model = _torch_model(spec["width"], torch.float64)
        with torch.no_grad():
            for (name, p, transpose), o0, o1, shape, want in zip(_torch_pairs(model), offsets[:-1], offsets[1:],
                                                                 spec["shapes"], names):
                assert name == want, (name, want)
                value = torch.from_numpy(ref["initial"][o0:o1].reshape(shape))
                p.copy_(value.T if transpose else value)
        try:
            opt = _torch_adam(model.parameters(), variant)
            step, _ = _torch_step_fn(model, opt, torch.from_numpy(ref["x"]), torch.from_numpy(ref["t"]),
                                     torch.from_numpy(ref["target"]))
            losses, norms = [], []
            for _ in range(len(ref["losses"])):
                loss, norm = step()
                losses.append(float(loss))
                norms.append(float(norm))
        except (RuntimeError, TypeError, ValueError) as err:
            results[variant] = {"available": False, "error": f"{type(err).__name__}: {err}"}
            continue
        final = np.concatenate([(p.detach().T if tr else p.detach()).contiguous().numpy().ravel()
                                for _, p, tr in _torch_pairs(model)])
        results[variant] = {
            "available": True,
            "losses": losses,
            "norms": norms,
            "max_abs_param_diff": float(np.max(np.abs(final - ref["final"]))),
            # loss and norm relative to max(1, |value|): the active check has a loss of ~1e4
            "max_rel_loss_diff": float(np.max(np.abs(np.array(losses) - ref["losses"]) / np.maximum(1, np.abs(ref["losses"])))),
            "max_rel_norm_diff": float(np.max(np.abs(np.array(norms) - ref["norms"]) / np.maximum(1, ref["norms"]))),
            "max_abs_param_change": float(np.max(np.abs(ref["final"] - ref["initial"]))),
        }
    return {"variants": results, **_torch_info(torch, spec["threads"])}


def _torch_gemm_floor(torch, width, batch, dtype, warmup, repeat, max_seconds):
    """Seconds for the step's matrix products alone, outputs preallocated (torch.mm, weights (out, in))."""
    g = torch.Generator().manual_seed(0)
    ops = []
    for i, (fi, fo) in enumerate(layer_shapes(width)):
        x = torch.randn(batch, fi, generator=g, dtype=dtype)
        w = torch.randn(fo, fi, generator=g, dtype=dtype)  # nn.Linear's layout
        dy = torch.randn(batch, fo, generator=g, dtype=dtype)
        ops.append((x, w.T, torch.empty(batch, fo, dtype=dtype)))  # forward x W^T
        ops.append((dy.T, x, torch.empty(fo, fi, dtype=dtype)))  # dW = dy^T x
        if i > 0:
            ops.append((dy, w, torch.empty(batch, fi, dtype=dtype)))  # dx = dy W

    def run():
        for a, b, c in ops:
            torch.mm(a, b, out=c)

    return _common.time_calls(run, warmup, repeat, max_seconds)


def torch_time(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    out = {"variants": {}}
    for variant in spec["variants"]:
        model, x, t, target = _torch_setup(torch, spec["width"], spec["batch"], dtype, spec["seed"])
        opt = _torch_adam(model.parameters(), variant)
        step, phases = _torch_step_fn(model, opt, x, t, target)
        times = _common.time_calls(step, spec["warmup"], spec["repeat"], spec["max_seconds"])
        phase = phase_medians([phases() for _ in range(spec["phase_repeat"])])
        out["variants"][variant] = {"times_s": times, "phases_ms": phase}
    out["gemm_floor_s"] = _torch_gemm_floor(torch, spec["width"], spec["batch"], dtype, 2, spec["repeat"],
                                            spec["max_seconds"] / 2)
    out.update(_torch_info(torch, spec["threads"]))
    return out


WORKERS = {
    ("refdiff", "check"): refdiff_check,
    ("refdiff", "time"): refdiff_time,
    ("torch", "check"): torch_check,
    ("torch", "time"): torch_time,
}


def worker_main(framework, spec_json):
    spec = json.loads(spec_json)
    if spec.get("keep_freed_memory", True):
        # Both workers alike: large freed blocks are recycled, not page-faulted in again each step.
        sys.path.insert(0, str(REPO))
        from refdiff.backend import keep_freed_memory

        keep_freed_memory()
    result = WORKERS[framework, spec["task"]](spec)
    result["env"] = _common.recorded_env()
    result["load_average"] = _common.load_average()
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------
# parent


def run_worker(python, framework, spec, env):
    """Run one worker; its last stdout line is its JSON answer."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", framework, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{framework} worker failed (exit {proc.returncode}) on {spec.get('task')} "
                         f"width={spec.get('width')} batch={spec.get('batch')}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_correctness(args, torch_python, env, widths):
    """One float64 step in both libraries from the same weights; SystemExit(2) on a mismatch."""
    report, failures, tmp = [], [], tempfile.mkdtemp(prefix="mlp_step_check_")
    import numpy as np

    for width, scale in [(w, s) for w in widths for s in args.check_target_scales]:
        npz = os.path.join(tmp, f"check_{width}.npz")
        spec = {"task": "check", "width": width, "batch": min(args.batches), "seed": args.seed,
                "steps": args.check_steps, "target_scale": scale, "npz": npz, "threads": args.threads,
                "backend": args.refdiff_backend[0]}
        info = run_worker(sys.executable, "refdiff", spec, env)
        ref = np.load(npz)
        entry = {"width": width, "batch": spec["batch"], "steps": spec["steps"], "target_scale": scale, "tol": args.tol,
                 "refdiff_backend": spec["backend"],
                 "refdiff_losses": ref["losses"].tolist(), "refdiff_grad_norms": ref["norms"].tolist(),
                 "clipping_active": bool(np.any(ref["norms"] > CLIP)), "other_backends": {}}
        for backend in args.refdiff_backend[1:]:
            # the other backends against the first: refdiff's twins agree to rounding
            other_npz = os.path.join(tmp, f"check_{width}_{backend}.npz")
            run_worker(sys.executable, "refdiff", {**spec, "npz": other_npz, "backend": backend}, env)
            other = np.load(other_npz)
            worst = max(float(np.max(np.abs(other["final"] - ref["final"]))),
                        float(np.max(np.abs(other["losses"] - ref["losses"]) / np.maximum(1, np.abs(ref["losses"])))))
            entry["other_backends"][backend] = {"max_diff": worst, "ok": bool(worst <= args.tol)}
            if worst > args.tol:
                failures.append(f"width {width}, target scale {scale:g}, refdiff backend {backend} vs "
                                f"{spec['backend']}: max |diff| {worst:.3e} > {args.tol:g}")
            os.unlink(other_npz)
        if torch_python:
            tres = run_worker(torch_python, "torch", {**spec, **info}, env)
            entry["torch"] = tres["variants"]
            for variant, r in tres["variants"].items():
                if not r["available"]:
                    continue
                worst = max(r["max_abs_param_diff"], r["max_rel_loss_diff"], r["max_rel_norm_diff"])
                r["ok"] = bool(worst <= args.tol)
                if not r["ok"]:
                    failures.append(f"width {width}, target scale {scale:g}, torch Adam {variant}: "
                                    f"max |diff| {worst:.3e} > {args.tol:g}")
        report.append(entry)
        os.unlink(npz)
    os.rmdir(tmp)
    return report, failures


def time_config(args, torch_python, env, width, batch, torch_variants):
    spec = {"task": "time", "width": width, "batch": batch, "dtype": args.dtype, "seed": args.seed,
            "threads": args.threads, "warmup": args.warmup, "repeat": args.repeat, "max_seconds": args.max_seconds,
            "phase_repeat": args.phase_repeat, "variants": torch_variants}
    ref_runs, torch_runs = {b: [] for b in args.refdiff_backend}, []
    for _ in range(args.rounds):
        for backend in args.refdiff_backend:
            ref_runs[backend].append(run_worker(sys.executable, "refdiff", {**spec, "backend": backend}, env))
        if torch_python and torch_variants:
            torch_runs.append(run_worker(torch_python, "torch", spec, env))
    flops = step_flops(width, batch)

    def stats(times):
        s = _common.summary_ms(times)
        s["gflops_at_median"] = flops / (s["median_ms"] * 1e-3) / 1e9
        return s

    first = ref_runs[args.refdiff_backend[0]]
    entry = {"width": width, "batch": batch, "n_params": first[0]["n_params"], "gflop_per_step": flops / 1e9,
             "refdiff_backends": {}}
    for backend, runs in ref_runs.items():
        s = stats([x for r in runs for x in r["times_s"]])
        s["phases_ms"] = runs[-1]["phases_ms"]
        s["gemm_floor"] = _common.summary_ms([x for r in runs for x in r["gemm_floor_s"]])
        s["versions"] = runs[-1]["versions"]
        entry["refdiff_backends"][backend] = s
    # "refdiff" is the fastest backend by median (the one a user would pick)
    entry["refdiff_best"] = min(entry["refdiff_backends"], key=lambda b: entry["refdiff_backends"][b]["median_ms"])
    entry["refdiff"] = entry["refdiff_backends"][entry["refdiff_best"]]
    if torch_runs:
        entry["torch"] = {}
        for variant in torch_variants:
            s = stats([x for r in torch_runs for x in r["variants"][variant]["times_s"]])
            s["phases_ms"] = torch_runs[-1]["variants"][variant]["phases_ms"]
            entry["torch"][variant] = s
        best = min(entry["torch"], key=lambda v: entry["torch"][v]["median_ms"])
        entry["torch_best"] = best
        entry["torch_gemm_floor"] = _common.summary_ms([x for r in torch_runs for x in r["gemm_floor_s"]])
        entry["ratio_median"] = entry["torch"][best]["median_ms"] / entry["refdiff"]["median_ms"]
        # fastest sample against fastest sample, whichever backend or Adam took it (refdiff_best is chosen by
        # median, and another backend may hold the single fastest step)
        entry["ratio_min"] = (min(s["min_ms"] for s in entry["torch"].values())
                              / min(s["min_ms"] for s in entry["refdiff_backends"].values()))
        entry["ratio_median_by_backend"] = {b: entry["torch"][best]["median_ms"] / s["median_ms"]
                                            for b, s in entry["refdiff_backends"].items()}
    return entry, first[-1], (torch_runs[-1] if torch_runs else None)


def print_table(label, configs):
    print(f"\n== {label}")
    head = f"{'config':<16}{'backend':<8}{'refdiff ms (min/med/max)':>28}{'torch ms (min/med/max)':>28}  {'best adam':<9}"
    print(head + f"{'ratio med':>10}{'ratio min':>10}")
    for c in configs:
        for backend, r in c["refdiff_backends"].items():
            line = (f"W{c['width']:<4} N{c['batch']:<9}{backend:<8}"
                    f"{r['min_ms']:>10.3f}{r['median_ms']:>9.3f}{r['max_ms']:>9.3f}")
            if "torch" in c:
                t = c["torch"][c["torch_best"]]
                line += f"{t['min_ms']:>10.3f}{t['median_ms']:>9.3f}{t['max_ms']:>9.3f}  {c['torch_best']:<9}"
                line += f"{t['median_ms'] / r['median_ms']:>10.2f}"
                line += f"{min(s['min_ms'] for s in c['torch'].values()) / r['min_ms']:>10.2f}"
            print(line)
    for c in configs:
        tf = c.get("torch_gemm_floor", {}).get("median_ms", float("nan"))
        for backend, r in c["refdiff_backends"].items():
            ph = " ".join(f"{k}={v:.3f}" for k, v in r["phases_ms"].items())
            fl = r["gemm_floor"]["median_ms"]
            print(f"  W{c['width']} N{c['batch']} {backend}: refdiff phases (median ms) {ph}; "
                  f"GEMM floor {backend} {fl:.3f} / torch {tf:.3f}")


def plot(path, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        cfgs = run["configs"]
        pos = np.arange(len(cfgs))
        labels = [f"W{c['width']}\nN{c['batch']}" for c in cfgs]
        series = [(f"refdiff {b}", [c["refdiff_backends"][b] for c in cfgs]) for b in cfgs[0]["refdiff_backends"]]
        if all("torch" in c for c in cfgs):
            series.append(("torch (best Adam)", [c["torch"][c["torch_best"]] for c in cfgs]))
        wbar = 0.8 / len(series)
        for i, (name, ss) in enumerate(series):
            med = np.array([s["median_ms"] for s in ss])
            err = np.array([[m - s["min_ms"] for m, s in zip(med, ss)], [s["max_ms"] - m for m, s in zip(med, ss)]])
            ax.bar(pos + (i - (len(series) - 1) / 2) * wbar, med, wbar, yerr=err, capsize=3, label=name)
        for p, c in zip(pos, cfgs):
            if "ratio_median" in c:
                top = max(c["refdiff"]["max_ms"], c["torch"][c["torch_best"]]["max_ms"])
                ax.text(p, top * 1.15, f"{c['ratio_median']:.2f}x", ha="center", fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks(pos, labels)
        ax.set_ylabel("ms per training step (median, min-max)")
        ax.set_title(f"MLP step, {run['dtype']}, {run['threads']} threads, OPENBLAS_CORETYPE={run['openblas_coretype'] or 'unset'}",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["refdiff", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=2, help="threads for every pool, both libraries (default 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; --quick 3)")
    parser.add_argument("--repeat", type=_common.positive_int, default=None,
                        help="timed steps per round (default 60; --quick 15)")
    parser.add_argument("--rounds", type=_common.positive_int, default=None,
                        help="alternations refdiff/torch per config (default 2; --quick 1)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a timing loop after this many seconds (>= 5 samples; default 15; --quick 4)")
    parser.add_argument("--phase-repeat", type=int, default=None, help="steps timed phase by phase (default 15; --quick 5)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refdiff-backend", nargs="+", choices=["numpy", "numba", "auto"], default=None,
                        help="refdiff backends to time (MLP and Adam); the ratio uses the fastest "
                             "(default: numpy numba, or numpy alone without Numba)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with PyTorch (default $REFDIFF_TORCH_PYTHON; 'none' skips)")
    parser.add_argument("--torch-adam", nargs="+", default=["for-loop", "foreach", "fused"],
                        help="torch.optim.Adam implementations to time (those that pass the check)")
    parser.add_argument("--coretype", choices=_common.CORETYPE_CHOICES, default="auto",
                        help="OPENBLAS_CORETYPE in the workers: auto = both ways when it is set, else as is")
    parser.add_argument("--check-steps", type=int, default=1, help="float64 steps compared before timing (default 1)")
    parser.add_argument("--check-target-scales", type=float, nargs="+", default=[0.01, 100.0],
                        help="target scales of the checks: the defaults leave clipping inactive, then make it active")
    parser.add_argument("--tol", type=float, default=1e-10, help="max |difference| allowed in the float64 check")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"JSON output (default {DEFAULT_JSON.relative_to(REPO)})")
    parser.add_argument("--plot", metavar="PNG", help="also draw a bar chart")
    args = parser.parse_args(argv)

    if args.worker:
        return worker_main(args.worker, args.spec)

    if args.refdiff_backend is None:
        import importlib.util

        args.refdiff_backend = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
    args.refdiff_backend = list(dict.fromkeys(args.refdiff_backend))
    quick = args.quick
    args.warmup = args.warmup if args.warmup is not None else (3 if quick else 10)
    args.repeat = args.repeat if args.repeat is not None else (15 if quick else 60)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 2)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (4.0 if quick else 15.0)
    args.phase_repeat = args.phase_repeat if args.phase_repeat is not None else (5 if quick else 15)

    torch_python = args.torch_python
    if torch_python is None:
        torch_python = _common.peer_python("torch")
        if torch_python is None:
            print("PyTorch skipped: set REFDIFF_TORCH_PYTHON or pass --torch-python")
    elif torch_python.lower() == "none":
        torch_python = None

    coretype, variants = _common.coretype_variants(args.coretype)
    print(f"OPENBLAS_CORETYPE in this environment: {coretype!r}; "
          f"measuring {'with it and without it' if len(variants) == 2 else ('without it' if variants[0] else 'as is')}")

    payload = {
        "benchmark": "mlp_step",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "step": {"network": f"refdiff MLP(data_shape={DATA_DIM}, depth={DEPTH}, emb_dim={EMB_DIM}, silu)",
                 "loss": "mean squared error", "clip_grad_norm": CLIP, "optimizer": f"Adam(lr={LR})",
                 "time_features": "sinusoidal, inside the step: refdiff's float32 path (phase reduced in float64); "
                                  "torch in the model dtype",
                 "malloc": "both workers call refdiff.backend.keep_freed_memory()",
                 "torch_zero_grad": "set_to_none=True", "refdiff_zero_grad": "grads.flat.fill(0)"},
        "settings": {k: getattr(args, k) for k in ("widths", "batches", "dtype", "threads", "warmup", "repeat",
                                                   "refdiff_backend",
                                                   "rounds", "max_seconds", "phase_repeat", "quick", "seed",
                                                   "check_steps", "check_target_scales", "tol")},
        "machine": {**_common.machine_info(), "environment": _common.recorded_env()},
        "torch_python": torch_python,
        "goal": {"ratio_at_least": GOAL_RATIO, "definition": "torch_median / refdiff_median, every config"},
        "ratio_definitions": {
            "ratio_median": "median ms of the fastest torch Adam (by median) / median ms of refdiff's fastest "
                            "backend (refdiff_best; every backend in ratio_median_by_backend)",
            "ratio_min": "fastest torch sample (any Adam) / fastest refdiff sample (any backend)",
        },
        "runs": [],
    }

    for unset in variants:
        # Numba's default layer as a plain environment has it (OpenMP, its own wait policy): the numba backend's
        # products then run as register tiles on its spinning workers (kernels/mlp_numba.py, products_by_tiles)
        env = _common.child_env(args.threads, unset_coretype=unset, numba_layer="omp", omp_wait_policy=None)
        label = "OPENBLAS_CORETYPE " + ("unset" if unset or not coretype else f"set ({coretype})")
        check, failures = check_correctness(args, torch_python, env, sorted(set(args.widths)))
        for c in check:
            tv = c.get("torch", {})
            summary = ", ".join(
                f"{v}: " + (f"max|dparam| {r['max_abs_param_diff']:.1e} rel dloss {r['max_rel_loss_diff']:.1e}"
                            if r["available"] else "unavailable") for v, r in tv.items())
            print(f"check ({label}) W{c['width']} N{c['batch']} float64, {c['steps']} step(s), "
                  f"|grad| {c['refdiff_grad_norms'][0]:.3g}, clipping "
                  f"{'active' if c['clipping_active'] else 'INACTIVE'}: {summary or 'torch skipped'}"
                  + "".join(f"; refdiff {b} vs {c['refdiff_backend']}: max|diff| {r['max_diff']:.1e}"
                            for b, r in c["other_backends"].items()))
        if failures:
            payload["check_failures"] = failures
            _common.write_json(args.json, {**payload, "check": check})
            print("CORRECTNESS CHECK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 2
        torch_variants = [v for v in args.torch_adam
                          if all(c.get("torch", {}).get(v, {}).get("ok") for c in check)]
        run = {"openblas_coretype": None if unset else coretype, "coretype_unset": unset, "dtype": args.dtype,
               "threads": args.threads, "worker_environment": _common.recorded_env(env), "check": check,
               "torch_adam_timed": torch_variants, "configs": [],
               "load_average_before": _common.load_average()}
        for width in args.widths:
            for batch in args.batches:
                entry, rinfo, tinfo = time_config(args, torch_python, env, width, batch, torch_variants)
                run["configs"].append(entry)
                run["refdiff_worker"] = {k: rinfo[k] for k in ("versions", "blas", "env")}
                if tinfo:
                    run["torch_worker"] = {k: tinfo[k] for k in tinfo if k not in ("variants", "gemm_floor_s")}
                print(f"  W{width} N{batch}: refdiff "
                      + ", ".join(f"{b} {r['median_ms']:.3f}" for b, r in entry["refdiff_backends"].items()) + " ms"
                      + (f", torch {entry['torch'][entry['torch_best']]['median_ms']:.3f} ms ({entry['torch_best']}),"
                         f" ratio {entry['ratio_median']:.2f}" if "torch" in entry else ""), flush=True)
        run["load_average_after"] = _common.load_average()
        ratios = [c["ratio_median"] for c in run["configs"] if "ratio_median" in c]
        run["goal_met"] = bool(ratios) and len(ratios) == len(run["configs"]) and min(ratios) >= GOAL_RATIO
        payload["runs"].append(run)
        print_table(f"{label}, {args.dtype}, {args.threads} threads (ratio = torch / refdiff; > 1: refdiff faster; "
                    f"goal >= {GOAL_RATIO}: {'met' if run['goal_met'] else 'NOT met'})", run["configs"])
        load = run["load_average_after"]
        if load and load[0] > (_common.machine_info()["cpus_usable"] or 1):
            print(f"  warning: load average {load[0]:.2f} exceeds the usable CPUs; timings are contended")

    path = _common.write_json(args.json, payload)
    print(f"\nwrote {path}")
    if args.plot:
        plot(args.plot, payload["runs"])
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
