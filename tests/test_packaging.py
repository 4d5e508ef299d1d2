"""What a ComfyUI user installs: requirements that never touch torch, a registry archive without the
test suite, a thumbnail per shipped workflow, and no paths of the machines this project was built on."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = ("torch", "torchvision", "torchaudio", "xformers", "accelerate", "kornia", "diffusers")  # torch or pulling it in

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower()


def test_requirements_match_dependencies_and_leave_torch_alone():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert sorted(reqs) == sorted(project["dependencies"])
    assert not [r for r in reqs if _name(r) in TORCH], reqs


def test_registry_archive_leaves_out_tests_and_studies():
    ignored = [line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for folder in ("tests/", "benchmarks/", "studies/", "docs/bench/", "docs/demo/", "docs/fidelity/"):
        assert folder in ignored
    for kept in ("nodes/", "comfy_nag/", "example_workflows/", "__init__.py"):
        assert not any(kept.startswith(i) for i in ignored), kept
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])


def test_every_shipped_workflow_has_a_thumbnail_and_a_note():
    flows = sorted((ROOT / "example_workflows").glob("*.json"))
    assert flows
    for wf in flows:
        jpg = wf.with_suffix(".jpg")
        assert jpg.exists() and jpg.read_bytes()[:3] == b"\xff\xd8\xff", jpg  # a real JPEG
        ui = json.loads(wf.read_text())
        assert any(n["type"] == "Note" for n in ui["nodes"]), wf.name


def test_no_machine_paths_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
    pattern = re.compile(r"(?<![\w.<>-])/work/|/root/|comfy_venv")  # this machine's worktrees, home folder, venv
    hits = []
    for f in files:
        p = ROOT / f
        if not f or f == "tests/test_packaging.py" or p.suffix not in {".py", ".md", ".toml", ".sh", ".txt", ".yml", ".yaml", ".json"} \
                or not p.is_file():
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{f}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
