"""Guidance nodes: the classifier-free and classifier-guided patches, the guider, and the one-node sampler.

Each node parses its NAG inputs once (``inputs.NagInputs``), has ``configure.configure`` check them and decide
scale 0, and installs the patch from classifier_free.py, classifier_guided.py or guider.py.  ``execute`` takes the
inputs by keyword, as ComfyUI passes them.
"""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from .classifier_free import patch_classifier_free
from .classifier_guided import patch_classifier_guided
from .common import CATEGORY, Estimator, clear_errors, model_input
from .configure import Route, configure
from .guider import NagGuider
from .inputs import (DEFAULT, Batching, NagInputs, NullBranchChoice, ScaleRule, nag_inputs, null_branch_inputs, options,
                     parse, scale_rule_input, window_inputs)


def trained_model_input():
    return model_input("a model fine-tuned with noise-condition dropout (load it with a Noise Awareness loader); "
                       "with a stock checkpoint set null_branch to 'from estimator' and connect an estimator")


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
                    *nag_inputs(),
                    io.Boolean.Input("batched", default=DEFAULT.batched,
                                     tooltip="run the null branch in the same forward as cond/uncond; turn off if another "
                                             "pack's model wrapper breaks with extra batch entries"),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, **inputs):
        cfg = configure(model, NagInputs.parse(inputs))
        return io.NodeOutput(model if cfg is None else patch_classifier_free(model, cfg))


class NoiseAwarenessAnyCheckpoint(io.ComfyNode):
    """The estimator route with only the inputs that matter to it: classifier-free NAG, the null branch from the
    estimator, the scale set by the estimator (auto), the default window; ``strength`` multiplies that scale."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessGuidanceAnyCheckpoint",
            display_name="Noise Awareness Guidance (any checkpoint)",
            category=CATEGORY,
            description="Noise Awareness Guidance on any stock checkpoint, set up for you: the null branch and the "
                        "strength at each step come from a noise-level estimator trained for the model's latent space "
                        "(one extra model evaluation per step late in sampling). The classifier-free node has every "
                        "setting.",
            inputs=[model_input("any model of the estimator's latent space; it needs no fine-tuning"),
                    Estimator.Input("estimator", tooltip="from 'Load Noise-Level Estimator'; trained for this model's latent space"),
                    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="multiplies the strength the estimator sets at each step (1 = as it says); "
                                           "0 = off (model returned unchanged)")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, estimator, strength):
        nag = NagInputs(scale=float(strength), scale_rule=ScaleRule.AUTO, null_branch=NullBranchChoice.ESTIMATOR,
                        estimator=estimator)
        cfg = configure(model, nag)
        return io.NodeOutput(model if cfg is None else patch_classifier_free(model, cfg))


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
                                   tooltip="classifier guidance scale; 0 = off. Start with 0.5, or 1.0 with scale_rule auto."),
                    *window_inputs(),
                    scale_rule_input()],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, **inputs):
        cfg = configure(model, NagInputs.parse(inputs), Route.CLASSIFIER_GUIDED)
        return io.NodeOutput(model if cfg is None else patch_classifier_guided(model, cfg))


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
                    *nag_inputs(),
                    io.Combo.Input("batching", options=options(Batching), default=Batching.ONE_FORWARD.value,
                                   tooltip="one forward: cond, uncond and null branches in one batch (fastest); "
                                           "the others trade speed for memory"),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, positive, negative, cfg, batching, **inputs):
        nag = configure(model, NagInputs.parse(inputs))
        batching = parse(Batching, batching, "batching")
        g = comfy.samplers.CFGGuider(model) if nag is None else NagGuider(model, nag, batching)
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
                    *nag_inputs(),
                    scale_rule_input(),
                    *null_branch_inputs()],
            outputs=[io.Latent.Output(tooltip="the denoised latent")],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, positive, negative, latent_image, **inputs):
        from nodes import common_ksampler  # ComfyUI's own KSampler body (its top-level nodes.py, not this pack's)

        nag = configure(model, NagInputs.parse(inputs))
        if nag is not None:
            model = patch_classifier_free(model, nag)
        plain = [inputs[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")]
        return io.NodeOutput(*common_ksampler(model, *plain, positive, negative, latent_image, denoise=inputs["denoise"]))
