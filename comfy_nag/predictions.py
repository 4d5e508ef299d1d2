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

from .tensors import append_dims

KINDS = ("eps", "v", "x0", "velocity", "score")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown parameterisation {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def to_x0(pred: torch.Tensor, kind: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Clean-sample estimate from a prediction of ``kind`` at state x."""
    check_kind(kind)
    a, s = append_dims(alpha, x.dim()), append_dims(sigma, x.dim())
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
    """Inverse of :func:`to_x0`: the ``kind`` prediction whose x0 is ``x0`` at state x (:func:`target` of its eps)."""
    if check_kind(kind) == "x0":
        return x0
    eps = (x - append_dims(alpha, x.dim()) * x0) / append_dims(sigma, x.dim())
    return target(kind, x0, eps, alpha, sigma)


def convert(pred: torch.Tensor, src: str, dst: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Convert a prediction between two kinds at the same state and level."""
    if check_kind(src) == check_kind(dst):
        return pred
    return from_x0(to_x0(pred, src, x, alpha, sigma), dst, x, alpha, sigma)


def target(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Regression target of ``kind`` for a forward sample built from (x0, eps)."""
    check_kind(kind)
    a, s = append_dims(alpha, x0.dim()), append_dims(sigma, x0.dim())
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return eps - x0
    return -eps / s
