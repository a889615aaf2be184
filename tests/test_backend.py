"""Tests for refdiff.backend: namespaces, rng normalisation (SPEC 7), host noise, per-example coefficients."""

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import backend

SHAPES = st.one_of(
    st.tuples(st.integers(1, 5), st.integers(1, 4)),  # (N, D)
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),  # (N, C, H, W)
)


def _xp_array(xp, values, dtype_name):
    return xp.asarray(np.asarray(values), dtype=getattr(xp, dtype_name))


# ---------------------------------------------------------------- as_rng
def test_as_rng_none_gives_fresh_generator():
    a, b = backend.as_rng(None), backend.as_rng()
    assert isinstance(a, np.random.Generator) and isinstance(b, np.random.Generator)
    assert a is not b
    # two fresh OS-entropy streams agree on 8 float64 draws with probability ~0
    assert not np.array_equal(a.standard_normal(8), b.standard_normal(8))


@given(seed=st.integers(0, 2**63 - 1))
def test_as_rng_int_seed_matches_pcg64_default_rng(seed):
    expected = np.random.Generator(np.random.PCG64(seed)).standard_normal(5)
    np.testing.assert_array_equal(backend.as_rng(seed).standard_normal(5), expected)
    # same seed, same draws, run after run; numpy integer scalars count as ints
    np.testing.assert_array_equal(backend.as_rng(np.int64(seed)).standard_normal(5), expected)


def test_as_rng_seed_sequence_and_bit_generator():
    ss = np.random.SeedSequence(1234)
    expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence(1234))).standard_normal(6)
    np.testing.assert_array_equal(backend.as_rng(ss).standard_normal(6), expected)
    np.testing.assert_array_equal(backend.as_rng(np.random.SeedSequence(1234)).standard_normal(6), expected)
    bg = np.random.Philox(7)
    gen = backend.as_rng(bg)
    assert isinstance(gen, np.random.Generator) and gen.bit_generator is bg
    np.testing.assert_array_equal(
        backend.as_rng(np.random.Philox(7)).standard_normal(4),
        np.random.Generator(np.random.Philox(7)).standard_normal(4),
    )


def test_as_rng_returns_generator_unchanged_and_state_advances():
    gen = np.random.default_rng(3)
    assert backend.as_rng(gen) is gen
    first = backend.as_rng(gen).standard_normal(3)
    second = backend.as_rng(gen).standard_normal(3)
    ref = np.random.default_rng(3).standard_normal(6)
    np.testing.assert_array_equal(np.concatenate([first, second]), ref)


@pytest.mark.parametrize(
    "bad",
    [np.random.RandomState(0), 1.0, np.float64(2.0), 0.5, "1", b"1", [1, 2], True, object()],
    ids=["RandomState", "float", "np.float64", "half", "str", "bytes", "list", "bool", "object"],
)
def test_as_rng_rejects_other_types(bad):
    with pytest.raises(TypeError, match="rng"):
        backend.as_rng(bad)


@pytest.mark.parametrize("seed", [-1, np.int64(-5), -(2**70)])
def test_as_rng_rejects_negative_int(seed):
    with pytest.raises(ValueError, match="rng"):
        backend.as_rng(seed)


# -------------------------------------------------------- standard_normal
def test_standard_normal_dtype_namespace_and_values(xp, float_dtype):
    shape = (3, 2, 4)
    like = _xp_array(xp, np.zeros(shape), float_dtype)
    out = backend.standard_normal(shape, rng=11, like=like)
    assert type(out) is type(like)
    assert out.dtype == like.dtype
    assert tuple(out.shape) == shape
    expected = np.random.default_rng(11).standard_normal(shape).astype(float_dtype)
    np.testing.assert_array_equal(backend.to_numpy(out), expected)


def test_standard_normal_dtype_override(xp):
    like = _xp_array(xp, np.zeros((2, 3)), "float64")
    out = backend.standard_normal((2, 3), rng=5, like=like, dtype=xp.float32)
    assert out.dtype == xp.float32
    expected = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(backend.to_numpy(out), expected)


def test_noise_refuses_a_dtype_that_is_not_floating_and_takes_an_int_shape():
    """An integer or boolean dtype once rounded every draw to 0 (or True) without a word."""
    for kw in (dict(like=np.zeros(3, int)), dict(like=np.zeros(3, bool)), dict(dtype=np.int32)):
        with pytest.raises(TypeError, match="noise needs a real floating dtype"):
            backend.standard_normal((3,), 0, **kw)
    np.testing.assert_array_equal(backend.standard_normal(3, 4), backend.standard_normal((3,), 4))
    with pytest.raises(TypeError, match="shape must be an int or a tuple of ints"):
        backend.standard_normal(None, 0)


def test_standard_normal_without_like_is_float64_host_draw():
    out = backend.standard_normal([4, 3], rng=np.random.SeedSequence(9))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, np.random.default_rng(np.random.SeedSequence(9)).standard_normal((4, 3)))
    out32 = backend.standard_normal((4, 3), rng=np.random.SeedSequence(9), dtype=np.float32)
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32, out.astype(np.float32))


@given(shape=SHAPES, seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_standard_normal_is_the_float64_draw_cast(shape, seed, dtype):
    like = np.ones(shape, dtype=dtype)
    out = backend.standard_normal(shape, rng=seed, like=like)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# ------------------------------------------------------------ per_example
@given(shape=SHAPES, dtype=st.sampled_from([np.float16, np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_per_example_shapes_and_cast(shape, dtype, seed):
    x = np.zeros(shape, dtype=dtype)
    coef = np.random.default_rng(seed).uniform(0.0, 2.0, size=shape[0])  # float64
    out = backend.per_example(coef, x)
    assert out.dtype == dtype
    assert out.shape == (shape[0],) + (1,) * (len(shape) - 1)
    np.testing.assert_array_equal(out.reshape(-1), coef.astype(dtype))
    scalar = backend.per_example(np.float64(0.3), x)
    assert scalar.shape == () and scalar.dtype == dtype and scalar == dtype(0.3)
    assert (scalar * x).shape == shape and (out * x).shape == shape


def test_per_example_on_namespace(xp, float_dtype):
    x = _xp_array(xp, np.ones((3, 2, 2)), float_dtype)
    out = backend.per_example(np.array([1.0, 2.0, 3.0]), x)
    assert type(out) is type(x) and out.dtype == x.dtype and tuple(out.shape) == (3, 1, 1)
    np.testing.assert_array_equal(backend.to_numpy(out * x)[:, 1, 1], np.array([1.0, 2.0, 3.0], dtype=float_dtype))


@pytest.mark.parametrize(
    "coef_shape, x_shape",
    [((4,), (3, 2)), ((2,), (3,)), ((3, 1), (3, 2)), ((1,), (3, 2)), ((3,), ())],
)
def test_per_example_wrong_length_raises_naming_argument(coef_shape, x_shape):
    with pytest.raises(ValueError, match="my_t"):
        backend.per_example(np.ones(coef_shape), np.ones(x_shape), name="my_t")


# ------------------------------------------------- as_float_array, checks
def test_as_float_array_promotes_and_keeps_floats(xp):
    x32 = _xp_array(xp, [1.0, 2.0], "float32")
    assert backend.as_float_array(x32, "x") is x32
    xi = xp.asarray([1, 2, 3])
    out = backend.as_float_array(xi, "x")
    assert out.dtype == xp.float64
    np.testing.assert_array_equal(backend.to_numpy(out), [1.0, 2.0, 3.0])
    xb = xp.asarray([True, False])
    assert backend.as_float_array(xb, "x").dtype == xp.float64


def test_is_array_knows_an_array_that_refuses_numpy_conversion(monkeypatch):
    """A CuPy array has no ``__array_namespace__`` and refuses ``np.asarray``: once, as_float_array took it for a
    list, converted it, and raised "must be array-like". A stand-in class registered as ``cupy.ndarray``."""
    import types

    class Refusing:
        dtype = np.dtype(np.float32)

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=Refusing))
    assert backend.is_array(Refusing())
    assert backend.is_array(np.zeros(2)) and not backend.is_array([1.0, 2.0]) and not backend.is_array(2.0)


def test_as_float_array_lists_and_scalars():
    out = backend.as_float_array([[1, 2], [3, 4]], "x")
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert backend.as_float_array(2.5, "x").dtype == np.float64


@pytest.mark.parametrize(
    "bad",
    [np.array([1 + 2j]), np.array([1.0], dtype=np.complex64), np.array(["a"]), [[1, 2], [3]], [object()]],
    ids=["complex128", "complex64", "str", "ragged", "object"],
)
def test_as_float_array_rejects_non_real(bad):
    with pytest.raises(TypeError, match="my_arg"):
        backend.as_float_array(bad, "my_arg")


def test_as_float_array_rejects_complex_on_namespace(xp):
    z = xp.asarray(np.array([1.0 + 1.0j]))
    with pytest.raises(TypeError, match="my_arg"):
        backend.as_float_array(z, "my_arg")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_argument_and_counts(bad):
    x = np.array([0.0, bad, 1.0, bad])
    with pytest.raises(ValueError, match=r"my_x.*2 non-finite"):
        backend.check_finite(x, "my_x")
    ok = np.array([0.0, 1e308, -1e-308])
    assert backend.check_finite(ok, "my_x") is ok


def test_check_finite_on_namespace(xp):
    x = xp.asarray(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x_t"):
        backend.check_finite(x, "x_t")


# -------------------------------------------------------------- namespace
def test_namespace_ignores_scalars_and_none():
    xp = backend.namespace(None, 1.0, 3, True)
    assert backend.is_numpy_namespace(xp)
    assert backend.is_numpy_namespace(backend.namespace(np.ones(2), 2.0))


def test_namespace_of_strict_arrays_and_mixing_raises():
    xps = pytest.importorskip("array_api_strict")
    a = xps.asarray([1.0])
    assert backend.namespace(a, None, 2.0) is xps
    assert not backend.is_numpy_namespace(xps)
    with pytest.raises(TypeError, match="one array library"):
        backend.namespace(a, np.ones(1))


def test_device_and_to_numpy_round_trip(xp, float_dtype):
    values = np.arange(6.0).reshape(2, 3).astype(float_dtype)
    a = xp.asarray(values)
    back = backend.to_numpy(a)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(float_dtype)
    np.testing.assert_array_equal(back, values)
    if xp is np:
        assert backend.device_of(a) == "cpu"
    assert backend.to_numpy(3.0) == 3.0


def test_keep_freed_memory_reports_whether_it_applied():
    import subprocess
    import sys

    # In a child process: the setting is process-wide and must not leak into the suite.
    code = "from refdiff.backend import keep_freed_memory; import numpy as np; ok = keep_freed_memory(); " \
           "a = np.ones(1 << 22); del a; print(ok)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out in ("True", "False")
    if sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc":
        assert out == "True"
