"""The two things the loop trains: a diffusion model with noise-condition dropout, and a noise-level estimator.

A task owns its data (the cache), its model and its loss, and decides what to monitor and how to
export; ``loop.train`` owns everything else.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from comfy_nag.auto_scale import calibrate_reading, calibration_knots
from comfy_nag.estimators import LevelBins, NoiseLevelEstimator, VideoBackbone, noised, training_log_prior
from comfy_nag.families import FAMILIES
from comfy_nag.files import save_weights
from comfy_nag.metadata import nag_metadata
from comfy_nag.losses import denoising_loss

from . import monitor
from .config import Config, ConfigError
from .latent_cache import Cache
from .adapters import build_adapter, export_dtype
from .latent_spaces import estimator_space
from .lora import LoRANetwork, kohya_metadata


class Bundle(nn.Module):
    """The module accelerate prepares: the denoiser plus (for LoRA runs) the LoRA layers, so DDP
    sees every trained parameter.  Forward is the denoiser's."""

    def __init__(self, denoiser: nn.Module, lora: nn.Module | None = None):
        super().__init__()
        self.denoiser, self.lora = denoiser, lora

    def forward(self, *args, **kwargs):
        return self.denoiser(*args, **kwargs)


class _WithClasses:
    """``denoising_loss`` reads ``net.num_classes`` for class dropout; a DDP wrapper hides it.

    ``plain=True`` never hands the network a dropout mask (a trainer without noise-condition dropout;
    the benchmark's baseline).
    """

    def __init__(self, module, num_classes: int, plain: bool = False):
        self.module, self.num_classes, self.plain = module, num_classes, plain

    def __call__(self, x, t, y, drop_t):
        return self.module(x, t, y, None if self.plain else drop_t)


def enable_gradient_checkpointing(net: nn.Module) -> int:
    """Recompute each block of the network's top-level block lists in the backward pass."""
    from torch.utils.checkpoint import checkpoint
    n = 0
    for child in net.children():
        if not isinstance(child, nn.ModuleList):
            continue
        for block in child:
            def forward(*args, _orig=block.forward, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_orig, *args, use_reentrant=False, **kwargs)
                return _orig(*args, **kwargs)
            block.forward = forward
            n += 1
    if n == 0:
        raise ValueError(f"train.gradient_checkpointing: {type(net).__name__} has no block lists to checkpoint")
    return n


def _probe(n: int, size: int) -> torch.Tensor:
    """Fixed, spread-out cache rows for monitoring (the same every time)."""
    k = min(n, size)
    return torch.linspace(0, n - 1, k).round().long().unique()


class FinetuneTask:
    """Denoising loss with noise-condition dropout on a reference or ComfyUI model (full or LoRA)."""

    name = "finetune"

    def __init__(self, cfg: Config, log=print):
        self.cfg = cfg
        # the only read of the rate: passed on as a value, by keyword, under this one name
        self.noise_condition_dropout_rate = cfg.train.noise_condition_dropout_rate
        self.cache = Cache(cfg.data.cache)
        self.adapter = build_adapter(cfg, self.cache)
        a = self.adapter
        self.lora = None
        if cfg.train.mode == "lora":
            for p in a.module.parameters():
                p.requires_grad_(False)
            self.lora = LoRANetwork(a.network, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, cfg.run.seed).attach()
            log(f"LoRA rank {cfg.lora.rank} on {len(self.lora.paths)} layers")
        self.trainable = self.lora if self.lora is not None else a.module
        self.module = Bundle(a.module, self.lora)
        self.dataset_size = len(self.cache)
        self.export_ema = cfg.export.use_ema
        self.probe = _probe(self.dataset_size, cfg.monitor.eval_size)
        self._estimator, self._log_prior, self._scale_profile = None, None, None
        if cfg.monitor.estimator:
            self._estimator, meta = NoiseLevelEstimator.load(cfg.monitor.estimator)
            self._estimator.fit_input(torch.zeros(1, *self.cache.sample_shape))
            self._log_prior = training_log_prior(a.schedule, self._estimator.bins)
            if meta.get("nag.family") != a.family:
                raise ConfigError(f"monitor.estimator {cfg.monitor.estimator} was trained for family "
                                  f"'{meta.get('nag.family')}', this run trains '{a.family}'; train one with "
                                  f"`python -m training estimator` for '{a.family}'")

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def fingerprint(self) -> dict:
        c = self.cfg
        fp = {"family": self.adapter.family, "base": c.model.base, "base_sha256": self.adapter.base_hash,
              "cache": str(Path(c.data.cache).resolve()), "cache_count": self.dataset_size, "mode": c.train.mode,
              "noise_condition_dropout_rate": self.noise_condition_dropout_rate,
              "class_dropout_rate": c.train.class_dropout_rate, "caption_dropout_rate": c.train.caption_dropout_rate}
        if self.lora is not None:
            fp.update(lora_rank=c.lora.rank, lora_alpha=c.lora.alpha, lora_targets=list(c.lora.targets))
        if not c.model.base:
            fp.update(hidden=c.model.hidden, depth=c.model.depth, heads=c.model.heads, patch_size=c.model.patch_size)
        return fp

    def enable_gradient_checkpointing(self) -> int:
        return enable_gradient_checkpointing(self.adapter.network)

    def loss(self, module, idx, g, device, plain: bool = False):
        a, t = self.adapter, self.cfg.train
        x0 = a.x0(self.cache, idx).to(device)
        cond = a.conditions(self.cache, idx, g, device)
        rate = 0.0 if plain else self.noise_condition_dropout_rate
        loss, per, drop = denoising_loss(_WithClasses(module, a.num_classes, plain), x0, cond, a.schedule, a.prediction,
                                         noise_condition_dropout_rate=rate, class_dropout_rate=t.class_dropout_rate,
                                         generator=g)
        keep = ~drop
        return loss, {"loss": (per.sum(), len(per)), "loss_cond": (per[keep].sum(), keep.sum()),
                      "loss_dropped": (per[drop].sum(), drop.sum())}

    def periodic(self, step: int, out: Path, monitor_due: bool, final: bool, ema_weights) -> dict:
        cfg, a = self.cfg, self.adapter
        device = next(a.module.parameters()).device
        out_metrics = {}
        every = cfg.sample.every
        grid_due = cfg.is_reference and (final or (every and step % every == 0))
        if not (monitor_due or grid_due):
            return {}
        with ema_weights():
            if monitor_due:
                probe = monitor.ProbeSet(self.cache, self.probe, cfg.train.batch_size)
                out_metrics.update(monitor.branch_check(a.module, a, probe, device,
                                                         estimator=self._estimator and self._estimator.to(device),
                                                         log_prior=self._log_prior))
                self._scale_profile = out_metrics.get("scale_profile", self._scale_profile)
            if grid_due:
                rows_fn = lambda traces=None: monitor.sample_rows(  # noqa: E731
                    a.net, a, self.cache.sample_shape, cfg.sample.count, cfg.sample, cfg.run.seed, device, traces)
                path = monitor.save_grid(rows_fn(), out / "samples" / f"step_{step:08d}.png",
                                         monitor.row_labels(cfg.sample),
                                         columns=monitor.column_labels(cfg.sample.count, a.num_classes))
                out_metrics["samples"] = str(path)
                if self._estimator is not None and monitor_due:
                    out_metrics.update(monitor.shift_readout(self._estimator, a, self.cache.latents(self.probe), rows_fn))
        return out_metrics

    def export(self, out: Path, step: int) -> Path:
        c = self.cfg
        name = c.export.name or f"{Path(c.run.out_dir).name}.safetensors"
        extra = {"trained_steps": str(step), "ema": "1" if (c.export.use_ema and c.train.ema_decay > 0) else "0",
                 "train_mode": c.train.mode}
        if self._scale_profile is not None:  # from the final readout (monitor.estimator set)
            extra["scale_profile"] = self._scale_profile
        if self.lora is None:
            return self.adapter.export(out / name, c, noise_condition_dropout_rate=self.noise_condition_dropout_rate,
                                       extra=extra)
        extra.update(lora_rank=str(c.lora.rank), lora_alpha=repr(c.lora.alpha))
        return self.export_lora(out / name, step, extra)

    def export_lora(self, path: Path, step: int, extra: dict) -> Path:
        """The LoRA in ``export.lora_format`` (kohya: + ``ss_*``/``modelspec.*`` metadata) with ``nag.*``."""
        a, c = self.adapter, self.cfg
        meta = nag_metadata("lora", a.family, a.prediction, a.schedule, a.null_timestep,
                            noise_condition_dropout_rate=self.noise_condition_dropout_rate, base_model_hash=a.base_hash,
                            **a.export_extra, **extra)
        fmt, names = c.export.lora_format, {}
        if fmt == "kohya":
            h, w = self.cache.sample_shape[-2:]
            fam = FAMILIES.get(a.family)
            scale = (fam.spatial_compression if fam is not None else 8) if self.cache.info.latent_space == "vae" else 1
            title = Path(c.export.name).stem if c.export.name else f"Noise Awareness Guidance LoRA ({a.family})"
            meta.update(kohya_metadata(a.family, a.prediction, c.lora.rank, c.lora.alpha, step,
                                       (h * scale, w * scale), title))
            names = a.lora_names(self.lora.paths)
        tensors = self.lora.file_state_dict(fmt, names, export_dtype(c, a.weights_dtype))
        return save_weights(path, tensors, meta)


# --- noise-level estimator ----------------------------------------------------------------------

class EstimatorTask:
    """Cross-entropy over log-SNR bins on network-space forward states of the cached data."""

    name = "estimator"
    export_ema = False

    def __init__(self, cfg: Config, log=print):
        self.cfg = cfg
        e = cfg.estimator
        self.cache = Cache(cfg.data.cache)
        space = estimator_space(cfg, self.cache)
        self.family, self.schedule, self.latent_format = space.family, space.schedule, space.latent_format
        lo, hi = (e.logsnr_min, e.logsnr_max) if (e.logsnr_min or e.logsnr_max) else self.schedule.logsnr_range()
        self.bins = LevelBins(float(lo), float(hi), e.bins)
        torch.manual_seed(cfg.run.seed)
        shape = self.cache.sample_shape
        if space.image and len(shape) == 4 and shape[1] == 1:  # one-frame 5-D latents of an image family (Qwen-Image)
            shape = (shape[0], *shape[2:])
        self.estimator = NoiseLevelEstimator(shape, self.bins, e.width, e.depth, VideoBackbone(e.video))
        self.trainable = self.module = self.estimator
        self.dataset_size = len(self.cache)
        self.probe = _probe(self.dataset_size, cfg.monitor.eval_size)
        video = f", {e.video} backbone over [C, T, H, W]" if len(shape) == 4 else ""
        log(f"estimator for family '{self.family}' ({self.schedule.name}{video}), {e.bins} log-SNR bins over "
            f"[{self.bins.lo:.2f}, {self.bins.hi:.2f}]")

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def fingerprint(self) -> dict:
        e = self.cfg.estimator
        fp = {"family": self.family, "cache": str(Path(self.cfg.data.cache).resolve()), "cache_count": self.dataset_size,
              "bins": self.bins.describe(), "width": e.width, "depth": e.depth}
        return {**fp, "video": e.video} if len(self.estimator.shape) == 4 else fp

    def enable_gradient_checkpointing(self) -> int:
        raise ConfigError("gradient checkpointing is not available for the (small) estimator")

    def x0(self, idx) -> torch.Tensor:
        lat = self.cache.latents(idx)
        return self.latent_format.process_in(lat) if self.latent_format is not None else lat

    def loss(self, module, idx, g, device):
        lam = self.bins.sample(len(idx), g)
        x = noised(self.x0(idx), lam, self.schedule, g).to(device)
        logits = module(x)
        loss = F.cross_entropy(logits.float(), self.bins.index(lam).to(device))
        hit = (logits.argmax(1).cpu() == self.bins.index(lam)).float()
        return loss, {"loss": (loss.detach() * len(idx), len(idx)), "accuracy": (hit.sum(), len(idx))}

    @torch.no_grad()
    def periodic(self, step: int, out: Path, monitor_due: bool, final: bool, ema_weights) -> dict:
        if not monitor_due:
            return {}
        g = torch.Generator().manual_seed(4321)
        est = self.estimator
        was = est.training
        est.eval()
        device = next(est.parameters()).device
        lam = self.bins.sample(len(self.probe), g)
        x = noised(self.x0(self.probe), lam, self.schedule, g).to(device)
        mae = float((est.mean(x).cpu() - lam).abs().mean())
        est.train(was)
        return {"probe_logsnr_mae": mae}

    def export(self, out: Path, step: int) -> Path:
        c, info = self.cfg, self.cache.info
        run = Path(c.run.out_dir).name
        name = c.export.name or (f"{run}.safetensors" if run.endswith("estimator") else f"{run}_estimator.safetensors")
        extra = {"nag.family": self.family, "nag.latent_space": info.latent_space,
                 "nag.resolution": f"[{info.height}, {info.width}]", "nag.trained_steps": str(step)}
        if self.latent_format is not None:
            extra["nag.latent_format"] = type(self.latent_format).__name__
        extra["nag.reading_calibration"] = json.dumps(self.reading_calibration().to_json())
        return self.estimator.save(out / name, self.schedule, extra)

    @torch.no_grad()
    def reading_calibration(self):
        """What the estimator reads on forward states of the cached data (the probe rows) at every 0.5 log-SNR of its
        bins, and on the clean data: the closed-loop NAG scale's targets (comfy_nag/auto_scale.py)."""
        est = self.estimator
        was = est.training
        est.eval()
        x0 = self.x0(self.probe).to(next(est.parameters()).device)
        cal = calibrate_reading(est, x0, self.schedule, calibration_knots(self.bins), torch.Generator().manual_seed(8765))
        est.train(was)
        return cal
