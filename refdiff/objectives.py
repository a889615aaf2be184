r"""Training objectives as regressions: what the network sees and what it must output.

Every objective of the seeds reduces to a weighted regression of the raw
network output :math:`F_\theta(x_t, t)` onto a target built from the same
noise draw:

.. math::

    L(\theta) = \mathbb E_{x_0, t, \epsilon}\ w(t)\,\tfrac1D\|F_\theta(x_t, t) - r\|^2 ,
    \qquad x_t = \gamma_t x_0 + \sigma_t \epsilon .

=====================  ===================================  =========  ===============  =======================
objective              t                                    target r   weight w(t)      prediction
=====================  ===================================  =========  ===============  =======================
``EpsObjective``       uniform on 1..T (discrete) or         :math:`\epsilon`  1        eps: :math:`F`
                       :math:`U(t_{min}, t_{max})` (SDE)
``DSMObjective``       :math:`U(t_{min}, t_{max})`          :math:`-\epsilon`  :math:`\lambda(t)/\sigma_t^2`   score: :math:`F/\sigma_t`
``NCSNObjective``      uniform on L geometric levels        :math:`-\epsilon`  1 (:math:`\lambda=\sigma^2`)   score: :math:`F/\sigma_t`
=====================  ===================================  =========  ===============  =======================

* ``EpsObjective`` is Algorithm 1 of Ho et al. 2020 (:math:`L_{simple}`, eq. 14)
  on a :class:`~refdiff.schedules.DiscreteSchedule`, and its continuous-time
  form under any SDE (Song et al. 2021, eq. 7 with :math:`\lambda=\sigma_t^2`).
* ``DSMObjective`` is weighted denoising score matching (Vincent 2011; Song et
  al. 2021 eq. 7): :math:`\lambda(t)\|s_\theta + \epsilon/\sigma_t\|^2` with the
  score parametrised as :math:`s_\theta = F_\theta/\sigma_t` (Song & Ermon
  2020, technique 3), which is the regression above with
  :math:`w = \lambda/\sigma_t^2`. :math:`\lambda = \sigma_t^2` ("sigma2")
  makes it the eps loss; ``"likelihood"`` is :math:`g(t)^2` (Song et al.
  2021b, the weighting that bounds the KL), ``"none"`` is 1.
* ``NCSNObjective`` is the multi-scale DSM of Song & Ermon 2019 (eq. 5-6,
  :math:`\lambda(\sigma)=\sigma^2`) on a VE process: the noise levels are the
  times :func:`refdiff.samplers.annealed_langevin` visits, so the trained
  network is queried exactly where it was trained.

``objective.model(network, params, y)`` turns trained weights into the
``f(x, t)`` a sampler takes, with ``objective.prediction`` saying what it
returns; it also carries ``vjp`` for :mod:`refdiff.likelihood`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forward import q_sample
from .schedules import DiscreteSchedule
from .sde import SDE, VESDE

__all__ = [
    "Batch",
    "EpsObjective",
    "DSMObjective",
    "NCSNObjective",
    "ScaledModel",
    "objective_from_config",
    "process_from_config",
]


@dataclass
class Batch:
    """One regression batch: network inputs ``(x, t, y)``, ``target`` and per-example ``weight`` (or None)."""

    x: np.ndarray
    t: np.ndarray
    y: np.ndarray | None
    target: np.ndarray
    weight: np.ndarray | None


class ScaledModel:
    """``f(x, t) = c(t) * F(x, t)`` for a bound network ``F`` (``c = 1`` when ``scale`` is None).

    ``vjp(x, t, v)`` is :math:`c(t)\\,v^T\\partial F/\\partial x`, what
    :func:`refdiff.likelihood.ode_log_likelihood` takes as ``score_vjp``.
    """

    def __init__(self, bound, scale=None):
        self.bound, self.scale = bound, scale

    def _c(self, x, t):
        c = self.scale(t)
        return c if np.ndim(c) == 0 else np.reshape(c, (-1,) + (1,) * (np.ndim(x) - 1))

    def __call__(self, x, t):
        out = self.bound(x, t)
        if self.scale is None:
            return out
        return (out * self._c(x, t)).astype(out.dtype, copy=False)

    def vjp(self, x, t, v):
        if self.scale is None:
            return self.bound.vjp(x, t, v)
        v = np.asarray(v) * self._c(x, t)
        return self.bound.vjp(x, t, v)


class EpsObjective:
    """:math:`L_{simple}`: predict the noise (Ho et al. 2020, Algorithm 1; any SDE in continuous time)."""

    prediction = "eps"
    name = "eps"

    def __init__(self, process):
        if not isinstance(process, (DiscreteSchedule, SDE)):
            raise TypeError(f"process must be a DiscreteSchedule or an SDE, got {type(process).__name__}")
        self.process = process

    @property
    def discrete(self) -> bool:
        return isinstance(self.process, DiscreteSchedule)

    @property
    def time_scale(self) -> float:
        """What the network's time features should multiply t by (times span about 0..1000)."""
        return 1000.0 / self.process.T if self.discrete else 1000.0

    def sample_t(self, n, gen):
        if self.discrete:
            return gen.integers(1, self.process.T + 1, size=n)  # Algorithm 1: t ~ Uniform({1..T})
        p = self.process
        return gen.uniform(p.t_min, p.t_max, size=n)

    def batch(self, x0, y, gen) -> Batch:
        t = self.sample_t(x0.shape[0], gen)
        eps = gen.standard_normal(x0.shape, dtype=x0.dtype)
        x_t = q_sample(self.process, x0, t, eps)
        return Batch(x_t, t.astype(np.float64), y, eps, None)

    def output_scale(self):
        return None

    def model(self, network, params, y=None) -> ScaledModel:
        """The trained ``f(x, t)`` returning :attr:`prediction`."""
        return ScaledModel(network.bind(params, y=y), self.output_scale())

    def score_model(self, network, params, y=None) -> ScaledModel:
        """The trained network as a score :math:`s_\\theta(x, t)` with its ``vjp`` (continuous processes).

        For eps prediction :math:`s = -F/\\sigma_t` (Song et al. 2021, the
        relation behind eq. 7); what :func:`refdiff.likelihood.ode_log_likelihood`
        takes as ``score_fn`` and ``score_vjp``.
        """
        if not isinstance(self.process, SDE):
            raise TypeError("score_model needs a continuous process (an SDE); this objective's is discrete")
        process = self.process
        if self.prediction == "score":
            return self.model(network, params, y)
        return ScaledModel(network.bind(params, y=y), lambda t: -1.0 / process.std(t))

    def config(self) -> dict:
        return {"objective": self.name, "process": _describe_process(self.process)}


class DSMObjective(EpsObjective):
    """Weighted denoising score matching with :math:`s_\\theta = F_\\theta/\\sigma_t` (see module table)."""

    prediction = "score"
    name = "dsm"
    WEIGHTINGS = ("sigma2", "likelihood", "none")

    def __init__(self, process, weighting: str = "sigma2"):
        if not isinstance(process, SDE):
            raise TypeError(f"DSM needs a continuous process (an SDE), got {type(process).__name__}")
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        super().__init__(process)
        self.weighting = weighting

    def weight(self, t):
        """:math:`\\lambda(t)/\\sigma_t^2` for the chosen :math:`\\lambda`."""
        if self.weighting == "sigma2":
            return None
        lam = self.process.diffusion(t) ** 2 if self.weighting == "likelihood" else 1.0
        return np.asarray(lam / self.process.variance(t), dtype=np.float64)

    def batch(self, x0, y, gen) -> Batch:
        t = self.sample_t(x0.shape[0], gen)
        eps = gen.standard_normal(x0.shape, dtype=x0.dtype)
        x_t = q_sample(self.process, x0, t, eps)
        return Batch(x_t, t, y, -eps, self.weight(t))

    def output_scale(self):
        process = self.process
        return lambda t: 1.0 / process.std(t)

    def config(self) -> dict:
        return {**super().config(), "weighting": self.weighting}


class NCSNObjective(DSMObjective):
    """Multi-scale DSM on the noise levels of annealed Langevin (Song & Ermon 2019, eq. 6)."""

    name = "ncsn"

    def __init__(self, process, levels: int = 20):
        if not isinstance(process, VESDE):
            raise TypeError(f"NCSN trains a VE process (refdiff.sde.VESDE), got {type(process).__name__}")
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        super().__init__(process, "sigma2")
        from .samplers import time_grid

        self.levels = int(levels)
        self.times = np.asarray(time_grid(process, self.levels - 1, "log_snr"), dtype=np.float64)

    @property
    def sigmas(self) -> np.ndarray:
        """The geometric noise levels :math:`\\sigma_1 > \\dots > \\sigma_L`."""
        return self.process.std(self.times)

    def sample_t(self, n, gen):
        return self.times[gen.integers(0, self.levels, size=n)]

    def config(self) -> dict:
        return {**super().config(), "levels": self.levels}


def _describe_process(process) -> dict:
    if isinstance(process, DiscreteSchedule):
        return {"kind": "discrete", "log_alpha_bar": [float(v) for v in process.log_alpha_bar]}
    return process.config()


#: Two stored discrete schedules (their log alpha-bar) within this relative distance are the same process: the
#: rounding of one computation against another (the compensated prefix sums moved log alpha-bar by about 1e-15,
#: and checkpoints store it to the last bit), far below any schedule a user would mean as different.
SAME_SCHEDULE_RTOL = 1e-12


def same_process(a, b) -> bool:
    """Whether two process descriptions (an objective's ``config()["process"]``) are the same process.

    SDEs compare their parameters exactly; discrete schedules their log alpha-bar to
    :data:`SAME_SCHEDULE_RTOL` (the infinities exactly), so that a checkpoint written by an older refdiff,
    whose tables differ in the last bits, still names its own schedule.
    """
    if not (isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind") == "discrete"):
        return a == b
    la = np.asarray(a.get("log_alpha_bar", []), dtype=np.float64)
    lb = np.asarray(b.get("log_alpha_bar", []), dtype=np.float64)
    if la.shape != lb.shape or not np.array_equal(np.isfinite(la), np.isfinite(lb)):
        return False
    fin = np.isfinite(la)
    close = np.abs(la[fin] - lb[fin]) <= SAME_SCHEDULE_RTOL * np.maximum(1.0, np.abs(lb[fin]))
    return bool(np.array_equal(la[~fin], lb[~fin]) and np.all(close))


def same_objective(a, b) -> bool:
    """Whether two objective configs (:meth:`config`) are the same: equal, the process by :func:`same_process`."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return a == b
    rest_a = {k: v for k, v in a.items() if k != "process"}
    rest_b = {k: v for k, v in b.items() if k != "process"}
    return rest_a == rest_b and same_process(a.get("process"), b.get("process"))


def process_from_config(config: dict):
    """The process an objective's ``config()["process"]`` describes (a DiscreteSchedule or an SDE)."""
    if isinstance(config, dict) and config.get("kind") == "discrete":
        return DiscreteSchedule.from_log_alpha_bar(np.asarray(config["log_alpha_bar"], dtype=np.float64))
    from .sde import sde_from_config

    return sde_from_config(config)


def objective_from_config(config: dict, process=None):
    """Rebuild an objective from :meth:`config`; ``process`` (default: the one described) must match it."""
    if process is None:
        process = process_from_config(config.get("process"))
    if not same_process(_describe_process(process), config.get("process")):
        raise ValueError("the stored objective was trained on another process than the one given")
    name = config.get("objective")
    if name == "eps":
        return EpsObjective(process)
    if name == "dsm":
        return DSMObjective(process, config["weighting"])
    if name == "ncsn":
        return NCSNObjective(process, config["levels"])
    raise ValueError(f"unknown objective {name!r}")
