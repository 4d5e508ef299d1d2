"""Shared node inputs and the error wrapper (bad input -> one clear message in the UI)."""
from __future__ import annotations

import functools

from comfy_api.latest import io

from ..comfy_nag.files import WeightFileError
from .hooks import NoiseAwarenessError

CATEGORY = "sampling/noise_awareness"
LOADERS = "loaders/noise_awareness"
Estimator = io.Custom("NOISE_LEVEL_ESTIMATOR")
ShiftTrace = io.Custom("NOISE_SHIFT_TRACE")


def model_input(tooltip: str):
    return io.Model.Input("model", tooltip=tooltip)


def window_inputs() -> list:
    return [
        io.Combo.Input("window_unit", options=["percent", "sigma"], default="percent",
                       tooltip="percent: start/end are fractions of the steps the sampler actually runs (0 = its first "
                               "step, 1 = its last; at denoise < 1 too). sigma: start is the high (noisy) sigma, end the low one."),
        io.Float.Input("start", default=0.0, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance starts (percent 0..1, or the high sigma)"),
        io.Float.Input("end", default=1.0, min=0.0, max=10000.0, step=0.01,
                       tooltip="where guidance ends (percent 0..1, or the low sigma)"),
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
