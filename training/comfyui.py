"""ComfyUI as a library: finding and importing it, and loading weights through its own code.

Nothing here is imported unless a ComfyUI family is used, so the reference path (and CI) needs
no ComfyUI.  ComfyUI is looked for in ``$COMFYUI_PATH``, then ``~/comfy/ComfyUI``; it is put on
``sys.path`` and, on machines without CUDA, switched to CPU mode *before*
``comfy.model_management`` is imported (that module probes the GPU at import time).

Files are always read by :func:`comfy_nag.files.load_weights` (safetensors only, clear errors
for pickles and damaged files) and the tensors handed to ComfyUI's detection and loaders, so
ComfyUI's own ``torch.load`` fallback is never reached.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from comfy_nag.families import VAE_MODULE_FORMATS, from_comfy_config
from comfy_nag.files import load_weights
from comfy_nag.schedules import DiscreteVP, Flow, Schedule


class ComfyUnavailable(RuntimeError):
    """ComfyUI could not be found or imported."""


def comfy_root() -> Path | None:
    for cand in (os.environ.get("COMFYUI_PATH"), "~/comfy/ComfyUI"):
        if cand and (Path(cand).expanduser() / "comfy" / "model_base.py").is_file():
            return Path(cand).expanduser().resolve()
    return None


_MODULES = ("comfy.cli_args", "comfy.model_management", "comfy.model_detection", "comfy.model_base", "comfy.sd",
            "comfy.utils", "comfy.lora", "comfy.conds", "comfy.model_sampling", "comfy.model_patcher",
            "comfy.latent_formats")


def import_comfy():
    """Import ComfyUI's library modules; returns ``comfy`` (the package) or raises ComfyUnavailable."""
    if "comfy.sd" in sys.modules:
        return sys.modules["comfy"]
    root = comfy_root()
    if root is None:
        raise ComfyUnavailable("ComfyUI was not found: set COMFYUI_PATH to a ComfyUI checkout (the folder holding "
                               "comfy/ and main.py), or place one at ~/comfy/ComfyUI")
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    before = set(sys.modules)
    try:
        if "comfy.model_management" not in sys.modules:
            from comfy.cli_args import args
            if not torch.cuda.is_available():
                args.cpu = True
        for name in _MODULES:
            importlib.import_module(name)
    except Exception as e:  # a missing dependency, a broken install, an incompatible torch
        # leave no trace: ComfyUI's root holds generic module names (utils, app, nodes, server)
        if added:
            sys.path.remove(str(root))
        for name in [n for n in set(sys.modules) - before if _from(sys.modules[n], root)]:
            del sys.modules[name]
        raise ComfyUnavailable(f"ComfyUI at {root} could not be imported in this Python environment "
                               f"({type(e).__name__}: {e}); install ComfyUI's requirements.txt into it") from e
    return sys.modules["comfy"]


def _from(module, root: Path) -> bool:
    """Whether a module was loaded from ``root`` (namespace packages have only a __path__)."""
    try:
        paths = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", None) or [])]
    except (KeyError, TypeError):
        return False
    return any(str(p).startswith(str(root)) for p in paths)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_warnings():
    """Collect the warnings ComfyUI logs (missing/unexpected keys, lora keys not loaded)."""
    h = _Collect()
    root = logging.getLogger()
    root.addHandler(h)
    try:
        yield h.messages
    finally:
        root.removeHandler(h)


def family_name(config_name: str, prediction: str | None = None) -> str:
    """comfy-nag's name for a ComfyUI model-config class (comfy_nag.families); a model family without an
    entry there is called by its config class, lower-cased."""
    fam = from_comfy_config(config_name, prediction)
    return fam.name if fam is not None else config_name.lower()


@dataclass
class Loaded:
    """A diffusion model loaded by ComfyUI, with what the trainer needs to know about it."""

    model: torch.nn.Module           # comfy.model_base.BaseModel; .diffusion_model is the network
    family: str                      # comfy-nag family name, e.g. "sd3"
    config_name: str                 # ComfyUI model-config class, e.g. "SD3"
    schedule: Schedule
    prediction: str                  # eps | v | velocity
    kind: str                        # "checkpoint" (model.diffusion_model.* + VAE/CLIP) or "diffusion_model"
    prefix: str                      # key prefix of the network in the base file ("" for diffusion models)
    other: dict                      # the base file's tensors that are not the network (checkpoints)
    dtype: torch.dtype               # floating dtype of the base file's network weights
    discrete: bool                   # network time is an integer index (SD1/SD2/SDXL)

    @property
    def latent_channels(self) -> int:
        return int(self.model.latent_format.latent_channels)

    @property
    def latent_format(self) -> str:
        return type(self.model.latent_format).__name__


def schedule_of(model) -> tuple[Schedule, str, bool]:
    """Map ComfyUI's model_sampling to a comfy_nag schedule: ``(schedule, prediction, discrete)``."""
    comfy = import_comfy()
    ms = model.model_sampling
    MS = comfy.model_sampling
    if isinstance(ms, MS.CONST):
        prediction = "velocity"
    elif isinstance(ms, (MS.EDM, MS.X0, MS.COSMOS_RFLOW)):
        prediction = None
    elif isinstance(ms, MS.V_PREDICTION):
        prediction = "v"
    elif isinstance(ms, MS.EPS):
        prediction = "eps"
    else:
        prediction = None
    if prediction is None:
        raise ValueError(f"{model.model_type.name} models are not supported for noise-condition dropout training "
                         "(supported parameterisations: eps, v, flow velocity)")
    if isinstance(ms, MS.ModelSamplingDiscreteFlow):
        return Flow(shift=float(ms.shift), multiplier=float(ms.multiplier)), prediction, False
    if isinstance(ms, MS.ModelSamplingFlux):
        # flux_time_shift(mu, 1, t) == SD3's shift with shift = exp(mu); network time = sigma.
        return Flow(shift=math.exp(float(ms.shift)), multiplier=1.0), prediction, False
    if type(ms).timestep is MS.ModelSamplingDiscrete.timestep and isinstance(ms, MS.ModelSamplingDiscrete):
        settings = getattr(model.model_config, "sampling_settings", {})
        beta = settings.get("beta_schedule", "linear")
        names = {"linear": "scaled_linear", "sqrt_linear": "linear"}  # ComfyUI name -> comfy_nag name
        if ms.zsnr or beta not in names:
            raise ValueError(f"discrete schedule beta_schedule={beta!r} zsnr={ms.zsnr} is not supported yet "
                             "(supported: ComfyUI 'linear' and 'sqrt_linear' without zero-terminal SNR)")
        sched = DiscreteVP(names[beta], float(ms.linear_start), float(ms.linear_end), int(ms.num_timesteps))
        if not torch.allclose(sched.table, ms.sigmas.float().cpu(), rtol=1e-4):
            raise ValueError("the model's sigma table differs from the schedule rebuilt from its settings")
        return sched, prediction, True
    raise ValueError(f"{type(ms).__mro__[1].__name__} schedules are not supported (supported: discrete VP as in "
                     "SD1/SD2/SDXL, discrete flow as in SD3, Flux)")


def _float_dtype(tensors: dict) -> torch.dtype:
    counts: dict = {}
    for t in tensors.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(path: str | os.PathLike, family: str = "auto", weights: str = "fp32") -> Loaded:
    """Load a checkpoint or diffusion model for training through ComfyUI's detection, its weights held in ``weights``
    (``model.dtype``: fp32 by default; bf16/fp16 for a LoRA on a model whose fp32 weights do not fit, computed as
    ComfyUI computes them)."""
    comfy = import_comfy()
    sd, metadata = load_weights(path)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    net_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if prefix == "model.diffusion_model." and len(net_sd) > 5:
        kind, other = "checkpoint", {k: v for k, v in sd.items() if not k.startswith(prefix)}
    else:
        kind, prefix, net_sd, other = "diffusion_model", "", sd, {}
    dtype = _float_dtype(net_sd)
    with captured_warnings() as warns:
        patcher = comfy.sd.load_diffusion_model_state_dict(dict(net_sd), model_options={"dtype": WEIGHT_DTYPES[weights]})
    if patcher is None:
        raise ValueError(f"{path}: ComfyUI could not detect the model type of this file "
                         "(not a diffusion model ComfyUI can load)")
    bad = [w for w in warns if w.startswith(("unet missing", "unet unexpected"))]
    if bad:
        raise ValueError(f"{path}: ComfyUI loaded this file with mismatched weights ({bad[0][:300]}); "
                         "the file is incomplete or not a supported model")
    model = patcher.model
    config_name = type(model.model_config).__name__
    schedule, prediction, discrete = schedule_of(model)
    fam = family_name(config_name, prediction)
    if family not in ("auto", fam):
        raise ValueError(f"{path}: ComfyUI detects this file as {config_name} (family '{fam}'), but model.family is "
                         f"'{family}'; set model.family = '{fam}' (or 'auto')")
    if getattr(model, "concat_keys", ()):
        raise ValueError(f"{path}: {config_name} needs concatenated image conditioning (inpainting/instruct "
                         "models), which the trainer does not support")
    return Loaded(model, fam, config_name, schedule, prediction, kind, prefix, other, dtype, discrete)


def load_encoders(checkpoint: str = "", vae: str = "", text_encoders=(), clip_type: str = "stable_diffusion",
                  need_vae: bool = True):
    """ComfyUI VAE and CLIP objects for ``prepare``: ``(vae, clip or None, family or "")`` (``need_vae=False``: the
    text encoders alone, for generated latents)."""
    comfy = import_comfy()
    vae_obj = clip = None
    fam = ""
    if checkpoint:
        sd, metadata = load_weights(checkpoint)
        out = comfy.sd.load_state_dict_guess_config(sd, output_vae=not vae, output_clip=not text_encoders,
                                                    output_model=False, metadata=metadata)
        if out is None:
            raise ValueError(f"{checkpoint}: ComfyUI could not detect the model type of this checkpoint")
        _, clip, vae_obj, _ = out
        fam = _checkpoint_family(comfy, sd)
    if vae:
        vae_obj = comfy.sd.VAE(sd=load_weights(vae)[0])
    if text_encoders:
        names = {t.name.lower(): t for t in comfy.sd.CLIPType}
        if clip_type.lower() not in names:
            raise ValueError(f"data.clip_type={clip_type!r} is not a ComfyUI CLIPType; one of {', '.join(sorted(names))}")
        clip = comfy.sd.load_text_encoder_state_dicts([load_weights(p)[0] for p in text_encoders],
                                                      clip_type=names[clip_type.lower()])
    if need_vae and (vae_obj is None or getattr(vae_obj, "first_stage_model", None) is None):
        raise ValueError("no usable VAE: data.checkpoint has no VAE weights; set data.vae to a VAE file")
    return vae_obj, clip, fam


def vae_latent_format(vae) -> str:
    """The latent format a ComfyUI VAE's class names (:data:`VAE_MODULE_FORMATS`, subclasses included), "" when its
    latents' shape is left to tell."""
    return next((VAE_MODULE_FORMATS[c.__module__] for c in type(vae.first_stage_model).__mro__
                 if c.__module__ in VAE_MODULE_FORMATS), "")


def _checkpoint_family(comfy, sd) -> str:
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    cfg = comfy.model_detection.model_config_from_unet(sd, prefix)
    if cfg is None:
        return ""
    return family_name(type(cfg).__name__)


def concat_cross_attn(conds: list[torch.Tensor]) -> torch.Tensor:
    """Batch cross-attention conditionings of different lengths the way ComfyUI batches cond and
    uncond (``comfy.conds.CONDCrossAttn.concat``: repeat tokens to a common length, which leaves
    attention unchanged)."""
    comfy = import_comfy()
    first, *rest = [comfy.conds.CONDCrossAttn(c) for c in conds]
    return first.concat(rest) if rest else first.cond


def latent_format(name: str):
    """An instance of ComfyUI's latent format class ``name`` (e.g. ``"SD15"``, ``"SD3"``)."""
    return getattr(import_comfy().latent_formats, name)()


def diffusers_names(model, paths: list[str]) -> dict[str, str]:
    """Diffusers module paths of network layer paths, for UNet families (ComfyUI's ``unet_to_diffusers``,
    the mapping its LoRA loader reads kohya keys with); other families map to nothing (own paths)."""
    comfy = import_comfy()
    to_ldm = comfy.utils.unet_to_diffusers(model.model_config.unet_config)
    inverse = {v[: -len(".weight")]: k[: -len(".weight")] for k, v in to_ldm.items()
               if k.endswith(".weight") and v.endswith(".weight")}
    return {p: inverse[p] for p in paths if p in inverse}
