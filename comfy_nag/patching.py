"""Host-independent pieces of the ComfyUI patches (no ComfyUI import here): which null timestep,
which guidance window, finite-state checks.

Conventions: ``sigma`` is the host's sampling sigma (ComfyUI: ve space for EPS/V models, flow
space for CONST/flow models); the null timestep is in **network units** (what the diffusion
network's timestep input receives, metadata.py's ``nag.null_timestep``).  The correction terms
themselves (``guidance.nag_correction``, ``classifier_guidance.classifier_correction``) are added to the
host's CFG result (x0 / "denoised" space), so they compose with any other post-CFG function
that runs before or after.
"""
from __future__ import annotations

import enum
import math

import torch

from .schedules import SamplingKind, Space


class NullTimestepSource(enum.Enum):
    """Where a learned null branch's null timestep comes from: ``AUTO`` (the file's metadata, else the family
    default), ``METADATA`` (the file's, required) or ``MANUAL`` (a value given by hand)."""

    AUTO = "auto"
    METADATA = "metadata"
    MANUAL = "manual"


def choose_null_timestep(metadata_value: float | None, kind: SamplingKind, multiplier: float = 1000.0,
                         manual: float | None = None,
                         source: NullTimestepSource = NullTimestepSource.AUTO) -> tuple[float, NullTimestepSource]:
    """Pick the null timestep (network units) and say where it came from: ``(value, METADATA | MANUAL | AUTO)``,
    ``AUTO`` meaning the family default of ``kind`` (``multiplier``: flow network time per unit sigma)."""
    if source is NullTimestepSource.MANUAL:
        if manual is None or not math.isfinite(manual):
            raise ValueError("null timestep source is 'manual' but no finite manual value was given")
        return float(manual), NullTimestepSource.MANUAL
    if metadata_value is not None:
        return float(metadata_value), NullTimestepSource.METADATA
    if source is NullTimestepSource.METADATA:
        raise ValueError("the model carries no comfy-nag metadata (nag.null_timestep): load it with the "
                         "'Noise Awareness Load Diffusion Model/Checkpoint' node, or set the null timestep source "
                         "to 'auto' (family default) or 'manual'")
    return kind.default_null_timestep(multiplier), NullTimestepSource.AUTO


class WindowUnit(enum.Enum):
    """What a guidance window's ``start``/``end`` mean (:func:`sigma_window`)."""

    SIGNAL = "signal"
    PERCENT = "percent"
    SIGMA = "sigma"


def sigma_window(start: float, end: float, unit: WindowUnit, percent_to_sigma=None,
                 space: Space | None = None) -> tuple[float, float]:
    """Guidance window as ``(sigma_lo, sigma_hi)``.

    ``SIGNAL``: ``start``/``end`` are signal shares ``SNR / (1 + SNR)`` in [0, 1] (0 = pure noise, 0.5 = signal
    power equals noise power, i.e. log-SNR 0; 1 = clean), mapped with the sampling ``space``: the same window means
    the same noise level on every model family.  ``PERCENT``: fractions of sampling progress in [0, 1] (ComfyUI's
    start/end percent; 0 = first step), mapped with the host's ``percent_to_sigma``.  ``SIGMA``: ``start`` is the
    high sigma, ``end`` the low one.
    """
    if unit is WindowUnit.SIGMA:
        hi, lo = float(start), float(end)
        if not (hi >= lo >= 0.0):
            raise ValueError(f"guidance window start={start}, end={end}: sigmas need start >= end >= 0 (start is the noisier end)")
        return lo, hi
    if not (0.0 <= start <= end <= 1.0):
        raise ValueError(f"guidance window start={start}, end={end}: {unit.value} windows need 0 <= start <= end <= 1")
    if unit is WindowUnit.PERCENT:
        return float(percent_to_sigma(end)), float(percent_to_sigma(start))
    hi, lo = (float(v) for v in space.sigma_from_logsnr(torch.logit(torch.tensor([start, end], dtype=torch.float64))))
    return lo, hi


def in_window(sigma: torch.Tensor, window: tuple[float, float]) -> bool:
    """Whether any sample's sigma lies in the window (inclusive)."""
    lo, hi = window
    s = sigma.reshape(-1)
    return bool(((s >= lo) & (s <= hi)).any())


def check_finite(x: torch.Tensor, where: str) -> None:
    """Clear error for NaN/Inf states (instead of a crash deep inside the sampler)."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{where}: the latent contains NaN/Inf values. Check the input latent/VAE encode, "
                                 "lower the guidance scales, or use more steps (the run diverged)")
