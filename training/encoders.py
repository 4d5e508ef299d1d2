"""How ``prepare`` encodes: pixels to latents (ComfyUI's VAE, or the pixels themselves for reference
models) and captions to the cache's caption table (ComfyUI's text encoders, or a precomputed
conditioning file)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from comfy_nag.files import load_weights

from .config import Config
from .latent_cache import CacheError


def caption_table(captions: list[str], encode, with_empty: bool = True) -> dict:
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


def precomputed_text(path: str, captions: list[str]) -> dict:
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
    return caption_table(captions, lambda t: (ca[lookup[t]][None], None if pooled is None else pooled[lookup[t]][None]),
                         with_empty="" in lookup)


@dataclass
class Encoding:
    """How ``prepare`` encodes: ``encode(pixels)`` (images [n, H, W, C] or clips [n, T, H, W, C] in 0..1 -> fp16
    latents), ``text_table(captions)`` (None: pixels, no text encoder), and the latent space it records."""

    encode: object
    text_table: object | None = None
    family: str = ""           # the family whose VAE encoded the latents ("" unknown)
    latent_format: str = ""    # its ComfyUI latent format ("" unknown)
    video: bool = False        # a video VAE: [n, C, T, H, W] latents (one frame per image)
    frames: object = None      # frames -> latent frames, ComfyUI's own rule for this VAE (None: images only)


def pixel_encoding() -> Encoding:
    """The reference models' "encoder": pixels in [-1, 1]."""
    return Encoding(lambda px: torch.from_numpy(px).permute(0, 3, 1, 2) * 2 - 1)


def _vae_encode(vae, video: bool):
    """ComfyUI's VAE on a batch: an image VAE takes the batch at once; a video VAE takes each clip (an image: a
    one-frame clip) on its own, as ComfyUI's VAEEncode does, which reads a batch of images as the frames of one clip."""
    @torch.no_grad()  # ComfyUI's nodes encode under inference mode; called as a library, it would track gradients
    def encode(pixels: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(pixels)
        if img.shape[-1] == 1:
            img = img.expand(*img.shape[:-1], 3)
        if not video:
            if img.dim() == 5:
                raise CacheError("video clips need a video VAE (WAN's): data.vae / data.checkpoint holds an image VAE")
            return vae.encode(img).float().cpu().half()
        clips = img if img.dim() == 5 else img[:, None]
        return torch.cat([vae.encode(clip).float().cpu() for clip in clips]).half()
    return encode


def comfy_encoders(cfg: Config) -> Encoding:
    """ComfyUI's VAE (and text encoders) of ``data.checkpoint`` / ``data.vae`` / ``data.text_encoders``."""
    from . import comfyui
    from .latent_spaces import vae_family
    d = cfg.data
    vae, clip, fam = comfyui.load_encoders(d.checkpoint, d.vae, d.text_encoders, d.clip_type)
    video = int(getattr(vae, "latent_dim", 2)) == 3
    family, fmt = vae_family(fam, cfg.model.family, int(vae.latent_channels), 3 if video else 2,
                             comfyui.vae_latent_format(vae))
    ratio = getattr(vae, "downscale_ratio", None)
    frames = ratio[0] if video and isinstance(ratio, tuple) and callable(ratio[0]) else None

    def text_table(captions: list[str]) -> dict:
        if d.conditioning:
            return precomputed_text(d.conditioning, captions)
        if clip is None:
            raise CacheError("captions need text encoders, but data.checkpoint has none; set data.text_encoders "
                             "or data.conditioning")

        def encode_text(text):
            out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
            return out["cond"].cpu(), (out.get("pooled_output").cpu() if out.get("pooled_output") is not None else None)

        return caption_table(captions, encode_text)
    return Encoding(_vae_encode(vae, video), text_table, family, fmt, video, frames)
