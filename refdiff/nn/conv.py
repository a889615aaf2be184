r"""Convolutional layers with hand-written backward passes.

The interface is that of :mod:`refdiff.nn.layers`: ``specs()``,
``forward(p, x) -> (y, cache)`` and ``backward(p, g, cache, dy, need_dx=True) -> dx``,
which *adds* the parameter gradients into ``g`` (skipped when ``g`` is None).
:class:`ResBlock` also takes the conditioning embedding:
``forward(p, x, emb) -> (y, cache)`` and
``backward(p, g, cache, dy, need_dx=True) -> (dx, demb)``.

Layout. Images are (N, C, H, W) at the public boundary, as in PyTorch. Inside,
every layer computes on channels-last (N, H, W, C) arrays, because then

* the im2col matrix has rows (n, h, w) and columns (kh, kw, c): its copy moves
  runs of k*C contiguous values (a (N, C, H, W) gather moves runs of k), and the
  GEMM ``cols @ W`` directly gives the (N*H*W, C_out) rows of the
  channels-last output: no transpose before or after;
* the weight gradient ``dy^T @ cols`` is the same kind of matrix product, and
  the input gradient of a stride-1 convolution is one too (a correlation of
  dy with the flipped kernel); col2im, for other strides, is k*k additions
  of shifted (N, H, W, C) slices made of contiguous C-vectors;
* the per-channel sums of GroupNorm are reductions over the middle axis of
  an (N, H*W, C) array, which NumPy does as row additions of C-vectors.

Backends. :class:`GroupNormSiLU` (every GroupNorm of :class:`ResBlock` and
of the U-Net is followed by a SiLU) has the ``backend`` attribute of the MLP:
``"numpy"`` (:func:`group_norm_silu_forward` / :func:`group_norm_silu_backward`,
the reference), ``"numba"`` (their twins) or ``"auto"``. :class:`Conv2d` has
one too, for the products of its patch chunks (:func:`chunk_matmul`, NumPy's
BLAS; its Numba twin forms them with register tiles on the calling thread on
CPUs with AVX-512: a chunk's product is small and skinny, (a few hundred
rows, k k C) times (k k C, C_out), where BLAS ran at 89 GFLOP/s on two
threads and the tiles at some 250 on one). The patches themselves are
NumPy's strided copy on every backend: a Numba im2col was 2x slower.

A layer built with ``channels_last=True`` takes and returns (N, H, W, C)
arrays; :class:`~refdiff.nn.unet.UNet` builds all of its layers that way and
transposes only at its input and output. With ``channels_last=False`` (the
default) the layer wraps the same code with transposed views.

==================  ============================================================  ==========================================================
layer               forward                                                       backward
==================  ============================================================  ==========================================================
``Conv2d``          :math:`y = \mathrm{cols}(x)\,W_{mat}^T + b`, with             :math:`dW = dy^T\,\mathrm{cols}(x)`, :math:`db=\sum dy`,
                    :math:`\mathrm{cols}` the (N Ho Wo, k k C_in) patches          :math:`dx = \mathrm{col2im}(dy\,W_{mat})`, for stride 1
                                                                                  computed as :math:`\mathrm{cols}(dy)\,W_{flip}`, and then
                                                                                  :math:`dW` as :math:`x^T\mathrm{cols}(dy)`, taps flipped
``GroupNorm``       :math:`\hat x = (x-\mu_g)/\sqrt{\sigma_g^2+\epsilon}`,          :math:`dx = r\,(\gamma dy - \overline{\gamma dy}
                    :math:`y=\gamma\hat x + \beta`; statistics per example and      - \hat x\,\overline{\gamma dy\,\hat x})`, means over the
                    group over (C/G, H, W)                                        group, :math:`r = (\sigma_g^2+\epsilon)^{-1/2}`
``GroupNormSiLU``   :math:`h = z\,\sigma(z)`, :math:`z` = GroupNorm(x), as one    SiLU's, then GroupNorm's; ``backend="numba"`` does both
                    layer with a ``backend`` (:func:`group_norm_silu_forward`)    in one pass per image (``refdiff.kernels.conv_numba``)
``AvgPool2d``       mean of each f x f block                                      :math:`dx = dy/f^2` spread over the block
``Upsample2d``      nearest neighbour, each value repeated f x f                  :math:`dx` = sum of dy over each f x f block
``ResBlock``        GN, SiLU, conv3x3, + Linear(emb), GN, SiLU, conv3x3, + skip   reverse of the forward; the skip is 1x1 conv if
                                                                                  C_in != C_out
==================  ============================================================  ==========================================================

References: Wu & He 2018 (Group Normalization); He et al. 2016 (residual
blocks); Ho et al. 2020, appendix B (the residual block with a time-embedding
projection used by DDPM's U-Net).
"""

from __future__ import annotations

import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..backend import check_int
from . import fused
from .layers import Linear, sigmoid
from .params import ParamSpec

__all__ = [
    "Conv2d",
    "GroupNorm",
    "GroupNormSiLU",
    "AvgPool2d",
    "Upsample2d",
    "ResBlock",
    "im2col",
    "col2im",
    "patch_chunks",
    "chunk_matmul",
    "fused_ops",
    "group_norm_silu_forward",
    "group_norm_silu_backward",
]

#: "auto" runs :class:`GroupNormSiLU` on Numba from this many values per batch
#: (N*H*W*C). Forward plus backward, float32, 32 channels in 8 groups, 2 cores:
#: the twin on one thread (below ``conv_numba.PARALLEL_MIN``) took 7.0 us at
#: 128 values against NumPy's 35, 30 against 114 at 16k, 109 against 586 at
#: 64k; 0.74 ms against 5.3 at 512k in parallel. The threshold only spares a
#: small one-off call Numba's import.
AUTO_MIN_SIZE = 4096


def _to_nhwc(x):
    return x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C), a view


def _to_nchw(x):
    return x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W), a view


class _Spatial:
    """Shared (N, C, H, W) <-> (N, H, W, C) wrapping of a channels-last core."""

    channels_last = False

    def _in(self, x):
        if getattr(x, "ndim", None) != 4:
            name = getattr(self, "name", type(self).__name__)
            raise ValueError(f"{name}: input must be a 4-D image batch, got shape {getattr(x, 'shape', None)}")
        return x if self.channels_last else _to_nhwc(x)

    def _out(self, y):
        return y if self.channels_last else _to_nchw(y)


# --- im2col / col2im ---------------------------------------------------------------

#: Bytes of patch matrix built at a time. The patch matrix of a whole batch is
#: k*k times the input (56 MB for 256 images of 8x8x96 in float32): written to
#: and read back from main memory it costs more than the GEMM (a whole-batch
#: im2col made that layer 1.9x slower here). Built a few images at a time into
#: one reused buffer, it stays in the L2 cache; the backward pass rebuilds it
#: instead of keeping it, which also keeps the forward cache small. Measured
#: on the U-Net training step (batch 256, 8x8, 32 channels, float32; 4 MiB L2
#: per core): 1 MiB was best with 1 and with 2 BLAS threads, 2 MiB 5-8% and
#: 0.25 MiB 10% slower, 8 MiB and more 15-30% slower.
CHUNK_BYTES = 1 << 20


def _out_size(size, k, stride, padding):
    return (size + 2 * padding - k) // stride + 1


def _windows(xp, k, stride):
    """(N, Hp, Wp, C) padded images -> (N, Ho, Wo, k, k, C) view of every patch."""
    win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # (N, Ho, Wo, C, k, k)
    return win.transpose(0, 1, 2, 4, 5, 3)


def chunk_matmul(a, b, out):
    """``out = a @ b`` for one chunk of patches (NumPy's BLAS); returns ``out``. ``b`` and ``out`` C-contiguous.

    The reference of ``refdiff.kernels.conv_numba.chunk_matmul``, which sums
    each entry in another order (one FMA per term, in order of the inner
    index)."""
    np.matmul(a, b, out=out)
    return out


def im2col(x, k: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Patches of a channels-last batch as rows: (N, H, W, C) -> (N*Ho*Wo, k*k*C).

    Row ``(n, i, j)`` holds the k x k x C patch whose top-left corner is
    input pixel ``(i*stride - padding, j*stride - padding)``, ordered
    (kh, kw, c), zeros outside the image. (The reference form of what
    :func:`patch_chunks` builds a few images at a time.)
    """
    n, h, w, c = x.shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    xp = np.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=x.dtype)
    xp[:, padding : padding + h, padding : padding + w] = x
    # One copy; NumPy merges (kw, c) into runs of k*C contiguous values.
    return _windows(xp, k, stride).reshape(n * ho * wo, k * k * c)  # (N Ho Wo, k k C)


def patch_chunks(x, k: int, stride: int = 1, padding: int = 0, chunk_bytes=None):
    """Yield ``(start, stop, cols)``: the :func:`im2col` rows of images ``start:stop``.

    Chunks hold as many images as fit in ``chunk_bytes`` (default
    :data:`CHUNK_BYTES`), at least one. ``cols`` ((stop-start)*Ho*Wo, k*k*C)
    lives in one buffer that the next step overwrites: use it before asking
    for the next chunk.
    """
    n, h, w, c = x.shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    per_image = ho * wo * k * k * c * x.dtype.itemsize
    b = max(1, min(n, (CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // per_image))
    xp = np.zeros((b, h + 2 * padding, w + 2 * padding, c), dtype=x.dtype)  # borders stay 0
    win = _windows(xp, k, stride)  # (b, Ho, Wo, k, k, C), a view of xp
    cols = np.empty((b, ho, wo, k, k, c), dtype=x.dtype)
    for start in range(0, n, b):
        stop = min(start + b, n)
        m = stop - start
        xp[:m, padding : padding + h, padding : padding + w] = x[start:stop]
        np.copyto(cols[:m], win[:m])
        yield start, stop, cols[:m].reshape(m * ho * wo, k * k * c)


def col2im(cols, shape, k: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Adjoint of :func:`im2col`: add each patch row back onto its pixels -> (N, H, W, C).

    k*k additions of shifted slices (no ``np.add.at``); the result may be a
    view into a padded buffer.
    """
    n, h, w, c = shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    d6 = cols.reshape(n, ho, wo, k, k, c)
    dxp = np.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=cols.dtype)
    hs, ws = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    for i in range(k):
        for j in range(k):
            dxp[:, i : i + hs : stride, j : j + ws : stride] += d6[:, :, :, i, j]
    return dxp[:, padding : padding + h, padding : padding + w]


# --- Conv2d ------------------------------------------------------------------------


class Conv2d(_Spatial):
    """2-D cross-correlation (PyTorch's ``Conv2d``): im2col and GEMM, a few images at a time.

    Parameters
    ----------
    name : str
        Prefix of the parameter names ``{name}.W`` (c_out, c_in, k, k), as in
        PyTorch, so weights copy across unchanged, and ``{name}.b`` (c_out,).
    c_in, c_out, kernel_size, stride, padding : int
        Square kernel, equal stride and zero padding on both axes.
    bias : bool
    zero_init : bool
        Start W and b at zero (a network's last layer then predicts 0);
        otherwise :math:`U(\\pm 1/\\sqrt{c_{in} k^2})` as PyTorch.
    channels_last : bool
        Take and return (N, H, W, C) instead of (N, C, H, W).
    backend : {"numpy", "numba", "auto"}
        Where the products of the patch chunks run (:func:`chunk_matmul` or
        its Numba twin; "auto" as :func:`fused_ops` picks). Not part of the
        architecture: not in any config or checkpoint.

    Forward: ``y = cols(x) @ W_mat^T + b`` chunk by chunk (see
    :data:`CHUNK_BYTES`); the cache keeps x, not the patches. Backward, stride
    1: ``dx`` is the correlation of dy (padded by k-1-padding) with the
    flipped kernel, channels swapped, ``cols(dy) @ W_flip``, and the same
    patches of dy give ``dW`` (flipped) as ``x^T cols(dy)``; other strides,
    or no ``dx`` wanted: ``dW = sum over chunks of dy^T @ cols(x)`` (patches
    rebuilt) and ``dx`` by :func:`col2im`. The
    GEMM wants W as a (c_out, k*k*c_in) matrix in (kh, kw, c) order: that
    small reordered copy is made per call.
    """

    def __init__(self, name, c_in, c_out, kernel_size, stride=1, padding=0, bias=True, zero_init=False, channels_last=False,
                 backend="numpy"):
        self.name = name
        self.backend = check_backend(backend)
        self.c_in = check_int(c_in, "c_in")
        self.c_out = check_int(c_out, "c_out")
        self.k = check_int(kernel_size, "kernel_size")
        self.stride = check_int(stride, "stride")
        self.padding = check_int(padding, "padding", lo=0)
        self.bias, self.zero_init, self.channels_last = bool(bias), bool(zero_init), bool(channels_last)
        self.W, self.b = f"{name}.W", f"{name}.b"

    def specs(self):
        init = "zeros" if self.zero_init else "uniform_fan_in"
        fan_in = self.c_in * self.k * self.k
        out = [ParamSpec(self.W, (self.c_out, self.c_in, self.k, self.k), init, fan_in=fan_in)]
        if self.bias:
            out.append(ParamSpec(self.b, (self.c_out,), init, fan_in=fan_in))
        return out

    @property
    def _pointwise(self):
        return self.k == 1 and self.stride == 1 and self.padding == 0

    def _w_mat(self, p):
        return p[self.W].transpose(0, 2, 3, 1).reshape(self.c_out, -1)  # (c_out, k k c_in), (kh, kw, c) order

    def forward(self, p, x):
        x = self._in(x)
        n, h, w, c = x.shape
        if c != self.c_in:
            raise ValueError(f"{self.name}: expected {self.c_in} input channels, got {c}")
        ho, wo = _out_size(h, self.k, self.stride, self.padding), _out_size(w, self.k, self.stride, self.padding)
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: input {h}x{w} is smaller than the {self.k}x{self.k} kernel with padding {self.padding}")
        w_mat_t = self._w_mat(p).T  # (k k C_in, C_out)
        if self._pointwise:
            y = x.reshape(n * h * w, c) @ w_mat_t
            if self.bias:
                y += p[self.b]
        else:
            y = np.empty((n * ho * wo, self.c_out), dtype=np.result_type(x.dtype, w_mat_t.dtype))  # (N Ho Wo, C_out)
            rows = ho * wo
            ops = fused_ops(self.backend, x.size)
            w_mat_t = np.ascontiguousarray(w_mat_t, dtype=y.dtype)
            for start, stop, cols in patch_chunks(x, self.k, self.stride, self.padding):
                y_chunk = y[start * rows : stop * rows]
                ops.chunk_matmul(cols, w_mat_t, y_chunk)
                if self.bias:
                    y_chunk += p[self.b]  # while the chunk is in cache
        return self._out(y.reshape(n, ho, wo, self.c_out)), x

    def backward(self, p, g, cache, dy, need_dx=True):
        x = cache
        n, h, w, c = x.shape
        k, pad = self.k, self.padding
        dy = self._in(dy)
        if n == 0:  # an empty batch adds no parameter gradient
            return self._out(np.zeros(x.shape, dtype=np.result_type(dy.dtype, p[self.W].dtype))) if need_dx else None
        dy2 = dy.reshape(-1, self.c_out)  # (N Ho Wo, C_out)
        rows = dy2.shape[0] // n
        if g is not None and self.bias:
            g[self.b] += np.ones(dy2.shape[0], dtype=dy2.dtype) @ dy2  # a GEMV: 5-7x faster than dy2.sum(axis=0)
        if self._pointwise:
            if g is not None:
                g[self.W] += (dy2.T @ x.reshape(-1, c))[:, :, None, None]  # (C_out, C_in, 1, 1)
            return self._out((dy2 @ self._w_mat(p)).reshape(x.shape)) if need_dx else None
        if need_dx and self.stride == 1 and pad <= k - 1:
            return self._out(self._backward_stride1(p, g, x, dy))
        if g is not None:
            dw = np.zeros((self.c_out, k * k * c), dtype=dy2.dtype)  # (C_out, k k C_in)
            part = np.empty(dw.shape, np.result_type(dy2.dtype, x.dtype))  # the product's own dtype, as `@` gives
            ops = fused_ops(self.backend, x.size)
            for start, stop, cols in patch_chunks(x, k, self.stride, pad):
                dw += ops.chunk_matmul(dy2[start * rows : stop * rows].T, cols, part)
            g[self.W] += dw.reshape(self.c_out, k, k, c).transpose(0, 3, 1, 2)
        if not need_dx:
            return None
        dcols = dy2 @ self._w_mat(p)  # (N Ho Wo, k k C_in)
        return self._out(col2im(dcols, x.shape, k, self.stride, pad))

    def _backward_stride1(self, p, g, x, dy):
        """dx and dW of a stride-1 convolution from one patch matrix, that of dy.

        dx is the correlation of dy, padded by q = k-1-pad, with the flipped
        kernel, channels swapped: ``P @ W_flip`` with P the patches of dy (rows
        on the input grid). The same P gives the weight gradient: row (n, i, j)
        of P holds dy at (i + a - q, j + b - q) in column (a, b, c_out), the
        output pixel that saw x[n, i, j] through tap (k-1-a, k-1-b), so
        ``x^T P`` is dW with its taps flipped. The patches of x are not built.
        """
        n, h, w, c = x.shape
        k, pad = self.k, self.padding
        w_flip = p[self.W][:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(k * k * self.c_out, c)
        dx = np.empty((n * h * w, c), dtype=np.result_type(dy.dtype, w_flip.dtype))  # (N H W, C_in)
        x2 = x.reshape(n * h * w, c)
        dw = None if g is None else np.zeros((c, k * k * self.c_out), dtype=dx.dtype)  # (C_in, k k C_out), flipped taps
        part = None if g is None else np.empty(dw.shape, np.result_type(x2.dtype, dy.dtype))  # as `@` gives
        ops = fused_ops(self.backend, x.size)
        w_flip = np.ascontiguousarray(w_flip, dtype=dx.dtype)
        for start, stop, cols in patch_chunks(dy, k, 1, k - 1 - pad):  # dy: (N, Ho, Wo, C_out)
            lo, hi = start * h * w, stop * h * w
            ops.chunk_matmul(cols, w_flip, dx[lo:hi])
            if dw is not None:
                dw += ops.chunk_matmul(x2[lo:hi].T, cols, part)
        if dw is not None:
            g[self.W] += dw.reshape(c, k, k, self.c_out)[:, ::-1, ::-1, :].transpose(3, 0, 1, 2)
        return dx.reshape(x.shape)


# --- GroupNorm ---------------------------------------------------------------------


def _group_sums(s, groups):
    """(N, C) per-channel sums -> (N, C) group sums, each repeated over its channels."""
    n, c = s.shape
    sg = s.reshape(n, groups, c // groups).sum(axis=2)  # (N, G); no -1: N may be 0
    return np.repeat(sg, c // groups, axis=1)  # (N, C)


def _group_norm_forward(x, gamma, beta, groups, eps):
    """GroupNorm of a channels-last (N, S, C) batch: ``(y, xc, mu, rstd)``, xc the centred x, mu and rstd (N, C)."""
    n, hw, c = x.shape
    count = hw * (c // groups)
    mu = _group_sums(x.sum(axis=1), groups) / count  # (N, C)
    xc = x - mu[:, None, :]  # centred; xhat = xc * rstd is never stored
    var = _group_sums(np.einsum("nsc,nsc->nc", xc, xc), groups) / count  # (N, C), two-pass variance
    rstd = 1.0 / np.sqrt(var + eps)  # (N, C)
    y = xc * (rstd * gamma)[:, None, :]  # gamma xhat
    y += beta
    return y, xc, mu, rstd


def _group_norm_backward(dy, xc, rstd, gamma, groups, dgamma=None, dbeta=None, need_dx=True):
    """Input gradient (N, S, C) of :func:`_group_norm_forward` (None unless ``need_dx``); adds into dgamma, dbeta."""
    n, hw, c = dy.shape
    s_dy = dy.sum(axis=1)  # (N, C)
    s_dyx = np.einsum("nsc,nsc->nc", dy, xc) * rstd  # (N, C): sum of dy xhat
    if dgamma is not None:
        dgamma += s_dyx.sum(axis=0)
    if dbeta is not None:
        dbeta += s_dy.sum(axis=0)
    if not need_dx:
        return None
    count = hw * (c // groups)
    m1 = _group_sums(s_dy * gamma, groups) / count  # mean of gamma dy over the group
    m2 = _group_sums(s_dyx * gamma, groups) / count  # mean of gamma dy xhat over the group
    # dx = rstd (gamma dy - m1 - xhat m2), xhat = xc rstd
    dx = dy * (rstd * gamma)[:, None, :]
    dx -= xc * (rstd * rstd * m2)[:, None, :]
    dx -= (rstd * m1)[:, None, :]
    return dx


def group_norm_silu_forward(x, gamma, beta, groups, eps):
    r"""SiLU after GroupNorm on a channels-last (N, S, C) batch: returns ``(h, s, mu, rstd)``.

    :math:`z = \gamma (x - \mu_g) r + \beta` (:class:`GroupNorm`), then
    :math:`s = \sigma(z)`, :math:`h = z\,s` (:class:`~refdiff.nn.layers.SiLU`).
    ``h`` and ``s`` are new (N, S, C) arrays, ``mu`` and ``rstd`` the (N, C)
    mean :math:`\mu_g` and :math:`r = (\sigma_g^2 + \epsilon)^{-1/2}` of
    each channel's group. The backward pass takes x again instead of a stored
    :math:`x - \mu_g`: one (N, S, C) array less to write (x is kept alive by
    the cache anyway). The reference of
    ``refdiff.kernels.conv_numba.group_norm_silu_forward``.
    """
    z, _, mu, rstd = _group_norm_forward(x, gamma, beta, groups, eps)
    s = sigmoid(z)
    z *= s  # h = z s
    return z, s, mu, rstd


def group_norm_silu_backward(dh, x, h, s, mu, rstd, gamma, groups, dgamma=None, dbeta=None, need_dx=True):
    r"""Gradient through :func:`group_norm_silu_forward`: the (N, S, C) input gradient, or None.

    :math:`dz = dh\,(s + h(1 - s))` (SiLU), then the GroupNorm backward of
    :class:`GroupNorm`. ``dgamma`` and ``dbeta`` ((C,) or None) are
    incremented in place by :math:`\sum dz\,\hat x` and :math:`\sum dz`.
    The reference of ``refdiff.kernels.conv_numba.group_norm_silu_backward``.
    """
    dz = 1.0 - s  # s + h (1 - s): no cancellation where s rounds to 1 (see layers.SiLU)
    dz *= h
    dz += s
    dz *= dh
    xc = x - mu[:, None, :]  # as in the forward pass
    return _group_norm_backward(dz, xc, rstd, gamma, groups, dgamma, dbeta, need_dx)


def check_backend(backend) -> str:
    """``backend`` if it is ``"numpy"``, ``"numba"`` or ``"auto"`` (ImportError for "numba" without Numba)."""
    return fused.check_backend(backend)


def fused_ops(backend: str, size: int):
    """The module whose ``group_norm_silu_*`` and ``chunk_matmul`` a layer with ``size`` values uses (this one or its
    Numba twin)."""
    if fused.numba_chosen(backend, size, AUTO_MIN_SIZE):
        from ..kernels import conv_numba

        return conv_numba
    return sys.modules[__name__]


class GroupNorm(_Spatial):
    """Group normalisation (Wu & He 2018) with a per-channel affine map.

    Each example's C channels are split into ``groups`` consecutive groups;
    mean and (biased) variance are taken over (C/groups, H, W). ``{name}.gamma``
    starts at 1 and ``{name}.beta`` at 0, as in PyTorch's ``GroupNorm``.
    """

    def __init__(self, name, groups, channels, eps=1e-5, channels_last=False):
        self.name = name
        self.groups = check_int(groups, "groups")
        self.channels = check_int(channels, "channels")
        if self.channels % self.groups:
            raise ValueError(f"{name}: channels ({channels}) must be divisible by groups ({groups})")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.eps, self.channels_last = float(eps), bool(channels_last)
        self.gamma, self.beta = f"{name}.gamma", f"{name}.beta"

    def specs(self):
        return [ParamSpec(self.gamma, (self.channels,), "ones"), ParamSpec(self.beta, (self.channels,), "zeros")]

    def _in3(self, x):
        """(N, H, W, C) of the input and its (N, H*W, C) view; checks the channel count."""
        x = self._in(x)
        n, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f"{self.name}: expected {self.channels} channels, got {c}")
        return x, x.reshape(n, h * w, c)

    def _grads(self, g):
        return (None, None) if g is None else (g[self.gamma], g[self.beta])

    def forward(self, p, x):
        x, x3 = self._in3(x)  # (N, HW, C)
        y, xc, _, rstd = _group_norm_forward(x3, p[self.gamma], p[self.beta], self.groups, self.eps)
        return self._out(y.reshape(x.shape)), (xc, rstd, x.shape)

    def backward(self, p, g, cache, dy, need_dx=True):
        xc, rstd, shape = cache
        dy3 = self._in(dy).reshape(xc.shape)  # (N, HW, C)
        dx = _group_norm_backward(dy3, xc, rstd, p[self.gamma], self.groups, *self._grads(g), need_dx=need_dx)
        return None if dx is None else self._out(dx.reshape(shape))


class GroupNormSiLU(GroupNorm):
    """``SiLU(GroupNorm(x))`` as one layer (the parameters of :class:`GroupNorm`).

    ``backend`` picks where it runs: ``"numpy"`` (:func:`group_norm_silu_forward`
    and :func:`group_norm_silu_backward`), ``"numba"`` (their twins in
    ``refdiff.kernels.conv_numba``: one pass per image for the statistics and
    the backward, the ``fast`` extra) or ``"auto"`` (Numba when installed and
    the batch holds at least :data:`AUTO_MIN_SIZE` values). A run-time
    choice: it may be changed between calls.
    """

    def __init__(self, name, groups, channels, eps=1e-5, channels_last=False, backend="numpy"):
        super().__init__(name, groups, channels, eps, channels_last)
        self.backend = check_backend(backend)

    def forward(self, p, x):
        x, x3 = self._in3(x)  # (N, HW, C)
        ops = fused_ops(self.backend, x3.size)
        h, s, mu, rstd = ops.group_norm_silu_forward(x3, p[self.gamma], p[self.beta], self.groups, self.eps)
        return self._out(h.reshape(x.shape)), (x3, h, s, mu, rstd, x.shape, ops)

    def backward(self, p, g, cache, dy, need_dx=True):
        x3, h, s, mu, rstd, shape, ops = cache
        dh = self._in(dy).reshape(h.shape)  # (N, HW, C)
        dx = ops.group_norm_silu_backward(dh, x3, h, s, mu, rstd, p[self.gamma], self.groups, *self._grads(g),
                                          need_dx=need_dx)
        return None if dx is None else self._out(dx.reshape(shape))


# --- pooling and up-sampling ------------------------------------------------------


def _block_sum(x, f):
    """(N, H, W, C) -> (N, H/f, W/f, C): the sum of each f x f block.

    f*f - 1 additions of strided slices, in the block's row-major order;
    NumPy's ``reshape(...).sum(axis=(2, 4))`` is 2-4x slower on channels-last
    arrays.
    """
    y = x[:, ::f, ::f].copy()
    for a in range(f):
        for b in range(f):
            if a or b:
                y += x[:, a::f, b::f]
    return y


class AvgPool2d(_Spatial):
    """Mean over non-overlapping ``factor`` x ``factor`` blocks (H and W divisible by factor)."""

    def __init__(self, factor=2, channels_last=False):
        self.factor, self.channels_last = check_int(factor, "factor"), bool(channels_last)

    def specs(self):
        return []

    def forward(self, p, x):
        x = self._in(x)
        n, h, w, c = x.shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"AvgPool2d: H and W must be divisible by {f}, got {h}x{w}")
        y = _block_sum(x, f)  # (N, H/f, W/f, C)
        y *= 1.0 / (f * f)
        return self._out(y), x.shape

    def backward(self, p, g, cache, dy, need_dx=True):
        if not need_dx:
            return None
        n, h, w, c = cache
        f = self.factor
        d = self._in(dy) * (1.0 / (f * f))  # (N, H/f, W/f, C)
        dx = np.broadcast_to(d[:, :, None, :, None, :], (n, h // f, f, w // f, f, c)).reshape(n, h, w, c)
        return self._out(dx)


class Upsample2d(_Spatial):
    """Nearest-neighbour up-sampling: each pixel becomes a ``factor`` x ``factor`` block."""

    def __init__(self, factor=2, channels_last=False):
        self.factor, self.channels_last = check_int(factor, "factor"), bool(channels_last)

    def specs(self):
        return []

    def forward(self, p, x):
        x = self._in(x)
        n, h, w, c = x.shape
        f = self.factor
        y = np.broadcast_to(x[:, :, None, :, None, :], (n, h, f, w, f, c)).reshape(n, h * f, w * f, c)
        if f == 1:  # the reshape is then a read-only view of x, not a new array
            y = y.copy()
        return self._out(y), x.shape

    def backward(self, p, g, cache, dy, need_dx=True):
        if not need_dx:
            return None
        n, h, w, c = cache
        f = self.factor
        return self._out(_block_sum(self._in(dy), f))  # (N, H, W, C)


# --- residual block ------------------------------------------------------------------


class ResBlock(_Spatial):
    """DDPM's residual block with a conditioning embedding (Ho et al. 2020, appendix B).

    .. math::

        h &= \\mathrm{conv}_1(\\mathrm{SiLU}(\\mathrm{GN}_1(x))) + e\\,W_e + b_e \\\\
        y &= \\mathrm{conv}_2(\\mathrm{SiLU}(\\mathrm{GN}_2(h))) + \\mathrm{skip}(x)

    with 3x3 convolutions (padding 1), ``e`` the (N, emb_dim) embedding
    (already passed through its nonlinearity by the caller) added to every
    pixel, and ``skip`` the identity, or a 1x1 convolution when
    ``c_in != c_out``.

    Interface: ``forward(p, x, emb) -> (y, cache)`` and
    ``backward(p, g, cache, dy, need_dx=True) -> (dx, demb)`` (``demb`` is
    always returned, ``dx`` is None unless ``need_dx``). Each GN + SiLU pair
    is one :class:`GroupNormSiLU` (``norm1``, ``norm2``); ``backend`` (a
    property) sets where both run, and the chunk products of the two 3x3
    convolutions (the 1x1 skip is one product, by BLAS).
    """

    def __init__(self, name, c_in, c_out, emb_dim, groups, channels_last=False, backend="numpy"):
        self.name = name
        self.c_in, self.c_out = check_int(c_in, "c_in"), check_int(c_out, "c_out")
        self.emb_dim, self.groups = check_int(emb_dim, "emb_dim"), check_int(groups, "groups")
        self.channels_last = bool(channels_last)
        self.norm1 = GroupNormSiLU(f"{name}.norm1", groups, c_in, channels_last=True)
        self.conv1 = Conv2d(f"{name}.conv1", c_in, c_out, 3, padding=1, channels_last=True)
        self.emb = Linear(f"{name}.emb", emb_dim, c_out)
        self.norm2 = GroupNormSiLU(f"{name}.norm2", groups, c_out, channels_last=True)
        self.conv2 = Conv2d(f"{name}.conv2", c_out, c_out, 3, padding=1, channels_last=True)
        self.skip = None if c_in == c_out else Conv2d(f"{name}.skip", c_in, c_out, 1, channels_last=True)
        self.backend = backend

    @property
    def backend(self) -> str:
        """``"numpy"``, ``"numba"`` or ``"auto"``: where the GroupNorm + SiLU pairs and the convolutions' chunk
        products run."""
        return self.norm1.backend

    @backend.setter
    def backend(self, value):
        value = check_backend(value)
        for layer in (self.norm1, self.norm2, self.conv1, self.conv2, self.skip):
            if layer is not None:
                layer.backend = value

    def specs(self):
        layers = [self.norm1, self.conv1, self.emb, self.norm2, self.conv2] + ([self.skip] if self.skip else [])
        return [s for layer in layers for s in layer.specs()]

    def forward(self, p, x, emb):
        x = self._in(x)
        if getattr(emb, "shape", None) != (x.shape[0], self.emb_dim):
            raise ValueError(f"{self.name}: emb must have shape ({x.shape[0]}, {self.emb_dim}), got {getattr(emb, 'shape', None)}")
        h, c_n1 = self.norm1.forward(p, x)  # SiLU(GN_1(x))
        h, c_c1 = self.conv1.forward(p, h)  # (N, H, W, C_out)
        e, c_e = self.emb.forward(p, emb)  # (N, C_out)
        h += e[:, None, None, :]
        h, c_n2 = self.norm2.forward(p, h)  # SiLU(GN_2(h))
        h, c_c2 = self.conv2.forward(p, h)
        if self.skip is None:
            h += x
            c_s = None
        else:
            s, c_s = self.skip.forward(p, x)
            h += s
        return self._out(h), (c_n1, c_c1, c_e, c_n2, c_c2, c_s)

    def backward(self, p, g, cache, dy, need_dx=True):
        c_n1, c_c1, c_e, c_n2, c_c2, c_s = cache
        dy = self._in(dy)
        dh = self.conv2.backward(p, g, c_c2, dy)
        dh = self.norm2.backward(p, g, c_n2, dh)
        n, h, w, c = dh.shape
        # the projection was added at every pixel: demb gets the sum over pixels (batched GEMV, 5x a .sum)
        demb = self.emb.backward(p, g, c_e, np.matmul(np.ones(h * w, dtype=dh.dtype), dh.reshape(n, h * w, c)))
        dh = self.conv1.backward(p, g, c_c1, dh)
        dx = self.norm1.backward(p, g, c_n1, dh, need_dx=need_dx)
        if self.skip is None:
            if need_dx:
                dx += dy
        else:
            ds = self.skip.backward(p, g, c_s, dy, need_dx=need_dx)
            if need_dx:
                dx += ds
        return (self._out(dx) if need_dx else None), demb
