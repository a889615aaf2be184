"""Train the class-conditional U-Net on the 8x8 digits and check its samples with a classifier.

1. Split scikit-learn's 8x8 digits (1797 images) 80/20; train the hand-written
   MLP classifier on the 80% and report its held-out accuracy.
2. Train a class-conditional U-Net (eps prediction, discrete cosine schedule,
   label dropped 20% of the time) on the same 80% (goal: at most 10 minutes
   on 2 CPU cores).
3. Sample every class with DDIM and classifier-free guidance at several
   scales gamma (gamma = 0 is the unconditional model), classify the samples,
   and report per-class accuracy (the fraction classified as the asked-for
   class); write a PNG grid (one row per class) per scale.

    python benchmarks/digits_quality.py [--steps 6000] [--plots benchmarks/results]

Needs the `images` extra (scikit-learn) and matplotlib for the grids.
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
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--T", type=int, default=1000, help="diffusion steps of the training schedule")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "digits_quality.json"))
    ap.add_argument("--checkpoint", default=None, help="write (and resume from) this checkpoint")
    ap.add_argument("--plots", default=None, help="folder for the PNG grids (needs matplotlib)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from refdiff import nn, samplers
    from refdiff.backend import keep_freed_memory
    from refdiff.data import load_digits, split
    from refdiff.guidance import classifier_free_guidance
    from refdiff.nn.classifier import per_class_accuracy, predict, train_classifier
    from refdiff.objectives import EpsObjective
    from refdiff.schedules import DiscreteSchedule, cosine_betas
    from refdiff.train import train

    keep_freed_memory()  # this script owns its process: recycle the per-step temporaries

    images, labels = load_digits()
    x_tr, x_te, y_tr, y_te = split(images, labels, test_fraction=0.2, rng=args.seed)
    t0 = time.perf_counter()
    clf, clf_params, _ = train_classifier(x_tr, y_tr, steps=2000, seed=args.seed)
    clf_acc = per_class_accuracy(predict(clf, clf_params, x_te), y_te, 10)
    report = {"classifier": {"held_out_accuracy": float(np.mean(predict(clf, clf_params, x_te) == y_te)),
                             "per_class": clf_acc.round(4).tolist(), "seconds": time.perf_counter() - t0}}
    print(f"classifier: held-out accuracy {report['classifier']['held_out_accuracy']:.4f}", file=sys.stderr)

    sched = DiscreteSchedule(cosine_betas(args.T))
    obj = EpsObjective(sched)
    net = nn.UNet(image_shape=(1, 8, 8), channels=args.channels, time_scale=obj.time_scale, n_classes=10)
    res = train(net, x_tr, obj, labels=y_tr, steps=args.steps, batch_size=args.batch, lr=args.lr,
                warmup=args.warmup, ema_decay=args.ema, seed=args.seed, checkpoint=args.checkpoint,
                resume=args.checkpoint is not None)
    report["train"] = {"steps": args.steps, "seconds": res.seconds, "steps_per_second": res.steps_per_second,
                       "resumed_from": res.info["resumed_from"], "params": net.n_params, "batch": args.batch,
                       "final_loss": float(np.mean(res.losses[-500:]))}
    print(f"U-Net ({net.n_params} parameters): {res.info['steps_run']} steps in {res.seconds:.0f} s, "
          f"final loss {report['train']['final_loss']:.4f}", file=sys.stderr)

    y = np.repeat(np.arange(10), args.per_class)
    uncond, cond = res.model(y=None), res.model(y=y)
    report["guided"] = {}
    grids = {}
    for gamma in args.gammas:
        model = classifier_free_guidance(uncond, cond, gamma, prediction="eps")
        t0 = time.perf_counter()
        # Pixels live in [-1, 1]: clip the predicted x0 as Ho et al.'s code does. The cosine
        # schedule ends at alpha_bar_T = 2.4e-9, where an eps error of 0.05 becomes an x0 error
        # of 1000 (PITFALLS 4); unclipped, the first DDIM steps blow it up.
        x, nfe = samplers.ddim(model, sched, (y.size, 1, 8, 8), prediction="eps", steps=args.sample_steps,
                               rng=np.random.SeedSequence([args.seed, 5]), clip_x0=(-1.0, 1.0))
        x = np.clip(x, -1.0, 1.0)
        pred = predict(clf, clf_params, x)
        acc = per_class_accuracy(pred, y, 10)
        report["guided"][str(gamma)] = {"accuracy": float(np.mean(pred == y)), "per_class": acc.round(4).tolist(),
                                        "predicted_histogram": np.bincount(pred, minlength=10).tolist(),
                                        "seconds": time.perf_counter() - t0, "nfe": nfe}
        grids[gamma] = x
        print(f"gamma {gamma:g}: asked-for class in {np.mean(pred == y):.3f} of samples; per class "
              + " ".join(f"{a:.2f}" for a in acc), file=sys.stderr)

    report["machine"] = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    if args.plots:
        save_grids(grids, args.per_class, args.plots, x_te[:100])
    return report


def save_grids(grids, per_class, folder, real):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    cols = min(per_class, 10)
    panels = [("real", real.reshape(10, 10, 8, 8))] + [
        (f"gamma {g:g}", x.reshape(10, per_class, 8, 8)[:, :cols]) for g, x in grids.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, imgs) in zip(np.atleast_1d(axes), panels):
        rows, c = imgs.shape[:2]
        mosaic = imgs.transpose(0, 2, 1, 3).reshape(rows * 8, c * 8)
        ax.imshow(mosaic, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "digits_samples.png"), dpi=100)


if __name__ == "__main__":
    main()
