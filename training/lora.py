"""A plain LoRA that trains on any network and saves in the kohya key format (or ComfyUI's).

Why not peft: peft rewrites the module tree (``base_layer``/``lora_A.default``), so its keys must be
converted before ComfyUI can read them - the conversion step behind most "lora key not loaded"
reports.  This LoRA leaves the network untouched: each targeted ``Linear``/``Conv2d`` gets a
forward hook that adds ``up(down(x)) * alpha/rank``.  Files hold, per layer::

    <stem>.lora_up.weight     [out, rank] (conv: [out, rank, 1, 1])
    <stem>.lora_down.weight   [rank, in]  (conv: [rank, in, kh, kw])
    <stem>.alpha              scalar; loaders scale by alpha / rank

with ``<stem>`` in one of two formats (``export.lora_format``):

* ``kohya`` (default; what community LoRAs use and ComfyUI, Forge/A1111 and diffusers'
  ``load_lora_weights`` read): ``lora_unet_<name>`` where ``<name>`` is the layer's *diffusers*
  module path for UNet families (SD1/SD2/SDXL: ``down_blocks_0_attentions_0_...``, mapped with
  ComfyUI's ``unet_to_diffusers``) and the network's own path elsewhere (SD3, Flux, reference
  models), dots replaced by underscores; plus ``ss_*`` and ``modelspec.*`` metadata;
* ``comfyui``: ``diffusion_model.<module path>``, exactly the keys ComfyUI's LoRA trainer writes.

The hook form equals the loaders' weight patch
``W + alpha/rank * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)`` (:func:`merge`).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from comfy_nag.families import FAMILIES, KohyaBase

PREFIX = "diffusion_model."   # ComfyUI format
KOHYA_PREFIX = "lora_unet_"    # kohya format
FORMATS = ("kohya", "comfyui")


class LoRALayer(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator | None = None):
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
        with torch.no_grad():  # kaiming_uniform_(a=sqrt(5)) from the run's own generator (reproducible)
            bound = 1.0 / math.sqrt(self.down.weight[0].numel())
            self.down.weight.copy_(torch.rand(self.down.weight.shape, generator=generator) * (2 * bound) - bound)
        nn.init.zeros_(self.up.weight)  # starts as an exact no-op

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))) * (self.alpha / self.rank)


def _eligible(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class LoRANetwork(nn.Module):
    """LoRA layers for the matching layers of ``net``; :meth:`attach` hooks them in."""

    def __init__(self, net: nn.Module, rank: int, alpha: float, targets: list[str] | tuple = (), seed: int = 0):
        super().__init__()
        patterns = [re.compile(t) for t in targets]
        self.paths = [name for name, m in net.named_modules()
                      if name and _eligible(m) and (not patterns or any(p.search(name) for p in patterns))]
        if not self.paths:
            examples = [n for n, m in net.named_modules() if n and _eligible(m)][:6]
            raise ValueError(f"lora.targets {list(targets)} matched no Linear/Conv2d layer of the network; layer paths "
                             f"look like: {', '.join(examples)}")
        modules = dict(net.named_modules())
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(LoRALayer(modules[p], rank, alpha, g) for p in self.paths)
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

    def file_state_dict(self, fmt: str = "kohya", names: dict[str, str] | None = None,
                        dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The LoRA's tensors in ``fmt`` (see the module docstring); ``names`` maps a layer path to its
        kohya name (default: the path with dots replaced by underscores)."""
        if fmt not in FORMATS:
            raise ValueError(f"LoRA format {fmt!r} is not one of {', '.join(FORMATS)}")
        names = names or {}
        out = {}
        for path, layer in zip(self.paths, self.layers):
            stem = (KOHYA_PREFIX + names.get(path, path).replace(".", "_")) if fmt == "kohya" else PREFIX + path
            up, down = layer.up.weight.detach(), layer.down.weight.detach()
            out[f"{stem}.lora_up.weight"] = up.to(dtype or up.dtype).cpu()
            out[f"{stem}.lora_down.weight"] = down.to(dtype or down.dtype).cpu()
            out[f"{stem}.alpha"] = torch.tensor(layer.alpha, dtype=dtype or torch.float32)
        return out


PREDICTION_TYPES = {"eps": "epsilon", "v": "v", "velocity": "flow"}


def kohya_metadata(family: str, prediction: str, rank: int, alpha: float, steps: int, resolution: tuple[int, int],
                   title: str) -> dict[str, str]:
    """The ``ss_*`` (kohya sd-scripts) and ``modelspec.*`` (SAI model spec 1.0) keys loaders and UIs show."""
    known = FAMILIES.get(family)
    base = known.kohya if known is not None and known.kohya is not None else \
        KohyaBase(family, f"comfy-nag-{family}/lora", "comfy-nag")
    version, arch, impl = base.version, base.architecture, base.implementation
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
            "ss_base_model_version": version, "ss_steps": str(steps),
            "ss_training_comment": "comfy-nag: noise-condition dropout (Noise Awareness Guidance)",
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": arch, "modelspec.implementation": impl,
            "modelspec.title": title, "modelspec.resolution": f"{resolution[1]}x{resolution[0]}",
            "modelspec.prediction_type": PREDICTION_TYPES.get(prediction, prediction)}


def merge(net: nn.Module, lora_sd: dict[str, torch.Tensor], strength: float = 1.0) -> int:
    """Add a LoRA file's tensors (kohya keys of the network's own paths, or ComfyUI keys) into ``net``'s
    weights in place, with the loaders' formula; returns layers merged.

    Raises on keys that match no layer, the analogue of ComfyUI's "lora key not loaded".
    """
    modules = {n: m for n, m in net.named_modules() if n}
    by_stem = {PREFIX + n: n for n in modules} | {KOHYA_PREFIX + n.replace(".", "_"): n for n in modules}
    stems = {k[: -len(".lora_up.weight")] for k in lora_sd if k.endswith(".lora_up.weight")}
    known = {f"{s}.{suffix}" for s in stems for suffix in ("lora_up.weight", "lora_down.weight", "alpha")}
    stray = sorted(set(lora_sd) - known)
    if stray:
        raise KeyError(f"LoRA keys not understood: {stray[:5]}")
    with torch.no_grad():
        for stem in sorted(stems):
            path = by_stem.get(stem)
            if path is None or not _eligible(modules[path]):
                raise KeyError(f"LoRA key {stem} matches no Linear/Conv2d layer of this network")
            w = modules[path].weight
            up, down = lora_sd[f"{stem}.lora_up.weight"].float(), lora_sd[f"{stem}.lora_down.weight"].float()
            alpha = float(lora_sd.get(f"{stem}.alpha", torch.tensor(float(down.shape[0]))))
            diff = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            w.add_((strength * alpha / down.shape[0] * diff).to(w.dtype))
    return len(stems)
