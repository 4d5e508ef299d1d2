"""The trainer on the video-latent families - WAN 2.1 (and the WAN 2.2 A14B experts), WAN 2.2 TI2V-5B and Qwen-Image -
through ComfyUI's own file detection, model code, VAE, sampler and stock LoRA loading.

Run with ComfyUI importable (``COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest
tests/test_training_comfy_video.py``); elsewhere the module is skipped with a visible reason and a warning.  Models:
tiny real-format files (tests/comfy_support.py): WAN loaded by ComfyUI's file detection as is, Qwen-Image and the
Wan 2.1 VAE with their widths narrowed during the test (ComfyUI fixes those at the real models' sizes).  Text
conditioning is precomputed (no text-encoder files).  For each family: `prepare` makes a 5-D cache, `estimator`
trains an estimator that loads back, `finetune` trains a noise-condition dropout LoRA that ComfyUI's
``load_lora_for_models`` (what LoraLoader / LoraLoaderModelOnly call) applies with no key left over.
"""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training import comfyui

import comfy_support as cs  # noqa: E402

comfy = cs.trainer_comfy_or_skip("ComfyUI-backed video trainer tests")

import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

from comfy_nag.estimators import NoiseLevelEstimator, VideoBackbone  # noqa: E402
from comfy_nag.files import read_metadata  # noqa: E402
from comfy_nag.metadata import null_timestep  # noqa: E402
from training import api, lora  # noqa: E402
from training.config import ConfigError  # noqa: E402
from training.latent_cache import Cache, CacheError, CacheInfo, write_cache  # noqa: E402
from training.tasks import FinetuneTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUIET, KEY_WARNINGS = cs.QUIET, cs.KEY_WARNINGS
TINY_EST = {"estimator.steps": 6, "estimator.batch_size": 4, "estimator.bins": 8, "estimator.width": 16,
            "estimator.depth": 2, "monitor.eval_size": 4}


@pytest.fixture(scope="module", autouse=True)
def tiny_comfy(one_thread):
    """ComfyUI's Wan 2.1 VAE and Qwen-Image detection at the tiny widths for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        cs.tiny_wan_vae(mp)
        cs.tiny_qwen_image_detection(mp)
        yield
    comfy.model_management.unload_all_models()


def _conditioning(path: Path, captions: list[str], dim: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    comfy.utils.save_torch_file({"cross_attn": torch.randn(len(captions), 8, dim, generator=g)}, str(path),
                                metadata={"captions": json.dumps(captions)})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    f = {"wan21": cs.save_tiny_wan(d / "wan21.safetensors", "wan21"),
         "wan22-5b": cs.save_tiny_wan(d / "wan22_5b.safetensors", "wan22-5b"),
         "qwen-image": cs.save_tiny_qwen_image(d / "qwen_image.safetensors"),
         "vae": cs.save_tiny_wan_vae(d / "wan_2.1_vae.safetensors"), "dir": d}
    f["clips"] = d / "clips"
    cs.save_tiny_clips(f["clips"], count=4, frames=5, size=32)
    captions = ["", "clip 0", "clip 1", "clip 2", "a red square", "a blue square"]
    f["wan_cond"] = _conditioning(d / "wan_cond.safetensors", captions, cs.WAN_TEXT_DIM)
    f["qwen_cond"] = _conditioning(d / "qwen_cond.safetensors", captions, cs.QWEN_IMAGE_TEXT_DIM)
    images = d / "images"
    images.mkdir()
    from PIL import Image
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (4, 4, 3)).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(["a red square", "a blue square"][i % 2])
    f["images"] = images
    return f


def key_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and any(w in r.getMessage() for w in KEY_WARNINGS)]


def lora_opts(out, cache, base, family="auto", **kw):
    o = {"run.out_dir": str(out), "data.cache": str(cache), "model.family": family, "model.base": str(base),
         "train.mode": "lora", "train.steps": 3, "train.batch_size": 2, "lora.rank": 4, "lora.alpha": 4.0,
         "train.learning_rate": 1e-3, "monitor.eval_size": 4, "run.checkpoint_every": 0, "train.ema_decay": 0.0,
         "train.caption_dropout_rate": 0.2}
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


def assert_lora_loads_in_comfyui(path, cache, base, family, caplog):
    """ComfyUI's stock LoRA loading (comfy.sd.load_lora_for_models, what LoraLoader(ModelOnly) runs) on the model
    loaded through ComfyUI's detection: every layer becomes a weight patch, no key warning, and the patched weights
    are the trainer's own merge of the file (the keys land on the layers they name)."""
    sd = load_file(str(path))
    stems = {k.rsplit(".", 2)[0] for k in sd}
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_up.weight", ".lora_down.weight", ".alpha")) for k in sd)
    loaded = comfyui.load_model(base)
    patcher = cs.patcher(loaded.model)
    caplog.clear()
    caplog.set_level(logging.INFO)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, sd, 1.0, 0.0)
    assert key_warnings(caplog) == [] and len(patched.patches) == len(stems)
    comfy.model_management.load_models_gpu([patched], force_patch_weights=True)
    ours = FinetuneTask(api.load_config(None, lora_opts("unused", cache, base, family, train__caption_dropout_rate=0.0)),
                        **QUIET)
    lora.merge(ours.adapter.network, sd)
    theirs = patched.model.diffusion_model.state_dict()
    assert all(torch.allclose(theirs[k], v, atol=1e-6) for k, v in ours.adapter.network.state_dict().items())
    comfy.model_management.unload_all_models()
    return sd


def assert_estimator_file(path, family, fmt, shape):
    est, meta = NoiseLevelEstimator.load(path)
    assert meta["nag.family"] == family and meta["nag.latent_format"] == fmt and est.shape == shape
    return est, meta


def test_wan21_clips_make_a_5d_cache_an_estimator_and_a_lora(tmp_path, caplog, files):
    """Video files (PyAV) and frame folders -> ComfyUI's Wan 2.1 VAE -> [N, 16, 2, 4, 4]; the estimator reads clips of
    any length; the dropout LoRA (the WAN 2.2 A14B experts' alias) loads in ComfyUI; an interrupted prepare resumes."""
    opts = {"data.cache": str(tmp_path / "clips.safetensors"), "data.source": "video", "data.path": str(files["clips"]),
            "data.frames": 5, "data.resolution": 32, "data.encoder": "comfyui", "data.vae": str(files["vae"]),
            "data.labels": "captions", "data.conditioning": str(files["wan_cond"]), "data.encode_batch_size": 2}
    import training.encoders as encoders
    real, calls = encoders._vae_encode, []

    def interrupted(vae, video):  # Ctrl-C while the second batch encodes
        enc = real(vae, video)

        def encode(pixels):
            calls.append(1)
            if len(calls) > 1:
                raise KeyboardInterrupt
            return enc(pixels)
        return encode

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoders, "_vae_encode", interrupted)
        with pytest.raises(KeyboardInterrupt):
            api.prepare(None, opts, **QUIET)
    lines = []
    cache = Cache(api.prepare(None, opts, log=lines.append))
    assert any("1 of 2 batches already encoded" in ln for ln in lines)
    assert cache.video and cache.sample_shape == (16, 2, 4, 4) and len(cache) == 4
    assert cache.info.vae_family == "" and cache.info.latent_format == "Wan21" and cache.info.conditioning == "text"
    assert torch.equal(Cache(cache.path, lazy=True).latents(torch.tensor([3, 1])), cache.latents(torch.tensor([3, 1])))
    assert "comfy-nag-cache/2" in api.inspect(cache.path) and "16x2x4x4 (C x T x H x W)" in api.inspect(cache.path)
    res = api.estimator(None, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(cache.path), **TINY_EST}, **QUIET)
    est, meta = assert_estimator_file(res.path, "wan21", "Wan21", (16, 2, 4, 4))  # clips: not Qwen-Image's latents
    assert est.video is VideoBackbone.FRAMES and json.loads(meta["nag.estimator"])["video"] == "frames"
    assert est(torch.randn(3, 16, 7, 4, 4)).shape == (3, 8) and est(torch.randn(1, 16, 1, 6, 6)).shape == (1, 8)
    targets = api.load_config(ROOT / "training/configs/wan22_lora.toml").lora.targets  # the shipped config's layers
    est_path = res.path
    res = api.finetune(None, lora_opts(tmp_path / "lora", cache.path, files["wan21"], "wan22-a14b", lora__targets=targets,
                                       monitor__estimator=str(est_path)), **QUIET)
    final = [m for m in res.metrics if m.get("event") == "monitor"][-1]  # the null-branch readout on clips
    assert -1 <= final["null_readout_cos"] <= 1 and final["null_readout_norm_ratio"] > 0
    meta = read_metadata(res.path)
    assert meta["nag.family"] == "wan21" and meta["nag.comfy_model_config"] == "WAN21_T2V" and meta["nag.kind"] == "lora"
    assert null_timestep(meta) == -1000.0 and meta["nag.latent_format"] == "Wan21" and meta["modelspec.resolution"] == "32x32"
    sd = assert_lora_loads_in_comfyui(res.path, cache.path, files["wan21"], "wan21", caplog)
    assert {"lora_unet_blocks_0_self_attn_q.lora_up.weight", "lora_unet_blocks_0_cross_attn_k.lora_down.weight",
            "lora_unet_blocks_0_ffn_0.alpha"} <= set(sd) and len(sd) == 3 * 10  # q k v o twice, ffn 0 and 2


def test_wan22_5b_generated_cache_estimator_and_precomputed_lora(tmp_path, caplog, files):
    """The TI2V-5B samples its own [48, 2, 4, 4] clips through ComfyUI's sampler (16x spatial compression) for an
    estimator; precomputed 5-D latents with text train its dropout LoRA."""
    path = api.prepare(None, {"data.source": "generated", "model.base": str(files["wan22-5b"]), "model.family": "auto",
                              "data.cache": str(tmp_path / "gen.safetensors"), "data.resolution": 64, "data.frames": 5,
                              "data.conditioning": str(files["wan_cond"]), "data.generate_count": 4,
                              "data.generate_steps": 2, "data.encode_batch_size": 2}, **QUIET)
    gen = Cache(path)
    assert gen.sample_shape == (48, 2, 4, 4) and gen.info.vae_family == "wan22-5b" and gen.info.latent_format == "Wan22"
    lat = gen.latents(torch.arange(4))
    assert torch.isfinite(lat).all() and not torch.allclose(lat[0], lat[2])
    res = api.estimator(None, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(path), "estimator.video":
                               "spatiotemporal", **TINY_EST}, **QUIET)
    est, _ = assert_estimator_file(res.path, "wan22-5b", "Wan22", (48, 2, 4, 4))
    assert est.video is VideoBackbone.SPACETIME and est(torch.randn(2, 48, 5, 4, 4)).shape == (2, 8)
    g = torch.Generator().manual_seed(1)
    comfy.utils.save_torch_file({"latents": torch.randn(6, 48, 2, 4, 4, generator=g),
                                 "cross_attn": torch.randn(6, 8, cs.WAN_TEXT_DIM, generator=g)},
                                str(tmp_path / "pre.safetensors"))
    cache = api.prepare(None, {"data.source": "precomputed", "data.path": str(tmp_path / "pre.safetensors"),
                               "data.cache": str(tmp_path / "pre_cache.safetensors")}, **QUIET)
    assert Cache(cache).info.latent_format == "Wan22"  # the one 48-channel video latent space of the registry
    res = api.finetune(None, lora_opts(tmp_path / "lora", cache, files["wan22-5b"], train__caption_dropout_rate=0.0,
                                       model__dtype="bf16"), **QUIET)  # frozen weights in bf16, as for the 14B models
    meta = read_metadata(res.path)
    assert meta["nag.family"] == "wan22-5b" and meta["nag.comfy_model_config"] == "WAN22_T2V"
    assert null_timestep(meta) == -1000.0 and meta["modelspec.resolution"] == "64x64"
    assert_lora_loads_in_comfyui(res.path, cache, files["wan22-5b"], "wan22-5b", caplog)


def test_qwen_image_images_make_one_frame_latents_an_image_estimator_and_a_lora(tmp_path, caplog, files):
    """Images through ComfyUI's Wan 2.1 VAE, each its own one-frame clip -> [N, 16, 1, 4, 4]; the estimator is an image
    estimator (it reads the one-frame 5-D latents ComfyUI hands over); the LoRA's null timestep is Flux-style -1."""
    opts = {"data.cache": str(tmp_path / "img.safetensors"), "data.source": "folder", "data.path": str(files["images"]),
            "data.resolution": 32, "data.encoder": "comfyui", "data.vae": str(files["vae"]), "data.labels": "captions",
            "data.conditioning": str(files["qwen_cond"]), "data.encode_batch_size": 4, "model.family": "qwen"}
    cache = Cache(api.prepare(None, opts, **QUIET))
    assert cache.sample_shape == (16, 1, 4, 4) and len(cache) == 6 and cache.info.vae_family == "qwen-image"
    assert not torch.allclose(cache.latents(torch.tensor([0])), cache.latents(torch.tensor([1])))  # one clip per image
    res = api.estimator(None, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(cache.path), **TINY_EST}, **QUIET)
    est, meta = assert_estimator_file(res.path, "qwen-image", "Wan21", (16, 4, 4))
    assert est(torch.randn(2, 16, 1, 4, 4)).shape == (2, 8) and json.loads(meta["nag.schedule"])["multiplier"] == 1.0
    targets = api.load_config(ROOT / "training/configs/qwen_image_lora.toml").lora.targets
    res = api.finetune(None, lora_opts(tmp_path / "lora", cache.path, files["qwen-image"], lora__targets=targets),
                       **QUIET)
    meta = read_metadata(res.path)
    assert meta["nag.family"] == "qwen-image" and meta["nag.comfy_model_config"] == "QwenImage"
    assert null_timestep(meta) == -1.0 and meta["nag.latent_format"] == "Wan21"
    sd = assert_lora_loads_in_comfyui(res.path, cache.path, files["qwen-image"], "qwen-image", caplog)
    assert "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight" in sd


def test_captions_of_different_lengths_run_as_comfyui_batches_them(tmp_path, files):
    """Qwen-Image's text conditioning is a CONDRegular: ComfyUI runs captions of different lengths as separate
    batches (repeating tokens would change its joint attention); the trainer's batch equals the one-by-one forwards."""
    g = torch.Generator().manual_seed(0)
    path = write_cache(tmp_path / "c.safetensors", torch.randn(4, 16, 1, 4, 4, generator=g),
                       CacheInfo("vae", 0, 0, 0, 0, "text", captions=["a", "b"], vae_family="qwen-image"),
                       cond_index=torch.tensor([0, 1, 1, 0]), cross_attn=torch.randn(5 + 9, 64, generator=g),
                       cond_offsets=torch.tensor([0, 5, 14]))
    task = FinetuneTask(api.load_config(None, lora_opts("u", path, files["qwen-image"], train__mode="full",
                                                        train__caption_dropout_rate=0.0)), **QUIET)
    a, idx = task.adapter, torch.arange(4)
    x, t = a.x0(task.cache, idx), torch.tensor([0.9, 0.5, 0.2, 0.7])
    drop = torch.tensor([False, True, False, False])
    with torch.no_grad():
        batch = a.module(x, t, a.conditions(task.cache, idx, None, "cpu", dropout=False), drop)
        one = [a.module(x[i:i + 1], t[i:i + 1], a.conditions(task.cache, idx[i:i + 1], None, "cpu", dropout=False),
                        drop[i:i + 1]) for i in range(4)]
    assert torch.allclose(batch, torch.cat(one), atol=1e-5)


def test_video_refusals_are_one_line(tmp_path, files):
    """What used to end in a traceback or a misleading line now says what is wrong and the fix, in one line."""
    g = torch.Generator().manual_seed(0)
    image = write_cache(tmp_path / "img.safetensors", torch.randn(4, 16, 8, 8, generator=g),
                        CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a"], empty_cond=0),
                        cond_index=torch.ones(4), cross_attn=torch.randn(16, cs.WAN_TEXT_DIM), cond_offsets=torch.tensor([0, 8, 16]))
    for family in ("auto", "wan21"):  # was: RuntimeError from latent_format.process_in (tensor a (2) vs b (16))
        with pytest.raises(CacheError, match=r"holds image latents \[16, 8, 8\] but WAN21_T2V \(family 'wan21'\) takes "
                                             r"Wan21 video latents \[16, T, H, W\]") as e:
            api.finetune(None, lora_opts(tmp_path / family, image, files["wan21"], family), **QUIET)
        assert "\n" not in str(e.value)
    clips = write_cache(tmp_path / "clips.safetensors", torch.randn(4, 16, 2, 4, 4, generator=g),
                        CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a"], empty_cond=0),
                        cond_index=torch.ones(4), cross_attn=torch.randn(10, 64), cond_offsets=torch.tensor([0, 5, 10]))
    with pytest.raises(CacheError, match="2-frame latents but QwenImage .* makes images"):
        api.finetune(None, lora_opts(tmp_path / "q", clips, files["qwen-image"]), **QUIET)
    one = write_cache(tmp_path / "one.safetensors", torch.randn(4, 16, 1, 4, 4, generator=g),
                      CacheInfo("vae", 0, 0, 0, 0, "none"))
    with pytest.raises(ConfigError, match="wan21, qwen-image, hunyuan-video share this latent shape .* set estimator.family"):
        api.estimator(None, {"run.out_dir": str(tmp_path / "e"), "data.cache": str(one), "model.family": "auto",
                             **TINY_EST}, **QUIET)
    with pytest.raises(ConfigError, match=r"data.frames=8: this VAE encodes 1 \+ 4k frames .* set data.frames to 5 or 9"):
        api.prepare(None, {"data.cache": str(tmp_path / "x.safetensors"), "data.source": "video", "data.frames": 8,
                           "data.path": str(files["clips"]), "data.resolution": 32, "data.encoder": "comfyui",
                           "data.vae": str(files["vae"])}, **QUIET)
    with pytest.raises(ConfigError, match="model.family 'sd3' uses SD3 image latents .* makes video latents"):
        api.prepare(None, {"data.cache": str(tmp_path / "y.safetensors"), "data.source": "folder", "model.family": "sd3",
                           "data.path": str(files["images"]), "data.resolution": 32, "data.encoder": "comfyui",
                           "data.vae": str(files["vae"])}, **QUIET)
