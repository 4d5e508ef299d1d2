"""Guidance windows: where on the sampled schedule a guidance patch is active.

Windows in percent are fractions of the steps the sampler call actually samples
(``transformer_options["sample_sigmas"]``), so at denoise < 1 "0" is the first sampled step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..comfy_nag import patching
from ..comfy_nag.patching import WindowUnit
from .model_info import sampling


def progress_sigma(sigmas: torch.Tensor, p: float) -> float:
    """Sigma at sampling progress ``p`` in [0, 1] of a sampled schedule ``sigmas`` (N steps, N+1 values):
    ``p*N`` indexes the schedule, linear between neighbours (0 = first step's sigma, 1 = the final one)."""
    s = sigmas.detach().reshape(-1).float().cpu()
    n = s.numel() - 1
    if n <= 0:
        return float(s[0])
    pos = round(p * n, 9)
    i = min(int(pos), n - 1)
    return float(s[i] + (pos - i) * (s[i + 1] - s[i]))


@dataclass(frozen=True)
class Window:
    """Where guidance is active.  ``SIGNAL``: ``start``/``end`` are signal shares SNR/(1+SNR) (0.5 = log-SNR 0,
    the same noise level on every family); ``PERCENT``: fractions of the steps this sampler call samples (0 = its
    first step); ``SIGMA``: ``start`` the high sigma, ``end`` the low.
    ``full``: ``(sigma_lo, sigma_hi)`` over the model's whole range, used when the sampled sigmas are unknown."""
    unit: WindowUnit
    start: float
    end: float
    full: tuple[float, float]

    @classmethod
    def of(cls, model, unit: WindowUnit, start: float, end: float) -> "Window":
        ms = model.get_model_object("model_sampling")
        return cls(unit, float(start), float(end),
                   patching.sigma_window(start, end, unit, ms.percent_to_sigma, sampling(model).space))

    def bounds(self, sample_sigmas: torch.Tensor | None = None) -> tuple[float, float]:
        """``(sigma_lo, sigma_hi)`` for a sampler call over ``sample_sigmas``."""
        if self.unit is not WindowUnit.PERCENT or sample_sigmas is None or sample_sigmas.numel() == 0:
            return self.full
        return progress_sigma(sample_sigmas, self.end), progress_sigma(sample_sigmas, self.start)

    def active(self, sigma: torch.Tensor, model_options: dict) -> bool:
        sampled = model_options.get("transformer_options", {}).get("sample_sigmas")
        return patching.in_window(sigma, self.bounds(sampled))
