"""Guidance nodes: classifier-free NAG patch, classifier-guided NAG patch, NAG guider."""
from __future__ import annotations

import logging
import math

import comfy.samplers
from comfy_api.latest import io

from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag import guidance, patching
from . import hooks
from .common import CATEGORY, Estimator, clear_errors, window_inputs

NULL_SOURCES = ["auto", "metadata", "manual"]
log = logging.getLogger("comfy-nag")


def _nag_inputs() -> list:
    return [
        io.Float.Input("scale", default=1.0, min=0.0, max=20.0, step=0.05,
                       tooltip="NAG scale w: c + w*(c - null). 0 = off (model returned unchanged). Start with 1.0."),
        io.Combo.Input("variant", options=["A", "B"], default="A",
                       tooltip="A: u + cfg*(c-u) + w*(c-n_c) (3 branches). B: NAG inside both CFG branches (4 branches)."),
        *window_inputs(),
        io.Combo.Input("null_timestep_source", options=NULL_SOURCES, default="auto",
                       tooltip="auto: from the model file's comfy-nag metadata, else the family default "
                               "(-1000 discrete SD1/SDXL, -1000 SD3/WAN flow, -1 Flux). metadata: require it. manual: use the value below."),
        io.Float.Input("null_timestep", default=-1000.0, min=-1e6, max=1e6, step=1.0,
                       tooltip="null timestep in network units (used when the source is 'manual')"),
    ]


def nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched=True):
    kind, mult, _ = hooks.sampling_info(model)
    meta_null = nag_metadata.null_timestep(hooks.file_metadata(model))
    null, origin = patching.choose_null_timestep(meta_null, kind, mult, null_timestep, null_timestep_source)
    if origin.startswith("default") and scale:
        log.warning("Noise Awareness Guidance: the model carries no comfy-nag metadata; using the %s null timestep %g. "
                    "Classifier-free NAG needs a model fine-tuned with noise-condition dropout (load it with a "
                    "NoiseAwareness loader); on any other model use the classifier-guided node.", origin, null)
    ms = model.get_model_object("model_sampling")
    window = patching.sigma_window(start, end, window_unit, ms.percent_to_sigma)
    return hooks.NagConfig(float(scale), variant, window, null, bool(batched))


class NoiseAwarenessClassifierFree(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuidanceClassifierFree",
            display_name="Noise Awareness Guidance (classifier-free)",
            category=CATEGORY,
            description="Noise Awareness Guidance (Zhong et al. 2025), classifier-free form: mixes the ordinary output "
                        "with the output at a null timestep. Needs a model fine-tuned with noise-condition dropout. "
                        "Works with KSampler, SamplerCustom and SamplerCustomAdvanced, at cfg 1 and with CFG.",
            inputs=[io.Model.Input("model"), *_nag_inputs(),
                    io.Boolean.Input("batched", default=True,
                                     tooltip="run the null branch in the same forward as cond/uncond; turn off if another "
                                             "pack's model wrapper breaks with extra batch entries")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched):
        cfg = nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched)
        if scale == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(hooks.patch_classifier_free(model, cfg))


class NoiseAwarenessClassifierGuided(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuidanceClassifierGuided",
            display_name="Noise Awareness Guidance (classifier-guided)",
            category=CATEGORY,
            description="Noise Awareness Guidance with a noise-level estimator: adds scale * grad log g(t | x) to the "
                        "score, pulling the state to its nominal noise level. Works on unmodified checkpoints.",
            inputs=[io.Model.Input("model"), Estimator.Input("estimator"),
                    io.Float.Input("scale", default=0.5, min=0.0, max=20.0, step=0.05,
                                   tooltip="classifier guidance scale; 0 = off. Start with 0.5."),
                    *window_inputs()],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, estimator, scale, window_unit, start, end):
        est, meta = estimator
        hooks.check_estimator(est, meta, model)
        ms = model.get_model_object("model_sampling")
        window = patching.sigma_window(start, end, window_unit, ms.percent_to_sigma)
        if scale == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(hooks.patch_classifier_guided(model, est, float(scale), window))


BATCHING = ["one forward", "cond+uncond, then null", "each branch separately"]


class NagGuider(comfy.samplers.CFGGuider):
    """CFGGuider with classifier-free NAG and explicit branch batching (SamplerCustomAdvanced)."""

    def __init__(self, model_patcher, cfg: hooks.NagConfig, batching: str):
        from comfy.patcher_extension import WrappersMP

        m = model_patcher.clone()
        m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, hooks.KEY, hooks.null_apply_model)
        m.set_attachments(hooks.ATTACH_CONFIG, {"window": cfg.window, "null_timestep": cfg.null_timestep})
        super().__init__(m)
        self.nag, self.batching = cfg, batching

    def _run(self, conds, nulls, x, sigma, mo):
        flagged = hooks._flagged(mo, range(len(conds), len(conds) + len(nulls)), self.nag.null_timestep)
        nulls = [hooks._null_copy(c) for c in nulls]
        if self.batching == "one forward":
            return comfy.samplers.calc_cond_batch(self.inner_model, conds + nulls, x, sigma, flagged)
        if self.batching == "cond+uncond, then null":
            out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, sigma, mo)
            if nulls:
                out = out + comfy.samplers.calc_cond_batch(self.inner_model, nulls, x, sigma,
                                                           hooks._flagged(mo, range(len(nulls)), self.nag.null_timestep))
            return out
        out = [comfy.samplers.calc_cond_batch(self.inner_model, [c], x, sigma, mo)[0] if c is not None else 0 * x for c in conds]
        return out + [comfy.samplers.calc_cond_batch(self.inner_model, [n], x, sigma,
                                                     hooks._flagged(mo, [0], self.nag.null_timestep))[0] for n in nulls]

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        pos, neg = self.conds.get("positive"), self.conds.get("negative")
        uncond = None if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False) else neg
        on = self.nag.scale != 0 and patching.in_window(timestep, self.nag.window)
        nulls = ([pos] + ([uncond] if self.nag.variant == "B" and uncond is not None else [])) if on else []
        out = self._run([pos, uncond], nulls, x, timestep, model_options)
        main = out[:2]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            main = fn({"conds": [pos, uncond], "conds_out": main, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                       "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        res = comfy.samplers.cfg_function(self.inner_model, main[0], main[1], self.cfg, x, timestep,
                                          model_options=model_options, cond=pos, uncond=uncond)
        if not on:
            return res
        null_u = out[3] if len(out) > 3 else None
        return res + guidance.nag_correction(out[0], out[2], self.nag.scale, self.nag.variant, self.cfg,
                                             out[1] if null_u is not None else None, null_u)


class NoiseAwarenessCFGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuider",
            display_name="Noise Awareness Guider (CFG + NAG)",
            category=CATEGORY,
            description="A GUIDER for SamplerCustomAdvanced: CFG plus classifier-free Noise Awareness Guidance, "
                        "with explicit control of how the branches are batched.",
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, round=0.01),
                    *_nag_inputs(),
                    io.Combo.Input("batching", options=BATCHING, default=BATCHING[0],
                                   tooltip="one forward: cond, uncond and null branches in one batch (fastest); "
                                           "the others trade speed for memory")],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, positive, negative, cfg, scale, variant, window_unit, start, end,
                null_timestep_source, null_timestep, batching):
        nag = nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep)
        g = NagGuider(model, nag, batching)
        g.set_conds(positive, negative)
        g.set_cfg(cfg)
        return io.NodeOutput(g)
