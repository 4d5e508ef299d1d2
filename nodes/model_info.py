"""What the nodes read off a ComfyUI model: its sampling, its file's metadata, and whether an estimator fits it.

``sampling`` is the one type dispatch over ComfyUI's model_sampling classes (host-adapter code);
the families' facts (latent spaces, schedules) come from ``comfy_nag.families``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

import comfy.model_sampling as cms

from ..comfy_nag import families
from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag.schedules import SamplingKind, Space

KEY = "noise_awareness_guidance"  # key of the pack's wrappers
ATTACH_META = "noise_awareness_metadata"  # model attachment: the file's nag.* metadata
ATTACH_CONFIG = "noise_awareness_config"  # model attachment: the active guidance window (for the recorder), null branch
SPACE_KINDS = {Space.VE: "SD1.x/SDXL-style (discrete/EDM)", Space.FLOW: "flow (SD3/Flux-style)"}


class NoiseAwarenessError(ValueError):
    """Bad input for a Noise Awareness node; the message names the problem and the fix."""


class Sampling(NamedTuple):
    """How ComfyUI samples a model: its kind (and so its default null timestep), the flow network time per unit
    sigma, and its sampling space."""

    kind: SamplingKind
    multiplier: float
    space: Space


def sampling(model) -> Sampling:
    """A ModelPatcher's :class:`Sampling`; clear error when unsupported."""
    ms = model.get_model_object("model_sampling")
    space = Space.FLOW if isinstance(ms, cms.CONST) else Space.VE
    if isinstance(ms, cms.ModelSamplingDiscreteFlow):
        return Sampling(SamplingKind.DISCRETE_FLOW, float(ms.multiplier), space)
    if isinstance(ms, cms.ModelSamplingFlux):
        return Sampling(SamplingKind.FLUX, 1.0, space)
    if isinstance(ms, (cms.ModelSamplingContinuousV, cms.ModelSamplingCosmosRFlow)) or not isinstance(
            ms, (cms.ModelSamplingContinuousEDM, cms.ModelSamplingDiscrete)):
        raise NoiseAwarenessError(f"model family not supported by Noise Awareness Guidance (sampling "
                                  f"{type(ms).__name__}); supported: SD1.x/SD2.x/SDXL, SD3/SD3.5, WAN, AuraFlow, Flux-style "
                                  "flow and EDM models")
    if isinstance(ms, (cms.ModelSamplingContinuousEDM, cms.ModelSamplingDiscreteEDM)):
        return Sampling(SamplingKind.EDM, 1.0, space)
    return Sampling(SamplingKind.DISCRETE, 1.0, space)


def latent_space(model) -> tuple[str, int]:
    """``(latent-format class name, channels)`` of a ModelPatcher's latents, e.g. ``("SD15", 4)``."""
    fmt = model.get_model_object("latent_format")
    return type(fmt).__name__, int(fmt.latent_channels)


def file_metadata(model) -> dict:
    return model.get_attachment(ATTACH_META) or {}


def net_scale(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample c with network input = c * x (ComfyUI's calculate_input)."""
    s = sigma.reshape(-1)
    return model_sampling.calculate_input(s, torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)).reshape(-1)


def estimator_family(meta: dict) -> families.Family | None:
    """The family an estimator file names (``nag.family``, family registry); None when it names none or one
    comfy-nag does not know."""
    try:
        return families.family(meta["nag.family"]) if meta.get("nag.family") else None
    except ValueError:
        return None


def estimator_latent_format(meta: dict) -> str | None:
    """The latent format an estimator file was trained on: ``nag.latent_format``, else its ``nag.family``'s
    (family registry); None when the file says neither (or names a family comfy-nag does not know)."""
    if meta.get("nag.latent_format"):
        return meta["nag.latent_format"]
    fam = estimator_family(meta)
    return fam.latent_format if fam is not None else None


def _families(fmt: str) -> str:
    fams = families.latent_space_families(fmt)
    return f"; families {', '.join(fams)}" if fams else ""


def check_estimator(estimator, meta: dict, model) -> None:
    """One clear line when an estimator does not fit the model's latent space (its format, per the file's
    metadata; its channels, also for files without metadata) or its sampling space."""
    fmt, channels = latent_space(model)
    est_fmt, est_channels = estimator_latent_format(meta), estimator.shape[0]
    fix = f"load an estimator trained on {fmt} latents (`python -m training estimator` on this model family)"
    if est_fmt is not None and est_fmt != fmt:
        raise NoiseAwarenessError(f"the noise-level estimator was trained on {est_fmt} latents ({est_channels} channels"
                                  f"{_families(est_fmt)}) but this model uses {fmt} latents ({channels} channels"
                                  f"{_families(fmt)}); {fix}")
    if len(estimator.shape) != 3 or est_channels != channels:
        raise NoiseAwarenessError(f"the noise-level estimator expects {est_channels} latent channels but this model's "
                                  f"latents have {channels} ({fmt} latents{_families(fmt)}); {fix}")
    sched = nag_metadata.schedule(meta)
    space = sampling(model).space
    if sched is not None and sched.space != space:
        raise NoiseAwarenessError(f"the noise-level estimator was trained for {SPACE_KINDS[sched.space]} "
                                  f"models but this model is {SPACE_KINDS[space]}; load the estimator trained "
                                  "for this model family")


def estimator_on(estimator, device):
    """The estimator on ``device`` (moved once, outside inference mode so autograd can use it)."""
    if next(estimator.parameters()).device != torch.device(device):
        with torch.inference_mode(False):
            estimator.to(device)
    return estimator
