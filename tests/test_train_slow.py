"""Slow: a trained MLP on the 8-mode ring against the exact-score samplers (run with `pytest -m slow`).

The issue's bar, scaled to a test: after about a minute of training, samples
from the reverse SDE and from DPM-Solver++ put every mode's weight within
0.05 of the truth and have a sliced W2 (to exact samples) within 3x of the
same sampler driven by the exact score. With n = 10 000 a mode weight's
standard error is at most 0.004, so 0.05 is a real error, not noise; the
exact-score samplers reach 0.003-0.007 and SW2 0.06-0.1 here.
"""

import numpy as np
import pytest

from refdiff import nn, samplers
from refdiff.metrics import mode_weight_error, sliced_wasserstein
from refdiff.objectives import EpsObjective
from refdiff.sde import VPSDE
from refdiff.targets import ring_mixture
from refdiff.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    target, vp = ring_mixture(), VPSDE()
    obj = EpsObjective(vp)
    net = nn.MLP(2, width=128, depth=3, time_scale=obj.time_scale)
    res = train(net, target.sample(100_000, rng=1), obj, steps=15_000, batch_size=512, lr=2e-3, warmup=200,
                progress=False)
    return target, vp, res


@pytest.mark.parametrize("sampler, kw", [(samplers.euler_maruyama, {"steps": 500}), (samplers.dpm_solver_pp, {"steps": 20})])
def test_trained_mlp_samples_match_the_exact_score_sampler(trained, sampler, kw):
    target, vp, res = trained
    n = 10_000
    exact_samples = target.sample(n, rng=2)
    x, _ = sampler(res.model(), vp, (n, 2), prediction="eps", rng=3, **kw)
    ref, _ = sampler(lambda y, t: target.eps(y, vp, t), vp, (n, 2), prediction="eps", rng=3, **kw)
    assert mode_weight_error(x, target) < 0.05
    assert sliced_wasserstein(x, exact_samples, rng=0) < 3 * sliced_wasserstein(ref, exact_samples, rng=0)


def test_trained_mlp_log_likelihood_is_close_to_the_exact_one(trained):
    from refdiff.likelihood import ode_log_likelihood

    target, vp, res = trained
    score = res.objective.score_model(res.network, res.ema.astype(np.float64))
    x0 = target.sample(200, rng=4)
    ll = ode_log_likelihood(vp, score, x0, score_vjp=score.vjp, rtol=1e-5, atol=1e-5)
    exact = target.log_prob(x0, vp, vp.t_min)
    # the model's mean log-likelihood may not exceed the truth by more than noise, nor fall far below it
    assert abs(ll.log_prob.mean() - exact.mean()) < 0.15
