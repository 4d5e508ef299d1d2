"""From a node's parsed inputs to the settings its patch runs with: the one place where the NAG inputs are
checked and where scale 0 is decided, identically for every entry point (patch, KSampler, guider,
classifier-guided)."""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import torch

from ..comfy_nag import guidance
from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag.guidance import Variant
from ..comfy_nag.null_branch import LearnedNull, NullBranch
from ..comfy_nag.patching import NullTimestepSource, choose_null_timestep
from ..comfy_nag.scale_profiles import ScaleProfile
from ..comfy_nag.schedules import Space
from .inputs import NagInputs, NullBranchChoice, ScaleRule
from .model_info import NoiseAwarenessError, check_estimator, file_metadata, sampling
from .null_branch import estimator_null
from .windows import Window

log = logging.getLogger("comfy-nag")


class Route(enum.Enum):
    """Which NAG a node applies."""

    CLASSIFIER_FREE = "classifier-free"
    CLASSIFIER_GUIDED = "classifier-guided"


@dataclass(frozen=True)
class NagConfig:
    """Checked settings of one NAG patch.  ``null``: the classifier-free null branch (None when classifier-guided);
    ``estimator``: classifier-guided NAG's noise-level estimator; ``profile``: per-level multiplier of ``scale``."""

    scale: float
    window: Window
    space: Space
    null: NullBranch | None = None
    estimator: object = None
    variant: Variant = Variant.A
    batched: bool = True
    profile: ScaleProfile | None = None

    def scale_at(self, sigma: torch.Tensor, like: torch.Tensor):
        """The NAG scale for the batch ``like`` at ``sigma``: a number, or per sample [B] with a profile."""
        if self.profile is None:
            return self.scale
        s = sigma.reshape(-1).float()
        s = s.expand(like.shape[0]) if s.numel() == 1 else s
        return (self.scale * self.profile(self.space.logsnr(s))).to(like)

    def null_conds(self, cond, uncond) -> list:
        """The conds whose null branches NAG needs: cond, and uncond too in variant B (when CFG runs)."""
        return [cond] + ([uncond] if self.variant is Variant.B and uncond is not None else [])

    def guided(self, denoised: torch.Tensor, sigma: torch.Tensor, cfg_scale: float, cond: torch.Tensor,
               uncond: torch.Tensor | None, nulls: list) -> torch.Tensor:
        """The CFG result ``denoised`` plus the NAG correction; ``nulls``: the null-branch predictions,
        ``[null cond]`` (variant A) or ``[null cond, null uncond]`` (variant B)."""
        null_u = nulls[1] if len(nulls) > 1 else None
        return denoised + guidance.nag_correction(cond, nulls[0], self.scale_at(sigma, denoised), self.variant, cfg_scale,
                                                  uncond if null_u is not None else None, null_u)


def configure(model, nag: NagInputs, route: Route = Route.CLASSIFIER_FREE) -> NagConfig | None:
    """Check every input of ``nag`` against ``model`` (bad input: one clear line), then decide: None when the scale is 0
    (the node returns its input unchanged, bit for bit, at no cost), else the patch's settings."""
    window = Window.of(model, nag.window_unit, nag.start, nag.end)
    space = sampling(model).space
    if route is Route.CLASSIFIER_GUIDED:
        est, meta = _estimator(nag, "classifier-guided NAG")
        check_estimator(est, meta, model)
        settings = {"estimator": est}
    else:
        settings = {"null": _null_branch(model, nag), "variant": nag.variant, "batched": bool(nag.batched),
                    "profile": _scale_profile(model, nag)}
    if nag.scale == 0:
        return None
    return NagConfig(float(nag.scale), window, space, **settings)


def _estimator(nag: NagInputs, what: str) -> tuple:
    if nag.estimator is None:
        raise NoiseAwarenessError(f"{what} needs a noise-level estimator: connect a 'Load Noise-Level Estimator' node "
                                  "to the estimator input")
    return nag.estimator


def _null_branch(model, nag: NagInputs) -> NullBranch:
    """The null branch's source (the null timestep inputs count only for a learned one)."""
    if nag.null_branch is NullBranchChoice.ESTIMATOR:
        return estimator_null(model, nag.estimator, nag.levels)
    info = sampling(model)
    meta_null = nag_metadata.null_timestep(file_metadata(model))
    null, origin = choose_null_timestep(meta_null, info.kind, info.multiplier, nag.null_timestep, nag.null_timestep_source)
    if origin is NullTimestepSource.AUTO and nag.scale:
        log.warning("Noise Awareness Guidance: the model carries no comfy-nag metadata; using the default for %s null "
                    "timestep %g. A learned null branch needs a model fine-tuned with noise-condition dropout (load it "
                    "with a NoiseAwareness loader); on any other model set null_branch to 'from estimator' and connect a "
                    "noise-level estimator, or use the classifier-guided node.", info.kind.value, null)
    return LearnedNull(null)


def _scale_profile(model, nag: NagInputs) -> ScaleProfile | None:
    if nag.scale_rule is ScaleRule.CONSTANT:
        return None
    profile = nag_metadata.scale_profile(file_metadata(model))
    if profile is None:
        raise NoiseAwarenessError(
            "scale rule 'per level (from file)' needs the nag.scale_profile the trainer writes when a fine-tune runs "
            "with monitor.estimator; this model file has none. Load a file exported that way (with a Noise "
            "Awareness loader), or set scale_rule to 'constant'")
    return profile
