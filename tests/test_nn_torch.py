"""Optional cross-check with PyTorch autograd: same MLP, same weights, same loss and gradients.

Skipped cleanly where PyTorch is not installed (refdiff never imports it).
"""

import numpy as np
import pytest

from refdiff.nn import MLP
from refdiff.nn.layers import sinusoidal_embedding
from refdiff.train import regression_loss

torch = pytest.importorskip("torch")


def torch_mlp_loss(net, p, x, t, y, target):
    """The MLP of refdiff.nn.mlp written with torch ops; returns (loss, {name: tensor})."""
    T = {name: torch.tensor(np.array(v), dtype=torch.float64, requires_grad=True) for name, v in p.items()}
    act = {"silu": torch.nn.functional.silu, "relu": torch.relu,
           "gelu": lambda a: torch.nn.functional.gelu(a, approximate="tanh")}[net.activation]
    e = torch.tensor(sinusoidal_embedding(t * net.time_scale, net.emb_dim))
    z = torch.cat([torch.tensor(x), e], dim=1)
    a = z @ T["in.W"] + T["in.b"]
    if net.n_classes is not None:
        a = a + T["cls.E"][torch.tensor(y)]
    h = act(a)
    for l in range(1, net.depth):
        h = h + act(h @ T[f"h{l}.W"] + T[f"h{l}.b"])
    out = h @ T["out.W"] + T["out.b"]
    loss = ((out - torch.tensor(target)) ** 2).mean()
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in T.items()}


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
@pytest.mark.parametrize("n_classes", [None, 3])
def test_loss_and_every_gradient_match_pytorch(activation, n_classes):
    net = MLP(2, width=32, depth=3, emb_dim=16, time_scale=1000.0, n_classes=n_classes, activation=activation)
    p = net.init(0, np.float64)
    gen = np.random.default_rng(1)
    x, target = gen.standard_normal((64, 2)), gen.standard_normal((64, 2))
    t = gen.uniform(0, 1, 64)
    y = gen.integers(0, 4, 64) if n_classes else None
    out, cache = net.forward(p, x, t, y)
    loss, dout = regression_loss(out, target)
    g = p.zeros_like()
    net.backward(p, g, cache, dout)
    t_loss, t_grads = torch_mlp_loss(net, p, x, t, y, target)
    assert loss == pytest.approx(t_loss, rel=1e-12)
    for name in p:
        np.testing.assert_allclose(g[name], t_grads[name], rtol=1e-5, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_matches_torch_optim(weight_decay):
    from refdiff.nn import Adam, Layout, Params, ParamSpec

    gen = np.random.default_rng(0)
    p = Params(Layout((ParamSpec("w", (10,), "zeros"),)), gen.standard_normal(10))
    w = torch.tensor(p.flat.copy(), requires_grad=True)
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    opt_t = cls([w], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    opt = Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    for _ in range(5):
        g = gen.standard_normal(10)
        w.grad = torch.tensor(g)
        opt_t.step()
        opt.step(p, Params(p.layout, g))
    np.testing.assert_allclose(p.flat, w.detach().numpy(), rtol=1e-12, atol=1e-14)
