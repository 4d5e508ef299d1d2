"""The exact testbed: class-conditional Gaussian mixtures where everything is analytic.

Data: component k is ``N(mu_k, U_k U_k^T + floor*I)`` with class ``c_k``; most of each
component's variance lies in a rank-r subspace, as real data lies near low-dimensional
manifolds, so the noise level of a state stays identifiable late in sampling (the ``floor``
sets how late).  Forward states at sampling sigma s are ``x = alpha(s)*x0 + s*eps``, so the
noised density, its score, the exact denoiser and the posterior over noise levels are closed
form.  Covariances are eigendecomposed once; every density evaluation is then O(K*D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from comfy_nag.estimators import LevelBins, training_log_prior
from comfy_nag.classifier_guidance import score_to_x0_shift
from comfy_nag.losses import TrainingBatch, fit, squared_errors, training_batch
from comfy_nag.predictions import target, to_x0
from comfy_nag.schedules import DiscreteVP, Flow, Schedule, Space
from comfy_nag.tensors import append_dims


class GaussianMixture:
    def __init__(self, means: torch.Tensor, factors: torch.Tensor, floor: float, classes: torch.Tensor,
                 weights: torch.Tensor | None = None):
        K, D = means.shape
        self.means, self.factors, self.floor = means.double(), factors.double(), float(floor)
        self.classes = classes.long()
        self.num_classes = int(self.classes.max()) + 1
        self.weights = (weights if weights is not None else torch.full((K,), 1.0 / K)).double()
        cov = self.factors @ self.factors.transpose(1, 2) + self.floor * torch.eye(D, dtype=torch.float64)
        self.evals, self.evecs = torch.linalg.eigh(cov)  # [K, D], [K, D, D]
        self.qmu = torch.einsum("kdj,kd->kj", self.evecs, self.means)
        self.dim, self.K = D, K

    @classmethod
    def make(cls, dim: int = 32, num_classes: int = 4, per_class: int = 2, rank: int = 3, floor: float = 4e-4,
             spread: float = 1.0, width: float = 0.45, seed: int = 0) -> "GaussianMixture":
        """Random mixture with overall per-dimension variance of order 1."""
        g = torch.Generator().manual_seed(seed)
        K = num_classes * per_class
        if dim == 2:  # pictures: components on a circle, elongated along random directions
            ang = 2 * math.pi * torch.arange(K) / K + 0.3 * torch.rand(K, generator=g)
            means = spread * torch.stack([ang.cos(), ang.sin()], 1)
            factors = width * 0.5 * torch.randn(K, 2, min(rank, 1), generator=g)
        else:
            means = spread * torch.randn(K, dim, generator=g)
            factors = width * torch.randn(K, dim, rank, generator=g) / math.sqrt(rank)
        classes = torch.arange(K) % num_classes
        return cls(means, factors, floor, classes)

    # --- sampling ------------------------------------------------------------------------
    def sample(self, n: int, y: torch.Tensor | None = None, generator=None):
        """Clean samples and their classes (``y`` fixes the classes)."""
        if y is None:
            y = torch.randint(0, self.num_classes, (n,), generator=generator)
        logits = torch.where(self.classes[None] == y[:, None], self.weights.log()[None], -math.inf)
        k = torch.multinomial(logits.softmax(1), 1, generator=generator)[:, 0]
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("bdj,bj->bd", self.evecs[k], self.evals[k].sqrt() * z)
        return x.float(), y

    def class_moments(self, c: int):
        """Exact mean and covariance of class c (float64)."""
        sel = self.classes == c
        w = self.weights[sel] / self.weights[sel].sum()
        mu_k = self.means[sel]
        cov_k = torch.einsum("kdj,kj,kej->kde", self.evecs[sel], self.evals[sel], self.evecs[sel])
        mu = (w[:, None] * mu_k).sum(0)
        dev = mu_k - mu
        cov = (w[:, None, None] * (cov_k + dev[:, :, None] * dev[:, None, :])).sum(0)
        return mu, cov

    # --- densities -----------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """x in each component's eigenbasis: [B, K, D] (float64)."""
        return torch.einsum("kdj,bd->bkj", self.evecs, x.double())

    def _levels_logpdf(self, proj: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log N(x; a_l mu_k, a_l^2 C_k + s_l^2 I) at every level l (``a``, ``s`` [L]) from ``proj`` =
        :meth:`_project` (x): [B, L, K] (float64).  The quadratic form is expanded so that x is projected
        once for all levels (what makes the exact posterior over hundreds of levels cheap)."""
        a, s = a.double(), s.double()
        am = a[:, None, None] * self.qmu[None]  # [L, K, D]
        iv = 1.0 / (a[:, None, None] ** 2 * self.evals[None] + (s ** 2)[:, None, None])
        quad = (torch.einsum("bkj,lkj->blk", proj * proj, iv) - 2 * torch.einsum("bkj,lkj->blk", proj, am * iv)
                + (am * am * iv).sum(-1)[None])
        return -0.5 * (quad - iv.log().sum(-1)[None] + self.dim * math.log(2 * math.pi))

    def _comp_logpdf(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log N(x; a*mu_k, a^2 C_k + s^2 I) for x [B, D], a, s [B] -> [B, K] (float64)."""
        x, a, s = x.double(), a.double(), s.double()
        z = torch.einsum("kdj,bd->bkj", self.evecs, x) - a[:, None, None] * self.qmu[None]
        var = a[:, None, None] ** 2 * self.evals[None] + (s ** 2)[:, None, None]
        return -0.5 * ((z * z / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))

    def _log_weights(self, y, B):
        lw = self.weights.log()[None].expand(B, -1)
        if y is None:
            return lw
        return torch.where(self.classes[None] == y[:, None], lw, torch.full_like(lw, -math.inf))

    def log_prob(self, x: torch.Tensor, a=None, s=None, y=None) -> torch.Tensor:
        """log p(x) of the (noised, if a/s given) density, class-conditional if y is given."""
        B = x.shape[0]
        a = torch.ones(B, dtype=torch.float64) if a is None else torch.as_tensor(a).double().expand(B)
        s = torch.zeros(B, dtype=torch.float64) if s is None else torch.as_tensor(s).double().expand(B)
        lw = self._log_weights(y, B)
        return torch.logsumexp(lw + self._comp_logpdf(x, a, s), 1)

    def score(self, x: torch.Tensor, a, s, y=None) -> torch.Tensor:
        """grad_x log p_s(x) [B, D] (float64)."""
        B = x.shape[0]
        a, s = torch.as_tensor(a).double().expand(B), torch.as_tensor(s).double().expand(B)
        r = torch.softmax(self._log_weights(y, B) + self._comp_logpdf(x, a, s), 1)  # [B, K]
        z = torch.einsum("kdj,bd->bkj", self.evecs, x.double()) - a[:, None, None] * self.qmu[None]
        var = a[:, None, None] ** 2 * self.evals[None] + (s ** 2)[:, None, None]
        return -torch.einsum("bk,kdj,bkj->bd", r, self.evecs, z / var)

    def posterior_x0(self, x: torch.Tensor, a, s, y=None):
        """E[x0 | x] and log p(x) for x = a*x0 + s*eps (any a, s per sample; a = 0 allowed)."""
        B = x.shape[0]
        a = torch.as_tensor(a, dtype=torch.float64).expand(B)
        s = torch.as_tensor(s, dtype=torch.float64).expand(B)
        logj = self._log_weights(y, B) + self._comp_logpdf(x, a, s)  # [B, K]
        r = torch.softmax(logj, 1)
        z = torch.einsum("kdj,bd->bkj", self.evecs, x.double()) - a[:, None, None] * self.qmu[None]
        gain = a[:, None, None] * self.evals[None] / (a[:, None, None] ** 2 * self.evals[None] + (s ** 2)[:, None, None])
        post = self.means[None] + torch.einsum("kdj,bkj->bkd", self.evecs, gain * z)  # per component
        return (r[:, :, None] * post).sum(1), torch.logsumexp(logj, 1)

    def denoise(self, x: torch.Tensor, s, space: Space, y=None) -> torch.Tensor:
        """Exact E[x0 | x] for sampling-space x at sigma s (defined at alpha = 0 too)."""
        s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
        return self.posterior_x0(x, space.alpha(s), s, y)[0].to(x.dtype)

    # --- the exact noise-level posterior -----------------------------------------------------
    def level_loglik(self, x: torch.Tensor, space: Space, lams: torch.Tensor) -> torch.Tensor:
        """log p(x | lambda) marginal over classes, for each of L log-SNR values -> [B, L]."""
        proj, lw, out = self._project(x), self.weights.log()[None, None], []
        for chunk in lams.double().split(64):  # bounds the [B, L, K] intermediate
            s = space.sigma_from_logsnr(chunk)
            out.append(torch.logsumexp(lw + self._levels_logpdf(proj, space.alpha(s), s), 2))
        return torch.cat(out, 1)

    def level_posterior(self, x: torch.Tensor, space: Space, bins: LevelBins, sub: int = 8) -> torch.Tensor:
        """Exact posterior over the estimator's bins under its uniform prior: [B, k] (float32)."""
        fine = bins.lo + bins.width * (torch.arange(bins.k * sub, dtype=torch.float64) + 0.5) / sub
        ll = self.level_loglik(x, space, fine).reshape(x.shape[0], bins.k, sub)
        return torch.softmax(torch.logsumexp(ll, 2), 1).float()


class ExactLevelPosterior(torch.nn.Module):
    """The exact posterior over ``bins`` (uniform prior, classes marginalised), as an estimator: logits [B, k]
    of network-space states, like ``comfy_nag.estimators.NoiseLevelEstimator``'s.  What the estimator null
    branch (``comfy_nag.posterior_null``) becomes with a perfect estimator over the same bins."""

    def __init__(self, gmm: GaussianMixture, schedule: Schedule, bins: LevelBins, sub: int = 4):
        super().__init__()
        self.gmm, self.bins, self.sub = gmm, bins, sub
        fine = bins.lo + bins.width * (torch.arange(bins.k * sub, dtype=torch.float64) + 0.5) / sub
        _, self.al, self.sl = (v.double() for v in schedule.native(schedule.sigma_from_logsnr(fine.float())))

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        proj, lw = self.gmm._project(xn), self.gmm.weights.log()[None, None]
        ll = torch.cat([torch.logsumexp(lw + self.gmm._levels_logpdf(proj, a, s), 2)
                        for a, s in zip(self.al.split(64), self.sl.split(64))], 1)
        return torch.logsumexp(ll.reshape(xn.shape[0], self.bins.k, self.sub), 2).float()


def exact_readout(gmm: GaussianMixture, bins: LevelBins, space: Space, sub: int = 4):
    """Readout (comfy_nag.shift) from the exact posterior mean over ``bins``."""
    def readout(x, s):
        return gmm.level_posterior(x, space, bins, sub) @ bins.centers()
    return readout


def training_levels(schedule: Schedule, n: int = 250) -> torch.Tensor:
    """Sampling sigmas evenly covering a schedule's training distribution (quadrature nodes)."""
    if isinstance(schedule, DiscreteVP):
        return schedule.table[torch.linspace(0, schedule.n - 1, n).round().long()]
    if isinstance(schedule, Flow):
        return schedule._shift((torch.arange(n, dtype=torch.float32) + 0.5) / n)
    raise ValueError(f"no training-level quadrature for {type(schedule).__name__}")


def exact_null_x0(gmm: GaussianMixture, x: torch.Tensor, s, schedule: Schedule, prediction: str, y=None,
                  levels: torch.Tensor | None = None, branch=None) -> torch.Tensor:
    """The ideal noise-*unconditional* branch, converted to x0 with the nominal level s.

    A network trained with noise-condition dropout learns, for dropped rows, the prediction that
    minimises the loss without knowing the level: E[target | x_net] under the training
    distribution of levels.  Here it is computed exactly (class-conditional, like the branch) and
    converted with the nominal coefficients, as NAG does.

    ``branch(x_net, sigma_level) -> prediction`` replaces the exact conditional prediction at each
    level (e.g. a network's own conditional branch); the level posterior stays exact.
    """
    s = torch.as_tensor(s, dtype=torch.float32).expand(x.shape[0])
    c, a_n, s_n = schedule.native(s)
    xn = (append_dims(c, x.dim()) * x).double()
    levels = training_levels(schedule) if levels is None else levels
    if branch is None:
        return to_x0(_exact_level_average(gmm, xn, levels, schedule, prediction, y), prediction, xn, a_n.double(),
                     s_n.double()).to(x.dtype)
    logj, *_ = _level_log_joint(gmm, xn, levels, schedule, y)
    w = torch.softmax(torch.logsumexp(logj, 2), 1)  # posterior over training levels (uniform prior)
    preds = torch.stack([branch(xn.to(x.dtype), sl.reshape(1)).double() for sl in levels], 1)
    return to_x0((w[:, :, None] * preds).sum(1), prediction, xn, a_n.double(), s_n.double()).to(x.dtype)


def _level_log_joint(gmm: GaussianMixture, xn: torch.Tensor, levels: torch.Tensor, schedule: Schedule, y=None):
    """``log p(xn, component k | level l)`` [B, L, K] for network-space ``xn`` (class-conditional if ``y``),
    with the levels' network-space ``alpha``, ``sigma`` [L] and ``xn``'s eigenbasis projection."""
    _, al, sl = (v.double() for v in schedule.native(levels))
    proj = gmm._project(xn)
    return gmm._levels_logpdf(proj, al, sl) + gmm._log_weights(y, xn.shape[0])[:, None, :], al, sl, proj


def _exact_level_average(gmm: GaussianMixture, xn: torch.Tensor, levels: torch.Tensor, schedule: Schedule,
                         prediction: str, y=None) -> torch.Tensor:
    """``sum_l p(l | xn) target_l(E[x0 | xn, l])`` over the network-space ``levels`` (uniform prior), all
    levels at once.  The target is linear in (xn, x0) with per-level coefficients, so the average is
    accumulated in each component's eigenbasis and mapped back once.  float64 [B, D]."""
    logj, al, sl, proj = _level_log_joint(gmm, xn, levels, schedule, y)
    A = target(prediction, torch.zeros_like(al), 1.0 / sl, al, sl)  # coefficient of xn
    Bc = target(prediction, torch.ones_like(al), -al / sl, al, sl)   # coefficient of E[x0 | xn, l]
    w = torch.softmax(torch.logsumexp(logj, 2), 1)  # level posterior [B, L]
    coef = (w * Bc[None])[:, :, None] * torch.softmax(logj, 2)  # [B, L, K]
    gain = al[:, None, None] * gmm.evals[None] / (al[:, None, None] ** 2 * gmm.evals[None] + (sl ** 2)[:, None, None])
    acc = proj * torch.einsum("blk,lkj->bkj", coef, gain) - gmm.qmu[None] * torch.einsum("blk,lkj->bkj", coef, al[:, None, None] * gain)
    x0_part = coef.sum(1) @ gmm.means + torch.einsum("kdj,bkj->bd", gmm.evecs, acc)
    return (w @ A)[:, None] * xn + x0_part


def exact_denoiser(gmm: GaussianMixture, space: Space):
    """The Bayes-optimal class-conditional denoiser, as a sampler model ``(x, s, y) -> x0`` (a closed-loop scale
    rule's ``sample_sigmas`` is accepted and not needed)."""
    def model(x, s, y=None, sample_sigmas=None):
        return gmm.denoise(x, s, space, y)
    return model


# --- the exact noise-awareness term ------------------------------------------------------------

def exact_term(gmm: GaussianMixture, x: torch.Tensor, s, schedule: Schedule, prediction: str, y=None) -> torch.Tensor:
    """``c* - n*``: the Bayes-optimal classifier-free NAG difference (x0 space, nominal coefficients)."""
    return gmm.denoise(x, s, schedule.space, y) - exact_null_x0(gmm, x, s, schedule, prediction, y)


def exact_level_gradient(gmm: GaussianMixture, x: torch.Tensor, s: torch.Tensor, schedule: Schedule,
                         bins: LevelBins, prior: str = "uniform") -> torch.Tensor:
    """``grad_x log p(lambda(s) | c(s) x)`` in sampling space: the exact counterpart of NAG-CG's term.

    The posterior is over the estimator's log-SNR range with a uniform prior (as the estimator is
    trained), on a grid 4x finer than its bins; ``c(s)`` maps to network space as the estimator sees it.
    ``prior="training"``: the levels weighted like the network's training levels
    (``estimators.training_log_prior``), the prior under which it equals the exact ``c* - n*`` as a score.
    """
    grid = bins.lo + bins.width * (torch.arange(bins.k * 4, dtype=torch.float64) + 0.5) / 4
    c, a, sg = schedule.native(s)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().double().requires_grad_(True)
        xn = append_dims(c.double(), x.dim()) * xg
        logw = (training_log_prior(schedule, bins)[bins.index(grid.float())].double() if prior == "training"
                else torch.zeros(len(grid), dtype=torch.float64))
        lps = torch.logsumexp(_level_log_joint(gmm, xn, schedule.sigma_from_logsnr(grid.float()), schedule)[0], 2)
        log_post = gmm.log_prob(xn, a, sg) - torch.logsumexp(lps + logw, 1)
        (grad,) = torch.autograd.grad(log_post.sum(), xg)
    return grad.to(x.dtype)


class ExactTermNAG:
    """A sampler model plus the *exact* NAG term inside the window: ``base + w (c* - n*)``.

    With ``base`` a network's plain denoiser this is the ceiling of classifier-free NAG on that network
    (the mechanism ablation: only the difference term is swapped, the conditional branch is kept);
    with :func:`exact_denoiser` it is NAG on the Bayes-optimal model.  ``window``: sampling sigmas.
    """

    def __init__(self, base, gmm: GaussianMixture, fam, w: float, window: tuple[float, float], bins=None):
        self.base, self.gmm, self.fam, self.w, self.window, self.bins = base, gmm, fam, w, window, bins

    @property
    def evaluations(self):
        return getattr(self.base, "evaluations", 0)

    def term(self, x, s, y):
        return exact_term(self.gmm, x, s, self.fam.schedule, self.fam.prediction, y)

    def __call__(self, x, s, y=None, sample_sigmas=None):
        s = torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0])
        out = self.base(x, s, y, sample_sigmas)
        on = (s >= self.window[0]) & (s <= self.window[1])
        if self.w == 0 or not bool(on.any()):
            return out
        return out + append_dims(self.w * on.to(x), x.dim()) * self.term(x, s, y).to(x)


class ExactScoreNAG(ExactTermNAG):
    """``base`` plus the exact Bayes term in score space, ``w grad_x log p(lambda|x)`` (needs ``bins``)."""

    def term(self, x, s, y):
        grad = exact_level_gradient(self.gmm, x, s, self.fam.schedule, self.bins)
        return score_to_x0_shift(grad, x, s, self.fam.schedule.space)


# --- quality metrics ---------------------------------------------------------------------------

def _mean_offdiag(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    return d.sum() / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (0 iff equal in distribution).

    Unbiased (U-statistic) estimate: within-set means exclude the zero diagonal, so the value
    fluctuates around 0 for two samples of one distribution instead of being biased upwards by
    ~E|X-X'|/n (which would favour more spread-out sample sets).
    """
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - _mean_offdiag(torch.cdist(x, x)) - _mean_offdiag(torch.cdist(y, y)))


def class_energy_distance(x, y_x, ref, y_ref) -> float:
    """Energy distance per class, averaged over classes (class-conditional sample quality)."""
    vals = [energy_distance(x[y_x == c], ref[y_ref == c]) for c in torch.unique(y_ref).tolist() if (y_x == c).any()]
    return float(sum(vals) / len(vals))


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    e, v = torch.linalg.eigh(m)
    return (v * e.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared."""
    r = _sqrtm_psd(cov2)
    cross = _sqrtm_psd(r @ cov1 @ r)
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1 + cov2 - 2 * cross))


def class_frechet_distance(gmm: "GaussianMixture", x: torch.Tensor, y: torch.Tensor) -> float:
    """FID-style Frechet distance per class between the samples' Gaussian fit and the *exact*
    class moments of the mixture, averaged over classes (no reference-sample noise)."""
    vals = []
    for c in range(gmm.num_classes):
        xc = x[y == c].double()
        if xc.shape[0] < 2:
            continue
        mu, cov = gmm.class_moments(c)
        vals.append(frechet_distance(xc.mean(0), torch.cov(xc.T), mu, cov))
    return float(sum(vals) / len(vals))


def nll(gmm: GaussianMixture, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Mean negative log-likelihood of samples under the true (class-conditional) density."""
    return float(-gmm.log_prob(x, y=y).mean())


# --- imperfect denoisers -------------------------------------------------------------------------

@dataclass(frozen=True)
class LossRecipe:
    """Study-only variants of the denoising loss (the fidelity study's recipes); the defaults are the paper's loss.

    ``null_target(x_net, sigma, y) -> prediction``: the regression target of the dropped rows (default: the
    ordinary target).  Its minimiser is the same noise-unconditional branch whenever the target's mean given
    the state is the level-marginal prediction (e.g. the network's own conditional branch averaged over the
    level posterior: a self-distilled target with far less variance than the raw noise).  ``cond_target``:
    the same for the kept rows (e.g. a frozen teacher's prediction, which anchors the conditional branch while
    the null branch learns).  ``null_weight``: loss weight of the dropped rows relative to the kept ones."""

    null_target: Callable | None = None
    cond_target: Callable | None = None
    null_weight: float = 1.0

    def loss(self, net, batch: TrainingBatch):
        """``(loss, per_sample, drop_t)`` of ``net`` on ``batch`` (``comfy_nag.losses.training_batch``)."""
        tgt = batch.target
        for rows, fn in ((~batch.drop_t, self.cond_target), (batch.drop_t, self.null_target)):
            if fn is not None and bool(rows.any()):
                with torch.no_grad():
                    tgt = torch.where(append_dims(rows, batch.x.dim()), fn(batch.x, batch.sigma, batch.y).to(tgt), tgt)
        per = squared_errors(net, batch, tgt)
        if self.null_weight == 1.0:
            return per.mean(), per.detach(), batch.drop_t
        w = torch.where(batch.drop_t, torch.full_like(per, float(self.null_weight)), torch.ones_like(per))
        return (per * w).sum() / w.sum(), per.detach(), batch.drop_t


@dataclass(frozen=True)
class Training:
    """How :func:`train_denoiser` trains: ``steps`` steps on batches of ``batch`` mixture samples at learning rate
    ``lr`` (``comfy_nag.losses.fit``), noise-condition dropout ``t_dropout``, class dropout ``y_dropout``, every draw
    from ``seed``, the loss ``recipe``."""

    steps: int
    batch: int = 256
    lr: float = 2e-3
    t_dropout: float = 0.1
    y_dropout: float = 0.1
    seed: int = 0
    recipe: LossRecipe = LossRecipe()


def train_denoiser(net, gmm: GaussianMixture, schedule: Schedule, prediction: str, training: Training, callback=None):
    """Train ``net`` on the mixture with noise-condition and class dropout; returns the loss history."""
    g = torch.Generator().manual_seed(training.seed)

    def loss(step):
        x0, y = gmm.sample(training.batch, generator=g)
        b = training_batch(net, x0, y, schedule, prediction, noise_condition_dropout_rate=training.t_dropout,
                           class_dropout_rate=training.y_dropout, generator=g)
        return training.recipe.loss(net, b)[0]

    return fit(net, loss, training.steps, training.lr, callback, what="denoiser loss")
