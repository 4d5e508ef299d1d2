"""`inspect`: what a file (or run folder) is, and which NAG metadata it carries."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from safetensors import safe_open

from comfy_nag.files import read_metadata
from comfy_nag.metadata import describe

from . import state
from .latent_cache import CACHE_FORMAT, VIDEO_CACHE_FORMAT, CacheInfo, describe_cache


def _layout(keys: list[str], meta: dict) -> str:
    ups = [k for k in keys if k.endswith(".lora_up.weight")]
    if ups:
        for prefix, fmt in (("lora_unet_", "kohya key format: lora_unet_<name>"),
                            ("diffusion_model.", "ComfyUI key format: diffusion_model.<path>")):
            if all(k.startswith(prefix) for k in ups):
                return f"LoRA, {len(ups)} layers ({fmt}.lora_up/lora_down/alpha)"
        return f"LoRA, {len(ups)} layers"
    if meta.get("nag.kind") == "noise_level_estimator":
        return "noise-level estimator"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        parts = ["checkpoint (model.diffusion_model.*)"]
        if any(k.startswith("first_stage_model.") for k in keys):
            parts.append("VAE")
        if any(k.startswith(("cond_stage_model.", "conditioner.", "text_encoders.")) for k in keys):
            parts.append("text encoders")
        return " + ".join(parts)
    if meta.get("nag.kind") == "reference_model":
        return "comfy-nag reference model"
    return "diffusion model or other weights (bare keys)"


def inspect_path(path) -> str:
    path = Path(path)
    if path.is_dir():
        return _inspect_dir(path)
    meta = read_metadata(path)  # refuses pickles / damaged files with a clear message
    if meta.get("nag_cache.format") in (CACHE_FORMAT, VIDEO_CACHE_FORMAT):
        return f"{path}: latent cache ({meta['nag_cache.format']})\n{describe_cache(CacheInfo.from_metadata(meta, path))}"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        dtypes, params = Counter(), 0
        for k in keys:
            sl = f.get_slice(k)
            n = 1
            for d in sl.get_shape():
                n *= d
            params += n
            dtypes[sl.get_dtype()] += n
    size = path.stat().st_size
    lines = [f"{path}: {_layout(keys, meta)}",
             f"{len(keys)} tensors, {params:,} values ({', '.join(f'{d} {n / params:.0%}' for d, n in dtypes.most_common())}), "
             f"{size / 2**20:.1f} MiB", "", describe(meta)]
    lines += [f"{k:34s} {meta[k]}" for k in sorted(meta) if k.startswith(("ss_", "modelspec."))]
    return "\n".join(lines)


def _inspect_dir(path: Path) -> str:
    if (path / "state.json").is_file():  # one checkpoint
        st = json.loads((path / "state.json").read_text())
        files = ", ".join(sorted(p.name for p in path.iterdir()))
        return f"{path}: training checkpoint at step {st['step']}\nfiles: {files}\nfingerprint: {json.dumps(st.get('fingerprint'), indent=1)}"
    cks = state.list_checkpoints(path)
    run = path / "run.json"
    if not cks and not run.is_file():
        raise ValueError(f"{path} is a folder but neither a run folder nor a checkpoint; pass a file")
    lines = [f"{path}: training run"]
    if run.is_file():
        lines.append(f"task: {json.loads(run.read_text())['fingerprint'].get('task')}")
    lines.append("checkpoints: " + (", ".join(f"step {s}" for s, _ in cks) if cks else "none"))
    exports = sorted(path.glob("*.safetensors"))
    lines.append("exported: " + (", ".join(p.name for p in exports) if exports else "nothing yet"))
    for p in exports:
        lines += ["", inspect_path(p)]
    return "\n".join(lines)
