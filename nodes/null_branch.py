"""The null branch inside ComfyUI: building one from a node's inputs, and running its evaluations as extra
copies of the conds in ComfyUI's batched forward.

The sources themselves are ``comfy_nag.null_branch``'s (``LearnedNull``: a model fine-tuned with noise-condition
dropout, at its null timestep; ``EstimatorNull``: ANY checkpoint plus a noise-level estimator).  Here only the host
part: each step :func:`prepare` reads the network input ``c(sigma) * x`` (ComfyUI's ``calculate_input``) into the
source's ``NullStep``; :func:`copies` gives the conds to run (one fresh copy of each null cond per evaluation) and
:func:`chunk_values` what each copy's chunk label gets (classifier_free.null_apply_model reads it): the learned null
timestep (network units), or a level's sigma per sample, which ComfyUI's own ``model_sampling.timestep`` maps to
network time.  Outputs are x0 at the nominal sigma, affine in the model output, so mixing them (``NullStep.collect``,
weights sum to 1) equals converting the mixed prediction.
"""
from __future__ import annotations

import logging
import uuid

import torch

from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag.auto_scale import ReadingCalibration
from ..comfy_nag.estimators import training_log_prior
from ..comfy_nag.null_branch import EstimatorNull, NullBranch, NullStep
from ..comfy_nag.tensors import append_dims
from .model_info import (NoiseAwarenessError, check_estimator, estimator_family, estimator_on, model_family, net_scale,
                         sampling)

MAX_LEVELS = 7  # the most evaluations per null branch and step the nodes offer
log = logging.getLogger("comfy-nag")


def estimator_null(model, estimator, levels: int) -> EstimatorNull:
    """From the estimator loader's output ``(estimator, metadata)``, checked against ``model``."""
    if estimator is None:
        raise NoiseAwarenessError("null_branch 'from estimator' needs a noise-level estimator: connect a 'Load "
                                  "Noise-Level Estimator' node to the estimator input, or set null_branch to "
                                  "'learned (from file)' (models fine-tuned by comfy-nag's trainer)")
    if not 1 <= int(levels) <= MAX_LEVELS:
        raise NoiseAwarenessError(f"levels must be 1..{MAX_LEVELS}, got {levels}")
    est, meta = estimator
    check_estimator(est, meta, model)
    return EstimatorNull(est, sampling(model).space, int(levels), estimator_log_prior(est, meta, model))


def estimator_log_prior(estimator, meta: dict, model=None) -> torch.Tensor | None:
    """The training levels' log prior over the estimator's bins: those of the diffusion model's family (registry,
    detected from ``model``) when comfy-nag knows it, since one estimator serves every family of its latent space
    (WAN 2.1 and Qwen-Image share one, with different training levels); else the schedule the estimator's file
    declares (``nag.schedule``, else its ``nag.family``'s); None (uniform) with one log line if none of them."""
    fam = model_family(model) if model is not None else None
    sched = fam.schedule if fam is not None else nag_metadata.schedule(meta)
    if sched is None:
        fam = estimator_family(meta)
        sched = fam.schedule if fam is not None else None
    if sched is None:
        log.warning("Noise Awareness Guidance: the noise-level estimator's file declares no schedule (nag.schedule) "
                    "or family (nag.family); the null branch from it uses a uniform prior over levels")
        return None
    return training_log_prior(sched, estimator.bins)


def reading_calibration(estimator, meta: dict) -> ReadingCalibration:
    """What the estimator reads on forward states (``nag.reading_calibration``, written by the trainer).  Files trained
    before it existed: an unbiased reading is assumed (the nominal level; clean data at the top bin), said in the log
    (docs/comfyui.md: retrain the estimator with `python -m training estimator`, which writes it)."""
    cal = nag_metadata.reading_calibration(meta)
    if cal is not None:
        return cal
    log.warning("Noise Awareness Guidance: the noise-level estimator's file has no reading calibration "
                "(nag.reading_calibration, written by comfy-nag's trainer since the auto scale rule); the auto scale "
                "assumes the estimator reads forward states without bias. Retrain it with `python -m training "
                "estimator` for the measured calibration")
    b = estimator.bins
    return ReadingCalibration((b.lo, b.hi), (0.0, 0.0), (0.0, 0.0), b.hi - b.width / 2)


def prepare(null: NullBranch, model, x: torch.Tensor, sigma: torch.Tensor) -> NullStep:
    """The null branch's evaluations at the sampler state ``x`` (sampling space) and ``sigma``."""
    s = sigma.reshape(-1).to(x.device)
    s = s.expand(x.shape[0]) if s.numel() == 1 else s
    est = getattr(null, "estimator", None)
    if est is not None:
        estimator_on(est, x.device)
    x_net = append_dims(net_scale(model.model_sampling, s), x.dim()) * x
    return null.step(x_net.float(), s)


def null_copy(cond):
    """Copy of a converted cond list with fresh uuids (caches keyed on uuids must not mix branches)."""
    return [dict(c, uuid=uuid.uuid4()) if isinstance(c, dict) and "uuid" in c else c for c in cond]


def copies(step: NullStep, conds: list) -> list:
    """The conds to run for the null conds ``conds``: ``step.count`` fresh copies of each, in order."""
    return [null_copy(c) for c in conds for _ in range(step.count)]


def chunk_values(step: NullStep, null: NullBranch) -> tuple:
    """Per evaluation, what its chunk label gets: the learned null timestep (network units, a number), or the
    level's sigma per sample ([B] tensor)."""
    return tuple(null.null_timestep if c is None else c for c in step.conditions)


def labels(values: tuple, first: int, count: int, offset: int = 0) -> dict:
    """``{chunk label: value}`` for ``count`` copies (from copy ``offset`` on) placed from label ``first``."""
    k = len(values)
    return {first + i: values[(offset + i) % k] for i in range(count)}
