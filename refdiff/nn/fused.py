r"""The MLP training step's products and fused elementwise steps: the references of ``refdiff.kernels.mlp_numba``.

:func:`matmul` is NumPy's product (BLAS); its twin forms the products as
register tiles on Numba's threads where that pays (CPUs with 512-bit vectors,
workers that spin between kernels), and hands them to BLAS elsewhere. The
rest is elementwise work over the (N, W) activations and over the flat
parameter buffer. NumPy does each of those in several single-threaded passes
(bias add, ``tanh``, two multiplies, the residual add); the Numba twins do the
same arithmetic in fewer passes (on every core for large arrays where that is
safe: ``refdiff.kernels.mlp_numba.runs_parallel``). These functions are the
specification: the twins take the same arguments, in the same order, and
give the same numbers (the products to rounding: another order of sums).

=========================  =====================================================  ===========================
function                   computes                                               twin differs by
=========================  =====================================================  ===========================
``matmul``                 :math:`ab` (2-D)                                        the order of the sums
``bias_silu_forward``      :math:`a \leftarrow a + b`, :math:`s = \sigma(a)`,      :math:`\sigma`'s rounding
                           :math:`h = r + a\,s` (residual :math:`r` optional)
``bias_silu_backward``     :math:`g \leftarrow g + g_2` (optional),               ``db``: summation order
                           :math:`\delta = g\,(s + y(1 - s))`, :math:`y = a s`,   (rows summed blockwise)
                           :math:`db \mathrel{+}= \sum_n \delta_n`
``adam_update``            one step of :class:`~refdiff.nn.optim.Adam`           nothing (same bits)
``sinusoidal_embedding``   :math:`[\cos u\omega_k, \sin u\omega_k]`               cos, sin: 1 ulp in float64,
                           (the layers' time features)                            then rounded to the dtype
=========================  =====================================================  ===========================

Here :math:`\sigma(a) = \tfrac12 + \tfrac12\tanh(a/2)` exactly as
:func:`refdiff.nn.layers.sigmoid` computes it (exact to about an ulp of 1/2:
no overflow, but no relative accuracy where :math:`\sigma \ll 1`). The twin
computes :math:`1/(1 + e)` or :math:`e/(1 + e)` with :math:`e = \exp(-|a|)`
in one vectorised pass, within 4 ulp of :math:`\sigma` everywhere, so the
two differ by about an ulp of 1/2 in :math:`s` (NumPy's ``np.tanh`` is a
pass of its own, and a slow one on AVX2 CPUs). Every constant
is cast to the array's dtype first, as NumPy does with a Python scalar, so
float32 stays float32 throughout.

``backend`` everywhere is ``"numpy"`` (these functions), ``"numba"``
(``refdiff.kernels.mlp_numba``, the ``fast`` extra) or ``"auto"``: Numba when
it is installed and the arrays hold at least :data:`AUTO_MIN_SIZE` values,
NumPy otherwise. The twins go parallel only where that pays and Numba's
workers do not spin beside BLAS's threads (:func:`numba_yields_to_blas`).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .layers import sigmoid, sinusoidal_embedding

__all__ = [
    "matmul",
    "bias_silu_forward",
    "bias_silu_backward",
    "adam_update",
    "sinusoidal_embedding",
    "BACKENDS",
    "AUTO_MIN_SIZE",
    "check_backend",
    "elementwise",
]

#: Backend names accepted by the MLP and Adam.
BACKENDS = ("numpy", "numba", "auto")

#: "auto" picks Numba from this many values per array on (activations N*W, or
#: the parameter buffer for Adam). On the calling thread (where
#: ``refdiff.kernels.mlp_numba.runs_parallel`` keeps them at these sizes) the twins beat
#: NumPy's several passes at every size measured, float32 on 2 cores: forward
#: plus backward of a layer 4.4 against 6.8 us at 8 values, 25.6 against 38.7 at
#: 16k; Adam 1.9 against 4.4 us at 10 values, 14.9 against 52.2 at 38k. The
#: threshold only spares a small one-off call Numba's import.
AUTO_MIN_SIZE = 4096


def matmul(a, b):
    """:math:`ab` for 2-D arrays: ``a @ b`` (NumPy's BLAS). The reference of the MLP step's products."""
    return a @ b


def bias_silu_forward(a, b=None, residual=None):
    r"""Bias, SiLU and residual in place of the pre-activation: returns ``(h, s)``.

    Parameters
    ----------
    a : (N, W) array
        :math:`xW`; overwritten with :math:`a + b` (the cache of the backward pass).
    b : (W,) array or None
    residual : (N, W) array or None
        :math:`r` in :math:`h = r + \phi(a)`.

    Returns
    -------
    h : (N, W) new array, :math:`r + a\,\sigma(a)` (or :math:`a\,\sigma(a)`)
    s : (N, W) new array, :math:`\sigma(a)`
    """
    if b is not None:
        a += b  # (N, W) + (W,)
    s = sigmoid(a)
    h = a * s
    if residual is not None:
        h += residual
    return h, s


def bias_silu_backward(dh, a, s, db=None, dh_add=None):
    r"""Gradient through :math:`h = r + a\,\sigma(a)` with respect to :math:`a`; returns a new (N, W) array.

    :math:`\partial(a\sigma)/\partial a = \sigma + a\sigma(1-\sigma) = s + y(1 - s)`
    with :math:`y = a s` (the form of :class:`refdiff.nn.layers.SiLU`).

    Parameters
    ----------
    dh : (N, W) array, :math:`\partial L/\partial h`
    a, s : (N, W) arrays from :func:`bias_silu_forward`
    db : (W,) array or None
        The bias gradient, incremented in place by :math:`\sum_n \delta_n`.
    dh_add : (N, W) array or None
        Added into ``dh`` in place first (a residual branch's gradient), so
        that ``dh`` leaves holding the total.
    """
    if dh_add is not None:
        dh += dh_add
    y = a * s
    da = 1.0 - s  # s + y (1 - s): no cancellation where s rounds to 1 (see layers.SiLU)
    da *= y
    da += s
    da *= dh
    if db is not None:
        # a GEMV with ones: 2-3x faster than da.sum(axis=0) over the rows
        db += np.ones(da.shape[0], dtype=da.dtype) @ da
    return da


def adam_update(theta, g, m, v, lr, beta1, beta2, eps, weight_decay, step, tmp=None):
    r"""One Adam(W) step in place on the 1-D buffers ``theta``, ``m``, ``v`` (Kingma & Ba 2015, Alg. 1).

    .. math::

        m &\leftarrow \beta_1m + (1-\beta_1)g, \qquad
        v \leftarrow \beta_2v + (1-\beta_2)g^2, \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \frac{\eta}{1-\beta_1^k}\,
        \frac{m}{\sqrt v/\sqrt{1-\beta_2^k} + \epsilon}

    ``step`` is k, 1-based (the step being taken). ``tmp`` is an optional
    scratch buffer like ``theta``. This is :meth:`refdiff.nn.optim.Adam.step`'s
    arithmetic, operation for operation.
    """
    if tmp is None:
        tmp = np.empty_like(theta)
    # b1 m + (1 - b1) g, each product rounded, as torch forms v: m + (1 - b1)(g - m) was one pass less, but where
    # beta = 0 and the old moment is much larger than the new, g^2 - v rounds to -v and v to 0 (a step lr m / eps)
    m *= beta1
    np.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp
    if weight_decay:
        theta *= 1.0 - lr * weight_decay
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    # theta -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)  (PyTorch's form of eps)
    np.sqrt(v, out=tmp)
    tmp *= 1.0 / math.sqrt(bc2)
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= lr / bc1
    theta -= tmp


# --- dispatch ------------------------------------------------------------------


def check_backend(backend) -> str:
    """``backend`` if it is one of :data:`BACKENDS`; ImportError for "numba" without Numba."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and not numba_available():
        raise ImportError('backend="numba" needs Numba, which is not installed: pip install "refdiff[fast]"')
    return backend


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def numba_yields_to_blas() -> bool:
    """Whether Numba's parallel workers sleep between kernels, leaving the cores to NumPy's BLAS threads.

    The MLP's and the U-Net's twins run between matrix products. Under
    Numba's default OpenMP layer the workers spin after each kernel while
    OpenBLAS's threads start the next product: the float32 MLP step at
    width 128, batch 4096 took 66.8 ms on 2 cores with always-parallel
    twins against 10.8 ms in NumPy, and 8.7 ms once the workers slept
    (``OMP_WAIT_POLICY=PASSIVE`` or ``NUMBA_THREADING_LAYER=workqueue``).
    True for one Numba thread, the workqueue layer, or OpenMP with a passive
    wait policy; False otherwise (TBB's is not measured here). Where it is
    False the U-Net's twins stay on the calling thread, and so do the MLP's
    unless its products are register tiles on the same workers
    (``runs_parallel`` in :mod:`refdiff.kernels.mlp_numba` and
    :mod:`refdiff.kernels.conv_numba`).
    Reads Numba's configuration and the environment on every call (no state
    of its own). OpenMP reads ``OMP_WAIT_POLICY`` once, when it loads (at
    the first Numba kernel, serial ones included): a value set in the
    process after that is believed here but not in effect.
    """
    import os

    import numba

    if numba.config.NUMBA_NUM_THREADS == 1:
        return True
    layer = numba_threading_layer()
    if layer == "workqueue":
        return True
    return layer == "omp" and os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


def numba_threading_layer() -> str:
    """The threading layer Numba's parallel kernels use: the one loaded once a parallel kernel has run, else the
    one the first will load (``NUMBA_THREADING_LAYER``, its "default" and safety choices resolved as Numba
    resolves them here: TBB where installed, else OpenMP)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        layer = numba.config.THREADING_LAYER
        if layer in ("default", "threadsafe", "forksafe", "safe"):
            layer = "tbb" if importlib.util.find_spec("tbb") is not None else "omp"
        return layer


def numba_chosen(backend: str, size: int, min_size: int) -> bool:
    """Whether ``backend`` puts a call with ``size`` values on a Numba twin: always for "numba", from
    ``min_size`` values with Numba installed for "auto"."""
    return backend == "numba" or (backend == "auto" and size >= min_size and numba_available())


def elementwise(backend: str, size: int):
    """The module whose ``bias_silu_*``/``adam_update``/``sinusoidal_embedding`` a call with ``size`` values per
    array uses."""
    if numba_chosen(backend, size, AUTO_MIN_SIZE):
        from ..kernels import mlp_numba

        return mlp_numba
    import sys

    return sys.modules[__name__]
