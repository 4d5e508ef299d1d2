"""One script for a lent GPU: guidance cost in ComfyUI at real sizes, `bench cost`, and the trainer.

    COMFYUI_PATH=~/comfy/ComfyUI <python with ComfyUI + this project's deps> benchmarks/gpu_check.py --out gpu_check.json
    COMFYUI_PATH=~/comfy/ComfyUI ~/comfy/venv/bin/python benchmarks/gpu_check.py --toy --out /tmp/gpu_check_toy.json

Three parts, each written into one JSON results file (``--out``) as soon as it finishes:

1. **guidance**: seconds per sampler step inside ComfyUI (``comfy.sample.sample``) of plain CFG and the
   nodes' NAG-CF (batched/unbatched) and NAG-CG, as ratios to plain CFG
   (``benchmarks/comfyui_step_cost.measure``), on random-weight models in ComfyUI's real formats and
   sizes: SD1.5 (64² latents), SDXL (128²), Flux-dev (128², bf16).
2. **bench_cost**: ``python -m studies bench cost`` (per-step time and peak memory of the guidance
   math on the reference models) on the same device.
3. **trainer**: ``python -m training finetune`` (LoRA rank 32, bf16, gradient checkpointing,
   noise-condition dropout) on a random-weight SDXL diffusion-model file with 1024² images'
   latents (128²): median step time, images/s and peak memory.

``--toy`` (the default without CUDA) runs the same code on tiny models (SD1.5-detectable UNet, an
SDXL-shaped and a Flux-shaped model with small widths, 8² latents) to prove the script on a CPU; its
numbers say nothing about real sizes.  Weights are random (N(0, 0.02)); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
        "use_temporal_resblock": False}  # ComfyUI's model_detection SD15 config
SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
        "use_temporal_resblock": False}  # ComfyUI's model_detection SDXL config
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
            "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True}
# toy stand-ins: the SD1.5 one is still detected as SD15 from its file (the trainer loads files)
SD15_TOY = {**SD15, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
            "transformer_depth_middle": -2}
SDXL_TOY = {**SDXL, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [0, 1],
            "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1, "context_dim": 64,
            "num_head_channels": 16}
FLUX_TOY = {**FLUX_DEV, "vec_in_dim": 32, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
            "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12]}


def build(kind: str, config: dict, dtype, device):
    """A ComfyUI BaseModel of ``kind`` (SD15/SDXL/Flux) from ``config``, weights N(0, 0.02) on ``device``."""
    import torch
    import comfy.supported_models as sm

    mc = getattr(sm, kind)(dict(config))
    mc.set_inference_dtype(dtype, None)
    m = mc.get_model({}, "")
    net = m.diffusion_model.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0, 0.02, generator=g) if not name.endswith("bias") else p.zero_()
    return m


def guidance_cost(toy: bool, device, steps: int, repeats: int) -> dict:
    import torch
    import comfy_support as cs
    from comfyui_step_cost import measure

    cs.load_pack()
    archs = [("sd15", "SD15", SD15_TOY if toy else SD15, 8 if toy else 64, torch.float32 if toy else torch.float16),
             ("sdxl", "SDXL", SDXL_TOY if toy else SDXL, 8 if toy else 128, torch.float32 if toy else torch.float16),
             ("flux", "Flux", FLUX_TOY if toy else FLUX_DEV, 8 if toy else 128, torch.float32 if toy else torch.bfloat16)]
    out = {}
    for name, kind, config, size, dtype in archs:
        t0 = time.perf_counter()
        m = build(kind, config, dtype, device)
        ch = m.latent_format.latent_channels
        result = measure(cs.patcher(m), torch.zeros(1, ch, size, size), steps, repeats)
        params = sum(p.numel() for p in m.diffusion_model.parameters())
        out[name] = {"parameters": params, "latent": [1, ch, size, size], "dtype": str(dtype), **result,
                     "seconds": round(time.perf_counter() - t0, 1)}
        print(f"guidance {name}: {params / 1e6:.1f}M params, " + ", ".join(
            f"{k} x{v['ratio']:.2f}" for k, v in result.items() if isinstance(v, dict)), flush=True)
        del m
        import comfy.model_management as mm
        mm.unload_all_models()
        mm.soft_empty_cache()
    return out


def bench_cost(toy: bool, work: Path) -> dict:
    cmd = [sys.executable, "-m", "studies", "bench", "cost", "--out", str(work / "cost"), "--threads", "1"]
    if toy:
        cmd.append("--quick")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-2000:], "command": " ".join(cmd[1:])}
    found = sorted((work / "cost").rglob("*.json"))
    result = json.loads(found[0].read_text()) if found else {"stdout": r.stdout[-2000:]}
    print(f"bench cost: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"command": " ".join(cmd[1:]), "seconds": round(time.perf_counter() - t0, 1), "result": result}


def trainer(toy: bool, device, work: Path, steps: int) -> dict:
    import torch
    import comfy.utils
    from training import api
    from training.data import CacheInfo, write_cache

    kind, config, fam = ("SD15", SD15_TOY, "sd1") if toy else ("SDXL", SDXL, "sdxl")
    dtype = torch.float32 if toy else torch.float16
    m = build(kind, config, dtype, "cpu")
    base = work / f"{fam}_random.safetensors"
    comfy.utils.save_torch_file(m.diffusion_model.state_dict(), str(base))
    del m
    size, n = (8, 8) if toy else (128, 32)
    ctx, pooled = config["context_dim"], (config["adm_in_channels"] - 6 * 256 if config.get("adm_in_channels") else 0)
    g = torch.Generator().manual_seed(0)
    cache = work / "cache.safetensors"
    write_cache(cache, torch.randn(n, 4, size, size, generator=g).half(),
                CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a", "b"], empty_cond=0, vae_family=fam),
                cond_index=torch.arange(n) % 2 + 1, cross_attn=torch.randn(3 * 77, ctx, generator=g).half(),
                cond_offsets=torch.arange(4) * 77,
                pooled_output=torch.randn(3, pooled, generator=g).half() if pooled else None)
    rank, batch = (4, 1) if toy else (32, 1)
    opts = {"run.out_dir": str(work / "run"), "data.cache": str(cache), "model.family": fam, "model.base": str(base),
            "train.mode": "lora", "train.steps": steps, "train.batch_size": batch, "lora.rank": rank,
            "lora.alpha": float(rank), "lora.targets": ["transformer_blocks"], "train.mixed_precision": "bf16",
            "train.gradient_checkpointing": True, "train.ema_decay": 0.0, "run.log_every": 1,
            "run.checkpoint_every": 0, "monitor.eval_size": 2, "train.caption_dropout_rate": 0.1}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = api.finetune(None, opts, log=lambda *a: None)
    wall = time.perf_counter() - t0
    rates = [m["samples_per_s"] for m in res.metrics if "samples_per_s" in m][1:]  # first step: warm-up
    rate = statistics.median(rates) if rates else float("nan")
    out = {"model": f"{kind} diffusion model, random weights ({'toy' if toy else 'real'} config)",
           "latent": [batch, 4, size, size], "lora_rank": rank, "mixed_precision": "bf16",
           "gradient_checkpointing": True, "steps": steps, "wall_s": round(wall, 1),
           "images_per_s": rate, "step_s": batch / rate if rate else None}
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"trainer: {out['step_s']:.3f} s/step, {rate:.2f} images/s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json", help="results file (JSON)")
    ap.add_argument("--toy", action="store_true", help="tiny models (default when there is no CUDA device)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps per timing (default 8, toy 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timings per configuration (default 3, toy 1)")
    ap.add_argument("--train-steps", type=int, default=None, help="trainer steps (default 30, toy 3)")
    ap.add_argument("--skip", action="append", default=[], choices=("guidance", "bench_cost", "trainer"))
    args = ap.parse_args()

    import torch
    from training import comfyui

    comfyui.import_comfy()
    import comfy.model_management as mm

    toy = args.toy or not torch.cuda.is_available()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    device = mm.get_torch_device()
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "toy": toy, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out = Path(args.out)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "guidance" not in args.skip:
            steps, repeats = args.steps or (2 if toy else 8), args.repeats or (1 if toy else 3)
            results["guidance"] = guidance_cost(toy, device, steps, repeats)
            save()
        if "bench_cost" not in args.skip:
            results["bench_cost"] = bench_cost(toy, Path(tmp))
            save()
        if "trainer" not in args.skip:
            results["trainer"] = trainer(toy, device, Path(tmp), args.train_steps or (3 if toy else 30))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
