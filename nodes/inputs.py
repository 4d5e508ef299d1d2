"""The NAG inputs every guidance node shares: their UI options (one table each), their widgets and their
defaults (written once, in :class:`NagInputs`), and the one parse from a node's inputs into values.

Options are enums whose values are the strings the UI shows and workflows store, so old workflows and API
prompts load unchanged; code compares members, never display strings.  Inputs added after a node's first
release are optional and come last, so prompts made before them still validate and run with the defaults.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from comfy_api.latest import io

from ..comfy_nag.guidance import Variant
from ..comfy_nag.patching import NullTimestepSource, WindowUnit
from .common import Estimator
from .model_info import NoiseAwarenessError
from .null_branch import MAX_LEVELS


class NullBranchChoice(enum.Enum):
    """Where a classifier-free node's null branch comes from."""

    LEARNED = "learned (from file)"
    ESTIMATOR = "from estimator"


class ScaleRule(enum.Enum):
    """How the NAG scale varies over the steps."""

    CONSTANT = "constant"
    PER_LEVEL = "per level (from file)"
    AUTO = "auto (from estimator)"


class Batching(enum.Enum):
    """How the guider batches its branches."""

    ONE_FORWARD = "one forward"
    MAIN_THEN_NULL = "cond+uncond, then null"
    EACH_BRANCH = "each branch separately"


def options(choice: type[enum.Enum]) -> list[str]:
    """The UI strings of an option, in order."""
    return [c.value for c in choice]


def parse(choice: type[enum.Enum], value, name: str):
    """The member of ``choice`` whose UI string is ``value`` (members pass through); one clear line otherwise."""
    if isinstance(value, choice):
        return value
    try:
        return choice(value)
    except ValueError:
        raise NoiseAwarenessError(f"unknown {name} {value!r}; expected one of {', '.join(options(choice))}") from None


@dataclass(frozen=True)
class NagInputs:
    """The NAG inputs of a guidance node, parsed (:meth:`parse`); the field defaults are the widgets' defaults."""

    scale: float = 1.0
    variant: Variant = Variant.A
    window_unit: WindowUnit = WindowUnit.SIGNAL
    start: float = 0.5
    end: float = 1.0
    null_timestep_source: NullTimestepSource = NullTimestepSource.AUTO
    null_timestep: float = -1000.0
    batched: bool = True
    scale_rule: ScaleRule = ScaleRule.CONSTANT
    null_branch: NullBranchChoice = NullBranchChoice.LEARNED
    estimator: tuple | None = None  # (NoiseLevelEstimator, file metadata) from the estimator loader
    levels: int = 1

    @classmethod
    def parse(cls, inputs: dict, **overrides) -> "NagInputs":
        """From a node's keyword inputs (UI strings; absent optional inputs take the defaults; other keys are
        ignored), with ``overrides`` for inputs a node fixes itself."""
        raw = {f.name: inputs[f.name] for f in fields(cls) if f.name in inputs}
        raw.update(overrides)
        for name, choice in _CHOICES.items():
            if name in raw:
                raw[name] = parse(choice, raw[name], name)
        return cls(**raw)


_CHOICES = {"variant": Variant, "window_unit": WindowUnit, "null_timestep_source": NullTimestepSource,
            "scale_rule": ScaleRule, "null_branch": NullBranchChoice}
DEFAULT = NagInputs()


def window_inputs() -> list:
    """Guidance window widgets.  The default, signal 0.5 -> 1 (log-SNR >= 0: the part of sampling where the
    state holds more signal than noise), is what the project's studies support; docs/comfyui.md."""
    return [
        io.Combo.Input("window_unit", options=options(WindowUnit), default=DEFAULT.window_unit.value,
                       tooltip="signal: start/end are the share of signal in the state, SNR/(1+SNR): 0 = pure noise, "
                               "0.5 = as much signal as noise, 1 = clean; the same on every model. percent: fractions "
                               "of the steps the sampler actually runs (0 = its first step, 1 = its last; at denoise < 1 "
                               "too). sigma: start is the high (noisy) sigma, end the low one."),
        io.Float.Input("start", default=DEFAULT.start, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance starts (signal or percent 0..1, or the high sigma); default: from "
                               "signal 0.5, where the studies found NAG helps"),
        io.Float.Input("end", default=DEFAULT.end, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance ends (signal or percent 0..1, or the low sigma)"),
    ]


def nag_inputs() -> list:
    """Scale, variant, window and the learned null timestep: the first NAG inputs of every classifier-free node."""
    return [
        io.Float.Input("scale", default=DEFAULT.scale, min=0.0, max=20.0, step=0.05,
                       tooltip="NAG scale w: c + w*(c - null). 0 = off (model returned unchanged). Start with 1.0."),
        io.Combo.Input("variant", options=options(Variant), default=DEFAULT.variant.value,
                       tooltip="A: u + cfg*(c-u) + w*(c-n_c) (3 branches). B: NAG inside both CFG branches (4 branches)."),
        *window_inputs(),
        io.Combo.Input("null_timestep_source", options=options(NullTimestepSource),
                       default=DEFAULT.null_timestep_source.value,
                       tooltip="auto: from the model file's comfy-nag metadata, else the family default "
                               "(-1000 discrete SD1/SDXL, -1000 SD3/WAN flow, -1 Flux). metadata: require it. manual: use the value below. "
                               "Ignored with null_branch 'from estimator'."),
        io.Float.Input("null_timestep", default=DEFAULT.null_timestep, min=-1e6, max=1e6, step=1.0,
                       tooltip="null timestep in network units (used when the source is 'manual')"),
    ]


def scale_rule_input():
    """Appended and optional: workflows and API prompts made before it still load and run (as 'constant')."""
    return io.Combo.Input("scale_rule", options=options(ScaleRule), default=DEFAULT.scale_rule.value, optional=True,
                          tooltip="constant: the same scale at every step. per level (from file): the scale times the "
                                  "per-noise-level profile the trainer wrote into the file (fine-tunes run with "
                                  "monitor.estimator). auto (from estimator): the scale sets itself per image and step "
                                  "from what the noise-level estimator reads (connect one to 'estimator'): the strength at "
                                  "which the next state reads at its nominal noise level, 0 to 1.5; 'scale' multiplies it "
                                  "(1 = as the rule says). Two estimator calls per step, no extra model evaluation")


def null_branch_inputs() -> list:
    """The null branch's source: appended and optional, so workflows and API prompts made before them still load and
    run (with the learned null branch)."""
    return [
        io.Combo.Input("null_branch", options=options(NullBranchChoice), default=DEFAULT.null_branch.value, optional=True,
                       tooltip="learned (from file): the model at its null timestep; needs a model fine-tuned with "
                               "noise-condition dropout. from estimator: for ANY stock checkpoint: the null branch is "
                               "the model at the noise levels a noise-level estimator reads from the state; connect "
                               "'Load Noise-Level Estimator' to 'estimator' (the null timestep inputs are then ignored)"),
        Estimator.Input("estimator", optional=True,
                        tooltip="only for null_branch 'from estimator': from 'Load Noise-Level Estimator', trained for "
                                "this model's latent space (the same file the classifier-guided node uses)"),
        io.Int.Input("levels", default=DEFAULT.levels, min=1, max=MAX_LEVELS, optional=True,
                     tooltip="only for 'from estimator': model evaluations per null branch and step inside the window. "
                             "1: at the estimator's mean level, the cost of a learned null branch; 2-7: that many "
                             "levels spread over the estimator's posterior (Gauss-Hermite), one evaluation each"),
    ]
