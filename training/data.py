"""`prepare`: images + labels/captions -> a latent cache; and reading that cache back.

A cache is one safetensors file:

==================  ===========================================================================
tensor              meaning
==================  ===========================================================================
``latents``         [N, C, H, W]: pixels in [-1, 1] (``latent_space = "pixels"``, reference
                    models) or raw VAE latents as ComfyUI's VAEEncode returns them
                    (``"vae"``; the trainer applies the model's ``latent_format.process_in``)
``labels``          [N] int64 class ids (``conditioning = "class"``)
``cond_index``      [N] int64 row of each sample's caption in the caption table (``"text"``)
``cross_attn``      [T, D] the caption table's tokens, all captions back to back
``cond_offsets``    [K + 1] int64 start of caption k in ``cross_attn`` (captions may differ in length)
``pooled_output``   [K, P] pooled text embedding per caption (models that use one)
==================  ===========================================================================

Metadata (``nag_cache.*``, strings) records the format, latent space, shape, conditioning,
class names or captions, the family of the VAE that encoded it, and the empty caption's row
(for caption dropout).  Sources ``prepare`` supports: an image folder (class = first sub-folder,
or a caption in a ``.txt`` beside each image, or none), scikit-learn's 8x8 digits (the tiny
reference dataset), precomputed latents + conditioning, and latents the checkpoint generates itself
(``generate.py``: an estimator for a user who has no images).  Images are resized on the short
side and centre-cropped to a square (no aspect-ratio buckets).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from comfy_nag.files import WeightFileError, atomic_write_bytes, load_weights, read_metadata, save_weights, \
    save_weights_streamed

from .config import Config, ConfigError

CACHE_FORMAT = "comfy-nag-cache/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAZY_BYTES = 512 << 20  # caches larger than this are read row by row instead of into memory


class CacheError(ValueError):
    """A cache is missing, empty, damaged or does not fit the model."""


@dataclass
class CacheInfo:
    latent_space: str                 # "pixels" | "vae"
    channels: int
    height: int
    width: int
    count: int
    conditioning: str                 # "none" | "class" | "text"
    num_classes: int = 0
    class_names: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    empty_cond: int = -1              # caption-table row of "" (-1: none)
    vae_family: str = ""              # family of the model whose VAE encoded the latents ("" unknown)
    source: str = ""

    def metadata(self) -> dict[str, str]:
        meta = {"nag_cache.format": CACHE_FORMAT}
        for k, v in self.__dict__.items():
            meta[f"nag_cache.{k}"] = v if isinstance(v, str) else json.dumps(v)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict, path) -> "CacheInfo":
        if meta.get("nag_cache.format") != CACHE_FORMAT:
            raise CacheError(f"{path}: not a comfy-nag latent cache (no nag_cache.format={CACHE_FORMAT} metadata); "
                             "create it with `python -m training prepare`")
        kw = {}
        for name, f in cls.__dataclass_fields__.items():
            key = f"nag_cache.{name}"
            if key in meta:
                kw[name] = meta[key] if f.type == "str" else json.loads(meta[key])
        return cls(**kw)


@dataclass
class Pieces:
    """A tensor kept as consecutive slices along dim 0 (``chunks()`` yields them): how ``prepare``
    streams latents into the cache without holding them all."""

    shape: tuple
    dtype: torch.dtype
    chunks: object  # () -> iterable of tensors


def write_cache(path, latents: torch.Tensor | Pieces, info: CacheInfo, labels=None, cond_index=None, cross_attn=None,
                cond_offsets=None, pooled_output=None) -> Path:
    """Validate and atomically write a cache file (also the programmatic entry for in-memory data).

    ``latents`` is a tensor, or :class:`Pieces` already checked for NaN/Inf piece by piece."""
    if len(latents.shape) != 4:
        raise CacheError(f"latents must be [N, C, H, W], got shape {list(latents.shape)}")
    n = latents.shape[0]
    if n == 0:
        raise CacheError("the dataset is empty: no images were found/encoded, nothing to cache")
    if isinstance(latents, torch.Tensor):
        _check_finite(latents)
        latents = Pieces(tuple(latents.shape), latents.dtype, lambda t=latents: [t])
    info.channels, info.height, info.width = (int(s) for s in latents.shape[1:])
    info.count = int(n)
    tensors = {}
    if info.conditioning == "class":
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (n,) or labels.min() < 0:
            raise CacheError(f"labels must be [N] non-negative class ids, got shape {list(labels.shape)}")
        info.num_classes = max(info.num_classes, int(labels.max()) + 1)
        tensors["labels"] = labels
    elif info.conditioning == "text":
        cond_index = torch.as_tensor(cond_index, dtype=torch.long)
        k = cond_offsets.shape[0] - 1
        if cond_index.shape != (n,) or cond_index.min() < 0 or cond_index.max() >= k:
            raise CacheError(f"cond_index must be [N] rows into the {k} captions")
        if cross_attn.dim() != 2 or int(cond_offsets[-1]) != cross_attn.shape[0]:
            raise CacheError("cross_attn must be [tokens, dim] with cond_offsets ending at its length")
        tensors.update(cond_index=cond_index, cross_attn=cross_attn, cond_offsets=cond_offsets.long())
        if pooled_output is not None:
            if pooled_output.shape[0] != k:
                raise CacheError(f"pooled_output has {pooled_output.shape[0]} rows for {k} captions")
            tensors["pooled_output"] = pooled_output
    entries = {k: (v.dtype, list(v.shape), lambda v=v: [v]) for k, v in tensors.items()}
    entries["latents"] = (latents.dtype, list(latents.shape), latents.chunks)
    return save_weights_streamed(path, entries, info.metadata())


def _check_finite(latents: torch.Tensor) -> None:
    if not torch.isfinite(latents.float()).all():
        raise CacheError("latents contain NaN/Inf; the encoder (VAE) produced invalid values")


class Cache:
    """Read access to a cache; small ones are held in memory, large ones read row by row."""

    def __init__(self, path, lazy: bool | None = None):
        self.path = Path(path)
        try:
            meta = read_metadata(self.path)
        except WeightFileError as e:
            raise CacheError(f"data.cache: {e}") from None
        self.info = CacheInfo.from_metadata(meta, self.path)
        if self.info.count <= 0:
            raise CacheError(f"{self.path}: the cache holds no samples (empty dataset); re-run `prepare` on a folder with images")
        lazy = self.path.stat().st_size > LAZY_BYTES if lazy is None else lazy
        if lazy:
            self._file = safe_open(str(self.path), "pt")
            self._tensors = {k: self._file.get_tensor(k) for k in self._file.keys() if k != "latents"}
            shape = self._file.get_slice("latents").get_shape()
        else:
            self._file = None
            try:
                self._tensors, _ = load_weights(self.path)
            except WeightFileError as e:
                raise CacheError(f"data.cache: {e}") from None
            shape = list(self._tensors["latents"].shape)
        want = [self.info.count, self.info.channels, self.info.height, self.info.width]
        if list(shape) != want:
            raise CacheError(f"{self.path}: latents have shape {list(shape)} but the metadata says {want}; "
                             "the cache is damaged - re-run `prepare`")

    def __len__(self) -> int:
        return self.info.count

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.info.channels, self.info.height, self.info.width

    def latents(self, idx: torch.Tensor) -> torch.Tensor:
        if self._file is None:
            return self._tensors["latents"][idx].float()
        sl = self._file.get_slice("latents")
        return torch.cat([sl[int(i): int(i) + 1] for i in idx]).float()

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self._tensors["labels"][idx]

    def text(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Cross-attention tensors [1, L_k, D] and pooled outputs [B, P] of caption-table rows."""
        off, ca = self._tensors["cond_offsets"], self._tensors["cross_attn"]
        conds = [ca[int(off[r]): int(off[r + 1])].float()[None] for r in rows]
        pooled = self._tensors.get("pooled_output")
        return conds, (pooled[rows].float() if pooled is not None else None)

    def cond_index(self, idx: torch.Tensor) -> torch.Tensor:
        return self._tensors["cond_index"][idx]


# --- prepare ---------------------------------------------------------------------------------

def _square(img, size: int):
    from PIL import Image
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _list_images(root: Path, labels: str, limit: int):
    if not root.is_dir():
        raise ConfigError(f"data.path {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if labels == "folders":
        files = [p for p in files if p.parent != root]
    if limit:
        files = files[:limit]
    if not files:
        extra = " inside class sub-folders" if labels == "folders" else ""
        raise CacheError(f"the dataset is empty: no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}{extra}")
    return files


def _read_batch(files, resolution: int, mode: str) -> tuple[np.ndarray | None, list[int], list[tuple]]:
    """Decode, resize and crop one batch: ``(pixels [n, H, W, C] in 0..1, kept positions, [(file, reason)])``."""
    from PIL import Image
    out, kept, bad = [], [], []
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                out.append(np.asarray(_square(im.convert(mode), resolution), dtype=np.float32) / 255.0)
            kept.append(i)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            bad.append((p, f"{type(e).__name__}: {e}"))
    if not out:
        return None, kept, bad
    arr = np.stack(out)
    return (arr[..., None] if arr.ndim == 3 else arr), kept, bad


def _captions(files) -> list[str]:
    caps = []
    for p in files:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise CacheError(f"{p}: no caption file {txt.name} beside it (data.labels='captions')")
        caps.append(txt.read_text(encoding="utf-8").strip())
    return caps


def _digits(resolution: int):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1  # [N, 1, 8, 8] in [-1, 1]
    if resolution and resolution != 8:
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x, torch.from_numpy(d.target).long()


def _text_table(captions: list[str], encode, with_empty: bool = True) -> dict:
    """Unique captions (plus "" for caption dropout) -> caption-table tensors.

    ``encode(text) -> (cond [1, L, D], pooled [1, P] | None)``.
    """
    unique = sorted(set(captions) | ({""} if with_empty else set()))
    conds, pooled = [], []
    for text in unique:
        c, p = encode(text)
        conds.append(c[0].float())
        if p is not None:
            pooled.append(p.reshape(-1).float())
    if pooled and len(pooled) != len(conds):
        raise CacheError("the text encoder returned a pooled output for some captions only")
    row = {t: i for i, t in enumerate(unique)}
    offsets = torch.tensor([0] + [c.shape[0] for c in conds]).cumsum(0)
    return dict(cond_index=torch.tensor([row[c] for c in captions]), cross_attn=torch.cat(conds).half(),
                cond_offsets=offsets, pooled_output=torch.stack(pooled).half() if pooled else None,
                captions=unique, empty_cond=row.get("", -1))


def _precomputed_text(path: str, captions: list[str]) -> dict:
    """Caption table from a precomputed conditioning file (no empty entry there: no caption dropout)."""
    tensors, meta = load_weights(path)
    try:
        table = json.loads(meta.get("captions", "null"))
    except json.JSONDecodeError:
        table = None
    if not isinstance(table, list) or "cross_attn" not in tensors:
        raise CacheError(f"data.conditioning {path}: expected tensors cross_attn [K, L, D] (+ pooled_output [K, P]) "
                         "and metadata 'captions' = JSON list of the K captions")
    ca, pooled = tensors["cross_attn"], tensors.get("pooled_output")
    if ca.dim() != 3 or ca.shape[0] != len(table):
        raise CacheError(f"data.conditioning {path}: cross_attn has shape {list(ca.shape)} for {len(table)} captions")
    missing = sorted(set(captions) - set(table))
    if missing:
        raise CacheError(f"data.conditioning {path} has no entry for {len(missing)} caption(s), e.g. {missing[0]!r}")
    lookup = {t: i for i, t in enumerate(table)}
    return _text_table(captions, lambda t: (ca[lookup[t]][None], None if pooled is None else pooled[lookup[t]][None]),
                       with_empty="" in lookup)


def _comfy_encoders(cfg: Config):
    """``(encode(pixels [n,H,W,C] 0..1) -> fp16 latents, text_table(captions), vae family)`` through ComfyUI."""
    from . import comfyui
    d = cfg.data
    vae, clip, fam = comfyui.load_encoders(d.checkpoint, d.vae, d.text_encoders, d.clip_type)

    def encode(pixels: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(pixels)
        if img.shape[-1] == 1:
            img = img.expand(-1, -1, -1, 3)
        return vae.encode(img).float().cpu().half()

    def text_table(captions: list[str]) -> dict:
        if d.conditioning:
            return _precomputed_text(d.conditioning, captions)
        if clip is None:
            raise CacheError("captions need text encoders, but data.checkpoint has none; set data.text_encoders "
                             "or data.conditioning")

        def encode_text(text):
            out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
            return out["cond"].cpu(), (out.get("pooled_output").cpu() if out.get("pooled_output") is not None else None)

        return _text_table(captions, encode_text)
    return encode, text_table, fam


class Shards:
    """``prepare``'s work in progress: one safetensors file per encoded batch in ``<cache>.partial/``.

    A batch is encoded once: a rerun after an interruption skips the batches already on disk (the
    folder is kept only while the file list and encoding settings are unchanged), and the final
    cache is streamed from the shards, so memory holds one batch whatever the dataset's size.
    """

    def __init__(self, cache: Path, source, settings: dict, log=print):
        """``source``: what the batches are made from (JSON-able; e.g. :func:`file_listing`), with ``settings``
        the key a kept folder must match."""
        self.dir = cache.with_name(cache.name + ".partial")
        self.key = hashlib.sha256(json.dumps([settings, source]).encode()).hexdigest()
        manifest = self.dir / "manifest.json"
        if self.dir.is_dir():
            try:
                same = json.loads(manifest.read_text()).get("key") == self.key
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                log(f"discarding {self.dir}: it was made from other data or settings")
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(manifest, json.dumps({"key": self.key}).encode())

    def path(self, k: int) -> Path:
        return self.dir / f"batch_{k:06d}.safetensors"

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def write(self, k: int, latents: torch.Tensor | None, rows: list[int], skipped: list[str]) -> None:
        tensors = {"rows": torch.tensor(rows, dtype=torch.long)}
        if latents is not None:
            tensors["latents"] = latents
        save_weights(self.path(k), tensors, {"skipped": skipped})

    def collect(self, batches: int) -> tuple[list[int], list[Path], list[str], tuple, torch.dtype]:
        """Kept rows, shard files holding latents, skipped files, latent shape [C,H,W] and dtype."""
        rows, parts, skipped, shape, dtype = [], [], [], None, None
        for k in range(batches):
            with safe_open(str(self.path(k)), "pt") as f:
                skipped += json.loads(f.metadata().get("skipped", "[]"))
                rows += f.get_tensor("rows").tolist()
                if "latents" in f.keys():
                    sl = f.get_slice("latents")
                    shape, dtype = tuple(sl.get_shape()[1:]), sl.get_dtype()
                    parts.append(self.path(k))
        dtype = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}.get(dtype, torch.float32)
        return rows, parts, skipped, shape, dtype

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def file_listing(files: list[Path]) -> list:
    """Path, size and modification time of each file: a :class:`Shards` source that changes when a file does."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _shard_latents(parts: list[Path]):
    for p in parts:
        with safe_open(str(p), "pt") as f:
            yield f.get_tensor("latents")


def prepare(cfg: Config, log=print) -> Path:
    """Build the cache named by ``cfg.data.cache``; returns its path."""
    d = cfg.data
    out = Path(d.cache)
    if d.source == "digits":
        x, y = _digits(d.resolution)
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
    files = _list_images(root, d.labels, d.limit)
    captions = _captions(files) if d.labels == "captions" else None
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
        encode, text_table, fam = _comfy_encoders(cfg)
    else:
        encode, text_table, fam = (lambda px: torch.from_numpy(px).permute(0, 3, 1, 2) * 2 - 1), None, ""
    for k in tqdm(todo, desc="prepare", unit="batch", dynamic_ncols=True):
        batch = files[k * bs: (k + 1) * bs]
        pixels, kept, bad = _read_batch(batch, d.resolution, mode)
        for p, why in bad:
            log(f"skipped {p}: not a readable image ({why})")
        lat = None
        if pixels is not None:
            lat = encode(pixels).contiguous()
            _check_finite(lat)
        shards.write(k, lat, [k * bs + i for i in kept], [str(p) for p, _ in bad])
    rows, parts, skipped, shape, dtype = shards.collect(batches)
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s) of {len(files)}; the cache holds the other {len(rows)}")
    if not rows:
        raise CacheError(f"the dataset is empty: none of the {len(files)} images in {root} could be read")
    latents = Pieces((len(rows), *shape), dtype, lambda: _shard_latents(parts))
    cond = {"none": "none", "folders": "class", "captions": "text"}[d.labels]
    kept_files = [files[r] for r in rows]
    names = sorted({p.relative_to(root).parts[0] for p in files}) if d.labels == "folders" else []
    info = CacheInfo("vae" if d.encoder == "comfyui" else "pixels", 0, 0, 0, 0, cond, len(names), names,
                     vae_family=fam, source=str(d.path))
    if captions is not None:
        kept_captions = [captions[r] for r in rows]
        table = text_table(kept_captions) if text_table else _precomputed_text(d.conditioning, kept_captions)
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


def describe_cache(info: CacheInfo) -> str:
    cond = {"class": f"{info.num_classes} classes", "text": f"{len(info.captions)} captions",
            "none": "unconditional"}[info.conditioning]
    vae = f", VAE of {info.vae_family}" if info.vae_family else ""
    return (f"{info.count} samples of {info.channels}x{info.height}x{info.width} {info.latent_space}{vae}, {cond}"
            + (", empty caption stored" if info.empty_cond >= 0 else ""))
