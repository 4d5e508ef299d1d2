"""The code's shape: no import cycle in any package (imports inside functions count), no study importing
another study (they share studies/toolkit.py), no module of the nodes importing its package, and no function
over 80 lines.  Read from the source with ``ast``, so a deferred import cannot hide a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("comfy_nag", "nodes", "training", "studies")
STUDIES = {"demo", "fidelity", "capacity", "cg_estimator", "last_step", "bench_images", "bench_cost"}
MAX_LINES = 80
# Absolute imports of these names are ComfyUI's own top-level modules (its nodes.py): the pack reaches its
# ``nodes`` package only through relative imports, since ComfyUI imports it under the install folder's name.
HOST_MODULES = {"nodes"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """``{module: modules of the same packages it imports}``, every import statement included (also inside
    functions); ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files and a.name.split(".")[0] not in HOST_MODULES}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 0 and base.split(".")[0] in HOST_MODULES:
                    continue
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in files else base)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_any_package():
    assert cycles(import_graph()) == []


def is_study(module: str) -> bool:
    return module.startswith("studies.") and module.split(".")[-1] in STUDIES


def study_imports(graph) -> list[str]:
    return [f"{m} imports {d}" for m, deps in graph.items() if is_study(m) for d in sorted(deps) if is_study(d)]


def upward_node_imports(graph) -> list[str]:
    return [m for m, deps in graph.items() if m.startswith("nodes.") and "nodes" in deps]


def test_no_study_imports_another_study():
    bad = study_imports(import_graph())
    assert not bad, "studies share the toolkit, not each other:\n" + "\n".join(bad)


def test_no_module_of_the_nodes_imports_its_own_package():
    assert upward_node_imports(import_graph()) == []


def long_functions(paths, limit: int = MAX_LINES) -> list[str]:
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines():
    paths = [p for d in (*PACKAGES, "benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    paths.append(ROOT / "__init__.py")
    assert long_functions(paths) == []


def test_the_checks_can_fail(tmp_path):
    """A cycle hidden in a function, a study importing a study and an upward import are all seen."""
    for pkg, files in {"pa": {"__init__.py": "", "a.py": "from . import b\n",
                              "b.py": "def f():\n    from .a import g\n"},
                       "studies": {"__init__.py": "", "demo.py": "", "toolkit.py": "",
                                   "fidelity.py": "def f():\n    from . import demo, toolkit\n"},
                       "nodes": {"__init__.py": "X = 1\n", "loader.py": "from . import X\nfrom nodes import f\n"}}.items():
        (tmp_path / pkg).mkdir()
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    graph = import_graph(tmp_path, ("pa", "studies", "nodes"))
    assert cycles(graph) == [["pa.a", "pa.b"]]
    assert study_imports(graph) == ["studies.fidelity imports studies.demo"]
    assert upward_node_imports(graph) == ["nodes.loader"]
    assert long_functions([Path(__file__)], limit=5)
