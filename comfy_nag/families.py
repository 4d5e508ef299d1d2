"""The model families comfy-nag knows: one entry each, and the only place a family's facts are written.

A family fixes everything the method, the trainer and the nodes need to know about a model without
loading it: its noise schedule (and with it the null timestep, ``Schedule.null_timestep``, in network
units), the parameterisation its network predicts, its latent space (ComfyUI's latent-format class and
channel count; ``None`` for comfy_nag's reference models, which train on pixels), the ComfyUI
model-config classes that are detected as it, and the base-model tags kohya-format LoRA files carry.

The trainer's family choices, ComfyUI detection names, LoRA metadata and estimator latent formats, and
the nodes' estimator checks are all read from :data:`FAMILIES` (tests/test_families.py checks it).
Adding a family is one entry here, plus host code only where the host really differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from .schedules import DiscreteVP, Flow, Schedule


@dataclass(frozen=True)
class KohyaBase:
    """What kohya-format LoRA metadata says of the base model (``ss_*`` / ``modelspec.*`` keys)."""

    version: str         # ss_base_model_version
    architecture: str    # modelspec.architecture
    implementation: str  # modelspec.implementation


@dataclass(frozen=True)
class Family:
    """A model family: schedule, parameterisation, latent space and how the host tools name it."""

    name: str
    prediction: str                        # eps | v | velocity (predictions.py)
    make_schedule: Callable[[], Schedule]  # the family's default schedule (ComfyUI's default settings)
    aliases: tuple[str, ...] = ()
    latent_format: str | None = None       # ComfyUI latent-format class; None: pixel-space reference model
    latent_channels: int | None = None
    comfy_configs: tuple[str, ...] = ()    # ComfyUI model-config classes detected as this family
    kohya: KohyaBase | None = None
    latent_dims: int = 2                   # spatial(-temporal) latent dims: 2 = [B, C, H, W]; 3 = [B, C, T, H, W]
    spatial_compression: int = 8           # image pixels per latent cell along each side (the VAE's downscale)
    temporal_compression: int = 0          # video frames per latent frame after the first (WAN: 1 + 4k frames ->
                                           # 1 + k latent frames); 0: an image family (one latent frame)

    @cached_property
    def schedule(self) -> Schedule:
        return self.make_schedule()

    @property
    def frames(self) -> int | None:
        """Latent frames of every latent on a 3-D latent space when fixed: 1 for an image model that a host hands
        5-D latents (Qwen-Image); None otherwise (video families: any number; image latent spaces: no frame axis)."""
        return 1 if self.latent_dims == 3 and self.temporal_compression == 0 else None

    @property
    def null_timestep(self) -> float:
        """The family's default null timestep, network units (docs/method.md, "Null condition")."""
        return self.schedule.null_timestep

    @property
    def reference(self) -> bool:
        """comfy_nag's own DiT/SiT (pixel space, trained and sampled without ComfyUI)."""
        return self.latent_format is None


def _vp(betas="scaled_linear"):
    return lambda: DiscreteVP(betas)


_DIFFUSERS = "diffusers"
_SGM = "https://github.com/Stability-AI/generative-models"
_BFL = "https://github.com/black-forest-labs/flux"
_SDXL_CONFIGS = ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dit", "eps", _vp("linear")),
    Family("sit", "velocity", lambda: Flow()),
    Family("sd1", "eps", _vp(), ("sd15", "sd1.5"), "SD15", 4, ("SD15",),
           KohyaBase("sd_v1", "stable-diffusion-v1/lora", _DIFFUSERS)),
    Family("sd2", "eps", _vp(), ("sd2-base",), "SD15", 4, ("SD20", "SD21UnclipL", "SD21UnclipH"),
           KohyaBase("sd_v2", "stable-diffusion-v2-512/lora", _DIFFUSERS)),
    Family("sd2-v", "v", _vp(), ("sd2v",), "SD15", 4, ("SD20",),
           KohyaBase("sd_v2", "stable-diffusion-v2-768-v/lora", _DIFFUSERS)),
    Family("sdxl", "eps", _vp(), (), "SDXL", 4, _SDXL_CONFIGS,
           KohyaBase("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", _SGM)),
    Family("sdxl-refiner", "eps", _vp(), (), "SDXL", 4, ("SDXLRefiner",)),
    Family("sd3", "velocity", lambda: Flow(shift=3.0), ("sd3.5",), "SD3", 16, ("SD3",),
           KohyaBase("sd3", "stable-diffusion-3-medium/lora", "https://github.com/Stability-AI/sd3.5")),
    # ComfyUI's ModelSamplingFlux default: mu 1.15, i.e. SD3's shift exp(1.15); network time = sigma.
    Family("flux", "velocity", lambda: Flow(shift=math.exp(1.15), multiplier=1.0), ("flux-dev", "flux1"), "Flux", 16,
           ("Flux",), KohyaBase("flux1", "flux-1-dev/lora", _BFL)),
    # schnell samples as a plain discrete flow with shift 1 and network time = sigma
    Family("flux-schnell", "velocity", lambda: Flow(shift=1.0, multiplier=1.0), (), "Flux", 16, ("FluxSchnell",),
           KohyaBase("flux1", "flux-1-schnell/lora", _BFL)),
    # WAN 2.1 (T2V/I2V, 1.3B/14B) and WAN 2.2 A14B, whose high- and low-noise experts are WAN 2.1-architecture
    # models: ModelSamplingSD3-style discrete flow, shift 8, network time = sigma * 1000; 5-D latents.
    Family("wan21", "velocity", lambda: Flow(shift=8.0), ("wan2.1", "wan22-a14b", "wan2.2-a14b"), "Wan21", 16,
           ("WAN21_T2V", "WAN21_I2V"), latent_dims=3, temporal_compression=4),
    # WAN 2.2 TI2V-5B: its own 48-channel latent space (16x spatial compression)
    Family("wan22-5b", "velocity", lambda: Flow(shift=8.0), ("wan2.2-5b", "wan22-ti2v"), "Wan22", 48, ("WAN22_T2V",),
           latent_dims=3, spatial_compression=16, temporal_compression=4),
    # Qwen-Image: ComfyUI's ModelSamplingFlux with mu 1.15 (Flux's), network time = sigma; the WAN 2.1 VAE's
    # latents, one frame (5-D)
    Family("qwen-image", "velocity", lambda: Flow(shift=math.exp(1.15), multiplier=1.0), ("qwen",), "Wan21", 16,
           ("QwenImage",), latent_dims=3),
    # HunyuanVideo (T2V, I2V, SkyReels I2V): ModelSamplingSD3-style discrete flow, shift 7, network time = sigma * 1000;
    # its own 16-channel video latents
    Family("hunyuan-video", "velocity", lambda: Flow(shift=7.0), ("hunyuanvideo",), "HunyuanVideo", 16,
           ("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V"), latent_dims=3, temporal_compression=4),
    # Lumina-Image 2.0: discrete flow, shift 6, network time = sigma; Flux latents
    Family("lumina2", "velocity", lambda: Flow(shift=6.0, multiplier=1.0), ("lumina-image-2",), "Flux", 16, ("Lumina2",)),
)}
_BY_ALIAS = {a: f for f in FAMILIES.values() for a in f.aliases}
# ComfyUI VAE modules whose latent format the latents' shape does not tell (16-channel video latents are WAN 2.1's
# or HunyuanVideo's): what ``prepare`` records for latents of such a VAE
VAE_MODULE_FORMATS = {"comfy.ldm.wan.vae": "Wan21", "comfy.ldm.wan.vae2_2": "Wan22"}


def family(name: str) -> Family:
    """The family called ``name`` (or one of its aliases); a clear error lists the known ones."""
    f = FAMILIES.get(name) or _BY_ALIAS.get(name)
    if f is None:
        raise ValueError(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}")
    return f


def canonical_name(name: str) -> str:
    """``name`` with an alias replaced by its family's name (``wan22-a14b`` -> ``wan21``); other values unchanged."""
    f = _BY_ALIAS.get(name)
    return f.name if f is not None else name


def reference_names() -> tuple[str, ...]:
    """Families of comfy_nag's own reference models (dit, sit)."""
    return tuple(n for n, f in FAMILIES.items() if f.reference)


def comfy_names() -> tuple[str, ...]:
    """Families the trainer loads through ComfyUI (every family with a latent space)."""
    return tuple(n for n, f in FAMILIES.items() if not f.reference)


def from_comfy_config(config_name: str, prediction: str | None = None) -> Family | None:
    """The family ComfyUI's model-config class ``config_name`` belongs to (``prediction`` tells SD2's eps
    and v models apart), or None for a model family comfy-nag has no entry for."""
    found = [f for f in FAMILIES.values() if config_name in f.comfy_configs]
    if prediction is not None and len(found) > 1:
        found = [f for f in found if f.prediction == prediction] or found
    return found[0] if found else None


def latent_space_families(latent_format: str) -> tuple[str, ...]:
    """The families that share the latent space ``latent_format`` (one noise-level estimator serves all)."""
    return tuple(n for n, f in FAMILIES.items() if f.latent_format == latent_format)
