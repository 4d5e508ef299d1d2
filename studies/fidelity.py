"""How much of the exact noise-awareness term the learned guidance terms carry (exact testbed).

``python -m studies fidelity --out DIR [--quick]``.  For forward states drawn at log-SNR
``lam - offset`` and evaluated at the nominal ``lam`` (offset 0: on-schedule states; offset 0.5:
half a log-SNR noisier, like a shifted sampler's), it compares

* ``nag_cf``: the network's difference of branches ``c - n`` with the exact ``c* - n*``
  (Bayes-optimal conditional and noise-unconditional predictions, :func:`testbed.exact_null_x0`);
* ``marginal_null``: ``c - sum_l p(l|x) c(x, l)``, the network's own conditional branch averaged over
  the *exact* level posterior: what a null branch distilled from the conditional one converges to;
* ``nag_cg``: the estimator's ``grad_x log g(lam|x)`` with the exact ``grad_x log p(lam|x)``.

Differences are compared in x0 space with the nominal coefficients.  Every parameterisation (eps,
velocity, score) is an affine map of the prediction with a per-sample scalar on it, so cosine and norm
ratio are the same in all of them.  ``cos``: mean over states; ``norm_ratio``: median of
``|learned| / |exact|`` (1 = right size).

It also fine-tunes each family's network with three null-branch recipes from the same start (same
steps, rate, learning rate; one factor changed): the paper's target (the noise) and two self-distilled
targets (the frozen network's conditional branch averaged over the learned estimator's or the exact
level posterior), and samples each with NAG-CF next to the exact term on the same network
(``nag_exact_term`` = learned ``c`` + ``w (c* - n*)``, the ceiling).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from comfy_nag.denoiser import Denoiser
from comfy_nag.files import atomic_write_bytes
from comfy_nag.guidance import Guidance, level_gradient
from comfy_nag.predictions import from_x0
from comfy_nag.schedules import sigma_of_logsnr, space_alpha
from comfy_nag.tensors import append_dims

from . import demo, harness, testbed
from .harness import md_table

LAMS = (-2.0, 0.0, 2.0, 4.0, 6.0)
OFFSETS = (0.0, 0.5)
TERMS = ("nag_cf", "marginal_null", "nag_cg")
RECIPES = ("noise_target", "distilled_estimator", "distilled_exact")
METHODS = ("baseline", "nag_cf", "nag_exact_term", "nag_exact_score")


@dataclass
class Config:
    """The fidelity study's settings; the networks are the demo's (``demo.Config``)."""

    quick: bool = False
    seed: int = 0
    finetune_steps: int = 1000   # per recipe, from the demo's trained network (50 % of its pretraining)
    finetune_dropout: float = 0.5
    finetune_lr: float = 1e-3
    posterior_samples: int = 4   # levels drawn from the estimator's posterior per null row
    n_states: int = 512
    nag_scale: float = 0.5       # the demo's default NAG-CF scale, window log-SNR >= 0
    samplers: tuple = ("euler", "heun")
    steps: tuple = (25,)
    n_samples: int = 1000

    @classmethod
    def make(cls, quick: bool, seed: int = 0) -> "Config":
        if not quick:
            return cls(seed=seed)
        return cls(quick=True, seed=seed, finetune_steps=150, n_states=128, samplers=("euler",), n_samples=300)


# --- measurement -------------------------------------------------------------------------------

def agreement(learned: torch.Tensor, exact: torch.Tensor) -> dict:
    """Mean cosine and median norm ratio ``|learned| / |exact|`` of per-state vectors [B, ...]."""
    learned, exact = learned.flatten(1).double(), exact.flatten(1).double()
    ratio = learned.norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)
    return {"cos": float(F.cosine_similarity(learned, exact, dim=1).mean()), "norm_ratio": float(ratio.median())}


def conditional_branch(net, schedule, y):
    """``(x_net, sigma_level) -> prediction`` of ``net``'s noise-conditional branch for classes ``y``."""
    def branch(xn, sl):
        t = schedule.net_time(sl.float()).expand(xn.shape[0])
        with torch.no_grad():
            return net(xn, t, y, torch.zeros(xn.shape[0], dtype=torch.bool))
    return branch


def measure(net, estimator, gmm, fam, bins, n: int = 512, seed: int = 0, lams=LAMS, offsets=OFFSETS) -> list[dict]:
    """Rows ``{lam, offset, term, cos, norm_ratio}`` for each term of :data:`TERMS`."""
    sch, space = fam.schedule, fam.schedule.space
    den = Denoiser(net, sch, fam.prediction)
    g = torch.Generator().manual_seed(seed + 99)
    rows = []
    for lam in lams:
        for off in offsets:
            x0, y = gmm.sample(n, generator=g)
            s_true = sigma_of_logsnr(space, torch.tensor(lam - off)).float()
            x = space_alpha(space, s_true) * x0 + s_true * torch.randn(x0.shape, generator=g)
            s = sigma_of_logsnr(space, torch.tensor(lam)).float().expand(n)
            with torch.no_grad():
                br = den.branch_x0(x, s, y, ("cond", "null_cond"))
            exact = testbed.exact_term(gmm, x, s, fam.schedule, fam.prediction, y)
            marg = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, branch=conditional_branch(net, sch, y))
            learned = {"nag_cf": br["cond"] - br["null_cond"], "marginal_null": br["cond"] - marg,
                       "nag_cg": level_gradient(estimator, x, s, space, sch.native(s)[0])}
            for term in TERMS:
                ref = testbed.exact_level_gradient(gmm, x, s, sch, bins) if term == "nag_cg" else exact
                rows.append({"lam": lam, "offset": off, "term": term, **agreement(learned[term], ref)})
    return rows


# --- null-branch recipes -------------------------------------------------------------------------

def distilled_target(teacher, fam, posterior: str, gmm=None, estimator=None, samples: int = 4, generator=None):
    """``null_target`` for :func:`comfy_nag.losses.denoising_loss`: the frozen ``teacher``'s conditional
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


def finetune(tr: demo.Trained, net, recipe: str, cfg: Config, progress: bool = True) -> float:
    """Fine-tune ``net`` (a copy of ``tr.net``) in place with noise-condition dropout and ``recipe``'s null
    target; the frozen teacher is ``tr.net``.  Returns the mean loss of the last 50 steps."""
    teacher = copy.deepcopy(tr.net).eval()
    g = torch.Generator().manual_seed(cfg.seed + 7)
    target = None
    if recipe == "distilled_estimator":
        target = distilled_target(teacher, tr.fam, "estimator", estimator=tr.estimator, samples=cfg.posterior_samples,
                                  generator=g)
    elif recipe == "distilled_exact":
        target = distilled_target(teacher, tr.fam, "exact", gmm=tr.gmm)
    elif recipe != "noise_target":
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    bar, cb = harness.progress(cfg.finetune_steps, f"{tr.fam.name}: {recipe}", progress)
    hist = testbed.train_denoiser(net, tr.gmm, tr.fam.schedule, tr.fam.prediction, cfg.finetune_steps,
                                  lr=cfg.finetune_lr, t_dropout=cfg.finetune_dropout, seed=cfg.seed + 7, callback=cb,
                                  null_target=target)
    bar.close()
    return float(np.mean(hist[-50:]))


def sample_methods(tr: demo.Trained, net, dcfg: demo.Config, cfg: Config, ev: demo.Eval) -> list[dict]:
    """Late shift and quality of baseline, NAG-CF and the exact term on ``net`` (same noise, same classes)."""
    win = tr.window(dcfg.nag_min_logsnr)
    rows = []
    for sampler in cfg.samplers:
        for steps in cfg.steps:
            for method in METHODS:
                g = Guidance(nag_scale=cfg.nag_scale, nag_window=win) if method == "nag_cf" else Guidance()
                den = Denoiser(net, tr.fam.schedule, tr.fam.prediction, g)
                exact = {"nag_exact_term": testbed.ExactTermNAG, "nag_exact_score": testbed.ExactScoreNAG}.get(method)
                if exact:
                    den = exact(den, tr.gmm, tr.fam, cfg.nag_scale, win, tr.bins)
                res = demo.run_one(tr, ev, g, None, sampler, steps, denoiser=den)
                rows.append({"method": method, "sampler": sampler, "steps": steps,
                             "noise_shift": res["shift"]["exact"]["noise_shift"],
                             "signed_shift": res["shift"]["exact"]["signed_shift"], "quality": res["quality"]})
    return rows


# --- the study ----------------------------------------------------------------------------------

def study(cfg: Config, log=print, progress: bool = True, stages: harness.Stages | None = None,
          families: tuple | None = None) -> dict:
    dcfg = demo.Config.make(cfg.quick, cfg.seed)
    gmm = testbed.GaussianMixture.make(dim=dcfg.dim, seed=dcfg.seed)
    out = {"fidelity": [], "sampling": [], "finetune_loss": {}}
    for name in families or dcfg.families:
        tr = demo.train_family(name, gmm, dcfg, log=log, stages=stages, progress=progress)
        ev = demo.make_eval(tr, dcfg, cfg.seed)
        ev = demo.Eval(ev.readout, ev.ref_x, ev.ref_y, ev.y[:cfg.n_samples], ev.x0_fwd[:cfg.n_samples], ev.seed)
        nets = {"demo": tr.net}
        for recipe in RECIPES:
            net = copy.deepcopy(tr.net)
            spec = {"stage": "fidelity recipe", "family": name, "recipe": recipe, "config": asdict(cfg),
                    "demo": asdict(dcfg)}

            def make(recipe=recipe, net=net):
                return {"loss": finetune(tr, net, recipe, cfg, progress)}

            done = stages.modules(f"{name}_{recipe}", spec, {"net": net}, make) if stages else make()
            net.eval()
            nets[recipe], out["finetune_loss"][f"{name}/{recipe}"] = net, done["loss"]
        for recipe, net in tqdm(nets.items(), desc=f"{name}: fidelity + sampling", disable=not progress):
            for r in measure(net, tr.estimator, gmm, tr.fam, tr.bins, cfg.n_states, cfg.seed):
                out["fidelity"].append({"family": name, "recipe": recipe, **r})
            for r in sample_methods(tr, net, dcfg, cfg, ev):
                out["sampling"].append({"family": name, "recipe": recipe, **r})
    return out


def share_of_exact(rows: list[dict]) -> list[dict]:
    """Per family/recipe/sampler/steps: NAG-CF's late-shift reduction as a share of the exact term's."""
    out = []
    keys = sorted({(r["family"], r["recipe"], r["sampler"], r["steps"]) for r in rows})
    for fam, recipe, sampler, steps in keys:
        get = {r["method"]: r for r in rows if (r["family"], r["recipe"], r["sampler"], r["steps"]) == (fam, recipe, sampler, steps)}
        base, cf, ex, sc = get["baseline"], get["nag_cf"], get["nag_exact_term"], get["nag_exact_score"]
        gain_ex = base["noise_shift"] - ex["noise_shift"]
        out.append({"family": fam, "recipe": recipe, "sampler": sampler, "steps": steps,
                    "shift_baseline": base["noise_shift"], "shift_nag_cf": cf["noise_shift"],
                    "shift_exact_term": ex["noise_shift"], "shift_exact_score": sc["noise_shift"],
                    "share_of_exact": (base["noise_shift"] - cf["noise_shift"]) / gain_ex if gain_ex > 0 else float("nan"),
                    "quality_baseline": base["quality"], "quality_nag_cf": cf["quality"],
                    "quality_exact_term": ex["quality"], "quality_exact_score": sc["quality"]})
    return out


def figure(res: dict):
    """Cosine with the exact term against log-SNR: one panel per family and offset."""
    import matplotlib.pyplot as plt

    fams = sorted({r["family"] for r in res["fidelity"]})
    fig, axes = plt.subplots(len(fams), len(OFFSETS), figsize=(5.2 * len(OFFSETS), 3.6 * len(fams)), squeeze=False)
    styles = {"nag_cf": "-", "marginal_null": "--", "nag_cg": ":"}
    colors = dict(zip(("demo",) + RECIPES, ("#1f77b4", "#7f7f7f", "#d62728", "#2ca02c")))
    for i, fam in enumerate(fams):
        for j, off in enumerate(OFFSETS):
            ax = axes[i][j]
            for recipe in ("demo",) + RECIPES:
                for term in TERMS:
                    if term == "nag_cg" and recipe != "demo":
                        continue  # the estimator does not change with the recipe
                    pts = [(r["lam"], r["cos"]) for r in res["fidelity"]
                           if (r["family"], r["recipe"], r["term"], r["offset"]) == (fam, recipe, term, off)]
                    if pts:
                        xs, ys = zip(*pts)
                        label = "NAG-CG estimator" if term == "nag_cg" else f"{recipe}: {term}"
                        ax.plot(xs, ys, styles[term], marker="o", ms=3, color="#8c564b" if term == "nag_cg" else colors[recipe],
                                label=label)
            ax.axhline(0.8, color="k", lw=0.6, alpha=0.4)
            ax.set_ylim(-0.2, 1.02)
            ax.set_title(f"{fam}: states {off:g} log-SNR noisier than nominal" if off else f"{fam}: on-schedule states",
                         fontsize=9)
            ax.set_xlabel("nominal log-SNR")
            ax.set_ylabel("cosine with the exact term")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def write_report(out: Path, res: dict) -> str:
    cfg = Config(**res["meta"]["config"])
    L = [f"# Fidelity of the learned NAG terms ({'quick' if cfg.quick else 'full'})", "", *([harness.SMOKE_TEST] if cfg.quick else []),
         f"Generated by `python -m studies fidelity --out {out.name}{' --quick' if cfg.quick else ''}` in "
         f"{res['meta']['seconds'] / 60:.1f} min (seed {cfg.seed})" + (f"; {res['meta']['note']}." if res["meta"].get("note") else "."), "",
         "Networks: the demo's MLP denoisers (dropout 0.1 from scratch, row `demo`), then each fine-tuned from that "
         f"network for {cfg.finetune_steps} steps with noise-condition dropout {cfg.finetune_dropout}, learning rate "
         f"{cfg.finetune_lr}, and one null-row target: `noise_target` (the paper's: the noise / velocity), "
         f"`distilled_estimator` (the frozen network's conditional branch averaged over {cfg.posterior_samples} levels "
         "drawn from the learned estimator's posterior) or `distilled_exact` (over the exact level posterior).", "",
         "## Agreement with the exact term", "",
         "`cos` (mean) and `norm_ratio` (median |learned| / |exact|) per nominal log-SNR, on forward states at the "
         "nominal level and 0.5 log-SNR noisier. `marginal_null` = the network's conditional branch averaged over "
         "the exact level posterior (what a distilled null branch converges to); `nag_cg` = the estimator's gradient "
         "against the exact grad log p(lambda|x).", ""]
    lams = sorted({r["lam"] for r in res["fidelity"]})
    table = []
    for key in sorted({(r["family"], r["recipe"], r["term"], r["offset"]) for r in res["fidelity"]}):
        get = {r["lam"]: r for r in res["fidelity"] if (r["family"], r["recipe"], r["term"], r["offset"]) == key}
        table.append(dict(zip(("family", "recipe", "term", "offset"), key),
                          **{f"{lam:+g}": f"{get[lam]['cos']:.2f} / {get[lam]['norm_ratio']:.2f}" for lam in lams}))
    L += [md_table(table, ["family", "recipe", "term", "offset"] + [f"{lam:+g}" for lam in lams]), "",
          "## Late noise shift: NAG-CF against the exact term on the same network", "",
          f"NAG scale {cfg.nag_scale}, window log-SNR >= 0, {cfg.n_samples} samples; `share_of_exact` = NAG-CF's "
          "late-shift reduction / the exact term's (1 = the ceiling). `exact_term`: learned c + w (c* - n*); "
          "`exact_score`: learned c + w grad log p(lambda|x) (the Bayes term itself, score space).", "",
          md_table(share_of_exact(res["sampling"]), ["family", "recipe", "sampler", "steps", "shift_baseline",
                                                     "shift_nag_cf", "shift_exact_term", "shift_exact_score", "share_of_exact",
                                                     "quality_baseline", "quality_nag_cf", "quality_exact_term",
                                                     "quality_exact_score"]), "",
          "Fine-tune losses (last 50 steps): " + ", ".join(f"{k} {v:.4f}" for k, v in res["finetune_loss"].items()), ""]
    return "\n".join(L)


def run(out, quick: bool = False, seed: int = 0, threads: int | None = None, families: tuple | None = None) -> dict:
    """Run the study into ``out``: fidelity.json, report.md, fidelity.png (trained stages reused from out/work).

    ``families``: a subset of the demo's (default: all).  Two commands with different families can share
    one ``out`` at the same time: each family's trained stages are reused by the other."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    cfg = Config.make(quick, seed)
    t0 = time.time()
    log = lambda msg: tqdm.write(msg)  # noqa: E731
    res = study(cfg, log=log, stages=harness.Stages(out / "work", log), families=families)
    res["meta"] = {"config": asdict(cfg), "seconds": time.time() - t0, "torch": torch.__version__}
    atomic_write_bytes(out / "fidelity.json", json.dumps(res, indent=1, default=float).encode())
    write_figures_and_report(out, res)
    log(f"done in {res['meta']['seconds'] / 60:.1f} min: {out}/fidelity.json, report.md, fidelity.png")
    return res


def write_figures_and_report(out: Path, res: dict) -> None:
    from comfy_nag.plots import to_pil

    to_pil(figure(res)).save(out / "fidelity.png")
    atomic_write_bytes(out / "report.md", write_report(out, res).encode())
