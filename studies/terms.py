"""How much of the exact noise-awareness term the learned terms carry (exact testbed).

For forward states drawn at log-SNR ``lam - offset`` and evaluated at the nominal ``lam`` (offset 0:
on-schedule; 0.5: half a log-SNR noisier, like a shifted sampler's), :func:`measure` compares

* ``nag_cf``: the network's ``c - n`` with the exact ``c* - n*`` (:func:`testbed.exact_term`);
* ``readout``: the network's ``c - n`` with the estimator's gradient (what a user can measure on a real
  model, ``comfy_nag.readout.null_branch_readout``);
* ``marginal_null``: ``c - sum_l p(l|x) c(x, l)``, the network's own conditional branch averaged over the
  exact level posterior: the ceiling of a perfectly trained null branch of this network;
* ``nag_cg``: the estimator's ``grad_x log g(lam|x)`` with the exact ``grad_x log p(lam|x)``;
* ``nag_cf_est`` / ``nag_cf_est3``: ``c - n`` with the null branch from the estimator's posterior
  (``comfy_nag.posterior_null``, 1 or 3 levels: no dropout training needed) against the exact term;
  ``nag_cf_est_exact``: the same with the exact posterior over the estimator's bins (its ceiling).

Differences are compared in x0 space with the nominal coefficients; every parameterisation is an affine
map of the prediction with a per-sample scalar, so cosine and norm ratio are the same in all of them.
``cos``: mean over states; ``norm_ratio``: median ``|learned| / |exact|``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from comfy_nag import readout
from comfy_nag.classifier_guidance import level_gradient
from comfy_nag.denoiser import Denoiser
from comfy_nag.guidance import Guidance
from comfy_nag.null_branch import EstimatorNull
from comfy_nag.estimators import training_log_prior

from . import testbed

LAMS = (-2.0, 0.0, 2.0, 4.0, 6.0)
OFFSETS = (0.0, 0.5)
TERMS = ("nag_cf", "readout", "marginal_null", "nag_cg")
ESTIMATOR_TERMS = ("nag_cf_est", "nag_cf_est3", "nag_cf_est_exact")  # the null branch from a level posterior


@dataclass(frozen=True)
class States:
    """The forward states :func:`measure` reads: ``n`` per nominal log-SNR in ``lams`` and offset in ``offsets``,
    drawn from ``seed`` (generator ``seed + 99``)."""

    n: int = 512
    seed: int = 0
    lams: tuple = LAMS
    offsets: tuple = OFFSETS


def agreement(learned: torch.Tensor, exact: torch.Tensor) -> dict:
    """Mean cosine and median norm ratio ``|learned| / |exact|`` of per-state vectors [B, ...]."""
    return summarize(*readout.agreement(learned, exact))


def summarize(cos: torch.Tensor, ratio: torch.Tensor) -> dict:
    """Per-state cosines and norm ratios -> ``{"cos": mean, "norm_ratio": median}``."""
    return {"cos": float(cos.mean()), "norm_ratio": float(ratio.median())}


def conditional_branch(net, schedule, y):
    """``(x_net, sigma_level) -> prediction`` of ``net``'s noise-conditional branch for classes ``y``."""
    def branch(xn, sl):
        t = schedule.net_time(sl.float()).expand(xn.shape[0])
        with torch.no_grad():
            return net(xn, t, y, torch.zeros(xn.shape[0], dtype=torch.bool))
    return branch


def estimator_null_term(net, fam, estimator, levels: int, x, s, y) -> torch.Tensor:
    """``c - n`` (x0 space) with the null branch built from ``estimator``'s posterior at ``levels`` levels."""
    den = Denoiser(net, fam.schedule, fam.prediction,
                   Guidance(nag_scale=1.0, null=EstimatorNull.for_schedule(estimator, fam.schedule, levels)))
    with torch.no_grad():
        br = den.branch_x0(x, s, y, ("cond", "null_cond"))
    return br["cond"] - br["null_cond"]


def measure(net, estimator, gmm, fam, bins, states: States = States(), terms=TERMS) -> list[dict]:
    """Rows ``{lam, offset, term, cos, norm_ratio}`` for each of ``terms`` (:data:`TERMS`,
    :data:`ESTIMATOR_TERMS`) on ``states``.

    ``readout`` is what a user sees without an exact term: the network's ``c - n`` against the estimator's
    gradient under the training levels' prior (``comfy_nag.readout.null_branch_readout``)."""
    sch, space = fam.schedule, fam.schedule.space
    den = Denoiser(net, sch, fam.prediction)
    log_prior = training_log_prior(sch, bins)
    n, g = states.n, torch.Generator().manual_seed(states.seed + 99)
    posteriors = {"nag_cf_est": (estimator, 1), "nag_cf_est3": (estimator, 3),
                  "nag_cf_est_exact": (testbed.ExactLevelPosterior(gmm, sch, bins), 1)}
    rows = []
    for lam in states.lams:
        for off in states.offsets:
            x0, y = gmm.sample(n, generator=g)
            s_true = space.sigma_from_logsnr(torch.tensor(lam - off)).float()
            x = space.alpha(s_true) * x0 + s_true * torch.randn(x0.shape, generator=g)
            s = space.sigma_from_logsnr(torch.tensor(lam)).float().expand(n)
            c = sch.native(s)[0]
            with torch.no_grad():
                br = den.branch_x0(x, s, y, ("cond", "null_cond"))
            exact = testbed.exact_term(gmm, x, s, fam.schedule, fam.prediction, y)
            for term in terms:
                if term == "nag_cf":
                    r = agreement(br["cond"] - br["null_cond"], exact)
                elif term == "readout":
                    r = summarize(*readout.null_branch_readout(br["cond"], br["null_cond"], estimator, x, s, space, c,
                                                                log_prior))
                elif term == "marginal_null":
                    marg = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, branch=conditional_branch(net, sch, y))
                    r = agreement(br["cond"] - marg, exact)
                elif term == "nag_cg":
                    r = agreement(level_gradient(estimator, x, s, space, c), testbed.exact_level_gradient(gmm, x, s, sch, bins))
                elif term in posteriors:
                    r = agreement(estimator_null_term(net, fam, *posteriors[term], x, s, y), exact)
                else:
                    raise ValueError(f"unknown term {term!r}; expected one of {', '.join(TERMS + ESTIMATOR_TERMS)}")
                rows.append({"lam": lam, "offset": off, "term": term, **r})
    return rows


def late_cos(rows: list[dict], term: str = "nag_cf", offset: float = 0.0) -> float:
    """Mean cosine over the nominal log-SNRs >= 0 (where NAG acts) for one seed/family/recipe's rows."""
    vals = [r["cos"] for r in rows if r["term"] == term and r["offset"] == offset and r["lam"] >= 0]
    return float(np.mean(vals)) if vals else float("nan")
