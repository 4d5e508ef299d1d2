"""How ``prepare`` encodes: pixels to latents (ComfyUI's VAE, or the pixels themselves for reference
models) and captions to the cache's caption table (ComfyUI's text encoders, or a precomputed
conditioning file)."""
from __future__ import annotations

import json

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


def comfy_encoders(cfg: Config):
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
            return precomputed_text(d.conditioning, captions)
        if clip is None:
            raise CacheError("captions need text encoders, but data.checkpoint has none; set data.text_encoders "
                             "or data.conditioning")

        def encode_text(text):
            out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
            return out["cond"].cpu(), (out.get("pooled_output").cpu() if out.get("pooled_output") is not None else None)

        return caption_table(captions, encode_text)
    return encode, text_table, fam
