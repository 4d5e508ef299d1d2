"""Where classifier-free NAG's null branch comes from: one small family of objects for every host.

The null branch ``n`` is the prediction that does not know the noise level (docs/method.md §1, §3b).  Two
sources, one interface:

* :class:`LearnedNull`: a network fine-tuned with noise-condition dropout; one evaluation at its null
  condition (the null timestep, or the reference models' dropped-condition flag).
* :class:`EstimatorNull`: ANY network plus a noise-level estimator (``posterior_null``): the conditional
  branch at ``levels`` levels the estimator reads from the state, mixed with the posterior's weights.

Each step, ``null.step(x_net, sigma)`` gives a :class:`NullStep`: the noise condition of each evaluation
(``None``: the network's null condition; a per-sample sampling sigma [B]: the network time of that level)
and how their outputs mix into one null prediction.  A host maps the conditions to its own timestep input
(``Denoiser`` here, ComfyUI's ``model_sampling.timestep`` in the nodes) and runs the evaluations in its
batched forward.  Conventions: ``x_net`` is the network-space state at the nominal level; ``sigma`` its
sampling sigma [B]; outputs are mixed in any one parameterisation (weights sum to one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .estimators import training_log_prior
from .posterior_null import mix, null_levels
from .schedules import Schedule, Space

@dataclass(frozen=True, eq=False)
class NullStep:
    """One step's null branch.  ``conditions``: per evaluation, ``None`` (the network's null condition) or the
    sampling sigma [B] whose noise condition it gets; ``weight`` [B, K]: how the K outputs mix (None: one
    evaluation, taken as it is)."""

    conditions: tuple
    weight: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Network evaluations per null branch."""
        return len(self.conditions)

    def collect(self, outs: list) -> list:
        """One null prediction per null branch from the outputs ``outs`` (``count`` consecutive ones per branch)."""
        if self.weight is None:
            return list(outs)
        k = self.count
        return [mix(list(outs[i:i + k]), self.weight) for i in range(0, len(outs), k)]


class NullBranch:
    """Interface of a null-branch source."""

    def step(self, x_net: torch.Tensor, sigma: torch.Tensor) -> NullStep:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able summary (what a host shows or records)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LearnedNull(NullBranch):
    """The network's own null branch (noise-condition dropout).  ``null_timestep``: its null condition in network
    units, for hosts that pass it as a timestep (ComfyUI); None where the network takes a dropped-condition flag
    (the reference models, whose null timestep is part of the network)."""

    null_timestep: float | None = None

    def step(self, x_net, sigma) -> NullStep:
        return NullStep((None,))

    def describe(self) -> dict:
        return {"null_branch": "learned", "null_timestep": self.null_timestep}


class EstimatorNull(NullBranch):
    """The null branch as the conditional branch at ``levels`` levels read by a noise-level estimator (any network).

    ``space``: the network's sampling space (levels are log-SNR, evaluations get sampling sigmas); ``levels``: 1 =
    the posterior mean (a learned null branch's cost), K >= 2 Gauss-Hermite nodes, 0 = every bin (``bins.k``
    evaluations: for studies); ``log_prior``: log weight per estimator bin of the network's training levels (None:
    uniform)."""

    def __init__(self, estimator, space: Space, levels: int = 1, log_prior: torch.Tensor | None = None):
        if estimator is None:
            raise ValueError("the null branch from an estimator needs a noise-level estimator")
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
            raise ValueError(f"levels must be an integer >= 0 (1 = the posterior mean, 0 = every bin), got {levels!r}")
        self.estimator, self.space, self.levels, self.log_prior = estimator, space, levels, log_prior

    @classmethod
    def for_schedule(cls, estimator, schedule: Schedule, levels: int = 1) -> "EstimatorNull":
        """With the prior of ``schedule``'s training levels (what a dropout-trained null branch averages over)."""
        return cls(estimator, schedule.space, levels, training_log_prior(schedule, estimator.bins))

    def step(self, x_net, sigma) -> NullStep:
        prior = None if self.log_prior is None else self.log_prior.to(x_net.device)
        lv = null_levels(self.estimator, x_net, self.levels, prior)
        return NullStep(tuple(self.space.sigma_from_logsnr(lv.logsnr).to(sigma).unbind(1)), lv.weight)

    def describe(self) -> dict:
        return {"null_branch": "estimator", "levels": self.levels}
