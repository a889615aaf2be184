"""Time one U-Net training step in refdiff against the same network in PyTorch CPU eager.

One step is what a trainer does per minibatch minus the optimiser update:
zero the gradients, forward, mean squared error against a fixed random target,
backward (all parameter gradients; no input gradient). The default is
refdiff's :class:`~refdiff.nn.unet.UNet` on single-channel 8x8 images, 32
channels, batch 256, float32.

Each side runs in its own fresh process with its thread count pinned to the
same number (``--threads``, default 2: ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``torch.set_num_threads``).
The parent draws the weights (with ``conv_out`` given random values, so that
every gradient is non-zero), the images, times and target, and hands them to
both workers through a temporary ``.npz``; the PyTorch worker rebuilds the
architecture from the U-Net's config and copies the weights in (``Conv2d``
weights unchanged, ``Linear`` weights transposed; the sinusoidal time
features come precomputed). Before anything is timed, one step checks each
implementation against the reference: refdiff on ``--backend`` against
refdiff on ``backend="numpy"`` (the NumPy reference) on the same weights and
batch, loss and gradient within :data:`TWIN_RTOL` of the parameters' dtype
(relative; 1e-5 in float32), then PyTorch against the ``--backend`` run
(relative error below 1e-4 in float32). Both results go to the JSON
(``check``); when one fails the script writes the JSON without timings
(``check_failures``) and exits with status 2. Then ``--rounds`` worker
processes per side, alternating, each time ``--repeat`` steps after
``--warmup``.

refdiff runs with ``--backend`` (default ``auto``: the fused GroupNorm + SiLU
of :class:`~refdiff.nn.conv.GroupNormSiLU` and the products of the
convolutions' patch chunks (register tiles on CPUs with AVX-512) on Numba
when it is installed, ``numpy`` for the pure NumPy reference); the patch
copies are NumPy on every backend.

Reports min / median / max wall milliseconds per step (and the median process
CPU time, all threads, which shows spin-waiting), the ratio refdiff / PyTorch
of the medians and of the minima, and writes JSON (``--json``). The PyTorch
side runs with the interpreter given by ``--torch-python`` (default: this
one, skipped when it cannot import torch).

On a shared 2-core machine, other processes make the numbers swing: OpenBLAS
threads spin-wait for each other at every GEMM, and when the second core is
busy a 2-thread step can take several times longer. Run it on a quiet
machine, or compare with ``--threads 1``.

Usage::

    python benchmarks/cnn_step.py [--batch 256] [--channels 32] [--image 8]
        [--threads 2] [--repeat 20] [--rounds 2] [--n-classes K] [--backend auto]
        [--torch-python PATH] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks folder, first on sys.path)

REPO = _common.REPO

#: Largest relative error of the loss and of the gradient (2-norm of the difference over the reference's) of
#: refdiff's ``--backend`` step against its NumPy reference, by the parameters' dtype: some hundred roundings
#: (GroupNorm's sums run in another order in the Numba twin; measured ~1e-6 in float32).
TWIN_RTOL = {"float32": 1e-5, "float64": 1e-12}
#: The same for PyTorch against refdiff's ``--backend`` step (another library's convolutions and reductions).
TORCH_RTOL = 1e-4

# --- the PyTorch twin (only the worker imports torch) ------------------------------


def torch_unet(config, torch):
    """The refdiff U-Net of ``config`` in PyTorch; modules keyed by refdiff layer names ('.' -> '__')."""
    nn, F = torch.nn, torch.nn.functional
    c_img = config["image_shape"][0]
    widths = [config["channels"] * m for m in config["channel_mult"]]
    e, groups, levels = config["emb_dim"], config["groups"], len(config["channel_mult"])

    def res_block(c_in, c_out):
        m = nn.Module()
        m.norm1, m.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        m.emb = nn.Linear(e, c_out)
        m.norm2, m.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        m.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        return m

    def block_forward(m, x, emb):
        h = m.conv1(F.silu(m.norm1(x))) + m.emb(emb)[:, :, None, None]
        h = m.conv2(F.silu(m.norm2(h)))
        return h + (x if m.skip is None else m.skip(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers = {"temb0": nn.Linear(e, e), "temb1": nn.Linear(e, e), "conv_in": nn.Conv2d(c_img, widths[0], 3, padding=1)}
            if config.get("n_classes") is not None:
                layers["cls"] = nn.Embedding(config["n_classes"] + 1, e)
            c = widths[0]
            for l, w in enumerate(widths):
                layers[f"down{l}"] = res_block(c, w)
                c = w
            layers["mid"] = res_block(c, c)
            for l in reversed(range(levels)):
                layers[f"up{l}"] = res_block(c + widths[l], widths[l])
                c = widths[l]
            layers["norm_out"] = nn.GroupNorm(groups, widths[0])
            layers["conv_out"] = nn.Conv2d(widths[0], c_img, 3, padding=1)
            self.layers = nn.ModuleDict(layers)

        def forward(self, x, features, y=None):
            L = self.layers
            emb = L["temb1"](F.silu(L["temb0"](features)))
            if y is not None:
                emb = emb + L["cls"](y)
            emb = F.silu(emb)
            h, skips = L["conv_in"](x), []
            for l in range(levels):
                h = block_forward(L[f"down{l}"], h, emb)
                skips.append(h)
                if l < levels - 1:
                    h = F.avg_pool2d(h, 2)
            h = block_forward(L["mid"], h, emb)
            for l in reversed(range(levels)):
                h = block_forward(L[f"up{l}"], torch.cat([h, skips[l]], dim=1), emb)
                if l > 0:
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
            return L["conv_out"](F.silu(L["norm_out"](h)))

    return Net()


_TORCH_ATTR = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias", "E": "weight"}


def torch_param(model, name):
    """The PyTorch parameter of refdiff parameter ``name`` and whether it is a transposed Linear weight."""
    *path, leaf = name.split(".")
    module = model.layers[path[0]]
    for part in path[1:]:
        module = getattr(module, part)
    param = getattr(module, _TORCH_ATTR[leaf])
    return param, leaf == "W" and param.ndim == 2 and type(module).__name__ == "Linear"


# --- workers -----------------------------------------------------------------------


def timed(step, warmup, repeat):
    """Wall seconds of each of ``repeat`` steps, and the process CPU seconds of each (all threads)."""
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def worker_refdiff(data, args):
    import numpy as np

    sys.path.insert(0, str(REPO))
    from refdiff.nn.params import Params
    from refdiff.nn.unet import UNet

    config = json.loads(str(data["config"]))
    net = UNet(**config, backend=args.backend)
    p = Params(net.layout, data["flat"].copy())
    g = p.zeros_like()
    x, t, target = data["x"], data["t"], data["target"]
    y = data["y"] if "y" in data else None
    scale = 2.0 / target.size

    def step():
        g.flat[...] = 0.0
        out, cache = net.forward(p, x, t, y)
        r = out - target
        loss = float(np.mean(r * r))
        r *= scale  # dL/dout
        net.backward(p, g, cache, r)
        return loss

    loss = step()
    grad = g.flat.copy()
    times, cpu = ([], []) if args.check_only else timed(step, args.warmup, args.repeat)
    versions = {"numpy": np.__version__}
    if args.backend != "numpy":
        try:
            import numba

            versions["numba"] = numba.__version__
        except ImportError:  # "auto" without Numba runs NumPy
            pass
    return {"loss": loss, "grad": grad, "times": times, "cpu": cpu, "versions": versions}


def worker_torch(data, args):
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    config = json.loads(str(data["config"]))
    model = torch_unet(config, torch)
    names = json.loads(str(data["names"]))
    flat, offsets = data["flat"], data["offsets"]
    params = []
    with torch.no_grad():
        for name, (o, shape) in zip(names, offsets_shapes(offsets, json.loads(str(data["shapes"])))):
            param, transposed = torch_param(model, name)
            value = flat[o : o + int(np.prod(shape))].reshape(shape)
            param.copy_(torch.from_numpy(value.T.copy() if transposed else value.copy()))
            params.append((param, transposed))
    if sum(q.numel() for q in model.parameters()) != flat.size:
        raise SystemExit("the PyTorch twin's parameters do not match refdiff's layout")
    x, features, target = (torch.from_numpy(data[k]) for k in ("x", "features", "target"))
    y = torch.from_numpy(data["y"]) if "y" in data else None

    def step():
        model.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x, features, y), target)
        loss.backward()
        return float(loss)

    loss = step()
    grad = np.concatenate([(q.grad.T if tr else q.grad).contiguous().numpy().ravel() for q, tr in params])
    times, cpu = ([], []) if args.check_only else timed(step, args.warmup, args.repeat)
    return {"loss": loss, "grad": grad, "times": times, "cpu": cpu, "versions": {"torch": torch.__version__, "numpy": np.__version__}}


def offsets_shapes(offsets, shapes):
    return [(int(o), tuple(s)) for o, s in zip(offsets, shapes)]


def run_worker(args):
    import numpy as np

    sys.path.insert(0, str(REPO))
    from refdiff.backend import keep_freed_memory

    keep_freed_memory()  # both sides alike, as in mlp_step.py

    with np.load(args.data, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    result = (worker_refdiff if args.worker == "refdiff" else worker_torch)(data, args)
    np.save(args.out, result.pop("grad"))
    print(json.dumps(result))


# --- parent ------------------------------------------------------------------------


def spawn(python, side, data_path, args, tmp, warmup, repeat, backend=None):
    """Run one worker in a fresh process; its loss, gradient and step times.

    ``repeat`` None takes the one checked step and times nothing;
    ``backend`` (default ``args.backend``) is refdiff's U-Net backend.
    """
    backend = backend or args.backend
    grad_path = Path(tmp) / f"grad_{side}_{backend}.npy"
    command = [
        python, __file__, "--worker", side, "--data", str(data_path), "--out", str(grad_path),
        "--threads", str(args.threads), "--warmup", str(warmup), "--backend", backend,
    ]
    command += ["--check-only"] if repeat is None else ["--repeat", str(repeat)]
    done = subprocess.run(command, env=_common.child_env(args.threads), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} worker failed:\n{done.stderr}")
    import numpy as np

    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["grad"] = np.load(grad_path)
    return result


def compare_step(ours, ref, tolerance) -> dict:
    """One step's loss and gradient against a reference step's: relative errors and whether both are within ``tolerance``.

    The loss error is ``|loss - loss_ref| / |loss_ref|``, the gradient's the
    2-norm of the difference over the reference gradient's 2-norm (the whole
    flat gradient, every parameter).
    """
    import numpy as np

    loss_err = abs(ours["loss"] - ref["loss"]) / abs(ref["loss"])
    grad_err = float(np.linalg.norm(ours["grad"] - ref["grad"]) / np.linalg.norm(ref["grad"]))
    ok = bool(loss_err <= tolerance and grad_err <= tolerance)
    return {"loss_rel_error": loss_err, "grad_rel_error": grad_err, "tolerance": tolerance, "ok": ok}


def torch_available(python):
    done = subprocess.run([python, "-c", "import torch"], capture_output=True)
    return done.returncode == 0


def stats(result):
    ms = [1e3 * s for s in result["times"]]
    cpu = statistics.median(1e3 * s for s in result["cpu"])
    return {"min_ms": min(ms), "median_ms": statistics.median(ms), "max_ms": max(ms), "runs": len(ms), "cpu_median_ms": cpu}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--channel-mult", default="1,2", help="comma-separated channel multipliers (default 1,2)")
    parser.add_argument("--image", type=int, default=8, help="image height = width (default 8)")
    parser.add_argument("--n-classes", type=int, default=None, help="benchmark a class-conditional U-Net")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=["numpy", "numba", "auto"], default="auto",
                        help="refdiff U-Net backend (default auto: Numba for GroupNorm + SiLU and the convolutions' "
                             "chunk products when installed)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=_common.positive_int, default=20,
                        help="timed steps per worker process (default 20)")
    parser.add_argument("--rounds", type=_common.positive_int, default=2,
                        help="worker processes per side, alternating (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-python", default=None, help="interpreter with torch (default: this one, if it has torch)")
    parser.add_argument("--json", metavar="PATH")
    # internal: worker mode
    parser.add_argument("--worker", choices=["refdiff", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    import numpy as np

    sys.path.insert(0, str(REPO))
    from refdiff.nn.params import ParamSpec
    from refdiff.nn.unet import UNet

    config = UNet(
        image_shape=(1, args.image, args.image),
        channels=args.channels,
        channel_mult=tuple(int(m) for m in args.channel_mult.split(",")),
        n_classes=args.n_classes,
    ).config()
    net = UNet(**config)
    gen = np.random.default_rng(args.seed)
    p = net.init(gen, np.float32)
    for name in ("conv_out.W", "conv_out.b"):  # random instead of zero, so that every gradient is non-zero
        p[name] = ParamSpec(name, p[name].shape, fan_in=p["conv_out.W"][0].size).draw(gen)
    n = args.batch
    x = gen.standard_normal((n, *net.data_shape)).astype(np.float32)
    t = gen.integers(1, 1001, n).astype(np.float64)
    target = gen.standard_normal(x.shape).astype(np.float32)
    features = net.time_features(t, np.float32)
    y = None if args.n_classes is None else gen.integers(0, args.n_classes + 1, n)
    dtype = p.flat.dtype.name  # the checks' tolerance follows the parameters' dtype
    header = {"benchmark": "cnn_step", "model": {"kind": net.kind, "config": config, "n_params": net.n_params},
              "batch": n, "dtype": dtype, "threads": args.threads, "backend": args.backend, "rounds": args.rounds}

    torch_python = args.torch_python or sys.executable
    have_torch = torch_available(torch_python)
    if args.torch_python and not have_torch:
        raise SystemExit(f"--torch-python {args.torch_python} cannot import torch")

    load_before = _common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        arrays = dict(
            config=json.dumps(config), flat=p.flat, names=json.dumps(list(p.layout.names)),
            shapes=json.dumps([list(s.shape) for s in p.layout.specs]), offsets=np.array(p.layout.offsets),
            x=x, t=t, target=target, features=features,
        )
        if y is not None:
            arrays["y"] = y
        with open(data_path, "wb") as f:
            np.savez(f, **arrays)
        # 1. check, before any timing, one step each on the same weights and batch: the --backend run against
        # the NumPy reference (the project's rule for every implementation), then PyTorch against it
        ref = spawn(sys.executable, "refdiff", data_path, args, tmp, 0, None, backend="numpy")
        ours = ref if args.backend == "numpy" else spawn(sys.executable, "refdiff", data_path, args, tmp, 0, None)
        c = compare_step(ours, ref, TWIN_RTOL[dtype])
        check = {"reference": {"backend": args.backend, "against": "numpy", "dtype": dtype, "loss": ours["loss"],
                               "loss_reference": ref["loss"], **c}, "torch": None}
        print(f"check: refdiff {args.backend} vs numpy: loss {ours['loss']:.6f} vs {ref['loss']:.6f} "
              f"(rel. error {c['loss_rel_error']:.1e}), gradient rel. error {c['grad_rel_error']:.1e} "
              f"(tolerance {c['tolerance']:g})")
        failures = []
        if not c["ok"]:
            failures.append(f"refdiff backend {args.backend} differs from the NumPy reference beyond {c['tolerance']:g} "
                            f"(loss {c['loss_rel_error']:.1e}, gradient {c['grad_rel_error']:.1e})")
        theirs = None
        if have_torch and not failures:  # PyTorch against refdiff only once refdiff matches its reference
            theirs = spawn(torch_python, "torch", data_path, args, tmp, 0, None)
            c = compare_step(ours, theirs, TORCH_RTOL)
            check["torch"] = {"loss": theirs["loss"], **c}
            print(f"check: loss {ours['loss']:.6f} vs torch {theirs['loss']:.6f} (rel. error {c['loss_rel_error']:.1e}), "
                  f"gradient rel. error {c['grad_rel_error']:.1e}")
            if not c["ok"]:
                failures.append(f"refdiff and PyTorch disagree beyond {c['tolerance']:g} "
                                f"(loss {c['loss_rel_error']:.1e}, gradient {c['grad_rel_error']:.1e})")
        check["ok"] = not failures
        if failures:  # as mlp_step.py: the JSON records the failed check, nothing is timed, exit status 2
            if args.json:
                _common.write_json(args.json, {**header, "check": check, "check_failures": failures})
            print("CORRECTNESS CHECK FAILED; not timing a wrong computation:\n  " + "\n  ".join(failures),
                  file=sys.stderr)
            return 2
        # 2. time: the two sides alternate, so a slow spell of a shared machine hits both
        runs = {"refdiff": {"times": [], "cpu": []}, "torch": {"times": [], "cpu": []}}
        for _ in range(args.rounds):
            sides = [("refdiff", sys.executable)] + ([("torch", torch_python)] if have_torch else [])
            for side, python in sides:
                r = spawn(python, side, data_path, args, tmp, args.warmup, args.repeat)
                runs[side]["times"] += r["times"]
                runs[side]["cpu"] += r["cpu"]

    result = {
        **header,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": _common.load_average(),
        },
        "environment": _common.recorded_env(_common.child_env(args.threads)),
        "versions": {"python": platform.python_version(), **ours["versions"]},
        "refdiff": {"loss": ours["loss"], **stats(runs["refdiff"])},
        "check": check,
    }
    print(f"U-Net {config['image_shape']} channels {config['channels']} x {config['channel_mult']}, "
          f"{net.n_params} parameters, batch {n}, {dtype}, {args.threads} threads, backend {args.backend}, "
          f"{args.rounds} x {args.repeat} steps per side")

    def line(name, r):
        print(f"{name}: min {r['min_ms']:.1f} ms  median {r['median_ms']:.1f} ms  max {r['max_ms']:.1f} ms  "
              f"(process CPU {r['cpu_median_ms']:.1f} ms)")

    line("refdiff", result["refdiff"])
    if theirs is None:
        print("pytorch: skipped (torch is not importable; pass --torch-python)")
    else:
        result["torch"] = {"loss": theirs["loss"], "python": torch_python, "versions": theirs["versions"], **stats(runs["torch"])}
        line("pytorch", result["torch"])
        result["ratio_median"] = result["refdiff"]["median_ms"] / result["torch"]["median_ms"]
        result["ratio_min"] = result["refdiff"]["min_ms"] / result["torch"]["min_ms"]
        print(f"ratio refdiff / pytorch: {result['ratio_median']:.2f} (medians), {result['ratio_min']:.2f} (minima)")
    if args.json:
        _common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
