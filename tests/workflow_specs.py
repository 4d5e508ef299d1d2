"""The shipped workflows (``workflows/*.json``), as compact specs.

Regenerate the UI JSON after changing a node's inputs (starts a ComfyUI with the pack for its
``/object_info``):  ``/work/comfy_venv/bin/python tests/workflow_specs.py``
"""
from __future__ import annotations

NOTE_CF = """Noise Awareness Guidance, classifier-free (needs a NAG-trained model: fine-tuned with noise-condition dropout by comfy-nag's trainer).
The loader reads the null timestep from the file's metadata (null_timestep_source = auto).
Starting values: scale 1.0 (try 0.5-2), variant A, window 0 -> 1 (whole run; 0.5 -> 1 = only the late, low-noise half where the shift grows), cfg as usual (NAG also works alone at cfg 1).
Scale 0 = the plain model, bit for bit. 'batched' runs the null branch in the same forward as cond/uncond."""
NOTE_CG = """Noise Awareness Guidance, classifier-guided: works on ANY unmodified checkpoint, using a small noise-level estimator (models/noise_estimators, trained with `python -m training estimator` for this latent space).
Starting values: scale 0.5 (0.2-2), window 0.3 -> 1. The estimator must match the model's latent channels (4 for SD1.5/SDXL, 16 for SD3/Flux) and family; a mismatch is reported clearly."""
NOTE_FLOW = """Flow model (SD3/SD3.5-style) with classifier-free NAG. Null timestep: from the file's metadata, else -1000 (SD3/WAN, network time = sigma*1000) or -1 (Flux).
Starting values: scale 1.0, cfg 4-5, shift 3."""
NOTE_GUIDER = """SamplerCustomAdvanced with the Noise Awareness Guider: CFG + classifier-free NAG with explicit batching.
batching: 'one forward' (cond, uncond, null in one batch: fastest), 'cond+uncond, then null', 'each branch separately' (least memory).
Starting values: cfg 4, scale 1.0, variant A."""
NOTE_COMPARE = """Same seed, with vs without NAG. The Noise Shift Recorders measure each step's nominal noise level and the level estimated from the sampler state (training-free variance estimate; plug an estimator in for a learned one). The plot shows both runs, the spread across the batch and the guidance window; the JSON has the numbers (wire it to a 'Preview Any' node to read them).
Negative gap = states look noisier than their nominal level (the noise shift)."""


def _txt2img(loader_type, latent_type, size, patch_nodes, model_src, note, cfg=6.0, steps=25, extra=()):
    nodes = [
        {"id": 1, "type": loader_type, "pos": [40, 200], "widgets": {"ckpt_name": "put_your_model_here.safetensors"}},
        {"id": 2, "type": "CLIPTextEncode", "pos": [420, 40], "widgets": {"text": "a photo of a red fox in the snow, detailed"}, "links": {"clip": (1, 1)}},
        {"id": 3, "type": "CLIPTextEncode", "pos": [420, 260], "widgets": {"text": "blurry, low quality"}, "links": {"clip": (1, 1)}},
        {"id": 4, "type": latent_type, "pos": [420, 480], "widgets": {"width": size, "height": size, "batch_size": 1}},
        *patch_nodes,
        {"id": 7, "type": "KSampler", "pos": [1180, 200], "widgets": {"seed": 42, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal"},
         "links": {"model": model_src, "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 8, "type": "VAEDecode", "pos": [1540, 200], "links": {"samples": (7, 0), "vae": (1, 2)}},
        {"id": 9, "type": "SaveImage", "pos": [1780, 200], "widgets": {"filename_prefix": "noise_awareness"}, "links": {"images": (8, 0)}},
        {"id": 20, "type": "Note", "pos": [40, 520], "size": [360, 260], "text": note},
        *extra,
    ]
    return nodes


SPECS = {
    "noise_awareness_cf_txt2img_sd15": ("NAG classifier-free txt2img (SD1.5/SDXL-style, NAG-trained model)", _txt2img(
        "NoiseAwarenessCheckpointLoader", "EmptyLatentImage", 512,
        [{"id": 5, "type": "NoiseAwarenessGuidanceClassifierFree", "pos": [800, 200], "links": {"model": (1, 0)}}],
        (5, 0), NOTE_CF)),
    "noise_awareness_cg_estimator_sdxl": ("NAG classifier-guided with an estimator (any SD1.5/SDXL checkpoint)", _txt2img(
        "CheckpointLoaderSimple", "EmptyLatentImage", 1024,
        [{"id": 5, "type": "NoiseAwarenessEstimatorLoader", "pos": [420, 640], "widgets": {"estimator_name": "sdxl_noise_estimator.safetensors"}},
         {"id": 6, "type": "NoiseAwarenessGuidanceClassifierGuided", "pos": [800, 200], "widgets": {"scale": 0.5, "start": 0.3},
          "links": {"model": (1, 0), "estimator": (5, 0)}}],
        (6, 0), NOTE_CG)),
    "noise_awareness_flow_sd3": ("NAG on a flow model (SD3/SD3.5-style)", _txt2img(
        "NoiseAwarenessCheckpointLoader", "EmptySD3LatentImage", 1024,
        [{"id": 5, "type": "ModelSamplingSD3", "pos": [800, 40], "widgets": {"shift": 3.0}, "links": {"model": (1, 0)}},
         {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "pos": [800, 240], "links": {"model": (5, 0)}}],
        (6, 0), NOTE_FLOW, cfg=4.5, steps=28)),
}

SPECS["noise_awareness_guider_custom_advanced"] = ("SamplerCustomAdvanced + Noise Awareness Guider", [
    {"id": 1, "type": "NoiseAwarenessCheckpointLoader", "pos": [40, 200], "widgets": {"ckpt_name": "put_your_model_here.safetensors"}},
    {"id": 2, "type": "CLIPTextEncode", "pos": [420, 40], "widgets": {"text": "a lighthouse on a cliff at dusk, oil painting"}, "links": {"clip": (1, 1)}},
    {"id": 3, "type": "CLIPTextEncode", "pos": [420, 260], "widgets": {"text": "blurry, low quality"}, "links": {"clip": (1, 1)}},
    {"id": 4, "type": "EmptyLatentImage", "pos": [420, 480], "widgets": {"width": 512, "height": 512, "batch_size": 1}},
    {"id": 5, "type": "NoiseAwarenessGuider", "pos": [800, 100], "links": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0)}},
    {"id": 6, "type": "RandomNoise", "pos": [800, 520], "widgets": {"noise_seed": 42}},
    {"id": 10, "type": "KSamplerSelect", "pos": [800, 640], "widgets": {"sampler_name": "euler"}},
    {"id": 11, "type": "BasicScheduler", "pos": [800, 760], "widgets": {"scheduler": "normal", "steps": 25, "denoise": 1.0}, "links": {"model": (1, 0)}},
    {"id": 7, "type": "SamplerCustomAdvanced", "pos": [1180, 200],
     "links": {"noise": (6, 0), "guider": (5, 0), "sampler": (10, 0), "sigmas": (11, 0), "latent_image": (4, 0)}},
    {"id": 8, "type": "VAEDecode", "pos": [1540, 200], "links": {"samples": (7, 0), "vae": (1, 2)}},
    {"id": 9, "type": "SaveImage", "pos": [1780, 200], "widgets": {"filename_prefix": "noise_awareness_guider"}, "links": {"images": (8, 0)}},
    {"id": 20, "type": "Note", "pos": [40, 520], "size": [360, 220], "text": NOTE_GUIDER},
])

SPECS["noise_awareness_compare_noise_shift"] = ("With vs without NAG + noise-shift plot", [
    {"id": 1, "type": "NoiseAwarenessCheckpointLoader", "pos": [40, 200], "widgets": {"ckpt_name": "put_your_model_here.safetensors"}},
    {"id": 2, "type": "CLIPTextEncode", "pos": [420, 40], "widgets": {"text": "a bowl of ramen, studio photo"}, "links": {"clip": (1, 1)}},
    {"id": 3, "type": "CLIPTextEncode", "pos": [420, 260], "widgets": {"text": "blurry, low quality"}, "links": {"clip": (1, 1)}},
    {"id": 4, "type": "EmptyLatentImage", "pos": [420, 480], "widgets": {"width": 512, "height": 512, "batch_size": 4}},
    {"id": 5, "type": "NoiseAwarenessShiftRecorder", "pos": [800, 0], "links": {"model": (1, 0)}, "title": "Recorder (without NAG)"},
    {"id": 6, "type": "NoiseAwarenessGuidanceClassifierFree", "pos": [800, 300], "links": {"model": (1, 0)}},
    {"id": 10, "type": "NoiseAwarenessShiftRecorder", "pos": [800, 640], "links": {"model": (6, 0)}, "title": "Recorder (with NAG)"},
    {"id": 7, "type": "KSampler", "pos": [1180, 0], "widgets": {"seed": 42, "steps": 25, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal"},
     "links": {"model": (5, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}, "title": "KSampler (without NAG)"},
    {"id": 11, "type": "KSampler", "pos": [1180, 420], "widgets": {"seed": 42, "steps": 25, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal"},
     "links": {"model": (10, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}, "title": "KSampler (with NAG)"},
    {"id": 8, "type": "VAEDecode", "pos": [1540, 0], "links": {"samples": (7, 0), "vae": (1, 2)}},
    {"id": 12, "type": "VAEDecode", "pos": [1540, 420], "links": {"samples": (11, 0), "vae": (1, 2)}},
    {"id": 9, "type": "SaveImage", "pos": [1780, 0], "widgets": {"filename_prefix": "without_nag"}, "links": {"images": (8, 0)}},
    {"id": 13, "type": "SaveImage", "pos": [1780, 420], "widgets": {"filename_prefix": "with_nag"}, "links": {"images": (12, 0)}},
    {"id": 14, "type": "NoiseAwarenessShiftPlot", "pos": [1540, 800], "size": [700, 420],
     "widgets": {"label": "without NAG", "label_2": "with NAG"},
     "links": {"trace": (5, 1), "latent": (7, 0), "trace_2": (10, 1), "latent_2": (11, 0)}},
    {"id": 20, "type": "Note", "pos": [40, 520], "size": [360, 260], "text": NOTE_COMPARE},
])


def main():
    import json
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from comfy_support import PACK_ROOT, Server, comfy_or_skip, load_pack, make_model_tree
    from workflow_tools import build_ui

    comfy_or_skip()
    load_pack()
    with tempfile.TemporaryDirectory() as d:
        make_model_tree(Path(d))
        srv = Server(Path(d)).wait()
        try:
            info = srv.get("/object_info")
        finally:
            srv.stop()
    out = PACK_ROOT / "workflows"
    out.mkdir(exist_ok=True)
    for name, (title, spec) in SPECS.items():
        (out / f"{name}.json").write_text(json.dumps(build_ui(spec, info, title), indent=1) + "\n")
        print("wrote", out / f"{name}.json")


if __name__ == "__main__":
    main()
