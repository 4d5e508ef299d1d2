"""What limits the learned null branch: the denoiser's size or its training length? (exact testbed)

``python -m studies capacity --out DIR [--quick] [--seeds 0 1] [--families sd1]``.

Each :data:`VARIANTS` entry trains the demo's denoiser (noise-condition dropout 0.1, class dropout 0.1)
from scratch, changing the network's size (width 256 and depth 4 instead of 128 and 3), its training
length (4x steps), or both.  For each network the study measures

* fidelity (``studies.terms.measure``): the learned NAG-CF term ``c - n`` against the exact
  ``c* - n*``, and the ceiling (the network's own conditional branch averaged over the exact level
  posterior), on on-schedule states and states 0.5 log-SNR noisier, at nominal log-SNR -2 ... 6;
* sampling at Euler and Heun, 25 and 50 steps (the issue's criterion settings): baseline, NAG-CF at
  the scale tuned on a held-out seed (the demo's grid), NAG-CF at the estimator-calibrated per-level
  scale, and the exact term on the same network at the tuned scale; the criterion of
  ``studies.toolkit.criterion`` (>= 60 % of the exact term's late-shift cut and better quality).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import harness, testbed, toolkit
from .harness import md_table
from .terms import States, late_cos, measure

METHODS = ("baseline", "nag_cf", "nag_cf_cal", "nag_exact_term")


@dataclass(frozen=True)
class Variant:
    """One denoiser: the demo's (128 wide, 3 deep, its training length) or a change of size or length."""

    name: str
    hidden: int = 128
    depth: int = 3
    steps_factor: int = 1  # x the demo's training steps

    def changed(self) -> str:
        diff = {k: v for k, v in asdict(self).items() if k != "name" and v != getattr(BASE, k)}
        return ", ".join(f"{k}={v}" for k, v in diff.items()) or "the demo's denoiser"

    def demo_config(self, dcfg: toolkit.Config) -> toolkit.Config:
        return dataclasses.replace(dcfg, hidden=self.hidden, depth=self.depth,
                                   train_steps=dcfg.train_steps * self.steps_factor)


BASE = Variant("demo")
VARIANTS = (BASE, Variant("steps_x4", steps_factor=4), Variant("size_256x4", hidden=256, depth=4),
            Variant("size_256x4_steps_x4", hidden=256, depth=4, steps_factor=4))


@dataclass
class Config:
    quick: bool = False
    seeds: tuple = (0, 1)
    variants: tuple = tuple(v.name for v in VARIANTS)
    n_states: int = 512
    samplers: tuple = ("euler", "heun")
    steps: tuple = (25, 50)

    @classmethod
    def make(cls, quick: bool, seeds: tuple = (0, 1)) -> "Config":
        if not quick:
            return cls(seeds=tuple(seeds))
        return cls(quick=True, seeds=tuple(seeds)[:1], variants=("demo", "size_256x4"), n_states=128,
                   samplers=("euler",), steps=(25,))


def params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def sample_variant(tr: toolkit.Trained, dcfg: toolkit.Config, cfg: Config, w: float, cal: dict, ev: toolkit.Eval) -> list[dict]:
    """Rows (``studies.toolkit.sample_row``) of :data:`METHODS` at every sampler x steps of ``cfg``."""
    knobs = {"nag_cf": w, "nag_profile": toolkit.profile_of(cal)}
    return [toolkit.sample_row(tr, dcfg, ev, method, sampler, steps, knobs)
            for sampler in cfg.samplers for steps in cfg.steps for method in METHODS]


def study(cfg: Config, log=print, progress: bool = True, work=None, families: tuple | None = None) -> dict:
    """``work``: folder of finished stages (one sub-folder per seed and variant); None = keep nothing."""
    out = {"networks": [], "fidelity": [], "rows": []}
    for seed in cfg.seeds:
        base_cfg = toolkit.Config.make(cfg.quick, seed)
        gmm = testbed.GaussianMixture.make(dim=base_cfg.dim, seed=seed)
        for name in families or base_cfg.families:
            for vname in tqdm(cfg.variants, desc=f"{name} seed {seed}: networks", disable=not progress):
                v = next(x for x in VARIANTS if x.name == vname)
                dcfg = v.demo_config(base_cfg)
                stages = harness.Stages(work / f"seed{seed}_{v.name}", log) if work else None
                t0 = time.time()
                tr = toolkit.train_family(name, gmm, dcfg, log=log, stages=stages, progress=progress)
                key = {"seed": seed, "family": name, "variant": v.name}

                def make(tr=tr, dcfg=dcfg):
                    ev = toolkit.make_eval(tr, dcfg, seed)
                    w = toolkit.tune(tr, dcfg, log, methods=("nag_cf",))[0]["nag_cf"]
                    cal = toolkit.calibrate(tr, dcfg)
                    fid = measure(tr.net, tr.estimator, gmm, tr.fam, tr.bins, States(cfg.n_states, seed),
                                  ("nag_cf", "marginal_null"))
                    return {"scale": w, "fidelity": fid, "rows": sample_variant(tr, dcfg, cfg, w, cal, ev)}

                spec = {"stage": "capacity measurement", "family": name, "config": asdict(dcfg), "study": asdict(cfg)}
                m = stages.value(f"{name}_measured", spec, make) if stages else make()
                out["networks"].append({**key, "changed": v.changed(), "params": params(tr.net),
                                        "train_steps": dcfg.train_steps, "train_loss": tr.train_loss, "scale": m["scale"]})
                out["fidelity"] += [{**key, **r} for r in m["fidelity"]]
                out["rows"] += [{**key, **r} for r in m["rows"]]
                log(f"[{name} seed {seed}] {v.name}: {time.time() - t0:.0f}s")
    return out


def summary(res: dict) -> list[dict]:
    """Per seed, family and network: fidelity over log-SNR >= 0 (where NAG acts) and the criterion counts."""
    out = []
    for n in res["networks"]:
        key = {k: n[k] for k in ("seed", "family", "variant")}
        fid = [r for r in res["fidelity"] if all(r[k] == v for k, v in key.items())]
        rows = [r for r in res["rows"] if all(r[k] == v for k, v in key.items())]
        crit = {c["method"]: c for c in toolkit.criterion(rows) if c["settings"] == "all"}
        ratio = [r["norm_ratio"] for r in fid if r["term"] == "nag_cf" and r["offset"] == 0 and r["lam"] >= 0]
        row = {**key, "changed": n["changed"], "params": n["params"], "train_steps": n["train_steps"],
               "train_loss": n["train_loss"], "cos_late": late_cos(fid),
               "cos_late_noisier": late_cos(fid, offset=0.5),
               "ceiling_late": late_cos(fid, "marginal_null"), "norm_ratio_late": float(np.median(ratio)),
               "scale": n["scale"]}
        for method, tag in (("nag_cf", "tuned"), ("nag_cf_cal", "cal")):
            c = crit.get(method)
            row[f"both_{tag}"] = f"{c['both']}/{c['n']}" if c else ""
            row[f"median_share_{tag}"] = c["median_share"] if c else float("nan")
        out.append(row)
    return out


def headline(res: dict) -> str:
    """The README's table: one row per family and network, each cell ``seed 0 / seed 1 / ...``."""
    summ = summary(res)
    seeds = list(dict.fromkeys(r["seed"] for r in summ))
    base = {(r["seed"], r["family"], r["variant"], r["sampler"], r["method"]): r["noise_shift"]
            for r in res["rows"] if r["steps"] == 25}

    def cells(rows, get, nd=2):
        by = {r["seed"]: r for r in rows}
        return " / ".join(get(by[s]) if isinstance(get(by[s]), str) else f"{get(by[s]):.{nd}f}" if s in by else "–"
                          for s in seeds)

    out = []
    for fam in dict.fromkeys(r["family"] for r in summ):
        for v in dict.fromkeys(r["variant"] for r in summ):
            rows = [r for r in summ if r["family"] == fam and r["variant"] == v]
            if not rows:
                continue
            shift = lambda m: lambda r: base.get((r["seed"], fam, v, "euler", m), float("nan"))  # noqa: E731
            out.append({"family": fam, "network": f"`{v}`", "params": f"{rows[0]['params'] / 1e6:.2f} M",
                        "steps": rows[0]["train_steps"], "cos": cells(rows, lambda r: r["cos_late"]),
                        "noisier": cells(rows, lambda r: r["cos_late_noisier"]),
                        "ceiling": cells(rows, lambda r: r["ceiling_late"]),
                        "shift": cells(rows, shift("baseline"), 3), "exact": cells(rows, shift("nag_exact_term"), 3),
                        "tuned": cells(rows, lambda r: r["both_tuned"]), "cal": cells(rows, lambda r: r["both_cal"])})
    return md_table(out, ["family", "network", "params", "steps", "cos", "noisier", "ceiling", "shift", "exact", "tuned", "cal"],
                    ["family", "network", "params", "train steps", "cos `c − n`, on-schedule", "0.5 noisier", "ceiling",
                     "late shift, Euler-25", "with the exact term", "criterion, tuned w", "criterion, calibrated"])


def write_report(res: dict) -> str:
    cfg = Config(**res["meta"]["config"])
    meta = res["meta"]
    settings = ", ".join(f"{s}-{n}" for s in cfg.samplers for n in cfg.steps)
    L = ["# The learned null branch against network size and training length (exact testbed)\n",
         *([harness.SMOKE_TEST] if cfg.quick else []),
         f"Generated by `python -m studies capacity{' --quick' if cfg.quick else ''} --seeds "
         f"{' '.join(map(str, cfg.seeds))}` in {meta['seconds'] / 60:.1f} min (torch {meta['torch']})"
         f"{'; ' + meta['note'] if meta.get('note') else ''}. Every number is in `capacity.json`.\n",
         "Each network is the demo's denoiser trained from scratch (noise-condition dropout 0.1, sentinel null "
         "timestep), changing its size, its training length, or both (`changed`). `cos c - n`: mean cosine of the "
         "learned NAG-CF term against the exact `c* - n*` on on-schedule forward states at nominal log-SNR 0, 2, 4, 6 "
         f"({cfg.n_states} states each); `ceiling`: the same for the network's own conditional branch averaged over "
         "the exact level posterior (a perfectly trained null branch of this network); `norm ratio`: median "
         "|learned| / |exact|. `criterion`: settings where NAG-CF reaches >= 60 % of the exact term's late-shift cut "
         f"(same network, same scale and window) and beats the baseline's class FD, over {settings}; `median share`: "
         "NAG-CF's cut / the exact term's. `tuned w`: the demo's held-out-seed tuning; `calibrated`: the per-level "
         "scale from the estimator (`studies.toolkit.calibrate`).\n",
         "## Summary\n", f"Cells: seed {' / '.join(map(str, cfg.seeds))}.\n", headline(res),
         "\n## Per seed\n",
         md_table(summary(res), ["seed", "family", "variant", "params", "train_steps", "train_loss", "cos_late",
                                 "cos_late_noisier", "ceiling_late", "norm_ratio_late", "scale", "both_tuned",
                                 "median_share_tuned", "both_cal", "median_share_cal"]),
         "\n## Fidelity per level\n",
         md_table([{**r, "cos / ratio": f"{r['cos']:.2f} / {r['norm_ratio']:.2f}"} for r in res["fidelity"]],
                  ["seed", "family", "variant", "term", "offset", "lam", "cos / ratio"]),
         "\n## Sampling\n",
         md_table(res["rows"], ["seed", "family", "variant", "sampler", "steps", "method", "noise_shift", "signed_shift",
                                "quality", "nll"])]
    return "\n".join(L) + "\n"


def run(out, quick: bool = False, seeds: tuple = (0, 1), threads: int | None = None, families: tuple | None = None) -> dict:
    """Run the study into ``out``: capacity.json and report.md (finished stages reused from out/work)."""
    out, t0, log = harness.begin(out, threads)
    cfg = Config.make(quick, seeds)
    res = study(cfg, log=log, work=out / "work", families=families)
    res["meta"] = harness.run_meta(cfg, t0)
    return harness.conclude(out, "capacity", res, families, write_outputs, log)


def merge(out, note: str = "") -> dict:
    """Join the per-family files of parallel ``--families`` runs in ``out`` into capacity.json + report."""
    return harness.merge(out, "capacity", write_outputs, note=note)


def write_outputs(out: Path, res: dict, redrawn: bool = False) -> list[Path]:
    """report.md of a finished run (its capacity.json content); returns its path."""
    return [harness.save_report(out, write_report(res), redrawn_by="capacity" if redrawn else None, figures=(),
                                source="capacity.json")]


def redraw(out) -> list[Path]:
    """Rewrite ``out``'s report.md from its capacity.json (no training, no sampling); returns its path."""
    return write_outputs(Path(out), harness.load_metrics(out, "capacity.json"), redrawn=True)
