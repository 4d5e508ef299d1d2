"""Part 1 of ``benchmarks/gpu_check.py``: seconds per sampler step inside ComfyUI at real sizes.

Random-weight models in ComfyUI's own classes and formats (nothing is downloaded): SD1.5 (512², fp16),
SDXL (1024², fp16) and Flux-dev (1024², bf16).  Per model, interleaved round-robin in one process (so drift
hits every configuration alike): plain CFG, NAG-CF with the learned null branch batched and unbatched, NAG-CG,
and NAG-CF with the null branch from a noise-level estimator at K = 1 and 3 levels
(``benchmarks/comfyui_step_cost.configurations``), all at cfg 4 over the whole sampling (euler, simple).
Reported: median seconds per step, the median of the per-round ratios to plain CFG, and peak GPU memory per
configuration.  Each model's numbers are written as soon as it finishes.
"""
from __future__ import annotations

import gc
import statistics
import time

from gpu_common import PartReport, comfy_env, error_fields, time_left

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

# name: ComfyUI config class, real config, toy config, real latent side, real dtype, text tokens (real)
ARCHS = {"sd15": ("SD15", SD15, SD15_TOY, 64, "float16", 77),
         "sdxl": ("SDXL", SDXL, SDXL_TOY, 128, "float16", 77),
         "flux": ("Flux", FLUX_DEV, FLUX_TOY, 128, "bfloat16", 512)}
# sampler steps per timed run and timed rounds (each round runs every configuration once, after one warm-up
# round); rounds are cut to the model's share of the part's budget.  est_s: the H200 estimate of the model's
# whole measurement (build + warm-up + rounds), which also sets its share of the budget.
REAL = {"sd15": {"steps": 8, "rounds": 5, "est_s": 15}, "sdxl": {"steps": 6, "rounds": 3, "est_s": 35},
        "flux": {"steps": 4, "rounds": 2, "est_s": 80}}
TOY = {name: {"steps": 2, "rounds": 2, "est_s": 8} for name in ARCHS}
CFG = 4.0


def settings(toy: bool) -> dict:
    per = TOY if toy else REAL
    return {"cfg": CFG, "sampler": "euler", "scheduler": "simple", "scale": "NAG-CF 1.0, NAG-CG 0.5, window 0-100 %",
            "estimator": "random weights, width 32 depth 3" if toy else "random weights, width 64 depth 3, 32 bins "
                         "(the trainer's defaults)",
            "models": {n: {"latent_side": 8 if toy else ARCHS[n][3], "dtype": "float32" if toy else ARCHS[n][4],
                           "text_tokens": 8 if toy else ARCHS[n][5], **per[n]} for n in ARCHS}}


def build(kind: str, config: dict, dtype, device):
    """A ComfyUI BaseModel of ``kind`` (SD15/SDXL/Flux) from ``config``, made on ``device`` with weights
    N(0, 0.02) and zero biases."""
    import torch
    import comfy.supported_models as sm

    mc = getattr(sm, kind)(dict(config))
    mc.set_inference_dtype(dtype, None)
    m = mc.get_model({}, "", device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in m.diffusion_model.named_parameters():
            p.normal_(0, 0.02, generator=g) if not name.endswith("bias") else p.zero_()
    return m


def run(report: PartReport, toy: bool, deadline: float | None) -> None:
    report.update(**comfy_env("guidance"))  # first: ComfyUI is importable only after it
    import comfy.model_management as mm

    per = TOY if toy else REAL
    device = mm.get_torch_device()
    models = {}
    names = list(ARCHS)
    for i, name in enumerate(names):
        share = time_left(deadline) * per[name]["est_s"] / sum(per[n]["est_s"] for n in names[i:])
        if share < 0.4 * per[name]["est_s"]:
            models[name] = {"skipped": f"{time_left(deadline):.0f} s left of the part's budget; this model needs "
                                       f"about {per[name]['est_s']} s"}
        else:
            try:
                models[name] = measure_model(name, toy, device, time.time() + share)
            except Exception as e:  # noqa: BLE001 - the next model still runs
                models[name] = error_fields(e)
            free(mm)
        report.update(models=models)
        print(f"guidance {name}: {summary_line(models[name])}", flush=True)
    problems = [f"{n}: {m.get('skipped') or m.get('error')}" for n, m in models.items()
                if m.get("skipped") or m.get("error")]
    problems += [f"{n} {k}: {v['error']}" for n, m in models.items() for k, v in m.get("configurations", {}).items()
                 if "error" in v]
    report.update(problems=problems, complete=True)


def free(mm) -> None:
    import torch

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_model(name: str, toy: bool, device, deadline: float) -> dict:
    import torch
    import comfy.model_patcher
    from comfyui_step_cost import conditioning_for, configurations, estimator_for

    kind, real_cfg, toy_cfg, side, dtype_name, tokens = ARCHS[name]
    per = (TOY if toy else REAL)[name]
    dtype = torch.float32 if toy else getattr(torch, dtype_name)
    side, tokens = (8, 8) if toy else (side, tokens)
    t0 = time.perf_counter()
    base = build(kind, toy_cfg if toy else real_cfg, dtype, device)
    weights = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)  # never copied to RAM
    ch = base.latent_format.latent_channels
    latent = torch.zeros(1, ch, side, side)
    pos, neg = conditioning_for(model, 1, tokens), conditioning_for(model, 2, tokens)
    est = estimator_for(model, 32 if toy else 64)
    configs = configurations(model, est)
    times, peaks, errors = rounds(configs, latent, per["steps"], pos, neg, per["rounds"], deadline)
    base_times = times["plain CFG"]
    if not base_times:
        raise RuntimeError(f"plain CFG failed: {errors.get('plain CFG')}")
    out = {"parameters": sum(p.numel() for p in base.diffusion_model.parameters()), "latent": [1, ch, side, side],
           "dtype": str(dtype).replace("torch.", ""), "text_tokens": tokens, "steps": per["steps"],
           "rounds": len(base_times), "weights_gib": weights, "configurations": {}}
    for k, v in times.items():
        if k in errors:
            out["configurations"][k] = {"error": errors[k]}
            continue
        ratios = [a / b for a, b in zip(v, base_times)]
        out["configurations"][k] = {"s_per_step": statistics.median(v), "ratio": statistics.median(ratios),
                                    "ratio_of_medians": statistics.median(v) / statistics.median(base_times),
                                    "s_per_step_each_round": v, "peak_gib": peaks.get(k)}
    missing = [f"NAG-CF estimator K={k}" for k in (1, 3) if f"NAG-CF estimator K={k}" not in configs]
    if missing:  # the classifier-free node has no 'from estimator' null branch in this checkout
        out["not_measured"] = {k: "the classifier-free node has no null_branch/estimator/levels inputs here"
                               for k in missing}
    del model, base, configs
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def rounds(configs: dict, latent, steps: int, pos, neg, max_rounds: int, deadline: float) -> tuple[dict, dict, dict]:
    """One untimed warm-up round, then up to ``max_rounds`` timed rounds (at least one) while they fit before
    ``deadline``.  Returns seconds per step per configuration and round, peak GPU memory (GiB) per
    configuration (None on CPU), and the errors of configurations that failed (left out of later rounds)."""
    import torch
    from comfyui_step_cost import time_steps

    cuda = torch.cuda.is_available()
    times, peaks, errors = {k: [] for k in configs}, {}, {}
    t_round = 0.0
    for r in range(max_rounds + 1):
        if r > 1 and time.time() + t_round > deadline:
            break
        t0 = time.perf_counter()
        for k, m in configs.items():
            if k in errors:
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                dt = time_steps(m, latent, steps, pos, neg, CFG)
            except Exception as e:  # noqa: BLE001 - the other configurations still run
                errors[k] = error_fields(e)["error"]
                continue
            if cuda:
                peaks[k] = max(peaks.get(k, 0.0), torch.cuda.max_memory_allocated() / 2**30)
            if r > 0:
                times[k].append(dt)
        t_round = time.perf_counter() - t0
    return times, peaks, errors


def summary_line(result: dict) -> str:
    if "configurations" not in result:
        return result.get("skipped") or result.get("error", "?")
    return f"{result['parameters'] / 1e6:.0f}M params, " + ", ".join(
        f"{k} x{v['ratio']:.2f}" if "ratio" in v else f"{k} failed" for k, v in result["configurations"].items()
        if k != "plain CFG")
