"""The main job: the exact-testbed study of noise shift, NAG and the alternatives.

``python -m studies demo --out DIR [--quick]`` trains small, deliberately imperfect denoisers
on class-conditional Gaussian mixtures (testbed.py), samples them with every method and
sampler at several step counts, measures the noise shift with the **exact** noise-level
posterior and sample quality against the exact data distribution, and writes
``metrics.json``, ``report.md``, ``noise_shift.png``, ``fidelity.png`` and ``samples.png`` (the report and
figures: ``studies.demo_report``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from comfy_nag import samplers, shift
from comfy_nag.denoiser import Denoiser

from . import harness, methods, testbed
from .demo_report import write_figures_and_report
from .terms import ESTIMATOR_TERMS, States, measure
from .toolkit import (Config, Eval, NetVariant, Trained, calibrate, estimator_check, exact_nag,
                      make_eval, method_setup, profile_of, run_one, sample_row, train_family, tune)

# every method; NAG-CF with the per-level scale calibrated to the estimator (calibrate()); the learned
# conditional branch with the exact NAG term (the testbed's ceiling for nag_cf); NAG-CF with the null
# branch from the estimator's posterior (no dropout training needed); and the closed-loop scale (no tuned knob)
METHODS = methods.METHODS + ("nag_cf_cal", "nag_exact_term") + methods.ESTIMATOR_NULL + methods.AUTO
# the same network trained without noise-condition dropout (what a community checkpoint is): the methods that
# need no dropout, the exact term at nag_cf_est's scale (its ceiling), in every sampler x steps setting
NO_DROPOUT_METHODS = ("baseline", "nag_cf_est", "nag_exact_term", "nag_cg", "eps_scaling", "time_shift",
                      "nag_cf_est_auto", "nag_cg_auto", methods.AUTO_EPS)
NO_DROPOUT_TUNED = ("nag_cf_est", "nag_cg", "eps_scaling", "time_shift")
NO_DROPOUT_TUNING = ("euler", "heun")  # each knob tuned for both samplers it is read at (one scale for a user's sampler)


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

def study(cfg: Config, log=print, progress=True, stages: harness.Stages | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    gmm = testbed.GaussianMixture.make(dim=cfg.dim, seed=cfg.seed)
    out = {"rows": [], "tuning": {}, "knobs": {}, "calibration": {}, "training": {}, "plots": {}, "ablations": {},
           "estimator_check": {}, "fidelity": {}, "no_dropout": {}}
    for name in cfg.families:
        tr = train_family(name, gmm, cfg, log=log, stages=stages, progress=progress)
        out["training"][name] = {"denoiser_loss": tr.train_loss, "estimator_loss": tr.estimator_loss,
                                 "prediction": tr.fam.prediction, "schedule": tr.fam.schedule.describe(),
                                 "null_timestep": tr.fam.schedule.null_timestep}
        spec = {"stage": "testbed tuning", "family": name, "config": asdict(cfg)}
        knobs, table = (stages.value(f"{name}_tuning", spec, lambda: tune(tr, cfg, log)) if stages
                        else tune(tr, cfg, log))
        out["knobs"][name], out["tuning"][name] = knobs, table
        out["calibration"][name] = cal = calibrate(tr, cfg)
        run_knobs = {**knobs, "nag_profile": profile_of(cal)}
        ev = make_eval(tr, cfg, cfg.seed)
        jobs = [(s, n, m) for s in cfg.samplers for n in cfg.steps for m in METHODS]
        for sampler, steps, method in tqdm(jobs, desc=f"{name}: sampling", disable=not progress):
            def make(sampler=sampler, steps=steps, method=method):
                extra = {"learned": shift.estimator_readout(tr.estimator, tr.fam.schedule)} if steps == cfg.plot_steps else None
                return sample_row(tr, cfg, ev, method, sampler, steps, run_knobs, extra)

            # each finished row is a stage: an interrupted run continues where it stopped
            spec = {"stage": "demo row", "family": name, "config": asdict(cfg), "knobs": knobs, "calibration": cal}
            out["rows"].append(stages.value(f"{name}_rows/{sampler}_{steps}_{method}", spec, make, quiet=True) if stages
                               else make())
        out["plots"][name] = plot_data(tr, cfg, ev, knobs)
        out["estimator_check"][name] = estimator_check(tr, cfg.seed)
        out["fidelity"][name] = fidelity_rows(tr, cfg)
        out["no_dropout"][name] = no_dropout(name, gmm, cfg, tr.estimator, log, stages, progress)
        if cfg.ablations:
            out["ablations"][name] = ablations(tr, cfg, ev, knobs, log, stages)
    return out


def plot_data(tr: Trained, cfg: Config, ev: Eval, knobs: dict) -> dict:
    """Full per-step traces for the figure (SDE sampler where available) and KDE values."""
    sampler = "euler_maruyama" if "euler_maruyama" in cfg.samplers else cfg.samplers[0]
    curves = {}
    for method in ("baseline", "nag_cf", "nag_cg", "cfg", "nag_cf+cfg"):
        res = run_one(tr, ev, method_setup(method, tr, cfg, knobs), sampler, cfg.plot_steps, record="all")
        curves[method] = res["shift"]["exact"]
    # KDE: per-sample exact readouts at a few nominal levels, forward vs sampler states
    sch = tr.fam.schedule
    sig = sch.sigmas(cfg.plot_steps)
    pick = harness.kde_steps(cfg.plot_steps)
    kde = {"levels": [float(sch.logsnr(sig[i])) for i in pick], "groups": {}}
    fwd = shift.forward_readout(ev.readout, ev.x0_fwd, sig[pick], sch, torch.Generator().manual_seed(5))
    kde["groups"]["forward (true states)"] = fwd.tolist()
    for method in ("baseline", "nag_cf"):
        res = run_one(tr, ev, method_setup(method, tr, cfg, knobs), sampler, cfg.plot_steps, record=pick)
        kde["groups"][method] = np.stack(res["estimated"]["exact"]).tolist()
    return {"sampler": sampler, "steps": cfg.plot_steps, "curves": curves, "kde": kde,
            "window_min_logsnr": cfg.nag_min_logsnr}


def fidelity_rows(tr: Trained, cfg: Config) -> list[dict]:
    """How much of the exact NAG term this network's learned terms carry (``studies.terms.measure``):
    NAG-CF's ``c - n`` and NAG-CG's gradient against their exact counterparts, plus the readout, on
    on-schedule states and states 0.5 log-SNR noisier."""
    return measure(tr.net, tr.estimator, tr.gmm, tr.fam, tr.bins, States(128 if cfg.quick else 512, cfg.seed),
                   terms=("nag_cf", "readout", "nag_cg") + ESTIMATOR_TERMS)


def no_dropout(name: str, gmm: testbed.GaussianMixture, cfg: Config, estimator, log=print,
               stages: harness.Stages | None = None, progress: bool = True) -> dict:
    """The demo's network trained the same way but **without** noise-condition dropout (a community checkpoint
    has no null branch), with the demo's estimator: its knobs tuned on the held-out seed, rows of
    :data:`NO_DROPOUT_METHODS` in every sampler x steps setting (marked ``"model": "no_dropout"``), how much of the
    exact term the estimator null branch carries (plus its ceilings), and the closed-loop scale's choices per step."""
    ncfg = dataclasses.replace(cfg, t_dropout=0.0)
    tr = train_family(name, gmm, ncfg, NetVariant(estimator=estimator, tag="no_dropout"), log, stages, progress)
    spec = {"stage": "testbed tuning, no dropout", "family": name, "config": asdict(ncfg), "samplers": NO_DROPOUT_TUNING}
    make_tuning = lambda: tune(tr, ncfg, log, NO_DROPOUT_TUNED, NO_DROPOUT_TUNING)  # noqa: E731
    tuned = stages.value(f"{name}_no_dropout_tuning", spec, make_tuning) if stages else make_tuning()
    knobs = {**tuned[0], "nag_cf": tuned[0]["nag_cf_est"]}  # the exact term at the estimator branch's scale
    ev = make_eval(tr, ncfg, cfg.seed)
    rows = []
    for sampler, steps in [(s, n) for s in cfg.samplers for n in cfg.steps]:
        for method in NO_DROPOUT_METHODS:
            def make(sampler=sampler, steps=steps, method=method):
                return {**sample_row(tr, ncfg, ev, method, sampler, steps, knobs), "model": "no_dropout"}

            spec = {"stage": "demo row, no dropout", "family": name, "config": asdict(ncfg), "knobs": knobs}
            rows.append(stages.value(f"{name}_no_dropout_rows/{sampler}_{steps}_{method}", spec, make, quiet=True)
                        if stages else make())
    fid = measure(tr.net, tr.estimator, gmm, tr.fam, tr.bins, States(128 if cfg.quick else 512, cfg.seed),
                  terms=("marginal_null",) + ESTIMATOR_TERMS)
    return {"rows": rows, "knobs": knobs, "tuning": tuned[1], "fidelity": fid, "denoiser_loss": tr.train_loss,
            "auto_scale": auto_scale_trace(tr, ncfg, ev, "nag_cf_est_auto")}


def auto_scale_trace(tr: Trained, cfg: Config, ev: Eval, method: str) -> dict:
    """The scale the closed-loop rule chose at each step of one Euler run (``cfg.plot_steps``): per step its
    nominal log-SNR and the mean, spread (std) and 10th/90th percentiles of the scale over the samples."""
    setup = method_setup(method, tr, cfg, {})
    trace = []
    rule = dataclasses.replace(setup.guidance.rule, trace=trace)
    setup = setup._replace(guidance=dataclasses.replace(setup.guidance, rule=rule))
    run_one(tr, ev.head(500), setup, "euler", cfg.plot_steps)
    w = [t[1].float() for t in trace]
    return {"method": method, "sampler": "euler", "steps": cfg.plot_steps,
            "logsnr": [float(tr.fam.schedule.logsnr(torch.tensor(t[0]))) for t in trace],
            "mean": [float(v.mean()) for v in w], "std": [float(v.std()) for v in w],
            "p10": [float(v.quantile(0.1)) for v in w], "p90": [float(v.quantile(0.9)) for v in w]}


def ablations(tr: Trained, cfg: Config, ev: Eval, knobs: dict, log=print, stages: harness.Stages | None = None) -> dict:
    """Window vs full range; learned vs exact noise-unconditional branch; learned null embedding."""
    out = {}
    steps = cfg.plot_steps
    for sampler in ("euler", "euler_maruyama"):
        for method in ("baseline", "nag_cf", "nag_cf_full"):
            res = run_one(tr, ev, method_setup(method, tr, cfg, knobs), sampler, steps)
            out.setdefault("window", []).append(_brief(method, sampler, steps, res))
    # mechanism: keep the learned conditional branch, swap only the difference term (studies/fidelity.py
    # measures how far apart the two are); and the Bayes-optimal model with and without the exact term
    small = ev.head(500)
    w = knobs["nag_cf"]
    exact = testbed.exact_denoiser(tr.gmm, tr.space)
    variants = (("baseline", None), ("learned c + learned term (nag_cf)", "nag_cf"),
                ("learned c + exact term", exact_nag(tr, cfg, w)),
                ("learned c + exact score term", exact_nag(tr, cfg, w, testbed.ExactScoreNAG)),
                ("exact c", exact), ("exact c + exact term", exact_nag(tr, cfg, w, base=exact)))
    for label, model in variants:
        setup = method_setup("nag_cf" if model == "nag_cf" else "baseline", tr, cfg, knobs)
        res = run_one(tr, small, setup, "euler", 25, denoiser=None if isinstance(model, str) else model)
        out.setdefault("mechanism", []).append(_brief(label, "euler", 25, res))
    # learned null embedding instead of the sentinel timestep
    learned = train_family(tr.fam.name, tr.gmm, cfg, NetVariant("learned", tr.estimator), log, stages)
    for sampler in ("euler", "euler_maruyama"):
        for t, label in ((tr, "sentinel"), (learned, "learned embedding")):
            for method in ("baseline", "nag_cf"):
                res = run_one(t, ev, method_setup(method, t, cfg, knobs), sampler, steps)
                out.setdefault("null_mode", []).append(dict(_brief(method, sampler, steps, res), null_mode=label))
    return out


def _brief(method, sampler, steps, res):
    return {"method": method, "sampler": sampler, "steps": steps, "noise_shift": res["shift"]["exact"]["noise_shift"],
            "signed_shift": res["shift"]["exact"]["signed_shift"], "quality": res["quality"],
            "energy_distance": res["energy_distance"], "nll": res["nll"]}


# ---------------------------------------------------------------------------------------------
# pictures: the 2-D testbed
# ---------------------------------------------------------------------------------------------

def samples_figure(cfg: Config, knobs: dict, log=print, stages: harness.Stages | None = None):
    """Scatter plots of 2-D samples per method (flow family, Euler, 10 steps) next to the truth."""
    from matplotlib.figure import Figure

    from comfy_nag.plots import COLORS

    gmm2 = testbed.GaussianMixture.make(dim=2, seed=cfg.seed)
    small = Config(**{**asdict(cfg), "dim": 2, "hidden": 64, "depth": 2, "train_steps": max(cfg.train_steps // 2, 300),
                      "estimator_steps": max(cfg.estimator_steps // 2, 200)})
    tr = train_family("sit", gmm2, small, log=log, stages=stages)
    n = 2000 if not cfg.quick else 800
    y = torch.arange(n) % gmm2.num_classes
    truth, _ = gmm2.sample(n, y=y, generator=torch.Generator().manual_seed(1))
    panels = [("true data", truth, None)]
    for method in ("baseline", "nag_cf", "cfg", "nag_cf+cfg", "nag_cg"):
        g = method_setup(method, tr, small, knobs).guidance
        den = Denoiser(tr.net, tr.fam.schedule, tr.fam.prediction, g, estimator=tr.estimator)
        x = samplers.initial_noise((n, 2), tr.fam.schedule, torch.Generator().manual_seed(2))
        out = samplers.sample_euler(den, x, tr.fam.schedule.sigmas(10), extra_args={"y": y})
        panels.append((method, out, testbed.nll(gmm2, out, y)))
    fig = Figure(figsize=(3.0 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels))
    lim = float(truth.abs().max()) * 1.25
    for ax, (title, pts, score) in zip(axes, panels):
        for c in range(gmm2.num_classes):
            sel = y == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=1.5, color=COLORS[c], alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title if score is None else f"{title}\nNLL {score:.2f}", fontsize=9)
    fig.suptitle("2-D testbed, flow model, Euler 10 steps (colour = class; NLL under the true density, lower = on the data)")
    fig.tight_layout()
    return fig


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, threads: int | None = None,
             config: Config | None = None, families: tuple | None = None) -> dict:
    """Run the study and write metrics.json, report.md, noise_shift.png, samples.png into ``out``.

    ``config`` replaces the built-in defaults (``quick`` and ``seed`` are then ignored).  Trained
    networks and tuning results are kept in ``out/work`` and reused by the same command.
    ``families``: only these (writes ``metrics_<families>.json``; run one process per family in the
    same ``out`` at the same time, then :func:`merge`).
    """
    out, t0, log = harness.begin(out, threads)
    cfg = config or Config.make(quick, seed)
    if families:
        unknown = set(families) - set(cfg.families)
        if unknown:
            raise harness.StudyError(f"unknown families {sorted(unknown)}; the demo has {list(cfg.families)}")
        cfg = Config(**{**asdict(cfg), "families": tuple(f for f in cfg.families if f in families)})
    log(f"comfy-nag demo ({'quick' if cfg.quick else 'full'}): writing to {out}/")
    stages = harness.Stages(out / "work", log)
    res = study(cfg, log=log, stages=stages)
    gmm = testbed.GaussianMixture.make(dim=cfg.dim, seed=cfg.seed)
    truth, ty = gmm.sample(cfg.n_samples, generator=torch.Generator().manual_seed(cfg.seed + 99))
    res["meta"] = {"classes": gmm.num_classes, "quality_floor": testbed.class_frechet_distance(gmm, truth, ty),
                   "nll_floor": testbed.nll(gmm, truth, ty), "config": asdict(cfg), "torch": torch.__version__,
                   "threads": torch.get_num_threads()}
    if not families or Config.families[0] in families:  # the 2-D figure: the first family's knobs
        fig = samples_figure(cfg, res["knobs"][Config.families[0]], log=log, stages=stages)
        from comfy_nag.plots import to_pil

        to_pil(fig).save(out / "samples.png")
    res["meta"]["seconds"] = time.time() - t0
    return harness.conclude(out, "metrics", res, families and cfg.families, write_figures_and_report, log)


def merge(out: str | Path, note: str = "") -> dict:
    """Join the ``metrics_<family>.json`` files of parallel ``--families`` runs in ``out`` into
    metrics.json, report.md and noise_shift.png (samples.png comes from the first family's run)."""
    order = list(Config.families)

    def order_families(res):  # the config's families: those of the parts, in the demo's order
        res["meta"]["config"] = {**res["meta"]["config"], "families": [f for f in order if f in res["knobs"]]}

    return harness.merge(out, "metrics", write_figures_and_report,
                         order=lambda p: order.index(p["meta"]["config"]["families"][0]), adjust=order_families, note=note)

def redraw(out: str | Path) -> list[Path]:
    """Rewrite ``out``'s noise_shift.png, fidelity.png and report.md from its metrics.json (no sampling);
    returns the paths written."""
    return write_figures_and_report(Path(out), harness.load_metrics(out), redrawn=True)
