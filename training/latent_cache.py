"""The latent cache: one safetensors file that ``prepare`` writes and ``finetune``/``estimator`` read.

==================  ===========================================================================
tensor              meaning
==================  ===========================================================================
``latents``         [N, C, H, W]: pixels in [-1, 1] (``latent_space = "pixels"``, reference
                    models) or raw VAE latents as ComfyUI's VAEEncode returns them
                    (``"vae"``; the trainer applies the model's ``latent_format.process_in``);
                    [N, C, T, H, W] for video latents (WAN; Qwen-Image's with T = 1)
``labels``          [N] int64 class ids (``conditioning = "class"``)
``cond_index``      [N] int64 row of each sample's caption in the caption table (``"text"``)
``cross_attn``      [T, D] the caption table's tokens, all captions back to back
``cond_offsets``    [K + 1] int64 start of caption k in ``cross_attn`` (captions may differ in length)
``pooled_output``   [K, P] pooled text embedding per caption (models that use one)
==================  ===========================================================================

Metadata (``nag_cache.*``, strings) records the format, latent space, shape, conditioning,
class names or captions, the family of the VAE that encoded it (and its latent format), and the
empty caption's row (for caption dropout).  Format 1 holds [N, C, H, W] latents; format 2 (written
for 5-D latents only, so image caches still read in older trainers) adds ``frames`` (T) and
``sample_shape``.  :func:`write_cache` validates and writes one (streamed, atomically);
:class:`Cache` reads it back (small ones in memory, large ones row by row).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from comfy_nag.files import WeightFileError, load_weights, read_metadata, save_weights_streamed

CACHE_FORMAT = "comfy-nag-cache/1"        # [N, C, H, W] latents
VIDEO_CACHE_FORMAT = "comfy-nag-cache/2"  # [N, C, T, H, W] latents (also read: format 1)
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
    frames: int = 0                   # T of [N, C, T, H, W] latents; 0: [N, C, H, W]
    latent_format: str = ""           # ComfyUI latent format of VAE latents ("" unknown)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W), or (C, T, H, W) for video latents."""
        return (self.channels, *((self.frames,) if self.frames else ()), self.height, self.width)

    def metadata(self) -> dict[str, str]:
        meta = {"nag_cache.format": VIDEO_CACHE_FORMAT if self.frames else CACHE_FORMAT}
        for k, v in self.__dict__.items():
            if k not in ("frames", "latent_format") or v:  # written when set (format 1 readers skip them)
                meta[f"nag_cache.{k}"] = v if isinstance(v, str) else json.dumps(v)
        if self.frames:
            meta["nag_cache.sample_shape"] = json.dumps(list(self.sample_shape))
        return meta

    @classmethod
    def from_metadata(cls, meta: dict, path) -> "CacheInfo":
        if meta.get("nag_cache.format") not in (CACHE_FORMAT, VIDEO_CACHE_FORMAT):
            raise CacheError(f"{path}: not a comfy-nag latent cache (no nag_cache.format={CACHE_FORMAT} or "
                             f"{VIDEO_CACHE_FORMAT} metadata); create it with `python -m training prepare`")
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
    if len(latents.shape) not in (4, 5):
        raise CacheError(f"latents must be [N, C, H, W] (images) or [N, C, T, H, W] (video), got shape "
                         f"{list(latents.shape)}")
    n = latents.shape[0]
    if n == 0:
        raise CacheError("the dataset is empty: no images were found/encoded, nothing to cache")
    if isinstance(latents, torch.Tensor):
        check_finite(latents)
        latents = Pieces(tuple(latents.shape), latents.dtype, lambda t=latents: [t])
    shape = [int(s) for s in latents.shape[1:]]
    info.channels, info.height, info.width = shape[0], shape[-2], shape[-1]
    info.frames = shape[1] if len(shape) == 4 else 0
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


def check_finite(latents: torch.Tensor) -> None:
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
        want = [self.info.count, *self.info.sample_shape]
        if list(shape) != want:
            raise CacheError(f"{self.path}: latents have shape {list(shape)} but the metadata says {want}; "
                             "the cache is damaged - re-run `prepare`")

    def __len__(self) -> int:
        return self.info.count

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W), or (C, T, H, W) for video latents."""
        return self.info.sample_shape

    @property
    def video(self) -> bool:
        """Whether the cache holds 5-D latents [N, C, T, H, W]."""
        return bool(self.info.frames)

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


def describe_cache(info: CacheInfo) -> str:
    cond = {"class": f"{info.num_classes} classes", "text": f"{len(info.captions)} captions",
            "none": "unconditional"}[info.conditioning]
    vae = f", VAE of {info.vae_family}" if info.vae_family else (f", {info.latent_format} VAE" if info.latent_format else "")
    shape = "x".join(map(str, info.sample_shape)) + (" (C x T x H x W)" if info.frames else "")
    return (f"{info.count} samples of {shape} {info.latent_space}{vae}, {cond}"
            + (", empty caption stored" if info.empty_cond >= 0 else ""))
