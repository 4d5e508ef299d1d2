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
from ..comfy_nag.auto_scale import AutoScale, Step, next_sigma
from ..comfy_nag.scale_profiles import ScaleProfile
from ..comfy_nag.tensors import append_dims
from ..comfy_nag.schedules import Space
from .inputs import NagInputs, NullBranchChoice, ScaleRule
from .model_info import NoiseAwarenessError, check_estimator, estimator_on, file_metadata, net_scale, sampling
from .null_branch import estimator_null, reading_calibration
from .windows import Window

log = logging.getLogger("comfy-nag")


class Route(enum.Enum):
    """Which NAG a node applies."""

    CLASSIFIER_FREE = "classifier-free"
    CLASSIFIER_GUIDED = "classifier-guided"


@dataclass(frozen=True)
class Evaluation:
    """One guided evaluation inside ComfyUI: the state ``x`` (sampling space) at ``sigma``, the model's
    ``model_sampling`` and the sampler call's ``model_options`` (whose transformer_options hold the sampled schedule)."""

    x: torch.Tensor
    sigma: torch.Tensor
    model_sampling: object
    model_options: dict

    @classmethod
    def of(cls, args: dict) -> "Evaluation":
        """From a post-CFG function's ``args``."""
        return cls(args["input"], args["sigma"], args["model"].model_sampling, args["model_options"])

    def sigmas(self) -> torch.Tensor:
        """Per-sample sigma [B]."""
        s = self.sigma.reshape(-1).to(self.x.device)
        return s.expand(self.x.shape[0]) if s.numel() == 1 else s


@dataclass(frozen=True)
class NagConfig:
    """Checked settings of one NAG patch.  ``null``: the classifier-free null branch (None when classifier-guided);
    ``estimator``: classifier-guided NAG's noise-level estimator; ``rule``: how the scale varies per sample and step
    (None: constant; a ScaleProfile: per level; an AutoScale: closed loop, ``scale`` multiplying it)."""

    scale: float
    window: Window
    space: Space
    null: NullBranch | None = None
    estimator: object = None
    variant: Variant = Variant.A
    batched: bool = True
    rule: ScaleProfile | AutoScale | None = None

    def scale_at(self, sigma: torch.Tensor, like: torch.Tensor):
        """The NAG scale for the batch ``like`` at ``sigma``: a number, or per sample [B] with a profile."""
        if self.rule is None:
            return self.scale
        s = sigma.reshape(-1).float()
        s = s.expand(like.shape[0]) if s.numel() == 1 else s
        return (self.scale * self.rule(self.space.logsnr(s))).to(like)

    def added(self, denoised: torch.Tensor, term: torch.Tensor, ev: Evaluation) -> torch.Tensor:
        """``denoised`` plus NAG's x0 ``term`` (at scale 1) at this patch's scale: the closed-loop scale per sample
        with an AutoScale rule (``comfy_nag.auto_scale``; the next level from the sampled schedule), else
        :meth:`scale_at`."""
        if not isinstance(self.rule, AutoScale):
            return denoised + append_dims(self.scale_at(ev.sigma, denoised), term.dim()) * term
        sampled = ev.model_options.get("transformer_options", {}).get("sample_sigmas")
        if sampled is None:
            raise NoiseAwarenessError("scale rule 'auto (from estimator)' needs the sampled schedule, which this sampler "
                                      "does not pass (transformer_options['sample_sigmas']); use a stock sampler node, or "
                                      "scale_rule 'constant'")
        s = ev.sigmas()
        s_next = next_sigma(sampled.to(s), s)
        estimator_on(self.rule.estimator, ev.x.device)
        step = Step(ev.x.float(), s.float(), denoised.float(), term.float(), s_next.float(),
                    net_scale(ev.model_sampling, s_next).float(), self.space)
        return denoised + append_dims(self.scale * self.rule(step), term.dim()).to(term) * term

    def null_conds(self, cond, uncond) -> list:
        """The conds whose null branches NAG needs: cond, and uncond too in variant B (when CFG runs)."""
        return [cond] + ([uncond] if self.variant is Variant.B and uncond is not None else [])

    def guided(self, denoised: torch.Tensor, cfg_scale: float, cond: torch.Tensor, uncond: torch.Tensor | None,
               nulls: list, ev: Evaluation) -> torch.Tensor:
        """The CFG result ``denoised`` plus the NAG correction; ``nulls``: the null-branch predictions,
        ``[null cond]`` (variant A) or ``[null cond, null uncond]`` (variant B)."""
        null_u = nulls[1] if len(nulls) > 1 else None
        u = uncond if null_u is not None else None
        if isinstance(self.rule, AutoScale):
            return self.added(denoised, guidance.nag_correction(cond, nulls[0], 1.0, self.variant, cfg_scale, u, null_u), ev)
        return denoised + guidance.nag_correction(cond, nulls[0], self.scale_at(ev.sigma, denoised), self.variant,
                                                  cfg_scale, u, null_u)


def scale_trace(cfg: NagConfig) -> list | None:
    """The list the closed-loop scale appends ``(sigma, scales [B])`` to at every evaluation (None for other rules):
    the Noise Shift Recorder reads it through the model's attachment."""
    return cfg.rule.trace if isinstance(cfg.rule, AutoScale) else None


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
        settings = {"null": _null_branch(model, nag), "variant": nag.variant, "batched": bool(nag.batched)}
    settings["rule"] = _scale_rule(model, nag)
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


def _scale_rule(model, nag: NagInputs) -> ScaleProfile | AutoScale | None:
    if nag.scale_rule is ScaleRule.CONSTANT:
        return None
    if nag.scale_rule is ScaleRule.AUTO:
        est, meta = _estimator(nag, "scale rule 'auto (from estimator)'")
        check_estimator(est, meta, model)
        return AutoScale(est, reading_calibration(est, meta), trace=[])  # the trace: what the Noise Shift Plot shows
    profile = nag_metadata.scale_profile(file_metadata(model))
    if profile is None:
        raise NoiseAwarenessError(
            "scale rule 'per level (from file)' needs the nag.scale_profile the trainer writes when a fine-tune runs "
            "with monitor.estimator; this model file has none. Load a file exported that way (with a Noise "
            "Awareness loader), or set scale_rule to 'constant'")
    return profile
