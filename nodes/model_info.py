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


def latent_dims(model) -> int:
    """Spatial(-temporal) dimensions of a ModelPatcher's latents (ComfyUI's ``latent_dimensions``): 2 = [B, C, H, W],
    3 = [B, C, T, H, W]."""
    return int(getattr(model.get_model_object("latent_format"), "latent_dimensions", 2))


def prediction(model) -> str | None:
    """What the model's network predicts as its sampling says (ModelSampling* nodes included): eps, v or velocity."""
    ms = model.get_model_object("model_sampling")
    for mixin, name in ((cms.CONST, "velocity"), (cms.V_PREDICTION, "v"), (cms.X0, None), (cms.EPS, "eps")):
        if isinstance(ms, mixin):
            return name
    return None


def model_family(model) -> families.Family | None:
    """The registry's family of a ComfyUI model (its model-config class and prediction); None when comfy-nag has none."""
    config = getattr(model.model, "model_config", None)
    return families.from_comfy_config(type(config).__name__, prediction(model)) if config is not None else None


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


_SHAPES = {0: "vectors [B, {c}]", 1: "latents [B, {c}, L]", 2: "image latents [B, {c}, H, W]",
           3: "video latents [B, {c}, T, H, W]"}


class Latents(NamedTuple):
    """A latent space as the estimator checks name it: format (None: not declared), channels, spatial(-temporal)
    dims, and frames (1: every latent has one frame, an image model on 3-D latents)."""

    fmt: str | None
    channels: int
    dims: int
    frames: int | None = None

    def reads(self, other: "Latents") -> bool:
        """Whether an estimator for these latents reads ``other``'s: the same dims, or one-frame 3-D latents (read as
        the image latents they are)."""
        return self.dims == other.dims or (self.dims == 2 and other.dims == 3 and other.frames == 1)

    def __str__(self) -> str:
        if self.dims == 3 and self.frames == 1:
            shape = f"latents with one frame [B, {self.channels}, 1, H, W]"
        else:
            shape = _SHAPES.get(self.dims, "latents").format(c=self.channels)
        fams = families.latent_space_families(self.fmt) if self.fmt else ()
        return " ".join(filter(None, (self.fmt, shape))) + (f" (families {', '.join(fams)})" if fams else "")


def model_latents(model) -> Latents:
    fmt, channels = latent_space(model)
    fam = model_family(model)
    return Latents(fmt, channels, latent_dims(model), fam.frames if fam is not None else None)


def estimator_latents(estimator, meta: dict) -> Latents:
    return Latents(estimator_latent_format(meta), int(estimator.shape[0]), len(estimator.shape) - 1)


def check_estimator(estimator, meta: dict, model) -> None:
    """One clear line when an estimator does not fit the model's latent space (its format, per the file's
    metadata; its channels and its dimensionality, also for files without metadata) or its sampling space."""
    own, est = model_latents(model), estimator_latents(estimator, meta)
    if own.dims != 2 or est.dims != 2:  # video (or other) latents on either side: name both with their shapes
        if est.fmt not in (None, own.fmt) or est.channels != own.channels or not est.reads(own):
            raise NoiseAwarenessError(f"the noise-level estimator was trained on {est} but this model uses {own}; load "
                                      f"an estimator trained on {own.fmt} latents (`python -m training estimator` on "
                                      "this model family)")
    else:
        _check_image_estimator(own, est)
    sched = nag_metadata.schedule(meta)
    space = sampling(model).space
    if sched is not None and sched.space != space:
        raise NoiseAwarenessError(f"the noise-level estimator was trained for {SPACE_KINDS[sched.space]} "
                                  f"models but this model is {SPACE_KINDS[space]}; load the estimator trained "
                                  "for this model family")


def _check_image_estimator(own: Latents, est: Latents) -> None:
    fmt, channels = own.fmt, own.channels
    fix = f"load an estimator trained on {fmt} latents (`python -m training estimator` on this model family)"
    if est.fmt is not None and est.fmt != fmt:
        raise NoiseAwarenessError(f"the noise-level estimator was trained on {est.fmt} latents ({est.channels} channels"
                                  f"{_families(est.fmt)}) but this model uses {fmt} latents ({channels} channels"
                                  f"{_families(fmt)}); {fix}")
    if est.channels != channels:
        raise NoiseAwarenessError(f"the noise-level estimator expects {est.channels} latent channels but this model's "
                                  f"latents have {channels} ({fmt} latents{_families(fmt)}); {fix}")


def estimator_on(estimator, device):
    """The estimator on ``device`` (moved once, outside inference mode so autograd can use it)."""
    if next(estimator.parameters()).device != torch.device(device):
        with torch.inference_mode(False):
            estimator.to(device)
    return estimator
