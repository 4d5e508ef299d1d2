"""A run's metrics: ``<out_dir>/metrics.jsonl``, one JSON line per log window or monitor event, and the
readable line each monitor event prints.

A :class:`Window` sums each statistic a task's loss reports as ``(total, count)`` over the steps since
the last line; the line holds their means, the learning rate and the throughput.  After a resume the
lines of steps that will be re-run are dropped (:func:`truncate`), so the file reads as one run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from comfy_nag.files import atomic_write_bytes

MONITOR_LABELS = (("probe_loss_cond", "loss cond"), ("probe_loss_null", "loss null-t"), ("branch_gap", "branch gap"),
                  ("null_readout_cos", "null-branch readout cos"),
                  ("noise_shift_nag0", "late shift w=0"), ("noise_shift_nag", "late shift NAG"),
                  ("probe_logsnr_mae", "log-SNR MAE"), ("samples", "samples"))


class Window:
    """The statistics of the steps since the last metric line."""

    def __init__(self):
        self.sums: dict[str, list] = {}
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, stats: dict) -> None:
        """One micro-batch's ``{name: (total, count)}``."""
        for k, (total, count) in stats.items():
            w = self.sums.setdefault(k, [0.0, 0.0])
            w[0] += float(total)
            w[1] += float(count)

    def line(self, step: int, lr: float, samples_per_step: int) -> dict:
        """The metric line: each statistic's mean, the learning rate and samples per second."""
        dt = time.perf_counter() - self.t0
        line = {"step": step, "lr": lr, "samples_per_s": self.steps * samples_per_step / max(dt, 1e-9)}
        line.update({k: v[0] / v[1] for k, v in self.sums.items() if v[1] > 0})
        return line


def append(path: Path, line: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def truncate(path: Path, step: int) -> None:
    """After a resume, drop metric lines of steps that will be re-run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def log_monitor(bar, step: int, extra: dict) -> None:
    """One readable line per monitor event (the numbers also go to metrics.jsonl)."""
    parts = [f"{label} {extra[k]:.4g}" if isinstance(extra[k], float) else f"{label} {extra[k]}"
             for k, label in MONITOR_LABELS if k in extra]
    if parts:
        bar.write(f"[step {step}] " + ", ".join(parts))
