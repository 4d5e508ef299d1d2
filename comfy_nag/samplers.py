"""Samplers for the standalone path, shaped like k-diffusion's:
``sample_x(model, x, sigmas, extra_args=None, callback=None, ...)``.

``model(x, s, **extra_args)`` returns the x0 (denoised) prediction for the sampling-space state ``x``
at sampling sigma ``s`` ([B] tensor); ``sigmas`` decrease to 0 (``Schedule.sigmas``).  Sampling spaces
(schedules.py's ``Space``): VE (``x = x0 + s*eps``) and FLOW (``x = (1-s)*x0 + s*eps``).  In both,
the probability-flow ODE is ``dx/ds = (x - x0)/s``, so Euler and Heun are the same in every space
and need no space argument; the stochastic samplers (Euler-Maruyama, DDPM) need the signal
coefficient ``alpha(s)`` and take ``space``.

Keyword arguments:

* ``callback(info)``: called once per step with k-diffusion's dict: ``i`` (step), ``sigma``
  (nominal ``sigmas[i]``), ``sigma_hat`` (the per-sample level the step used), ``x`` (the state at
  the start of the step) and ``denoised`` (the guided x0 prediction used for the step).
* ``level_fn(x, s, i, n)``: optional per-sample level correction (the time-shift sampler): the
  step treats the state as being at the returned sigma instead of the nominal one.
* ``space``, ``generator`` (stochastic samplers): the sampling space and a torch.Generator.

The final step to s = 0 returns the x0 prediction (no noise), for every sampler.
"""
from __future__ import annotations

import functools

import torch

from .estimators import variance_logsnr
from .schedules import Space
from .tensors import append_dims


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative ``dx/ds = (x - x0)/s`` (the same in ve and flow space)."""
    return (x - denoised) / append_dims(sigma, x.dim())


def _level(x, s, i, n, level_fn):
    s = s.expand(x.shape[0]).to(x)
    return s if level_fn is None else level_fn(x, s, i, n)


def _run(model, x, sigmas, extra_args, callback, level_fn, update):
    """The loop every sampler shares: one model call per step (reported to ``callback``), then
    ``update(x, x0, s, s_next, extra) -> x``; the final step to s = 0 returns the x0 prediction."""
    extra, n = extra_args or {}, len(sigmas) - 1
    for i in range(n):
        s = _level(x, sigmas[i], i, n, level_fn)
        x0 = model(x, s, **extra)
        if callback is not None:
            callback({"i": i, "sigma": sigmas[i], "sigma_hat": s, "x": x, "denoised": x0})
        x = x0 if float(sigmas[i + 1]) == 0 else update(x, x0, s, sigmas[i + 1].expand(x.shape[0]).to(x), extra)
    return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, level_fn=None):
    """Euler on the probability-flow ODE (= DDIM, eta 0), as the jump ``x0 + s'*(x - x0)/s``. 1 evaluation per step."""
    def update(x, x0, s, s_next, extra):
        return x0 + append_dims(s_next, x.dim()) * to_d(x, s, x0)

    return _run(model, x, sigmas, extra_args, callback, level_fn, update)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, level_fn=None):
    """Heun's second-order method on the PF-ODE (Karras et al.). 2 evaluations per step, 1 on the last."""
    def update(x, x0, s, s_next, extra):
        dt = append_dims(s_next - s, x.dim())
        d = to_d(x, s, x0)
        x_e = x + d * dt
        d2 = to_d(x_e, s_next, model(x_e, s_next, **extra))
        return x + (d + d2) / 2 * dt

    return _run(model, x, sigmas, extra_args, callback, level_fn, update)


@torch.no_grad()
def sample_euler_maruyama(model, x, sigmas, extra_args=None, callback=None, level_fn=None, *, space: Space,
                          generator=None):
    """Euler-Maruyama on the reverse SDE ``dx = [u - w/2 * score] ds + sqrt(w) dW`` (s decreasing).

    ``u`` is the PF-ODE drift and ``w(s) = s`` (SiT's "sigma" diffusion form);
    every member of this family has the same marginals as the ODE.  1 evaluation per step.
    First order: a step injects noise of std ``sqrt(w*(s - s'))``, which exceeds the target level
    ``s'`` when ``s'/s`` is small (VP at DiT spacing, 10 steps: 0.38 -> 0.01 gets ~0.37).  Use
    :func:`sample_ddpm` there; it is exact for Gaussian transitions.
    """
    def update(x, x0, s, s_next, extra):
        eps = (x - append_dims(space.alpha(s), x.dim()) * x0) / append_dims(s, x.dim())
        w = s
        drift = to_d(x, s, x0) + append_dims(w / 2 / s, x.dim()) * eps  # u - w/2 * score, score = -eps/s
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        std = (w * (s - s_next)).clamp_min(0).sqrt()
        return x + drift * append_dims(s_next - s, x.dim()) + append_dims(std, x.dim()) * noise

    return _run(model, x, sigmas, extra_args, callback, level_fn, update)


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, level_fn=None, *, space: Space, generator=None):
    """Ancestral sampling from the forward process' posterior q(x_s' | x_s, x0) (DDPM; DDIM eta 1).

    With ``a_ts = alpha(s)/alpha(s')`` and ``v_ts = s^2 - a_ts^2 s'^2`` the posterior has mean
    ``a_ts s'^2/s^2 x + alpha(s') v_ts/s^2 x0`` and variance ``v_ts s'^2 / s^2``; valid in both spaces.
    """
    def update(x, x0, s, s_next, extra):
        a, a_next = space.alpha(s), space.alpha(s_next)
        a_ts = a / a_next
        v_ts = (s * s - a_ts * a_ts * s_next * s_next).clamp_min(0)
        mean = append_dims(a_ts * s_next ** 2 / s ** 2, x.dim()) * x + append_dims(a_next * v_ts / s ** 2, x.dim()) * x0
        std = (v_ts * s_next ** 2 / s ** 2).sqrt()
        return mean + append_dims(std, x.dim()) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    return _run(model, x, sigmas, extra_args, callback, level_fn, update)


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "euler_maruyama": sample_euler_maruyama, "ddpm": sample_ddpm}
STOCHASTIC = ("euler_maruyama", "ddpm")


def get_sampler(name: str, space: Space | None = None, generator=None):
    """Sampler ``name`` as ``fn(model, x, sigmas, extra_args=None, callback=None, level_fn=None)``.

    The stochastic samplers get ``space`` (required for them) and ``generator`` bound.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    if name not in STOCHASTIC:
        return SAMPLERS[name]
    if space is None:
        raise ValueError(f"sampler {name!r} is stochastic and needs the sampling space (schedules.Space); "
                         "pass get_sampler(name, schedule.space)")
    return functools.partial(SAMPLERS[name], space=space, generator=generator)


def initial_noise(shape, schedule, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Pure noise at the schedule's first sampling sigma (ve: s_max*eps; flow: eps)."""
    s0 = schedule.sigmas(1)[0]
    return torch.randn(shape, generator=generator, dtype=dtype) * (1.0 if schedule.space is Space.FLOW else float(s0))


def time_shift_level_fn(space: Space, data_var: float, window: float = 0.5, start_frac: float = 0.0):
    """Time-shift sampler (Li et al., ICLR 2024) as a sampler ``level_fn``.

    Each step, the level of each sample is re-read from its variance (``estimators.variance_logsnr``)
    and the sampler uses that level, clipped to ``window`` log-SNR units around the nominal one,
    for the model call and the update coefficients.  ``start_frac``: fraction of steps (from the
    start) left unshifted.
    """
    def level_fn(x, s, i, n_steps):
        if i < start_frac * n_steps:
            return s
        lam = space.logsnr(s)
        lam_hat = variance_logsnr(x, space, data_var, s)
        lam_new = torch.where(torch.isfinite(lam), lam + (lam_hat - lam).clamp(-window, window), lam)
        return space.sigma_from_logsnr(lam_new).to(s)

    return level_fn
