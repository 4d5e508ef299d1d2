"""Noise-shift measurement: nominal vs estimated noise level at every sampler step.

A *readout* maps a sampling-space state ``x`` [B, ...] at nominal sigma ``s`` to an estimated
log-SNR per sample [B] (learned estimator, exact posterior, or the variance estimate).

Definitions (log-SNR units, lower = noisier):

* ``gap_i = mean_b readout(x_i^b) - mean_b readout(x_i^true)``: the shift at step i, where
  ``x_i^true`` are *true forward samples* at the same nominal level read by the same readout.
  Subtracting the forward readout removes the estimator's own bias, exactly as the paper's KDE
  figure compares sampler states with forward states.  Negative = states look noisier.
* ``noise_shift``: mean of ``|gap_i|`` over the last 20 % of steps (``i >= floor(0.8 N)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .estimators import variance_logsnr
from .schedules import Schedule, Space
from .tensors import append_dims


def estimator_readout(estimator, schedule: Schedule):
    """Readout from a learned :class:`NoiseLevelEstimator` (it sees the network-space state)."""

    def readout(x, s):
        c, _, _ = schedule.native(torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0]))
        return estimator.mean(append_dims(c, x.dim()).to(x) * x)

    return readout


def variance_readout(space: Space, data_var: float):
    """Training-free readout (the time-shift sampler's variance matching) in sampling ``space``."""
    def readout(x, s):
        return variance_logsnr(x, space, data_var, torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0]))

    return readout


@dataclass
class ShiftTrace:
    """Sampler callback (samplers.py's dict) that records the readout of the state at each step.

    ``trace({"i", "sigma", "x", ...})`` stores the step index, nominal sigma, nominal log-SNR and
    the per-sample estimates.  ``only``: record just these step indices (readouts can be costly).
    Chain another callback with ``then``.
    """

    readout: object
    space: Space
    then: object = None
    only: set | None = None
    steps: list = field(default_factory=list)
    sigmas: list = field(default_factory=list)
    nominal: list = field(default_factory=list)
    estimated: list = field(default_factory=list)

    def __call__(self, info: dict):
        if self.then is not None:
            self.then(info)
        i, s, x = info["i"], float(info["sigma"]), info["x"]
        if self.only is not None and i not in self.only:
            return
        self.steps.append(int(i))
        self.sigmas.append(s)
        self.nominal.append(float(self.space.logsnr(torch.tensor(s))))
        self.estimated.append(self.readout(x, s).detach().float().cpu().numpy())

    def arrays(self):
        return np.array(self.sigmas), np.array(self.nominal), np.stack(self.estimated)


def late_steps(n_steps: int, last_frac: float = 0.2) -> list[int]:
    """Indices of the last ``last_frac`` of ``n_steps`` sampler steps (i >= (1-frac)*n)."""
    return list(range(int(np.floor((1 - last_frac) * n_steps)), n_steps))


def forward_readout(readout, x0: torch.Tensor, sigmas, schedule: Schedule, generator=None) -> np.ndarray:
    """Readout of true forward samples of ``x0`` at each nominal sigma: [steps, B]."""
    out = []
    for s in sigmas:
        s_t = torch.full((x0.shape[0],), float(s), dtype=x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x = schedule.noised(x0, s_t, eps, network=False)[0]
        out.append(readout(x, float(s)).detach().float().cpu().numpy())
    return np.stack(out)


def summarize(trace: ShiftTrace, reference: np.ndarray | None = None, n_steps: int | None = None,
              last_frac: float = 0.2) -> dict:
    """Per-step and summary statistics.

    ``reference``: :func:`forward_readout` at the recorded sigmas; ``n_steps``: the run's number of
    steps (default: last recorded index + 1), which defines the late steps (:func:`late_steps`).
    """
    sig, nom, est = trace.arrays()
    finite = np.isfinite(nom)
    ref_mean = reference.mean(1) if reference is not None else np.where(finite, nom, np.nan)
    gap = est.mean(1) - ref_mean
    n = n_steps if n_steps is not None else trace.steps[-1] + 1
    late = np.isin(np.array(trace.steps), late_steps(n, last_frac)) & np.isfinite(gap)
    return {
        "step": list(trace.steps),
        "sigma": sig.tolist(),
        "nominal_logsnr": nom.tolist(),
        "estimated_mean": est.mean(1).tolist(),
        "estimated_std": est.std(1).tolist(),
        "reference_mean": ref_mean.tolist(),
        "gap": gap.tolist(),
        "noise_shift": float(np.abs(gap[late]).mean()) if late.any() else float("nan"),
        "signed_shift": float(gap[late].mean()) if late.any() else float("nan"),
        "late_steps": int(late.sum()),
    }
