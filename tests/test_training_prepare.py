"""`prepare` on an image folder: batch by batch, resumable, unreadable images skipped and counted."""

import numpy as np
import pytest
import torch
from PIL import Image

from training import api, sources
from training.latent_cache import Cache, CacheError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(10):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 18, 3)).astype(np.uint8)).save(cls / f"{i:02d}.png")
    (root / "cat" / "03b.png").write_bytes(b"not an image")             # unreadable
    good = (root / "dog" / "00.png").read_bytes()
    (root / "dog" / "04b.png").write_bytes(good[: len(good) // 2])        # truncated
    return root


def opts(folder, cache, **kw):
    o = {"data.source": "folder", "data.path": str(folder), "data.labels": "folders", "data.resolution": 8,
         "data.cache": str(cache), "data.encode_batch_size": 3}
    o.update(kw)
    return o


def test_prepare_skips_unreadable_images_with_one_line_each(folder, tmp_path):
    lines = []
    path = api.prepare(None, opts(folder, tmp_path / "c.safetensors"), log=lines.append)
    c = Cache(path)
    assert len(c) == 10 and c.info.class_names == ["cat", "dog"]
    skipped = [ln for ln in lines if ln.startswith("skipped ")]
    assert len(skipped) == 3 and "03b.png" in skipped[0] and "04b.png" in skipped[1]
    assert skipped[2].startswith("skipped 2 unreadable image(s) of 12")
    files = sorted(p for p in folder.rglob("*.png") if p.name[2:3] != "b")
    assert c.labels(torch.arange(10)).tolist() == [0 if p.parent.name == "cat" else 1 for p in files]
    # row 0 is the first readable file, resized/cropped to 8x8 in [-1, 1]
    want = np.asarray(sources.square(Image.open(files[0]).convert("RGB"), 8), dtype=np.float32) / 255.0 * 2 - 1
    assert torch.allclose(c.latents(torch.tensor([0]))[0], torch.from_numpy(want).permute(2, 0, 1), atol=1e-6)
    assert not list(tmp_path.glob("*.partial"))  # work folder removed once the cache is written


def test_interrupted_prepare_resumes_where_it_stopped(folder, tmp_path, monkeypatch):
    ref = Cache(api.prepare(None, opts(folder, tmp_path / "ref.safetensors"), log=lambda *a: None))
    original, calls = sources.read_batch, []

    def interrupted(files, *a):
        calls.append(files[0].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(files, *a)

    monkeypatch.setattr(sources, "read_batch", interrupted)
    cache = tmp_path / "c.safetensors"
    with pytest.raises(KeyboardInterrupt):
        api.prepare(None, opts(folder, cache), log=lambda *a: None)
    assert not cache.exists() and len(list((tmp_path / "c.safetensors.partial").glob("batch_*"))) == 2
    calls.clear()
    lines = []
    c = Cache(api.prepare(None, opts(folder, cache), log=lines.append))
    assert len(calls) == 2 and "(2 of 4 batches already encoded; continuing)" in lines[0]
    assert torch.equal(c.latents(torch.arange(10)), ref.latents(torch.arange(10)))
    assert torch.equal(c.labels(torch.arange(10)), ref.labels(torch.arange(10)))
    # shards made with other settings are not reused
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        api.prepare(None, opts(folder, tmp_path / "d.safetensors"), log=lambda *a: None)
    assert len(list((tmp_path / "d.safetensors.partial").glob("batch_*"))) == 2
    lines.clear()
    monkeypatch.setattr(sources, "read_batch", original)
    c = Cache(api.prepare(None, opts(folder, tmp_path / "d.safetensors", **{"data.resolution": 6}),
                               log=lines.append))
    assert "discarding" in lines[0] and "already encoded" not in lines[1] and c.sample_shape == (3, 6, 6)


def test_a_folder_of_only_unreadable_images_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.png").write_bytes(b"junk")
    with pytest.raises(CacheError, match="none of the 1 images"):
        api.prepare(None, opts(tmp_path / "x", tmp_path / "c.safetensors", **{"data.labels": "none"}),
                    log=lambda *a: None)
