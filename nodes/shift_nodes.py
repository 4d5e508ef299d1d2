"""Noise-shift recorder and plot.

The recorder is a MODEL patch: a keyed ``SAMPLER_SAMPLE`` wrapper (:class:`Recorder`) wraps the step callback
and reads each step's noise level (learned estimator or variance estimate); the plot node turns one or two
recorded runs into a plot IMAGE and a JSON STRING (``comfy_nag.shift_report``).
"""
from __future__ import annotations

import json

import comfy.model_management
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..comfy_nag import plots
from ..comfy_nag.schedules import Space
from ..comfy_nag.shift_report import ShiftRecording, shift_report
from .common import CATEGORY, Estimator, ShiftTrace, clear_errors, model_input
from .model_info import ATTACH_CONFIG, KEY, NoiseAwarenessError, check_estimator, estimator_on, net_scale, sampling


class ScaleReader:
    """Reads a closed-loop NAG patch's trace (``configure.scale_trace``) step by step: the scales it chose at the
    evaluation of each step's own sigma (a second-order sampler's extra evaluations are skipped)."""

    def __init__(self, trace: list | None):
        self.trace, self.seen = trace, 0
        if trace is not None:
            del trace[:]  # a new sampling run

    def at(self, sigma: float):
        if self.trace is None:
            return None
        new, self.seen = self.trace[self.seen:], len(self.trace)
        return next((w for s, w in new if abs(s - sigma) <= 1e-6 * max(1.0, sigma)), None)


class Recorder:
    """Trace handle: the SAMPLER_SAMPLE wrapper fills ``last`` on every sampling run of the model."""

    def __init__(self, estimator, data_variance: float, space: Space):
        self.estimator, self.data_variance, self.space, self.last = estimator, data_variance, space, None

    def readout(self, model_sampling, x, sigma):
        if self.estimator is None:
            return None
        s = sigma.reshape(1).to(x).expand(x.shape[0])
        est = estimator_on(self.estimator, x.device)
        return est.mean(net_scale(model_sampling, s).reshape(-1, *([1] * (x.dim() - 1))) * x)

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, *args, **kwargs):
        config = guider.model_patcher.get_attachment(ATTACH_CONFIG) or {}
        window = config.get("window")
        rec = ShiftRecording(self.space, self.data_variance, window=window.bounds(sigmas) if window else None,
                             readout="estimator" if self.estimator is not None else "variance")
        self.last = rec
        ms = guider.model_patcher.get_model_object("model_sampling")
        scales = ScaleReader(config.get("scale_trace"))

        def cb(i, x0, x, total):
            rec.add(i, float(sigmas[i]), x.float(), self.readout(ms, x.float(), sigmas[i]))
            chosen = scales.at(float(sigmas[i]))
            if chosen is not None:
                rec.add_scales(i, chosen)
            if callback is not None:
                callback(i, x0, x, total)

        return executor(guider, sigmas, extra_args, cb, *args, **kwargs)


class NoiseAwarenessShiftRecorder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessShiftRecorder",
            display_name="Noise Shift Recorder",
            category=CATEGORY,
            description="Records each sampler step's nominal noise level and the level estimated from the state "
                        "(learned estimator, or the training-free variance estimate). Put it right before the sampler; "
                        "feed the trace and the sampler's LATENT to 'Noise Shift Plot'.",
            inputs=[model_input("the model the sampler uses (after any guidance patch)"),
                    Estimator.Input("estimator", optional=True,
                                    tooltip="learned noise-level estimator; without it the training-free variance estimate is used"),
                    io.Float.Input("data_variance", default=1.0, min=1e-4, max=100.0, step=0.01,
                                   tooltip="variance of clean latents (training-free estimate only); ~1 for SD/SDXL/SD3/Flux latents")],
            outputs=[io.Model.Output(), ShiftTrace.Output(display_name="trace")],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, data_variance, estimator=None):
        from comfy.patcher_extension import WrappersMP

        space = sampling(model).space
        est = None
        if estimator is not None:
            est, meta = estimator
            check_estimator(est, meta, model)
        rec = Recorder(est, float(data_variance), space)
        m = model.clone()
        m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY + "_recorder", rec.sampler_sample)
        return io.NodeOutput(m, rec)


class NoiseAwarenessShiftPlot(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessShiftPlot",
            display_name="Noise Shift Plot",
            category=CATEGORY,
            description="Plots nominal vs estimated noise level per step (band: spread across the batch; shaded: guidance "
                        "window) for one or two recorded runs, and outputs the numbers as JSON.",
            inputs=[ShiftTrace.Input("trace", tooltip="the recorder's trace"),
                    io.Latent.Input("latent", tooltip="the sampler's output (makes the plot rerun with it)"),
                    io.String.Input("label", default="run A", tooltip="legend label of the first run"),
                    ShiftTrace.Input("trace_2", optional=True, tooltip="a second recorder's trace, to compare"),
                    io.Latent.Input("latent_2", optional=True, tooltip="the second sampler's output"),
                    io.String.Input("label_2", default="run B", optional=True, tooltip="legend label of the second run")],
            outputs=[io.Image.Output(display_name="plot"), io.String.Output(display_name="json")],
            is_output_node=True,
        )

    @classmethod
    @clear_errors
    def execute(cls, trace, latent, label, trace_2=None, latent_2=None, label_2="run B"):
        runs = [(trace, latent, label)] + ([(trace_2, latent_2, label_2)] if trace_2 is not None else [])
        pbar = comfy.utils.ProgressBar(len(runs) + 1)
        recs = []
        for t, lat, lab in runs:
            comfy.model_management.throw_exception_if_processing_interrupted()
            if t.last is None:
                raise NoiseAwarenessError(f"trace '{lab}' recorded no sampling run: connect the recorder's MODEL output "
                                          "to the sampler whose LATENT you feed here")
            if lat is not None and not torch.isfinite(lat["samples"]).all():
                raise NoiseAwarenessError(f"the latent of '{lab}' contains NaN/Inf: the sampling run diverged; "
                                          "lower the guidance scales or use more steps")
            recs.append((lab, t.last))
            pbar.update(1)
        report = shift_report(recs)
        fig = plots.shift_figure(report["plot_runs"], window=report["window_steps"], title="Noise shift: nominal vs estimated level")
        img = torch.from_numpy(np.asarray(plots.to_pil(fig), dtype=np.float32) / 255.0)[None]
        pbar.update(1)
        text = json.dumps(report["json"], indent=1)
        return io.NodeOutput(img, text, ui={**ui.PreviewImage(img, cls=cls).as_dict(), **ui.PreviewText(text).as_dict()})
