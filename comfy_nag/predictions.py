"""Conversions between parameterisations of a denoising network's output.

All conversions are done in the *network space* where ``x = alpha*x0 + sigma*eps``
(``Schedule.native``).  Kinds:

* ``eps``      - the noise eps
* ``v``        - v-prediction (Salimans & Ho): ``v = alpha*eps - sigma*x0``
* ``x0``       - the clean sample
* ``velocity`` - flow-matching velocity of the linear path ``alpha = 1 - sigma``: ``u = eps - x0``
* ``score``    - ``grad_x log p(x) = -eps/sigma``

Every map is affine in the prediction with coefficients that depend only on (x, alpha, sigma),
so a mixture whose weights sum to one (CFG, NAG) gives the same result in every space, provided
all branches are converted with the same nominal (alpha, sigma).
"""
from __future__ import annotations

import torch

KINDS = ("eps", "v", "x0", "velocity", "score")


def _bc(c, x):
    """Broadcast per-sample coefficients (scalar or [B]) against x [B, ...]."""
    if not isinstance(c, torch.Tensor):
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown parameterisation {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def to_x0(pred: torch.Tensor, kind: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Clean-sample estimate from a prediction of ``kind`` at state x."""
    check_kind(kind)
    a, s = _bc(alpha, x), _bc(sigma, x)
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x - s * pred) / a
    if kind == "v":
        return (a * x - s * pred) / (a * a + s * s)
    if kind == "velocity":
        return x - s * pred
    return (x + s * s * pred) / a  # score


def from_x0(x0: torch.Tensor, kind: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Inverse of :func:`to_x0`."""
    check_kind(kind)
    a, s = _bc(alpha, x), _bc(sigma, x)
    if kind == "x0":
        return x0
    eps = (x - a * x0) / s
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return eps - x0
    return -eps / s  # score


def convert(pred: torch.Tensor, src: str, dst: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Convert a prediction between two kinds at the same state and level."""
    if check_kind(src) == check_kind(dst):
        return pred
    return from_x0(to_x0(pred, src, x, alpha, sigma), dst, x, alpha, sigma)


def target(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Regression target of ``kind`` for a forward sample built from (x0, eps)."""
    check_kind(kind)
    a, s = _bc(alpha, x0), _bc(sigma, x0)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return eps - x0
    return -eps / s
