"""Train the MLP on the 8-mode ring and measure what it learned against the exact answers.

Reports (JSON, and PNGs with --plots DIR):
* training time and steps/s (the goal: at most 2 minutes on 2 CPU cores);
* samples from the reverse SDE (Euler-Maruyama) and DPM-Solver++ with the
  learned model and with the exact score, same noise: largest mode-weight
  error and sliced W2 against exact samples (goal: weights within 0.05,
  SW2 within 3x of the exact-score sampler's);
* the learned score's error against the exact score as a function of t
  (relative mean squared error and RMS), a table and a plot;
* the PF-ODE log-likelihood of held-out data under the trained model next to
  the exact log-density of the true mixture;
* the GAN baseline (refdiff.gan, common defaults) trained on the same data:
  the mode-coverage table of GAN and diffusion samples side by side.

    python benchmarks/ring_quality.py [--steps 20000] [--plots benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--n-data", type=int, default=100_000, help="training set size (exact mixture samples)")
    ap.add_argument("--n", type=int, default=20_000, help="samples per sampler")
    ap.add_argument("--sde-steps", type=int, default=1000)
    ap.add_argument("--dpm-steps", type=int, default=20)
    ap.add_argument("--n-loglik", type=int, default=1000)
    ap.add_argument("--gan-steps", type=int, default=10000, help="GAN baseline training steps (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ring_quality.json"))
    ap.add_argument("--plots", default=None, help="folder for PNG figures (needs matplotlib)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from refdiff import nn, samplers
    from refdiff.backend import keep_freed_memory
    from refdiff.likelihood import ode_log_likelihood
    from refdiff.metrics import mode_weight_error, mode_weights, score_error_by_time, sliced_wasserstein
    from refdiff.objectives import EpsObjective
    from refdiff.sde import VPSDE
    from refdiff.targets import ring_mixture
    from refdiff.train import train

    keep_freed_memory()  # this script owns its process: recycle the per-step temporaries

    target = ring_mixture()
    vp = VPSDE()
    data = target.sample(args.n_data, rng=np.random.SeedSequence([args.seed, 1]))
    obj = EpsObjective(vp)
    net = nn.MLP(2, width=args.width, depth=args.depth, time_scale=obj.time_scale)
    res = train(net, data, obj, steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=args.warmup,
                ema_decay=args.ema, seed=args.seed)
    print(f"trained {args.steps} steps in {res.seconds:.1f} s ({res.steps_per_second:.0f} steps/s), "
          f"last-1000 mean loss {np.mean(res.losses[-1000:]):.4f}", file=sys.stderr)

    exact_samples = target.sample(args.n, rng=np.random.SeedSequence([args.seed, 2]))
    learned, exact = res.model(), (lambda x, t: target.eps(x, vp, t))
    report = {"train": {"steps": args.steps, "seconds": res.seconds, "steps_per_second": res.steps_per_second,
                        "batch": args.batch, "width": args.width, "depth": args.depth, "lr": args.lr,
                        "final_loss": float(np.mean(res.losses[-1000:]))},
              "samplers": {}}
    runs = {"euler_maruyama": (samplers.euler_maruyama, {"steps": args.sde_steps}),
            "dpm_solver_pp": (samplers.dpm_solver_pp, {"steps": args.dpm_steps})}
    samples = {}
    for name, (fn, kw) in runs.items():
        row = {}
        for which, model in (("learned", learned), ("exact", exact)):
            t0 = time.perf_counter()
            x, nfe = fn(model, vp, (args.n, 2), prediction="eps", rng=np.random.SeedSequence([args.seed, 3]), **kw)
            samples[f"{name}/{which}"] = x
            row[which] = {"max_weight_error": mode_weight_error(x, target),
                          "weights": mode_weights(x, target).round(4).tolist(),
                          "sw2": sliced_wasserstein(x, exact_samples, rng=0), "nfe": nfe,
                          "seconds": time.perf_counter() - t0}
        row["sw2_ratio"] = row["learned"]["sw2"] / row["exact"]["sw2"]
        report["samplers"][name] = row
        print(f"{name:15s} learned: weight err {row['learned']['max_weight_error']:.4f} SW2 {row['learned']['sw2']:.4f} | "
              f"exact: weight err {row['exact']['max_weight_error']:.4f} SW2 {row['exact']['sw2']:.4f} | "
              f"ratio {row['sw2_ratio']:.2f}", file=sys.stderr)

    times = np.array([0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    score64 = obj.score_model(net, res.ema.astype(np.float64))
    report["score_error"] = score_error_by_time(score64, target, vp, times, target.sample(5000, rng=args.seed + 7),
                                                rng=args.seed + 8)
    print("t        sigma    rel_mse   rms", file=sys.stderr)
    for r in report["score_error"]:
        print(f"{r['t']:<8g} {r['sigma']:<8.4f} {r['rel_mse']:<9.4f} {r['rms']:.4f}", file=sys.stderr)

    held_out = target.sample(args.n_loglik, rng=np.random.SeedSequence([args.seed, 4]))
    t0 = time.perf_counter()
    ll = ode_log_likelihood(vp, score64, held_out, score_vjp=score64.vjp, rtol=1e-5, atol=1e-5)
    exact_ll = target.log_prob(held_out, vp, vp.t_min)  # the ODE gives log p at t_min
    report["log_likelihood"] = {"model_mean": float(ll.log_prob.mean()), "exact_mean": float(exact_ll.mean()),
                                "model_se": float(ll.log_prob.std(ddof=1) / np.sqrt(len(held_out))),
                                "mean_abs_diff": float(np.abs(ll.log_prob - exact_ll).mean()),
                                "nfe": ll.nfe, "seconds": time.perf_counter() - t0, "n": len(held_out)}
    print(f"held-out log-likelihood: model {ll.log_prob.mean():.4f} nats, exact mixture {exact_ll.mean():.4f} nats", file=sys.stderr)

    if args.gan_steps:
        from refdiff.gan import format_mode_coverage, mode_coverage_table, sample, train_gan

        gan = train_gan(data, steps=args.gan_steps, seed=args.seed)
        samples["gan"] = sample(gan, args.n, rng=np.random.SeedSequence([args.seed, 6]))
        rows = mode_coverage_table({"exact": exact_samples, "diffusion (EM)": samples["euler_maruyama/learned"],
                                    "diffusion (DPM++)": samples["dpm_solver_pp/learned"], "GAN": samples["gan"]}, target)
        report["gan"] = {"steps": args.gan_steps, "seconds": gan.time_s,
                         "coverage": [{**r, "weights": np.round(r["weights"], 4).tolist()} for r in rows]}
        print(format_mode_coverage(rows), file=sys.stderr)

    report["machine"] = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                         "processor": platform.processor()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    if args.plots:
        plot(report, samples, exact_samples, res.losses, args.plots)
    return report


def plot(report, samples, exact_samples, losses, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(4 * (len(samples) + 1), 4))
    panels = [("exact samples", exact_samples)] + [(k, v) for k, v in samples.items()]
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:5000, 0], x[:5000, 1], s=1, alpha=0.4)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6, 6)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "ring_samples.png"), dpi=80)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    se = report["score_error"]
    a1.loglog([r["t"] for r in se], [r["rel_mse"] for r in se], "o-")
    a1.set_xlabel("t")
    a1.set_ylabel("E|s - s*|^2 / E|s*|^2")
    a1.set_title("learned vs exact score")
    a2.plot(losses, lw=0.3)
    a2.set_yscale("log")
    a2.set_xlabel("step")
    a2.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "ring_score_error.png"), dpi=80)


if __name__ == "__main__":
    main()
