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
reference dataset), and precomputed latents + conditioning.  Images are resized on the short
side and centre-cropped to a square (no aspect-ratio buckets).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from comfy_nag.files import WeightFileError, load_weights, read_metadata, save_weights

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


def write_cache(path, latents: torch.Tensor, info: CacheInfo, labels=None, cond_index=None, cross_attn=None,
                cond_offsets=None, pooled_output=None) -> Path:
    """Validate and atomically write a cache file (also the programmatic entry for in-memory data)."""
    if latents.dim() != 4:
        raise CacheError(f"latents must be [N, C, H, W], got shape {list(latents.shape)}")
    n = latents.shape[0]
    if n == 0:
        raise CacheError("the dataset is empty: no images were found/encoded, nothing to cache")
    if not torch.isfinite(latents.float()).all():
        raise CacheError("latents contain NaN/Inf; the encoder (VAE) produced invalid values")
    info.channels, info.height, info.width = (int(s) for s in latents.shape[1:])
    info.count = int(n)
    tensors = {"latents": latents}
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
    return save_weights(path, tensors, info.metadata())


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


def _read_images(files, resolution: int, mode: str) -> np.ndarray:
    from PIL import Image
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(_square(im.convert(mode), resolution), dtype=np.float32) / 255.0)
        except OSError as e:
            raise CacheError(f"{p}: not a readable image ({e}); remove or replace it") from None
    arr = np.stack(out)
    return arr[..., None] if arr.ndim == 3 else arr  # [N, H, W, C] in 0..1


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


def _comfy_encode(cfg: Config, pixels: np.ndarray, captions: list[str] | None):
    """VAE latents (and text table) with ComfyUI's VAE and text encoders."""
    from . import comfyui
    d = cfg.data
    vae, clip, fam = comfyui.load_encoders(d.checkpoint, d.vae, d.text_encoders, d.clip_type)
    img = torch.from_numpy(pixels)
    if img.shape[-1] == 1:
        img = img.expand(-1, -1, -1, 3)
    lat = torch.cat([vae.encode(img[i: i + d.encode_batch_size]).float().cpu()
                     for i in range(0, img.shape[0], d.encode_batch_size)])
    table = None
    if captions is not None:
        if d.conditioning:
            table = _precomputed_text(d.conditioning, captions)
        else:
            if clip is None:
                raise CacheError("captions need text encoders, but data.checkpoint has none; set data.text_encoders "
                                 "or data.conditioning")

            def encode(text):
                out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
                return out["cond"].cpu(), (out.get("pooled_output").cpu() if out.get("pooled_output") is not None else None)

            table = _text_table(captions, encode)
    return lat.half(), table, fam


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
        files = _list_images(Path(d.path), d.labels, d.limit)
        log(f"reading {len(files)} images from {d.path} at {d.resolution}x{d.resolution}")
        mode = "RGB" if d.encoder == "comfyui" or d.channels == 3 else "L"
        pixels = _read_images(files, d.resolution, mode)
        captions = _captions(files) if d.labels == "captions" else None
        labels, names = None, []
        if d.labels == "folders":
            names = sorted({p.relative_to(d.path).parts[0] for p in files})
            labels = torch.tensor([names.index(p.relative_to(d.path).parts[0]) for p in files])
        cond = {"none": "none", "folders": "class", "captions": "text"}[d.labels]
        if d.encoder == "comfyui":
            lat, table, fam = _comfy_encode(cfg, pixels, captions)
            info = CacheInfo("vae", 0, 0, 0, 0, cond, len(names), names, vae_family=fam, source=str(d.path))
        else:
            lat = torch.from_numpy(pixels).permute(0, 3, 1, 2) * 2 - 1
            table = _precomputed_text(d.conditioning, captions) if captions is not None else None
            info = CacheInfo("pixels", 0, 0, 0, 0, cond, len(names), names, source=str(d.path))
        if table is not None:
            info.captions, info.empty_cond = table.pop("captions"), table.pop("empty_cond")
            path = write_cache(out, lat, info, **table)
        else:
            path = write_cache(out, lat, info, labels=labels)
    c = Cache(path)
    log(f"wrote {path}: {describe_cache(c.info)}")
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
