"""Exponential moving average of the trained weights, for the loop's EMA (``train.ema_decay``)."""
from __future__ import annotations

import contextlib

import torch


class EMA:
    """Exponential moving average of the *trainable* parameters only.

    For a LoRA run that is the LoRA layers, never the frozen base network (``AveragedModel`` would
    deep-copy the whole module, base included).  The first update copies the weights; later ones
    lerp by ``1 - decay``.  ``state_dict`` holds one tensor per trainable parameter (same names as
    ``named_parameters``) plus ``__n_averaged``.
    """

    def __init__(self, named_params: list, decay: float):
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.n_averaged = float(decay), 0

    @torch.no_grad()
    def update(self) -> None:
        if self.n_averaged == 0:
            self._copy(self.shadow, self.params)
        else:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)
        self.n_averaged += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**dict(zip(self.names, self.shadow)), "__n_averaged": torch.tensor(self.n_averaged)}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        missing = [n for n in self.names if n not in sd]
        if missing or "__n_averaged" not in sd:
            raise KeyError(f"EMA state lacks {(missing or ['__n_averaged'])[:3]}")
        for n, t in zip(self.names, self.shadow):
            t.copy_(sd[n])
        self.n_averaged = int(sd["__n_averaged"])

    @staticmethod
    @torch.no_grad()
    def _copy(dst: list, src: list) -> None:
        for d, t in zip(dst, src):
            d.copy_(t)

    def copy_to_params(self) -> None:
        self._copy(self.params, self.shadow)

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the model."""
        backup = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            self._copy(self.params, backup)
