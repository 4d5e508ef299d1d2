"""The trainer's config: files, overrides and up-front validation with messages that name the key."""
import pytest

from training import config, config_loading, preflight
from training.config import ConfigError

TINY = "training/configs/tiny_dit.toml"


def test_example_configs_load_and_overrides_apply():
    for name in ("tiny_dit", "tiny_sit", "sd15_lora", "sdxl_lora", "sd3_lora", "sd3_full", "flux_lora", "sd3_estimator"):
        config_loading.load(f"training/configs/{name}.toml")
    for command in ("prepare", "estimator"):  # the stock-checkpoint estimator: generate, then train
        preflight.require(config_loading.load("training/configs/sd15_estimator.toml"), command)
    cfg = config_loading.load(TINY, ["train.steps=7", "run.out_dir=runs/x y", "lora.targets=['qkv', 'proj']",
                             "train.mixed_precision=bf16", "run.deterministic=true"])
    assert cfg.train.steps == 7 and cfg.run.out_dir == "runs/x y" and cfg.lora.targets == ["qkv", "proj"]
    assert cfg.train.mixed_precision == "bf16" and cfg.run.deterministic is True
    assert config_loading.load(TINY, {"train.learning_rate": 3}).train.learning_rate == 3.0  # ints widen to floats
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
        config_loading.load(TINY, override)
    for w in words:
        assert w in str(e.value)


def test_command_requirements(tmp_path):
    cfg = config_loading.load(None, {"model.family": "sd3"})
    with pytest.raises(ConfigError, match="data.cache is empty"):
        preflight.require(cfg, "finetune")
    cfg = config_loading.load(None, {"model.family": "sd3", "data.cache": "c.safetensors"})
    with pytest.raises(ConfigError, match="model.base is empty"):
        preflight.require(cfg, "finetune")
    cfg = config_loading.load(None, {"data.cache": "c.safetensors", "train.mode": "lora"})
    with pytest.raises(ConfigError, match="needs a base model"):
        preflight.require(cfg, "finetune")
    cfg = config_loading.load(None, {"data.cache": "c", "data.source": "folder", "data.path": "imgs"})
    with pytest.raises(ConfigError, match="data.resolution"):
        preflight.require(cfg, "prepare")
    cfg = config_loading.load(None, {"data.cache": "c", "model.base": "b", "export.format": "checkpoint"})
    with pytest.raises(ConfigError, match="reference models export as 'reference_model'"):
        preflight.require(cfg, "finetune")


def test_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config_loading.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_loading.load(bad)
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  steps: 12\nmodel:\n  family: sit\n")
    cfg = config_loading.load(y)
    assert cfg.train.steps == 12 and cfg.model.family == "sit"
    with pytest.raises(ConfigError, match="section.key=value"):
        config_loading.load(None, ["steps=3"])
    assert "noise_condition_dropout_rate" in config.help_text()


def test_threads_auto_rule_and_explicit_counts(monkeypatch, tmp_path):
    """--threads: 'auto' is 1 thread for the tiny reference models and pixel data, torch's default (None: left
    alone) for ComfyUI families; a number is that number; anything else is refused naming the fix."""
    from training import cpu_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ref = config_loading.load("training/configs/tiny_sit.toml")
    for command in ("prepare", "finetune", "estimator", "bench"):
        assert cpu_threads.resolve("auto", ref, command) == 1
        assert cpu_threads.resolve(None, ref, command) is None  # the api's default: torch left alone
        assert cpu_threads.resolve(3, ref, command) == cpu_threads.resolve("3", ref, command) == 3
    for name in ("sd15_lora", "sdxl_lora", "sd3_lora", "sd3_full", "flux_lora"):
        big = config_loading.load(f"training/configs/{name}.toml")
        assert cpu_threads.resolve("auto", big, "finetune") is None
        if big.data.encoder == "comfyui":  # (sd3_full reads sd3_lora's cache)
            assert cpu_threads.resolve("auto", big, "prepare") is None  # the ComfyUI VAE / text encoders
    assert cpu_threads.resolve("auto", config_loading.load("training/configs/sd3_estimator.toml"), "estimator") is None
    assert cpu_threads.resolve("auto", config_loading.load("training/configs/sd15_estimator.toml"), "prepare") is None  # generates
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # set by the user (or torchrun): torch already follows it
    assert cpu_threads.resolve("auto", ref, "finetune") is None and cpu_threads.resolve(2, ref, "finetune") == 2
    for bad in (0, -1, "x", 1.5, True):
        with pytest.raises(ConfigError, match="threads must be 'auto' or a number of CPU threads >= 1"):
            cpu_threads.resolve(bad, ref, "finetune")


def test_threads_are_set_for_the_call_and_restored(monkeypatch, tmp_path):
    import torch

    from training import api
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    seen = []
    log = lambda *a: seen.append(torch.get_num_threads())  # noqa: E731  (prepare logs while it works)
    o = {"data.cache": str(tmp_path / "a.safetensors"), "data.limit": 16}
    try:
        torch.set_num_threads(2)
        api.prepare(TINY, o, log=log, threads="auto")
        assert seen[-1] == 1 and torch.get_num_threads() == 2
        api.prepare(TINY, dict(o, **{"data.cache": str(tmp_path / "b.safetensors")}), log=log)
        assert seen[-1] == 2 and torch.get_num_threads() == 2  # not asked: untouched
        api.prepare(TINY, dict(o, **{"data.cache": str(tmp_path / "c.safetensors")}), log=log, threads=3)
        assert seen[-1] == 3 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cli_passes_threads_to_every_command(monkeypatch, tmp_path):
    from training import __main__ as cli
    from training import api
    seen = []

    def fake(command):
        def call(cfg, threads=None, **kw):
            seen.append((command, threads))
            return api.RunResult(path=None, step=0, out_dir=tmp_path)  # what a non-main process returns
        return call
    for command in ("prepare", "finetune", "estimator", "bench"):
        monkeypatch.setattr(api, command, fake(command))
    cache = str(tmp_path / "c.safetensors")
    for command in ("prepare", "finetune", "estimator", "bench"):
        assert cli.main([command, "-c", TINY, "--cache", cache]) == 0
        assert cli.main([command, "-c", TINY, "--cache", cache, "--threads", "2"]) == 0
    assert seen == [(c, t) for c in ("prepare", "finetune", "estimator", "bench") for t in ("auto", 2)]
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "-c", TINY, "--threads", "0"])
    assert e.value.code == 2
