"""NAG that sets its own strength: a closed-loop scale from the noise-level estimator's reading (docs/method.md §3c).

At every guided step the sampler is about to move the state ``x`` (sampling sigma ``s``) to the next level ``s'``.
With the unguided prediction ``x0`` and NAG's term ``delta`` (its x0 change at scale 1, from any null branch or from
classifier guidance), the deterministic (DDIM) next state is linear in the scale ``w``::

    x'(w) = x0 + (s'/s)(x - x0) + w (1 - s'/s) delta        (the same in VE and flow space)

The estimator reads the next state at ``w = 0`` and ``w = 1`` (two estimator calls, one batch) and the rule takes, per
sample, the ``w`` at which the reading lands where a true forward state at ``s'`` reads, i.e. the nominal level plus
the estimator's own bias there (:class:`ReadingCalibration`, measured when the estimator is trained): the secant
``w = (target - r(0)) / (r(1) - r(0))``, kept in ``[0, max_scale]`` (NAG is never reversed; the bound keeps the
linear model from extrapolating where the reading hardly moves).  At the last step (``s' = 0``) the target is the
reading of clean data.  A state that already reads on its level gets ``w = 0``: the guidance stops by itself.

Conventions: sampling sigmas and ``Space`` as in schedules.py; ``net_scale`` is the network-space scale ``c(s')``
(``Schedule.native``) the estimator sees; readings are posterior-mean log-SNRs (estimators.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .tensors import append_dims

MAX_SCALE = 1.5  # the rule's one constant, fixed on a development seed (docs/method.md §3c)


@dataclass(frozen=True)
class ReadingCalibration:
    """What an estimator reads on true forward states, measured when it is trained: per log-SNR knot (increasing)
    the mean reading minus the level (``bias``) and the readings' spread; and the mean reading of clean data."""

    logsnr: tuple[float, ...]
    bias: tuple[float, ...]
    spread: tuple[float, ...]
    clean: float

    def __post_init__(self):
        n = len(self.logsnr)
        if n < 2 or len(self.bias) != n or len(self.spread) != n:
            raise ValueError(f"a reading calibration needs >= 2 knots with one bias and one spread each, got {n} knots, "
                             f"{len(self.bias)} biases, {len(self.spread)} spreads")
        if any(b <= a for a, b in zip(self.logsnr, self.logsnr[1:])):
            raise ValueError("reading-calibration knots must increase in log-SNR")
        if not all(math.isfinite(v) for v in (*self.logsnr, *self.bias, *self.spread, self.clean)):
            raise ValueError("reading-calibration values must be finite")

    def expected(self, lam: torch.Tensor) -> torch.Tensor:
        """The mean reading of a forward state at log-SNR ``lam`` [B] (``+inf``: clean data), linear between knots,
        the end biases beyond them."""
        k = torch.tensor(self.logsnr, dtype=torch.float32, device=lam.device)
        b = torch.tensor(self.bias, dtype=torch.float32, device=lam.device)
        lam = lam.float()
        x = lam.clamp(self.logsnr[0], self.logsnr[-1])
        i = torch.searchsorted(k, x.contiguous(), right=True).clamp(1, len(k) - 1)
        bias = torch.lerp(b[i - 1], b[i], (x - k[i - 1]) / (k[i] - k[i - 1]))
        return torch.where(torch.isfinite(lam), lam + bias, torch.full_like(lam, self.clean))

    def to_json(self) -> dict:
        return {"logsnr": list(self.logsnr), "bias": list(self.bias), "spread": list(self.spread), "clean": self.clean}

    @classmethod
    def from_json(cls, d) -> "ReadingCalibration":
        """Inverse of :meth:`to_json`; ``ValueError`` naming the problem for anything else."""
        try:
            return cls(tuple(map(float, d["logsnr"])), tuple(map(float, d["bias"])), tuple(map(float, d["spread"])),
                       float(d["clean"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a reading calibration is {{'logsnr', 'bias', 'spread', 'clean'}}, got {str(d)[:80]!r} "
                             f"({e})") from None


@torch.no_grad()
def calibrate_reading(estimator, x0: torch.Tensor, schedule, knots, generator=None) -> ReadingCalibration:
    """Measure :class:`ReadingCalibration` of ``estimator`` on clean samples ``x0`` (network space): at each knot
    (log-SNR) the readings of their forward states, and the readings of ``x0`` itself."""
    bias, spread = [], []
    for lam in knots:
        s = schedule.sigma_from_logsnr(torch.tensor(float(lam))).float().expand(x0.shape[0]).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        r = estimator.mean(schedule.noised(x0, s, eps)[0])
        bias.append(round(float(r.mean()) - float(lam), 6))
        spread.append(round(float(r.std()), 6))
    zero = torch.zeros(x0.shape[0], device=x0.device)
    clean = estimator.mean(schedule.noised(x0, zero, torch.zeros_like(x0))[0])
    return ReadingCalibration(tuple(float(k) for k in knots), tuple(bias), tuple(spread), round(float(clean.mean()), 6))


def calibration_knots(bins, step: float = 0.5) -> list[float]:
    """Knots every ``step`` log-SNR inside an estimator's bins (``estimators.LevelBins``)."""
    lo, hi = math.ceil(bins.lo / step) * step, math.floor(bins.hi / step) * step
    return [lo + step * i for i in range(int(round((hi - lo) / step)) + 1)]


def next_sigma(sample_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per sample, the first sigma of the sampled schedule below ``sigma`` [B] (0 after the last)."""
    sig = sample_sigmas.reshape(-1).to(sigma)
    below = sig[None] < sigma.reshape(-1, 1) * (1 - 1e-6)
    first = torch.where(below.any(1), below.float().argmax(1), torch.full_like(sigma, len(sig) - 1, dtype=torch.long))
    return torch.where(below.any(1), sig[first], torch.zeros_like(sigma))


@dataclass(frozen=True, eq=False)
class AutoScale:
    """The closed-loop scale rule.  ``estimator``: the noise-level estimator (network-space input); ``calibration``:
    its readings of forward states; ``max_scale``: the upper bound of the scale; ``trace``: a list that receives
    ``(sigma, scales [B])`` of every call (what the studies and the Noise Shift Plot show), or None."""

    estimator: object
    calibration: ReadingCalibration
    max_scale: float = MAX_SCALE
    trace: list | None = None

    @torch.no_grad()
    def __call__(self, step: "Step") -> torch.Tensor:
        """The scale per sample [B] for one guided evaluation."""
        s, s1 = step.sigma.float(), step.sigma_next.float()
        ratio = append_dims(s1 / s, step.x.dim())
        x_next = step.x0 + ratio * (step.x - step.x0)
        move = (1 - ratio) * step.delta
        c = append_dims(step.net_scale, step.x.dim()).to(step.x)
        r0, r1 = self.estimator.mean(torch.cat([c * x_next, c * (x_next + move)]).float()).chunk(2)
        target = self.calibration.expected(step.space.logsnr(s1).masked_fill(s1 <= 0, float("inf")))
        d = r1 - r0
        w = torch.where(d.abs() > 1e-6, (target - r0) / d.where(d.abs() > 1e-6, torch.ones_like(d)), torch.zeros_like(d))
        w = w.clamp(0.0, self.max_scale).to(step.x.dtype)
        if self.trace is not None:
            self.trace.append((float(s.max()), w.detach().cpu()))
        return w


@dataclass(frozen=True, eq=False)
class Step:
    """One guided evaluation as the rule sees it (sampling space): the state ``x`` at ``sigma`` [B], the unguided
    prediction ``x0``, NAG's x0 term at scale 1 ``delta``, the next sampled sigma [B] (0 at the last step), the
    network-space scale at it (``Schedule.native``'s ``c``; 1 at sigma 0) and the sampling ``space``."""

    x: torch.Tensor
    sigma: torch.Tensor
    x0: torch.Tensor
    delta: torch.Tensor
    sigma_next: torch.Tensor
    net_scale: torch.Tensor
    space: object
