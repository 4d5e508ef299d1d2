"""One sampling run and what the studies make of it: the draw every method of a study shares, the run with its
noise-shift readouts and scores, its row in metrics.json, and knob tuning on a held-out seed.  The exact testbed
(``toolkit``) and the image benchmark (``bench_images``) both build on it.

Seeds (paired comparisons: every method of a study sees the same noise): initial noise ``seed + 20``, SDE noise
``seed + 30``, the forward (reference) states ``seed + 40``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from comfy_nag import samplers, shift
from comfy_nag.schedules import Schedule

from . import methods


@dataclass(frozen=True)
class Draw:
    """What every method of a study is sampled with and read against: the classes ``y`` (one per sample), clean
    samples ``x_fwd`` whose forward states are the readouts' reference (as many as ``y``, the samples' shape), the
    ``seed`` of the noise, the noise-level ``readouts`` by name, and ``score(samples, y) -> dict`` (the study's
    sample metrics; None: none)."""

    y: torch.Tensor
    x_fwd: torch.Tensor
    seed: int
    readouts: dict
    score: Callable[[torch.Tensor, torch.Tensor], dict] | None = None

    @property
    def shape(self) -> tuple:
        return (self.y.shape[0], *self.x_fwd.shape[1:])


def sample_run(den, schedule: Schedule, sampler: str, steps: int, draw: Draw, level_fn=None, record="late") -> dict:
    """Sample ``draw`` once with ``den``, read the noise shift with every readout and score the samples.

    ``record``: ``"late"`` (the last 20 % of steps, shift.py's ``noise_shift``), ``"all"``, or a list of
    step indices.  Returns ``samples``, ``nfe_per_step``, ``seconds_per_step`` (with the readouts), per readout
    name ``shift[name]`` (:func:`comfy_nag.shift.summarize` against forward states of ``draw.x_fwd``) and
    ``estimated[name]`` (per-step, per-sample readouts), and ``draw.score``'s fields.
    """
    t0 = time.perf_counter()
    sig = schedule.sigmas(steps)
    idx = list(range(steps)) if record == "all" else shift.late_steps(steps) if record == "late" else list(record)
    traces = {k: shift.ShiftTrace(ro, schedule.space, only=set(idx)) for k, ro in draw.readouts.items()}

    def callback(info):
        for t in traces.values():
            t(info)

    x = samplers.initial_noise(draw.shape, schedule, torch.Generator().manual_seed(draw.seed + 20))
    run = samplers.get_sampler(sampler, schedule.space, torch.Generator().manual_seed(draw.seed + 30))
    out = run(den, x, sig, extra_args={"y": draw.y, "sample_sigmas": sig}, callback=callback, level_fn=level_fn)
    res = {"samples": out, "nfe_per_step": getattr(den, "evaluations", steps) / steps, "shift": {}, "estimated": {}}
    for k, t in traces.items():
        ref = shift.forward_readout(t.readout, draw.x_fwd, sig[idx], schedule, torch.Generator().manual_seed(draw.seed + 40))
        res["shift"][k] = shift.summarize(t, ref, n_steps=steps)
        res["estimated"][k] = t.estimated
    res["seconds_per_step"] = (time.perf_counter() - t0) / steps
    if draw.score is not None:
        res.update(draw.score(out, draw.y))
    return res


@dataclass(frozen=True)
class RowFormat:
    """How a study writes one run as a metrics.json row: its key fields, ``nfe_per_step``, the late shift of the
    ``readout`` it reports, ``quality`` (named by ``quality_metric``), the run's ``metrics``, then ``knob``: the
    knobs the method's row records (``studies.methods.TABLE``) under the study's ``labels`` (default: the knob's
    own name), without the ``omitted`` ones (the study's fixed settings); ``shown``: what the row says for a knob
    whose value is not a number."""

    readout: str
    quality_metric: str
    metrics: tuple[str, ...]
    labels: dict = field(default_factory=dict)
    omitted: frozenset = frozenset()
    shown: dict = field(default_factory=dict)

    def knob(self, method: str, knobs: dict) -> dict:
        """The recorded knobs of ``method`` run with ``knobs`` (defaults filled, ``studies.methods.values``)."""
        k = methods.values(knobs)
        return {self.labels.get(name, name): self.shown[name] if name in self.shown else k[name]
                for name in methods.TABLE[method].knobs if name not in self.omitted}

    def row(self, key: dict, res: dict, knobs: dict) -> dict:
        """The row of run ``res`` (:func:`sample_run`) of ``key["method"]`` with ``knobs``; ``key`` comes first."""
        shift_ = res["shift"][self.readout]
        r = {**key, "nfe_per_step": round(res["nfe_per_step"], 3), "noise_shift": shift_["noise_shift"],
             "signed_shift": shift_["signed_shift"], "quality": res["quality"], "quality_metric": self.quality_metric,
             **{m: res[m] for m in self.metrics}}
        knob = self.knob(key["method"], knobs)
        if knob:
            r["knob"] = knob
        return r


def first_best(score, candidates):
    """The first candidate with the lowest ``score(candidate)`` (every candidate is scored, in order)."""
    best = None
    for c in candidates:
        q = score(c)
        if best is None or q < best[0]:
            best = (q, c)
    return best[1]


class Tuning:
    """Knobs picked on a held-out seed.  ``measure(method, knobs) -> (score, fields)`` runs one candidate (lower
    is better; inf: unusable); ``table`` holds every run's label and fields, in the order run."""

    def __init__(self, measure: Callable[[str, dict], tuple[float, dict]]):
        self.measure, self.table = measure, []

    def score(self, method: str, knobs: dict, label: dict) -> float:
        """Run ``method`` with ``knobs``; its table row is ``label`` and the run's fields."""
        q, fields = self.measure(method, knobs)
        self.table.append({**label, **fields})
        return q

    def best(self, method: str, candidates, knobs_of, label_of=None):
        """The first of ``candidates`` with the lowest score, each run with ``knobs_of(candidate)`` and labelled
        ``label_of(candidate)`` (default: the method and its knobs)."""
        def score(c):
            knobs = knobs_of(c)
            return self.score(method, knobs, label_of(c) if label_of else {"method": method, **knobs})

        return first_best(score, candidates)
