"""Small networks with hand-written forward and backward passes (no autograd library).

Modules
-------
params      one flat parameter buffer with named views (:class:`Params`)
layers      Linear, SiLU / ReLU / GELU, class embedding, sinusoidal time features
conv        Conv2d, GroupNorm, average-pool and nearest up-sampling, residual block
network     the :class:`Network` base: input checks, VJP, ``bind`` for samplers
mlp         time-conditioned (and class-conditioned) residual MLP
unet        a small U-Net for 8x8 to 16x16 images
optim       Adam / AdamW, gradient clipping, warm-up, EMA
gradcheck   central-difference checks of every backward pass
checkpoint  atomic ``.npz`` checkpoints with JSON metadata
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .gradcheck import GradCheck, check_layer, check_network
from .mlp import MLP
from .network import BoundNetwork, Network
from .optim import Adam, clip_grad_norm, ema_update, warmup_lr
from .params import Layout, Params, ParamSpec

__all__ = [
    "Params",
    "ParamSpec",
    "Layout",
    "Network",
    "BoundNetwork",
    "MLP",
    "UNet",
    "Adam",
    "clip_grad_norm",
    "warmup_lr",
    "ema_update",
    "GradCheck",
    "check_layer",
    "check_network",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "build_network",
]


def __getattr__(name):
    # The U-Net module is written separately from the dense layers; load it on use.
    if name == "UNet":
        from .unet import UNet

        return UNet
    raise AttributeError(f"module 'refdiff.nn' has no attribute {name!r}")


def build_network(kind: str, config: dict) -> Network:
    """Rebuild a network from its ``kind`` and ``config()`` (what a checkpoint stores)."""
    if kind == "mlp":
        return MLP(**config)
    if kind == "unet":
        from .unet import UNet

        return UNet(**config)
    raise ValueError(f"unknown network kind {kind!r}; refdiff builds 'mlp' and 'unet'")
