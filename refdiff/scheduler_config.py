r"""diffusers scheduler configs (``scheduler_config.json``) read as refdiff schedules, without diffusers.

A diffusers pipeline stores its scheduler as a JSON object of the scheduler's
``__init__`` arguments (``_class_name``, ``beta_schedule``, ``beta_start``,
``num_train_timesteps``, ...). :func:`schedule_from_config` rebuilds the
same betas as refdiff's float64 :class:`~refdiff.schedules.DiscreteSchedule`,
:func:`diffusers_timesteps` reproduces ``set_timesteps``, and
:func:`check_schedule` / :func:`schedule_warnings` say what is wrong or
risky with it. :func:`schedule_report` gathers all of it for ``refdiff
schedule --from-config``.

Index mapping
=============

========================================  =====================================
diffusers (0-based, i = 0..T-1)           refdiff (paper's t = 1..T; 0 = data)
========================================  =====================================
``betas[i]``                              ``betas[i + 1]``
``alphas_cumprod[i]``                     ``alpha_bar[i + 1]``
``timesteps`` entry ``i`` (model input)   step ``t = i + 1``
``final_alpha_cumprod`` = 1               ``alpha_bar[0]`` (``set_alpha_to_one``)
``final_alpha_cumprod`` = alphas_cumprod[0]  ``alpha_bar[1]`` (``set_alpha_to_one=False``)
========================================  =====================================

diffusers' ``alphas_cumprod[0] = 1 - betas[0]`` is already one step of noise:
diffusers has no array entry for the clean data, refdiff keeps it at index 0.
A network trained with diffusers is called with ``timestep = t - 1``.

Beta schedules (diffusers ``SchedulerMixin`` subclasses, e.g.
``DDPMScheduler.__init__`` and ``DDIMScheduler.__init__``)
==========================================================================

``"linear"``
    ``torch.linspace(beta_start, beta_end, T, dtype=torch.float32)``.
``"scaled_linear"``
    ``torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2``
    (latent diffusion; :math:`\sqrt{\beta}` is linear, not :math:`\beta`).
``"squaredcos_cap_v2"``
    ``betas_for_alpha_bar(T, max_beta=0.999)``: Nichol & Dhariwal's cosine
    :math:`\bar\alpha(u)=\cos^2(\tfrac{u+0.008}{1.008}\tfrac{\pi}{2})`,
    :math:`\beta_i=\min(1-\bar\alpha(\tfrac{i+1}{T})/\bar\alpha(\tfrac{i}{T}), 0.999)`,
    computed in Python floats (float64), then stored as float32.
``"sigmoid"``
    ``sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start``
    (GeoDiff).
``trained_betas``
    when not null, ``torch.tensor(trained_betas, dtype=torch.float32)``
    replaces ``beta_schedule``.
``rescale_betas_zero_snr``
    ``rescale_zero_terminal_snr(betas)`` (Lin et al. 2024, Algorithm 1)
    applied after the above: :math:`\beta_T = 1`, :math:`\bar\alpha_T = 0`.

Precision: diffusers stores betas in **float32** (PITFALLS 3); refdiff stays
in float64 and does not reproduce that rounding. The formulas are the same,
so each beta differs from diffusers' by at most about one float32 rounding
(relative 6e-8), and :math:`\bar\alpha_t` by the accumulated float32 error of
the cumulative product (at T = 1000 about 1e-6 relative for the linear
schedules, 1.4e-5 for the cosine; the report estimates it as
``float32_alpha_bar_rel_diff``). The float64 tables are
the reference; a 1e-5 disagreement with diffusers at the noisy end is
diffusers' rounding, not a different schedule.

Timesteps (``DDIMScheduler.set_timesteps`` / ``DDPMScheduler.set_timesteps``,
after Lin et al. 2024, Table 2), 0-based, in sampling order (descending):

``"linspace"``  ``np.linspace(0, T - 1, n).round()[::-1]``
``"leading"``   ``(np.arange(n) * (T // n)).round()[::-1] + steps_offset``
``"trailing"``  ``np.round(np.arange(T, 0, -T / n)) - 1``

Other classes space their timesteps in their own way (fractional
``linspace`` timesteps in ``EulerDiscreteScheduler``, an ``n + 1``-point grid
in ``DPMSolverMultistepScheduler``); :func:`schedule_report` says so in its
notes. Plus 1, diffusers' ``"linspace"`` and ``"leading"`` timesteps are
:func:`refdiff.schedules.spaced_timesteps` (the same rounding, half to even:
T = 1000, n = 3 gives 999, 500, 0, i.e. t = 1000, 501, 1); ``"trailing"``
is too where diffusers gives n timesteps (for some T and n it gives n + 1).
This module reproduces diffusers.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .schedules import (
    DiscreteSchedule,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    sigmoid_betas,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "SPACINGS",
    "betas_from_config",
    "schedule_from_config",
    "diffusers_timesteps",
    "check_schedule",
    "schedule_warnings",
    "schedule_report",
]

#: diffusers ``beta_schedule`` values understood here.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
#: diffusers ``prediction_type`` -> refdiff prediction name (:data:`refdiff.param.PREDICTIONS`).
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: diffusers ``timestep_spacing`` values.
SPACINGS = ("leading", "trailing", "linspace")

#: Terminal SNR above which a schedule that is not rescaled gets a warning
#: (SD's scaled_linear has 4.7e-3; DDPM's linear 1000 steps 4.0e-5; cosine 2.4e-9).
SNR_TOL = 1e-4

# keys that define the schedule (read here)
_SCHEDULE_KEYS = frozenset({
    "_class_name", "_diffusers_version", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
    "trained_betas", "rescale_betas_zero_snr", "prediction_type", "predict_epsilon", "timestep_spacing",
    "steps_offset", "clip_sample", "clip_sample_range", "set_alpha_to_one", "thresholding",
})
# diffusers sampler settings: recognised, not part of the beta schedule
_SAMPLER_KEYS = frozenset({
    "variance_type", "dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps",
    "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_type",
    "algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final", "final_sigmas_type",
    "lambda_min_clipped", "use_lu_lambdas", "predict_x0", "solver_p", "disable_corrector", "sigma_min",
    "sigma_max", "sigma_data", "rho", "original_inference_steps", "timestep_scaling", "set_alpha_to_zero",
    "noise_sampler_seed", "use_flow_sigmas", "flow_shift",
})
# classes whose set_timesteps is the one reproduced by diffusers_timesteps (not PNDM, which repeats a step
# when it skips the Runge-Kutta ones and adds steps when it does not, nor LCM and TCD, which pick among
# original_inference_steps steps whatever timestep_spacing says)
_DDIM_LIKE = frozenset({"DDIMScheduler", "DDPMScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler"})
# classes whose set_timesteps does not read timestep_spacing at all
_SPACING_UNUSED = frozenset({"LCMScheduler", "TCDScheduler"})
# diffusers' default set_alpha_to_one per class (the classes that have the option)
_ALPHA_TO_ONE_DEFAULT = {"DDIMScheduler": True, "DDIMParallelScheduler": True, "LCMScheduler": True,
                         "TCDScheduler": True, "PNDMScheduler": False}
# diffusers' default timestep_spacing per class (configs saved before diffusers 0.17 lack the key)
_DEFAULT_SPACING = {
    **dict.fromkeys(("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DDIMParallelScheduler",
                     "DDPMParallelScheduler", "DDIMInverseScheduler", "LCMScheduler", "TCDScheduler"), "leading"),
    **dict.fromkeys(("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
                     "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
                     "UniPCMultistepScheduler", "DEISMultistepScheduler"), "linspace"),
}
# classes whose clip_sample defaults to True
_CLIP_DEFAULT_TRUE = frozenset({
    "DDIMScheduler", "DDPMScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "DDIMInverseScheduler",
})


# ----------------------------------------------------------------------------- parsing


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _int(config, key, lo):
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _real(config, key):
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not 0.0 < v < 1.0:
        raise ValueError(f"{key} must be a number in (0, 1), got {v!r}")
    return float(v)


def _bool(config, key):
    v = config[key]
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and v in (0, 1):  # some forks type these flags as int
        return bool(v)
    raise ValueError(f"{key} must be true or false, got {v!r}")


def _choice(config, key, choices):
    v = config[key]
    if v not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _require(config, key, why=""):
    if key not in config or config[key] is None:
        cls = config.get("_class_name")
        hint = f" ({cls} has no discrete beta schedule)" if isinstance(cls, str) and cls.startswith(
            ("FlowMatch", "EDM", "ScoreSdeVe", "CMStochastic")) else ""
        raise ValueError(f"missing required key {key!r}{why}{hint}")


def betas_from_config(config: dict):
    r"""Betas of a diffusers scheduler config, indexed by refdiff's t (length T+1, ``betas[0] == 0``).

    The betas follow the diffusers formulas listed in the module docstring,
    in float64. They are *not* range-checked beyond finiteness, so a config
    with bad ``trained_betas`` can still be reported on: run
    :func:`check_schedule` on the result.

    Returns
    -------
    betas : float64 ndarray, shape (T+1,)
    info : dict
        The schedule's settings as read (``T``, ``beta_schedule`` --
        ``"trained_betas"`` when those are given --, ``beta_start``,
        ``beta_end``, ``rescale_betas_zero_snr``, ``prediction_type``,
        ``prediction`` (refdiff's name), ``timestep_spacing``,
        ``steps_offset``, ``clip_sample``, ``clip_sample_range``,
        ``set_alpha_to_one``, ``class_name``, ``diffusers_version``), plus
        ``defaulted`` (keys missing from the config and the diffusers default
        used), ``ignored_keys`` (diffusers sampler settings), ``unknown_keys``
        and ``notes``.

    Raises
    ------
    ValueError
        A missing required key (``num_train_timesteps``; ``beta_schedule``
        unless ``trained_betas`` is given; ``beta_start`` and ``beta_end`` for
        the schedules that use them) or a value of the wrong type or range.
    TypeError
        If ``config`` is not a dict.
    """
    if not isinstance(config, dict):
        raise TypeError(f"a scheduler config must be a JSON object, got {_type_name(config)}")
    cls = config.get("_class_name")
    cls = cls if isinstance(cls, str) else None
    info = {"class_name": cls, "diffusers_version": config.get("_diffusers_version"), "defaulted": {}, "notes": []}

    # 1. the betas: trained_betas override beta_schedule, as in diffusers
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or not trained or not all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) for b in trained):
            raise ValueError(f"trained_betas must be a non-empty list of numbers or null, got {_type_name(trained)}")
        b = np.array(trained, dtype=np.float64)
        if not np.all(np.isfinite(b)):
            raise ValueError("trained_betas must be finite, got NaN or infinity")
        T = b.shape[0]
        if "num_train_timesteps" in config and _int(config, "num_train_timesteps", 1) != T:
            raise ValueError(f"num_train_timesteps is {config['num_train_timesteps']} "
                             f"but trained_betas has {T} entries")
        betas = np.concatenate(([0.0], b))
        info.update(T=T, beta_schedule="trained_betas", beta_start=None, beta_end=None)
    else:
        _require(config, "num_train_timesteps")
        T = _int(config, "num_train_timesteps", 1)
        _require(config, "beta_schedule", " (or trained_betas)")
        schedule = _choice(config, "beta_schedule", BETA_SCHEDULES)
        info.update(T=T, beta_schedule=schedule, beta_start=None, beta_end=None)
        if schedule == "squaredcos_cap_v2":
            betas = cosine_betas(T, s=0.008, max_beta=0.999)  # diffusers' betas_for_alpha_bar
        else:
            for key in ("beta_start", "beta_end"):
                _require(config, key, f" (beta_schedule {schedule!r} uses it)")
            bs, be = _real(config, "beta_start"), _real(config, "beta_end")
            info.update(beta_start=bs, beta_end=be)
            make = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "sigmoid": sigmoid_betas}[schedule]
            betas = make(T, bs, be)  # sigmoid: u = linspace(-6, 6, T), as diffusers

    # 2. zero terminal SNR (Lin et al. 2024, Algorithm 1), after the schedule, as diffusers
    rescale = _bool(config, "rescale_betas_zero_snr") if config.get("rescale_betas_zero_snr") is not None else False
    info["rescale_betas_zero_snr"] = rescale
    if rescale:
        if T < 2:
            raise ValueError("rescale_betas_zero_snr needs num_train_timesteps >= 2")
        if np.all((betas[1:] > 0) & (betas[1:] < 1)):
            betas = rescale_zero_terminal_snr(betas)
        else:  # leave bad trained betas as they are: check_schedule reports them
            info["notes"].append("rescale_betas_zero_snr not applied: the betas are outside (0, 1)")

    # 3. sampling settings that the report interprets
    if config.get("prediction_type") is not None:
        ptype = _choice(config, "prediction_type", tuple(PREDICTION_TYPES))
    elif config.get("predict_epsilon") is not None:  # diffusers < 0.10
        ptype = "epsilon" if _bool(config, "predict_epsilon") else "sample"
        info["notes"].append(f"prediction_type taken from the deprecated predict_epsilon: {ptype}")
    else:
        ptype = info["defaulted"]["prediction_type"] = "epsilon"
    info.update(prediction_type=ptype, prediction=PREDICTION_TYPES[ptype])

    if config.get("timestep_spacing") is not None:
        spacing = _choice(config, "timestep_spacing", SPACINGS)
    elif cls in _DEFAULT_SPACING:
        spacing = info["defaulted"]["timestep_spacing"] = _DEFAULT_SPACING[cls]
    else:
        raise ValueError(f"missing key 'timestep_spacing' and _class_name {cls!r} has no known default; "
                         f"add \"timestep_spacing\": one of {', '.join(SPACINGS)}")
    info["timestep_spacing"] = spacing
    if config.get("steps_offset") is not None:
        info["steps_offset"] = _int(config, "steps_offset", 0)
    else:
        info["steps_offset"] = info["defaulted"]["steps_offset"] = 0

    if config.get("clip_sample") is not None:
        clip = _bool(config, "clip_sample")
    else:
        clip = cls in _CLIP_DEFAULT_TRUE
        if clip:
            info["defaulted"]["clip_sample"] = True
    info["clip_sample"] = clip
    r = config.get("clip_sample_range")
    if r is None:
        info["clip_sample_range"] = 1.0
    elif isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0:
        raise ValueError(f"clip_sample_range must be a positive number, got {r!r}")
    else:
        info["clip_sample_range"] = float(r)
    # diffusers thresholds instead of clipping when both are set (step(): if thresholding ... elif clip_sample)
    info["thresholding"] = _bool(config, "thresholding") if config.get("thresholding") is not None else False
    if config.get("set_alpha_to_one") is not None:
        info["set_alpha_to_one"] = _bool(config, "set_alpha_to_one")
    elif cls in _ALPHA_TO_ONE_DEFAULT:
        info["set_alpha_to_one"] = info["defaulted"]["set_alpha_to_one"] = _ALPHA_TO_ONE_DEFAULT[cls]
    else:
        info["set_alpha_to_one"] = None

    # 4. keys not read
    others = [k for k in config if k not in _SCHEDULE_KEYS]
    info["ignored_keys"] = sorted(k for k in others if k in _SAMPLER_KEYS or k.startswith("_"))
    info["unknown_keys"] = sorted(k for k in others if k not in _SAMPLER_KEYS and not k.startswith("_"))
    if cls in _SPACING_UNUSED:
        info["notes"].append(f"timesteps are shown as DDIMScheduler.set_timesteps spaces them; {cls}.set_timesteps "
                             f"ignores timestep_spacing and picks among original_inference_steps steps")
    elif cls is not None and cls not in _DDIM_LIKE:
        info["notes"].append(f"timesteps are shown as DDIMScheduler.set_timesteps spaces them; "
                             f"{cls}.set_timesteps differs in details")
    return betas, info


def schedule_from_config(config: dict):
    """The refdiff :class:`DiscreteSchedule` of a diffusers scheduler config, and its settings.

    Same betas as :func:`betas_from_config` (diffusers' formulas in float64,
    indexed by refdiff's t, so ``schedule.alpha_bar[i + 1]`` is diffusers'
    ``alphas_cumprod[i]``).

    Returns
    -------
    schedule : DiscreteSchedule
    info : dict
        As returned by :func:`betas_from_config`.

    Raises
    ------
    ValueError
        As :func:`betas_from_config`, and when the betas do not make a valid
        schedule (``trained_betas`` outside (0, 1)); :func:`check_schedule`
        says which.
    """
    betas, info = betas_from_config(config)
    return DiscreteSchedule(betas), info


# ----------------------------------------------------------------------------- timesteps


def diffusers_timesteps(T: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The 0-based timesteps of ``DDIMScheduler.set_timesteps(n)``, descending (sampling order).

    Reproduced literally, faults included: ``"leading"`` with ``steps_offset``
    may pass index T-1 (diffusers #10003), and ``"trailing"``'s float
    ``np.arange(T, 0, -T / n)`` can overshoot and yield ``n + 1`` entries, the
    last -1 (T = 1000, n = 61). :func:`check_schedule` reports both. refdiff's
    t is each entry plus 1.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= T:
        raise ValueError(f"the number of steps must be an integer in 1..T={T}, got {n!r}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return np.ascontiguousarray(ts)


# ----------------------------------------------------------------------------- checks


def _betas_of(schedule) -> np.ndarray:
    b = getattr(schedule, "betas", schedule)
    return np.asarray(b, dtype=np.float64)


def _log_alpha_bar(b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.concatenate(([0.0], np.cumsum(np.log1p(-b[1:]))))


def _ends(b: np.ndarray) -> dict:
    """alpha_bar, SNR and log-SNR at t = 1 and t = T (log-SNR -inf at zero terminal SNR)."""
    lab = _log_alpha_bar(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_snr = lab - np.log(-np.expm1(lab))
    T = b.shape[0] - 1
    return {"alpha_bar_1": float(np.exp(lab[1])), "alpha_bar_T": float(np.exp(lab[T])),
            "sqrt_alpha_bar_T": float(np.exp(0.5 * lab[T])), "log_snr_1": float(log_snr[1]),
            "log_snr_T": float(log_snr[T]), "snr_T": float(np.exp(log_snr[T]))}


def _fmt_steps(ts) -> str:
    ts = [int(v) for v in ts]
    if len(ts) <= 12:
        return ", ".join(map(str, ts))
    return ", ".join(map(str, ts[:6])) + ", ..., " + ", ".join(map(str, ts[-3:]))


def check_schedule(schedule, info: dict, steps: int = 50):
    r"""Hard checks of a schedule from a diffusers config: a list of ``(name, passed, message)``.

    Parameters
    ----------
    schedule : DiscreteSchedule or array_like, shape (T+1,)
        The schedule, or its betas with ``betas[0] == 0`` (as from
        :func:`betas_from_config`, possibly invalid).
    info : dict
        The settings from :func:`betas_from_config`.
    steps : int
        Inference steps for which diffusers' timesteps are checked.

    Checks
    ------
    ``betas``
        finite, :math:`\beta_t\in(0,1)` for t < T, :math:`\beta_T\in(0,1]`
        (1 only for zero terminal SNR).
    ``alpha_bar_decreasing``
        :math:`\bar\alpha_t` strictly decreasing over t = 0..T (in log space:
        a beta below 1e-16 leaves it unchanged in float64).
    ``zero_terminal_snr`` (only with ``rescale_betas_zero_snr``)
        :math:`\bar\alpha_T = 0` exactly.
    ``timesteps``
        ``set_timesteps(steps)`` gives ``steps`` distinct timesteps inside
        0..T-1 (PITFALLS 11: ``steps_offset`` can push "leading" to T;
        "trailing" can overshoot to -1).
    """
    b = _betas_of(schedule)
    T = b.shape[0] - 1
    out = []

    # betas in range
    bad = ~np.isfinite(b[1:]) | (b[1:] <= 0) | (b[1:] > 1)
    bad[:-1] |= b[1:-1] >= 1
    if b[0] != 0:
        out.append(("betas", False, f"betas[0] must be 0 (refdiff's index 0 is the data), got {float(b[0])!r}"))
    elif bad.any():
        t = int(np.flatnonzero(bad)[0]) + 1
        out.append(("betas", False, f"{int(bad.sum())} betas outside (0, 1) (1 allowed only at t = T), first at "
                                    f"t = {t} (diffusers index {t - 1}): {float(b[t])!r}"))
    else:
        last = " = 1 (zero terminal SNR)" if b[T] == 1 else f" = {b[T]:.6g}"
        out.append(("betas", True, f"{T} betas finite, in (0, 1{']' if b[T] == 1 else ')'}: beta_1 = {b[1]:.6g}, "
                                   f"beta_T{last}"))

    # alpha_bar strictly decreasing
    with np.errstate(invalid="ignore"):
        d = np.diff(_log_alpha_bar(b))
    flat = ~(d < 0)
    if flat.any():
        t = int(np.flatnonzero(flat)[0]) + 1
        out.append(("alpha_bar_decreasing", False, f"alpha_bar does not decrease strictly at t = {t} "
                                                   f"(diffusers index {t - 1}; beta = {float(b[t])!r})"))
    else:
        out.append(("alpha_bar_decreasing", True, "alpha_bar decreases strictly from 1 (t = 0) to t = T"))

    # zero terminal SNR when asked for
    if info.get("rescale_betas_zero_snr"):
        ab_T = float(np.exp(_log_alpha_bar(b)[T])) if np.isfinite(b).all() else float("nan")
        out.append(("zero_terminal_snr", ab_T == 0.0,
                    "alpha_bar_T = 0 exactly (rescale_betas_zero_snr)" if ab_T == 0.0 else
                    f"rescale_betas_zero_snr is set but alpha_bar_T = {ab_T!r}, not 0"))

    # inference timesteps
    spacing, offset = info["timestep_spacing"], info.get("steps_offset", 0)
    ts = diffusers_timesteps(T, steps, spacing, offset)
    where = f"{spacing} spacing, --steps {steps}"
    if offset and spacing == "leading":  # diffusers adds steps_offset to "leading" only
        where += f", steps_offset {offset}"
    if ts.shape[0] != steps:
        out.append(("timesteps", False, f"{where}: diffusers gives {ts.shape[0]} timesteps, not {steps}, "
                                        f"ending {_fmt_steps(ts[-3:])} (float np.arange overshoots)"))
    elif ts.min() < 0 or ts.max() > T - 1:
        out.append(("timesteps", False, f"{where}: diffusers timesteps reach {int(ts.max())}..{int(ts.min())}, "
                                        f"outside 0..{T - 1} (an IndexError in diffusers; PITFALLS 11)"))
    elif np.any(np.diff(ts) >= 0):
        out.append(("timesteps", False, f"{where}: diffusers timesteps are not distinct and descending"))
    else:
        out.append(("timesteps", True, f"{where}: {steps} distinct timesteps {int(ts[0])}..{int(ts[-1])} "
                                       f"(refdiff t = {int(ts[0]) + 1}..{int(ts[-1]) + 1})"))
    return out


def schedule_warnings(schedule, info: dict, steps: int = 50):
    """Risks that do not make a schedule wrong: a list of ``(name, message)``.

    ``terminal_snr`` (PITFALLS 9), ``leading_spacing`` (PITFALLS 9, 11),
    ``zero_snr_epsilon`` (Lin et al. 2024, sec. 3.2), ``clip_sample``
    (PITFALLS 15), ``set_alpha_to_one`` (PITFALLS 13) and ``unknown_keys``.
    """
    b = _betas_of(schedule)
    T = b.shape[0] - 1
    out = []
    valid = bool(np.all(np.isfinite(b)) and np.all(b[1:] > 0) and np.all(b[1:] <= 1))
    if valid:
        e = _ends(b)
        if not info.get("rescale_betas_zero_snr") and e["snr_T"] > SNR_TOL:
            out.append(("terminal_snr", f"terminal SNR {e['snr_T']:.3g} (sqrt(alpha_bar_T) = "
                                        f"{e['sqrt_alpha_bar_T']:.3g}) is not ~0: the model never sees pure noise, "
                                        "yet sampling starts from N(0, I) (PITFALLS 9; Lin et al. 2024); "
                                        "rescale_betas_zero_snr fixes it (with fine-tuning)"))
        if info.get("rescale_betas_zero_snr") and info.get("prediction") == "eps" and e["alpha_bar_T"] == 0.0:
            out.append(("zero_snr_epsilon", "zero terminal SNR with epsilon prediction: x0 = (x_T - sigma_T eps) / "
                                            "sqrt(alpha_bar_T) divides by 0 at t = T; Lin et al. 2024 use "
                                            "v_prediction"))
        if info.get("set_alpha_to_one") is False:
            out.append(("set_alpha_to_one", f"set_alpha_to_one is false: the last DDIM step ends at alpha_bar_1 = "
                                            f"{e['alpha_bar_1']:.6g}, not 1, leaving noise of std "
                                            f"{math.sqrt(max(0.0, 1 - e['alpha_bar_1'])):.3g} (PITFALLS 13)"))
    if info.get("timestep_spacing") == "leading" and info.get("class_name") not in _SPACING_UNUSED:
        ts = diffusers_timesteps(T, steps, "leading", info.get("steps_offset", 0))
        if ts.max() < T - 1:
            out.append(("leading_spacing", f"leading spacing with --steps {steps} starts at t = {int(ts.max()) + 1} "
                                           f"(diffusers {int(ts.max())}), never t = T = {T} (PITFALLS 9, 11); "
                                           "use \"trailing\""))
    if info.get("clip_sample") and not info.get("thresholding"):
        out.append(("clip_sample", f"clip_sample is true: predicted x0 is clipped to +-"
                                   f"{info.get('clip_sample_range', 1.0):g}, wrong for latent or unbounded data "
                                   "(PITFALLS 15)"))
    if info.get("thresholding"):
        out.append(("thresholding", "thresholding is true: predicted x0 is dynamically thresholded (Saharia et al. "
                                    "2022; clip_sample is then not used), which refdiff's samplers do not do"))
    if info.get("unknown_keys"):
        out.append(("unknown_keys", "keys refdiff does not know (not used): " + ", ".join(info["unknown_keys"])))
    return out


# ----------------------------------------------------------------------------- report


def _finite_or_none(v):
    return v if math.isfinite(v) else None


def schedule_report(config: dict, steps: int = 50) -> dict:
    """Everything ``refdiff schedule`` prints, as a JSON-ready dict.

    Keys: ``info`` (from :func:`betas_from_config`), ``summary`` (T, betas at
    the ends in both numberings, alpha_bar, SNR and log-SNR at t = 1 and T;
    infinite values are ``None`` and ``zero_terminal_snr`` says why),
    ``timesteps`` (``diffusers``: 0-based, ``refdiff_t``: 1-based, both in
    sampling order), ``checks``, ``warnings`` and ``passed``.

    Raises
    ------
    ValueError
        As :func:`betas_from_config`, or ``steps`` outside 1..T.
    """
    betas, info = betas_from_config(config)
    T = betas.shape[0] - 1
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T={T}, got {steps!r}")
    checks = check_schedule(betas, info, steps)
    warnings = schedule_warnings(betas, info, steps)
    ts = diffusers_timesteps(T, steps, info["timestep_spacing"], info["steps_offset"])
    summary = {"T": T, "beta_1": float(betas[1]), "beta_T": float(betas[T])}
    if all(p for name, p, _ in checks if name in ("betas", "alpha_bar_decreasing")):
        e = _ends(betas)
        summary.update({k: _finite_or_none(v) for k, v in e.items()})
        summary["zero_terminal_snr"] = e["alpha_bar_T"] == 0.0
        ab32 = np.cumprod(1 - betas[1:].astype(np.float32), dtype=np.float32).astype(np.float64)
        ab64 = np.exp(_log_alpha_bar(betas)[1:])
        pos = ab64 > 0
        summary["float32_alpha_bar_rel_diff"] = float(np.max(np.abs(ab32[pos] - ab64[pos]) / ab64[pos]))
    return {
        "info": info,
        "summary": summary,
        "timesteps": {"steps": steps, "spacing": info["timestep_spacing"], "steps_offset": info["steps_offset"],
                      "diffusers": ts.tolist(), "refdiff_t": (ts + 1).tolist()},
        "checks": [{"name": n, "passed": bool(p), "message": m} for n, p, m in checks],
        "warnings": [{"name": n, "message": m} for n, m in warnings],
        "passed": all(p for _, p, _ in checks),
    }
