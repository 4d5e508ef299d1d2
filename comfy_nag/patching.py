"""Host-independent pieces of the ComfyUI patches (no ComfyUI import here).

Conventions: ``sigma`` is the host's sampling sigma (ComfyUI: ve space for EPS/V models, flow
space for CONST/flow models); the null timestep is in **network units** (what the diffusion
network's timestep input receives, metadata.py's ``nag.null_timestep``).  The correction terms
are added to the host's CFG result (x0 / "denoised" space), so they compose with any other
post-CFG function that runs before or after.
"""
from __future__ import annotations

import math

import torch

from .guidance import nag_mix
from .predictions import _bc
from .schedules import logsnr_of, space_alpha

# Sampling-schedule kinds a host model may use, and the null timestep (network units) of each
# (METHOD.md: -1000 on a 0..999 discrete scale, -1 flow units times the network multiplier,
# 0.25*ln(1e-20) for EDM's 0.25*ln(sigma)).
SAMPLING_KINDS = ("discrete", "discrete_flow", "flux", "edm")


def default_null_timestep(kind: str, multiplier: float = 1000.0) -> float:
    """Family-aware default null timestep.  ``multiplier``: flow network time per unit sigma."""
    if kind == "discrete":
        return -1000.0
    if kind == "discrete_flow":
        return -1.0 * float(multiplier)
    if kind == "flux":
        return -1.0
    if kind == "edm":
        return 0.25 * math.log(1e-20)
    raise ValueError(f"unsupported sampling schedule {kind!r} for Noise Awareness Guidance; supported: "
                     "SD1.x/SD2.x/SDXL (discrete), SD3/WAN/AuraFlow (discrete flow), Flux-style flow, EDM")


def choose_null_timestep(metadata_value: float | None, kind: str, multiplier: float = 1000.0,
                         manual: float | None = None, source: str = "auto") -> tuple[float, str]:
    """Pick the null timestep and say where it came from.

    ``source``: ``auto`` (file metadata, else the family default), ``metadata`` (required),
    ``manual`` (``manual`` value).  Returns ``(value, origin)``.
    """
    if source == "manual":
        if manual is None or not math.isfinite(manual):
            raise ValueError("null timestep source is 'manual' but no finite manual value was given")
        return float(manual), "manual"
    if metadata_value is not None:
        return float(metadata_value), "metadata"
    if source == "metadata":
        raise ValueError("the model carries no comfy-nag metadata (nag.null_timestep): load it with the "
                         "'Noise Awareness Load Diffusion Model/Checkpoint' node, or set the null timestep source "
                         "to 'auto' (family default) or 'manual'")
    if source != "auto":
        raise ValueError(f"unknown null timestep source {source!r}; expected auto, metadata or manual")
    return default_null_timestep(kind, multiplier), f"default for {kind}"


def sigma_window(start: float, end: float, unit: str, percent_to_sigma=None) -> tuple[float, float]:
    """Guidance window as ``(sigma_lo, sigma_hi)``.

    ``unit="percent"``: ``start``/``end`` are fractions of sampling progress in [0, 1] (ComfyUI's
    start/end percent; 0 = first step), mapped with the host's ``percent_to_sigma``.
    ``unit="sigma"``: ``start`` is the high sigma, ``end`` the low one.
    """
    if unit == "percent":
        if not (0.0 <= start <= end <= 1.0):
            raise ValueError(f"guidance window start={start}, end={end}: percents need 0 <= start <= end <= 1")
        hi, lo = float(percent_to_sigma(start)), float(percent_to_sigma(end))
    elif unit == "sigma":
        hi, lo = float(start), float(end)
        if not (hi >= lo >= 0.0):
            raise ValueError(f"guidance window start={start}, end={end}: sigmas need start >= end >= 0 (start is the noisier end)")
    else:
        raise ValueError(f"unknown window unit {unit!r}; expected 'percent' or 'sigma'")
    return lo, hi


def in_window(sigma: torch.Tensor, window: tuple[float, float]) -> bool:
    """Whether any sample's sigma lies in the window (inclusive)."""
    lo, hi = window
    s = sigma.reshape(-1)
    return bool(((s >= lo) & (s <= hi)).any())


def nag_correction(cond: torch.Tensor, null_cond: torch.Tensor, scale: float, variant: str = "A",
                   cfg_scale: float = 1.0, uncond: torch.Tensor | None = None,
                   null_uncond: torch.Tensor | None = None) -> torch.Tensor:
    """What classifier-free NAG adds to the CFG result ``u + cfg*(c - u)``.

    Equals ``guidance.combine(...) - (u + cfg*(c - u))``: variant A ``w*(c - n_c)``; variant B
    (NAG inside both branches) ``w*(cfg*(c - n_c) + (1 - cfg)*(u - n_u))``.
    """
    if variant == "B" and uncond is not None and null_uncond is not None:
        c2, u2 = nag_mix(cond, null_cond, scale), nag_mix(uncond, null_uncond, scale)
        return (u2 + cfg_scale * (c2 - u2)) - (uncond + cfg_scale * (cond - uncond))
    return _bc(scale, cond) * (cond - null_cond)


def level_gradient(estimator, x: torch.Tensor, sigma: torch.Tensor, space: str, net_scale: torch.Tensor) -> torch.Tensor:
    """``grad_x log g(lambda(sigma) | net_scale*x)`` in the sampling space, under any autograd mode.

    Works inside ``torch.inference_mode`` (ComfyUI runs nodes there): the state is cloned out of
    inference mode and only the estimator is differentiated.  The estimator's parameters must not be
    inference tensors (load it under ``torch.inference_mode(False)``).
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().float().requires_grad_(True)
        s = sigma.detach().clone().float().reshape(-1).expand(x.shape[0])
        lam = logsnr_of(space, s)
        c = net_scale.detach().clone().float().reshape(-1).expand(x.shape[0])
        lp = estimator.log_prob(_bc(c, xg) * xg, lam).sum()
        (g,) = torch.autograd.grad(lp, xg)
    return g.detach().to(x.dtype)


def classifier_correction(estimator, x: torch.Tensor, sigma: torch.Tensor, space: str, net_scale: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """x0 ("denoised") change of classifier-guided NAG: the score gets ``scale*grad log g``.

    x0 shift = ``sigma^2/alpha * scale * grad`` (guidance.score_to_x0_shift); zero where the flow
    signal coefficient vanishes.
    """
    from .guidance import score_to_x0_shift

    g = level_gradient(estimator, x, sigma, space, net_scale)
    s = sigma.detach().float().reshape(-1).expand(x.shape[0]).to(x.device)
    space_alpha(space, s)  # validates the space
    return score_to_x0_shift(scale * g, x, s.to(x.dtype), space)


def check_finite(x: torch.Tensor, where: str) -> None:
    """Clear error for NaN/Inf states (instead of a crash deep inside the sampler)."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{where}: the latent contains NaN/Inf values. Check the input latent/VAE encode, "
                                 "lower the guidance scales, or use more steps (the run diverged)")
