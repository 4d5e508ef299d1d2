"""The main job: the exact-testbed study of noise shift, NAG and the alternatives.

``python -m studies demo --out DIR [--quick]`` trains small, deliberately imperfect denoisers
on class-conditional Gaussian mixtures (testbed.py), samples them with every method and
sampler at several step counts, measures the noise shift with the **exact** noise-level
posterior and sample quality against the exact data distribution, and writes
``metrics.json``, ``report.md``, ``noise_shift.png`` and ``samples.png``.
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
from .harness import md_table
from .terms import measure
from .terms import ESTIMATOR_TERMS, late_cos
from .toolkit import (QUALITY_METRIC, SHARE_TARGET, TARGET_SETTINGS, Config, Eval, Trained, against_baseline,
                      calibrate, criterion,
                      exact_nag, exact_share, estimator_check, make_eval, method_setup, profile_of, run_one,
                      sample_row, train_family, tune)

# every method; NAG-CF with the per-level scale calibrated to the estimator (calibrate()); the learned
# conditional branch with the exact NAG term (the testbed's ceiling for nag_cf); and NAG-CF with the null
# branch from the estimator's posterior (no dropout training needed)
METHODS = methods.METHODS + ("nag_cf_cal", "nag_exact_term") + methods.ESTIMATOR_NULL
# the same network trained without noise-condition dropout (what a community checkpoint is): the methods that
# need no dropout, the exact term at nag_cf_est's scale (its ceiling), at Euler and Heun with 25 and 50 steps
NO_DROPOUT_METHODS = ("baseline", "nag_cf_est", "nag_exact_term", "nag_cg", "eps_scaling", "time_shift")
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
        g, lf = method_setup(method, tr, cfg, knobs)
        res = run_one(tr, ev, g, lf, sampler, cfg.plot_steps, record="all")
        curves[method] = res["shift"]["exact"]
    # KDE: per-sample exact readouts at a few nominal levels, forward vs sampler states
    sch = tr.fam.schedule
    sig = sch.sigmas(cfg.plot_steps)
    pick = harness.kde_steps(cfg.plot_steps)
    kde = {"levels": [float(sch.logsnr(sig[i])) for i in pick], "groups": {}}
    fwd = shift.forward_readout(ev.readout, ev.x0_fwd, sig[pick], sch, torch.Generator().manual_seed(5))
    kde["groups"]["forward (true states)"] = fwd.tolist()
    for method in ("baseline", "nag_cf"):
        g, _ = method_setup(method, tr, cfg, knobs)
        res = run_one(tr, ev, g, None, sampler, cfg.plot_steps, record=pick)
        kde["groups"][method] = np.stack(res["estimated"]["exact"]).tolist()
    return {"sampler": sampler, "steps": cfg.plot_steps, "curves": curves, "kde": kde,
            "window_min_logsnr": cfg.nag_min_logsnr}


def fidelity_rows(tr: Trained, cfg: Config) -> list[dict]:
    """How much of the exact NAG term this network's learned terms carry (``studies.terms.measure``):
    NAG-CF's ``c - n`` and NAG-CG's gradient against their exact counterparts, plus the readout, on
    on-schedule states and states 0.5 log-SNR noisier."""
    return measure(tr.net, tr.estimator, tr.gmm, tr.fam, tr.bins, n=128 if cfg.quick else 512, seed=cfg.seed,
                   terms=("nag_cf", "readout", "nag_cg") + ESTIMATOR_TERMS)


def no_dropout(name: str, gmm: testbed.GaussianMixture, cfg: Config, estimator, log=print,
               stages: harness.Stages | None = None, progress: bool = True) -> dict:
    """The demo's network trained the same way but **without** noise-condition dropout (a community checkpoint
    has no null branch), with the demo's estimator: its knobs tuned on the held-out seed, rows of
    :data:`NO_DROPOUT_METHODS` at Euler and Heun, 25 and 50 steps (marked ``"model": "no_dropout"``), and how
    much of the exact term the estimator null branch carries (plus its ceilings)."""
    ncfg = dataclasses.replace(cfg, t_dropout=0.0)
    tr = train_family(name, gmm, ncfg, estimator=estimator, log=log, stages=stages, progress=progress, tag="no_dropout")
    spec = {"stage": "testbed tuning, no dropout", "family": name, "config": asdict(ncfg), "samplers": NO_DROPOUT_TUNING}
    make_tuning = lambda: tune(tr, ncfg, log, NO_DROPOUT_TUNED, NO_DROPOUT_TUNING)  # noqa: E731
    tuned = stages.value(f"{name}_no_dropout_tuning", spec, make_tuning) if stages else make_tuning()
    knobs = {**tuned[0], "nag_cf": tuned[0]["nag_cf_est"]}  # the exact term at the estimator branch's scale
    ev = make_eval(tr, ncfg, cfg.seed)
    rows = []
    for sampler, steps in sorted(TARGET_SETTINGS):
        for method in NO_DROPOUT_METHODS:
            def make(sampler=sampler, steps=steps, method=method):
                return {**sample_row(tr, ncfg, ev, method, sampler, steps, knobs), "model": "no_dropout"}

            spec = {"stage": "demo row, no dropout", "family": name, "config": asdict(ncfg), "knobs": knobs}
            rows.append(stages.value(f"{name}_no_dropout_rows/{sampler}_{steps}_{method}", spec, make, quiet=True)
                        if stages else make())
    fid = measure(tr.net, tr.estimator, gmm, tr.fam, tr.bins, n=128 if cfg.quick else 512, seed=cfg.seed,
                  terms=("marginal_null",) + ESTIMATOR_TERMS)
    return {"rows": rows, "knobs": knobs, "tuning": tuned[1], "fidelity": fid, "denoiser_loss": tr.train_loss}


def no_dropout_criterion(res: dict) -> list[dict]:
    """Per family, on the network trained without dropout: in how many of the Euler/Heun 25/50 settings
    ``nag_cf_est`` lowers the late shift, improves quality, and both, against the baseline."""
    out = []
    for fam, nd in res.get("no_dropout", {}).items():
        out.append({"family": fam, **against_baseline(nd["rows"], "nag_cf_est"), "scale": nd["knobs"]["nag_cf_est"],
                    **{f"cos_{t}": late_cos(nd["fidelity"], t) for t in ("nag_cf_est", "nag_cf_est_exact", "marginal_null")}})
    return out


FIDELITY_LINES = {  # (term, offset): legend label, marker style, colour (the method's in every figure)
    ("nag_cf", 0.0): ("NAG-CF's learned term, states on schedule", "-o", methods.COLORS["nag_cf"]),
    ("nag_cf", 0.5): ("NAG-CF's learned term, states 0.5 log-SNR noisier", "--o", methods.COLORS["nag_cf"]),
    ("nag_cg", 0.0): ("NAG-CG's estimator gradient, states on schedule", "-^", methods.COLORS["nag_cg"]),
    ("nag_cg", 0.5): ("NAG-CG's estimator gradient, states 0.5 log-SNR noisier", "--^", methods.COLORS["nag_cg"]),
    ("readout", 0.0): ("readout, a check without the exact term: NAG-CF's term vs the estimator's (on schedule)",
                         ":s", "#333333")}


def fidelity_figure(res: dict):
    """Per family: how closely the learned terms point where the exact NAG term points (cosine) against the
    scheduled log-SNR, for NAG-CF (on-schedule and noisier states), NAG-CG and the readout; one legend below."""
    from matplotlib.figure import Figure

    from comfy_nag.plots import WINDOW_COLOR

    fams = list(res["fidelity"])
    fig = Figure(figsize=(5 * len(fams), 4.3), layout="constrained")
    axes = fig.subplots(1, len(fams), squeeze=False, sharey=True)[0]
    start = res["meta"]["config"]["nag_min_logsnr"]
    for ax, fam in zip(axes, fams):
        for (term, off), (label, style, color) in FIDELITY_LINES.items():
            pts = [r for r in res["fidelity"][fam] if r["term"] == term and r["offset"] == off]
            ax.plot([r["lam"] for r in pts], [r["cos"] for r in pts], style, color=color, ms=5, lw=1.6, label=label)
        lams = [r["lam"] for r in res["fidelity"][fam]]
        ax.axvspan(start, max(lams) + 0.5, color=WINDOW_COLOR, alpha=0.22, lw=0, zorder=0, label="where NAG acts")
        ax.axhline(0.8, color="k", lw=0.8, ls=(0, (1, 2)), label="target 0.8")
        ax.axhline(0, color="k", lw=0.6, alpha=0.5)
        ax.set_xlim(min(lams) - 0.5, max(lams) + 0.5)
        ax.set_ylim(min(-0.3, min(r["cos"] for r in res["fidelity"][fam]) - 0.05), 1.02)
        ax.set_xlabel("scheduled noise level (log-SNR, higher = cleaner)")
        ax.set_title(harness.family_title(fam), fontsize=10)
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("agreement with the exact NAG term\n(cosine; 1 = same direction, 0 = unrelated)")
    fig.suptitle("How closely the learned NAG terms point where the exact NAG term points (exact testbed)", fontsize=11)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8.5, frameon=False)
    return fig


def ablations(tr: Trained, cfg: Config, ev: Eval, knobs: dict, log=print, stages: harness.Stages | None = None) -> dict:
    """Window vs full range; learned vs exact noise-unconditional branch; learned null embedding."""
    out = {}
    steps = cfg.plot_steps
    for sampler in ("euler", "euler_maruyama"):
        for method in ("baseline", "nag_cf", "nag_cf_full"):
            g, lf = method_setup(method, tr, cfg, knobs)
            res = run_one(tr, ev, g, lf, sampler, steps)
            out.setdefault("window", []).append(_brief(method, sampler, steps, res))
    # mechanism: keep the learned conditional branch, swap only the difference term (studies/fidelity.py
    # measures how far apart the two are); and the Bayes-optimal model with and without the exact term
    small = Eval(ev.readout, ev.ref_x, ev.ref_y, ev.y[:500], ev.x0_fwd[:500], ev.seed)
    w = knobs["nag_cf"]
    exact = testbed.exact_denoiser(tr.gmm, tr.space)
    variants = (("baseline", None), ("learned c + learned term (nag_cf)", "nag_cf"),
                ("learned c + exact term", exact_nag(tr, cfg, w)),
                ("learned c + exact score term", exact_nag(tr, cfg, w, testbed.ExactScoreNAG)),
                ("exact c", exact), ("exact c + exact term", exact_nag(tr, cfg, w, base=exact)))
    for label, model in variants:
        g, _ = method_setup("nag_cf" if model == "nag_cf" else "baseline", tr, cfg, knobs)
        res = run_one(tr, small, g, None, "euler", 25, denoiser=None if isinstance(model, str) else model)
        out.setdefault("mechanism", []).append(_brief(label, "euler", 25, res))
    # learned null embedding instead of the sentinel timestep
    learned = train_family(tr.fam.name, tr.gmm, cfg, null_mode="learned", estimator=tr.estimator, log=log, stages=stages)
    for sampler in ("euler", "euler_maruyama"):
        for t, label in ((tr, "sentinel"), (learned, "learned embedding")):
            for method in ("baseline", "nag_cf"):
                g, lf = method_setup(method, t, cfg, knobs)
                res = run_one(t, ev, g, lf, sampler, steps)
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
        g, lf = method_setup(method, tr, small, knobs)
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


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def nag_effect(rows: list[dict]) -> list[dict]:
    """Per (family, sampler, steps): NAG-CF (tuned and calibrated) vs baseline and NAG-CF+CFG vs CFG."""
    idx = {(r["family"], r["sampler"], r["steps"], r["method"]): r for r in rows}
    out = []
    for (fam, smp, n, m), r in idx.items():
        if m != "baseline":
            continue
        for new, old in (("nag_cf", "baseline"), ("nag_cf_cal", "baseline"), ("nag_cf_est", "baseline"), ("nag_cf+cfg", "cfg")):
            a, b = idx.get((fam, smp, n, old)), idx.get((fam, smp, n, new))
            if a is None or b is None:
                continue
            out.append({"family": fam, "sampler": smp, "steps": n, "comparison": f"{new} vs {old}",
                        "shift_before": a["noise_shift"], "shift_after": b["noise_shift"],
                        "shift_cut_%": 100 * (1 - b["noise_shift"] / a["noise_shift"]) if a["noise_shift"] > 0 else float("nan"),
                        "quality_before": a["quality"], "quality_after": b["quality"],
                        "nll_before": a["nll"], "nll_after": b["nll"]})
    return out


def headline(res: dict) -> str:
    """The README's demo tables (also in report.md): the methods at Euler-50, and the exact-term criterion."""
    cfg = res["meta"]["config"]
    n = cfg["plot_steps"] if cfg["plot_steps"] in cfg["steps"] else cfg["steps"][-1]
    names = {"baseline": "baseline", "nag_cf": "NAG-CF (tuned w)", "nag_cf_cal": "NAG-CF, calibrated scale",
             "nag_exact_term": "learned c + exact term (ceiling)", "nag_cf_est": "NAG-CF, null branch from the estimator",
             "nag_cg": "NAG-CG", "cfg": "CFG",
             "nag_cf+cfg": "NAG-CF + CFG (A)", "eps_scaling": "epsilon scaling", "time_shift": "time-shift sampler"}
    sel = [{**r, "name": names[r["method"]], "w": r.get("knob", {}).get("nag_scale", r.get("knob", {}).get("cg_scale", ""))}
           for r in res["rows"] if r["sampler"] == "euler" and r["steps"] == n and r["method"] in names]
    sel.sort(key=lambda r: (cfg["families"].index(r["family"]), list(names).index(r["method"])))
    t1 = md_table(sel, ["family", "name", "w", "nfe_per_step", "signed_shift", "quality", "nll"],
                  ["family", "method", "w", "NFE/step", f"late shift (signed), Euler-{n}", "quality (FD)", "NLL"])
    t2 = md_table(criterion(res["rows"]), ["family", "method", "settings", "n", "share_reached", "quality_better", "both",
                                           "median_share"],
                  ["family", "method", "settings", "n", f">= {SHARE_TARGET:.0%} of exact cut", "quality better", "both",
                   "median share"])
    return t1 + "\n\n" + t2


def write_report(res: dict, cfg: Config, seconds: float) -> str:
    """report.md of a finished run (its metrics.json content)."""
    eff = nag_effect(res["rows"])
    L = [*_setup(res, cfg, seconds), *_findings(res, eff), *_calibration(res), *_against_exact_term(res),
         *_without_dropout(res), *_method_tables(res, cfg, eff), *_ablations(res, cfg), *_fidelity(res), *_appendix(res)]
    return "\n".join(L) + "\n"


def _setup(res: dict, cfg: Config, seconds: float) -> list[str]:
    """The title, how the run was made, and the setup."""
    meta = res["meta"]
    flag = f" --threads {meta['threads']}" if "threads" in meta else ""
    if "note" in meta:  # parallel --families processes, then --merge
        flag += "` per family (`--families " + "`, `--families ".join(cfg.families) + "`), then `--merge"
    cores = f", {meta['threads']} CPU threads" if "threads" in meta else ""
    return ["# comfy-nag exact-testbed report\n", *([harness.SMOKE_TEST] if cfg.quick else []),
            f"Generated by `python -m studies demo{' --quick' if cfg.quick else ''} --seed {cfg.seed}{flag}` in "
            f"{seconds / 60:.1f} min (torch {meta.get('torch', torch.__version__)}{cores}"
            f"{'; ' + meta['note'] if 'note' in meta else ''}). Every number below is in `metrics.json`.\n",
            "## Setup\n",
            f"* Data: a class-conditional Gaussian mixture in {cfg.dim} dimensions ({res['meta']['classes']} classes x 2 components, "
            "each component rank-3 plus an isotropic floor of variance 4e-4), so the noised density, the exact denoiser and the "
            "exact posterior over noise levels are closed form.",
            f"* Models: residual MLPs ({cfg.hidden} wide, {cfg.depth} blocks) trained for {cfg.train_steps} steps on purpose "
            f"(imperfect), with noise-condition dropout {cfg.t_dropout} (null timestep = the schedule's sentinel, docs/method.md) and "
            f"class dropout {cfg.y_dropout}. Families: " + ", ".join(
                f"`{k}` ({v['prediction']}, {v['schedule']['type']}, final loss {v['denoiser_loss']:.4f})" for k, v in res["training"].items()) + ".",
            "* Noise shift (exact): at every recorded step the state's noise level is read out as the posterior-mean log-SNR "
            "under the *exact* posterior p(lambda | x) (uniform prior over the estimator's bins); the same readout is applied to "
            "true forward samples at the same nominal level. `gap_i = mean(readout(sampler states)) - mean(readout(forward states))` "
            "(< 0: the states look noisier than nominal). **`noise_shift` = mean over the last 20% of steps (i >= floor(0.8 N)) "
            "of |gap_i|**, in log-SNR units; `signed_shift` is the same mean without the absolute value.",
            f"* Quality (`quality`, lower is better): `{QUALITY_METRIC}` = per-class Frechet distance between the samples' Gaussian fit "
            "and the *exact* class moments, averaged over classes (the FID recipe with the true distribution in place of Inception "
            f"statistics). Also: `energy_distance` (class-conditional, unbiased U-statistic vs {cfg.n_reference} fresh true samples; "
            "~0 for a perfect sampler) and `nll` (mean negative log-likelihood under the true class density; a precision-like "
            f"number that also rewards over-sharpening). Noise floor of `quality` for {cfg.n_samples} *true* samples: "
            f"{res['meta']['quality_floor']:.3f} (NLL of true samples: {res['meta']['nll_floor']:.1f}).",
            f"* Every method shares the same initial noise, class labels and SDE noise (paired comparisons). {cfg.n_samples} samples per run.",
            "* Each method's one knob was tuned on a held-out seed (Euler, "
            f"{cfg.tune_steps} steps, lowest `quality`): " + "; ".join(f"`{k}`: {v}" for k, v in res["knobs"].items()) + ". "
            f"CFG scale {cfg.cfg_scale} (ComfyUI convention). NAG-CF and NAG-CG act only where log-SNR >= {cfg.nag_min_logsnr} "
            "(SNR >= 1, the late part of sampling); `nag_cf+cfg` is docs/method.md variant A, `nag_cf+cfg_B` variant B.",
            ""]


def _findings(res: dict, eff: list[dict]) -> list[str]:
    """The headline numbers: the baseline's shift, NAG-CF's effect, and the criterion against the exact term."""
    rows = res["rows"]
    L = ["## Findings\n"]
    base = [r for r in rows if r["method"] == "baseline"]
    neg = sum(r["signed_shift"] < 0 for r in base)
    L.append(f"* **Noise shift exists and points to more noise**: the baseline's late-step shift is negative (states look noisier "
             f"than nominal) in {neg} of {len(base)} family/sampler/step settings; mean |shift| "
             f"{np.mean([r['noise_shift'] for r in base]):.3f} log-SNR. Where in sampling: see the per-step curves in `noise_shift.png` "
             "(the gap opens in the last part of sampling).")
    for fam in res["training"]:
        e = [x for x in eff if x["family"] == fam and x["comparison"] == "nag_cf vs baseline"]
        if not e:
            continue
        cuts = [x["shift_cut_%"] for x in e]
        better_q = sum(x["quality_after"] < x["quality_before"] for x in e)
        better_nll = sum(x["nll_after"] < x["nll_before"] for x in e)
        halved = sum(c >= 50 for c in cuts)
        L.append(f"* `{fam}`: NAG-CF cut the late shift by {np.median(cuts):.0f}% (median over {len(e)} settings; >= 50% in {halved}), "
                 f"improved `quality` in {better_q}/{len(e)} and NLL in {better_nll}/{len(e)} settings at equal steps.")
    for c in criterion(rows):
        if c["settings"] == "all":
            L.append(f"* `{c['family']}`: `{c['method']}` delivered >= {SHARE_TARGET:.0%} of the exact term's late-shift cut "
                     f"(same network, same scale and window) in {c['share_reached']}/{c['n']} settings and beat the baseline's "
                     f"quality in {c['quality_better']}/{c['n']} (both: {c['both']}; median share {c['median_share']:.2f}).")
    L.append("* Per-setting details: the tables below. The ablations explain *why* NAG-CF works where it does.\n")
    return L


def _calibration(res: dict) -> list[str]:
    """The calibrated NAG-CF scale per family and knot (none in runs made before it)."""
    if not res.get("calibration"):
        return []
    cal_rows = [{"family": f, "logsnr": l, "estimator": e, "exact": x} for f, c in res["calibration"].items()
                for l, e, x in zip(c["logsnr"], c["estimator"], c["exact"])]
    return ["## Calibrated NAG-CF scale\n",
            "`nag_cf_cal` runs NAG-CF at scale 1 times a per-level profile: at each knot, the least-squares scale "
            "that makes the learned term `c - n` deliver the noise-level estimator's term (its gradient as an x0 change, "
            "under the training levels' prior) on forward states, clipped at 0 (`calibrate()`). It needs no exact "
            "quantity and no tuning on samples. `exact` is the same least-squares scale against the exact term `c* - n*` "
            "(the testbed's answer, not used).\n",
            md_table(cal_rows, ["family", "logsnr", "estimator", "exact"],
                     ["family", "log-SNR", "scale (from the estimator)", "scale (from the exact term)"]),
            ""]


def _against_exact_term(res: dict) -> list[str]:
    """Learned NAG-CF against the exact term on the same network (the README's tables, then per setting)."""
    rows = res["rows"]
    if not any(r["method"] == "nag_exact_term" for r in rows):
        return []
    return ["## Learned NAG-CF against the exact term on the same network\n",
            headline(res),
            "\n<details><summary>per setting</summary>\n",
            md_table(exact_share(rows), ["family", "sampler", "steps", "method", "shift_baseline", "shift_exact_term", "shift",
                                         "share_of_exact_cut", "quality_baseline", "quality", "quality_exact_term"]),
            "\n</details>\n"]


def no_dropout_headline(res: dict) -> str:
    """The README's table for a stock checkpoint: per family, on the network trained without dropout, how often
    the estimator null branch lowers the shift / improves quality over Euler and Heun at 25 and 50 steps, and
    how much of the exact term it carries (cosine, log-SNR >= 0, on-schedule states) against its ceilings."""
    return md_table(no_dropout_criterion(res), ["family", "scale", "n", "shift_lower", "quality_better", "both",
                                                "cos_nag_cf_est", "cos_nag_cf_est_exact", "cos_marginal_null"],
                    ["family", "w (held-out seed)", "settings", "late shift lower", "quality better", "both",
                     "cos with exact term", "same, exact posterior", "same, exact posterior over all levels"])


def _without_dropout(res: dict) -> list[str]:
    """NAG-CF on the network trained without dropout, the null branch from the estimator's posterior."""
    if not res.get("no_dropout"):
        return []
    rows = [r for nd in res["no_dropout"].values() for r in nd["rows"]]
    return ["## NAG-CF without fine-tuning: the null branch from the estimator\n",
            "The demo's network trained the same way but *without* noise-condition dropout (a community checkpoint has "
            "no null branch). `nag_cf_est` builds the null branch from the network's own conditional branch at the "
            "posterior-mean level of the demo's noise-level estimator (`comfy_nag.posterior_null`, one extra evaluation "
            "per step inside the window, as for a learned null branch). Every method's knob was tuned on the held-out "
            "seed on this network, one value for Euler and Heun together (lowest mean quality at the tuning steps); `nag_exact_term` adds the exact term at `nag_cf_est`'s scale (its ceiling). Cosines: "
            "the estimator branch's `c - n` against the exact `c* - n*`, mean over log-SNR 0, 2, 4, 6, on-schedule "
            "states; then the same with the exact posterior over the estimator's bins, and over every training level "
            "(`marginal_null`).\n",
            no_dropout_headline(res), "",
            md_table(rows, ["family", "sampler", "steps", "method", "nfe_per_step", "seconds_per_step", "noise_shift",
                            "signed_shift", "quality", "nll"]), ""]


def _method_tables(res: dict, cfg: Config, eff: list[dict]) -> list[str]:
    """Every method at the figure's step count, and NAG's effect at equal steps."""
    n_show = cfg.plot_steps if cfg.plot_steps in cfg.steps else cfg.steps[-1]
    cols = ["family", "sampler", "method", "nfe_per_step", "noise_shift", "signed_shift", "noise_shift_learned_estimator",
            "quality", "energy_distance", "nll"]
    return [f"## Methods at {n_show} steps\n",
            md_table([r for r in res["rows"] if r["steps"] == n_show], cols,
                     ["family", "sampler", "method", "NFE/step", "shift", "signed", "shift (learned est.)", "quality (FD)",
                      "energy dist.", "NLL"]),
            "\n## NAG effect at equal steps\n",
            md_table(eff, ["family", "sampler", "steps", "comparison", "shift_before", "shift_after", "shift_cut_%",
                           "quality_before", "quality_after", "nll_before", "nll_after"])]


def _ablations(res: dict, cfg: Config) -> list[str]:
    """Per family: the noise-level window, the mechanism (learned vs exact term) and the null condition."""
    if not res["ablations"]:
        return []
    brief = ["noise_shift", "signed_shift", "quality", "energy_distance", "nll"]
    L = ["\n## Ablations\n"]
    for fam, ab in res["ablations"].items():
        L.append(f"### `{fam}`: noise-level window (NAG-CF on log-SNR >= {cfg.nag_min_logsnr} vs the whole range)\n")
        L.append(md_table(ab["window"], ["sampler", "method", *brief]))
        if "mechanism" in ab:
            L.append(f"\n### `{fam}`: mechanism — the learned conditional branch with the learned or the *exact* "
                     "NAG term (Euler, 25 steps, 500 samples, the tuned NAG-CF scale and window)\n")
            L.append("Exact term: c* - n*, the Bayes-optimal conditional minus noise-unconditional prediction (closed "
                     "form); exact score term: grad log p(lambda|x) itself. Only the term is swapped, so the rows "
                     "read how much the learned null branch leaves on the table (studies/fidelity.py measures it).\n")
            L.append(md_table(ab["mechanism"], ["method", *brief]))
        else:  # runs made before the ablation was corrected
            L.append(f"\n### `{fam}`: learned vs exact null branch — withdrawn\n")
            L.append("This run's ablation computed c_net + w (c_net - n_exact), which multiplies the network's own error "
                     "by w and cannot isolate the Bayes term; rerun the demo for the corrected mechanism rows.\n")
            L.append(md_table(ab["exact_null"], ["method", *brief]))
        L.append(f"\n### `{fam}`: null condition — sentinel timestep vs learned null embedding\n")
        L.append(md_table(ab["null_mode"], ["null_mode", "sampler", "method", *brief]))
        L.append("")
    return L


def _fidelity(res: dict) -> list[str]:
    """How much of the exact NAG term the learned terms carry, per family, term and level."""
    if not res.get("fidelity"):
        return []
    return ["\n## Fidelity: how much of the exact NAG term the learned terms carry\n",
            "Cosine and median norm ratio |learned| / |exact| on forward states at each nominal log-SNR "
            "(`offset` 0: on-schedule; 0.5: states 0.5 log-SNR noisier, as a shifted sampler meets them). "
            "`nag_cf`: the network's `c - n` against the exact `c* - n*`; `nag_cg`: the estimator's gradient "
            "against the exact `grad_x log p(lambda|x)`; `readout`: `c - n` against the estimator's term "
            "(what a real model shows). Plot: `fidelity.png`; recipes that change it: the fidelity study "
            "(docs/fidelity/report.md).\n",
            md_table([{"family": f, **r} for f, rs in res["fidelity"].items() for r in rs],
                     ["family", "term", "offset", "lam", "cos", "norm_ratio"])]


def _appendix(res: dict) -> list[str]:
    """The estimator check, the knob tuning, every run, and what is and is not measured."""
    return ["\n## Learned noise-level estimator vs the exact posterior (forward samples over the whole range)\n",
            md_table([{"family": k, **v} for k, v in res["estimator_check"].items()],
                     ["family", "mean_abs_posterior_mean_gap", "corr_posterior_means", "mean_kl_exact_to_learned",
                      "cross_entropy_learned", "cross_entropy_exact"]),
            "\n(log-SNR units; cross-entropy of the true bin: the exact posterior's is the Bayes floor.)\n",
            "## Knob tuning on the held-out seed\n",
            md_table([{"family": k, **t} for k, ts in res["tuning"].items() for t in ts],
                     ["family", "method", "value", "quality", "noise_shift"]),
            "\n## All runs\n\n<details><summary>every family x sampler x steps x method</summary>\n",
            md_table(res["rows"], ["family", "sampler", "steps", "method", "nfe_per_step", "noise_shift", "signed_shift",
                                   "quality", "energy_distance", "nll", "diverged"]),
            "\n</details>\n",
            "## What is and is not measured\n",
            "* Exact: the noise level of every state (closed-form posterior) and the distance to the true distribution. "
            "Not measured here: images, perceptual quality, text conditioning; see the image benchmark for real data.\n"
            "* The testbed's models are MLPs on 32-D data; the size of every effect depends on how imperfect they are. "
            "The numbers say what NAG does to *this* error, not a promised FID gain."]


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


def write_figures_and_report(out: Path, res: dict, redrawn: bool = False) -> list[Path]:
    """noise_shift.png (every family), fidelity.png and report.md of a finished run (its metrics.json
    content); returns the paths written."""
    from comfy_nag.plots import to_pil

    cfg = Config(**res["meta"]["config"])
    figs = [f for name in cfg.families if name in res["plots"]
            for f in harness.shift_figures(res["plots"][name], name, "exact noise-level posterior")]
    harness.stack_images([to_pil(f) for f in figs]).save(out / "noise_shift.png")
    written = [out / "noise_shift.png"]
    if res.get("fidelity"):
        to_pil(fidelity_figure(res)).save(out / "fidelity.png")
        written.append(out / "fidelity.png")
    report = harness.save_report(out, write_report(res, cfg, res["meta"]["seconds"]), redrawn_by="demo" if redrawn else None)
    return written + [report]


def redraw(out: str | Path) -> list[Path]:
    """Rewrite ``out``'s noise_shift.png, fidelity.png and report.md from its metrics.json (no sampling);
    returns the paths written."""
    return write_figures_and_report(Path(out), harness.load_metrics(out), redrawn=True)
