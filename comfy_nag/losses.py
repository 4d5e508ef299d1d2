"""Denoising loss with noise-condition dropout (and class dropout for CFG).

With probability ``noise_condition_dropout_rate`` a sample's noise condition is replaced by the null
condition (``drop_t``); its regression target is unchanged, so one set of weights learns both the
noise-conditional prediction and the noise-unconditional one that classifier-free NAG needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .predictions import target
from .schedules import Schedule


@dataclass(frozen=True)
class TrainingBatch:
    """One batch of forward samples and what the network is trained to predict from them."""

    x: torch.Tensor       # network-space noisy states (Schedule.noised)
    sigma: torch.Tensor   # their sampling sigmas [B]
    t: torch.Tensor       # network times [B]
    y: object             # conditions after class dropout (class ids; passed through when not class-conditional)
    drop_t: torch.Tensor  # bool [B]: rows trained at the null condition
    target: torch.Tensor  # regression target in the network's parameterisation


def training_batch(net, x0: torch.Tensor, y, schedule: Schedule, prediction: str, *,
                   noise_condition_dropout_rate: float = 0.0, class_dropout_rate: float = 0.0,
                   generator: torch.Generator | None = None) -> TrainingBatch:
    """Draw levels, noise and the dropout masks for clean samples ``x0`` (classes ``y`` when ``net.num_classes``)."""
    B = x0.shape[0]
    s = schedule.training_sigmas(B, generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x, a_n, s_n = schedule.noised(x0, s, eps)
    drop_t = torch.rand(B, generator=generator).to(x0.device) < noise_condition_dropout_rate
    num_classes = getattr(net, "num_classes", 0)
    if num_classes:
        if y is None:
            raise ValueError("this model is class-conditional; pass class labels y")
        drop_y = torch.rand(B, generator=generator).to(x0.device) < class_dropout_rate
        y = torch.where(drop_y, torch.full_like(y, num_classes), y)
    tgt = target(prediction, x0, eps, a_n, s_n)
    return TrainingBatch(x, s, schedule.net_time(s).to(x0.device), y, drop_t, tgt)


def squared_errors(net, batch: TrainingBatch, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error [B] of ``net`` on ``batch`` (against ``target``, default the batch's)."""
    pred = net(batch.x, batch.t, batch.y, batch.drop_t)
    return (pred - (batch.target if target is None else target)).pow(2).flatten(1).mean(1)


def denoising_loss(net, x0: torch.Tensor, y, schedule: Schedule, prediction: str, *,
                   noise_condition_dropout_rate: float = 0.0, class_dropout_rate: float = 0.0,
                   generator: torch.Generator | None = None):
    """Mean-squared error in the ``prediction`` parameterisation, the paper's loss.

    Returns ``(loss, per_sample, drop_t)`` so callers can track the dropped rows' loss.
    """
    batch = training_batch(net, x0, y, schedule, prediction, noise_condition_dropout_rate=noise_condition_dropout_rate,
                           class_dropout_rate=class_dropout_rate, generator=generator)
    per = squared_errors(net, batch)
    return per.mean(), per.detach(), batch.drop_t


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
