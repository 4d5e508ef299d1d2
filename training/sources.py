"""What ``prepare`` reads: image folders (class = first sub-folder, a caption in a ``.txt`` beside each
image, or none) and scikit-learn's 8x8 digits (the tiny reference dataset).  Images are resized on the
short side and centre-cropped to a square (no aspect-ratio buckets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import ConfigError
from .latent_cache import CacheError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def square(img, size: int):
    from PIL import Image
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def list_images(root: Path, labels: str, limit: int):
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


def read_batch(files, resolution: int, mode: str) -> tuple[np.ndarray | None, list[int], list[tuple]]:
    """Decode, resize and crop one batch: ``(pixels [n, H, W, C] in 0..1, kept positions, [(file, reason)])``."""
    from PIL import Image
    out, kept, bad = [], [], []
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                out.append(np.asarray(square(im.convert(mode), resolution), dtype=np.float32) / 255.0)
            kept.append(i)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            bad.append((p, f"{type(e).__name__}: {e}"))
    if not out:
        return None, kept, bad
    arr = np.stack(out)
    return (arr[..., None] if arr.ndim == 3 else arr), kept, bad


def read_captions(files) -> list[str]:
    caps = []
    for p in files:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise CacheError(f"{p}: no caption file {txt.name} beside it (data.labels='captions')")
        caps.append(txt.read_text(encoding="utf-8").strip())
    return caps


def digits(resolution: int):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1  # [N, 1, 8, 8] in [-1, 1]
    if resolution and resolution != 8:
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x, torch.from_numpy(d.target).long()
