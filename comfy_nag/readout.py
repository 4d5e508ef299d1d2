"""The null-branch readout: how well a network's classifier-free NAG term agrees with an estimator's.

Used by the trainer's monitor (a fine-tune's null branch, read without any exact quantity) and by the
studies, which validate it against the exact term on the testbed.
"""
from __future__ import annotations

import torch

from .classifier_guidance import estimator_x0_term
from .schedules import Space


def agreement(learned: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine and norm ratio ``|learned| / |reference|`` of two batches of vectors [B, ...]."""
    a, b = learned.flatten(1).double(), reference.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1), a.norm(dim=1) / b.norm(dim=1).clamp_min(1e-12)


def null_branch_readout(x0_cond: torch.Tensor, x0_null: torch.Tensor, estimator, x: torch.Tensor,
                        sigma: torch.Tensor, space: Space, net_scale: torch.Tensor,
                        log_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How well a network's classifier-free NAG term agrees with an independent estimator's, per sample.

    By Bayes, ``score(x | lambda) - score(x) = grad_x log p(lambda | x)``: the classifier-free term
    ``x0_cond - x0_null`` (the null branch's x0 change) and the classifier-guided one (the estimator's
    gradient as an x0 change, ``classifier_guidance.estimator_x0_term``) estimate the same vector.  Neither is exact, so
    agreement is a lower bound on how faithful each is; it rises as the null branch trains.  The two are the
    same vector only under the same prior over levels: pass the training levels' ``log_prior``
    (``estimators.training_log_prior``), since the null branch averages over those.  Returns
    ``(cosine, norm ratio |cf| / |cg|)`` per sample [B].  ``x``: sampling-space states at ``sigma``.
    """
    return agreement(x0_cond - x0_null, estimator_x0_term(estimator, x, sigma, space, net_scale, log_prior))
