"""Classifier-free NAG as a model patch, built only on ComfyUI's composable hook points.

* ``APPLY_MODEL`` wrapper (:func:`null_apply_model`): the rows of each chunk flagged in
  ``transformer_options[NULL_FLAG]`` get that chunk's network time (a learned null timestep, or the
  network time of an estimator's level), by a scoped override of ``model_sampling.timestep`` (works for
  every BaseModel, SD3's MMDiT included).  The network output is still converted with the real sigma.
* ``PREDICT_NOISE`` + ``CALC_COND_BATCH`` wrappers (:class:`NullBranches`): append the null branch's
  copies of cond (and uncond, variant B) to the cond/uncond batch so all branches run in one forward
  (null_branch.py: one copy per cond for a learned null branch, K for one from an estimator).
* ``sampler_post_cfg_function``: adds the NAG correction (``configure.NagConfig.guided``) to the CFG result;
  falls back to an extra ``calc_cond_batch`` call when nothing was batched (unbatched toggle, or a
  custom guider that does its own batching).

The guider (guider.py) batches the branches itself and shares the wrapper and the NAG addition.
"""
from __future__ import annotations

import torch

import comfy.samplers

from ..comfy_nag import patching
from .configure import Evaluation, NagConfig, scale_trace
from .model_info import ATTACH_CONFIG, KEY, NoiseAwarenessError
from .null_branch import chunk_values, copies, labels, prepare

NULL_FLAG = "noise_awareness_null"  # transformer_options: {chunk label: network time, or [B] level sigmas}


def flagged(model_options: dict, values: dict) -> dict:
    """``model_options`` whose chunks get their null values ``{label: value}`` (read by :func:`null_apply_model`)."""
    mo = model_options.copy()
    to = dict(mo.get("transformer_options", {}))
    to[NULL_FLAG] = dict(values)
    mo["transformer_options"] = to
    return mo


def _net_time(value, rows: torch.Tensor, timestep) -> torch.Tensor:
    """A flagged chunk's network time for its ``rows``: the constant ``value``, or ``timestep`` of its [B] sigmas."""
    if isinstance(value, torch.Tensor):
        return timestep(value.to(rows.device)).to(rows).reshape(rows.shape)
    return torch.full_like(rows, value)


def null_apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
    """APPLY_MODEL wrapper: the rows of each flagged chunk receive that chunk's null network time."""
    flag = transformer_options.get(NULL_FLAG)
    if not flag:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
    labels = list(transformer_options.get("cond_or_uncond") or [0])
    ms = executor.class_obj.model_sampling
    own = "timestep" in ms.__dict__
    orig = ms.timestep

    def timestep(sigma, *a, **k):
        tt = orig(sigma, *a, **k)
        if tt.dim() == 0 or tt.shape[0] != x.shape[0]:
            return tt  # not this batch's sigmas
        rows = tt.chunk(len(labels))
        return torch.cat([_net_time(flag[lab], r, orig) if lab in flag else r for lab, r in zip(labels, rows)])

    ms.timestep = timestep
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
    finally:
        if own:
            ms.timestep = orig
        else:
            del ms.timestep


def with_null_times(model, cfg: NagConfig):
    """Clone of ``model`` whose flagged rows get their null network times, carrying the window (for the
    recorder) and the null source's description."""
    from comfy.patcher_extension import WrappersMP

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, null_apply_model)
    m.set_attachments(ATTACH_CONFIG, {"window": cfg.window, **cfg.null.describe(), "scale_trace": scale_trace(cfg)})
    return m


class NullBranches:
    """Per-patch state of classifier-free NAG (one prompt runs at a time in ComfyUI), shared by its wrappers and its
    post-CFG function.

    ``ModelPatcher.clone()`` (every node placed after this patch: a recorder, PAG, a LoRA loader) shallow-copies the
    wrappers but deep-copies ``model_options``, where the post-CFG function (a bound method) lives: this object deep-
    copies to itself, so the post-CFG step of every clone reads what the batched forward stashed.  Each patch has its
    own (two NAG patches in one graph, the two experts of WAN 2.2 A14B)."""

    def __init__(self, cfg: NagConfig):
        self.cfg, self.pending, self.stash = cfg, False, None

    def __deepcopy__(self, memo):
        return self

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
        null = self.cfg.null
        step = prepare(null, model, x_in, timestep)
        extra = copies(step, self.cfg.null_conds(conds[0], conds[1]))
        mo = flagged(model_options, labels(chunk_values(step, null), 2, len(extra)))
        out = executor(model, list(conds) + extra, x_in, timestep, mo)
        self.stash = step.collect(out[2:])
        return out[:2]

    def null_predictions(self, args) -> list:
        stash, self.stash = self.stash, None
        if stash is not None:
            return stash
        self.pending = False  # this call is the null branch itself, never the main batch to extend
        null = self.cfg.null
        step = prepare(null, args["model"], args["input"], args["sigma"])
        extra = copies(step, self.cfg.null_conds(args["cond"], args["uncond"]))
        mo = flagged(args["model_options"], labels(chunk_values(step, null), 0, len(extra)))
        return step.collect(comfy.samplers.calc_cond_batch(args["model"], extra, args["input"], args["sigma"], mo))

    def post_cfg(self, args):
        denoised = args["denoised"]
        if not self.cfg.window.active(args["sigma"], args["model_options"]):
            return denoised
        patching.check_finite(args["input"], "Noise Awareness Guidance")
        return self.cfg.guided(denoised, args["cond_scale"], args["cond_denoised"], args["uncond_denoised"],
                               self.null_predictions(args), Evaluation.of(args))


def patch_classifier_free(model, cfg: NagConfig):
    """Clone ``model`` with classifier-free NAG installed (composable hooks only)."""
    from comfy.patcher_extension import WrappersMP

    if cfg.batched and not hasattr(WrappersMP, "PREDICT_NOISE"):
        raise NoiseAwarenessError("batching the null branch needs ComfyUI 0.3.52 or newer (its PREDICT_NOISE wrapper): "
                                  "update ComfyUI, or turn 'batched' off")
    m = with_null_times(model, cfg)
    state = NullBranches(cfg)
    if cfg.batched:
        m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, state.predict_noise)
        m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, KEY, state.calc_cond_batch)
    m.set_model_sampler_post_cfg_function(state.post_cfg)
    return m
