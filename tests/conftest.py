"""Shared test configuration: hypothesis profiles, generic fixtures, GPU skips.

Hypothesis profiles
-------------------
``ci``        derandomized, 200 examples, no deadline (CI sets ``CI``)
``dev``       50 random examples, no deadline (the default elsewhere)
``thorough``  1000 random examples, no deadline

``REFDIFF_HYPOTHESIS_PROFILE`` picks one by name; without it the profile is
``ci`` when the environment variable ``CI`` is non-empty and ``dev`` otherwise.
"""

import functools
import importlib
import importlib.util
import os
import sys

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the `test` extra is not installed: no profiles to register
    settings = None

if settings is not None:
    settings.register_profile(
        "ci",
        derandomize=True,
        deadline=None,
        max_examples=200,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    # Explicitly random: Hypothesis derandomizes its own default profile
    # whenever a CI variable exists, even an empty one.
    settings.register_profile("dev", max_examples=50, deadline=None, derandomize=False)
    settings.register_profile("thorough", max_examples=1000, deadline=None, derandomize=False)
    _default_profile = "ci" if os.environ.get("CI") else "dev"
    settings.load_profile(os.environ.get("REFDIFF_HYPOTHESIS_PROFILE") or _default_profile)


# --- generic fixtures --------------------------------------------------------

_STRICT_MISSING = importlib.util.find_spec("array_api_strict") is None


@pytest.fixture(
    params=[
        "numpy",
        pytest.param(
            "array_api_strict",
            marks=pytest.mark.skipif(
                _STRICT_MISSING,
                reason="array_api_strict is not installed (pip install -e '.[test]')",
            ),
        ),
        pytest.param("cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request):
    """The array namespace module a test body runs on: numpy, array_api_strict, and cupy (marked ``gpu``)."""
    return importlib.import_module(request.param)


@pytest.fixture(params=["float32", "float64"])
def float_dtype(request):
    """The name of a floating dtype: ``getattr(xp, float_dtype)`` gives the dtype."""
    return request.param


# --- GPU tests ---------------------------------------------------------------


@functools.cache
def _gpu_unavailable_reason():
    """Why GPU tests cannot run here, or None when a CUDA device is visible.

    A device is detected with ``cupy.cuda.runtime.getDeviceCount()``: ``import
    cupy`` alone succeeds on machines without a driver or a device.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        return f"no CUDA device: getDeviceCount() failed ({type(exc).__name__}: {exc})"
    if count < 1:
        return "no CUDA device: getDeviceCount() returned 0"
    return None


def pytest_runtest_setup(item):
    """Skip ``gpu``-marked tests, with the reason, where no CUDA device is found.

    The check runs once, and only when a gpu test is actually about to run.
    """
    if item.get_closest_marker("gpu") is not None:
        reason = _gpu_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def cuda_host(monkeypatch):
    """kernels/*.cu run on the host: ``import cupy`` gives the stand-in of tests/cuda_host.py for the test.

    The launchers' cached modules are dropped before and after, so they are built by the stand-in here and
    by the real CuPy (if any) elsewhere. Skips, saying why, without a host C++ compiler.
    """
    import cuda_host as host

    if host.find_cxx() is None:
        pytest.skip("no host C++ compiler (g++, c++ or clang++): cannot run kernels/*.cu on the host")
    from refdiff.kernels import fused_cupy, mixture_cupy

    launchers = (fused_cupy, mixture_cupy)
    for launcher in launchers:
        launcher._module.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", host.host_cupy())
    yield host.host_cupy()
    for launcher in launchers:
        launcher._module.cache_clear()


@pytest.fixture
def force_parallel(monkeypatch):
    """A function that makes a twin module with ``runs_parallel`` run every call on Numba's threads, whatever
    the size and threading layer, for the test (its tests then cover the serial and the parallel loops)."""

    def force(kernel_module):
        monkeypatch.setattr(kernel_module, "PARALLEL_MIN", 0)
        monkeypatch.setattr(kernel_module, "numba_yields_to_blas", lambda: True)
        assert kernel_module.runs_parallel(1)
        return kernel_module

    return force
