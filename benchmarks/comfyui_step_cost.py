"""Per-step cost of Noise Awareness Guidance in ComfyUI, as ratios to a plain CFG step.

Runs the real ComfyUI sampler (``comfy.sample.sample``) on one model and times, interleaved in one
run (round-robin over configurations, median of the repeats): plain CFG, NAG-CF batched, NAG-CF
unbatched, NAG-CG (estimator gradient).  Prints seconds per step and the ratio to plain CFG.  Run it with ComfyUI's Python:

    python benchmarks/comfyui_step_cost.py [--model sd3|unet] [--size 32] [--steps 6] [--repeats 5]

Uses the tiny seeded models of the integration tests (no downloads) unless ``--unet-file`` names a
real diffusion model file.  ComfyUI is found via COMFYUI_PATH, else ~/comfy/ComfyUI.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def conditioning_for(model, seed: int, tokens: int = 8) -> list:
    """Random conditioning of the widths ``model`` takes (context, pooled vector, SDXL size inputs),
    read from its config, so a real-size file gets real-size conditioning."""
    import torch

    base = model.model
    uc = base.model_config.unet_config
    g = torch.Generator().manual_seed(seed)
    ctx = uc.get("context_dim") or uc.get("context_in_dim")
    if ctx is None and "context_embedder_config" in uc:
        ctx = uc["context_embedder_config"]["params"]["in_features"]
    extra = {}
    pooled = uc.get("vec_in_dim") or (uc.get("adm_in_channels") if "context_embedder_config" in uc else None)
    if uc.get("adm_in_channels") and "context_embedder_config" not in uc:  # SDXL: 1280 pooled + 6 size embeddings
        pooled = uc["adm_in_channels"] - 6 * 256
        extra.update(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    if pooled:
        extra["pooled_output"] = torch.randn(1, pooled, generator=g)
    if uc.get("guidance_embed"):
        extra["guidance"] = 3.5
    return [[torch.randn(1, tokens, ctx, generator=g), extra]]


def measure(model, latent, steps: int, repeats: int, estimator_width: int = 32) -> dict:
    """Median seconds per sampler step of plain CFG and the guidance nodes, measured round-robin."""
    import torch
    import comfy.sample
    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.nodes import guidance_nodes

    pos, neg = conditioning_for(model, 1), conditioning_for(model, 2)
    cf = guidance_nodes.NoiseAwarenessClassifierFree.execute
    est = NoiseLevelEstimator(tuple(latent.shape[1:]), LevelBins(-10, 10, 32), width=estimator_width, depth=3)
    configs = {
        "plain CFG": model,
        "NAG-CF batched": cf(model, 1.0, "A", "percent", 0.0, 1.0, "auto", 0.0, True).result[0],
        "NAG-CF unbatched": cf(model, 1.0, "A", "percent", 0.0, 1.0, "auto", 0.0, False).result[0],
        "NAG-CG (estimator)": guidance_nodes.NoiseAwarenessClassifierGuided.execute(
            model, (est, {}), 0.5, "percent", 0.0, 1.0).result[0],
    }
    times = {k: [] for k in configs}

    def run(m):
        noise = comfy.sample.prepare_noise(latent, 0)
        with torch.inference_mode():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            comfy.sample.sample(m, noise, steps, 4.0, "euler", "simple", pos, neg, latent, seed=0, disable_pbar=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / steps

    for m in configs.values():  # warm-up (model load, allocator)
        run(m)
    for _ in range(repeats):
        for k, m in configs.items():
            times[k].append(run(m))
    base = statistics.median(times["plain CFG"])
    return {k: {"s_per_step": statistics.median(v), "ratio": statistics.median(v) / base} for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sd3", "unet"], default="sd3")
    ap.add_argument("--unet-file", default=None, help="a real diffusion model .safetensors (UNETLoader format)")
    ap.add_argument("--size", type=int, default=32, help="latent height/width")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: NAG_TEST_THREADS, else 1)")
    args = ap.parse_args()

    import comfy_support as cs

    try:
        cs.comfy_or_skip()
    except BaseException as e:  # pytest.skip raises outside pytest too
        sys.exit(str(e))
    import torch
    import comfy.sd

    if args.threads:
        torch.set_num_threads(args.threads)
    cs.load_pack()
    if args.unet_file:
        model = comfy.sd.load_diffusion_model(args.unet_file)
    else:
        model = cs.patcher(cs.tiny_sd3_model(0) if args.model == "sd3" else cs.tiny_unet_model("eps", 0))
    ch = model.get_model_object("latent_format").latent_channels
    latent = torch.zeros(args.batch, ch, args.size, args.size)
    result = measure(model, latent, args.steps, args.repeats)
    print(f"model={args.unet_file or args.model} latent={tuple(latent.shape)} steps={args.steps} repeats={args.repeats} "
          f"device={comfy.model_management.get_torch_device()} threads={torch.get_num_threads()}")
    print(f"{'configuration':22s} {'s/step':>9s} {'ratio':>7s}")
    for k, v in result.items():
        print(f"{k:22s} {v['s_per_step']:9.4f} {v['ratio']:7.2f}")


if __name__ == "__main__":
    main()
