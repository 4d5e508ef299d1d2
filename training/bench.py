"""`bench`: what noise-condition dropout costs per training step, measured side by side.

Runs the trainer's own step (``FinetuneTask.loss`` + backward + AdamW) on the configured
reference model in *pairs*: one step of a plain trainer (the network never receives a dropout
mask) and one step with ``train.noise_condition_dropout_rate``, in random order within each pair,
so drift and other load on the machine hit both alike.  Both steps of a pair use the same batch
indices and generator seed.  Reports median step times (wall clock, and on CPU also the process's
CPU time, which is far less disturbed by other processes on a shared machine), their ratio with a
bootstrap 95 % interval over pairs, and the device.
"""
from __future__ import annotations

import copy
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .config import Config, ConfigError
from .seeding import step_generator


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    n = torch.get_num_threads()
    return f"cpu: {cpu_name()}, {n} torch thread{'' if n == 1 else 's'}, {os.cpu_count()} cores visible"


def _ratio_interval(base: list[float], drop: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """Bootstrap 95 % interval of median(drop) / median(base), resampling pairs."""
    rng = random.Random(seed)
    k = len(base)
    ratios = []
    for _ in range(n):
        pick = [rng.randrange(k) for _ in range(k)]
        ratios.append(statistics.median(drop[i] for i in pick) / statistics.median(base[i] for i in pick))
    ratios.sort()
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def run(cfg: Config, log=print) -> dict:
    from .prepare import prepare
    from .tasks import FinetuneTask

    cfg = copy.deepcopy(cfg)
    if not cfg.is_reference:
        raise ConfigError("bench measures a reference model (model.family = 'dit' or 'sit')")
    rate = cfg.train.noise_condition_dropout_rate
    if rate <= 0:
        raise ConfigError("bench compares no dropout with train.noise_condition_dropout_rate; set it > 0 (e.g. 0.1)")
    b = cfg.bench
    with tempfile.TemporaryDirectory() as tmp:
        if not cfg.data.cache or not Path(cfg.data.cache).exists():
            cfg.data.source, cfg.data.cache = "digits", str(Path(tmp) / "digits.safetensors")
            prepare(cfg, log=lambda *_: None)
        task = FinetuneTask(cfg, log=lambda *_: None)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = task.module.to(device).train()
        opt = torch.optim.AdamW([p for p in task.trainable.parameters() if p.requires_grad], lr=cfg.train.learning_rate)

        def step(k: int, plain: bool) -> tuple[float, float]:
            idx = torch.randint(0, task.dataset_size, (cfg.train.batch_size,), generator=torch.Generator().manual_seed(k))
            if device.type == "cuda":
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.process_time()
            loss, _ = task.loss(module, idx, step_generator(cfg.run.seed, k, 0), device, plain=plain)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - w0, time.process_time() - c0

        for k in range(b.warmup):
            step(k, k % 2 == 0)
        order = random.Random(cfg.run.seed)
        wall = {True: [], False: []}
        cpu = {True: [], False: []}
        for k in range(b.steps * b.repeats):
            for plain in ((True, False) if order.random() < 0.5 else (False, True)):
                w, c = step(b.warmup + k, plain)
                wall[plain].append(w)
                cpu[plain].append(c)
    result = {"device": device_description(device), "torch": torch.__version__,
              "model": f"reference {cfg.model.family} ({sum(p.numel() for p in task.trainable.parameters()):,} parameters)",
              "batch_size": cfg.train.batch_size, "pairs": len(wall[True]), "dropout_rate": rate}
    clocks = [("wall", wall)] + ([("cpu", cpu)] if device.type == "cpu" else [])
    for name, t in clocks:
        base, drop = statistics.median(t[True]), statistics.median(t[False])
        result[f"{name}_step_ms_plain"] = base * 1e3
        result[f"{name}_step_ms_dropout"] = drop * 1e3
        result[f"{name}_ratio"] = drop / base
        result[f"{name}_ratio_95"] = list(_ratio_interval(t[True], t[False], cfg.run.seed))
    result["ratio"] = result["cpu_ratio" if device.type == "cpu" else "wall_ratio"]
    log(format_result(result))
    return result


def format_result(r: dict) -> str:
    lines = [f"device      {r['device']} (torch {r['torch']})",
             f"model       {r['model']}, batch {r['batch_size']}",
             f"pairs       {r['pairs']} (plain step + dropout-{r['dropout_rate']:g} step, random order in each pair)"]
    for name in ("wall", "cpu"):
        if f"{name}_ratio" in r:
            lo, hi = r[f"{name}_ratio_95"]
            lines.append(f"{name + ' time':11s} plain {r[f'{name}_step_ms_plain']:.3f} ms | dropout "
                         f"{r[f'{name}_step_ms_dropout']:.3f} ms (medians) -> ratio {r[f'{name}_ratio']:.4f} "
                         f"(95% {lo:.4f}..{hi:.4f})")
    lines.append(f"overhead    {100 * (r['ratio'] - 1):+.2f} % ({'CPU time' if 'cpu_ratio' in r else 'wall time'}; "
                 "target: under 2 %)")
    return "\n".join(lines)
