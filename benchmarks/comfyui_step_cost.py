"""Per-step cost of Noise Awareness Guidance in ComfyUI, as ratios to a plain CFG step.

Runs the real ComfyUI sampler (``comfy.sample.sample``) on one model and times, interleaved in one
run (round-robin over configurations, median of the repeats): plain CFG, NAG-CF batched, NAG-CF
unbatched, NAG-CG (estimator gradient), and NAG-CF with the null branch from a noise-level estimator
(K = 1 and 3 levels: any checkpoint, no fine-tuning; at K = 1 also with the closed-loop scale).  Prints
seconds per step, the ratio to plain CFG, and the network evaluations and estimator reads per sample and step.  Run it with ComfyUI's Python:

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


def estimator_for(model, width: int = 32, depth: int = 3, bins: int = 32):
    """A random-weight noise-level estimator for ``model``'s latents and its loader-style ``(estimator, metadata)``:
    the metadata names the model's family (comfy_nag.families) when ComfyUI's config class has one, else only
    its latent format, so the nodes' estimator checks pass.  Timing only: its readings mean nothing."""
    import json

    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.comfy_nag.families import from_comfy_config

    base = model.model
    fmt = model.get_model_object("latent_format")
    est = NoiseLevelEstimator((fmt.latent_channels, 8, 8), LevelBins(-10, 10, bins), width=width, depth=depth)
    est.eval().requires_grad_(False)
    fam = from_comfy_config(type(base.model_config).__name__)
    meta = {"nag.latent_format": type(fmt).__name__}
    if fam is not None:
        meta.update({"nag.family": fam.name, "nag.schedule": json.dumps(fam.schedule.describe())})
    return est, meta


def configurations(model, estimator, levels=(1, 3)) -> dict:
    """``{name: model}`` of plain CFG and the guidance nodes at scale 1 (NAG-CG 0.5) over the whole sampling:
    NAG-CF with the learned null branch (batched, unbatched), NAG-CG, NAG-CF with the null branch from the
    estimator at each of ``levels`` (when the classifier-free node has that input), and at one level with the
    closed-loop scale (when its scale_rule offers it).  ``estimator``: the
    ``(estimator, metadata)`` pair 'Load Noise-Level Estimator' gives."""
    from comfy_nag_pack_under_test.nodes import guidance_nodes

    node = guidance_nodes.NoiseAwarenessClassifierFree
    nag = {"scale": 1.0, "variant": "A", "window_unit": "percent", "start": 0.0, "end": 1.0, "null_timestep_source": "auto",
           "null_timestep": 0.0}
    out = {
        "plain CFG": model,
        "NAG-CF batched": node.execute(model, **nag, batched=True).result[0],
        "NAG-CF unbatched": node.execute(model, **nag, batched=False).result[0],
        "NAG-CG (estimator)": guidance_nodes.NoiseAwarenessClassifierGuided.execute(
            model, estimator=estimator, scale=0.5, window_unit="percent", start=0.0, end=1.0).result[0],
    }
    if any(i.id == "levels" for i in node.define_schema().inputs):  # the null branch from an estimator
        for k in levels:
            out[f"NAG-CF estimator K={k}"] = node.execute(model, **nag, batched=True, scale_rule="constant",
                                                          null_branch="from estimator", estimator=estimator,
                                                          levels=k).result[0]
    if "auto (from estimator)" in next(i.options for i in node.define_schema().inputs if i.id == "scale_rule"):
        out["NAG-CF estimator K=1, auto"] = node.execute(model, **nag, batched=True, scale_rule="auto (from estimator)",
                                                         null_branch="from estimator", estimator=estimator,
                                                         levels=1).result[0]
    return out


def time_steps(model, latent, steps: int, pos, neg, cfg: float = 4.0) -> float:
    """Seconds per sampler step of one ``comfy.sample.sample`` run (euler, simple), synchronised on CUDA."""
    import torch
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, 0)
    with torch.inference_mode():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=0, disable_pbar=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps


def count_rows(model, estimator, latent, steps: int, pos, neg) -> tuple[float, float]:
    """``(network evaluations, estimator reads)`` per sample and sampler step of one run: the rows the diffusion
    model (the tests' ``ForwardSpy``) and the estimator class are called on (cond and uncond batched together count
    as two).  The estimator is counted on its class: the nodes' model_options, estimator included, are deep-copied."""
    import comfy_support as cs

    read = [0]
    cls = type(estimator)
    est_forward = cls.forward

    def counted_estimator(self, x, *a, **k):
        read[0] += x.shape[0]
        return est_forward(self, x, *a, **k)

    cls.forward = counted_estimator
    try:
        with cs.ForwardSpy(model) as spy:
            time_steps(model, latent, steps, pos, neg)
    finally:
        cls.forward = est_forward
    n = steps * latent.shape[0]
    return sum(t.shape[0] for t, _ in spy.calls) / n, read[0] / n


def measure(model, latent, steps: int, repeats: int, estimator_width: int = 32) -> dict:
    """Median seconds per sampler step of plain CFG and the guidance nodes, measured round-robin, with each one's
    network evaluations and estimator reads per step (:func:`count_rows`, one extra run each)."""
    pos, neg = conditioning_for(model, 1), conditioning_for(model, 2)
    estimator = estimator_for(model, estimator_width)
    configs = configurations(model, estimator)
    times = {k: [] for k in configs}
    counts = {k: count_rows(m, estimator[0], latent, steps, pos, neg) for k, m in configs.items()}  # also a warm-up
    for _ in range(repeats):
        for k, m in configs.items():
            times[k].append(time_steps(m, latent, steps, pos, neg))
    base = statistics.median(times["plain CFG"])
    return {k: {"s_per_step": statistics.median(v), "ratio": statistics.median(v) / base, "nfe": counts[k][0],
                "estimator_reads": counts[k][1]} for k, v in times.items()}


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
    print(f"{'configuration':26s} {'s/step':>9s} {'ratio':>7s} {'NFE/step':>9s} {'estimator reads/step':>21s}")
    for k, v in result.items():
        print(f"{k:26s} {v['s_per_step']:9.4f} {v['ratio']:7.2f} {v['nfe']:9.2f} {v['estimator_reads']:21.2f}")


if __name__ == "__main__":
    main()
