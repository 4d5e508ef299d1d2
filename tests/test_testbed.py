"""The analytic testbed is right: score vs finite differences, posterior vs sampling."""
import torch

from comfy_nag import estimators, schedules, testbed


def test_score_matches_numerical_gradient_of_log_density():
    gmm = testbed.GaussianMixture.make(dim=5, seed=3)
    x = torch.randn(4, 5, dtype=torch.float64)
    a, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    for y in (None, torch.tensor([0, 1, 2, 3])):
        sc = gmm.score(x, a, s, y)
        h = 1e-5
        num = torch.stack([(gmm.log_prob(x + h * e, a, s, y) - gmm.log_prob(x - h * e, a, s, y)) / (2 * h)
                           for e in torch.eye(5, dtype=torch.float64)], 1)
        assert torch.allclose(sc, num, atol=1e-6)


def test_exact_denoiser_is_tweedie_and_beats_any_shrinkage():
    gmm = testbed.GaussianMixture.make(dim=8, seed=0)
    x0, y = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    s = 0.5
    x = 0.5 * x0 + s * torch.randn_like(x0)
    d = gmm.denoise(x, s, "flow", y)
    sc = gmm.score(x, torch.tensor(0.5), torch.tensor(s), y)
    assert torch.allclose(d.double(), (x.double() + s * s * sc) / 0.5, atol=1e-5)
    mse = (d - x0).pow(2).mean()
    for k in (0.9, 1.1):  # E[x0|x] minimises the squared error
        assert mse < (k * d - x0).pow(2).mean()


def test_level_posterior_is_calibrated_on_forward_samples():
    gmm = testbed.GaussianMixture.make(dim=16, seed=1)
    bins = estimators.LevelBins(-6.0, 8.0, 14)
    g = torch.Generator().manual_seed(0)
    n = 3000
    lam = bins.sample(n, g)
    s = schedules.sigma_of_logsnr("flow", lam)
    x0, _ = gmm.sample(n, generator=g)
    x = (1 - s)[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g)
    post = gmm.level_posterior(x, "flow", bins, sub=8)
    assert torch.allclose(post.sum(1), torch.ones(n), atol=1e-5)
    # a correct Bayes posterior averages to the prior (uniform) ...
    assert (post.mean(0) - 1 / bins.k).abs().max() < 0.02
    # ... its mean is unbiased for the true level (tower property) ...
    assert abs(float((post @ bins.centers() - lam).mean())) < 0.08
    # ... and it puts far more than prior mass on the true bin
    assert float(post[torch.arange(n), bins.index(lam)].mean()) > 3 / bins.k


def test_level_likelihood_agrees_with_the_density():
    gmm = testbed.GaussianMixture.make(dim=6, seed=2)
    x = torch.randn(3, 6)
    lam = torch.tensor([0.5])
    s = schedules.sigma_of_logsnr("flow", lam)
    direct = gmm.log_prob(x, 1 - s, s)
    assert torch.allclose(gmm.level_loglik(x, "flow", lam)[:, 0], direct, atol=1e-8)
