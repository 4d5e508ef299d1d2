"""`prepare`: a dataset -> the latent cache ``data.cache`` (``latent_cache.py``).

Sources: an image folder (``sources.py``, encoded batch by batch by ``encoders.py`` through
:class:`~training.shards.Shards`, so an interrupted run continues), scikit-learn's digits, precomputed
latents + conditioning, and latents the checkpoint generates itself (``generate.py``: an estimator for
a user who has no images).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from comfy_nag.files import load_weights, read_metadata

from . import encoders, sources
from .config import Config
from .latent_cache import CacheError, CacheInfo, Pieces, check_finite, describe_cache, write_cache
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
        path = _prepare_precomputed(d.path, out, d.limit)
    else:
        path = _prepare_folder(cfg, log)
    log(f"wrote {path}: {describe_cache(CacheInfo.from_metadata(read_metadata(path), path))}")
    return path


def _prepare_folder(cfg: Config, log=print) -> Path:
    """Images -> cache, one batch at a time (see :class:`Shards`); unreadable images are skipped."""
    from tqdm.auto import tqdm
    d, out = cfg.data, Path(cfg.data.cache)
    root = Path(d.path)
    files = sources.list_images(root, d.labels, d.limit)
    captions = sources.read_captions(files) if d.labels == "captions" else None
    mode = "RGB" if d.encoder == "comfyui" or d.channels == 3 else "L"
    settings = {"resolution": d.resolution, "mode": mode, "encoder": d.encoder, "checkpoint": d.checkpoint,
                "vae": d.vae, "batch": d.encode_batch_size}
    shards = Shards(out, file_listing(files), settings, log)
    bs = d.encode_batch_size
    batches = -(-len(files) // bs)
    todo = [k for k in range(batches) if not shards.done(k)]
    log(f"reading {len(files)} images from {d.path} at {d.resolution}x{d.resolution}, {bs} per batch"
        + (f" ({batches - len(todo)} of {batches} batches already encoded; continuing)" if len(todo) < batches else ""))
    if d.encoder == "comfyui":
        encode, text_table, fam = encoders.comfy_encoders(cfg)
    else:
        encode, text_table, fam = (lambda px: torch.from_numpy(px).permute(0, 3, 1, 2) * 2 - 1), None, ""
    for k in tqdm(todo, desc="prepare", unit="batch", dynamic_ncols=True):
        batch = files[k * bs: (k + 1) * bs]
        pixels, kept, bad = sources.read_batch(batch, d.resolution, mode)
        for p, why in bad:
            log(f"skipped {p}: not a readable image ({why})")
        lat = None
        if pixels is not None:
            lat = encode(pixels).contiguous()
            check_finite(lat)
        shards.write(k, lat, [k * bs + i for i in kept], [str(p) for p, _ in bad])
    rows, parts, skipped, shape, dtype = shards.collect(batches)
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s) of {len(files)}; the cache holds the other {len(rows)}")
    if not rows:
        raise CacheError(f"the dataset is empty: none of the {len(files)} images in {root} could be read")
    latents = Pieces((len(rows), *shape), dtype, lambda: shard_latents(parts))
    cond = {"none": "none", "folders": "class", "captions": "text"}[d.labels]
    kept_files = [files[r] for r in rows]
    names = sorted({p.relative_to(root).parts[0] for p in files}) if d.labels == "folders" else []
    info = CacheInfo("vae" if d.encoder == "comfyui" else "pixels", 0, 0, 0, 0, cond, len(names), names,
                     vae_family=fam, source=str(d.path))
    if captions is not None:
        kept_captions = [captions[r] for r in rows]
        table = text_table(kept_captions) if text_table else encoders.precomputed_text(d.conditioning, kept_captions)
        info.captions, info.empty_cond = table.pop("captions"), table.pop("empty_cond")
        path = write_cache(out, latents, info, **table)
    else:
        labels = (torch.tensor([names.index(p.relative_to(root).parts[0]) for p in kept_files])
                  if d.labels == "folders" else None)
        path = write_cache(out, latents, info, labels=labels)
    shards.remove()
    return path


def _prepare_precomputed(src: str, out: Path, limit: int) -> Path:
    tensors, meta = load_weights(src)
    if "latents" not in tensors:
        raise CacheError(f"{src}: a precomputed source needs a 'latents' tensor [N, C, H, W] (and optionally 'labels' "
                         "[N] or 'cross_attn' [N, L, D] + 'pooled_output' [N, P])")
    lat = tensors["latents"]
    n = lat.shape[0] if not limit else min(limit, lat.shape[0])
    lat = lat[:n]
    space = meta.get("latent_space", "vae")
    if space not in ("pixels", "vae"):
        raise CacheError(f"{src}: metadata latent_space={space!r}; expected 'pixels' or 'vae'")
    names = json.loads(meta["class_names"]) if "class_names" in meta else []
    if "cross_attn" in tensors:
        ca = tensors["cross_attn"][:n]
        if ca.dim() != 3 or ca.shape[0] != n:
            raise CacheError(f"{src}: cross_attn must be [N, L, D] with one row per latent, got {list(ca.shape)}")
        pooled = tensors.get("pooled_output")
        info = CacheInfo(space, 0, 0, 0, 0, "text", vae_family=meta.get("vae_family", ""), source=str(src),
                         captions=[f"#{i}" for i in range(n)], empty_cond=-1)
        return write_cache(out, lat, info, cond_index=torch.arange(n), cross_attn=ca.reshape(-1, ca.shape[-1]),
                           cond_offsets=torch.arange(n + 1) * ca.shape[1],
                           pooled_output=None if pooled is None else pooled[:n])
    if "labels" in tensors:
        info = CacheInfo(space, 0, 0, 0, 0, "class", 0, names, vae_family=meta.get("vae_family", ""), source=str(src))
        return write_cache(out, lat, info, labels=tensors["labels"][:n])
    info = CacheInfo(space, 0, 0, 0, 0, "none", vae_family=meta.get("vae_family", ""), source=str(src))
    return write_cache(out, lat, info)
