"""Part 2 of ``benchmarks/gpu_check.py``: the trainer at SDXL size.

``training.api.finetune`` as the CLI runs it (LoRA rank 32 on the transformer blocks, bf16 autocast,
gradient checkpointing, noise-condition dropout, batch 1) on a random-weight SDXL diffusion-model file
(ComfyUI's SDXL config, fp16 file; the trainer loads it through ComfyUI in fp32) with a latent cache of
1024² images' latents (128²) and text conditioning of SDXL's widths.  Reported: seconds per optimizer step
(median over the steps after the first two, timed by a callback), images/s, peak GPU memory (kohya's
reference point for SDXL LoRA training at 1024²: fits in 24 GB), and the set-up and export times.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

from gpu_common import PartReport, comfy_env, time_left
from gpu_guidance import SD15_TOY, SDXL, build

REAL = {"family": "sdxl", "kind": "SDXL", "latent_side": 128, "rows": 16, "rank": 32, "batch": 1, "steps": 30,
        "warmup_steps": 2}
TOY = {"family": "sd1", "kind": "SD15", "latent_side": 8, "rows": 8, "rank": 4, "batch": 1, "steps": 5,
       "warmup_steps": 2}


class OutOfTime(Exception):
    """Raised by the step callback when the part's budget is spent; the steps timed so far still count."""


def settings(toy: bool) -> dict:
    s = TOY if toy else REAL
    return {**s, "mixed_precision": "bf16", "gradient_checkpointing": True, "lora_targets": ["transformer_blocks"],
            "noise_condition_dropout": "the trainer's default", "caption_dropout_rate": 0.1,
            "base_file_dtype": "float32" if toy else "float16", "ema": False}


def base_file(toy: bool, device, work: Path) -> Path:
    """A random-weight diffusion-model file of the configured family (made on ``device``, saved from RAM)."""
    import torch
    import comfy.utils

    s = TOY if toy else REAL
    m = build(s["kind"], SD15_TOY if toy else SDXL, torch.float32 if toy else torch.float16, device)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in m.diffusion_model.state_dict().items()}
    del m
    path = work / f"{s['family']}_random.safetensors"
    comfy.utils.save_torch_file(sd, str(path))
    return path


def cache_file(toy: bool, work: Path) -> Path:
    """A latent cache of random latents with text conditioning of the family's widths."""
    import torch
    from training.latent_cache import CacheInfo, write_cache

    s = TOY if toy else REAL
    config = SD15_TOY if toy else SDXL
    ctx = config["context_dim"]
    pooled = config["adm_in_channels"] - 6 * 256 if config.get("adm_in_channels") else 0
    g = torch.Generator().manual_seed(0)
    n, side = s["rows"], s["latent_side"]
    path = work / "cache.safetensors"
    write_cache(path, torch.randn(n, 4, side, side, generator=g).half(),
                CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a", "b"], empty_cond=0, vae_family=s["family"]),
                cond_index=torch.arange(n) % 2 + 1, cross_attn=torch.randn(3 * 77, ctx, generator=g).half(),
                cond_offsets=torch.arange(4) * 77,
                pooled_output=torch.randn(3, pooled, generator=g).half() if pooled else None)
    return path


def run(report: PartReport, toy: bool, deadline: float | None) -> None:
    import torch

    report.update(**comfy_env("trainer"))  # first: ComfyUI is importable only after it
    import comfy.model_management as mm

    device = mm.get_torch_device()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        base, cache = base_file(toy, device, work), cache_file(toy, work)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        made = time.perf_counter() - t0
        report.update(files_s=round(made, 1))
        out = finetune(toy, work, base, cache, deadline)
    out["files_s"] = round(made, 1)
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        out["fits_24_gb"] = out["peak_gpu_reserved_gib"] * 2**30 <= 24e9
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report.update(result=out, problems=[out["stopped"]] if out["stopped"] else [], complete=True)
    step_s = out.get("step_s")
    print(f"trainer: {step_s:.3f} s/step, {out['images_per_s']:.2f} images/s" if step_s else
          f"trainer: no step timed ({out.get('stopped', '')})", flush=True)


def finetune(toy: bool, work: Path, base: Path, cache: Path, deadline: float | None) -> dict:
    from training import api

    s = TOY if toy else REAL
    opts = {"run.out_dir": str(work / "run"), "data.cache": str(cache), "model.family": s["family"],
            "model.base": str(base), "train.mode": "lora", "train.steps": s["steps"], "train.batch_size": s["batch"],
            "lora.rank": s["rank"], "lora.alpha": float(s["rank"]), "lora.targets": ["transformer_blocks"],
            "train.mixed_precision": "bf16", "train.gradient_checkpointing": True, "train.ema_decay": 0.0,
            "run.log_every": 1, "run.checkpoint_every": 0, "monitor.eval_size": 2, "train.caption_dropout_rate": 0.1}
    stamps: list[float] = []

    def on_step(info: dict) -> None:
        stamps.append(time.perf_counter())  # the loop has read the loss (a sync), so the step is done
        if time_left(deadline) < 15:
            raise OutOfTime(f"stopped after step {info['step']}: the part's budget is spent")

    t0 = time.perf_counter()
    stopped = None
    try:
        api.finetune(None, opts, callbacks=[on_step], log=lambda *a: None)
    except OutOfTime as e:
        stopped = str(e)
    wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps, stamps[1:])][max(s["warmup_steps"] - 1, 0):]
    step_s = statistics.median(steps) if steps else None
    return {"model": f"{s['kind']} diffusion model, random weights ({'toy' if toy else 'real'} config)",
            "latent": [s["batch"], 4, s["latent_side"], s["latent_side"]], "lora_rank": s["rank"],
            "steps_run": len(stamps), "steps_timed": len(steps), "step_s": step_s,
            "step_s_each": steps, "images_per_s": s["batch"] / step_s if step_s else None,
            "setup_and_first_step_s": round(stamps[0] - t0, 1) if stamps else None,
            "export_s": round(t0 + wall - stamps[-1], 1) if stamps and not stopped else None,
            "wall_s": round(wall, 1), "stopped": stopped}
