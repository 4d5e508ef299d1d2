"""`bench`: what noise-condition dropout costs per training step, measured side by side.

Runs the trainer's own step (``FinetuneTask.loss`` + backward + AdamW) on the configured
reference model, alternating blocks without dropout and with ``train.noise_condition_dropout_rate``
in ABBA order, so drift of the machine (thermal, other load) hits both settings alike.  Reports the
median step time of each, their ratio, and the device.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .config import Config, ConfigError
from .loop import step_generator


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads, {os.cpu_count()} cores visible"


def run(cfg: Config, log=print) -> dict:
    from . import data
    from .tasks import FinetuneTask

    cfg = copy.deepcopy(cfg)
    if not cfg.is_reference:
        raise ConfigError("bench measures a reference model (model.family = 'dit' or 'sit')")
    rate = cfg.train.noise_condition_dropout_rate
    if rate <= 0:
        raise ConfigError("bench compares no dropout with train.noise_condition_dropout_rate; set it > 0 (e.g. 0.1)")
    with tempfile.TemporaryDirectory() as tmp:
        if not cfg.data.cache or not Path(cfg.data.cache).exists():
            cfg.data.source, cfg.data.cache = "digits", str(Path(tmp) / "digits.safetensors")
            data.prepare(cfg, log=lambda *_: None)
        task = FinetuneTask(cfg, log=lambda *_: None)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = task.module.to(device).train()
        opt = torch.optim.AdamW([p for p in task.trainable.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
        b = cfg.bench
        counter = [0]

        def block(p: float, n: int) -> float:
            task.cfg.train.noise_condition_dropout_rate = p
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                k = counter[0]
                counter[0] += 1
                idx = torch.randint(0, task.dataset_size, (cfg.train.batch_size,), generator=torch.Generator().manual_seed(k))
                loss, _ = task.loss(module, idx, step_generator(cfg.run.seed, k, 0, 0), device)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / n

        if b.warmup:
            block(rate, b.warmup)
        times = {0.0: [], rate: []}
        for r in range(b.repeats):
            for p in ((0.0, rate) if r % 2 == 0 else (rate, 0.0)):
                times[p].append(block(p, b.steps))
    base, drop = statistics.median(times[0.0]), statistics.median(times[rate])
    paired = sorted(d / o for d, o in zip(times[rate], times[0.0]))
    result = {"device": device_description(device), "torch": torch.__version__,
              "model": f"reference {cfg.model.family} ({sum(p.numel() for p in task.trainable.parameters()):,} parameters)",
              "batch_size": cfg.train.batch_size, "steps_per_block": b.steps, "blocks_per_setting": b.repeats,
              "step_ms_no_dropout": base * 1e3, "step_ms_dropout": drop * 1e3, "dropout_rate": rate,
              "ratio": drop / base, "paired_ratio_median": statistics.median(paired),
              "paired_ratio_range": [paired[0], paired[-1]]}
    log(format_result(result))
    return result


def format_result(r: dict) -> str:
    return "\n".join([
        f"device      {r['device']} (torch {r['torch']})",
        f"model       {r['model']}, batch {r['batch_size']}",
        f"blocks      {r['blocks_per_setting']} x {r['steps_per_block']} steps per setting, interleaved ABBA",
        f"step time   no dropout {r['step_ms_no_dropout']:.3f} ms | dropout {r['dropout_rate']:g} {r['step_ms_dropout']:.3f} ms (medians)",
        f"ratio       {r['ratio']:.4f} (dropout / no dropout; paired blocks: median {r['paired_ratio_median']:.4f}, "
        f"range {r['paired_ratio_range'][0]:.4f}..{r['paired_ratio_range'][1]:.4f})",
        f"overhead    {100 * (r['ratio'] - 1):+.2f} % (target: under 2 %)",
    ])
