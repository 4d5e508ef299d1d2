"""Null-branch recipes and how much of the exact noise-awareness term the learned terms carry (exact testbed).

``python -m studies fidelity --out DIR [--quick] [--seeds 0 1] [--families sit sd1]``.

Each family's network is pretrained *without* noise-condition dropout (like a community checkpoint),
then fine-tuned with each :data:`RECIPES` entry (one factor changed from :data:`BASE`).  Each fine-tuned
network's terms are measured against the exact ones (:func:`studies.terms.measure`: ``nag_cf``,
``readout``, ``marginal_null``, ``nag_cg``); the ``readout`` is validated against ``nag_cf`` along one
fine-tune.  Each recipe is also sampled with NAG-CF next to the exact term on the same network
(``nag_exact_term`` = learned ``c`` + ``w (c* - n*)``, the ceiling), for the late shift and quality.
The recipes and settings: ``studies.fidelity_recipes``; the report and figure: ``studies.fidelity_report``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch

from comfy_nag.denoiser import Denoiser
from comfy_nag.guidance import Guidance

from . import harness, methods, testbed, toolkit
from .fidelity_recipes import BASE, STOCK_TERMS, TRACKED, Config, finetune, recipe_net
from .fidelity_report import write_figures_and_report
from .terms import TERMS, States, measure

METHODS = ("baseline", "nag_cf", "nag_exact_term")


def sample_methods(tr: toolkit.Trained, net, dcfg: toolkit.Config, cfg: Config, ev: toolkit.Eval) -> list[dict]:
    """Late shift and quality of baseline, NAG-CF and the exact term on ``net`` (same noise, same classes)."""
    win = tr.window(dcfg.nag_min_logsnr)
    rows = []
    for sampler in cfg.samplers:
        for steps in cfg.steps:
            for method in METHODS:
                g = Guidance(nag_scale=cfg.nag_scale, nag_window=win) if method == "nag_cf" else Guidance()
                den = Denoiser(net, tr.fam.schedule, tr.fam.prediction, g)
                if method == "nag_exact_term":
                    den = testbed.ExactTermNAG(den, tr.gmm, tr.fam, cfg.nag_scale, win, tr.bins)
                res = toolkit.run_one(tr, ev, methods.Setup(g, None), sampler, steps, denoiser=den)
                rows.append({"method": method, "sampler": sampler, "steps": steps,
                             "noise_shift": res["shift"]["exact"]["noise_shift"],
                             "signed_shift": res["shift"]["exact"]["signed_shift"], "quality": res["quality"]})
    return rows


# --- the study ----------------------------------------------------------------------------------

def pretrained_family(name: str, seed: int, cfg: Config, log, stages, progress) -> tuple[toolkit.Trained, toolkit.Config]:
    """The demo's network and estimator for ``name``, pretrained for ``cfg.pretrain_steps`` without dropout."""
    dcfg = dataclasses.replace(toolkit.Config.make(cfg.quick, seed), train_steps=cfg.pretrain_steps, t_dropout=0.0)
    gmm = testbed.GaussianMixture.make(dim=dcfg.dim, seed=dcfg.seed)
    stages = stages and harness.Stages(stages.folder / f"seed{seed}", stages.log)  # one pretrained network per seed
    return toolkit.train_family(name, gmm, dcfg, log=log, stages=stages, progress=progress), dcfg


STOCK_METHODS = ("baseline", "nag_cf_est", "nag_exact_term", "nag_cf_est_auto")


def stock(tr: toolkit.Trained, dcfg: toolkit.Config, cfg: Config, ev: toolkit.Eval, seed: int, log=print) -> list[dict]:
    """The pretrained network as it is (no fine-tune: a stock checkpoint) with the null branch from an estimator
    trained for each of ``cfg.stock_estimators`` steps (the demo's recipe otherwise): its scale tuned on the
    held-out seed for Euler and Heun together, rows of :data:`STOCK_METHODS` at 25 and 50 steps (the exact term at
    the same scale), and how much of the exact term the branch carries."""
    out = []
    for steps in cfg.stock_estimators:
        trs = tr if steps == dcfg.estimator_steps else toolkit.with_estimator(tr, _estimator(tr, steps, seed), seed)
        tuned = toolkit.tune(trs, dcfg, log, methods=("nag_cf_est",), samplers=("euler", "heun"))[0]
        knobs = {**tuned, "nag_cf": tuned["nag_cf_est"]}
        rows = [toolkit.sample_row(trs, dcfg, ev, m, sampler, n, knobs) for sampler in cfg.samplers
                for n in sorted({*cfg.steps, 50}) for m in STOCK_METHODS]
        out.append({"estimator_steps": steps, "scale": tuned["nag_cf_est"], "rows": rows,
                    "fidelity": measure(trs.net, trs.estimator, trs.gmm, trs.fam, trs.bins,
                                        States(cfg.n_states, seed, cfg.lams), STOCK_TERMS)})
    return out


def _estimator(tr: toolkit.Trained, steps: int, seed: int):
    """The demo's estimator recipe trained for ``steps`` on ``tr``'s data (same bins, width and seeds)."""
    from comfy_nag.estimators import EstimatorTraining, NoiseLevelEstimator, train_estimator
    torch.manual_seed(seed)
    est = NoiseLevelEstimator((tr.gmm.dim,), tr.bins, width=128, depth=3)
    train_estimator(est, lambda n, g: tr.gmm.sample(n, generator=g)[0], tr.fam.schedule, EstimatorTraining(steps, lr=3e-3),
                    torch.Generator().manual_seed(seed + 1))
    return est.eval()


def study(cfg: Config, log=print, progress: bool = True, stages: harness.Stages | None = None,
          families: tuple | None = None) -> dict:
    out = {"fidelity": [], "sampling": [], "finetune": {}, "track": [], "stock": []}
    for seed in cfg.seeds:
        for name in families or toolkit.Config().families:
            tr, dcfg = pretrained_family(name, seed, cfg, log, stages, progress)
            ev = toolkit.make_eval(tr, dcfg, seed).head(cfg.n_samples)
            tag = {"seed": seed, "family": name}
            spec = {"stage": "fidelity stock", **tag, "demo": asdict(dcfg), "config": asdict(cfg)}
            made = (stages.value(f"s{seed}_{name}_stock", spec, lambda: stock(tr, dcfg, cfg, ev, seed, log)) if stages
                    else stock(tr, dcfg, cfg, ev, seed, log))
            out["stock"] += [{**tag, **m} for m in made]
            for recipe in cfg.recipe_list(seed):
                net = recipe_net(tr.net, recipe)
                spec = {"stage": "fidelity recipe", **tag, "recipe": asdict(recipe), "demo": asdict(dcfg),
                        "config": {k: v for k, v in asdict(cfg).items()
                                   if k not in ("quick", "seeds", "recipes", "replicate", "stock_estimators")}}

                def make(recipe=recipe, net=net):
                    track = []
                    checks = {round(f * cfg.pretrain_steps) for f in cfg.track} if recipe.name == TRACKED else set()

                    def on_step(step, current):
                        if step in checks:  # fidelity and readout along the fine-tune (the readout's validation)
                            for r in measure(current.eval(), tr.estimator, tr.gmm, tr.fam, tr.bins,
                                             States(cfg.n_states, seed, cfg.lams, (0.0,)), ("nag_cf", "readout")):
                                track.append({"step": step, **r})
                            current.train()

                    done = finetune(tr, net, recipe, cfg, seed, on_step, progress)
                    terms = TERMS if recipe is BASE else ("nag_cf", "readout")  # the ceiling and NAG-CG: once per network family
                    return {**done, "track": track,  # measured inside the stage, so a finished recipe is reused whole
                            "fidelity": measure(net, tr.estimator, tr.gmm, tr.fam, tr.bins,
                                                States(cfg.n_states, seed, cfg.lams), terms),
                            "sampling": sample_methods(tr, net, dcfg, cfg, ev)}

                done = stages.modules(f"s{seed}_{name}_{recipe.name}", spec, {"net": net}, make) if stages else make()
                net.eval()
                out["finetune"][f"{seed}/{name}/{recipe.name}"] = {"loss": done["loss"], "steps": done["steps"]}
                for key in ("track", "fidelity", "sampling"):
                    out[key] += [{**tag, **({} if key == "track" else {"recipe": recipe.name}), **r} for r in done[key]]
                log(f"[seed {seed} {name}] {recipe.name}: done")
    return out


def run(out, quick: bool = False, seeds: tuple = (0, 1), threads: int | None = None, families: tuple | None = None) -> dict:
    """Run the study into ``out``: fidelity.json, report.md, fidelity.png (trained stages reused from out/work).

    ``families``: a subset of the demo's (default: all).  Two commands with different families can share
    one ``out`` at the same time: each family's trained stages are reused by the other."""
    out, t0, log = harness.begin(out, threads)
    cfg = Config.make(quick, seeds)
    res = study(cfg, log=log, stages=harness.Stages(out / "work", log), families=families)
    res["meta"] = harness.run_meta(cfg, t0)
    return harness.conclude(out, "fidelity", res, families, write_figures_and_report, log)


def merge(out, note: str = "") -> dict:
    """Join the per-family files of parallel ``--families`` runs in ``out`` into fidelity.json + report."""
    return harness.merge(out, "fidelity", write_figures_and_report, note=note)

def redraw(out) -> list[Path]:
    """Rewrite ``out``'s fidelity.png and report.md from its fidelity.json (no training, no sampling);
    returns the paths written."""
    return write_figures_and_report(Path(out), harness.load_metrics(out, "fidelity.json"), redrawn=True)
