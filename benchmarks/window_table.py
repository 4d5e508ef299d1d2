"""Where the default guidance window (signal 0.5 -> 1, i.e. log-SNR >= 0) falls on each model family,
in that family's own sigma and in the steps of a ComfyUI sampler.  Regenerates the table in
docs/comfyui.md.  Run it with ComfyUI's Python (found via COMFYUI_PATH, else ~/comfy/ComfyUI):

    python benchmarks/window_table.py [--steps 20]

The video and Qwen-Image rows take ComfyUI's own model_sampling of its detected model config (the tests'
tiny seeded models: the schedule does not depend on the weights).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def families(cs):
    """``(name, space, model_sampling, schedulers)`` per row: the image families as ComfyUI's sampling classes with
    their default settings, the video families and Qwen-Image from ComfyUI's detected models."""
    import comfy.model_sampling as cms

    from comfy_nag.schedules import Space

    class Config:
        def __init__(self, **settings):
            self.sampling_settings, self.latent_format = settings, None

    def sampling(base, kind, **settings):
        return type("Sampling", (base, kind), {})(Config(**settings))

    def detected(make):
        return make(0).model_sampling

    flow = Space.FLOW
    return [("SD1.x / SD2.x / SDXL (eps, discrete)", Space.VE, sampling(cms.ModelSamplingDiscrete, cms.EPS), ("karras", "normal")),
            ("SD3 / SD3.5 (flow, shift 3)", flow, sampling(cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0), ("simple",)),
            ("Flux-style flow, shift 1 (unshifted)", flow, sampling(cms.ModelSamplingFlux, cms.CONST, shift=0.0), ("simple",)),
            ("Flux-style flow, shift 3", flow, sampling(cms.ModelSamplingFlux, cms.CONST, shift=math.log(3.0)), ("simple",)),
            ("WAN 2.1, WAN 2.2 A14B experts (flow, shift 8)", flow, detected(cs.tiny_wan21_model), ("simple",)),
            ("WAN 2.2 TI2V-5B (flow, shift 8)", flow, detected(cs.tiny_wan22_5b_model), ("simple",)),
            ("HunyuanVideo (flow, shift 7)", flow, detected(cs.tiny_hunyuan_video_model), ("simple",)),
            ("Qwen-Image (ComfyUI's default: Flux-style mu 1.15)", flow, detected(cs.tiny_qwen_image_model), ("simple",)),
            ("Qwen-Image, ComfyUI's template (ModelSamplingAuraFlow 3.1)", flow,
             sampling(cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.1, multiplier=1.0), ("simple",)),
            ("Lumina 2 (flow, shift 6)", flow, detected(cs.tiny_lumina2_model), ("simple",))]


def table(cs, n: int = 20) -> list[str]:
    """The markdown table's lines for ``n`` steps (ComfyUI imported, CPU mode)."""
    import comfy.samplers

    from comfy_nag.patching import WindowUnit, sigma_window

    lines = [f"| model family | sigma at signal 0.5 | window in sigma | first of {n} steps in it, as progress (scheduler) "
             f"| steps in it (of {n}) |", "|---|---|---|---|---|"]
    for name, space, ms, schedulers in families(cs):
        lo, hi = sigma_window(0.5, 1.0, WindowUnit.SIGNAL, space=space)
        progress, steps = [], []
        for sch in schedulers:
            sig = comfy.samplers.calculate_sigmas(ms, sch, n)[:-1]  # the sigmas the steps run at
            first = next(i for i, s in enumerate(sig.tolist()) if s <= hi)
            progress.append(f"{first / n:.2f} → 1 ({sch})")
            steps.append(f"{first}–{n - 1} ({n - first})")
        lines.append(f"| {name} | {hi:g} | {hi:g} → {lo:g} | {', '.join(progress)} | {', '.join(steps)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import comfy_support as cs

    try:
        cs.comfy_or_skip()  # ComfyUI first on sys.path, CPU mode (sigma tables only)
    except BaseException as e:  # pytest.skip raises outside pytest too
        sys.exit(str(e))
    print("\n".join(table(cs, args.steps)))


if __name__ == "__main__":
    main()
