"""Learned and training-free noise-level estimators, and their files."""
import pytest
import torch

from comfy_nag import estimators, families, schedules
from studies import testbed
from comfy_nag.files import WeightFileError

BINS = estimators.LevelBins(-6.0, 8.0, 16)


def _trained(steps=300, seed=0):
    torch.manual_seed(seed)
    gmm = testbed.GaussianMixture.make(dim=8, seed=0)
    est = estimators.NoiseLevelEstimator((8,), BINS, width=128, depth=3)
    hist = estimators.train_estimator(est, lambda n, g: gmm.sample(n, generator=g)[0], schedules.Flow(),
                                      estimators.EstimatorTraining(steps, batch=256, lr=5e-3), torch.Generator().manual_seed(seed))
    return est, gmm, hist


def test_training_approaches_the_bayes_posterior():
    est, gmm, hist = _trained()
    g = torch.Generator().manual_seed(9)
    lam = BINS.sample(2000, g)
    s = schedules.Space.FLOW.sigma_from_logsnr(lam)
    x0, _ = gmm.sample(2000, generator=g)
    x = (1 - s)[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g)
    exact = gmm.level_posterior(x, schedules.Space.FLOW, BINS)
    idx = BINS.index(lam)
    bayes_ce = float(-exact[torch.arange(2000), idx].clamp_min(1e-12).log().mean())
    with torch.no_grad():
        learned_ce = float(torch.nn.functional.cross_entropy(est(x), idx))
    start = sum(hist[:10]) / 10
    # training closes most of the gap to the Bayes floor (the rest needs far more steps)
    assert start > bayes_ce + 0.8 and learned_ce < start - 0.6 and learned_ce > bayes_ce - 0.05
    learned_mean = est.mean(x)
    assert torch.corrcoef(torch.stack([learned_mean, exact @ BINS.centers()]))[0, 1] > 0.9


def test_log_prob_gradient_points_to_the_nominal_level():
    est, gmm, _ = _trained()
    x0, _ = gmm.sample(256, generator=torch.Generator().manual_seed(1))
    x = 0.8 * x0 + 0.45 * torch.randn_like(x0)  # noisier than nominal s = 0.2
    lam = schedules.Space.FLOW.logsnr(torch.tensor(0.2))
    xg = x.clone().requires_grad_(True)
    lp = est.log_prob(xg, lam)
    (g,) = torch.autograd.grad(lp.sum(), xg)
    with torch.no_grad():
        assert est.log_prob(x + 0.01 * g, lam).mean() > lp.mean()


def test_variance_estimate_recovers_known_levels():
    x0 = torch.randn(32, 4096) * 0.5  # data variance 0.25
    for space, s in ((schedules.Space.VE, 0.8), (schedules.Space.FLOW, 0.7), (schedules.Space.FLOW, 0.5)):
        a = 1.0 if space is schedules.Space.VE else 1 - s
        x = a * x0 + s * torch.randn_like(x0)
        lam = estimators.variance_logsnr(x, space, 0.25, torch.full((32,), s))
        true = float(space.logsnr(torch.tensor(s)))
        # unbiased on average; per-sample error is the sampling error of a variance over 4096 dims
        assert abs(float(lam.mean()) - true) < 0.05 and float((lam - true).abs().max()) < 0.4


def test_file_round_trip_and_bad_files(tmp_path):
    est = estimators.NoiseLevelEstimator((4, 8, 8), BINS, width=16, depth=2)
    path = est.save(tmp_path / "est.safetensors", schedules.Flow(), {"nag.family": "sd3"})
    again, meta = estimators.NoiseLevelEstimator.load(path)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(again(x), est(x)) and meta["nag.family"] == "sd3" and meta["nag.latent_channels"] == "4"
    with pytest.raises(ValueError, match="latent channels=4"):
        est(torch.randn(2, 16, 8, 8))
    torch.save(est.state_dict(), tmp_path / "est.pt")
    with pytest.raises(WeightFileError, match="never loaded"):
        estimators.NoiseLevelEstimator.load(tmp_path / "est.pt")
    (tmp_path / "fake.safetensors").write_bytes((tmp_path / "est.pt").read_bytes())
    with pytest.raises(WeightFileError, match="pickled"):
        estimators.NoiseLevelEstimator.load(tmp_path / "fake.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="corrupt or truncated"):
        estimators.NoiseLevelEstimator.load(tmp_path / "cut.safetensors")
    with pytest.raises(WeightFileError, match="not found"):
        estimators.NoiseLevelEstimator.load(tmp_path / "missing.safetensors")


def test_training_log_prior_reweights_the_posterior_to_the_training_levels():
    sch = families.family("sd1").schedule
    prior = estimators.training_log_prior(sch, BINS)
    assert prior.shape == (BINS.k,) and torch.isclose(prior.exp().sum(), torch.tensor(1.0), atol=1e-4)
    # the discrete VP schedule trains most levels at low log-SNR: the prior is far from uniform
    assert float(prior.max() - prior.min()) > 1.0
    # log_prob under the prior = the uniform-prior posterior times the prior, renormalised over the bins
    est = estimators.NoiseLevelEstimator((8,), BINS, width=16, depth=1)
    x = torch.randn(5, 8)
    lam = BINS.centers()[3].expand(5)
    with torch.no_grad():
        post = torch.softmax(est(x) + prior, 1)[:, 3]
        got = est.log_prob(x, lam, prior).exp() * BINS.width  # density at the bin centre x bin width = bin mass
    assert torch.allclose(got, post, rtol=1e-4)


def test_soft_targets_train_a_wider_posterior_around_the_same_level():
    """target_width > 0 trains toward a Gaussian over the bins: same posterior mean, more spread."""
    gmm = testbed.GaussianMixture.make(dim=8, seed=0)
    data = lambda n, g: gmm.sample(n, generator=g)[0]  # noqa: E731
    ests = {}
    for width in (0.0, 2.0):
        torch.manual_seed(0)
        ests[width] = estimators.NoiseLevelEstimator((8,), BINS, width=64, depth=2)
        estimators.train_estimator(ests[width], data, schedules.Flow(), estimators.EstimatorTraining(200, lr=5e-3, target_width=width),
                                   torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    lam = BINS.sample(1000, g)
    x0, _ = gmm.sample(1000, generator=g)
    x = estimators.noised(x0, lam, schedules.Flow(), g)
    c = BINS.centers()
    spread = {}
    for width, est in ests.items():
        p = est.probs(x)
        mean = p @ c
        assert torch.corrcoef(torch.stack([mean, lam]))[0, 1] > 0.75
        spread[width] = float((p @ c ** 2 - mean ** 2).clamp_min(0).sqrt().mean())
    assert spread[2.0] > spread[0.0] + 0.15  # 2.54 vs 2.29 when written (the blur is only partly learned in 200 steps)
