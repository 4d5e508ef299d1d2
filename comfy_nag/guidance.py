"""Guidance math: what to apply at each step, and how the branches mix (CFG, classifier-free NAG,
epsilon scaling).  Classifier-guided NAG's term: classifier_guidance.py; per-level scales: scale_profiles.py.

Conventions (docs/method.md):

* ``cfg_scale`` uses ComfyUI's convention: ``u + cfg*(c - u)``; 1 = no CFG.
* ``nag_scale`` ``w``: ``c + w*(c - n)`` with n the noise-unconditional (null-timestep) branch;
  0 = no NAG, and then the null branch is never evaluated.
* ``Variant.A`` (default, 3 branches): ``u + cfg*(c - u) + w*(c - n_c)``.
  ``Variant.B`` (4 branches): NAG inside both CFG branches, then CFG.
* All mixtures have weights summing to one, so they may be applied to eps, v, x0 or velocity
  predictions alike, as long as every branch is converted with the nominal level.  Here they
  are applied to x0 (denoised) predictions, like ComfyUI's post-CFG hooks.
* Sigmas are sampling sigmas (schedules.py); ``alpha`` is the sampling space's signal coefficient.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .null_branch import LearnedNull, NullBranch
from .auto_scale import AutoScale
from .scale_profiles import ScaleProfile
from .schedules import MIN_ALPHA, Space
from .tensors import append_dims

BRANCHES = ("cond", "uncond", "null_cond", "null_uncond")


class Variant(enum.Enum):
    """How NAG combines with CFG: A adds ``w*(c - n_c)`` to the CFG result (3 branches); B applies NAG inside
    both CFG branches, then CFG (4 branches)."""

    A = "A"
    B = "B"


@dataclass(frozen=True)
class Guidance:
    """What to apply at each evaluation.  Windows are (sigma_lo, sigma_hi) in sampling sigma."""

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    variant: Variant = Variant.A
    nag_window: tuple[float, float] | None = None
    cg_scale: float = 0.0
    cg_window: tuple[float, float] | None = None
    eps_scale: float = 1.0  # epsilon scaling factor (Ning et al.); 1 = off
    rule: ScaleProfile | AutoScale | None = None  # how the NAG-CF / NAG-CG scales vary per sample (None: constant)
    null: NullBranch = LearnedNull()  # where the null branch comes from (null_branch.py)

    def __post_init__(self):
        if not isinstance(self.variant, Variant):
            raise ValueError(f"variant must be guidance.Variant.A (additive, 3 evaluations) or Variant.B (NAG inside "
                             f"both CFG branches, 4 evaluations), got {self.variant!r}")
        for name in ("cfg_scale", "nag_scale", "cg_scale", "eps_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not isinstance(self.null, NullBranch):
            raise ValueError(f"null must be a null-branch source (null_branch.LearnedNull or EstimatorNull), got "
                             f"{self.null!r}")
        if self.eps_scale <= 0:
            raise ValueError(f"eps_scale must be > 0 (1 = off), got {self.eps_scale}")


def branches(cfg_scale: float, nag_scale: float, variant: Variant = Variant.A) -> tuple[str, ...]:
    """Branches one evaluation needs. Scale 0 / cfg 1 drop their extra branches entirely."""
    out = ["cond"]
    if cfg_scale != 1.0:
        out.append("uncond")
    if nag_scale != 0.0:
        out.append("null_cond")
        if variant is Variant.B and cfg_scale != 1.0:
            out.append("null_uncond")
    return tuple(out)


def nag_mix(cond: torch.Tensor, null: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free NAG: ``cond + w*(cond - null)``."""
    return cond + append_dims(scale, cond.dim()) * (cond - null)


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """CFG in ComfyUI's convention, ``u + cfg*(c - u)``; just ``cond`` without an unconditional branch."""
    return cond if uncond is None else uncond + cfg_scale * (cond - uncond)


def nag_correction(cond: torch.Tensor, null_cond: torch.Tensor, scale, variant: Variant = Variant.A, cfg_scale: float = 1.0,
                   uncond: torch.Tensor | None = None, null_uncond: torch.Tensor | None = None) -> torch.Tensor:
    """What classifier-free NAG adds to the CFG result ``u + cfg*(c - u)`` (how a post-CFG hook applies it).

    Variant A: ``w*(c - n_c)``; variant B (NAG inside both CFG branches):
    ``combine(...) - (u + cfg*(c - u))``.  ``scale`` may be per-sample [B].
    """
    if variant is Variant.B and uncond is not None and null_uncond is not None:
        outs = {"cond": cond, "uncond": uncond, "null_cond": null_cond, "null_uncond": null_uncond}
        return combine(outs, cfg_scale, scale, Variant.B) - cfg_mix(cond, uncond, cfg_scale)
    return append_dims(scale, cond.dim()) * (cond - null_cond)


def combine(outs: dict[str, torch.Tensor], cfg_scale: float, nag_scale, variant: Variant = Variant.A) -> torch.Tensor:
    """Mix branch predictions (any one parameterisation).  ``nag_scale`` may be per-sample [B]."""
    c = outs["cond"]
    u = outs.get("uncond")
    n_c = outs.get("null_cond")
    if variant is Variant.B and u is not None and n_c is not None:
        return cfg_mix(nag_mix(c, n_c, nag_scale), nag_mix(u, outs["null_uncond"], nag_scale), cfg_scale)
    out = cfg_mix(c, u, cfg_scale)
    return out if n_c is None else out + nag_correction(c, n_c, nag_scale)


def window_mask(s: torch.Tensor, window: tuple[float, float] | None) -> torch.Tensor:
    """Bool [B]: which samples' sigma lies in [lo, hi] (all, if no window)."""
    if window is None:
        return torch.ones_like(s, dtype=torch.bool)
    lo, hi = window
    return (s >= lo) & (s <= hi)


def eps_scaled_x0(x0: torch.Tensor, x: torch.Tensor, s: torch.Tensor, space: Space, factor: float) -> torch.Tensor:
    """Epsilon scaling (Ning et al., ICLR 2024, uniform schedule): eps <- eps/factor, x0 re-derived.

    In ve space this is ComfyUI's ``x - (x - x0)/factor``; in flow space it scales the noise
    component of the velocity, not the whole velocity.
    """
    if factor == 1.0:
        return x0
    a = space.alpha(s)
    ok = a > MIN_ALPHA
    ab, sb = append_dims(a.clamp_min(MIN_ALPHA), x.dim()), append_dims(s, x.dim())
    eps = (x - ab * x0) / sb
    new = (x - sb * eps / factor) / ab
    return torch.where(append_dims(ok, x.dim()), new, x0)


