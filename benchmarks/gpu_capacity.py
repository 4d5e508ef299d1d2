"""Part 3 of ``benchmarks/gpu_check.py``: the capacity curve past the CPU (exact testbed).

The capacity study (``studies/capacity.py``, ``docs/capacity/``) trained the demo's MLP denoiser at 0.38 M and
1.94 M parameters and up to 4x the demo's 2000 steps on the CPU.  Here the same recipe
(``studies.toolkit.Config`` defaults: noise-condition dropout 0.1, class dropout 0.1, sentinel null timestep,
the estimator of ``toolkit.train_family``) trains networks of about 10x and 50x the demo's parameters
(352x4: 3.65 M, 800x4: 18.7 M) for 10x its steps (20 000), for both families (sit, sd1), seed 0, and
measures them with ``studies.terms.measure`` on the same states as the CPU runs (512 per level, seed 0):

* ``nag_cf``: cosine of the learned ``c - n`` with the exact ``c* - n*``;
* ``marginal_null``: the ceiling (the network's own conditional branch averaged over the exact level posterior);
* ``nag_cf_est`` / ``nag_cf_est3`` / ``nag_cf_est_exact``: ``c - n`` with the null branch from the estimator's
  posterior at K = 1 and 3 levels (``comfy_nag.posterior_null`` through ``comfy_nag.denoiser.Denoiser``), and
  with the exact posterior over its bins (``studies.terms.ESTIMATOR_TERMS``, when this checkout has them).

Only the networks run on the GPU (everything else, the exact terms included, is the CPU code of the studies,
unchanged): each network trains in its own process, four at a time, and each process fits its training
length to the part's budget (measured speed; a network that cannot reach the demo's 2000 steps is skipped and
says so).  ``python benchmarks/gpu_capacity.py --worker ...`` is that process.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_common import ROOT, PartReport, check_packages, clean, error_fields, time_left, write_json

FAMILIES = ("sit", "sd1")
NETWORKS = (("352x4", 352, 4), ("800x4", 800, 4))  # ~10x and ~49x the demo's 380 448 parameters
TOY_NETWORKS = (("32x2", 32, 2), ("64x2", 64, 2))
SEED = 0
REAL = {"steps_factor": 10, "n_states": 512, "min_steps": 2000, "step_unit": 500, "probe_steps": 60,
        "workers": 4, "threads": 3}
TOY = {"train_steps": 100, "estimator_steps": 40, "n_states": 32, "min_steps": 20, "step_unit": 10, "probe_steps": 10,
       "workers": 2, "threads": 1}
DEMO_PARAMS, DEMO_STEPS = 380448, 2000  # the demo's denoiser (128x3) and its training length


def settings(toy: bool) -> dict:
    nets = TOY_NETWORKS if toy else NETWORKS
    return {"families": list(FAMILIES), "networks": [{"name": n, "hidden": h, "depth": d} for n, h, d in nets],
            "seed": SEED, **(TOY if toy else REAL),
            "recipe": "studies.toolkit.Config.make(quick=True) with the overrides above" if toy else
                      "studies.toolkit.Config defaults (the demo's recipe), train_steps x steps_factor"}


def run(report: PartReport, toy: bool, deadline: float | None) -> None:
    check_packages("capacity")
    import torch

    s = TOY if toy else REAL
    all_jobs = [(fam, name, h, d) for fam in FAMILIES for name, h, d in (TOY_NETWORKS if toy else NETWORKS)]
    jobs = list(all_jobs)
    parallel = s["workers"] if torch.cuda.is_available() else min(s["workers"], os.cpu_count() or 1)
    results: list = []
    with tempfile.TemporaryDirectory() as tmp:
        running: dict = {}
        while jobs or running:
            while jobs and len(running) < parallel:
                job = jobs.pop(0)
                running[job] = start_worker(job, toy, deadline, Path(tmp))
            time.sleep(0.2)
            for job, (proc, out, err) in list(running.items()):
                late = time_left(deadline) < -30
                if proc.poll() is None and not late:
                    continue
                if late and proc.poll() is None:
                    proc.kill()
                    proc.wait()
                results.append(collect(job, proc, out, err, late))
                del running[job]
                report.update(networks=results)
                print(f"capacity {job[0]} {job[1]}: {summary_line(results[-1])}", flush=True)
    order = {(fam, name): i for i, (fam, name, _, _) in enumerate(all_jobs)}
    results.sort(key=lambda r: order[(r["family"], r["network"])])
    problems = [f"{r['family']} {r['network']}: {r.get('skipped') or r.get('error')}" for r in results
                if r.get("skipped") or r.get("error")]
    report.update(networks=results, cpu_reference=cpu_reference(), problems=problems, complete=True)


def start_worker(job, toy: bool, deadline: float | None, tmp: Path):
    fam, name, h, d = job
    out, err = tmp / f"{fam}_{name}.json", tmp / f"{fam}_{name}.err"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--family", fam, "--name", name,
           "--hidden", str(h), "--depth", str(d), "--out", str(out),
           "--deadline", str(deadline - 5 if deadline else time.time() + 3600), *(["--toy"] if toy else [])]
    with open(err, "w") as fh:
        return subprocess.Popen(cmd, stderr=fh), out, err  # in this process group: stopped with it


def collect(job, proc, out: Path, err: Path, killed: bool) -> dict:
    fam, name, h, d = job
    key = {"family": fam, "network": name, "hidden": h, "depth": d}
    if out.exists():
        return {**key, **json.loads(out.read_text())}
    tail = err.read_text()[-2000:] if err.exists() else ""
    why = "killed: past the part's budget" if killed else f"worker exited with code {proc.returncode}"
    return {**key, "error": why, "stderr": clean(tail)}


def summary_line(r: dict) -> str:
    if "terms" not in r:
        return r.get("skipped") or r.get("error", "?")
    return (f"{r['params'] / 1e6:.2f} M params, {r['train_steps']} steps ({r['s_per_step'] * 1e3:.1f} ms/step): "
            + ", ".join(f"{t} {v['cos_late']:.2f}" for t, v in r["terms"].items()))


def cpu_reference() -> list[dict]:
    """The CPU runs' late cosines (docs/capacity/capacity.json, seed 0), for the table beside the new ones."""
    from studies.terms import late_cos

    path = ROOT / "docs" / "capacity" / "capacity.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    out = []
    for n in res["networks"]:
        if n["seed"] != SEED:
            continue
        fid = [r for r in res["fidelity"] if all(r[k] == n[k] for k in ("seed", "family", "variant"))]
        out.append({"family": n["family"], "variant": n["variant"], "params": n["params"], "train_steps": n["train_steps"],
                    "cos_late": late_cos(fid), "cos_late_noisier": late_cos(fid, offset=0.5),
                    "ceiling_late": late_cos(fid, "marginal_null")})
    return out


# --- the worker: one network ----------------------------------------------------------------------------

def on_device(net, device):
    """``net`` on ``device`` behind a module that takes and returns CPU tensors: the studies' code (data, exact
    terms, estimator) stays on the CPU unchanged and only the network's forward and backward run on the GPU."""
    import torch

    class OnDevice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.to(device)
            self.num_classes, self.in_shape = net.num_classes, net.in_shape

        def forward(self, x, t, y=None, drop_t=None):
            args = [None if v is None else v.to(device) for v in (x, t, y, drop_t)]
            return self.net(*args).to(x.device)

    return OnDevice()


@dataclasses.dataclass
class Network:
    """One network of the part and what it is trained and measured with: the network on the device (:func:`on_device`),
    the mixture ``gmm``, the family, the noise-level estimator ``est`` with its ``bins``, the demo's Config ``cfg`` and
    the part's settings ``s`` (:data:`REAL` or :data:`TOY`)."""

    net: object
    gmm: object
    fam: object
    est: object
    bins: object
    cfg: object
    s: dict

    def train(self, net, steps: int, seed: int, callback) -> list:
        """Train ``net`` (this network or a copy) for ``steps`` steps with the demo's recipe from ``seed``."""
        from studies import testbed

        training = testbed.Training(steps, t_dropout=self.cfg.t_dropout, y_dropout=self.cfg.y_dropout, seed=seed)
        return testbed.train_denoiser(net, self.gmm, self.fam.schedule, self.fam.prediction, training, callback=callback)

    def measure(self, which, lams=None, offsets=None) -> list:
        """``studies.terms.measure`` of ``which`` terms on the part's states: ``n_states`` per level, seed 0, at
        ``lams`` and ``offsets`` (default: the CPU runs')."""
        from studies import terms

        states = terms.States(self.s["n_states"], SEED, lams or terms.LAMS, offsets or terms.OFFSETS)
        return terms.measure(self.net, self.est, self.gmm, self.fam, self.bins, states, which)


def measure_terms():
    from studies import terms

    extra = getattr(terms, "ESTIMATOR_TERMS", ())
    return ("nag_cf", "marginal_null", *extra)


def worker(args) -> dict:
    import torch
    from comfy_nag import estimators, models
    from comfy_nag.families import family
    from studies import testbed, toolkit

    s = TOY if args.toy else REAL
    torch.set_num_threads(s["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = toolkit.Config.make(args.toy, SEED)
    if args.toy:
        cfg = dataclasses.replace(cfg, train_steps=s["train_steps"], estimator_steps=s["estimator_steps"])
    target = cfg.train_steps if args.toy else cfg.train_steps * s["steps_factor"]
    gmm = testbed.GaussianMixture.make(dim=cfg.dim, seed=SEED)
    fam = family(args.family)
    sch = fam.schedule
    torch.manual_seed(cfg.seed)  # as toolkit.train_family: the network, then the estimator, from this seed
    net = models.MLPDenoiser(gmm.dim, gmm.num_classes, args.hidden, args.depth,
                             null=models.NullCondition("sentinel", sch.null_timestep))
    lo, hi = sch.logsnr_range()
    bins = estimators.LevelBins(max(lo, -10.0), min(hi, 10.0), cfg.bins)
    est = estimators.NoiseLevelEstimator((gmm.dim,), bins, width=128, depth=3)
    out = {"params": sum(p.numel() for p in net.parameters()), "target_steps": target, "device": str(device)}
    out["params_x_demo"] = out["params"] / DEMO_PARAMS
    t0 = time.perf_counter()
    eh = estimators.train_estimator(est, lambda n, g: gmm.sample(n, generator=g)[0], sch,
                                    estimators.EstimatorTraining(cfg.estimator_steps, lr=3e-3),
                                    torch.Generator().manual_seed(cfg.seed + 1))
    out.update(estimator_steps=cfg.estimator_steps, estimator_loss=sum(eh[-50:]) / len(eh[-50:]),
               estimator_s=round(time.perf_counter() - t0, 1))
    network = Network(on_device(net, device), gmm, fam, est, bins, cfg, s)
    plan = plan_steps(network, target, args.deadline)
    out.update(plan)
    print(f"capacity {args.family} {args.name}: {out['params'] / 1e6:.2f} M params, {plan['train_steps']} of {target} "
          f"steps fit ({plan['probe_s_per_step'] * 1e3:.1f} ms/step on {device.type})", flush=True)
    if plan["train_steps"] < s["min_steps"]:
        least = f"{s['min_steps']}" + ("" if args.toy else ", the demo's own training length")
        return {**out, "skipped": f"only {plan['train_steps']} steps fit the budget (minimum {least})"}
    train_and_measure(out, network, plan["train_steps"])
    return out


def plan_steps(network: Network, target: int, deadline: float) -> dict:
    """Training steps that fit before ``deadline``: speed from a short run on a copy of the network, the
    measurement's time from one level of it (x the levels, + 20 %)."""
    from studies import terms

    s = network.s
    t0 = time.perf_counter()
    network.measure(measure_terms(), (terms.LAMS[0],), (terms.OFFSETS[0],))
    reserve = (time.perf_counter() - t0) * len(terms.LAMS) * len(terms.OFFSETS) * 1.2 + 5
    stamps: list = []
    probe = copy.deepcopy(network.net)
    network.train(probe, s["probe_steps"], network.cfg.seed + 7, lambda *a: stamps.append(time.perf_counter()))
    del probe
    diffs = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    s_step = diffs[len(diffs) // 2] * 1.05  # median, + 5 % for the contention of the other workers
    fit = int(max(time_left(deadline) - reserve, 0) / s_step)
    steps = min(target, fit // s["step_unit"] * s["step_unit"])
    return {"train_steps": steps, "cut_by_budget": steps < target, "probe_s_per_step": s_step,
            "measure_reserve_s": round(reserve, 1)}


def train_and_measure(out: dict, network: Network, steps: int) -> None:
    from studies import terms

    stamps: list = []
    t0 = time.perf_counter()
    hist = network.train(network.net, steps, network.cfg.seed, lambda *a: stamps.append(time.perf_counter()))
    diffs = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    out.update(train_s=round(time.perf_counter() - t0, 1), s_per_step=diffs[len(diffs) // 2],
               train_loss=sum(hist[-100:]) / len(hist[-100:]), train_steps_x_demo=steps / DEMO_STEPS)
    t0 = time.perf_counter()
    which = measure_terms()
    rows = network.measure(which)
    out["measure_s"] = round(time.perf_counter() - t0, 1)
    out["terms"] = {t: {"cos_late": terms.late_cos(rows, t), "cos_late_noisier": terms.late_cos(rows, t, offset=0.5),
                        "norm_ratio_late": median([r["norm_ratio"] for r in rows
                                                   if r["term"] == t and r["offset"] == 0 and r["lam"] >= 0])}
                    for t in which}
    if "nag_cf_est" not in which:
        out["not_measured"] = "studies.terms has no ESTIMATOR_TERMS in this checkout (estimator null branch)"
    out["fidelity"] = rows


def median(vals: list) -> float:
    vals = sorted(vals)
    return vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] + vals[len(vals) // 2])


def worker_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one network of the capacity part (started by gpu_check.py)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--family", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    ap.add_argument("--toy", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = worker(args)
    except Exception as e:  # noqa: BLE001 - the error goes into the results
        out = error_fields(e)
    out["worker_s"] = round(time.perf_counter() - t0, 1)
    write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(worker_main())
