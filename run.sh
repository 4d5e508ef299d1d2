#!/usr/bin/env bash
# Set up the project's virtual environment on first use (or when pyproject.toml changes),
# then run the given command inside it.  Examples:
#   ./run.sh python -m studies demo --out demo_out
#   ./run.sh python -m pytest
# TORCH_SPEC picks the torch build installed when none is present (default: the CPU wheel
# this project is tested with); NAG_VENV picks the environment folder (default .venv).
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
  "$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/python" -m pip install -q "$torch_spec"
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
