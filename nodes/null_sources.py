"""Where classifier-free NAG's null branch comes from: one small interface for the patch and the guider.

* :class:`LearnedNull`: a model fine-tuned with noise-condition dropout.  One copy of each null cond,
  run at the file's constant null network time; its output is the null prediction.
* :class:`EstimatorNull`: ANY checkpoint plus a noise-level estimator (``comfy_nag.posterior_null``).
  Each step the estimator reads the network input ``c(sigma) * x`` and gives K levels and weights per
  sample; K copies of each null cond run at those levels' network times (ComfyUI's own
  ``model_sampling.timestep`` of the level sigmas), and their outputs are mixed with the weights.  The
  outputs are x0 at the nominal sigma, affine in the model output, so mixing them (weights sum to 1)
  equals converting the mixed prediction.

``source.prepare(model, x, sigma)`` gives a :class:`NullStep`: the copies to run, the value each copy's
chunk label gets (classifier_free.null_apply_model reads it) and how the copies' outputs become one null
prediction per cond.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import torch

from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag.estimators import training_log_prior
from ..comfy_nag.posterior_null import mix, null_levels
from ..comfy_nag.schedules import sigma_of_logsnr
from ..comfy_nag.tensors import append_dims
from .model_info import (NoiseAwarenessError, check_estimator, estimator_family, estimator_on, net_scale,
                         sampling_info)

NULL_BRANCHES = ["learned (from file)", "from estimator"]
MAX_LEVELS = 7
log = logging.getLogger("comfy-nag")


def null_copy(cond):
    """Copy of a converted cond list with fresh uuids (caches keyed on uuids must not mix branches)."""
    return [dict(c, uuid=uuid.uuid4()) if isinstance(c, dict) and "uuid" in c else c for c in cond]


@dataclass(frozen=True, eq=False)
class NullStep:
    """One step's null branches.  ``values``: per copy of a null cond, its network time (a number) or its
    level's sigma per sample ([B] tensor); ``weight`` [B, K]: how the K copies mix (None: one copy, as is)."""

    values: tuple
    weight: torch.Tensor | None = None

    def copies(self, conds: list) -> list:
        """The conds to run for the null conds ``conds``: ``len(values)`` fresh copies of each, in order."""
        return [null_copy(c) for c in conds for _ in self.values]

    def labels(self, first: int, count: int, offset: int = 0) -> dict:
        """``{chunk label: value}`` for ``count`` copies (from copy ``offset`` on) placed from label ``first``."""
        k = len(self.values)
        return {first + i: self.values[(offset + i) % k] for i in range(count)}

    def collect(self, outs: list) -> list:
        """One null prediction per null cond from the copies' outputs ``outs``."""
        if self.weight is None:
            return list(outs)
        k = len(self.values)
        return [mix(list(outs[i:i + k]), self.weight) for i in range(0, len(outs), k)]


@dataclass(frozen=True)
class LearnedNull:
    """The model's own null branch: its output at the constant null network time ``null_timestep``."""

    null_timestep: float

    def prepare(self, model, x: torch.Tensor, sigma: torch.Tensor) -> NullStep:
        return NullStep((self.null_timestep,))

    def describe(self) -> dict:
        return {"null_timestep": self.null_timestep}


class EstimatorNull:
    """The null branch as the conditional branch at ``levels`` levels read by a noise-level estimator.

    ``log_prior``: log weight per estimator bin of the diffusion model's training levels (None: uniform);
    ``space``: the model's sampling space (``model_info.sampling_info``)."""

    def __init__(self, estimator, levels: int, log_prior: torch.Tensor | None, space: str):
        self.estimator, self.levels, self.log_prior, self.space = estimator, int(levels), log_prior, space

    @classmethod
    def of(cls, model, estimator, levels: int) -> "EstimatorNull":
        """From the estimator loader's output ``(estimator, metadata)``, checked against ``model``."""
        if estimator is None:
            raise NoiseAwarenessError("null_branch 'from estimator' needs a noise-level estimator: connect a 'Load "
                                      "Noise-Level Estimator' node to the estimator input, or set null_branch to "
                                      "'learned (from file)' (models fine-tuned by comfy-nag's trainer)")
        if not 1 <= int(levels) <= MAX_LEVELS:
            raise NoiseAwarenessError(f"levels must be 1..{MAX_LEVELS}, got {levels}")
        est, meta = estimator
        check_estimator(est, meta, model)
        return cls(est, levels, estimator_log_prior(est, meta), sampling_info(model)[2])

    def prepare(self, model, x: torch.Tensor, sigma: torch.Tensor) -> NullStep:
        s = sigma.reshape(-1).to(x.device)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        x_net = append_dims(net_scale(model.model_sampling, s), x.dim()) * x
        lv = null_levels(estimator_on(self.estimator, x.device), x_net.float(), self.levels, self.log_prior)
        sig = self.space.sigma_from_logsnr(lv.logsnr).to(s)
        return NullStep(tuple(sig.unbind(1)), lv.weight)

    def describe(self) -> dict:
        return {"null_levels": self.levels}


def estimator_log_prior(estimator, meta: dict) -> torch.Tensor | None:
    """The training levels' log prior over the estimator's bins, from the schedule its file declares
    (``nag.schedule``, else its ``nag.family``'s in the registry); None (uniform) with one log line if neither."""
    sched = nag_metadata.schedule(meta)
    if sched is None:
        fam = estimator_family(meta)
        sched = fam.schedule if fam is not None else None
    if sched is None:
        log.warning("Noise Awareness Guidance: the noise-level estimator's file declares no schedule (nag.schedule) "
                    "or family (nag.family); the null branch from it uses a uniform prior over levels")
        return None
    return training_log_prior(sched, estimator.bins)
