"""Run the CUDA kernels of kernels/*.cu on the host, through the same launchers: a stand-in for CuPy.

The launchers (kernels/*_cupy.py) hand a .cu source to ``cupy.RawModule`` and
launch its kernels as ``kernel(grid, block, args)``. :func:`host_cupy` returns
a module that does the same on the CPU, so a machine without a GPU still runs
the kernels' code, launched the way the launchers launch it:

* ``RawModule`` compiles the source as C++17 with the host compiler, after a
  prelude that defines CUDA's qualifiers, the index variables ``threadIdx``,
  ``blockIdx``, ``blockDim``, ``gridDim`` and the intrinsics the sources call
  (``__umulhi``, ``__expf``, ``sincospi``) and vector types (``float2``, ``float4``, ``double2``), and
  exports one entry per name expression;
* a launch runs every thread of the grid in turn. That is a faithful schedule
  for kernels in which each thread touches only its own elements and which
  use no shared memory, barriers, warp functions or atomics (the prelude
  defines none of those, so a kernel that uses them does not compile here);
* every argument is checked against the kernel's parameter before the launch:
  a pointer must be a device array (:class:`DeviceArray`) of the pointee's
  type, C-contiguous; a scalar must be a NumPy scalar of the parameter's
  exact width, signedness and kind. CuPy itself checks none of this, and on a
  GPU a scalar of the wrong width shifts every later parameter;
* device arrays are NumPy arrays of a subclass that refuses to mix with host
  arrays in arithmetic (as CuPy does), and ``empty`` fills floats with NaN,
  so an output the kernel never writes does not pass for a result.

* a kernel instantiated for ``float`` (a name expression ``name<float, ...>``)
  runs with the x86 CPU's flush-to-zero and denormals-are-zero modes set, as
  CuPy compiles with ``-ftz=true``: a subnormal float operand reads as 0 and a
  subnormal result is flushed, so a kernel that needs a subnormal float fails
  here as it would on the device. The CPU's modes also cover double
  arithmetic, which the device does not flush (such an instance's double
  work, its normals and far scores, meets no subnormals in the tests).

What it does not reproduce: the device's math library (``expf``, ``log``,
``sin`` ... differ from the host's in the last ulp or two), its contraction of
``a * b + c`` into FMAs, flush-to-zero on CPUs other than x86 (a kernel's
``flushes`` says whether it runs so), timing, and anything about memory or
scheduling. The compile checks in tests/test_cuda_sources.py cover nvcc and
NVRTC; speed needs a GPU.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import importlib.machinery
import re
import shutil
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np

__all__ = ["DeviceArray", "find_cxx", "host_cupy"]

PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <math.h>
#include <string>
#include <type_traits>
#include <utility>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define REFDIFF_FLUSHES 1
#else
#define REFDIFF_FLUSHES 0
#endif

struct refdiff_dim3 { unsigned int x, y, z; };
// CUDA's vector types the kernels load rows through, with the device's alignment
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
static refdiff_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__

static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
// the device's __expf: exp2 of v log2(e) rounded to float, the rounding that makes its error grow with |v|
// (its exp2 is an approximation within 2 ulp; exp2f here is exact to about one). glibc declares a __expf of
// its own, hence the macro.
static inline float refdiff_host_expf(float v) { return exp2f(v * 1.4426950408889634f); }
#define __expf refdiff_host_expf
// sincospi(x) as sin and cos of pi x: the reference's angle, 2 pi u rounded, since 2 u is exact
static inline void refdiff_host_sincospi(double v, double* s, double* c) { *s = sin(M_PI * v); *c = cos(M_PI * v); }
#define sincospi refdiff_host_sincospi

#line 1 "{name}"
"""

EPILOGUE = r"""
// --- host entry points ------------------------------------------------------------------
template <typename T> static std::string refdiff_scalar_code() {
    static_assert(std::is_arithmetic<T>::value, "kernel parameters must be pointers or arithmetic scalars");
    const char kind = std::is_floating_point<T>::value ? 'f' : std::is_same<T, bool>::value ? 'b'
                      : std::is_signed<T>::value ? 'i' : 'u';
    return std::string(1, kind) + std::to_string(sizeof(T));
}

template <typename T> static std::string refdiff_param_code() {
    if constexpr (std::is_pointer<T>::value)
        return "P" + refdiff_scalar_code<std::remove_cv_t<std::remove_pointer_t<T>>>();
    else
        return refdiff_scalar_code<std::remove_cv_t<T>>();
}

// "Pf4,i8,u4": one code per parameter (P: pointer to), f/i/u/b and the width in bytes
template <typename... A> static std::string refdiff_signature(void (*)(A...)) {
    std::string s;
    ((s += refdiff_param_code<A>() + ","), ...);
    return s;
}

template <typename... A, std::size_t... I>
static void refdiff_call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// every thread of the grid in turn, x fastest, as one linear order of CUDA's
template <typename... A>
static void refdiff_launch(void (*f)(A...), const unsigned int* grid, const unsigned int* block, void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
    for (unsigned int by = 0; by < grid[1]; ++by)
    for (unsigned int bx = 0; bx < grid[0]; ++bx)
    for (unsigned int tz = 0; tz < block[2]; ++tz)
    for (unsigned int ty = 0; ty < block[1]; ++ty)
    for (unsigned int tx = 0; tx < block[0]; ++tx) {
        blockIdx = {bx, by, bz};
        threadIdx = {tx, ty, tz};
        refdiff_call(f, args, std::index_sequence_for<A...>{});
    }
}
"""

FLUSH = r"""
// the CPU's flush-to-zero and denormals-are-zero modes for the duration of a launch (nvcc's -ftz=true for float)
extern "C" int refdiff_flushes() { return REFDIFF_FLUSHES; }
struct refdiff_flush_scope {
#if REFDIFF_FLUSHES
    unsigned int saved;
    explicit refdiff_flush_scope(int on) : saved(_mm_getcsr()) { if (on) _mm_setcsr(saved | 0x8040u); }
    ~refdiff_flush_scope() { _mm_setcsr(saved); }
#else
    explicit refdiff_flush_scope(int) {}
#endif
};
"""

ENTRY = r"""
extern "C" const char* refdiff_signature_{i}() {{
    static const std::string s = refdiff_signature(&{name});
    return s.c_str();
}}
extern "C" void refdiff_launch_{i}(const unsigned int* grid, const unsigned int* block, void** args, int flush) {{
    refdiff_flush_scope scope(flush);
    refdiff_launch(&{name}, grid, block, args);
}}
"""


def find_cxx():
    """The host C++ compiler (g++, c++ or clang++ on PATH), or None."""
    return next((p for p in map(shutil.which, ("g++", "c++", "clang++")) if p), None)


@functools.cache
def _build_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="refdiff-cuda-host-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def host_source(code: str, names, filename: str = "kernel.cu") -> str:
    """The C++ translation unit that compiles ``code`` on the host with one entry pair per name expression."""
    entries = "".join(ENTRY.format(i=i, name=name) for i, name in enumerate(names))
    return PRELUDE.replace("{name}", filename) + code + "\n" + EPILOGUE + FLUSH + entries


@functools.cache
def _compile(code: str, names: tuple, std: str) -> ctypes.CDLL:
    cxx = find_cxx()
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++, c++ or clang++) on PATH")
    source = host_source(code, names)
    tag = hashlib.sha256((std + "\0" + source).encode()).hexdigest()[:16]
    src, lib = _build_dir() / f"k{tag}.cpp", _build_dir() / f"k{tag}.so"
    src.write_text(source)
    cmd = [cxx, f"-std={std}", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"host compile failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return ctypes.CDLL(str(lib))


class DeviceArray(np.ndarray):
    """A NumPy array standing for device memory: arithmetic with a host (plain NumPy) array raises, as CuPy's does."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for a in inputs + kwargs.get("out", ()):
            if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
                raise TypeError(f"{ufunc.__name__}: a host array mixed with a device array (copy it with cupy.asarray)")
        inputs = tuple(a.view(np.ndarray) if isinstance(a, DeviceArray) else a for a in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) for a in kwargs["out"])
        out = getattr(ufunc, method)(*inputs, **kwargs)
        if isinstance(out, tuple):
            return tuple(_device(o) for o in out)
        return _device(out)

    def get(self):
        """A host copy, as ``cupy.ndarray.get``."""
        return np.array(self.view(np.ndarray), copy=True)


# The stand-in module's array type reports that module, so refdiff's dispatch (which goes by the module of
# an array's type) sends it to the CuPy twins. array-api-compat, which goes by the class name too, still
# sees a NumPy array (its namespace is NumPy's: every operation on it runs on the host).
DeviceArray.__module__ = "cupy"


def _device(a):
    return a.view(DeviceArray) if isinstance(a, np.ndarray) else a


def _code(dtype) -> str:
    """The parameter code of a NumPy dtype: its kind and width ("f4", "i8", "u4", "b1")."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub":
        raise TypeError(f"no kernel parameter type for dtype {dtype}")
    return f"{dtype.kind}{dtype.itemsize}"


def _dim3(v, what):
    v = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(v) <= 3 or any(int(d) < 1 for d in v):
        raise ValueError(f"{what} must be 1 to 3 positive sizes, got {v!r}")
    return (ctypes.c_uint * 3)(*(int(d) for d in v), *(1,) * (3 - len(v)))


class HostKernel:
    """One kernel of a :class:`HostRawModule`; calling it launches it as ``cupy.RawKernel.__call__`` does."""

    def __init__(self, lib, i, name):
        self.name = name
        sig = getattr(lib, f"refdiff_signature_{i}")
        sig.restype = ctypes.c_char_p
        self.params = tuple(sig().decode().rstrip(",").split(","))
        self._launch = getattr(lib, f"refdiff_launch_{i}")
        self._launch.restype = None
        self.flushes = bool(re.match(r"[\w:]+\s*<\s*float\b", name)) and bool(lib.refdiff_flushes())

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        if shared_mem:
            raise NotImplementedError("the host launch has no shared memory")
        args = tuple(args)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        slots, keep = (ctypes.c_void_p * len(args))(), []
        for i, (a, want) in enumerate(zip(args, self.params)):
            where = f"{self.name} argument {i}"
            if want.startswith("P"):
                if not isinstance(a, DeviceArray):
                    raise TypeError(f"{where}: the kernel takes a device pointer ({want}), got {type(a).__name__}")
                if _code(a.dtype) != want[1:] or not a.flags.c_contiguous:
                    raise TypeError(f"{where}: the kernel takes {want}, got a {a.dtype} array "
                                    f"(C-contiguous: {a.flags.c_contiguous})")  # fmt: skip
                slot = ctypes.c_void_p(a.ctypes.data)
                slots[i] = ctypes.addressof(slot)
            else:
                if not isinstance(a, np.generic) or _code(a.dtype) != want:
                    got = a.dtype if isinstance(a, np.generic) else type(a).__name__
                    raise TypeError(f"{where}: the kernel takes a scalar {want}, got {got} (pass a NumPy scalar of the "
                                    "parameter's exact type)")  # fmt: skip
                slot = np.array(a)
                slots[i] = slot.ctypes.data
            keep.append(slot)
        self._launch(_dim3(grid, "grid"), _dim3(block, "block"), slots, ctypes.c_int(self.flushes))


class HostRawModule:
    """``cupy.RawModule(code=..., options=..., name_expressions=...)`` compiled for the host."""

    def __init__(self, code=None, path=None, options=(), name_expressions=None, **kwargs):
        if code is None:
            code = Path(path).read_text()
        std = next((o.split("=", 1)[1] for o in options if o.lstrip("-").startswith("std=")), "c++17")
        self.names = tuple(name_expressions or ())
        self._lib = _compile(code, self.names, std)
        self._kernels = {}

    def compile(self, *args, **kwargs):
        pass

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name!r} is not one of the module's name expressions {self.names}")
        if name not in self._kernels:
            self._kernels[name] = HostKernel(self._lib, self.names.index(name), name)
        return self._kernels[name]


def _asarray(a, dtype=None):
    if isinstance(a, DeviceArray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return np.array(a, dtype=dtype, copy=True, order="C").view(DeviceArray)


def _ascontiguousarray(a, dtype=None):
    if not isinstance(a, DeviceArray):
        raise TypeError(f"ascontiguousarray takes a device array, got {type(a).__name__}")
    return np.ascontiguousarray(a.view(np.ndarray), dtype=dtype).view(DeviceArray)


def _empty(shape, dtype=float):
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else 0
    return np.full(shape, fill, dtype=dtype).view(DeviceArray)


def _asnumpy(a):
    return np.array(a.view(np.ndarray) if isinstance(a, DeviceArray) else a, copy=True)


class HostDevice:
    """``cupy.cuda.Device``: the one host "device"; launches run to completion, so synchronising is a no-op."""

    def __init__(self, device=0):
        self.id = int(device)

    def synchronize(self):
        pass


class HostEvent:
    """``cupy.cuda.Event``: the host's clock when recorded (every launch has run to completion by then)."""

    def __init__(self, *args, **kwargs):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    """``cupy.cuda.get_elapsed_time``: milliseconds from ``start`` to ``end``."""
    return (end.time - start.time) * 1e3


def _device_properties(device):
    """``cupy.cuda.runtime.getDeviceProperties``: a name and one multiprocessor."""
    return {"name": b"host (tests/cuda_host.py)", "multiProcessorCount": 1, "clockRate": 0}


def _raw_kernel(code, name, options=(), **kwargs):
    """``cupy.RawKernel(code, name)``: the ``extern "C"`` kernel ``name`` of ``code``."""
    return HostRawModule(code=code, options=options, name_expressions=(name,)).get_function(name)


@functools.cache
def host_cupy() -> types.ModuleType:
    """A module with the part of CuPy's API the launchers use, running kernels on the host (see above)."""
    mod = types.ModuleType("cupy", "Host stand-in for CuPy (tests/cuda_host.py).")
    mod.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # importlib.util.find_spec("cupy") finds it
    mod.ndarray = DeviceArray
    mod.RawModule = HostRawModule
    mod.asarray = _asarray
    mod.ascontiguousarray = _ascontiguousarray
    mod.empty = _empty
    mod.zeros = lambda shape, dtype=np.float64: np.zeros(shape, dtype=dtype).view(DeviceArray)
    mod.asnumpy = _asnumpy
    mod.all = lambda a: _device(np.all(a.view(np.ndarray)))
    mod.isfinite = lambda a: _device(np.isfinite(a.view(np.ndarray)))
    # what benchmarks/gpu.py uses besides (its smoke run on a machine without a GPU)
    mod.RawKernel = _raw_kernel
    mod.arange = lambda *a, dtype=None: np.arange(*a, dtype=dtype).view(DeviceArray)
    mod.empty_like = lambda a, dtype=None: _empty(a.shape, a.dtype if dtype is None else dtype)
    mod.int32, mod.int64, mod.float32, mod.float64 = np.int32, np.int64, np.float32, np.float64
    mod.cuda = types.SimpleNamespace(Device=HostDevice, Event=HostEvent, get_elapsed_time=_elapsed_ms,
                                     runtime=types.SimpleNamespace(getDeviceProperties=_device_properties))
    return mod
