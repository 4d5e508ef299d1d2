"""The trainer's configuration schema: its sections and keys, declared once.

Each section is a dataclass whose fields carry their checks (``choices``, ``lo``/``hi`` bounds) and
help text (:func:`opt`); :class:`Config` holds one of each.  Reading a file and ``--set`` overrides
into a validated :class:`Config` is ``config_loading.py``; what each command needs on top is
``preflight.py``.  ``python -m training <command> --help-config`` prints every key
(:func:`help_text`) with its default and help.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import get_type_hints

from comfy_nag import families


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def opt(default, help: str, choices=None, lo=None, hi=None, canonical=None, synonyms=()):
    """A config key: default value, help text and its checks (``canonical``: maps an accepted synonym, e.g. a
    family alias, to the value the choices name; ``synonyms``: those accepted names, offered for typos too)."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "canonical": canonical, "synonyms": synonyms}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


REFERENCE_FAMILIES = families.reference_names()
COMFY_FAMILIES = ("auto",) + families.comfy_names()  # 'auto': whatever ComfyUI detects
ALIAS_NAMES = tuple(a for f in families.FAMILIES.values() for a in f.aliases)
ALIASES = ", ".join(f"{a} = {families.family(a).name}" for a in ALIAS_NAMES)


@dataclass
class Run:
    out_dir: str = opt("runs/run", "folder for checkpoints, samples, metrics and the exported file")
    seed: int = opt(0, "seed of the data order, noise, dropout and initial weights", lo=0)
    resume: str = opt("auto", "'auto': continue from the newest checkpoint in out_dir if there is one; "
                              "'never': refuse to start if out_dir already holds checkpoints; or a checkpoint folder")
    deterministic: bool = opt(False, "ask PyTorch for deterministic kernels (slower on GPU; CPU runs are deterministic anyway)")
    log_every: int = opt(10, "steps between metric lines in out_dir/metrics.jsonl", lo=1)
    checkpoint_every: int = opt(500, "steps between resumable checkpoints (0: only at the end)", lo=0)
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep", lo=1)


@dataclass
class Data:
    cache: str = opt("", "the latent cache file written by `prepare` and read by `finetune`/`estimator`")
    source: str = opt("folder", "what `prepare` reads: 'folder' (images), 'video' (video files, decoded with PyAV, or "
                                "one folder of frame images per clip), 'digits' (scikit-learn's 8x8 digits), "
                                "'precomputed' (a safetensors file of latents + conditioning), 'generated' (latents the "
                                "model.base checkpoint samples itself: an estimator without a data set)",
                      choices=("folder", "video", "digits", "precomputed", "generated"))
    path: str = opt("", "images folder (source='folder'), clips folder (source='video'), precomputed safetensors file "
                        "(source='precomputed') or prompts file (source='generated')")
    labels: str = opt("none", "conditioning of folder images: 'none', 'folders' (class = first sub-folder), "
                              "'captions' (text in a .txt file beside each image)",
                      choices=("none", "folders", "captions"))
    resolution: int = opt(0, "square side images (and video frames) are resized/cropped to (0: keep digits at 8, "
                             "required for folders)", lo=0)
    frames: int = opt(0, "video families: frames per clip that `prepare` reads (source='video') or generates "
                         "(source='generated'); WAN's VAE takes 1 + 4k frames (17, 33, 81) and makes 1 + k latent frames "
                         "(0: one frame, images)", lo=0)
    frame_stride: int = opt(1, "source='video': read every n-th frame of each clip", lo=1)
    channels: int = opt(3, "pixel channels for encoder='pixels': 1 (grey) or 3 (RGB)", choices=(1, 3))
    encoder: str = opt("pixels", "'pixels': store pixels in [-1, 1] (reference models); 'comfyui': encode with "
                                 "ComfyUI's VAE and text encoders", choices=("pixels", "comfyui"))
    checkpoint: str = opt("", "ComfyUI checkpoint whose VAE and text encoders `prepare` uses (encoder='comfyui')")
    vae: str = opt("", "separate VAE file (overrides the checkpoint's VAE)")
    text_encoders: list[str] = opt([], "separate text-encoder files (overrides the checkpoint's)")
    clip_type: str = opt("stable_diffusion", "ComfyUI CLIPType of text_encoders, e.g. stable_diffusion, sd3, flux")
    conditioning: str = opt("", "precomputed text conditioning: safetensors with cross_attn [K,L,D], optional "
                                "pooled_output [K,P], and metadata 'captions' (JSON list of the K captions)")
    limit: int = opt(0, "use at most this many images (0: all)", lo=0)
    encode_batch_size: int = opt(8, "images `prepare` reads and encodes (or generates) at a time (memory holds one batch)",
                                 lo=1)
    generate_count: int = opt(1000, "source='generated': how many samples the checkpoint generates", lo=1)
    generate_steps: int = opt(30, "source='generated': sampler steps per sample (Euler)", lo=1)
    generate_cfg: float = opt(1.0, "source='generated': CFG scale (text models; 1 = no CFG, the prompts' own "
                                   "distribution)", lo=0.0)


@dataclass
class Model:
    family: str = opt("dit", "'dit'/'sit' (reference models of comfy_nag), or a ComfyUI family: "
                             + ", ".join(COMFY_FAMILIES) + f" ('auto': whatever ComfyUI detects); aliases: {ALIASES}",
                      choices=REFERENCE_FAMILIES + COMFY_FAMILIES, canonical=families.canonical_name,
                      synonyms=ALIAS_NAMES)
    base: str = opt("", "safetensors file to fine-tune (empty: a new reference model, dit/sit only)")
    hidden: int = opt(64, "width of a new reference DiT", lo=8)
    depth: int = opt(2, "blocks of a new reference DiT", lo=1)
    heads: int = opt(4, "attention heads of a new reference DiT", lo=1)
    patch_size: int = opt(2, "patch size of a new reference DiT", lo=1)
    guidance: float = opt(1.0, "guidance-embedding value for models that take one (Flux-dev)")
    dtype: str = opt("fp32", "dtype the base network's weights are held in (ComfyUI families): 'fp32', or 'bf16'/'fp16' "
                             "for a LoRA on a model whose fp32 weights do not fit (WAN 14B, Qwen-Image 20B: half the "
                             "memory; the LoRA itself trains in fp32)", choices=("fp32", "bf16", "fp16"))


@dataclass
class Train:
    mode: str = opt("full", "'full' fine-tune or 'lora'", choices=("full", "lora"))
    steps: int = opt(1000, "optimizer steps (the run's length; raise it and resume to train longer)", lo=1)
    batch_size: int = opt(32, "samples per device per micro-batch", lo=1)
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", lo=1)
    learning_rate: float = opt(1e-4, "AdamW learning rate", lo=0.0)
    weight_decay: float = opt(0.0, "AdamW weight decay", lo=0.0)
    lr_schedule: str = opt("constant", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    warmup_steps: int = opt(0, "linear warm-up steps", lo=0)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)", lo=0.0)
    mixed_precision: str = opt("no", "accelerate mixed precision", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = opt(False, "recompute block activations in the backward pass to save memory")
    noise_condition_dropout_rate: float = opt(0.2, "probability that a sample's noise condition (timestep) is replaced "
                                                   "by the null timestep (NAG's noise-condition dropout)", lo=0.0, hi=1.0)
    class_dropout_rate: float = opt(0.1, "probability of the null class (class-conditional reference models, for CFG)",
                                    lo=0.0, hi=1.0)
    caption_dropout_rate: float = opt(0.0, "probability of the empty caption (text-conditioned models, for CFG)",
                                      lo=0.0, hi=1.0)
    ema_decay: float = opt(0.999, "EMA decay of the trained weights (0: no EMA)", lo=0.0, hi=1.0)


@dataclass
class Lora:
    rank: int = opt(16, "LoRA rank", lo=1)
    alpha: float = opt(16.0, "LoRA alpha (scale = alpha / rank)", lo=0.0)
    targets: list[str] = opt([], "regular expressions over module paths of the diffusion network; LoRA goes on every "
                                 "matching Linear/Conv2d layer (empty: every Linear/Conv2d layer)")


@dataclass
class Sample:
    every: int = opt(0, "steps between sample grids (reference models; 0: only at the end)", lo=0)
    count: int = opt(8, "images per grid row", lo=1)
    steps: int = opt(20, "sampler steps", lo=1)
    sampler: str = opt("euler", "comfy_nag sampler", choices=("euler", "heun", "euler_maruyama", "ddpm"))
    cfg_scale: float = opt(1.0, "CFG scale of the grid (1: off)")
    nag_scale: float = opt(1.0, "classifier-free NAG scale of the grid's second row (0: one row, no NAG)")


@dataclass
class Monitor:
    every: int = opt(0, "steps between noise-shift checks (0: at checkpoints)", lo=0)
    eval_size: int = opt(64, "held-out cache rows used by the check", lo=1)
    estimator: str = opt("", "noise-level estimator file (trained on this cache with `python -m training estimator`): adds "
                                "the null-branch readout (agreement of the classifier-free term with the estimator's) and, "
                                "for reference models, the noise-shift readout of sampler runs")


@dataclass
class Export:
    format: str = opt("auto", "'auto' (lora for LoRA runs; the base file's kind for full runs), 'lora', 'checkpoint', "
                              "'diffusion_model', 'reference_model'",
                      choices=("auto", "lora", "checkpoint", "diffusion_model", "reference_model"))
    dtype: str = opt("same", "dtype of exported weights: 'same' as the base file, or fp32/fp16/bf16",
                     choices=("same", "fp32", "fp16", "bf16"))
    lora_format: str = opt("kohya", "LoRA key format: 'kohya' (lora_unet_*, ss_*/modelspec.* metadata; read by ComfyUI, "
                                    "Forge/A1111 and diffusers) or 'comfyui' (diffusion_model.*)",
                           choices=("kohya", "comfyui"))
    use_ema: bool = opt(True, "export the EMA weights when EMA is on")
    name: str = opt("", "file name of the export (default: derived from out_dir)")


@dataclass
class Estimator:
    family: str = opt("", "family (latent space and schedule) the estimator is trained for (default: the cache's "
                          "family / model.family)", canonical=families.canonical_name)
    steps: int = opt(30000, "optimizer steps (docs/method.md §2: training length is what makes the estimator faithful)", lo=1)
    batch_size: int = opt(128, "samples per device per step", lo=1)
    learning_rate: float = opt(2e-3, "AdamW learning rate", lo=0.0)
    bins: int = opt(32, "log-SNR bins", lo=2)
    logsnr_min: float = opt(0.0, "lowest log-SNR bin edge (0 with logsnr_max 0: the schedule's own range)")
    logsnr_max: float = opt(0.0, "highest log-SNR bin edge")
    width: int = opt(64, "estimator width", lo=8)
    depth: int = opt(3, "estimator depth", lo=1)
    video: str = opt("frames", "video latents [C, T, H, W]: 'frames' (the image network on every frame, features averaged "
                               "over frames) or 'spatiotemporal' (3-D convolutions); both read any number of frames "
                               "(per frame, the default, estimates the level better at every clip length measured, "
                               "docs/training.md)",
                     choices=("frames", "spatiotemporal"))


@dataclass
class Bench:
    steps: int = opt(20, "timed steps per block", lo=1)
    repeats: int = opt(10, "blocks per setting (interleaved ABBA)", lo=1)
    warmup: int = opt(10, "untimed steps first", lo=0)


@dataclass
class Config:
    run: Run = field(default_factory=Run)
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    lora: Lora = field(default_factory=Lora)
    sample: Sample = field(default_factory=Sample)
    monitor: Monitor = field(default_factory=Monitor)
    export: Export = field(default_factory=Export)
    estimator: Estimator = field(default_factory=Estimator)
    bench: Bench = field(default_factory=Bench)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_reference(self) -> bool:
        return self.model.family in REFERENCE_FAMILIES


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def section_cls(name: str):
    return get_type_hints(Config)[name]


def help_text() -> str:
    """Every section and key with default and help (``--help-config``)."""
    lines = []
    for sec in SECTIONS:
        cls = section_cls(sec)
        lines.append(f"[{sec}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {json.dumps(default)}")
            lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)
