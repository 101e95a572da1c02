"""The package's import graph: no circles, and lower floors never import higher ones.

Read from the source with `ast` (module-level *and* function-level imports: a function-level
import is still a dependency, it only moves the failure to run time), so the rule holds for
code paths no test happens to execute. The floors, lowest first, are what the code does:

    utils, errors < data < diffusion, models < evaluation < distill < pipeline, presets < cli

(distill evaluates its students, so evaluation sits below it; a package's `commands.py`, its
CLI sub-commands, lives on the package's floor). A new top-level module needs a floor below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinyshot

ROOT = Path(tinyshot.__file__).resolve().parent

FLOORS: dict[str, int] = {
    "tinyshot": 0,  # the package __init__: version and the base error only
    "tinyshot.errors": 0,
    "tinyshot.utils": 0,
    "tinyshot.data": 1,
    "tinyshot.diffusion": 2,
    "tinyshot.models": 2,
    "tinyshot.evaluation": 3,
    "tinyshot.distill": 4,
    "tinyshot.pipeline": 5,
    "tinyshot.presets": 5,  # named PipelineConfig values
    "tinyshot.cli": 6,
}


def module_files(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py file under root."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the tinyshot modules it imports anywhere in its body.

    `from a.b import c` points at a.b.c when that is a module, else at a.b; `import a.b.c`
    points at the deepest existing module. The parent packages Python also initialises are
    not edges: a package __init__ that re-exports its modules is not a circle.
    """
    mods = module_files(root)

    def existing(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {existing(a.name) for a in node.names if a.name.startswith("tinyshot")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                if module.split(".")[0] != "tinyshot":
                    continue
                for a in node.names:
                    full = f"{module}.{a.name}"
                    targets.add(full if full in mods else existing(module))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def floor(module: str) -> int | None:
    """The floor of the longest FLOORS entry that is module or a package above it."""
    above = [p for p in FLOORS if module == p or (p != "tinyshot" and module.startswith(p + "."))]
    return FLOORS[max(above, key=len)] if above else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} (floor {floor(a)}) -> {b} (floor {floor(b)})"
        for a, targets in graph.items()
        for b in targets
        if (floor(b) or 0) > (floor(a) or 0)
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_module_and_function_level_imports(graph):
    # module level, relative-free absolute import of a sibling module
    assert "tinyshot.pipeline.benchmark.tasks" in graph["tinyshot.pipeline.benchmark.runners"]
    # function level (inside a command handler)
    assert "tinyshot.pipeline.benchmark" in graph["tinyshot.pipeline.commands"]
    # `from package import module` points at the module
    assert "tinyshot.utils.threads" in graph["tinyshot.cli"]
    assert len(graph) > 80


def test_cycle_and_floor_checks_catch_violations():
    g = {
        "tinyshot.data.a": {"tinyshot.data.b"},
        "tinyshot.data.b": {"tinyshot.data.a", "tinyshot.pipeline.x"},
        "tinyshot.pipeline.x": {"tinyshot.utils.y"},
        "tinyshot.utils.y": set(),
    }
    assert cycles(g) == [["tinyshot.data.a", "tinyshot.data.b"]]
    assert upward_imports(g) == ["tinyshot.data.b (floor 1) -> tinyshot.pipeline.x (floor 5)"]


def test_every_module_has_a_floor(graph):
    assert [m for m in graph if floor(m) is None] == []


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "modules that import each other (directly or around a circle):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_lower_floors_never_import_higher_ones(graph):
    found = upward_imports(graph)
    assert not found, f"imports from a lower floor to a higher one ({FLOORS}):\n" + "\n".join(found)
