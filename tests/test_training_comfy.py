"""The trainer on ComfyUI families, through ComfyUI's own model code and stock loaders.

Run with ComfyUI importable (``COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest
tests/test_training_comfy.py``); elsewhere the whole module is skipped with a visible reason and a
warning.  Models are tiny real-format ones built and initialised here (research notes §9.2):
an SD3 MMDiT (detected by UNETLoader and CheckpointLoaderSimple), an SD1.5-detectable UNet, and an
in-process Flux; conditioning is made without text encoders (§9.3).
"""
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training import comfyui

import comfy_support as cs  # noqa: E402

comfy = cs.trainer_comfy_or_skip("ComfyUI-backed trainer tests")

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.taesd.taesd  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402

from comfy_nag.files import read_metadata  # noqa: E402
from comfy_support import seed_weights, tiny_flux_model, tiny_from_config, tiny_sd3_model  # noqa: E402
from comfy_nag.metadata import file_sha256, null_timestep  # noqa: E402
from training import api, lora, monitor  # noqa: E402
from training.latent_cache import CacheInfo, write_cache  # noqa: E402
from training.adapters import ComfyDenoiser  # noqa: E402
from training.tasks import FinetuneTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUIET, KEY_WARNINGS = cs.QUIET, cs.KEY_WARNINGS


@pytest.fixture(scope="module", autouse=True)
def unload_models(one_thread):
    yield
    comfy.model_management.unload_all_models()


def key_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and any(w in r.getMessage() for w in KEY_WARNINGS)]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    for kind in ("checkpoints", "diffusion_models", "loras"):
        (d / kind).mkdir()
        folder_paths.add_model_folder_path(kind, str(d / kind), is_default=True)
    return d


@pytest.fixture(scope="module")
def sd3_files(models_dir):
    """A tiny SD3 checkpoint (MMDiT + a random TAESD VAE under first_stage_model.) and the bare network."""
    m = tiny_sd3_model(0)
    vae = comfy.taesd.taesd.TAESD(latent_channels=16)
    seed_weights(vae, 1)
    ckpt = models_dir / "checkpoints" / "tiny_sd3.safetensors"
    comfy.utils.save_torch_file(m.state_dict_for_saving(None, vae.state_dict()), str(ckpt))
    dm = models_dir / "diffusion_models" / "tiny_sd3_dm.safetensors"
    comfy.utils.save_torch_file(m.diffusion_model.state_dict(), str(dm))
    return ckpt, dm


@pytest.fixture(scope="module")
def vae_cache(tmp_path_factory, sd3_files):
    """Images encoded with the checkpoint's VAE by `prepare`, captions from precomputed conditioning."""
    from PIL import Image
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    captions = ["a red square", "a blue circle", "noise"]
    for i in range(24):
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)  # smooth-ish images
        Image.fromarray(base).resize((64, 64), Image.Resampling.BILINEAR).save(d / f"{i:02d}.png")
        (d / f"{i:02d}.txt").write_text(captions[i % 3])
    g = torch.Generator().manual_seed(2)
    table = ["", *captions]
    cond = {"cross_attn": torch.randn(len(table), 8, 64, generator=g), "pooled_output": torch.randn(len(table), 32, generator=g)}
    comfy.utils.save_torch_file(cond, str(d / "cond.safetensors"), metadata={"captions": __import__("json").dumps(table)})
    path = api.prepare(None, {"data.cache": str(d / "cache.safetensors"), "data.source": "folder", "data.path": str(d),
                              "data.labels": "captions", "data.resolution": 64, "data.encoder": "comfyui",
                              "data.checkpoint": str(sd3_files[0]), "data.conditioning": str(d / "cond.safetensors")},
                       **QUIET)
    return path


@pytest.fixture(scope="module")
def sd3_cache(tmp_path_factory):
    """Structured SD3-space latents (one smooth pattern per caption, a little per-sample variation), so that
    the noise level is identifiable and a noise-conditional model beats a noise-unconditional one."""
    g = torch.Generator().manual_seed(0)
    n = 48
    patterns = torch.nn.functional.interpolate(torch.randn(3, 16, 2, 2, generator=g), size=(8, 8), mode="bilinear")
    rows = torch.arange(n) % 3
    latents = patterns[rows] * 0.4 + 0.06 + 0.05 * torch.randn(n, 16, 8, 8, generator=g)
    path = tmp_path_factory.mktemp("cache") / "sd3.safetensors"
    info = CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a", "b", "c"], empty_cond=0, vae_family="sd3")
    return write_cache(path, latents, info, cond_index=rows + 1, cross_attn=torch.randn(4 * 8, 64, generator=g),
                       cond_offsets=torch.arange(5) * 8, pooled_output=torch.randn(4, 32, generator=g))


def sd3_opts(out, cache, base, **kw):
    o = {"run.out_dir": str(out), "data.cache": str(cache), "model.family": "sd3", "model.base": str(base),
         "train.batch_size": 4, "train.learning_rate": 1e-3, "train.ema_decay": 0.0, "run.checkpoint_every": 0,
         "run.log_every": 5, "monitor.eval_size": 24, "train.caption_dropout_rate": 0.1}
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


@pytest.fixture(scope="module")
def sd3_pretrained(tmp_path_factory, sd3_cache, sd3_files):
    """The tiny SD3 trained a little *without* noise-condition dropout: the model NAG fine-tunes."""
    out = tmp_path_factory.mktemp("pre")
    return api.finetune(None, sd3_opts(out, sd3_cache, sd3_files[0], train__steps=150, train__learning_rate=2e-3,
                                       train__noise_condition_dropout_rate=0.0), **QUIET).path


def finetuned(out, cache, base, rate, mode, **kw):
    """The same fine-tune with noise-condition dropout ``rate``; rate 0 is the control run."""
    lr = 5e-3 if mode == "lora" else 1e-3
    return api.finetune(None, sd3_opts(out, cache, base, train__steps=100, train__learning_rate=lr, train__mode=mode,
                                       lora__rank=8, lora__alpha=8.0, train__noise_condition_dropout_rate=rate, **kw),
                        **QUIET).path


def assert_dropout_taught_the_null_branch(base, control, nag):
    """The null-timestep branch improved because of the dropout (vs the same run without it), while the
    conditional branch held, and the two branches still differ (the NAG correction is non-zero)."""
    assert nag["probe_loss_null"] < 0.9 * control["probe_loss_null"], (control, nag)
    assert nag["probe_loss_null"] < 0.85 * base["probe_loss_null"], (base, nag)
    assert nag["probe_loss_cond"] < 1.1 * control["probe_loss_cond"], (control, nag)
    assert nag["branch_gap"] > 1e-4


def probe(cache, base, lora_file=None):
    """Branch check of a file as a ComfyUI model (LoRA merged the way ComfyUI does)."""
    cfg = api.load_config(None, sd3_opts("unused", cache, base))
    task = FinetuneTask(cfg, **QUIET)
    if lora_file:
        lora.merge(task.adapter.network, load_file(str(lora_file)))
    return monitor.branch_check(task.adapter.module, task.adapter, monitor.ProbeSet(task.cache, task.probe, 8),
                                torch.device("cpu"))


def test_cache_from_comfyui_vae_and_precomputed_text(tmp_path, vae_cache, sd3_files):
    from training.latent_cache import Cache
    c = Cache(vae_cache)
    assert c.info.latent_space == "vae" and c.info.vae_family == "sd3" and c.sample_shape == (16, 8, 8)
    assert c.info.conditioning == "text" and c.info.empty_cond == 0 and c.info.captions[0] == ""
    conds, pooled = c.text(c.cond_index(torch.arange(3)))
    assert conds[0].shape == (1, 8, 64) and pooled.shape == (3, 32)
    res = api.finetune(None, sd3_opts(tmp_path, vae_cache, sd3_files[0], train__steps=2, train__mode="lora",
                                      lora__rank=2), **QUIET)  # prepare -> finetune, end to end
    assert read_metadata(res.path)["nag.kind"] == "lora"


def test_full_checkpoint_loads_in_comfyui_and_has_a_null_branch(tmp_path, caplog, sd3_cache, sd3_files, sd3_pretrained):
    meta = read_metadata(sd3_pretrained)
    assert meta["nag.kind"] == "checkpoint" and meta["nag.family"] == "sd3" and meta["nag.prediction"] == "velocity"
    assert null_timestep(meta) == -1000.0 and meta["nag.base_model_hash"] == file_sha256(sd3_files[0])
    path = finetuned(tmp_path / "nag", sd3_cache, sd3_pretrained, 0.5, "full")
    control = finetuned(tmp_path / "control", sd3_cache, sd3_pretrained, 0.0, "full")
    keys = load_file(str(path))
    assert any(k.startswith("first_stage_model.") for k in keys)  # the base's VAE travels along
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys)
    dest = Path(folder_paths.get_folder_paths("checkpoints")[0]) / "nag_full.safetensors"
    dest.write_bytes(Path(path).read_bytes())
    caplog.set_level(logging.INFO)
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("nag_full.safetensors")
    assert key_warnings(caplog) == []
    assert type(model.model).__name__ == "SD3" and vae.first_stage_model is not None
    loaded = model.model.diffusion_model.state_dict()
    assert all(torch.equal(loaded[k[len("model.diffusion_model."):]], v.float())
               for k, v in keys.items() if k.startswith("model.diffusion_model."))
    assert_dropout_taught_the_null_branch(probe(sd3_cache, sd3_pretrained), probe(sd3_cache, control),
                                          probe(sd3_cache, path))


def _positive(cache):
    from training.latent_cache import Cache
    c = Cache(cache)
    conds, pooled = c.text(torch.tensor([1]))
    return [[conds[0], {"pooled_output": pooled}]], [[torch.zeros_like(conds[0]), {"pooled_output": torch.zeros_like(pooled)}]]


def _sample_with_nag(patcher, cache, w: float, null_t: float):
    """KSampler-style sampling with a classifier-free NAG post-CFG hook: the null branch is the loaded
    model's network evaluated at the null timestep (-1000 network units for SD3)."""
    pos, neg = _positive(cache)
    seen = []

    def nag(args):
        base, x, sigma = args["model"], args["input"], args["sigma"]
        ms = base.model_sampling
        xc = ms.calculate_input(sigma, x)
        ctx, pooled = pos[0][0].expand(x.shape[0], -1, -1), pos[0][1]["pooled_output"].expand(x.shape[0], -1)
        out = base.diffusion_model(xc, torch.full((x.shape[0],), null_t), context=ctx, y=pooled)
        null = ms.calculate_denoised(sigma, out.float(), x)
        seen.append(float((args["cond_denoised"] - null).abs().mean()))
        return args["denoised"] + w * (args["cond_denoised"] - null)

    m = patcher.clone()
    m.set_model_sampler_post_cfg_function(nag)
    latent = torch.zeros(1, 16, 8, 8)
    out = comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 3), 4, 1.0, "euler", "simple", pos, neg, latent,
                              seed=3, disable_pbar=True)
    return out, seen


def test_lora_loads_with_stock_loaders_and_gives_a_working_nag_branch(tmp_path, caplog, sd3_cache, sd3_files,
                                                                      sd3_pretrained):
    path = finetuned(tmp_path / "nag", sd3_cache, sd3_pretrained, 0.5, "lora")
    control = finetuned(tmp_path / "control", sd3_cache, sd3_pretrained, 0.0, "lora")
    meta = read_metadata(path)
    assert meta["nag.kind"] == "lora" and null_timestep(meta) == -1000.0 and meta["nag.comfy_model_config"] == "SD3"
    sd = load_file(str(path))  # kohya keys (the default); SD3's own module paths
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_up.weight", ".lora_down.weight", ".alpha")) for k in sd)
    assert meta["ss_network_dim"] == "8" and meta["ss_base_model_version"] == "sd3"
    # the same network as a bare diffusion model, through UNETLoader; the LoRA through LoraLoaderModelOnly
    dm = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / "pre_dm.safetensors"
    pre = load_file(str(sd3_pretrained))
    comfy.utils.save_torch_file({k[len("model.diffusion_model."):]: v for k, v in pre.items()
                                 if k.startswith("model.diffusion_model.")}, str(dm))
    (Path(folder_paths.get_folder_paths("loras")[0]) / "nag_lora.safetensors").write_bytes(Path(path).read_bytes())
    caplog.set_level(logging.INFO)
    (model,) = nodes.UNETLoader().load_unet("pre_dm.safetensors", "default")
    (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, "nag_lora.safetensors", 1.0)
    assert key_warnings(caplog) == []
    assert len(patched.patches) == len(sd) // 3  # every LoRA layer became a weight patch
    comfy.model_management.load_models_gpu([patched], force_patch_weights=True)
    ours = FinetuneTask(api.load_config(None, sd3_opts("u", sd3_cache, sd3_pretrained)), **QUIET)
    lora.merge(ours.adapter.network, sd)
    theirs = patched.model.diffusion_model.state_dict()
    assert all(torch.allclose(theirs[k], v, atol=1e-6) for k, v in ours.adapter.network.state_dict().items())
    assert_dropout_taught_the_null_branch(probe(sd3_cache, sd3_pretrained), probe(sd3_cache, sd3_pretrained, control),
                                          probe(sd3_cache, sd3_pretrained, path))

    # sampling: NAG scale 0 is plain sampling, exactly; scale 1 changes the result through the null branch
    plain = comfy.sample.sample(patched, comfy.sample.prepare_noise(torch.zeros(1, 16, 8, 8), 3), 4, 1.0, "euler",
                                "simple", *_positive(sd3_cache), torch.zeros(1, 16, 8, 8), seed=3, disable_pbar=True)
    null_t = null_timestep(meta)  # what a loader reads from the LoRA: -1000 network units for SD3
    zero, _ = _sample_with_nag(patched, sd3_cache, 0.0, null_t)
    one, gaps = _sample_with_nag(patched, sd3_cache, 1.0, null_t)
    assert torch.equal(plain, zero) and torch.isfinite(one).all()
    assert (one - plain).abs().mean() > 1e-4 and min(gaps) > 0
    comfy.model_management.unload_all_models()


def test_diffusion_model_export_loads_with_unetloader(tmp_path, caplog, sd3_cache, sd3_files):
    res = api.finetune(None, sd3_opts(tmp_path, sd3_cache, sd3_files[1], train__steps=3, train__ema_decay=0.9,
                                      export__dtype="fp16"), **QUIET)
    meta = read_metadata(res.path)
    keys = load_file(str(res.path))
    assert meta["nag.kind"] == "diffusion_model" and not any(k.startswith("model.") for k in keys)
    assert {v.dtype for v in keys.values()} == {torch.float16} and meta["nag.ema"] == "1"
    dest = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / "nag_dm.safetensors"
    dest.write_bytes(Path(res.path).read_bytes())
    caplog.set_level(logging.INFO)
    (model,) = nodes.UNETLoader().load_unet("nag_dm.safetensors", "default")
    assert key_warnings(caplog) == [] and type(model.model).__name__ == "SD3"
    assert "diffusion model" in api.inspect(res.path)


def test_bad_comfyui_inputs_are_refused(tmp_path, sd3_cache, sd3_files):
    from training.latent_cache import CacheError
    pixels = tmp_path / "pixels.safetensors"
    api.prepare(str(ROOT / "training/configs/tiny_dit.toml"), {"data.cache": str(pixels), "data.limit": 16}, **QUIET)
    with pytest.raises(CacheError, match="holds pixels"):
        api.finetune(None, sd3_opts(tmp_path / "a", pixels, sd3_files[0], train__steps=1), **QUIET)
    wrong = tmp_path / "wrong.safetensors"  # 4-channel latents (an SD1 VAE) for a 16-channel model
    write_cache(wrong, torch.zeros(4, 4, 8, 8), CacheInfo("vae", 0, 0, 0, 0, "text", captions=["x"]),
                cond_index=torch.zeros(4), cross_attn=torch.zeros(8, 64), cond_offsets=torch.tensor([0, 8]))
    with pytest.raises(CacheError, match="4-channel latents but SD3 uses 16"):
        api.finetune(None, sd3_opts(tmp_path / "b", wrong, sd3_files[0], train__steps=1), **QUIET)
    ctx = tmp_path / "ctx.safetensors"  # right latents, text conditioning of another width
    write_cache(ctx, torch.zeros(4, 16, 8, 8), CacheInfo("vae", 0, 0, 0, 0, "text", captions=["x"]),
                cond_index=torch.zeros(4), cross_attn=torch.zeros(8, 768), cond_offsets=torch.tensor([0, 8]),
                pooled_output=torch.zeros(1, 32))
    with pytest.raises(CacheError, match="does not fit SD3"):
        api.finetune(None, sd3_opts(tmp_path / "c", ctx, sd3_files[0], train__steps=1, train__caption_dropout_rate=0.0),
                     **QUIET)
    with pytest.raises(ValueError, match="detects this file as SD3"):
        api.finetune(None, sd3_opts(tmp_path / "d", sd3_cache, sd3_files[0], model__family="flux"), **QUIET)


def _unet_sd15(seed=0):
    uc = {"model_channels": 320, "context_dim": 768, "num_res_blocks": [1], "channel_mult": [1],
          "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": -2,
          "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None, "in_channels": 4,
          "out_channels": 4, "use_spatial_transformer": True, "num_heads": 8, "num_head_channels": -1,
          "use_temporal_attention": False, "use_temporal_resblock": False, "image_size": 32, "num_classes": None}
    return tiny_from_config(uc, seed)


def test_sd15_unet_lora_end_to_end(tmp_path, caplog, models_dir):
    """A discrete eps family (0..999 index timesteps): train through the file loaders, load the LoRA back."""
    m = _unet_sd15()
    dm = models_dir / "diffusion_models" / "tiny_sd15.safetensors"
    comfy.utils.save_torch_file(m.diffusion_model.state_dict(), str(dm))
    g = torch.Generator().manual_seed(0)
    cache = tmp_path / "cache.safetensors"
    write_cache(cache, torch.randn(8, 4, 8, 8, generator=g), CacheInfo("vae", 0, 0, 0, 0, "text", captions=["", "a", "b"],
                                                                     empty_cond=0, vae_family="sd1"),
                cond_index=torch.tensor([1, 2] * 4), cross_attn=torch.randn(4 * 77, 768, generator=g) * 0.1,
                cond_offsets=torch.tensor([0, 77, 154, 308]))  # caption "b" is a long (2 x 77 token) prompt
    res = api.finetune(None, {"run.out_dir": str(tmp_path / "run"), "data.cache": str(cache), "model.family": "sd1",
                              "model.base": str(dm), "train.mode": "lora", "train.steps": 2, "train.batch_size": 2,
                              "lora.rank": 4, "lora.targets": ["transformer_blocks"], "monitor.eval_size": 2,
                              "train.caption_dropout_rate": 0.5, "train.gradient_checkpointing": True,
                              "run.checkpoint_every": 0}, **QUIET)
    meta = read_metadata(res.path)
    assert meta["nag.family"] == "sd1" and meta["nag.prediction"] == "eps" and null_timestep(meta) == -1000.0
    # prompts of 77 and 154 tokens share a batch the way ComfyUI batches them: tokens repeated to a common length
    task = FinetuneTask(api.load_config(None, {"data.cache": str(cache), "model.family": "sd1", "model.base": str(dm)}),
                        **QUIET)
    ctx = task.adapter.conditions(task.cache, torch.tensor([0, 1]), None, "cpu", dropout=False)["c_crossattn"]
    assert ctx.shape == (2, 154, 768) and torch.equal(ctx[0, :77], ctx[0, 77:])
    assert "scaled_linear" in meta["nag.schedule"]
    (Path(folder_paths.get_folder_paths("loras")[0]) / "sd15_lora.safetensors").write_bytes(Path(res.path).read_bytes())
    caplog.set_level(logging.INFO)
    (model,) = nodes.UNETLoader().load_unet("tiny_sd15.safetensors", "default")
    (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, "sd15_lora.safetensors", 1.0)
    assert key_warnings(caplog) == [] and len(patched.patches) == len(load_file(str(res.path))) // 3
    # kohya keys with diffusers module names, as community SD1.5 LoRAs have them; loads in diffusers too
    sd = load_file(str(res.path))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight" in sd
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_network_dim"] == "4" and meta["modelspec.resolution"] == "64x64"
    assert_loads_in_diffusers(res.path, DIFFUSERS_SD15, "sd15")


# --- kohya LoRA files in diffusers (skips loudly without diffusers + peft) ----------------------

DIFFUSERS_SD15 = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
                      down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                      mid_block_type=None, cross_attention_dim=768, attention_head_dim=8)
SDXL_SHAPED = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [0, 1],
               "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1, "context_dim": 64,
               "use_linear_in_transformer": True, "use_spatial_transformer": True, "legacy": False,
               "adm_in_channels": 2816, "num_classes": "sequential", "in_channels": 4, "out_channels": 4,
               "image_size": 32, "num_heads": -1, "num_head_channels": 16, "use_temporal_attention": False,
               "use_temporal_resblock": False}
DIFFUSERS_SDXL = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(0, 1),
                      attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
                      addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=2816, norm_num_groups=32)


def assert_loads_in_diffusers(path, unet_config: dict, kind: str):
    """diffusers' own ``load_lora_weights`` puts every layer of the file on the module it names."""
    try:
        import diffusers
        import peft  # noqa: F401  (diffusers loads LoRAs through peft)
    except ImportError as e:
        warnings.warn(f"diffusers LoRA check SKIPPED: {e}")
        pytest.skip(f"the diffusers LoRA check needs diffusers and peft: {e}")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    class Pipe(StableDiffusionXLLoraLoaderMixin if kind == "sdxl" else StableDiffusionLoraLoaderMixin):
        hf_device_map = None  # the attributes of a DiffusionPipeline the loader reads

        def __init__(self, unet):
            self.unet, self.text_encoder, self.text_encoder_2 = unet, None, None
            self.components = {"unet": unet}

    unet = diffusers.UNet2DConditionModel(**unet_config)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda r: seen.append(r.getMessage()) if r.levelno >= logging.WARNING else None
    diffusers.utils.logging.get_logger("diffusers").addHandler(handler)
    try:
        Pipe(unet).load_lora_weights(str(path), adapter_name="nag")
    finally:
        diffusers.utils.logging.get_logger("diffusers").removeHandler(handler)
    unet_warnings = [m for m in seen if "text_encoder" not in m]  # the file has no text-encoder layers, by design
    assert not [m for m in unet_warnings if any(w in m.lower() for w in ("unexpected", "missing", "not found",
                                                                          "incompatible"))], seen
    sd, meta = load_file(str(path)), read_metadata(path)
    stems = sorted({k.rsplit(".", 2)[0] for k in sd if k.endswith(".lora_up.weight")})
    modules = dict(unet.named_modules())
    for stem in stems:
        name = next(n for n in modules if "lora_unet_" + n.replace(".", "_") == stem and hasattr(modules[n], "lora_A"))
        layer = modules[name]
        assert torch.equal(layer.lora_A["nag"].weight.detach(), sd[f"{stem}.lora_down.weight"].float())
        assert torch.equal(layer.lora_B["nag"].weight.detach(), sd[f"{stem}.lora_up.weight"].float())
        assert layer.scaling["nag"] == pytest.approx(float(meta["ss_network_alpha"]) / int(meta["ss_network_dim"]))
    assert sum(hasattr(m, "lora_A") for m in modules.values()) == len(stems)


def test_sdxl_shaped_kohya_lora_loads_in_comfyui_and_diffusers(tmp_path, caplog):
    """The exporter's kohya names on an SDXL-shaped UNet (SDXL's block layout, tiny widths; too small for
    ComfyUI's file detection, so built from its config): no key ComfyUI or diffusers leaves unloaded."""
    mc = comfy.supported_models.SDXL(dict(SDXL_SHAPED))
    mc.set_inference_dtype(torch.float32, None)
    m = mc.get_model({}, "")
    net = lora.LoRANetwork(m.diffusion_model, 4, 2.0, ["transformer_blocks"], seed=0)
    for layer in net.layers:
        torch.nn.init.normal_(layer.up.weight, std=0.01)
    sd = net.file_state_dict("kohya", comfyui.diffusers_names(m, net.paths))
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in sd
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.alpha" in sd
    meta = {**lora.kohya_metadata("sdxl", "eps", 4, 2.0, 1, (256, 256), "t"), "nag.kind": "lora"}
    path = tmp_path / "sdxl_lora.safetensors"
    from comfy_nag.files import save_weights
    save_weights(path, sd, meta)
    caplog.set_level(logging.INFO)
    patches = comfy.lora.load_lora(load_file(str(path)), comfy.lora.model_lora_keys_unet(m, {}))
    assert key_warnings(caplog) == [] and len(patches) == len(net.paths)
    assert_loads_in_diffusers(path, DIFFUSERS_SDXL, "sdxl")


def _capture_timesteps(net):
    seen = []
    net.register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone()))
    return seen


def test_null_timestep_reaches_the_network_in_network_units(caplog):
    """SD1 (discrete index, -1000), SD3 (sigma*1000, -1000) and Flux (sigma, -1): the rows in drop_t get the
    sentinel, the others ComfyUI's own network time."""
    cases = [(tiny_sd3_model(0), -1000.0, 16), (tiny_flux_model(0), -1.0, 16), (_unet_sd15(), -1000.0, 4)]
    for m, expect_null, ch in cases:
        sched, pred, discrete = comfyui.schedule_of(m)
        assert sched.null_timestep == expect_null
        den = ComfyDenoiser(m, sched.null_timestep, discrete)
        seen = _capture_timesteps(m.diffusion_model)
        s = torch.tensor([0.5, 0.2, 0.9]) if sched.space == "flow" else torch.tensor([1.0, 3.0, 0.3])
        t = sched.net_time(s)
        ctx = torch.randn(3, 8, 64 if ch == 16 else 768)
        extra = m.extra_conds(cross_attn=ctx, pooled_output=torch.randn(3, 32), device="cpu",
                              noise=torch.zeros(3, ch, 8, 8), guidance=1.0)
        cond = {k: v.process_cond(batch_size=3, device="cpu", area=None).cond for k, v in extra.items()}
        drop = torch.tensor([False, True, False])
        with torch.no_grad():
            out = den(torch.randn(3, ch, 8, 8), t, cond, drop)
        got = seen[-1]
        want = m.model_sampling.timestep(s).float()  # what ComfyUI's apply_model feeds
        assert got[1] == expect_null and torch.allclose(got[[0, 2]], want[[0, 2]], atol=1e-3), (got, want)
        assert torch.isfinite(out).all()
        # a LoRA on this network maps onto ComfyUI's key map with nothing left over
        net = lora.LoRANetwork(m.diffusion_model, 2, 2.0)
        caplog.clear()
        patches = comfy.lora.load_lora(net.file_state_dict("comfyui"), comfy.lora.model_lora_keys_unet(m, {}))
        assert len(patches) == len(net.paths) and key_warnings(caplog) == []


def test_prepare_encodes_captions_with_a_comfyui_text_encoder(tmp_path, monkeypatch, sd3_files):
    """`prepare`'s text path with a real ComfyUI CLIP object (CLIP-L architecture and tokenizer, tiny widths:
    text-encoder files cannot be made small through ComfyUI's loaders)."""
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget
    from PIL import Image

    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1,
            "projection_dim": 64}
    clip = comfy.sd.CLIP(ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         model_options={"clip_l_model_config": tiny})
    seed_weights(clip.cond_stage_model, 5)
    original = comfyui.load_encoders

    def with_tiny_clip(*args, **kw):
        vae, _, fam = original(*args, **kw)
        return vae, clip, fam

    monkeypatch.setattr(comfyui, "load_encoders", with_tiny_clip)
    for i, cap in enumerate(["a cat", "a dog", "a cat"]):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(cap)
    out = api.prepare(None, {"data.cache": str(tmp_path / "c.safetensors"), "data.source": "folder",
                             "data.path": str(tmp_path), "data.labels": "captions", "data.resolution": 64,
                             "data.encoder": "comfyui", "data.checkpoint": str(sd3_files[0])}, **QUIET)
    from training.latent_cache import Cache
    c = Cache(out)
    assert c.info.captions == ["", "a cat", "a dog"] and c.info.empty_cond == 0
    assert c.cond_index(torch.arange(3)).tolist() == [1, 2, 1]
    conds, pooled = c.text(torch.arange(3))
    assert all(x.shape == (1, 77, 64) for x in conds) and pooled.shape == (3, 64)
    want = clip.encode_from_tokens(clip.tokenize("a dog"), return_pooled=True, return_dict=True)["cond"]
    assert torch.allclose(conds[2], want.float(), atol=1e-2)  # stored as fp16
    assert not torch.allclose(conds[0], conds[1], atol=1e-3)


def test_estimator_for_sd3_latents(tmp_path, sd3_cache):
    res = api.estimator(None, {"run.out_dir": str(tmp_path), "data.cache": str(sd3_cache), "estimator.steps": 20,
                               "estimator.batch_size": 16, "estimator.bins": 8, "estimator.width": 16,
                               "estimator.depth": 2, "monitor.eval_size": 16}, **QUIET)
    from comfy_nag.estimators import NoiseLevelEstimator
    est, meta = NoiseLevelEstimator.load(res.path)
    assert meta["nag.family"] == "sd3" and meta["nag.latent_format"] == "SD3" and meta["nag.latent_channels"] == "16"
    assert '"type": "flow"' in meta["nag.schedule"] and est.shape == (16, 8, 8)


def test_null_branch_readout_runs_on_a_comfyui_family(tmp_path, sd3_cache, sd3_files):
    """``monitor.estimator`` is no longer reference-only: an SD3 fine-tune logs the null-branch readout."""
    est = api.estimator(None, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(sd3_cache), "estimator.steps": 5,
                               "estimator.batch_size": 16, "estimator.bins": 8, "estimator.width": 16,
                               "estimator.depth": 2, "monitor.eval_size": 16}, **QUIET)
    res = api.finetune(None, sd3_opts(tmp_path / "ft", sd3_cache, sd3_files[0], train__steps=2,
                                      monitor__estimator=str(est.path)), **QUIET)
    final = [m for m in res.metrics if m.get("event") == "monitor"][-1]
    assert -1 <= final["null_readout_cos"] <= 1 and final["null_readout_norm_ratio"] > 0


def test_loaded_models_agree_with_the_family_registry(tmp_path, sd3_files):
    """What ComfyUI's detection says of a file (schedule, parameterisation, latent space) is what the family
    registry says of its family: the trainer's exports and estimators carry the registry's facts."""
    from comfy_nag.families import family

    sd15 = tmp_path / "sd15.safetensors"
    comfy.utils.save_torch_file(_unet_sd15().diffusion_model.state_dict(), str(sd15))
    for path, name in ((sd3_files[0], "sd3"), (sd3_files[1], "sd3"), (sd15, "sd1")):
        loaded = comfyui.load_model(path)
        f = family(loaded.family)
        assert f.name == name and loaded.prediction == f.prediction
        assert loaded.latent_format == f.latent_format and loaded.latent_channels == f.latent_channels
        assert loaded.schedule.describe() == f.schedule.describe()
        assert loaded.schedule.null_timestep == f.null_timestep


def test_generated_latents_from_a_comfyui_checkpoint_train_an_estimator(tmp_path, sd3_files, vae_cache):
    """data.source='generated' on an SD3 checkpoint: raw VAE latents from ComfyUI's own sampler (one prompt per
    batch, from precomputed conditioning), recorded as the sd3 latent space; the estimator trains on them."""
    from training.latent_cache import Cache

    path = api.prepare(None, {"data.source": "generated", "model.base": str(sd3_files[0]), "model.family": "sd3",
                              "data.cache": str(tmp_path / "gen.safetensors"), "data.resolution": 64,
                              "data.conditioning": str(vae_cache.parent / "cond.safetensors"),
                              "data.generate_count": 6, "data.generate_steps": 3, "data.encode_batch_size": 2}, **QUIET)
    c = Cache(path)
    assert len(c) == 6 and tuple(c.sample_shape) == (16, 8, 8) and c.info.latent_space == "vae"
    assert c.info.vae_family == "sd3" and c.info.conditioning == "none"
    lat = c.latents(torch.arange(6)).float()
    assert torch.isfinite(lat).all() and not torch.allclose(lat[0], lat[2])  # batches 0 and 1: different prompts/noise
    res = api.estimator(None, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(path), "estimator.steps": 5,
                               "estimator.batch_size": 4, "estimator.bins": 8, "estimator.width": 16,
                               "estimator.depth": 2, "monitor.eval_size": 4}, **QUIET)
    from comfy_nag.estimators import NoiseLevelEstimator
    _, meta = NoiseLevelEstimator.load(res.path)
    assert meta["nag.family"] == "sd3" and meta["nag.latent_format"] == "SD3"
