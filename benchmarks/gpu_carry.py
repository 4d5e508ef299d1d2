"""Get ready, on this machine, what ``benchmarks/gpu_check.py`` needs on the GPU machine beside the working tree.

    python benchmarks/gpu_carry.py [--comfyui PATH]

* ``.comfyui/``: ComfyUI's library folders and the root modules they import (no frontend, no custom nodes,
  no models, no caches), copied from ``--comfyui`` (default ``$COMFYUI_PATH``, else ``~/comfy/ComfyUI``);
* ``.whl/``: the wheels of the Python packages ComfyUI's library modules import that the GPU machine's
  python3 lacks (``pip download`` for CPython 3.12 on manylinux x86-64; ``av``, needed only by ComfyUI's video
  I/O, is stubbed by the script instead: its wheel alone is 36 MB).

Both folders must be ignored by git (``.whl/`` is in .gitignore; for ``.comfyui/`` add ``/.comfyui/`` to
.gitignore or .git/info/exclude); the device tool's ``carry`` names them.  Prints their sizes, the size of
what travels in all (limit 64 MiB) and the command to run there (docs/gpu/README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what ComfyUI's library modules import from its root (read off sys.modules after the parts' imports)
COMFY_ITEMS = ("comfy", "comfy_api", "comfy_execution", "comfy_config", "folder_paths.py", "node_helpers.py",
               "protocol.py", "comfyui_version.py", "latent_preview.py", "LICENSE")
WHEELS = ("torchsde==0.2.6", "trampoline==0.1.2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
           ".whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 COMFYUI_PATH=.comfyui python3 "
           "benchmarks/gpu_check.py --out $OUT/gpu 2>&1 | tee $OUT/gpu_check.log")


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def copy_comfyui(src: Path, dest: Path) -> None:
    if not (src / "comfy" / "model_base.py").is_file():
        sys.exit(f"gpu_carry: no ComfyUI at {src} (set --comfyui or COMFYUI_PATH)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in COMFY_ITEMS:
        s = src / item
        if s.is_dir():
            shutil.copytree(s, dest / item, ignore=ignore)
        elif s.is_file():
            shutil.copy2(s, dest / item)


def download_wheels(dest: Path, python_version: str) -> None:
    dest.mkdir(exist_ok=True)
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", *plats, "-d", str(dest), *WHEELS]
    subprocess.run(cmd, check=True)


def travelling_bytes() -> int:
    """Tracked and untracked-but-not-ignored files: what travels without being named in carry."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return sum((ROOT / f).stat().st_size for f in r.stdout.split("\0") if f and (ROOT / f).is_file())


def ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI"))
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's python3 (3.12 when last seen)")
    ap.add_argument("--no-download", action="store_true", help="copy ComfyUI only (the wheels are already there)")
    args = ap.parse_args(argv)
    comfy, whl = ROOT / ".comfyui", ROOT / ".whl"
    copy_comfyui(Path(args.comfyui).expanduser(), comfy)
    if not args.no_download:
        download_wheels(whl, args.python_version)
    for p in (comfy, whl):
        if not ignored(p):
            print(f"gpu_carry: {p.name}/ is not ignored by git: add '/{p.name}/' to .gitignore or .git/info/exclude "
                  "(else it travels anyway, and may be committed by mistake)")
    tree, c, w = travelling_bytes(), size(comfy), size(whl) if whl.exists() else 0
    total = tree + (c if ignored(comfy) else 0) + (w if ignored(whl) else 0)
    print(f"gpu_carry: .comfyui {c / 2**20:.1f} MiB, .whl {w / 2**20:.1f} MiB ({', '.join(WHEELS)}), working tree "
          f"{tree / 2**20:.1f} MiB: {total / 2**20:.1f} MiB travel (limit 64 MiB)")
    print(f"device run: carry [\".comfyui\", \".whl\"], timeout_s 600, command:\n{COMMAND}")
    return 0 if total < 64 * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
