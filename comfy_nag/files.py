"""Safe, atomic weight files.

Weights are read and written with safetensors only; nothing is ever unpickled.  Saves go to a
temporary file in the same folder, are flushed to disk and then renamed over the target, so a
process killed mid-save leaves either the old file or the new one, never a torn one.
Metadata values are strings (safetensors' rule); structured values are stored as JSON.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors import safe_open

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


class WeightFileError(ValueError):
    """A weight file is missing, not safetensors, corrupt, or lacks required metadata."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | os.PathLike, write) -> Path:
    """Run ``write(tmp_path)`` on a temporary file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def safetensors_header(entries: list[tuple[str, torch.dtype, list[int]]], metadata: dict[str, str]) -> bytes:
    """The safetensors header (length prefix + JSON) of tensors laid out in the given order
    (widest dtypes first keeps every tensor aligned, as the safetensors library does).

    Keys and metadata are written sorted, so equal content always gives equal bytes (the
    safetensors library writes metadata in hash order, which differs between runs).
    """
    head: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in _ST_DTYPES:
            raise WeightFileError(f"tensor {name}: dtype {dtype} cannot be saved")
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        head[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    return memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Atomically save ``tensors`` as safetensors with string metadata (non-strings -> JSON).

    Byte-for-byte reproducible: the same tensors and metadata always give the same file.
    """
    return save_weights_streamed(path, {k: (v.dtype, list(v.shape), lambda v=v: [v]) for k, v in tensors.items()},
                                 metadata)


def save_weights_streamed(path: str | os.PathLike, entries: dict, metadata: dict | None = None) -> Path:
    """:func:`save_weights` for tensors that arrive in pieces: ``entries[name] = (dtype, shape, chunks)``
    where ``chunks()`` yields the tensor's consecutive slices along its first dimension, so a file
    larger than memory is written holding one slice at a time."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    itemsize = {k: torch.empty((), dtype=e[0]).element_size() for k, e in entries.items()}
    names = sorted(entries, key=lambda k: (-itemsize[k], k))  # aligned: widest dtypes first
    head = safetensors_header([(k, entries[k][0], list(entries[k][1])) for k in names], meta)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(head)
            for k in names:
                dtype, shape, chunks = entries[k]
                want, got = math.prod(shape) * itemsize[k], 0
                for t in chunks():
                    if t.dtype != dtype:
                        raise WeightFileError(f"tensor {k}: a piece has dtype {t.dtype}, expected {dtype}")
                    data = tensor_bytes(t)
                    got += len(data)
                    f.write(data)
                if got != want:
                    raise WeightFileError(f"tensor {k}: its pieces hold {got} bytes, its shape {list(shape)} needs {want}")
    return _atomic(path, write)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightFileError(f"{path}: file not found; check the path (and the model folder it should be in)")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightFileError(
            f"{path}: '{path.suffix}' files are Python pickles and are never loaded here (they can run code). "
            "Convert the weights to .safetensors first, e.g. with safetensors.torch.save_file in a trusted environment.")
    with open(path, "rb") as f:
        head = f.read(9)
    # a safetensors file: an 8-byte little-endian header length, then the JSON header; its length's first two bytes
    # can read like a zip or pickle signature (a 640-byte header starts 80 02), so a real header is never refused
    header = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    safetensors = head[8:9] == b"{" and 0 < header <= path.stat().st_size - 8
    if not safetensors and head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise WeightFileError(f"{path}: this is a pickled/zip PyTorch file renamed to .safetensors; it is refused "
                              "because unpickling can run code. Re-save it as real safetensors.")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's metadata (header only; cheap)."""
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightFileError(f"{path}: not a readable safetensors file ({e}); the file is corrupt or truncated - "
                              "re-download or re-export it") from e


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load ``(tensors, metadata)``; raises :class:`WeightFileError` with the fix on bad files."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightFileError(f"{path}: tensor data is corrupt or truncated ({e}); re-download or re-export it") from e
    return tensors, meta


def load_module_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        what: str = "weights") -> torch.nn.Module:
    """Load ``tensors`` into ``module`` exactly: a missing or unexpected key raises :class:`WeightFileError`
    naming the first few (the file is damaged, or belongs to another architecture or version)."""
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise WeightFileError(f"{path}: {what} do not match the architecture in its metadata (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); the file is damaged or from another version")
    return module


def meta_json(meta: dict[str, str], key: str, path: str | os.PathLike = "<file>", default=...):
    """Read a JSON metadata value; a clear error names the key when it is missing and no default is given."""
    if key not in meta:
        if default is not ...:
            return default
        raise WeightFileError(f"{path}: missing metadata key '{key}'. This file was not written by comfy-nag's "
                              "trainer (or was re-saved by a tool that drops metadata); re-export it with "
                              "`python -m training inspect`/the trainer, or pass the value explicitly.")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        return meta[key]
