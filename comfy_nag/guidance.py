"""Guidance math: classifier-free and classifier-guided NAG, CFG, and the prior fixes.

Conventions (docs/method.md):

* ``cfg_scale`` uses ComfyUI's convention: ``u + cfg*(c - u)``; 1 = no CFG.
* ``nag_scale`` ``w``: ``c + w*(c - n)`` with n the noise-unconditional (null-timestep) branch;
  0 = no NAG, and then the null branch is never evaluated.
* Variant "A" (default, 3 branches): ``u + cfg*(c - u) + w*(c - n_c)``.
  Variant "B" (4 branches): NAG inside both CFG branches, then CFG.
* All mixtures have weights summing to one, so they may be applied to eps, v, x0 or velocity
  predictions alike, as long as every branch is converted with the nominal level.  Here they
  are applied to x0 (denoised) predictions, like ComfyUI's post-CFG hooks.
* Sigmas are sampling sigmas (schedules.py); ``alpha`` is the sampling space's signal coefficient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import logsnr_of, sigma_of_logsnr, space_alpha
from .tensors import append_dims

BRANCHES = ("cond", "uncond", "null_cond", "null_uncond")
VARIANTS = ("A", "B")
# Below this signal coefficient (flow s -> 1) x0-space corrections are undefined (divide by alpha).
MIN_ALPHA = 1e-4


@dataclass(frozen=True)
class ScaleProfile:
    """A per-level multiplier of the NAG scale: piecewise linear in log-SNR through the knots
    ``(logsnr[i], value[i])`` (increasing log-SNR), flat beyond the first and last knot.

    :class:`ScaleFit` fits one: per level, the multiplier that makes a learned term deliver a reference
    term (the estimator's, or on the testbed the exact one) in the least-squares sense.
    """

    logsnr: tuple[float, ...]
    value: tuple[float, ...]

    def __post_init__(self):
        if len(self.logsnr) != len(self.value) or not self.logsnr:
            raise ValueError(f"a scale profile needs as many values as knots (>= 1), got {len(self.logsnr)} knots "
                             f"and {len(self.value)} values")
        if any(b <= a for a, b in zip(self.logsnr, self.logsnr[1:])):
            raise ValueError(f"scale-profile knots must increase in log-SNR, got {list(self.logsnr)}")
        if not all(v == v and abs(v) != float("inf") for v in self.value):
            raise ValueError(f"scale-profile values must be finite, got {list(self.value)}")

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        """Multiplier at log-SNR ``lam`` (float32, same shape; +-inf take the end values)."""
        k = torch.tensor(self.logsnr, dtype=torch.float64, device=lam.device)
        v = torch.tensor(self.value, dtype=torch.float64, device=lam.device)
        x = lam.double().clamp(self.logsnr[0], self.logsnr[-1])
        if len(k) == 1:
            return v.expand(x.shape).float()
        i = torch.searchsorted(k, x.contiguous(), right=True).clamp(1, len(k) - 1)
        return torch.lerp(v[i - 1], v[i], (x - k[i - 1]) / (k[i] - k[i - 1])).float()


    def to_json(self) -> dict:
        """``{"logsnr": [...], "value": [...]}`` (what ``nag.scale_profile`` metadata holds)."""
        return {"logsnr": list(self.logsnr), "value": list(self.value)}

    @classmethod
    def from_json(cls, d) -> "ScaleProfile":
        """Inverse of :meth:`to_json`; ``ValueError`` naming the problem for anything else."""
        if not isinstance(d, dict) or not isinstance(d.get("logsnr"), list) or not isinstance(d.get("value"), list):
            raise ValueError(f"a scale profile is {{'logsnr': [...], 'value': [...]}}, got {str(d)[:80]!r}")
        try:
            return cls(tuple(float(v) for v in d["logsnr"]), tuple(float(v) for v in d["value"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad scale profile: {e}") from None


class ScaleFit:
    """Least-squares fit of a :class:`ScaleProfile`, streamed over batches: each state counts toward the
    knot nearest its log-SNR (states more than half a knot spacing outside the knots are left out), and
    a knot's value is ``sum <learned, reference> / sum |learned|^2`` over its states (the scale at which
    ``learned`` best delivers ``reference``).  Knots: increasing log-SNR, evenly spaced or not."""

    def __init__(self, knots):
        self.knots = torch.tensor([float(k) for k in knots], dtype=torch.float64)
        if self.knots.numel() == 0 or bool((self.knots[1:] <= self.knots[:-1]).any()):
            raise ValueError(f"ScaleFit needs increasing knots, got {list(knots)}")
        gaps = self.knots[1:] - self.knots[:-1]
        self.reach = (float(gaps[0]) / 2, float(gaps[-1]) / 2) if len(gaps) else (0.5, 0.5)
        self.ab = torch.zeros(len(self.knots), dtype=torch.float64)
        self.aa = torch.zeros(len(self.knots), dtype=torch.float64)

    @classmethod
    def spanning(cls, lo: float, hi: float, step: float = 1.0) -> "ScaleFit":
        """Knots every ``step`` log-SNR from ``lo`` up to ``hi`` (inclusive)."""
        if hi < lo:
            raise ValueError(f"ScaleFit.spanning needs hi >= lo, got lo={lo}, hi={hi}")
        return cls(lo + step * i for i in range(int((hi - lo) / step + 1e-9) + 1))

    def add(self, learned: torch.Tensor, reference: torch.Tensor, lam: torch.Tensor) -> None:
        """``learned``/``reference``: per-state terms [B, ...]; ``lam``: their log-SNR [B]."""
        lam = lam.detach().double().reshape(-1).cpu()
        keep = (lam >= self.knots[0] - self.reach[0]) & (lam <= self.knots[-1] + self.reach[1])
        idx = (lam[:, None] - self.knots[None]).abs().argmin(1)[keep]
        a, b = learned.detach().flatten(1).double().cpu()[keep], reference.detach().flatten(1).double().cpu()[keep]
        self.ab.index_add_(0, idx, (a * b).sum(1))
        self.aa.index_add_(0, idx, (a * a).sum(1))

    def values(self) -> list[float | None]:
        """The least-squares scale per knot (None where no state with a non-zero learned term fell)."""
        return [float(ab / aa) if aa > 0 else None for ab, aa in zip(self.ab.tolist(), self.aa.tolist())]

    def profile(self) -> ScaleProfile:
        """The fitted profile over the knots that got states, negative scales clipped to 0 (a learned term
        pointing away from the reference is switched off, not reversed), values to 6 decimals."""
        pts = [(k, round(max(v, 0.0), 6)) for k, v in zip(self.knots.tolist(), self.values()) if v is not None]
        if not pts:
            raise ValueError("no state fell near a knot with a non-zero learned term: nothing to fit a scale profile to")
        return ScaleProfile(tuple(k for k, _ in pts), tuple(v for _, v in pts))


@dataclass(frozen=True)
class Guidance:
    """What to apply at each evaluation.  Windows are (sigma_lo, sigma_hi) in sampling sigma."""

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    variant: str = "A"
    nag_window: tuple[float, float] | None = None
    cg_scale: float = 0.0
    cg_window: tuple[float, float] | None = None
    eps_scale: float = 1.0  # epsilon scaling factor (Ning et al.); 1 = off
    nag_profile: ScaleProfile | None = None  # per-level multiplier of nag_scale (None = 1 everywhere)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown NAG+CFG variant {self.variant!r}; expected 'A' (additive, 3 evaluations) "
                             "or 'B' (NAG inside both CFG branches, 4 evaluations)")
        for name in ("cfg_scale", "nag_scale", "cg_scale", "eps_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.eps_scale <= 0:
            raise ValueError(f"eps_scale must be > 0 (1 = off), got {self.eps_scale}")


def branches(cfg_scale: float, nag_scale: float, variant: str = "A") -> tuple[str, ...]:
    """Branches one evaluation needs. Scale 0 / cfg 1 drop their extra branches entirely."""
    out = ["cond"]
    if cfg_scale != 1.0:
        out.append("uncond")
    if nag_scale != 0.0:
        out.append("null_cond")
        if variant == "B" and cfg_scale != 1.0:
            out.append("null_uncond")
    return tuple(out)


def nag_mix(cond: torch.Tensor, null: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free NAG: ``cond + w*(cond - null)``."""
    return cond + append_dims(scale, cond.dim()) * (cond - null)


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """CFG in ComfyUI's convention, ``u + cfg*(c - u)``; just ``cond`` without an unconditional branch."""
    return cond if uncond is None else uncond + cfg_scale * (cond - uncond)


def nag_correction(cond: torch.Tensor, null_cond: torch.Tensor, scale, variant: str = "A", cfg_scale: float = 1.0,
                   uncond: torch.Tensor | None = None, null_uncond: torch.Tensor | None = None) -> torch.Tensor:
    """What classifier-free NAG adds to the CFG result ``u + cfg*(c - u)`` (how a post-CFG hook applies it).

    Variant A: ``w*(c - n_c)``; variant B (NAG inside both CFG branches):
    ``combine(...) - (u + cfg*(c - u))``.  ``scale`` may be per-sample [B].
    """
    if variant == "B" and uncond is not None and null_uncond is not None:
        outs = {"cond": cond, "uncond": uncond, "null_cond": null_cond, "null_uncond": null_uncond}
        return combine(outs, cfg_scale, scale, "B") - cfg_mix(cond, uncond, cfg_scale)
    return append_dims(scale, cond.dim()) * (cond - null_cond)


def combine(outs: dict[str, torch.Tensor], cfg_scale: float, nag_scale, variant: str = "A") -> torch.Tensor:
    """Mix branch predictions (any one parameterisation).  ``nag_scale`` may be per-sample [B]."""
    c = outs["cond"]
    u = outs.get("uncond")
    n_c = outs.get("null_cond")
    if variant == "B" and u is not None and n_c is not None:
        return cfg_mix(nag_mix(c, n_c, nag_scale), nag_mix(u, outs["null_uncond"], nag_scale), cfg_scale)
    out = cfg_mix(c, u, cfg_scale)
    return out if n_c is None else out + nag_correction(c, n_c, nag_scale)


def window_mask(s: torch.Tensor, window: tuple[float, float] | None) -> torch.Tensor:
    """Bool [B]: which samples' sigma lies in [lo, hi] (all, if no window)."""
    if window is None:
        return torch.ones_like(s, dtype=torch.bool)
    lo, hi = window
    return (s >= lo) & (s <= hi)


def score_to_x0_shift(score_term: torch.Tensor, x: torch.Tensor, s: torch.Tensor, space: str) -> torch.Tensor:
    """x0 change caused by adding ``score_term`` to the score: ``s^2 * term / alpha`` (0 where alpha ~ 0)."""
    a = space_alpha(space, s)
    coef = torch.where(a > MIN_ALPHA, s * s / a.clamp_min(MIN_ALPHA), torch.zeros_like(a))
    return append_dims(coef, x.dim()) * score_term


def eps_scaled_x0(x0: torch.Tensor, x: torch.Tensor, s: torch.Tensor, space: str, factor: float) -> torch.Tensor:
    """Epsilon scaling (Ning et al., ICLR 2024, uniform schedule): eps <- eps/factor, x0 re-derived.

    In ve space this is ComfyUI's ``x - (x - x0)/factor``; in flow space it scales the noise
    component of the velocity, not the whole velocity.
    """
    if factor == 1.0:
        return x0
    a = space_alpha(space, s)
    ok = a > MIN_ALPHA
    ab, sb = append_dims(a.clamp_min(MIN_ALPHA), x.dim()), append_dims(s, x.dim())
    eps = (x - ab * x0) / sb
    new = (x - sb * eps / factor) / ab
    return torch.where(append_dims(ok, x.dim()), new, x0)


def level_gradient(estimator, x: torch.Tensor, sigma: torch.Tensor, space: str, net_scale: torch.Tensor,
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
        lam = logsnr_of(space, s)
        c = net_scale.detach().clone().float().reshape(-1).expand(x.shape[0])
        lp = estimator.log_prob(append_dims(c, xg.dim()) * xg, lam, log_prior).sum()
        (g,) = torch.autograd.grad(lp, xg)
    return g.detach().to(x.dtype)


def classifier_correction(estimator, x: torch.Tensor, sigma: torch.Tensor, space: str, net_scale: torch.Tensor,
                          scale) -> torch.Tensor:
    """x0 ("denoised") change of classifier-guided NAG: the score gets ``scale * level_gradient``.

    x0 shift = ``sigma^2/alpha * scale * grad`` (:func:`score_to_x0_shift`); zero where the flow signal
    coefficient vanishes.  ``scale`` may be per-sample [B].
    """
    g = level_gradient(estimator, x, sigma, space, net_scale)
    s = sigma.detach().float().reshape(-1).expand(x.shape[0]).to(x.device)
    space_alpha(space, s)  # validates the space
    return score_to_x0_shift(g * append_dims(scale, x.dim()), x, s.to(x.dtype), space)


def time_shift_level_fn(space: str, data_var: float, window: float = 0.5, start_frac: float = 0.0):
    """Time-shift sampler (Li et al., ICLR 2024) as a sampler ``level_fn``.

    Each step, the level of each sample is re-read from its variance (``estimators.variance_logsnr``)
    and the sampler uses that level, clipped to ``window`` log-SNR units around the nominal one,
    for the model call and the update coefficients.  ``start_frac``: fraction of steps (from the
    start) left unshifted.
    """
    from .estimators import variance_logsnr

    def level_fn(x, s, i, n_steps):
        if i < start_frac * n_steps:
            return s
        lam = logsnr_of(space, s)
        lam_hat = variance_logsnr(x, space, data_var, s)
        lam_new = torch.where(torch.isfinite(lam), lam + (lam_hat - lam).clamp(-window, window), lam)
        return sigma_of_logsnr(space, lam_new).to(s)

    return level_fn


def agreement(learned: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine and norm ratio ``|learned| / |reference|`` of two batches of vectors [B, ...]."""
    a, b = learned.flatten(1).double(), reference.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1), a.norm(dim=1) / b.norm(dim=1).clamp_min(1e-12)


def null_branch_readout(x0_cond: torch.Tensor, x0_null: torch.Tensor, estimator, x: torch.Tensor,
                        sigma: torch.Tensor, space: str, net_scale: torch.Tensor,
                        log_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How well a network's classifier-free NAG term agrees with an independent estimator's, per sample.

    By Bayes, ``score(x | lambda) - score(x) = grad_x log p(lambda | x)``: the classifier-free term
    ``x0_cond - x0_null`` (the null branch's x0 change) and the classifier-guided one (the estimator's
    gradient as an x0 change, :func:`score_to_x0_shift`) estimate the same vector.  Neither is exact, so
    agreement is a lower bound on how faithful each is; it rises as the null branch trains.  The two are the
    same vector only under the same prior over levels: pass the training levels' ``log_prior``
    (``estimators.training_log_prior``), since the null branch averages over those.  Returns
    ``(cosine, norm ratio |cf| / |cg|)`` per sample [B].  ``x``: sampling-space states at ``sigma``.
    """
    return agreement(x0_cond - x0_null, estimator_x0_term(estimator, x, sigma, space, net_scale, log_prior))


def estimator_x0_term(estimator, x: torch.Tensor, sigma: torch.Tensor, space: str, net_scale: torch.Tensor,
                      log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The estimator's NAG term as an x0 change (classifier-guided NAG at scale 1): what the
    classifier-free term ``x0_cond - x0_null`` estimates too.  Arguments as :func:`level_gradient`."""
    s = sigma.detach().float().reshape(-1).expand(x.shape[0])
    return score_to_x0_shift(level_gradient(estimator, x, s, space, net_scale, log_prior), x, s.to(x.dtype), space)
