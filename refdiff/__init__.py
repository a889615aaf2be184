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
noise       counter-based (Philox) per-example Gaussian noise
samplers    Langevin, DDPM, DDIM, reverse-SDE and probability-flow ODE samplers
likelihood  PF-ODE log-likelihood, bits per dimension, encode/decode
guidance    classifier and classifier-free guidance; labelled mixtures
metrics     sliced Wasserstein, MMD, energy distance, mode weights, noise floors
targets     named analytic targets (the 8-mode ring, a 16-D mixture)
verify      the equation catalogue behind ``refdiff verify``
nn          networks with hand-written backprop: MLP, U-Net, Adam, EMA, checkpoints
objectives  training objectives as regressions: eps (Algorithm 1), weighted DSM, NCSN
train       the training loop (seeded per step, exact resume, classifier-free dropout)
data        built-in 2-D data sets and small digit images
"""

import importlib

from ._version import __version__

# Submodules and names load on first use (PEP 562), so `import refdiff` and
# `refdiff --help` do not pay for NumPy until an array is needed.
_SUBMODULES = (
    "analytic",
    "backend",
    "forward",
    "losses",
    "param",
    "schedules",
    "sde",
    "noise",
    "samplers",
    "likelihood",
    "guidance",
    "metrics",
    "targets",
    "verify",
    "nn",
    "objectives",
    "train",
    "data",
    "cli",
)
_NAMES = {
    "DiscreteSchedule": "schedules",
    "SDE": "sde",
    "VPSDE": "sde",
    "CosineVPSDE": "sde",
    "SubVPSDE": "sde",
    "VESDE": "sde",
    "GaussianMixture": "analytic",
    "Gaussian": "analytic",
    "EmpiricalData": "analytic",
}

__all__ = ["__version__", *_SUBMODULES, *_NAMES]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'refdiff' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
