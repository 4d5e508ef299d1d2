"""The methods the studies compare, in one table: a method name plus knobs -> what the sampler runs.

Knobs (a dict; missing ones take :data:`DEFAULT_KNOBS`):

* ``cfg`` - CFG scale (ComfyUI convention, 1 = off);
* ``nag_cf`` - classifier-free NAG scale alone; ``nag_cf_cfg`` - its scale on top of CFG
  (default: ``nag_cf``);
* ``window`` - the lowest log-SNR at which NAG-CF and NAG-CG act (they act from there to the end
  of sampling; -99 = everywhere);
* ``nag_profile`` - for ``nag_cf_cal``: a ``comfy_nag.scale_profiles.ScaleProfile`` (per-level scale,
  calibrated on forward states; ``nag_cf_cal`` runs at scale 1 times it, no tuned knob);
* ``nag_cf_est`` - classifier-free NAG with the null branch from the noise-level estimator's posterior
  (``comfy_nag.posterior_null``: no fine-tuning), its scale; ``null_levels`` - its conditional evaluations
  per null branch (1 = the posterior mean);
* ``nag_cg`` - classifier-guided NAG scale; ``eps_scaling`` - epsilon-scaling factor;
  ``time_shift`` - the time-shift sampler's clip, log-SNR units.
"""
from __future__ import annotations

import torch

from comfy_nag.guidance import Guidance, Variant
from comfy_nag.null_branch import EstimatorNull
from comfy_nag.samplers import time_shift_level_fn
from comfy_nag.schedules import Schedule

METHODS = ("baseline", "cfg", "nag_cf", "nag_cf+cfg", "nag_cf+cfg_B", "nag_cg", "eps_scaling", "time_shift")
ABLATIONS = ("nag_cf_full",)  # NAG-CF over the whole noise range (no window)
CALIBRATED = ("nag_cf_cal",)  # NAG-CF with a per-level scale (needs knobs["nag_profile"])
ESTIMATOR_NULL = ("nag_cf_est",)  # NAG-CF on any network: the null branch from the estimator's posterior
DEFAULT_KNOBS = {"cfg": 1.5, "nag_cf": 0.5, "window": 0.0, "nag_cg": 1.0, "eps_scaling": 1.005, "time_shift": 0.1,
                 "nag_cf_est": 1.0, "null_levels": 1}
# One colour per method in every figure of every study (no two alike; grey is kept for forward states).
COLORS = {"baseline": "#1f77b4", "nag_cf": "#d62728", "cfg": "#2ca02c", "nag_cf+cfg": "#9467bd",
          "nag_cf+cfg_B": "#ff7f0e", "nag_cg": "#8c564b", "eps_scaling": "#e377c2", "time_shift": "#17becf",
          "nag_cf_full": "#bcbd22", "nag_cf_cal": "#7f3b08", "nag_cf_est": "#393b79"}


def nag_window(schedule: Schedule, min_logsnr: float) -> tuple[float, float]:
    """Sampling-sigma window ``(0, sigma(min_logsnr))``: from that log-SNR to the end of sampling."""
    return 0.0, float(schedule.sigma_from_logsnr(torch.tensor(min_logsnr)))


def setup(method: str, schedule: Schedule, knobs: dict, data_var: float | None = None, estimator=None):
    """``(Guidance, level_fn)`` for ``method``; ``data_var`` (per-dimension data variance) for time_shift; ``estimator``
    (the noise-level estimator) for nag_cf_est."""
    k = {**DEFAULT_KNOBS, **knobs}
    win = nag_window(schedule, k["window"])
    w, w_cfg, c = k["nag_cf"], k.get("nag_cf_cfg", k["nag_cf"]), k["cfg"]
    table = {
        "baseline": lambda: Guidance(),
        "cfg": lambda: Guidance(cfg_scale=c),
        "nag_cf": lambda: Guidance(nag_scale=w, nag_window=win),
        "nag_cf_full": lambda: Guidance(nag_scale=w),
        "nag_cf_cal": lambda: Guidance(nag_scale=1.0, nag_window=win, nag_profile=_profile(k)),
        "nag_cf_est": lambda: Guidance(nag_scale=k["nag_cf_est"], nag_window=win,
                                       null=EstimatorNull.for_schedule(estimator, schedule, int(k["null_levels"]))),
        "nag_cf+cfg": lambda: Guidance(cfg_scale=c, nag_scale=w_cfg, nag_window=win),
        "nag_cf+cfg_B": lambda: Guidance(cfg_scale=c, nag_scale=w_cfg, nag_window=win, variant=Variant.B),
        "nag_cg": lambda: Guidance(cg_scale=k["nag_cg"], cg_window=win),
        "eps_scaling": lambda: Guidance(eps_scale=k["eps_scaling"]),
        "time_shift": lambda: Guidance(),
    }
    if method not in table:
        raise ValueError(f"unknown method {method!r}; expected one of "
                         f"{', '.join(METHODS + ABLATIONS + CALIBRATED + ESTIMATOR_NULL)}")
    level_fn = time_shift_level_fn(schedule.space, data_var, k["time_shift"]) if method == "time_shift" else None
    return table[method](), level_fn


def _profile(k: dict):
    if k.get("nag_profile") is None:
        raise ValueError("nag_cf_cal needs knobs['nag_profile'] (a ScaleProfile calibrated on forward states)")
    return k["nag_profile"]
