"""Resumable training checkpoints: safetensors + JSON, written atomically, never pickled.

Layout of ``<out_dir>/checkpoints/step_00000500/``::

    trainable.safetensors   the trained weights (full network, LoRA layers or estimator), fp32
    ema.safetensors         their EMA (when on)
    optimizer.safetensors   every tensor of the optimizer state, as ``state.<param index>.<name>``
    optimizer.json          the rest of the optimizer state (param groups, non-tensor values)
    rng_rank<r>.safetensors torch CPU (and CUDA) generator states of process r
    state.json              step, LR-scheduler and grad-scaler state, Python/NumPy RNG, fingerprint

A checkpoint is written into ``step_00000500.partial/`` and renamed into place only when
complete (a directory rename is atomic), then ``latest.json`` is replaced atomically.  A process
killed at any moment therefore leaves the previous checkpoint intact; leftovers of an
interrupted write are removed on the next start.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from comfy_nag.files import WeightFileError, atomic_write_bytes, load_weights, save_weights

STEP_DIR = re.compile(r"^step_(\d{8})$")


class ResumeError(ValueError):
    """A checkpoint cannot be resumed (damaged, or the configuration changed)."""


def checkpoint_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir) -> list[tuple[int, Path]]:
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return sorted(found)


def clean_partial(out_dir) -> list[Path]:
    """Remove half-written checkpoint folders left by a killed process."""
    root = checkpoint_root(out_dir)
    removed = [p for p in root.glob("step_*.partial")] if root.is_dir() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


# --- optimizer state <-> tensors + JSON ---------------------------------------------------------

def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": info["param_groups"]}


# --- RNG -------------------------------------------------------------------------------------------

def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def set_rng_tensors(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["torch_cpu"])
    cuda = [t[k] for k in sorted(t) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def python_rng() -> dict:
    v, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [v, list(state), gauss], "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_python_rng(d: dict) -> None:
    v, state, gauss = d["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, *rest = d["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


# --- save / load ---------------------------------------------------------------------------------

def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


@dataclass
class Contents:
    """What the main process saves in a checkpoint: state dicts of the trained weights, their EMA (None:
    no EMA) and the optimizer, and the loop's JSON-able state (fingerprint, scheduler, scaler)."""

    trainable: dict
    ema: dict | None
    optimizer: dict
    state: dict


def write(out_dir, step: int, contents: Contents, *, rank: int = 0, is_main: bool = True, barrier=lambda: None,
          keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically (every process calls this; only the main one writes ``contents``,
    each writes its own RNG state); ``barrier`` waits for every process, ``keep`` checkpoints stay."""
    root = checkpoint_root(out_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.partial"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    save_weights(tmp / f"rng_rank{rank}.safetensors", rng_tensors())
    if is_main:
        save_weights(tmp / "trainable.safetensors", contents.trainable)
        if contents.ema is not None:
            save_weights(tmp / "ema.safetensors", contents.ema)
        opt_tensors, opt_info = flatten_optimizer(contents.optimizer)
        save_weights(tmp / "optimizer.safetensors", opt_tensors)
        atomic_write_bytes(tmp / "optimizer.json", _json_bytes(opt_info))
        atomic_write_bytes(tmp / "state.json", _json_bytes({**contents.state, "step": step, "python_rng": python_rng(),
                                                            "saved_at": time.time()}))
    barrier()
    if is_main:
        if final.exists():  # the same step saved again (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_bytes(root / "latest.json", _json_bytes({"step": step, "path": final.name}))
        for _, old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: Path, rank: int = 0) -> dict:
    """Load a checkpoint folder: ``{"step", "state", "trainable", "ema", "optimizer", "rng"}``."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        trainable, _ = load_weights(path / "trainable.safetensors")
        ema = load_weights(path / "ema.safetensors")[0] if (path / "ema.safetensors").exists() else None
        opt = unflatten_optimizer(load_weights(path / "optimizer.safetensors")[0],
                                  json.loads((path / "optimizer.json").read_text()))
        rng_file = path / f"rng_rank{rank}.safetensors"
        rng = load_weights(rng_file)[0] if rng_file.exists() else None
    except (OSError, json.JSONDecodeError, WeightFileError, KeyError) as e:
        raise ResumeError(f"checkpoint {path} cannot be read ({e}); delete it to resume from an older one, or set "
                          "run.resume='never' with a new run.out_dir") from e
    return {"step": int(state["step"]), "state": state, "trainable": trainable, "ema": ema, "optimizer": opt, "rng": rng}


def check_fingerprint(saved: dict, current: dict, where: Path) -> None:
    """Refuse to resume when a setting that shapes the run changed since the checkpoint."""
    if saved.get("task") and current.get("task") and saved["task"] != current["task"]:
        an = lambda task: f"{'an' if task[:1] in 'aeiou' else 'a'} `{task}` run"  # noqa: E731
        raise ResumeError(f"cannot resume from {where}: it is a checkpoint of {an(saved['task'])}, not of "
                          f"{an(current['task'])}; start the `{current['task']}` run in a folder of its own "
                          "(another run.out_dir, --out) with run.resume='auto'")
    changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if changed:
        k = changed[0]
        raise ResumeError(f"cannot resume from {where}: {k} was {saved.get(k)!r} there but is {current.get(k)!r} now. "
                          f"Restore it, or start a new run in another run.out_dir (changed: {', '.join(changed)}).")
