"""The trainer as Python calls (what the CLI runs; also for benchmarks and notebooks).

Run from the repository root (``training`` is not an installed package)::

    from training import api
    cfg = api.load_config("training/configs/tiny_dit.toml", {"run.out_dir": "runs/x", "train.steps": 200})
    api.prepare(cfg)                     # digits -> runs/cache/digits.safetensors
    result = api.finetune(cfg)           # -> RunResult(path=runs/x/x.safetensors, step=200, ...)
    net, meta = api.load_reference_model(result.path)

``finetune`` resumes by itself when ``run.out_dir`` already holds a checkpoint of the same run.

These calls leave torch's CPU thread count alone unless asked: ``threads="auto"`` (what the CLI's
``--threads`` defaults to: 1 thread for the tiny reference models, torch's default otherwise) or a
number sets it for the call and restores it afterwards (``training/cpu_threads.py``).
"""
from __future__ import annotations

from pathlib import Path

from . import config as _config
from . import cpu_threads
from .config import Config, ConfigError
from .adapters import load_reference_model, save_reference_model
from .loop import LoopSettings, RunResult, TrainingDiverged, train

__all__ = ["Config", "ConfigError", "RunResult", "TrainingDiverged", "load_config", "prepare", "finetune",
           "estimator", "inspect", "bench", "load_reference_model", "save_reference_model", "finetune_settings"]


def load_config(path=None, overrides: dict | list | None = None) -> Config:
    """A validated config from an optional TOML/YAML file plus overrides (``{"train.steps": 10}``)."""
    return _config.load(path, overrides)


def _as_config(cfg, overrides=None) -> Config:
    if isinstance(cfg, Config):
        return cfg if not overrides else _config.from_dict(_config.merge(cfg.to_dict(), overrides))
    if isinstance(cfg, dict):
        return _config.from_dict(_config.merge(cfg, overrides))
    return load_config(cfg, overrides)


def prepare(cfg, overrides=None, log=print, threads=None) -> Path:
    from .data import prepare as _prepare
    cfg = _as_config(cfg, overrides)
    _config.require(cfg, "prepare")
    with cpu_threads.using(threads, cfg, "prepare"):
        return _prepare(cfg, log)


def finetune_settings(cfg: Config) -> LoopSettings:
    r, t = cfg.run, cfg.train
    return LoopSettings(steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate, out_dir=Path(r.out_dir),
                        seed=r.seed, accum=t.gradient_accumulation_steps, weight_decay=t.weight_decay,
                        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, grad_clip=t.grad_clip,
                        mixed_precision=t.mixed_precision, ema_decay=t.ema_decay,
                        gradient_checkpointing=t.gradient_checkpointing, resume=r.resume,
                        deterministic=r.deterministic, log_every=r.log_every, checkpoint_every=r.checkpoint_every,
                        keep_checkpoints=r.keep_checkpoints, monitor_every=cfg.monitor.every)


def finetune(cfg, overrides=None, callbacks=(), log=print, threads=None) -> RunResult:
    """Fine-tune (or, for dit/sit without model.base, train) with noise-condition dropout; resumable."""
    from .tasks import FinetuneTask
    cfg = _as_config(cfg, overrides)
    _config.require(cfg, "finetune")
    with cpu_threads.using(threads, cfg, "finetune"):
        task = FinetuneTask(cfg, log)
        return train(task, finetune_settings(cfg), callbacks, log)


def estimator(cfg, overrides=None, callbacks=(), log=print, threads=None) -> RunResult:
    """Train a noise-level estimator on the cache for its family's schedule; resumable."""
    from .tasks import EstimatorTask
    cfg = _as_config(cfg, overrides)
    _config.require(cfg, "estimator")
    e, r = cfg.estimator, cfg.run
    s = LoopSettings(steps=e.steps, batch_size=e.batch_size, learning_rate=e.learning_rate, out_dir=Path(r.out_dir),
                     seed=r.seed, lr_schedule="cosine", grad_clip=cfg.train.grad_clip,
                     mixed_precision=cfg.train.mixed_precision, resume=r.resume, deterministic=r.deterministic,
                     log_every=r.log_every, checkpoint_every=r.checkpoint_every, keep_checkpoints=r.keep_checkpoints,
                     monitor_every=cfg.monitor.every)
    with cpu_threads.using(threads, cfg, "estimator"):
        return train(EstimatorTask(cfg, log), s, callbacks, log)


def inspect(path) -> str:
    from .inspection import inspect_path
    return inspect_path(path)


def bench(cfg, overrides=None, log=print, threads=None) -> dict:
    from .bench import run
    cfg = _as_config(cfg, overrides)
    with cpu_threads.using(threads, cfg, "bench"):
        return run(cfg, log)
