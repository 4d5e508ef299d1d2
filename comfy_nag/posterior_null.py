"""The noise-unconditional branch from a noise-level estimator: classifier-free NAG without fine-tuning.

A network trained with noise-condition dropout learns, for its null timestep, the prediction that minimises
the loss without knowing the level: ``n*(x) = sum_l p(l | x) c*(x, l)``, the conditional prediction averaged
over the level posterior under the training levels' prior.  Any checkpoint has ``c(x, l)``; a noise-level
estimator gives ``q(l | x)``.  Their combination is a null branch that needs no fine-tuning::

    n(x) = sum_i w_i(x) c(x, l_i(x))

with ``K`` quadrature levels per state (:func:`null_levels`): ``K = 1`` evaluates the conditional branch once, at
the posterior-mean level (the same cost as a learned null branch); ``K >= 2`` at the Gauss-Hermite nodes of
a Gaussian with the posterior's mean and spread; ``K = 0`` at every bin centre with the posterior itself as
weights (exact for the binned posterior, ``bins.k`` evaluations: for studies).  docs/method.md §3b has the
derivation and the cost.

Conventions: levels in log-SNR; ``x_net`` is the network-space state at the **nominal** level (what the
network and the estimator see, ``Schedule.native``'s ``c`` times the sampling state); the conditional
branch is evaluated on that same ``x_net`` with the network time of each level, and the mixture is taken
over the predictions in the model's own parameterisation, then converted to x0 with the nominal
coefficients, as for any branch (weights sum to one, so the mixture is the same in every space).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .estimators import LevelBins
from .tensors import append_dims


@dataclass(frozen=True)
class NullLevels:
    """Where to evaluate the conditional branch for each state, and with which weight."""

    logsnr: torch.Tensor  # [B, K]
    weight: torch.Tensor  # [B, K], each row sums to 1

    @property
    def count(self) -> int:
        return self.logsnr.shape[1]


def level_posterior(estimator, x_net: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """``q(l | x)`` over the estimator's bins [B, k]: its softmax, reweighted by ``log_prior`` (log weight per
    bin, e.g. ``estimators.training_log_prior``; the estimator itself is trained under a uniform prior)."""
    with torch.no_grad():
        logits = estimator(x_net).float()
        if log_prior is not None:
            logits = logits + log_prior.to(logits)
        return F.softmax(logits, 1)


def quadrature(probs: torch.Tensor, bins: LevelBins, k: int = 1) -> NullLevels:
    """``k`` levels per state from a posterior over ``bins`` (see the module docstring for ``k``).

    The Gaussian's variance counts each bin as uniform over its width (``+ width^2/12``), so a posterior in
    one bin still spreads its nodes over that bin; nodes are clipped to the bins' range."""
    if k < 0:
        raise ValueError(f"the number of null-branch levels must be >= 0 (0 = every bin), got {k}")
    centers = bins.centers(probs.device)
    if k == 0:
        return NullLevels(centers.expand(probs.shape[0], -1).contiguous(), probs)
    mean = probs @ centers
    if k == 1:
        return NullLevels(mean[:, None], torch.ones_like(mean)[:, None])
    var = (probs @ centers.pow(2) - mean.pow(2)).clamp_min(0) + bins.width ** 2 / 12
    x, w = np.polynomial.hermite.hermgauss(k)  # nodes/weights for exp(-x^2): N(mu, sd) at mu + sqrt(2) sd x
    nodes = torch.as_tensor(x, dtype=probs.dtype, device=probs.device)
    weights = torch.as_tensor(w / math.sqrt(math.pi), dtype=probs.dtype, device=probs.device)
    logsnr = (mean[:, None] + math.sqrt(2.0) * var.sqrt()[:, None] * nodes[None]).clamp(bins.lo, bins.hi)
    return NullLevels(logsnr, weights.expand(probs.shape[0], -1).contiguous())


def null_levels(estimator, x_net: torch.Tensor, k: int = 1, log_prior: torch.Tensor | None = None) -> NullLevels:
    """The quadrature levels of the null branch at network-space states ``x_net`` (:func:`quadrature` of
    :func:`level_posterior`)."""
    return quadrature(level_posterior(estimator, x_net, log_prior), estimator.bins, k)


def mix(preds: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``sum_i weight[:, i] * preds[i]``: the null branch from the conditional predictions at the levels."""
    out = append_dims(weight[:, 0].to(preds[0]), preds[0].dim()) * preds[0]
    for i in range(1, len(preds)):
        out = out + append_dims(weight[:, i].to(preds[i]), preds[i].dim()) * preds[i]
    return out
