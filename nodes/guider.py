"""``NagGuider``: a CFGGuider that runs classifier-free NAG with explicit branch batching.

For SamplerCustomAdvanced.  Same math as the classifier-free model patch (classifier_free.py): the
CFG result plus ``NagConfig.guided``; the null branch (null_branch.py) gives the null copies and mixes their
outputs, and their rows get their network times through the same APPLY_MODEL wrapper.  At scale 0 the node
builds ComfyUI's own CFGGuider instead (configure.py decides).
Mirrors ``comfy.samplers.sampling_function``, so other packs' ``sampler_calc_cond_batch_function``
(cond/uncond only: the null rows never go through it), pre-CFG and post-CFG functions still run.
"""
from __future__ import annotations

import math

import comfy.samplers
import torch

from ..comfy_nag import patching
from .classifier_free import flagged, with_null_times
from .configure import Evaluation, NagConfig
from .inputs import Batching
from .null_branch import chunk_values, copies, labels, prepare


class NagGuider(comfy.samplers.CFGGuider):
    """CFGGuider with classifier-free NAG (``cfg``), its branches batched as ``batching`` says."""

    def __init__(self, model_patcher, cfg: NagConfig, batching: Batching):
        super().__init__(with_null_times(model_patcher, cfg))
        self.nag, self.batching = cfg, batching

    def _calc(self, conds, x, sigma, mo, null_values=None):
        """``calc_cond_batch`` over ``conds``; ``null_values``: ``{chunk label: null value}`` of the null copies."""
        if null_values:
            mo = flagged(mo, null_values)
        return comfy.samplers.calc_cond_batch(self.inner_model, conds, x, sigma, mo)

    def branches(self, conds, extra, values: tuple, x, sigma, mo) -> tuple[list, list]:
        """Predictions of ``[cond, uncond]`` and of the null copies ``extra`` (chunk values ``values``), batched as
        configured."""
        n = len(extra)
        hook = mo.get("sampler_calc_cond_batch_function")
        if hook is not None:
            main = hook({"conds": conds, "input": x, "sigma": sigma, "model": self.inner_model, "model_options": mo})
            return main, self._calc(extra, x, sigma, mo, labels(values, 0, n)) if n else []
        if self.batching is Batching.ONE_FORWARD:
            out = self._calc(conds + extra, x, sigma, mo, labels(values, len(conds), n) if n else None)
            return out[:2], out[2:]
        if self.batching is Batching.MAIN_THEN_NULL:
            return self._calc(conds, x, sigma, mo), self._calc(extra, x, sigma, mo, labels(values, 0, n)) if n else []
        main = [self._calc([c], x, sigma, mo)[0] if c is not None else torch.zeros_like(x) for c in conds]
        return main, [self._calc([c], x, sigma, mo, labels(values, 0, 1, j))[0] for j, c in enumerate(extra)]

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        pos, neg = self.conds.get("positive"), self.conds.get("negative")
        cfg1 = math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False)
        uncond = None if cfg1 else neg
        on = self.nag.window.active(timestep, model_options)
        step = prepare(self.nag.null, self.inner_model, x, timestep) if on else None
        extra = copies(step, self.nag.null_conds(pos, uncond)) if on else []
        values = chunk_values(step, self.nag.null) if on else ()
        main, null_out = self.branches([pos, uncond], extra, values, x, timestep, model_options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            main = fn({"conds": [pos, uncond], "conds_out": main, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                       "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        res = comfy.samplers.cfg_function(self.inner_model, main[0], main[1], self.cfg, x, timestep,
                                          model_options=model_options, cond=pos, uncond=uncond)
        if not on:
            return res
        patching.check_finite(x, "Noise Awareness Guider")
        ev = Evaluation(x, timestep, self.inner_model.model_sampling, model_options)
        return self.nag.guided(res, self.cfg, main[0], main[1], step.collect(null_out), ev)
