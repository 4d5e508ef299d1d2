"""NAG inside real ComfyUI sampling (in-process, tiny seeded models; run with the ComfyUI venv).

Asserts on the network's inputs (a forward pre-hook on the diffusion network records the
timesteps every forward receives), not just on outputs changing.
"""
from __future__ import annotations

import pytest

from comfy_support import comfy_or_skip

comfy_or_skip()

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.model_sampling  # noqa: E402

from comfy_support import (VIDEO_LATENTS, ForwardSpy, Reads, conditioning, load_pack, patcher, tiny_flux_model,  # noqa: E402
                          tiny_hunyuan_video_model, tiny_lumina2_model, tiny_qwen_image_model, tiny_sd15_model, tiny_sd3_model,
                          tiny_unet_model, tiny_wan21_model, tiny_wan22_5b_model)

pack = load_pack()
from comfy_nag_pack_under_test.nodes import guidance_nodes, model_info, shift_nodes  # noqa: E402

STEPS = 4
SHAPES = {"sd3": (1, 16, 8, 8), "eps": (1, 4, 8, 8), "v": (1, 4, 8, 8), "flux": (1, 16, 8, 8), **VIDEO_LATENTS,
          "hunyuan-video": (1, 16, 2, 8, 8), "lumina2": (1, 16, 8, 8), "chroma": (1, 16, 8, 8), "hidream": (1, 16, 8, 8)}
COND = {"sd3": "sd3", "flux": "flux", "eps": "unet", "v": "unet", "wan21": "wan", "wan22-5b": "wan", "qwen-image": "wan",
        "hunyuan-video": "hunyuan_video", "lumina2": "lumina2", "chroma": "chroma", "hidream": "hidream"}
TINY = {"sd3": tiny_sd3_model, "flux": tiny_flux_model, "wan21": tiny_wan21_model, "wan22-5b": tiny_wan22_5b_model,
        "qwen-image": tiny_qwen_image_model, "hunyuan-video": tiny_hunyuan_video_model, "lumina2": tiny_lumina2_model}


@pytest.fixture(scope="module")
def models():
    return {"sd3": patcher(tiny_sd3_model(0)), "eps": patcher(tiny_unet_model("eps", 1)), "v": patcher(tiny_unet_model("v", 2))}


class Spy:
    """Records (timesteps, cond_or_uncond) of every forward of the diffusion network."""

    def __init__(self, model):
        self.calls = []
        net = model.model.diffusion_model
        self.h = net.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, mod, args, kwargs):
        to = kwargs.get("transformer_options", {})
        self.calls.append((args[1].detach().clone().float(), list(to.get("cond_or_uncond", []))))

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.h.remove()


def sample(model, fam, cfg=3.0, seed=0, steps=STEPS, sampler="euler"):
    latent = torch.zeros(SHAPES[fam])
    noise = comfy.sample.prepare_noise(latent, seed)
    pos, neg = conditioning(COND[fam], 1), conditioning(COND[fam], 2)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", pos, neg, latent, seed=seed, disable_pbar=True)


def cf(model, scale=1.0, variant="A", start=0.0, end=1.0, unit="percent", source="auto", null=-1000.0, batched=True,
       rule="constant", **null_branch):
    """The classifier-free node; ``null_branch``: its optional null_branch/estimator/levels inputs."""
    return guidance_nodes.NoiseAwarenessClassifierFree.execute(
        model, scale=scale, variant=variant, window_unit=unit, start=start, end=end, null_timestep_source=source,
        null_timestep=null, batched=batched, scale_rule=rule, **null_branch).result[0]


NAG_WIDGETS = {"variant": "A", "window_unit": "percent", "start": 0.0, "end": 1.0, "null_timestep_source": "auto"}
BATCHING = ["one forward", "cond+uncond, then null", "each branch separately"]


def guider(model, positive, negative, cfg, batching, **nag):
    """The guider node (NAG widgets as NAG_WIDGETS, null timestep 0, unless given)."""
    return guidance_nodes.NoiseAwarenessCFGuider.execute(model, positive=positive, negative=negative, cfg=cfg,
                                                        batching=batching, **{**NAG_WIDGETS, "null_timestep": 0.0, **nag}
                                                        ).result[0]


def classifier_guided(model, estimator, scale, **window):
    return guidance_nodes.NoiseAwarenessClassifierGuided.execute(
        model, estimator=estimator, scale=scale, **{"window_unit": "percent", "start": 0.0, "end": 1.0, **window}).result[0]


def expected_null(model):
    kind, mult, _ = model_info.sampling(model)
    return {"discrete": -1000.0, "discrete_flow": -1.0 * mult, "flux": -1.0}[kind.value]


def null_rows(calls, null):
    return [(t == null).float().sum().item() for t, _ in calls]


def test_scale_zero_is_bit_identical_and_adds_no_forward(models):
    for fam, m in models.items():
        base = sample(m, fam)
        patched = cf(m, scale=0.0)
        with Spy(m) as spy:
            out = sample(patched, fam)
        assert torch.equal(out, base), fam
        assert len(spy.calls) == STEPS and all(t.shape[0] == 2 for t, _ in spy.calls), fam


@pytest.mark.parametrize("fam", ["sd3", "eps", "v", "flux"])
def test_null_timestep_reaches_network_batched(models, fam):
    m = models[fam] if fam != "flux" else patcher(tiny_flux_model(3))
    null = expected_null(m)
    with Spy(m) as spy:
        out = sample(cf(m, 1.0), fam)
    assert torch.isfinite(out).all()
    assert len(spy.calls) == STEPS  # cond, uncond and null in ONE forward per step
    ms = m.get_model_object("model_sampling")
    for t, labels in spy.calls:
        assert sorted(labels) == [0, 1, 2] and t.shape[0] == 3
        null_row = labels.index(2)
        assert t[null_row].item() == null
        real = [t[i].item() for i in range(3) if i != null_row]
        assert real[0] == real[1] and real[0] > 0  # cond/uncond keep the nominal timestep
    assert float(ms.timestep(ms.sigma_max)) > 0


def test_batched_and_unbatched_agree_and_cfg1(models):
    for fam, m in models.items():
        a = sample(cf(m, 1.5, batched=True), fam)
        with Spy(m) as spy:
            b = sample(cf(m, 1.5, batched=False), fam)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (fam, (a - b).abs().max())
        assert len(spy.calls) == 2 * STEPS  # unbatched: one extra forward per step, all rows null
        assert null_rows(spy.calls, expected_null(m)).count(1.0) == STEPS
        with Spy(m) as spy:
            c1 = sample(cf(m, 1.5), fam, cfg=1.0)
        assert len(spy.calls) == STEPS and all(sorted(lab) == [0, 2] for _, lab in spy.calls)
        assert not torch.allclose(c1, sample(m, fam, cfg=1.0))


def test_variant_b_window_and_metadata_null(models):
    m = models["eps"]
    with Spy(m) as spy:
        sample(cf(m, 1.0, variant="B"), "eps")
    assert all(sorted(lab) == [0, 1, 2, 3] for _, lab in spy.calls)
    assert null_rows(spy.calls, -1000.0) == [2.0] * STEPS
    with Spy(m) as spy:
        sample(cf(m, 1.0, start=0.5, end=1.0), "eps")
    assert [len(lab) for _, lab in spy.calls] == [2, 2, 3, 3]  # NAG only in the second half
    tagged = m.clone()
    tagged.set_attachments(model_info.ATTACH_META, {"nag.null_timestep": "-321.0"})
    with Spy(m) as spy:
        sample(cf(tagged, 1.0), "eps")
    assert null_rows(spy.calls, -321.0) == [1.0] * STEPS
    with pytest.raises(ValueError, match="no comfy-nag metadata"):
        cf(m, 1.0, source="metadata")


@pytest.mark.parametrize("fam", ["eps", "sd3"])
def test_per_level_scale_rule_follows_the_files_profile(models, fam):
    """'per level (from file)': the scale times the file's nag.scale_profile at each sample's own log-SNR
    (a constant profile v is scale v; a step profile is a window at that level); without one, a clear error."""
    import json

    import comfy.samplers
    m = models[fam]
    per_level = "per level (from file)"

    def tagged(logsnr, value):
        t = m.clone()
        t.set_attachments(model_info.ATTACH_META, {"nag.scale_profile": json.dumps({"logsnr": logsnr, "value": value})})
        return t

    half = sample(cf(tagged([0.0], [0.5]), 2.0, rule=per_level), fam)
    assert torch.allclose(half, sample(cf(m, 1.0), fam), atol=1e-5)
    ms = m.get_model_object("model_sampling")
    sig = comfy.samplers.calculate_sigmas(ms, "simple", STEPS)
    lam = model_info.sampling(m).space.logsnr(sig[:STEPS].double())
    mid = float(lam[1] + lam[2]) / 2  # the profile switches on between the 2nd and 3rd step
    step = sample(cf(tagged([mid - 0.01, mid + 0.01], [0.0, 1.0]), 1.0, rule=per_level), fam)
    s_mid = float(sig[1] + sig[2]) / 2
    assert torch.allclose(step, sample(cf(m, 1.0, unit="sigma", start=s_mid, end=0.0), fam), atol=1e-5)
    assert not torch.allclose(step, sample(cf(m, 1.0), fam), atol=1e-4)
    with pytest.raises(ValueError, match="nag.scale_profile.*'constant'"):
        cf(m, 1.0, rule=per_level)
    g = guider(tagged([0.0], [0.5]), conditioning(COND[fam], 1), conditioning(COND[fam], 2), 3.0, "one forward",
               scale=2.0, scale_rule=per_level)
    latent = torch.zeros(SHAPES[fam])
    with torch.inference_mode():
        out = g.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"), sig, seed=0,
                       disable_pbar=True)
    assert torch.allclose(out, half, atol=1e-4)


def test_stacks_with_pag_and_lora(models):
    import comfy.lora
    import comfy.sd
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    m = models["eps"]
    key = "diffusion_model.middle_block.1.proj_in"
    w = m.model.diffusion_model.middle_block[1].proj_in.weight
    g = torch.Generator().manual_seed(5)
    lora = {f"{key}.lora_up.weight": torch.randn(w.shape[0], 2, generator=g),
            f"{key}.lora_down.weight": torch.randn(2, w.shape[1], generator=g)}
    lm, _ = comfy.sd.load_lora_for_models(m, None, lora, 1.0, 0.0)
    pag_node = PerturbedAttentionGuidance  # a V3 node from ComfyUI 0.3.6x on, V1 before
    pag = pag_node.execute(lm, 2.0).result[0] if hasattr(pag_node, "execute") else pag_node().patch(lm, 2.0)[0]
    stacked = cf(pag, 1.0)
    with Spy(m) as spy:
        out = sample(stacked, "eps")
    assert torch.isfinite(out).all()
    assert len(spy.calls) == 2 * STEPS  # batched cond/uncond/null + PAG's own forward
    assert null_rows(spy.calls, -1000.0).count(1.0) == STEPS
    assert not torch.allclose(out, sample(cf(lm, 1.0), "eps"))
    assert not torch.allclose(sample(cf(lm, 1.0), "eps"), sample(cf(m, 1.0), "eps"))


def ksampler_node(model, scale, denoise=1.0, seed=0, cfg=3.0):
    latent = {"samples": torch.zeros(SHAPES["eps"])}
    with torch.inference_mode():
        out = guidance_nodes.NoiseAwarenessKSampler.execute(
            model, seed=seed, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple",
            positive=conditioning("unet", 1), negative=conditioning("unet", 2), latent_image=latent, denoise=denoise,
            **NAG_WIDGETS, scale=scale, null_timestep=-1000.0).result[0]
    return out["samples"]


def plain_ksampler(model, denoise=1.0, seed=0, cfg=3.0):
    from nodes import common_ksampler

    with torch.inference_mode():
        return common_ksampler(model, seed, STEPS, cfg, "euler", "simple", conditioning("unet", 1), conditioning("unet", 2),
                               {"samples": torch.zeros(SHAPES["eps"])}, denoise=denoise)[0]["samples"]


def test_ksampler_node_is_the_cf_patch_plus_ksampler(models):
    m = models["eps"]
    with Spy(m) as spy:
        one = ksampler_node(m, 1.5)
    assert null_rows(spy.calls, -1000.0) == [1.0] * STEPS
    assert torch.equal(one, plain_ksampler(cf(m, 1.5)))
    assert not torch.equal(one, plain_ksampler(m))
    with Spy(m) as spy:
        off = ksampler_node(m, 0.0)
    assert torch.equal(off, plain_ksampler(m))  # scale 0: the plain KSampler, bit for bit, no extra rows
    assert len(spy.calls) == STEPS and all(t.shape[0] == 2 for t, _ in spy.calls)


def test_percent_window_counts_the_steps_actually_sampled(models):
    """denoise 0.5 samples the low-noise half; '0 -> 0.25' is its first quarter (steps 0-1, ends inclusive)."""
    m = models["eps"]
    latent = torch.randn(SHAPES["eps"], generator=torch.Generator().manual_seed(3))
    for start, end, want in [(0.0, 0.25, [3, 3, 2, 2]), (0.5, 1.0, [2, 2, 3, 3]), (0.0, 1.0, [3] * STEPS)]:
        with Spy(m) as spy, torch.inference_mode():
            comfy.sample.sample(cf(m, 1.0, start=start, end=end), comfy.sample.prepare_noise(latent, 0), STEPS, 3.0, "euler",
                                "normal", conditioning("unet", 1), conditioning("unet", 2), latent, denoise=0.5, seed=0,
                                disable_pbar=True)
        assert [len(lab) for _, lab in spy.calls] == want, (start, end)


def test_default_signal_window_is_one_noise_level_on_every_family(models):
    """The nodes' default window, signal 0.5 -> 1, is log-SNR >= 0: sigma <= 1 on eps/v models, <= 0.5 on flow
    models; NAG's null rows appear at exactly those steps of a 12-step schedule."""
    import comfy.samplers

    steps = 12
    for fam, edge in (("eps", 1.0), ("v", 1.0), ("sd3", 0.5)):
        m = models[fam]
        sig = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", steps)[:-1]
        want = [3 if float(s) <= edge else 2 for s in sig]
        assert 0 < want.count(3) < steps, fam  # the window starts inside the schedule
        with Spy(m) as spy:
            sample(cf(m, 1.0, start=0.5, end=1.0, unit="signal"), fam, steps=steps)
        assert [len(lab) for _, lab in spy.calls] == want, fam
    defaults = {i.id: i.default for i in guidance_nodes.NoiseAwarenessClassifierFree.define_schema().inputs
                if i.id in ("window_unit", "start", "end")}
    assert defaults == {"window_unit": "signal", "start": 0.5, "end": 1.0}


def test_guider_runs_other_packs_calc_cond_batch_function(models):
    """The guider honours ``sampler_calc_cond_batch_function`` for cond/uncond; null rows never go through it."""
    import comfy.samplers

    m = models["sd3"].clone()
    seen = []

    def hook(args):
        seen.append(len(args["conds"]))
        return comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"], args["model_options"])

    m.model_options["sampler_calc_cond_batch_function"] = hook
    pos, neg = conditioning("sd3", 1), conditioning("sd3", 2)
    latent = torch.zeros(SHAPES["sd3"])
    noise = comfy.sample.prepare_noise(latent, 0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)
    g = guider(m, pos, neg, 3.0, "one forward", scale=1.0)
    with torch.inference_mode(), Spy(m) as spy:
        out = g.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)
    assert seen == [2] * STEPS
    assert null_rows(spy.calls, -1000.0).count(1.0) == STEPS
    assert torch.allclose(out, sample(cf(models["sd3"], 1.0), "sd3"), atol=1e-4)


def test_guider_batching_modes_match_patch(models):
    import comfy.samplers

    m = models["sd3"]
    pos, neg = conditioning("sd3", 1), conditioning("sd3", 2)
    latent = torch.zeros(SHAPES["sd3"])
    noise = comfy.sample.prepare_noise(latent, 0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)
    outs = {}
    for mode in BATCHING:
        g = guider(m, pos, neg, 3.0, mode, scale=1.0)
        with torch.inference_mode(), Spy(m) as spy:
            outs[mode] = g.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)
        assert null_rows(spy.calls, -1000.0).count(1.0) == STEPS
        assert len(spy.calls) == {0: 1, 1: 2, 2: 3}[BATCHING.index(mode)] * STEPS
    ref = sample(cf(m, 1.0), "sd3")
    for mode, out in outs.items():
        assert torch.allclose(out, ref, atol=1e-4), (mode, (out - ref).abs().max())


def test_classifier_guided_gradient_in_inference_mode(models):
    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator

    m = models["sd3"]
    torch.manual_seed(0)
    est = NoiseLevelEstimator((16, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2)
    meta = {"nag.schedule": '{"type": "flow", "space": "flow"}'}
    node = guidance_nodes.NoiseAwarenessClassifierGuided
    out = sample(classifier_guided(m, (est, meta), 2.0), "sd3")
    assert torch.isfinite(out).all() and not torch.allclose(out, sample(m, "sd3"))
    assert torch.equal(sample(classifier_guided(m, (est, meta), 0.0), "sd3"), sample(m, "sd3"))
    bad = NoiseLevelEstimator((4, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2)
    with pytest.raises(ValueError, match="expects 4 latent channels but this model's latents have 16"):
        classifier_guided(m, (bad, {}), 1.0)
    with pytest.raises(ValueError, match="trained for SD1.x/SDXL-style"):
        classifier_guided(m, (est, {"nag.schedule": '{"type": "discrete_vp", "space": "ve"}'}), 1.0)


PREDICTIONS = {"EPS": "eps", "V_PREDICTION": "v", "FLOW": "velocity", "FLUX": "velocity"}


@pytest.mark.parametrize("make, name", [(tiny_sd15_model, "sd1"), (tiny_sd3_model, "sd3"), (tiny_flux_model, "flux"),
                                        (tiny_wan21_model, "wan21"), (tiny_wan22_5b_model, "wan22-5b"),
                                        (tiny_qwen_image_model, "qwen-image"), (tiny_hunyuan_video_model, "hunyuan-video"),
                                        (tiny_lumina2_model, "lumina2")])
def test_nodes_agree_with_the_family_registry(make, name):
    """The family ComfyUI's model config is registered as (comfy_nag.families) has the sampling space, the null
    timestep and the latent space the nodes derive from the ComfyUI model itself."""
    import comfy.samplers
    from comfy_nag_pack_under_test.comfy_nag import families

    m = patcher(make(0))
    fam = families.from_comfy_config(type(m.model.model_config).__name__, PREDICTIONS[m.model.model_type.name])
    assert fam is not None and fam.name == name, (type(m.model.model_config).__name__, fam)
    assert model_info.model_family(m) is fam
    assert model_info.sampling(m).space is fam.schedule.space
    auto = cf(m, 1.0, source="auto").get_attachment(model_info.ATTACH_CONFIG)["null_timestep"]  # no metadata: the default
    assert auto == fam.null_timestep == expected_null(m)
    assert model_info.latent_space(m) == (fam.latent_format, fam.latent_channels)
    assert model_info.latent_dims(m) == fam.latent_dims
    assert name in families.latent_space_families(model_info.latent_space(m)[0])
    if fam.schedule.space.value == "flow":  # the registry's schedule is ComfyUI's default sampling (shift, multiplier)
        ms = m.get_model_object("model_sampling")
        assert torch.allclose(comfy.samplers.calculate_sigmas(ms, "simple", 20).double(), fam.schedule.sigmas(20).double(),
                              atol=1e-4)


def test_mismatched_estimator_gives_one_line_naming_both_latent_spaces(models, tmp_path):
    """Wrong channels (with or without metadata) and right channels of another latent format (per the file's
    nag.latent_format / nag.family) each give one line naming both latent spaces and the fix, from the
    classifier-guided node and the recorder alike; a damaged nag.schedule names the key."""
    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.comfy_nag.schedules import DiscreteVP, Flow

    def saved(channels, name, schedule, **meta):
        est = NoiseLevelEstimator((channels, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2)
        est.save(tmp_path / f"{name}.safetensors", schedule, meta)
        return NoiseLevelEstimator.load(tmp_path / f"{name}.safetensors")

    fix = "load an estimator trained on SD3 latents (`python -m training estimator` on this model family)"
    cases = [
        (saved(4, "plain_4ch", Flow(shift=3.0)),
         f"the noise-level estimator expects 4 latent channels but this model's latents have 16 (SD3 latents; families "
         f"sd3); {fix}"),
        (saved(4, "sd1", DiscreteVP(), **{"nag.family": "sd1"}),  # no nag.latent_format: the family's, per the registry
         f"the noise-level estimator was trained on SD15 latents (4 channels; families sd1, sd2, sd2-v) but this model "
         f"uses SD3 latents (16 channels; families sd3); {fix}"),
        (saved(16, "flux", Flow(shift=3.0), **{"nag.family": "flux", "nag.latent_format": "Flux"}),
         f"the noise-level estimator was trained on Flux latents (16 channels; families flux, flux-schnell, lumina2) but "
         f"this model uses SD3 latents (16 channels; families sd3); {fix}"),
    ]
    m = models["sd3"]
    for estimator, want in cases:
        for run in (lambda: classifier_guided(m, estimator, 1.0),
                    lambda: shift_nodes.NoiseAwarenessShiftRecorder.execute(m, 1.0, estimator)):
            with pytest.raises(ValueError) as e:
                run()
            assert str(e.value) == "Noise Awareness: " + want
    right = saved(16, "sd3", Flow(shift=3.0), **{"nag.family": "sd3", "nag.latent_format": "SD3"})
    assert classifier_guided(m, right, 1.0) is not m
    est, meta = right
    with pytest.raises(ValueError, match="^Noise Awareness: metadata nag.schedule is damaged"):
        classifier_guided(m, (est, {**meta, "nag.schedule": "{"}), 1.0)


def test_clear_errors_unsupported_family_and_nan(models):
    m = models["eps"].clone()
    m.add_object_patch("model_sampling", comfy.model_sampling.ModelSamplingContinuousV(m.model.model_config))
    with pytest.raises(ValueError, match="model family not supported"):
        cf(m, 1.0)
    latent = torch.full(SHAPES["eps"], float("nan"))
    p = cf(models["eps"], 1.0)
    with pytest.raises(FloatingPointError, match="NaN/Inf"), torch.inference_mode():
        comfy.sample.sample(p, torch.zeros_like(latent), STEPS, 3.0, "euler", "simple", conditioning("unet", 1),
                            conditioning("unet", 2), latent, seed=0, disable_pbar=True)


def test_patch_works_with_sampler_custom_and_cfg_guider(models):
    """SamplerCustom (comfy.sample.sample_custom) and SamplerCustomAdvanced's stock CFGGuider."""
    import comfy.samplers

    m = models["v"]
    pos, neg = conditioning("unet", 1), conditioning("unet", 2)
    latent = torch.zeros(SHAPES["v"])
    noise = comfy.sample.prepare_noise(latent, 0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)
    sampler = comfy.samplers.sampler_object("euler")
    patched = cf(m, 1.0)
    with torch.inference_mode(), Spy(m) as spy:
        a = comfy.sample.sample_custom(patched, noise, 3.0, sampler, sigmas, pos, neg, latent, seed=0, disable_pbar=True)
    assert null_rows(spy.calls, -1000.0) == [1.0] * STEPS
    g = comfy.samplers.CFGGuider(patched)
    g.set_conds(pos, neg)
    g.set_cfg(3.0)
    with torch.inference_mode(), Spy(m) as spy:
        b = g.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True)
    assert null_rows(spy.calls, -1000.0) == [1.0] * STEPS
    assert torch.allclose(a, b.cpu(), atol=1e-5) and torch.allclose(a, sample(patched, "v"), atol=1e-5)


def test_controlnet_gives_null_rows_the_cond_rows_residuals(models):
    """Decision (docs/comfyui.md): a ControlNet is content conditioning, like the prompt, so the null branch
    keeps it unchanged: its residuals for the null rows are computed at the real timestep from the same
    input and hint, equal to the cond rows'; only the UNet's own noise condition gets the null timestep."""
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    from comfy_support import seed_weights

    net = ControlNet(image_size=32, in_channels=4, model_channels=32, hint_channels=3, num_res_blocks=[1, 1], channel_mult=[1, 2],
                     transformer_depth=[1, 1], context_dim=64, use_spatial_transformer=True, use_linear_in_transformer=True,
                     num_head_channels=16, legacy=False, transformer_depth_middle=1, operations=comfy.ops.disable_weight_init,
                     dtype=torch.float32)
    seed_weights(net, 4)
    seen = []
    net.register_forward_hook(lambda mod, args, kwargs, out: seen.append((kwargs["timesteps"].clone(), out)), with_kwargs=True)
    control = comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device()).set_cond_hint(torch.rand(1, 3, 64, 64), 1.0)
    m = models["eps"]
    pos = [[conditioning("unet", 1)[0][0], {"control": control}]]
    latent = torch.zeros(SHAPES["eps"])
    with Spy(m) as spy, torch.inference_mode():
        comfy.sample.sample(cf(m, 1.0), comfy.sample.prepare_noise(latent, 0), STEPS, 3.0, "euler", "simple", pos,
                            conditioning("unet", 2), latent, seed=0, disable_pbar=True)
    assert null_rows(spy.calls, -1000.0).count(1.0) == STEPS  # the UNet still gets the null timestep
    assert len(seen) == STEPS
    for t, out in seen:  # one ControlNet call per step for the cond row and its null copy (same control)
        assert t.shape[0] == 2 and (t > 0).all() and t[0] == t[1]
        residuals = [r for group in out.values() for r in group if r is not None]
        assert residuals and all(torch.equal(r[0], r[1]) for r in residuals)


# --- classifier-free NAG on any checkpoint: the null branch from a noise-level estimator -----------------------
FROM_ESTIMATOR = "from estimator"
EST_CHANNELS = {"eps": 4, "v": 4, "sd3": 16}


@pytest.fixture(scope="module")
def estimators(tmp_path_factory):
    """Small real estimators, saved with their schedule and family and loaded as the loader node does."""
    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.comfy_nag.schedules import DiscreteVP, Flow

    d = tmp_path_factory.mktemp("estimators")
    out = {}
    for name, channels, schedule, family in (("ve", 4, DiscreteVP(), "sd1"), ("flow", 16, Flow(shift=3.0), "sd3")):
        torch.manual_seed(channels)
        NoiseLevelEstimator((channels, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(
            d / f"{name}.safetensors", schedule, {"nag.family": family})
        with torch.inference_mode(False):
            est, meta = NoiseLevelEstimator.load(d / f"{name}.safetensors")
        out[name] = (est.eval().requires_grad_(False), meta)
    return out


def estimator_for(estimators, fam):
    return estimators["flow" if fam == "sd3" else "ve"]



def at_level(model, cond, x, sigma, level_sigma, model_options):
    """The conditional x0 at the network time of ``level_sigma`` [B], converted with the nominal ``sigma``: one
    direct ``calc_cond_batch`` call, with ComfyUI's own ``model_sampling.timestep`` of the level (scoped override)."""
    import comfy.samplers

    ms = model.model_sampling
    own, orig = "timestep" in ms.__dict__, ms.timestep
    ms.timestep = lambda s, *a, **k: orig(level_sigma.to(s.device), *a, **k)
    try:
        return comfy.samplers.calc_cond_batch(model, [cond], x, sigma, model_options)[0]
    finally:
        if own:
            ms.timestep = orig
        else:
            del ms.timestep


def reference_nag(model, estimator, scale, levels):
    """Classifier-free NAG (variant A) from the estimator, by another route: the plain model with a post-CFG
    function that reads the estimator on ComfyUI's network input, takes the levels (K = 1: the posterior mean
    under the training prior, by hand) and calls the conditional branch at each level directly."""
    from comfy_nag_pack_under_test.comfy_nag import metadata
    from comfy_nag_pack_under_test.comfy_nag.estimators import training_log_prior
    from comfy_nag_pack_under_test.comfy_nag.posterior_null import null_levels

    est, meta = estimator
    prior = training_log_prior(metadata.schedule(meta), est.bins)
    flow = model_info.sampling(model).space.value == "flow"

    def post_cfg(args):
        x, sigma, bm = args["input"], args["sigma"], args["model"]
        x_net = bm.model_sampling.calculate_input(sigma, x)
        if levels == 1:
            probs = torch.softmax(est(x_net) + prior, 1)
            lam, weight = (probs @ est.bins.centers())[:, None], torch.ones(x.shape[0], 1)
        else:
            lv = null_levels(est, x_net, levels, prior)
            lam, weight = lv.logsnr, lv.weight
        sig = torch.sigmoid(-lam / 2) if flow else torch.exp(-lam / 2)
        null = sum(weight[:, i].reshape(-1, 1, 1, 1) * at_level(bm, args["cond"], x, sigma, sig[:, i], args["model_options"])
                   for i in range(lam.shape[1]))
        return args["denoised"] + scale * (args["cond_denoised"] - null)

    m = model.clone()
    m.set_model_sampler_post_cfg_function(post_cfg)
    return m


@pytest.mark.parametrize("fam", ["eps", "sd3"])
def test_from_estimator_scale_zero_is_the_plain_model_and_never_reads_it(models, estimators, fam):
    m, est = models[fam], estimator_for(estimators, fam)
    base = sample(m, fam)
    with Reads(est[0]) as reads, Spy(m) as spy:
        patched = cf(m, 0.0, null_branch=FROM_ESTIMATOR, estimator=est, levels=3)
        out = sample(patched, fam)
    assert patched is m and torch.equal(out, base)
    assert reads.n == 0 and len(spy.calls) == STEPS and all(t.shape[0] == 2 for t, _ in spy.calls)


@pytest.mark.parametrize("fam, levels", [("eps", 1), ("v", 1), ("sd3", 1), ("eps", 3), ("sd3", 3)])
def test_from_estimator_equals_direct_calls_at_the_levels(models, estimators, fam, levels):
    """K = 1: CFG + w (cond - null), null = the conditional x0 at the posterior-mean level; K = 3: the weighted
    mixture of the conditional x0 at the three Gauss-Hermite levels; each level a separate direct ComfyUI call."""
    m, est = models[fam], estimator_for(estimators, fam)
    got = sample(cf(m, 10.0, null_branch=FROM_ESTIMATOR, estimator=est, levels=levels), fam)
    want = sample(reference_nag(m, est, 10.0, levels), fam)
    err = float((got - want).abs().max())
    assert err <= 1e-6 * float(want.abs().max()) + 1e-5, err  # float error of the sampled values' size
    others = {"plain": m, "learned null": cf(m, 10.0),  # the tiny models barely feel the timestep: compare to err
              "other K": cf(m, 10.0, null_branch=FROM_ESTIMATOR, estimator=est, levels=levels + 1)}
    for name, other in others.items():
        assert float((got - sample(other, fam)).abs().max()) > 20 * err, name


def guider_sample(m, fam, mode, variant="A", **null_branch):
    import comfy.samplers

    latent = torch.zeros(SHAPES[fam])
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)
    g = guider(m, conditioning(COND[fam], 1), conditioning(COND[fam], 2), 3.0, mode, scale=10.0, variant=variant,
               **null_branch)
    with torch.inference_mode():
        return g.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"), sigmas,
                        seed=0, disable_pbar=True)


@pytest.mark.parametrize("fam", ["eps", "sd3"])
@pytest.mark.parametrize("variant", ["A", "B"])
def test_from_estimator_batched_unbatched_and_guider_agree(models, estimators, fam, variant):
    m = models[fam]
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": estimator_for(estimators, fam), "levels": 2}
    ref = sample(cf(m, 10.0, variant, **nb), fam)
    outs = {"unbatched": sample(cf(m, 10.0, variant, batched=False, **nb), fam)}
    outs.update({mode: guider_sample(m, fam, mode, variant, **nb) for mode in BATCHING})
    err = max(float((out - ref).abs().max()) for out in outs.values())
    assert err <= 1e-6 * float(ref.abs().max()) + 1e-5, {name: (out - ref).abs().max() for name, out in outs.items()}
    other = sample(cf(m, 10.0, "A" if variant == "B" else "B", **nb), fam)
    assert float((ref - other).abs().max()) > 20 * err  # the variants differ, far beyond float error


def test_from_estimator_costs_k_cond_rows_per_step_inside_the_window(models, estimators):
    """K levels = K extra conditional chunks per step, only inside the window (and the estimator is read only
    there); each at its level's network time, never the learned null timestep nor the nominal one."""
    m, est = models["eps"], estimators["ve"]
    ms = m.get_model_object("model_sampling")
    for levels, variant, extra in ((1, "A", 1), (3, "A", 3), (2, "B", 4)):
        patched = cf(m, 1.0, variant, start=0.5, end=1.0, null_branch=FROM_ESTIMATOR, estimator=est, levels=levels)
        with Reads(est[0]) as reads, Spy(m) as spy:
            sample(patched, "eps")
        assert [len(lab) for _, lab in spy.calls] == [2, 2, 2 + extra, 2 + extra], (levels, variant)
        assert reads.n == 2
        for t, labels in spy.calls[2:]:
            nominal = t[labels.index(0)]
            assert t[labels.index(1)] == nominal and all(t[labels.index(j)] != nominal for j in range(2, 2 + extra))
            assert not (t == -1000.0).any()
    with Reads(est[0]) as reads, Spy(m) as spy:
        sample(cf(m, 1.0, batched=False, null_branch=FROM_ESTIMATOR, estimator=est), "eps")
    assert len(spy.calls) == 2 * STEPS and [t.shape[0] for t, _ in spy.calls[1::2]] == [1] * STEPS and reads.n == STEPS
    assert float(ms.timestep(ms.sigma_max)) > 0


def test_from_estimator_on_the_ksampler_node(models, estimators):
    m, est = models["eps"], estimators["ve"]
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": est, "levels": 2}
    latent = {"samples": torch.zeros(SHAPES["eps"])}
    with torch.inference_mode():
        one = guidance_nodes.NoiseAwarenessKSampler.execute(
            m, seed=0, steps=STEPS, cfg=3.0, sampler_name="euler", scheduler="simple", positive=conditioning("unet", 1),
            negative=conditioning("unet", 2), latent_image=latent, denoise=1.0, **NAG_WIDGETS, scale=1.5,
            null_timestep=-1000.0, scale_rule="constant", **nb).result[0]["samples"]
    assert torch.equal(one, plain_ksampler(cf(m, 1.5, **nb)))


def test_from_estimator_errors_and_log_lines(models, estimators, tmp_path, caplog):
    """No estimator, a mismatched one, levels out of range: one clear line; no 'no metadata' warning (the
    null timestep is not used); an estimator file without schedule or family: a uniform prior, said once."""
    import logging

    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator

    m = models["sd3"]
    with pytest.raises(ValueError, match="^Noise Awareness: null_branch 'from estimator' needs a noise-level estimator: "
                                         "connect a 'Load Noise-Level Estimator'"):
        cf(m, 1.0, null_branch=FROM_ESTIMATOR)
    with pytest.raises(ValueError, match="^Noise Awareness: the noise-level estimator was trained on SD15 latents .* but "
                                         "this model uses SD3 latents"):
        cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=estimators["ve"])
    with pytest.raises(ValueError, match="levels must be 1..7, got 0"):
        cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=estimators["flow"], levels=0)
    with caplog.at_level(logging.INFO, logger="comfy-nag"):
        cf(m, 1.0, source="metadata", null_branch=FROM_ESTIMATOR, estimator=estimators["flow"])
        assert not caplog.records
        NoiseLevelEstimator((16, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(tmp_path / "bare.safetensors")
        bare = NoiseLevelEstimator.load(tmp_path / "bare.safetensors")
        cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=bare)  # the model's family (SD3) gives the training levels
        assert not caplog.records
        # a model of no registered family (the tiny UNet) and a bare estimator: nothing says the training levels
        NoiseLevelEstimator((4, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(tmp_path / "bare4.safetensors")
        bare4 = NoiseLevelEstimator.load(tmp_path / "bare4.safetensors")
        out = sample(cf(models["eps"], 1.0, null_branch=FROM_ESTIMATOR, estimator=bare4), "eps")
    assert torch.isfinite(out).all()
    assert [r.getMessage() for r in caplog.records if "uniform prior" in r.getMessage()] == [
        "Noise Awareness Guidance: the noise-level estimator's file declares no schedule (nag.schedule) or family "
        "(nag.family); the null branch from it uses a uniform prior over levels"]
    assert cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=estimators["flow"], levels=3).get_attachment(
        model_info.ATTACH_CONFIG)["levels"] == 3


def lora_for(model, seed: int = 5) -> dict:
    """A LoRA (generic key format) on the first 2-D weight of the model's diffusion network."""
    name, w = next((n, p) for n, p in model.model.diffusion_model.named_parameters() if p.dim() == 2)
    key = "diffusion_model." + name[: -len(".weight")]
    g = torch.Generator().manual_seed(seed)
    return {f"{key}.lora_up.weight": torch.randn(w.shape[0], 2, generator=g) * 0.1,
            f"{key}.lora_down.weight": torch.randn(2, w.shape[1], generator=g) * 0.1}


def pag(model, scale):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance as node  # V3 from ComfyUI 0.3.6x on, V1 before

    return node.execute(model, scale).result[0] if hasattr(node, "execute") else node().patch(model, scale)[0]


@pytest.mark.parametrize("fam", ["eps", "sd3", "flux", "wan21", "wan22-5b", "qwen-image", "hunyuan-video", "lumina2"])
def test_patches_placed_after_keep_the_batched_null_branch(models, fam):
    """Regression, every family: ModelPatcher.clone() deep-copies model_options, so a node placed after the
    classifier-free patch (the Noise Shift Recorder, PAG, a LoRA loader) left the post-CFG function a copy of the state
    the batched forward fills: it ran the null branch again, unbatched, every step (two null evaluations per step, the
    output that of the unbatched path).  Now: one null evaluation per step, in the batched forward, and the output of the
    patch alone, bit for bit."""
    import comfy.sd

    m = models[fam] if fam in models else patcher(TINY[fam](0))
    null, lora = expected_null(m), lora_for(m)
    patched = cf(m, 1.0)
    alone = sample(patched, fam)
    recorder = shift_nodes.NoiseAwarenessShiftRecorder.execute(patched, 1.0).result[0]
    after, _ = comfy.sd.load_lora_for_models(pag(recorder, 0.0), None, lora, 1.0, 0.0)
    lora_first, _ = comfy.sd.load_lora_for_models(m, None, lora, 1.0, 0.0)
    with ForwardSpy(m) as spy:
        assert torch.equal(sample(recorder, fam), alone)
    assert spy.null_rows(null) == [1.0] * STEPS and len(spy.calls) == STEPS
    with ForwardSpy(m) as spy:
        out = sample(after, fam)
    assert spy.null_rows(null) == [1.0] * STEPS and len(spy.calls) == STEPS
    assert torch.equal(out, sample(cf(lora_first, 1.0), fam)) and not torch.equal(out, alone)
    with ForwardSpy(m) as spy:
        sample(pag(patched, 2.0), fam)
    assert spy.null_rows(null) == [1.0, 0.0] * STEPS  # PAG's own forward after each batched one, no second null


def test_two_patches_each_keep_their_own_null_branch(models):
    """Two classifier-free patches on one model (the second in variant B) and two patched models in one graph: each
    patch's post-CFG step reads its own batched or unbatched null branch, never the other's."""
    m = models["sd3"]
    one, two = cf(m, 1.0), cf(m, 0.5, "B")
    stacked = cf(one, 0.5, "B")
    with ForwardSpy(m) as spy:
        sample(stacked, "sd3")
    # the first patch's null row in the batched forward, the second's cond and uncond nulls in one more forward
    assert spy.null_rows(-1000.0) == [1.0, 2.0] * STEPS and len(spy.calls) == 2 * STEPS
    assert torch.equal(sample(one, "sd3"), sample(cf(m, 1.0), "sd3"))
    assert torch.equal(sample(two, "sd3"), sample(cf(m, 0.5, "B"), "sd3"))


@pytest.mark.parametrize("config, kind, null", [("CHROMA_CONFIG", "chroma", -1.0), ("HIDREAM_CONFIG", "hidream", -1000.0)])
def test_families_outside_the_registry_still_run(config, kind, null):
    """Chroma and HiDream: ComfyUI detects them and the nodes run on them (null timestep from their sampling), but the
    registry has no entry (docs/comfyui.md, "Per model family": their default sampling is not what their variants
    are sampled with)."""
    import comfy_support

    m = patcher(comfy_support.tiny_from_config(getattr(comfy_support, config), 0))
    assert model_info.model_family(m) is None
    plain = sample(m, kind)
    with ForwardSpy(m) as spy:
        out = sample(cf(m, 1.0), kind)
    assert spy.null_rows(null) == [1.0] * STEPS and torch.isfinite(out).all() and not torch.allclose(out, plain)


# --- NAG that sets its own strength: scale_rule 'auto (from estimator)' -------------------------------------------
AUTO = "auto (from estimator)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Small estimators trained for a few seconds on smooth random latents (their noise level shows in the fine
    detail, so the reading follows it), with the reading calibration the trainer measures, saved and loaded as the
    loader does."""
    import json

    from comfy_nag_pack_under_test.comfy_nag import estimators as E
    from comfy_nag_pack_under_test.comfy_nag.auto_scale import calibrate_reading, calibration_knots
    from comfy_nag_pack_under_test.comfy_nag.schedules import DiscreteVP, Flow

    d, out = tmp_path_factory.mktemp("trained"), {}
    for name, channels, sch, family in (("ve", 4, DiscreteVP(), "sd1"), ("flow", 16, Flow(shift=3.0), "sd3")):
        torch.manual_seed(0)
        est = E.NoiseLevelEstimator((channels, 8, 8), E.LevelBins(-8, 8, 16), width=16, depth=2)
        def smooth(n, g, c=channels):
            return torch.nn.functional.interpolate(torch.randn(n, c, 2, 2, generator=g), size=8)

        with torch.inference_mode(False):
            E.train_estimator(est, smooth, sch, E.EstimatorTraining(150, batch=64, lr=5e-3), torch.Generator().manual_seed(1))
            est.eval()
            cal = calibrate_reading(est, smooth(256, torch.Generator().manual_seed(2)), sch, calibration_knots(est.bins, 2.0),
                                    torch.Generator().manual_seed(3))
            est.save(d / f"{name}.safetensors", sch, {"nag.family": family,
                                                     "nag.reading_calibration": json.dumps(cal.to_json())})
            out[name] = E.NoiseLevelEstimator.load(d / f"{name}.safetensors")
        out[name][0].requires_grad_(False)
    return out


@pytest.mark.parametrize("fam", ["eps", "sd3"])
def test_auto_scale_rule_on_the_estimator_route(models, trained, fam, caplog):
    """scale 0 is the plain model; otherwise the rule reads the estimator once per step inside the window (one batch,
    both probes) beside the null branch's read, adds no model evaluation, keeps each scale in [0, 1.5] times 'scale',
    and takes its calibration from the file (no log line)."""
    import logging

    from comfy_nag_pack_under_test.nodes.model_info import ATTACH_CONFIG

    m, est = models[fam], estimator_for(trained, fam)
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": est}
    with Spy(m) as spy:
        zero = sample(cf(m, 0.0, rule=AUTO, **nb), fam)
    assert torch.equal(zero, sample(m, fam)) and len(spy.calls) == STEPS
    patched = cf(m, 1.0, start=0.5, rule=AUTO, **nb)
    with caplog.at_level(logging.WARNING, logger="comfy-nag"), Reads(est[0]) as reads, Spy(m) as spy:
        one = sample(patched, fam)
    assert not [r for r in caplog.records if "reading calibration" in r.getMessage()]
    assert reads.n == 2 * 2 and [len(lab) for _, lab in spy.calls] == [2, 2, 3, 3]  # no extra model evaluation
    trace = patched.get_attachment(ATTACH_CONFIG)["scale_trace"]
    assert len(trace) == 2 and all(bool(((w >= 0) & (w <= 1.5)).all()) for _, w in trace)
    assert torch.isfinite(one).all()


def test_auto_scale_rule_on_every_entry_point_agrees(models, trained):
    """KSampler (NA) = the patch + KSampler (bit for bit), the guider = the patch, the basic 'any checkpoint' node = the
    classifier-free node with its settings; classifier-guided and the learned null branch take the rule too."""
    m, est = models["eps"], trained["ve"]
    nb = {"null_branch": FROM_ESTIMATOR, "estimator": est, "scale_rule": AUTO}
    latent = {"samples": torch.zeros(SHAPES["eps"])}
    with torch.inference_mode():
        ks = guidance_nodes.NoiseAwarenessKSampler.execute(
            m, seed=0, steps=STEPS, cfg=3.0, sampler_name="euler", scheduler="simple", positive=conditioning("unet", 1),
            negative=conditioning("unet", 2), latent_image=latent, denoise=1.0, **NAG_WIDGETS, scale=1.0,
            null_timestep=-1000.0, **nb).result[0]["samples"]
    patched = cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=est, rule=AUTO)
    assert torch.equal(ks, plain_ksampler(patched))
    via_guider = guider_sample(m, "eps", "one forward", **nb)
    assert torch.allclose(via_guider, sample(cf(m, 1.0, null_branch=FROM_ESTIMATOR, estimator=est, rule=AUTO), "eps"),
                          atol=1e-4)
    basic = guidance_nodes.NoiseAwarenessAnyCheckpoint.execute(m, estimator=est, strength=1.0).result[0]
    same = cf(m, 1.0, start=0.5, end=1.0, unit="signal", null_branch=FROM_ESTIMATOR, estimator=est, rule=AUTO)
    assert torch.equal(sample(basic, "eps"), sample(same, "eps"))
    assert guidance_nodes.NoiseAwarenessAnyCheckpoint.execute(m, estimator=est, strength=0.0).result[0] is m
    assert torch.isfinite(sample(classifier_guided(m, est, 1.0, scale_rule=AUTO), "eps")).all()
    # on the tiny SD3 the learned null branch's term moves the reading: the scale differs from plain and from the
    # constant scale, and 'scale' multiplies what the rule decides
    m3, est3 = models["sd3"], trained["flow"]
    auto = sample(cf(m3, 1.0, rule=AUTO, estimator=est3), "sd3")
    assert not torch.allclose(auto, sample(m3, "sd3")) and not torch.allclose(auto, sample(cf(m3, 1.0), "sd3"))
    assert not torch.allclose(auto, sample(cf(m3, 2.0, rule=AUTO, estimator=est3), "sd3"))


def test_auto_scale_rule_errors_fallback_and_the_plot(models, estimators, caplog):
    """No estimator: one clear line; an estimator file without a reading calibration: an unbiased reading assumed,
    said once; the Noise Shift Plot's JSON holds the scale chosen at each step inside the window."""
    import json
    import logging

    m = models["sd3"]
    with pytest.raises(ValueError, match="^Noise Awareness: scale rule 'auto \\(from estimator\\)' needs a noise-level "
                                         "estimator"):
        cf(m, 1.0, rule=AUTO)
    with caplog.at_level(logging.WARNING, logger="comfy-nag"):
        patched = cf(m, 1.5, start=0.5, null_branch=FROM_ESTIMATOR, estimator=estimators["flow"], rule=AUTO)
    assert [r for r in caplog.records if "no reading calibration" in r.getMessage()]
    rec_model, trace = shift_nodes.NoiseAwarenessShiftRecorder.execute(patched, data_variance=1.0).result
    out = sample(rec_model, "sd3")
    report = json.loads(shift_nodes.NoiseAwarenessShiftPlot.execute(trace, {"samples": out}, "auto").result[1])
    scales = report["runs"][0]["scale_mean"]
    assert scales[:2] == [None, None] and all(s is not None and 0 <= s <= 1.5 * 1.5 for s in scales[2:])
