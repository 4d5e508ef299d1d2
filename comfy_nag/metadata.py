"""The metadata comfy-nag writes into safetensors files, and how to read it back.

One schema for every file the trainer saves and every loader reads (values are strings; JSON
where structured):

=================================  ==========================================================
key                                meaning
=================================  ==========================================================
``nag.format``                     ``"comfy-nag/1"``
``nag.kind``                       ``diffusion_model`` | ``checkpoint`` | ``lora`` |
                                   ``reference_model`` | ``noise_level_estimator``
``nag.family``                     ``sd1``, ``sdxl``, ``sd3``, ``flux``, ``dit``, ``sit``, ...
``nag.prediction``                 ``eps`` | ``v`` | ``velocity`` | ``x0``
``nag.schedule``                   JSON of ``Schedule.describe()``
``nag.null_timestep``              the null timestep **in network units** (what the diffusion
                                   network's timestep input receives), e.g. ``-1000``
``nag.null_mode``                  ``sentinel`` (only mode loadable by stock ComfyUI loaders)
``nag.noise_condition_dropout_rate``  training rate, e.g. ``0.1``
``nag.base_model_hash``            sha256 of the base file the fine-tune started from
``nag.scale_profile``              (fine-tunes with ``monitor.estimator``) JSON ``{"logsnr": [...],
                                   "value": [...]}``: the per-level NAG-scale multiplier calibrated
                                   to the estimator at the final readout (docs/method.md §3)
``nag.latent_channels``            (estimators) channels of the latent space
``nag.estimator``                  (estimators) JSON: shape, bins, width, depth
``nag.reading_calibration``        (estimators) JSON ``{"logsnr", "bias", "spread", "clean"}``: what the estimator
                                   reads on forward states per level, measured when it was trained (the closed-loop
                                   NAG scale's targets, auto_scale.py)
=================================  ==========================================================
"""
from __future__ import annotations

import hashlib
import json
import os

from .auto_scale import ReadingCalibration
from .scale_profiles import ScaleProfile
from .schedules import Schedule, schedule_from_description

FORMAT = "comfy-nag/1"
KINDS = ("diffusion_model", "checkpoint", "lora", "reference_model", "noise_level_estimator")


def nag_metadata(kind: str, family: str, prediction: str, schedule=None, null_timestep: float | None = None, *,
                 noise_condition_dropout_rate: float | None = None, base_model_hash: str | None = None,
                 **extra) -> dict[str, str]:
    """Build the metadata dict (all values strings)."""
    if kind not in KINDS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {', '.join(KINDS)}")
    meta = {"nag.format": FORMAT, "nag.kind": kind, "nag.family": family, "nag.prediction": prediction}
    if schedule is not None:
        meta["nag.schedule"] = json.dumps(schedule.describe() if hasattr(schedule, "describe") else schedule)
    if null_timestep is not None:
        meta["nag.null_timestep"] = repr(float(null_timestep))
        meta["nag.null_mode"] = "sentinel"
    if noise_condition_dropout_rate is not None:
        meta["nag.noise_condition_dropout_rate"] = repr(float(noise_condition_dropout_rate))
    if base_model_hash:
        meta["nag.base_model_hash"] = base_model_hash
    for k, v in extra.items():
        meta[k if k.startswith("nag.") else f"nag.{k}"] = v if isinstance(v, str) else json.dumps(v)
    return meta


def null_timestep(meta: dict[str, str]) -> float | None:
    """The null timestep (network units) a file declares, or None when it declares none."""
    v = meta.get("nag.null_timestep")
    if v is None:
        return None
    try:
        out = float(v)
    except ValueError:
        raise ValueError(f"metadata nag.null_timestep={v!r} is not a number; the file's metadata is damaged") from None
    if out != out or abs(out) == float("inf"):
        raise ValueError(f"metadata nag.null_timestep={v!r} is not finite; the file's metadata is damaged")
    return out


def scale_profile(meta: dict[str, str]) -> ScaleProfile | None:
    """The per-level NAG-scale profile a file declares (``nag.scale_profile``, written by the trainer's
    final readout), or None when it declares none."""
    return _parsed(meta, "nag.scale_profile", ScaleProfile.from_json,
                   "re-export the file with the trainer, or use the constant scale rule")


def reading_calibration(meta: dict[str, str]) -> ReadingCalibration | None:
    """The reading calibration an estimator file declares (``nag.reading_calibration``, written by the trainer), or
    None when it declares none (files trained before it existed)."""
    return _parsed(meta, "nag.reading_calibration", ReadingCalibration.from_json, "retrain the estimator with the trainer")


def _parsed(meta: dict[str, str], key: str, parse, fix: str):
    """``parse`` of the JSON value of ``key`` (None when the file has no such key); ``ValueError`` naming the key and
    ``fix`` when the value is damaged."""
    v = meta.get(key)
    if v is None:
        return None
    try:
        return parse(json.loads(v))
    except ValueError as e:
        raise ValueError(f"metadata {key} is damaged ({e}); {fix}") from None


def schedule(meta: dict[str, str]) -> Schedule | None:
    """The schedule a file declares (``nag.schedule``, JSON of ``Schedule.describe()``), or None when it
    declares none; ``ValueError`` naming the key when the value is damaged."""
    v = meta.get("nag.schedule")
    if v is None:
        return None
    try:
        d = json.loads(v)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {v[:60]!r}")
        return schedule_from_description(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"metadata nag.schedule is damaged ({e}); re-export the file with the trainer") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def describe(meta: dict[str, str]) -> str:
    """Human-readable summary of a file's NAG metadata (``python -m training inspect``)."""
    if not any(k.startswith("nag.") for k in meta):
        return "no comfy-nag metadata (not written by comfy-nag's trainer, or stripped by another tool)"
    lines = []
    for k in sorted(meta):
        if k.startswith("nag."):
            lines.append(f"{k:34s} {meta[k]}")
    return "\n".join(lines)
