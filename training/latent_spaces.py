"""Which latent space a cache holds and which family an estimator is for, from the family registry.

A VAE cache records the family whose VAE encoded it (``vae_family``) when ``prepare`` knows it (a checkpoint, or
``model.family``), and the VAE's latent format when its class or the registry pins it down (``latent_format``:
a WAN 2.1 VAE's latents are Wan21; 48-channel 5-D latents are Wan22 whatever the VAE).  An estimator is for one family's schedule on that latent space:
:func:`estimator_space` takes it from ``model.base`` (ComfyUI's detection), ``estimator.family``, the cache or
``model.family``, and refuses, in one line naming the fix, a family whose latents the cache does not hold.
"""
from __future__ import annotations

from dataclasses import dataclass

from comfy_nag.families import FAMILIES, Family, comfy_names, latent_space_families
from comfy_nag.families import family as registry_family
from comfy_nag.schedules import Schedule

from .config import Config, ConfigError
from .latent_cache import Cache


def same_latent_space(a: str, b: str) -> bool:
    """Whether families ``a`` and ``b`` share one latent space (e.g. sd1 and sd2: the SD1.5 VAE); unknown
    families only match themselves."""
    fa, fb = FAMILIES.get(a), FAMILIES.get(b)
    return a == b or (fa is not None and fb is not None and fa.latent_format == fb.latent_format)


def latent_kind(dims: int, channels: int | str = "C", fmt: str = "", shape=None) -> str:
    """E.g. ``Wan21 video latents [16, T, H, W]`` (``dims``: 2 or 3 latent dimensions; ``shape``: the actual one)."""
    generic = f"[{channels}, T, H, W]" if dims == 3 else f"[{channels}, H, W]"
    return f"{fmt + ' ' if fmt else ''}{'video' if dims == 3 else 'image'} latents {list(shape) if shape else generic}"


def shape_families(channels: int, dims: int) -> tuple[str, ...]:
    """The registry's (non-reference) families whose latents have ``channels`` channels and ``dims`` dimensions."""
    return tuple(n for n, f in FAMILIES.items()
                 if not f.reference and f.latent_channels == channels and f.latent_dims == dims)


def format_of(channels: int, dims: int) -> str:
    """The one latent format of the registry with ``channels`` channels and ``dims`` latent dimensions ("" when
    none or several: 4-channel image latents are SD1.5's or SDXL's, 16-channel video latents WAN's or HunyuanVideo's)."""
    formats = {FAMILIES[n].latent_format for n in shape_families(channels, dims)}
    return formats.pop() if len(formats) == 1 else ""


def cache_format(cache: Cache) -> str:
    """The latent format of a VAE cache: recorded, its family's, or the registry's one for its shape ("" unknown)."""
    info = cache.info
    fam = FAMILIES.get(info.vae_family)
    return info.latent_format or (fam.latent_format if fam is not None else "") or \
        format_of(info.channels, 3 if cache.video else 2)


def vae_family(checkpoint_family: str, model_family: str, channels: int, dims: int,
               vae_format: str = "") -> tuple[str, str]:
    """``(family, latent format)`` a ``prepare`` records for latents of a VAE with ``channels`` and ``dims`` (and
    ``vae_format``, the format its module names, "" unknown): the checkpoint's family, else ``model.family`` (a
    ComfyUI family, checked against the VAE), else none ("")."""
    if checkpoint_family in FAMILIES:
        return checkpoint_family, FAMILIES[checkpoint_family].latent_format
    fmt = vae_format or format_of(channels, dims)
    f = FAMILIES.get(model_family)
    if f is None or f.reference:
        return "", fmt
    if (f.latent_channels, f.latent_dims) != (channels, dims) or (fmt and fmt != f.latent_format):
        theirs = ", ".join(latent_space_families(fmt)) if fmt else "another family"
        raise ConfigError(f"model.family '{f.name}' uses {latent_kind(f.latent_dims, f.latent_channels, f.latent_format)}, "
                          f"but the VAE (data.vae / data.checkpoint) makes {latent_kind(dims, channels)}; set "
                          f"model.family to its family ({theirs}) or to 'auto'")
    return f.name, f.latent_format


@dataclass
class LatentSpace:
    """What a noise-level estimator is trained for: a family's schedule on its latent (or pixel) space."""

    family: str
    schedule: Schedule
    latent_format: object | None  # ComfyUI latent-format instance (process_in); None for pixel caches
    image: bool = False           # an image family (one frame): a one-frame 5-D cache trains an image estimator


def _named(name: str) -> Family | None:
    try:
        return registry_family(name)
    except ValueError:
        return None


def _family_name(cfg: Config, cache: Cache) -> str:
    """The family an estimator on a VAE cache is for: estimator.family, the cache's, model.family, else the one
    family of the cache's latent space (several: refused, naming them)."""
    m = cfg.model.family
    name = cfg.estimator.family or cache.info.vae_family or (m if m in FAMILIES and not cfg.is_reference else "")
    if name:
        return name
    fmt, info = cache_format(cache), cache.info
    candidates = latent_space_families(fmt) if fmt else shape_families(info.channels, 3 if cache.video else 2)
    fams = [n for n in candidates  # clips: not an image family's latents
            if info.frames <= 1 or FAMILIES[n].temporal_compression]
    if len(fams) == 1:
        return fams[0]
    shape = list(cache.sample_shape)
    if fams:
        raise ConfigError(f"cache {cache.path} holds {fmt or 'VAE'} latents {shape} but does not record their family; "
                          f"{', '.join(fams)} share this latent shape with different schedules: set estimator.family "
                          "(or --family) to the one you sample with")
    raise ConfigError(f"cache {cache.path} holds VAE latents {shape} of a family it does not record; set "
                      f"estimator.family (or --family) to one of {', '.join(comfy_names())}, or model.base to the "
                      "model's file")


def _check_fits(fam: Family, cache: Cache) -> None:
    """The family's latents are the cache's: channels, image vs video, latent format; else one line with the fix."""
    info, dims = cache.info, 3 if cache.video else 2
    fmt = cache_format(cache)
    if fam.latent_channels != info.channels and fam.latent_dims == dims:
        raise ConfigError(f"cache {cache.path} holds {info.channels}-channel latents but family '{fam.name}' uses "
                          f"{fam.latent_channels}; set estimator.family to the family whose VAE encoded the cache")
    if (fam.latent_channels, fam.latent_dims) != (info.channels, dims) or (fmt and fmt != fam.latent_format):
        theirs = " or ".join(latent_space_families(fmt)) if fmt else "the family whose VAE encoded it"
        if info.vae_family:
            theirs += f" (or leave it empty: the cache's family, '{info.vae_family}')"
        raise ConfigError(f"cache {cache.path} holds {latent_kind(dims, fmt=fmt, shape=cache.sample_shape)}, but family "
                          f"'{fam.name}' uses {latent_kind(fam.latent_dims, fam.latent_channels, fam.latent_format)}; set "
                          f"estimator.family to {theirs}")


def estimator_space(cfg: Config, cache: Cache) -> LatentSpace:
    """The family, schedule and latent format of an estimator run: from the model file when ``model.base`` is
    a ComfyUI model (its exact schedule), else from the registry entry of ``estimator.family`` (default: the
    family whose VAE encoded the cache, or ``model.family``, or the one family of the cache's latent space;
    ``model.family`` for pixel caches)."""
    info = cache.info
    if info.latent_space != "vae":
        try:
            return LatentSpace(cfg.estimator.family or cfg.model.family,
                               registry_family(cfg.estimator.family or cfg.model.family).schedule, None)
        except ValueError as err:
            raise ConfigError(f"estimator.family: {err}") from None
    from . import comfyui
    if cfg.model.base and not cfg.is_reference:
        loaded = comfyui.load_model(cfg.model.base, cfg.model.family, cfg.model.dtype)
        fam = FAMILIES.get(loaded.family)
        if fam is not None:
            _check_fits(fam, cache)
        return LatentSpace(loaded.family, loaded.schedule, loaded.model.latent_format,
                           fam is not None and fam.temporal_compression == 0)
    name = _family_name(cfg, cache)
    fam = _named(name)
    if fam is None or fam.reference:
        raise ConfigError(f"the cache holds VAE latents of family '{name}'; set estimator.family to one of "
                          f"{', '.join(comfy_names())} or model.base to the model's file")
    _check_fits(fam, cache)
    return LatentSpace(fam.name, fam.schedule, comfyui.latent_format(fam.latent_format), fam.temporal_compression == 0)
