"""The analytic testbed is right: score vs finite differences, posterior vs sampling."""
import torch

from comfy_nag import estimators, families, schedules
from studies import testbed


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
    d = gmm.denoise(x, s, schedules.Space.FLOW, y)
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
    s = schedules.Space.FLOW.sigma_from_logsnr(lam)
    x0, _ = gmm.sample(n, generator=g)
    x = (1 - s)[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g)
    post = gmm.level_posterior(x, schedules.Space.FLOW, bins, sub=8)
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
    s = schedules.Space.FLOW.sigma_from_logsnr(lam)
    direct = gmm.log_prob(x, 1 - s, s)
    assert torch.allclose(gmm.level_loglik(x, schedules.Space.FLOW, lam)[:, 0], direct, atol=1e-8)


def test_class_moments_match_samples_and_frechet_distance_is_exact():
    gmm = testbed.GaussianMixture.make(dim=6, seed=4)
    x, y = gmm.sample(40000, generator=torch.Generator().manual_seed(1))
    mu, cov = gmm.class_moments(2)
    xc = x[y == 2].double()
    assert torch.allclose(xc.mean(0), mu, atol=0.03)
    assert torch.allclose(torch.cov(xc.T), cov, atol=0.03)
    # closed forms: identical Gaussians -> 0; N(m, a^2 I) vs N(0, b^2 I) in d dims -> |m|^2 + d (a - b)^2
    assert abs(testbed.frechet_distance(mu, cov, mu, cov)) < 1e-8
    eye = torch.eye(3, dtype=torch.float64)
    m = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert abs(testbed.frechet_distance(m, 4 * eye, torch.zeros(3, dtype=torch.float64), eye) - (5 + 3 * 1.0)) < 1e-8
    # the metric ranks a true sample far below a sample of the wrong spread
    assert testbed.class_frechet_distance(gmm, x[:4000], y[:4000]) < 0.5 * testbed.class_frechet_distance(gmm, 1.3 * x[:4000], y[:4000])


def test_energy_distance_is_unbiased_and_separates():
    g = torch.Generator().manual_seed(0)
    same = [testbed.energy_distance(torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)) for _ in range(40)]
    mean, sd = float(torch.tensor(same).mean()), float(torch.tensor(same).std())
    assert abs(mean) < 3 * sd / 40 ** 0.5  # centred on 0 (the V-statistic would sit ~E|X-X'|/n above it)
    shifted = testbed.energy_distance(torch.randn(100, 4, generator=g) + 0.5, torch.randn(100, 4, generator=g))
    assert shifted > max(same)


def test_posterior_x0_agrees_with_denoise_and_density():
    gmm = testbed.GaussianMixture.make(dim=5, seed=5)
    x = torch.randn(7, 5, dtype=torch.float64)
    s = torch.tensor(0.3, dtype=torch.float64)
    ex0, logp = gmm.posterior_x0(x, 1 - s, s)
    assert torch.allclose(ex0.float(), gmm.denoise(x.float(), 0.3, schedules.Space.FLOW), atol=1e-5)
    assert torch.allclose(logp, gmm.log_prob(x, 1 - s, s), atol=1e-8)


def test_exact_null_branch_reduces_to_the_denoiser_at_a_single_level_and_mixes_levels_otherwise():
    gmm = testbed.GaussianMixture.make(dim=6, seed=6)
    for name in ("sit", "sd1"):
        fam = families.family(name)
        sch = fam.schedule
        s = sch.sigma_from_logsnr(torch.tensor(1.0))
        x0, y = gmm.sample(16, generator=torch.Generator().manual_seed(2))
        alpha = sch.space.alpha(s)
        x = alpha * x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
        # a network that never saw any other level would give exactly the level-conditional answer
        one = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, levels=s.reshape(1))
        assert torch.allclose(one, gmm.denoise(x, s, sch.space, y), atol=1e-4)
        # over the whole training range the level-blind answer differs (the gap NAG amplifies)
        full = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, levels=testbed.training_levels(sch, 60))
        assert (full - one).abs().max() > 1e-3
        assert torch.isfinite(full).all()


def test_exact_level_posterior_as_an_estimator_matches_the_exact_posterior():
    """studies.testbed.ExactLevelPosterior reads network-space states like a learned estimator and gives the
    exact posterior over its bins under the network-space forward model (the one the null branch of a
    dropout-trained network averages over, as exact_null_x0 does); in flow space that is the sampling-space
    posterior the shift readout uses."""
    gmm = testbed.GaussianMixture.make(dim=8, seed=3)
    bins = estimators.LevelBins(-4.0, 6.0, 10)
    fine = bins.lo + bins.width * (torch.arange(bins.k * 4, dtype=torch.float64) + 0.5) / 4
    for name in ("sit", "sd1"):
        sch = families.family(name).schedule
        s = sch.sigma_from_logsnr(torch.tensor([-1.0, 2.5, 5.0]))
        x0, _ = gmm.sample(3, generator=torch.Generator().manual_seed(0))
        x = sch.space.alpha(s)[:, None] * x0 + s[:, None] * torch.randn(3, 8)
        xn = sch.native(s)[0][:, None] * x
        got = torch.softmax(testbed.ExactLevelPosterior(gmm, sch, bins, sub=4)(xn), 1)
        logj = testbed._level_log_joint(gmm, xn, sch.sigma_from_logsnr(fine.float()), sch)[0]
        want = torch.softmax(torch.logsumexp(torch.logsumexp(logj, 2).reshape(3, bins.k, 4), 2), 1).float()
        assert torch.allclose(got, want, atol=1e-5)
        if sch.space is schedules.Space.FLOW:
            assert torch.allclose(got, gmm.level_posterior(x, sch.space, bins, sub=4), atol=1e-5)
