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

from comfy_support import (conditioning, load_pack, patcher, tiny_flux_model, tiny_sd15_model, tiny_sd3_model,  # noqa: E402
                          tiny_unet_model)

pack = load_pack()
from comfy_nag_pack_under_test.nodes import guidance_nodes, model_info, shift_nodes  # noqa: E402

STEPS = 4
SHAPES = {"sd3": (1, 16, 8, 8), "eps": (1, 4, 8, 8), "v": (1, 4, 8, 8), "flux": (1, 16, 8, 8)}
COND = {"sd3": "sd3", "flux": "flux", "eps": "unet", "v": "unet"}


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
       rule="constant"):
    return guidance_nodes.NoiseAwarenessClassifierFree.execute(model, scale, variant, unit, start, end, source, null, batched,
                                                               rule).result[0]


def expected_null(model):
    kind, mult, _ = model_info.sampling_info(model)
    return {"discrete": -1000.0, "discrete_flow": -1.0 * mult, "flux": -1.0}[kind]


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
    from comfy_nag_pack_under_test.comfy_nag.schedules import logsnr_of

    m = models[fam]
    per_level = guidance_nodes.SCALE_RULES[1]

    def tagged(logsnr, value):
        t = m.clone()
        t.set_attachments(model_info.ATTACH_META, {"nag.scale_profile": json.dumps({"logsnr": logsnr, "value": value})})
        return t

    half = sample(cf(tagged([0.0], [0.5]), 2.0, rule=per_level), fam)
    assert torch.allclose(half, sample(cf(m, 1.0), fam), atol=1e-5)
    ms = m.get_model_object("model_sampling")
    sig = comfy.samplers.calculate_sigmas(ms, "simple", STEPS)
    lam = logsnr_of(model_info.sampling_info(m)[2], sig[:STEPS].double())
    mid = float(lam[1] + lam[2]) / 2  # the profile switches on between the 2nd and 3rd step
    step = sample(cf(tagged([mid - 0.01, mid + 0.01], [0.0, 1.0]), 1.0, rule=per_level), fam)
    s_mid = float(sig[1] + sig[2]) / 2
    assert torch.allclose(step, sample(cf(m, 1.0, unit="sigma", start=s_mid, end=0.0), fam), atol=1e-5)
    assert not torch.allclose(step, sample(cf(m, 1.0), fam), atol=1e-4)
    with pytest.raises(ValueError, match="nag.scale_profile.*'constant'"):
        cf(m, 1.0, rule=per_level)
    g = guidance_nodes.NoiseAwarenessCFGuider.execute(tagged([0.0], [0.5]), conditioning(COND[fam], 1),
                                                      conditioning(COND[fam], 2), 3.0, 2.0, "A", "percent", 0.0, 1.0,
                                                      "auto", 0.0, guidance_nodes.BATCHING[0], per_level).result[0]
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
            model, seed, STEPS, cfg, "euler", "simple", conditioning("unet", 1), conditioning("unet", 2), latent, denoise,
            scale, "A", "percent", 0.0, 1.0, "auto", -1000.0).result[0]
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
    g = guidance_nodes.NoiseAwarenessCFGuider.execute(m, pos, neg, 3.0, 1.0, "A", "percent", 0.0, 1.0, "auto", 0.0,
                                                      guidance_nodes.BATCHING[0]).result[0]
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
    for mode in guidance_nodes.BATCHING:
        g = guidance_nodes.NoiseAwarenessCFGuider.execute(m, pos, neg, 3.0, 1.0, "A", "percent", 0.0, 1.0, "auto", 0.0, mode).result[0]
        with torch.inference_mode(), Spy(m) as spy:
            outs[mode] = g.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)
        assert null_rows(spy.calls, -1000.0).count(1.0) == STEPS
        assert len(spy.calls) == {0: 1, 1: 2, 2: 3}[guidance_nodes.BATCHING.index(mode)] * STEPS
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
    out = sample(node.execute(m, (est, meta), 2.0, "percent", 0.0, 1.0).result[0], "sd3")
    assert torch.isfinite(out).all() and not torch.allclose(out, sample(m, "sd3"))
    assert torch.equal(sample(node.execute(m, (est, meta), 0.0, "percent", 0.0, 1.0).result[0], "sd3"), sample(m, "sd3"))
    bad = NoiseLevelEstimator((4, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2)
    with pytest.raises(ValueError, match="expects 4 latent channels but this model's latents have 16"):
        node.execute(m, (bad, {}), 1.0, "percent", 0.0, 1.0)
    with pytest.raises(ValueError, match="trained for SD1.x/SDXL-style"):
        node.execute(m, (est, {"nag.schedule": '{"type": "discrete_vp", "space": "ve"}'}), 1.0, "percent", 0.0, 1.0)


PREDICTIONS = {"EPS": "eps", "V_PREDICTION": "v", "FLOW": "velocity", "FLUX": "velocity"}


@pytest.mark.parametrize("make, name", [(tiny_sd15_model, "sd1"), (tiny_sd3_model, "sd3"), (tiny_flux_model, "flux")])
def test_nodes_agree_with_the_family_registry(make, name):
    """The family ComfyUI's model config is registered as (comfy_nag.families) has the sampling space, the null
    timestep and the latent space the nodes derive from the ComfyUI model itself."""
    from comfy_nag_pack_under_test.comfy_nag import families

    m = patcher(make(0))
    fam = families.from_comfy_config(type(m.model.model_config).__name__, PREDICTIONS[m.model.model_type.name])
    assert fam is not None and fam.name == name, (type(m.model.model_config).__name__, fam)
    assert model_info.sampling_info(m)[2] == fam.schedule.space
    auto = cf(m, 1.0, source="auto").get_attachment(model_info.ATTACH_CONFIG)["null_timestep"]  # no metadata: the default
    assert auto == fam.null_timestep == expected_null(m)
    assert model_info.latent_space(m) == (fam.latent_format, fam.latent_channels)
    assert name in families.latent_space_families(model_info.latent_space(m)[0])


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
         f"the noise-level estimator was trained on Flux latents (16 channels; families flux, flux-schnell) but this "
         f"model uses SD3 latents (16 channels; families sd3); {fix}"),
    ]
    m = models["sd3"]
    for estimator, want in cases:
        for run in (lambda: guidance_nodes.NoiseAwarenessClassifierGuided.execute(m, estimator, 1.0, "percent", 0.0, 1.0),
                    lambda: shift_nodes.NoiseAwarenessShiftRecorder.execute(m, 1.0, estimator)):
            with pytest.raises(ValueError) as e:
                run()
            assert str(e.value) == "Noise Awareness: " + want
    right = saved(16, "sd3", Flow(shift=3.0), **{"nag.family": "sd3", "nag.latent_format": "SD3"})
    assert guidance_nodes.NoiseAwarenessClassifierGuided.execute(m, right, 1.0, "percent", 0.0, 1.0).result[0] is not m
    est, meta = right
    with pytest.raises(ValueError, match="^Noise Awareness: metadata nag.schedule is damaged"):
        guidance_nodes.NoiseAwarenessClassifierGuided.execute(m, (est, {**meta, "nag.schedule": "{"}), 1.0, "percent", 0.0, 1.0)


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
