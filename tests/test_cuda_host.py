"""The host stand-in for CuPy (tests/cuda_host.py) that runs kernels/*.cu without a GPU: it must fail where a GPU would.

The twins' own tests (test_kernels_mixture.py, test_kernels_fused.py) run the launchers through it; these
check the stand-in itself: a grid of threads with CUDA's index variables, the argument checks CuPy does not
make (pointer element type, scalar width and signedness, host arrays, contiguity, count), NaN-filled
``empty``, and host/device mixing.
"""

import sys

import numpy as np
import pytest

SOURCE = r"""
typedef unsigned int u32;

// y[i] = a x[i] + y[i] for i < n, one thread per element
template <typename T>
__global__ void axpy(T* y, const T* __restrict__ x, T a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = a * x[i] + y[i];
}

// out[j, i] = linear thread index in a 2-D grid of 2-D blocks, and the high word of key * i
__global__ void where(long long* out, u32* hi, u32 key, int width) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= width) return;
    out[j * width + i] = (long long)j * width + i + 1000 * (gridDim.x * gridDim.y * blockDim.x * blockDim.y);
    hi[j * width + i] = __umulhi(key, (u32)i);
}
"""
NAMES = ("axpy<float>", "axpy<double>", "where")


@pytest.fixture
def cp(cuda_host):
    return cuda_host


@pytest.fixture
def module(cp):
    return cp.RawModule(code=SOURCE, options=("-std=c++17",), name_expressions=NAMES)


def test_grid_runs_every_thread_with_cuda_indices(cp, module):
    n = 300  # three blocks of 128, the last one partial: threads past n return
    x = np.arange(n, dtype=np.float32)
    y = cp.asarray(np.ones(n, np.float32))
    module.get_function("axpy<float>")((3,), (128,), (y, cp.asarray(x), np.float32(2.0), np.int64(n)))
    np.testing.assert_array_equal(y.get(), 2 * x + 1)

    width, rows = 10, 6
    out, hi = cp.empty((rows, width), np.int64), cp.empty((rows, width), np.uint32)
    key = 0xD2511F53
    module.get_function("where")((3, 2), (4, 3), (out, hi, np.uint32(key), np.int32(width)))
    total = 3 * 2 * 4 * 3
    np.testing.assert_array_equal(out.get(), np.arange(rows * width).reshape(rows, width) + 1000 * total)
    np.testing.assert_array_equal(hi.get()[0], (key * np.arange(width, dtype=np.uint64)) >> 32)


@pytest.mark.parametrize("bad,match", [
    (lambda y, x: (y, x, np.float32(2.0), np.int32(4)), "scalar i8, got int32"),  # long long takes 8 bytes
    (lambda y, x: (y, x, np.float32(2.0), np.uint64(4)), "scalar i8, got uint64"),  # signedness
    (lambda y, x: (y, x, 2.0, np.int64(4)), "scalar f4, got float"),  # a Python number: no exact type
    (lambda y, x: (y, x, np.float64(2.0), np.int64(4)), "scalar f4, got float64"),
    (lambda y, x: (y, x.get(), np.float32(2.0), np.int64(4)), "device pointer"),  # a host array
    (lambda y, x: (y, x.astype(np.float64), np.float32(2.0), np.int64(4)), "takes Pf4, got a float64 array"),
    (lambda y, x: (y[::2], x[:2], np.float32(2.0), np.int64(2)), "C-contiguous: False"),
    (lambda y, x: (y, x, np.float32(2.0)), "takes 4 arguments, got 3"),
])  # fmt: skip
def test_arguments_are_checked_against_the_kernel(cp, module, bad, match):
    y, x = cp.asarray(np.zeros(4, np.float32)), cp.asarray(np.ones(4, np.float32))
    with pytest.raises(TypeError, match=match):
        module.get_function("axpy<float>")((1,), (4,), bad(y, x))
    np.testing.assert_array_equal(y.get(), 0)  # nothing ran


def test_device_arrays_refuse_host_arrays_and_start_as_nan(cp):
    a = cp.asarray(np.ones(3))
    assert isinstance(a + 1.0, cp.ndarray) and isinstance(a * a, cp.ndarray)
    with pytest.raises(TypeError, match="host array mixed with a device array"):
        a + np.ones(3)
    assert np.isnan(cp.empty(4, np.float32).get()).all()  # output a kernel forgot to write is not a result
    with pytest.raises(TypeError, match="device array"):
        cp.ascontiguousarray(np.ones(3))
    assert type(cp.asnumpy(a)) is np.ndarray and sys.modules["cupy"] is cp


def test_float_instances_flush_subnormals_as_the_device_does(cp, module):
    """CuPy compiles with -ftz=true: a float kernel reads a subnormal operand as 0 and flushes a subnormal result,
    while a double one keeps both (a kernel that needs a subnormal float passed on the host and failed on a GPU)."""
    kernel = module.get_function("axpy<float>")
    if not kernel.flushes:
        pytest.skip("flush-to-zero is reproduced on x86 CPUs only")
    assert not module.get_function("axpy<double>").flushes
    tiny = np.finfo(np.float32).tiny

    def run(ctype, a, x):  # y <- a x + 0, one thread per element
        dtype = {"float": np.float32, "double": np.float64}[ctype]
        y = cp.asarray(np.zeros(len(x), dtype))
        module.get_function(f"axpy<{ctype}>")((1,), (len(x),), (y, cp.asarray(np.asarray(x, dtype)), dtype(a),
                                                                  np.int64(len(x))))  # fmt: skip
        return y.get()

    x = np.array([tiny / 2, tiny / 8, tiny, 1.0], np.float32)  # two subnormal operands, two normal ones
    np.testing.assert_array_equal(run("float", 4.0, x), [0.0, 0.0, 4 * tiny, 4.0])  # subnormals read as 0
    np.testing.assert_array_equal(run("float", 0.25, [tiny, 8 * tiny]), [0.0, 2 * tiny])  # a subnormal result: 0
    np.testing.assert_array_equal(run("double", 4.0, x), 4.0 * x.astype(np.float64))
    np.testing.assert_array_equal(run("double", 0.25, [tiny]), [np.float64(tiny) / 4])
    a = np.ones(2, np.float32) * np.float32(tiny / 2)  # the mode is the launch's alone: NumPy still keeps subnormals
    assert a[0] > 0


def test_unknown_names_and_unsupported_features_fail(cp, module):
    with pytest.raises(KeyError, match="axpy<int>"):
        module.get_function("axpy<int>")
    with pytest.raises(NotImplementedError, match="shared memory"):
        module.get_function("axpy<double>")((1,), (1,), (), shared_mem=64)
    barrier = "__global__ void k(float* x) { __syncthreads(); x[threadIdx.x] = 0.f; }"  # threads in turn can't wait
    with pytest.raises(RuntimeError, match="__syncthreads"):
        cp.RawModule(code=barrier, options=("-std=c++17",), name_expressions=("k",))
