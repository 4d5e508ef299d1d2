"""How many CPU threads torch uses for a command (``--threads``; docs/training.md, "CPU threads").

``auto`` (the CLI's default) gives **one** thread when the work is small: the reference models
(``model.family`` dit/sit), ``prepare`` with the pixel encoder, and an estimator on a pixel cache.
Their matrices are so small that a second thread only adds synchronisation, and on a small or
shared CPU it competes with the other jobs: on the project's 2-core shared machine the tiny SiT
fine-tune took several times longer with torch's default (one thread per core) than with one.
Everything else (ComfyUI families: SD/SDXL/SD3/Flux networks, VAEs and text encoders, and
estimators on VAE latents) keeps torch's own default, one thread per physical core: big enough for
threads to pay off on a CPU, and on a GPU the CPU threads hardly matter.  ``auto`` also leaves
torch alone when ``OMP_NUM_THREADS`` is set (by the user, or by torchrun / accelerate launch for
several processes): torch already follows it.

The Python calls of :mod:`training.api` leave torch's settings alone unless ``threads=`` is passed;
then they set it for the call and restore it afterwards.
"""
from __future__ import annotations

import contextlib
import numbers
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

# torch and the config are imported where they are used: the CLI's parser (and so `--help`) needs only
# parse, AUTO and HELP, and stays fast

AUTO = "auto"
HELP = ("torch CPU threads: N, or 'auto' (default): 1 for the tiny reference models (dit/sit) and pixel data, the "
        "fastest on a small or shared CPU; torch's default (one per physical core) for ComfyUI families")


def _value(threads) -> int | str | None:
    """``auto`` or a whole number >= 1; None when ``threads`` is neither."""
    if isinstance(threads, str) and threads.strip().lower() == AUTO:
        return AUTO
    if isinstance(threads, str):
        try:
            n = int(threads.strip())
        except ValueError:
            return None
    elif isinstance(threads, numbers.Integral) and not isinstance(threads, bool):
        n = int(threads)
    else:
        return None
    return n if n >= 1 else None


def parse(text: str) -> int | str:
    """``--threads`` value: ``auto`` or a whole number >= 1 (argparse ``type``)."""
    value = _value(text)
    if value is None:
        import argparse
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads >= 1, got {text!r}")
    return value


def _pixel_cache(path: str) -> bool | None:
    """Whether the cache file holds pixels (None: no readable cache there yet)."""
    from comfy_nag.files import WeightFileError, read_metadata
    try:
        return read_metadata(path).get("nag_cache.latent_space") == "pixels"
    except (WeightFileError, OSError, ValueError):
        return None


def small_work(cfg: Config, command: str) -> bool:
    """Whether ``command`` on ``cfg`` runs only small networks (see the module's docstring)."""
    from .config import REFERENCE_FAMILIES
    if command == "prepare":  # a generated cache is made by the model itself
        return cfg.is_reference if cfg.data.source == "generated" else cfg.data.encoder == "pixels"
    if command == "estimator":
        pixels = _pixel_cache(cfg.data.cache) if cfg.data.cache else None
        if pixels is not None:
            return pixels
        return (cfg.estimator.family or cfg.model.family) in REFERENCE_FAMILIES
    return cfg.is_reference  # finetune, bench


def resolve(threads, cfg: Config, command: str) -> int | None:
    """The thread count ``threads`` asks for (None: leave torch's setting as it is)."""
    if threads is None:
        return None
    value = _value(threads)
    if value is None:
        from .config import ConfigError
        raise ConfigError(f"threads must be 'auto' or a number of CPU threads >= 1, got {threads!r}")
    if value == AUTO:  # an OMP_NUM_THREADS the user (or torchrun / accelerate launch) set is already torch's setting
        return 1 if small_work(cfg, command) and not os.environ.get("OMP_NUM_THREADS") else None
    return value


@contextlib.contextmanager
def using(threads, cfg: Config, command: str):
    """Set torch's intra-op CPU threads for the block (``threads=None``: untouched); restore them after."""
    import torch
    n = resolve(threads, cfg, command)
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if n is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
