"""Tensor helpers shared by the method's modules."""
from __future__ import annotations

import torch


def append_dims(v, ndim: int):
    """Per-sample values shaped to broadcast against a ``[B, ...]`` tensor with ``ndim`` dimensions.

    ``v``: a [B] tensor gets trailing singleton dimensions (k-diffusion's ``append_dims``); numbers and
    0-d tensors broadcast as they are and pass through unchanged.
    """
    if not isinstance(v, torch.Tensor) or v.dim() == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.dim()))
