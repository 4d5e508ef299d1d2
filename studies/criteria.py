"""How the closed-loop scale (``*_auto`` methods, comfy_nag/auto_scale.py) reads against what a user could do instead,
over the settings (sampler, steps) of one network's rows: the baseline, the same guidance at a constant scale tuned
on the held-out seed, and epsilon scaling (ComfyUI core's free correction, its factor tuned on the held-out seed).
Shared by the studies that report it (the demo, the fidelity study, the image benchmark)."""
from __future__ import annotations

from .harness import md_table

# each closed-loop method and the constant-scale method it replaces
AUTO_OF = {"nag_cf_auto": "nag_cf", "nag_cf_est_auto": "nag_cf_est", "nag_cg_auto": "nag_cg",
           "nag_cf_est_auto+eps": "nag_cf_est"}
WITHIN = 0.01  # "as good as the tuned constant": quality within 1 % of it, or better


def auto_verdict(rows: list[dict], auto: str, free: str = "eps_scaling") -> dict:
    """Counts over the settings where ``rows`` hold the baseline and ``auto``: late |shift| lower than the baseline's,
    quality better, both; quality within :data:`WITHIN` of the constant-scale method's (or better); quality better
    than ``free``'s; |signed shift| at most the baseline's (no overshoot past zero beyond it); and the mean scale the
    constant method was tuned to, for reference."""
    get = {(r["sampler"], r["steps"], r["method"]): r for r in rows}  # the rows of one network
    out = {"method": auto, "n": 0, "shift_lower": 0, "quality_better": 0, "both": 0, "as_good_as_constant": 0,
           "constant_n": 0, "beats_free": 0, "free_n": 0, "no_overshoot": 0}
    for (smp, n, m), r in get.items():
        b = get.get((smp, n, "baseline"))
        if m != auto or b is None:
            continue
        shift, better = r["noise_shift"] < b["noise_shift"], r["quality"] < b["quality"]
        out["n"] += 1
        out["shift_lower"] += shift
        out["quality_better"] += better
        out["both"] += shift and better
        out["no_overshoot"] += abs(r["signed_shift"]) <= abs(b["signed_shift"])
        c = get.get((smp, n, AUTO_OF[auto]))
        if c is not None:
            out["constant_n"] += 1
            out["as_good_as_constant"] += r["quality"] <= (1 + WITHIN) * c["quality"]
        f = get.get((smp, n, free))
        if f is not None:
            out["free_n"] += 1
            out["beats_free"] += r["quality"] < f["quality"]
    return out


def section(verdicts: list[dict], what: str) -> list[str]:
    """A report's section on the closed-loop scale: ``what`` (the networks and rows read) and the verdict table."""
    if not verdicts:
        return []
    return ["## NAG that sets its own strength\n",
            "`*_auto`: the closed-loop scale (docs/method.md §3c; no knob tuned), against the baseline, the same guidance "
            f"at its constant scale tuned on the held-out seed, and epsilon scaling (tuned likewise). {what}\n",
            md_table(verdicts, COLUMNS, HEADS), ""]


COLUMNS = ["network", "method", "n", "shift_lower", "quality_better", "both", "no_overshoot", "as_good_as_constant",
           "constant_n", "beats_free", "free_n"]
HEADS = ["network", "method", "settings", "late shift lower", "quality better", "both", "\\|signed shift\\| <= baseline's",
         "quality within 1 % of the tuned constant", "of", "quality better than epsilon scaling", "of"]
