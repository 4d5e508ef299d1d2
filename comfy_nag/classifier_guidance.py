"""Classifier-guided NAG: the gradient of a noise-level estimator's log-likelihood as a score term.

Conventions: ``sigma`` is the sampling sigma and ``space`` its sampling space (schedules.py); the
estimator sees network-space states ``net_scale * x`` (``net_scale`` = ``Schedule.native``'s ``c``).
Score terms become x0 ("denoised") changes with :func:`score_to_x0_shift`, which is how they are added
to a sampler's (or ComfyUI's post-CFG) denoised prediction.
"""
from __future__ import annotations

import torch

from .schedules import MIN_ALPHA, Space
from .tensors import append_dims


def score_to_x0_shift(score_term: torch.Tensor, x: torch.Tensor, s: torch.Tensor, space: Space) -> torch.Tensor:
    """x0 change caused by adding ``score_term`` to the score: ``s^2 * term / alpha`` (0 where alpha ~ 0)."""
    a = space.alpha(s)
    coef = torch.where(a > MIN_ALPHA, s * s / a.clamp_min(MIN_ALPHA), torch.zeros_like(a))
    return append_dims(coef, x.dim()) * score_term


def level_gradient(estimator, x: torch.Tensor, sigma: torch.Tensor, space: Space, net_scale: torch.Tensor,
                   log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """``grad_x log g(lambda(sigma) | net_scale*x)``: the classifier-guided NAG score term, sampling space.

    ``estimator``: a noise-level estimator on network-space states (``net_scale`` = ``Schedule.native``'s
    ``c``).  Works under any autograd mode, ``torch.inference_mode`` included (ComfyUI runs nodes there):
    the state is cloned out of inference mode and only the estimator is differentiated; its parameters
    must not be inference tensors (load it under ``torch.inference_mode(False)``).  ``log_prior``: see
    ``NoiseLevelEstimator.log_prob`` (default: the estimator's own uniform prior).
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().float().requires_grad_(True)
        s = sigma.detach().clone().float().reshape(-1).expand(x.shape[0])
        lam = space.logsnr(s)
        c = net_scale.detach().clone().float().reshape(-1).expand(x.shape[0])
        lp = estimator.log_prob(append_dims(c, xg.dim()) * xg, lam, log_prior).sum()
        (g,) = torch.autograd.grad(lp, xg)
    return g.detach().to(x.dtype)


def classifier_correction(estimator, x: torch.Tensor, sigma: torch.Tensor, space: Space, net_scale: torch.Tensor,
                          scale) -> torch.Tensor:
    """x0 ("denoised") change of classifier-guided NAG: the score gets ``scale * level_gradient``.

    x0 shift = ``sigma^2/alpha * scale * grad`` (:func:`score_to_x0_shift`); zero where the flow signal
    coefficient vanishes.  ``scale`` may be per-sample [B].
    """
    g = level_gradient(estimator, x, sigma, space, net_scale)
    s = sigma.detach().float().reshape(-1).expand(x.shape[0]).to(x.device)
    return score_to_x0_shift(g * append_dims(scale, x.dim()), x, s.to(x.dtype), space)


def estimator_x0_term(estimator, x: torch.Tensor, sigma: torch.Tensor, space: Space, net_scale: torch.Tensor,
                      log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The estimator's NAG term as an x0 change (classifier-guided NAG at scale 1): what the
    classifier-free term ``x0_cond - x0_null`` estimates too.  Arguments as :func:`level_gradient`."""
    s = sigma.detach().float().reshape(-1).expand(x.shape[0])
    return score_to_x0_shift(level_gradient(estimator, x, s, space, net_scale, log_prior), x, s.to(x.dtype), space)
