"""The training loop shared by `finetune` and `estimator` (DiT/SiT ``train.py`` style, on accelerate).

accelerate handles devices, multi-GPU (DDP), mixed precision and gradient accumulation; this
file adds what makes a run reproducible and resumable:

* **Seeded, resumable randomness.**  The data order is a fixed permutation per epoch and every
  micro-batch draws its noise, levels and dropout from a generator seeded by
  ``(seed, step, micro-batch, process)``; a run is a pure function of its seed, so a resumed run
  continues exactly as if it had never stopped (bit-identical on CPU).
* **Checkpoints** of weights, EMA, optimizer, scheduler, scaler and RNG (``state.py``), every
  ``run.checkpoint_every`` steps and at the end; SIGINT/SIGTERM finish the current step, save,
  and stop.  A SIGKILL loses only the steps since the last checkpoint.
* **EMA** with ``torch.optim.swa_utils.AveragedModel``.
* **Refusal on divergence**: a non-finite loss stops the run before the optimizer step, keeps the
  last good checkpoint and says what to change.

A *task* supplies the model and the loss: :class:`training.tasks.FinetuneTask` or
:class:`training.tasks.EstimatorTask`.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from comfy_nag.files import atomic_write_bytes

from . import state as ckpt


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/Inf; the run stopped without saving the bad weights."""


@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    learning_rate: float
    out_dir: Path
    seed: int = 0
    accum: int = 1
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0
    mixed_precision: str = "no"
    ema_decay: float = 0.0
    gradient_checkpointing: bool = False
    resume: str = "auto"
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    monitor_every: int = 0


@dataclass
class RunResult:
    """What a finished run produced."""

    path: Path                      # the exported file
    step: int                       # optimizer steps done
    out_dir: Path
    resumed_from: int = 0           # step the run continued from (0: fresh)
    metrics: list = field(default_factory=list)  # the metric lines written by this process


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch: a function of (seed, step, micro-batch, process) only."""
    a, b = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(a) << 32) | int(b))


class DataOrder:
    """Sample indices of global positions: one seeded permutation of the dataset per epoch."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count)
        epoch, offset = pos // self.n, pos % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epoch, offset)])


def lr_lambda(s: LoopSettings):
    def f(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.lr_schedule == "cosine":
            done = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return 1.0
    return f


class _StopFlag:
    """SIGINT/SIGTERM: finish the step, checkpoint, stop (a second signal acts as usual)."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@contextlib.contextmanager
def swapped_in(module: torch.nn.Module, ema: AveragedModel | None):
    """Temporarily put the EMA weights into ``module`` (no-op without EMA)."""
    if ema is None:
        yield
        return
    params = [p for p in module.parameters()]
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, q in zip(params, ema.module.parameters()):
            p.copy_(q)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)


def _append_metrics(path: Path, line: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop metric lines of steps that will be re-run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def train(task, s: LoopSettings, callbacks=(), log=print) -> RunResult:
    """Run (or resume) ``task`` to ``s.steps`` optimizer steps and export its result."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    _reset_accelerate()
    acc = Accelerator(mixed_precision=s.mixed_precision, gradient_accumulation_steps=s.accum,
                      step_scheduler_with_optimizer=False)
    try:
        return _train(task, s, acc, callbacks, log, set_seed)
    finally:
        acc.free_memory()
        _reset_accelerate()


def _train(task, s: LoopSettings, acc, callbacks, log, set_seed) -> RunResult:
    out = Path(s.out_dir)
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    set_seed(s.seed, deterministic=s.deterministic)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for p in ckpt.clean_partial(out):
            log(f"removed an incomplete checkpoint left by an interrupted save: {p.name}")
    acc.wait_for_everyone()

    # where to start
    resume_path = None
    existing = ckpt.list_checkpoints(out)
    if s.resume == "auto":
        resume_path = existing[-1][1] if existing else None
    elif s.resume == "never":
        if existing:
            raise ckpt.ResumeError(f"{out} already holds checkpoints (newest: step {existing[-1][0]}); set "
                                   "run.resume='auto' to continue that run, or choose a new run.out_dir")
    else:
        resume_path = Path(s.resume)
        if not (resume_path / "state.json").is_file():
            raise ckpt.ResumeError(f"run.resume={s.resume!r} is not a checkpoint folder (no state.json)")

    # model, EMA, optimizer
    trainable = task.trainable
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model has no trainable parameters")
    ema = None
    if s.ema_decay > 0:
        ema = AveragedModel(trainable, device=acc.device, multi_avg_fn=get_ema_multi_avg_fn(s.ema_decay))
    if s.gradient_checkpointing:
        n = task.enable_gradient_checkpointing()
        log(f"gradient checkpointing on {n} blocks")
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    module, opt = acc.prepare(task.module, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lr_lambda(s))
    order = DataOrder(task.dataset_size, s.seed)
    fingerprint = {**task.fingerprint(), "task": task.name, "seed": s.seed, "batch_size": s.batch_size,
                   "gradient_accumulation_steps": s.accum, "ema": s.ema_decay > 0}

    start = 0
    if resume_path is not None:
        ck = ckpt.read(resume_path, rank)
        ckpt.check_fingerprint(ck["state"].get("fingerprint", {}), fingerprint, resume_path)
        try:
            trainable.load_state_dict(ck["trainable"])
            if ema is not None:
                n_avg = ck["ema"].pop("__n_averaged")
                ema.module.load_state_dict(ck["ema"])
                ema.n_averaged.copy_(n_avg)
        except (RuntimeError, KeyError, AttributeError) as e:
            raise ckpt.ResumeError(f"checkpoint {resume_path} does not match the model ({e})") from e
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["state"]["scheduler"])
        if acc.scaler is not None and ck["state"].get("scaler"):
            acc.scaler.load_state_dict(ck["state"]["scaler"])
        if ck["rng"] is not None:
            ckpt.set_rng_tensors(ck["rng"])
        ckpt.set_python_rng(ck["state"]["python_rng"])
        start = ck["step"]
        if main:
            _truncate_metrics(out / "metrics.jsonl", start)
            log(f"resumed from {resume_path} at step {start}")
    if main:
        atomic_write_bytes(out / "run.json", json.dumps({"fingerprint": fingerprint, "config": task.config_dict(),
                                                         "world_size": world}, indent=1).encode())

    def save(step):
        st = {"fingerprint": fingerprint, "scheduler": sched.state_dict(),
              "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
        ema_sd = None
        if ema is not None:
            ema_sd = {**ema.module.state_dict(), "__n_averaged": ema.n_averaged.detach().clone()}
        return ckpt.write(out, step, trainable=trainable.state_dict(), ema=ema_sd, optimizer=opt.state_dict(),
                          state=st, rank=rank, is_main=main, barrier=acc.wait_for_everyone, keep=s.keep_checkpoints)

    def ema_weights():
        return swapped_in(trainable, ema)

    metrics = []
    last_saved = start
    window: dict[str, list] = {}
    t_window, steps_window = time.perf_counter(), 0
    per_step = s.batch_size * s.accum * world
    bar = tqdm(total=s.steps, initial=start, desc=task.name, disable=not main, dynamic_ncols=True, unit="step")
    module.train()
    with _StopFlag() as stop:
        for step in range(start, s.steps):
            step_loss = 0.0
            for micro in range(s.accum):
                with acc.accumulate(module):
                    first = ((step * s.accum + micro) * world + rank) * s.batch_size
                    idx = order.indices(first, s.batch_size)
                    with acc.autocast():
                        loss, stats = task.loss(module, idx, step_generator(s.seed, step, micro, rank), acc.device)
                    ok = acc.gather(torch.isfinite(loss.detach()).float()[None]).min() > 0
                    if not ok:
                        raise TrainingDiverged(_diverged_message(step, loss, last_saved, out, s))
                    acc.backward(loss)
                    if acc.sync_gradients and s.grad_clip > 0:
                        acc.clip_grad_norm_(params, s.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                step_loss += float(loss.detach()) / s.accum
                for k, (total, count) in stats.items():
                    w = window.setdefault(k, [0.0, 0.0])
                    w[0] += float(total)
                    w[1] += float(count)
            sched.step()
            if ema is not None:
                ema.update_parameters(trainable)
            done = step + 1
            steps_window += 1
            bar.update(1)
            for cb in callbacks:
                cb({"step": done, "loss": step_loss, "lr": sched.get_last_lr()[0]})
            if done % s.log_every == 0 or done == s.steps:
                dt = time.perf_counter() - t_window
                line = {"step": done, "lr": sched.get_last_lr()[0], "samples_per_s": steps_window * per_step / max(dt, 1e-9)}
                line.update({k: v[0] / v[1] for k, v in window.items() if v[1] > 0})
                bar.set_postfix({k: f"{line[k]:.4g}" for k in ("loss", "loss_dropped", "samples_per_s") if k in line})
                if main:
                    _append_metrics(out / "metrics.jsonl", line)
                metrics.append(line)
                window, t_window, steps_window = {}, time.perf_counter(), 0
            checkpoint_due = (s.checkpoint_every and done % s.checkpoint_every == 0) or stop.signal is not None
            if checkpoint_due and done < s.steps:
                save(done)
                last_saved = done
            monitor_due = (done % s.monitor_every == 0) if s.monitor_every else checkpoint_due
            if main and done < s.steps:
                extra = task.periodic(done, out, monitor_due=monitor_due, final=False, ema_weights=ema_weights)
                if extra:
                    _append_metrics(out / "metrics.jsonl", {"step": done, "event": "monitor", **extra})
                    metrics.append({"step": done, "event": "monitor", **extra})
                    _log_monitor(bar, done, extra)
                    module.train()
            if stop.signal is not None and done < s.steps:
                bar.close()
                log(f"stopped by signal {stop.signal} after step {done}; checkpoint saved, resume with the same command")
                raise KeyboardInterrupt
    bar.close()

    final = s.steps
    if last_saved != final:
        save(final)
    path = None
    if main:
        extra = task.periodic(final, out, monitor_due=True, final=True, ema_weights=ema_weights)
        if extra:
            _append_metrics(out / "metrics.jsonl", {"step": final, "event": "monitor", **extra})
            metrics.append({"step": final, "event": "monitor", **extra})
            _log_monitor(bar, final, extra)
        if ema is not None and task.export_ema:
            with torch.no_grad():
                for p, q in zip(trainable.parameters(), ema.module.parameters()):
                    p.copy_(q)
        path = task.export(out, final)
    acc.wait_for_everyone()
    return RunResult(path=path, step=final, out_dir=out, resumed_from=start, metrics=metrics)


_MONITOR_LABELS = (("probe_loss_cond", "loss cond"), ("probe_loss_null", "loss null-t"), ("branch_gap", "branch gap"),
                   ("noise_shift_nag0", "late shift w=0"), ("noise_shift_nag", "late shift NAG"),
                   ("probe_logsnr_mae", "log-SNR MAE"), ("samples", "samples"))


def _log_monitor(bar, step: int, extra: dict) -> None:
    """One readable line per monitor event (the numbers also go to metrics.jsonl)."""
    parts = [f"{label} {extra[k]:.4g}" if isinstance(extra[k], float) else f"{label} {extra[k]}"
             for k, label in _MONITOR_LABELS if k in extra]
    if parts:
        bar.write(f"[step {step}] " + ", ".join(parts))


def _diverged_message(step, loss, last_saved, out, s: LoopSettings) -> str:
    where = (f"the last good checkpoint is {ckpt.checkpoint_root(out) / f'step_{last_saved:08d}'} (step {last_saved}); "
             "resuming continues from there" if last_saved else "no checkpoint was written yet")
    tips = [f"lower train.learning_rate (now {s.learning_rate:g})"]
    if s.grad_clip <= 0:
        tips.append("set train.grad_clip (e.g. 1.0)")
    if s.mixed_precision == "fp16":
        tips.append("use train.mixed_precision='bf16' or 'no' instead of 'fp16'")
    tips.append("check the cache for extreme values (`python -m training inspect`)")
    return (f"training stopped at step {step + 1}: the loss became {float(loss.detach())}. Nothing was saved after "
            f"step {last_saved}; {where}. To fix: {'; '.join(tips)}.")
