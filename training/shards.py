"""``prepare``'s work in progress: one safetensors file per encoded (or generated) batch, so an
interrupted run continues batch by batch and memory holds one batch whatever the dataset's size."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from comfy_nag.files import atomic_write_bytes, save_weights


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


def shard_latents(parts: list[Path]):
    for p in parts:
        with safe_open(str(p), "pt") as f:
            yield f.get_tensor("latents")
