r"""CuPy twins of :meth:`refdiff.analytic.GaussianMixture.score` and ``log_prob`` (kernels/mixture_score.cu).

Reference twin: ``GaussianMixture._stream`` in refdiff/analytic.py. Same
arguments and semantics, on CuPy arrays:

    mixture_score(mixture, x, process=None, t=None)     -> (N, D), x's dtype
    mixture_log_prob(mixture, x, process=None, t=None)  -> (N,),   x's dtype

One thread per particle evaluates every component in x's dtype (float32 or
float64; other float dtypes are computed in float64 and cast back) with an
online log-sum-exp, its point and running score in registers (the kernel's
instance for the smallest register bound in ``MAXDS`` that holds D; beyond
them one that works in memory). Per-component data (log weights, means,
eigenvalues and eigenvectors of :math:`\Sigma_k`) and
:math:`\gamma_t,\sigma_t^2` are computed in float64 on the host and cast once;
for one t so are the component constants :math:`\gamma_t\mu_k`, :math:`1/c_k`
and the log normalisers, which the kernel otherwise forms per row. The common
case, one t with isotropic or diagonal covariances and D <= 64, has a kernel of
its own (``mixture_score_diag``, bounds ``DIAG_MAXDS``): no run-time branch on
the kind or on t, its constants in zero-padded rows, the log-sum-exp rescaled
only at a new running max, and float32's exp by ``__expf`` (an error that grows
with the logit's size, as the logit's own float32 rounding does). The module
is compiled once per process (``cupy.RawModule`` with ``name_expressions``),
on first use; importing this file imports no CuPy. Where some :math:`c_k` lies
below float32's smallest normal number, float32 points are evaluated in
float64 (:math:`1/c_k` overflows float32, and CuPy compiles with
``-ftz=true``, which reads a subnormal as 0), and where it lies below
float64's, by the general kernel with the constants formed per thread, which
divides by :math:`c_k` as the reference does. Scalars are passed as NumPy
scalars of the kernels' exact parameter types (CuPy does not check kernel
argument types).

Requires a ``gpu-cuda12`` or ``gpu-cuda13`` extra (``pip install "refdiff[gpu-cuda12]"``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["mixture_score", "mixture_log_prob", "NAME_EXPRESSIONS", "MAXDS", "DIAG_MAXDS", "name_expression"]

SOURCE = Path(__file__).with_name("mixture_score.cu")
#: Register bounds the kernel is instantiated for (0: any D, in memory).
MAXDS = (4, 16, 32, 64, 0)
_THREADS = 128
_KIND = {"isotropic": 0, "diagonal": 1, "full": 2}
_LOG_2PI = float(np.log(2.0 * np.pi))


#: Register bounds of ``mixture_score_diag``, the kernel for one t and isotropic or diagonal covariances.
DIAG_MAXDS = (2, 4, 8, 16, 32, 64)


def name_expression(dtype, D: int, diag: str | None = None) -> str:
    """The template instance for a dtype and dimension, e.g. ``mixture_score<float, 4>`` for D = 3; with
    ``diag`` the covariances' kind, "isotropic" or "diagonal" (one t, D <= 64), e.g.
    ``mixture_score_diag<float, 4, true>`` for isotropic ones."""
    t = "float" if np.dtype(dtype) == np.float32 else "double"
    if diag is not None:
        iso = {"isotropic": "true", "diagonal": "false"}[diag]
        return f"mixture_score_diag<{t}, {next(m for m in DIAG_MAXDS if m >= D)}, {iso}>"
    maxd = next(m for m in MAXDS if m == 0 or m >= D)
    return f"mixture_score<{t}, {maxd}>"


#: Every instance the module builds: the kernels for each dtype and bound, and the far-point pass for each dtype.
NAME_EXPRESSIONS = tuple(f"mixture_score<{t}, {m}>" for t in ("float", "double") for m in MAXDS) + \
    tuple(f"mixture_score_diag<{t}, {m}, {iso}>" for t in ("float", "double") for m in DIAG_MAXDS
          for iso in ("true", "false")) + \
    ("mixture_score_far<float>", "mixture_score_far<double>")


@functools.cache
def _module():
    import cupy

    return cupy.RawModule(code=SOURCE.read_text(), options=("-std=c++17",), name_expressions=NAME_EXPRESSIONS)


def _kernel(dtype, D, diag=None):
    return _module().get_function(name_expression(dtype, D, diag))


def one_t_constants(log_w, mu, lam, gamma, var):
    """Host float64 ``(gamma mu_k, 1 / c_k, ln_k)`` of one t: (K, D), (K, D), (K,), with c_k = gamma^2 lam_k +
    var and ln_k = log w_k - (D log 2 pi + sum_i log c_ki) / 2, the kernel's constants when n_t == 1."""
    c = gamma * gamma * lam + var
    D = mu.shape[1]
    return gamma * mu, 1.0 / c, log_w - 0.5 * (D * _LOG_2PI + np.sum(np.log(c), axis=1))


def _prepare(mixture, x, process, t, want_score, general=False):
    """Check the arguments, form the constants and fill the device buffers of one evaluation.

    Returns ``(launch, finish)``: ``launch()`` enqueues the kernels; ``finish()`` raises ValueError if x holds
    NaN or infinity and otherwise returns the result (score (N, D) or log p (N,), in the checked points'
    dtype: float16 in, float16 out). Apart so that a benchmark can time the kernels alone; every launch of
    one prepared evaluation writes the same result. ``mixture_score_diag`` checks x as it reads it (finish
    reads its flag); before the general kernel x is checked here. ``general`` takes the general kernel in
    the diag kernel's case too (benchmarks/gpu.py times both, the tests hold them to each other).
    """
    import cupy

    from refdiff.analytic import _check_points, _process_coefs, _smallest_variance
    from refdiff.backend import check_finite, per_example

    x = _check_points(x, mixture.dim, finite=False)
    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"the cupy twin takes CuPy arrays, got {type(x).__module__}.{type(x).__qualname__}")
    gamma, var = _process_coefs(process, t)
    per_example(gamma, x, "t")  # shape check of a per-example t
    log_w, mu, lam, U = mixture._active_arrays
    c_min = _smallest_variance(lam, gamma, var)
    # float32 where every c_k is a normal float32 number; else float64: 1 / c_k overflows float32 there, and CuPy
    # compiles with -ftz=true, so float32 arithmetic would see a subnormal c_k as 0
    single = x.dtype == np.float32 and c_min >= np.finfo(np.float32).tiny
    kdtype = np.dtype(np.float32) if single else np.dtype(np.float64)
    # 1 / c_k overflows even float64 (c_k subnormal): each thread divides by c_k, formed from gamma and var
    divide = not c_min >= np.finfo(kdtype).tiny
    xk = cupy.ascontiguousarray(x, dtype=kdtype)
    N, D = xk.shape
    n_t = gamma.shape[0] if gamma.ndim else 1  # values of gamma and var given to the kernel
    K = log_w.shape[0]
    # mixture_score_diag's case (its row offsets k * MAXD are 32-bit)
    diag = not general and not divide and n_t == 1 and mixture.kind != "full" and D <= DIAG_MAXDS[-1] and \
        K * DIAG_MAXDS[-1] < 2**31
    if not diag:
        check_finite(x, "x")
    U = np.zeros((1,)) if U is None else U

    def dev(a):  # host float64 -> device, kernel dtype, C-contiguous
        return cupy.asarray(np.ascontiguousarray(a, dtype=np.float64).astype(kdtype))

    g = dev(np.reshape(gamma, (n_t,)))
    v = dev(np.broadcast_to(var, (n_t,)))
    if n_t == 1 and not divide:  # one t (also a per-row t of one row): the kernel reads these
        gmu, ic, ln = one_t_constants(log_w, mu, lam, float(np.reshape(gamma, ())), float(np.reshape(var, ())))
    else:  # the kernel forms them per row; these are not read
        gmu = ic = ln = np.zeros(1)
    score = cupy.empty((N, D) if want_score else (1, D), dtype=kdtype)  # never read when not wanted
    logp = cupy.empty((N,), dtype=kdtype)
    bad = cupy.zeros((1,), dtype=np.int32) if diag else None  # mixture_score_diag's flag: x held NaN or infinity

    def finish():
        if diag and N and int(bad.get()[0]):
            check_finite(x, "x")  # raises, counting the values
        return (score if want_score else logp).astype(x.dtype, copy=False)

    if not N:
        return (lambda: None), finish
    args = (
        xk, g, v, np.int64(0 if divide and n_t == 1 else n_t),  # n_t = 0: one t, the constants formed per thread
        dev(log_w), dev(mu), dev(lam), dev(U), dev(gmu), dev(ic), dev(ln),
        np.int64(_KIND[mixture.kind]), np.int64(N), np.int64(K), np.int64(D), np.int64(bool(want_score)),
        score, logp,
    )  # fmt: skip
    grid = ((N + _THREADS - 1) // _THREADS,)
    far = _module().get_function(f"mixture_score_far<{'float' if kdtype == np.float32 else 'double'}>")
    if diag:  # the common case's kernel, its constants in rows of its register bound, zero past D
        pad = next(m for m in DIAG_MAXDS if m >= D) - D
        kernel = _kernel(kdtype, D, diag=mixture.kind)
        kernel_args = (xk, dev(np.pad(gmu, ((0, 0), (0, pad)))), dev(np.pad(ic, ((0, 0), (0, pad)))), args[10],
                       np.int64(N), np.int32(K), np.int32(D), np.int32(bool(want_score)), score, logp, bad)  # fmt: skip
    else:
        kernel, kernel_args = _kernel(kdtype, D), args

    def launch():
        kernel(grid, (_THREADS,), kernel_args)
        if want_score:  # points whose every quadratic form overflowed (log p = -inf): one launch, no host sync
            far(grid, (_THREADS,), args)

    return launch, finish


def _evaluate(mixture, x, process, t, want_score):
    launch, finish = _prepare(mixture, x, process, t, want_score)
    launch()
    return finish()


def mixture_score(mixture, x, process=None, t=None):
    r"""CuPy twin of :meth:`GaussianMixture.score <refdiff.analytic.GaussianMixture.score>`: :math:`\nabla_x\log p_t(x)`, (N, D)."""
    return _evaluate(mixture, x, process, t, True)


def mixture_log_prob(mixture, x, process=None, t=None):
    r"""CuPy twin of :meth:`GaussianMixture.log_prob <refdiff.analytic.GaussianMixture.log_prob>`: :math:`\log p_t(x)`, (N,)."""
    return _evaluate(mixture, x, process, t, False)
