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
# The notes of the workflows whose guidance sets its own scale (scale_rule 'auto (from estimator)').
AUTO_RULE = ("per image and step in the window, the rule picks the strength (0 to 1.5) at which the next state reads "
             "at its nominal noise level, from two estimator calls (no extra model evaluation).")
ESTIMATOR_FILE = ("Estimator: from `python -m training estimator`, which writes the calibration the rule needs; with an older "
                  "file it assumes an unbiased reading (a log line says so).")
ANY_CHECKPOINT = ("Every setting (levels, window, a constant scale) is on Noise Awareness Guidance (classifier-free); with "
                  "null_branch from estimator, scale_rule auto and its defaults it is this node.")


def _strength(name="strength"):
    return (f"Starting value: {name} 1.0. It multiplies what the rule picks (1 = as the rule says): seems too weak, try 1.5-2; "
            f"too strong, 0.5; 0 = the plain model, bit for bit.")


NOTE_CG = f"""Noise Awareness Guidance, classifier-guided: works on ANY unmodified checkpoint, using a small noise-level estimator (models/noise_estimators) for this latent space; window signal 0.5 -> 1 (the default).
scale_rule auto (from estimator): {AUTO_RULE}
{_strength("scale")} With scale_rule constant, scale is the strength itself (start at 0.5).
{ESTIMATOR_FILE} It must match the model's latent channels (4 for SD1.5/SDXL, 16 for SD3/Flux) and family; a mismatch is reported clearly."""
NOTE_CF_ESTIMATOR = f"""Noise Awareness Guidance (any checkpoint): classifier-free NAG on ANY stock SD1.5 or SDXL checkpoint, no fine-tuning. Its null branch is the model at the noise level a small estimator (models/noise_estimators, for this latent space; the same file serves the classifier-guided node) reads from the state: one extra model evaluation per step, late in sampling (signal 0.5 -> 1).
The strength sets itself (auto): {AUTO_RULE}
{_strength()} cfg as usual.
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
NOTE_CF_ESTIMATOR_FLOW = f"""Noise Awareness Guidance (any checkpoint) on ANY stock SD3/SD3.5 or Flux checkpoint, no fine-tuning; the estimator must be trained for the model's latents (SD3 and Flux latents differ: one estimator each; a mismatch is reported in one line).
The strength sets itself (auto): {AUTO_RULE}
{_strength()} cfg 4-5 for SD3. Flux-dev: load its checkpoint and the Flux estimator and set cfg 1 (NAG then runs alone beside Flux's own guidance).
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
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


# Video and Qwen-Image workflows: ComfyUI's stock loaders and latents, as its own templates use them for these models.
WAN21_UNET, WAN22_5B_UNET = "wan2.1_t2v_1.3B_fp16.safetensors", "wan2.2_ti2v_5B_fp16.safetensors"
WAN22_HIGH_UNET, WAN22_LOW_UNET = "wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan2.2_t2v_low_noise_14B_fp16.safetensors"
QWEN_IMAGE_UNET = "qwen_image_fp8_e4m3fn.safetensors"
VIDEO_FAMILIES = {WAN21_UNET: "wan21", WAN22_HIGH_UNET: "wan21", WAN22_LOW_UNET: "wan21", WAN22_5B_UNET: "wan22-5b",
                  QWEN_IMAGE_UNET: "qwen-image"}  # the registry family of each model file the workflows name
NOTE_WAN21 = f"""Noise Awareness Guidance (any checkpoint) on a stock WAN 2.1 text-to-video model, no fine-tuning, with an estimator for Wan21 video latents (python -m training estimator -c training/configs/wan21_estimator.toml). The same file serves Qwen-Image (the same latent space); WAN 2.2 5B needs its own.
Window: signal 0.5 -> 1, on WAN's shift-8 schedule the last 10 % of the steps (3 of these 30). Where the noise shift sits on WAN is not measured yet: a Noise Shift Recorder + Plot with this estimator shows it; to act earlier, lower start on the classifier-free node (e.g. 0.2).
The strength sets itself (auto): {AUTO_RULE}
{_strength()}
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
NOTE_WAN22_A14B = f"""WAN 2.2 A14B: a high-noise and a low-noise expert (both WAN 2.1-architecture models on Wan21 latents), sampled by two KSamplerAdvanced (steps 0-10, then 10-20), as in ComfyUI's template. One estimator (python -m training estimator -c training/configs/wan21_estimator.toml) serves both; each expert has its own Noise Awareness Guidance (any checkpoint) node.
Window: signal 0.5 -> 1, so NAG acts in the low-noise expert's last 2 steps only; every step of the high-noise expert is noisier, so its node stays idle (and costs nothing). To act there, use the classifier-free node and lower its start.
The strength sets itself (auto): {AUTO_RULE}
{_strength()}
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
NOTE_WAN22_5B = f"""WAN 2.2 TI2V-5B: its own 48-channel latent space (the Wan 2.2 VAE), so its own estimator (python -m training estimator on WAN 2.2 5B latents); a Wan21 estimator is refused in one line. Wan22ImageToVideoLatent as in ComfyUI's template: connect a start image for image-to-video.
Noise Awareness Guidance (any checkpoint); its window (signal 0.5 -> 1) covers the last 10 % of the steps on this shift-8 schedule.
The strength sets itself (auto): {AUTO_RULE}
{_strength()}
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
NOTE_QWEN_IMAGE = f"""Qwen-Image: ComfyUI hands its latents over as one-frame video latents [B, 16, 1, H, W] of the WAN 2.1 VAE, so a Qwen-Image estimator (python -m training estimator -c training/configs/qwen_image_estimator.toml) and a WAN 2.1 one both fit; the null branch weights the levels by Qwen-Image's own training schedule either way.
ModelSamplingAuraFlow 3.1 and cfg 2.5 as in ComfyUI's template; the window of Noise Awareness Guidance (any checkpoint), signal 0.5 -> 1, covers the last 4 of 20 steps.
The strength sets itself (auto): {AUTO_RULE}
{_strength()}
{ESTIMATOR_FILE}
{ANY_CHECKPOINT}"""
WAN_NEGATIVE = "static, blurry, low quality, jpeg artifacts, deformed, extra limbs, cluttered background"


def _stock_loaders(unets, clip, clip_type, vae, estimator, note):
    """Column 0 of the video and Qwen-Image workflows: ComfyUI's stock loaders (``unets``: nodes, or one file name), the
    estimator loader and the note."""
    unets = [{"id": 1, "type": "UNETLoader", "col": 0, "widgets": {"unet_name": unets}}] if isinstance(unets, str) else unets
    return [*unets,
            {"id": 12, "type": "CLIPLoader", "col": 0, "widgets": {"clip_name": clip, "type": clip_type}},
            {"id": 13, "type": "VAELoader", "col": 0, "widgets": {"vae_name": vae}},
            {"id": 5, "type": "NoiseAwarenessEstimatorLoader", "col": 0, "widgets": {"estimator_name": estimator}}, note]


def _video_prompts(text, negative=WAN_NEGATIVE):
    return [{**PROMPTS[0], "widgets": {"text": text}, "links": {"clip": (12, 0)}},
            {**PROMPTS[1], "widgets": {"text": negative}, "links": {"clip": (12, 0)}}]


def _any_checkpoint(nid, model, col, title=None):
    """Noise Awareness Guidance (any checkpoint) on ``model``, with the estimator loader (id 5) wired to it."""
    n = {"id": nid, "type": "NoiseAwarenessGuidanceAnyCheckpoint", "col": col, "widgets": {"strength": 1.0},
         "links": {"model": model, "estimator": (5, 0)}}
    return {**n, "title": title} if title else n


def _decode_video(sampler_id, col, prefix, fps=16.0):
    return [{"id": 8, "type": "VAEDecode", "col": col, "links": {"samples": (sampler_id, 0), "vae": (13, 0)}},
            {"id": 9, "type": "SaveAnimatedWEBP", "col": col, "size": [300, 330],
             "widgets": {"filename_prefix": prefix, "fps": fps, "lossless": False, "quality": 90}, "links": {"images": (8, 0)}}]


FOX = "a fox running through a snowy forest at dawn, tracking shot, cinematic"
SPECS_VIDEO = {
    "WAN 2.1 text-to-video - classifier-free with an estimator": [
        *_stock_loaders(WAN21_UNET, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "wan_2.1_vae.safetensors",
                        "wan21_noise_estimator.safetensors", _note(NOTE_WAN21, height=370)),
        *_video_prompts(FOX),
        {"id": 4, "type": "EmptyHunyuanLatentVideo", "col": 1, "widgets": {"width": 832, "height": 480, "length": 33}},
        {"id": 6, "type": "ModelSamplingSD3", "col": 2, "widgets": {"shift": 8.0}, "links": {"model": (1, 0)}},
        _any_checkpoint(17, (6, 0), 2),
        {**_ksampler((17, 0), 3, steps=30), "widgets": {"seed": 42, "steps": 30, "cfg": 6.0, "sampler_name": "uni_pc",
                                                         "scheduler": "simple"}},
        *_decode_video(7, 3, "wan21")],
    "WAN 2.2 A14B text-to-video - estimator, NAG on both experts": [
        *_stock_loaders([{"id": 1, "type": "UNETLoader", "col": 0, "widgets": {"unet_name": WAN22_HIGH_UNET},
                          "title": "Load Diffusion Model (high noise)"},
                         {"id": 11, "type": "UNETLoader", "col": 0, "widgets": {"unet_name": WAN22_LOW_UNET},
                          "title": "Load Diffusion Model (low noise)"}],
                        "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "wan_2.1_vae.safetensors",
                        "wan21_noise_estimator.safetensors", _note(NOTE_WAN22_A14B, height=370)),
        *_video_prompts(FOX),
        {"id": 4, "type": "EmptyHunyuanLatentVideo", "col": 1, "widgets": {"width": 640, "height": 640, "length": 81}},
        {"id": 6, "type": "ModelSamplingSD3", "col": 2, "widgets": {"shift": 8.0}, "links": {"model": (1, 0)},
         "title": "ModelSamplingSD3 (high noise)"},
        _any_checkpoint(17, (6, 0), 2, "Noise Awareness Guidance (high noise)"),
        {"id": 14, "type": "ModelSamplingSD3", "col": 2, "widgets": {"shift": 8.0}, "links": {"model": (11, 0)},
         "title": "ModelSamplingSD3 (low noise)"},
        _any_checkpoint(18, (14, 0), 2, "Noise Awareness Guidance (low noise)"),
        {"id": 7, "type": "KSamplerAdvanced", "col": 3, "title": "KSamplerAdvanced (high noise)",
         "widgets": {"add_noise": "enable", "noise_seed": 42, "steps": 20, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple",
                     "start_at_step": 0, "end_at_step": 10, "return_with_leftover_noise": "enable"},
         "links": {"model": (17, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 15, "type": "KSamplerAdvanced", "col": 3, "title": "KSamplerAdvanced (low noise)",
         "widgets": {"add_noise": "disable", "noise_seed": 0, "steps": 20, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple",
                     "start_at_step": 10, "end_at_step": 10000, "return_with_leftover_noise": "disable"},
         "links": {"model": (18, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (7, 0)}},
        *_decode_video(15, 4, "wan22_a14b")],
    "WAN 2.2 5B text-to-video - classifier-free with an estimator": [
        *_stock_loaders(WAN22_5B_UNET, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "wan2.2_vae.safetensors",
                        "wan22_5b_noise_estimator.safetensors", _note(NOTE_WAN22_5B, height=330)),
        *_video_prompts(FOX),
        {"id": 4, "type": "Wan22ImageToVideoLatent", "col": 1, "widgets": {"width": 1280, "height": 704, "length": 121},
         "links": {"vae": (13, 0)}},
        {"id": 6, "type": "ModelSamplingSD3", "col": 2, "widgets": {"shift": 8.0}, "links": {"model": (1, 0)}},
        _any_checkpoint(17, (6, 0), 2),
        {**_ksampler((17, 0), 3), "widgets": {"seed": 42, "steps": 20, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple"}},
        *_decode_video(7, 3, "wan22_5b", fps=24.0)],
    "Qwen-Image - classifier-free with an estimator": [
        *_stock_loaders(QWEN_IMAGE_UNET, "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "qwen_image_vae.safetensors",
                        "qwen_image_noise_estimator.safetensors", _note(NOTE_QWEN_IMAGE, height=360)),
        *_video_prompts("a red fox in the snow, a wooden sign reading \"Noise Awareness\", detailed photo", ""),
        {"id": 4, "type": "EmptySD3LatentImage", "col": 1, "widgets": {"width": 1328, "height": 1328, "batch_size": 1}},
        {"id": 6, "type": "ModelSamplingAuraFlow", "col": 2, "widgets": {"shift": 3.1}, "links": {"model": (1, 0)}},
        _any_checkpoint(17, (6, 0), 2),
        {**_ksampler((17, 0), 3), "widgets": {"seed": 42, "steps": 20, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple"}},
        {"id": 8, "type": "VAEDecode", "col": 3, "links": {"samples": (7, 0), "vae": (13, 0)}},
        {"id": 9, "type": "SaveImage", "col": 3, "size": [260, 280], "widgets": {"filename_prefix": "qwen_image_noise_awareness"},
         "links": {"images": (8, 0)}}],
}

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
        _note(NOTE_CG, height=290), *PROMPTS, _latent(size=1024),
        {"id": 6, "type": "NoiseAwarenessGuidanceClassifierGuided", "col": 2,
         "widgets": {"scale": 1.0, "scale_rule": "auto (from estimator)"},
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
        _note(NOTE_CF_ESTIMATOR, height=320), *PROMPTS, _latent(size=1024),
        _any_checkpoint(6, (1, 0), 2),
        _ksampler((6, 0), 2),
        *_decode_save(7, 3, "noise_awareness")],
    "Classifier-free with an estimator - any SD3 or Flux checkpoint": [
        {"id": 1, "type": "CheckpointLoaderSimple", "col": 0, "widgets": {"ckpt_name": "sd3.5_medium.safetensors"}},
        {"id": 5, "type": "NoiseAwarenessEstimatorLoader", "col": 0, "widgets": {"estimator_name": "sd3_noise_estimator.safetensors"}},
        _note(NOTE_CF_ESTIMATOR_FLOW, height=330), *PROMPTS, _latent("EmptySD3LatentImage", 1024),
        _any_checkpoint(6, (1, 0), 2),
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
    **SPECS_VIDEO,
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
