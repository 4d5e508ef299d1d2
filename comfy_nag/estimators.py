"""Noise-level estimators: what noise level does a state *actually* carry?

Units: log-SNR ``lambda = 2*log(alpha/sigma)`` (schedules.py); lower = noisier.

Three estimators share one readout (the posterior mean of lambda):

* :class:`NoiseLevelEstimator` - a small learned network g(lambda | x) that sees only the state
  (in network space, i.e. what the diffusion network sees) and predicts a **categorical
  distribution over log-SNR bins**.  Why a classifier over bins and not a regressor:
  it gives a full, calibrated distribution (cross-entropy is a proper scoring rule), so the
  same network serves measurement (KDE, posterior mean, uncertainty) and classifier guidance
  (``log g(lambda|x)`` is defined without inventing a Gaussian width); it can be compared
  directly with the exact posterior on the testbed (KL); it does not regress to the mean at the
  ends of the range where the level is poorly identifiable; and log-SNR bins are one unit for
  every family (VP, flow, EDM), so the file format is family-independent.
* :func:`variance_logsnr` - training-free, from the state's statistics (the time-shift
  sampler's idea): solve ``var(x) = alpha(s)^2 * data_var + s^2`` for s.
* the exact posterior where the data density is known (the studies' testbed, ``studies/testbed.py``).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import WeightFileError, load_module_weights, load_weights, meta_json, save_weights
from .losses import fit
from .metadata import FORMAT
from .schedules import Schedule, Space


@dataclass(frozen=True)
class LevelBins:
    """``k`` equal-width log-SNR bins over [lo, hi]."""

    lo: float
    hi: float
    k: int

    def __post_init__(self):
        if not (self.hi > self.lo and self.k >= 2):
            raise ValueError(f"bad log-SNR bins lo={self.lo}, hi={self.hi}, k={self.k}: need hi > lo and k >= 2")

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.k

    def centers(self, device=None) -> torch.Tensor:
        return self.lo + self.width * (torch.arange(self.k, device=device, dtype=torch.float32) + 0.5)

    def index(self, lam: torch.Tensor) -> torch.Tensor:
        return ((lam - self.lo) / self.width).floor().long().clamp(0, self.k - 1)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """Uniform draws over the range (the estimator's training prior)."""
        return self.lo + (self.hi - self.lo) * torch.rand(n, generator=generator)

    def describe(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "k": self.k}


def posterior_mean(probs: torch.Tensor, bins: LevelBins) -> torch.Tensor:
    """Posterior-mean log-SNR from bin probabilities [B, k]."""
    return probs @ bins.centers(probs.device)


def interp_log_prob(log_probs: torch.Tensor, lam: torch.Tensor, bins: LevelBins) -> torch.Tensor:
    """log g(lam | x) as a density in lam, interpolated linearly between bin centres.

    ``log_probs`` [B, k] (log-softmax); ``lam`` [B].  Smooth in x, which is what classifier
    guidance differentiates.
    """
    pos = ((lam - bins.lo) / bins.width - 0.5).clamp(0, bins.k - 1)
    i0 = pos.floor().long().clamp(max=bins.k - 2)
    w = (pos - i0).unsqueeze(1)
    lp = torch.stack([log_probs.gather(1, i0[:, None])[:, 0], log_probs.gather(1, (i0 + 1)[:, None])[:, 0]], 1)
    # log((1-w) p0 + w p1) computed stably
    mix = torch.logsumexp(lp + torch.log(torch.cat([1 - w, w], 1).clamp_min(1e-12)), dim=1)
    return mix - math.log(bins.width)


class VideoBackbone(enum.Enum):
    """How an estimator for video latents [B, C, T, H, W] reads the frames: ``FRAMES`` applies the image backbone
    to each frame and averages the features over frames; ``SPACETIME`` convolves over time as well (3-D)."""

    FRAMES = "frames"
    SPACETIME = "spatiotemporal"


class _ConvBackbone(nn.Module):
    """Strided convolutions (2-D, or 3-D striding only space), then mean and RMS pooling over every position."""

    def __init__(self, channels: int, width: int, depth: int, dims: int = 2):
        super().__init__()
        conv, down = (nn.Conv2d, 2) if dims == 2 else (nn.Conv3d, (1, 2, 2))
        layers, c = [], channels
        for i in range(depth):
            layers += [conv(c, width, 3, stride=1 if i == 0 else down, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            c = width
        self.net = nn.Sequential(*layers)
        self.out_dim = 2 * width + 2

    def forward(self, x):
        h = self.net(x).flatten(2)
        # mean and RMS pooling: noise energy is a second-moment statistic.
        feats = [h.mean(2), h.pow(2).mean(2).add(1e-6).sqrt()]
        flat = x.flatten(1)
        feats += [flat.std(1, keepdim=True).add(1e-6).log(), (x[..., 1:, :] - x[..., :-1, :]).flatten(1).std(1, keepdim=True).add(1e-6).log()]
        return torch.cat(feats, 1)


class _FramesBackbone(nn.Module):
    """The image backbone on each frame of [B, C, T, H, W], its features averaged over the T frames (any T)."""

    def __init__(self, channels: int, width: int, depth: int):
        super().__init__()
        self.frame = _ConvBackbone(channels, width, depth)
        self.out_dim = self.frame.out_dim

    def forward(self, x):
        B, C, T, H, W = x.shape
        f = self.frame(x.transpose(1, 2).reshape(B * T, C, H, W))
        return f.reshape(B, T, -1).mean(1)


class _MLPBackbone(nn.Module):
    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        layers, d = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x):
        return self.net(torch.cat([x, x.pow(2).mean(1, keepdim=True).add(1e-8).log()], 1))


def _backbone(shape: tuple[int, ...], width: int, depth: int, video: VideoBackbone) -> nn.Module:
    if len(shape) == 1:
        return _MLPBackbone(shape[0], width, depth)
    if len(shape) == 3:
        return _ConvBackbone(shape[0], width, depth)
    if len(shape) == 4:
        return _FramesBackbone(shape[0], width, depth) if video is VideoBackbone.FRAMES else _ConvBackbone(shape[0], width, depth, 3)
    raise ValueError(f"estimator input shape must be (D,), (C, H, W) or (C, T, H, W) (video), got {shape}")


LATENT_KINDS = {1: "vectors", 3: "image latents [B, C, H, W]", 4: "video latents [B, C, T, H, W]"}


class NoiseLevelEstimator(nn.Module):
    """g(lambda | x): categorical over log-SNR bins, from the network-space state alone.

    ``shape``: one sample's shape, ``(D,)`` for vectors (MLP), ``(C, H, W)`` for images and latents (conv net, any
    spatial size) or ``(C, T, H, W)`` for video latents (``video`` says how the frames are read; any number of frames
    and any spatial size).  Image-model latents that a host hands over as 5-D with one frame (Qwen-Image in ComfyUI)
    are read by an image estimator as the 4-D latent they are.
    """

    def __init__(self, shape: tuple[int, ...], bins: LevelBins, width: int = 64, depth: int = 3,
                 video: VideoBackbone = VideoBackbone.FRAMES):
        super().__init__()
        self.shape, self.bins, self.width, self.depth = tuple(int(s) for s in shape), bins, width, depth
        self.video = video
        self.backbone = _backbone(self.shape, width, depth, video)
        self.head = nn.Sequential(nn.Linear(self.backbone.out_dim, width), nn.SiLU(), nn.Linear(width, bins.k))

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as this estimator reads it (a one-frame 5-D latent to an image estimator: its frame), or a clear error
        naming both the expected and the given latent (channels and dimensions)."""
        want, kind = self.shape[0], LATENT_KINDS[len(self.shape)]
        if len(self.shape) == 3 and x.dim() == 5 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.dim() == len(self.shape) + 1 and x.shape[1] == want:
            return x
        got = LATENT_KINDS.get(x.dim() - 1, f"{x.dim()}-D tensors")
        what = "dimensions" if len(self.shape) == 1 else "latent channels"
        raise ValueError(f"noise-level estimator expects {what}={want} ({kind}), got {got} of shape {list(x.shape)}; "
                         "load the estimator trained for this model's latent space")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, k] over log-SNR bins."""
        return self.head(self.backbone(self.fit_input(x)))

    def log_prob(self, x: torch.Tensor, lam: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
        """log g(lam | x) [B] (density in log-SNR units).

        The estimator is trained with lambda uniform over its bins; ``log_prior`` [k] (log weights per bin,
        e.g. :func:`training_log_prior`) turns it into the posterior under another prior over levels."""
        logits = self(x)
        if log_prior is not None:
            logits = logits + log_prior.to(logits)
        return interp_log_prob(F.log_softmax(logits, 1), lam.to(x.dtype).expand(x.shape[0]), self.bins)

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self(x), 1)

    @torch.no_grad()
    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean log-SNR [B]."""
        return posterior_mean(self.probs(x), self.bins)

    # --- files -------------------------------------------------------------------------
    def config(self) -> dict:
        cfg = {"shape": list(self.shape), "bins": self.bins.describe(), "width": self.width, "depth": self.depth}
        return {**cfg, "video": self.video.value} if len(self.shape) == 4 else cfg

    def save(self, path, schedule: Schedule | None = None, extra: dict | None = None):
        meta = {"nag.format": FORMAT, "nag.kind": "noise_level_estimator", "nag.estimator": self.config(),
                "nag.latent_channels": str(self.shape[0])}
        if schedule is not None:
            meta["nag.schedule"] = schedule.describe()
        meta.update(extra or {})
        return save_weights(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path, device="cpu") -> tuple["NoiseLevelEstimator", dict]:
        tensors, meta = load_weights(path, device)
        if meta.get("nag.kind") != "noise_level_estimator":
            raise WeightFileError(f"{path}: not a comfy-nag noise-level estimator (metadata nag.kind="
                                  f"{meta.get('nag.kind')!r}); train one with `python -m training estimator`")
        cfg = meta_json(meta, "nag.estimator", path)
        est = cls(tuple(cfg["shape"]), LevelBins(**cfg["bins"]), cfg.get("width", 64), cfg.get("depth", 3),
                  VideoBackbone(cfg.get("video", VideoBackbone.FRAMES.value))).to(device)
        return load_module_weights(est, tensors, path, "estimator weights"), meta


def training_log_prior(schedule: Schedule, bins: LevelBins, n: int = 200_000, seed: int = 0) -> torch.Tensor:
    """log weight per bin [k] of the levels a diffusion network is trained on (``schedule.training_sigmas``),
    relative to the estimator's uniform prior.  With it the estimator's gradient is the same vector as the
    classifier-free term ``c - n`` (whose null branch averages over the training levels), not a differently
    weighted one.  Levels outside the bins count in the edge bins."""
    lam = schedule.logsnr(schedule.training_sigmas(n, torch.Generator().manual_seed(seed)).double())
    counts = torch.bincount(bins.index(lam.clamp(-1e6, 1e6).float()), minlength=bins.k).double()
    return torch.log((counts + 1.0) / (counts.sum() + bins.k)).float()


def noised(x0: torch.Tensor, lam: torch.Tensor, schedule: Schedule, generator=None) -> torch.Tensor:
    """Network-space forward samples of x0 at log-SNR ``lam`` [B]."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return schedule.noised(x0, schedule.sigma_from_logsnr(lam), eps)[0]


@dataclass(frozen=True)
class EstimatorTraining:
    """How long and how an estimator trains: ``steps`` AdamW steps of ``batch`` states at learning rate ``lr``;
    ``target_width`` > 0 (log-SNR units) trains on soft targets, a Gaussian of that width over the bin centres
    around the true level, instead of the one-hot bin."""

    steps: int
    batch: int = 256
    lr: float = 2e-3
    target_width: float = 0.0


def train_estimator(est: NoiseLevelEstimator, data, schedule: Schedule, training: EstimatorTraining,
                    generator: torch.Generator | None = None, callback=None) -> list[float]:
    """Train ``est`` by cross-entropy on forward samples with lambda uniform over its bins.

    ``data(n, generator) -> x0`` draws clean samples (network space x0 units).  Returns the loss history.
    ``callback(step, loss)`` may report progress.
    """
    batch, target_width = training.batch, training.target_width
    centers = est.bins.centers()

    def loss(step):
        x0 = data(batch, generator)
        lam = est.bins.sample(batch, generator)
        logits = est(noised(x0, lam, schedule, generator))
        if target_width > 0:
            target = F.softmax(-(centers.to(lam)[None] - lam[:, None]) ** 2 / (2 * target_width ** 2), 1)
            return F.cross_entropy(logits, target)
        return F.cross_entropy(logits, est.bins.index(lam))

    return fit(est, loss, training.steps, training.lr, callback, what="estimator loss")


def variance_logsnr(x: torch.Tensor, space: Space, data_var: float, s_nominal: torch.Tensor | None = None) -> torch.Tensor:
    """Training-free log-SNR estimate of sampling-space states x [B, ...].

    Solves ``var(x) = alpha(s)^2*data_var + s^2`` per sample (alpha = 1 in ve, 1-s in flow).
    In flow space the variance dips at s = v/(v+1), so there can be two roots: the one nearest
    ``s_nominal`` is taken (the larger one if no nominal is given).
    """
    v = float(data_var)
    var = x.flatten(1).var(1).clamp_min(1e-12)
    if space is Space.VE:
        s = (var - v).clamp_min(1e-8).sqrt()
    else:
        disc = (var * (v + 1) - v).clamp_min(0).sqrt()
        hi, lo = ((v + disc) / (v + 1)).clamp(1e-4, 1 - 1e-4), ((v - disc) / (v + 1)).clamp(1e-4, 1 - 1e-4)
        if s_nominal is None:
            s = hi
        else:
            sn = s_nominal.expand_as(hi)
            s = torch.where((hi - sn).abs() <= (lo - sn).abs(), hi, lo)
    return space.logsnr(s)

