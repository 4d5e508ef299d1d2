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
    import comfy.sample
    import comfy.sd

    if args.threads:
        torch.set_num_threads(args.threads)
    cs.load_pack()
    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.nodes import guidance_nodes

    if args.unet_file:
        model = comfy.sd.load_diffusion_model(args.unet_file)
    else:
        model = cs.patcher(cs.tiny_sd3_model(0) if args.model == "sd3" else cs.tiny_unet_model("eps", 0))
    ch = model.get_model_object("latent_format").latent_channels
    fam = "sd3" if ch == 16 else "unet"
    latent = torch.zeros(args.batch, ch, args.size, args.size)
    pos, neg = cs.conditioning(fam, 1), cs.conditioning(fam, 2)
    cf = guidance_nodes.NoiseAwarenessClassifierFree.execute
    est = NoiseLevelEstimator((ch, args.size, args.size), LevelBins(-10, 10, 32), width=32, depth=3)
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
            t0 = time.perf_counter()
            comfy.sample.sample(m, noise, args.steps, 4.0, "euler", "simple", pos, neg, latent, seed=0, disable_pbar=True)
            return (time.perf_counter() - t0) / args.steps

    for m in configs.values():  # warm-up (model load, allocator)
        run(m)
    for _ in range(args.repeats):
        for k, m in configs.items():
            times[k].append(run(m))
    base = statistics.median(times["plain CFG"])
    print(f"model={args.unet_file or args.model} latent={tuple(latent.shape)} steps={args.steps} repeats={args.repeats} "
          f"device={comfy.model_management.get_torch_device()} threads={torch.get_num_threads()}")
    print(f"{'configuration':22s} {'s/step':>9s} {'ratio':>7s}")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:22s} {med:9.4f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
