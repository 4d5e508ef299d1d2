"""Guidance nodes: the classifier-free and classifier-guided patches, the guider, and the one-node sampler.

The nodes read their inputs into a :class:`NagConfig` (with its null source, null_sources.py) / :class:`Window`
and call the patches in classifier_free.py, classifier_guided.py and guider.py.
"""
from __future__ import annotations

import logging

import comfy.samplers
from comfy_api.latest import io

from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag import patching
from .classifier_free import NagConfig, patch_classifier_free
from .classifier_guided import patch_classifier_guided
from .common import CATEGORY, Estimator, clear_errors, model_input, window_inputs
from .guider import BATCHING, NagGuider
from .model_info import NoiseAwarenessError, check_estimator, file_metadata, sampling_info
from .null_sources import MAX_LEVELS, NULL_BRANCHES, EstimatorNull, LearnedNull
from .windows import Window

NULL_SOURCES = ["auto", "metadata", "manual"]
SCALE_RULES = ["constant", "per level (from file)"]
log = logging.getLogger("comfy-nag")


def trained_model_input():
    return model_input("a model fine-tuned with noise-condition dropout (load it with a Noise Awareness loader); "
                       "with a stock checkpoint set null_branch to 'from estimator' and connect an estimator")


def _nag_inputs() -> list:
    return [
        io.Float.Input("scale", default=1.0, min=0.0, max=20.0, step=0.05,
                       tooltip="NAG scale w: c + w*(c - null). 0 = off (model returned unchanged). Start with 1.0."),
        io.Combo.Input("variant", options=["A", "B"], default="A",
                       tooltip="A: u + cfg*(c-u) + w*(c-n_c) (3 branches). B: NAG inside both CFG branches (4 branches)."),
        *window_inputs(),
        io.Combo.Input("null_timestep_source", options=NULL_SOURCES, default="auto",
                       tooltip="auto: from the model file's comfy-nag metadata, else the family default "
                               "(-1000 discrete SD1/SDXL, -1000 SD3/WAN flow, -1 Flux). metadata: require it. manual: use the value below. "
                               "Ignored with null_branch 'from estimator'."),
        io.Float.Input("null_timestep", default=-1000.0, min=-1e6, max=1e6, step=1.0,
                       tooltip="null timestep in network units (used when the source is 'manual')"),
    ]


def scale_rule_input():
    """Last input of every classifier-free node: appended and optional, so workflows and API prompts made
    before it existed still load and run (as 'constant')."""
    return io.Combo.Input("scale_rule", options=SCALE_RULES, default=SCALE_RULES[0], optional=True,
                          tooltip="constant: the same scale at every step. per level (from file): the scale times the "
                                  "per-noise-level profile the trainer wrote into the file (fine-tunes run with "
                                  "monitor.estimator); calibrated so the guidance follows the estimator, it fades out "
                                  "where the null branch stops carrying the correction. Start with scale 1.0")


def null_branch_inputs() -> list:
    """The null branch's source: the last inputs of every classifier-free node, appended and optional, so
    workflows and API prompts made before them still load and run (with the learned null branch)."""
    return [
        io.Combo.Input("null_branch", options=NULL_BRANCHES, default=NULL_BRANCHES[0], optional=True,
                       tooltip="learned (from file): the model at its null timestep; needs a model fine-tuned with "
                               "noise-condition dropout. from estimator: for ANY stock checkpoint: the null branch is "
                               "the model at the noise levels a noise-level estimator reads from the state; connect "
                               "'Load Noise-Level Estimator' to 'estimator' (the null timestep inputs are then ignored)"),
        Estimator.Input("estimator", optional=True,
                        tooltip="only for null_branch 'from estimator': from 'Load Noise-Level Estimator', trained for "
                                "this model's latent space (the same file the classifier-guided node uses)"),
        io.Int.Input("levels", default=1, min=1, max=MAX_LEVELS, optional=True,
                     tooltip="only for 'from estimator': model evaluations per null branch and step inside the window. "
                             "1: at the estimator's mean level, the cost of a learned null branch; 2-7: that many "
                             "levels spread over the estimator's posterior (Gauss-Hermite), one evaluation each"),
    ]


def null_source(model, scale, null_timestep_source, null_timestep, null_branch, estimator, levels):
    """The null branch's source from the node inputs (the null timestep inputs count only for a learned one)."""
    if null_branch == NULL_BRANCHES[1]:
        return EstimatorNull.of(model, estimator, levels)
    if null_branch != NULL_BRANCHES[0]:
        raise NoiseAwarenessError(f"unknown null branch {null_branch!r}; expected one of {', '.join(NULL_BRANCHES)}")
    kind, mult, _ = sampling_info(model)
    meta_null = nag_metadata.null_timestep(file_metadata(model))
    null, origin = patching.choose_null_timestep(meta_null, kind, mult, null_timestep, null_timestep_source)
    if origin.startswith("default") and scale:
        log.warning("Noise Awareness Guidance: the model carries no comfy-nag metadata; using the %s null timestep %g. "
                    "A learned null branch needs a model fine-tuned with noise-condition dropout (load it with a "
                    "NoiseAwareness loader); on any other model set null_branch to 'from estimator' and connect a "
                    "noise-level estimator, or use the classifier-guided node.", origin, null)
    return LearnedNull(null)


def nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched=True,
               scale_rule=SCALE_RULES[0], null_branch=NULL_BRANCHES[0], estimator=None, levels=1):
    space = sampling_info(model)[2]
    meta = file_metadata(model)
    null = null_source(model, scale, null_timestep_source, null_timestep, null_branch, estimator, levels)
    profile = None
    if scale_rule == SCALE_RULES[1]:
        profile = nag_metadata.scale_profile(meta)
        if profile is None:
            raise NoiseAwarenessError(
                "scale rule 'per level (from file)' needs the nag.scale_profile the trainer writes when a fine-tune runs "
                "with monitor.estimator; this model file has none. Load a file exported that way (with a Noise "
                "Awareness loader), or set scale_rule to 'constant'")
    elif scale_rule != SCALE_RULES[0]:
        raise NoiseAwarenessError(f"unknown scale rule {scale_rule!r}; expected one of {', '.join(SCALE_RULES)}")
    return NagConfig(float(scale), variant, Window.of(model, window_unit, start, end), null, bool(batched), profile, space)


class NoiseAwarenessClassifierFree(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuidanceClassifierFree",
            display_name="Noise Awareness Guidance (classifier-free)",
            category=CATEGORY,
            description="Noise Awareness Guidance (Zhong et al. 2025), classifier-free form: mixes the ordinary output "
                        "with a null branch that does not know the noise level: the model at its null timestep (a "
                        "model fine-tuned with noise-condition dropout), or, on ANY checkpoint, the model at the levels "
                        "a noise-level estimator reads (null_branch 'from estimator'). Works with KSampler, "
                        "SamplerCustom and SamplerCustomAdvanced, at cfg 1 and with CFG.",
            inputs=[trained_model_input(),
                    *_nag_inputs(),
                    io.Boolean.Input("batched", default=True,
                                     tooltip="run the null branch in the same forward as cond/uncond; turn off if another "
                                             "pack's model wrapper breaks with extra batch entries"),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched,
                scale_rule=SCALE_RULES[0], null_branch=NULL_BRANCHES[0], estimator=None, levels=1):
        cfg = nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep, batched,
                         scale_rule, null_branch, estimator, levels)
        if scale == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(patch_classifier_free(model, cfg))


class NoiseAwarenessClassifierGuided(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuidanceClassifierGuided",
            display_name="Noise Awareness Guidance (classifier-guided)",
            category=CATEGORY,
            description="Noise Awareness Guidance with a noise-level estimator: adds scale * grad log g(t | x) to the "
                        "score, pulling the state to its nominal noise level. Works on unmodified checkpoints.",
            inputs=[model_input("any model of the estimator's family; it needs no fine-tuning"),
                    Estimator.Input("estimator", tooltip="from 'Load Noise-Level Estimator'; trained for this model's latent space"),
                    io.Float.Input("scale", default=0.5, min=0.0, max=20.0, step=0.05,
                                   tooltip="classifier guidance scale; 0 = off. Start with 0.5."),
                    *window_inputs()],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, estimator, scale, window_unit, start, end):
        est, meta = estimator
        check_estimator(est, meta, model)
        window = Window.of(model, window_unit, start, end)
        if scale == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(patch_classifier_guided(model, est, float(scale), window))


class NoiseAwarenessCFGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuider",
            display_name="Noise Awareness Guider (with CFG)",
            category=CATEGORY,
            description="A GUIDER for SamplerCustomAdvanced: CFG plus classifier-free Noise Awareness Guidance, "
                        "with explicit control of how the branches are batched. On a stock checkpoint set null_branch "
                        "to 'from estimator' and connect a noise-level estimator.",
            inputs=[trained_model_input(),
                    io.Conditioning.Input("positive", tooltip="what the image should show"),
                    io.Conditioning.Input("negative", tooltip="what it should not show (CFG's unconditional branch)"),
                    io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="classifier-free guidance scale, as in KSampler; 1 = no CFG (NAG alone)"),
                    *_nag_inputs(),
                    io.Combo.Input("batching", options=BATCHING, default=BATCHING[0],
                                   tooltip="one forward: cond, uncond and null branches in one batch (fastest); "
                                           "the others trade speed for memory"),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, positive, negative, cfg, scale, variant, window_unit, start, end,
                null_timestep_source, null_timestep, batching, scale_rule=SCALE_RULES[0], null_branch=NULL_BRANCHES[0],
                estimator=None, levels=1):
        nag = nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep,
                         scale_rule=scale_rule, null_branch=null_branch, estimator=estimator, levels=levels)
        g = NagGuider(model, nag, batching)
        g.set_conds(positive, negative)
        g.set_cfg(cfg)
        return io.NodeOutput(g)


class NoiseAwarenessKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessKSampler",
            display_name="KSampler (Noise Awareness)",
            category=CATEGORY,
            description="KSampler with classifier-free Noise Awareness Guidance built in: the same image as the "
                        "classifier-free node followed by a KSampler with the same settings; scale 0 is the plain KSampler. "
                        "On a stock checkpoint set null_branch to 'from estimator' and connect a noise-level estimator.",
            inputs=[trained_model_input(),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                                 tooltip="the random seed used to create the noise"),
                    io.Int.Input("steps", default=20, min=1, max=10000, tooltip="number of sampling steps"),
                    io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="classifier-free guidance scale; 1 = no CFG (NAG alone)"),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="sampling algorithm"),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="noise schedule over the steps"),
                    io.Conditioning.Input("positive", tooltip="what the image should show"),
                    io.Conditioning.Input("negative", tooltip="what it should not show (CFG's unconditional branch)"),
                    io.Latent.Input("latent_image", tooltip="the latent to denoise (empty latent for txt2img)"),
                    io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                                   tooltip="how much to denoise; below 1 keeps the input's structure (img2img). "
                                           "The guidance window still counts the steps actually sampled"),
                    *_nag_inputs(),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Latent.Output(tooltip="the denoised latent")],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                scale, variant, window_unit, start, end, null_timestep_source, null_timestep, scale_rule=SCALE_RULES[0],
                null_branch=NULL_BRANCHES[0], estimator=None, levels=1):
        from nodes import common_ksampler  # ComfyUI's own KSampler body (its top-level nodes.py, not this pack's)

        if scale != 0:
            nag = nag_config(model, scale, variant, window_unit, start, end, null_timestep_source, null_timestep,
                             scale_rule=scale_rule, null_branch=null_branch, estimator=estimator, levels=levels)
            model = patch_classifier_free(model, nag)
        return io.NodeOutput(*common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                              latent_image, denoise=denoise))
