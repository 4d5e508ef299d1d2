"""Image-scale evidence: the paper's recipe end to end on scikit-learn's 8x8 digits.

``python -m studies bench images --out DIR [--quick]``:

1. Data: digits in [-1, 1], first ``n_train`` images = train split (the trainer's ``data.limit``),
   the rest = held-out test split.
2. Models (through ``training.api``): reference DiT (eps, linear-beta VP) and SiT (flow velocity),
   pretrained *without* noise-condition dropout; fine-tuned briefly *with* dropout (NCD, the
   paper's "~1 % extra training"); and trained with dropout from scratch.
3. Metrics that need no download: a small CNN classifier trained here on the train split gives
   features for a Frechet distance (**proxy FD**, not ImageNet FID), k-NN precision/recall
   (Kynkaanniemi et al. 2019, as prdc defines them) and class accuracy of samples; a learned
   noise-level estimator reads out the noise shift (``shift.py`` definitions).
4. Methods at equal steps with ODE and SDE samplers; knobs tuned on a held-out seed.  ``"sde"``
   in ``Config.samplers`` means each family's native SDE sampler (``SDE_SAMPLER``): DDPM ancestral
   for DiT (as DiT samples), Euler-Maruyama for SiT (as SiT samples).  Euler-Maruyama on the VP
   schedule at DiT spacing is unusable at 10-25 steps: its last step, sigma 0.38 -> 0.01 at 10
   steps, injects noise of std sqrt(s*ds) ~ 0.37, about 37x the target level (measured in quick
   mode: late shift -9 log-SNR and twice the FD of Euler for every method).

Writes ``metrics.json`` (the demo's row format), ``report.md`` and ``noise_shift.png``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from comfy_nag import estimators, samplers, shift
from comfy_nag.denoiser import Denoiser
from comfy_nag.metadata import file_sha256
from comfy_nag.families import family as get_family
from training import api
from training.state import ResumeError

from . import harness, methods
from .harness import StudyError
from .harness import find_row as _get
from .harness import md_table
from .testbed import frechet_distance

METHODS = methods.METHODS
QUALITY_METRIC = "proxy_fd_digits_cnn"
MODELS = ("pretrained", "continued", "ncd_finetune", "ncd_scratch")
SDE_SAMPLER = {"dit": "ddpm", "sit": "euler_maruyama"}


def resolve_sampler(name: str, family: str) -> str:
    """``"sde"`` -> the family's native SDE sampler; other names pass through."""
    return SDE_SAMPLER[family] if name == "sde" else name


@dataclass
class Config:
    quick: bool = False
    seed: int = 0
    families: tuple = ("dit", "sit")
    n_train: int = 1500
    pretrain_steps: int = 3000
    finetune_steps: int = 300  # 10 % of pretraining: the fidelity study's recipe grid (docs/fidelity/report.md)
    batch_size: int = 64
    hidden: int = 64
    depth: int = 2
    t_dropout: float = 0.2  # the trainer's default, from the fidelity study
    samplers: tuple = ("euler", "heun", "sde")
    steps: tuple = (10, 25)
    n_samples: int = 500
    classifier_steps: int = 600
    estimator_steps: int = 8000  # the trainer's estimator default (width, depth and steps: docs/method.md §2)
    estimator_width: int = 64
    estimator_depth: int = 3
    bins: int = 24
    k: int = 5
    grid: dict = field(default_factory=lambda: {
        "nag_cf": [0.25, 0.5, 1.0, 2.0], "window": [-99.0, 0.0, 2.0], "nag_cf_est": [0.25, 0.5, 1.0, 2.0],
        "nag_cg": [0.3, 1.0, 3.0], "eps_scaling": [0.99, 0.995, 1.005], "time_shift": [0.05, 0.1, 0.25],
        "cfg": [1.1, 1.25, 1.5, 2.0], "nag_cf_cfg": [0.25, 0.5, 1.0]})
    tune_steps: int = 10
    plot_steps: int = 25

    @classmethod
    def make(cls, quick: bool, seed: int = 0) -> "Config":
        if not quick:
            return cls(seed=seed)
        return cls(quick=True, seed=seed, pretrain_steps=1500, finetune_steps=150, samplers=("euler", "sde"),
                   steps=(10,), n_samples=400, classifier_steps=300, estimator_steps=400,
                   grid={"nag_cf": [0.5, 1.0], "window": [-99.0, 0.0], "nag_cf_est": [0.5, 1.0], "nag_cg": [1.0],
                         "eps_scaling": [1.005],
                         "time_shift": [0.1], "cfg": [1.5], "nag_cf_cfg": [0.5]}, plot_steps=10)


# ---------------------------------------------------------------------------------------------
# data, classifier, metrics
# ---------------------------------------------------------------------------------------------

def digits():
    """All 1797 digits as [N, 1, 8, 8] in [-1, 1] and labels (the trainer's ``digits`` source)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1, torch.from_numpy(d.target).long()


class Classifier(nn.Module):
    """Small CNN on 8x8 digits; ``features`` (64-d) is the proxy-FD embedding."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
                                  nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(), nn.Flatten(), nn.Linear(256, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.body(x.clamp(-1, 1))

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(x, y, steps: int, seed: int, stages: harness.Stages | None = None, progress: bool = True) -> Classifier:
    """The proxy-FD feature network (trained here, or reused from ``stages``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Classifier()
    if stages is not None:
        spec = {"stage": "digits classifier", "steps": steps, "seed": seed, "n_train": x.shape[0]}
        stages.modules("classifier", spec, {"classifier": net}, lambda: _fit_classifier(net, x, y, steps, g, progress))
        return net.eval()
    _fit_classifier(net, x, y, steps, g, progress)
    return net.eval()


def _fit_classifier(net, x, y, steps, g, progress=True) -> dict:
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    bar, cb = harness.progress(steps, "classifier", progress)
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (128,), generator=g)
        xb = x[i] + 0.05 * torch.randn(x[i].shape, generator=g)  # light noise: robust to sampler residue
        loss = F.cross_entropy(net(xb), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cb(step, loss.item())
    bar.close()
    return {}


def _radii(f: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019; prdc): k-NN balls around each set."""
    real, fake = real.double(), fake.double()
    rr, fr = _radii(real, k), _radii(fake, k)
    d = torch.cdist(fake, real)
    precision = (d <= rr[None]).any(1).double().mean()
    recall = (d.T <= fr[None]).any(1).double().mean()
    return float(precision), float(recall)


@dataclass
class Metric:
    clf: Classifier
    ref_feat: torch.Tensor
    mu: torch.Tensor
    cov: torch.Tensor
    k: int

    @classmethod
    def make(cls, clf, ref_x, k):
        with torch.no_grad():
            f = clf.features(ref_x).double()
        return cls(clf, f, f.mean(0), torch.cov(f.T), k)

    @torch.no_grad()
    def __call__(self, x, y) -> dict:
        f = self.clf.features(x).double()
        fd = frechet_distance(f.mean(0), torch.cov(f.T), self.mu, self.cov)
        p, r = precision_recall(self.ref_feat, f, self.k)
        acc = float((self.clf(x).argmax(1) == y).float().mean())
        return {"quality": fd, "precision": p, "recall": r, "accuracy": acc}


# ---------------------------------------------------------------------------------------------
# models through the trainer
# ---------------------------------------------------------------------------------------------

def train_models(cfg: Config, fam: str, work: Path, log=print) -> dict:
    """{model name: (net, seconds, exported file, last monitor probe)} for the pretrained, control, NCD-fine-tuned and
    NCD-from-scratch models.  The probe (trainer ``metrics.jsonl``) holds held-out losses of the conditioned and the
    null-timestep branch.

    ``continued`` is the control for the fine-tune: the same extra steps from the same weights with the same
    optimizer settings, without noise-condition dropout, so "does dropout cost quality" is not confounded with
    "does any extra training move the model".

    Runs live in ``work/<family>_<model>``; the trainer resumes an unfinished run.  A finished run whose export is
    unchanged (same sha256) is reused as it is, without calling the trainer again.
    """
    cache = work / "digits.safetensors"
    base = {"run.seed": cfg.seed, "run.checkpoint_every": 0, "run.log_every": 100, "data.source": "digits",
            "data.cache": str(cache), "data.limit": cfg.n_train, "model.family": fam, "model.hidden": cfg.hidden,
            "model.depth": cfg.depth, "model.heads": 4, "model.patch_size": 2, "train.batch_size": cfg.batch_size,
            "train.learning_rate": 1e-3, "train.warmup_steps": 20, "train.class_dropout_rate": 0.1,
            "train.ema_decay": 0.99, "sample.every": 0, "sample.count": 4, "monitor.eval_size": 32}
    if not cache.is_file():
        api.prepare(api.load_config(None, base), log=log)
    quiet = lambda *a, **k: None  # noqa: E731
    extra = {"train.steps": cfg.finetune_steps, "train.warmup_steps": 0, "train.learning_rate": 3e-4}
    runs = {"pretrained": {"train.steps": cfg.pretrain_steps, "train.noise_condition_dropout_rate": 0.0},
            "continued": {**extra, "train.noise_condition_dropout_rate": 0.0},
            "ncd_finetune": {**extra, "train.noise_condition_dropout_rate": cfg.t_dropout},
            "ncd_scratch": {"train.steps": cfg.pretrain_steps, "train.noise_condition_dropout_rate": cfg.t_dropout}}
    stages = harness.Stages(work, log)
    out = {}
    for name, ov in runs.items():
        ov = {**base, **ov, "run.out_dir": str(work / f"{fam}_{name}")}
        if name in ("continued", "ncd_finetune"):
            ov["model.base"] = str(out["pretrained"][2])

        def train(ov=ov):
            t0 = time.time()
            res = api.finetune(api.load_config(None, ov), log=quiet)
            return {"file": str(res.path), "sha256": file_sha256(res.path), "seconds": time.time() - t0}

        def unchanged(done):
            return Path(done["file"]).is_file() and file_sha256(done["file"]) == done["sha256"]

        done = stages.value(f"{fam}_{name}_run", {"stage": "trainer run", "overrides": ov}, train, valid=unchanged)
        net, _ = api.load_reference_model(done["file"])
        out[name] = (net.eval(), done["seconds"], Path(done["file"]), _last_probe(work / f"{fam}_{name}" / "metrics.jsonl"))
        log(f"[{fam}] {name}: {ov['train.steps']} steps in {done['seconds']:.0f}s")
    return out


def _last_probe(metrics_file: Path) -> dict:
    """Held-out branch losses from the run's last monitor event ({} when the run logged none)."""
    if not metrics_file.is_file():
        return {}
    probes = [json.loads(line) for line in metrics_file.read_text().splitlines() if '"monitor"' in line]
    return {k: v for k, v in probes[-1].items() if k.startswith(("probe_", "branch_"))} if probes else {}


def train_level_estimator(cfg: Config, fam, x_train, stages: harness.Stages | None = None,
                          progress: bool = True) -> estimators.NoiseLevelEstimator:
    """The learned noise-level readout of one family (trained on the train split, or reused from ``stages``)."""
    sch = fam.schedule
    lo, hi = sch.logsnr_range()
    bins = estimators.LevelBins(max(lo, -10.0), min(hi, 10.0), cfg.bins)
    est = estimators.NoiseLevelEstimator((1, 8, 8), bins, width=cfg.estimator_width, depth=cfg.estimator_depth)
    torch.manual_seed(cfg.seed)

    def make():
        bar, cb = harness.progress(cfg.estimator_steps, f"{fam.name}: estimator", progress)
        estimators.train_estimator(est, lambda n, g: x_train[torch.randint(0, x_train.shape[0], (n,), generator=g)], sch,
                                   cfg.estimator_steps, batch=128, lr=2e-3, generator=torch.Generator().manual_seed(cfg.seed + 1),
                                   callback=cb)
        bar.close()
        return {}

    if stages is None:
        make()
    else:
        spec = {"stage": "digits estimator", "family": fam.name, "bins": cfg.bins, "steps": cfg.estimator_steps,
                "seed": cfg.seed, "n_train": x_train.shape[0], "width": cfg.estimator_width, "depth": cfg.estimator_depth}
        stages.modules(f"{fam.name}_estimator", spec, {"estimator": est}, make)
    return est


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------

def method_setup(method: str, fam, est, knobs: dict, data_var: float):
    """(Guidance, level_fn) of studies.methods with the tuned knobs (``nag_cf_cfg``: NAG scale on top of CFG)."""
    return methods.setup(method, fam.schedule, knobs, data_var, est)


def run_one(net, fam, est, metric: Metric, guidance, level_fn, sampler: str, steps: int, n: int, seed: int,
            x_fwd: torch.Tensor, record: str = "late") -> dict:
    """Sample ``n`` class-balanced digits once (harness.sample_run, learned-estimator readout) and measure them."""
    sch = fam.schedule
    den = Denoiser(net, sch, fam.prediction, guidance, estimator=est)
    y = torch.arange(n) % 10
    run = harness.sample_run(den, sch, sampler, steps, (n, 1, 8, 8), y, seed, {"learned": shift.estimator_readout(est, sch)},
                             x_fwd, level_fn, record)
    res = {"shift": run["shift"]["learned"], "per_sample": run["estimated"]["learned"], "nfe_per_step": run["nfe_per_step"]}
    res.update(metric(run["samples"].clamp(-1, 1), y))
    return res


def row(fam: str, model: str, method: str, sampler: str, steps: int, res: dict, knobs: dict) -> dict:
    r = {"family": fam, "model": model, "method": method, "sampler": sampler, "steps": steps,
         "nfe_per_step": round(res["nfe_per_step"], 3), "noise_shift": res["shift"]["noise_shift"],
         "signed_shift": res["shift"]["signed_shift"], "quality": res["quality"], "quality_metric": QUALITY_METRIC,
         "precision": res["precision"], "recall": res["recall"], "accuracy": res["accuracy"]}
    if method in ("cfg", "nag_cg", "eps_scaling", "time_shift"):
        r["knob"] = {method: knobs[method]}
    elif method in ("nag_cf", "nag_cf_est"):
        r["knob"] = {method: knobs[method], "window_min_logsnr": knobs["window"]}
    elif method.startswith("nag_cf+cfg"):
        r["knob"] = {"nag_cf": knobs["nag_cf_cfg"], "window_min_logsnr": knobs["window"], "cfg": knobs["cfg"]}
    return r


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

def tuning_run(net, fam, est, metric, cfg, x_fwd, data_var, method: str, knobs: dict, table: list, label: dict) -> float:
    """One run on the held-out seed (Euler, ``tune_steps``): appends ``label`` with its numbers to ``table`` and
    returns its proxy FD (inf if not finite), the score the tunings minimise."""
    g, lf = method_setup(method, fam, est, knobs, data_var)
    res = run_one(net, fam, est, metric, g, lf, "euler", cfg.tune_steps, cfg.n_samples, cfg.seed + 1000, x_fwd)
    table.append({**label, "quality": res["quality"], "noise_shift": res["shift"]["noise_shift"],
                  "precision": res["precision"], "recall": res["recall"]})
    return res["quality"] if math.isfinite(res["quality"]) else float("inf")


def tune(net, fam, est, metric, cfg, x_fwd, data_var, log=print) -> tuple[dict, list]:
    """Knobs on a held-out seed (Euler, ``tune_steps``), lowest proxy FD.

    NAG alone: scale x window grid; then NAG-CG, epsilon scaling, time shift; then the CFG scale, and NAG's scale
    on top of that CFG (the paper tunes NAG separately for with and without CFG).  Every method gets its best knob.
    """
    knobs, table = {"window": 0.0}, []

    def score(method, kn):
        return tuning_run(net, fam, est, metric, cfg, x_fwd, data_var, method, kn, table, {"method": method, **kn})

    score("baseline", {})  # the reference for the replicate in the report
    knobs["nag_cf"], knobs["window"] = harness.first_best(lambda c: score("nag_cf", {"nag_cf": c[0], "window": c[1]}),
                                                          [(w, lam) for w in cfg.grid["nag_cf"] for lam in cfg.grid["window"]])
    for m in ("nag_cg", "eps_scaling", "time_shift", "cfg"):
        knobs[m] = harness.first_best(lambda v: score(m, {**knobs, m: v}), cfg.grid[m])
    knobs["nag_cf_cfg"] = harness.first_best(lambda v: score("nag_cf+cfg", {**knobs, "nag_cf_cfg": v}), cfg.grid["nag_cf_cfg"])
    log(f"[{fam.name}] tuned on a held-out seed: {knobs}")
    return knobs, table


def tune_estimator_null(net, fam, est, metric, cfg, x_fwd, data_var, knobs: dict, log=print) -> tuple[float, list]:
    """The scale of ``nag_cf_est`` on a model without a null branch (the pretrained one), on the held-out seed, in
    learned NAG-CF's tuned window (so both spend the same evaluations per step)."""
    table = []

    def score(w):
        label = {"method": "nag_cf_est", "model": "pretrained", "nag_cf_est": w, "window": knobs["window"]}
        return tuning_run(net, fam, est, metric, cfg, x_fwd, data_var, "nag_cf_est", {**knobs, "nag_cf_est": w}, table,
                          label)

    w = harness.first_best(score, cfg.grid["nag_cf_est"])
    log(f"[{fam.name}] nag_cf_est on the pretrained model, tuned on a held-out seed: {w}")
    return w, table


def study(cfg: Config, work: Path, log=print, progress: bool = True) -> dict:
    x_all, y_all = digits()
    x_tr, y_tr = x_all[: cfg.n_train], y_all[: cfg.n_train]
    x_te, y_te = x_all[cfg.n_train:], y_all[cfg.n_train:]
    t0 = time.time()
    stages = harness.Stages(work, log)
    clf = train_classifier(x_tr, y_tr, cfg.classifier_steps, cfg.seed, stages, progress)
    metric = Metric.make(clf, x_tr, cfg.k)
    with torch.no_grad():
        test_acc = float((clf(x_te).argmax(1) == y_te).float().mean())
    floor = metric(x_te, y_te)  # held-out real images: the metric's floor
    log(f"classifier: test accuracy {test_acc:.3f}, proxy FD of the test split {floor['quality']:.2f} ({time.time() - t0:.0f}s)")
    data_var = float(x_tr.var(0).mean())
    g = torch.Generator().manual_seed(cfg.seed + 7)
    x_fwd = x_tr[torch.randint(0, cfg.n_train, (cfg.n_samples,), generator=g)]
    out = {"rows": [], "tuning": {}, "knobs": {}, "training": {}, "plots": {},
           "meta": {"classifier_test_accuracy": test_acc, "floor": floor, "n_train": cfg.n_train,
                    "n_test": int(x_te.shape[0])}}
    for name in cfg.families:
        fam = get_family(name)
        nets = train_models(cfg, name, work, log)
        est = train_level_estimator(cfg, fam, x_tr, stages, progress)
        out["training"][name] = {m: {"seconds": v[1], "file": str(v[2]), **v[3]} for m, v in nets.items()}
        ft = nets["ncd_finetune"][0]
        spec = {"stage": "digits tuning", "family": name, "config": asdict(cfg)}
        knobs, table = stages.value(f"{name}_tuning", spec, lambda: tune(ft, fam, est, metric, cfg, x_fwd, data_var, log))
        spec = {**spec, "stage": "digits tuning, estimator null branch", "knobs": knobs}
        w_est, est_table = stages.value(f"{name}_tuning_est", spec, lambda: tune_estimator_null(
            nets["pretrained"][0], fam, est, metric, cfg, x_fwd, data_var, knobs, log))
        knobs = {**knobs, "nag_cf_est": w_est}
        out["knobs"][name], out["tuning"][name] = knobs, table + est_table
        plan = {"pretrained": ("baseline", "cfg", "eps_scaling", "time_shift", "nag_cf_est"), "continued": ("baseline",),
                "ncd_finetune": METHODS,
                "ncd_scratch": ("baseline", "cfg", "nag_cf", "nag_cf+cfg")}
        for model, todo in plan.items():
            for sampler in (resolve_sampler(sm, name) for sm in cfg.samplers):
                for steps in cfg.steps:
                    for method in todo:
                        gd, lf = method_setup(method, fam, est, knobs, data_var)
                        res = run_one(nets[model][0], fam, est, metric, gd, lf, sampler, steps, cfg.n_samples, cfg.seed, x_fwd)
                        out["rows"].append(row(name, model, method, sampler, steps, res, knobs))
        out["plots"][name] = plot_data(ft, name, fam, est, metric, cfg, knobs, x_fwd, data_var)
        out.setdefault("samples", {})[name] = sample_panels(nets, fam, est, cfg, knobs, data_var)
        log(f"[{name}] done ({time.time() - t0:.0f}s so far)")
    return out


SAMPLE_PANELS = (("pretrained", "baseline", "no guidance"), ("pretrained", "nag_cf_est", "NAG, null branch from the estimator"),
                 ("ncd_finetune", "baseline", "fine-tuned, no guidance"), ("ncd_finetune", "nag_cf", "fine-tuned, NAG (learned)"))


@torch.no_grad()
def sample_panels(nets, fam, est, cfg, knobs, data_var, n: int = 20) -> dict:
    """``{label: samples [n, 8, 8] as nested lists}``: two of each class from the same noise, Euler at the most
    steps of ``cfg.steps``, for the README's picture: without guidance, with NAG from the estimator (no fine-tune),
    and the fine-tuned model without and with learned NAG."""
    sch, steps = fam.schedule, max(cfg.steps)
    y = torch.arange(n) % 10
    out = {}
    for model, method, label in SAMPLE_PANELS:
        gd, lf = method_setup(method, fam, est, knobs, data_var)
        den = Denoiser(nets[model][0], sch, fam.prediction, gd, estimator=est)
        x = samplers.initial_noise((n, 1, 8, 8), sch, torch.Generator().manual_seed(cfg.seed + 77))
        img = samplers.sample_euler(den, x, sch.sigmas(steps), extra_args={"y": y}, level_fn=lf).clamp(-1, 1)
        out[label] = [[round(float(v), 3) for v in im.flatten()] for im in img[:, 0]]
    return {"sampler": "euler", "steps": steps, "panels": out}


def plot_data(net, name, fam, est, metric, cfg, knobs, x_fwd, data_var) -> dict:
    """Per-step learned-estimator readout (SDE sampler) and per-sample values at four nominal levels."""
    sampler = resolve_sampler("sde" if "sde" in cfg.samplers else cfg.samplers[0], name)
    n = cfg.plot_steps
    sch = fam.schedule
    sig = sch.sigmas(n)
    pick = harness.kde_steps(n)
    readout = shift.estimator_readout(est, sch)
    curves, kde = {}, {"levels": [float(sch.logsnr(sig[i])) for i in pick], "groups": {}}
    kde["groups"]["forward (true states)"] = shift.forward_readout(readout, x_fwd, sig[pick], sch,
                                                                   torch.Generator().manual_seed(5)).tolist()
    for method in ("baseline", "nag_cf", "cfg", "nag_cf+cfg"):
        gd, lf = method_setup(method, fam, est, knobs, data_var)
        res = run_one(net, fam, est, metric, gd, lf, sampler, n, cfg.n_samples, cfg.seed, x_fwd, record="all")
        curves[method] = res["shift"]
        if method in ("baseline", "nag_cf"):
            kde["groups"][method] = np.stack(res["per_sample"])[pick].tolist()
    return {"sampler": sampler, "steps": n, "curves": curves, "kde": kde, "window_min_logsnr": knobs["window"]}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def comparisons(rows) -> list[dict]:
    """Paired comparisons per (family, sampler, steps) on the NCD-fine-tuned model (and NCD's cost)."""
    out = []
    keys = sorted({(r["family"], r["sampler"], r["steps"]) for r in rows})
    pairs = [("ncd_finetune", "baseline", "continued", "baseline", "NCD fine-tune vs continued training, scale 0"),
             ("ncd_finetune", "baseline", "pretrained", "baseline", "NCD fine-tune vs pretrained, scale 0"),
             ("ncd_scratch", "baseline", "pretrained", "baseline", "NCD from scratch vs pretrained, scale 0"),
             ("ncd_finetune", "nag_cf", "pretrained", "baseline", "recipe: NCD fine-tune + NAG-CF vs pretrained"),
             ("ncd_finetune", "nag_cf+cfg", "pretrained", "cfg", "recipe: NCD fine-tune + NAG-CF + CFG vs pretrained + CFG"),
             ("ncd_finetune", "nag_cf", "ncd_finetune", "baseline", "nag_cf vs baseline"),
             ("ncd_finetune", "nag_cf+cfg", "ncd_finetune", "cfg", "nag_cf+cfg (A) vs cfg"),
             ("ncd_finetune", "nag_cf+cfg_B", "ncd_finetune", "cfg", "nag_cf+cfg (B) vs cfg"),
             ("ncd_finetune", "nag_cg", "ncd_finetune", "baseline", "nag_cg vs baseline"),
             ("ncd_finetune", "eps_scaling", "ncd_finetune", "baseline", "eps_scaling vs baseline"),
             ("ncd_finetune", "time_shift", "ncd_finetune", "baseline", "time_shift vs baseline"),
             ("ncd_scratch", "nag_cf", "ncd_scratch", "baseline", "scratch: nag_cf vs baseline"),
             ("pretrained", "nag_cf_est", "pretrained", "baseline", "pretrained, no fine-tune: nag_cf_est vs baseline")]
    for fam, smp, n in keys:
        for m_new, new, m_old, old, label in pairs:
            a = _get(rows, family=fam, sampler=smp, steps=n, model=m_old, method=old)
            b = _get(rows, family=fam, sampler=smp, steps=n, model=m_new, method=new)
            if a is None or b is None:
                continue
            out.append({"family": fam, "sampler": smp, "steps": n, "comparison": label,
                        "shift_before": a["noise_shift"], "shift_after": b["noise_shift"],
                        "fd_before": a["quality"], "fd_after": b["quality"], "precision_before": a["precision"],
                        "precision_after": b["precision"], "recall_before": a["recall"], "recall_after": b["recall"],
                        "acc_before": a["accuracy"], "acc_after": b["accuracy"]})
    return out


def _answer(cmp, label):
    c = [x for x in cmp if x["comparison"] == label]
    if not c:
        return "not run"
    fd = sum(x["fd_after"] < x["fd_before"] for x in c)
    sh = sum(x["shift_after"] < x["shift_before"] for x in c)
    p = sum(x["precision_after"] > x["precision_before"] for x in c)
    r = sum(x["recall_after"] > x["recall_before"] for x in c)
    med = np.median([x["fd_after"] - x["fd_before"] for x in c])
    return (f"proxy FD lower in {fd}/{len(c)} settings (median change {med:+.3f}), |shift| lower in {sh}/{len(c)}, "
            f"precision higher in {p}/{len(c)}, recall higher in {r}/{len(c)}")


FAMILY_NAME = {"dit": "DiT", "sit": "SiT"}
HEADLINE = (("NCD fine-tune vs continued training, scale 0", "ode"), ("recipe: NCD fine-tune + NAG-CF vs pretrained", "ode"),
            ("recipe: NCD fine-tune + NAG-CF + CFG vs pretrained + CFG", "ode"), ("nag_cf vs baseline", "ode"),
            ("nag_cf vs baseline", "sde"), ("pretrained, no fine-tune: nag_cf_est vs baseline", "ode"),
            ("nag_cf+cfg (A) vs cfg", "ode"), ("nag_cg vs baseline", "ode"),
            ("eps_scaling vs baseline", "ode"), ("time_shift vs baseline", "ode"))


def headline(res: dict) -> str:
    """The README's results table: key paired comparisons at the fewest steps, Euler (ode) and the SDE sampler.

    A pure function of ``metrics.json``, so a test can check that the README's copy matches the committed run.
    """
    rows, steps = res["rows"], min(r["steps"] for r in res["rows"])
    cmp = comparisons(rows)
    lines = [f"| model | sampler | comparison ({steps} steps, {res['meta']['config']['n_samples']} samples) | late \\|shift\\| "
             "| proxy FD | precision | recall | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for fam in res["training"]:
        for label, kind in HEADLINE:
            smp = resolve_sampler("sde", fam) if kind == "sde" else "euler"
            c = _get(cmp, family=fam, sampler=smp, steps=steps, comparison=label)
            if c is None:
                continue
            cell = lambda k, f: f"{c[k + '_before']:{f}} → {c[k + '_after']:{f}}"
            lines.append(f"| {FAMILY_NAME.get(fam, fam)} | {smp} | {label} | {cell('shift', '.3f')} | {cell('fd', '.1f')} "
                         f"| {cell('precision', '.3f')} | {cell('recall', '.3f')} | {cell('acc', '.3f')} |")
    return "\n".join(lines)


def _replicate(res, fam, steps) -> str:
    k, tab = res["knobs"][fam], res["tuning"][fam]
    base = _get(tab, method="baseline")
    nag = _get(tab, method="nag_cf", nag_cf=k["nag_cf"], window=k["window"])
    main = {m: _get(res["rows"], family=fam, model="ncd_finetune", method=m, sampler="euler", steps=steps) for m in ("baseline", "nag_cf")}
    if base is None or nag is None or None in main.values():
        return f"`{fam}` not run"
    return (f"`{fam}` tuning seed {base['quality']:.1f} -> {nag['quality']:.1f}, main seed {main['baseline']['quality']:.1f} -> "
            f"{main['nag_cf']['quality']:.1f}")


def write_report(res: dict, cfg: Config, seconds: float) -> str:
    """report.md of a finished run (its metrics.json content)."""
    cmp = comparisons(res["rows"])
    L = [*_setup(res, cfg, seconds), *_warnings(res), *_answers(res, cfg, cmp), *_tables(res, cmp)]
    return "\n".join(L) + "\n"


def _setup(res: dict, cfg: Config, seconds: float) -> list[str]:
    """The title, how the run was made, and the setup."""
    meta = res["meta"]
    return ["# comfy-nag image benchmark (8x8 digits)\n", *([harness.SMOKE_TEST] if cfg.quick else []),
            f"Generated by `python -m studies bench images{' --quick' if cfg.quick else ''} --seed {cfg.seed} "
            f"--threads {meta['threads']}` in {seconds / 60:.1f} min (torch {meta['torch']}, {meta['threads']} CPU threads). "
            "Every number is in `metrics.json`.\n",
            "## Setup\n",
            f"* Data: scikit-learn's digits (8x8, 10 classes) in [-1, 1]; the first {meta['n_train']} images train every network, "
            f"the last {meta['n_test']} are held out.",
            f"* Recipe: reference DiT (eps, linear-beta VP) and SiT (flow velocity) ({cfg.hidden} wide, {cfg.depth} blocks), trained "
            f"through `training.api`: **pretrained** {cfg.pretrain_steps} steps without noise-condition dropout; **ncd_finetune** "
            f"= pretrained + {cfg.finetune_steps} steps ({100 * cfg.finetune_steps / cfg.pretrain_steps:.1f} % extra) with "
            f"noise-condition dropout {cfg.t_dropout}; **continued** = the same {cfg.finetune_steps} extra steps without dropout "
            f"(the fine-tune's control); **ncd_scratch** {cfg.pretrain_steps} steps with dropout from scratch. "
            "Class dropout 0.1 everywhere (CFG).",
            f"* Quality, `{QUALITY_METRIC}` (lower is better): Frechet distance between Gaussian fits of 64-d features of a small "
            f"CNN classifier trained here on the train split ({cfg.classifier_steps} steps, held-out accuracy "
            f"{meta['classifier_test_accuracy']:.3f}), samples vs the train split. **A proxy, not ImageNet FID.** Precision/recall: "
            f"k-NN (k={cfg.k}) manifolds in the same features (Kynkaanniemi et al. 2019 / prdc). Accuracy: the classifier's "
            f"agreement with the requested class. Floor (the {meta['n_test']} held-out real images): FD "
            f"{meta['floor']['quality']:.3f}, precision {meta['floor']['precision']:.3f}, recall {meta['floor']['recall']:.3f}, "
            f"accuracy {meta['floor']['accuracy']:.3f}.",
            "* Noise shift: a learned noise-level estimator (comfy_nag `NoiseLevelEstimator`, trained on forward samples of the "
            "train split) reads each state's log-SNR; gap = mean readout of sampler states - mean readout of true forward states "
            "at the same nominal level; `noise_shift` = mean |gap| over the last 20% of steps (log-SNR units).",
            "* Samplers: ODE `euler` (= DDIM), `heun`; SDE = each family's native one: `ddpm` (ancestral) for DiT, "
            "`euler_maruyama` (SiT's diffusion w = sigma) for SiT. Euler-Maruyama on DiT's VP spacing injects ~37x the target "
            "noise in its last step at 10 steps, so it is not run there (see `studies/bench_images.py`).",
            f"* {cfg.n_samples} samples per run (classes balanced), same initial and SDE noise for every method. Knobs tuned on a "
            f"held-out seed (Euler, {cfg.tune_steps} steps, lowest proxy FD): "
            + "; ".join(f"`{k}`: {v}" for k, v in res["knobs"].items()) + ". `window` = lowest log-SNR at which "
            "NAG-CF/NAG-CG act (-99: everywhere); `nag_cf_cfg` = NAG scale on top of CFG at scale `cfg`.",
            ""]


def _warnings(res: dict) -> list[str]:
    """A warning per family whose pretrained samples are far from the data (an unconverged model)."""
    rows, meta = res["rows"], res["meta"]
    L = []
    for fam in res["training"]:
        b = _get(rows, family=fam, model="pretrained", method="baseline", sampler=rows[0]["sampler"])
        if b is not None and b["accuracy"] < 0.5 * meta["floor"]["accuracy"]:
            L.append(f"> **Warning: `{fam}`'s pretrained samples have low class accuracy ({b['accuracy']:.3f}) and far "
                     f"from the data (proxy FD {b['quality']:.1f} vs floor {meta['floor']['quality']:.1f})**: this model is not "
                     "converged (train longer), so its rows say nothing about NAG on a converged model.\n")
    return L


def _nfe(rows: list[dict], like: dict, model: str, method: str) -> float:
    r = _get(rows, family=like["family"], sampler=like["sampler"], steps=like["steps"], model=model, method=method)
    return r["nfe_per_step"] if r else float("nan")


def _answers(res: dict, cfg: Config, cmp: list[dict]) -> list[str]:
    """The study's questions, answered from the paired comparisons."""
    rows = res["rows"]
    cost = {m: np.mean([r["nfe_per_step"] for r in rows if r["method"] == m and r["sampler"] == "euler"]) for m in METHODS
            if any(r["method"] == m and r["sampler"] == "euler" for r in rows)}
    L = ["## Answers\n"]
    L.append(f"* **Does noise-condition-dropout fine-tuning cost quality at scale 0?** Against the same extra steps "
             f"without dropout (the control): {_answer(cmp, 'NCD fine-tune vs continued training, scale 0')}. Against "
             f"the pretrained model: {_answer(cmp, 'NCD fine-tune vs pretrained, scale 0')}. "
             f"From scratch with dropout vs pretrained: {_answer(cmp, 'NCD from scratch vs pretrained, scale 0')}.")
    L.append(f"* **The paper's recipe end to end** (the pretrained model as it was vs NCD fine-tune + NAG): without CFG "
             f"{_answer(cmp, 'recipe: NCD fine-tune + NAG-CF vs pretrained')}; with CFG "
             f"{_answer(cmp, 'recipe: NCD fine-tune + NAG-CF + CFG vs pretrained + CFG')}.")
    L.append(f"* **Does NAG reduce the measured shift / improve quality alone?** NAG-CF vs baseline: {_answer(cmp, 'nag_cf vs baseline')}. "
             f"NAG-CG: {_answer(cmp, 'nag_cg vs baseline')}.")
    L.append("* **Without any fine-tune?** NAG-CF with the null branch built from the estimator's posterior "
             "(`nag_cf_est`, one level) on the pretrained model, scale tuned on the held-out seed in NAG-CF's window: "
             f"{_answer(cmp, 'pretrained, no fine-tune: nag_cf_est vs baseline')}. Network evaluations per step (Euler, "
             "same window): " + ", ".join(f"{r['family']}-{r['steps']} {r['nfe_per_step']:.2f} vs learned NAG-CF "
                                          f"{_nfe(rows, r, 'ncd_finetune', 'nag_cf'):.2f}"
                                          for r in rows if r["method"] == "nag_cf_est" and r["sampler"] == "euler") + ".")
    L.append("* **Does it replicate on another seed?** The tuning seed is a second, independent draw (Euler, "
             f"{cfg.tune_steps} steps, NCD fine-tune), proxy FD baseline -> NAG-CF with the chosen knobs: "
             + "; ".join(_replicate(res, fam, cfg.tune_steps) for fam in res["tuning"]) + ".")
    L.append(f"* **On top of CFG?** Variant A: {_answer(cmp, 'nag_cf+cfg (A) vs cfg')}. Variant B: {_answer(cmp, 'nag_cf+cfg (B) vs cfg')}.")
    L.append(f"* **Versus the prior fixes:** epsilon scaling: {_answer(cmp, 'eps_scaling vs baseline')}; time-shift sampler: "
             f"{_answer(cmp, 'time_shift vs baseline')}.")
    probes = [f"`{fam}` {m}: {t['probe_loss_cond']:.3f} / {t['probe_loss_null']:.3f}" for fam, tr in res["training"].items()
              for m, t in tr.items() if m.startswith("ncd") and "probe_loss_null" in t]
    if probes:
        L.append("* **How well is the null branch trained?** Held-out loss of the conditioned / null-timestep branch "
                 "(trainer monitor, end of training): " + "; ".join(probes) + ". NAG-CF's direction is their difference; "
                 "a null branch much worse than the conditioned one adds its own error to that direction.")
    L.append("* **Cost per step (network evaluations, Euler):** " + ", ".join(f"{m} {v:.2f}" for m, v in cost.items())
             + ". NAG-CF adds one batched branch only inside its window; NAG-CG adds no network call but one estimator "
               "forward+backward; wall-time and memory ratios: `python -m studies bench cost`.\n")
    return L


def _tables(res: dict, cmp: list[dict]) -> list[str]:
    """The headline, every setting, every comparison and run, the tuning, the figures and the limits."""
    rows = res["rows"]
    return ["## Headline (copied into the README)\n",
            headline(res) + "\n",
            "## Every setting: proxy FD change and late |shift| (before -> after)\n",
            percent_table(rows) + "\n",
            "## Comparisons at equal steps (paired)\n",
            md_table(cmp, ["family", "sampler", "steps", "comparison", "shift_before", "shift_after", "fd_before", "fd_after",
                           "precision_before", "precision_after", "recall_before", "recall_after", "acc_before", "acc_after"]),
            "\n## All runs\n",
            md_table(rows, ["family", "model", "sampler", "steps", "method", "nfe_per_step", "noise_shift", "signed_shift",
                            "quality", "precision", "recall", "accuracy"]),
            "\n## Knob tuning on the held-out seed (NAG scale x window sweep, then the others)\n",
            md_table([{"family": k, **t} for k, ts in res["tuning"].items() for t in ts],
                     ["family", "method", "nag_cf", "window", "nag_cg", "eps_scaling", "time_shift", "cfg", "nag_cf_cfg",
                      "quality", "noise_shift", "precision", "recall"]),
            "\n## Figures\n\n`noise_shift.png`: learned-estimator readout vs step (mean shift per step) and its KDE at four "
            "nominal levels, NCD-fine-tuned model, per family.\n",
            "## Limits\n\n* 8x8 digits and ~100k-parameter models: the size of every effect depends on how imperfect "
            "these models are; the numbers say what NAG does to *this* error, not a promised ImageNet FID gain.\n"
            "* The proxy FD uses a classifier trained on the same data; it ranks methods, it is not comparable to published FIDs."]


def samples_figure(res: dict, per_row: int = 10):
    """The README's picture: per family, the same noise sampled without and with NAG (estimator null branch on the
    pretrained model; learned null branch on the fine-tuned one), one strip of digits (one per class) per row."""
    from matplotlib.figure import Figure

    rows = [(fam, label, np.array(imgs)[:per_row]) for fam, s in res["samples"].items() for label, imgs in s["panels"].items()]
    fig = Figure(figsize=(7.2, 0.62 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (fam, label, imgs) in zip(axes, rows):  # -1 = background: white gaps between digits
        strip = np.concatenate([np.pad(im.reshape(8, 8), 1, constant_values=-1.0) for im in imgs], axis=1)
        ax.imshow(strip, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(f"{FAMILY_NAME.get(fam, fam)}: {label}", rotation=0, ha="right", va="center", fontsize=9)
    first = next(iter(res["samples"].values()))
    fig.suptitle(f"The same noise and class per column, Euler {first['steps']} steps", fontsize=10)
    return fig


def figures(res: dict):
    from comfy_nag.plots import to_pil

    figs = [f for name, p in res["plots"].items() for f in harness.shift_figures(p, name, "learned-estimator readout")]
    return harness.stack_images([to_pil(f) for f in figs])


def run_bench(out, quick: bool = False, seed: int = 0, config: Config | None = None, threads: int | None = None, log=print) -> dict:
    """Run the study; write metrics.json, report.md, noise_shift.png into ``out`` (models under ``out/work``)."""
    out, t0, _ = harness.begin(out, threads)
    cfg = config or Config.make(quick, seed)
    torch.manual_seed(cfg.seed)
    try:
        res = study(cfg, out / "work", log)
    except ResumeError as e:
        raise StudyError(f"{out / 'work'} holds models trained with another configuration (an earlier version or "
                         f"other flags): {e}; delete that folder or pass another --out") from None
    res["meta"].update(seconds=time.time() - t0, config=asdict(cfg), torch=torch.__version__,
                       threads=torch.get_num_threads())
    return harness.conclude(out, "metrics", res, None, write_figures_and_report, log)


PERCENT_COMPARISONS = (
    ("NCD fine-tune vs its control (same extra steps, no dropout), scale 0", ("continued", "baseline"), ("ncd_finetune", "baseline")),
    ("NAG-CF vs baseline (fine-tuned model)", ("ncd_finetune", "baseline"), ("ncd_finetune", "nag_cf")),
    ("recipe end to end: fine-tune + NAG-CF vs pretrained", ("pretrained", "baseline"), ("ncd_finetune", "nag_cf")),
    ("NAG-CF + tuned CFG (A) vs tuned CFG", ("ncd_finetune", "cfg"), ("ncd_finetune", "nag_cf+cfg")),
    ("NAG-CG vs baseline (fine-tuned model)", ("ncd_finetune", "baseline"), ("ncd_finetune", "nag_cg")),
    ("NAG-CF from the estimator vs baseline (pretrained model, no fine-tune)", ("pretrained", "baseline"),
     ("pretrained", "nag_cf_est")),
    ("time-shift sampler vs baseline", ("ncd_finetune", "baseline"), ("ncd_finetune", "time_shift")),
    ("epsilon scaling vs baseline", ("ncd_finetune", "baseline"), ("ncd_finetune", "eps_scaling")))


def percent_table(rows: list[dict]) -> str:
    """Every setting's proxy-FD change in percent and late |shift| before -> after, per comparison."""
    sde = ("ddpm", "euler_maruyama")  # the rows name each family's SDE sampler; listed after the ODE ones
    settings = sorted({(r["family"], r["sampler"], r["steps"]) for r in rows},
                      key=lambda k: (k[0] != "sit", k[1] in sde, k[1], k[2]))
    get = {(r["family"], r["model"], r["method"], r["sampler"], r["steps"]): r for r in rows}
    head = ["comparison"] + [f"{f} {s}-{n}" for f, s, n in settings]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a, b in PERCENT_COMPARISONS:
        cells = []
        for f, s, n in settings:
            x, y = get.get((f, *a, s, n)), get.get((f, *b, s, n))
            cells.append(f"{100 * (y['quality'] / x['quality'] - 1):+.0f} % / {x['noise_shift']:.2f}→{y['noise_shift']:.2f}"
                         if x and y else "–")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def cf_vs_cg(rows: list[dict], cost: list[dict]) -> list[dict]:
    """NAG-CF and NAG-CG side by side on the dropout-fine-tuned models: late-shift reduction (baseline minus
    method; negative = the shift grew) and the extra wall time of one guided step over an unguided one,
    from ``bench cost``'s results (same reference models, ``cost.json``)."""
    extra = {c["family"]: {m: c["seconds_per_step"][k] / c["seconds_per_step"]["baseline"] - 1
                           for m, k in (("nag_cf", "nag_cf_batched"), ("nag_cg", "nag_cg"))} for c in cost}
    out = []
    for (fam, sampler, steps) in sorted({(r["family"], r["sampler"], r["steps"]) for r in rows if r["model"] == "ncd_finetune"}):
        get = {r["method"]: r for r in rows if (r["family"], r["sampler"], r["steps"], r["model"]) == (fam, sampler, steps, "ncd_finetune")}
        if not {"baseline", "nag_cf", "nag_cg"} <= set(get) or fam not in extra:
            continue
        row = {"family": fam, "sampler": sampler, "steps": steps, "shift_baseline": get["baseline"]["noise_shift"]}
        for m in ("nag_cf", "nag_cg"):
            red = get["baseline"]["noise_shift"] - get[m]["noise_shift"]
            row.update({f"{m}_reduction": red, f"{m}_extra_step_time": extra[fam][m],
                        f"{m}_reduction_per_step_time": red / extra[fam][m], f"{m}_fd": get[m]["quality"]})
        out.append(row)
    return out


def write_figures_and_report(out: Path, res: dict, redrawn: bool = False) -> list[Path]:
    """noise_shift.png and report.md of a finished run (its metrics.json content).  With ``out/cost/cost.json``
    (``python -m studies bench cost --out <out>/cost``) the report adds NAG-CF vs NAG-CG per unit of step time.
    Returns the paths written."""
    figures(res).save(out / "noise_shift.png")
    written = [out / "noise_shift.png"]
    if res.get("samples"):
        from comfy_nag.plots import to_pil

        to_pil(samples_figure(res), dpi=110).save(out / "samples.png")
        written.append(out / "samples.png")
    report = write_report(res, Config(**res["meta"]["config"]), res["meta"]["seconds"])
    cost_file = out / "cost" / "cost.json"
    if cost_file.is_file():
        table = cf_vs_cg(res["rows"], json.loads(cost_file.read_text())["results"])
        report += "\n".join(["", "## NAG-CF and NAG-CG per unit of step time\n",
                             "Late-shift reduction on the dropout-fine-tuned model (baseline minus method; negative: the "
                             "shift grew) and the extra wall time of one guided step over an unguided step "
                             "(`cost/cost.json`, batch 256, CPU; NAG-CF batched, inside its window). NAG-CG needs no "
                             "fine-tune; NAG-CF's null branch runs only inside its window (about a quarter of the steps here).\n",
                             md_table(table, ["family", "sampler", "steps", "shift_baseline", "nag_cf_reduction",
                                              "nag_cf_extra_step_time", "nag_cf_reduction_per_step_time", "nag_cf_fd",
                                              "nag_cg_reduction", "nag_cg_extra_step_time",
                                              "nag_cg_reduction_per_step_time", "nag_cg_fd"]), ""])
    return written + [harness.save_report(out, report, redrawn_by="bench images" if redrawn else None)]


def redraw(out) -> list[Path]:
    """Rewrite ``out``'s noise_shift.png and report.md from its metrics.json (no sampling); returns the paths."""
    return write_figures_and_report(Path(out), harness.load_metrics(out), redrawn=True)
