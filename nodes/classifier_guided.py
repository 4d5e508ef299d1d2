"""Classifier-guided NAG as a model patch: a post-CFG function adding the gradient of a noise-level
estimator's log-likelihood (``comfy_nag.classifier_guidance``); works on unmodified checkpoints."""
from __future__ import annotations

from ..comfy_nag import patching
from ..comfy_nag.classifier_guidance import classifier_correction
from .configure import NagConfig
from .model_info import ATTACH_CONFIG, estimator_on, net_scale


def patch_classifier_guided(model, cfg: NagConfig):
    """Clone ``model`` with classifier-guided NAG (gradient of ``cfg.estimator``'s log-likelihood)."""
    m = model.clone()

    def post_cfg(args):
        denoised, sigma, x = args["denoised"], args["sigma"], args["input"]
        if not cfg.window.active(sigma, args["model_options"]):
            return denoised
        patching.check_finite(x, "Noise Awareness Guidance (classifier-guided)")
        ms = args["model"].model_sampling
        sig = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        est = estimator_on(cfg.estimator, x.device)
        return denoised + classifier_correction(est, x, sig, cfg.space, net_scale(ms, sig), cfg.scale)

    m.set_model_sampler_post_cfg_function(post_cfg)
    m.set_attachments(ATTACH_CONFIG, {"window": cfg.window})
    return m
