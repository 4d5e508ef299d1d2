"""Denoising loss with noise-condition dropout (and class dropout for CFG).

With probability ``t_dropout`` a sample's noise condition is replaced by the null condition
(``drop_t``); its regression target is unchanged, so one set of weights learns both the
noise-conditional prediction and the noise-unconditional one that classifier-free NAG needs.
"""
from __future__ import annotations

import torch

from .predictions import target
from .schedules import Schedule
from .tensors import append_dims


def denoising_loss(net, x0: torch.Tensor, y: torch.Tensor | None, schedule: Schedule, prediction: str,
                   t_dropout: float = 0.0, y_dropout: float = 0.0, generator: torch.Generator | None = None,
                   null_target=None, null_weight: float = 1.0, cond_target=None):
    """Mean-squared error in the ``prediction`` parameterisation.

    ``null_target(x_net, sigma, y) -> prediction``: the regression target of the dropped rows
    (default: the ordinary target, as in the paper).  Its minimiser is the same noise-unconditional
    branch whenever the target's mean given the state is the level-marginal prediction (e.g. the
    network's own conditional branch averaged over the level posterior: a self-distilled target
    with far less variance than the raw noise).  ``cond_target``: the same for the kept rows (e.g. a
    frozen teacher's prediction, which anchors the conditional branch while the null branch learns).
    ``null_weight``: loss weight of the dropped rows relative to the kept ones (the mean is weighted).
    Returns ``(loss, per_sample, drop_t)`` so callers can track the dropped rows' loss.
    """
    B = x0.shape[0]
    s = schedule.training_sigmas(B, generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x, a_n, s_n = schedule.noised(x0, s, eps)
    drop_t = torch.rand(B, generator=generator).to(x0.device) < t_dropout
    num_classes = getattr(net, "num_classes", 0)
    if num_classes:
        if y is None:
            raise ValueError("this model is class-conditional; pass class labels y")
        drop_y = torch.rand(B, generator=generator).to(x0.device) < y_dropout
        y = torch.where(drop_y, torch.full_like(y, num_classes), y)
    tgt = target(prediction, x0, eps, a_n, s_n)
    for rows, fn in ((~drop_t, cond_target), (drop_t, null_target)):
        if fn is not None and bool(rows.any()):
            with torch.no_grad():
                tgt = torch.where(append_dims(rows, x.dim()), fn(x, s, y).to(tgt), tgt)
    pred = net(x, schedule.net_time(s).to(x0.device), y, drop_t)
    per = (pred - tgt).pow(2).flatten(1).mean(1)
    if null_weight == 1.0:
        return per.mean(), per.detach(), drop_t
    w = torch.where(drop_t, torch.full_like(per, float(null_weight)), torch.ones_like(per))
    return (per * w).sum() / w.sum(), per.detach(), drop_t


def fit(module: torch.nn.Module, loss_fn, steps: int, lr: float, callback=None, what: str = "loss") -> list[float]:
    """The small training loop shared by the testbed's denoisers and the estimators.

    AdamW (no weight decay) with cosine decay to 5 % of ``lr``; ``loss_fn(step)`` returns the
    batch loss; stops with a clear error on a non-finite loss.  Returns the loss history.
    """
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    hist = []
    module.train()
    for step in range(steps):
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what} became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.append(loss.item())
        if callback is not None:
            callback(step, hist[-1])
    module.eval()
    return hist
