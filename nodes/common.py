"""Shared node inputs and the error wrapper (bad input -> one clear message in the UI)."""
from __future__ import annotations

import functools

from comfy_api.latest import io

from ..comfy_nag.files import WeightFileError
from .model_info import NoiseAwarenessError

CATEGORY = "sampling/noise_awareness"
LOADERS = "loaders/noise_awareness"
Estimator = io.Custom("NOISE_LEVEL_ESTIMATOR")
ShiftTrace = io.Custom("NOISE_SHIFT_TRACE")


def model_input(tooltip: str):
    return io.Model.Input("model", tooltip=tooltip)


def window_inputs() -> list:
    """Guidance window widgets.  The default, signal 0.5 -> 1 (log-SNR >= 0: the part of sampling where the
    state holds more signal than noise), is what the project's studies support; docs/comfyui.md."""
    return [
        io.Combo.Input("window_unit", options=["signal", "percent", "sigma"], default="signal",
                       tooltip="signal: start/end are the share of signal in the state, SNR/(1+SNR): 0 = pure noise, "
                               "0.5 = as much signal as noise, 1 = clean; the same on every model. percent: fractions "
                               "of the steps the sampler actually runs (0 = its first step, 1 = its last; at denoise < 1 "
                               "too). sigma: start is the high (noisy) sigma, end the low one."),
        io.Float.Input("start", default=0.5, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance starts (signal or percent 0..1, or the high sigma); default: from "
                               "signal 0.5, where the studies found NAG helps"),
        io.Float.Input("end", default=1.0, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance ends (signal or percent 0..1, or the low sigma)"),
    ]


def clear_errors(fn):
    """Turn our ValueErrors into a single readable message (ComfyUI shows exception text in the UI)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (NoiseAwarenessError, WeightFileError, FloatingPointError) as e:
            raise NoiseAwarenessError(f"Noise Awareness: {e}") from None
        except ValueError as e:
            if "Noise Awareness" in str(e):
                raise
            raise NoiseAwarenessError(f"Noise Awareness: {e}") from None

    return run
