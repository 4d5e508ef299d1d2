"""Which backbone should a noise-level estimator for video latents use: per frame, or spatio-temporal?

Trains ``NoiseLevelEstimator`` with ``VideoBackbone.FRAMES`` (the image network on each frame, features averaged
over frames) and ``VideoBackbone.SPACETIME`` (3-D convolutions) at equal width, depth and steps, on a synthetic
video set where the noise level is not readable from simple statistics: scikit-learn's digits moving across a
16x16 canvas (a random start and velocity per clip, bouncing off the borders), 4 channels, each channel with its own
random contrast and offset per clip, so that neither a state's mean nor its variance tells its level; only the
digit's structure (in space, and its motion in time) separates signal from noise.  The schedule is WAN's (the
family registry's ``wan21``: flow, shift 8), the bins the trainer's default (32 over the schedule's range).

Held-out clips (digits the estimators never saw), forward states at log-SNR uniform over the bins, at the number
of frames trained on (``--frames``) and at other lengths (``--eval-frames``; an estimator reads any T at sampling):

* ``CE``: cross-entropy of the true bin (lower is better; log 32 = 3.47 is knowing nothing);
* ``|err|``: mean |posterior-mean log-SNR - true log-SNR| (lower is better).

    ./run.sh python benchmarks/video_estimator_backbone.py              # the numbers in docs/training.md
    ./run.sh python benchmarks/video_estimator_backbone.py --steps 200 --seeds 0   # a quick look
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_nag.estimators import LevelBins, NoiseLevelEstimator, VideoBackbone, noised, train_estimator  # noqa: E402
from comfy_nag.families import family  # noqa: E402

CANVAS, CHANNELS, TRAIN_DIGITS = 16, 4, 1400


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    return torch.from_numpy(load_digits().images).float() / 16.0  # [1797, 8, 8] in [0, 1]


def clips(pool: torch.Tensor, n: int, frames: int, g: torch.Generator) -> torch.Tensor:
    """``n`` clips [n, C, T, 16, 16] of digits from ``pool`` moving across the canvas (see the module docstring)."""
    idx = torch.randint(0, len(pool), (n,), generator=g)
    pos = torch.randint(0, CANVAS - 8 + 1, (n, 2), generator=g)
    vel = torch.randint(-2, 3, (n, 2), generator=g)
    span, steps = CANVAS - 8, torch.arange(frames)
    p = (pos[:, None] + vel[:, None] * steps[None, :, None]) % (2 * span)
    p = torch.where(p > span, 2 * span - p, p)  # [n, T, 2] top-left corners, bouncing off the borders
    ys = p[..., 0, None, None] + torch.arange(8)[:, None]
    xs = p[..., 1, None, None] + torch.arange(8)[None, :]
    out = torch.zeros(n, frames, CANVAS, CANVAS)
    out[torch.arange(n)[:, None, None, None], steps[None, :, None, None], ys, xs] = pool[idx][:, None]
    contrast = torch.rand(n, CHANNELS, 1, 1, 1, generator=g) * 1.5 + 0.25
    offset = torch.rand(n, CHANNELS, 1, 1, 1, generator=g) * 2 - 1
    sign = torch.where(torch.rand(n, CHANNELS, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    return out[:, None] * contrast * sign + offset


@torch.no_grad()
def evaluate(est: NoiseLevelEstimator, pool: torch.Tensor, frames: int, schedule, n: int = 512) -> dict:
    g = torch.Generator().manual_seed(10_000 + frames)
    x0 = clips(pool, n, frames, g)
    lam = est.bins.sample(n, g)
    x = noised(x0, lam, schedule, g)
    logits = torch.cat([est(c) for c in x.split(128)])
    ce = F.cross_entropy(logits, est.bins.index(lam)).item()
    mean = (F.softmax(logits, 1) @ est.bins.centers()).sub(lam).abs().mean().item()
    return {"ce": ce, "err": mean}


def run(backbone: VideoBackbone, seed: int, a) -> dict:
    pool = digits()
    train, held = pool[:TRAIN_DIGITS], pool[TRAIN_DIGITS:]
    schedule = family("wan21").schedule
    bins = LevelBins(*schedule.logsnr_range(), 32)
    torch.manual_seed(seed)
    est = NoiseLevelEstimator((CHANNELS, a.frames, CANVAS, CANVAS), bins, a.width, a.depth, backbone)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    train_estimator(est, lambda n, gen: clips(train, n, a.frames, gen), schedule, a.steps, a.batch, a.lr, g)
    seconds = time.perf_counter() - t0
    est.eval()
    res = {f: evaluate(est, held, f, schedule) for f in [a.frames, *a.eval_frames]}
    return {"params": sum(p.numel() for p in est.parameters()), "seconds": seconds, "eval": res}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--frames", type=int, default=4, help="frames per training clip")
    p.add_argument("--eval-frames", type=int, nargs="*", default=[2, 8], help="other clip lengths to evaluate at")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"{a.steps} steps, batch {a.batch}, width {a.width}, depth {a.depth}, trained on {a.frames} frames, "
          f"seeds {a.seeds}, torch {torch.__version__}, {a.threads} thread(s); log 32 = {math.log(32):.2f}")
    lengths = [a.frames, *a.eval_frames]
    head = " | ".join(f"CE T={f} | \\|err\\| T={f}" for f in lengths)
    print(f"\n| backbone | seed | parameters | train s | {head} |")
    print("|---|---|---|---|" + "---|---|" * len(lengths))
    summary = {}
    for backbone in (VideoBackbone.FRAMES, VideoBackbone.SPACETIME):
        for seed in a.seeds:
            r = run(backbone, seed, a)
            cells = " | ".join(f"{r['eval'][f]['ce']:.3f} | {r['eval'][f]['err']:.3f}" for f in lengths)
            print(f"| {backbone.value} | {seed} | {r['params']:,} | {r['seconds']:.0f} | {cells} |", flush=True)
            summary.setdefault(backbone.value, []).append(r["eval"])
    print("\nmean over seeds:")
    for name, evals in summary.items():
        cells = ", ".join(f"T={f}: CE {sum(e[f]['ce'] for e in evals) / len(evals):.3f} |err| "
                          f"{sum(e[f]['err'] for e in evals) / len(evals):.3f}" for f in lengths)
        print(f"  {name}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
