"""The image benchmark's settings and ground truth: its :class:`Config`, scikit-learn's 8x8 digits, and the
metric every run is scored with (a small CNN classifier trained here: the proxy Frechet distance of its
features, k-NN precision/recall and class accuracy).  ``studies.bench_images`` runs the study."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import harness
from .testbed import frechet_distance

QUALITY_METRIC = "proxy_fd_digits_cnn"
SDE_SAMPLER = {"dit": "ddpm", "sit": "euler_maruyama"}


def resolve_sampler(name: str, family: str) -> str:
    """``"sde"`` -> the family's native SDE sampler; other names pass through."""
    return SDE_SAMPLER[family] if name == "sde" else name


@dataclass
class Config:
    """The benchmark's settings (``quick`` shrinks them).  Its fields are in the stages' fingerprints: renaming one
    or changing a default makes every finished stage stale."""

    quick: bool = False
    seed: int = 0
    families: tuple = ("dit", "sit")
    n_train: int = 1500
    pretrain_steps: int = 3000
    finetune_steps: int = 300  # 10 % of pretraining: the fidelity study's recipe grid (docs/fidelity/report.md)
    batch_size: int = 64
    hidden: int = 64
    depth: int = 2
    t_dropout: float = 0.2  # the trainer's default, from the fidelity study
    samplers: tuple = ("euler", "heun", "sde")
    steps: tuple = (10, 25)
    n_samples: int = 500
    classifier_steps: int = 600
    estimator_steps: int = 8000  # the trainer's estimator default (width, depth and steps: docs/method.md §2)
    estimator_width: int = 64
    estimator_depth: int = 3
    bins: int = 24
    k: int = 5
    grid: dict = field(default_factory=lambda: {
        "nag_cf": [0.25, 0.5, 1.0, 2.0], "window": [-99.0, 0.0, 2.0], "nag_cf_est": [0.25, 0.5, 1.0, 2.0],
        "nag_cg": [0.3, 1.0, 3.0], "eps_scaling": [0.99, 0.995, 1.005], "time_shift": [0.05, 0.1, 0.25],
        "cfg": [1.1, 1.25, 1.5, 2.0], "nag_cf_cfg": [0.25, 0.5, 1.0]})
    tune_steps: int = 10
    plot_steps: int = 25

    @classmethod
    def make(cls, quick: bool, seed: int = 0) -> "Config":
        if not quick:
            return cls(seed=seed)
        return cls(quick=True, seed=seed, pretrain_steps=1500, finetune_steps=150, samplers=("euler", "sde"),
                   steps=(10,), n_samples=400, classifier_steps=300, estimator_steps=400,
                   grid={"nag_cf": [0.5, 1.0], "window": [-99.0, 0.0], "nag_cf_est": [0.5, 1.0], "nag_cg": [1.0],
                         "eps_scaling": [1.005],
                         "time_shift": [0.1], "cfg": [1.5], "nag_cf_cfg": [0.5]}, plot_steps=10)


# ---------------------------------------------------------------------------------------------
# data, classifier, metrics
# ---------------------------------------------------------------------------------------------

def digits():
    """All 1797 digits as [N, 1, 8, 8] in [-1, 1] and labels (the trainer's ``digits`` source)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1, torch.from_numpy(d.target).long()


class Classifier(nn.Module):
    """Small CNN on 8x8 digits; ``features`` (64-d) is the proxy-FD embedding."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
                                  nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(), nn.Flatten(), nn.Linear(256, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.body(x.clamp(-1, 1))

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(x, y, steps: int, seed: int, stages: harness.Stages | None = None, progress: bool = True) -> Classifier:
    """The proxy-FD feature network (trained here, or reused from ``stages``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Classifier()
    if stages is not None:
        spec = {"stage": "digits classifier", "steps": steps, "seed": seed, "n_train": x.shape[0]}
        stages.modules("classifier", spec, {"classifier": net}, lambda: _fit_classifier(net, x, y, steps, g, progress))
        return net.eval()
    _fit_classifier(net, x, y, steps, g, progress)
    return net.eval()


def _fit_classifier(net, x, y, steps, g, progress=True) -> dict:
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    bar, cb = harness.progress(steps, "classifier", progress)
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (128,), generator=g)
        xb = x[i] + 0.05 * torch.randn(x[i].shape, generator=g)  # light noise: robust to sampler residue
        loss = F.cross_entropy(net(xb), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cb(step, loss.item())
    bar.close()
    return {}


def _radii(f: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019; prdc): k-NN balls around each set."""
    real, fake = real.double(), fake.double()
    rr, fr = _radii(real, k), _radii(fake, k)
    d = torch.cdist(fake, real)
    precision = (d <= rr[None]).any(1).double().mean()
    recall = (d.T <= fr[None]).any(1).double().mean()
    return float(precision), float(recall)


@dataclass
class Metric:
    clf: Classifier
    ref_feat: torch.Tensor
    mu: torch.Tensor
    cov: torch.Tensor
    k: int

    @classmethod
    def make(cls, clf, ref_x, k):
        with torch.no_grad():
            f = clf.features(ref_x).double()
        return cls(clf, f, f.mean(0), torch.cov(f.T), k)

    @torch.no_grad()
    def __call__(self, x, y) -> dict:
        f = self.clf.features(x).double()
        fd = frechet_distance(f.mean(0), torch.cov(f.T), self.mu, self.cov)
        p, r = precision_recall(self.ref_feat, f, self.k)
        acc = float((self.clf(x).argmax(1) == y).float().mean())
        return {"quality": fd, "precision": p, "recall": r, "accuracy": acc}



def ground_truth(cfg: Config, stages: harness.Stages | None = None, log=print, progress: bool = True):
    """``(x_train, metric, meta)``: the train split (the first ``n_train`` digits), the metric (its classifier
    trained on that split, or reused from ``stages``) and ``meta``: the classifier's accuracy on the held-out rest
    and the metric's floor there (held-out real images)."""
    x_all, y_all = digits()
    x_tr, y_tr = x_all[: cfg.n_train], y_all[: cfg.n_train]
    x_te, y_te = x_all[cfg.n_train:], y_all[cfg.n_train:]
    t0 = time.time()
    clf = train_classifier(x_tr, y_tr, cfg.classifier_steps, cfg.seed, stages, progress)
    metric = Metric.make(clf, x_tr, cfg.k)
    with torch.no_grad():
        test_acc = float((clf(x_te).argmax(1) == y_te).float().mean())
    floor = metric(x_te, y_te)
    log(f"classifier: test accuracy {test_acc:.3f}, proxy FD of the test split {floor['quality']:.2f} ({time.time() - t0:.0f}s)")
    return x_tr, metric, {"classifier_test_accuracy": test_acc, "floor": floor, "n_train": cfg.n_train,
                          "n_test": int(x_te.shape[0])}
