r"""A small U-Net (Ronneberger et al. 2015, as used by Ho et al. 2020) for 8x8 to 16x16 images.

Structure, for ``channel_mult = (m_0, .., m_{L-1})`` and ``c_l = channels * m_l``::

    e    = Linear -> SiLU -> Linear (sinusoidal features of t * time_scale)
           [+ E_y, class embedding; row n_classes is "no class"]
    e'   = SiLU(e)                                  shared by every ResBlock
    h    = conv_in 3x3 (C_img -> c_0)
    down: for l = 0..L-1:  h = ResBlock(h, e') -> s_l;  AvgPool 2x2 unless l = L-1
    mid:  h = ResBlock(h, e')                       (c_{L-1} -> c_{L-1})
    up:   for l = L-1..0:  h = ResBlock([h, s_l], e') -> c_l;  Upsample 2x unless l = 0
    out  = conv_out 3x3 (SiLU(GroupNorm(h)))        (c_0 -> C_img, zero-initialised)

``[h, s_l]`` concatenates the skip on the channel axis. ``conv_out`` starts at
zero, so an untrained network predicts 0 everywhere. Inputs and outputs are
(N, C, H, W); every layer inside runs channels-last (see
:mod:`refdiff.nn.conv`), so the network transposes only at its two ends.
H and W must be divisible by ``2**(L-1)``. The default configuration for
(1, 8, 8) images has 335 745 parameters (channels=24: 196 097).
"""

from __future__ import annotations

import numpy as np

from ..backend import check_int
from .conv import AvgPool2d, Conv2d, GroupNormSiLU, ResBlock, Upsample2d, check_backend
from .layers import ClassEmbedding, Linear, SiLU
from .network import Network

__all__ = ["UNet"]


class UNet(Network):
    """Time- (and class-) conditioned U-Net ``f(x, t[, y])`` on (N, C, H, W) images.

    Parameters
    ----------
    image_shape : (C, H, W)
        Shape of one image; H and W divisible by ``2**(len(channel_mult) - 1)``.
    channels : int
        Channels of the first level.
    channel_mult : tuple of int
        Channel multiplier of each resolution level (one ResBlock per level on
        the way down and one on the way up).
    emb_dim : int
        Size of the sinusoidal time features and of the embedding (even).
    time_scale : float
        The features see ``t * time_scale``: 1 for discrete steps 1..T, 1000
        for continuous t in [0, 1].
    n_classes : int or None
        Number of classes of a conditional network (adds a null class).
    groups : int
        GroupNorm groups; must divide every level's channel count.
    backend : {"numpy", "numba", "auto"}
        Where each GroupNorm + SiLU pair (:class:`~refdiff.nn.conv.GroupNormSiLU`)
        and the products of the convolutions' patch chunks
        (:func:`~refdiff.nn.conv.chunk_matmul`) run: NumPy, their Numba twins
        (the ``fast`` extra) or Numba when installed and the activations are
        large enough. A run-time choice like the
        MLP's: not in :meth:`config` or checkpoints, and it may be changed on
        a live network (``net.backend = "numba"``).
    """

    kind = "unet"

    def __init__(
        self,
        image_shape=(1, 8, 8),
        channels=32,
        channel_mult=(1, 2),
        emb_dim=64,
        time_scale=1.0,
        n_classes=None,
        groups=8,
        backend="numpy",
    ):
        shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        self.data_shape = tuple(check_int(s, "image_shape") for s in shape)
        self.channels = check_int(channels, "channels")
        if isinstance(channel_mult, (int, np.integer)) or len(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}")
        self.channel_mult = tuple(check_int(m, "channel_mult") for m in channel_mult)
        self._set_time_features(emb_dim, time_scale)
        self.n_classes = None if n_classes is None else check_int(n_classes, "n_classes")
        self.groups = check_int(groups, "groups")
        c_img, height, width = self.data_shape
        levels = len(self.channel_mult)
        div = 2 ** (levels - 1)
        if height % div or width % div:
            raise ValueError(f"image_shape: H and W must be divisible by 2**(levels-1) = {div}, got {height}x{width}")
        widths = [self.channels * m for m in self.channel_mult]
        bad = [c for c in widths if c % self.groups]
        if bad:
            raise ValueError(f"groups ({self.groups}) must divide every level's channels {widths}")

        e = self.emb_dim
        self.temb0, self.temb1 = Linear("temb0", e, e), Linear("temb1", e, e)
        self.cls = None if self.n_classes is None else ClassEmbedding("cls", self.n_classes, e)
        self.act = SiLU()
        self.conv_in = Conv2d("conv_in", c_img, widths[0], 3, padding=1, channels_last=True)
        self.down, c = [], widths[0]
        for l, w in enumerate(widths):
            self.down.append(ResBlock(f"down{l}", c, w, e, self.groups, channels_last=True))
            c = w
        self.mid = ResBlock("mid", c, c, e, self.groups, channels_last=True)
        self.up = {}
        for l in reversed(range(levels)):
            self.up[l] = ResBlock(f"up{l}", c + widths[l], widths[l], e, self.groups, channels_last=True)
            c = widths[l]
        self.pool = AvgPool2d(2, channels_last=True)
        self.upsample = Upsample2d(2, channels_last=True)
        self.norm_out = GroupNormSiLU("norm_out", self.groups, widths[0], channels_last=True)
        self.conv_out = Conv2d("conv_out", widths[0], c_img, 3, padding=1, zero_init=True, channels_last=True)
        self.backend = backend

    @property
    def backend(self) -> str:
        """``"numpy"``, ``"numba"`` or ``"auto"``: where the GroupNorm + SiLU pairs and the convolutions' chunk
        products run."""
        return self.norm_out.backend

    @backend.setter
    def backend(self, value):
        check_backend(value)
        for layer in [*self.down, self.mid, *self.up.values(), self.norm_out, self.conv_in, self.conv_out]:
            layer.backend = value

    def config(self) -> dict:
        return {
            "image_shape": list(self.data_shape),
            "channels": self.channels,
            "channel_mult": list(self.channel_mult),
            "emb_dim": self.emb_dim,
            "time_scale": self.time_scale,
            "n_classes": self.n_classes,
            "groups": self.groups,
        }

    def specs(self):
        layers = [self.temb0, self.temb1] + ([self.cls] if self.cls else []) + [self.conv_in]
        layers += self.down + [self.mid] + [self.up[l] for l in sorted(self.up, reverse=True)]
        layers += [self.norm_out, self.conv_out]
        return [s for layer in layers for s in layer.specs()]

    def forward(self, p, x, t, y=None):
        x, t, y = self.inputs(p, x, t, y)
        levels = len(self.channel_mult)
        # embedding e' = SiLU(Linear(SiLU(Linear(features))) [+ E_y])
        a, c_t0 = self.temb0.forward(p, self.time_features(t, p.dtype))  # (N, E)
        a, c_ta = self.act.forward(p, a)
        e, c_t1 = self.temb1.forward(p, a)
        if self.cls is not None:
            e += self.cls.forward(p, y)[0]
        e, c_ea = self.act.forward(p, e)
        emb_caches = (c_t0, c_ta, c_t1, c_ea)

        h, c_in = self.conv_in.forward(p, x.transpose(0, 2, 3, 1))  # (N, H, W, c_0)
        caches, skips = [], []
        for l, block in enumerate(self.down):
            h, c = block.forward(p, h, e)
            skips.append(h)
            caches.append(c)
            if l < levels - 1:
                h, c = self.pool.forward(p, h)
                caches.append(c)
        h, c = self.mid.forward(p, h, e)
        caches.append(c)
        for l in reversed(range(levels)):
            c_h = h.shape[-1]
            h, c = self.up[l].forward(p, np.concatenate([h, skips[l]], axis=-1), e)
            caches.append((c_h, c))
            if l > 0:
                h, c = self.upsample.forward(p, h)
                caches.append(c)
        h, c_no = self.norm_out.forward(p, h)  # SiLU(GN(h))
        out, c_out = self.conv_out.forward(p, h)  # (N, H, W, C_img)
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        return out, (y, emb_caches, c_in, caches, (c_no, c_out))

    def backward(self, p, g, cache, dout, need_dx=False):
        y, (c_t0, c_ta, c_t1, c_ea), c_in, caches, (c_no, c_out) = cache
        levels = len(self.channel_mult)
        caches = list(caches)
        dh = self.conv_out.backward(p, g, c_out, dout.transpose(0, 2, 3, 1))
        dh = self.norm_out.backward(p, g, c_no, dh)
        demb = 0
        dskips = [None] * levels
        for l in range(levels):  # up path, in reverse: level 0 first
            if l > 0:
                dh = self.upsample.backward(p, g, caches.pop(), dh)
            c_h, c = caches.pop()
            dcat, de = self.up[l].backward(p, g, c, dh)
            demb = demb + de
            dh, dskips[l] = dcat[..., :c_h], dcat[..., c_h:]
        dh, de = self.mid.backward(p, g, caches.pop(), dh)
        demb = demb + de
        for l in reversed(range(levels)):
            if l < levels - 1:
                dh = self.pool.backward(p, g, caches.pop(), dh)
            dh = dh + dskips[l]
            dh, de = self.down[l].backward(p, g, caches.pop(), dh)
            demb = demb + de
        dx = self.conv_in.backward(p, g, c_in, dh, need_dx=need_dx)
        # embedding, in reverse
        da = self.act.backward(p, g, c_ea, demb)
        if self.cls is not None:
            self.cls.backward(p, g, y, da)
        if g is not None:  # nothing below depends on x: only parameter gradients remain
            da = self.temb1.backward(p, g, c_t1, da)
            da = self.act.backward(p, g, c_ta, da)
            self.temb0.backward(p, g, c_t0, da, need_dx=False)
        return None if dx is None else np.ascontiguousarray(dx.transpose(0, 3, 1, 2))
