"""The training loop shared by `finetune` and `estimator` (DiT/SiT ``train.py`` style, on accelerate).

accelerate handles devices, multi-GPU (DDP), mixed precision and gradient accumulation; this
file runs (or resumes) a run to its end and adds what makes it reproducible and resumable:

* **Seeded, resumable randomness** (``seeding.py``): a run is a pure function of its seed, so a
  resumed run continues exactly as if it had never stopped (bit-identical on CPU), and splitting a
  step's micro-batches across processes changes nothing but float summation order.
* **Checkpoints** of weights, EMA, optimizer, scheduler, scaler and RNG (``state.py``), every
  ``run.checkpoint_every`` steps and at the end; SIGINT/SIGTERM finish the current step, save,
  and stop.  A SIGKILL loses only the steps since the last checkpoint.
* **EMA** of the trainable parameters only (``ema.py``; a LoRA's EMA is the size of the LoRA).
* **Refusal on divergence**: a non-finite loss stops the run before the optimizer step, keeps the
  last good checkpoint and says what to change.
* **Metrics** in ``<out_dir>/metrics.jsonl`` (``metrics.py``).

A *task* supplies the model and the loss: :class:`training.tasks.FinetuneTask` or
:class:`training.tasks.EstimatorTask`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from comfy_nag.files import atomic_write_bytes

from . import metrics
from . import state as ckpt
from .ema import EMA
from .seeding import DataOrder, step_generator



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


def train(task, s: LoopSettings, callbacks=(), log=print) -> RunResult:
    """Run (or resume) ``task`` to ``s.steps`` optimizer steps and export its result."""
    from accelerate import Accelerator

    _reset_accelerate()
    # several processes without a GPU (torchrun / accelerate launch on CPU): accelerate's CPU mode, gloo
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(cpu=multi_cpu, mixed_precision=s.mixed_precision, gradient_accumulation_steps=s.accum,
                      step_scheduler_with_optimizer=False)
    try:
        run = Run(task, s, acc, log)
        run.setup(run.resume_point())
        run.fit(callbacks)
        return run.finish()
    finally:
        acc.free_memory()
        _reset_accelerate()


class Run:
    """One training run, in the steps DiT's ``train.py`` goes through: resume point, setup (model, EMA,
    optimizer, restored state), the optimizer step, logging, periodic work (checkpoints, monitor,
    signals) and the export.  Every process runs every step; only the main process writes files
    other than its own RNG state."""

    def __init__(self, task, s: LoopSettings, acc, log=print):
        from accelerate.utils import set_seed
        self.task, self.s, self.acc, self.log = task, s, acc, log
        self.out = Path(s.out_dir)
        self.main, self.rank, self.world = acc.is_main_process, acc.process_index, acc.num_processes
        if s.deterministic:  # cuBLAS needs a fixed workspace for deterministic matmuls (CUDA docs)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_seed(s.seed, deterministic=s.deterministic)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for p in ckpt.clean_partial(self.out):
                log(f"removed an incomplete checkpoint left by an interrupted save: {p.name}")
        acc.wait_for_everyone()
        self.metrics: list = []
        self.start = self.last_saved = 0

    # --- resume point ------------------------------------------------------------------------

    def resume_point(self) -> Path | None:
        """The checkpoint folder to continue from (``run.resume``), or None for a fresh run."""
        s, out = self.s, self.out
        existing = ckpt.list_checkpoints(out)
        if s.resume == "auto":
            return existing[-1][1] if existing else None
        if s.resume == "never":
            if existing:
                raise ckpt.ResumeError(f"{out} already holds checkpoints (newest: step {existing[-1][0]}); set "
                                       "run.resume='auto' to continue that run, or choose a new run.out_dir")
            return None
        path = Path(s.resume)
        if not (path / "state.json").is_file():
            raise ckpt.ResumeError(f"run.resume={s.resume!r} is not a checkpoint folder (no state.json)")
        return path

    # --- setup ---------------------------------------------------------------------------------

    def setup(self, resume_path: Path | None) -> None:
        """Model, EMA, optimizer, scheduler, data order; then the saved state when resuming."""
        task, s, acc = self.task, self.s, self.acc
        self.trainable = task.trainable
        self.named = [(n, p) for n, p in self.trainable.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("nothing to train: the model has no trainable parameters")
        self.params = [p for _, p in self.named]
        self.ema = EMA(self.named, s.ema_decay) if s.ema_decay > 0 else None
        if s.gradient_checkpointing:
            self.log(f"gradient checkpointing on {task.enable_gradient_checkpointing()} blocks")
        opt = torch.optim.AdamW(self.params, lr=s.learning_rate, weight_decay=s.weight_decay)
        self.module, self.opt = acc.prepare(task.module, opt)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt.optimizer, lr_lambda(s))
        self.order = DataOrder(task.dataset_size, s.seed)
        # micro-batch size and micro-batches per step (processes x accumulation) shape the run; how the
        # micro-batches are split between processes and accumulation does not (see step_generator)
        self.fingerprint = {**task.fingerprint(), "task": task.name, "seed": s.seed, "batch_size": s.batch_size,
                            "micro_batches_per_step": s.accum * self.world, "ema": s.ema_decay > 0}
        if resume_path is not None:
            self.restore(resume_path)
        if self.main:
            atomic_write_bytes(self.out / "run.json", json.dumps({"fingerprint": self.fingerprint,
                                                                  "config": task.config_dict(),
                                                                  "world_size": self.world}, indent=1).encode())

    def restore(self, path: Path) -> None:
        ck = ckpt.read(path, self.rank)
        ckpt.check_fingerprint(ck["state"].get("fingerprint", {}), self.fingerprint, path)
        try:
            self.trainable.load_state_dict(ck["trainable"])
            if self.ema is not None:
                self.ema.load_state_dict(ck["ema"])
        except (RuntimeError, KeyError, AttributeError, TypeError) as e:
            raise ckpt.ResumeError(f"checkpoint {path} does not match the model ({e})") from e
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["state"]["scheduler"])
        if self.acc.scaler is not None and ck["state"].get("scaler"):
            self.acc.scaler.load_state_dict(ck["state"]["scaler"])
        if ck["rng"] is not None:
            ckpt.set_rng_tensors(ck["rng"])
        ckpt.set_python_rng(ck["state"]["python_rng"])
        self.start = self.last_saved = ck["step"]
        if self.main:
            metrics.truncate(self.out / "metrics.jsonl", self.start)
            self.log(f"resumed from {path} at step {self.start}")

    # --- the loop --------------------------------------------------------------------------------

    def fit(self, callbacks=()) -> None:
        s = self.s
        self.window = metrics.Window()
        self.bar = tqdm(total=s.steps, initial=self.start, desc=self.task.name, disable=not self.main,
                        dynamic_ncols=True, unit="step")
        self.module.train()
        with _StopFlag() as stop:
            for step in range(self.start, s.steps):
                loss = self.step(step)
                done = step + 1
                self.bar.update(1)
                for cb in callbacks:
                    cb({"step": done, "loss": loss, "lr": self.sched.get_last_lr()[0]})
                if done % s.log_every == 0 or done == s.steps:
                    self.log_window(done)
                if done < s.steps:
                    self.periodic(done, stop.signal)
        self.bar.close()

    def step(self, step: int) -> float:
        """One optimizer step over ``s.accum`` micro-batches; returns its mean loss."""
        s, acc, module = self.s, self.acc, self.module
        step_loss = 0.0
        for micro in range(s.accum):
            with acc.accumulate(module):
                index = micro * self.world + self.rank  # global micro-batch index within the step
                idx = self.order.indices((step * s.accum * self.world + index) * s.batch_size, s.batch_size)
                with acc.autocast():
                    loss, stats = self.task.loss(module, idx, step_generator(s.seed, step, index), acc.device)
                if not acc.gather(torch.isfinite(loss.detach()).float()[None]).min() > 0:
                    raise TrainingDiverged(_diverged_message(step, loss, self.last_saved, self.out, s))
                acc.backward(loss)
                if acc.sync_gradients and s.grad_clip > 0:
                    acc.clip_grad_norm_(self.params, s.grad_clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            step_loss += float(loss.detach()) / s.accum
            self.window.add(stats)
        self.sched.step()
        if self.ema is not None:
            self.ema.update()
        self.window.steps += 1
        return step_loss

    def log_window(self, done: int) -> None:
        """Mean metrics since the last log line -> progress bar and ``metrics.jsonl``."""
        line = self.window.line(done, self.sched.get_last_lr()[0], self.s.batch_size * self.s.accum * self.world)
        self.bar.set_postfix({k: f"{line[k]:.4g}" for k in ("loss", "loss_dropped", "samples_per_s") if k in line})
        self.record(line)
        self.window = metrics.Window()

    def record(self, line: dict) -> None:
        if self.main:
            metrics.append(self.out / "metrics.jsonl", line)
        self.metrics.append(line)

    def periodic(self, done: int, signal_received) -> None:
        """Checkpoint, monitor and sample grids when due; stop after a checkpoint on SIGINT/SIGTERM."""
        s = self.s
        checkpoint_due = bool(s.checkpoint_every and done % s.checkpoint_every == 0) or signal_received is not None
        if checkpoint_due:
            self.save(done)
        monitor_due = (done % s.monitor_every == 0) if s.monitor_every else checkpoint_due
        if self.main:
            self.monitor(done, monitor_due, final=False)
            self.module.train()
        if signal_received is not None:
            self.bar.close()
            self.log(f"stopped by signal {signal_received} after step {done}; checkpoint saved, resume with the "
                     "same command")
            raise KeyboardInterrupt

    def monitor(self, step: int, due: bool, final: bool) -> None:
        extra = self.task.periodic(step, self.out, monitor_due=due, final=final, ema_weights=self.ema_weights)
        if extra:
            self.record({"step": step, "event": "monitor", **extra})
            metrics.log_monitor(self.bar, step, extra)

    def ema_weights(self):
        """Context manager: the EMA weights swapped into the model (no-op without EMA)."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def save(self, step: int) -> None:
        acc = self.acc
        st = {"fingerprint": self.fingerprint, "scheduler": self.sched.state_dict(),
              "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
        contents = ckpt.Contents(trainable=self.trainable.state_dict(),
                                 ema=self.ema.state_dict() if self.ema is not None else None,
                                 optimizer=self.opt.state_dict(), state=st)
        ckpt.write(self.out, step, contents, rank=self.rank, is_main=self.main, barrier=acc.wait_for_everyone,
                   keep=self.s.keep_checkpoints)
        self.last_saved = step

    # --- export ----------------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """Final checkpoint, final monitor/grid, and the exported file (EMA weights when configured)."""
        final = self.s.steps
        if self.last_saved != final:
            self.save(final)
        path = None
        if self.main:
            self.monitor(final, True, final=True)
            if self.ema is not None and self.task.export_ema:
                self.ema.copy_to_params()
            path = self.task.export(self.out, final)
        self.acc.wait_for_everyone()
        return RunResult(path=path, step=final, out_dir=self.out, resumed_from=self.start, metrics=self.metrics)


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
