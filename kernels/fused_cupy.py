"""CuPy launcher of ``fused_sampler.cu``: twin of :func:`refdiff.samplers.fused.run_table` on a GPU.

Reference twin: ``refdiff/samplers/fused.py`` (``run_table``, same arguments;
the result is a CuPy array on the current device). One thread per particle
runs every table row in registers. A drawn start (``prior_std * z`` at draw 0)
is drawn by the kernel; a given ``x_T`` and the table constants are made on
the host in float64, cast to the state dtype (as the reference casts them at use) and copied once; the
.cu is compiled once per process (``cupy.RawModule`` with ``name_expressions``), specialised for
float/double, a register bound ``MAXD`` >= D (2, 4, 16 or 64; larger D is refused) and whether the
covariances are full. Scalars are passed as NumPy scalars of the kernel's exact types (CuPy does not
check them).

The kernel's ``FAR`` instances are the careful ones, at the cost of registers in every thread:

- A particle so far from every component that each quadratic form overflows the state dtype has no weight
  left in the common instance's loop; the reference takes its score from the quadratic forms scaled by a
  power of two (``GaussianMixture._far_weights``), and so do the ``FAR`` instances. The common instance runs
  first and, where the state comes out not finite, the ``FAR`` one runs again from the same start; a state
  still not finite raises.
- They divide by the variances c_k, in double, where the common ones multiply by 1 / c_k in the state
  dtype. Where some row's c_k is below that dtype's smallest normal number (1 / c_k overflows, and CuPy's
  ``-ftz=true`` reads a subnormal float as 0), only the ``FAR`` instance runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from refdiff.samplers.fused import score_constants, start_state

__all__ = ["run_table", "SOURCE", "MAXDS", "name_expression"]

SOURCE = Path(__file__).with_name("fused_sampler.cu")
#: Register bounds the kernel is instantiated for.
MAXDS = (2, 4, 16, 64)
_BLOCK = 128


def name_expression(dtype, maxd: int, full: bool = False, far: bool = False) -> str:
    """The template instance for a state dtype, register bound and covariance kind, e.g.
    ``fused_run<float, 4, false, false>``; ``full`` for full covariances (the kernel then reads their
    eigenvectors), ``far`` for the instance that takes far particles (see the module docstring)."""
    flag = {False: "false", True: "true"}
    return f"fused_run<{'float' if np.dtype(dtype) == np.float32 else 'double'}, {int(maxd)}, {flag[bool(full)]}, {flag[bool(far)]}>"


def _cupy():
    """The cupy module, or an ImportError that names the extra to install."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError("refdiff.kernels.fused_cupy needs cupy: pip install 'refdiff[gpu-cuda12]' (or gpu-cuda13)") from exc
    return cupy


@functools.cache
def _module():
    cupy = _cupy()
    names = [name_expression(dt, m, full, far) for dt in (np.float32, np.float64) for m in MAXDS for full in (False, True)
             for far in (False, True)]
    mod = cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++17",), name_expressions=names)
    mod.compile()
    return mod


def run_table(table, mixture, x_T, *, rng=None, seed=None, offset=0, dtype=None):
    """Run ``table`` on ``mixture``'s exact score on the GPU; returns a CuPy array (N, D)."""
    cupy = _cupy()

    if not isinstance(x_T, (tuple, list)) and hasattr(x_T, "__cuda_array_interface__"):
        x_T = cupy.asnumpy(x_T)
    x, noise, first = start_state(table, mixture, x_T, rng, seed, offset, dtype, draw=False)
    draw_start = first == 1  # x is unset: the kernel draws the start (the host's draw of 1e6 particles outlasts the run)
    state_dtype = x.dtype  # float32 or float64, as start_state checks
    N, D = x.shape
    maxd = next((m for m in MAXDS if m >= D), None)
    if maxd is None:
        raise ValueError(f"fused_cupy supports D <= {MAXDS[-1]}, got D = {D}")
    const = score_constants(table, mixture)
    full = const["U"] is not None
    U = const["U"] if full else np.zeros((1, 1, 1))
    coefs = np.stack([table.a, table.b, table.b_prev, table.c], axis=1)  # (R, 4)
    dev = {k: cupy.asarray(np.ascontiguousarray(v)) for k, v in (("coefs", coefs), ("draws", table.draw))}
    # the score's constants in the state dtype: the kernel computes the score in it
    with np.errstate(over="ignore"):  # 1 / c_k past float32's range: the FAR instance is the one to run then
        dev.update((k, cupy.asarray(np.ascontiguousarray(v, dtype=state_dtype))) for k, v in
                   (("means", const["means"]), ("inv_c", const["inv_c"]), ("log_norm", const["log_norm"]), ("U", U)))
    dev["c"] = cupy.asarray(const["c"])  # float64, read by the FAR instance only
    x_d = cupy.empty((N, D), dtype=state_dtype) if draw_start else cupy.asarray(np.ascontiguousarray(x))
    K = const["log_norm"].shape[1]
    grid = ((N + _BLOCK - 1) // _BLOCK,)
    rest = (dev["coefs"], dev["draws"], np.int64(first), np.uint32(noise.seed & 0xFFFFFFFF),
           np.uint32(noise.seed >> 32), np.uint64(noise.offset), dev["means"], dev["inv_c"], dev["c"],
           dev["log_norm"], dev["U"], np.int64(N), np.int32(D), np.int32(K), np.int32(table.n_rows),
           np.int32(draw_start), np.float64(table.prior_std))  # fmt: skip
    careful = not const["c"].min(initial=np.inf) >= np.finfo(state_dtype).tiny  # 1 / c_k overflows the state dtype
    if not careful:
        _module().get_function(name_expression(state_dtype, maxd, full))(grid, (_BLOCK,), (x_d,) + rest)
        if bool(cupy.all(cupy.isfinite(x_d))):
            return x_d
        if not draw_start:  # far particles, if that is what they are: again from the start (the host's copy), carefully
            x_d[...] = cupy.asarray(x)
    _module().get_function(name_expression(state_dtype, maxd, full, far=True))(grid, (_BLOCK,), (x_d,) + rest)
    if not bool(cupy.all(cupy.isfinite(x_d))):
        raise ValueError("the state became non-finite (a step too large for this target, or a score past the dtype's "
                         "range; the NumPy reference, refdiff.samplers.fused.run_table, names the row)")
    return x_d
