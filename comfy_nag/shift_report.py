"""Noise-shift recording of a host sampler's steps and its report (numbers + plot inputs).

Host-independent: the host calls :meth:`ShiftRecording.add` once per step with the state ``x``
(sampling space), its nominal sampling sigma and optionally a learned estimator's per-sample
log-SNR estimate; without one, the training-free variance estimate (estimators.variance_logsnr)
is used.  Levels are log-SNR (lower = noisier).  The gap is taken against the nominal level (no
forward reference is available inside a host sampler), so it includes the readout's own bias.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .schedules import Space
from .shift import ShiftTrace, summarize, variance_readout


class ShiftRecording:
    """Per-step readouts of one sampling run.  ``window``: (sigma_lo, sigma_hi) of active guidance."""

    def __init__(self, space: Space, data_variance: float = 1.0, window=None, readout: str = "variance"):
        self.space, self.window, self.readout = space, window, readout
        self._variance = variance_readout(space, data_variance)
        self._given = None
        self.trace = ShiftTrace(self._read, space)
        self.scales: dict[int, tuple[float, float]] = {}

    def _read(self, x, s):
        return self._given if self._given is not None else self._variance(x, s)

    def add_scales(self, step: int, scales: torch.Tensor) -> None:
        """The scale a self-setting rule chose per sample at ``step`` (auto_scale.AutoScale's trace)."""
        self.scales[int(step)] = (float(scales.float().mean()), float(scales.float().std()) if scales.numel() > 1 else 0.0)

    def add(self, step: int, sigma: float, x: torch.Tensor, estimate: torch.Tensor | None = None) -> None:
        self._given = estimate
        self.trace({"i": step, "sigma": sigma, "x": x})
        self._given = None

    def __len__(self):
        return len(self.trace.steps)


def _clean(v):
    if isinstance(v, (list, tuple)):
        return [_clean(u) for u in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def window_steps(sigmas, window) -> tuple[int, int] | None:
    """(first, last) step index whose sigma lies in the window, or None."""
    if window is None:
        return None
    lo, hi = window
    idx = [i for i, s in enumerate(sigmas) if lo <= s <= hi]
    return (idx[0], idx[-1]) if idx else None


def shift_report(runs: list[tuple[str, ShiftRecording]]) -> dict:
    """``{"json": per-run numbers (JSON-safe), "plot_runs": plots.shift_figure input, "window_steps"}``."""
    out, plot_runs, win = [], [], None
    for label, rec in runs:
        if len(rec) == 0:
            raise ValueError(f"run '{label}' recorded no steps")
        summ = summarize(rec.trace)
        ws = window_steps(summ["sigma"], rec.window)
        win = win or ws
        out.append({"label": label, "readout": rec.readout, "window_sigma": list(rec.window) if rec.window else None,
                    "window_steps": list(ws) if ws else None,
                    **{k: _clean(summ[k]) for k in ("step", "sigma", "nominal_logsnr", "estimated_mean", "estimated_std",
                                                     "gap", "noise_shift", "signed_shift")}})
        scale_mean = [rec.scales.get(i, (None, None))[0] for i in summ["step"]] if rec.scales else None
        if scale_mean is not None:
            out[-1].update(scale_mean=scale_mean, scale_std=[rec.scales.get(i, (None, None))[1] for i in summ["step"]])
        nominal = np.where(np.isfinite(summ["nominal_logsnr"]), summ["nominal_logsnr"], np.nan)
        plot_runs.append({"label": f"{label} ({rec.readout})", "nominal": nominal, "estimated_mean": summ["estimated_mean"],
                          "estimated_std": summ["estimated_std"], "scale_mean": scale_mean})
    return {"json": {"units": "log-SNR (lower = noisier)", "runs": out}, "plot_runs": plot_runs, "window_steps": win}
