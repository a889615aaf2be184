"""refdiff.kernels: fused twins of refdiff's hot loops.

This folder is installed as the subpackage ``refdiff.kernels`` (setup.py maps
it). It holds Numba CPU kernels, CUDA ``.cu`` sources and the CuPy launchers
that compile and run them. Every kernel names its reference twin in
``refdiff/``, keeps that function's signature and semantics, and is tested
against it; the reference is the specification.

No kernel is filled in yet. Importing this package imports nothing heavy:
Numba and CuPy are imported only inside the kernel modules that need them.
"""

__all__ = []
