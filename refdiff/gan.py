r"""The GAN baseline (Goodfellow et al. 2014) on the same hand-written layers as the diffusion models.

A generator :math:`G_\theta` maps latent noise :math:`z\sim\mathcal N(0, I)`
to data; a discriminator :math:`D_\phi(x)=\sigma(\ell_\phi(x))` with logit
:math:`\ell_\phi` tells data from generated points. Both are plain MLPs
(:class:`refdiff.nn.classifier.DenseStack`).

=======================  ===================================================================  ==============================
symbol / function        formula                                                              source
=======================  ===================================================================  ==============================
value function           :math:`V=E_x\log D(x)+E_z\log(1-D(G(z)))`                            Goodfellow et al. 2014, eq. 1
``discriminator_loss``   :math:`L_D=\frac1N\sum_n\mathrm{sp}(-\ell(x_n))`                      :math:`-V` as binary cross-
                         :math:`+\frac1M\sum_m\mathrm{sp}(\ell(G(z_m)))`                       entropy on logits
``generator_loss``       :math:`L_G=\frac1M\sum_m\mathrm{sp}(-\ell(G(z_m)))=-E\log D(G(z))`     "non-saturating" loss,
                                                                                              Goodfellow et al. 2014, sec. 3
``train_gan``            one Adam step on :math:`L_D` in :math:`\phi`, then one on             Goodfellow et al. 2014,
                         :math:`L_G` in :math:`\theta` (Adam betas (0.5, 0.999))               Alg. 1; Radford et al. 2016
=======================  ===================================================================  ==============================

:math:`\mathrm{sp}(u)=\log(1+e^u)` is the softplus, computed as
``np.logaddexp(0, u)`` (exact and overflow-free at any finite u), using
:math:`-\log\sigma(u)=\mathrm{sp}(-u)` and :math:`-\log(1-\sigma(u))=\mathrm{sp}(u)`.
Its derivative is :math:`\mathrm{sp}'(u)=\sigma(u)`, so

.. math::

    \frac{\partial L_D}{\partial\ell(x_n)}=-\frac{\sigma(-\ell(x_n))}{N},\qquad
    \frac{\partial L_D}{\partial\ell(G(z_m))}=\frac{\sigma(\ell(G(z_m)))}{M},\qquad
    \frac{\partial L_G}{\partial\ell(G(z_m))}=-\frac{\sigma(-\ell(G(z_m)))}{M}.

The minimax generator loss :math:`E\log(1-D(G(z)))` has gradient
:math:`-\sigma(\ell)/M`, which vanishes when the discriminator confidently
rejects the samples (:math:`\ell\ll0`), early in training; the
non-saturating loss has the same fixed point and gradient
:math:`-\sigma(-\ell)/M\approx-1/M` there (Goodfellow et al. 2014, sec. 3).
The generator's gradient reaches :math:`\theta` through the
discriminator's input vector-Jacobian product (its backward pass with
``g=None``): the generator step never changes :math:`\phi`.

This is a *baseline*: with the usual defaults it covers a multi-modal target
unevenly or collapses onto a few modes, which is the comparison with
diffusion models it exists for (:func:`mode_coverage_table`).

References
----------
I. Goodfellow et al., "Generative adversarial nets", NeurIPS 2014.
A. Radford, L. Metz, S. Chintala, "Unsupervised representation learning
with deep convolutional generative adversarial networks", ICLR 2016.
L. Metz et al., "Unrolled generative adversarial networks", ICLR 2017
(the 8-mode ring as a mode-collapse test).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ._progress import ProgressLine
from .backend import as_rng, check_int
from .metrics import far_from_modes, mode_weights
from .nn.classifier import DenseStack
from .nn.layers import sigmoid
from .nn.optim import Adam
from .nn.params import FLOAT_DTYPES, Layout, Params

__all__ = [
    "GAN",
    "GANResult",
    "discriminator_loss",
    "generator_loss",
    "train_gan",
    "sample",
    "mode_coverage_table",
    "format_mode_coverage",
]

#: Middle word of the SeedSequence entropy ``[seed, tag, k]`` of each stream
#: (fixed length, distinct non-zero tags: no two streams share a seed).
_TAG_INIT, _TAG_STEP = 1, 2


# ----------------------------------------------------------------------- losses
def discriminator_loss(logits_real: np.ndarray, logits_fake: np.ndarray):
    r"""Binary cross-entropy of the discriminator on logits, and its gradients.

    :math:`L_D=\frac1N\sum_n\mathrm{sp}(-\ell^{real}_n)+\frac1M\sum_m\mathrm{sp}(\ell^{fake}_m)`
    (:math:`-V` of Goodfellow et al. 2014, eq. 1, estimated on a batch).

    Parameters
    ----------
    logits_real : array, shape (N, 1) or (N,)
    logits_fake : array, shape (M, 1) or (M,)

    Returns
    -------
    (float, array like logits_real, array like logits_fake)
        :math:`L_D`, :math:`-\sigma(-\ell^{real})/N`, :math:`\sigma(\ell^{fake})/M`.
    """
    n, m = logits_real.shape[0], logits_fake.shape[0]
    with np.errstate(invalid="ignore"):  # NaN logits give a NaN loss, which train_gan reports with its step
        loss = float(np.sum(np.logaddexp(0.0, -logits_real), dtype=np.float64)) / n
        loss += float(np.sum(np.logaddexp(0.0, logits_fake), dtype=np.float64)) / m
    d_real = sigmoid(-logits_real)
    d_real *= -1.0 / n
    d_fake = sigmoid(logits_fake)
    d_fake *= 1.0 / m
    return loss, d_real, d_fake


def generator_loss(logits_fake: np.ndarray):
    r"""Non-saturating generator loss :math:`L_G=-\frac1M\sum_m\log D(G(z_m))=\frac1M\sum_m\mathrm{sp}(-\ell_m)`.

    Returns
    -------
    (float, array like logits_fake)
        :math:`L_G` and :math:`\partial L_G/\partial\ell=-\sigma(-\ell)/M`.
    """
    m = logits_fake.shape[0]
    with np.errstate(invalid="ignore"):  # NaN in, NaN out (see discriminator_loss)
        loss = float(np.sum(np.logaddexp(0.0, -logits_fake), dtype=np.float64)) / m
    d_fake = sigmoid(-logits_fake)
    d_fake *= -1.0 / m
    return loss, d_fake


# ---------------------------------------------------------------------- the GAN
class GAN:
    """A generator and a discriminator, both plain MLPs of ``depth`` hidden layers of ``width`` units.

    Generator: (M, latent_dim) -> (M, data_dim), linear output.
    Discriminator: (N, data_dim) -> (N, 1) logits.
    Each network has its own :class:`~refdiff.nn.params.Params` buffer
    (``gen_layout``, ``disc_layout``).
    """

    def __init__(self, latent_dim: int = 2, width: int = 128, depth: int = 3, data_dim: int = 2, activation: str = "relu"):
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.width = check_int(width, "width")
        self.depth = check_int(depth, "depth")
        self.data_dim = check_int(data_dim, "data_dim")
        self.activation = activation
        self.generator = DenseStack("G", self.latent_dim, self.width, self.depth, self.data_dim, activation)
        self.discriminator = DenseStack("D", self.data_dim, self.width, self.depth, 1, activation)
        self.gen_layout = Layout(tuple(self.generator.specs()))
        self.disc_layout = Layout(tuple(self.discriminator.specs()))

    def init(self, rng=None, dtype=np.float32):
        """Fresh ``(gen_params, disc_params)``, both drawn from ``rng`` (generator first)."""
        gen = as_rng(rng)
        return Params.init(self.gen_layout, gen, dtype), Params.init(self.disc_layout, gen, dtype)

    def generate(self, gen_params: Params, z: np.ndarray) -> np.ndarray:
        """:math:`G_\\theta(z)`: (M, latent_dim) -> (M, data_dim)."""
        return self.generator.forward(gen_params, z)[0]

    def loss_d(self, gen_params, disc_params, x_real, z, grads=None) -> float:
        """:math:`L_D` on real points x_real (N, data_dim) and fakes G(z); adds dL_D/dphi into ``grads``."""
        x_fake = self.generate(gen_params, z)  # (M, D); the generator is fixed in this step
        l_real, c_real = self.discriminator.forward(disc_params, x_real)  # (N, 1)
        l_fake, c_fake = self.discriminator.forward(disc_params, x_fake)  # (M, 1)
        loss, d_real, d_fake = discriminator_loss(l_real, l_fake)
        if grads is not None:
            self.discriminator.backward(disc_params, grads, c_real, d_real, need_dx=False)
            self.discriminator.backward(disc_params, grads, c_fake, d_fake, need_dx=False)
        return loss

    def loss_g(self, gen_params, disc_params, z, grads=None) -> float:
        """:math:`L_G` at latents z (M, latent_dim); adds dL_G/dtheta into ``grads`` (phi untouched)."""
        x_fake, c_gen = self.generator.forward(gen_params, z)  # (M, D)
        l_fake, c_disc = self.discriminator.forward(disc_params, x_fake)  # (M, 1)
        loss, d_fake = generator_loss(l_fake)
        if grads is not None:
            dx = self.discriminator.backward(disc_params, None, c_disc, d_fake, need_dx=True)  # input VJP only
            self.generator.backward(gen_params, grads, c_gen, dx, need_dx=False)
        return loss

    def sample(self, gen_params: Params, n: int, rng=None) -> np.ndarray:
        """``n`` points :math:`G_\\theta(z)`, :math:`z\\sim\\mathcal N(0,I)` drawn from ``rng`` (float64 draw)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        z = as_rng(rng).standard_normal((int(n), self.latent_dim)).astype(gen_params.dtype)  # (n, latent)
        return self.generate(gen_params, z)

    def config(self) -> dict:
        return {
            "latent_dim": self.latent_dim,
            "width": self.width,
            "depth": self.depth,
            "data_dim": self.data_dim,
            "activation": self.activation,
        }

    def __repr__(self):
        return f"GAN({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


@dataclass
class GANResult:
    """What :func:`train_gan` returns: the model, both parameter buffers and the loss curves."""

    gan: GAN
    gen_params: Params
    disc_params: Params
    losses_d: np.ndarray
    losses_g: np.ndarray
    seed: int
    time_s: float
    settings: dict = field(default_factory=dict)

    def sample(self, n: int, rng=None) -> np.ndarray:
        return self.gan.sample(self.gen_params, n, rng)


def sample(model, n: int, rng=None, gen_params: Params | None = None) -> np.ndarray:
    """``n`` generated points from a :class:`GANResult`, or from a :class:`GAN` and its ``gen_params``."""
    if isinstance(model, GANResult):
        return model.sample(n, rng)
    if isinstance(model, GAN):
        if not isinstance(gen_params, Params):
            raise TypeError("sample(gan, n, rng, gen_params): gen_params must be the generator's Params")
        return model.sample(gen_params, n, rng)
    raise TypeError(f"model must be a GANResult or a GAN, got {type(model).__name__}")


# --------------------------------------------------------------------- training
def _data_source(data, data_dim, batch_size):
    """``draw(gen, n) -> (n, data_dim)`` float64 batches from an array, a ``.sample(n, rng)`` object or a callable."""
    if hasattr(data, "sample") or callable(data):
        fn = data.sample if hasattr(data, "sample") else data

        def draw(gen, n):
            x = np.asarray(fn(n, gen), dtype=np.float64)
            if x.shape != (n, data_dim) or not np.all(np.isfinite(x)):
                raise ValueError(f"data sampler must return finite points of shape ({n}, {data_dim}), got {x.shape}")
            return x

        return draw
    x = np.asarray(data)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"data must be a real array (N, {data_dim}), a sampler with .sample(n, rng), or a callable; got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != data_dim:
        raise ValueError(f"data must have shape (N, {data_dim}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("data must hold at least one point, got 0")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"data must be finite, got {int(np.sum(~np.isfinite(x)))} non-finite value(s)")
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size must be <= the number of data points ({x.shape[0]}), got {batch_size}")
    x = x.astype(np.float64, copy=False)
    return lambda gen, n: x[gen.choice(x.shape[0], n, replace=False)]


def train_gan(
    data,
    steps: int = 5000,
    batch_size: int = 256,
    lr: float = 2e-4,
    seed: int = 0,
    *,
    gan: GAN | None = None,
    latent_dim: int = 2,
    width: int = 128,
    depth: int = 3,
    activation: str = "relu",
    betas=(0.5, 0.999),
    lr_d: float | None = None,
    d_steps: int = 1,
    init=None,
    dtype=np.float32,
    progress=None,
) -> GANResult:
    r"""Train a GAN by alternating Adam steps (Goodfellow et al. 2014, Algorithm 1, with Adam).

    Step k, with ``gen = np.random.default_rng([seed, 2, k])``:

    1. ``d_steps`` times: draw a real batch x (N = ``batch_size``) and
       :math:`z\sim\mathcal N(0,I)`; one Adam step on :math:`L_D` in
       :math:`\phi` (generator fixed);
    2. draw fresh z; one Adam step on the non-saturating :math:`L_G` in
       :math:`\theta`, the gradient passing through the just-updated
       discriminator's input VJP (:math:`\phi` fixed).

    Initial weights come from ``default_rng([seed, 1, 0])``. A run is a pure
    function of its arguments.

    Parameters
    ----------
    data : array (N, data_dim), or an object with ``.sample(n, rng)`` (e.g. a
        :class:`~refdiff.analytic.GaussianMixture`), or a callable ``f(n, rng)``
        Real batches: rows drawn without replacement from an array, fresh
        draws from a sampler.
    steps, batch_size : int
    lr : float
        Generator step size (and discriminator's unless ``lr_d`` is given).
    seed : int
    gan : GAN or None
        The architecture; None builds ``GAN(latent_dim, width, depth, data_dim, activation)``
        with data_dim taken from the data.
    betas : (float, float)
        Adam's betas for both networks; (0.5, 0.999) as in DCGAN.
    d_steps : int
        Discriminator steps per generator step (``losses_d`` records the last).
    init : (Params, Params) or None
        Starting ``(gen_params, disc_params)`` (copied), e.g. to continue a run.
    dtype : float32 or float64
    progress : bool or None
        Progress line on stderr; None shows it only when stderr is a terminal.

    Returns
    -------
    GANResult

    Raises
    ------
    ValueError
        On empty or non-finite data, a batch larger than the data, bad sizes.
    RuntimeError
        If a loss becomes non-finite (naming the step).
    """
    steps, batch_size = check_int(steps, "steps"), check_int(batch_size, "batch_size")
    d_steps = check_int(d_steps, "d_steps")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if gan is None:
        if hasattr(data, "sample") or callable(data):
            data_dim = int(getattr(data, "dim", 2))
        else:
            shape = np.shape(data)
            data_dim = int(shape[1]) if len(shape) == 2 else 2
        gan = GAN(latent_dim, width, depth, data_dim, activation)
    draw = _data_source(data, gan.data_dim, batch_size)
    if init is None:
        pg, pd = gan.init(np.random.default_rng([int(seed), _TAG_INIT, 0]), dtype)
    else:
        pg, pd = (Params(lay, np.array(p.flat, dtype=dtype)) for lay, p in zip((gan.gen_layout, gan.disc_layout), init))
    gg, gd = pg.zeros_like(), pd.zeros_like()
    lr_d = lr if lr_d is None else lr_d
    opt_g, opt_d = Adam(pg, lr=lr, betas=betas), Adam(pd, lr=lr_d, betas=betas)
    losses_d, losses_g = np.empty(steps), np.empty(steps)
    bar = ProgressLine(steps, "train_gan", enabled=progress)
    t0 = time.perf_counter()
    try:
        for k in range(steps):
            gen = np.random.default_rng([int(seed), _TAG_STEP, k])
            # 1. discriminator: descend L_D in phi
            for _ in range(d_steps):
                x_real = draw(gen, batch_size).astype(dtype, copy=False)  # (N, D)
                z = gen.standard_normal((batch_size, gan.latent_dim)).astype(dtype)  # (M, latent)
                gd.flat[...] = 0.0
                losses_d[k] = gan.loss_d(pg, pd, x_real, z, gd)
                if not math.isfinite(losses_d[k]):
                    raise RuntimeError(f"train_gan: the discriminator loss is {losses_d[k]} at step {k} (lower lr?)")
                opt_d.step(pd, gd)
            # 2. generator: descend the non-saturating L_G in theta through D's input VJP
            z = gen.standard_normal((batch_size, gan.latent_dim)).astype(dtype)
            gg.flat[...] = 0.0
            losses_g[k] = gan.loss_g(pg, pd, z, gg)
            if not math.isfinite(losses_g[k]):
                raise RuntimeError(f"train_gan: the generator loss is {losses_g[k]} at step {k} (lower lr?)")
            opt_g.step(pg, gg)
            bar.update(k + 1, L_D=float(losses_d[k]), L_G=float(losses_g[k]))
    finally:
        bar.close()
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": float(lr),
        "lr_d": float(lr_d),
        "betas": [float(b) for b in betas],
        "d_steps": d_steps,
        "dtype": dtype.name,
        **gan.config(),
    }
    return GANResult(gan, pg, pd, losses_d, losses_g, int(seed), time.perf_counter() - t0, settings)


# ----------------------------------------------------------------- mode coverage
def mode_coverage_table(samples_by_name: dict, mixture, min_weight: float = 0.01, alpha: float = 1e-4) -> list:
    r"""Mode coverage of several samplers' outputs on one Gaussian mixture, one row per sampler.

    Each row is a dict: ``name``; ``weights`` (:func:`~refdiff.metrics.mode_weights`,
    shape (K,)); ``max_weight_error`` (:math:`\max_k|\hat w_k-w_k|`);
    ``modes_found`` (components with :math:`\hat w_k\ge` ``min_weight``);
    ``modes_collapsed`` (K minus that); ``far_from_modes``
    (:func:`~refdiff.metrics.far_from_modes` at ``alpha``); ``n`` (sample size).
    The first row, ``"target"``, holds the mixture's own weights.
    """
    K = mixture.n_components
    rows = [
        {
            "name": "target",
            "weights": np.asarray(mixture.weights, dtype=np.float64),
            "max_weight_error": 0.0,
            "modes_found": int(np.sum(mixture.weights >= min_weight)),
            "modes_collapsed": int(np.sum(mixture.weights < min_weight)),
            "far_from_modes": float("nan"),
            "n": None,
        }
    ]
    for name, x in samples_by_name.items():
        w = mode_weights(x, mixture)
        found = int(np.sum(w >= min_weight))
        rows.append(
            {
                "name": str(name),
                "weights": w,
                "max_weight_error": float(np.max(np.abs(w - mixture.weights))),
                "modes_found": found,
                "modes_collapsed": K - found,
                "far_from_modes": far_from_modes(x, mixture, alpha=alpha),
                "n": int(np.shape(x)[0]),
            }
        )
    return rows


def format_mode_coverage(rows: list) -> str:
    """Plain-text table of :func:`mode_coverage_table` rows (one line per sampler)."""
    K = len(rows[0]["weights"])
    head = f"{'name':<14}" + "".join(f"{'w' + str(k):>7}" for k in range(K)) + f"{'max|dw|':>9}{'found':>7}{'far':>8}"
    lines = [head]
    for r in rows:
        far = "" if math.isnan(r["far_from_modes"]) else f"{r['far_from_modes']:.4f}"
        lines.append(
            f"{r['name'][:14]:<14}"
            + "".join(f"{w:7.3f}" for w in r["weights"])
            + f"{r['max_weight_error']:9.3f}{r['modes_found']:>4d}/{K:<2d}{far:>8}"
        )
    return "\n".join(lines)
