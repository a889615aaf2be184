"""Counter-based per-example Gaussian noise (Philox4x32-10 + Box-Muller).

A stochastic sampler that draws its noise from a sequential generator gives
example ``i`` different numbers when the batch size changes. Here every number
is a pure function of ``(seed, particle, draw, dimension)``: Philox4x32-10
(Salmon et al. 2011) turns a 128-bit counter and a 64-bit key into four
32-bit words, and nothing else is consulted. Row ``i`` of a batch of 10 000
equals the single row drawn for particle ``i`` alone, a batch split into
chunks (:class:`NoiseStream` ``offset``) reproduces the whole, and a Numba or
CUDA twin that implements the contract below reproduces the words bit for bit.

Notation
--------
===========  ==============================================================
``seed``     64-bit key, an integer in [0, 2**64)
``p``        particle (example) index, an integer in [0, 2**64)
``k``        draw index, an integer in [0, 2**32): one per sampler draw
``j``        block index: block j holds dimensions 4j, 4j+1, 4j+2, 4j+3
``D``        number of dimensions per particle; ``B = ceil(D / 4)`` blocks
``w_m``      word m (m = 0..3) of the Philox output for one block, uint32
``u_m``      ``(w_m + 0.5) * 2**-32``, uniform in the open interval (0, 1)
===========  ==============================================================

Counter layout (the contract every twin implements)
---------------------------------------------------
For particle ``p``, draw ``k`` and block ``j``::

    counter = (j, k, p & 0xffffffff, p >> 32)        # 4 x uint32
    key     = (seed & 0xffffffff, seed >> 32)        # 2 x uint32
    (w0, w1, w2, w3) = philox4x32_10(counter, key)

Dimension ``4j + m`` of particle ``p`` at draw ``k`` is then

* uniform: ``u_m = ((double) w_m + 0.5) * 0x1p-32`` (exact in float64:
  ``w + 0.5`` needs 33 bits), so ``2**-33 <= u_m <= 1 - 2**-33``;
* normal (Box-Muller, Box & Muller 1958, on the pairs (w0, w1) and
  (w2, w3)), evaluated in float64 in exactly this order::

      r      = sqrt(-2.0 * log(u0))          # likewise r' from u2
      theta  = TWO_PI * u1                   # TWO_PI = 6.283185307179586
      z0, z1 = r * cos(theta), r * sin(theta)
      z2, z3 = r' * cos(theta'), r' * sin(theta')

Dimensions past ``D`` in the last block are computed and discarded. Words and
uniforms are exact integer/float64 arithmetic, so twins agree with this
reference bit for bit. ``sqrt`` is correctly rounded in IEEE 754, but ``log``,
``cos`` and ``sin`` are not required to be, so a twin's normals may differ
from these by a few units in the last place (compare with ``rtol=1e-14`` and
``atol=1e-14``, not with ``==``). With ``u >= 2**-33`` the largest possible
``|z|`` is ``sqrt(66 log 2) ~= 6.76``.

Philox4x32-R
------------
Each round multiplies two words by the constants ``M0 = 0xD2511F53`` and
``M1 = 0xCD9E8D57`` and splits the 64-bit products into high and low halves
(``mulhilo``)::

    (hi0, lo0) = mulhilo(M0, c0)
    (hi1, lo1) = mulhilo(M1, c2)
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

and between consecutive rounds the key takes a Weyl step,
``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2**32). Ten rounds is the
Random123 default; the paper finds seven already Crush-resistant (TestU01's
BigCrush passes), so ten leaves a safety margin.

References
----------
.. [1] J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw, "Parallel
   random numbers: as easy as 1, 2, 3", Proc. SC11 (2011),
   doi:10.1145/2063384.2063405. Random123 library, D. E. Shaw Research.
.. [2] G. E. P. Box and M. E. Muller, "A note on the generation of random
   normal deviates", Ann. Math. Statist. 29(2), 610-611 (1958).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import as_rng, host_noise_like, is_array, noise_dtype, to_numpy

__all__ = [
    "philox4x32",
    "uniform_from_bits",
    "normal_from_bits",
    "counter_normals",
    "counter_uniforms",
    "NoiseStream",
]

# Philox4x32 constants (Salmon et al. 2011; Random123 philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
TWO_PI = 2.0 * math.pi  # 6.283185307179586, the float64 nearest 2 pi

# NumPy scalars, so uint64 arithmetic stays uint64 under NumPy 1.x casting rules too.
_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO_POW_M32 = 2.0**-32


# --------------------------------------------------------------------------- validation helpers
def _check_int(value, name: str, low: int, high: int) -> int:
    """``value`` as a Python int in [low, high), else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [{low}, {high}), got {type(value).__name__} {value!r}")
    value = int(value)
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value}")
    return value


def _as_uint64(a, name: str, high: int, ndim: int | None = None) -> np.ndarray:
    """Integer array-like ``a`` as a uint64 NumPy array with values in [0, high)."""
    if is_array(a) or isinstance(a, np.generic):
        arr = np.asarray(to_numpy(a))
    else:
        # Python ints and lists of them: through object dtype, so that values at or
        # above 2**63 are neither rejected nor rounded to float64.
        try:
            arr = np.asarray(a, dtype=object)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an integer array, got {type(a).__name__}") from exc
    if arr.dtype == object:
        flat = arr.ravel().tolist()
        for v in flat:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must hold integers, got {type(v).__name__} {v!r}")
        bad = [int(v) for v in flat if not 0 <= v < high]
        if bad:
            raise ValueError(f"{name} must hold integers in [0, {high}), got {bad[0]}")
        arr = np.array(flat, dtype=np.uint64).reshape(arr.shape)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or (high < 2**64 and hi >= high):
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must hold integers in [0, {high}), got {int(bad)}")
    return arr.astype(np.uint64, copy=False)


# --------------------------------------------------------------------------- Philox4x32
def _philox_rounds(c0, c1, c2, c3, k0, k1, rounds: int):
    """Philox4x32-``rounds`` on uint64 arrays holding 32-bit values (broadcastable).

    The 32x32 -> 64-bit products are exact in uint64 (both factors are below
    2**32), so ``mulhi`` is ``>> 32`` and ``mullo`` is ``& 0xffffffff``.
    Works in place on two product buffers (a fresh array per operation costs
    three times as much). Returns the four output words as new C-contiguous
    uint64 arrays of the broadcast shape.
    """
    shape = np.broadcast_shapes(*(np.shape(a) for a in (c0, c1, c2, c3, k0, k1)))
    c0, c1, c2, c3 = (np.array(np.broadcast_to(c, shape), dtype=np.uint64) for c in (c0, c1, c2, c3))
    p0 = np.empty(shape, dtype=np.uint64)
    p1 = np.empty(shape, dtype=np.uint64)
    for r in range(rounds):
        if r:  # Weyl key schedule between rounds (Random123 philox4x32bumpkey)
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        np.multiply(c0, _M0, out=p0)  # (hi0, lo0) = mulhilo(M0, c0)
        np.multiply(c2, _M1, out=p1)  # (hi1, lo1) = mulhilo(M1, c2)
        np.right_shift(p1, _SHIFT32, out=c0)  # c0 <- hi1 ^ c1 ^ k0
        c0 ^= c1
        c0 ^= k0
        np.right_shift(p0, _SHIFT32, out=c2)  # c2 <- hi0 ^ c3 ^ k1
        c2 ^= c3
        c2 ^= k1
        np.bitwise_and(p1, _MASK32, out=c1)  # c1 <- lo1
        np.bitwise_and(p0, _MASK32, out=c3)  # c3 <- lo0
    return c0, c1, c2, c3


def philox4x32(counter, key, rounds: int = 10) -> np.ndarray:
    """Philox4x32-R block function: four 32-bit words from a counter and a key.

    Implements Philox4x32-R of Salmon et al. (2011) as Random123's ``philox4x32_R``:
    ``rounds`` rounds of ``(hi1^c1^k0, lo1, hi0^c3^k1, lo0)`` with
    ``(hi0, lo0) = mulhilo(0xD2511F53, c0)``, ``(hi1, lo1) = mulhilo(0xCD9E8D57, c2)``,
    the key bumped by ``(0x9E3779B9, 0xBB67AE85)`` between rounds.

    Parameters
    ----------
    counter : integer array, shape (..., 4)
        Counter words, each in [0, 2**32) (uint32 or any integer dtype).
    key : integer array, shape broadcastable to (..., 2)
        Key words, each in [0, 2**32).
    rounds : int, default 10
        Number of rounds R >= 0 (10 is the Random123 default, 7 the fewest
        the paper found Crush-resistant; 0 returns the counter).

    Returns
    -------
    numpy.ndarray of uint32, shape broadcast(counter[..., 0], key[..., 0]) + (4,)

    Raises
    ------
    TypeError
        If ``counter`` or ``key`` is not an integer array, or ``rounds`` not an int.
    ValueError
        If the last axis of ``counter`` is not 4 or that of ``key`` is not 2,
        if a word lies outside [0, 2**32), or if ``rounds`` is negative.

    References
    ----------
    Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as
    1, 2, 3", SC11 (2011). Known answers: Random123 ``tests/kat_vectors``.

    Examples
    --------
    >>> [hex(w) for w in philox4x32([0, 0, 0, 0], [0, 0])]  # Random123 known answer
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    rounds = _check_int(rounds, "rounds", 0, 2**31)
    counter = _as_uint64(counter, "counter", 2**32)
    key = _as_uint64(key, "key", 2**32)
    if counter.ndim < 1 or counter.shape[-1] != 4:
        raise ValueError(f"counter must have shape (..., 4), got shape {counter.shape}")
    if key.ndim < 1 or key.shape[-1] != 2:
        raise ValueError(f"key must have shape (..., 2), got shape {key.shape}")
    try:
        shape = np.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    except ValueError as exc:
        raise ValueError(
            f"key of shape {key.shape} does not broadcast against counter of shape {counter.shape}"
        ) from exc
    words = _philox_rounds(counter[..., 0], counter[..., 1], counter[..., 2], counter[..., 3],
                           key[..., 0], key[..., 1], rounds)  # fmt: skip
    out = np.empty(shape + (4,), dtype=np.uint32)
    for m in range(4):
        out[..., m] = words[m]  # values < 2**32: the uint64 -> uint32 cast is exact
    return out


# --------------------------------------------------------------------------- bits -> floats
def uniform_from_bits(w) -> np.ndarray:
    """Map 32-bit words to float64 uniforms in the open interval (0, 1).

    .. math:: u = (w + \\tfrac12)\\, 2^{-32}, \\qquad 2^{-33} \\le u \\le 1 - 2^{-33}

    Every step is exact in float64 (``w + 0.5`` needs 33 significant bits),
    so ``u`` is the midpoint of the w-th of 2**32 equal cells, never 0 or 1.

    Parameters
    ----------
    w : integer array of any shape, values in [0, 2**32)

    Returns
    -------
    numpy.ndarray of float64, the shape of ``w``

    Examples
    --------
    >>> uniform_from_bits([0, 0xFFFFFFFF]) == [2.0**-33, 1 - 2.0**-33]
    array([ True,  True])
    """
    u = _as_uint64(w, "w", 2**32).astype(np.float64)
    u += 0.5
    u *= _TWO_POW_M32
    return u


def _box_muller(u_r, u_theta, n_sin: int):
    """Box-Muller (1958) along the last axis: ``r cos theta`` and the first ``n_sin`` of ``r sin theta``.

    ``r = sqrt(-2 log u_r)``, ``theta = TWO_PI * u_theta`` in float64; the
    order of operations is part of the twin contract (module docstring).
    Returns new arrays of shapes ``u_r.shape`` and ``u_r.shape[:-1] + (n_sin,)``.
    """
    r = np.log(u_r)
    r *= -2.0
    np.sqrt(r, out=r)  # r = sqrt(-2 log u0)
    theta = u_theta * TWO_PI  # theta = 2 pi u1
    z_cos = np.cos(theta)
    z_cos *= r
    z_sin = np.sin(theta[..., :n_sin])
    z_sin *= r[..., :n_sin]
    return z_cos, z_sin


def _normals_from_uniforms(u, dim: int) -> np.ndarray:
    """Box-Muller on the pairs (u[..., 2q], u[..., 2q+1]), keeping the first ``dim`` normals."""
    n_pairs = -(-dim // 2)
    z = np.empty(u.shape[:-1] + (dim,), dtype=np.float64)
    z[..., 0::2], z[..., 1::2] = _box_muller(u[..., 0 : 2 * n_pairs : 2], u[..., 1 : 2 * n_pairs : 2], dim // 2)
    return z


def normal_from_bits(words) -> np.ndarray:
    """Standard normals from 32-bit words by the Box-Muller transform, in pairs.

    Word pair ``(w_{2i}, w_{2i+1})`` gives normals ``(z_{2i}, z_{2i+1})``:

    .. math::
        u_m = (w_m + \\tfrac12) 2^{-32},\\quad r = \\sqrt{-2\\log u_{2i}},\\quad
        \\theta = 2\\pi u_{2i+1},\\quad z_{2i} = r\\cos\\theta,\\quad z_{2i+1} = r\\sin\\theta.

    For one Philox block this is (w0, w1) -> (z0, z1) and (w2, w3) -> (z2, z3).
    If ``U0, U1`` are independent uniforms, ``z_{2i}, z_{2i+1}`` are independent
    standard normals (Box and Muller 1958).

    Parameters
    ----------
    words : integer array, shape (..., 2m), typically (..., 4); values in [0, 2**32)

    Returns
    -------
    numpy.ndarray of float64, shape of ``words``; always finite, ``|z| < 6.77``

    Raises
    ------
    ValueError
        If the last axis is missing or has odd length, or a word is out of range.
    """
    words = _as_uint64(words, "words", 2**32)
    if words.ndim < 1 or words.shape[-1] % 2:
        raise ValueError(f"words must have shape (..., 2m) (pairs along the last axis), got shape {words.shape}")
    return _normals_from_uniforms(uniform_from_bits(words), words.shape[-1])


# --------------------------------------------------------------------------- the counter layout
def _counter_uniforms(seed, particles, draw, dim) -> np.ndarray:
    """Uniforms of all blocks for the layout of the module docstring, shape (N, 4B)."""
    seed = _check_int(seed, "seed", 0, 2**64)
    dim = _check_int(dim, "dim", 1, 2**34)  # 2**34 keeps the block index j below 2**32
    p = _as_uint64(particles, "particles", 2**64, ndim=1)  # (N,)
    if isinstance(draw, numbers.Integral) and not isinstance(draw, bool):
        k = np.uint64(_check_int(draw, "draw", 0, 2**32))  # one draw index for every row
    else:
        k = _as_uint64(draw, "draw", 2**32)
        if k.ndim == 0:
            k = k[()]
        elif k.shape != p.shape:
            raise ValueError(
                f"draw must be an int or have one entry per particle (shape {p.shape}), got shape {k.shape}"
            )
        else:
            k = k[:, None]  # (N, 1)
    n, n_blocks = p.shape[0], -(-dim // 4)
    j = np.arange(n_blocks, dtype=np.uint64)[None, :]  # (1, B): block index
    p_lo = (p & _MASK32)[:, None]  # (N, 1)
    p_hi = (p >> _SHIFT32)[:, None]  # (N, 1)
    key = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    words = _philox_rounds(np.broadcast_to(j, (n, n_blocks)), k, p_lo, p_hi, *key, 10)  # 4 x (N, B)
    u = np.empty((n, n_blocks, 4), dtype=np.float64)  # (N, B, 4)
    for m in range(4):
        u[..., m] = words[m]  # exact: words are below 2**32
    u += 0.5
    u *= _TWO_POW_M32
    return u.reshape(n, 4 * n_blocks)  # (N, 4B): column 4j + m is word m of block j


def counter_normals(seed, particles, draw, dim) -> np.ndarray:
    """Standard normals for given particles at given draw indices (counter-based, batch-invariant).

    Row ``i`` is a pure function of ``(seed, particles[i], draw_i, dim)``: it does
    not depend on the other rows, their number or their order. The counter
    layout and the Box-Muller pairing are the module's contract; the first
    ``dim`` normals of a row do not depend on ``dim`` either.

    Parameters
    ----------
    seed : int
        64-bit key, in [0, 2**64).
    particles : integer array, shape (N,)
        Non-negative particle (example) indices, below 2**64.
    draw : int or integer array of shape (N,)
        Draw index in [0, 2**32), shared by all rows or one per row (adaptive
        samplers advance particles at different rates).
    dim : int
        Numbers per particle, >= 1. Block j gives dimensions 4j..4j+3;
        dimensions past ``dim`` in the last block are discarded.

    Returns
    -------
    numpy.ndarray of float64, shape (N, dim)

    Raises
    ------
    TypeError
        If ``seed`` or ``dim`` is not an int, or ``particles``/``draw`` not integer.
    ValueError
        If ``seed`` is outside [0, 2**64), a particle is negative, a draw index
        is outside [0, 2**32), ``draw`` has the wrong shape, or ``dim < 1``.

    Examples
    --------
    >>> z = counter_normals(7, [0, 1, 2], 0, 5)
    >>> z.shape
    (3, 5)
    >>> bool((counter_normals(7, [2], 0, 5) == z[2]).all())  # batch-invariant
    True
    """
    return _normals_from_uniforms(_counter_uniforms(seed, particles, draw, dim), dim)


def counter_uniforms(seed, particles, draw, dim) -> np.ndarray:
    """Uniforms in (0, 1) with the layout of :func:`counter_normals`.

    Dimension ``4j + m`` of row ``i`` is ``uniform_from_bits(w_m)`` of block
    ``j``. Parameters, errors and batch invariance are those of
    :func:`counter_normals`. The same ``(seed, particle, draw)`` gives
    uniforms and normals made from the same words: use separate draw indices
    for independent numbers (as :class:`NoiseStream` does).

    Returns
    -------
    numpy.ndarray of float64, shape (N, dim), values in [2**-33, 1 - 2**-33]
    """
    u = _counter_uniforms(seed, particles, draw, dim)  # (N, 4B)
    return u if u.shape[1] == dim else np.ascontiguousarray(u[:, :dim])


# --------------------------------------------------------------------------- the stream a sampler holds
class NoiseStream:
    """Per-example noise for a batch of ``n`` particles, one draw index per call.

    The stream holds a 64-bit ``seed`` and the particle indices
    ``offset .. offset + n - 1``. Each call of :meth:`normal` or
    :meth:`uniform` uses the next draw index ``k = draws`` and increments
    ``draws``, so particle ``p``'s ``k``-th draw is
    ``counter_normals(seed, [p], k, D)`` whatever the batch size. A batch
    split into chunks reproduces the whole: ``NoiseStream(s, n=5, offset=5)``
    gives rows 5..9 of ``NoiseStream(s, n=10)``.

    Parameters
    ----------
    rng : None, int, SeedSequence, BitGenerator or Generator
        SPEC 7 seed. The 64-bit key is drawn from it once, as
        ``int(as_rng(rng).integers(0, 2**64, dtype=np.uint64))``: an ``int``
        gives a fixed stream, a ``Generator`` advances by one draw.
    n : int
        Number of particles (rows), >= 0.
    offset : int, default 0
        Index of the first particle; ``offset + n <= 2**64``.
    seed : int, optional (keyword only)
        An explicit 64-bit key in [0, 2**64) used instead of drawing one from
        ``rng`` (same as :meth:`from_seed`); ``rng`` must then be None.

    Attributes
    ----------
    seed : int
        The 64-bit Philox key.
    n, offset : int
    particles : numpy.ndarray of uint64, shape (n,)
        ``offset + arange(n)``.
    draws : int
        Number of draw indices used so far (the next :meth:`normal` uses ``draws``).

    Examples
    --------
    >>> a = NoiseStream.from_seed(3, n=10)
    >>> b = NoiseStream.from_seed(3, n=5, offset=5)
    >>> bool((a.normal((10, 2))[5:] == b.normal((5, 2))).all())
    True
    """

    def __init__(self, rng=None, n=None, offset=0, *, seed=None):
        if n is None:
            raise TypeError("NoiseStream: n (the number of particles) is required")
        self.n = _check_int(n, "n", 0, 2**64)
        self.offset = _check_int(offset, "offset", 0, 2**64)
        if self.offset + self.n > 2**64:
            raise ValueError(
                f"offset + n must be at most 2**64 (particle indices are uint64), got {self.offset} + {self.n}"
            )
        if seed is None:
            seed = int(as_rng(rng).integers(0, 2**64, dtype=np.uint64))
        elif rng is not None:
            raise TypeError("NoiseStream: give either rng or seed, not both")
        self.seed = _check_int(seed, "seed", 0, 2**64)
        self.particles = np.uint64(self.offset) + np.arange(self.n, dtype=np.uint64)  # (n,)
        self.draws = 0

    @classmethod
    def from_seed(cls, seed: int, n: int, offset: int = 0) -> NoiseStream:
        """A stream with the explicit 64-bit key ``seed`` in [0, 2**64)."""
        return cls(None, n, offset, seed=seed)

    def __repr__(self) -> str:
        return f"NoiseStream(seed={self.seed}, n={self.n}, offset={self.offset}, draws={self.draws})"

    def _dim(self, shape) -> tuple[tuple[int, ...], int]:
        """Validate ``shape`` (n, ...) and return it with ``dim = prod(shape[1:])``."""
        try:
            shape = tuple(shape)
        except TypeError:
            shape = (shape,)
        ints = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
        if not shape or not ints or min(shape) < 0:
            raise ValueError(f"shape must be a tuple of non-negative ints (n, ...), got {shape!r}")
        shape = tuple(int(s) for s in shape)
        if shape[0] != self.n:
            raise ValueError(f"shape[0] must equal the stream's n = {self.n}, got shape {shape}")
        return shape, math.prod(shape[1:])

    def _next_draw(self) -> int:
        if self.draws >= 2**32:
            raise ValueError(f"NoiseStream: all 2**32 draw indices are used (draws = {self.draws})")
        k = self.draws
        self.draws += 1
        return k

    def _draw(self, fn, draw, shape, like, dtype):
        shape, dim = self._dim(shape)
        noise_dtype(like, dtype)
        if draw is None:  # the next draw index, taken only once the shape and dtype are valid
            draw = self._next_draw()
        if self.n == 0 or dim == 0:
            if not isinstance(draw, numbers.Integral):  # still validate the draw indices
                _as_uint64(draw, "draw", 2**32)
            z = np.zeros(shape, dtype=np.float64)
        else:
            z = fn(self.seed, self.particles, draw, dim).reshape(shape)
        return host_noise_like(z, like, dtype)

    def normal(self, shape, like=None, dtype=None):
        """Standard normals for the next draw index, shaped ``shape`` with ``shape[0] == n``.

        Row ``i`` is ``counter_normals(seed, [offset + i], k, prod(shape[1:]))``
        reshaped to ``shape[1:]``, with ``k`` the current ``draws`` (then
        incremented). Cast to ``dtype`` (default: ``like``'s dtype) on
        ``like``'s device; float64 NumPy when ``like`` is None.
        """
        return self._draw(counter_normals, None, shape, like, dtype)

    def uniform(self, shape, like=None, dtype=None):
        """Uniforms in (0, 1) for the next draw index (as :meth:`normal`; increments ``draws``)."""
        return self._draw(counter_uniforms, None, shape, like, dtype)

    def normal_at(self, draw, shape, like=None, dtype=None):
        """Standard normals at explicit draw index ``draw`` (int or (n,) array); ``draws`` unchanged.

        For adaptive samplers that keep a draw counter per particle: row ``i``
        uses draw index ``draw[i]``.
        """
        if draw is None:
            raise TypeError("draw must be an int or an (n,) integer array, got None")
        return self._draw(counter_normals, draw, shape, like, dtype)

    def uniform_at(self, draw, shape, like=None, dtype=None):
        """Uniforms at explicit draw index ``draw`` (int or (n,) array); ``draws`` unchanged."""
        if draw is None:
            raise TypeError("draw must be an int or an (n,) integer array, got None")
        return self._draw(counter_uniforms, draw, shape, like, dtype)
