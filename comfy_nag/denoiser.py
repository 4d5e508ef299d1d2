"""Turn a network into the sampling-space denoiser ``D(x, s, y) -> x0`` that samplers call.

``Denoiser`` converts states to network space (``Schedule.native``), evaluates every branch a
:class:`~comfy_nag.guidance.Guidance` needs in **one batched forward** (or one forward per branch
with ``batched=False``), converts each branch to x0 with the *nominal* level, mixes them, and
applies classifier guidance and epsilon scaling.  A null branch comes from ``Guidance.null``
(null_branch.py): the network at its null condition (``LearnedNull``), or the conditional branch at the
levels a noise-level estimator reads (``EstimatorNull``), evaluated in the same batched forward.  It counts
network evaluations so benchmarks can report NFE per step.
"""
from __future__ import annotations

import torch

from .auto_scale import AutoScale, Step, next_sigma
from .classifier_guidance import classifier_correction
from .guidance import Guidance, branches, combine, eps_scaled_x0, window_mask
from .posterior_null import mix
from .predictions import check_kind, to_x0
from .schedules import Schedule
from .tensors import append_dims

NULL_BRANCHES = ("null_cond", "null_uncond")


class Denoiser:
    """Sampling-space denoiser over ``net(x_net, t_net, y, drop_t)`` predicting ``prediction``.

    ``estimator``: a :class:`~comfy_nag.estimators.NoiseLevelEstimator` on network-space states, needed when
    ``guidance.cg_scale != 0`` (an estimator null branch carries its own, ``null_branch.EstimatorNull``).
    """

    def __init__(self, net, schedule: Schedule, prediction: str, guidance: Guidance | None = None,
                 estimator=None, batched: bool = True):
        self.net, self.schedule, self.prediction = net, schedule, check_kind(prediction)
        self.guidance = guidance or Guidance()
        self.estimator, self.batched = estimator, batched
        if self.guidance.cg_scale != 0 and estimator is None:
            raise ValueError("classifier-guided NAG (cg_scale != 0) needs a noise-level estimator; pass estimator=...")
        self.num_classes = getattr(net, "num_classes", 0)
        self.evaluations = 0  # network evaluations, counted per branch (batch rows / B)
        self.calls = 0

    # --- checks ----------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, s: torch.Tensor):
        shape = getattr(self.net, "in_shape", None)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            what = "channels" if len(shape) == 3 else "dimensions"
            raise ValueError(f"state shape {list(x.shape)} does not match the model's input [B, {', '.join(map(str, shape))}] "
                             f"(wrong number of {what}?); create the initial noise with the model's shape")
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the sampler state contains NaN/Inf at sigma={float(s.max()):.4g}; lower the guidance "
                                     "scales or use more steps (the run diverged)")

    # --- evaluation ------------------------------------------------------------------------
    def branch_x0(self, x: torch.Tensor, s: torch.Tensor, y, names) -> dict[str, torch.Tensor]:
        """x0 predictions for each named branch (cond, uncond, null_cond, null_uncond)."""
        c, a_n, s_n = self.schedule.native(s)
        xn = append_dims(c, x.dim()).to(x) * x
        chunks, weights = self._chunks(xn, s, y, names)
        if self.batched:
            k = len(chunks)
            out = self.net(xn.repeat((k,) + (1,) * (x.dim() - 1)), *(torch.cat(v) for v in list(zip(*chunks))[1:]))
            outs = out.chunk(k)
        else:
            outs = [self.net(xn, t, yy, dd) for _, t, yy, dd in chunks]
        self.evaluations += len(chunks)
        preds = {}
        for (name, *_), o in zip(chunks, outs):
            preds.setdefault(name, []).append(o)
        preds = {n: mix(p, weights[n]) if n in weights else p[0] for n, p in preds.items()}
        return {n: to_x0(p, self.prediction, xn, a_n.to(x), s_n.to(x)) for n, p in preds.items()}

    def _chunks(self, xn: torch.Tensor, s: torch.Tensor, y, names):
        """``[(branch, t, y, drop_t)]`` per network call of ``names``, and the weights [B, K] that mix each null
        branch's K calls (``guidance.null``'s step; ``{}`` for a null branch of one call)."""
        B, dev = xn.shape[0], xn.device
        t = self.schedule.net_time(s).to(dev)
        null_y = torch.full((B,), self.num_classes, dtype=torch.long, device=dev)
        y = null_y if y is None else y
        nulls = [n for n in names if n in NULL_BRANCHES]
        step = self.guidance.null.step(xn, s) if nulls else None
        chunks = []
        for n in names:
            yy = y if n in ("cond", "null_cond") else null_y
            if n not in nulls:
                chunks.append((n, t, yy, torch.zeros(B, dtype=torch.bool, device=dev)))
                continue
            for cond in step.conditions:
                if cond is None:  # the network's null condition
                    chunks.append((n, t, yy, torch.ones(B, dtype=torch.bool, device=dev)))
                else:
                    chunks.append((n, self.schedule.net_time(cond).to(t), yy, torch.zeros(B, dtype=torch.bool, device=dev)))
        return chunks, ({n: step.weight for n in nulls} if step is not None and step.weight is not None else {})

    def __call__(self, x: torch.Tensor, s: torch.Tensor, y=None, sample_sigmas: torch.Tensor | None = None) -> torch.Tensor:
        """Guided x0 prediction.  ``s``: sampling sigma, scalar or per-sample [B]; ``sample_sigmas``: the sampled
        schedule (what the closed-loop scale rule needs to know the next level; samplers pass it via extra_args)."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
        self._check(x, s)
        self.calls += 1
        g = self.guidance
        nag_on = window_mask(s, g.nag_window) if g.nag_scale != 0 else torch.zeros_like(s, dtype=torch.bool)
        names = branches(g.cfg_scale, g.nag_scale if bool(nag_on.any()) else 0.0, g.variant)
        outs = self.branch_x0(x, s, y, names)
        scale = g.nag_scale * nag_on.to(x)
        if "null_cond" in names and isinstance(g.rule, AutoScale):
            x0 = combine(outs, g.cfg_scale, 0.0, g.variant)
            delta = combine(outs, g.cfg_scale, 1.0, g.variant) - x0
            x0 = x0 + append_dims(scale * self._auto(x, s, x0, delta, sample_sigmas), x.dim()) * delta
        else:
            if g.rule is not None and "null_cond" in names:
                scale = scale * g.rule(self.schedule.space.logsnr(s)).to(x)
            x0 = combine(outs, g.cfg_scale, scale, g.variant)
        if g.cg_scale != 0:
            x0 = self._classifier_guided(x, s, x0, sample_sigmas)
        if g.eps_scale != 1.0:
            x0 = eps_scaled_x0(x0, x, s, self.schedule.space, g.eps_scale)
        return x0

    def _classifier_guided(self, x, s, x0, sample_sigmas):
        g = self.guidance
        on = window_mask(s, g.cg_window)
        if not bool(on.any()):
            return x0
        c, _, _ = self.schedule.native(s)
        scale = g.cg_scale * on.to(x)
        if isinstance(g.rule, AutoScale):
            delta = classifier_correction(self.estimator, x, s, self.schedule.space, c, 1.0)
            return x0 + append_dims(scale * self._auto(x, s, x0, delta, sample_sigmas), x.dim()) * delta
        if g.rule is not None:
            scale = scale * g.rule(self.schedule.space.logsnr(s)).to(x)
        return x0 + classifier_correction(self.estimator, x, s, self.schedule.space, c, scale)

    def _auto(self, x, s, x0, delta, sample_sigmas):
        """The closed-loop scale per sample (``auto_scale.AutoScale``) for NAG's x0 term ``delta``."""
        if sample_sigmas is None:
            raise ValueError("the closed-loop scale rule needs the sampled schedule: call the denoiser with "
                             "sample_sigmas=... (the samplers pass extra_args={'sample_sigmas': sigmas})")
        s_next = next_sigma(sample_sigmas, s)
        step = Step(x, s, x0, delta, s_next, self.schedule.native(s_next)[0].to(x), self.schedule.space)
        return self.guidance.rule(step)
