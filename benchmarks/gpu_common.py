"""Shared pieces of ``benchmarks/gpu_check.py`` and its parts: the results file each part writes, the device
header, the Python packages each part needs (with a clear message naming a missing one), and ComfyUI as a
library (found through ``COMFYUI_PATH``, also inside an ignored folder of this repository).

Nothing here imports torch or ComfyUI at module level, so the orchestrator and the tests stay light.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from comfy_support import load_pack  # noqa: E402  (imports the pack as ComfyUI does; needs no pytest)

# Import name -> (distribution to carry, why).  The imports that ComfyUI's library modules (comfy.sd,
# comfy.samplers, comfy.sample, comfy.model_management, comfy_api.latest) and this project's code make at
# the level the parts use them, as read off sys.modules after those imports (docs/gpu/README.md).
COMFY_NEEDS = {
    "numpy": ("numpy", "everything"), "safetensors": ("safetensors", "model files"),
    "einops": ("einops", "ComfyUI's model code"), "torchsde": ("torchsde", "comfy.k_diffusion.sampling"),
    "trampoline": ("trampoline", "needed by torchsde"), "torchvision": ("torchvision", "comfy.utils/ops"),
    "scipy": ("scipy", "comfy.samplers"), "yaml": ("pyyaml", "comfy.sd config files"),
    "PIL": ("pillow", "comfy_api"), "tqdm": ("tqdm", "progress bars"), "psutil": ("psutil", "comfy.model_management"),
    "transformers": ("transformers", "comfy.sd text encoders (imported, never run)"),
    "tokenizers": ("tokenizers", "comfy.sd text encoders (imported, never run)"),
}
NEEDS = {
    "guidance": COMFY_NEEDS,
    "trainer": {**COMFY_NEEDS, "accelerate": ("accelerate", "the trainer's loop")},
    "capacity": {"numpy": ("numpy", "the studies"), "tqdm": ("tqdm", "the studies")},
}
# Needed only for ComfyUI's video I/O (comfy_api.latest imports it), which no part calls: a stub stands in
# when it is missing (its wheel is 36 MB, half of what may travel to the GPU machine).
STUBBED = ("av",)


class MissingPackage(RuntimeError):
    """A Python package a part needs is not installed; the message names it and how to bring it."""


def missing_message(names: list[str], part: str) -> str:
    needs = NEEDS.get(part, COMFY_NEEDS)
    dists = [needs.get(n, (n, ""))[0] for n in names]
    why = "; ".join(f"{n}: {needs[n][1]}" for n in names if n in needs and needs[n][1])
    why = f" ({why})" if why else ""
    unknown = [n for n in names if n not in needs]
    if unknown:  # not a package the parts are known to need: perhaps a folder of ComfyUI left out of .comfyui/
        why += (f" (if {', '.join(unknown)} is one of ComfyUI's own modules, add it to COMFY_ITEMS in "
                "benchmarks/gpu_carry.py and rerun it)")
    return (f"the {part} part needs Python package(s) this Python ({sys.executable.rsplit('/', 1)[-1]} "
            f"{platform.python_version()}) lacks: {', '.join(dists)}{why}. On the GPU machine nothing can be "
            "installed from a registry: carry their wheels in .whl/ (python benchmarks/gpu_carry.py downloads them) "
            "and install them with the command in docs/gpu/README.md")


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_packages(part: str) -> None:
    """Raise :class:`MissingPackage` naming every package of ``NEEDS[part]`` that cannot be imported."""
    missing = [name for name in NEEDS.get(part, {}) if not installed(name)]
    if missing:
        raise MissingPackage(missing_message(missing, part))


def stub_missing(names=STUBBED) -> list[str]:
    """Put a stand-in module for each of ``names`` that is not installed (attribute access gives a placeholder
    class; submodules are stubbed on import).  Returns the names stubbed."""
    stubbed = [n for n in names if n not in sys.modules and not installed(n)]
    if not stubbed:
        return []

    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in stubbed:
                return importlib.util.spec_from_loader(name, Loader(), is_package=True)
            return None

    class Loader:
        @staticmethod
        def create_module(spec):
            mod = types.ModuleType(spec.name)
            mod.__path__ = []

            def placeholder(attr):
                if attr.startswith("__"):  # __file__, __spec__ lookups: behave like a module without them
                    raise AttributeError(attr)
                return type(attr, (), {"__module__": spec.name})

            mod.__getattr__ = placeholder
            return mod

        @staticmethod
        def exec_module(module):
            pass

    sys.meta_path.insert(0, Finder())  # first: only names established as missing reach it
    return stubbed


def missing_from(exc: BaseException) -> str | None:
    """The module name of the first ModuleNotFoundError in ``exc``'s cause/context chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def comfy_env(part: str) -> dict:
    """Import ComfyUI's library modules (``COMFYUI_PATH``, relative paths allowed) and this pack under
    ``comfy_support.PACK_MODULE``; returns facts for the results file.  Clear errors for a missing package."""
    from training import comfyui  # puts ComfyUI in CPU mode first when there is no CUDA

    check_packages(part)
    stubbed = stub_missing()
    try:
        comfyui.import_comfy()
        for name in ("comfy.sample", "comfy.samplers", "comfy.supported_models", "comfy.model_patcher"):
            importlib.import_module(name)
        load_pack()
    except Exception as e:  # noqa: BLE001 - name the package when one is missing
        name = missing_from(e)
        if name:
            raise MissingPackage(missing_message([name], part)) from e
        raise
    root = comfyui.comfy_root()
    version = getattr(sys.modules.get("comfyui_version"), "__version__", None)
    if version is None and root is not None and (root / "comfyui_version.py").is_file():
        version = (root / "comfyui_version.py").read_text().split("__version__ =")[-1].strip().strip("\"'")
    return {"comfyui_version": version, "comfyui_path": clean(str(root)), "stubbed_packages": stubbed}


# --- the results file ---------------------------------------------------------------------------------

def clean(text: str) -> str:
    """``text`` without this machine's paths (the repository becomes '.', the home folder '~')."""
    return str(text).replace(str(ROOT), ".").replace(str(Path.home()), "~")


def finite(value):
    """JSON-safe copy: NaN/inf become None (strict JSON), tuples lists, paths cleaned strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, Path):
        return clean(str(value))
    return value


def device_header(toy: bool) -> dict:
    """Device name, torch/CUDA/Python versions and the mode, for every results file."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name(0)
    else:
        from training.bench import cpu_name
        device = f"cpu: {cpu_name()}, {os.cpu_count()} cores visible"
    return {"toy": toy, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "python": platform.python_version()}


class PartReport:
    """``DIR/<part>.json``: rewritten (atomically) on every update, so a part killed midway leaves what it had."""

    def __init__(self, out_dir: Path, part: str, toy: bool, settings: dict, deadline: float | None = None):
        self.path = Path(out_dir) / f"{part}.json"
        self.t0 = time.perf_counter()
        self.data = {"part": part, **device_header(toy), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "budget_s": round(deadline - time.time(), 1) if deadline else None, "settings": settings,
                     "complete": False}

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.data["wall_s"] = round(time.perf_counter() - self.t0, 1)
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(data), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def error_fields(exc: BaseException) -> dict:
    """``{"error": one line, "traceback": its last lines}`` with this machine's paths removed."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": clean(f"{type(exc).__name__}: {exc}"), "traceback": clean(tb[-3000:])}


def time_left(deadline: float | None) -> float:
    return float("inf") if deadline is None else deadline - time.time()
