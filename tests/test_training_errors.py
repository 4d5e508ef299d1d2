"""Bad input is refused with a message that says what is wrong and what to do; nothing is lost."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_nag.files import WeightFileError
from training import api, state
from training.comfyui import ComfyUnavailable
from training.config import ConfigError
from training.latent_cache import CacheError, CacheInfo, write_cache
from training.loop import TrainingDiverged
from training.seeding import DataOrder

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training/configs/tiny_dit.toml")
SIT = str(ROOT / "training/configs/tiny_sit.toml")
QUIET = dict(log=lambda *a: None)


pytestmark = pytest.mark.usefixtures("one_thread")


def small(out, cache, **kw):
    o = {"run.out_dir": str(out), "data.cache": str(cache), "model.hidden": 32, "model.depth": 1,
         "train.batch_size": 32, "sample.every": 0, "run.checkpoint_every": 0, "train.ema_decay": 0.0,
         "monitor.eval_size": 32}
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "digits.safetensors"
    api.prepare(TINY, {"data.cache": str(path), "data.limit": 256}, **QUIET)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, cache):
    return api.finetune(TINY, small(tmp_path_factory.mktemp("m"), cache, train__steps=2), **QUIET).path


def test_pickled_corrupt_and_missing_weights_are_refused(tmp_path, cache, model):
    net_sd = {"w": torch.zeros(3)}
    torch.save(net_sd, tmp_path / "m.pt")
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "m.pt").read_bytes())
    data = Path(model).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    for name, words in (("m.pt", "never loaded"), ("renamed.safetensors", "pickled"),
                        ("cut.safetensors", "corrupt or truncated"), ("nothing.safetensors", "not found")):
        with pytest.raises(WeightFileError, match=words):
            api.finetune(TINY, small(tmp_path / "o", cache, model__base=str(tmp_path / name), train__steps=1), **QUIET)
    assert not (tmp_path / "o" / "checkpoints").exists()  # refused before any work


def test_safetensors_whose_header_length_reads_like_a_pickle_signature_load(tmp_path):
    """A safetensors file begins with its header's length: 640 bytes (80 02 ...) or 19280 (50 4b = "PK") look like a
    pickle's or a zip's first bytes, yet the file is safetensors and loads; a real pickle is still refused."""
    import json

    from comfy_nag.files import load_weights
    for size in (640, 0x4B50):
        head = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "__metadata__": {"pad": ""}}).encode()
        head = head.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(head)) + b'"')
        path = tmp_path / f"h{size}.safetensors"
        path.write_bytes(size.to_bytes(8, "little") + head + torch.tensor([1.0, 2.0]).numpy().tobytes())
        assert path.read_bytes()[:2] in (b"\x80\x02", b"PK")
        tensors, meta = load_weights(path)
        assert tensors["w"].tolist() == [1.0, 2.0] and len(meta["pad"]) > 100
    torch.save({"w": torch.zeros(2)}, tmp_path / "p.safetensors")
    with pytest.raises(WeightFileError, match="pickled"):
        load_weights(tmp_path / "p.safetensors")


def test_mismatched_cache_is_refused(tmp_path, cache, model):
    big = tmp_path / "digits16.safetensors"
    api.prepare(TINY, {"data.cache": str(big), "data.resolution": 16, "data.limit": 64}, **QUIET)
    with pytest.raises(CacheError, match=r"shape \[1, 16, 16\].*takes \[1, 8, 8\]"):
        api.finetune(TINY, small(tmp_path / "o", big, model__base=str(model), train__steps=1), **QUIET)
    rgb = tmp_path / "rgb.safetensors"
    write_cache(rgb, torch.zeros(8, 3, 8, 8), CacheInfo("pixels", 0, 0, 0, 0, "class"), labels=torch.zeros(8))
    with pytest.raises(CacheError, match="channels"):
        api.finetune(TINY, small(tmp_path / "o", rgb, model__base=str(model), train__steps=1), **QUIET)
    unlabeled = tmp_path / "none.safetensors"
    write_cache(unlabeled, torch.zeros(8, 1, 8, 8), CacheInfo("pixels", 0, 0, 0, 0, "none"))
    with pytest.raises(CacheError, match="no class labels"):
        api.finetune(TINY, small(tmp_path / "o", unlabeled, model__base=str(model), train__steps=1), **QUIET)
    with pytest.raises(CacheError, match="not a comfy-nag latent cache"):
        api.finetune(TINY, small(tmp_path / "o", model, train__steps=1), **QUIET)
    with pytest.raises(ConfigError, match="is a 'dit' model but model.family is 'sit'"):
        api.finetune(TINY, small(tmp_path / "o", cache, model__base=str(model), model__family="sit"), **QUIET)


def test_empty_datasets_are_refused(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(CacheError, match="dataset is empty"):
        api.prepare(TINY, {"data.cache": str(tmp_path / "c.safetensors"), "data.source": "folder",
                           "data.path": str(tmp_path / "imgs"), "data.resolution": 8}, **QUIET)
    with pytest.raises(CacheError, match="dataset is empty"):
        write_cache(tmp_path / "e.safetensors", torch.zeros(0, 1, 8, 8), CacheInfo("pixels", 0, 0, 0, 0, "none"))
    assert not (tmp_path / "c.safetensors").exists()


def test_prepare_reads_an_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = api.prepare(TINY, {"data.cache": str(tmp_path / "c.safetensors"), "data.source": "folder",
                             "data.path": str(tmp_path / "imgs"), "data.labels": "folders", "data.resolution": 8,
                             "data.channels": 3}, **QUIET)
    from training.latent_cache import Cache
    c = Cache(out)
    assert c.info.class_names == ["a", "b"] and c.sample_shape == (3, 8, 8) and len(c) == 6
    assert c.labels(torch.arange(6)).tolist() == [0, 0, 0, 1, 1, 1]
    lat = c.latents(torch.arange(6))
    assert lat.min() >= -1 and lat.max() <= 1
    lazy = Cache(out, lazy=True)  # the row-by-row reader of large caches gives the same rows
    assert torch.equal(lazy.latents(torch.tensor([4, 1])), lat[[4, 1]])
    with pytest.raises(CacheError, match="no caption file"):
        api.prepare(TINY, {"data.cache": str(tmp_path / "d.safetensors"), "data.source": "folder",
                           "data.path": str(tmp_path / "imgs"), "data.labels": "captions", "data.resolution": 8,
                           "data.conditioning": str(out)}, **QUIET)
    assert "latent cache" in api.inspect(out)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    n, b = 256, 32  # 8 steps per epoch: the poisoned row is drawn once, at step 3
    x = torch.rand(n, 1, 8, 8) * 2 - 1
    bad = int(DataOrder(n, 0).indices(2 * b, b)[5])  # a row of the third step
    x[bad] = 1e20  # finite in the cache, but the velocity target's square overflows
    path = tmp_path / "poison.safetensors"
    write_cache(path, x, CacheInfo("pixels", 0, 0, 0, 0, "class"), labels=torch.arange(n) % 10)
    with pytest.raises(TrainingDiverged) as e:
        api.finetune(SIT, small(tmp_path / "run", path, train__steps=10, run__checkpoint_every=1), **QUIET)
    msg = str(e.value)
    assert "step 3" in msg and "step_00000002" in msg and "train.learning_rate" in msg
    cks = state.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in cks] == [1, 2]  # nothing saved after the divergence
    ck = state.read(cks[-1][1])
    assert all(torch.isfinite(v).all() for v in ck["trainable"].values())


def test_resume_refuses_a_changed_run(tmp_path, cache):
    o = small(tmp_path / "run", cache, train__steps=2, run__checkpoint_every=1)
    api.finetune(TINY, o, **QUIET)
    with pytest.raises(state.ResumeError, match="noise_condition_dropout_rate was 0.2 there but is 0.3 now"):
        api.finetune(TINY, dict(o, **{"train.noise_condition_dropout_rate": 0.3, "train.steps": 3}), **QUIET)
    with pytest.raises(state.ResumeError, match="already holds checkpoints"):
        api.finetune(TINY, dict(o, **{"run.resume": "never"}), **QUIET)
    torn = tmp_path / "run" / "checkpoints" / "step_00000003.partial"
    torn.mkdir()
    (torn / "trainable.safetensors").write_bytes(b"\x00garbage")
    res = api.finetune(TINY, dict(o, **{"train.steps": 3}), **QUIET)  # extending a run is allowed
    assert res.resumed_from == 2 and res.step == 3 and not torn.exists()


@pytest.mark.skipif(importlib.util.find_spec("einops") is not None, reason="ComfyUI's dependencies are installed here")
def test_comfyui_family_without_comfyui_says_so(tmp_path, cache, model):
    with pytest.raises((ComfyUnavailable, WeightFileError)) as e:
        api.finetune(TINY, small(tmp_path, cache, model__family="sd3", model__base=str(model)), **QUIET)
    assert "ComfyUI" in str(e.value)


def test_cli_refuses_with_a_message_and_exit_code(tmp_path, model):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "training", *a], cwd=ROOT, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("finetune", "-c", TINY, "--set", "train.stepz=3")
    assert r.returncode == 1 and "unknown key train.stepz. Did you mean 'steps'?" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("finetune", "-c", TINY, "--family", "sdx")
    assert r.returncode == 1 and "model.family = 'sdx' is not one of" in r.stderr
    torch.save({"w": torch.zeros(1)}, tmp_path / "x.ckpt")
    r = run("inspect", str(tmp_path / "x.ckpt"))
    assert r.returncode == 1 and "never loaded" in r.stderr
    r = run("inspect", str(model))
    assert r.returncode == 0 and "nag.null_timestep" in r.stdout and "-1000.0" in r.stdout


def test_cli_shortcuts_help_and_file_names_as_a_new_user_meets_them(tmp_path, cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = lambda *a, cwd=ROOT: subprocess.run([sys.executable, "-m", "training", *a], cwd=cwd, env=env,  # noqa: E731
                                              capture_output=True, text=True, timeout=300)
    # a shortcut a command does not read is a usage error, not silently ignored
    r = run("prepare", "-c", TINY, "--steps", "5")
    assert r.returncode == 2 and "unrecognized arguments: --steps" in r.stderr
    # --help-config works after the command too; every command has a description
    r = run("estimator", "--help-config")
    assert r.returncode == 0 and "[estimator]" in r.stdout
    r = run("estimator", "--help")
    assert r.returncode == 0 and "Train a noise-level estimator" in r.stdout and "--steps" in r.stdout
    # `estimator --steps` sets estimator.steps; a run folder named *estimator is not named twice over
    out = tmp_path / "tiny-estimator"
    r = run("estimator", "-c", TINY, "--cache", str(cache), "--out", str(out), "--steps", "3",
            "--set", "estimator.batch_size=16", "--set", "monitor.eval_size=16")
    assert r.returncode == 0, r.stderr
    assert (out / "tiny-estimator.safetensors").is_file() and re.search(r"nag\.trained_steps\s+3\n", r.stdout)
    # inspect on the run folder shows the exported file's metadata
    r = run("inspect", str(out))
    assert r.returncode == 0 and "tiny-estimator.safetensors: noise-level estimator" in r.stdout
    assert "nag.family" in r.stdout


# --- one clear line: the problem, the option that names it and the fix (as a user meets them) ---------

def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line_refusal(r) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr
    return lines[0]


def test_out_that_is_a_file_names_out_and_the_fix(tmp_path, cache):
    (tmp_path / "afile").write_text("")
    msg = _one_line_refusal(_cli("finetune", "-c", SIT, "--cache", str(cache), "--out", str(tmp_path / "afile")))
    assert f"run.out_dir (--out) {tmp_path / 'afile'} is a file, not a folder; pass a folder path (it is created" in msg
    msg = _one_line_refusal(_cli("estimator", "-c", SIT, "--cache", str(cache), "--out", str(tmp_path / "afile" / "x")))
    assert f"run.out_dir (--out) {tmp_path / 'afile' / 'x'} cannot be created: {tmp_path / 'afile'} is a file" in msg
    assert "pass a folder path" in msg
    assert (tmp_path / "afile").read_text() == "" and sorted(os.listdir(tmp_path)) == ["afile"]  # nothing written


def test_cache_that_is_a_folder_is_refused_before_any_work(tmp_path, cache):
    (tmp_path / "adir").mkdir()
    msg = _one_line_refusal(_cli("prepare", "-c", SIT, "--cache", str(tmp_path / "adir")))
    assert (f"data.cache (--cache) {tmp_path / 'adir'} is a folder, but `prepare` writes one file there: pass a file "
            f"path, e.g. --cache {tmp_path / 'adir' / 'cache.safetensors'}") in msg
    assert sorted(os.listdir(tmp_path)) == ["adir"] and not os.listdir(tmp_path / "adir")  # no temp or partial files
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"data.cache \(--cache\) .* cannot be written: .*afile is a file, not a folder"):
        api.prepare(SIT, {"data.cache": str(tmp_path / "afile" / "c.safetensors")}, **QUIET)
    # the commands that read a cache say which file in the folder they may have meant
    msg = _one_line_refusal(_cli("finetune", "-c", SIT, "--cache", str(cache.parent), "--out", str(tmp_path / "run")))
    assert f"data.cache (--cache) {cache.parent} is a folder (it holds {cache.name})" in msg
    assert f"point it at the cache file `prepare` wrote, e.g. --cache {cache}" in msg
    assert not (tmp_path / "run").exists()


def test_estimator_in_a_finetune_folder_says_so(tmp_path, cache, model):
    run_dir = Path(model).parent  # a finished finetune run: run.json, a checkpoint and the export
    before = sorted(p.name for p in run_dir.iterdir())
    r = _cli("estimator", "-c", SIT, "--cache", str(cache), "--out", str(run_dir))
    msg = _one_line_refusal(r)
    assert (f"run.out_dir (--out) {run_dir} holds a `finetune` run; an `estimator` run needs a folder of its own: "
            f"pass another --out, e.g. --out {run_dir}-estimator") in msg
    assert "was '' there" not in msg and "changed:" not in msg and "estimator for family" not in r.stdout  # no work
    assert sorted(p.name for p in run_dir.iterdir()) == before and not Path(f"{run_dir}-estimator").exists()
    # and the other way round; and resuming another command's checkpoint by path names the commands too
    est = tmp_path / "est"
    api.estimator(TINY, {"data.cache": str(cache), "run.out_dir": str(est), "estimator.steps": 1,
                         "estimator.batch_size": 16, "monitor.eval_size": 16}, **QUIET)
    with pytest.raises(ConfigError, match=rf"holds an? `estimator` run; a `finetune` run needs a folder of its own: "
                                          rf"pass another --out, e\.g\. --out {re.escape(str(est))}-finetune"):
        api.finetune(TINY, small(est, cache, train__steps=1), **QUIET)
    ck = state.list_checkpoints(run_dir)[-1][1]
    with pytest.raises(state.ResumeError, match="it is a checkpoint of a `finetune` run, not of an `estimator` run; "
                                                r"start the `estimator` run in a folder of its own \(another "
                                                r"run.out_dir, --out\)"):
        api.estimator(TINY, {"data.cache": str(cache), "run.out_dir": str(tmp_path / "e2"), "run.resume": str(ck),
                             "estimator.steps": 1, "estimator.batch_size": 16, "monitor.eval_size": 16}, **QUIET)


def test_no_config_names_the_missing_config_and_the_shipped_ones():
    for command in ("finetune", "estimator", "prepare"):
        msg = _one_line_refusal(_cli(command))
        assert msg.startswith("error: no config file given (-c), and data.cache is not set: pass a config, e.g. "
                              f"`python -m training {command} -c training/configs/tiny_sit.toml`"), msg
        assert "shipped in training/configs/: " in msg and all(
            n in msg for n in ("tiny_sit", "tiny_dit", "sd15_lora", "sdxl_lora", "sd3_lora", "flux_lora"))
        assert "--set" in msg and "run `python -m training prepare` first" not in msg
    # with a config the missing key alone is named, as before
    msg = _one_line_refusal(_cli("finetune", "-c", SIT, "--set", "data.cache=''"))
    assert "data.cache is empty: run `python -m training prepare` first" in msg and "no config file" not in msg
