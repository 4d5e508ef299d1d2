"""Classifier-free NAG as a model patch, built only on ComfyUI's composable hook points.

* ``APPLY_MODEL`` wrapper (:func:`null_apply_model`): rows of the chunks flagged in
  ``transformer_options[NULL_FLAG]`` get the null timestep, by a scoped override of
  ``model_sampling.timestep`` (works for every BaseModel, SD3's MMDiT included).  The network output
  is still converted with the real sigma.
* ``PREDICT_NOISE`` + ``CALC_COND_BATCH`` wrappers (:class:`NullBranches`): append null copies of cond
  (and uncond, variant B) to the cond/uncond batch so all branches run in one forward.
* ``sampler_post_cfg_function``: adds the NAG correction (:meth:`NagConfig.guided`) to the CFG result;
  falls back to an extra ``calc_cond_batch`` call when nothing was batched (unbatched toggle, or a
  custom guider that does its own batching).

The guider (guider.py) batches the branches itself and shares the wrapper and the NAG addition.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import torch

import comfy.samplers

from ..comfy_nag import guidance, patching
from ..comfy_nag.scale_profiles import ScaleProfile
from ..comfy_nag.schedules import logsnr_of
from .model_info import ATTACH_CONFIG, KEY, NoiseAwarenessError
from .windows import Window

NULL_FLAG = "noise_awareness_null"  # transformer_options: {"labels": set of chunk labels, "value": null t}


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

    def guided(self, denoised: torch.Tensor, sigma: torch.Tensor, cfg_scale: float, cond: torch.Tensor,
               uncond: torch.Tensor | None, nulls: list) -> torch.Tensor:
        """The CFG result ``denoised`` plus the NAG correction; ``nulls``: the null-branch predictions,
        ``[null cond]`` (variant A) or ``[null cond, null uncond]`` (variant B)."""
        null_u = nulls[1] if len(nulls) > 1 else None
        return denoised + guidance.nag_correction(cond, nulls[0], self.scale_at(sigma, denoised), self.variant, cfg_scale,
                                                  uncond if null_u is not None else None, null_u)


def flagged(model_options: dict, labels, value: float) -> dict:
    """``model_options`` whose chunks ``labels`` get the null timestep ``value`` (read by :func:`null_apply_model`)."""
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


def with_null_timestep(model, cfg: NagConfig):
    """Clone of ``model`` whose flagged rows get the null timestep, carrying the window for the recorder."""
    from comfy.patcher_extension import WrappersMP

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, null_apply_model)
    m.set_attachments(ATTACH_CONFIG, {"window": cfg.window, "null_timestep": cfg.null_timestep})
    return m


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
        return self.cfg.guided(denoised, args["sigma"], args["cond_scale"], args["cond_denoised"], args["uncond_denoised"],
                               self.null_predictions(args))


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
