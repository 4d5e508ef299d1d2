"""Samplers for the standalone path, k-diffusion style: short functions over ``model(x, s, **extra)``.

``model`` returns the x0 (denoised) prediction for the sampling-space state ``x`` at sampling
sigma ``s`` ([B] tensor).  ``space`` is ``"ve"`` (``x = x0 + s*eps``) or ``"flow"``
(``x = (1-s)*x0 + s*eps``) - see schedules.py.  In both spaces ``eps_hat = (x - alpha*x0)/s`` and
the probability-flow ODE is ``dx/ds = alpha'(s)*x0 + eps_hat``, so one implementation serves
VP/EDM models (sampled in k-diffusion's ve space, as ComfyUI does) and flow models.

Common keyword arguments:

* ``callback(i, s, x, x0)``: per-step trace hook; ``x`` is the state at the start of step i,
  at nominal sigma ``sigmas[i]``, and ``x0`` the (guided) prediction used for the step.
* ``level_fn(x, s, i, n)``: optional per-sample level correction (the time-shift sampler):
  the step treats the state as being at the returned sigma instead of the nominal one.
* ``generator``: torch.Generator for the stochastic samplers.

The final step to s = 0 returns the x0 prediction (no noise), for every sampler.
"""
from __future__ import annotations

import torch

from .schedules import space_alpha, space_dalpha


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


def _level(x, s, i, n, level_fn):
    s = s.expand(x.shape[0]).to(x)
    return s if level_fn is None else level_fn(x, s, i, n)


def _eps(x, x0, s, space):
    return (x - _b(space_alpha(space, s), x) * x0) / _b(s, x)


def _drift(x, x0, s, space):
    """dx/ds of the probability-flow ODE."""
    return _b(space_dalpha(space, s), x) * x0 + _eps(x, x0, s, space)


def _ddim(x0, eps, s_next, space):
    """Deterministic jump to s_next (== an Euler step in both spaces)."""
    return _b(space_alpha(space, s_next), x0) * x0 + _b(s_next, x0) * eps


@torch.no_grad()
def sample_euler(model, x, sigmas, space, extra_args=None, callback=None, level_fn=None, generator=None):
    """Euler on the probability-flow ODE (= DDIM, eta 0). 1 evaluation per step."""
    extra, n = extra_args or {}, len(sigmas) - 1
    for i in range(n):
        s = _level(x, sigmas[i], i, n, level_fn)
        x0 = model(x, s, **extra)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        x = _ddim(x0, _eps(x, x0, s, space), sigmas[i + 1].expand(x.shape[0]).to(x), space)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, space, extra_args=None, callback=None, level_fn=None, generator=None):
    """Heun's second-order method on the PF-ODE (Karras et al.). 2 evaluations per step, 1 on the last."""
    extra, n = extra_args or {}, len(sigmas) - 1
    for i in range(n):
        s = _level(x, sigmas[i], i, n, level_fn)
        s_next = sigmas[i + 1].expand(x.shape[0]).to(x)
        x0 = model(x, s, **extra)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if float(sigmas[i + 1]) == 0:
            x = x0
            continue
        d = _drift(x, x0, s, space)
        x_e = x + d * _b(s_next - s, x)
        d2 = _drift(x_e, model(x_e, s_next, **extra), s_next, space)
        x = x + (d + d2) / 2 * _b(s_next - s, x)
    return x


@torch.no_grad()
def sample_euler_maruyama(model, x, sigmas, space, extra_args=None, callback=None, level_fn=None,
                          generator=None, diffusion_norm: float = 1.0):
    """Euler-Maruyama on the reverse SDE ``dx = [u - w/2 * score] ds + sqrt(w) dW`` (s decreasing).

    ``u`` is the PF-ODE drift and ``w(s) = diffusion_norm * s`` (SiT's "sigma" diffusion form);
    every member of this family has the same marginals as the ODE.  1 evaluation per step.
    First order: a step injects noise of std ``sqrt(w*(s - s'))``, which exceeds the target level
    ``s'`` when ``s'/s`` is small (VP at DiT spacing, 10 steps: 0.38 -> 0.01 gets ~0.37).  Use
    :func:`sample_ddpm` there; it is exact for Gaussian transitions.
    """
    extra, n = extra_args or {}, len(sigmas) - 1
    for i in range(n):
        s = _level(x, sigmas[i], i, n, level_fn)
        s_next = sigmas[i + 1].expand(x.shape[0]).to(x)
        x0 = model(x, s, **extra)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if float(sigmas[i + 1]) == 0:
            x = x0
            continue
        eps = _eps(x, x0, s, space)
        w = diffusion_norm * s
        drift = _drift(x, x0, s, space) + _b(w / 2 / s, x) * eps  # u - w/2 * score, score = -eps/s
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + drift * _b(s_next - s, x) + _b((w * (s - s_next)).clamp_min(0).sqrt(), x) * noise
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, space, extra_args=None, callback=None, level_fn=None, generator=None):
    """Ancestral sampling from the forward process' posterior q(x_s' | x_s, x0) (DDPM; DDIM eta 1).

    With ``a_ts = alpha(s)/alpha(s')`` and ``v_ts = s^2 - a_ts^2 s'^2`` the posterior has mean
    ``a_ts s'^2/s^2 x + alpha(s') v_ts/s^2 x0`` and variance ``v_ts s'^2 / s^2``; valid in both spaces.
    """
    extra, n = extra_args or {}, len(sigmas) - 1
    for i in range(n):
        s = _level(x, sigmas[i], i, n, level_fn)
        s_next = sigmas[i + 1].expand(x.shape[0]).to(x)
        x0 = model(x, s, **extra)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if float(sigmas[i + 1]) == 0:
            x = x0
            continue
        a, a_next = space_alpha(space, s), space_alpha(space, s_next)
        a_ts = a / a_next
        v_ts = (s * s - a_ts * a_ts * s_next * s_next).clamp_min(0)
        mean = _b(a_ts * s_next ** 2 / s ** 2, x) * x + _b(a_next * v_ts / s ** 2, x) * x0
        std = (v_ts * s_next ** 2 / s ** 2).sqrt()
        x = mean + _b(std, x) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "euler_maruyama": sample_euler_maruyama, "ddpm": sample_ddpm}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def evaluations_per_step(name: str, steps: int) -> float:
    """Model calls per step of an unguided run (Heun's last step is a single call)."""
    return (2 * steps - 1) / steps if name == "heun" else 1.0


def initial_noise(shape, schedule, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Pure noise at the schedule's first sampling sigma (ve: s_max*eps; flow: eps)."""
    s0 = schedule.sigmas(1)[0]
    return torch.randn(shape, generator=generator, dtype=dtype) * (1.0 if schedule.space == "flow" else float(s0))
