"""The fidelity study's settings and null-branch recipes: what each :data:`RECIPES` entry changes from
:data:`BASE`, and how it fine-tunes a copy of the pretrained network (``studies.fidelity`` runs them)."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

from comfy_nag import models
from comfy_nag.predictions import from_x0
from comfy_nag.tensors import append_dims

from . import harness, testbed, toolkit
from .terms import LAMS, conditional_branch


@dataclass(frozen=True)
class Recipe:
    """One way to fine-tune the null branch into a network pretrained without noise-condition dropout.

    ``length``: fine-tune steps as a fraction of the pretraining steps; ``null_weight``: loss weight of the
    dropped rows; ``null_mode``: ``sentinel`` (the null timestep through the timestep embedding) or
    ``learned`` (a learned null embedding); ``ema``: decay of the evaluated weight average (0: the last
    weights); ``target``: ``noise`` (the paper's: the noise / velocity for every row) or ``distilled``
    (kept rows regress the frozen pretrained network's prediction, dropped rows its conditional branch
    averaged over levels drawn from the estimator's posterior: a target with far less variance).
    """

    name: str
    dropout: float = 0.2
    length: float = 0.1
    null_weight: float = 1.0
    null_mode: str = "sentinel"
    ema: float = 0.0
    target: str = "noise"

    def factor(self) -> str:
        """The one setting this recipe changes from :data:`BASE` ("" for the base itself)."""
        diff = [f"{k}={v}" for k, v in asdict(self).items() if k != "name" and v != getattr(BASE, k)]
        return ", ".join(diff)


BASE = Recipe("base")
RECIPES = (BASE, Recipe("control", dropout=0.0), Recipe("dropout_0.1", dropout=0.1), Recipe("dropout_0.3", dropout=0.3),
           Recipe("length_3%", length=0.03), Recipe("length_30%", length=0.3), Recipe("null_weight_3", null_weight=3.0),
           Recipe("learned_null", null_mode="learned"), Recipe("ema_0.995", ema=0.995), Recipe("distilled", target="distilled"))
RECIPE_BY_NAME = {r.name: r for r in RECIPES}
RECIPE_ORDER = {r.name: i for i, r in enumerate(RECIPES)}
TRACKED = "length_30%"  # the readout is validated at checkpoints along this fine-tune
STOCK_TERMS = ("nag_cf_est", "nag_cf_est3", "nag_cf_est_exact", "marginal_null")  # the stock block's terms


@dataclass
class Config:
    """The fidelity study's settings.  Each family's network is the demo's MLP pretrained for
    ``pretrain_steps`` *without* noise-condition dropout (like a community checkpoint), with the demo's
    estimator; every recipe fine-tunes a copy of it."""

    quick: bool = False
    seeds: tuple = (0, 1)
    pretrain_steps: int = 8000
    finetune_lr: float = 1e-3
    posterior_samples: int = 4   # levels drawn from the estimator's posterior per distilled null row
    n_states: int = 512
    nag_scale: float = 0.5       # the demo's default NAG-CF scale, window log-SNR >= 0
    samplers: tuple = ("euler", "heun")
    steps: tuple = (25,)
    n_samples: int = 1000
    track: tuple = (0.0, 0.01, 0.03, 0.1, 0.3)  # checkpoints of the tracked fine-tune (fractions of pretraining)
    recipes: tuple = tuple(r.name for r in RECIPES)
    replicate: tuple = ("base", "control", "dropout_0.1", "dropout_0.3", "length_30%", "distilled")  # on later seeds
    lams: tuple = LAMS           # nominal log-SNRs of the fidelity measurement
    stock_estimators: tuple = (1500, 30000)  # estimator training steps for the stock block (the demo's, the trainer's)

    @classmethod
    def make(cls, quick: bool, seeds: tuple = (0, 1)) -> "Config":
        if not quick:
            return cls(seeds=tuple(seeds))
        return cls(quick=True, seeds=tuple(seeds)[:1], pretrain_steps=800, n_states=128, samplers=("euler",),
                   n_samples=300, track=(0.0, 0.1, 0.3), recipes=("base", "control", "length_30%", "distilled"),
                   stock_estimators=(400,))

    def recipe_list(self, seed: int) -> list[Recipe]:
        """The full grid on the first seed; the ``replicate`` subset on later seeds."""
        names = self.recipes if seed == self.seeds[0] else [n for n in self.recipes if n in self.replicate]
        return [RECIPE_BY_NAME[n] for n in names]


def distilled_target(teacher, fam, posterior: str, gmm=None, estimator=None, samples: int = 4, generator=None):
    """``null_target`` of :class:`studies.testbed.LossRecipe`: the frozen ``teacher``'s conditional
    branch averaged over the level posterior of each state.

    ``posterior``: ``"estimator"`` (``samples`` levels drawn from the noise-level estimator's posterior;
    usable on any model) or ``"exact"`` (the testbed's exact posterior over the training levels).
    """
    sch, nc = fam.schedule, getattr(teacher, "num_classes", 0)

    def from_estimator(xn, s, y):
        B = xn.shape[0]
        idx = torch.multinomial(estimator.probs(xn), samples, replacement=True, generator=generator)  # [B, k]
        lam = estimator.bins.centers()[idx].reshape(-1)
        t = sch.net_time(sch.sigma_from_logsnr(lam))
        with torch.no_grad():
            p = teacher(xn.repeat_interleave(samples, 0), t, y.repeat_interleave(samples, 0),
                        torch.zeros(B * samples, dtype=torch.bool))
        return p.reshape(B, samples, *xn.shape[1:]).mean(1)

    def from_exact(xn, s, y):
        c, a_n, s_n = sch.native(s)
        x = xn / append_dims(c, xn.dim())
        out = torch.empty_like(xn)
        for rows, conditional in ((y < nc, True), (y >= nc, False)):  # class-dropped rows: class-marginal posterior
            if bool(rows.any()):
                yr = y[rows]
                x0 = testbed.exact_null_x0(gmm, x[rows], s[rows], sch, fam.prediction, yr if conditional else None,
                                           levels=testbed.training_levels(sch, 64),
                                           branch=conditional_branch(teacher, sch, yr))
                out[rows] = from_x0(x0, fam.prediction, xn[rows], append_dims(a_n[rows], xn.dim()),
                                    append_dims(s_n[rows], xn.dim()))
        return out

    if posterior not in ("estimator", "exact"):
        raise ValueError(f"unknown posterior {posterior!r}; expected 'estimator' or 'exact'")
    return from_estimator if posterior == "estimator" else from_exact


def recipe_net(pretrained, recipe: Recipe):
    """A copy of the pretrained network set up for ``recipe`` (a learned null embedding starts at zero)."""
    if recipe.null_mode == "sentinel":
        return copy.deepcopy(pretrained)
    net = models.build(models.arch_of(pretrained), **{**pretrained.kwargs, "null_mode": recipe.null_mode})
    missing, unexpected = net.load_state_dict(pretrained.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("null_emb") for k in missing), (missing, unexpected)
    return net


def finetune(tr: toolkit.Trained, net, recipe: Recipe, cfg: Config, seed: int, on_step=None, progress: bool = True) -> dict:
    """Fine-tune ``net`` in place with ``recipe`` from the frozen pretrained ``tr.net``; with ``recipe.ema``
    the EMA weights are copied into ``net`` at the end.  ``on_step(step, net)`` runs before each step and
    after the last.  Returns ``{"loss": mean of the last 50 steps, "steps": n}``."""
    steps = max(1, round(recipe.length * cfg.pretrain_steps))
    teacher = copy.deepcopy(tr.net).eval()
    g = torch.Generator().manual_seed(seed + 7)
    loss_recipe = testbed.LossRecipe(null_weight=recipe.null_weight)
    if recipe.target == "distilled":
        loss_recipe = testbed.LossRecipe(
            distilled_target(teacher, tr.fam, "estimator", estimator=tr.estimator, samples=cfg.posterior_samples,
                             generator=g),
            lambda xn, s, y: teacher(xn, tr.fam.schedule.net_time(s), y, torch.zeros(xn.shape[0], dtype=torch.bool)),
            recipe.null_weight)
    elif recipe.target != "noise":
        raise ValueError(f"unknown recipe target {recipe.target!r}; expected 'noise' or 'distilled'")
    ema = copy.deepcopy(net).requires_grad_(False) if recipe.ema else None
    bar, cb = harness.progress(steps, f"{tr.fam.name}: {recipe.name}", progress)
    if on_step:
        on_step(0, net)

    def callback(step, loss):
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - recipe.ema)
        cb(step, loss)
        if on_step:
            on_step(step + 1, ema if ema is not None else net)

    training = testbed.Training(steps, lr=cfg.finetune_lr, t_dropout=recipe.dropout, seed=seed + 7, recipe=loss_recipe)
    hist = testbed.train_denoiser(net, tr.gmm, tr.fam.schedule, tr.fam.prediction, training, callback=callback)
    bar.close()
    if ema is not None:
        net.load_state_dict(ema.state_dict())
    net.eval()
    return {"loss": float(np.mean(hist[-50:])), "steps": steps}

