"""refdiff: a NumPy-first reference implementation of diffusion and score-based generative models.

Every equation of the forward process, the posterior, the score, the reverse
SDE and the probability-flow ODE is written once in plain array code and
checked against analytic ground truth (``refdiff verify``).

Modules
-------
backend     array namespace, dtypes and ``rng`` handling
schedules   discrete beta schedules and their float64 tables
sde         continuous VP, cosine-VP, sub-VP and VE processes
forward     q(x_t|x_0), q(x_t|x_s), q(x_{t-1}|x_t,x_0)
param       eps <-> x0 <-> score <-> v conversions
analytic    exact Gaussian-mixture, Gaussian and finite-data marginals
losses      eps-MSE, denoising score matching, Gaussian KL, decoder NLL, VLB
verify      the equation catalogue behind ``refdiff verify``
"""

from . import analytic, backend, forward, losses, param, schedules, sde
from ._version import __version__
from .analytic import EmpiricalData, Gaussian, GaussianMixture
from .schedules import DiscreteSchedule
from .sde import SDE, CosineVPSDE, SubVPSDE, VESDE, VPSDE

__all__ = [
    "__version__",
    "analytic",
    "backend",
    "forward",
    "losses",
    "param",
    "schedules",
    "sde",
    "DiscreteSchedule",
    "SDE",
    "VPSDE",
    "CosineVPSDE",
    "SubVPSDE",
    "VESDE",
    "GaussianMixture",
    "Gaussian",
    "EmpiricalData",
]
