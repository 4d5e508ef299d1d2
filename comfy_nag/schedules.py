"""Noise schedules and the units they use.

Every schedule maps three kinds of numbers onto each other:

* **sampling sigma** ``s`` - the variable samplers integrate over.  Like ComfyUI and
  k-diffusion, samplers work in one of two *spaces*:

  - ``Space.VE``: ``x = x0 + s*eps`` (k-diffusion sigma space; VP/EPS/V models and EDM);
  - ``Space.FLOW``: ``x = (1-s)*x0 + s*eps`` with ``s`` in [0, 1] (rectified flow: SiT, SD3, Flux).

  :class:`Space` carries each space's coefficient functions (signal coefficient, log-SNR and back).

* **network time** - what the network's timestep input receives (``net_time``):
  the 0..999 index for discrete VP models, ``s * multiplier`` for flow models
  (SD3 style, multiplier 1000), ``0.25*ln(s)`` for EDM.

* **log-SNR** ``lambda = 2*log(alpha/sigma)`` of the forward process, a unit shared by every
  family; noise-level estimators and noise-shift readouts use it ("noisier" = lower).

``native(s)`` returns the scale ``c`` that turns a sampling-space state into the state the
network sees (``x_net = c*x``) and the forward coefficients ``(alpha, sigma)`` in that
network space, so that ``x_net = alpha*x0 + sigma*eps``.  Predictions are converted with
those coefficients (see ``predictions.py``).
"""
from __future__ import annotations

import enum
import math

import torch

from .tensors import append_dims

# Below this signal coefficient (flow s -> 1) x0-space corrections are undefined (they divide by alpha).
MIN_ALPHA = 1e-4


def _as_tensor(s) -> torch.Tensor:
    return s if isinstance(s, torch.Tensor) else torch.as_tensor(s, dtype=torch.float32)


class Space(enum.Enum):
    """A sampling space: how a state at sampling sigma ``s`` mixes signal and noise.

    ``VE``: ``x = x0 + s*eps`` (k-diffusion sigma space: VP/EPS/V models and EDM); ``FLOW``:
    ``x = (1-s)*x0 + s*eps`` with ``s`` in [0, 1] (rectified flow: SiT, SD3, Flux).  ``Space("ve")``
    reads the value files and JSON store.
    """

    VE = "ve"
    FLOW = "flow"

    def alpha(self, s) -> torch.Tensor:
        """Signal coefficient at sampling sigma ``s``: 1 (VE) or 1-s (FLOW)."""
        s = _as_tensor(s)
        return torch.ones_like(s) if self is Space.VE else 1.0 - s

    def logsnr(self, s) -> torch.Tensor:
        """log-SNR ``2*log(alpha/s)`` of sampling sigma ``s`` (+inf at s=0, -inf at flow s=1)."""
        s = _as_tensor(s)
        return 2.0 * (torch.log(self.alpha(s)) - torch.log(s))

    def sigma_from_logsnr(self, lam) -> torch.Tensor:
        """Inverse of :meth:`logsnr`."""
        lam = _as_tensor(lam)
        return torch.exp(-lam / 2) if self is Space.VE else torch.sigmoid(-lam / 2)


class SamplingKind(enum.Enum):
    """How a host samples a model's levels (ComfyUI's model_sampling kinds); it fixes the default null timestep.

    ``SamplingKind("cascade")`` names the supported kinds in its error."""

    DISCRETE = "discrete"            # 0..999 index: SD1.x / SD2.x / SDXL
    DISCRETE_FLOW = "discrete_flow"  # flow, network time = sigma * multiplier: SD3, WAN, AuraFlow
    FLUX = "flux"                    # flow, network time = sigma: Flux-style
    EDM = "edm"                      # network time 0.25*ln(sigma)

    @classmethod
    def _missing_(cls, value):
        raise ValueError(f"unsupported sampling schedule {value!r} for Noise Awareness Guidance; supported: "
                         "SD1.x/SD2.x/SDXL (discrete), SD3/WAN/AuraFlow (discrete flow), Flux-style flow, EDM")

    def default_null_timestep(self, multiplier: float = 1000.0) -> float:
        """The family default null timestep in **network units** (docs/method.md, "Null condition").

        -1000 on a 0..999 discrete scale; -1 flow unit times the network multiplier (SD3/WAN: 1000,
        Flux: 1); 0.25*ln(1e-20) ~ -11.5 for EDM's 0.25*ln(sigma) - each far outside every real value.
        ``multiplier``: flow network time per unit sigma (DISCRETE_FLOW only).
        """
        return {SamplingKind.DISCRETE: -1000.0, SamplingKind.DISCRETE_FLOW: -1.0 * float(multiplier),
                SamplingKind.FLUX: -1.0, SamplingKind.EDM: 0.25 * math.log(1e-20)}[self]


class Schedule:
    """Base class. Subclasses define the space, the sigma range and the network units.

    A subclass is registered under its ``type`` (what :meth:`describe` writes) and keeps every
    constructor argument, resolved, in ``params``: :meth:`describe` writes them all and
    :func:`schedule_from_description` passes them back, so the round trip cannot drift."""

    space: Space
    type: str
    name: str
    null_timestep: float  # network-time sentinel of the noise-unconditional branch (SamplingKind.default_null_timestep)
    params: dict  # the resolved constructor arguments
    TYPES: dict[str, type] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Schedule.TYPES[cls.type] = cls

    # --- units -------------------------------------------------------------------------
    def net_time(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def native(self, s: torch.Tensor):
        """Return ``(c, alpha, sigma)``: x_net = c*x and x_net = alpha*x0 + sigma*eps."""
        raise NotImplementedError

    def alpha(self, s) -> torch.Tensor:
        return self.space.alpha(_as_tensor(s))

    def logsnr(self, s) -> torch.Tensor:
        return self.space.logsnr(s)

    def sigma_from_logsnr(self, lam) -> torch.Tensor:
        return self.space.sigma_from_logsnr(lam)

    # --- ranges ------------------------------------------------------------------------
    sigma_min: float
    sigma_max: float

    def noised(self, x0: torch.Tensor, s: torch.Tensor, eps: torch.Tensor, network: bool = True):
        """Forward sample at sampling sigma ``s`` [B]: ``(x, alpha, sigma)`` with ``x = alpha*x0 + sigma*eps``.

        ``network=True``: network-space coefficients (:meth:`native`), what the network sees and is
        trained on; ``network=False``: sampling-space ones (``alpha(s)``, ``s``).  The coefficients
        come back shaped to broadcast against ``x0``.
        """
        if network:
            _, a, sg = self.native(s)
        else:
            a, sg = self.alpha(s), s
        a, sg = append_dims(a, x0.dim()).to(x0), append_dims(sg, x0.dim()).to(x0)
        return a * x0 + sg * eps, a, sg

    def logsnr_range(self) -> tuple[float, float]:
        """The log-SNR range the schedule visits (finite; flow endpoints are clipped)."""
        lo = float(self.logsnr(torch.tensor(self.sigma_max)))
        hi = float(self.logsnr(torch.tensor(self.sigma_min)))
        return lo, hi

    # --- sampling / training -------------------------------------------------------------
    def sigmas(self, steps: int) -> torch.Tensor:
        """Decreasing sampling sigmas of length ``steps + 1``, ending in 0."""
        raise NotImplementedError

    def training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sigmas drawn from the schedule's training distribution."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able description, stored in file metadata: the type, every constructor argument and the space."""
        return {"type": self.type, **self.params, "space": self.space.value}


class DiscreteVP(Schedule):
    """SD/DiT-style discrete variance-preserving schedule (1000 steps).

    ``x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps`` for the integer index t in 0..n-1.  Sampled in
    ve space with ``s = sqrt((1-abar)/abar)``; the network receives the (possibly fractional)
    index, found by interpolating log sigma in the table, and ``c = 1/sqrt(1+s^2)``.
    ``betas``: ``"scaled_linear"`` (Stable Diffusion, 0.00085..0.012) or ``"linear"``
    (DDPM/DiT, 1e-4..0.02).
    """

    space, type = Space.VE, "discrete_vp"

    def __init__(self, betas: str = "scaled_linear", beta_start: float | None = None,
                 beta_end: float | None = None, n: int = 1000, null_timestep: float | None = None):
        if betas == "scaled_linear":
            b0, b1 = beta_start or 0.00085, beta_end or 0.012
            b = torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=torch.float64) ** 2
        elif betas == "linear":
            b0, b1 = beta_start or 1e-4, beta_end or 0.02
            b = torch.linspace(b0, b1, n, dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta schedule {betas!r}; use 'scaled_linear' or 'linear'")
        abar = torch.cumprod(1 - b, 0)
        self.betas_kind, self.n = betas, n
        self.beta_start, self.beta_end = b0, b1
        self.table = ((1 - abar) / abar).sqrt().float()  # sigma for index 0..n-1
        self.log_table = self.table.log()
        self.sigma_min, self.sigma_max = float(self.table[0]), float(self.table[-1])
        self.null_timestep = float(SamplingKind.DISCRETE.default_null_timestep() if null_timestep is None else null_timestep)
        self.name = f"vp-{betas}"
        self.params = {"betas": betas, "beta_start": b0, "beta_end": b1, "n": n, "null_timestep": self.null_timestep}

    def sigma_at(self, t) -> torch.Tensor:
        """Sigma for a (fractional) index t, interpolating log sigma."""
        t = _as_tensor(t).float().clamp(0, self.n - 1)
        lo = t.floor().long().clamp(max=self.n - 2)
        w = t - lo
        return (self.log_table[lo] * (1 - w) + self.log_table[lo + 1] * w).exp()

    def net_time(self, s):
        s = _as_tensor(s).float()
        ls = s.clamp_min(1e-12).log()
        idx = torch.searchsorted(self.log_table, ls.reshape(-1).contiguous()).reshape(ls.shape)
        hi = idx.clamp(1, self.n - 1)
        lo = hi - 1
        w = (ls - self.log_table[lo]) / (self.log_table[hi] - self.log_table[lo])
        return (lo + w.clamp(0, 1)).float()

    def native(self, s):
        s = _as_tensor(s)
        c = 1.0 / torch.sqrt(1.0 + s * s)
        return c, c, s * c

    def sigmas(self, steps: int) -> torch.Tensor:
        """DiT/DDPM spacing: ``steps`` indices evenly spaced from n-1 down to 0."""
        t = torch.linspace(self.n - 1, 0, steps)
        return torch.cat([self.sigma_at(t), torch.zeros(1)])

    def training_sigmas(self, n, generator=None):
        t = torch.randint(0, self.n, (n,), generator=generator)
        return self.table[t]



class Flow(Schedule):
    """Rectified-flow / linear interpolant: ``x = (1-s) x0 + s eps``, s in [0, 1].

    Network time is ``s * multiplier`` (SD3/WAN: 1000; SiT-style models here use 1000 too;
    Flux/AuraFlow: 1).  ``shift`` is SD3's time shift ``s = shift*t / (1 + (shift-1)*t)``
    applied to uniformly spaced t for both sampling and training.
    """

    space, type = Space.FLOW, "flow"

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0, null_timestep: float | None = None,
                 sigma_min: float = 1e-3, sigma_max: float = 1.0):
        if shift <= 0:
            raise ValueError(f"flow shift must be > 0, got {shift}")
        self.shift, self.multiplier = float(shift), float(multiplier)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.null_timestep = float(SamplingKind.DISCRETE_FLOW.default_null_timestep(multiplier) if null_timestep is None
                                   else null_timestep)
        self.name = "flow" if shift == 1 else f"flow-shift{shift:g}"
        self.params = {"shift": self.shift, "multiplier": self.multiplier, "null_timestep": self.null_timestep,
                       "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _shift(self, t):
        return self.shift * t / (1 + (self.shift - 1) * t)

    def net_time(self, s):
        return _as_tensor(s).float() * self.multiplier

    def native(self, s):
        s = _as_tensor(s)
        return torch.ones_like(s), 1.0 - s, s

    def logsnr_range(self):
        lo = float(self.logsnr(torch.tensor(min(self.sigma_max, 1 - self.sigma_min))))
        hi = float(self.logsnr(torch.tensor(self.sigma_min)))
        return lo, hi

    def sigmas(self, steps):
        t = torch.linspace(self.sigma_max, 0, steps + 1)
        return self._shift(t)

    def training_sigmas(self, n, generator=None):
        return self._shift(torch.rand(n, generator=generator))



class EDM(Schedule):
    """Karras et al. (EDM) sigma space: ``x = x0 + s eps``; network time ``0.25*ln(s)``.

    ``c = 1/sqrt(s^2 + sigma_data^2)`` (EDM's c_in).  Sampling sigmas follow the rho=7 ramp;
    training draws ln s ~ N(p_mean, p_std).  The null timestep is EDM's family default
    (:meth:`SamplingKind.default_null_timestep`), far below any real sigma.
    """

    space, type = Space.VE, "edm"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0,
                 p_mean=-1.2, p_std=1.2, null_timestep: float | None = None):
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.p_mean, self.p_std = p_mean, p_std
        self.null_timestep = float(SamplingKind.EDM.default_null_timestep() if null_timestep is None else null_timestep)
        self.name = "edm"
        self.params = {"sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data, "rho": rho,
                       "p_mean": p_mean, "p_std": p_std, "null_timestep": self.null_timestep}

    def net_time(self, s):
        return 0.25 * _as_tensor(s).float().clamp_min(1e-20).log()

    def native(self, s):
        s = _as_tensor(s)
        c = 1.0 / torch.sqrt(s * s + self.sigma_data ** 2)
        return c, c, s * c

    def sigmas(self, steps):
        return karras_sigmas(self.sigma_min, self.sigma_max, steps, self.rho)

    def training_sigmas(self, n, generator=None):
        return (self.p_mean + self.p_std * torch.randn(n, generator=generator)).exp()



def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. rho-ramp (any ve schedule), ending in 0."""
    r = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + r * (lo - hi)) ** rho, torch.zeros(1)])


def schedule_from_description(d: dict) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.describe` output (e.g. file metadata); arguments a description
    leaves out (older files) take their defaults."""
    cls = Schedule.TYPES.get(d.get("type"))
    if cls is None:
        raise ValueError(f"unknown schedule type {d.get('type')!r} in {d}; expected one of {', '.join(Schedule.TYPES)}")
    if d.get("space", cls.space.value) != cls.space.value:
        raise ValueError(f"schedule {d}: a {cls.type} schedule samples in {cls.space.value!r} space, not {d['space']!r}")
    args = {k: v for k, v in d.items() if k not in ("type", "space")}
    try:
        return cls(**args)
    except TypeError as e:
        raise ValueError(f"schedule {d} does not fit a {cls.type} schedule ({e})") from None
