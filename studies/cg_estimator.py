"""Which noise-level estimator carries the most of the exact NAG term? (exact testbed)

``python -m studies estimator --out DIR [--quick] [--seeds 0 1]``.

The estimator drives both classifier-guided NAG (its gradient) and the null branch built from its posterior
(``comfy_nag.posterior_null``: classifier-free NAG on a network trained without dropout).  Each family's
denoiser is the demo's (same settings), and the same network trained without noise-condition dropout.
Every :data:`VARIANTS` entry trains a noise-level estimator that changes one setting of the demo's
(:data:`BASE`): training length, width, bin resolution, or the output distribution's targets (soft Gaussian
labels instead of one-hot bins).  For each estimator the study measures

* ``posterior``: the estimator's posterior against the exact one over its bins (``toolkit.estimator_check``);
* ``est_cos`` / ``est3_cos``: the estimator null branch's ``c - n`` (1 and 3 levels) on the no-dropout network
  against the exact ``c* - n*``, on-schedule and 0.5 log-SNR noisier states (``studies.terms.measure``), next
  to its ceilings: the exact posterior over the estimator's bins, and over every training level;

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

from comfy_nag import estimators, samplers
from comfy_nag.denoiser import Denoiser

from . import harness, runs, testbed, toolkit
from .harness import md_table
from .terms import LAMS, States, late_cos, measure


@dataclass(frozen=True)
class Variant:
    """One estimator recipe (the demo's: width 128, depth 3, 1500 steps, 40 bins, one-hot targets)."""

    name: str
    width: int = 128
    depth: int = 3
    steps: int = 1500
    bins: int = 40
    target_width: float = 0.0  # log-SNR units; 0 = one-hot bin targets
    data: str = "real"  # "generated": trained on the no-dropout network's own samples (no data set needed)

    def changed(self) -> str:
        diff = {k: v for k, v in asdict(self).items() if k != "name" and v != getattr(BASE, k)}
        return ", ".join(f"{k}={v}" for k, v in diff.items()) or "the demo's estimator"


BASE = Variant("base")
VARIANTS = (BASE, Variant("steps_x4", steps=6000), Variant("steps_x20", steps=30000), Variant("steps_x100", steps=150000),
            Variant("width_256", width=256),
            Variant("bins_80", bins=80), Variant("soft_targets", target_width=0.5),
            Variant("self_generated", data="generated"))
GENERATED = 20000  # samples the network generates for the self_generated estimator (Euler, 50 steps)
EST_TERMS = ("nag_cf_est", "nag_cf_est3")


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


@torch.no_grad()
def generated(net, tr: toolkit.Trained, n: int, seed: int, steps: int = 50) -> torch.Tensor:
    """``n`` samples of ``net`` (Euler, ``steps`` steps, classes uniform): the data an estimator is trained on when
    the user has no data set, only the checkpoint (``python -m training prepare`` with ``data.source = "generated"``)."""
    sch = tr.fam.schedule
    y = torch.arange(n) % tr.gmm.num_classes
    x = samplers.initial_noise((n, tr.gmm.dim), sch, torch.Generator().manual_seed(seed + 70))
    return samplers.sample_euler(Denoiser(net, sch, tr.fam.prediction), x, sch.sigmas(steps), extra_args={"y": y})


def train_variant(tr: toolkit.Trained, v: Variant, seed: int, stages: harness.Stages | None, log, net=None) -> tuple:
    """(estimator, bins, summary) for variant ``v`` on ``tr``'s data (or ``net``'s own samples, ``v.data``) and
    schedule (a stage in ``stages``)."""
    bins = estimators.LevelBins(tr.bins.lo, tr.bins.hi, v.bins)
    torch.manual_seed(seed + 3)
    est = estimators.NoiseLevelEstimator((tr.gmm.dim,), bins, width=v.width, depth=v.depth)

    def make():
        t0 = time.time()
        if v.data == "generated":
            pool = generated(net, tr, GENERATED, seed)
            data = lambda n, g: pool[torch.randint(0, len(pool), (n,), generator=g)]  # noqa: E731
        else:
            data = lambda n, g: tr.gmm.sample(n, generator=g)[0]  # noqa: E731
        hist = estimators.train_estimator(est, data, tr.fam.schedule,
                                          estimators.EstimatorTraining(v.steps, lr=3e-3, target_width=v.target_width),
                                          torch.Generator().manual_seed(seed + 1))
        log(f"[{tr.fam.name} seed {seed}] estimator {v.name} ({v.changed()}): {time.time() - t0:.0f}s")
        return {"loss": float(np.mean(hist[-50:])), "seconds": time.time() - t0}

    recipe = {k: x for k, x in asdict(v).items() if (k, x) != ("data", "real")}  # stages made before `data` existed
    spec = {"stage": "cg estimator", "family": tr.fam.name, "seed": seed, "variant": recipe}
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
        setup = toolkit.method_setup(method, tr, dcfg, {"nag_cg": w})
        return toolkit.run_one(tr, e, setup, sampler, cfg.steps, denoiser=den)

    def exact(w, sampler):
        key = (w, tr.bins.k, sampler)
        if key not in exact_runs:
            exact_runs[key] = run("baseline", 0.0, sampler, ev, toolkit.exact_nag(tr, dcfg, w, testbed.ExactScoreNAG))
        return exact_runs[key]

    scores = {w: run("nag_cg", w, "euler", held) for w in cfg.grid}
    w = runs.first_best(lambda v: scores[v]["quality"] if scores[v]["diverged"] == 0 else float("inf"), cfg.grid)
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
            nets = stages and harness.Stages(stages.folder / f"seed{seed}", stages.log)  # one network pair per seed
            tr = toolkit.train_family(name, gmm, dcfg, log=log, stages=nets, progress=progress)
            no_dropout = toolkit.NetVariant(estimator=tr.estimator, tag="no_dropout")
            plain = toolkit.train_family(name, gmm, dataclasses.replace(dcfg, t_dropout=0.0), no_dropout, log, nets,
                                         progress).net
            out["fidelity"] += [{"seed": seed, "family": name, "variant": "ceiling", **r} for r in measure(
                plain, tr.estimator, gmm, tr.fam, tr.bins, States(cfg.n_states, seed, LAMS),
                ("nag_cf_est_exact", "marginal_null"))]
            ev, held = toolkit.make_eval(tr, dcfg, seed), toolkit.make_eval(tr, dcfg, seed + 1000)
            base, exact_runs = {}, {}
            sampling = seed in cfg.sample_seeds
            for sampler in cfg.samplers if sampling else ():
                res = toolkit.run_one(tr, ev, toolkit.method_setup("baseline", tr, dcfg, {}), sampler, cfg.steps)
                base[sampler] = {"noise_shift": res["shift"]["exact"]["noise_shift"],
                                 "signed_shift": res["shift"]["exact"]["signed_shift"], "quality": res["quality"]}
            for vname in tqdm(cfg.variants, desc=f"{name} seed {seed}: estimators", disable=not progress):
                v = next(x for x in VARIANTS if x.name == vname)
                est, bins, summ = train_variant(tr, v, seed, stages, log, plain)
                trv = dataclasses.replace(tr, estimator=est, bins=bins)
                key = {"seed": seed, "family": name, "variant": v.name}
                out["training"].append({**key, "changed": v.changed(), "loss": summ["loss"], "seconds": summ["seconds"],
                                        "cross_entropy": cross_entropy(est, tr, cfg.n_states * 4, seed),
                                        "posterior": toolkit.estimator_check(tr, seed, est, bins)})
                out["fidelity"] += [{**key, **r} for r in measure(tr.net, est, gmm, tr.fam, bins,
                                                                  States(cfg.n_states, seed, LAMS, (0.0,)), ("nag_cg",))]
                out["fidelity"] += [{**key, **r} for r in measure(plain, est, gmm, tr.fam, bins,
                                                                  States(cfg.n_states, seed, LAMS), EST_TERMS)]
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
        fid = [r for r in res["fidelity"] if all(r[k] == v for k, v in key.items()) and r.get("term", "nag_cg") == "nag_cg"]
        est = [r for r in res["fidelity"] if all(r[k] == v for k, v in key.items()) and r.get("term") in EST_TERMS]
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
                     "posterior_mean_gap": t.get("posterior", {}).get("mean_abs_posterior_mean_gap", float("nan")),
                     "kl": t.get("posterior", {}).get("mean_kl_exact_to_learned", float("nan")),
                     "est_cos": late_cos(est, "nag_cf_est"), "est3_cos": late_cos(est, "nag_cf_est3"),
                     "est_cos_noisier": late_cos(est, "nag_cf_est", 0.5),
                     "scale": smp[0]["scale"] if smp else float("nan"),
                     "share_of_exact_cut": float(np.nanmean(shares)) if shares else float("nan"),
                     "quality_change": float(np.mean(dq)) if dq else float("nan")})
    return rows


def ceilings(res: dict) -> list[dict]:
    """Per seed and family: the estimator null branch's cosine with the exact term with the exact posterior over
    the estimator's bins (1 level) and over every training level (the network's own ceiling)."""
    out = []
    for seed, fam in dict.fromkeys((r["seed"], r["family"]) for r in res["fidelity"] if r["variant"] == "ceiling"):
        rows = [r for r in res["fidelity"] if (r["seed"], r["family"], r["variant"]) == (seed, fam, "ceiling")]
        out.append({"seed": seed, "family": fam, "exact_posterior_bins": late_cos(rows, "nag_cf_est_exact"),
                    "exact_posterior_bins_noisier": late_cos(rows, "nag_cf_est_exact", 0.5),
                    "all_training_levels": late_cos(rows, "marginal_null"),
                    "all_training_levels_noisier": late_cos(rows, "marginal_null", 0.5)})
    return out


def headline(res: dict) -> str:
    """docs/method.md's table: per variant, the estimator null branch's cosine with the exact term (log-SNR >= 0,
    on-schedule states; one level / three levels), each cell ``seed 0 / seed 1`` per family."""
    summ = summary(res)
    seeds = list(dict.fromkeys(r["seed"] for r in summ))
    fams = list(dict.fromkeys(r["family"] for r in summ))
    rows = []
    for v in dict.fromkeys(r["variant"] for r in summ):
        row = {"variant": f"`{v}`", "changed": next(r["changed"] for r in summ if r["variant"] == v)}
        for fam in fams:
            by = {r["seed"]: r for r in summ if r["variant"] == v and r["family"] == fam}
            for col in ("est_cos", "est3_cos", "cos_late"):
                row[f"{fam} {col}"] = " / ".join(f"{by[sd][col]:.2f}" if sd in by else "–" for sd in seeds)
        rows.append(row)
    cols = ["variant", "changed"] + [f"{f} {c}" for f in fams for c in ("est_cos", "est3_cos", "cos_late")]
    heads = ["variant", "changed"] + [f"{f}: {h}" for f in fams for h in ("null branch, 1 level", "3 levels", "NAG-CG")]
    return md_table(rows, cols, heads)


def write_report(res: dict) -> str:
    cfg = Config(**res["meta"]["config"])
    L = ["# Noise-level estimators for NAG: the classifier-guided term and the null branch (exact testbed)\n",
         *([harness.SMOKE_TEST] if cfg.quick else []),
         f"Generated by `python -m studies estimator{' --quick' if cfg.quick else ''} --seeds "
         f"{' '.join(map(str, cfg.seeds))}` in {res['meta']['seconds'] / 60:.1f} min (torch {res['meta']['torch']}"
         f"{'; ' + res['meta']['note'] if res['meta'].get('note') else ''}). Every number is in `estimator.json`.\n",
         "Each variant changes one setting of the demo's estimator (width 128, depth 3, 1500 steps at lr 3e-3, 40 log-SNR "
         "bins, one-hot targets) and is trained on the demo's data for each family. `est_cos` / `est3_cos`: mean cosine "
         "of the estimator null branch's `c - n` (1 / 3 levels, `comfy_nag.posterior_null`) on the demo's network "
         "trained *without* noise-condition dropout, against the exact `c* - n*`, over nominal log-SNR 0, 2, 4, 6 "
         "(where NAG acts), on-schedule states; `est_cos_noisier`: states 0.5 log-SNR noisier. `posterior_mean_gap` / "
         "`kl`: the estimator's posterior against the exact one over its bins on forward states over its whole range "
         "(mean |posterior-mean gap| in log-SNR, KL(exact || learned)). `cos_noisy` / `cos_late`: the estimator's "
         "NAG-CG term against the exact `grad_x log p(lambda|x)` on the demo's network's states "
         f"at nominal log-SNR {', '.join(f'{x:g}' for x in LAMS)} (below / from 0); `cos_at_6` the last "
         "level alone. `share_of_exact_cut`: NAG-CG's late-shift cut as a share of the exact score term's on the same "
         f"network at the same scale (mean over {', '.join(cfg.samplers)}, {cfg.steps} steps, {cfg.n_samples} samples; seeds "
         f"{', '.join(map(str, cfg.sample_seeds))} only); "
         "`quality_change`: class-FD change vs the baseline (negative = better). The scale was tuned on a held-out seed "
         f"from {list(cfg.grid)}.\n",
         "## The null branch from the estimator: cosine with the exact term\n",
         f"Cells: seed {' / '.join(map(str, cfg.seeds))}.\n", headline(res),
         "\nIts ceilings on the same network (the exact posterior in place of the estimator):\n",
         md_table(ceilings(res), ["seed", "family", "exact_posterior_bins", "exact_posterior_bins_noisier",
                                  "all_training_levels", "all_training_levels_noisier"]),
         "\n## Summary\n",
         md_table(summary(res), ["seed", "family", "variant", "changed", "cross_entropy", "posterior_mean_gap", "kl",
                                 "est_cos", "est3_cos", "est_cos_noisier", "cos_noisy", "cos_late", "cos_at_6",
                                 "scale", "share_of_exact_cut", "quality_change"]),
         "\n## Fidelity per level\n",
         md_table([{**r, "term": r.get("term", "nag_cg")} for r in res["fidelity"]],
                  ["seed", "family", "variant", "term", "offset", "lam", "cos", "norm_ratio"]),
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
