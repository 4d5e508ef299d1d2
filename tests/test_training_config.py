"""The trainer's config: files, overrides and up-front validation with messages that name the key."""
import pytest

from training import config
from training.config import ConfigError

TINY = "training/configs/tiny_dit.toml"


def test_example_configs_load_and_overrides_apply():
    for name in ("tiny_dit", "tiny_sit", "sd15_lora", "sdxl_lora", "sd3_lora", "sd3_full", "flux_lora", "sd3_estimator"):
        config.load(f"training/configs/{name}.toml")
    cfg = config.load(TINY, ["train.steps=7", "run.out_dir=runs/x y", "lora.targets=['qkv', 'proj']",
                             "train.mixed_precision=bf16", "run.deterministic=true"])
    assert cfg.train.steps == 7 and cfg.run.out_dir == "runs/x y" and cfg.lora.targets == ["qkv", "proj"]
    assert cfg.train.mixed_precision == "bf16" and cfg.run.deterministic is True
    assert config.load(TINY, {"train.learning_rate": 3}).train.learning_rate == 3.0  # ints widen to floats
    assert cfg.model.family == "dit" and cfg.is_reference and cfg.train.noise_condition_dropout_rate == 0.2


@pytest.mark.parametrize("override, words", [
    ({"train.stepz": 3}, ["train.stepz", "Did you mean 'steps'"]),
    ({"trian.steps": 3}, ["[trian]", "Did you mean 'train'"]),
    ({"train.steps": "many"}, ["train.steps", "integer", "--set train.steps="]),
    ({"train.steps": 0}, ["train.steps", ">= 1"]),
    ({"train.noise_condition_dropout_rate": 1.5}, ["noise_condition_dropout_rate", "<= 1"]),
    ({"model.family": "sd4"}, ["model.family", "'sd4'", "sd3"]),
    ({"train.mixed_precision": "fp8"}, ["train.mixed_precision", "'bf16'"]),
    ({"lora.targets": 5}, ["lora.targets", "list"]),
    ({"run.deterministic": "maybe"}, ["run.deterministic", "true or false"]),
])
def test_bad_values_name_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as e:
        config.load(TINY, override)
    for w in words:
        assert w in str(e.value)


def test_command_requirements(tmp_path):
    cfg = config.load(None, {"model.family": "sd3"})
    with pytest.raises(ConfigError, match="data.cache is empty"):
        config.require(cfg, "finetune")
    cfg = config.load(None, {"model.family": "sd3", "data.cache": "c.safetensors"})
    with pytest.raises(ConfigError, match="model.base is empty"):
        config.require(cfg, "finetune")
    cfg = config.load(None, {"data.cache": "c.safetensors", "train.mode": "lora"})
    with pytest.raises(ConfigError, match="needs a base model"):
        config.require(cfg, "finetune")
    cfg = config.load(None, {"data.cache": "c", "data.source": "folder", "data.path": "imgs"})
    with pytest.raises(ConfigError, match="data.resolution"):
        config.require(cfg, "prepare")
    cfg = config.load(None, {"data.cache": "c", "model.base": "b", "export.format": "checkpoint"})
    with pytest.raises(ConfigError, match="reference models export as 'reference_model'"):
        config.require(cfg, "finetune")


def test_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  steps: 12\nmodel:\n  family: sit\n")
    cfg = config.load(y)
    assert cfg.train.steps == 12 and cfg.model.family == "sit"
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(None, ["steps=3"])
    assert "noise_condition_dropout_rate" in config.help_text()
