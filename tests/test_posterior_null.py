"""The null branch from a noise-level estimator's posterior (comfy_nag/posterior_null.py) in the denoiser."""
import math

import pytest
import torch

from comfy_nag import estimators, models, posterior_null, schedules
from comfy_nag.denoiser import Denoiser
from comfy_nag.guidance import Guidance
from comfy_nag.null_branch import EstimatorNull

BINS = estimators.LevelBins(-6.0, 6.0, 12)


class FixedEstimator(torch.nn.Module):
    """An 'estimator' with fixed logits per state (counts its calls)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.bins, self.logits, self.calls = BINS, logits, 0

    def forward(self, x):
        self.calls += 1
        return self.logits[: x.shape[0]]


def _posterior(B=4, seed=0):
    return torch.softmax(torch.randn(B, BINS.k, generator=torch.Generator().manual_seed(seed)) * 2, 1)


def test_quadrature_levels_match_the_posterior_moments():
    p = _posterior()
    c = BINS.centers()
    mean = p @ c
    one = posterior_null.quadrature(p, BINS, 1)
    assert one.count == 1 and torch.allclose(one.logsnr[:, 0], mean) and torch.equal(one.weight, torch.ones(4, 1))
    every = posterior_null.quadrature(p, BINS, 0)
    assert every.count == BINS.k and torch.equal(every.weight, p) and torch.allclose(every.logsnr[0], c)
    for post in (torch.nn.functional.one_hot(torch.tensor([5, 6]), BINS.k).float(), p):
        lv = posterior_null.quadrature(post, BINS, 3)
        mu = post @ c
        v = post @ c ** 2 - mu ** 2 + BINS.width ** 2 / 12
        m = (lv.weight * lv.logsnr).sum(1)
        unclipped = ((lv.logsnr > BINS.lo) & (lv.logsnr < BINS.hi)).all(1)
        assert torch.allclose(lv.weight.sum(1), torch.ones(len(post))) and (unclipped.all() if post is not p else unclipped.any())
        assert torch.allclose(m[unclipped], mu[unclipped], atol=1e-5)
        assert torch.allclose((lv.weight * (lv.logsnr - m[:, None]) ** 2).sum(1)[unclipped], v[unclipped], atol=1e-4)
    with pytest.raises(ValueError, match=">= 0"):
        posterior_null.quadrature(p, BINS, -1)


def test_training_prior_reweights_the_posterior():
    est = FixedEstimator(torch.zeros(2, BINS.k))
    prior = torch.log(torch.arange(1.0, BINS.k + 1))
    q = posterior_null.level_posterior(est, torch.zeros(2, 3), prior)
    assert torch.allclose(q[0], torch.arange(1.0, BINS.k + 1) / (BINS.k * (BINS.k + 1) / 2))


def _net(seed=0, sch=None):
    torch.manual_seed(seed)
    sch = sch or schedules.Flow()
    net = models.MLPDenoiser(6, 3, hidden=32, depth=2, null=models.NullCondition(timestep=sch.null_timestep))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.eval(), sch


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("sch, pred", [(schedules.Flow(), "velocity"), (schedules.DiscreteVP(), "eps")])
def test_estimator_null_branch_is_the_weighted_conditional_branch(k, sch, pred):
    """n(x) = sum_i w_i c(x, l_i), evaluated on the nominal network-space state, mixed as predictions and
    converted to x0 with the nominal level; batched and unbatched agree."""
    net, sch = _net(sch=sch)
    B = 4
    logits = torch.randn(B, BINS.k, generator=torch.Generator().manual_seed(3)) * 2
    x, s, y = torch.randn(B, 6), torch.full((B,), 0.4), torch.tensor([0, 1, 2, 0])
    prior = torch.zeros(BINS.k)
    den = Denoiser(net, sch, pred, Guidance(nag_scale=1.0, null=EstimatorNull(FixedEstimator(logits), sch.space, k, prior)))
    got = den.branch_x0(x, s, y, ("cond", "null_cond"))
    c, a, sg = sch.native(s)
    xn = c[:, None] * x
    lv = posterior_null.quadrature(torch.softmax(logits, 1), BINS, k)
    preds = [net(xn, sch.net_time(sch.sigma_from_logsnr(lam)), y, torch.zeros(B, dtype=torch.bool)) for lam in lv.logsnr.T]
    want = sum(lv.weight[:, i:i + 1] * p for i, p in enumerate(preds))
    from comfy_nag.predictions import to_x0
    assert torch.allclose(got["null_cond"], to_x0(want, pred, xn, a, sg), atol=1e-5)
    assert den.evaluations == 1 + lv.count
    unb = Denoiser(net, sch, pred, Guidance(nag_scale=1.0, null=EstimatorNull(FixedEstimator(logits), sch.space, k, prior)),
                   batched=False)
    assert torch.allclose(unb.branch_x0(x, s, y, ("cond", "null_cond"))["null_cond"], got["null_cond"], atol=1e-5)


def test_scale_zero_never_reads_the_estimator_and_one_level_costs_what_a_learned_null_branch_costs():
    net, sch = _net()
    x, s, y = torch.randn(5, 6), torch.full((5,), 0.6), torch.tensor([0, 1, 2, 0, 1])
    est = FixedEstimator(torch.zeros(5, BINS.k))
    plain = Denoiser(net, sch, "velocity", Guidance(cfg_scale=2.0))
    zero = Denoiser(net, sch, "velocity", Guidance(cfg_scale=2.0, nag_scale=0.0, null=EstimatorNull.for_schedule(est, sch)))
    assert torch.equal(plain(x, s, y), zero(x, s, y)) and est.calls == 0 and zero.evaluations == plain.evaluations
    learned = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0))
    from_est = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0, null=EstimatorNull.for_schedule(est, sch)))
    learned(x, s, y), from_est(x, s, y)
    assert learned.evaluations == from_est.evaluations == 2


def test_outside_the_window_the_estimator_is_not_read():
    net, sch = _net()
    est = FixedEstimator(torch.zeros(3, BINS.k))
    den = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0, nag_window=(0.0, 0.2),
                                                  null=EstimatorNull.for_schedule(est, sch)))
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 2])
    assert torch.equal(den(x, torch.full((3,), 0.7), y), Denoiser(net, sch, "velocity")(x, torch.full((3,), 0.7), y))
    assert est.calls == 0


def test_a_posterior_at_the_nominal_level_gives_no_correction():
    """A perfectly sharp posterior at the nominal level: the null branch is the conditional one, the NAG term
    vanishes (on states the sampler did not shift, the guidance does nothing)."""
    net, sch = _net()
    s = sch.sigma_from_logsnr(torch.tensor(BINS.centers()[7].item())).expand(4)
    logits = torch.full((4, BINS.k), -1e4)
    logits[:, 7] = 0
    den = Denoiser(net, sch, "velocity",
                   Guidance(nag_scale=2.0, null=EstimatorNull(FixedEstimator(logits), sch.space, 1, torch.zeros(BINS.k))))
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    assert torch.allclose(den(x, s, y), Denoiser(net, sch, "velocity")(x, s, y), atol=1e-5)


def test_bad_settings_are_refused():
    net, sch = _net()
    with pytest.raises(ValueError, match="null must be a null-branch source"):
        Guidance(nag_scale=1.0, null="posterior")
    with pytest.raises(ValueError, match="levels must be an integer >= 0"):
        EstimatorNull(FixedEstimator(torch.zeros(1, BINS.k)), sch.space, -2)
    with pytest.raises(ValueError, match="from an estimator needs a noise-level estimator"):
        EstimatorNull(None, sch.space)
    assert math.isclose(float(posterior_null.mix([torch.ones(2, 3), 3 * torch.ones(2, 3)],
                                                 torch.tensor([[0.5, 0.5], [0.25, 0.75]]))[1, 0]), 2.5)
