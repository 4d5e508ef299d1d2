"""Per-step cost of NAG: wall time and peak memory of each guidance mode vs plain CFG, side by side.

``python -m studies bench cost --out DIR [--quick]`` builds the reference DiT (eps, VP) and SiT
(flow) at the image benchmark's size, and times one guided denoiser call per sampler step for:
baseline, CFG, NAG-CF batched, NAG-CF unbatched, NAG-CF + CFG (A), NAG-CG.  Settings are
interleaved in a fresh random order every round (drift hits every setting alike); the report
gives medians and ratios to CFG from the same run.  Peak memory = the most tensor memory one step
holds above what was allocated before it (activations and outputs, not weights): CUDA's allocator
statistics on a GPU, torch.profiler's allocation events on CPU.  Writes ``cost.json`` and
``cost.md`` and records the device.
"""
from __future__ import annotations

import random
import time

import numpy as np
import torch

from comfy_nag import estimators, models
from comfy_nag.denoiser import Denoiser
from comfy_nag.files import atomic_write_bytes
from comfy_nag.guidance import Guidance
from comfy_nag.families import family as get_family

from . import harness

SETTINGS = {
    "baseline": dict(),
    "cfg": dict(cfg_scale=2.0),
    "nag_cf_batched": dict(nag_scale=1.0),
    "nag_cf_unbatched": dict(nag_scale=1.0),
    "nag_cf+cfg": dict(cfg_scale=2.0, nag_scale=1.0),
    "nag_cg": dict(cg_scale=1.0),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_peak_bytes(fn, device) -> int:
    """Peak tensor bytes allocated by ``fn()`` above the level before it (CUDA allocator / CPU profiler)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def measure(fam_name: str, batch: int = 256, hidden: int = 64, depth: int = 2, rounds: int = 20, calls: int = 5,
            device=None, seed: int = 0) -> dict:
    """Median seconds per call and peak step memory of each setting for one family."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fam = get_family(fam_name)
    torch.manual_seed(seed)
    net = models.DiT(input_size=8, patch_size=2, in_channels=1, hidden=hidden, depth=depth, heads=4, num_classes=10,
                     null=models.NullCondition(timestep=fam.schedule.null_timestep)).to(device).eval()
    lo, hi = fam.schedule.logsnr_range()
    est = estimators.NoiseLevelEstimator((1, 8, 8), estimators.LevelBins(max(lo, -10.0), min(hi, 10.0), 24), 32, 2).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g).to(device)
    y = (torch.arange(batch) % 10).to(device)
    s = fam.schedule.sigmas(10)[7].to(device)  # a late step: inside NAG's usual window
    dens = {k: Denoiser(net, fam.schedule, fam.prediction, Guidance(**kw), estimator=est, batched=k != "nag_cf_unbatched")
            for k, kw in SETTINGS.items()}
    times = {k: [] for k in SETTINGS}
    rng = random.Random(seed)
    with torch.no_grad():
        for d in dens.values():  # warm-up
            d(x, s, y)
        peaks = {k: step_peak_bytes(lambda: d(x, s, y), device) for k, d in dens.items()}
        for _ in range(rounds):
            order = list(SETTINGS)
            rng.shuffle(order)
            for k in order:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    dens[k](x, s, y)
                _sync(device)
                times[k].append((time.perf_counter() - t0) / calls)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {"family": fam_name, "device": str(device), "batch": batch, "rounds": rounds, "calls_per_round": calls,
           "seconds_per_step": med, "ratio_to_cfg": {k: med[k] / med["cfg"] for k in med},
           "nfe_per_step": {k: dens[k].evaluations / dens[k].calls for k in dens},
           "peak_bytes": peaks, "peak_ratio_to_cfg": {k: peaks[k] / peaks["cfg"] for k in peaks}}
    return out


def run_cost(out, quick: bool = False, seed: int = 0, threads: int | None = None, log=print,
             families=("dit", "sit"), batch: int | None = None) -> dict:
    """Time every setting for each of ``families``; write cost.json and cost.md into ``out``."""
    out, t0, _ = harness.begin(out, threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    res = {"device": name, "torch": torch.__version__,
           "results": [measure(f, batch=batch or (64 if quick else 256), rounds=5 if quick else 20, seed=seed) for f in families]}
    res["seconds"] = time.time() - t0
    L = [f"# NAG per-step cost ({name})\n",
         f"`python -m studies bench cost{' --quick' if quick else ''}`; torch {torch.__version__}; {res['seconds']:.0f} s. "
         "Median seconds per guided denoiser call (one sampler step), settings interleaved in random order each round; "
         "ratios to CFG from the same run. Peak: the most tensor memory one step holds above what was allocated before "
         "it (activations and outputs, not weights), from " + ("CUDA's allocator statistics" if dev == "cuda" else
                                                               "torch.profiler's CPU allocation events") + ".\n",
         "| family | setting | NFE/step | ms/step | ratio to CFG | peak MiB | peak ratio to CFG |",
         "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        for k in SETTINGS:
            line = (f"| {r['family']} | {k} | {r['nfe_per_step'][k]:.0f} | {1000 * r['seconds_per_step'][k]:.2f} | "
                    f"{r['ratio_to_cfg'][k]:.2f} | {r['peak_bytes'][k] / 2 ** 20:.1f} | {r['peak_ratio_to_cfg'][k]:.2f} |")
            L.append(line)
    L.append("\nThe batched forward holds activations for NFE/step x batch rows at once; unbatched runs the null branch "
             "as its own call, so its peak is one branch's; what that costs in time depends on the device (column above).")
    harness.save_json(out / "cost.json", res)
    atomic_write_bytes(out / "cost.md", ("\n".join(L) + "\n").encode())
    log("\n".join(L))
    return res
