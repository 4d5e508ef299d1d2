"""Which noise-level estimator gives classifier-guided NAG the most of the exact term? (exact testbed)

``python -m studies estimator --out DIR [--quick] [--seeds 0 1]``.

Each family's denoiser is the demo's (same settings).  Every :data:`VARIANTS` entry trains a
noise-level estimator that changes one setting of the demo's (:data:`BASE`): training length,
width, bin resolution, or the output distribution's targets (soft Gaussian labels instead of
one-hot bins).  For each estimator the study measures

* ``cos`` / ``norm_ratio``: its NAG-CG term ``grad_x log g(lam|x)`` against the exact
  ``grad_x log p(lam|x)`` on forward states at nominal log-SNR :data:`LAMS` (mean cosine, median
  ``|learned| / |exact|``; ``studies.terms.measure``'s ``nag_cg`` term);
* ``cross_entropy``: of the true bin on forward states (what training minimises);
* NAG-CG sampling (Euler, 25 steps, window log-SNR >= 0; on ``sample_seeds``): late shift and quality,
  at the scale tuned on a held-out seed from the demo's grid, next to the exact score term at the same
  scale (``exact_score``: the same network plus ``w grad_x log p(lam|x)``, the ceiling of NAG-CG).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from comfy_nag import estimators

from . import harness, testbed, toolkit
from .harness import md_table
from .terms import LAMS, measure


@dataclass(frozen=True)
class Variant:
    """One estimator recipe (the demo's: width 128, depth 3, 1500 steps, 40 bins, one-hot targets)."""

    name: str
    width: int = 128
    depth: int = 3
    steps: int = 1500
    bins: int = 40
    target_width: float = 0.0  # log-SNR units; 0 = one-hot bin targets

    def changed(self) -> str:
        diff = {k: v for k, v in asdict(self).items() if k != "name" and v != getattr(BASE, k)}
        return ", ".join(f"{k}={v}" for k, v in diff.items()) or "the demo's estimator"


BASE = Variant("base")
VARIANTS = (BASE, Variant("steps_x4", steps=6000), Variant("width_256", width=256), Variant("bins_80", bins=80),
            Variant("soft_targets", target_width=0.5))


@dataclass
class Config:
    quick: bool = False
    seeds: tuple = (0, 1)
    variants: tuple = tuple(v.name for v in VARIANTS)
    n_states: int = 512
    samplers: tuple = ("euler",)
    sample_seeds: tuple = (0,)  # NAG-CG sampling on these seeds only (fidelity on every seed)
    steps: int = 25
    n_samples: int = 500
    grid: tuple = (0.3, 1.0, 3.0)  # the demo's NAG-CG grid

    @classmethod
    def make(cls, quick: bool, seeds: tuple = (0, 1)) -> "Config":
        if not quick:
            return cls(seeds=tuple(seeds))
        return cls(quick=True, seeds=tuple(seeds)[:1], variants=("base", "soft_targets"), n_states=128,
                   samplers=("euler",), n_samples=300, grid=(1.0, 3.0))


def train_variant(tr: toolkit.Trained, v: Variant, seed: int, stages: harness.Stages | None, log) -> tuple:
    """(estimator, bins, summary) for variant ``v`` on ``tr``'s data and schedule (a stage in ``stages``)."""
    bins = estimators.LevelBins(tr.bins.lo, tr.bins.hi, v.bins)
    torch.manual_seed(seed + 3)
    est = estimators.NoiseLevelEstimator((tr.gmm.dim,), bins, width=v.width, depth=v.depth)

    def make():
        t0 = time.time()
        hist = estimators.train_estimator(est, lambda n, g: tr.gmm.sample(n, generator=g)[0], tr.fam.schedule, v.steps,
                                          lr=3e-3, generator=torch.Generator().manual_seed(seed + 1),
                                          target_width=v.target_width)
        log(f"[{tr.fam.name} seed {seed}] estimator {v.name} ({v.changed()}): {time.time() - t0:.0f}s")
        return {"loss": float(np.mean(hist[-50:])), "seconds": time.time() - t0}

    spec = {"stage": "cg estimator", "family": tr.fam.name, "seed": seed, "variant": asdict(v)}
    summary = stages.modules(f"{tr.fam.name}_seed{seed}_est_{v.name}", spec, {"estimator": est}, make) if stages else make()
    return est, bins, summary


def cross_entropy(est, tr: toolkit.Trained, n: int, seed: int) -> float:
    """Cross-entropy of the true bin on forward states (lambda uniform over the estimator's range)."""
    g = torch.Generator().manual_seed(seed + 60)
    lam = est.bins.sample(n, g)
    x0, _ = tr.gmm.sample(n, generator=g)
    x = estimators.noised(x0, lam, tr.fam.schedule, g)
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(est(x), est.bins.index(lam)))


def sample_variant(tr: toolkit.Trained, dcfg: toolkit.Config, cfg: Config, ev: toolkit.Eval, held: toolkit.Eval,
                   exact_runs: dict) -> list[dict]:
    """NAG-CG at the held-out-tuned scale, and the exact score term at that scale, per sampler
    (``exact_runs`` keeps the exact term's runs, which depend only on the scale and the bins)."""
    def run(method, w, sampler, e, den=None):
        g, lf = toolkit.method_setup(method, tr, dcfg, {"nag_cg": w})
        return toolkit.run_one(tr, e, g, lf, sampler, cfg.steps, denoiser=den)

    def exact(w, sampler):
        key = (w, tr.bins.k, sampler)
        if key not in exact_runs:
            exact_runs[key] = run("baseline", 0.0, sampler, ev, toolkit.exact_nag(tr, dcfg, w, testbed.ExactScoreNAG))
        return exact_runs[key]

    scores = {w: run("nag_cg", w, "euler", held) for w in cfg.grid}
    w = harness.first_best(lambda v: scores[v]["quality"] if scores[v]["diverged"] == 0 else float("inf"), cfg.grid)
    rows = []
    for sampler in cfg.samplers:
        for method, res in (("nag_cg", run("nag_cg", w, sampler, ev)), ("exact_score", exact(w, sampler))):
            rows.append({"sampler": sampler, "steps": cfg.steps, "method": method, "scale": w,
                         "noise_shift": res["shift"]["exact"]["noise_shift"], "signed_shift": res["shift"]["exact"]["signed_shift"],
                         "quality": res["quality"]})
    return rows


def study(cfg: Config, log=print, progress: bool = True, stages: harness.Stages | None = None) -> dict:
    out = {"fidelity": [], "sampling": [], "training": []}
    for seed in cfg.seeds:
        dcfg = toolkit.Config.make(cfg.quick, seed)
        dcfg = toolkit.Config(**{**asdict(dcfg), "n_samples": cfg.n_samples})
        gmm = testbed.GaussianMixture.make(dim=dcfg.dim, seed=seed)
        for name in dcfg.families:
            tr = toolkit.train_family(name, gmm, dcfg, log=log, stages=stages, progress=progress)
            ev, held = toolkit.make_eval(tr, dcfg, seed), toolkit.make_eval(tr, dcfg, seed + 1000)
            base, exact_runs = {}, {}
            sampling = seed in cfg.sample_seeds
            for sampler in cfg.samplers if sampling else ():
                res = toolkit.run_one(tr, ev, *toolkit.method_setup("baseline", tr, dcfg, {}), sampler, cfg.steps)
                base[sampler] = {"noise_shift": res["shift"]["exact"]["noise_shift"],
                                 "signed_shift": res["shift"]["exact"]["signed_shift"], "quality": res["quality"]}
            for vname in tqdm(cfg.variants, desc=f"{name} seed {seed}: estimators", disable=not progress):
                v = next(x for x in VARIANTS if x.name == vname)
                est, bins, summ = train_variant(tr, v, seed, stages, log)
                trv = dataclasses.replace(tr, estimator=est, bins=bins)
                key = {"seed": seed, "family": name, "variant": v.name}
                out["training"].append({**key, "changed": v.changed(), "loss": summ["loss"],
                                        "cross_entropy": cross_entropy(est, tr, cfg.n_states * 4, seed)})
                for r in measure(tr.net, est, gmm, tr.fam, bins, n=cfg.n_states, seed=seed, lams=LAMS,
                                 offsets=(0.0,), terms=("nag_cg",)):
                    out["fidelity"].append({**key, "lam": r["lam"], "cos": r["cos"], "norm_ratio": r["norm_ratio"]})
                for r in sample_variant(trv, dcfg, cfg, ev, held, exact_runs) if sampling else ():
                    b = base[r["sampler"]]
                    out["sampling"].append({**key, **r, "shift_baseline": b["noise_shift"], "quality_baseline": b["quality"]})
    return out


def summary(res: dict) -> list[dict]:
    """Per seed, family and variant: cosine at log-SNR < 0 and >= 0, cross-entropy, and NAG-CG's shift
    cut as a share of the exact score term's (mean over samplers) with its quality change."""
    rows = []
    for t in res["training"]:
        key = {k: t[k] for k in ("seed", "family", "variant")}
        fid = [r for r in res["fidelity"] if all(r[k] == v for k, v in key.items())]
        smp = [r for r in res["sampling"] if all(r[k] == v for k, v in key.items())]
        shares, dq = [], []
        for sampler in dict.fromkeys(r["sampler"] for r in smp):
            cg = next(r for r in smp if r["sampler"] == sampler and r["method"] == "nag_cg")
            ex = next(r for r in smp if r["sampler"] == sampler and r["method"] == "exact_score")
            cut = cg["shift_baseline"] - ex["noise_shift"]
            shares.append((cg["shift_baseline"] - cg["noise_shift"]) / cut if cut > 0 else float("nan"))
            dq.append(cg["quality"] - cg["quality_baseline"])
        rows.append({**key, "changed": t["changed"], "cross_entropy": t["cross_entropy"],
                     "cos_noisy": float(np.mean([r["cos"] for r in fid if r["lam"] < 0])),
                     "cos_late": float(np.mean([r["cos"] for r in fid if r["lam"] >= 0])),
                     "cos_at_6": next((r["cos"] for r in fid if r["lam"] == 6.0), float("nan")),
                     "scale": smp[0]["scale"] if smp else float("nan"),
                     "share_of_exact_cut": float(np.nanmean(shares)) if shares else float("nan"),
                     "quality_change": float(np.mean(dq)) if dq else float("nan")})
    return rows


def write_report(res: dict) -> str:
    cfg = Config(**res["meta"]["config"])
    L = ["# Noise-level estimators for classifier-guided NAG (exact testbed)\n",
         *([harness.SMOKE_TEST] if cfg.quick else []),
         f"Generated by `python -m studies estimator{' --quick' if cfg.quick else ''} --seeds "
         f"{' '.join(map(str, cfg.seeds))}` in {res['meta']['seconds'] / 60:.1f} min (torch {res['meta']['torch']}). "
         "Every number is in `estimator.json`.\n",
         "Each variant changes one setting of the demo's estimator (width 128, depth 3, 1500 steps at lr 3e-3, 40 log-SNR "
         "bins, one-hot targets) and is trained for the demo's denoiser of each family. `cos_noisy` / `cos_late`: mean "
         "cosine between the estimator's NAG-CG term and the exact `grad_x log p(lambda|x)` on on-schedule forward states "
         f"at nominal log-SNR {', '.join(f'{x:g}' for x in LAMS)} (below / from 0, where NAG acts); `cos_at_6` the last "
         "level alone. `share_of_exact_cut`: NAG-CG's late-shift cut as a share of the exact score term's on the same "
         f"network at the same scale (mean over {', '.join(cfg.samplers)}, {cfg.steps} steps, {cfg.n_samples} samples; seeds "
         f"{', '.join(map(str, cfg.sample_seeds))} only); "
         "`quality_change`: class-FD change vs the baseline (negative = better). The scale was tuned on a held-out seed "
         f"from {list(cfg.grid)}.\n",
         "## Summary\n",
         md_table(summary(res), ["seed", "family", "variant", "changed", "cross_entropy", "cos_noisy", "cos_late", "cos_at_6",
                                 "scale", "share_of_exact_cut", "quality_change"]),
         "\n## Fidelity per level\n",
         md_table(res["fidelity"], ["seed", "family", "variant", "lam", "cos", "norm_ratio"]),
         "\n## Sampling\n",
         md_table(res["sampling"], ["seed", "family", "variant", "sampler", "method", "scale", "shift_baseline", "noise_shift",
                                    "signed_shift", "quality_baseline", "quality"])]
    return "\n".join(L) + "\n"


def run(out, quick: bool = False, seeds: tuple = (0, 1), threads: int | None = None) -> dict:
    """Run the study into ``out``: estimator.json and report.md (trained stages reused from out/work)."""
    out, t0, log = harness.begin(out, threads)
    cfg = Config.make(quick, seeds)
    res = study(cfg, log=log, stages=harness.Stages(out / "work", log))
    res["meta"] = harness.run_meta(cfg, t0)
    return harness.conclude(out, "estimator", res, None, lambda o, r: harness.save_report(o, write_report(r)), log)
