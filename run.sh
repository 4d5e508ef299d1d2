#!/usr/bin/env bash
# Set up the project's virtual environment on first use (or when pyproject.toml changes),
# then run the given command inside it.  Examples:
#   ./run.sh python -m studies demo --out demo_out
#   ./run.sh python -m pytest
# torch is not in pyproject's dependencies (ComfyUI brings its own), so this script installs it first
# when the environment has none.  TORCH_SPEC is what pip is asked for (default torch==2.13.0, the
# version the project is tested with).  Which build that gives depends on where pip looks: from PyPI on
# Linux x86_64 it is the CUDA build (it pulls in the nvidia-* CUDA runtime packages; it also runs on CPU); on a
# machine whose pip config offers a local torch-2.13.0+cpu wheel (as this project's CI has) pip picks
# that CPU build.  For the CPU-only build from PyTorch's own index:
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" ./run.sh ...
# NAG_VENV picks the environment folder (default .venv).
# The command runs in the caller's folder (relative paths mean what they say); the repository root
# is put on PYTHONPATH so `python -m training` works from anywhere.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
venv=${NAG_VENV:-.venv}
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
torch_spec=${TORCH_SPEC:-torch==2.13.0}
stamp="$venv/.installed-$(sha1sum "$root/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[run.sh] setting up $venv (first run or pyproject.toml changed)..." >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
  "$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/python" -m pip install -q $torch_spec
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
