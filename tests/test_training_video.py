"""The trainer's video data without ComfyUI: 5-D latent caches, clip folders, family names and the one-line refusals
that need no model.  (The same with ComfyUI's models, VAE and LoRA loading: tests/test_training_comfy_video.py.)"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_nag.files import save_weights
from training import api, config_loading, preflight, video
from training.config import ConfigError
from training.latent_cache import CACHE_FORMAT, Cache, CacheError, CacheInfo, write_cache
from training.latent_spaces import _family_name, estimator_space

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *a: None)
VIDEO_CONFIGS = ("wan21_estimator", "wan22_5b_estimator", "qwen_image_estimator", "wan22_lora", "qwen_image_lora")


def precomputed(path, latents, **meta):
    save_weights(path, {"latents": latents}, {"latent_space": "vae", **meta})
    return path


def test_5d_latents_make_a_video_cache_that_reads_back_lazily(tmp_path):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(6, 16, 3, 4, 4, generator=g)
    src = precomputed(tmp_path / "lat.safetensors", lat)
    path = api.prepare(None, {"data.source": "precomputed", "data.path": str(src),
                              "data.cache": str(tmp_path / "c.safetensors"), "model.family": "wan22-a14b"}, **QUIET)
    c = Cache(path)
    assert c.video and c.sample_shape == (16, 3, 4, 4) and len(c) == 6
    assert c.info.vae_family == "wan21" and c.info.latent_format == "Wan21"  # the alias, read as its family
    assert torch.equal(c.latents(torch.tensor([4, 1])), lat[[4, 1]])
    assert torch.equal(Cache(path, lazy=True).latents(torch.tensor([4, 1])), lat[[4, 1]])
    assert "comfy-nag-cache/2" in api.inspect(path) and "6 samples of 16x3x4x4 (C x T x H x W) vae" in api.inspect(path)
    image = write_cache(tmp_path / "i.safetensors", torch.zeros(2, 4, 8, 8), CacheInfo("vae", 0, 0, 0, 0, "none"))
    from comfy_nag.files import read_metadata
    meta = read_metadata(image)  # image caches keep format 1 and its keys: older trainers still read them
    assert meta["nag_cache.format"] == CACHE_FORMAT and "nag_cache.frames" not in meta
    assert Cache(image).sample_shape == (4, 8, 8) and not Cache(image).video
    with pytest.raises(CacheError, match=r"latents must be \[N, C, H, W\] \(images\) or \[N, C, T, H, W\] \(video\)"):
        write_cache(tmp_path / "x.safetensors", torch.zeros(2, 4, 1, 1, 8, 8), CacheInfo("vae", 0, 0, 0, 0, "none"))


def _frames(folder: Path, n: int, size: int = 24):
    from PIL import Image
    folder.mkdir(parents=True)
    for t in range(n):
        Image.fromarray(np.full((size, size + 8, 3), 30 * t, np.uint8)).save(folder / f"{t:03d}.png")


def test_clip_folders_read_frames_in_order_and_skip_short_clips(tmp_path):
    _frames(tmp_path / "clips" / "a", 9)
    _frames(tmp_path / "clips" / "b", 3)
    (tmp_path / "clips" / "a.txt").write_text("first clip")
    clips = video.list_clips(tmp_path / "clips", "none", 0)
    assert [c.name for c in clips] == ["a", "b"] and video.read_captions(clips[:1]) == ["first clip"]
    px, kept, bad = video.read_clips(clips, 16, 5, 2)
    assert px.shape == (1, 5, 16, 16, 3) and kept == [0] and bad[0][1].startswith("2 frames, fewer than data.frames=5")
    assert np.allclose(px[0, :, 0, 0, 0] * 255, [0, 60, 120, 180, 240], atol=1)  # every 2nd frame, in name order


def test_video_files_without_pyav_are_refused_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "walk.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setattr(video.importlib.util, "find_spec", lambda name, *a: None if name == "av" else object())
    with pytest.raises(ConfigError, match=r"holds video files \(walk.mp4, ...\) but PyAV .* is not installed") as e:
        video.list_clips(tmp_path / "clips", "none", 0)
    assert "\n" not in str(e.value) and "folder of its frame images" in str(e.value)


def test_family_aliases_are_accepted_and_typos_refused():
    cfg = config_loading.load(None, {"model.family": "wan22-a14b", "estimator.family": "qwen"})
    assert cfg.model.family == "wan21" and cfg.estimator.family == "qwen-image" and not cfg.is_reference
    assert config_loading.load(None, {"model.family": "sd15"}).model.family == "sd1"
    with pytest.raises(ConfigError, match="model.family = .wan22-a41b. is not one of .* Did you mean .wan22-a14b."):
        config_loading.load(None, {"model.family": "wan22-a41b"})


def _video_cache(path, frames=2, channels=16, **info):
    return write_cache(path, torch.zeros(2, channels, frames, 4, 4), CacheInfo("vae", 0, 0, 0, 0, "none", **info))


def test_an_estimator_is_for_the_cache_s_latent_space_or_refused_in_one_line(tmp_path):
    clips = _video_cache(tmp_path / "clips.safetensors")
    cfg = config_loading.load(None, {"data.cache": str(clips), "model.family": "auto"})
    with pytest.raises(ConfigError, match="holds VAE latents .* wan21, hunyuan-video share this latent shape"):
        _family_name(cfg, Cache(clips))  # 16-channel clips: WAN 2.1's or HunyuanVideo's (Qwen-Image makes one frame)
    wan = Cache(_video_cache(tmp_path / "wan.safetensors", latent_format="Wan21"))
    assert _family_name(cfg, wan) == "wan21"
    assert _family_name(cfg, Cache(_video_cache(tmp_path / "5b.safetensors", channels=48))) == "wan22-5b"
    one = Cache(_video_cache(tmp_path / "one.safetensors", frames=1))
    with pytest.raises(ConfigError, match="holds VAE latents .* wan21, qwen-image, hunyuan-video share this latent shape"):
        _family_name(cfg, one)
    cfg = config_loading.load(None, {"data.cache": str(wan.path), "estimator.family": "sd3"})
    with pytest.raises(ConfigError) as e:  # was: an estimator labelled sd3, trained on WAN latents
        estimator_space(cfg, wan)
    assert str(e.value).endswith(
        "holds Wan21 video latents [16, 2, 4, 4], but family 'sd3' uses SD3 image latents [16, H, W]; set "
        "estimator.family to wan21 or qwen-image") and "\n" not in str(e.value)
    cfg = config_loading.load(None, {"data.cache": str(clips), "model.family": "dit", "model.base": ""})
    with pytest.raises(CacheError, match="holds video latents .* the reference models"):
        api.finetune(cfg, {"run.out_dir": str(tmp_path / "ref")}, **QUIET)


def test_cli_refusals_for_video_data_are_one_line(tmp_path):
    clips = _video_cache(tmp_path / "clips.safetensors")
    cases = [(["estimator", "--cache", str(clips), "--out", str(tmp_path / "e"), "--set", "estimator.family=sd3"],
              "but family 'sd3' uses SD3 image latents"),
             (["prepare", "--cache", str(tmp_path / "p.safetensors"), "--set", "data.source=video", "--path",
               str(tmp_path), "--resolution", "32"], "data.source='video' encodes clips with a video VAE")]
    for args, words in cases:
        r = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr


def test_shipped_video_configs_parse_and_pass_their_commands_checks():
    """The WAN / Qwen-Image configs: valid keys and values, and every command each is for passes its checks."""
    for name in VIDEO_CONFIGS:
        cfg = config_loading.load(ROOT / f"training/configs/{name}.toml")
        assert cfg.model.family in ("wan21", "wan22-5b", "qwen-image") and not cfg.is_reference
        commands = ("prepare", "finetune") if name.endswith("lora") else ("prepare", "estimator")
        for command in commands:
            preflight.require(cfg, command)
        if name.endswith("lora"):
            assert cfg.train.mode == "lora" and cfg.model.dtype == "bf16" and cfg.data.labels == "captions"
        else:
            assert cfg.estimator.steps >= 10000 and cfg.data.source in ("generated", "video", "folder")
