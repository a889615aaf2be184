"""refdiff.kernels: fused twins of refdiff's hot loops.

This folder is installed as the subpackage ``refdiff.kernels`` (setup.py maps
it). It holds Numba CPU kernels, CUDA ``.cu`` sources and the CuPy launchers
that compile and run them. Every kernel names its reference twin in
``refdiff/``, keeps that function's signature and semantics, and is tested
against it; the reference is the specification.

=====================  ================================================  ===============================
module                 twin of                                           notes
=====================  ================================================  ===============================
``mixture_numba``      ``GaussianMixture.score`` / ``log_prob``          (K, block) logits in x's dtype;
                       (``backend="numba"``)                             GEMM path at K*D >= 32, D >= 5;
                                                                         ``mixture_score_point`` per point
``_numba_math``        (no twin: shared by the Numba kernels)            branch-free exp (float32 and
                                                                         float64), log, sin/cos
``_numba_cache``       (no twin: drops Numba's cached kernels when any   Numba checks only each kernel's
                       source of this folder changes)                    own file, not what it inlines
``_numba_gemm``        (no twin: ``tile_matmul``, C = A @ B for the       register tiles of 8 x 32 float32
                       mixture's GEMM path, on AVX-512 and AVX2, and     (6 x 16 on AVX2) as LLVM IR, at
                       the U-Net's patch chunks; ``blocked_matmul`` and  the FMA peak; ``blocked_matmul``
                       the narrow products for the MLP's, on AVX-512)    over prange
``mixture_cupy`` +     the same (``backend="cupy"``)                     one thread per particle,
``mixture_score.cu``                                                     online log-sum-exp
``fused_numba``        ``refdiff.samplers.fused.run_table``              whole sampler loop per particle,
                                                                         Philox noise as refdiff.noise
``fused_cupy`` +       the same                                          D <= 64 (register bound)
``fused_sampler.cu``
``mlp_numba``          ``refdiff.nn.fused`` (MLP products, bias +        one pass per activation; products
                       SiLU + residual, its backward; Adam)              by register tiles on AVX-512;
                                                                         ``MLP(backend=)``, ``Adam(backend=)``
``conv_numba``         ``refdiff.nn.conv.group_norm_silu_forward`` /     one pass per image;
                       ``_backward`` (GroupNorm then SiLU),              ``UNet(backend=)``;
                       ``chunk_matmul``                                  chunk products by register tiles
=====================  ================================================  ===============================

Importing this package imports nothing heavy: Numba and CuPy are imported
only inside the kernel modules that need them (a Numba module without Numba
raises ImportError naming the ``fast`` extra). The ``.cu`` sources are
self-contained and compiled by the test suite with nvcc where it exists; the
CuPy launchers run only on a CUDA device (tests marked ``gpu``).
"""

__all__ = []
