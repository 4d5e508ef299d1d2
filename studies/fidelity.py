"""Null-branch recipes and how much of the exact noise-awareness term the learned terms carry (exact testbed).

``python -m studies fidelity --out DIR [--quick] [--seeds 0 1] [--families sit sd1]``.

Each family's network is pretrained *without* noise-condition dropout (like a community checkpoint),
then fine-tuned with each :data:`RECIPES` entry (one factor changed from :data:`BASE`).  Each fine-tuned
network's terms are measured against the exact ones (:func:`studies.terms.measure`: ``nag_cf``,
``readout``, ``marginal_null``, ``nag_cg``); the ``readout`` is validated against ``nag_cf`` along one
fine-tune.  Each recipe is also sampled with NAG-CF next to the exact term on the same network
(``nag_exact_term`` = learned ``c`` + ``w (c* - n*)``, the ceiling), for the late shift and quality.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from comfy_nag.denoiser import Denoiser
from comfy_nag.guidance import Guidance
from comfy_nag.predictions import from_x0
from comfy_nag.tensors import append_dims

from . import harness, testbed, toolkit
from .harness import md_table
from .terms import LAMS, OFFSETS, TERMS, conditional_branch, late_cos, measure

METHODS = ("baseline", "nag_cf", "nag_exact_term")


@dataclass(frozen=True)
class Recipe:
    """One way to fine-tune the null branch into a network pretrained without noise-condition dropout.

    ``length``: fine-tune steps as a fraction of the pretraining steps; ``null_weight``: loss weight of the
    dropped rows; ``null_mode``: ``sentinel`` (the null timestep through the timestep embedding) or
    ``learned`` (a learned null embedding); ``ema``: decay of the evaluated weight average (0: the last
    weights); ``target``: ``noise`` (the paper's: the noise / velocity for every row) or ``distilled``
    (kept rows regress the frozen pretrained network's prediction, dropped rows its conditional branch
    averaged over levels drawn from the estimator's posterior: a target with far less variance).
    """

    name: str
    dropout: float = 0.2
    length: float = 0.1
    null_weight: float = 1.0
    null_mode: str = "sentinel"
    ema: float = 0.0
    target: str = "noise"

    def factor(self) -> str:
        """The one setting this recipe changes from :data:`BASE` ("" for the base itself)."""
        diff = [f"{k}={v}" for k, v in asdict(self).items() if k != "name" and v != getattr(BASE, k)]
        return ", ".join(diff)


BASE = Recipe("base")
RECIPES = (BASE, Recipe("control", dropout=0.0), Recipe("dropout_0.1", dropout=0.1), Recipe("dropout_0.3", dropout=0.3),
           Recipe("length_3%", length=0.03), Recipe("length_30%", length=0.3), Recipe("null_weight_3", null_weight=3.0),
           Recipe("learned_null", null_mode="learned"), Recipe("ema_0.995", ema=0.995), Recipe("distilled", target="distilled"))
RECIPE_BY_NAME = {r.name: r for r in RECIPES}
RECIPE_ORDER = {r.name: i for i, r in enumerate(RECIPES)}
TRACKED = "length_30%"  # the readout is validated at checkpoints along this fine-tune


@dataclass
class Config:
    """The fidelity study's settings.  Each family's network is the demo's MLP pretrained for
    ``pretrain_steps`` *without* noise-condition dropout (like a community checkpoint), with the demo's
    estimator; every recipe fine-tunes a copy of it."""

    quick: bool = False
    seeds: tuple = (0, 1)
    pretrain_steps: int = 8000
    finetune_lr: float = 1e-3
    posterior_samples: int = 4   # levels drawn from the estimator's posterior per distilled null row
    n_states: int = 512
    nag_scale: float = 0.5       # the demo's default NAG-CF scale, window log-SNR >= 0
    samplers: tuple = ("euler", "heun")
    steps: tuple = (25,)
    n_samples: int = 1000
    track: tuple = (0.0, 0.01, 0.03, 0.1, 0.3)  # checkpoints of the tracked fine-tune (fractions of pretraining)
    recipes: tuple = tuple(r.name for r in RECIPES)
    replicate: tuple = ("base", "control", "dropout_0.1", "dropout_0.3", "length_30%", "distilled")  # on later seeds
    lams: tuple = LAMS           # nominal log-SNRs of the fidelity measurement
    stock_estimators: tuple = (1500, 30000)  # estimator training steps for the stock block (the demo's, the trainer's)

    @classmethod
    def make(cls, quick: bool, seeds: tuple = (0, 1)) -> "Config":
        if not quick:
            return cls(seeds=tuple(seeds))
        return cls(quick=True, seeds=tuple(seeds)[:1], pretrain_steps=800, n_states=128, samplers=("euler",),
                   n_samples=300, track=(0.0, 0.1, 0.3), recipes=("base", "control", "length_30%", "distilled"),
                   stock_estimators=(400,))

    def recipe_list(self, seed: int) -> list[Recipe]:
        """The full grid on the first seed; the ``replicate`` subset on later seeds."""
        names = self.recipes if seed == self.seeds[0] else [n for n in self.recipes if n in self.replicate]
        return [RECIPE_BY_NAME[n] for n in names]


# --- null-branch recipes -------------------------------------------------------------------------

def distilled_target(teacher, fam, posterior: str, gmm=None, estimator=None, samples: int = 4, generator=None):
    """``null_target`` of :class:`studies.testbed.LossRecipe`: the frozen ``teacher``'s conditional
    branch averaged over the level posterior of each state.

    ``posterior``: ``"estimator"`` (``samples`` levels drawn from the noise-level estimator's posterior;
    usable on any model) or ``"exact"`` (the testbed's exact posterior over the training levels).
    """
    sch, nc = fam.schedule, getattr(teacher, "num_classes", 0)

    def from_estimator(xn, s, y):
        B = xn.shape[0]
        idx = torch.multinomial(estimator.probs(xn), samples, replacement=True, generator=generator)  # [B, k]
        lam = estimator.bins.centers()[idx].reshape(-1)
        t = sch.net_time(sch.sigma_from_logsnr(lam))
        with torch.no_grad():
            p = teacher(xn.repeat_interleave(samples, 0), t, y.repeat_interleave(samples, 0),
                        torch.zeros(B * samples, dtype=torch.bool))
        return p.reshape(B, samples, *xn.shape[1:]).mean(1)

    def from_exact(xn, s, y):
        c, a_n, s_n = sch.native(s)
        x = xn / append_dims(c, xn.dim())
        out = torch.empty_like(xn)
        for rows, conditional in ((y < nc, True), (y >= nc, False)):  # class-dropped rows: class-marginal posterior
            if bool(rows.any()):
                yr = y[rows]
                x0 = testbed.exact_null_x0(gmm, x[rows], s[rows], sch, fam.prediction, yr if conditional else None,
                                           levels=testbed.training_levels(sch, 64),
                                           branch=conditional_branch(teacher, sch, yr))
                out[rows] = from_x0(x0, fam.prediction, xn[rows], append_dims(a_n[rows], xn.dim()),
                                    append_dims(s_n[rows], xn.dim()))
        return out

    if posterior not in ("estimator", "exact"):
        raise ValueError(f"unknown posterior {posterior!r}; expected 'estimator' or 'exact'")
    return from_estimator if posterior == "estimator" else from_exact


def recipe_net(pretrained, recipe: Recipe):
    """A copy of the pretrained network set up for ``recipe`` (a learned null embedding starts at zero)."""
    if recipe.null_mode == "sentinel":
        return copy.deepcopy(pretrained)
    net = type(pretrained)(**{**pretrained.kwargs, "null_mode": recipe.null_mode})
    missing, unexpected = net.load_state_dict(pretrained.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("null_emb") for k in missing), (missing, unexpected)
    return net


def finetune(tr: toolkit.Trained, net, recipe: Recipe, cfg: Config, seed: int, on_step=None, progress: bool = True) -> dict:
    """Fine-tune ``net`` in place with ``recipe`` from the frozen pretrained ``tr.net``; with ``recipe.ema``
    the EMA weights are copied into ``net`` at the end.  ``on_step(step, net)`` runs before each step and
    after the last.  Returns ``{"loss": mean of the last 50 steps, "steps": n}``."""
    steps = max(1, round(recipe.length * cfg.pretrain_steps))
    teacher = copy.deepcopy(tr.net).eval()
    g = torch.Generator().manual_seed(seed + 7)
    loss_recipe = testbed.LossRecipe(null_weight=recipe.null_weight)
    if recipe.target == "distilled":
        loss_recipe = testbed.LossRecipe(
            distilled_target(teacher, tr.fam, "estimator", estimator=tr.estimator, samples=cfg.posterior_samples,
                             generator=g),
            lambda xn, s, y: teacher(xn, tr.fam.schedule.net_time(s), y, torch.zeros(xn.shape[0], dtype=torch.bool)),
            recipe.null_weight)
    elif recipe.target != "noise":
        raise ValueError(f"unknown recipe target {recipe.target!r}; expected 'noise' or 'distilled'")
    ema = copy.deepcopy(net).requires_grad_(False) if recipe.ema else None
    bar, cb = harness.progress(steps, f"{tr.fam.name}: {recipe.name}", progress)
    if on_step:
        on_step(0, net)

    def callback(step, loss):
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - recipe.ema)
        cb(step, loss)
        if on_step:
            on_step(step + 1, ema if ema is not None else net)

    hist = testbed.train_denoiser(net, tr.gmm, tr.fam.schedule, tr.fam.prediction, steps, lr=cfg.finetune_lr,
                                  t_dropout=recipe.dropout, seed=seed + 7, callback=callback, recipe=loss_recipe)
    bar.close()
    if ema is not None:
        net.load_state_dict(ema.state_dict())
    net.eval()
    return {"loss": float(np.mean(hist[-50:])), "steps": steps}


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
                res = toolkit.run_one(tr, ev, g, None, sampler, steps, denoiser=den)
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


STOCK_METHODS = ("baseline", "nag_cf_est", "nag_exact_term")
STOCK_TERMS = ("nag_cf_est", "nag_cf_est3", "nag_cf_est_exact", "marginal_null")


def stock(tr: toolkit.Trained, dcfg: toolkit.Config, cfg: Config, ev: toolkit.Eval, seed: int, log=print) -> list[dict]:
    """The pretrained network as it is (no fine-tune: a stock checkpoint) with the null branch from an estimator
    trained for each of ``cfg.stock_estimators`` steps (the demo's recipe otherwise): its scale tuned on the
    held-out seed for Euler and Heun together, rows of :data:`STOCK_METHODS` at 25 and 50 steps (the exact term at
    the same scale), and how much of the exact term the branch carries."""
    out = []
    for steps in cfg.stock_estimators:
        trs = tr if steps == dcfg.estimator_steps else dataclasses.replace(tr, estimator=_estimator(tr, steps, seed))
        tuned = toolkit.tune(trs, dcfg, log, methods=("nag_cf_est",), samplers=("euler", "heun"))[0]
        knobs = {**tuned, "nag_cf": tuned["nag_cf_est"]}
        rows = [toolkit.sample_row(trs, dcfg, ev, m, sampler, n, knobs) for sampler in cfg.samplers
                for n in sorted({*cfg.steps, 50}) for m in STOCK_METHODS]
        out.append({"estimator_steps": steps, "scale": tuned["nag_cf_est"], "rows": rows,
                    "fidelity": measure(trs.net, trs.estimator, trs.gmm, trs.fam, trs.bins, cfg.n_states, seed, cfg.lams,
                                        terms=STOCK_TERMS)})
    return out


def _estimator(tr: toolkit.Trained, steps: int, seed: int):
    """The demo's estimator recipe trained for ``steps`` on ``tr``'s data (same bins, width and seeds)."""
    from comfy_nag.estimators import NoiseLevelEstimator, train_estimator
    torch.manual_seed(seed)
    est = NoiseLevelEstimator((tr.gmm.dim,), tr.bins, width=128, depth=3)
    train_estimator(est, lambda n, g: tr.gmm.sample(n, generator=g)[0], tr.fam.schedule, steps, lr=3e-3,
                    generator=torch.Generator().manual_seed(seed + 1))
    return est.eval()


def study(cfg: Config, log=print, progress: bool = True, stages: harness.Stages | None = None,
          families: tuple | None = None) -> dict:
    out = {"fidelity": [], "sampling": [], "finetune": {}, "track": [], "stock": []}
    for seed in cfg.seeds:
        for name in families or toolkit.Config().families:
            tr, dcfg = pretrained_family(name, seed, cfg, log, stages, progress)
            ev = toolkit.make_eval(tr, dcfg, seed)
            ev = toolkit.Eval(ev.readout, ev.ref_x, ev.ref_y, ev.y[:cfg.n_samples], ev.x0_fwd[:cfg.n_samples], ev.seed)
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
                            for r in measure(current.eval(), tr.estimator, tr.gmm, tr.fam, tr.bins, cfg.n_states, seed,
                                             cfg.lams, offsets=(0.0,), terms=("nag_cf", "readout")):
                                track.append({"step": step, **r})
                            current.train()

                    done = finetune(tr, net, recipe, cfg, seed, on_step, progress)
                    terms = TERMS if recipe is BASE else ("nag_cf", "readout")  # the ceiling and NAG-CG: once per network family
                    return {**done, "track": track,  # measured inside the stage, so a finished recipe is reused whole
                            "fidelity": measure(net, tr.estimator, tr.gmm, tr.fam, tr.bins, cfg.n_states, seed, cfg.lams,
                                                terms=terms),
                            "sampling": sample_methods(tr, net, dcfg, cfg, ev)}

                done = stages.modules(f"s{seed}_{name}_{recipe.name}", spec, {"net": net}, make) if stages else make()
                net.eval()
                out["finetune"][f"{seed}/{name}/{recipe.name}"] = {"loss": done["loss"], "steps": done["steps"]}
                for key in ("track", "fidelity", "sampling"):
                    out[key] += [{**tag, **({} if key == "track" else {"recipe": recipe.name}), **r} for r in done[key]]
                log(f"[seed {seed} {name}] {recipe.name}: done")
    return out


def _get(rows, **key):
    return [r for r in rows if all(r.get(k) == v for k, v in key.items())]


def share_of_exact(rows: list[dict]) -> list[dict]:
    """Per seed/family/recipe/sampler/steps: NAG-CF's late-shift reduction as a share of the exact term's."""
    out = []
    keys = sorted({(r["seed"], r["family"], r["recipe"], r["sampler"], r["steps"]) for r in rows},
                  key=lambda k: (k[0], k[1], RECIPE_ORDER.get(k[2], len(RECIPES)), k[3], k[4]))
    for seed, fam, recipe, sampler, steps in keys:
        get = {r["method"]: r for r in _get(rows, seed=seed, family=fam, recipe=recipe, sampler=sampler, steps=steps)}
        base, cf, ex = get["baseline"], get["nag_cf"], get["nag_exact_term"]
        gain_ex = base["noise_shift"] - ex["noise_shift"]
        out.append({"seed": seed, "family": fam, "recipe": recipe, "sampler": sampler, "steps": steps,
                    "shift_baseline": base["noise_shift"], "shift_nag_cf": cf["noise_shift"],
                    "shift_exact_term": ex["noise_shift"],
                    "share_of_exact": (base["noise_shift"] - cf["noise_shift"]) / gain_ex if gain_ex > 0 else float("nan"),
                    "quality_baseline": base["quality"], "quality_nag_cf": cf["quality"],
                    "quality_exact_term": ex["quality"]})
    return out


def summary(res: dict) -> list[dict]:
    """One row per seed, family and recipe: fidelity, readout, share of the exact term, quality."""
    shares = share_of_exact(res["sampling"])
    out = []
    for sh in shares:
        if sh["sampler"] != "euler":
            continue
        key = {"seed": sh["seed"], "family": sh["family"], "recipe": sh["recipe"]}
        fid = _get(res["fidelity"], **key)
        heun = _get(shares, sampler="heun", steps=sh["steps"], **key)
        ctrl = _get(res["sampling"], method="baseline", sampler="euler", steps=sh["steps"], seed=sh["seed"],
                    family=sh["family"], recipe="control")
        out.append({**key, "finetune_steps": res["finetune"][f"{sh['seed']}/{sh['family']}/{sh['recipe']}"]["steps"],
                    "cos_late": late_cos(fid), "cos_late_noisier": late_cos(fid, offset=0.5),
                    "readout_late": late_cos(fid, "readout"), "ceiling_late": late_cos(fid, "marginal_null"),
                    "share_euler": sh["share_of_exact"], "share_heun": heun[0]["share_of_exact"] if heun else float("nan"),
                    "quality_w0": sh["quality_baseline"], "quality_w0_vs_control":
                        sh["quality_baseline"] / ctrl[0]["quality"] - 1 if ctrl else float("nan"),
                    "quality_nag_cf": sh["quality_nag_cf"]})
    return out


def headline(res: dict) -> str:
    """The README's table: per recipe, NAG-CF's cosine with the exact term (log-SNR >= 0, on-schedule /
    0.5 log-SNR noisier) per family and seed, and its share of the exact term's late-shift cut (Euler-25)."""
    rows = {(r["seed"], r["family"], r["recipe"]): r for r in summary(res)}
    seeds = sorted({k[0] for k in rows})
    fams = sorted({k[1] for k in rows})
    head = ["recipe"] + [f"{f} cos (seed {sd})" for f in fams for sd in seeds] + [f"{f} share of exact cut (seed {sd})"
                                                                               for f in fams for sd in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for recipe in RECIPE_ORDER:
        if not any(k[2] == recipe for k in rows):
            continue
        cells = [f"`{recipe}`" + (f" ({RECIPE_BY_NAME[recipe].factor()})" if recipe != "base" else "")]
        for f in fams:
            for sd in seeds:
                r = rows.get((sd, f, recipe))
                cells.append(f"{r['cos_late']:.2f} / {r['cos_late_noisier']:.2f}" if r else "–")
        for f in fams:
            for sd in seeds:
                r = rows.get((sd, f, recipe))
                cells.append(f"{r['share_euler']:.2f}" if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    ceil = [f"{f} {rows[(seeds[0], f, 'base')]['ceiling_late']:.2f}" for f in fams if (seeds[0], f, "base") in rows]
    lines.append("")
    lines.append(f"Ceiling (the base network's own conditional branch averaged over the exact level posterior, seed "
                 f"{seeds[0]}): {', '.join(ceil)}.")
    return "\n".join(lines)


def track_pairs(res: dict, seed: int, fam: str) -> dict:
    """``{(step, lam): {"nag_cf": exact-fidelity cos, "readout": readout cos}}`` of one tracked fine-tune,
    nominal log-SNRs >= 0 only."""
    pairs = {}
    for r in _get(res["track"], seed=seed, family=fam):
        if r["lam"] >= 0:
            pairs.setdefault((r["step"], r["lam"]), {})[r["term"]] = r["cos"]
    return {k: v for k, v in pairs.items() if len(v) == 2}


def readout_validation(res: dict) -> list[dict]:
    """Per seed and family: Pearson correlation of the readout's cosine with the exact fidelity cosine over
    the tracked checkpoints x nominal log-SNRs >= 0, and the values at the first and last checkpoint."""
    out = []
    for seed, fam in sorted({(r["seed"], r["family"]) for r in res["track"]}):
        pairs = track_pairs(res, seed, fam)
        ex, ro = zip(*[(v["nag_cf"], v["readout"]) for v in pairs.values()])
        steps = sorted({k[0] for k in pairs})
        at = lambda st, t: float(np.mean([v[t] for k, v in pairs.items() if k[0] == st]))  # noqa: E731
        out.append({"seed": seed, "family": fam, "checkpoints": len(steps), "pearson": float(np.corrcoef(ex, ro)[0, 1]),
                    "exact_first": at(steps[0], "nag_cf"), "exact_last": at(steps[-1], "nag_cf"),
                    "readout_first": at(steps[0], "readout"), "readout_last": at(steps[-1], "readout")})
    return out


def recipe_label(name: str) -> str:
    """A recipe in plain words: what it changes from :data:`BASE`."""
    words = {"dropout": lambda v: f"dropout {v:g}", "length": lambda v: f"{100 * v:g} % extra steps",
             "null_weight": lambda v: f"null rows weighted ×{v:g}", "null_mode": lambda v: f"{v} null embedding",
             "ema": lambda v: f"EMA {v:g}", "target": lambda v: f"{v} targets"}
    r = RECIPE_BY_NAME.get(name)
    if r is None:
        return name
    if r == BASE:
        return f"base: dropout {BASE.dropout:g}, {100 * BASE.length:g} % extra steps"
    changed = [words[k](v) for k, v in asdict(r).items() if k != "name" and v != getattr(BASE, k)]
    return f"{name}: " + ", ".join(changed) + (" (null branch untrained)" if r.dropout == 0 else "")


def _recipe_panel(ax, res: dict, seed: int, fam: str, off: float, recipes: list[str]) -> None:
    """NAG-CF's cosine with the exact term per recipe against log-SNR, and the ceiling."""
    import matplotlib

    colours = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]  # grey is the control's
    others = [r for r in recipes if r not in ("base", "control")]
    for recipe in recipes:
        rows = _get(res["fidelity"], seed=seed, family=fam, recipe=recipe, term="nag_cf", offset=off)
        style = {"base": dict(lw=3, color=colours[0], zorder=5), "control": dict(lw=1.2, color="#999999", ls="--")}.get(
            recipe, dict(lw=1.2, color=colours[1 + others.index(recipe) % (len(colours) - 1)] if recipe in others else "k"))
        ax.plot([r["lam"] for r in rows], [r["cos"] for r in rows], marker="o", ms=3, label=recipe_label(recipe), **style)
    ceil = _get(res["fidelity"], seed=seed, family=fam, recipe="base", term="marginal_null", offset=off)
    ax.plot([r["lam"] for r in ceil], [r["cos"] for r in ceil], color="k", ls=(0, (4, 2)), lw=1.2,
            label="ceiling: a perfectly trained null branch of the base network")
    ax.axhline(0.8, color="k", lw=0.8, ls=(0, (1, 2)), label="target 0.8")
    ax.set_title(f"{fam}: " + (f"states {off:g} log-SNR noisier than scheduled" if off else "states on schedule"), fontsize=9.5)
    ax.set_xlabel("scheduled noise level (log-SNR)")
    ax.grid(alpha=0.25)


def _track_panel(fig, ax, res: dict, seed0: int, fam: str) -> None:
    """The readout against the exact agreement along the tracked fine-tune (colour: fine-tune step)."""
    from matplotlib.colors import FuncNorm

    steps = sorted({r["step"] for r in res["track"]}) or [0]
    norm = FuncNorm((np.log1p, np.expm1), vmin=steps[0], vmax=max(steps[-1], 1))
    sc = None
    for seed in sorted({r["seed"] for r in res["track"]}):
        pts = [(v["nag_cf"], v["readout"], k[0]) for k, v in track_pairs(res, seed, fam).items()]
        if pts:
            sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", norm=norm,
                            marker="o" if seed == seed0 else "^", s=22, edgecolors="none")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="fine-tune step", ticks=steps, shrink=0.9)
    ax.set_xlabel("agreement with the exact NAG term (cosine)")
    ax.set_ylabel("readout, a check without the exact term\n(NAG-CF's term vs the estimator's, cosine)")
    seeds = sorted({r["seed"] for r in res["track"]})
    marks = ", ".join(f"{'●' if s == seed0 else '▲'} seed {s}" for s in seeds)
    ax.set_title(f"{fam}: does the readout follow the true agreement?\nalong the {TRACKED} fine-tune ({marks})", fontsize=9.5)
    ax.grid(alpha=0.25)


def figure(res: dict):
    """Per family: NAG-CF's cosine with the exact term against log-SNR for each recipe (first seed), and the
    readout against the exact fidelity along the tracked fine-tune (every seed).  One legend below."""
    from matplotlib.figure import Figure

    seed0 = min(r["seed"] for r in res["fidelity"])
    fams = sorted({r["family"] for r in res["fidelity"]})
    recipes = [name for name in RECIPE_ORDER if any(x["recipe"] == name for x in res["fidelity"])]
    fig = Figure(figsize=(13, 3.6 * len(fams) + 1.6), layout="constrained")
    axes = fig.subplots(len(fams), 3, squeeze=False, width_ratios=(1, 1, 1.15))
    low = min([-0.3] + [r["cos"] - 0.05 for r in res["fidelity"] if r["term"] in ("nag_cf", "marginal_null")])
    for i, fam in enumerate(fams):
        for j, off in enumerate(OFFSETS):
            _recipe_panel(axes[i][j], res, seed0, fam, off, recipes)
            axes[i][j].set_ylim(low, 1.02)
            axes[i][j].set_ylabel("agreement with the exact NAG term\n(NAG-CF's learned term, cosine)" if j == 0 else "")
        _track_panel(fig, axes[i][2], res, seed0, fam)
    fig.suptitle(f"Null-branch recipes: how closely NAG-CF's learned term points where the exact term points "
                 f"(seed {seed0})", fontsize=11)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
    return fig


def stock_table(res: dict) -> list[dict]:
    """Per seed and family, the pretrained network without any fine-tune and the null branch from the estimator:
    settings (Euler/Heun x 25/50) where it lowers the late shift / improves quality against the baseline, its
    scale, and its cosine with the exact term (log-SNR >= 0, on-schedule) next to its ceilings."""
    out = []
    for st in res.get("stock", []):
        out.append({"seed": st["seed"], "family": st["family"], "estimator_steps": st["estimator_steps"],
                    "scale": st["scale"], **toolkit.against_baseline(st["rows"], "nag_cf_est"),
                    **{f"cos_{t}": late_cos(st["fidelity"], t) for t in STOCK_TERMS}})
    return out


def _stock_section(res: dict) -> list[str]:
    """The report's section on the pretrained network as it is, with the null branch from the estimator."""
    if not res.get("stock"):
        return []
    rows = [{"seed": st["seed"], "family": st["family"], "estimator_steps": st["estimator_steps"], **r}
            for st in res["stock"] for r in st["rows"]]
    return ["## The pretrained network as it is: the null branch from the estimator", "",
            "No fine-tune: NAG-CF with the null branch built from an estimator's posterior "
            "(`comfy_nag.posterior_null`; `nag_cf_est`, one level), the demo's estimator recipe trained for "
            "`estimator_steps` (1500: the demo's; 30000: the trainer's default), its scale tuned on the held-out seed "
            "for Euler and Heun together; `nag_exact_term` adds the exact term at that scale (its ceiling). Cosines as in the "
            "summary (`nag_cf_est3`: three levels; `nag_cf_est_exact`: the exact posterior over the estimator's bins; "
            "`marginal_null`: over every training level).", "",
            md_table(stock_table(res), ["seed", "family", "estimator_steps", "scale", "n", "shift_lower", "quality_better",
                                        "both",
                                        *[f"cos_{t}" for t in STOCK_TERMS]]), "",
            md_table(rows, ["seed", "family", "estimator_steps", "sampler", "steps", "method", "nfe_per_step",
                            "noise_shift", "signed_shift", "quality"]), ""]


def write_report(out: Path, res: dict) -> str:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in res["meta"]["config"].items()})
    seeds = " ".join(map(str, cfg.seeds))
    L = [f"# Null-branch recipes and the fidelity of the learned NAG terms ({'quick' if cfg.quick else 'full'})", "",
         *([harness.SMOKE_TEST] if cfg.quick else []),
         f"Generated by `python -m studies fidelity --out {out.name}{' --quick' if cfg.quick else ''} --seeds {seeds}` in "
         f"{res['meta']['seconds'] / 60:.1f} min" + (f"; {res['meta']['note']}" if res["meta"].get("note") else "") + ".", "",
         f"Each family's network is the demo's MLP pretrained for {cfg.pretrain_steps} steps **without** noise-condition "
         "dropout (like a community checkpoint); each recipe fine-tunes a copy of it, changing one setting of `base` "
         f"({', '.join(f'{k}={v}' for k, v in asdict(BASE).items() if k != 'name')}; length = fine-tune steps / "
         f"pretraining steps; learning rate {cfg.finetune_lr}, cosine decay). `control` is the same fine-tune without "
         "dropout (its null branch is untrained). Seeds change the mixture, the networks and every draw.", "",
         "## Summary", "",
         "`cos_late`: NAG-CF's term `c - n` against the exact term `c* - n*`, mean cosine over nominal log-SNR 0, 2, 4, 6 "
         "(where NAG acts), on-schedule states; `cos_late_noisier`: states 0.5 log-SNR noisier; `ceiling_late`: the same "
         "with the network's own conditional branch averaged over the exact level posterior as the null branch (base rows; what a "
         "perfectly trained null branch of this network gives); `readout_late`: the agreement a user can see without an "
         "exact term (`c - n` against the estimator's gradient). `share_*`: NAG-CF's late-shift reduction / the exact "
         f"term's on the same network (NAG scale {cfg.nag_scale}, window log-SNR >= 0, {cfg.steps[0]} steps, "
         f"{cfg.n_samples} samples; 1 = the ceiling). `quality_*`: class Fréchet distance (lower is better) at scale 0 "
         "and with NAG-CF; `quality_w0_vs_control`: the fine-tune's cost at scale 0 against `control`.", "",
         md_table(summary(res), ["seed", "family", "recipe", "finetune_steps", "cos_late", "cos_late_noisier", "ceiling_late",
                                 "readout_late", "share_euler", "share_heun", "quality_w0", "quality_w0_vs_control",
                                 "quality_nag_cf"]), "",
         *_stock_section(res),
         "## The readout against the exact fidelity", "",
         f"Along the `{TRACKED}` fine-tune, at steps {', '.join(str(round(f * cfg.pretrain_steps)) for f in cfg.track)}: "
         "the readout's cosine against the exact fidelity cosine (NAG-CF vs exact term), over nominal log-SNR >= 0. "
         "`pearson` over checkpoints x log-SNRs.", "",
         md_table(readout_validation(res), ["seed", "family", "checkpoints", "pearson", "exact_first", "exact_last",
                                            "readout_first", "readout_last"]) if res["track"] else "(no tracked recipe)", "",
         "## Late noise shift: NAG-CF against the exact term on the same network", "",
         md_table(share_of_exact(res["sampling"]), ["seed", "family", "recipe", "sampler", "steps", "shift_baseline",
                                                    "shift_nag_cf", "shift_exact_term", "share_of_exact", "quality_baseline",
                                                    "quality_nag_cf", "quality_exact_term"]), "",
         "## Agreement with the exact term, per log-SNR", "",
         "`cos` (mean) / `norm_ratio` (median |learned| / |exact|). `nag_cg`: the estimator's gradient against the exact "
         "grad log p(lambda|x) (uniform prior, as it is trained; base row only: it does not depend on the recipe).", ""]
    lams = sorted({r["lam"] for r in res["fidelity"]})
    table = []
    keys = sorted({(r["seed"], r["family"], r["recipe"], r["term"], r["offset"]) for r in res["fidelity"]},
                  key=lambda k: (k[0], k[1], RECIPE_ORDER[k[2]], TERMS.index(k[3]), k[4]))
    for key in keys:
        get = {r["lam"]: r for r in _get(res["fidelity"], **dict(zip(("seed", "family", "recipe", "term", "offset"), key)))}
        table.append(dict(zip(("seed", "family", "recipe", "term", "offset"), key),
                          **{f"{lam:+g}": f"{get[lam]['cos']:.2f} / {get[lam]['norm_ratio']:.2f}" for lam in lams}))
    L += [md_table(table, ["seed", "family", "recipe", "term", "offset"] + [f"{lam:+g}" for lam in lams]), "",
          "Fine-tunes (steps, mean loss of the last 50): " + ", ".join(
              f"{k} {v['steps']} / {v['loss']:.4f}" for k, v in res["finetune"].items()), ""]
    return "\n".join(L)


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


def write_figures_and_report(out: Path, res: dict, redrawn: bool = False) -> list[Path]:
    """fidelity.png and report.md of a finished run (its fidelity.json content); returns the paths written."""
    from comfy_nag.plots import to_pil

    to_pil(figure(res)).save(out / "fidelity.png")
    return [out / "fidelity.png", harness.save_report(out, write_report(out, res), redrawn_by="fidelity" if redrawn else None,
                                                      figures=("fidelity.png",), source="fidelity.json")]


def redraw(out) -> list[Path]:
    """Rewrite ``out``'s fidelity.png and report.md from its fidelity.json (no training, no sampling);
    returns the paths written."""
    return write_figures_and_report(Path(out), harness.load_metrics(out, "fidelity.json"), redrawn=True)
