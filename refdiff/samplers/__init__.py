r"""Samplers: from noise to data with a model of the score, eps, x0 or v.

Every sampler has the same shape of signature::

    sampler(model, process, x_T, *, prediction=..., steps=..., grid=..., rng=None, callback=None, ...)
        -> SampleResult(x, nfe)

``model(x, t)`` is any callable (an analytic mixture's ``score``, a trained
network); ``prediction`` says what it returns; ``process`` is an SDE or a
DiscreteSchedule; ``x_T`` is a start array or a shape to draw from the prior;
``rng`` seeds per-example noise (a sample does not depend on its batch);
``callback(i, t, x)`` sees every step. Langevin samplers of a fixed target
take the target's score ``s(x)`` instead of a process.

=========================  ==========================  ============  =========================================
sampler                    kind                        NFE           source
=========================  ==========================  ============  =========================================
``langevin``               ULA                         n             Roberts & Tweedie 1996
``mala``                   Metropolis-adjusted         n + 1         Roberts & Tweedie 1996
``annealed_langevin``      annealed ULA                L * n         Song & Ermon 2019, Alg. 1
``ddpm``                   ancestral                   steps         Ho et al. 2020, Alg. 2
``ddim``                   eta in [0, 1]               steps         Song, Meng & Ermon 2021
``euler_maruyama``         reverse SDE, weak order 1   steps         Song et al. 2021
``predictor_corrector``    reverse SDE + Langevin      steps (1+m)   Song et al. 2021, Alg. 1-5
``sde_adaptive``           adaptive reverse SDE        adaptive      Jolicoeur-Martineau et al. 2021
``edm_stochastic``         churn + Heun                2 steps       Karras et al. 2022, Alg. 2
``ode_euler``              PF-ODE, order 1             steps         Song et al. 2021
``ode_heun``               PF-ODE, order 2             2 steps       Karras et al. 2022, Alg. 1
``ode_rk4``                PF-ODE, order 4             4 steps       Runge-Kutta
``ode_rk45``               PF-ODE, adaptive            adaptive      Dormand & Prince 1980 (SciPy)
``dpm_solver``             PF-ODE, order 1-3           k steps       Lu et al. 2022a
``dpm_solver_pp``          PF-ODE, 2M multistep        steps         Lu et al. 2022b
``plms``                   PF-ODE, linear multistep    steps         Liu et al. 2022
``deis``                   PF-ODE, exp. multistep      steps         Zhang & Chen 2022
=========================  ==========================  ============  =========================================

(+1 NFE where ``final_denoise`` applies Tweedie's formula at the last time.)

:mod:`refdiff.samplers.fused` writes ULA, annealed Langevin, Euler-Maruyama,
DDPM and PF-ODE Euler/Heun for an analytic mixture as a table of per-step
coefficients, ``x <- a x + b s + b_prev s_prev + c z``, and runs it
(``run_table``); the fused Numba and CUDA twins in :mod:`refdiff.kernels` run
the same table with the same counter-based noise.
"""

from . import fused
from ._common import ModelCall, SampleResult
from .ancestral import ddim, ddpm
from .dpm import dpm_solver, dpm_solver_pp
from .grids import GRID_KINDS, GridInfo, describe_grid, step_grid, time_grid
from .langevin import annealed_langevin, langevin, mala, ula_stationary_variance
from .multistep import deis, plms
from .ode import ode_euler, ode_heun, ode_rk4, ode_rk45
from .stochastic import (
    edm_stochastic,
    euler_maruyama,
    predictor_corrector,
    sde_adaptive,
)

#: Samplers driven by a diffusion model ``f(x, t)`` and a process, by name.
DIFFUSION_SAMPLERS = {
    "annealed_langevin": annealed_langevin,
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "sde_adaptive": sde_adaptive,
    "edm_stochastic": edm_stochastic,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_rk4": ode_rk4,
    "ode_rk45": ode_rk45,
    "dpm_solver": dpm_solver,
    "dpm_solver_pp": dpm_solver_pp,
    "plms": plms,
    "deis": deis,
}

__all__ = [
    "SampleResult",
    "ModelCall",
    "DIFFUSION_SAMPLERS",
    "GRID_KINDS",
    "GridInfo",
    "describe_grid",
    "step_grid",
    "time_grid",
    "langevin",
    "mala",
    "ula_stationary_variance",
    "fused",
    *DIFFUSION_SAMPLERS,
]
