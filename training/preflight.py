"""Checks before any work that depend on the command: which keys it needs, which combinations make sense,
and that the paths it reads and writes are files or folders as they should be (a refusal names the key,
its shortcut and the fix, instead of an OSError after the work)."""
from __future__ import annotations

import json
from pathlib import Path

from .config import Config, ConfigError


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


def _need(cond, msg) -> None:
    if not cond:
        raise ConfigError(msg)


def _require_prepare(cfg: Config) -> None:
    """``prepare``'s keys and combinations: what each data.source reads, and the encoder it needs."""
    d, m, need = cfg.data, cfg.model, _need
    need(d.cache, "data.cache is empty: set the file `prepare` writes, e.g. --set data.cache=runs/cache.safetensors")
    if d.source in ("folder", "video", "precomputed"):
        what = {"folder": "images folder", "video": "folder of clips", "precomputed": "precomputed safetensors file"}
        need(d.path, f"data.path is empty: data.source='{d.source}' needs the {what[d.source]}")
    if d.source in ("folder", "video"):
        noun = "frames" if d.source == "video" else "images"
        need(d.resolution > 0, f"data.resolution is 0: set the square size folder {noun} are resized to, e.g. 512")
    if d.source == "video":
        need(d.encoder == "comfyui", "data.source='video' encodes clips with a video VAE: set data.encoder='comfyui' "
                                     "and data.vae (WAN's VAE) or data.checkpoint")
        need(d.frames >= 1, "data.frames is 0: set the frames `prepare` reads from each clip (WAN's VAE takes 1 + 4k, "
                            "e.g. --set data.frames=17)")
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


def require(cfg: Config, command: str) -> None:
    """Checks that depend on the command (which keys must be set, which combinations make sense, and that
    the paths it reads and writes are files or folders as they should be)."""
    d, m, t, need = cfg.data, cfg.model, cfg.train, _need
    if command == "prepare":
        _require_prepare(cfg)
    if command in ("finetune", "estimator"):
        need(d.cache, "data.cache is empty: run `python -m training prepare` first and point data.cache at its file")
    if command == "finetune":
        if not cfg.is_reference:
            need(m.base, f"model.base is empty: family '{m.family}' fine-tunes an existing ComfyUI checkpoint or "
                         "diffusion model; set model.base to its .safetensors file")
        if t.mode == "lora":
            need(m.base, "train.mode='lora' needs a base model to adapt (model.base)")
        need(t.mode == "lora" or m.dtype == "fp32", f"model.dtype='{m.dtype}' holds the base weights in half precision, "
                                                   "for a LoRA; train.mode='full' trains the weights themselves: keep "
                                                   "model.dtype='fp32'")
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

