"""The exact-testbed studies' toolkit: one family's denoiser and estimator trained on a Gaussian
mixture, one sampling run scored against the exact distribution and its row (:data:`ROWS`), knob
tuning, the per-level NAG-CF scale calibration, and the criterion against the exact NAG term.

The demo, fidelity, capacity, cg_estimator and last_step studies build on it; the run, the row format
and the tuning loop are ``studies.runs``' (shared with the image benchmark); :mod:`studies.terms`
measures the learned NAG terms against the exact ones.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from comfy_nag import estimators, models
from comfy_nag.auto_scale import ReadingCalibration, calibrate_reading, calibration_knots
from comfy_nag.classifier_guidance import estimator_x0_term
from comfy_nag.denoiser import Denoiser
from comfy_nag.families import Family, family
from comfy_nag.scale_profiles import ScaleFit, ScaleProfile

from . import harness, methods, runs, testbed

QUALITY_METRIC = "class_frechet_distance"
TUNED = ("nag_cf", "nag_cg", "eps_scaling", "time_shift", "nag_cf_est")  # each method's one knob, tuned by tune()
# A testbed row: the exact readout's late shift, the exact-distribution scores, and the knob each method's row records
# under the name of what it sets (the CFG scale and the NAG window are the study's, in its Config).
ROWS = runs.RowFormat(
    "exact", QUALITY_METRIC, ("energy_distance", "nll", "diverged", "seconds_per_step"),
    labels={"nag_cf": "nag_scale", "nag_cf_cfg": "nag_scale", "nag_cf_est": "nag_scale", "nag_cf_cal": "nag_scale",
            "nag_cg": "cg_scale", "eps_scaling": "eps_scale", "time_shift": "window", "nag_profile": "profile"},
    omitted=frozenset({"cfg", "window"}), shown={"nag_profile": "calibrated to the estimator (calibrate())"})


@dataclass
class Config:
    """Everything an exact-testbed run depends on: the demo's built-in defaults (``quick`` shrinks them);
    the other testbed studies start from it.  Its fields are in the stages' fingerprints: renaming one or
    changing a default makes every finished stage stale."""

    quick: bool = False
    seed: int = 0
    dim: int = 32
    families: tuple = ("sit", "sd1")
    samplers: tuple = ("euler", "heun", "euler_maruyama", "ddpm")
    steps: tuple = (10, 25, 50, 100)
    train_steps: int = 2000
    hidden: int = 128
    depth: int = 3
    t_dropout: float = 0.1
    y_dropout: float = 0.1
    estimator_steps: int = 1500
    n_samples: int = 2000
    n_reference: int = 4000
    bins: int = 40
    cfg_scale: float = 1.5
    nag_min_logsnr: float = 0.0  # NAG / CG act where SNR >= 1: the late part of sampling
    grid: dict = field(default_factory=lambda: {
        "nag_cf": [0.25, 0.5, 1.0, 2.0],
        "nag_cf_est": [0.25, 0.5, 1.0, 2.0],
        "nag_cg": [0.3, 1.0, 3.0],
        "eps_scaling": [0.99, 0.995, 1.005, 1.01],
        "time_shift": [0.05, 0.1, 0.25, 0.5],
    })
    tune_steps: int = 25
    ablations: bool = True
    plot_steps: int = 50

    @classmethod
    def make(cls, quick: bool, seed: int = 0) -> "Config":
        if not quick:
            return cls(seed=seed)
        return cls(quick=True, seed=seed, samplers=("euler", "euler_maruyama"), steps=(10, 25), train_steps=600,
                   estimator_steps=400, n_samples=500, n_reference=1000, bins=32,
                   grid={"nag_cf": [0.25, 0.5, 1.0], "nag_cf_est": [0.5, 1.0, 2.0], "nag_cg": [0.3, 1.0], "eps_scaling": [0.995, 1.005],
                         "time_shift": [0.05, 0.25]}, ablations=False, plot_steps=25)


# ---------------------------------------------------------------------------------------------
# one family's trained pieces
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetVariant:
    """A variant of a family's network: its null condition ``null_mode`` (``sentinel``: the null timestep;
    ``learned``: a learned null embedding), an ``estimator`` to reuse instead of training one, and ``tag`` naming
    its stage (e.g. ``no_dropout``; the change itself is in the Config) so that it does not replace the plain one."""

    null_mode: str = "sentinel"
    estimator: estimators.NoiseLevelEstimator | None = None
    tag: str = ""


@dataclass
class Trained:
    fam: Family
    gmm: testbed.GaussianMixture
    net: torch.nn.Module
    estimator: estimators.NoiseLevelEstimator
    bins: estimators.LevelBins
    data_var: float
    train_loss: float
    estimator_loss: float
    null_mode: str = "sentinel"
    calibration: ReadingCalibration | None = None  # the estimator's readings of forward states (auto_scale)

    @property
    def space(self):
        return self.fam.schedule.space

    def window(self, min_logsnr: float) -> tuple[float, float]:
        return methods.nag_window(self.fam.schedule, min_logsnr)


def train_family(name: str, gmm: testbed.GaussianMixture, cfg: Config, variant: NetVariant = NetVariant(), log=print,
                 stages: harness.Stages | None = None, progress: bool = True) -> Trained:
    """Train (or reuse from ``stages``) one family's denoiser and, unless ``variant`` gives one, its noise-level
    estimator."""
    null_mode, estimator, tag = variant.null_mode, variant.estimator, variant.tag
    fam = family(name)
    sch = fam.schedule
    torch.manual_seed(cfg.seed)
    net = models.MLPDenoiser(gmm.dim, gmm.num_classes, cfg.hidden, cfg.depth,
                              null=models.NullCondition(null_mode, sch.null_timestep))
    lo, hi = sch.logsnr_range()
    bins = estimators.LevelBins(max(lo, -10.0), min(hi, 10.0), cfg.bins)
    own_estimator = estimator is None
    if own_estimator:
        estimator = estimators.NoiseLevelEstimator((gmm.dim,), bins, width=128, depth=3)

    def make():
        t0 = time.time()
        bar, cb = harness.progress(cfg.train_steps, f"{name}: denoiser", progress)
        training = testbed.Training(cfg.train_steps, t_dropout=cfg.t_dropout, y_dropout=cfg.y_dropout, seed=cfg.seed)
        hist = testbed.train_denoiser(net, gmm, sch, fam.prediction, training, callback=cb)
        bar.close()
        est_loss = float("nan")
        if own_estimator:
            bar, cb = harness.progress(cfg.estimator_steps, f"{name}: estimator", progress)
            eh = estimators.train_estimator(estimator, lambda n, g: gmm.sample(n, generator=g)[0], sch,
                                            estimators.EstimatorTraining(cfg.estimator_steps, lr=3e-3),
                                            torch.Generator().manual_seed(cfg.seed + 1), cb)
            bar.close()
            est_loss = float(np.mean(eh[-50:]))
        log(f"[{name}] trained {null_mode}-null denoiser{' (' + tag + ')' if tag else ''} ({cfg.train_steps} steps, loss "
            f"{np.mean(hist[-100:]):.4f}){' and estimator' if own_estimator else ''} in {time.time() - t0:.0f}s")
        return {"train_loss": float(np.mean(hist[-100:])), "estimator_loss": est_loss}

    mods = {"net": net, **({"estimator": estimator} if own_estimator else {})}
    spec = {"stage": "testbed family", "family": name, "null_mode": null_mode, "config": asdict(cfg)}
    stage = f"{name}_{null_mode}{'_' + tag if tag else ''}_dim{gmm.dim}"
    done = stages.modules(stage, spec, mods, make) if stages else make()
    data_var = float(gmm.sample(4000, generator=torch.Generator().manual_seed(cfg.seed + 2))[0].var(0).mean())
    tr = Trained(fam, gmm, net, estimator, bins, data_var, done["train_loss"], done["estimator_loss"], null_mode)
    return with_estimator(tr, estimator, cfg.seed)


def with_estimator(tr: Trained, estimator, seed: int) -> Trained:
    """``tr`` with ``estimator`` (over ``tr.bins``) and its reading calibration, measured on forward states of the
    mixture (seeds ``seed + 3``, ``seed + 4``: apart from every evaluation draw), as the trainer measures it."""
    x0 = tr.gmm.sample(2000, generator=torch.Generator().manual_seed(seed + 3))[0]
    cal = calibrate_reading(estimator, x0, tr.fam.schedule, calibration_knots(tr.bins), torch.Generator().manual_seed(seed + 4))
    return dataclasses.replace(tr, estimator=estimator, calibration=cal)


# ---------------------------------------------------------------------------------------------
# one sampling run
# ---------------------------------------------------------------------------------------------

def exact_nag(tr: Trained, cfg: Config, w: float, term=testbed.ExactTermNAG, base=None):
    """``base`` (default: the plain network) plus ``w`` x the exact NAG ``term`` in the study's window."""
    base = base or Denoiser(tr.net, tr.fam.schedule, tr.fam.prediction)
    return term(base, tr.gmm, tr.fam, w, tr.window(cfg.nag_min_logsnr), tr.bins)


def method_setup(method: str, tr: Trained, cfg: Config, knobs: dict) -> methods.Setup:
    """What the sampler runs for a method (studies.methods), at the study's CFG scale and NAG window; for
    ``nag_exact_term``, run it with :func:`exact_nag` as the denoiser."""
    return methods.setup_for(method, tr, {**knobs, "cfg": cfg.cfg_scale, "window": cfg.nag_min_logsnr})


@dataclass
class Eval:
    """Shared evaluation data for one family (same seeds for every method: paired comparisons): the exact
    ``readout``, reference samples for the energy distance, the classes ``y`` and forward samples ``x0_fwd``."""

    gmm: testbed.GaussianMixture
    readout: object
    ref_x: torch.Tensor
    ref_y: torch.Tensor
    y: torch.Tensor
    x0_fwd: torch.Tensor
    seed: int

    def head(self, n: int) -> "Eval":
        """The same evaluation on its first ``n`` samples."""
        return dataclasses.replace(self, y=self.y[:n], x0_fwd=self.x0_fwd[:n])

    def draw(self, extra_readouts: dict | None = None) -> runs.Draw:
        """The draw of a run: readout ``exact`` plus ``extra_readouts``, samples scored by :meth:`score`."""
        return runs.Draw(self.y, self.x0_fwd, self.seed, {"exact": self.readout, **(extra_readouts or {})}, self.score)

    def score(self, out: torch.Tensor, y: torch.Tensor) -> dict:
        """Samples against the exact distribution: ``diverged`` (non-finite samples), then on the finite ones
        ``quality`` (class Frechet distance), ``energy_distance`` and ``nll``."""
        finite = torch.isfinite(out).all(1)
        o, yy = out[finite], y[finite]
        return {"diverged": int((~finite).sum()), "quality": testbed.class_frechet_distance(self.gmm, o, yy),
                "energy_distance": testbed.class_energy_distance(o, yy, self.ref_x, self.ref_y),
                "nll": testbed.nll(self.gmm, o, yy)}


def make_eval(tr: Trained, cfg: Config, seed: int) -> Eval:
    g = torch.Generator().manual_seed(seed + 10)
    ref_x, ref_y = tr.gmm.sample(cfg.n_reference, generator=g)
    x0_fwd, y = tr.gmm.sample(cfg.n_samples, generator=g)
    return Eval(tr.gmm, testbed.exact_readout(tr.gmm, tr.bins, tr.space, sub=2), ref_x, ref_y, y, x0_fwd, seed)


def run_one(tr: Trained, ev: Eval, setup: methods.Setup, sampler: str, steps: int, record="late", denoiser=None,
            extra_readouts: dict | None = None) -> dict:
    """Sample once and measure (runs.sample_run; readout ``exact`` plus ``extra_readouts``); ``denoiser`` replaces
    the trained network with ``setup``'s guidance."""
    den = denoiser or Denoiser(tr.net, tr.fam.schedule, tr.fam.prediction, setup.guidance, estimator=tr.estimator)
    return runs.sample_run(den, tr.fam.schedule, sampler, steps, ev.draw(extra_readouts), setup.level_fn, record)


def sample_row(tr: Trained, cfg: Config, ev: Eval, method: str, sampler: str, steps: int, knobs: dict,
               extra_readouts: dict | None = None) -> dict:
    """One row (:data:`ROWS`): ``method`` sampled with ``knobs`` (the tuned knobs, plus ``nag_profile`` for
    ``nag_cf_cal``); ``nag_exact_term`` adds the exact difference term at nag_cf's scale and window; a ``learned``
    extra readout adds its late shift."""
    den = exact_nag(tr, cfg, knobs["nag_cf"]) if method == methods.EXACT_TERM else None
    res = run_one(tr, ev, method_setup(method, tr, cfg, knobs), sampler, steps, denoiser=den, extra_readouts=extra_readouts)
    r = ROWS.row({"family": tr.fam.name, "method": method, "sampler": sampler, "steps": steps}, res, knobs)
    if "learned" in res["shift"]:
        r["noise_shift_learned_estimator"] = res["shift"]["learned"]["noise_shift"]
    return r


def estimator_check(tr: Trained, seed: int, estimator=None, bins=None) -> dict:
    """The learned estimator (default ``tr``'s) against the exact posterior over its bins, on network-space forward
    samples over the whole range (what it is trained on: ``testbed.ExactLevelPosterior``, uniform prior):
    posterior means (mean |gap|, correlation), KL(exact || learned), cross-entropies of the true bin."""
    sch = tr.fam.schedule
    est, bins = estimator or tr.estimator, bins or tr.bins
    g = torch.Generator().manual_seed(seed + 50)
    lam = bins.sample(2000, g)
    x0, _ = tr.gmm.sample(2000, generator=g)
    xn = estimators.noised(x0, lam, sch, g)
    with torch.no_grad():
        exact = torch.softmax(testbed.ExactLevelPosterior(tr.gmm, sch, bins)(xn), 1)
        learned = est.probs(xn)
    kl = (exact * (exact.clamp_min(1e-12).log() - learned.clamp_min(1e-12).log())).sum(1)
    c, idx = bins.centers(), bins.index(lam)
    return {"mean_abs_posterior_mean_gap": float((exact @ c - learned @ c).abs().mean()),
            "corr_posterior_means": float(torch.corrcoef(torch.stack([exact @ c, learned @ c]))[0, 1]),
            "mean_kl_exact_to_learned": float(kl.mean()),
            "cross_entropy_learned": float(-learned[torch.arange(2000), idx].clamp_min(1e-12).log().mean()),
            "cross_entropy_exact": float(-exact[torch.arange(2000), idx].clamp_min(1e-12).log().mean()),
            "bins": bins.describe()}


# ---------------------------------------------------------------------------------------------
# tuning and calibration
# ---------------------------------------------------------------------------------------------

def calibrate(tr: Trained, cfg: Config, n: int = 512, step: float = 1.0) -> dict:
    """The per-level NAG-CF scale that makes the learned term ``c - n`` deliver the estimator's term
    (least squares over forward states at each knot, clipped at 0): what ``nag_cf_cal`` runs at scale 1.

    Knots every ``step`` log-SNR over the NAG window (up to the estimator's range).  The estimator's term
    uses the training levels' prior (``comfy_nag.readout.null_branch_readout``'s convention), so this
    needs no exact quantity and works the same on a real model.  ``exact`` is the same least-squares
    scale against the exact term ``c* - n*`` (the testbed's answer; reported, not used)."""
    sch, space = tr.fam.schedule, tr.space
    den = Denoiser(tr.net, sch, tr.fam.prediction)
    log_prior = estimators.training_log_prior(sch, tr.bins)
    fits = {k: ScaleFit.spanning(cfg.nag_min_logsnr, min(tr.bins.hi, 10.0), step) for k in ("estimator", "exact")}
    knots = fits["exact"].knots.tolist()
    g = torch.Generator().manual_seed(cfg.seed + 77)
    for lam in knots:
        x0, y = tr.gmm.sample(n, generator=g)
        s = space.sigma_from_logsnr(torch.tensor(float(lam))).float().expand(n)
        x = space.alpha(s)[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            br = den.branch_x0(x, s, y, ("cond", "null_cond"))
        learned = br["cond"] - br["null_cond"]
        fits["estimator"].add(learned, estimator_x0_term(tr.estimator, x, s, space, sch.native(s)[0], log_prior),
                              space.logsnr(s))
        fits["exact"].add(learned, testbed.exact_term(tr.gmm, x, s, sch, tr.fam.prediction, y), space.logsnr(s))
    return {"logsnr": [float(k) for k in knots], **{k: f.values() for k, f in fits.items()}}


def profile_of(cal: dict) -> ScaleProfile:
    """``nag_cf_cal``'s scale profile: the estimator-calibrated scale, negative values clipped to 0."""
    return ScaleProfile(tuple(cal["logsnr"]), tuple(max(v, 0.0) for v in cal["estimator"]))


def tune(tr: Trained, cfg: Config, log=print, methods=TUNED, samplers=("euler",)) -> tuple[dict, list]:
    """Pick each of ``methods``' one knob on a held-out seed (``tune_steps``), lowest quality metric: with several
    ``samplers``, the lowest mean over them (one knob that serves every sampler it will be used with)."""
    ev = make_eval(tr, cfg, cfg.seed + 1000)

    def measure(method, knobs):
        res = [run_one(tr, ev, method_setup(method, tr, cfg, knobs), sampler, cfg.tune_steps) for sampler in samplers]
        q = float(np.mean([r["quality"] for r in res])) if all(r["diverged"] == 0 for r in res) else float("inf")
        return q, {"quality": q, "noise_shift": float(np.mean([r["shift"]["exact"]["noise_shift"] for r in res])),
                   **({"samplers": "+".join(samplers)} if len(samplers) > 1 else {})}

    tuning = runs.Tuning(measure)
    knobs = {m: tuning.best(m, cfg.grid[m], lambda v, m=m: {m: v}, lambda v, m=m: {"method": m, "value": v})
             for m in methods}
    log(f"[{tr.fam.name}] tuned on a held-out seed: {knobs}")
    return knobs, tuning.table


# ---------------------------------------------------------------------------------------------
# the criterion: learned NAG-CF against the exact term on the same network
# ---------------------------------------------------------------------------------------------

LEARNED_NAG = ("nag_cf", "nag_cf_cal")
SHARE_TARGET = 0.6  # issue target: learned NAG-CF delivers >= 60 % of the exact term's late-shift cut
TARGET_SETTINGS = {("euler", 25), ("euler", 50), ("heun", 25), ("heun", 50)}


def exact_share(rows: list[dict]) -> list[dict]:
    """Per (family, sampler, steps) and learned NAG-CF: its late-shift cut as a share of the exact term's on
    the same network (``nag_exact_term``, same scale and window as ``nag_cf``), and its quality vs baseline.
    The share is undefined (NaN) where the exact term does not cut the shift."""
    idx = {(r["family"], r["sampler"], r["steps"], r["method"]): r for r in rows}
    out = []
    for (fam, smp, n, m), b in idx.items():
        e = idx.get((fam, smp, n, "nag_exact_term"))
        if m != "baseline" or e is None:
            continue
        for method in LEARNED_NAG:
            r = idx.get((fam, smp, n, method))
            if r is None:
                continue
            cut = b["noise_shift"] - e["noise_shift"]
            out.append({"family": fam, "sampler": smp, "steps": n, "method": method,
                        "shift_baseline": b["noise_shift"], "shift_exact_term": e["noise_shift"], "shift": r["noise_shift"],
                        "share_of_exact_cut": (b["noise_shift"] - r["noise_shift"]) / cut if cut > 0 else float("nan"),
                        "quality_baseline": b["quality"], "quality": r["quality"], "quality_exact_term": e["quality"]})
    return out


def against_baseline(rows: list[dict], method: str) -> dict:
    """Over the settings (sampler, steps) where ``rows`` (one network's) hold both the baseline and ``method``: in how
    many ``method`` lowers the late shift, improves quality, and both."""
    get = {(r["sampler"], r["steps"], r["method"]): r for r in rows}
    pairs = [(get[(s, n, "baseline")], r) for (s, n, m), r in get.items() if m == method and (s, n, "baseline") in get]
    shift = [e["noise_shift"] < b["noise_shift"] for b, e in pairs]
    better = [e["quality"] < b["quality"] for b, e in pairs]
    return {"n": len(pairs), "shift_lower": sum(shift), "quality_better": sum(better),
            "both": sum(a and b for a, b in zip(shift, better))}


def _nanmedian(vals) -> float:
    """Median of the defined values (NaN, without a warning, when none is)."""
    vals = [v for v in vals if v == v]
    return float(np.median(vals)) if vals else float("nan")


def criterion(rows: list[dict]) -> list[dict]:
    """Per family and learned NAG-CF: in how many settings it reaches :data:`SHARE_TARGET` of the exact cut,
    beats the baseline's quality, and both; over every setting and over Euler/Heun at 25 and 50 steps."""
    out = []
    share = exact_share(rows)
    for fam in dict.fromkeys(r["family"] for r in share):
        for method in LEARNED_NAG:
            for scope, keep in (("all", lambda r: True), ("euler/heun 25/50", lambda r: (r["sampler"], r["steps"]) in TARGET_SETTINGS)):
                sel = [r for r in share if r["family"] == fam and r["method"] == method and keep(r)]
                if not sel:
                    continue
                reach = [r["share_of_exact_cut"] >= SHARE_TARGET for r in sel]  # NaN compares False
                better = [r["quality"] < r["quality_baseline"] for r in sel]
                out.append({"family": fam, "method": method, "settings": scope, "n": len(sel),
                            "share_reached": sum(reach), "quality_better": sum(better),
                            "both": sum(a and b for a, b in zip(reach, better)),
                            "median_share": _nanmedian([r["share_of_exact_cut"] for r in sel])})
    return out

