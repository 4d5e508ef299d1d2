"""ComfyUI glue for Noise Awareness Guidance: only composable hook points are used.

* ``APPLY_MODEL`` wrapper: rows of the chunks flagged in ``transformer_options[NULL_FLAG]`` get the
  null timestep, by a scoped override of ``model_sampling.timestep`` (works for every BaseModel,
  SD3's MMDiT included).  The network output is still converted with the real sigma.
* ``PREDICT_NOISE`` + ``CALC_COND_BATCH`` wrappers: append null copies of cond (and uncond, variant
  B) to the cond/uncond batch so all branches run in one forward.
* ``sampler_post_cfg_function``: adds the NAG correction (comfy_nag.patching) to the CFG result;
  falls back to an extra ``calc_cond_batch`` call when nothing was batched (unbatched toggle, or a
  custom guider that does its own batching).
* ``SAMPLER_SAMPLE`` wrapper (recorder): wraps the step callback to read out the noise level.
* :class:`NagGuider` (guider.py): a CFGGuider that batches the branches itself.

Guidance windows (:class:`Window`) in percent are fractions of the steps the sampler call actually
samples (``transformer_options["sample_sigmas"]``), so at denoise < 1 "0" is the first sampled step.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import torch

import comfy.model_sampling as cms
import comfy.samplers

from ..comfy_nag import guidance, patching
from ..comfy_nag.classifier_guidance import classifier_correction
from ..comfy_nag.scale_profiles import ScaleProfile
from ..comfy_nag.schedules import logsnr_of

KEY = "noise_awareness_guidance"
NULL_FLAG = "noise_awareness_null"  # transformer_options: {"labels": set of chunk labels, "value": null t}
ATTACH_META = "noise_awareness_metadata"  # model attachment: the file's nag.* metadata
ATTACH_CONFIG = "noise_awareness_config"  # model attachment: the active guidance window (for the recorder)


class NoiseAwarenessError(ValueError):
    """Bad input for a Noise Awareness node; the message names the problem and the fix."""


def sampling_info(model) -> tuple[str, float, str]:
    """``(kind, multiplier, space)`` of a ModelPatcher's sampling; clear error when unsupported."""
    ms = model.get_model_object("model_sampling")
    space = "flow" if isinstance(ms, cms.CONST) else "ve"
    if isinstance(ms, cms.ModelSamplingDiscreteFlow):
        return "discrete_flow", float(ms.multiplier), space
    if isinstance(ms, cms.ModelSamplingFlux):
        return "flux", 1.0, space
    if isinstance(ms, (cms.ModelSamplingContinuousV, cms.ModelSamplingCosmosRFlow)) or not isinstance(
            ms, (cms.ModelSamplingContinuousEDM, cms.ModelSamplingDiscrete)):
        raise NoiseAwarenessError(f"model family not supported by Noise Awareness Guidance (sampling "
                                  f"{type(ms).__name__}); supported: SD1.x/SD2.x/SDXL, SD3/SD3.5, WAN, AuraFlow, Flux-style "
                                  "flow and EDM models")
    if isinstance(ms, (cms.ModelSamplingContinuousEDM, cms.ModelSamplingDiscreteEDM)):
        return "edm", 1.0, space
    return "discrete", 1.0, space


def file_metadata(model) -> dict:
    return model.get_attachment(ATTACH_META) or {}


def flagged(model_options: dict, labels, value: float) -> dict:
    mo = model_options.copy()
    to = dict(mo.get("transformer_options", {}))
    to[NULL_FLAG] = {"labels": frozenset(labels), "value": float(value)}
    mo["transformer_options"] = to
    return mo


def null_copy(cond):
    """Copy of a converted cond list with fresh uuids (caches keyed on uuids must not mix branches)."""
    return [dict(c, uuid=uuid.uuid4()) if isinstance(c, dict) and "uuid" in c else c for c in cond]


def null_apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
    """APPLY_MODEL wrapper: the flagged chunks' rows receive the null network timestep."""
    flag = transformer_options.get(NULL_FLAG)
    if not flag:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
    labels = list(transformer_options.get("cond_or_uncond") or [0])
    rows = x.shape[0] // len(labels)
    mask = torch.tensor([lab in flag["labels"] for lab in labels], device=x.device).repeat_interleave(rows)
    ms = executor.class_obj.model_sampling
    own = "timestep" in ms.__dict__
    orig = ms.timestep

    def timestep(sigma, *a, **k):
        tt = orig(sigma, *a, **k)
        m = mask.to(tt.device).reshape((-1,) + (1,) * (tt.dim() - 1))
        return torch.where(m, torch.full_like(tt, flag["value"]), tt)

    ms.timestep = timestep
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
    finally:
        if own:
            ms.timestep = orig
        else:
            del ms.timestep


def progress_sigma(sigmas: torch.Tensor, p: float) -> float:
    """Sigma at sampling progress ``p`` in [0, 1] of a sampled schedule ``sigmas`` (N steps, N+1 values):
    ``p*N`` indexes the schedule, linear between neighbours (0 = first step's sigma, 1 = the final one)."""
    s = sigmas.detach().reshape(-1).float().cpu()
    n = s.numel() - 1
    if n <= 0:
        return float(s[0])
    pos = round(p * n, 9)
    i = min(int(pos), n - 1)
    return float(s[i] + (pos - i) * (s[i + 1] - s[i]))


@dataclass(frozen=True)
class Window:
    """Where guidance is active.  ``unit="signal"``: ``start``/``end`` are signal shares SNR/(1+SNR) (0.5 =
    log-SNR 0, the same noise level on every family); ``unit="percent"``: fractions of the steps this
    sampler call samples (0 = its first step); ``unit="sigma"``: ``start`` the high sigma, ``end`` the low.
    ``full``: ``(sigma_lo, sigma_hi)`` over the model's whole range, used when the sampled sigmas are unknown."""
    unit: str
    start: float
    end: float
    full: tuple[float, float]

    @classmethod
    def of(cls, model, unit: str, start: float, end: float) -> "Window":
        ms = model.get_model_object("model_sampling")
        return cls(unit, float(start), float(end),
                   patching.sigma_window(start, end, unit, ms.percent_to_sigma, sampling_info(model)[2]))

    def bounds(self, sample_sigmas: torch.Tensor | None = None) -> tuple[float, float]:
        """``(sigma_lo, sigma_hi)`` for a sampler call over ``sample_sigmas``."""
        if self.unit != "percent" or sample_sigmas is None or sample_sigmas.numel() == 0:
            return self.full
        return progress_sigma(sample_sigmas, self.end), progress_sigma(sample_sigmas, self.start)

    def active(self, sigma: torch.Tensor, model_options: dict) -> bool:
        sampled = model_options.get("transformer_options", {}).get("sample_sigmas")
        return patching.in_window(sigma, self.bounds(sampled))


@dataclass
class NagConfig:
    scale: float
    variant: str
    window: Window
    null_timestep: float
    batched: bool = True
    profile: ScaleProfile | None = None  # per-level multiplier of ``scale`` (the file's nag.scale_profile)
    space: str = "ve"  # the model's sampling space, to read each sample's log-SNR from its sigma

    def scale_at(self, sigma: torch.Tensor, like: torch.Tensor):
        """The NAG scale for the batch ``like`` at ``sigma``: a number, or per sample [B] with a profile."""
        if self.profile is None:
            return self.scale
        s = sigma.reshape(-1).float()
        s = s.expand(like.shape[0]) if s.numel() == 1 else s
        return (self.scale * self.profile(logsnr_of(self.space, s))).to(like)


class NullBranches:
    """Per-patch state of classifier-free NAG (one prompt runs at a time in ComfyUI)."""

    def __init__(self, cfg: NagConfig):
        self.cfg, self.pending, self.stash = cfg, False, None

    def predict_noise(self, executor, x, timestep, model_options, seed):
        self.pending = self.cfg.batched and self.cfg.window.active(timestep, model_options)
        self.stash = None
        try:
            return executor(x, timestep, model_options, seed)
        finally:
            self.pending, self.stash = False, None

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        if not self.pending or len(conds) != 2 or conds[0] is None:
            return executor(model, conds, x_in, timestep, model_options)
        self.pending = False
        extra = [null_copy(conds[0])]
        if self.cfg.variant == "B" and conds[1] is not None:
            extra.append(null_copy(conds[1]))
        mo = flagged(model_options, range(2, 2 + len(extra)), self.cfg.null_timestep)
        out = executor(model, list(conds) + extra, x_in, timestep, mo)
        self.stash = out[2:]
        return out[:2]

    def null_predictions(self, args) -> list:
        stash, self.stash = self.stash, None
        if stash is not None:
            return stash
        conds = [args["cond"]]
        if self.cfg.variant == "B" and args["uncond"] is not None:
            conds.append(args["uncond"])
        mo = flagged(args["model_options"], range(len(conds)), self.cfg.null_timestep)
        return comfy.samplers.calc_cond_batch(args["model"], [null_copy(c) for c in conds], args["input"], args["sigma"], mo)

    def post_cfg(self, args):
        denoised = args["denoised"]
        if not self.cfg.window.active(args["sigma"], args["model_options"]):
            return denoised
        patching.check_finite(args["input"], "Noise Awareness Guidance")
        nulls = self.null_predictions(args)
        null_u = nulls[1] if len(nulls) > 1 else None
        return denoised + guidance.nag_correction(
            args["cond_denoised"], nulls[0], self.cfg.scale_at(args["sigma"], denoised), self.cfg.variant, args["cond_scale"],
            args["uncond_denoised"] if null_u is not None else None, null_u)


def patch_classifier_free(model, cfg: NagConfig):
    """Clone ``model`` with classifier-free NAG installed (composable hooks only)."""
    from comfy.patcher_extension import WrappersMP

    if cfg.batched and not hasattr(WrappersMP, "PREDICT_NOISE"):
        raise NoiseAwarenessError("batching the null branch needs ComfyUI 0.3.52 or newer (its PREDICT_NOISE wrapper): "
                                  "update ComfyUI, or turn 'batched' off")
    m = with_null_timestep(model, cfg)
    state = NullBranches(cfg)
    if cfg.batched:
        m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, state.predict_noise)
        m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, KEY, state.calc_cond_batch)
    m.set_model_sampler_post_cfg_function(state.post_cfg)
    return m


def with_null_timestep(model, cfg: NagConfig):
    """Clone of ``model`` whose flagged rows get the null timestep, carrying the window for the recorder."""
    from comfy.patcher_extension import WrappersMP

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, null_apply_model)
    m.set_attachments(ATTACH_CONFIG, {"window": cfg.window, "null_timestep": cfg.null_timestep})
    return m


def net_scale(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample c with network input = c * x (ComfyUI's calculate_input)."""
    s = sigma.reshape(-1)
    return model_sampling.calculate_input(s, torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)).reshape(-1)


def check_estimator(estimator, meta: dict, model) -> None:
    """Clear errors when an estimator does not fit the model's latent channels or family."""
    channels = model.get_model_object("latent_format").latent_channels
    if len(estimator.shape) != 3 or estimator.shape[0] != channels:
        raise NoiseAwarenessError(f"the noise-level estimator expects {estimator.shape[0]} latent channels but this model's "
                                  f"latents have {channels}; load the estimator trained for this model family")
    _, _, space = sampling_info(model)
    sched = meta.get("nag.schedule")
    want = None
    if sched:
        import json

        try:
            want = json.loads(sched).get("space")
        except (ValueError, AttributeError):
            want = None
    if want is not None and want != space:
        kind = {"ve": "SD1.x/SDXL-style (discrete/EDM)", "flow": "flow (SD3/Flux-style)"}
        raise NoiseAwarenessError(f"the noise-level estimator was trained for {kind.get(want, want)} models but this model "
                                  f"is {kind.get(space, space)}; load the estimator trained for this model family")


def patch_classifier_guided(model, estimator, scale: float, window: Window):
    """Clone ``model`` with classifier-guided NAG (gradient of the estimator's log-likelihood)."""
    _, _, space = sampling_info(model)
    m = model.clone()

    def post_cfg(args):
        denoised, sigma, x = args["denoised"], args["sigma"], args["input"]
        if not window.active(sigma, args["model_options"]):
            return denoised
        patching.check_finite(x, "Noise Awareness Guidance (classifier-guided)")
        ms = args["model"].model_sampling
        sig = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        est = estimator_on(estimator, x.device)
        return denoised + classifier_correction(est, x, sig, space, net_scale(ms, sig), scale)

    m.set_model_sampler_post_cfg_function(post_cfg)
    m.set_attachments(ATTACH_CONFIG, {"window": window})
    return m


def estimator_on(estimator, device):
    """The estimator on ``device`` (moved once, outside inference mode so autograd can use it)."""
    if next(estimator.parameters()).device != torch.device(device):
        with torch.inference_mode(False):
            estimator.to(device)
    return estimator
