"""Every NAG entry point on models whose latents are 5-D [B, C, T, H, W] (in process, tiny seeded models of ComfyUI's
own detection): WAN 2.1, WAN 2.2 TI2V-5B, the WAN 2.2 A14B pair (two WAN 2.1-architecture experts sampled with
KSamplerAdvanced step ranges), Qwen-Image (one frame) and HunyuanVideo.

Each entry point runs, differs from plain sampling, and at scale 0 is plain sampling bit for bit at no extra forward;
estimators for another latent space, channel count or dimensionality are refused in one line naming both; the null
branch's training levels come from the diffusion model's family.  Run with ComfyUI's Python (skips loudly elsewhere).
"""
from __future__ import annotations

import pytest

from comfy_support import comfy_or_skip

comfy_or_skip()

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

from comfy_support import (VIDEO_LATENTS, ForwardSpy, Reads, conditioning, load_pack, patcher, tiny_hunyuan_video_model,  # noqa: E402
                          tiny_qwen_image_model, tiny_sd3_model, tiny_wan21_model, tiny_wan22_5b_model)

pack = load_pack()
from comfy_nag_pack_under_test.comfy_nag import families  # noqa: E402
from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator, training_log_prior  # noqa: E402
from comfy_nag_pack_under_test.nodes import guidance_nodes, null_branch, shift_nodes  # noqa: E402

STEPS = 4
FAMILIES = ("wan21", "wan22-5b", "qwen-image", "hunyuan-video")
MAKE = {"wan21": tiny_wan21_model, "wan22-5b": tiny_wan22_5b_model, "qwen-image": tiny_qwen_image_model,
        "hunyuan-video": tiny_hunyuan_video_model}
SHAPES = {**VIDEO_LATENTS, "hunyuan-video": (1, 16, 2, 8, 8)}
COND = {"wan21": "wan", "wan22-5b": "wan", "qwen-image": "wan", "hunyuan-video": "hunyuan_video"}
NULL = {"wan21": -1000.0, "wan22-5b": -1000.0, "qwen-image": -1.0, "hunyuan-video": -1000.0}  # network units
# The tiny runs' 4 steps lie above the default window's noise level on these schedules (docs/comfyui.md): NAG on all
EVERYWHERE = {"window_unit": "percent", "start": 0.0, "end": 1.0}
NAG = {"variant": "A", **EVERYWHERE, "null_timestep_source": "auto", "null_timestep": -1000.0}
FROM_ESTIMATOR = "from estimator"
# one estimator file per latent space; Qwen-Image's is an image estimator (its latents have one frame)
ESTIMATORS = {"wan21": (16, 2, 8, 8), "wan22-5b": (48, 2, 8, 8), "qwen-image": (16, 8, 8), "hunyuan-video": (16, 2, 8, 8),
              "sd1": (4, 8, 8)}


@pytest.fixture(scope="module")
def models():
    return {fam: patcher(MAKE[fam](0)) for fam in FAMILIES}


def save_estimator(path, shape, meta=None, schedule=None):
    torch.manual_seed(len(shape) + shape[0])
    NoiseLevelEstimator(shape, LevelBins(-10, 10, 16), width=16, depth=2).save(path, schedule, meta or {})
    with torch.inference_mode(False):
        est, meta = NoiseLevelEstimator.load(path)
    return est.eval().requires_grad_(False), meta


@pytest.fixture(scope="module")
def estimators(tmp_path_factory):
    """Small real estimators saved with their family and its schedule, loaded as the loader node does."""
    d = tmp_path_factory.mktemp("video_estimators")
    return {fam: save_estimator(d / f"{fam}.safetensors", shape, {"nag.family": fam}, families.family(fam).schedule)
            for fam, shape in ESTIMATORS.items()}


def latent_of(fam):
    return torch.zeros(SHAPES[fam])


def sample(model, fam, cfg=3.0, steps=STEPS, latent=None):
    latent = latent_of(fam) if latent is None else latent
    pos, neg = conditioning(COND[fam], 1), conditioning(COND[fam], 2)
    with torch.inference_mode():
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), steps, cfg, "euler", "simple", pos, neg,
                                   latent, seed=0, disable_pbar=True)


def cf(model, scale, **kw):
    return guidance_nodes.NoiseAwarenessClassifierFree.execute(model, **{**NAG, "scale": scale, "batched": True, **kw}).result[0]


def cg(model, estimator, scale):
    return guidance_nodes.NoiseAwarenessClassifierGuided.execute(model, estimator=estimator, scale=scale, **EVERYWHERE).result[0]



def differs(a, b):
    return torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("fam", FAMILIES)
def test_classifier_free_learned_null_branch(models, fam):
    m = models[fam]
    plain = sample(m, fam)
    with ForwardSpy(m) as spy:
        out = sample(cf(m, 1.0), fam)
    assert differs(out, plain)
    assert spy.null_rows(NULL[fam]) == [1.0] * STEPS and [t.shape[0] for t, _ in spy.calls] == [3] * STEPS  # one forward
    with ForwardSpy(m) as spy:
        off = cf(m, 0.0)
        assert off is m and torch.equal(sample(off, fam), plain)
    assert [t.shape[0] for t, _ in spy.calls] == [2] * STEPS


@pytest.mark.parametrize("fam", FAMILIES)
def test_classifier_free_null_branch_from_an_estimator(models, estimators, fam):
    """Two levels per step in the batched forward (4 rows), equal to the unbatched path; scale 0: plain, never read."""
    m, est = models[fam], estimators[fam]
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": est, "levels": 2}
    plain = sample(m, fam)
    with ForwardSpy(m) as spy, Reads(est[0]) as reads:
        out = sample(cf(m, 1.0, **nb), fam)
    assert differs(out, plain) and reads.n == STEPS
    assert [t.shape[0] for t, _ in spy.calls] == [4] * STEPS and spy.null_rows(NULL[fam]) == [0.0] * STEPS
    assert torch.allclose(out, sample(cf(m, 1.0, batched=False, **nb), fam), atol=1e-5)
    with ForwardSpy(m) as spy, Reads(est[0]) as reads:
        off = cf(m, 0.0, **nb)
        assert off is m and torch.equal(sample(off, fam), plain)
    assert reads.n == 0 and [t.shape[0] for t, _ in spy.calls] == [2] * STEPS


@pytest.mark.parametrize("fam", FAMILIES)
def test_classifier_guided(models, estimators, fam):
    m, est = models[fam], estimators[fam]
    plain = sample(m, fam)
    with Reads(est[0]) as reads:
        assert differs(sample(cg(m, est, 2.0), fam), plain)
    assert reads.n == STEPS
    with ForwardSpy(m) as spy:
        off = cg(m, est, 0.0)
        assert off is m and torch.equal(sample(off, fam), plain)
    assert [t.shape[0] for t, _ in spy.calls] == [2] * STEPS


def ksampler(model, fam, latent, scale=None, **nb):
    """The one-node sampler (``scale`` given), else ComfyUI's own KSampler body."""
    from nodes import common_ksampler

    args = {"seed": 0, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    pos, neg = conditioning(COND[fam], 1), conditioning(COND[fam], 2)
    with torch.inference_mode():
        if scale is None:
            return common_ksampler(model, 0, STEPS, 3.0, "euler", "simple", pos, neg, {"samples": latent})[0]["samples"]
        return guidance_nodes.NoiseAwarenessKSampler.execute(model, positive=pos, negative=neg, latent_image={"samples": latent},
                                                             **args, **NAG, scale=scale, **nb).result[0]["samples"]


@pytest.mark.parametrize("fam", FAMILIES)
def test_ksampler_node(models, estimators, fam):
    """The one-node sampler is the classifier-free patch + KSampler, bit for bit; scale 0 the plain KSampler.  Qwen-Image
    gets EmptySD3LatentImage's 4-D latent, which ComfyUI makes 5-D with one frame."""
    m = models[fam]
    latent = torch.zeros(1, 16, 8, 8) if fam == "qwen-image" else latent_of(fam)
    plain = ksampler(m, fam, latent)
    assert plain.dim() == 5
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": estimators[fam], "levels": 1}
    for extra in ({}, nb):
        one = ksampler(m, fam, latent, 1.5, **extra)
        assert torch.equal(one, ksampler(cf(m, 1.5, **extra), fam, latent)) and differs(one, plain)
        with ForwardSpy(m) as spy:
            assert torch.equal(ksampler(m, fam, latent, 0.0, **extra), plain)
        assert [t.shape[0] for t, _ in spy.calls] == [2] * STEPS


@pytest.mark.parametrize("fam", FAMILIES)
def test_guider(models, fam):
    m = models[fam]
    latent = latent_of(fam)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)

    def run(scale, batching="one forward"):
        g = guidance_nodes.NoiseAwarenessCFGuider.execute(m, positive=conditioning(COND[fam], 1),
                                                          negative=conditioning(COND[fam], 2), cfg=3.0, batching=batching,
                                                          **NAG, scale=scale).result[0]
        with torch.inference_mode():
            return g.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"), sigmas,
                            seed=0, disable_pbar=True)

    plain = sample(m, fam)
    with ForwardSpy(m) as spy:
        out = run(1.0)
    assert spy.null_rows(NULL[fam]) == [1.0] * STEPS and len(spy.calls) == STEPS
    assert torch.allclose(out, sample(cf(m, 1.0), fam), atol=1e-5) and differs(out, plain)
    assert torch.allclose(run(1.0, "each branch separately"), out, atol=1e-5)
    with ForwardSpy(m) as spy:
        assert torch.equal(run(0.0), plain)
    assert [t.shape[0] for t, _ in spy.calls] == [2] * STEPS


@pytest.mark.parametrize("fam", FAMILIES)
def test_noise_shift_recorder_and_plot(models, estimators, fam, tmp_path):
    """With and without an estimator: the recorder changes nothing, records every step's nominal and estimated level,
    and the plot node draws both runs and reports them."""
    import json

    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path))
    m = models[fam]
    plain = sample(m, fam)
    traces = []
    for est in (None, estimators[fam]):
        patched, trace = shift_nodes.NoiseAwarenessShiftRecorder.execute(m, 1.0, est).result
        out = sample(cf(patched, 1.0) if est is None else patched, fam)
        assert torch.equal(out, sample(cf(m, 1.0), fam) if est is None else plain)
        assert len(trace.last) == STEPS
        traces.append((trace, out))
    res = shift_nodes.NoiseAwarenessShiftPlot.execute(traces[0][0], {"samples": traces[0][1]}, "variance",
                                                      traces[1][0], {"samples": traces[1][1]}, "estimator")
    image, text = res.result
    assert image.dim() == 4 and image.shape[-1] == 3 and res.ui["images"]
    runs = json.loads(text)["runs"]
    assert [r["label"] for r in runs] == ["variance", "estimator"]
    assert all(r["step"] == list(range(STEPS)) and None not in r["estimated_mean"] for r in runs)
    assert runs[0]["estimated_mean"] != runs[1]["estimated_mean"] and runs[0]["window_steps"] == [0, STEPS - 1]


def a14b(high, low, steps=STEPS, switch=2):
    """WAN 2.2 A14B as ComfyUI's template runs it: the high-noise expert for the first steps (leftover noise returned),
    the low-noise expert for the rest, two KSamplerAdvanced calls."""
    from nodes import KSamplerAdvanced

    common = {"noise_seed": 0, "steps": steps, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple",
              "positive": conditioning("wan", 1), "negative": conditioning("wan", 2)}
    with torch.inference_mode():
        mid = KSamplerAdvanced().sample(high, "enable", latent_image={"samples": latent_of("wan21")}, start_at_step=0,
                                        end_at_step=switch, return_with_leftover_noise="enable", **common)[0]
        return KSamplerAdvanced().sample(low, "disable", latent_image=mid, start_at_step=switch, end_at_step=10000,
                                         return_with_leftover_noise="disable", **common)[0]["samples"]


def test_wan22_a14b_pair_one_estimator_nag_on_both_experts(estimators):
    """One Wan21 estimator serves both experts; each expert carries its own classifier-free patch, batched in its own
    forwards; scale 0 on both is the plain pair bit for bit.  With the default window (signal 0.5 -> 1) at 20 steps NAG
    acts only in the low-noise expert's last two steps: the high-noise expert's steps are all noisier."""
    high, low = patcher(tiny_wan21_model(0)), patcher(tiny_wan21_model(1))
    est = estimators["wan21"]
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": est, "levels": 1}
    plain = a14b(high, low)
    with ForwardSpy(high) as hs, ForwardSpy(low) as ls, Reads(est[0]) as reads:
        out = a14b(cf(high, 1.0, **nb), cf(low, 1.0, **nb))
    assert differs(out, plain) and reads.n == STEPS
    assert [t.shape[0] for t, _ in hs.calls] == [3, 3] and [t.shape[0] for t, _ in ls.calls] == [3, 3]
    with ForwardSpy(high) as hs, ForwardSpy(low) as ls:
        assert torch.equal(a14b(cf(high, 0.0, **nb), cf(low, 0.0, **nb)), plain)
    assert [t.shape[0] for t, _ in hs.calls + ls.calls] == [2] * STEPS
    default = {**nb, "window_unit": "signal", "start": 0.5, "end": 1.0}
    with ForwardSpy(high) as hs, ForwardSpy(low) as ls:
        a14b(cf(high, 1.0, **default), cf(low, 1.0, **default), steps=20, switch=10)
    assert [t.shape[0] for t, _ in hs.calls] == [2] * 10 and [t.shape[0] for t, _ in ls.calls] == [2] * 8 + [3] * 2


@pytest.mark.parametrize("fam, steps_in_window", [("wan21", 2), ("wan22-5b", 2), ("qwen-image", 4), ("hunyuan-video", 2)])
def test_default_window_on_video_schedules(models, fam, steps_in_window):
    """The default window (signal 0.5 -> 1, log-SNR >= 0: sigma <= 0.5 on these flow models) over ComfyUI's own 20-step
    'simple' schedule: the last 2 steps on WAN (shift 8) and HunyuanVideo (shift 7), 4 on Qwen-Image (Flux-style mu
    1.15); the table in docs/comfyui.md (benchmarks/window_table.py)."""
    m = models[fam]
    sig = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", 20)[:-1]
    assert sum(float(s) <= 0.5 for s in sig) == steps_in_window
    with ForwardSpy(m) as spy:
        sample(cf(m, 1.0, window_unit="signal", start=0.5, end=1.0), fam, steps=20)
    assert [t.shape[0] for t, _ in spy.calls] == [2] * (20 - steps_in_window) + [3] * steps_in_window


def test_estimators_for_another_latent_space_or_dimensionality_give_one_line(models, estimators, tmp_path):
    """A mismatch in latent format, channels or dimensionality: one line naming both latents and the fix, from the
    classifier-free node (from estimator), the classifier-guided node and the recorder alike.  Qwen-Image reads both the
    WAN 2.1 video estimator and an image one (its latents have one frame)."""
    sd3 = patcher(tiny_sd3_model(0))
    bare48 = save_estimator(tmp_path / "bare48.safetensors", (48, 2, 8, 8))
    bare16 = save_estimator(tmp_path / "bare16.safetensors", (16, 2, 8, 8))
    wan21 = "Wan21 video latents [B, 16, T, H, W] (families wan21, qwen-image)"
    fix = "; load an estimator trained on {} latents (`python -m training estimator` on this model family)"
    cases = [
        (models["wan21"], estimators["sd1"], "SD15 image latents [B, 4, H, W] (families sd1, sd2, sd2-v)", wan21, "Wan21"),
        (models["wan21"], estimators["wan22-5b"], "Wan22 video latents [B, 48, T, H, W] (families wan22-5b)", wan21, "Wan21"),
        (models["wan21"], estimators["qwen-image"], "Wan21 image latents [B, 16, H, W] (families wan21, qwen-image)", wan21,
         "Wan21"),
        (models["wan21"], bare48, "video latents [B, 48, T, H, W]", wan21, "Wan21"),
        (models["wan22-5b"], estimators["wan21"], "Wan21 video latents [B, 16, T, H, W] (families wan21, qwen-image)",
         "Wan22 video latents [B, 48, T, H, W] (families wan22-5b)", "Wan22"),
        (models["hunyuan-video"], estimators["wan21"], "Wan21 video latents [B, 16, T, H, W] (families wan21, qwen-image)",
         "HunyuanVideo video latents [B, 16, T, H, W] (families hunyuan-video)", "HunyuanVideo"),
        (models["qwen-image"], estimators["sd1"], "SD15 image latents [B, 4, H, W] (families sd1, sd2, sd2-v)",
         "Wan21 latents with one frame [B, 16, 1, H, W] (families wan21, qwen-image)", "Wan21"),
        (sd3, bare16, "video latents [B, 16, T, H, W]", "SD3 image latents [B, 16, H, W] (families sd3)", "SD3"),
    ]
    for model, est, theirs, ours, fmt in cases:
        want = f"Noise Awareness: the noise-level estimator was trained on {theirs} but this model uses {ours}" + fix.format(fmt)
        for run in (lambda: cf(model, 1.0, null_branch=FROM_ESTIMATOR, estimator=est), lambda: cg(model, est, 1.0),
                    lambda: shift_nodes.NoiseAwarenessShiftRecorder.execute(model, 1.0, est)):
            with pytest.raises(ValueError) as e:
                run()
            assert str(e.value) == want
    for est in (estimators["wan21"], estimators["qwen-image"], bare16):  # one estimator serves WAN 2.1 and Qwen-Image
        out = sample(cf(models["qwen-image"], 1.0, null_branch=FROM_ESTIMATOR, estimator=est), "qwen-image")
        assert torch.isfinite(out).all() and cg(models["qwen-image"], est, 1.0) is not models["qwen-image"]


def test_null_branch_training_levels_come_from_the_models_family(models, estimators, caplog):
    """WAN 2.1 and Qwen-Image share the Wan21 latent space (one estimator serves both) but were trained on different
    levels: the null branch's prior is the diffusion model's family's, whatever schedule the estimator's file declares;
    without a known family the file's schedule, else its family's, else uniform with a log line (a model of no
    registered family: test_comfyui_sampling.py's test_from_estimator_errors_and_log_lines)."""
    import logging

    est, meta = estimators["wan21"]  # declares family wan21 and its schedule
    prior = {fam: null_branch.estimator_null(models[fam], (est, meta), 1).log_prior for fam in ("wan21", "qwen-image")}
    for fam, p in prior.items():
        assert torch.equal(p, training_log_prior(families.family(fam).schedule, est.bins)), fam
    assert not torch.allclose(prior["wan21"], prior["qwen-image"])
    with caplog.at_level(logging.INFO, logger="comfy-nag"):
        assert torch.equal(null_branch.estimator_log_prior(est, meta), prior["wan21"])  # no model: the file's schedule
        assert torch.equal(null_branch.estimator_log_prior(est, {"nag.family": "qwen-image"}), prior["qwen-image"])
        assert not caplog.records
        assert null_branch.estimator_log_prior(est, {}) is None
    assert [r.getMessage() for r in caplog.records if "uniform prior" in r.getMessage()]


def test_the_docs_window_table_is_the_benchmarks_output():
    """docs/comfyui.md's window table is what benchmarks/window_table.py prints for this ComfyUI."""
    import sys

    import comfy_support as cs

    sys.path.insert(0, str(cs.PACK_ROOT / "benchmarks"))
    try:
        import window_table
    finally:
        sys.path.remove(str(cs.PACK_ROOT / "benchmarks"))
    docs = (cs.PACK_ROOT / "docs" / "comfyui.md").read_text()
    block = docs.split("<!-- window-table:start -->")[1].split("<!-- window-table:end -->")[0].strip()
    assert block.splitlines() == window_table.table(cs, 20)
