"""The trainer's configuration: one TOML (or YAML) file, overridable from the command line.

Sections and keys are declared once below, as dataclasses whose fields carry their checks
(``choices``, ``lo``/``hi`` bounds) and help text.  :func:`load` reads a file, applies
``--set section.key=value`` overrides (values in TOML syntax; bare words are strings) and
validates everything up front, so a typo or a bad value stops the run before any work with a
message that names the key and says how to fix it.

``python -m training <command> --help-config`` prints every key with its default and help.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from comfy_nag import families


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def opt(default, help: str, choices=None, lo=None, hi=None):
    """A config key: default value, help text and its checks."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


REFERENCE_FAMILIES = families.reference_names()
COMFY_FAMILIES = ("auto",) + families.comfy_names()  # 'auto': whatever ComfyUI detects


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
    source: str = opt("folder", "what `prepare` reads: 'folder' (images), 'digits' (scikit-learn's 8x8 digits), "
                                "'precomputed' (a safetensors file of latents + conditioning), 'generated' (latents the "
                                "model.base checkpoint samples itself: an estimator without a data set)",
                      choices=("folder", "digits", "precomputed", "generated"))
    path: str = opt("", "images folder (source='folder') or precomputed safetensors file (source='precomputed')")
    labels: str = opt("none", "conditioning of folder images: 'none', 'folders' (class = first sub-folder), "
                              "'captions' (text in a .txt file beside each image)",
                      choices=("none", "folders", "captions"))
    resolution: int = opt(0, "square side images are resized/cropped to (0: keep digits at 8, required for folders)", lo=0)
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
                             + ", ".join(COMFY_FAMILIES) + " ('auto': whatever ComfyUI detects)",
                      choices=REFERENCE_FAMILIES + COMFY_FAMILIES)
    base: str = opt("", "safetensors file to fine-tune (empty: a new reference model, dit/sit only)")
    hidden: int = opt(64, "width of a new reference DiT", lo=8)
    depth: int = opt(2, "blocks of a new reference DiT", lo=1)
    heads: int = opt(4, "attention heads of a new reference DiT", lo=1)
    patch_size: int = opt(2, "patch size of a new reference DiT", lo=1)
    guidance: float = opt(1.0, "guidance-embedding value for models that take one (Flux-dev)")


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
    family: str = opt("", "schedule the estimator is trained for (default: the cache's family / model.family)")
    steps: int = opt(30000, "optimizer steps (docs/method.md §2: training length is what makes the estimator faithful)", lo=1)
    batch_size: int = opt(128, "samples per device per step", lo=1)
    learning_rate: float = opt(2e-3, "AdamW learning rate", lo=0.0)
    bins: int = opt(32, "log-SNR bins", lo=2)
    logsnr_min: float = opt(0.0, "lowest log-SNR bin edge (0 with logsnr_max 0: the schedule's own range)")
    logsnr_max: float = opt(0.0, "highest log-SNR bin edge")
    width: int = opt(64, "estimator width", lo=8)
    depth: int = opt(3, "estimator depth", lo=1)


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


def _section_cls(name: str):
    return get_type_hints(Config)[name]


def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean '{near[0]}'?" if near else ""


def _coerce(where: str, value: Any, typ, meta: dict):
    """Check/convert one value against its declared type and bounds."""
    how = f"Fix it in the config file or pass --set {where}=..."
    if get_origin(typ) is list:
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}. {how}")
        (inner,) = get_args(typ)
        return [_coerce(f"{where}[{i}]", v, inner, {}) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}. {how}")
    elif typ is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}. {how}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}. {how}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be finite, got {value!r}. {how}")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}. {how}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(map(repr, choices))}.{_suggest(str(value), map(str, choices))} {how}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        raise ConfigError(f"{where} = {value!r} must be >= {lo}. {how}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where} = {value!r} must be <= {hi}. {how}")
    return value


def from_dict(raw: dict, source: str = "config") -> Config:
    """Build a validated :class:`Config` from nested dicts (unknown keys are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a table of sections ({', '.join(SECTIONS)})")
    cfg = Config()
    for sec, body in raw.items():
        if sec not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{sec}].{_suggest(sec, SECTIONS)} Sections: {', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table of keys, got {body!r}")
        cls = _section_cls(sec)
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        obj = getattr(cfg, sec)
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {sec}.{key}.{_suggest(key, fields)} Keys of [{sec}]: {', '.join(fields)}")
            setattr(obj, key, _coerce(f"{sec}.{key}", value, hints[key], dict(fields[key].metadata)))
    return cfg


def parse_override(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); value parsed as TOML, else kept as a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.steps=200")
    lhs, text = item.split("=", 1)
    sec, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return sec, key, value


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing .toml file (see training/configs/)")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML") from None
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def merge(raw: dict, overrides: dict[str, Any] | list[str] | None) -> dict:
    """Apply overrides (``{"train.steps": 10}`` or ``["train.steps=10"]``) onto a raw config dict."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    items = []
    if isinstance(overrides, dict):
        for lhs, value in overrides.items():
            if "." not in lhs:
                raise ConfigError(f"override {lhs!r}: expected 'section.key'")
            items.append((*lhs.split(".", 1), value))
    else:
        items = [parse_override(s) for s in overrides or []]
    for sec, key, value in items:
        raw.setdefault(sec, {})
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"[{sec}] must be a table")
        raw[sec][key] = value
    return raw


def load(path: str | Path | None = None, overrides: dict | list | None = None) -> Config:
    """Read a config file (optional), apply overrides and validate."""
    raw = read_file(path) if path else {}
    return from_dict(merge(raw, overrides), str(path or "config"))


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing part of ``path`` (itself included) that is not a folder, or None."""
    try:
        for p in [*reversed(path.parents), path]:
            if not p.exists():
                return None
            if not p.is_dir():
                return p
    except OSError:  # unreadable: let the command meet it and say so
        return None
    return None


def run_task(out_dir) -> str | None:
    """The command (``finetune``/``estimator``) whose run a folder holds, from its ``run.json``."""
    try:
        return json.loads((Path(out_dir) / "run.json").read_text())["fingerprint"]["task"] or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_paths(cfg: Config, command: str) -> None:
    """Files where folders go (and the reverse), and a run folder of another command: refused before any
    work, naming the key, its shortcut and the fix (instead of an OSError after the work)."""
    d = cfg.data
    if command == "prepare":
        cache = Path(d.cache)
        if cache.is_dir():
            raise ConfigError(f"data.cache (--cache) {d.cache} is a folder, but `prepare` writes one file there: pass "
                              f"a file path, e.g. --cache {cache / 'cache.safetensors'}")
        blocker = _file_in_the_way(cache.parent)
        if blocker is not None:
            raise ConfigError(f"data.cache (--cache) {d.cache} cannot be written: {blocker} is a file, not a folder; "
                              "pass a file path in a folder (missing folders are created)")
    if command in ("finetune", "estimator"):
        cache = Path(d.cache)
        if cache.is_dir():
            found = sorted(p.name for p in cache.glob("*.safetensors"))
            held = f" (it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found else ""
            raise ConfigError(f"data.cache (--cache) {d.cache} is a folder{held}; point it at the cache file "
                              f"`prepare` wrote, e.g. --cache {cache / (found[0] if found else 'cache.safetensors')}")
        out = Path(cfg.run.out_dir)
        blocker = _file_in_the_way(out)
        if blocker == out:
            raise ConfigError(f"run.out_dir (--out) {out} is a file, not a folder; pass a folder path (it is created, "
                              "and the run's checkpoints and exported file go inside it)")
        if blocker is not None:
            raise ConfigError(f"run.out_dir (--out) {out} cannot be created: {blocker} is a file, not a folder; pass "
                              "a folder path (it is created)")
        other = run_task(out)
        if other is not None and other != command:
            raise ConfigError(f"run.out_dir (--out) {out} holds a `{other}` run; {'an' if command[0] in 'aeiou' else 'a'} "
                              f"`{command}` run needs a folder of its own: pass another --out, e.g. --out {out}-{command}")


def require(cfg: Config, command: str) -> None:
    """Checks that depend on the command (which keys must be set, which combinations make sense, and that
    the paths it reads and writes are files or folders as they should be)."""
    d, m, t = cfg.data, cfg.model, cfg.train

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    if command == "prepare":
        need(d.cache, "data.cache is empty: set the file `prepare` writes, e.g. --set data.cache=runs/cache.safetensors")
        if d.source in ("folder", "precomputed"):
            need(d.path, f"data.path is empty: data.source='{d.source}' needs the "
                         f"{'images folder' if d.source == 'folder' else 'precomputed safetensors file'}")
        if d.source == "folder":
            need(d.resolution > 0, "data.resolution is 0: set the square size folder images are resized to, e.g. 512")
        if d.source == "generated":
            need(m.base, "data.source='generated' samples latents from a checkpoint: set model.base to its .safetensors "
                         "file (and model.family)")
            need(cfg.is_reference or d.resolution > 0, "data.source='generated' needs data.resolution, the image size "
                                                       "to generate (e.g. 512 for SD1.5, 1024 for SDXL)")
        if d.encoder == "comfyui" and d.source != "generated":
            need(d.source != "precomputed", "data.encoder='comfyui' encodes images; a precomputed source is already encoded")
            need(d.checkpoint or d.vae, "data.encoder='comfyui' needs data.checkpoint (VAE + text encoders) or data.vae")
            if d.labels == "captions":
                need(d.checkpoint or d.text_encoders or d.conditioning,
                     "captions need text encoders: set data.checkpoint, data.text_encoders or data.conditioning")
        elif d.labels == "captions" and not d.conditioning:
            raise ConfigError("captions with encoder='pixels' need precomputed conditioning (data.conditioning); "
                              "reference models are class-conditional: use data.labels='folders'")
    if command in ("finetune", "estimator"):
        need(d.cache, "data.cache is empty: run `python -m training prepare` first and point data.cache at its file")
    if command == "finetune":
        if not cfg.is_reference:
            need(m.base, f"model.base is empty: family '{m.family}' fine-tunes an existing ComfyUI checkpoint or "
                         "diffusion model; set model.base to its .safetensors file")
        if t.mode == "lora":
            need(m.base, "train.mode='lora' needs a base model to adapt (model.base)")
        fmt = cfg.export.format
        if t.mode == "lora":
            need(fmt in ("auto", "lora"), f"export.format='{fmt}' cannot hold a LoRA run; use 'auto' or 'lora'")
        else:
            need(fmt != "lora", "export.format='lora' needs train.mode='lora'")
            if cfg.is_reference:
                need(fmt in ("auto", "reference_model"), f"export.format='{fmt}' is for ComfyUI families; "
                                                        "reference models export as 'reference_model'")
            else:
                need(fmt != "reference_model", "export.format='reference_model' is only for dit/sit")
    e = cfg.estimator
    if command == "estimator" and (e.logsnr_min or e.logsnr_max):
        need(e.logsnr_max > e.logsnr_min, f"estimator.logsnr_max ({e.logsnr_max}) must be > logsnr_min ({e.logsnr_min})")
    _check_paths(cfg, command)


def help_text() -> str:
    """Every section and key with default and help (``--help-config``)."""
    lines = []
    for sec in SECTIONS:
        cls = _section_cls(sec)
        lines.append(f"[{sec}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {json.dumps(default)}")
            lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)
