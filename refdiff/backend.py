"""Array namespace, dtype and random-number handling shared by every module.

refdiff's closed-form layer is written against the Python array API standard,
so one function body runs on NumPy, CuPy or any other conforming library. The
namespace of the inputs is found with ``array_api_compat.array_namespace``
(imported lazily: its NumPy wrapper alone costs more than a third of a second
to import).

Conventions fixed here:

* Coefficient tables are float64 NumPy arrays. They are cast to the dtype of
  the data only at the point of use (:func:`per_example`), so a float32 or
  float16 input never sees a coefficient rounded before it was derived.
* Randomness follows SciPy's SPEC 7: ``rng`` may be ``None``, an ``int``, a
  :class:`numpy.random.SeedSequence`, a :class:`numpy.random.BitGenerator` or a
  :class:`numpy.random.Generator` (:func:`as_rng`). Noise is drawn on the host
  in float64 and moved to the device of the data (:func:`standard_normal`), so
  a CPU and a GPU run with the same seed see the same noise.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "namespace",
    "device_of",
    "as_rng",
    "standard_normal",
    "host_noise_like",
    "noise_dtype",
    "as_float_array",
    "is_array",
    "per_example",
    "check_finite",
    "has_nan",
    "finite_float_array",
    "to_numpy",
    "keep_freed_memory",
    "check_int",
]


def namespace(*arrays):
    """Return the array-API namespace shared by ``arrays``.

    Python scalars and ``None`` are ignored; if nothing array-like remains the
    NumPy namespace is returned.

    Raises
    ------
    TypeError
        If the arrays come from different libraries.
    """
    import array_api_compat

    arrays = [a for a in arrays if a is not None and not isinstance(a, (numbers.Number, bool))]
    if not arrays:
        return array_api_compat.array_namespace(np.empty(0))
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__qualname__ for a in arrays})
        raise TypeError(f"arrays must come from one array library, got {kinds}") from exc


def device_of(x):
    """Device of array ``x`` (``"cpu"`` for NumPy)."""
    import array_api_compat

    return array_api_compat.device(x)


def is_numpy_namespace(xp) -> bool:
    """True if ``xp`` is NumPy or array-api-compat's NumPy wrapper."""
    return xp is np or getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def as_rng(rng=None) -> np.random.Generator:
    """Normalise ``rng`` to a :class:`numpy.random.Generator` (SPEC 7).

    Parameters
    ----------
    rng : None, int, SeedSequence, BitGenerator or Generator
        ``None`` gives fresh OS entropy; an ``int`` or ``SeedSequence`` seeds
        a new PCG64 generator; a ``Generator`` is returned unchanged, so its
        state advances with every draw (the caller owns it).

    Raises
    ------
    TypeError
        For anything else, including the legacy ``numpy.random.RandomState``.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(rng)
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng: an integer seed must be non-negative, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(
        "rng must be None, an int, a numpy.random.SeedSequence, BitGenerator or "
        f"Generator, got {type(rng).__name__}"
    )


def standard_normal(shape, rng=None, like=None, dtype=None):
    """Standard normal noise drawn on the host and moved to ``like``'s device.

    The draw is always float64 on the host (the same numbers for every dtype
    and device), then cast to ``dtype`` (default: ``like``'s dtype, or float64).
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, got {type(shape).__name__}") from None
    gen = as_rng(rng)
    return host_noise_like(gen.standard_normal(shape), like, dtype)


def noise_dtype(like=None, dtype=None):
    """The dtype noise is cast to: ``dtype``, else ``like``'s, else float64; TypeError unless real floating."""
    target = (np.float64 if like is None else like.dtype) if dtype is None else dtype
    xp = np if like is None else namespace(like)
    try:
        floating = xp.isdtype(target, "real floating")
    except (AttributeError, TypeError):  # a namespace without isdtype, or a dtype it does not know
        floating = np.dtype(target).kind == "f"
    if not floating:
        source = "dtype" if dtype is not None else "like's dtype"
        raise TypeError(f"noise needs a real floating dtype; {source} is {np.dtype(target)}")
    return target


def host_noise_like(z, like=None, dtype=None):
    """Host float64 noise ``z`` cast to ``dtype`` (default: ``like``'s dtype, or float64) on ``like``'s device.

    Noise has a real floating dtype: an integer or boolean one (given, or ``like``'s) raises TypeError
    rather than rounding every draw to 0 or True.
    """
    target = noise_dtype(like, dtype)
    if like is None:
        return z if dtype is None else z.astype(dtype)
    xp = namespace(like)
    out = xp.asarray(z, device=device_of(like))
    return xp.astype(out, target)


def is_array(x) -> bool:
    """Whether ``x`` is taken as an array of its own namespace: a NumPy array, an array with
    ``__array_namespace__``, or a CuPy array (which has no ``__array_namespace__`` and refuses
    ``np.asarray``). Anything else (lists, Python numbers, arrays of other libraries) goes through
    ``np.asarray``, as before CuPy was recognised."""
    if isinstance(x, np.ndarray) or hasattr(x, "__array_namespace__"):
        return True
    import array_api_compat  # knows a CuPy array without importing CuPy

    return array_api_compat.is_cupy_array(x)


def as_float_array(x, name: str, xp=None):
    """Return ``x`` as a real floating array of its own namespace.

    Lists and scalars become float64 NumPy arrays, integer and boolean arrays
    are promoted to float64; complex input raises.

    Raises
    ------
    TypeError
        If ``x`` is complex or not numeric.
    """
    if xp is None:
        if type(x) is np.ndarray and x.dtype.kind == "f":  # the common case, without the namespace lookup
            return x
        if not is_array(x):
            try:
                x = np.asarray(x)
            except Exception as exc:  # ragged lists and the like
                raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
            if x.dtype == object:
                raise TypeError(f"{name} must be numeric, got an object array")
        xp = namespace(x)
    dtype = x.dtype
    if xp.isdtype(dtype, "real floating"):
        return x
    if xp.isdtype(dtype, "complex floating"):
        raise TypeError(f"{name} must be real, got dtype {dtype}")
    if xp.isdtype(dtype, ("integral", "bool")):
        return xp.astype(x, xp.float64)
    raise TypeError(f"{name} must be a numeric array, got dtype {dtype}")


def check_int(value, name: str, lo: int = 1) -> int:
    """``value`` as a Python int >= ``lo``, or a ValueError naming ``name`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        what = "a positive int" if lo == 1 else f"an int >= {lo}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def has_nan(a) -> bool:
    """Whether the array ``a`` holds a NaN, by one reduction and no temporary: a NaN among the values makes their
    maximum NaN."""
    xp = namespace(a)
    return a.size > 0 and bool(xp.isnan(xp.max(a)))


def check_finite(x, name: str, xp=None):
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or infinity."""
    if xp is None:
        xp = namespace(x)
    finite = xp.isfinite(x)
    if not bool(xp.all(finite)):
        n_bad = int(xp.sum(xp.astype(xp.logical_not(finite), xp.int64)))
        raise ValueError(f"{name} must be finite, got {n_bad} non-finite value(s)")
    return x


def finite_float_array(x, name: str, xp=None):
    """:func:`as_float_array`, then :func:`check_finite`: data that must hold neither NaN nor infinity."""
    return check_finite(as_float_array(x, name, xp), name)


def per_example(coef, x, name: str = "t"):
    """Cast a per-example coefficient to ``x``'s dtype and device and shape it to broadcast.

    Parameters
    ----------
    coef : array, shape () or (N,)
        Coefficient computed (in float64) for a scalar time or for one time
        per example.
    x : array, shape (N, ...)
        The data the coefficient multiplies.

    Returns
    -------
    array of shape () or (N, 1, ..., 1) with ``x.ndim`` axes.

    Raises
    ------
    ValueError
        If ``coef`` has one value per example but ``x`` does not have that
        many rows.
    """
    xp = namespace(x)
    coef = xp.asarray(coef, device=device_of(x))
    coef = xp.astype(coef, x.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or x.ndim == 0 or coef.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must be a scalar or have one entry per example (shape ({x.shape[0] if x.ndim else 1},)), "
            f"got shape {tuple(coef.shape)} for data of shape {tuple(x.shape)}"
        )
    return xp.reshape(coef, (coef.shape[0],) + (1,) * (x.ndim - 1))


def to_numpy(a):
    """Copy ``a`` to a host NumPy array (CuPy via ``.get()``, others via DLPack)."""
    if isinstance(a, (np.ndarray, np.generic, numbers.Number)):
        return np.asarray(a)
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    try:
        return np.from_dlpack(a)
    except (TypeError, AttributeError, BufferError, RuntimeError):
        return np.asarray(a)


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Ask glibc's allocator to recycle large freed blocks instead of returning them to the OS.

    A training or sampling loop in NumPy allocates the same large temporaries
    every step. By default glibc serves each from fresh ``mmap``-ed (or
    trimmed and re-grown) memory, and every page of it is faulted in again:
    measured here, 5600 page faults and about a third of the time of an MLP
    training step at batch 4096. Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` to ``limit_bytes`` keeps freed blocks in the heap
    for reuse. It changes the whole process, so refdiff never calls it on
    its own: the command-line interface and the benchmarks do, and so may
    an application that owns its process. Memory freed by large arrays is
    then held by the process instead of being handed back.

    Returns True if the allocator accepted the setting, False where it
    cannot be applied (not glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    limit = int(min(max(limit_bytes, 0), 2**31 - 1))
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
