"""Model adapters: one interface over comfy_nag's reference DiT/SiT and every ComfyUI family.

An adapter knows the model's schedule and parameterisation, turns cache rows into the clean
model-space samples and conditioning the network takes, exposes a module with comfy_nag's call
convention ``module(x_net, t_net, cond, drop_t)`` (so ``comfy_nag.losses.denoising_loss`` trains
every family), and writes the finished weights in the family's native format.

The null condition (docs/method.md) is the sentinel ``schedule.null_timestep`` in **network units**,
fed through the model's ordinary timestep input for the rows in ``drop_t``:

* reference DiT/SiT: the network does it itself (``Conditioning`` with ``null_mode="sentinel"``);
* ComfyUI families: :class:`ComfyDenoiser` calls ``BaseModel.diffusion_model(x, t_net, context=..., **extra)``
  directly, below ``model_sampling.timestep`` (which cannot express an out-of-range discrete t),
  with t_net rows replaced: -1000 on SD1/SD2/SDXL's 0..999 index, -1000 on SD3 (sigma*1000),
  -1 on Flux (sigma; Flux scales by 1000 inside its embedding).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from comfy_nag import models
from comfy_nag.families import family as registry_family
from comfy_nag.files import WeightFileError, load_module_weights, load_weights, meta_json, read_metadata, save_weights
from comfy_nag.families import FAMILIES
from comfy_nag.metadata import file_sha256, nag_metadata

from .config import Config, ConfigError
from .latent_cache import Cache, CacheError
from .latent_spaces import LatentSpace, estimator_space, latent_kind, same_latent_space  # noqa: F401 (re-exported)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- reference models -------------------------------------------------------------------------

def save_reference_model(net: nn.Module, path, family: str, *, noise_condition_dropout_rate: float | None = None,
                         base_hash: str | None = None, extra: dict | None = None) -> Path:
    """Save a comfy_nag reference model (``nag.kind = reference_model``) with everything needed to rebuild it."""
    fam = registry_family(family)
    null_mode = net.kwargs.get("null_mode", "sentinel")
    meta = nag_metadata("reference_model", family, fam.prediction, fam.schedule, net.kwargs.get("null_timestep"),
                        noise_condition_dropout_rate=noise_condition_dropout_rate, base_model_hash=base_hash,
                        arch=models.arch_of(net), model=net.kwargs, null_mode=null_mode, **(extra or {}))
    return save_weights(path, net.state_dict(), meta)


def load_reference_model(path) -> tuple[nn.Module, dict]:
    """Rebuild a reference model saved by :func:`save_reference_model`; returns ``(net, metadata)``."""
    tensors, meta = load_weights(path)
    if meta.get("nag.kind") != "reference_model":
        raise WeightFileError(f"{path}: not a comfy-nag reference model (nag.kind={meta.get('nag.kind')!r}); "
                              "reference families (dit/sit) fine-tune files written by this trainer")
    kwargs = meta_json(meta, "nag.model", path)
    if "null_time" in kwargs:  # files written before the rename to null_timestep
        kwargs["null_timestep"] = kwargs.pop("null_time")
    net = models.build(meta_json(meta, "nag.arch", path), **kwargs)
    return load_module_weights(net, tensors, path), meta


class ReferenceAdapter:
    """comfy_nag's DiT (eps, discrete VP) or SiT (velocity, flow) on a pixel (or precomputed) cache."""

    kind = "reference_model"

    def __init__(self, cfg: Config, cache: Cache):
        m = cfg.model
        if cache.video:
            raise CacheError(f"cache {cache.path} holds {latent_kind(3, shape=cache.sample_shape)}; the reference models "
                             "(dit/sit) train on images: prepare their cache with data.source='folder' or 'digits'")
        fam = registry_family(m.family)
        self.family, self.schedule, self.prediction = m.family, fam.schedule, fam.prediction
        self.base_path, self.base_hash, self.base_meta = m.base, None, {}
        if m.base:
            self.net, self.base_meta = load_reference_model(m.base)
            if self.base_meta.get("nag.family") != m.family:
                raise ConfigError(f"model.base {m.base} is a '{self.base_meta.get('nag.family')}' model but model.family "
                                  f"is '{m.family}'; set model.family = '{self.base_meta.get('nag.family')}'")
            self.base_hash = file_sha256(m.base)
        else:
            c, h, w = cache.sample_shape
            if h != w:
                raise CacheError(f"a new reference DiT needs square samples; the cache holds {h}x{w}")
            classes = cache.info.num_classes if cache.info.conditioning == "class" else 0
            torch.manual_seed(cfg.run.seed)
            self.net = models.DiT(input_size=h, patch_size=m.patch_size, in_channels=c, hidden=m.hidden, depth=m.depth,
                                  heads=m.heads, num_classes=classes,
                                  null=models.NullCondition(timestep=self.schedule.null_timestep))
        null = float(self.net.kwargs.get("null_timestep", self.schedule.null_timestep))
        if null != self.schedule.null_timestep and self.net.kwargs.get("null_mode", "sentinel") == "sentinel":
            raise ConfigError(f"model.base uses null timestep {null}, but family '{m.family}' uses "
                              f"{self.schedule.null_timestep} network units (docs/method.md); fine-tune a model of this family")
        self.null_timestep = null
        self.num_classes = getattr(self.net, "num_classes", 0)
        self.module = self.net
        self.check_cache(cache)

    def check_cache(self, cache: Cache) -> None:
        want = tuple(self.net.in_shape)
        if tuple(cache.sample_shape) != want:
            raise CacheError(f"cache {cache.path} holds samples of shape {list(cache.sample_shape)} (channels, height, "
                             f"width) but the model takes {list(want)}; prepare the cache at the model's resolution "
                             "and channels (data.resolution, data.channels)")
        if self.num_classes:
            if cache.info.conditioning != "class":
                raise CacheError(f"the model is class-conditional ({self.num_classes} classes) but cache {cache.path} "
                                 "has no class labels; prepare it with data.labels='folders'")
            if cache.info.num_classes > self.num_classes:
                raise CacheError(f"cache {cache.path} has {cache.info.num_classes} classes but the model only "
                                 f"{self.num_classes}")

    def x0(self, cache: Cache, idx: torch.Tensor) -> torch.Tensor:
        return cache.latents(idx)

    def conditions(self, cache: Cache, idx, generator, device, dropout: bool = True):
        return cache.labels(idx).to(device) if self.num_classes else None  # class dropout: in denoising_loss

    @property
    def network(self) -> nn.Module:
        """The diffusion network itself (LoRA and gradient checkpointing go here)."""
        return self.net

    weights_dtype = torch.float32     # dtype of export.dtype = "same"
    export_extra: dict = {}          # metadata every export of this adapter carries

    def lora_names(self, paths: list[str]) -> dict[str, str]:
        """Kohya names of LoRA layer paths: the network's own paths."""
        return {}

    def export(self, path, cfg: Config, *, noise_condition_dropout_rate: float, extra: dict) -> Path:
        return save_reference_model(self.net, path, self.family, noise_condition_dropout_rate=noise_condition_dropout_rate,
                                    base_hash=self.base_hash, extra=extra)


# --- ComfyUI families -------------------------------------------------------------------------

@dataclass
class ContextGroups:
    """A batch's captions of different lengths for a model whose text conditioning ComfyUI does not repeat to a
    common length (``CONDRegular`` cross-attention: WAN, Qwen-Image, whose joint attention repeated tokens would
    change): the batch's rows per caption length and their contexts; ComfyUI runs each length as its own batch,
    and so does :class:`ComfyDenoiser`."""

    rows: list[torch.Tensor]
    contexts: list[torch.Tensor]

    @classmethod
    def of(cls, conds: list[torch.Tensor], device) -> "ContextGroups":
        lengths = torch.tensor([c.shape[1] for c in conds])
        rows = [torch.nonzero(lengths == n)[:, 0] for n in lengths.unique()]
        return cls(rows, [torch.cat([conds[int(i)] for i in r]).to(device) for r in rows])


class ComfyDenoiser(nn.Module):
    """A ComfyUI diffusion network with comfy_nag's call convention and the sentinel null timestep."""

    def __init__(self, base_model, null_timestep: float, discrete: bool):
        super().__init__()
        self.diffusion_model = base_model.diffusion_model
        object.__setattr__(self, "_base", base_model)  # not a submodule: its only parameters are the network's
        self.null_timestep, self.discrete = float(null_timestep), discrete

    def forward(self, x, t, cond: dict, drop_t=None):
        if self.discrete:
            t = t.round()  # ComfyUI feeds SD1/SD2/SDXL integer indices (model_sampling.timestep)
        if drop_t is not None:
            t = torch.where(drop_t, torch.full_like(t, self.null_timestep), t)
        extra = dict(cond)
        context = extra.pop("c_crossattn", None)
        if not isinstance(context, ContextGroups):
            return self._forward(x, t, context, extra)
        outs, order = [], torch.cat(context.rows).to(x.device)
        for rows, ctx in zip(context.rows, context.contexts):
            rows = rows.to(x.device)
            sub = {k: v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == x.shape[:1] else v for k, v in extra.items()}
            outs.append(self._forward(x[rows], t[rows], ctx, sub))
        return torch.cat(outs)[torch.argsort(order)]

    def _forward(self, x, t, context, extra: dict):
        # inputs in the network's compute dtype, as ComfyUI's BaseModel._apply_model casts them (fp32 weights: no-op)
        dtype = self._base.manual_cast_dtype or self._base.get_dtype()
        cast = lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
        extra = {k: cast(v) for k, v in extra.items()}
        t = self._base.process_timestep(t, x=x, **extra)
        out = self.diffusion_model(cast(x), t, context=cast(context), transformer_options={}, **extra)
        return out.float()


class ComfyAdapter:
    """Any diffusion model ComfyUI loads (SD1.x, SD2.x, SDXL, SD3, Flux, ...), trained through ComfyUI's code."""

    def __init__(self, cfg: Config, cache: Cache):
        from . import comfyui
        self.comfyui = comfyui
        self.loaded = comfyui.load_model(cfg.model.base, cfg.model.family, cfg.model.dtype)
        L = self.loaded
        self.family, self.schedule, self.prediction = L.family, L.schedule, L.prediction
        self.kind, self.base_path = L.kind, cfg.model.base
        self.base_hash = file_sha256(cfg.model.base)
        self.null_timestep = self.schedule.null_timestep
        self.num_classes = 0
        self.guidance = cfg.model.guidance
        self.caption_dropout = cfg.train.caption_dropout_rate
        self.module = ComfyDenoiser(L.model, self.null_timestep, L.discrete)
        for p in self.module.parameters():
            p.requires_grad_(True)
        self.check_cache(cache)

    @property
    def network(self) -> nn.Module:
        return self.loaded.model.diffusion_model

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.loaded.dtype

    @property
    def export_extra(self) -> dict:
        return {"comfy_model_config": self.loaded.config_name, "latent_format": self.loaded.latent_format}

    def lora_names(self, paths: list[str]) -> dict[str, str]:
        """Kohya names of LoRA layer paths: diffusers module paths for UNet families (ComfyUI's mapping)."""
        return self.comfyui.diffusers_names(self.loaded.model, paths)

    def check_cache(self, cache: Cache) -> None:
        info, L = cache.info, self.loaded
        if info.latent_space != "vae":
            raise CacheError(f"cache {cache.path} holds pixels; ComfyUI families train on VAE latents - prepare it "
                             "with data.encoder='comfyui' and this model's checkpoint (or its VAE)")
        self._check_dims(cache)
        if info.channels != L.latent_channels:
            raise CacheError(f"cache {cache.path} holds {info.channels}-channel latents but {L.config_name} uses "
                             f"{L.latent_channels} channels; re-run `prepare` with this model's VAE")
        if info.vae_family and not same_latent_space(info.vae_family, L.family):
            raise CacheError(f"cache {cache.path} was encoded with the VAE of a '{info.vae_family}' model, but the model "
                             f"is '{L.family}'; re-run `prepare` with this model's checkpoint or VAE")
        if info.conditioning != "text":
            raise CacheError(f"{L.config_name} is text-conditioned, but cache {cache.path} has "
                             f"{'class labels' if info.conditioning == 'class' else 'no conditioning'}; prepare it with "
                             "data.labels='captions' (or precomputed conditioning)")
        if self.caption_dropout > 0 and info.empty_cond < 0:
            raise CacheError("train.caption_dropout_rate > 0 needs the empty caption's encoding in the cache; it is "
                             "stored when `prepare` encodes with text encoders (precomputed conditioning: include \"\")")
        # one forward on one sample: wrong resolution, context width or pooled size fail here, clearly.
        idx = torch.zeros(1, dtype=torch.long)
        try:
            with torch.no_grad():
                x0 = self.x0(cache, idx)
                self.module(x0, torch.zeros(1), self.conditions(cache, idx, None, x0.device, dropout=False))
        except Exception as e:  # shape errors surface as RuntimeError/ValueError/IndexError from ComfyUI's code
            raise CacheError(f"cache {cache.path} does not fit {L.config_name} ({type(e).__name__}: {e}); the latents "
                             "or the text conditioning come from another model - re-run `prepare` with this model's "
                             "checkpoint / text encoders") from e

    def _check_dims(self, cache: Cache) -> None:
        """Image vs video latents (ComfyUI's latent format says which the model takes), and one frame for an image
        family with 5-D latents (Qwen-Image); else one line naming both and the fix."""
        L, dims = self.loaded, 3 if cache.video else 2
        want = int(getattr(L.model.latent_format, "latent_dimensions", 2))
        if dims != want:
            raise CacheError(f"cache {cache.path} holds {latent_kind(dims, shape=cache.sample_shape)} but {L.config_name} "
                             f"(family '{L.family}') takes {latent_kind(want, L.latent_channels, L.latent_format)}; "
                             "re-run `prepare` for this model: its VAE (data.vae or data.checkpoint) on "
                             f"{'clips (data.source=video)' if want == 3 else 'images'}, or data.source='generated'")
        fam = FAMILIES.get(L.family)
        if fam is not None and fam.temporal_compression == 0 and cache.info.frames > 1:
            raise CacheError(f"cache {cache.path} holds {cache.info.frames}-frame latents but {L.config_name} (family "
                             f"'{L.family}') makes images (one latent frame); prepare its cache from images "
                             "(data.source='folder') or with data.frames = 1")

    def x0(self, cache: Cache, idx) -> torch.Tensor:
        return self.loaded.model.latent_format.process_in(cache.latents(idx))

    def conditions(self, cache: Cache, idx, generator, device, dropout: bool = True) -> dict:
        rows = cache.cond_index(idx)
        if dropout and self.caption_dropout > 0:
            drop = torch.rand(len(rows), generator=generator) < self.caption_dropout
            rows = torch.where(drop, torch.full_like(rows, cache.info.empty_cond), rows)
        conds, pooled = cache.text(rows)
        B, (h, w), down = len(rows), cache.sample_shape[-2:], self.spatial_compression
        size = dict(width=w * down, height=h * down, target_width=w * down, target_height=h * down, crop_w=0, crop_h=0)
        noise = torch.zeros((B, *cache.sample_shape), device=device)
        out = self.loaded.model.extra_conds(cross_attn=self.comfyui.concat_cross_attn(conds).to(device),
                                            pooled_output=None if pooled is None else pooled.to(device),
                                            guidance=self.guidance, device=device, noise=noise, **size)
        if "c_concat" in out:
            raise CacheError(f"{self.loaded.config_name} needs concatenated image conditioning (inpainting, control and "
                             "image-to-video models), which the trainer does not support; train the text-to-video/image "
                             "model")
        cond = {k: _to(v.process_cond(batch_size=B, device=device, area=None).cond, device) for k, v in out.items()}
        conds_module = self.comfyui.import_comfy().conds  # CONDRegular: ComfyUI batches equal lengths only
        repeats = isinstance(out.get("c_crossattn"), conds_module.CONDCrossAttn)
        if not repeats and "c_crossattn" in out and len({c.shape[1] for c in conds}) > 1:
            cond["c_crossattn"] = ContextGroups.of(conds, device)
        return cond

    @property
    def spatial_compression(self) -> int:
        """Image pixels per latent cell (the registry's; 8 for families it does not know)."""
        fam = FAMILIES.get(self.loaded.family)
        return fam.spatial_compression if fam is not None else 8

    def export(self, path, cfg: Config, *, noise_condition_dropout_rate: float, extra: dict) -> Path:
        L = self.loaded
        extra = {**self.export_extra, **extra}
        fmt = cfg.export.format
        kind = L.kind if fmt == "auto" else fmt
        dtype = export_dtype(cfg, L.dtype)
        base_meta = _base_metadata(self.base_path)
        meta = {**base_meta, **nag_metadata(kind, self.family, self.prediction, self.schedule, self.null_timestep,
                                            noise_condition_dropout_rate=noise_condition_dropout_rate,
                                            base_model_hash=self.base_hash, **extra)}
        if kind == "checkpoint":
            # ComfyUI's own layout: model.diffusion_model.* (+ v_pred), then the base's VAE / text encoders untouched
            sd = {k: _cast(v, dtype) for k, v in L.model.state_dict_for_saving().items()}
            sd.update(_other_tensors(self.base_path, L.prefix))
        else:  # bare network keys, as diffusion-model files (models/diffusion_models) hold them
            sd = {k: _cast(v, dtype) for k, v in L.model.diffusion_model.state_dict().items()}
        return save_weights(path, sd, meta)


def _cast(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype) if v.is_floating_point() else v


def _to(v, device):
    return v.to(device) if isinstance(v, torch.Tensor) else v


def export_dtype(cfg: Config, same: torch.dtype) -> torch.dtype:
    return same if cfg.export.dtype == "same" else DTYPES[cfg.export.dtype]


def _base_metadata(path) -> dict:
    return {k: v for k, v in read_metadata(path).items() if not k.startswith("nag.")}


def _other_tensors(path, prefix: str) -> dict:
    """The base checkpoint's tensors outside the diffusion network (VAE, text encoders), read lazily."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(prefix)}


def build_adapter(cfg: Config, cache: Cache):
    """The adapter for ``cfg.model`` (reference or ComfyUI), checked against the cache."""
    if cfg.is_reference:
        return ReferenceAdapter(cfg, cache)
    if cfg.model.base and not os.path.exists(cfg.model.base):
        raise WeightFileError(f"{cfg.model.base}: file not found; check model.base")
    return ComfyAdapter(cfg, cache)
