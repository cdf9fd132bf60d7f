"""The package's layering, read from the source with ``ast`` (nothing is imported):

- no import cycle among the modules of ``segros``, counting every import statement, also those
  inside functions and under ``TYPE_CHECKING``;
- the application layer ``segros.apps`` is imported only from inside it (``segros.cli`` names
  its command modules as strings, so it imports nothing of it either);
- no module is named like a standard-library module (``segros/inspect.py`` shadowed ``inspect``);
- every document a source file cites (``docs/design.md``, ``PROVENANCE.md``, ...) exists.

Run as a script (``python tests/test_architecture.py``) it prints the graph's size and any cycle.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
APPS = "segros.apps"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the segros package."""
    out = {}
    for path in sorted((src / "segros").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` lives in: itself, or the nearest package or module above it."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the segros modules its import statements load (``from a import b`` counts
    ``a.b`` when that is a module, else ``a``)."""
    known = modules() if known is None else known
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up level - 1 packages from this module's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                owner = _owner(target, known) if target.split(".")[0] == "segros" else None
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was read
    assert cycles(graph) == []


def test_nothing_below_the_application_layer_imports_it():
    graph = import_graph()
    within = {t for name, targets in graph.items() if name.startswith(APPS + ".") for t in targets}
    assert "segros.apps.report" in within  # the demo's import of its report was read
    below = {
        name: sorted(t for t in targets if t == APPS or t.startswith(APPS + "."))
        for name, targets in graph.items()
        if not (name == APPS or name.startswith(APPS + "."))
    }
    assert {name: found for name, found in below.items() if found} == {}


def test_no_module_is_named_like_a_standard_library_module():
    clash = [name for name in modules() if name.rpartition(".")[2] in sys.stdlib_module_names]
    assert clash == []


def test_every_document_the_source_cites_is_in_the_repository():
    """A ``something.md`` named in a source file exists: a path (``docs/design.md``) from the
    repository root, a bare name (``PROVENANCE.md``) somewhere in the repository."""
    repo = SRC.parent
    present = {p.name for p in repo.rglob("*.md") if ".venv" not in p.parts}
    cited = {}
    for path in [*SRC.rglob("*.py"), *(repo / "benchmarks").rglob("*.py")]:
        for name in re.findall(r"[\w./-]*\w\.md\b", path.read_text()):
            found = (repo / name).is_file() if "/" in name else name in present
            if not found:
                cited.setdefault(name, []).append(str(path.relative_to(repo)))
    assert len(present) > 3  # the repository's documents were found
    assert cited == {}


if __name__ == "__main__":
    graph = import_graph()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges inside segros")
    for component in cycles(graph):
        print("cycle:", " -> ".join(component))
    print("cycles:", len(cycles(graph)))
