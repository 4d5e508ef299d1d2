"""The trainer on comfy_nag's reference DiT/SiT (no ComfyUI): dropout, resume, files, estimator, LoRA."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_nag.estimators import NoiseLevelEstimator, training_log_prior
from comfy_nag.files import read_metadata
from comfy_nag.metadata import file_sha256, null_timestep, scale_profile
from training import api, lora, monitor
from training.adapters import load_reference_model
from training.tasks import Bundle, FinetuneTask

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training/configs/tiny_dit.toml")
QUIET = dict(log=lambda *a: None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "digits.safetensors"
    api.prepare(TINY, {"data.cache": str(path)}, **QUIET)
    return path


def small(out, cache, **kw):
    """A fast configuration of the tiny DiT."""
    o = {"run.out_dir": str(out), "data.cache": str(cache), "model.hidden": 32, "model.depth": 1,
         "train.batch_size": 32, "train.learning_rate": 2e-3, "train.warmup_steps": 0, "sample.every": 0,
         "run.checkpoint_every": 0, "run.log_every": 5, "monitor.eval_size": 256, "train.ema_decay": 0.0}
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


@pytest.fixture(scope="module")
def base(tmp_path_factory, cache):
    """A reference DiT trained *without* noise-condition dropout: the checkpoint to fine-tune."""
    out = tmp_path_factory.mktemp("base")
    return api.finetune(TINY, small(out, cache, train__steps=150, train__noise_condition_dropout_rate=0.0), **QUIET).path


def probe(path, cache, estimator=None):
    """Branch check of a saved model on the fixed probe set (with the null-branch readout given an estimator)."""
    cfg = api.load_config(TINY, {"data.cache": str(cache), "model.base": str(path), "monitor.eval_size": 256})
    task = FinetuneTask(cfg, **QUIET)
    prior = training_log_prior(task.adapter.schedule, estimator.bins) if estimator is not None else None
    # batch 32 = small()'s train.batch_size: the probe's states are then the ones a run's monitor draws
    return monitor.branch_check(task.adapter.module, task.adapter, monitor.ProbeSet(task.cache, task.probe, 32),
                                torch.device("cpu"), estimator=estimator, log_prior=prior)


def test_finetune_teaches_the_noise_unconditional_branch(tmp_path, cache, base):
    before = probe(base, cache)
    res = api.finetune(TINY, small(tmp_path / "ft", cache, model__base=str(base), train__steps=100,
                                   train__noise_condition_dropout_rate=0.25, train__learning_rate=1e-3), **QUIET)
    after = probe(res.path, cache)
    # the dropped (null-timestep) samples' loss goes down a lot; the conditional branch keeps its quality
    assert after["probe_loss_null"] < 0.8 * before["probe_loss_null"], (before, after)
    assert after["probe_loss_cond"] < 1.1 * before["probe_loss_cond"], (before, after)
    # and the two branches still differ: the null branch does not know the level (the NAG signal)
    assert after["probe_loss_null"] > after["probe_loss_cond"] and after["branch_gap"] > 1e-3
    # the training log shows it too: loss of dropped rows falls over the run
    dropped = [m["loss_dropped"] for m in res.metrics if "loss_dropped" in m]
    assert sum(dropped[-4:]) / 4 < sum(dropped[:4]) / 4

    net, meta = load_reference_model(res.path)
    assert meta["nag.kind"] == "reference_model" and meta["nag.family"] == "dit" and meta["nag.prediction"] == "eps"
    assert null_timestep(meta) == -1000.0 and float(meta["nag.noise_condition_dropout_rate"]) == 0.25
    assert meta["nag.base_model_hash"] == file_sha256(base) and meta["nag.trained_steps"] == "100"
    assert json.loads(meta["nag.schedule"])["type"] == "discrete_vp"
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 300.0), torch.arange(4)
    drop = torch.ones(4, dtype=torch.bool)
    assert not torch.allclose(net(x, t, y, drop), net(x, t, y, ~drop), atol=1e-4)
    assert "reference model" in api.inspect(res.path) and "nag.null_timestep" in api.inspect(res.path)


def test_sit_trains_and_samples(tmp_path, cache):
    res = api.finetune(str(ROOT / "training/configs/tiny_sit.toml"),
                       small(tmp_path, cache, train__steps=10, sample__every=5, sample__steps=4, train__ema_decay=0.9,
                             run__checkpoint_every=5), **QUIET)
    _, meta = load_reference_model(res.path)
    assert meta["nag.family"] == "sit" and meta["nag.prediction"] == "velocity" and null_timestep(meta) == -1000.0
    grids = sorted((tmp_path / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_00000005.png", "step_00000010.png"]
    from PIL import Image
    w, h = Image.open(grids[-1]).size
    assert w > h > 0  # two rows (NAG 0 and sample.nag_scale) of sample.count images
    events = [m for m in res.metrics if m.get("event") == "monitor"]
    assert events and {"probe_loss_cond", "probe_loss_null", "branch_gap"} <= set(events[-1])


def _tensors(path):
    return load_file(str(path))


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, cache):
    o = dict(train__steps=12, run__checkpoint_every=4, train__ema_decay=0.9, train__gradient_accumulation_steps=2,
             train__batch_size=16)
    ref = api.finetune(TINY, small(tmp_path / "a", cache, **o), **QUIET)

    def crash(event):
        if event["step"] == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        api.finetune(TINY, small(tmp_path / "b", cache, **o), callbacks=[crash], **QUIET)
    steps = sorted(p.name for p in (tmp_path / "b/checkpoints").glob("step_*"))
    assert steps == ["step_00000004"]  # step 8 was never reached; 4 is intact
    res = api.finetune(TINY, small(tmp_path / "b", cache, **o), **QUIET)
    assert res.resumed_from == 4 and res.step == 12
    a, b = _tensors(ref.path), _tensors(res.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(ln)["step"] for ln in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
              if "event" not in json.loads(ln)]
    assert logged == sorted(set(logged)) == [5, 10, 12]  # nothing logged twice, nothing missing


def _cli(*args, hash_seed=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    return subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _sets(opts: dict) -> list:
    return [x for k, v in opts.items() for x in ("--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}")]


def _wait_for_checkpoint(out: Path, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list((out / "checkpoints").glob("step_*[0-9]")) and (out / "checkpoints/latest.json").exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_resumes_with_nothing_lost(tmp_path, cache, sig):
    out = tmp_path / "run"
    opts = small(out, cache, train__steps=100000, run__checkpoint_every=3, train__ema_decay=0.9)
    proc = _cli("finetune", "-c", TINY, *_sets(opts))
    _wait_for_checkpoint(out, proc)
    time.sleep(0.3)  # let it run on, possibly into the middle of the next checkpoint write
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:  # graceful: finishes the step, saves it, exits 130
        assert proc.returncode == 130, proc.stderr.read()
    else:
        assert proc.returncode == -signal.SIGKILL
    from training import state
    last = state.list_checkpoints(out)[-1][0]
    # resume in-process to a few steps past the last checkpoint; compare with an uninterrupted run to there
    target = dict(opts, **{"train.steps": last + 2})
    res = api.finetune(TINY, target, **QUIET)
    assert res.resumed_from == last and res.step == last + 2
    assert not list((out / "checkpoints").glob("*.partial"))
    ref = api.finetune(TINY, dict(target, **{"run.out_dir": str(tmp_path / "ref")}), **QUIET)
    a, b = _tensors(ref.path), _tensors(res.path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(opts: dict, nproc: int = 2):
    """`python -m training finetune` in ``nproc`` CPU processes (torchrun; accelerate picks gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "training", "finetune", "-c", TINY, *_sets(opts)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_two_processes_killed_and_resumed_equal_one_process(tmp_path, cache):
    """2 processes x 1 micro-batch = 1 process x 2 accumulated micro-batches: same samples, same noise
    (step_generator), gradients averaged in another order; killed and resumed in between."""
    out = tmp_path / "ddp"
    opts = small(out, cache, train__steps=100000, run__checkpoint_every=2, train__ema_decay=0.9, train__batch_size=16)
    proc = _torchrun(opts)
    _wait_for_checkpoint(out, proc, timeout=240)
    time.sleep(0.5)
    workers = _children(proc.pid)
    assert len(workers) == 2
    for pid in workers + [proc.pid]:  # the workers (torchrun gives them their own sessions), then the launcher
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for pid in workers:  # gone (or a zombie) before the checkpoints are read
        while _alive(pid):
            time.sleep(0.05)
    from training import state
    last, ck = state.list_checkpoints(out)[-1]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (ck / "rng_rank0.safetensors").is_file() and (ck / "rng_rank1.safetensors").is_file()
    target = dict(opts, **{"train.steps": last + 2})
    proc = _torchrun(target)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"resumed from {ck}" in stdout and stdout.count("saved ") == 1  # one process reports and writes
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["ddp.safetensors"]
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()
              if "event" not in json.loads(ln)]
    assert logged == sorted(set(logged))  # one writer: no line twice
    one = api.finetune(TINY, dict(target, **{"run.out_dir": str(tmp_path / "one"),
                                             "train.gradient_accumulation_steps": 2}), **QUIET)
    a, b = _tensors(one.path), _tensors(out / "ddp.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # float summation order only


LORA = dict(train__mode="lora", lora__rank=4, lora__alpha=8.0, lora__targets=[r"\.qkv$", r"blocks\.\d+\.mlp\."])
STEMS = {"kohya": ["lora_unet_blocks_0_qkv", "lora_unet_blocks_0_mlp_0", "lora_unet_blocks_0_mlp_2"],
         "comfyui": ["diffusion_model.blocks.0.qkv", "diffusion_model.blocks.0.mlp.0", "diffusion_model.blocks.0.mlp.2"]}


@pytest.mark.parametrize("fmt", ["kohya", "comfyui"])
def test_lora_on_the_reference_model_saves_loader_keys(tmp_path, cache, base, fmt):
    opts = small(tmp_path, cache, model__base=str(base), train__steps=15, train__noise_condition_dropout_rate=0.3,
                 **LORA, **({"export__lora_format": fmt} if fmt != "kohya" else {}))  # kohya is the default
    res = api.finetune(TINY, opts, **QUIET)
    sd = _tensors(res.path)
    meta = read_metadata(res.path)
    assert meta["nag.kind"] == "lora" and meta["nag.lora_rank"] == "4" and null_timestep(meta) == -1000.0
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    assert stems == set(STEMS[fmt])
    for s in stems:
        assert sd[f"{s}.lora_up.weight"].shape[1] == 4 and sd[f"{s}.lora_down.weight"].shape[0] == 4
        assert float(sd[f"{s}.alpha"]) == 8.0 and sd[f"{s}.lora_up.weight"].abs().sum() > 0  # it trained
    if fmt == "kohya":  # what kohya-reading tools show: rank, alpha, base model, spec
        assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8" and meta["ss_steps"] == "15"
        assert meta["ss_network_module"] == "networks.lora" and meta["modelspec.sai_model_spec"] == "1.0.0"
        assert meta["modelspec.architecture"] == "comfy-nag-dit/lora" and meta["modelspec.resolution"] == "8x8"
        assert meta["modelspec.prediction_type"] == "epsilon"
        shown = api.inspect(res.path)
        assert "kohya key format" in shown and "ss_network_dim" in shown and "nag.null_timestep" in shown
    else:
        assert not any(k.startswith(("ss_", "modelspec.")) for k in meta)
    # merging the file with the loaders' formula reproduces the hooked model exactly
    net, _ = load_reference_model(base)
    hooked, _ = load_reference_model(base)
    cfg = api.load_config(TINY, {"data.cache": str(cache), "model.base": str(base), "train.mode": "lora",
                                 "lora.rank": 4, "lora.alpha": 8.0, "lora.targets": LORA["lora__targets"]})
    task = FinetuneTask(cfg, **QUIET)
    task.lora.load_state_dict({f"layers.{i}.{n}.weight": sd[f"{STEMS[fmt][i]}.lora_{n}.weight"]
                               for i in range(len(task.lora.paths)) for n in ("up", "down")})
    assert lora.merge(net, sd) == 3
    x, t, y, d = torch.randn(6, 1, 8, 8), torch.rand(6) * 999, torch.arange(6), torch.rand(6) < 0.5
    with torch.no_grad():
        assert torch.allclose(Bundle(task.adapter.module, task.lora)(x, t, y, d), net(x, t, y, d), atol=1e-5)
    with pytest.raises(KeyError, match="matches no"):
        lora.merge(hooked, {"lora_unet_nope.lora_up.weight": torch.zeros(1, 1),
                            "lora_unet_nope.lora_down.weight": torch.zeros(1, 1)})


def test_lora_ema_holds_only_the_lora(tmp_path, cache, base):
    res = api.finetune(TINY, small(tmp_path, cache, model__base=str(base), train__steps=4, train__ema_decay=0.5,
                                   run__checkpoint_every=2, **LORA), **QUIET)
    from training import state
    ck = state.list_checkpoints(tmp_path)[-1][1]
    ema, trained = _tensors(ck / "ema.safetensors"), _tensors(ck / "trainable.safetensors")
    n_averaged = ema.pop("__n_averaged")
    assert int(n_averaged) == 4 and set(ema) == set(trained) and len(ema) == 6  # up + down of 3 layers
    assert all(k.startswith("layers.") and ema[k].shape == trained[k].shape for k in ema)
    lora_size = sum(v.numel() for v in trained.values())
    base_size = sum(v.numel() for v in load_file(str(base)).values())
    assert sum(v.numel() for v in ema.values()) == lora_size < base_size / 10
    # the exported LoRA is the EMA (export.use_ema), not the last weights
    sd = _tensors(res.path)
    assert torch.equal(sd[f"{STEMS['kohya'][0]}.lora_up.weight"], ema["layers.0.up.weight"])
    assert not torch.equal(ema["layers.0.up.weight"], trained["layers.0.up.weight"])


def test_same_seed_gives_bit_identical_files_whatever_out_is(tmp_path, cache, base):
    """Across processes (different hash seeds, so differently ordered dicts) and out folders, and
    in one process after other work has used the global RNG."""
    full = small(tmp_path / "x", cache, train__steps=4, train__ema_decay=0.9, run__checkpoint_every=2)
    files = []
    for i, out in enumerate(["a", "a-much-longer-run-folder-name"]):
        opts = dict(full, **{"run.out_dir": str(tmp_path / out), "export.name": "model.safetensors"})
        proc = _cli("finetune", "-c", TINY, *_sets(opts), hash_seed=str(i + 1))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        files.append(tmp_path / out / "model.safetensors")
    assert files[0].read_bytes() == files[1].read_bytes()
    opts = small(tmp_path / "l1", cache, model__base=str(base), train__steps=3, **LORA, **{"export.name": "l.safetensors"})
    first = api.finetune(TINY, opts, **QUIET).path
    torch.rand(1000)  # other work in the same process moves the global RNG
    second = api.finetune(TINY, dict(opts, **{"run.out_dir": str(tmp_path / "l2-other")}), **QUIET).path
    assert Path(first).read_bytes() == Path(second).read_bytes()


@pytest.fixture(scope="module")
def estimator_file(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("est")
    return api.estimator(TINY, {"run.out_dir": str(out), "data.cache": str(cache), "estimator.steps": 120,
                                "estimator.batch_size": 64, "run.log_every": 20, "monitor.eval_size": 256,
                                "run.checkpoint_every": 60}, **QUIET)


def test_estimator_learns_the_noise_level(estimator_file):
    res = estimator_file
    assert res.step == 120
    est, meta = NoiseLevelEstimator.load(res.path)
    assert meta["nag.family"] == "dit" and meta["nag.latent_channels"] == "1" and meta["nag.kind"] == "noise_level_estimator"
    assert json.loads(meta["nag.schedule"])["type"] == "discrete_vp" and json.loads(meta["nag.estimator"])["bins"]["k"] == 24
    maes = [m["probe_logsnr_mae"] for m in res.metrics if "probe_logsnr_mae" in m]
    losses = [m["loss"] for m in res.metrics if "loss" in m]
    assert len(maes) == 2 and maes[-1] < 2.0 and losses[-1] < losses[0] - 0.5
    assert est.shape == (1, 8, 8)
    # what it reads on forward states, measured at export: the closed-loop NAG scale's targets (auto_scale.py)
    from comfy_nag.metadata import reading_calibration

    cal = reading_calibration(meta)
    assert cal.logsnr[0] >= est.bins.lo and cal.logsnr[-1] <= est.bins.hi and len(cal.logsnr) >= 10
    assert any(b != 0 for b in cal.bias) and all(sd >= 0 for sd in cal.spread) and cal.clean > cal.logsnr[len(cal.logsnr) // 2]


def test_noise_shift_readout_during_training(tmp_path, cache, base, estimator_file):
    res = api.finetune(TINY, small(tmp_path, cache, model__base=str(base), train__steps=4, sample__every=4,
                                   sample__steps=6, monitor__estimator=str(estimator_file.path)), **QUIET)
    final = [m for m in res.metrics if m.get("event") == "monitor"][-1]
    assert 0 < final["noise_shift_nag0"] < 20 and 0 < final["noise_shift_nag"] < 20
    with pytest.raises(api.ConfigError, match="trained for family 'dit'"):
        api.finetune(str(ROOT / "training/configs/tiny_sit.toml"),
                     small(tmp_path / "s", cache, monitor__estimator=str(estimator_file.path)), **QUIET)


def test_null_branch_readout_tracks_the_null_branch(tmp_path, cache, base, estimator_file):
    """The readout a user watches: before the dropout fine-tune the null branch is untrained and its term is
    many times the estimator's; training pulls it towards it, and the run logs the readout it ends with."""
    est, _ = NoiseLevelEstimator.load(estimator_file.path)
    before = probe(base, cache, est)
    res = api.finetune(TINY, small(tmp_path, cache, model__base=str(base), train__steps=100,
                                   train__noise_condition_dropout_rate=0.25, train__learning_rate=1e-3,
                                   monitor__estimator=str(estimator_file.path)), **QUIET)
    logged = [m for m in res.metrics if "null_readout_cos" in m]
    after = probe(res.path, cache, est)
    assert before["null_readout_norm_ratio"] > 5 and after["null_readout_norm_ratio"] < 0.85 * before["null_readout_norm_ratio"]
    assert -1 <= after["null_readout_cos"] <= 1
    assert logged and logged[-1]["null_readout_cos"] == pytest.approx(after["null_readout_cos"], abs=1e-4)
    # the final readout's per-level scale profile goes into the file, for the nodes' per-level scale rule
    profile = scale_profile(read_metadata(res.path))
    assert profile is not None and profile.to_json() == logged[-1]["scale_profile"]
    assert profile.logsnr[0] == 0.0 and all(v >= 0 for v in profile.value) and max(profile.value) > 0


def test_mixed_precision_accumulation_and_checkpointing_run(tmp_path, cache):
    r1 = api.finetune(TINY, small(tmp_path / "a", cache, train__steps=3, train__gradient_checkpointing=True), **QUIET)
    r2 = api.finetune(TINY, small(tmp_path / "b", cache, train__steps=3), **QUIET)
    a, b = _tensors(r1.path), _tensors(r2.path)
    assert all(torch.equal(a[k], b[k]) for k in a)  # recomputation changes nothing
    r3 = api.finetune(TINY, small(tmp_path / "c", cache, train__steps=4, train__mixed_precision="bf16",
                                  train__gradient_accumulation_steps=2, train__batch_size=8), **QUIET)
    assert all(torch.isfinite(v).all() for v in _tensors(r3.path).values())


def test_bench_reports_the_dropout_cost(cache):
    r = api.bench(TINY, {"data.cache": str(cache), "bench.steps": 2, "bench.repeats": 2, "bench.warmup": 1,
                         "model.hidden": 32, "model.depth": 1}, **QUIET)
    assert r["device"].startswith("cpu") and r["ratio"] > 0 and r["cpu_step_ms_dropout"] > 0 and r["dropout_rate"] == 0.2
    assert r["pairs"] == 4 and r["cpu_ratio_95"][0] <= r["cpu_ratio"] <= r["cpu_ratio_95"][1]


def test_sample_grid_rows_are_labelled_with_their_nag_scale(tmp_path):
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    rows = [torch.ones(3, 1, 8, 8), torch.ones(3, 1, 8, 8)]  # white images on the white canvas: only text is dark
    labels = monitor.row_labels(SimpleNamespace(nag_scale=1.5))
    assert labels == ["NAG w=0", "NAG w=1.5"]
    plain = np.asarray(Image.open(monitor.save_grid(rows, tmp_path / "a.png")))
    labelled = np.asarray(Image.open(monitor.save_grid(rows, tmp_path / "b.png", labels)))
    margin = labelled.shape[1] - plain.shape[1]
    assert margin > 0 and (labelled[:, :margin] < 128).any() and (plain > 250).all()
    assert np.array_equal(labelled[:, margin:], plain)  # the images themselves are unchanged
    half = labelled.shape[0] // 2
    assert (labelled[:half, :margin] < 128).any() and (labelled[half:, :margin] < 128).any()  # one label per row


def test_sample_grid_columns_are_labelled_with_their_class_on_top(tmp_path):
    import numpy as np
    from PIL import Image
    assert monitor.column_labels(3, 10) == ["class 0", "class 1", "class 2"]
    assert monitor.column_labels(3, 2) == ["class 0", "class 1", "class 0"]  # sample_rows draws class c % classes
    assert monitor.column_labels(2, 0) == ["#1", "#2"]  # unconditional: the sample's number
    rows = [torch.ones(3, 1, 8, 8), torch.ones(3, 1, 8, 8)]
    plain = np.asarray(Image.open(monitor.save_grid(rows, tmp_path / "a.png")))
    grid = np.asarray(Image.open(monitor.save_grid(rows, tmp_path / "b.png", columns=monitor.column_labels(3, 10))))
    header = grid.shape[0] - plain.shape[0]
    assert header >= 14 and grid.shape[1] == plain.shape[1]  # a readable line of text on top, nothing at the side
    assert np.array_equal(grid[header:], plain)  # the images themselves are unchanged
    third = grid.shape[1] // 3
    for c in range(3):  # one label above each column
        assert (grid[:header, c * third: (c + 1) * third] < 128).any()


def test_an_estimator_without_a_data_set_from_samples_the_checkpoint_generates(tmp_path, base, monkeypatch):
    """`prepare` with data.source='generated': the checkpoint's own samples (pixels in [-1, 1], no conditioning),
    made batch by batch with seeded noise, so an interrupted run continues where it stopped and gives the same
    cache; `estimator` trains on it."""
    from training import generate
    from training.latent_cache import Cache

    opts = {"data.source": "generated", "model.base": str(base), "data.generate_count": 20, "data.generate_steps": 4,
            "data.encode_batch_size": 8}
    whole = api.prepare(TINY, {**opts, "data.cache": str(tmp_path / "whole.safetensors")}, **QUIET)
    cache = Cache(whole)
    net, _ = load_reference_model(base)
    assert len(cache) == 20 and tuple(cache.sample_shape) == tuple(net.in_shape) and cache.info.conditioning == "none"
    x = cache.latents(torch.arange(20)).float()
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05 and not torch.equal(x[0], x[8])

    real = generate._reference  # interrupt the second batch once: a rerun continues and matches the whole run
    calls = []

    def flaky(cfg):
        make, info, shape = real(cfg)

        def make_or_stop(k, rows):
            calls.append(k)
            if k == 1 and calls.count(1) == 1:
                raise KeyboardInterrupt
            return make(k, rows)
        return make_or_stop, info, shape

    monkeypatch.setattr(generate, "_reference", flaky)
    part = str(tmp_path / "part.safetensors")
    with pytest.raises(KeyboardInterrupt):
        api.prepare(TINY, {**opts, "data.cache": part}, **QUIET)
    api.prepare(TINY, {**opts, "data.cache": part}, **QUIET)
    assert calls == [0, 1, 1, 2]  # batch 0 was kept, not made again
    assert torch.equal(Cache(part).latents(torch.arange(20)), cache.latents(torch.arange(20)))
    est = api.estimator(TINY, {"run.out_dir": str(tmp_path / "est"), "data.cache": str(whole), "estimator.steps": 20,
                               "estimator.batch_size": 16, "monitor.eval_size": 16}, **QUIET)
    assert NoiseLevelEstimator.load(est.path)[0].shape == tuple(net.in_shape)
    with pytest.raises(api.ConfigError, match="model.base"):
        api.prepare(TINY, {"data.source": "generated", "data.cache": str(tmp_path / "x.safetensors")}, **QUIET)
