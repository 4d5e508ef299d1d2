"""Where the default guidance window (signal 0.5 -> 1, i.e. log-SNR >= 0) falls on each model family,
in that family's own sigma and in percent of a ComfyUI sampler's steps.  Regenerates the table in
docs/comfyui.md.  Run it with ComfyUI's Python (found via COMFYUI_PATH, else ~/comfy/ComfyUI):

    python benchmarks/window_table.py [--steps 20]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import comfy_support as cs

    try:
        cs.comfy_or_skip()  # ComfyUI first on sys.path, CPU mode (sigma tables only)
    except BaseException as e:  # pytest.skip raises outside pytest too
        sys.exit(str(e))
    import comfy.model_sampling as cms
    import comfy.samplers

    from comfy_nag.patching import WindowUnit, sigma_window
    from comfy_nag.schedules import Space

    class Config:
        def __init__(self, **settings):
            self.sampling_settings, self.latent_format = settings, None

    def sampling(base, kind, **settings):
        return type("Sampling", (base, kind), {})(Config(**settings))

    families = [("SD1.x / SD2.x / SDXL (eps, discrete)", Space.VE, sampling(cms.ModelSamplingDiscrete, cms.EPS), ("karras", "normal")),
                ("SD3 / SD3.5 (flow, shift 3)", Space.FLOW, sampling(cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0), ("simple",)),
                ("Flux-style flow, shift 1 (unshifted)", Space.FLOW, sampling(cms.ModelSamplingFlux, cms.CONST, shift=0.0), ("simple",)),
                ("Flux-style flow, shift 3", Space.FLOW, sampling(cms.ModelSamplingFlux, cms.CONST, shift=math.log(3.0)), ("simple",))]
    print(f"| model family | sigma at signal 0.5 | window in sigma | percent of {args.steps} steps (scheduler) |")
    print("|---|---|---|---|")
    for name, space, ms, schedulers in families:
        lo, hi = sigma_window(0.5, 1.0, WindowUnit.SIGNAL, space=space)
        cells = []
        for sch in schedulers:
            sig = comfy.samplers.calculate_sigmas(ms, sch, args.steps)[:-1]  # the sigmas the steps run at
            first = next(i for i, s in enumerate(sig.tolist()) if s <= hi)
            cells.append(f"{first / args.steps:.2f} → 1 ({sch})")
        print(f"| {name} | {hi:g} | {hi:g} → {lo:g} | {', '.join(cells)} |")


if __name__ == "__main__":
    main()
