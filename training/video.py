"""What ``prepare`` reads for video families (``data.source = "video"``): a folder of clips.

A clip is either a **video file** (``.mp4 .webm .mov .mkv .avi``), decoded with PyAV (the ``av`` package, which
ComfyUI's requirements install), or a **folder of frame images** (its images in name order: frames extracted
with ffmpeg, or rendered), which needs no decoder.  Both may be mixed.  From each clip ``prepare`` takes
``data.frames`` frames from its start, every ``data.frame_stride``-th, each resized on the short side and
centre-cropped to ``data.resolution`` (as images are, ``sources.square``).  A clip that cannot be read or has
too few frames is skipped with one line naming it.  Captions: ``clip.txt`` beside a video file ``clip.mp4`` or
beside a frame folder ``clip/``; ``data.labels = "folders"`` takes the class from the first sub-folder.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from .config import ConfigError
from .latent_cache import CacheError
from .sources import IMAGE_SUFFIXES, square

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


def _frame_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_clips(root: Path, labels: str, limit: int) -> list[Path]:
    """Video files and frame folders under ``root``, in path order (a clip in ``root`` itself has no class)."""
    if not root.is_dir():
        raise ConfigError(f"data.path {root} is not a folder of clips (video files or folders of frame images)")
    files = [p for p in root.rglob("*") if p.is_file()]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    folders = {p.parent for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    clips = sorted(videos + sorted(folders))
    if labels == "folders":
        clips = [p for p in clips if len(p.relative_to(root).parts) >= 2]
    if limit:
        clips = clips[:limit]
    if not clips:
        extra = " inside class sub-folders" if labels == "folders" else ""
        raise CacheError(f"the dataset is empty: no video files ({', '.join(VIDEO_SUFFIXES)}) or folders of frame images "
                         f"found in {root}{extra}")
    first = next((p for p in clips if p.is_file()), None)
    if first is not None and importlib.util.find_spec("av") is None:
        raise ConfigError(f"data.path {root} holds video files ({first.name}, ...) but PyAV (the `av` package) is not "
                          f"installed in this Python ({sys.executable}): `pip install av` (ComfyUI's requirements include "
                          "it), or give each clip as a folder of its frame images")
    return clips


def caption_file(clip: Path) -> Path:
    """``clip.txt`` beside a video file ``clip.mp4`` or a frame folder ``clip/``."""
    return clip.with_suffix(".txt") if clip.is_file() else clip.parent / f"{clip.name}.txt"


def read_captions(clips: list[Path]) -> list[str]:
    caps = []
    for clip in clips:
        txt = caption_file(clip)
        if not txt.is_file():
            raise CacheError(f"{clip}: no caption file {txt.name} beside it (data.labels='captions')")
        caps.append(txt.read_text(encoding="utf-8").strip())
    return caps


def clip_listing(clips: list[Path]) -> list:
    """Path, sizes and modification times of each clip's files: a Shards source that changes when a clip does."""
    out = []
    for clip in clips:
        parts = [clip] if clip.is_file() else _frame_images(clip)
        out.append([str(clip), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in parts]])
    return out


def _decoded(path: Path, frames: int, stride: int) -> list:
    """The first ``frames`` frames (every ``stride``-th) of a video file, as PIL images."""
    import av
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride == 0:
                out.append(frame.to_image())
                if len(out) == frames:
                    break
    return out


def _frames_of(clip: Path, frames: int, stride: int) -> list:
    if clip.is_file():
        return _decoded(clip, frames, stride)
    from PIL import Image
    out = []
    for p in _frame_images(clip)[::stride][:frames]:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def _errors() -> tuple:
    errors = [OSError, ValueError]
    if importlib.util.find_spec("av") is not None:
        import av
        errors.append(av.FFmpegError)
    from PIL import Image
    return (*errors, Image.DecompressionBombError)


def read_clips(clips, resolution: int, frames: int, stride: int) -> tuple[np.ndarray | None, list[int], list[tuple]]:
    """Decode, resize and crop a batch of clips: ``(pixels [n, T, H, W, 3] in 0..1, kept positions, [(clip, reason)])``."""
    out, kept, bad = [], [], []
    for i, clip in enumerate(clips):
        try:
            images = _frames_of(clip, frames, stride)
        except _errors() as e:
            bad.append((clip, f"{type(e).__name__}: {e}"))
            continue
        if len(images) < frames:
            bad.append((clip, f"{len(images)} frames, fewer than data.frames={frames} (data.frame_stride={stride})"))
            continue
        out.append(np.stack([np.asarray(square(im, resolution), dtype=np.float32) / 255.0 for im in images]))
        kept.append(i)
    return (np.stack(out) if out else None), kept, bad
