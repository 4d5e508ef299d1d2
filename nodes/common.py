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
