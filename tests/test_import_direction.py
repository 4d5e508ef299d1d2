"""The method library stands alone: nothing under comfy_nag/ imports upward (the trainer, the studies,
the nodes) or ComfyUI, and nothing puts the repository on sys.path to reach them."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPWARD = {"training", "studies", "nodes"}
COMFYUI = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
           "latent_preview", "node_helpers"}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute top-level module) of every import in a comfy_nag file; relative imports resolved."""
    pkg_depth = len(path.relative_to(root).parts) - 1  # comfy_nag/x.py -> 1
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.lineno, node.module.split(".")[0]))
            elif node.level > pkg_depth:  # climbs out of comfy_nag: ..nodes, ...
                parts = (node.module or "").split(".")
                out.append((node.lineno, parts[0] or "<repository root>"))
    return out


def test_comfy_nag_imports_nothing_upward_or_from_comfyui():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p in sorted((ROOT / "comfy_nag").rglob("*.py")) for line, mod in _imports(p)
           if mod in UPWARD | COMFYUI or mod == "<repository root>"]
    assert not bad, "comfy_nag/ must hold only the method:\n" + "\n".join(bad)


def test_importing_every_comfy_nag_module_loads_no_upward_package():
    """At run time too (lazy imports included): import every module, then look at sys.modules."""
    mods = [f"comfy_nag.{p.stem}" for p in sorted((ROOT / "comfy_nag").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "from comfy_nag import samplers\n"
            "samplers.time_shift_level_fn('ve', 1.0)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(UPWARD | COMFYUI)!r}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing comfy_nag loaded {r.stdout.strip()}"


def test_no_sys_path_manipulation_in_the_library_or_the_studies():
    bad = []
    for p in sorted([*(ROOT / "comfy_nag").rglob("*.py"), *(ROOT / "studies").rglob("*.py")]):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "sys.path is changed in " + ", ".join(bad)


def test_the_checker_sees_upward_imports(tmp_path):
    """The first test can fail: a file importing the trainer, a node module or ComfyUI is caught."""
    pkg = tmp_path / "comfy_nag"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import comfy.model_management\nfrom training import api\nfrom ..nodes import hooks\n")
    assert [m for _, m in _imports(pkg / "bad.py", tmp_path)] == ["comfy", "training", "nodes"]
