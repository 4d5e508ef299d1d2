"""A plain LoRA that trains on any network and saves in ComfyUI's own LoRA key format.

Why not peft: peft rewrites the module tree (``base_layer``/``lora_A.default``), so its keys must be
converted before ComfyUI can read them - the conversion step behind most "lora key not loaded"
reports.  This LoRA leaves the network untouched: each targeted ``Linear``/``Conv2d`` gets a
forward hook that adds ``up(down(x)) * alpha/rank``, and the file it writes uses exactly the keys
ComfyUI's LoRA trainer/saver writes (``comfy_extras/nodes_train.py``)::

    diffusion_model.<module path>.lora_up.weight     [out, rank] (conv: [out, rank, 1, 1])
    diffusion_model.<module path>.lora_down.weight   [rank, in]  (conv: [rank, in, kh, kw])
    diffusion_model.<module path>.alpha              scalar; ComfyUI scales by alpha / rank

``<module path>`` is the layer's path inside the diffusion network as ComfyUI builds it, so the
keys are ComfyUI's own with no conversion.  The hook form equals ComfyUI's weight patch
``W + alpha/rank * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)`` (:func:`merge`).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

PREFIX = "diffusion_model."


class LoRALayer(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                                  bias=False, padding_mode=base.padding_mode)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA supports Linear and Conv2d layers, not {type(base).__name__}")
        self.rank, self.alpha = rank, float(alpha)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)  # starts as an exact no-op

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))) * (self.alpha / self.rank)


def _eligible(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class LoRANetwork(nn.Module):
    """LoRA layers for the matching layers of ``net``; :meth:`attach` hooks them in."""

    def __init__(self, net: nn.Module, rank: int, alpha: float, targets: list[str] | tuple = ()):
        super().__init__()
        patterns = [re.compile(t) for t in targets]
        self.paths = [name for name, m in net.named_modules()
                      if name and _eligible(m) and (not patterns or any(p.search(name) for p in patterns))]
        if not self.paths:
            examples = [n for n, m in net.named_modules() if n and _eligible(m)][:6]
            raise ValueError(f"lora.targets {list(targets)} matched no Linear/Conv2d layer of the network; layer paths "
                             f"look like: {', '.join(examples)}")
        modules = dict(net.named_modules())
        self.layers = nn.ModuleList(LoRALayer(modules[p], rank, alpha) for p in self.paths)
        self.rank, self.alpha = rank, float(alpha)
        self._net, self._handles = [net], []

    def attach(self) -> "LoRANetwork":
        modules = dict(self._net[0].named_modules())
        for path, layer in zip(self.paths, self.layers):
            def hook(mod, args, out, layer=layer):
                return out + layer.delta(args[0]).to(out.dtype)
            self._handles.append(modules[path].register_forward_hook(hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def comfy_state_dict(self, dtype: torch.dtype | None = None, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
        """The LoRA in ComfyUI's key format (see the module docstring)."""
        out = {}
        for path, layer in zip(self.paths, self.layers):
            up, down = layer.up.weight.detach(), layer.down.weight.detach()
            out[f"{prefix}{path}.lora_up.weight"] = up.to(dtype or up.dtype).cpu()
            out[f"{prefix}{path}.lora_down.weight"] = down.to(dtype or down.dtype).cpu()
            out[f"{prefix}{path}.alpha"] = torch.tensor(layer.alpha, dtype=dtype or torch.float32)
        return out


def merge(net: nn.Module, lora_sd: dict[str, torch.Tensor], strength: float = 1.0, prefix: str = PREFIX) -> int:
    """Add a ComfyUI-format LoRA into ``net``'s weights in place (ComfyUI's formula); returns layers merged.

    Raises on keys that match no layer, the analogue of ComfyUI's "lora key not loaded".
    """
    modules = dict(net.named_modules())
    stems = {k[: -len(".lora_up.weight")] for k in lora_sd if k.endswith(".lora_up.weight")}
    known = {f"{s}.{suffix}" for s in stems for suffix in ("lora_up.weight", "lora_down.weight", "alpha")}
    stray = sorted(set(lora_sd) - known)
    if stray:
        raise KeyError(f"LoRA keys not understood: {stray[:5]}")
    with torch.no_grad():
        for stem in sorted(stems):
            path = stem[len(prefix):] if stem.startswith(prefix) else None
            if path not in modules or not _eligible(modules[path]):
                raise KeyError(f"LoRA key {stem} matches no Linear/Conv2d layer of this network")
            w = modules[path].weight
            up, down = lora_sd[f"{stem}.lora_up.weight"].float(), lora_sd[f"{stem}.lora_down.weight"].float()
            alpha = float(lora_sd.get(f"{stem}.alpha", torch.tensor(float(down.shape[0]))))
            diff = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            w.add_((strength * alpha / down.shape[0] * diff).to(w.dtype))
    return len(stems)
