"""`prepare`: a dataset -> the latent cache ``data.cache`` (``latent_cache.py``).

Sources: an image folder (``sources.py``) or a folder of clips (``video.py``: video files or folders of
frames), encoded batch by batch by ``encoders.py`` through :class:`~training.shards.Shards`, so an
interrupted run continues; scikit-learn's digits; precomputed latents [N, C, H, W] or [N, C, T, H, W] +
conditioning; and latents the checkpoint generates itself (``generate.py``: an estimator for a user who has
no images).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from comfy_nag.families import canonical_name
from comfy_nag.files import load_weights, read_metadata

from . import encoders, sources, video
from .config import Config, ConfigError
from .latent_cache import CacheError, CacheInfo, Pieces, check_finite, describe_cache, write_cache
from .latent_spaces import vae_family
from .shards import Shards, file_listing, shard_latents


def prepare(cfg: Config, log=print) -> Path:
    """Build the cache named by ``cfg.data.cache``; returns its path."""
    d = cfg.data
    out = Path(d.cache)
    if d.source == "digits":
        x, y = sources.digits(d.resolution)
        if d.limit:
            x, y = x[: d.limit], y[: d.limit]
        info = CacheInfo("pixels", 0, 0, 0, 0, "class", 10, [str(i) for i in range(10)], source="digits")
        path = write_cache(out, x, info, labels=y)
    elif d.source == "precomputed":
        path = _prepare_precomputed(d.path, out, d.limit, cfg.model.family)
    else:
        path = _prepare_folder(cfg, log)
    log(f"wrote {path}: {describe_cache(CacheInfo.from_metadata(read_metadata(path), path))}")
    return path


@dataclass
class _Items:
    """What a folder ``prepare`` reads, one batch at a time: image files, or clips (``video.py``)."""

    files: list[Path]
    listing: list           # the Shards source: changes when a file does
    read: object            # batch of files -> (pixels [n, (T,) H, W, C] in 0..1 | None, kept positions, [(file, why)])
    captions: object        # files -> captions
    noun: str               # what the files are, in log lines
    unit: str               # what one file is
    mode: str = "RGB"       # the pixels' colour mode (images for the reference models may be grey: "L")


def _items(cfg: Config) -> _Items:
    d, root = cfg.data, Path(cfg.data.path)
    if d.source == "video":
        clips = video.list_clips(root, d.labels, d.limit)
        return _Items(clips, video.clip_listing(clips), lambda b: video.read_clips(b, d.resolution, d.frames, d.frame_stride),
                      video.read_captions, f"clips ({d.frames} frames each)", "clip")
    mode = "RGB" if d.encoder == "comfyui" or d.channels == 3 else "L"
    files = sources.list_images(root, d.labels, d.limit)
    return _Items(files, file_listing(files), lambda b: sources.read_batch(b, d.resolution, mode), sources.read_captions,
                  "images", "image", mode)


def _encoding(cfg: Config) -> encoders.Encoding:
    """The encoder of a folder ``prepare``, checked against the data (clips need a video VAE, in its frame counts)."""
    d = cfg.data
    enc = encoders.comfy_encoders(cfg) if d.encoder == "comfyui" else encoders.pixel_encoding()
    if d.source == "video" and not enc.video:
        raise ConfigError("data.source='video' needs a video VAE (WAN's, for wan21 / wan22-5b): data.vae / "
                          "data.checkpoint holds an image VAE")
    fn = enc.frames
    if d.source == "video" and fn is not None and fn(d.frames) == fn(d.frames - 1):
        ok = [a for a in range(1, d.frames + 64) if fn(a) > fn(a - 1)]
        near = [max(a for a in ok if a < d.frames), min(a for a in ok if a > d.frames)]
        k = ok[1] - ok[0]
        raise ConfigError(f"data.frames={d.frames}: this VAE encodes 1 + {k}k frames (one latent frame, then one per {k}), "
                          f"so the last frames would be dropped; set data.frames to {near[0]} or {near[1]}")
    return enc


def _prepare_folder(cfg: Config, log=print) -> Path:
    """Images or clips -> cache, one batch at a time (see :class:`Shards`); unreadable files are skipped."""
    from tqdm.auto import tqdm
    d, out = cfg.data, Path(cfg.data.cache)
    items = _items(cfg)
    files, root = items.files, Path(d.path)
    captions = items.captions(files) if d.labels == "captions" else None
    settings = {"resolution": d.resolution, "mode": items.mode, "encoder": d.encoder, "checkpoint": d.checkpoint,
                "vae": d.vae, "batch": d.encode_batch_size}
    if d.source == "video":
        settings.update(frames=d.frames, stride=d.frame_stride)
    enc = _encoding(cfg)
    shards = Shards(out, items.listing, settings, log)
    bs = d.encode_batch_size
    batches = -(-len(files) // bs)
    todo = [k for k in range(batches) if not shards.done(k)]
    log(f"reading {len(files)} {items.noun} from {d.path} at {d.resolution}x{d.resolution}, {bs} per batch"
        + (f" ({batches - len(todo)} of {batches} batches already encoded; continuing)" if len(todo) < batches else ""))
    for k in tqdm(todo, desc="prepare", unit="batch", dynamic_ncols=True):
        pixels, kept, bad = items.read(files[k * bs: (k + 1) * bs])
        for p, why in bad:
            log(f"skipped {p}: not a readable {items.unit} ({why})")
        lat = None
        if pixels is not None:
            lat = enc.encode(pixels).contiguous()
            check_finite(lat)
        shards.write(k, lat, [k * bs + i for i in kept], [str(p) for p, _ in bad])
    rows, parts, skipped, shape, dtype = shards.collect(batches)
    if skipped:
        log(f"skipped {len(skipped)} unreadable {items.unit}(s) of {len(files)}; the cache holds the other {len(rows)}")
    if not rows:
        raise CacheError(f"the dataset is empty: none of the {len(files)} {items.unit}s in {root} could be read")
    latents = Pieces((len(rows), *shape), dtype, lambda: shard_latents(parts))
    path = _write_folder_cache(cfg, latents, [files[r] for r in rows], enc,
                               None if captions is None else [captions[r] for r in rows])
    shards.remove()
    return path


def _write_folder_cache(cfg: Config, latents: Pieces, kept_files: list[Path], enc, kept_captions) -> Path:
    """The cache of a folder ``prepare``: latents, and class labels or the caption table."""
    d, root = cfg.data, Path(cfg.data.path)
    cond = {"none": "none", "folders": "class", "captions": "text"}[d.labels]
    names = sorted({p.relative_to(root).parts[0] for p in kept_files}) if d.labels == "folders" else []
    info = CacheInfo("vae" if d.encoder == "comfyui" else "pixels", 0, 0, 0, 0, cond, len(names), names,
                     vae_family=enc.family, source=str(d.path), latent_format=enc.latent_format)
    if kept_captions is not None:
        table = (enc.text_table(kept_captions) if enc.text_table
                 else encoders.precomputed_text(d.conditioning, kept_captions))
        info.captions, info.empty_cond = table.pop("captions"), table.pop("empty_cond")
        return write_cache(Path(d.cache), latents, info, **table)
    labels = (torch.tensor([names.index(p.relative_to(root).parts[0]) for p in kept_files])
              if d.labels == "folders" else None)
    return write_cache(Path(d.cache), latents, info, labels=labels)


def _precomputed_space(meta: dict, lat: torch.Tensor, space: str, model_family: str) -> dict:
    """The family and latent format a precomputed cache records: its file's ``vae_family`` / ``latent_format``
    metadata, else ``model.family`` (checked against the latents' shape), else the registry's one for the shape."""
    if space != "vae":
        return {}
    if meta.get("vae_family") or meta.get("latent_format"):
        return dict(vae_family=canonical_name(meta.get("vae_family", "")), latent_format=meta.get("latent_format", ""))
    fam, fmt = vae_family("", model_family, int(lat.shape[1]), lat.dim() - 2)
    return dict(vae_family=fam, latent_format=fmt)


def _prepare_precomputed(src: str, out: Path, limit: int, model_family: str = "") -> Path:
    tensors, meta = load_weights(src)
    if "latents" not in tensors:
        raise CacheError(f"{src}: a precomputed source needs a 'latents' tensor [N, C, H, W] or [N, C, T, H, W] (and "
                         "optionally 'labels' [N] or 'cross_attn' [N, L, D] + 'pooled_output' [N, P])")
    lat = tensors["latents"]
    n = lat.shape[0] if not limit else min(limit, lat.shape[0])
    lat = lat[:n]
    space = meta.get("latent_space", "vae")
    if space not in ("pixels", "vae"):
        raise CacheError(f"{src}: metadata latent_space={space!r}; expected 'pixels' or 'vae'")
    if lat.dim() not in (4, 5):
        raise CacheError(f"{src}: latents must be [N, C, H, W] (images) or [N, C, T, H, W] (video), got shape "
                         f"{list(lat.shape)}")
    names = json.loads(meta["class_names"]) if "class_names" in meta else []
    common = dict(source=str(src), **_precomputed_space(meta, lat, space, model_family))
    if "cross_attn" in tensors:
        ca = tensors["cross_attn"][:n]
        if ca.dim() != 3 or ca.shape[0] != n:
            raise CacheError(f"{src}: cross_attn must be [N, L, D] with one row per latent, got {list(ca.shape)}")
        pooled = tensors.get("pooled_output")
        info = CacheInfo(space, 0, 0, 0, 0, "text", captions=[f"#{i}" for i in range(n)], empty_cond=-1, **common)
        return write_cache(out, lat, info, cond_index=torch.arange(n), cross_attn=ca.reshape(-1, ca.shape[-1]),
                           cond_offsets=torch.arange(n + 1) * ca.shape[1],
                           pooled_output=None if pooled is None else pooled[:n])
    if "labels" in tensors:
        info = CacheInfo(space, 0, 0, 0, 0, "class", 0, names, **common)
        return write_cache(out, lat, info, labels=tensors["labels"][:n])
    return write_cache(out, lat, CacheInfo(space, 0, 0, 0, 0, "none", **common))
