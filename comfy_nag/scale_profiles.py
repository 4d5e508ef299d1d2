"""Per-level NAG scales: a multiplier of the NAG scale that depends on the noise level, and its fit.

Units: log-SNR ``lambda = 2*log(alpha/sigma)`` (schedules.py).  A :class:`ScaleProfile` is what the
trainer writes into a fine-tuned file as ``nag.scale_profile`` (metadata.py) and what the nodes'
``per level (from file)`` scale rule reads; :class:`ScaleFit` computes one (docs/method.md §3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
