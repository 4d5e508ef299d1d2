"""The code's shape: no import cycle in any package (imports inside functions count), no study importing
another study or its parts (they share studies/toolkit.py, runs.py, harness.py), no module of the nodes importing
its package; short modules, functions and interfaces; options compared as values, never as display strings.  Read
from the source with ``ast``, so a deferred import cannot hide a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("comfy_nag", "nodes", "training", "studies")
STUDIES = {"demo", "fidelity", "capacity", "cg_estimator", "last_step", "bench_images", "bench_cost", "auto_bound"}
# a study's own modules (its settings, its report): only the modules of that study import them
STUDY_PARTS = {"demo_report": "demo", "fidelity_recipes": "fidelity", "fidelity_report": "fidelity",
               "bench_digits": "bench_images", "bench_report": "bench_images"}
MAX_LINES = 80  # tests
CODE = (*PACKAGES, "benchmarks")  # the project's code: the limits below hold there
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_PARAMETERS = 60, 450, 8
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


def study_of(module: str) -> str | None:
    """The study a module of ``studies`` belongs to (itself or one of its :data:`STUDY_PARTS`); None for shared ones."""
    name = module.split(".")[-1]
    if not module.startswith("studies."):
        return None
    return name if name in STUDIES else STUDY_PARTS.get(name)


def study_imports(graph) -> list[str]:
    """Imports of a study's module by a module of another study, and of a study's part by any module outside it."""
    return sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                  if study_of(d) and study_of(d) != study_of(m) and (study_of(m) or d.split(".")[-1] in STUDY_PARTS))


def upward_node_imports(graph) -> list[str]:
    return [m for m, deps in graph.items() if m.startswith("nodes.") and "nodes" in deps]


def test_no_study_imports_another_study_or_its_parts():
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


def code_files(root: Path = ROOT) -> list[Path]:
    return [p for d in CODE for p in sorted((root / d).rglob("*.py"))]


def wide_functions(paths, limit: int = MAX_PARAMETERS) -> list[str]:
    """Functions with more than ``limit`` named parameters (self/cls not counted; ``*args``/``**kwargs`` neither)."""
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                n = len(names) - (names[:1] in (["self"], ["cls"]))
                if n > limit:
                    out.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} parameters)")
    return out


def test_functions_modules_and_interfaces_are_short():
    paths = code_files()
    assert long_functions(paths, MAX_FUNCTION_LINES) == []
    assert wide_functions(paths) == []
    long_modules = [f"{p.relative_to(ROOT)} ({n} lines)" for p in paths if (n := p.read_text().count("\n")) > MAX_MODULE_LINES]
    assert long_modules == []


def ui_strings(root: Path = ROOT) -> set[str]:
    """The strings the nodes' option enums show in the UI (the values of the enums in nodes/inputs.py and those of
    comfy_nag it uses: Variant, WindowUnit, NullTimestepSource)."""
    out = set()
    for rel in ("nodes/inputs.py", "comfy_nag/guidance.py", "comfy_nag/patching.py"):
        for cls in ast.walk(ast.parse((root / rel).read_text())):
            if isinstance(cls, ast.ClassDef) and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in cls.bases):
                out |= {n.value.value for n in cls.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    return out


def string_dispatch(paths, strings: set[str]) -> list[str]:
    """Comparisons of a value with one of ``strings`` (``==``, ``!=``, ``in``), a method-name prefix test
    (``.startswith("nag_...")``) or an option list indexed by position (``NULL_BRANCHES[...]``)."""
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            where = f"{p.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                for c in [node.left, *node.comparators]:
                    if isinstance(c, (ast.Tuple, ast.List, ast.Set)):
                        consts += [e.value for e in c.elts if isinstance(e, ast.Constant)]
                if any(isinstance(v, str) and v in strings for v in consts):
                    out.append(f"{where} compares with a UI string")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
                  and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("nag_")):
                out.append(f"{where} dispatches on a method-name prefix")
            elif isinstance(node, ast.Subscript) and getattr(node.value, "id", "") in ("NULL_BRANCHES", "SCALE_RULES", "BATCHING"):
                out.append(f"{where} indexes an option list")
    return out


def test_options_are_values_not_display_strings():
    """The nodes (where UI strings arrive) compare no value with a UI string; no code dispatches on a method-name
    prefix or indexes an option list."""
    strings = ui_strings()
    assert {"one forward", "from estimator", "per level (from file)", "signal", "auto", "A"} <= strings
    nodes = [p for p in code_files() if p.parts[len(ROOT.parts)] == "nodes"]
    assert string_dispatch(nodes, strings) == []
    assert string_dispatch(code_files(), set()) == []


def test_the_library_takes_no_space_or_null_source_strings():
    bad = []
    for p in sorted((ROOT / "comfy_nag").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.arg) and node.arg == "space" and "Space" not in ast.unparse(node.annotation or ast.Constant(None)):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} space: {ast.unparse(node.annotation) if node.annotation else '?'}")
            if isinstance(node, (ast.arg, ast.Name, ast.Attribute)) and "null_source" in (getattr(node, "arg", None) or getattr(node, "id", None) or getattr(node, "attr", "")):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} null_source")
    assert bad == []


def test_the_checks_can_fail(tmp_path):
    """A cycle hidden in a function, a study importing a study or another study's part, a shared module importing a
    study's part, and an upward import are all seen; a study importing its own part is not."""
    for pkg, files in {"pa": {"__init__.py": "", "a.py": "from . import b\n",
                              "b.py": "def f():\n    from .a import g\n"},
                       "studies": {"__init__.py": "", "demo.py": "from .demo_report import f\n", "toolkit.py": "",
                                   "demo_report.py": "", "harness.py": "from . import demo_report\n",
                                   "capacity.py": "from . import demo_report\n",
                                   "fidelity.py": "def f():\n    from . import demo, toolkit\n"},
                       "nodes": {"__init__.py": "X = 1\n", "loader.py": "from . import X\nfrom nodes import f\n"}}.items():
        (tmp_path / pkg).mkdir()
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    graph = import_graph(tmp_path, ("pa", "studies", "nodes"))
    assert cycles(graph) == [["pa.a", "pa.b"]]
    assert study_imports(graph) == ["studies.capacity imports studies.demo_report", "studies.fidelity imports studies.demo",
                                    "studies.harness imports studies.demo_report"]
    assert upward_node_imports(graph) == ["nodes.loader"]
    assert long_functions([Path(__file__)], limit=5)
    (tmp_path / "bad.py").write_text("def f(a, b, c, d, e, f, g, h, i):\n    if v == 'one forward' or m.startswith('nag_cf'):\n"
                                     "        return BATCHING[0]\n")
    bad = tmp_path / "bad.py"
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert wide_functions([bad]) == ["bad.py:1 f (9 parameters)"]
        assert [w.split(" ", 1)[1] for w in string_dispatch([bad], {"one forward"})] == [
            "compares with a UI string", "dispatches on a method-name prefix", "indexes an option list"]
    finally:
        ROOT = root
