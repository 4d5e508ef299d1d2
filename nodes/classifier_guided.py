"""Classifier-guided NAG as a model patch: a post-CFG function adding the gradient of a noise-level
estimator's log-likelihood (``comfy_nag.classifier_guidance``); works on unmodified checkpoints."""
from __future__ import annotations

from ..comfy_nag import patching
from ..comfy_nag.auto_scale import AutoScale
from ..comfy_nag.classifier_guidance import classifier_correction
from .configure import Evaluation, NagConfig, scale_trace
from .model_info import ATTACH_CONFIG, estimator_on, net_scale


def patch_classifier_guided(model, cfg: NagConfig):
    """Clone ``model`` with classifier-guided NAG (gradient of ``cfg.estimator``'s log-likelihood)."""
    m = model.clone()

    def post_cfg(args):
        denoised, sigma, x = args["denoised"], args["sigma"], args["input"]
        if not cfg.window.active(sigma, args["model_options"]):
            return denoised
        patching.check_finite(x, "Noise Awareness Guidance (classifier-guided)")
        ev = Evaluation.of(args)
        sig, est = ev.sigmas(), estimator_on(cfg.estimator, x.device)
        c = net_scale(ev.model_sampling, sig)
        if isinstance(cfg.rule, AutoScale):  # the estimator's term at scale 1, its scale set per sample by the rule
            return cfg.added(denoised, classifier_correction(est, x, sig, cfg.space, c, 1.0), ev)
        return denoised + classifier_correction(est, x, sig, cfg.space, c, cfg.scale_at(sigma, denoised))

    m.set_model_sampler_post_cfg_function(post_cfg)
    m.set_attachments(ATTACH_CONFIG, {"window": cfg.window, "scale_trace": scale_trace(cfg)})
    return m
