"""What a run shows while it trains: the noise-shift check and sample grids.

* :func:`branch_check` (every family): on a fixed probe set (:class:`ProbeSet`: same samples, levels
  and noise each time) the loss of the noise-conditional branch, the loss of the noise-unconditional branch
  (null timestep) and their gap ``mean (pred_cond - pred_null)^2 / mean pred_cond^2``.  Dropout
  training shows as a falling null-branch loss while the conditional loss holds; the gap is the
  size of the correction classifier-free NAG applies.  With an estimator file (``monitor.estimator``)
  it adds the **null-branch readout**: the cosine between the network's classifier-free term and the
  estimator's gradient under the training levels' prior, both as x0 changes
  (what comfy_nag.readout.null_branch_readout computes), over probe states
  with log-SNR >= 0 (where NAG acts by default).  It rises as the null branch learns the noise-
  awareness term; docs/training.md says how to read it.  From the same states it fits the per-level
  NAG-scale profile (``comfy_nag.scale_profiles.ScaleFit``: the scale at which the classifier-free term
  delivers the estimator's, per log-SNR, clipped at 0) that the export writes as ``nag.scale_profile``.
* :func:`sample_rows` + :func:`save_grid` (reference models): a PNG grid from comfy_nag's own samplers,
  one row per NAG scale (0 and ``sample.nag_scale``, labelled at the left) from the same noise, so
  NAG's effect is visible, with each column's class on top.
* :func:`shift_readout` (reference models, with an estimator file): comfy_nag.shift's noise-shift
  of those sampler runs (mean |estimated - forward| log-SNR over the last 20 % of steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from comfy_nag.denoiser import Denoiser
from comfy_nag.classifier_guidance import estimator_x0_term
from comfy_nag.guidance import Guidance
from comfy_nag.readout import agreement
from comfy_nag.scale_profiles import ScaleFit
from comfy_nag.predictions import target, to_x0
from comfy_nag.samplers import get_sampler, initial_noise
from comfy_nag.tensors import append_dims
from comfy_nag.shift import ShiftTrace, estimator_readout, forward_readout, summarize

from .latent_cache import Cache


@dataclass
class ProbeSet:
    """The fixed probe set of :func:`branch_check`: cache ``rows``, run ``batch`` at a time, with levels and
    noise drawn from ``seed`` (the same states every time)."""

    cache: Cache
    rows: torch.Tensor
    batch: int
    seed: int = 1234


@torch.no_grad()
def branch_check(module, adapter, probe: ProbeSet, device, estimator=None, log_prior: torch.Tensor | None = None) -> dict:
    """Conditional vs noise-unconditional branch on a fixed probe set (see the module docstring)."""
    cache = probe.cache
    g = torch.Generator().manual_seed(probe.seed)
    sched, pred = adapter.schedule, adapter.prediction
    sums = {"cond": 0.0, "null": 0.0, "diff": 0.0, "norm": 0.0, "diff_lo": 0.0, "norm_lo": 0.0}
    n = 0
    cos, ratio = [], []
    fit = ScaleFit.spanning(0.0, max(float(estimator.bins.hi), 0.0)) if estimator is not None else None
    was_training = module.training
    module.eval()
    for chunk in probe.rows.split(probe.batch):
        x0 = adapter.x0(cache, chunk).to(device)
        cond = adapter.conditions(cache, chunk, g, device, dropout=False)
        s = sched.training_sigmas(len(chunk), g)
        eps = torch.randn(x0.shape, generator=g).to(device)
        x, a, sn = sched.noised(x0, s.to(device), eps)
        t = sched.net_time(s).to(device)
        zeros = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        pc = module(x, t, cond, zeros).float()
        pn = module(x, t, cond, ~zeros).float()
        tgt = target(pred, x0, eps, a, sn)
        low = (sched.logsnr(s) > sched.logsnr(s).median()).to(device)  # the less noisy half of the probe
        d2, c2 = (pc - pn).pow(2).flatten(1).mean(1), pc.pow(2).flatten(1).mean(1)
        sums["cond"] += float((pc - tgt).pow(2).flatten(1).mean(1).sum())
        sums["null"] += float((pn - tgt).pow(2).flatten(1).mean(1).sum())
        sums["diff"] += float(d2.sum())
        sums["norm"] += float(c2.sum())
        sums["diff_lo"] += float(d2[low].sum())
        sums["norm_lo"] += float(c2[low].sum())
        n += len(chunk)
        if estimator is not None:
            late = sched.logsnr(s) >= 0
            if bool(late.any()):
                c, a_n, s_n = (v.to(device) for v in sched.native(s))
                x0c, x0n = (to_x0(p, pred, x, append_dims(a_n, x.dim()), append_dims(s_n, x.dim())) for p in (pc, pn))
                xs = x / append_dims(c, x.dim())
                learned = x0c[late] - x0n[late]
                ref = estimator_x0_term(estimator, xs[late], s[late].to(device), sched.space, c[late], log_prior)
                k, r = agreement(learned, ref)
                cos.append(k.cpu()), ratio.append(r.cpu())
                fit.add(learned, ref, sched.logsnr(s[late]))
    module.train(was_training)
    out = {"probe_loss_cond": sums["cond"] / n, "probe_loss_null": sums["null"] / n,
           "branch_gap": sums["diff"] / max(sums["norm"], 1e-12),
           "branch_gap_low_noise": sums["diff_lo"] / max(sums["norm_lo"], 1e-12)}
    if cos:
        out["null_readout_cos"] = float(torch.cat(cos).mean())
        out["null_readout_norm_ratio"] = float(torch.cat(ratio).median())
        try:
            out["scale_profile"] = fit.profile().to_json()
        except ValueError:  # the classifier-free term is zero everywhere: no profile to write
            pass
    return out


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, 3] uint8 (1 channel: grey; >3: the first three)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    if x.shape[1] == 2:
        x = torch.cat([x, x[:, :1]], 1)
    return ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _font(size: int):
    """Pillow's built-in font at ``size`` pixels (a scalable one where Pillow has FreeType, else its bitmap)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def save_grid(rows: list[torch.Tensor], path: Path, labels: list[str] = (), cell: int = 64,
              columns: list[str] | None = None, font_size: int = 14) -> Path:
    """A PNG grid, one row per tensor: each row's label (e.g. its NAG scale) at its left and each
    column's label (e.g. its class, :func:`column_labels`) on top, in ``font_size`` pixel text."""
    from PIL import Image, ImageDraw
    imgs = [_to_uint8(r) for r in rows]
    h, w = imgs[0].shape[1:3]
    scale = max(1, cell // max(h, w))
    ch, cw = h * scale, w * scale
    font = _font(font_size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda text: draw.textbbox((0, 0), text, font=font)[2]  # noqa: E731
    pad = 2
    margin = 12 + max(map(width, labels)) if labels else 0
    header = font_size + 8 if columns else 0
    H, W = header + len(imgs) * (ch + pad) + pad, margin + imgs[0].shape[0] * (cw + pad) + pad
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    for r, row in enumerate(imgs):
        for c, im in enumerate(row):
            y0, x0 = header + pad + r * (ch + pad), margin + pad + c * (cw + pad)
            canvas[y0: y0 + ch, x0: x0 + cw] = im.repeat(scale, 0).repeat(scale, 1)
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    for r, text in enumerate(labels):
        draw.text((6, header + pad + r * (ch + pad) + ch // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    for c, text in enumerate(columns or ()):
        if width(text) > cw + pad and " " in text:  # "class 7" on a narrow cell: the number alone, "class" in the corner
            word, text = text.rsplit(" ", 1)
            if margin:
                draw.text((6, header // 2 + 1), word, fill=(0, 0, 0), font=font, anchor="lm")
        draw.text((margin + pad + c * (cw + pad) + cw // 2, header // 2 + 1), text, fill=(0, 0, 0), font=font, anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def nag_scales(sample_cfg) -> list[float]:
    """The NAG scales of the grid's rows: 0 (plain sampling), then ``sample.nag_scale`` unless it is 0."""
    return [0.0] + ([sample_cfg.nag_scale] if sample_cfg.nag_scale != 0 else [])


def row_labels(sample_cfg) -> list[str]:
    """The grid's row labels: the NAG scale of each row (``NAG w=0`` is plain sampling)."""
    return [f"NAG w={w:g}" for w in nag_scales(sample_cfg)]


def column_labels(count: int, num_classes: int) -> list[str]:
    """The grid's column labels: the class each column samples (:func:`sample_rows` draws class
    ``c % num_classes`` in column ``c``), or the sample's number for an unconditional model."""
    return [f"class {c % num_classes}" if num_classes else f"#{c + 1}" for c in range(count)]


@torch.no_grad()
def sample_rows(net, adapter, shape, count: int, sample_cfg, seed: int, device, traces=None) -> list[torch.Tensor]:
    """One batch per NAG scale in (0, sample.nag_scale), all from the same noise and classes."""
    sched = adapter.schedule
    g = torch.Generator().manual_seed(seed)
    noise = initial_noise((count, *shape), sched, g).to(device)
    y = torch.arange(count, device=device) % adapter.num_classes if adapter.num_classes else None
    scales = nag_scales(sample_cfg)
    rows = []
    was_training = net.training
    net.eval()
    for i, w in enumerate(scales):
        den = Denoiser(net, sched, adapter.prediction, Guidance(cfg_scale=sample_cfg.cfg_scale, nag_scale=w))
        cb = traces[i] if traces else None
        sampler = get_sampler(sample_cfg.sampler, sched.space, torch.Generator().manual_seed(seed + 1))
        rows.append(sampler(den, noise.clone(), sched.sigmas(sample_cfg.steps).to(device), extra_args={"y": y}, callback=cb))
    net.train(was_training)
    return rows


def shift_readout(estimator, adapter, x0_probe: torch.Tensor, rows_fn) -> dict:
    """Noise shift of the grid's sampler runs, read by ``estimator`` (comfy_nag.shift)."""
    sched = adapter.schedule
    cpu_readout = estimator_readout(estimator.cpu(), sched)

    def readout(x, s):  # sampler states may live on the GPU; the estimator and forward states on the CPU
        return cpu_readout(x.detach().float().cpu(), s)

    traces = [ShiftTrace(readout, sched.space) for _ in range(2)]
    rows_fn(traces)
    out = {}
    for trace, name in zip(traces, ("noise_shift_nag0", "noise_shift_nag")):
        if not trace.sigmas:
            continue
        sig, _, _ = trace.arrays()
        ref = forward_readout(readout, x0_probe.float().cpu(), torch.tensor(sig), sched, torch.Generator().manual_seed(7))
        out[name] = summarize(trace, ref)["noise_shift"]
    return out
