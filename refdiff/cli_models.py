"""The command-line side of networks: ``refdiff demo``, ``train``, ``sample``, ``likelihood``.

Each ``cmd_*`` takes the parsed arguments and returns the exit status; a
user error (a name that does not exist, a bad value, a file that is not a
checkpoint) is raised as :class:`UsageError` and printed by :mod:`refdiff.cli`
as one line with exit status 2, never a traceback. Heavy modules load inside
the command that needs them. Each command prints the seed it ran with.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time

__all__ = ["UsageError", "add_demo", "add_train", "add_sample", "add_likelihood"]

PROCESSES = ("vp", "subvp", "cosine", "ve", "ddpm")
OBJECTIVES = ("eps", "dsm", "ncsn")
# Names spelled out here so that building the parser imports no NumPy; a test
# checks them against refdiff.data, refdiff.targets and refdiff.samplers.
DATA_NAMES = ("checkerboard", "moons", "ring8", "rings", "swiss_roll", "digits", "glyphs")
IMAGE_DATA_NAMES = ("digits", "glyphs")  # trained with a U-Net; the others are 2-D, trained with an MLP
TARGET_NAMES = ("mixture16", "ring8")
SAMPLER_NAMES = (
    "annealed_langevin", "ddim", "ddpm", "deis", "dpm_solver", "dpm_solver_pp", "edm_stochastic", "euler_maruyama",
    "ode_euler", "ode_heun", "ode_rk4", "ode_rk45", "plms", "predictor_corrector", "sde_adaptive",
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option with a real default shows it in --help."""

    def _get_help_string(self, action):
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if no_default or "%(default)" in text or "(default" in text or not action.option_strings:
            return text
        return (text + " " if text else "") + "(default: %(default)s)"


class UsageError(ValueError):
    """A bad argument or input file: one line on stderr, exit status 2."""


def _seed(text):
    """The type of ``--seed``: an integer >= 0, as NumPy's seeds are (argparse reports a bad one, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite(text, positive):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if positive else '>='} 0, got {text}")
    return value


def _positive(text):
    """The type of ``--lr`` and ``--rtol``: a finite number > 0 (argparse names the option, exit 2)."""
    return _finite(text, positive=True)


def _non_negative(text):
    """The type of ``--guidance``: a finite number >= 0 (argparse names the option, exit 2)."""
    return _finite(text, positive=False)


EPILOG_DEMO = """examples:
  refdiff demo                          figures and a summary table in ./refdiff-demo
  refdiff demo --out figs --seed 3      another folder, another seed
  refdiff demo --steps 2000 --n 1000    quicker, rougher
"""

EPILOG_TRAIN = """examples:
  refdiff train --data ring8 --steps 20000 --out ring.npz
  refdiff train --data moons --objective dsm --process subvp --steps 5000 --out moons.npz
  refdiff train --data digits --conditional --steps 4000 --out digits.npz   (needs refdiff[images])
  refdiff train --data ring8 --steps 40000 --out ring.npz --resume          (continues at the stored step)

--width and --depth shape the MLP of 2-D data, --channels the U-Net of images; each is refused for the
other kind. A resume must repeat the run's data and settings (all but --steps and --checkpoint-every).
"""

EPILOG_SAMPLE = """examples:
  refdiff sample --target ring8 --sampler dpm_solver_pp --steps 20 --n 10000 --out x.npy
  refdiff sample --checkpoint ring.npz --sampler euler_maruyama --steps 500 --n 5000 --out x.npy
  refdiff sample --checkpoint digits.npz --sampler ddim --steps 50 --n 64 --label 3 --guidance 2 --clip-x0 -1 1 --out threes.npy
  refdiff sample --target mixture.json --sampler ode_heun --n 1000 --out x.npy
"""

EPILOG_LIKELIHOOD = """examples:
  refdiff likelihood --checkpoint ring.npz --data held_out.npy
"""


# --- shared helpers -----------------------------------------------------------------


def _out_path(path, what="--out"):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{what} folder does not exist: {folder}")
    return path


def _save_npy_atomic(path, array):
    import numpy as np

    from ._atomic import atomic_write

    atomic_write(path, lambda fh: np.save(fh, array), suffix=".npy")


def _load_npy(path, what):
    """A .npy array written by np.save (no pickles), or a UsageError saying what the file is instead."""
    import numpy as np

    if not os.path.exists(path):
        raise UsageError(f"{what} file does not exist: {path}")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UsageError(f"{what} {path} is not a .npy array (write one with numpy.save)") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        a.close()
        raise UsageError(f"{what} {path} is an .npz archive; pass a single array saved with numpy.save (.npy)")
    if a.dtype.kind not in "fiu":
        raise UsageError(f"{what} {path} must hold numbers, got dtype {a.dtype}")
    return a


def _process(name):
    from .schedules import DiscreteSchedule, linear_betas
    from .sde import CosineVPSDE, SubVPSDE, VESDE, VPSDE

    return {"vp": VPSDE, "subvp": SubVPSDE, "cosine": CosineVPSDE, "ve": VESDE,
            "ddpm": lambda: DiscreteSchedule(linear_betas(1000))}[name]()


def _load_checkpoint(path):
    from .nn import load_checkpoint
    from .objectives import objective_from_config

    try:
        ck = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as exc:  # missing, truncated or foreign: one line
        raise UsageError(str(exc)) from None
    if not ck.train or "objective" not in ck.train:
        raise UsageError(f"{path} holds weights but no training objective (not written by refdiff train)")
    return ck, objective_from_config(ck.train["objective"])


# --- refdiff demo -----------------------------------------------------------------------


def add_demo(sub):
    p = sub.add_parser("demo", help="the whole story on the 8-mode ring: figures and a summary table (~30 s)",
                       description="Forward process, exact score field, a short MLP training run, samples from "
                                   "several samplers against the truth, error against NFE, learned vs exact "
                                   "score: PNG figures plus a printed summary.", epilog=EPILOG_DEMO,
                       formatter_class=_Formatter)
    p.add_argument("--out", default="refdiff-demo", metavar="DIR", help="folder for the figures (created)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every random draw (printed in the output)")
    p.add_argument("--steps", type=int, default=8000, help="training steps (default 8000)")
    p.add_argument("--n", type=int, default=4000, help="samples per sampler (default 4000)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from .backend import keep_freed_memory

    if args.steps < 1 or args.n < 10:
        raise UsageError(f"--steps must be >= 1 and --n >= 10, got {args.steps} and {args.n}")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise UsageError(f"--out: the folder above {args.out} does not exist: {parent}")
    try:
        from . import plot
        from .demo import run_demo

        plot._plt()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    keep_freed_memory()  # the CLI owns its process: recycle each step's temporaries
    run_demo(args.out, seed=args.seed, steps=args.steps, n=args.n)
    return 0


# --- refdiff train ----------------------------------------------------------------------


def add_train(sub):
    p = sub.add_parser("train", help="train a network on built-in data (MLP for 2-D sets, U-Net for images)",
                       description="Train an MLP (2-D sets) or a U-Net (digit images) with a diffusion objective "
                                   "and write a checkpoint.", epilog=EPILOG_TRAIN,
                       formatter_class=_Formatter)
    p.add_argument("--data", required=True, choices=DATA_NAMES, help="built-in data set")
    p.add_argument("--steps", type=int, required=True, help="training steps (in total, when resuming)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write (.npz)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--objective", choices=OBJECTIVES, default="eps",
                   help="eps prediction, weighted DSM or NCSN multi-scale DSM")
    p.add_argument("--process", choices=PROCESSES, default=None,
                   help="vp (default), subvp, cosine, ve (default for ncsn) or ddpm (discrete, 1000 steps)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 512 for 2-D, 128 for images)")
    p.add_argument("--lr", type=_positive, default=2e-3, help="Adam learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--width", type=int, default=None, help="MLP width (2-D data only; default 128)")
    p.add_argument("--depth", type=int, default=None, help="MLP hidden layers (2-D data only; default 3)")
    p.add_argument("--channels", type=int, default=None, help="U-Net channels (image data only; default 32)")
    p.add_argument("--conditional", action="store_true", help="class-conditional (images; label dropped 20%%)")
    p.add_argument("--n-data", type=int, default=None,
                   help="2-D points or generated glyph images to train on (default 100000; digits is a fixed set "
                        "of 1797 images)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every random draw (printed in the output)")
    p.set_defaults(func=cmd_train)


def _check_applies(args):
    """Refuse a network or data option that the chosen data set would ignore (2-D data: MLP; images: U-Net)."""
    if args.data not in IMAGE_DATA_NAMES:
        if args.conditional:
            raise UsageError("--conditional needs an image data set (digits or glyphs)")
        if args.channels is not None:
            raise UsageError(f"--channels sets the U-Net of image data; {args.data} is 2-D data, trained with an "
                             f"MLP: use --width and --depth")
        return
    for name in ("width", "depth"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name} sets the MLP of 2-D data; {args.data} is image data, trained with a U-Net: "
                             f"use --channels")
    if args.data == "digits" and args.n_data is not None:
        raise UsageError(f"--n-data does not apply to digits, a fixed set of 1797 images (got --n-data {args.n_data}); "
                         f"it sizes the 2-D sets and glyphs")


def _data_source(args):
    """What defines the training data, keyed by the option that sets it (stored in the checkpoint)."""
    n_data = None if args.data == "digits" else (args.n_data or 100_000)
    return {"data": args.data, "n_data": n_data, "seed": args.seed, "conditional": bool(args.conditional)}


def _training_setup(args):
    import numpy as np

    from . import data as D
    from .nn import MLP, UNet
    from .objectives import DSMObjective, EpsObjective, NCSNObjective

    _check_applies(args)
    n_data = _data_source(args)["n_data"]

    process_name = args.process or ("ve" if args.objective == "ncsn" else "vp")
    process = _process(process_name)
    if args.objective == "eps":
        objective = EpsObjective(process)
    elif process_name == "ddpm":
        raise UsageError(f"--objective {args.objective} needs a continuous process, not --process ddpm")
    elif args.objective == "dsm":
        objective = DSMObjective(process)
    elif process_name != "ve":
        raise UsageError("--objective ncsn trains a VE process: use --process ve")
    else:
        objective = NCSNObjective(process)
    labels = None
    if args.data in D.DATASETS_2D:
        x = D.sample_2d(args.data, n_data, rng=np.random.SeedSequence([args.seed, 1]))
        net = MLP(2, width=args.width or 128, depth=args.depth or 3, time_scale=objective.time_scale, backend="auto")
    else:
        try:
            x, labels = D.load_images(args.data, n=n_data, rng=np.random.SeedSequence([args.seed, 1]))
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        net = UNet(image_shape=x.shape[1:], channels=args.channels or 32, time_scale=objective.time_scale,
                   n_classes=10 if args.conditional else None, backend="auto")
        if not args.conditional:
            labels = None
    return objective, net, x, labels


def _process_name(description):
    """The --process name of a stored process description, or its repr when no name builds it."""
    from .objectives import EpsObjective, process_from_config, same_process

    for name in PROCESSES:
        if same_process(EpsObjective(_process(name)).config()["process"], description):
            return name
    try:
        return repr(process_from_config(description))
    except (KeyError, TypeError, ValueError):
        return "an unknown process"


def _value(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def _check_resume(args, objective, net, batch, source):
    """Refuse, naming the options, a resume whose data or settings differ from the checkpoint at --out.

    A checkpoint written before the data were recorded resumes with a warning on stderr; the training
    settings and the network are still checked.
    """
    from .nn import load_checkpoint
    from .objectives import same_process

    try:
        ck = load_checkpoint(args.out)
    except ValueError as exc:
        raise UsageError(f"--resume: {exc}") from None
    stored = ck.train or {}
    if stored.get("data") is None:
        print(f"refdiff train: warning: {args.out} does not record its training data (written by an older refdiff); "
              f"resuming without checking --data and --n-data against it", file=sys.stderr)
    record = (stored.get("data") or {}).get("source") or {}  # none from train() without data_source: its digest
    differ = []  # (key, stored, new)

    def compare(key, old, new):
        if old != new and key not in [d[0] for d in differ]:
            differ.append((key, old, new))

    for key, new in source.items():
        if key in record:
            compare(key, record[key], new)
    config = stored.get("config") or {}
    for key, option, new in (("batch_size", "batch", batch), ("lr", "lr", args.lr), ("warmup", "warmup", args.warmup),
                             ("seed", "seed", args.seed)):
        if key in config:
            compare(option, config[key], new)
    mine, theirs = objective.config(), stored.get("objective") or {}
    compare("objective", theirs.get("objective"), mine["objective"])
    if not same_process(theirs.get("process"), mine["process"]):
        compare("process", _process_name(theirs.get("process")), _process_name(mine["process"]))
    if ck.network.kind == net.kind:
        old_net, new_net = ck.network.config(), net.config()
        for key in ("width", "depth", "channels"):
            if key in new_net:
                compare(key, old_net.get(key), new_net[key])
        compare("conditional", old_net.get("n_classes") is not None, new_net.get("n_classes") is not None)
    else:
        trained_on = "2-D data (an MLP)" if ck.network.kind == "mlp" else f"image data (a {ck.network.kind})"
        compare("data", trained_on, args.data)
    if differ:
        text = ", ".join(f"--{k.replace('_', '-')} {_value(old)} (now {_value(new)})" for k, old, new in differ)
        raise UsageError(f"--resume: {args.out} was trained with {text}; a resume continues the same run: repeat "
                         f"its options, or write a new --out")
    if ck.step > args.steps:
        raise UsageError(f"--resume: {args.out} is already at step {ck.step}, past --steps {args.steps} "
                         f"(--steps counts in total)")


def cmd_train(args):
    import warnings

    from .backend import keep_freed_memory
    from .train import TrainingDiverged, train

    for name in ("steps", "checkpoint_every", "n_data", "width", "depth", "channels"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.batch is not None and args.batch < 1:  # not `args.batch or ...`: 0 took the default
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    _out_path(args.out)
    objective, net, x, labels = _training_setup(args)
    batch = args.batch or (128 if x.ndim > 2 else 512)
    if batch > x.shape[0]:
        given = f"--batch {batch}" if args.batch else f"--batch (default {batch})"
        more = "" if args.data == "digits" else " or raise --n-data"
        raise UsageError(f"{given} is larger than the training data ({x.shape[0]} examples of {args.data}): "
                         f"lower --batch{more}")
    source = _data_source(args)
    if args.resume and os.path.exists(args.out):
        _check_resume(args, objective, net, batch, source)
    keep_freed_memory()  # the CLI owns its process: recycle each step's temporaries
    print(f"refdiff train: data {args.data} ({x.shape[0]} examples), {net.kind} with {net.n_params} parameters, "
          f"objective {objective.name} on {objective.process!r}, seed {args.seed}")
    try:
        with warnings.catch_warnings():  # _check_resume has said so on stderr, as one line
            warnings.filterwarnings("ignore", message=".*records no training data", category=UserWarning)
            res = train(net, x, objective, labels=labels, steps=args.steps, batch_size=batch, lr=args.lr,
                        warmup=args.warmup, seed=args.seed, checkpoint=args.out,
                        checkpoint_every=args.checkpoint_every, resume=args.resume, data_source=source)
    except TrainingDiverged as exc:
        print(f"refdiff train: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    done = res.info["steps_run"]
    print(f"trained {done} steps (from step {res.info['resumed_from']}) in {res.seconds:.1f} s "
          f"({res.steps_per_second:.0f} steps/s); mean loss of the last {min(100, res.step)} steps "
          f"{float(res.losses[-min(100, res.step):].mean()):.4f}")
    print(f"wrote {args.out} (step {res.step}, seed {args.seed})")
    return 0


# --- refdiff sample ------------------------------------------------------------------------


def add_sample(sub):
    p = sub.add_parser("sample", help="draw samples from an analytic target or a trained checkpoint",
                       description="Sample with any refdiff sampler, from an exact Gaussian-mixture target "
                                   f"({', '.join(TARGET_NAMES)} or a JSON file) or a checkpoint.",
                       epilog=EPILOG_SAMPLE, formatter_class=_Formatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target", metavar="NAME|FILE.json",
                     help="analytic target: a name, or JSON {\"weights\", \"means\", \"covs\"}")
    src.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by refdiff train")
    p.add_argument("--sampler", required=True, choices=SAMPLER_NAMES, help="sampler (see README's sampler table)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the samples")
    p.add_argument("--process", choices=PROCESSES, default=None,
                   help="process for an analytic target (default vp); a checkpoint fixes its own, which --process "
                        "must then name")
    p.add_argument("--label", type=int, default=None, help="class to sample (class-conditional checkpoints)")
    p.add_argument("--guidance", type=_non_negative, default=1.0,
                   help="classifier-free guidance scale gamma >= 0, with --label (default 1)")
    p.add_argument("--no-ema", action="store_true", help="use a checkpoint's raw weights instead of the EMA")
    p.add_argument("--backend", choices=("auto", "numpy", "numba", "cupy"), default="auto",
                   help="where the model runs: the mixture score's (analytic targets), or the MLP's elementwise "
                        "work and the U-Net's GroupNorm + SiLU (checkpoints; numpy or numba); auto picks the "
                        "fastest installed")
    p.add_argument("--clip-x0", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="clip the predicted x0 to [LO, HI] (ddpm and ddim; e.g. -1 1 for pixel data)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every random draw (printed in the output)")
    p.set_defaults(func=cmd_sample)


def _target(spec):
    import json

    import numpy as np

    from .analytic import GaussianMixture
    from .targets import TARGETS, make_target

    if spec in TARGETS:
        return make_target(spec)
    if not spec.endswith(".json"):
        raise UsageError(f"--target must be one of {sorted(TARGETS)} or a .json file, got {spec!r}")
    try:
        with open(spec) as fh:
            d = json.load(fh)
        return GaussianMixture(np.asarray(d["weights"], float), np.asarray(d["means"], float), np.asarray(d["covs"], float))
    except FileNotFoundError:
        raise UsageError(f"--target file does not exist: {spec}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"--target {spec}: not a mixture description ({type(exc).__name__}: {exc})") from None


def _checkpoint_model(args):
    import numpy as np

    from .guidance import classifier_free_guidance

    ck, objective = _load_checkpoint(args.checkpoint)
    if args.process is not None:
        from .objectives import EpsObjective, same_process

        if not same_process(EpsObjective(_process(args.process)).config()["process"], ck.train["objective"]["process"]):
            raise UsageError(f"--process {args.process} conflicts with {args.checkpoint}, trained on "
                             f"{_process_name(ck.train['objective']['process'])} ({objective.process!r}): a "
                             f"checkpoint fixes its process (drop --process)")
    params = ck.params if args.no_ema or ck.ema is None else ck.ema
    net = ck.network
    # the MLP's products and elementwise work, the U-Net's GroupNorm + SiLU and chunk products
    if hasattr(net, "backend") and args.backend != "cupy":
        try:
            net.backend = args.backend
        except (ValueError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    elif args.backend != "auto":
        raise UsageError(f"--backend {args.backend}: a {net.kind} checkpoint runs on numpy or numba")
    if net.n_classes is None:
        if args.label is not None:
            raise UsageError(f"{args.checkpoint} is unconditional; --label needs a class-conditional checkpoint")
        model = objective.model(net, params)
    else:
        if args.label is None:
            model = objective.model(net, params)  # the null class: the unconditional model
        elif not 0 <= args.label < net.n_classes:
            raise UsageError(f"--label must lie in 0..{net.n_classes - 1}, got {args.label}")
        else:
            y = np.full(args.n, args.label, dtype=np.int64)
            model = classifier_free_guidance(objective.model(net, params), objective.model(net, params, y),
                                             args.guidance, prediction=objective.prediction)
    return model, objective.prediction, objective.process, (args.n, *net.data_shape)


def cmd_sample(args):
    import numpy as np

    from .backend import keep_freed_memory
    from .samplers import DIFFUSION_SAMPLERS

    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    _out_path(args.out)
    needs = {"numba": ("numba", "fast"), "cupy": ("cupy", "gpu-cuda12")}.get(args.backend)
    if needs and importlib.util.find_spec(needs[0]) is None:
        raise UsageError(f'--backend {args.backend} needs {needs[0]}: pip install "refdiff[{needs[1]}]"')
    if args.backend == "cupy":
        raise UsageError("--backend cupy: refdiff sample draws on the host; run the CuPy twins from Python on CuPy arrays")
    target = None
    if args.guidance != 1.0 and args.label is None:  # it scales the class-conditional model only: else unused
        raise UsageError(f"--guidance needs --label (and a class-conditional checkpoint), got --guidance {args.guidance}")
    if args.checkpoint:
        model, prediction, process, shape = _checkpoint_model(args)
    else:
        if args.label is not None:
            raise UsageError("--label needs a class-conditional checkpoint; an analytic --target has no classes")
        if args.no_ema:
            raise UsageError("--no-ema applies to a --checkpoint's weights; an analytic --target has none")
        target, process = _target(args.target), _process(args.process or "vp")
        prediction, shape = "score", (args.n, target.dim)

        def model(x, t):
            return target.score(x, process, t, backend=args.backend)

    fn = DIFFUSION_SAMPLERS[args.sampler]
    kw = {} if args.steps is None else ({"levels": args.steps} if args.sampler == "annealed_langevin" else {"steps": args.steps})
    if "steps" in kw and "steps" not in inspect.signature(fn).parameters:
        raise UsageError(f"--steps does not apply to {args.sampler}: it chooses its own step sizes")
    if args.clip_x0 is not None:
        if args.sampler not in ("ddpm", "ddim"):
            raise UsageError(f"--clip-x0 applies to the ddpm and ddim samplers, not {args.sampler}")
        if not args.clip_x0[0] < args.clip_x0[1]:
            raise UsageError(f"--clip-x0 needs LO < HI, got {args.clip_x0[0]:g} {args.clip_x0[1]:g}")
        kw["clip_x0"] = tuple(args.clip_x0)
    keep_freed_memory()
    from ._progress import ProgressLine

    bar = ProgressLine(0, f"{args.sampler} step")  # on a terminal only
    t0 = time.perf_counter()
    try:
        x, nfe = fn(model, process, shape, prediction=prediction, rng=args.seed,
                    callback=lambda i, t, x: bar.update(i + 1), **kw)
    except TypeError as exc:  # e.g. a sampler that needs a continuous process given a discrete one
        raise UsageError(f"{args.sampler}: {exc}") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    x = np.asarray(x)
    _save_npy_atomic(args.out, x)
    print(f"refdiff sample: {args.sampler}, {x.shape[0]} samples of shape {x.shape[1:]}, {nfe} model evaluations, "
          f"{seconds:.1f} s, seed {args.seed}")
    if target is not None:
        from .metrics import mode_weight_error, sliced_wasserstein

        exact = target.sample(x.shape[0], rng=np.random.SeedSequence([args.seed, 7]))
        print(f"against the exact target: largest mode-weight error {mode_weight_error(x, target):.4f}, "
              f"sliced W2 to exact samples {sliced_wasserstein(x, exact, rng=0):.4f}")
    print(f"wrote {args.out}")
    return 0


# --- refdiff likelihood -------------------------------------------------------------------------


def add_likelihood(sub):
    p = sub.add_parser("likelihood", help="PF-ODE log-likelihood of data under a trained checkpoint",
                       description="Log-likelihood of each row of --data under the probability-flow ODE of a "
                                   "checkpoint trained on a continuous process (exact divergence through the "
                                   "network's VJP).", epilog=EPILOG_LIKELIHOOD,
                       formatter_class=_Formatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by refdiff train")
    p.add_argument("--data", required=True, metavar="FILE.npy", help="points (N, ...) as a .npy array")
    p.add_argument("--rtol", type=_positive, default=1e-5, help="ODE solver tolerance (relative and absolute)")
    p.add_argument("--out", default=None, metavar="FILE.npy", help="also write the per-row log-likelihoods")
    p.add_argument("--seed", type=_seed, default=0, help="recorded for the report (the exact divergence draws nothing)")
    p.set_defaults(func=cmd_likelihood)


def cmd_likelihood(args):
    import numpy as np

    from .likelihood import ode_log_likelihood
    from .sde import SDE

    ck, objective = _load_checkpoint(args.checkpoint)
    if not isinstance(objective.process, SDE):
        raise UsageError(f"{args.checkpoint} was trained on a discrete schedule; the PF-ODE likelihood needs an SDE")
    x = _load_npy(args.data, "--data")
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(ck.network.data_shape) or x.shape[0] < 1:
        raise UsageError(f"--data must have shape (N, {', '.join(map(str, ck.network.data_shape))}), got {x.shape}")
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UsageError(f"--data {args.data} holds {bad} non-finite value(s) (NaN or infinity); the log-likelihood "
                         f"needs finite points")
    if args.out:
        _out_path(args.out)
    params = (ck.ema if ck.ema is not None else ck.params).astype(np.float64)
    score = objective.score_model(ck.network, params)
    from ._progress import ProgressLine

    bar = ProgressLine(0, "ODE evaluation")  # on a terminal only
    calls = [0]

    def score_fn(y, t):
        calls[0] += 1
        bar.update(calls[0])
        return score(y, t)

    t0 = time.perf_counter()
    try:
        res = ode_log_likelihood(objective.process, score_fn, x.astype(np.float64), score_vjp=score.vjp,
                                 rtol=args.rtol, atol=args.rtol)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    lp = res.log_prob
    se = lp.std(ddof=1) / np.sqrt(lp.size) if lp.size > 1 else float("nan")
    print(f"refdiff likelihood: {lp.size} points, mean log-likelihood {lp.mean():.4f} nats (standard error {se:.4f}), "
          f"{res.nfe} ODE evaluations, {time.perf_counter() - t0:.1f} s, seed {args.seed}")
    if args.out:
        _save_npy_atomic(args.out, lp)
        print(f"wrote {args.out}")
    return 0


# --- refdiff bench ---------------------------------------------------------------------------------

__all__ += ["add_bench"]

# refdiff.bench.BENCHMARKS, spelled out so that building the parser imports nothing; a test checks them.
BENCH_NAMES = ("mixture_score", "fused_sampler", "cnn_step", "mlp_step")

EPILOG_BENCH = """examples:
  refdiff bench --quick                      every speed benchmark, short runs (a few minutes)
  refdiff bench --only mlp_step cnn_step     two of them, full length
  refdiff bench --quick --out /tmp/bench     JSON and logs in another folder
"""


def add_bench(sub):
    p = sub.add_parser("bench", help="run the speed benchmarks of the source checkout and tabulate their ratios",
                       description="Run the speed benchmarks of benchmarks/ (source checkout only) as subprocesses, "
                                   "then print one table: refdiff's fastest backend against the NumPy reference and "
                                   "the peer, with each goal. Ratios are other time / refdiff time (> 1: refdiff "
                                   "faster). What is not installed (the peers PyTorch and JAX, the Numba twins) is reported as skipped.",
                       epilog=EPILOG_BENCH, formatter_class=_Formatter)
    p.add_argument("--quick", action="store_true", help="short runs: the scripts' --quick or fewer repeats")
    p.add_argument("--only", nargs="+", choices=BENCH_NAMES, metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(BENCH_NAMES)})")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for each script's JSON and log and the combined bench.json (default: "
                        "benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--torch-python", metavar="PATH", default=None,
                   help="interpreter with PyTorch (default $REFDIFF_TORCH_PYTHON, else this one; 'none' skips "
                        "PyTorch); JAX comes from $REFDIFF_JAX_PYTHON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    import json
    import platform
    from pathlib import Path

    from . import bench
    from ._atomic import atomic_write
    from ._version import __version__

    try:
        folder = bench.find_benchmarks()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.out:
        out = Path(args.out)
        if not out.parent.resolve().is_dir():
            raise UsageError(f"--out: the folder above {args.out} does not exist: {out.parent.resolve()}")
    else:
        out = folder / "results" / ("quick" if args.quick else "")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out is a file, not a folder: {out}")
    names = [n for n in bench.BENCHMARKS if n in (args.only or bench.BENCHMARKS)]
    torch_python = torch_version = torch_reason = None
    if any(n in bench.TORCH_PEER for n in names):
        torch_python, torch_version, torch_reason = bench.find_torch_python(args.torch_python)
        if torch_python is None and args.torch_python and args.torch_python.lower() != "none":
            raise UsageError(f"--torch-python {args.torch_python}: {torch_reason}")
    numba = bench.have_numba()
    out.mkdir(parents=True, exist_ok=True)
    print(f"refdiff bench: {len(names)} benchmark(s){' (quick)' if args.quick else ''} under {sys.executable}, "
          f"{os.cpu_count()} CPUs; numba {'yes' if numba else 'no'}; torch "
          + (f"{torch_version} ({torch_python})" if torch_python else f"skipped ({torch_reason})"
             if torch_reason else "not needed"), flush=True)
    results = []
    for name in names:
        json_path, log_path = out / f"{name}.json", out / f"{name}.log"
        res = {"name": name, "status": "ok", "reason": None, "json": str(json_path), "log": str(log_path),
               "command": None, "seconds": None, "peer_reason": torch_reason if name in bench.TORCH_PEER else None,
               "rows": []}
        results.append(res)
        reason = bench.skip_reason(name, numba)
        if reason:
            res.update(status="skipped", reason=reason)
            print(f"refdiff bench: {name} skipped ({reason})", file=sys.stderr, flush=True)
            continue
        res["command"] = cmd = bench.build_command(name, folder, json_path, args.quick, torch_python)
        if json_path.exists():
            json_path.unlink()  # never read a previous run's numbers
        print(f"refdiff bench: running {name} (log {log_path}) ...", file=sys.stderr, flush=True)
        rc, res["seconds"] = bench.run_one(name, cmd, log_path, cwd=folder.parent)
        print(f"refdiff bench: {name} finished in {res['seconds']:.0f} s (exit status {rc})", file=sys.stderr, flush=True)
        if rc:
            res.update(status="failed", reason=f"exit status {rc}; see {log_path}")
            continue
        try:
            with open(json_path, encoding="utf-8") as fh:
                res["rows"] = bench.parse_result(name, json.load(fh))
        except (OSError, ValueError) as exc:
            res.update(status="failed", reason=f"{json_path}: {exc}")
    print()
    print(bench.format_table(results))
    rows = [r for res in results for r in res["rows"]]
    judged = [r for r in rows if r["met"] is not None]
    combined = {
        "benchmark": "bench", "refdiff_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick, "python": sys.executable, "numba": numba, "torch_python": torch_python,
        "torch": torch_version, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "ratios": "other time / refdiff time (> 1: refdiff faster)", "results": results,
    }
    path = out / "bench.json"

    def write(fh):
        json.dump(combined, fh, indent=2)
        fh.write("\n")

    atomic_write(str(path), write, suffix=".json", binary=False)
    failed = [res["name"] for res in results if res["status"] == "failed"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > (os.cpu_count() or 1):
        print(f"\nwarning: load average {load:.1f} exceeds the {os.cpu_count()} CPUs; these timings are contended")
    print(f"\n{sum(r['met'] for r in judged)} of {len(judged)} goals met (ratios: other time / refdiff time, > 1: "
          f"refdiff faster); wrote {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# --- refdiff schedule -------------------------------------------------------------------------

__all__ += ["add_schedule"]

EPILOG_SCHEDULE = """examples:
  refdiff schedule --from-config scheduler/scheduler_config.json
  refdiff schedule --from-config scheduler_config.json --steps 25 --json report.json

diffusers' 0-based index i is refdiff's t = i + 1 (alphas_cumprod[i] == alpha_bar[t]).
exit status: 0 all checks pass (warnings allowed), 1 a check fails, 2 bad arguments or config.
"""


def add_schedule(sub):
    p = sub.add_parser("schedule", help="read a diffusers scheduler_config.json as a refdiff schedule and check it",
                       description="Rebuild the betas of a diffusers scheduler config (without diffusers) as "
                                   "refdiff's float64 schedule, print its ends, terminal SNR and inference "
                                   "timesteps in both numberings, and check it.", epilog=EPILOG_SCHEDULE,
                       formatter_class=_Formatter)
    p.add_argument("--from-config", required=True, metavar="FILE.json", dest="config",
                   help="a diffusers scheduler config (scheduler_config.json)")
    p.add_argument("--steps", type=int, default=50, help="inference steps whose timesteps are shown (default 50)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON to OUT")
    p.set_defaults(func=cmd_schedule)


def _g(v, fmt=".6g"):
    return "n/a" if v is None else format(v, fmt)


def _print_schedule_report(path, r):
    info, s, ts = r["info"], r["summary"], r["timesteps"]
    dflt = info["defaulted"]

    def note(key):
        return f" (not in the config; default {dflt[key]!r})" if key in dflt else ""

    cls = info["class_name"] or "no _class_name"
    version = f", diffusers {info['diffusers_version']}" if info["diffusers_version"] else ""
    print(f"refdiff schedule: {path} ({cls}{version})")
    if info["beta_schedule"] == "trained_betas":
        kind = "trained_betas"
    elif info["beta_start"] is None:
        kind = info["beta_schedule"]
    else:
        kind = f"{info['beta_schedule']}, beta_start {info['beta_start']:g}, beta_end {info['beta_end']:g}"
    print(f"  schedule      {kind}, T = {s['T']} (float64; diffusers stores float32)")
    print(f"  zero SNR      rescale_betas_zero_snr {str(info['rescale_betas_zero_snr']).lower()}")
    print(f"  prediction    {info['prediction_type']} -> refdiff \"{info['prediction']}\"{note('prediction_type')}")
    print(f"  betas         beta_1 = {_g(s['beta_1'])}, beta_T = {_g(s['beta_T'])}  "
          f"(refdiff betas[1..T] = diffusers betas[0..T-1])")
    if "alpha_bar_T" in s:
        print(f"  alpha_bar     alpha_bar_1 = {_g(s['alpha_bar_1'])}, alpha_bar_T = {_g(s['alpha_bar_T'])}  "
              f"(diffusers alphas_cumprod[0], [T-1]; float32 differs by {s['float32_alpha_bar_rel_diff']:.1e} rel.)")
        log_snr_T = "-inf" if s["log_snr_T"] is None else f"{s['log_snr_T']:.4g}"
        print(f"  terminal SNR  SNR_T = {_g(s['snr_T'], '.4g')}, log-SNR_T = {log_snr_T}, "
              f"sqrt(alpha_bar_T) = {_g(s['sqrt_alpha_bar_T'], '.4g')}; log-SNR_1 = {_g(s['log_snr_1'], '.4g')}")
    if ts["spacing"] == "leading":
        offset = f", steps_offset {ts['steps_offset']}{note('steps_offset')}"
    else:
        offset = f", steps_offset {ts['steps_offset']} (used by leading spacing only)" if ts["steps_offset"] else ""
    print(f"  timesteps     {ts['steps']} steps, {ts['spacing']} spacing{note('timestep_spacing')}{offset}")
    for label, key in (("diffusers (0-based)", "diffusers"), ("refdiff t (1-based)", "refdiff_t")):
        print(f"    {label}  {_steps_line(ts[key])}")
    for text in info["notes"]:
        print(f"  note: {text}")
    if "clip_sample" in dflt:
        print(f"  note: clip_sample not in the config; {info['class_name']} defaults to true")
    if info["ignored_keys"]:
        print(f"  ignored (sampler settings, not the schedule): {', '.join(info['ignored_keys'])}")
    print("checks")
    for c in r["checks"]:
        print(f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['message']}")
    if r["warnings"]:
        print("warnings")
        for w in r["warnings"]:
            print(f"  warn  {w['name']}: {w['message']}")
    n_fail = sum(not c["passed"] for c in r["checks"])
    print(f"\n{len(r['checks']) - n_fail} checks passed, {n_fail} failed, {len(r['warnings'])} warnings")


def _steps_line(ts, head=10, tail=4):
    if len(ts) <= head + tail + 1:
        return " ".join(map(str, ts))
    return " ".join(map(str, ts[:head])) + f" ... ({len(ts) - head - tail} more) ... " + " ".join(map(str, ts[-tail:]))


def cmd_schedule(args):
    import json

    from ._version import __version__
    from .scheduler_config import betas_from_config, schedule_report

    if args.json:
        _out_path(args.json, "--json")
    try:
        with open(args.config, encoding="utf-8") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"--from-config file does not exist: {args.config}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-config {args.config}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--from-config {args.config}: not JSON ({exc})") from None
    try:
        T = betas_from_config(config)[0].shape[0] - 1
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    if not 1 <= args.steps <= T:
        raise UsageError(f"--steps must lie in 1..T={T} (num_train_timesteps), got {args.steps}")
    report = schedule_report(config, steps=args.steps)
    _print_schedule_report(args.config, report)
    if args.json:
        from ._atomic import atomic_write

        payload = {"refdiff_version": __version__, "config": os.path.abspath(args.config), **report}

        def write(fh):
            json.dump(payload, fh, indent=2, allow_nan=False)
            fh.write("\n")

        atomic_write(args.json, write, suffix=".json", binary=False)
        print(f"wrote {args.json}")
    return 0 if report["passed"] else 1
