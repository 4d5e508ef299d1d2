"""The shipped workflows (``example_workflows/*.json``, the file name is the title the template browser
shows), as compact specs laid out in columns.

Regenerate them after changing a node's inputs, with ComfyUI's Python (it starts a ComfyUI with the
pack for ``/object_info`` and its web frontend in Chromium to measure every node in each font of
``browser_support.FONT_FAMILIES``, which must be installed, and to render the ``.jpg`` thumbnails):
``python tests/workflow_specs.py``; then run tests/test_comfyui_browser.py, which saves the docs' screenshots.
"""
from __future__ import annotations

import re

NOTE_CF = """Noise Awareness Guidance, classifier-free (needs a NAG-trained model: fine-tuned with noise-condition dropout by comfy-nag's trainer).
The loader reads the null timestep from the file's metadata (null_timestep_source = auto).
Starting values: scale 1.0 (try 0.5-2), variant A, window signal 0.5 -> 1 (the default: where the state holds more signal than noise, late in sampling, where the shift grows), cfg as usual (NAG also works alone at cfg 1).
Scale 0 = the plain model, bit for bit. 'batched' runs the null branch in the same forward as cond/uncond.
scale_rule: constant (default); 'per level (from file)' multiplies the scale by the per-noise-level profile the trainer writes when the fine-tune runs with monitor.estimator."""
NOTE_CG = """Noise Awareness Guidance, classifier-guided: works on ANY unmodified checkpoint, using a small noise-level estimator (models/noise_estimators, trained with `python -m training estimator` for this latent space).
Starting values: scale 0.5 (0.2-2), window signal 0.5 -> 1 (the default). The estimator must match the model's latent channels (4 for SD1.5/SDXL, 16 for SD3/Flux) and family; a mismatch is reported clearly."""
NOTE_CF_ESTIMATOR = """Classifier-free Noise Awareness Guidance on ANY stock checkpoint: null_branch = from estimator. The null branch is the model itself at the noise levels a small noise-level estimator reads from the state (models/noise_estimators, trained with `python -m training estimator` for this latent space; the same file serves the classifier-guided node). No fine-tuning; the null timestep inputs are ignored.
levels: model evaluations per step inside the window for the null branch: 1 = at the estimator's mean level, the cost of a learned null branch; 2-7 = that many levels.
Starting values: scale 1.0 (try 0.5-2), variant A, levels 1, window signal 0.5 -> 1 (the default), cfg as usual. Scale 0 = the plain model, bit for bit."""
NOTE_CF_ESTIMATOR_FLOW = """Classifier-free Noise Awareness Guidance on ANY stock SD3/SD3.5 or Flux checkpoint: null_branch = from estimator, with the estimator trained for the model's latents (SD3 and Flux latents differ: one estimator each; a mismatch is reported in one line).
levels 1 = one extra model evaluation per step inside the window; 2-7 = that many.
Starting values: scale 1.0, levels 1, cfg 4-5 for SD3. Flux-dev: load its checkpoint and the Flux estimator and set cfg 1 (NAG then runs alone beside Flux's own guidance)."""
NOTE_FLOW = """Flow model (SD3/SD3.5-style) with classifier-free NAG. Null timestep: from the file's metadata, else -1000 (SD3/WAN, network time = sigma*1000) or -1 (Flux).
Starting values: scale 1.0, cfg 4-5, shift 3."""
NOTE_GUIDER = """SamplerCustomAdvanced with the Noise Awareness Guider: CFG + classifier-free NAG with explicit batching.
batching: 'one forward' (cond, uncond, null in one batch: fastest), 'cond+uncond, then null', 'each branch separately' (least memory).
Starting values: cfg 4, scale 1.0, variant A."""
NOTE_COMPARE = """Same seed, with vs without NAG. The Noise Shift Recorders measure each step's nominal noise level and the level estimated from the sampler state (training-free variance estimate; plug an estimator in for a learned one). The plot shows both runs, the spread across the batch and the guidance window; the JSON has the numbers (wire it to a 'Preview Any' node to read them).
Negative gap = states look noisier than their nominal level (the noise shift)."""


NOTE_KSAMPLER = """KSampler (Noise Awareness): the KSampler with classifier-free Noise Awareness Guidance built in. Needs a model fine-tuned with noise-condition dropout by comfy-nag's trainer; the loader reads its null timestep.
Starting values: scale 1.0 (0.5-2), variant A, window signal 0.5 -> 1 (the default: the same noise level on every model; percent and sigma units also offered), cfg as usual.
Scale 0 = the plain KSampler, bit for bit. scale_rule 'per level (from file)': the scale times the profile in the model file (fine-tunes run with monitor.estimator)."""

LOADER = {"id": 1, "type": "NoiseAwarenessCheckpointLoader", "col": 0, "widgets": {"ckpt_name": "your_nag_trained_sd15.safetensors"}}
PROMPTS = [
    {"id": 2, "type": "CLIPTextEncode", "col": 1, "title": "Positive prompt", "size": [300, 110],
     "widgets": {"text": "a photo of a red fox in the snow, detailed"}, "links": {"clip": (1, 1)}},
    {"id": 3, "type": "CLIPTextEncode", "col": 1, "title": "Negative prompt", "size": [300, 110],
     "widgets": {"text": "blurry, low quality"}, "links": {"clip": (1, 1)}},
]


def _note(text, col=0, height=300):
    return {"id": 20, "type": "Note", "col": col, "size": [330, height], "text": text}


def _latent(kind="EmptyLatentImage", size=512, batch=1):
    return {"id": 4, "type": kind, "col": 1, "widgets": {"width": size, "height": size, "batch_size": batch}}


def _decode_save(sampler_id, col, prefix):
    return [{"id": 8, "type": "VAEDecode", "col": col, "links": {"samples": (sampler_id, 0), "vae": (1, 2)}},
            {"id": 9, "type": "SaveImage", "col": col, "size": [260, 280], "widgets": {"filename_prefix": prefix}, "links": {"images": (8, 0)}}]


def _ksampler(model_src, col, cfg=6.0, steps=25, nid=7, title=None):
    n = {"id": nid, "type": "KSampler", "col": col, "widgets": {"seed": 42, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal"},
         "links": {"model": model_src, "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}}
    return {**n, "title": title} if title else n


SPECS = {
    "KSampler (Noise Awareness) - txt2img": [
        LOADER, _note(NOTE_KSAMPLER, height=230), *PROMPTS, _latent(),
        {"id": 7, "type": "NoiseAwarenessKSampler", "col": 2,
         "widgets": {"seed": 42, "steps": 25, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal"},
         "links": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        *_decode_save(7, 3, "noise_awareness")],
    "Classifier-free node with KSampler - SD1.5 or SDXL": [
        LOADER, _note(NOTE_CF), *PROMPTS, _latent(),
        {"id": 5, "type": "NoiseAwarenessGuidanceClassifierFree", "col": 2, "links": {"model": (1, 0)}},
        _ksampler((5, 0), 2),
        *_decode_save(7, 3, "noise_awareness")],
    "Classifier-guided with an estimator - any SD1.5 or SDXL checkpoint": [
        {"id": 1, "type": "CheckpointLoaderSimple", "col": 0, "widgets": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        {"id": 5, "type": "NoiseAwarenessEstimatorLoader", "col": 0, "widgets": {"estimator_name": "sdxl_noise_estimator.safetensors"}},
        _note(NOTE_CG, height=220), *PROMPTS, _latent(size=1024),
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierGuided", "col": 2, "widgets": {"scale": 0.5},
         "links": {"model": (1, 0), "estimator": (5, 0)}},
        _ksampler((6, 0), 2),
        *_decode_save(7, 3, "noise_awareness")],
    "Flow model - SD3 or SD3.5": [
        {**LOADER, "widgets": {"ckpt_name": "your_nag_trained_sd3.safetensors"}}, _note(NOTE_FLOW, height=160), *PROMPTS,
        _latent("EmptySD3LatentImage", 1024),
        {"id": 5, "type": "ModelSamplingSD3", "col": 2, "widgets": {"shift": 3.0}, "links": {"model": (1, 0)}},
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "col": 2, "links": {"model": (5, 0)}},
        _ksampler((6, 0), 3, cfg=4.5, steps=28),
        *_decode_save(7, 4, "noise_awareness")],
    "Classifier-free with an estimator - any SD1.5 or SDXL checkpoint": [
        {"id": 1, "type": "CheckpointLoaderSimple", "col": 0, "widgets": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        {"id": 5, "type": "NoiseAwarenessEstimatorLoader", "col": 0, "widgets": {"estimator_name": "sdxl_noise_estimator.safetensors"}},
        _note(NOTE_CF_ESTIMATOR, height=240), *PROMPTS, _latent(size=1024),
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "col": 2,
         "widgets": {"null_branch": "from estimator", "levels": 1}, "links": {"model": (1, 0), "estimator": (5, 0)}},
        _ksampler((6, 0), 2),
        *_decode_save(7, 3, "noise_awareness")],
    "Classifier-free with an estimator - any SD3 or Flux checkpoint": [
        {"id": 1, "type": "CheckpointLoaderSimple", "col": 0, "widgets": {"ckpt_name": "sd3.5_medium.safetensors"}},
        {"id": 5, "type": "NoiseAwarenessEstimatorLoader", "col": 0, "widgets": {"estimator_name": "sd3_noise_estimator.safetensors"}},
        _note(NOTE_CF_ESTIMATOR_FLOW, height=190), *PROMPTS, _latent("EmptySD3LatentImage", 1024),
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "col": 2,
         "widgets": {"null_branch": "from estimator", "levels": 1}, "links": {"model": (1, 0), "estimator": (5, 0)}},
        _ksampler((6, 0), 2, cfg=4.5, steps=28),
        *_decode_save(7, 3, "noise_awareness")],
    "Guider with SamplerCustomAdvanced": [
        LOADER, _note(NOTE_GUIDER, height=200), *PROMPTS, _latent(),
        {"id": 6, "type": "RandomNoise", "col": 1, "widgets": {"noise_seed": 42}},
        {"id": 5, "type": "NoiseAwarenessGuider", "col": 2, "links": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0)}},
        {"id": 10, "type": "KSamplerSelect", "col": 3, "widgets": {"sampler_name": "euler"}},
        {"id": 11, "type": "BasicScheduler", "col": 3, "widgets": {"scheduler": "normal", "steps": 25, "denoise": 1.0}, "links": {"model": (1, 0)}},
        {"id": 7, "type": "SamplerCustomAdvanced", "col": 3,
         "links": {"noise": (6, 0), "guider": (5, 0), "sampler": (10, 0), "sigmas": (11, 0), "latent_image": (4, 0)}},
        *_decode_save(7, 4, "noise_awareness_guider")],
    "With vs without - noise shift plot": [
        LOADER, _note(NOTE_COMPARE, height=260), *PROMPTS, _latent(batch=4),
        {"id": 5, "type": "NoiseAwarenessShiftRecorder", "col": 2, "links": {"model": (1, 0)}, "title": "Recorder (without NAG)"},
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "col": 2, "links": {"model": (1, 0)}},
        {"id": 10, "type": "NoiseAwarenessShiftRecorder", "col": 2, "links": {"model": (6, 0)}, "title": "Recorder (with NAG)"},
        _ksampler((5, 0), 3, title="KSampler (without NAG)"),
        _ksampler((10, 0), 3, nid=11, title="KSampler (with NAG)"),
        {"id": 14, "type": "NoiseAwarenessShiftPlot", "col": 3, "size": [380, 300],
         "widgets": {"label": "without NAG", "label_2": "with NAG"},
         "links": {"trace": (5, 1), "latent": (7, 0), "trace_2": (10, 1), "latent_2": (11, 0)}},
        {"id": 8, "type": "VAEDecode", "col": 4, "links": {"samples": (7, 0), "vae": (1, 2)}, "title": "VAE Decode (without)"},
        {"id": 9, "type": "SaveImage", "col": 4, "size": [260, 250], "widgets": {"filename_prefix": "without_nag"}, "links": {"images": (8, 0)},
         "title": "Save Image (without)"},
        {"id": 12, "type": "VAEDecode", "col": 4, "links": {"samples": (11, 0), "vae": (1, 2)}, "title": "VAE Decode (with)"},
        {"id": 13, "type": "SaveImage", "col": 4, "size": [260, 250], "widgets": {"filename_prefix": "with_nag"}, "links": {"images": (12, 0)},
         "title": "Save Image (with)"}],
}
WORKFLOW_DIR = "example_workflows"
SCREENSHOT_DIR = "docs/img/workflows"


def slug(name: str) -> str:
    """File-name-safe form of a workflow title (the docs' screenshot names)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# Node widths leave this much room over the widest of the fonts measured (browser_support.FONT_FAMILIES) for
# a user's font that is wider still, and are rounded up to GRID px.
SAFETY, GRID = 1.15, 10


def measure(front, spec, info, title):
    """Node sizes: wide enough for the title and every widget's label and value in each of the fonts of
    browser_support.FONT_FAMILIES, text widths times SAFETY (browser_support.needed_width), and at least the
    frontend's computeSize; the spec's size where larger."""
    import math

    from browser_support import FONT_FAMILIES, needed_width
    from workflow_tools import build_ui

    front.clear()
    front.load(build_ui(spec, info, title))
    sizes = {n["id"]: list(n.get("size", [0, 0])) for n in spec}
    for family in FONT_FAMILIES:
        if not front.font_present(family):
            raise SystemExit(f"the font '{family}' is not installed: node widths are fitted to each of {FONT_FAMILIES} "
                             "(Debian: apt-get install fonts-dejavu-core fonts-liberation2)")
        for n in front.texts(family):
            w = math.ceil(needed_width(n, SAFETY) / GRID) * GRID
            sizes[n["id"]] = [max(sizes[n["id"]][0], w), max(sizes[n["id"]][1], float(n["least"][1]))]
    return sizes


def main():
    import json
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from browser_support import Frontend, browser_or_skip
    from comfy_support import PACK_ROOT, Server, comfy_or_skip, load_pack, make_model_tree
    from workflow_tools import build_ui

    comfy_or_skip()
    exe = browser_or_skip()
    load_pack()
    out, shots = PACK_ROOT / WORKFLOW_DIR, PACK_ROOT / SCREENSHOT_DIR
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        make_model_tree(Path(d))
        srv = Server(Path(d), frontend=True).wait()
        try:
            info = srv.get("/object_info")
            front = Frontend(srv.url, exe)
            for name, spec in SPECS.items():
                ui = build_ui(spec, info, name, sizes=measure(front, spec, info, name))
                (out / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
                front.clear()
                front.load(ui)
                front.fit()
                front.screenshot(out / f"{name}.jpg", quality=85, graph_only=True)
                print("wrote", out / f"{name}.json", "and its thumbnail")
            front.close()
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
