"""Analytic targets with known answers: the mixtures refdiff's samplers are measured on.

``ring_mixture``    2-D ring of Gaussian modes (default: 8 modes, unequal weights)
``random_mixture``  D-dimensional mixture with random full covariances, seeded
``TARGETS``         the named targets and how to build them
"""

from __future__ import annotations

import numpy as np

from .analytic import GaussianMixture
from .backend import as_rng, check_int

__all__ = ["ring_mixture", "random_mixture", "TARGETS", "make_target"]


def ring_mixture(n_modes: int = 8, radius: float = 4.0, std: float = 0.25, weights=None) -> GaussianMixture:
    """Isotropic Gaussian modes evenly spaced on a circle of ``radius``.

    ``weights=None`` gives the unequal weights proportional to 1, 2, ..., n_modes
    (so a sampler that equalises modes is caught); pass ``"equal"`` for equal ones.
    """
    n_modes = check_int(n_modes, "n_modes")
    radius, std = _positive(radius, "radius", zero_ok=True), _positive(std, "std")
    angles = 2.0 * np.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if weights is None:
        weights = np.arange(1, n_modes + 1, dtype=np.float64)
    elif isinstance(weights, str) and weights == "equal":
        weights = np.ones(n_modes)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_modes,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"weights must be None, 'equal' or {n_modes} finite numbers >= 0 with a positive sum, "
                         f"got {weights!r}")
    return GaussianMixture(weights / weights.sum(), means, np.full(n_modes, std**2))


def _positive(value, name, zero_ok=False):
    """A finite real number > 0 (>= 0 where ``zero_ok``), as a float; ValueError naming ``name`` otherwise."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, got {value!r}")
    return float(value)



def random_mixture(dim: int = 16, n_components: int = 10, rng=0, mean_scale: float = 3.0, eig_range=(0.05, 0.5)):
    """A mixture of ``n_components`` full-covariance Gaussians in ``dim`` dimensions, drawn from ``rng``.

    Means ~ N(0, mean_scale^2 I); each covariance is Q diag(lam) Q^T with Q a
    random rotation and lam log-uniform in ``eig_range``; weights Dirichlet(2).
    """
    dim, n_components = check_int(dim, "dim"), check_int(n_components, "n_components")
    mean_scale = _positive(mean_scale, "mean_scale", zero_ok=True)
    try:
        lo, hi = (_positive(v, "eig_range entries") for v in eig_range)
    except (TypeError, ValueError):
        raise ValueError(f"eig_range must be two finite numbers 0 < low <= high, got {eig_range!r}") from None
    if not lo <= hi:
        raise ValueError(f"eig_range must be two finite numbers 0 < low <= high, got {eig_range!r}")
    gen = as_rng(rng)
    means = mean_scale * gen.standard_normal((n_components, dim))
    covs = np.empty((n_components, dim, dim))
    lo, hi = np.log(lo), np.log(hi)
    for k in range(n_components):
        q, r = np.linalg.qr(gen.standard_normal((dim, dim)))
        q = q * np.sign(np.diag(r))
        lam = np.exp(gen.uniform(lo, hi, dim))
        covs[k] = (q * lam) @ q.T
        covs[k] = 0.5 * (covs[k] + covs[k].T)
    weights = gen.dirichlet(np.full(n_components, 2.0))
    return GaussianMixture(weights, means, covs)


#: Named analytic targets: name -> (builder, description).
TARGETS = {
    "ring8": (ring_mixture, "8 isotropic modes on a circle of radius 4, std 0.25, weights 1:2:...:8"),
    "mixture16": (random_mixture, "10 full-covariance components in 16-D (seed 0)"),
}


def make_target(name: str) -> GaussianMixture:
    """Build the target called ``name`` (see :data:`TARGETS`)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name][0]()
