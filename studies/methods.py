"""The methods the studies compare, in one table (:data:`TABLE`): per method, the knobs its row records and how it
builds what the sampler runs (its Guidance, and for the time-shift sampler its level function).

Knobs (a dict; missing ones take :data:`DEFAULT_KNOBS`, :func:`values`):

* ``cfg`` - CFG scale (ComfyUI convention, 1 = off);
* ``nag_cf`` - classifier-free NAG scale alone; ``nag_cf_cfg`` - its scale on top of CFG
  (default: ``nag_cf``);
* ``window`` - the lowest log-SNR at which NAG-CF and NAG-CG act (they act from there to the end
  of sampling; -99 = everywhere);
* ``nag_profile`` - for ``nag_cf_cal``: a ``comfy_nag.scale_profiles.ScaleProfile`` (per-level scale,
  calibrated on forward states); ``nag_cf_cal`` - the scale it multiplies (1: the profile as calibrated);
* ``nag_cf_est`` - classifier-free NAG with the null branch from the noise-level estimator's posterior
  (``comfy_nag.posterior_null``: no fine-tuning), its scale; ``null_levels`` - its conditional evaluations
  per null branch (1 = the posterior mean);
* ``nag_cg`` - classifier-guided NAG scale; ``eps_scaling`` - epsilon-scaling factor;
  ``time_shift`` - the time-shift sampler's clip, log-SNR units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from comfy_nag.auto_scale import AutoScale, ReadingCalibration
from comfy_nag.guidance import Guidance, Variant
from comfy_nag.null_branch import EstimatorNull
from comfy_nag.samplers import time_shift_level_fn
from comfy_nag.schedules import Schedule

METHODS = ("baseline", "cfg", "nag_cf", "nag_cf+cfg", "nag_cf+cfg_B", "nag_cg", "eps_scaling", "time_shift")
ABLATIONS = ("nag_cf_full",)  # NAG-CF over the whole noise range (no window)
CALIBRATED = ("nag_cf_cal",)  # NAG-CF with a per-level scale (needs knobs["nag_profile"])
ESTIMATOR_NULL = ("nag_cf_est",)  # NAG-CF on any network: the null branch from the estimator's posterior
# the same with the closed-loop scale (comfy_nag.auto_scale: no tuned knob; ``auto_scale`` multiplies it, default 1)
AUTO = ("nag_cf_auto", "nag_cf_est_auto", "nag_cg_auto")
AUTO_EPS = "nag_cf_est_auto+eps"  # the estimator route's closed loop composed with epsilon scaling
EXACT_TERM = "nag_exact_term"  # the testbed's ceiling: the study adds the exact NAG term to the plain network
DEFAULT_KNOBS = {"cfg": 1.5, "nag_cf": 0.5, "window": 0.0, "nag_cg": 1.0, "eps_scaling": 1.005, "time_shift": 0.1,
                 "nag_cf_est": 1.0, "null_levels": 1, "nag_cf_cal": 1.0, "auto_scale": 1.0}
# One colour per method in every figure of every study (no two alike; grey is kept for forward states).
COLORS = {"baseline": "#1f77b4", "nag_cf": "#d62728", "cfg": "#2ca02c", "nag_cf+cfg": "#9467bd",
          "nag_cf+cfg_B": "#ff7f0e", "nag_cg": "#8c564b", "eps_scaling": "#e377c2", "time_shift": "#17becf",
          "nag_cf_full": "#bcbd22", "nag_cf_cal": "#7f3b08", "nag_cf_est": "#393b79", "nag_cf_auto": "#fb9a99",
          "nag_cf_est_auto": "#6b6ecf", "nag_cg_auto": "#c49c94", "nag_cf_est_auto+eps": "#e7969c"}


@dataclass(frozen=True)
class On:
    """What a method is set up on: the ``schedule``, the NAG ``window`` (sampling sigmas, :func:`nag_window`), the
    per-dimension data variance ``data_var`` (time_shift) and the noise-level ``estimator`` (nag_cf_est)."""

    schedule: Schedule
    window: tuple[float, float]
    data_var: float | None
    estimator: object
    calibration: ReadingCalibration | None = None  # the estimator's readings of forward states (the *_auto methods)


@dataclass(frozen=True)
class Method:
    """One method: ``knobs``, the knobs a row of it records, in that order (NAG-CG's row leaves out the NAG window
    it acts in; ``studies.runs.RowFormat`` names them); ``guidance(k, on)``: its Guidance from the knob values
    ``k`` (:func:`values`) on ``on`` (:class:`On`); ``level_fn(k, on)``: its sampler level function (None: the
    schedule's own)."""

    knobs: tuple[str, ...]
    guidance: Callable[[dict, On], Guidance]
    level_fn: Callable[[dict, On], Callable] | None = None


class Setup(NamedTuple):
    """What the sampler runs for a method: the Guidance and the level function (None: the schedule's own)."""

    guidance: Guidance
    level_fn: Callable | None


def _cf_cfg(variant: Variant) -> Method:
    return Method(("nag_cf_cfg", "window", "cfg"), lambda k, on: Guidance(cfg_scale=k["cfg"], nag_scale=k["nag_cf_cfg"],
                                                                          nag_window=on.window, variant=variant))


def _estimator_null(k: dict, on: On) -> Guidance:
    null = EstimatorNull.for_schedule(on.estimator, on.schedule, int(k["null_levels"]))
    return Guidance(nag_scale=k["nag_cf_est"], nag_window=on.window, null=null)


def _auto(on: On) -> AutoScale:
    if on.estimator is None or on.calibration is None:
        raise ValueError("the *_auto methods need the noise-level estimator and its reading calibration")
    return AutoScale(on.estimator, on.calibration)


def _estimator_null_auto(k: dict, on: On, eps_scale: float = 1.0) -> Guidance:
    null = EstimatorNull.for_schedule(on.estimator, on.schedule, int(k["null_levels"]))
    return Guidance(nag_scale=k["auto_scale"], nag_window=on.window, null=null, rule=_auto(on), eps_scale=eps_scale)


def _profile(k: dict):
    if k.get("nag_profile") is None:
        raise ValueError("nag_cf_cal needs knobs['nag_profile'] (a ScaleProfile calibrated on forward states)")
    return k["nag_profile"]


TABLE = {
    "baseline": Method((), lambda k, on: Guidance()),
    "cfg": Method(("cfg",), lambda k, on: Guidance(cfg_scale=k["cfg"])),
    "nag_cf": Method(("nag_cf", "window"), lambda k, on: Guidance(nag_scale=k["nag_cf"], nag_window=on.window)),
    "nag_cf_full": Method(("nag_cf",), lambda k, on: Guidance(nag_scale=k["nag_cf"])),
    "nag_cf_cal": Method(("nag_cf_cal", "nag_profile", "window"),
                         lambda k, on: Guidance(nag_scale=k["nag_cf_cal"], nag_window=on.window, rule=_profile(k))),
    "nag_cf_est": Method(("nag_cf_est", "window", "null_levels"), _estimator_null),
    "nag_cf+cfg": _cf_cfg(Variant.A),
    "nag_cf+cfg_B": _cf_cfg(Variant.B),
    "nag_cg": Method(("nag_cg",), lambda k, on: Guidance(cg_scale=k["nag_cg"], cg_window=on.window)),
    "eps_scaling": Method(("eps_scaling",), lambda k, on: Guidance(eps_scale=k["eps_scaling"])),
    "time_shift": Method(("time_shift",), lambda k, on: Guidance(),
                         lambda k, on: time_shift_level_fn(on.schedule.space, on.data_var, k["time_shift"])),
    "nag_cf_auto": Method(("auto_scale", "window"), lambda k, on: Guidance(nag_scale=k["auto_scale"], nag_window=on.window,
                                                                          rule=_auto(on))),
    "nag_cf_est_auto": Method(("auto_scale", "window", "null_levels"), _estimator_null_auto),
    # composed with epsilon scaling at its own tuned factor (ComfyUI core's free fix): does the pair beat either?
    "nag_cf_est_auto+eps": Method(("auto_scale", "window", "null_levels", "eps_scaling"),
                                  lambda k, on: _estimator_null_auto(k, on, k["eps_scaling"])),
    "nag_cg_auto": Method(("auto_scale",), lambda k, on: Guidance(cg_scale=k["auto_scale"], cg_window=on.window,
                                                                 rule=_auto(on))),
    EXACT_TERM: Method((), lambda k, on: Guidance()),  # the study supplies the denoiser (toolkit.exact_nag)
}


def nag_window(schedule: Schedule, min_logsnr: float) -> tuple[float, float]:
    """Sampling-sigma window ``(0, sigma(min_logsnr))``: from that log-SNR to the end of sampling."""
    return 0.0, float(schedule.sigma_from_logsnr(torch.tensor(min_logsnr)))


def values(knobs: dict) -> dict:
    """``knobs`` with the defaults filled in (:data:`DEFAULT_KNOBS`; ``nag_cf_cfg`` defaults to ``nag_cf``)."""
    k = {**DEFAULT_KNOBS, **knobs}
    k.setdefault("nag_cf_cfg", k["nag_cf"])
    return k


def setup(method: str, schedule: Schedule, knobs: dict, data_var: float | None = None, estimator=None,
          calibration: ReadingCalibration | None = None) -> Setup:
    """What the sampler runs for ``method`` (:data:`TABLE`) with ``knobs``; ``data_var`` (per-dimension data
    variance) for time_shift; ``estimator`` (the noise-level estimator) for nag_cf_est, NAG-CG and the *_auto methods,
    with its ``calibration`` for the latter."""
    if method not in TABLE:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(TABLE)}")
    k = values(knobs)
    on, m = On(schedule, nag_window(schedule, k["window"]), data_var, estimator, calibration), TABLE[method]
    return Setup(m.guidance(k, on), m.level_fn(k, on) if m.level_fn else None)


def setup_for(method: str, trained, knobs: dict) -> Setup:
    """:func:`setup` on a study's trained family: anything with ``fam``, ``data_var`` and ``estimator`` (the testbed's
    ``toolkit.Trained``, the image benchmark's ``bench_images.Trained``)."""
    return setup(method, trained.fam.schedule, knobs, trained.data_var, trained.estimator,
                 getattr(trained, "calibration", None))
