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

Writes ``metrics.json`` (the demo's row format), ``report.md``, ``noise_shift.png`` and ``samples.png``.  The settings,
data and metric: ``studies.bench_digits``; the report and figures: ``studies.bench_report``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from comfy_nag import estimators, samplers, shift
from comfy_nag.auto_scale import ReadingCalibration, calibrate_reading, calibration_knots
from comfy_nag.denoiser import Denoiser
from comfy_nag.families import Family
from comfy_nag.families import family as get_family
from comfy_nag.metadata import file_sha256
from training import api
from training.state import ResumeError

from . import harness, methods, runs
from .bench_digits import QUALITY_METRIC, Config, Metric, ground_truth, resolve_sampler
from .bench_report import write_figures_and_report
from .harness import StudyError

METHODS = methods.METHODS
MODELS = ("pretrained", "continued", "ncd_finetune", "ncd_scratch")
# the methods each model is sampled with: stock fixes on the pretrained model (and NAG-CF with the estimator's null
# branch: no fine-tune), the control at scale 0, every method on the fine-tuned model, CFG and NAG-CF from scratch
PLAN = {"pretrained": ("baseline", "cfg", "eps_scaling", "time_shift", "nag_cf_est", "nag_cf_est_auto", "nag_cg_auto"),
        "continued": ("baseline",), "ncd_finetune": METHODS + ("nag_cf_auto",),
        "ncd_scratch": ("baseline", "cfg", "nag_cf", "nag_cf+cfg")}
# A digits row: the learned estimator's late shift, the proxy-FD scores, and each method's knobs under their own names
# (NAG-CF's scale on top of CFG as ``nag_cf``; the estimator null branch always runs at one level).
ROWS = runs.RowFormat("learned", QUALITY_METRIC, ("precision", "recall", "accuracy"),
                      labels={"nag_cf_cfg": "nag_cf", "window": "window_min_logsnr"}, omitted=frozenset({"null_levels"}))
SAMPLE_PANELS = (("pretrained", "baseline", "no guidance"), ("pretrained", "nag_cf_est", "NAG, null branch from the estimator"),
                 ("ncd_finetune", "baseline", "fine-tuned, no guidance"), ("ncd_finetune", "nag_cf", "fine-tuned, NAG (learned)"))


@dataclass
class TrainedModel:
    """One trainer run: its network, training time (seconds), exported file and last monitor probe (held-out losses
    of the conditioned and the null-timestep branch; {} when the run logged none)."""

    net: torch.nn.Module
    seconds: float
    file: Path
    probe: dict


@dataclass
class Trained:
    """One family's trained pieces and what its runs are read against (the testbed's ``toolkit.Trained`` and
    ``Eval``): the family, its noise-level ``estimator`` (the shift readout, NAG-CG, the estimator null branch), the
    proxy-FD ``metric``, the forward samples ``x_fwd`` (one per sample of a run, classes balanced), the per-dimension
    ``data_var`` (time_shift) and the trained ``models`` by name (:data:`MODELS`)."""

    fam: Family
    estimator: estimators.NoiseLevelEstimator
    metric: Metric
    x_fwd: torch.Tensor
    data_var: float
    models: dict[str, TrainedModel]
    calibration: ReadingCalibration | None = None  # the estimator's readings of forward states (the *_auto methods)

    def denoiser(self, model: str, setup: methods.Setup) -> Denoiser:
        return Denoiser(self.models[model].net, self.fam.schedule, self.fam.prediction, setup.guidance,
                        estimator=self.estimator)

    def draw(self, seed: int) -> runs.Draw:
        """A run's draw: classes 0-9 in turn, the learned-estimator readout, samples scored by the metric in [-1, 1]."""
        readout = shift.estimator_readout(self.estimator, self.fam.schedule)
        return runs.Draw(torch.arange(self.x_fwd.shape[0]) % 10, self.x_fwd, seed, {"learned": readout},
                         lambda x, y: self.metric(x.clamp(-1, 1), y))

    def run(self, model: str, method: str, knobs: dict, sampler: str, steps: int, seed: int, record="late") -> dict:
        """Sample ``model`` with ``method`` and ``knobs`` once and measure it (``runs.sample_run``)."""
        setup = methods.setup_for(method, self, knobs)
        return runs.sample_run(self.denoiser(model, setup), self.fam.schedule, sampler, steps, self.draw(seed),
                               setup.level_fn, record)


# ---------------------------------------------------------------------------------------------
# models through the trainer
# ---------------------------------------------------------------------------------------------

def train_models(cfg: Config, fam: str, work: Path, log=print) -> dict[str, TrainedModel]:
    """The pretrained, control, NCD-fine-tuned and NCD-from-scratch models (:data:`MODELS`) by name; each model's
    probe is the last monitor event of its trainer ``metrics.jsonl``.

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
    overrides = {"pretrained": {"train.steps": cfg.pretrain_steps, "train.noise_condition_dropout_rate": 0.0},
            "continued": {**extra, "train.noise_condition_dropout_rate": 0.0},
            "ncd_finetune": {**extra, "train.noise_condition_dropout_rate": cfg.t_dropout},
            "ncd_scratch": {"train.steps": cfg.pretrain_steps, "train.noise_condition_dropout_rate": cfg.t_dropout}}
    stages = harness.Stages(work, log)
    out = {}
    for name, ov in overrides.items():
        ov = {**base, **ov, "run.out_dir": str(work / f"{fam}_{name}")}
        if name in ("continued", "ncd_finetune"):
            ov["model.base"] = str(out["pretrained"].file)

        def train(ov=ov):
            t0 = time.time()
            res = api.finetune(api.load_config(None, ov), log=quiet)
            return {"file": str(res.path), "sha256": file_sha256(res.path), "seconds": time.time() - t0}

        def unchanged(done):
            return Path(done["file"]).is_file() and file_sha256(done["file"]) == done["sha256"]

        done = stages.value(f"{fam}_{name}_run", {"stage": "trainer run", "overrides": ov}, train, valid=unchanged)
        net, _ = api.load_reference_model(done["file"])
        out[name] = TrainedModel(net.eval(), done["seconds"], Path(done["file"]),
                                 _last_probe(work / f"{fam}_{name}" / "metrics.jsonl"))
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
                                   estimators.EstimatorTraining(cfg.estimator_steps, batch=128, lr=2e-3),
                                   torch.Generator().manual_seed(cfg.seed + 1), cb)
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
# tuning and sampling
# ---------------------------------------------------------------------------------------------

def held_out(tr: Trained, cfg: Config, model: str):
    """The tunings' measurement: one run of ``model`` on the held-out seed (Euler, ``tune_steps``), scored by its
    proxy FD (inf if not finite)."""
    def measure(method, knobs):
        res = tr.run(model, method, knobs, "euler", cfg.tune_steps, cfg.seed + 1000)
        fields = {"quality": res["quality"], "noise_shift": res["shift"]["learned"]["noise_shift"],
                  "precision": res["precision"], "recall": res["recall"]}
        return (res["quality"] if math.isfinite(res["quality"]) else float("inf")), fields

    return measure


def tune(tr: Trained, cfg: Config, log=print) -> tuple[dict, list]:
    """Knobs of the fine-tuned model on a held-out seed (Euler, ``tune_steps``), lowest proxy FD.

    NAG alone: scale x window grid; then NAG-CG, epsilon scaling, time shift; then the CFG scale, and NAG's scale
    on top of that CFG (the paper tunes NAG separately for with and without CFG).  Every method gets its best knob.
    """
    tuning, knobs = runs.Tuning(held_out(tr, cfg, "ncd_finetune")), {"window": 0.0}
    tuning.score("baseline", {}, {"method": "baseline"})  # the reference for the replicate in the report
    pairs = [(w, lam) for w in cfg.grid["nag_cf"] for lam in cfg.grid["window"]]
    knobs["nag_cf"], knobs["window"] = tuning.best("nag_cf", pairs, lambda c: {"nag_cf": c[0], "window": c[1]})
    for m in ("nag_cg", "eps_scaling", "time_shift", "cfg"):
        knobs[m] = tuning.best(m, cfg.grid[m], lambda v: {**knobs, m: v})
    knobs["nag_cf_cfg"] = tuning.best("nag_cf+cfg", cfg.grid["nag_cf_cfg"], lambda v: {**knobs, "nag_cf_cfg": v})
    log(f"[{tr.fam.name}] tuned on a held-out seed: {knobs}")
    return knobs, tuning.table


def tune_estimator_null(tr: Trained, cfg: Config, knobs: dict, log=print) -> tuple[float, list]:
    """The scale of ``nag_cf_est`` on a model without a null branch (the pretrained one), on the held-out seed, in
    learned NAG-CF's tuned window (so both spend the same evaluations per step)."""
    tuning = runs.Tuning(held_out(tr, cfg, "pretrained"))
    w = tuning.best("nag_cf_est", cfg.grid["nag_cf_est"], lambda v: {**knobs, "nag_cf_est": v},
                    lambda v: {"method": "nag_cf_est", "model": "pretrained", "nag_cf_est": v, "window": knobs["window"]})
    log(f"[{tr.fam.name}] nag_cf_est on the pretrained model, tuned on a held-out seed: {w}")
    return w, tuning.table


def tuned(tr: Trained, cfg: Config, stages: harness.Stages, log=print) -> tuple[dict, list]:
    """Every knob (:func:`tune`, then :func:`tune_estimator_null`'s) and the tuning table, made or reused."""
    spec = {"stage": "digits tuning", "family": tr.fam.name, "config": asdict(cfg)}
    knobs, table = stages.value(f"{tr.fam.name}_tuning", spec, lambda: tune(tr, cfg, log))
    spec = {**spec, "stage": "digits tuning, estimator null branch", "knobs": knobs}
    w_est, est_table = stages.value(f"{tr.fam.name}_tuning_est", spec, lambda: tune_estimator_null(tr, cfg, knobs, log))
    return {**knobs, "nag_cf_est": w_est}, table + est_table


def family_rows(tr: Trained, cfg: Config, knobs: dict) -> list[dict]:
    """Rows (:data:`ROWS`) of every model with its :data:`PLAN` methods, at every sampler and step count."""
    out = []
    for model, todo in PLAN.items():
        for sampler in (resolve_sampler(s, tr.fam.name) for s in cfg.samplers):
            for steps in cfg.steps:
                for method in todo:
                    res = tr.run(model, method, knobs, sampler, steps, cfg.seed)
                    key = {"family": tr.fam.name, "model": model, "method": method, "sampler": sampler, "steps": steps}
                    out.append(ROWS.row(key, res, knobs))
    return out


@torch.no_grad()
def sample_panels(tr: Trained, cfg: Config, knobs: dict, n: int = 20) -> dict:
    """``{label: samples [n, 8, 8] as nested lists}``: two of each class from the same noise, Euler at the most
    steps of ``cfg.steps``, for the README's picture: without guidance, with NAG from the estimator (no fine-tune),
    and the fine-tuned model without and with learned NAG."""
    sch, steps = tr.fam.schedule, max(cfg.steps)
    y = torch.arange(n) % 10
    out = {}
    for model, method, label in SAMPLE_PANELS:
        setup = methods.setup_for(method, tr, knobs)
        x = samplers.initial_noise((n, 1, 8, 8), sch, torch.Generator().manual_seed(cfg.seed + 77))
        img = samplers.sample_euler(tr.denoiser(model, setup), x, sch.sigmas(steps), extra_args={"y": y},
                                    level_fn=setup.level_fn).clamp(-1, 1)
        out[label] = [[round(float(v), 3) for v in im.flatten()] for im in img[:, 0]]
    return {"sampler": "euler", "steps": steps, "panels": out}


def plot_data(tr: Trained, cfg: Config, knobs: dict) -> dict:
    """Per-step learned-estimator readout of the fine-tuned model (SDE sampler) and per-sample values at four
    nominal levels."""
    sampler = resolve_sampler("sde" if "sde" in cfg.samplers else cfg.samplers[0], tr.fam.name)
    n, sch = cfg.plot_steps, tr.fam.schedule
    sig, pick = sch.sigmas(n), harness.kde_steps(n)
    readout = shift.estimator_readout(tr.estimator, sch)
    curves, kde = {}, {"levels": [float(sch.logsnr(sig[i])) for i in pick], "groups": {}}
    kde["groups"]["forward (true states)"] = shift.forward_readout(readout, tr.x_fwd, sig[pick], sch,
                                                                   torch.Generator().manual_seed(5)).tolist()
    for method in ("baseline", "nag_cf", "cfg", "nag_cf+cfg"):
        res = tr.run("ncd_finetune", method, knobs, sampler, n, cfg.seed, record="all")
        curves[method] = res["shift"]["learned"]
        if method in ("baseline", "nag_cf"):
            kde["groups"][method] = np.stack(res["estimated"]["learned"])[pick].tolist()
    return {"sampler": sampler, "steps": n, "curves": curves, "kde": kde, "window_min_logsnr": knobs["window"]}


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

def study(cfg: Config, work: Path, log=print, progress: bool = True) -> dict:
    t0 = time.time()
    stages = harness.Stages(work, log)
    x_train, metric, meta = ground_truth(cfg, stages, log, progress)
    data_var = float(x_train.var(0).mean())
    g = torch.Generator().manual_seed(cfg.seed + 7)
    x_fwd = x_train[torch.randint(0, cfg.n_train, (cfg.n_samples,), generator=g)]
    out = {"rows": [], "tuning": {}, "knobs": {}, "training": {}, "plots": {}, "meta": meta}
    for name in cfg.families:
        fam = get_family(name)
        models = train_models(cfg, name, work, log)
        est = train_level_estimator(cfg, fam, x_train, stages, progress)
        cal = calibrate_reading(est, x_train, fam.schedule, calibration_knots(est.bins), torch.Generator().manual_seed(cfg.seed + 9))
        tr = Trained(fam, est, metric, x_fwd, data_var, models, cal)
        out["training"][name] = {m: {"seconds": t.seconds, "file": str(t.file), **t.probe} for m, t in models.items()}
        knobs, out["tuning"][name] = tuned(tr, cfg, stages, log)
        out["knobs"][name] = knobs
        out["rows"] += family_rows(tr, cfg, knobs)
        out["plots"][name] = plot_data(tr, cfg, knobs)
        out.setdefault("samples", {})[name] = sample_panels(tr, cfg, knobs)
        log(f"[{name}] done ({time.time() - t0:.0f}s so far)")
    return out


def run_bench(out, quick: bool = False, seed: int = 0, config: Config | None = None, threads: int | None = None, log=print) -> dict:
    """Run the study; write metrics.json, report.md, noise_shift.png and samples.png into ``out`` (models under
    ``out/work``)."""
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


def redraw(out) -> list[Path]:
    """Rewrite ``out``'s noise_shift.png, samples.png and report.md from its metrics.json (no sampling); returns the
    paths."""
    return write_figures_and_report(Path(out), harness.load_metrics(out), redrawn=True)
