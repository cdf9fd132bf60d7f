"""The package's layering, read from the source with ``ast`` (nothing is imported):

- every module has a layer in the table of ``docs/design.md`` ("## Layers"), and no import goes
  up a layer (to a later row of that table), counting every import statement, also those inside
  functions and under ``TYPE_CHECKING``;
- no import cycle among the modules of ``segros``, nor among its packages (``segros.data``,
  ``segros.train``, ... and each top-level module as one node);
- the application layer ``segros.apps`` is imported only from inside it (``segros.cli`` names
  its command modules as strings, so it imports nothing of it either);
- no module of the model layer (``segros.backbones``) imports ShapesWorld (``segros.data.shapes``
  and its sibling modules): a model takes its words and fitting images from a named corpus
  (``segros.data.corpora``), so it holds no data source;
- no module is named like a standard-library module (``segros/inspect.py`` shadowed ``inspect``);
- every document a source file cites (``docs/design.md``, ``PROVENANCE.md``, ...) exists.

Run as a script (``python tests/test_architecture.py``) it prints the graph's size, every upward
import, any cycle and any backbone importing ShapesWorld.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
DESIGN = SRC.parent / "docs" / "design.md"
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


def layer_table(text: str | None = None) -> list[tuple[str, list[str]]]:
    """``(layer, dotted module prefixes)`` of each row of the table under ``## Layers`` in
    docs/design.md, lowest layer first. A row's second column names paths under ``src/segros``
    in backticks: ``grounding.py`` (a module), ``data/`` (a package and all in it),
    ``__init__.py`` (the package ``segros`` itself)."""
    text = DESIGN.read_text() if text is None else text
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= {"-"} or cells[0] == "layer":
            continue
        paths = re.findall(r"`([^`]+)`", cells[1])
        rows.append((cells[0], [_dotted(path) for path in paths]))
    return rows


def _dotted(path: str) -> str:
    """``train/cli.py`` -> ``segros.train.cli``; ``data/`` -> ``segros.data``;
    ``__init__.py`` -> ``segros``."""
    parts = [p for p in path.removesuffix(".py").split("/") if p and p != "__init__"]
    return ".".join(["segros", *parts])


def layer_of(names: list[str], table: list[tuple[str, list[str]]]) -> dict[str, int]:
    """Module -> index of its row in ``table``: the row naming it or the package it is in, the
    most specific path deciding. Modules no row names are left out."""
    out = {}
    for name in names:
        best = max(
            ((len(prefix), row) for row, (_, prefixes) in enumerate(table) for prefix in prefixes
             if name == prefix or name.startswith(prefix + ".")),
            default=None,
        )  # fmt: skip
        if best is not None:
            out[name] = best[1]
    return out


def upward_imports(graph: dict[str, set[str]], layer: dict[str, int]) -> list[tuple[str, str]]:
    """``(importer, imported)`` for every import of a module in a higher layer than the importer
    (a module without a layer is the other test's failure, not this one's)."""
    placed = {a: {b for b in targets if b in layer} for a, targets in graph.items() if a in layer}
    return sorted((a, b) for a, targets in placed.items() for b in targets if layer[b] > layer[a])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each package of ``segros`` (and each top-level module) as one node."""

    def node(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {node(name): set() for name in graph}
    for name, targets in graph.items():
        out[node(name)] |= {node(t) for t in targets if node(t) != node(name)}
    return out


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


def test_the_layer_checks_find_what_they_look_for():
    text = "# Design\n## Layers\n\n| layer | modules |\n|---|---|\n"
    table = layer_table(text + "| low | `a.py`, `p/` |\n| high | `p/top.py` |\n\n## Next\n")
    assert table == [("low", ["segros.a", "segros.p"]), ("high", ["segros.p.top"])]
    names = ["segros.a", "segros.p.x", "segros.p.top", "segros.stray"]
    layer = layer_of(names, table)
    assert layer == {"segros.a": 0, "segros.p.x": 0, "segros.p.top": 1}
    graph = {"segros.a": {"segros.p.top"}, "segros.p.x": {"segros.a"}, "segros.p.top": {"segros.p.x"}}
    assert upward_imports(graph, layer) == [("segros.a", "segros.p.top")]
    # a -> p.q and p.r -> a: no cycle among modules, but the packages a and p import each other
    split = {"segros.a": {"segros.p.q"}, "segros.p.q": set(), "segros.p.r": {"segros.a"}}
    assert cycles(split) == [] and cycles(package_graph(split)) == [["segros.a", "segros.p"]]


def test_every_module_has_a_layer_and_every_row_names_modules():
    known = modules()
    table = layer_table()
    assert [name for name, _ in table][:2] == ["core", "storage"] and len(table) >= 6
    assert sorted(set(known) - set(layer_of(list(known), table))) == []
    named = [prefix for _, prefixes in table for prefix in prefixes]
    assert sorted(p for p in named if p not in known) == []  # every path in the table exists
    assert len(named) == len(set(named))


def test_no_import_goes_up_a_layer():
    """Imports inside functions count: a lazy import is still a dependency."""
    graph = import_graph()
    table = layer_table()
    layer = layer_of(list(graph), table)
    up = upward_imports(graph, layer)
    assert [f"{a} ({table[layer[a]][0]}) imports {b} ({table[layer[b]][0]})" for a, b in up] == []


def test_no_import_cycle_among_packages():
    packages = package_graph(import_graph())
    assert {"segros.data", "segros.backbones", "segros.train", "segros.eval"} <= set(packages)
    assert "segros.backbones" in packages["segros.train"]  # the package edges were read
    assert cycles(packages) == []


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


WORLD = "segros.data.shapes"
MODELS = "segros.backbones"


def world_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` for every import of ShapesWorld (``segros.data.shapes`` or a
    ``segros.data.shapes_*`` module) by a module of ``segros.backbones``."""
    return sorted(
        (name, target)
        for name, targets in graph.items()
        if name == MODELS or name.startswith(MODELS + ".")
        for target in targets
        if target == WORLD or target.startswith(WORLD + ".") or target.startswith(WORLD + "_")
    )


def test_the_world_check_finds_a_function_local_import(tmp_path):
    files = {
        "segros/__init__.py": "",
        "segros/data/__init__.py": "",
        "segros/data/shapes.py": "def vocabulary(): return []\n",
        "segros/data/corpora.py": "from segros.data.shapes import vocabulary\n",
        "segros/backbones/__init__.py": "",
        "segros/backbones/good.py": "from segros.data import corpora\n",
        "segros/backbones/bad.py": "def f():\n    from segros.data import shapes\n    return shapes\n",
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    graph = import_graph(modules(tmp_path))
    assert world_imports(graph) == [("segros.backbones.bad", WORLD)]


def test_no_backbone_imports_shapesworld():
    """Function-local imports count: the tiny tokenizers' words and images come from
    ``segros.data.corpora``, which the config names (``model.corpus``, ``model.tokenizer``)."""
    graph = import_graph()
    assert "segros.data.corpora" in graph["segros.backbones.tiny.adapter"]  # the backbones were read
    assert world_imports(graph) == []


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
    table = layer_table()
    layer = layer_of(list(graph), table)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges inside segros")
    for row, (name, _) in enumerate(table):
        print(f"layer {row} {name}: {sum(v == row for v in layer.values())} modules")
    for name in sorted(set(graph) - set(layer)):
        print("no layer:", name)
    up = upward_imports(graph, layer)
    for a, b in up:
        print(f"upward: {a} ({table[layer[a]][0]}) -> {b} ({table[layer[b]][0]})")
    print("upward imports:", len(up))
    for component in cycles(graph):
        print("module cycle:", " -> ".join(component))
    for component in cycles(package_graph(graph)):
        print("package cycle:", " -> ".join(component))
    print(f"cycles: {len(cycles(graph))} among modules, {len(cycles(package_graph(graph)))} among packages")
    for a, b in world_imports(graph):
        print(f"model imports ShapesWorld: {a} -> {b}")
