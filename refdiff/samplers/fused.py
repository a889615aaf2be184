r"""Samplers as coefficient tables, for fused loops over an analytic (Gaussian-mixture) target.

Most samplers of this package, run on the exact score of a Gaussian mixture,
are one linear update per step,

.. math:: x\leftarrow a_i\,x+b_i\,s(x;\gamma_i,\sigma_i^2)+b'_i\,s_{i-1}+c_i\,z_i,

where :math:`s(\cdot;\gamma,\sigma^2)` is the exact score of the mixture
diffused to means :math:`\gamma\mu_k` and covariances
:math:`\gamma^2\Sigma_k+\sigma^2I` (:meth:`refdiff.analytic.GaussianMixture.score`),
:math:`s_{i-1}` is the score the previous row computed, and :math:`z_i` is
a standard normal draw. A :class:`FusedTable` holds these numbers, one row
per update, computed once in float64 on the host; :func:`run_table` (NumPy,
the reference) and its twins ``refdiff.kernels.fused_numba.run_table`` (CPU)
and ``refdiff.kernels.fused_cupy.run_table`` (GPU, one thread per particle)
execute it, the twins inside one kernel call with the state in registers.

Table columns (float64 unless said, one entry per row i = 0..R-1)
------------------------------------------------------------------
===========  ==================================================================
``t``        time of the row's score (for reading; NaN where none)
``a``        :math:`a_i`, multiplies the state
``b``        :math:`b_i`, multiplies the score at the current state; the score
             is evaluated only where ``b != 0``
``b_prev``   :math:`b'_i`, multiplies the score computed by row i-1 (Heun's
             corrector); non-zero only where ``b[i-1] != 0``
``c``        :math:`c_i`, multiplies the row's normal draw
``gamma``    :math:`\gamma_i`, mean scale of the score's marginal
``sigma2``   :math:`\sigma_i^2`, added variance of the score's marginal
             (``gamma = 1, sigma2 = 0``: the mixture itself)
``draw``     int64: the row's draw number d_i >= 0, or -1 for no noise
             (then ``c == 0``)
===========  ==================================================================

plus ``prior_std`` (the start's scale when it is drawn) and ``kind``.

Noise mapping (the Philox contract of :mod:`refdiff.noise`). Particle ``p``
(``offset + row``) of a run with 64-bit key ``seed`` uses
``counter_normals(seed, [p], k, D)`` with draw index

* ``k = 0`` for the start :math:`x_T=\text{prior\_std}\,z` when a shape is
  given, and then ``k = 1 + d_i`` for row i;
* ``k = d_i`` for row i when a start array is given.

This is exactly what the existing samplers do with their
:class:`~refdiff.noise.NoiseStream` (draw 0 for a drawn start, then one
draw index per noisy step, in order), so a table run reproduces the sampler
draw for draw, and a particle's path depends on (seed, p) alone, not on N.

Rows of each sampler, derived from the sampler's own equations
---------------------------------------------------------------
With :math:`h=t_i-t_{i+1}>0`, :math:`f, g` the process's drift coefficient
and diffusion, :math:`\gamma_t, \sigma_t` its marginal mean scale and std:

=======================  ===================================  ===================================  ==========================
table                    a                                    b                                    c
=======================  ===================================  ===================================  ==========================
``langevin_table``       1                                    :math:`\eta`                         :math:`\sqrt{2\eta}`
``annealed_langevin``    1                                    :math:`\alpha_\ell`                  :math:`\sqrt{2\alpha_\ell}`
``euler_maruyama``       :math:`1-hf(t_i)`                    :math:`hg(t_i)^2`                    :math:`g(t_i)\sqrt h`
``ddpm``                 :math:`c_{xt}+c_{x0}/\gamma_t`        :math:`c_{x0}\sigma_t^2/\gamma_t`     :math:`\sqrt{v}` (0 at s=0)
``ode_euler``            :math:`1+(t_{i+1}-t_i)f(t_i)`         :math:`-(t_{i+1}-t_i)g(t_i)^2/2`      0
final denoise            :math:`1/\gamma_t`                    :math:`\sigma_t^2/\gamma_t`           0
=======================  ===================================  ===================================  ==========================

(DDPM: :math:`c_{x0}, c_{xt}, v` are :func:`refdiff.forward.posterior_coefs`
and :math:`\hat x_0=(x+\sigma_t^2s)/\gamma_t`; the final-denoise row is
Tweedie's formula.) Heun (Karras et al. 2022, Algorithm 1) takes two rows
per step. The reference integrates :math:`\tilde x=x/\gamma_t` over
:math:`\tilde\sigma=\sigma_t/\gamma_t` with slope
:math:`d=(\tilde x-D)/\tilde\sigma`; with :math:`D=(x+\sigma_t^2s)/\gamma_t`
that slope is exactly :math:`d=-\sigma_t s`, so with
:math:`\Delta=\tilde\sigma_{i+1}-\tilde\sigma_i` the table stays in x:

* predictor (score at :math:`t_i`): :math:`x'=\frac{\gamma_{i+1}}{\gamma_i}x-\gamma_{i+1}\Delta\sigma_i\,s_i`;
* corrector (score at :math:`t_{i+1}`, ``b_prev`` takes :math:`s_i`):
  :math:`x_{i+1}=x'-\tfrac12\gamma_{i+1}\Delta\sigma_{i+1}\,s'+\tfrac12\gamma_{i+1}\Delta\sigma_i\,s_i`;
  none where :math:`\tilde\sigma_{i+1}=0` (the predictor has landed on D).

This is the reference's arithmetic rearranged (it agrees to rounding, not bit
for bit). Samplers whose state is not linear in (x, s, z) with fixed
coefficients are not tables: MALA (accept/reject), adaptive steps, EDM's
churn (only the noise coefficient differs, a possible extension), RK4 and
multistep solvers (more registers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import as_float_array, to_numpy
from ..forward import posterior_coefs
from ..noise import NoiseStream
from ..schedules import DiscreteSchedule
from ._common import check_int, check_positive, prior_std_of, require_sde
from .grids import resolve_grid, time_grid

__all__ = [
    "FusedTable",
    "langevin_table",
    "annealed_langevin_table",
    "euler_maruyama_table",
    "ddpm_table",
    "ode_euler_table",
    "ode_heun_table",
    "run_table",
    "score_constants",
    "start_state",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- the table
def _column(value, name, kinds):
    """A table column as a new 1-D host array (float64, or int64 for ``draw``), refusing other kinds of values (a
    string, a float draw number, a 2-D column) instead of converting them."""
    arr = np.asarray(to_numpy(value))
    if arr.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "real numbers"
        raise TypeError(f"table column {name} must hold {what}, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"table column {name} must be 1-D, got shape {arr.shape}")
    if kinds == "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"table column {name} holds a value past int64, {arr.max()}")
        return arr.astype(np.int64)
    return arr.astype(np.float64)


@dataclass(frozen=True)
class FusedTable:
    """Per-row coefficients of a sampler (see the module notes); float64 host arrays of shape (R,)."""

    kind: str
    t: np.ndarray
    a: np.ndarray
    b: np.ndarray
    b_prev: np.ndarray
    c: np.ndarray
    gamma: np.ndarray
    sigma2: np.ndarray
    draw: np.ndarray
    prior_std: float = 1.0
    n_draws: int = field(init=False)

    def __post_init__(self):
        cols = {name: _column(getattr(self, name), name, "fiu") for name in ("t", "a", "b", "b_prev", "c", "gamma", "sigma2")}
        cols["draw"] = _column(self.draw, "draw", "iu")
        R = cols["a"].shape[0]
        if R < 1 or any(v.shape != (R,) for v in cols.values()):
            raise ValueError(f"table columns must all have shape (R,) with R >= 1, got {[v.shape for v in cols.values()]}")
        for name in ("a", "b", "b_prev", "c", "gamma", "sigma2"):
            if not np.all(np.isfinite(cols[name])):
                raise ValueError(f"table column {name} must be finite")
        if np.any(cols["sigma2"] < 0) or np.any(cols["gamma"] < 0):
            raise ValueError("table columns gamma and sigma2 must be >= 0")
        score_rows = cols["b"] != 0
        if np.any((cols["gamma"] == 0) & (cols["sigma2"] == 0) & score_rows):
            raise ValueError("a row evaluating the score needs gamma > 0 or sigma2 > 0")
        if cols["b_prev"][0] != 0 or np.any((cols["b_prev"][1:] != 0) & ~score_rows[:-1]):
            raise ValueError("b_prev[i] may be non-zero only where row i-1 evaluates the score (b[i-1] != 0)")
        noisy = cols["draw"] >= 0
        if np.any(cols["draw"] < -1) or np.any((cols["c"] != 0) & ~noisy):
            raise ValueError("draw must be -1 (no noise, c == 0) or a draw number >= 0")
        d = cols["draw"][noisy]
        if np.any(d != np.arange(d.shape[0])):
            raise ValueError("the noisy rows' draw numbers must be 0, 1, 2, ... in row order")
        for name, v in cols.items():
            v.flags.writeable = False
            object.__setattr__(self, name, v)
        object.__setattr__(self, "prior_std", check_positive(self.prior_std, "prior_std"))
        object.__setattr__(self, "n_draws", int(d.shape[0]))

    @property
    def n_rows(self) -> int:
        return self.a.shape[0]

    @property
    def nfe(self) -> int:
        """Score evaluations per particle (rows with ``b != 0``)."""
        return int(np.count_nonzero(self.b))

    def __repr__(self):
        return f"FusedTable({self.kind}, rows={self.n_rows}, nfe={self.nfe}, draws={self.n_draws})"


class _Rows:
    """Collects rows in order; noisy rows get consecutive draw numbers."""

    def __init__(self):
        self.rows = []
        self.n_draws = 0

    def add(self, t, a, b, c=0.0, gamma=1.0, sigma2=0.0, b_prev=0.0, noise=None):
        noise = c != 0.0 if noise is None else noise
        draw = -1
        if noise:
            draw, self.n_draws = self.n_draws, self.n_draws + 1
        self.rows.append((float(t), float(a), float(b), float(b_prev), float(c), float(gamma), float(sigma2), draw))

    def denoise(self, process, t):
        """Tweedie's formula as a row: :math:`\\hat x_0=(x+\\sigma_t^2s)/\\gamma_t` (the reference's score -> x0)."""
        gamma, std = float(process.mean_coef(t)), float(process.std(t))
        self.add(t, 1.0 / gamma, std**2 / gamma, gamma=gamma, sigma2=float(process.variance(t)))

    def table(self, kind, prior_std):
        cols = list(zip(*self.rows))
        return FusedTable(kind, *cols[:7], draw=cols[7], prior_std=prior_std)

    def finish(self, kind, process, grid, final_denoise, prior_std):
        if final_denoise and float(process.variance(grid[-1])) > 0.0:
            self.denoise(process, grid[-1])
        return self.table(kind, prior_std)


def _marginal(process, t):
    return float(process.mean_coef(t)), float(process.variance(t))


# --------------------------------------------------------------------------- builders
def langevin_table(*, step_size, n_steps=1000) -> FusedTable:
    r"""Unadjusted Langevin on the mixture itself: :math:`x\leftarrow x+\eta s(x)+\sqrt{2\eta}z` (:func:`~refdiff.samplers.langevin`)."""
    eta = check_positive(step_size, "step_size")
    rows = _Rows()
    for i in range(check_int(n_steps, "n_steps")):
        rows.add((i + 1) * eta, 1.0, eta, math.sqrt(2.0 * eta))
    return rows.table("langevin", 1.0)


def annealed_langevin_table(process, *, levels=20, n_steps_each=100, eps=None, t_max=None, t_min=None, final_denoise=True):
    r"""Annealed Langevin (Song & Ermon 2019, Alg. 1) as :func:`~refdiff.samplers.annealed_langevin` runs it.

    Level :math:`\ell` targets :math:`p_{t_\ell}` with step
    :math:`\alpha_\ell=\epsilon\sigma_\ell^2/\sigma_L^2`, ``n_steps_each`` rows each.
    """
    require_sde(process, "annealed_langevin_table")
    levels = check_int(levels, "levels", lo=2)
    n_steps_each = check_int(n_steps_each, "n_steps_each")
    ts = time_grid(process, levels - 1, "log_snr", t_max=t_max, t_min=t_min)
    sigma2 = np.asarray(process.variance(ts), dtype=np.float64)
    eps = 0.2 * sigma2[-1] if eps is None else check_positive(eps, "eps")
    rows = _Rows()
    for i, t in enumerate(ts):
        alpha = float(eps * sigma2[i] / sigma2[-1])
        gamma, var = _marginal(process, t)
        for _ in range(n_steps_each):
            rows.add(t, 1.0, alpha, math.sqrt(2.0 * alpha), gamma, var)
    return rows.finish("annealed_langevin", process, ts, final_denoise, process.prior_std())


def euler_maruyama_table(process, *, steps=None, grid=None, final_denoise=True) -> FusedTable:
    r"""Euler-Maruyama on the reverse SDE (:func:`~refdiff.samplers.euler_maruyama`).

    :math:`x-h[f x-g^2s]+g\sqrt hz` gives :math:`a=1-hf(t_i)`, :math:`b=hg(t_i)^2`, :math:`c=g(t_i)\sqrt h`.
    """
    require_sde(process, "euler_maruyama_table")
    grid = resolve_grid(process, steps, grid, default_steps=1000, default_kind="uniform")
    rows = _Rows()
    for i in range(grid.shape[0] - 1):
        t, h = grid[i], float(grid[i] - grid[i + 1])
        f, g = float(process.drift_coef(t)), float(process.diffusion(t))
        rows.add(t, 1.0 - h * f, h * g * g, g * math.sqrt(h), *_marginal(process, t))
    return rows.finish("euler_maruyama", process, grid, final_denoise, process.prior_std())


def ddpm_table(process, *, steps=None, grid=None, spacing="trailing", variance="beta_tilde", final_denoise=True) -> FusedTable:
    r"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as :func:`~refdiff.samplers.ddpm` runs it.

    :math:`x_s=c_{x0}\hat x_0+c_{xt}x+\sqrt v z` with :math:`\hat x_0=(x+\sigma_t^2s)/\gamma_t`;
    no noise where the step lands on :math:`\sigma_s=0`.
    """
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"variance must be one of ('beta_tilde', 'beta'), got {variance!r}")
    default = None if isinstance(process, DiscreteSchedule) else 1000
    grid = resolve_grid(process, steps, grid, default_steps=default, spacing=spacing)
    rows = _Rows()
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        coef_x0, coef_xt, var = (float(v) for v in posterior_coefs(process, s, t))
        if variance == "beta":
            var = float(process.transition(s, t)[1])
        gamma, std = float(process.mean_coef(t)), float(process.std(t))
        if gamma == 0.0:
            raise ValueError(f"ddpm_table needs gamma_t > 0 at every grid point, got 0 at t={t}")
        noisy = float(process.variance(s)) > 0.0
        rows.add(t, coef_xt + coef_x0 / gamma, coef_x0 * std**2 / gamma, math.sqrt(var) if noisy else 0.0,
                 gamma, float(process.variance(t)), noise=noisy)  # fmt: skip
    return rows.finish("ddpm", process, grid, final_denoise, prior_std_of(process))


def ode_euler_table(process, *, steps=None, grid=None, final_denoise=True) -> FusedTable:
    r"""Euler on the probability-flow ODE in t (:func:`~refdiff.samplers.ode_euler`): :math:`x+\Delta t\,(fx-\tfrac12g^2s)`."""
    require_sde(process, "ode_euler_table")
    grid = resolve_grid(process, steps, grid, default_kind="karras", default_steps=200)
    rows = _Rows()
    for i in range(grid.shape[0] - 1):
        t, dt = grid[i], float(grid[i + 1] - grid[i])  # dt < 0
        f, g = float(process.drift_coef(t)), float(process.diffusion(t))
        rows.add(t, 1.0 + dt * f, -dt * 0.5 * g * g, 0.0, *_marginal(process, t))
    return rows.finish("ode_euler", process, grid, final_denoise, process.prior_std())


def ode_heun_table(process, *, steps=None, grid=None, rho=7.0, final_denoise=True) -> FusedTable:
    r"""EDM's Heun sampler (Karras et al. 2022, Alg. 1; :func:`~refdiff.samplers.ode_heun`): a predictor and a corrector row per step.

    A step that lands on :math:`\tilde\sigma=0` (an explicit grid ending at t = 0) has the predictor alone, as
    Algorithm 1's "if": the Euler step lands on the denoised value, and the slope there is 0 / 0.

    See the module notes for the rows; :math:`\tilde\sigma=e^{-\lambda/2}` as in the reference.
    """
    require_sde(process, "ode_heun_table")
    grid = resolve_grid(process, steps, grid, default_steps=17, default_kind="karras", rho=rho)
    sigma_tilde = np.exp(-0.5 * np.asarray(process.log_snr(grid), dtype=np.float64))
    rows = _Rows()
    for i in range(grid.shape[0] - 1):
        t, s = grid[i], grid[i + 1]
        delta = float(sigma_tilde[i + 1] - sigma_tilde[i])
        g_t, g_s = float(process.mean_coef(t)), float(process.mean_coef(s))
        std_t, std_s = float(process.std(t)), float(process.std(s))
        # predictor: Euler step in x~ to sigma~_{i+1}, mapped back to x at t_{i+1}
        rows.add(t, g_s / g_t, -g_s * delta * std_t, 0.0, g_t, float(process.variance(t)))
        if sigma_tilde[i + 1] == 0.0:  # landed on D at t = 0: the slope there is 0 / 0, no corrector (edm_heun_loop)
            continue
        # corrector: the trapezoid, with d = -sigma s at both ends
        half = 0.5 * g_s * delta
        rows.add(s, 1.0, -half * std_s, 0.0, g_s, float(process.variance(s)), b_prev=half * std_t)
    return rows.finish("ode_heun", process, grid, final_denoise, process.prior_std())


# --------------------------------------------------------------------------- execution
class _Marginal:
    """The two process coefficients :meth:`GaussianMixture.score` reads, fixed for one row."""

    def __init__(self, gamma, sigma2):
        self.gamma, self.sigma2 = np.float64(gamma), np.float64(sigma2)

    def mean_coef(self, t):
        return self.gamma

    def variance(self, t):
        return self.sigma2


def _check_table_mixture(table, mixture):
    if not isinstance(table, FusedTable):
        raise TypeError(f"table must be a FusedTable, got {type(table).__name__}")
    if not hasattr(mixture, "weights") or not hasattr(mixture, "_lam"):
        raise TypeError(f"mixture must be a refdiff.analytic.GaussianMixture, got {type(mixture).__name__}")


def start_state(table, mixture, x_T, rng=None, seed=None, offset=0, dtype=None, draw=True):
    """The starting state, the noise stream and the draw index of row 0's numbering (1 if the start was drawn).

    ``x_T`` is an (N, D) array (a list becomes one) or a tuple, the shape
    (N, D) drawn as ``prior_std * z`` at draw 0, as for the samplers. Shared by the reference and its twins. With ``draw=False`` a
    shape is checked but not drawn: the state comes back unset (``np.empty``,
    in the state dtype) with ``first`` = 1, for a twin that draws
    ``prior_std * z`` at draw 0 in its kernel (at a million particles the host
    draw took longer than the whole run on a GPU).
    """
    _check_table_mixture(table, mixture)
    D = mixture.dim
    if isinstance(x_T, tuple):
        shape = x_T
        ok = len(shape) == 2 and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape)
        if not ok or shape[1] != D:
            raise ValueError(f"x_T as a shape must be (N, {D}) with N >= 1, got {x_T!r}")
        noise = NoiseStream(rng, n=shape[0], offset=offset, seed=seed)
        dtype = _state_dtype(np.float64 if dtype is None else dtype)
        if not draw:
            return np.empty(shape, dtype), noise, 1
        x = (table.prior_std * noise.normal(shape)).astype(dtype)
        return x, noise, 1
    x = np.asarray(to_numpy(as_float_array(x_T, "x_T")))
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != D:
        raise ValueError(f"x_T must have shape (N, {D}) with N >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x_T must be finite, got NaN or infinity")
    x = x.astype(_state_dtype(x.dtype, "x_T") if dtype is None else _state_dtype(dtype), copy=True)
    return x, NoiseStream(rng, n=x.shape[0], offset=offset, seed=seed), 0


def _state_dtype(dtype, source="dtype"):
    """``dtype`` as a NumPy dtype, float32 or float64 (the kernels' state types; another would run the
    table's coefficients cast to it: an integer state takes b = 0). ``source`` names where it came from."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        hint = " (pass dtype=np.float32 or np.float64 to convert it)" if source == "x_T" else ""
        raise TypeError(f"the state dtype must be float32 or float64, got {dtype} from {source}{hint}")
    return dtype


def run_table(table, mixture, x_T, *, rng=None, seed=None, offset=0, dtype=None):
    r"""Run a :class:`FusedTable` on the exact score of ``mixture`` (NumPy reference of the fused kernels).

    Parameters
    ----------
    table : FusedTable
    mixture : refdiff.analytic.GaussianMixture, dimension D
    x_T : array (N, D) or shape tuple (N, D)
        Start, or the shape of a start drawn as ``table.prior_std * z`` (draw 0).
    rng : SPEC 7 seed; the 64-bit Philox key is drawn from it as
        :class:`~refdiff.noise.NoiseStream` does (so the same ``rng`` gives the
        same noise as the sampler the table came from).
    seed : int, optional
        The 64-bit key itself (instead of ``rng``).
    offset : int
        Index of the first particle (a batch split into chunks reproduces the whole).
    dtype : float32 or float64, optional
        State dtype (default: ``x_T``'s, float64 for a shape); each row is
        computed in it, coefficients cast to it as the samplers do.

    Returns
    -------
    numpy.ndarray (N, D) in the state dtype.
    """
    x, noise, first = start_state(table, mixture, x_T, rng, seed, offset, dtype)
    cast = x.dtype.type
    s_prev = None
    for i in range(table.n_rows):
        s = None
        if table.b[i] != 0.0:  # the exact score of the diffused mixture, one call of the NumPy reference
            process = None if (table.gamma[i] == 1.0 and table.sigma2[i] == 0.0) else _Marginal(table.gamma[i], table.sigma2[i])
            s = mixture.score(x, process, None if process is None else 0.0, backend="numpy")
        x_new = x if table.a[i] == 1.0 else cast(table.a[i]) * x
        if s is not None:
            x_new = x_new + cast(table.b[i]) * s
        if table.b_prev[i] != 0.0:
            x_new = x_new + cast(table.b_prev[i]) * s_prev
        if table.draw[i] >= 0:
            z = noise.normal_at(first + int(table.draw[i]), x.shape, like=x)
            x_new = x_new + cast(table.c[i]) * z
        if not np.all(np.isfinite(x_new)):
            raise ValueError(f"the state became non-finite at row {i} (t={table.t[i]:.6g})")
        x, s_prev = x_new, s
    return x


# --------------------------------------------------------------------------- kernel inputs
def score_constants(table, mixture):
    r"""Per-row, per-component constants of the mixture score, the layout the fused kernels read (float64).

    For the active components k (weight > 0) with eigen-decomposition
    :math:`\Sigma_k=U_k\mathrm{diag}(\lambda_k)U_k^\top` (U = I for isotropic
    and diagonal covariances) and row i's :math:`(\gamma_i,\sigma_i^2)`:

    =============  ============  =================================================================
    ``means``      (R, K, D)     :math:`\gamma_i\mu_k`
    ``c``          (R, K, D)     :math:`\gamma_i^2\lambda_{kj}+\sigma_i^2` (ones on rows without a score)
    ``inv_c``      (R, K, D)     :math:`1/c`
    ``log_norm``   (R, K)        :math:`\log w_k-\tfrac12(D\log2\pi+\sum_j\log(\gamma_i^2\lambda_{kj}+\sigma_i^2))`
    ``U``          (K, D, D)     eigenvectors (columns), or None unless ``mixture.kind == "full"``
    =============  ============  =================================================================

    so that, with :math:`y=U_k^\top(x-\gamma_i\mu_k)` and :math:`q=y\odot c^{-1}`,
    the logit is ``log_norm - y.q / 2`` and the component score is :math:`-U_kq`;
    the score is their softmax-weighted sum. Rows without a score get zeros.
    Where some ``c`` of a row is below a dtype's smallest normal number, :math:`1/c`
    overflows it (or nearly): a kernel computing in that dtype must divide by :math:`c` there,
    as the reference does, or a particle at that component's mean loses its weight.
    """
    _check_table_mixture(table, mixture)
    log_w, mu, lam, U = mixture._active_arrays  # lam (K, D)
    D = mu.shape[1]
    g = np.where(table.b != 0, table.gamma, 0.0)[:, None, None]  # (R, 1, 1)
    v = np.where(table.b != 0, table.sigma2, 1.0)[:, None, None]
    c = g**2 * lam[None] + v  # (R, K, D)
    means = g * mu[None]  # (R, K, D)
    log_norm = log_w[None] - 0.5 * (D * _LOG_2PI + np.sum(np.log(c), axis=2))  # (R, K)
    with np.errstate(divide="ignore", over="ignore"):  # 1 / c overflows where c is subnormal: the kernels divide there
        inv_c = 1.0 / c
    return {"means": np.ascontiguousarray(means), "c": np.ascontiguousarray(c), "inv_c": np.ascontiguousarray(inv_c),
            "log_norm": np.ascontiguousarray(log_norm), "U": U}  # fmt: skip
