"""The family registry (comfy_nag/families.py) is the only place a family's facts are written: the trainer's
family choices, ComfyUI detection names, kohya LoRA tags and estimator latent spaces all come from it.
(The nodes' agreement with it is checked against real ComfyUI models in tests/test_comfyui_sampling.py, the
trainer's loader in tests/test_training_comfy.py.)"""
import ast
from pathlib import Path

import pytest

from comfy_nag import families
from comfy_nag.families import FAMILIES, family, from_comfy_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_lists_every_supported_family_once():
    assert list(FAMILIES) == ["dit", "sit", "sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner", "sd3", "flux", "flux-schnell",
                             "wan21", "wan22-5b", "qwen-image", "hunyuan-video", "lumina2"]
    assert families.reference_names() == ("dit", "sit")
    names = [a for f in FAMILIES.values() for a in (f.name, *f.aliases)]
    assert len(names) == len(set(names)), "a name or alias is used twice"
    for f in FAMILIES.values():
        assert family(f.name) is f and all(family(a) is f for a in f.aliases)
        assert f.prediction in ("eps", "v", "velocity")
        assert (f.latent_format is None) == (f.latent_channels is None) == f.reference
        assert f.schedule is f.schedule, "a family's schedule is built once"
        assert f.null_timestep == f.schedule.null_timestep
    with pytest.raises(ValueError, match="unknown model family 'sd9'.*sd1"):
        family("sd9")


@pytest.mark.parametrize("name, space, null, channels", [
    ("sd1", "ve", -1000.0, 4), ("sdxl", "ve", -1000.0, 4), ("sd2-v", "ve", -1000.0, 4), ("sd3", "flow", -1000.0, 16),
    ("flux", "flow", -1.0, 16), ("flux-schnell", "flow", -1.0, 16), ("dit", "ve", -1000.0, None), ("sit", "flow", -1000.0, None),
    ("wan21", "flow", -1000.0, 16), ("wan22-5b", "flow", -1000.0, 48), ("qwen-image", "flow", -1.0, 16),
    ("hunyuan-video", "flow", -1000.0, 16), ("lumina2", "flow", -1.0, 16)])
def test_family_facts_match_the_method(name, space, null, channels):
    """The null timestep is one flow unit (or 1000 indices) outside the trained range, in network units
    (docs/method.md); SD1/SD2 share the SD1.5 VAE's latent space."""
    f = family(name)
    assert (f.schedule.space.value, f.null_timestep, f.latent_channels) == (space, null, channels)
    assert families.latent_space_families("SD15") == ("sd1", "sd2", "sd2-v")


def test_video_families_and_shared_latent_spaces():
    """WAN 2.1 (and the WAN 2.2 A14B experts, an alias) and Qwen-Image share the Wan21 latent space (one estimator
    serves both) with different schedules; Qwen-Image's latents are 5-D with one frame; Lumina 2 samples Flux latents."""
    assert family("wan22-a14b") is family("wan21")
    assert families.latent_space_families("Wan21") == ("wan21", "qwen-image")
    assert families.latent_space_families("Wan22") == ("wan22-5b",)
    assert families.latent_space_families("Flux") == ("flux", "flux-schnell", "lumina2")
    dims = {n: (f.latent_dims, f.frames) for n, f in FAMILIES.items() if not f.reference}
    assert {n for n, d in dims.items() if d != (2, None)} == {"wan21", "wan22-5b", "qwen-image", "hunyuan-video"}
    assert dims["qwen-image"] == (3, 1) and dims["wan21"] == dims["hunyuan-video"] == (3, None)
    assert family("wan21").schedule.describe() != family("qwen-image").schedule.describe()
    assert from_comfy_config("HunyuanVideoSkyreelsI2V", "velocity") is family("hunyuan-video")


def test_comfyui_model_configs_map_to_one_family():
    configs = [c for f in FAMILIES.values() for c in f.comfy_configs]
    for c in set(configs):
        for pred in ("eps", "v", "velocity"):
            f = from_comfy_config(c, pred)
            assert c in f.comfy_configs
    assert from_comfy_config("SD20", "v").name == "sd2-v" and from_comfy_config("SD20", "eps").name == "sd2"
    assert from_comfy_config("WAN21") is None


def test_trainer_takes_its_families_from_the_registry():
    from training import comfyui, config, lora

    assert config.REFERENCE_FAMILIES == families.reference_names()
    assert config.COMFY_FAMILIES == ("auto",) + families.comfy_names()
    field = {f.name: f for f in __import__("dataclasses").fields(config.Model)}["family"]
    assert set(field.metadata["choices"]) == {"auto", *FAMILIES}
    for f in FAMILIES.values():
        for c in f.comfy_configs:
            assert comfyui.family_name(c, f.prediction) == f.name
        meta = lora.kohya_metadata(f.name, f.prediction, 4, 4.0, 10, (64, 64), "t")
        if f.kohya is not None:
            assert (meta["ss_base_model_version"], meta["modelspec.architecture"], meta["modelspec.implementation"]) == (
                f.kohya.version, f.kohya.architecture, f.kohya.implementation)
        else:
            assert meta["modelspec.implementation"] == "comfy-nag"
    assert comfyui.family_name("WAN21") == "wan21"


def test_estimator_runs_take_their_latent_space_from_the_registry(tmp_path):
    """A VAE cache of a known family trains an estimator for that family's schedule; a cache whose channels
    do not fit the named family is refused with the fix (no ComfyUI needed to refuse)."""
    import torch

    from training.adapters import estimator_space, same_latent_space
    from training.config import ConfigError
    from training.config_loading import load
    from training.latent_cache import Cache, CacheInfo, write_cache

    assert same_latent_space("sd1", "sd2") and not same_latent_space("sd1", "sdxl") and same_latent_space("x", "x")
    path = tmp_path / "c.safetensors"
    write_cache(path, torch.zeros(2, 4, 8, 8, dtype=torch.float16), CacheInfo("vae", 4, 8, 8, 2, "none", vae_family="sd3"))
    cfg = load(None, {"data.cache": str(path)})
    with pytest.raises(ConfigError, match="4-channel latents but family 'sd3' uses 16"):
        estimator_space(cfg, Cache(path))
    cfg = load(None, {"data.cache": str(path), "estimator.family": "cascade"})
    with pytest.raises(ConfigError, match="set estimator.family to one of sd1, sd2"):
        estimator_space(cfg, Cache(path))


# facts that only the registry may write (string constants; family names themselves appear in messages)
FACTS = {v for f in FAMILIES.values() for v in (f.latent_format, *f.comfy_configs,
                                                *(vars(f.kohya).values() if f.kohya else ())) if v}


def test_no_other_module_writes_a_family_fact():
    bad = []
    for pkg in ("comfy_nag", "training", "nodes"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if p == ROOT / "comfy_nag" / "families.py":
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FACTS:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not bad, "family facts outside comfy_nag/families.py:\n" + "\n".join(bad)
