"""The import graph of ``higgs_train``, measured against the layer order ARCHITECTURE.md defines (issue 22).

Why a tool and not a picture: a layering holds only while something checks it. This reads the sources with ``ast``
(nothing is imported: a fraction of a second, no torch or Ray) and prints the figures issue 22 sets goals for;
``tests/unit/test_import_layers.py`` holds the code to them through ``violations()``.

* Every file is a node. Every import of a project module is an arrow, module-level or inside a function (a lazy
  import still runs when the function runs; hiding it only hides the dependency), and ``from higgs_train.x import
  y`` points at ``x.y`` when ``y`` is a submodule. A package ``__init__`` gets an arrow only when a name is taken
  from it: the interpreter running it first is mechanics, not a dependency the author wrote.
* Floors: a module stands one floor above everything it imports; with cycles collapsed into one node, the floors
  are the modules on the longest chain. A cycle: a strongly connected component of more than one file.
* Back up: an arrow to a higher layer of ARCHITECTURE.md's ``import-layers`` block (bottom layer first; a module
  belongs to its longest listed prefix; a layer imports itself freely). The order lives there, not here.

    python scripts/import_graph.py             # floors, cycles, back-up imports, long files
    python scripts/import_graph.py --mermaid   # the layer-level graph, for ARCHITECTURE.md (or --dot)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "higgs_train"
MAX_LINES = 450
MAX_FLOORS = 9
LAYERS_BLOCK = re.compile(r"^```import-layers\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Layer:
    """One line of the ``import-layers`` block: ``name: prefix prefix ...`` (prefixes dotted, under the package)."""

    name: str
    prefixes: tuple[str, ...]


@dataclass
class ImportGraph:
    """``edges[a]``: the modules file ``a`` imports, dotted without ``higgs_train.`` (the root package: ``__init__``)."""

    edges: dict[str, set[str]]
    lines: dict[str, int]


def module_name(root: Path, path: Path) -> str:
    """``data/chatml.py`` -> ``data.chatml``; a package by its folder, the root package as ``__init__``."""
    parts = path.relative_to(root / PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules one file imports, resolved against ``known`` (relative imports included)."""

    def inner(dotted: str) -> str | None:
        short = "__init__" if dotted == PACKAGE else dotted.removeprefix(f"{PACKAGE}.")
        return short if short != dotted and short in known else None

    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = [PACKAGE, *([] if name == "__init__" else name.split("."))]
                anchor = anchor[: len(anchor) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            targets += [f"{base}.{alias.name}" if inner(f"{base}.{alias.name}") else base for alias in node.names]
    return {module for module in map(inner, targets) if module and module != name}


def build_graph(root: Path = ROOT) -> ImportGraph:
    """Parse every ``.py`` file under ``root/higgs_train``."""
    files = {module_name(root, path): path for path in sorted((root / PACKAGE).rglob("*.py"))}
    edges, lines = {}, {}
    for name, path in files.items():
        text = path.read_text()
        lines[name] = len(text.splitlines())
        edges[name] = imports_of(ast.parse(text, str(path)), name, path.name == "__init__.py", set(files))
    return ImportGraph(edges, lines)


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` reaches, itself included."""
    seen, todo = {start}, [start]
    while todo:
        for dep in edges.get(todo.pop(), set()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def components(edges: dict[str, set[str]]) -> dict[str, tuple[str, ...]]:
    """Each module's strongly connected component: the modules it reaches that reach it back (quadratic, and
    instant for a hundred files; simpler to trust than Tarjan's)."""
    reached = {node: reach(edges, node) for node in edges}
    return {node: tuple(sorted(m for m in reached[node] if node in reached[m])) for node in edges}


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    return sorted({component for component in components(edges).values() if len(component) > 1})


def long_files(graph: ImportGraph) -> list[tuple[int, str]]:
    return sorted(((count, name) for name, count in graph.lines.items() if count > MAX_LINES), reverse=True)


def unplaced(graph: ImportGraph, layers: list[Layer]) -> list[str]:
    return sorted(name for name in graph.edges if not placement(name, layers))


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest chain with each cycle collapsed (its first member names it); its length is the floors."""
    component = components(edges)

    @cache
    def chain(members: tuple[str, ...]) -> tuple[str, ...]:
        below = [chain(component[d]) for m in members for d in sorted(edges[m]) if component[d] != members]
        return (members[0], *max(below, key=len, default=()))

    return list(max((chain(c) for c in sorted(set(component.values()))), key=len, default=()))


def read_layers(architecture: Path = ROOT / "ARCHITECTURE.md") -> list[Layer]:
    """The ``import-layers`` block of ARCHITECTURE.md, bottom layer first."""
    match = LAYERS_BLOCK.search(architecture.read_text())
    if not match:
        raise SystemExit(f"{architecture}: no ```import-layers block; add one listing the layers bottom to top")
    layers = []
    for line in match.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, prefixes = line.partition(":")
            layers.append(Layer(name.strip(), tuple(prefixes.split())))
    return layers


def placement(module: str, layers: list[Layer]) -> tuple[int, str] | None:
    """(layer index, the prefix that placed it) by the longest matching prefix; None when no layer lists it."""
    hits = [
        (len(p), i, p) for i, layer in enumerate(layers) for p in layer.prefixes if f"{module}.".startswith(f"{p}.")
    ]
    return max(hits)[1:] if hits else None


def back_up_imports(graph: ImportGraph, layers: list[Layer]) -> list[tuple[str, str]]:
    """Arrows from a module to one on a higher layer (unplaced modules are reported apart)."""
    arrows = [(source, target) for source, deps in sorted(graph.edges.items()) for target in sorted(deps)]
    return [
        (a, b) for a, b in arrows if (pa := placement(a, layers)) and (pb := placement(b, layers)) and pb[0] > pa[0]
    ]


def violations(graph: ImportGraph, layers: list[Layer]) -> set[str]:
    """Every breach of issue 22's goals, one stable string each (the test compares them to its known list)."""
    found = {f"cycle: {' '.join(cycle)}" for cycle in cycles(graph.edges)}
    found |= {f"back up: {source} -> {target}" for source, target in back_up_imports(graph, layers)}
    found |= {f"over {MAX_LINES} lines: {name}" for _, name in long_files(graph)}
    found |= {f"unplaced: {name}" for name in unplaced(graph, layers)}
    if (floors := len(longest_chain(graph.edges))) > MAX_FLOORS:
        found.add(f"floors: {floors} > {MAX_FLOORS}")
    consumers = {"evaluation", "generation", "export", "driver"}  # issue 22.1: the loop knows none of them
    trainer_side = [(a, b) for a, deps in graph.edges.items() if a.split(".")[0] == "training" for b in deps]
    return found | {f"training imports a consumer: {a} -> {b}" for a, b in trainer_side if b.split(".")[0] in consumers}


def unit_arrows(graph: ImportGraph, layers: list[Layer]) -> dict[tuple[str, str], bool]:
    """Arrows between placing prefixes (a layer's listed units), each mapped to whether it runs back up.

    Why reduced: every file's imports give about 90 arrows, too many to read. An arrow that another route already
    implies (``commands -> data`` when ``commands -> driver -> data``) is dropped, one at a time so what reaches
    what is unchanged; back-up arrows are always kept and never serve as that other route.
    """
    arrows: dict[tuple[str, str], bool] = {}
    for source, deps in graph.edges.items():
        for target in deps:
            below, above = placement(source, layers), placement(target, layers)
            if below and above and below[1] != above[1]:
                arrows[(below[1], above[1])] = arrows.get((below[1], above[1]), False) or above[0] > below[0]

    down: dict[str, set[str]] = {}
    for (source, target), up in arrows.items():
        down.setdefault(source, set()).update(set() if up else {target})
    for source, target in sorted(arrow for arrow, up in arrows.items() if not up):
        down[source].discard(target)
        if target in reach(down, source):
            del arrows[(source, target)]
        else:
            down[source].add(target)
    return arrows


def layer_drawing(graph: ImportGraph, layers: list[Layer], mermaid: bool) -> str:
    """Mermaid or dot, top layer first; back-up arrows dashed."""
    arrows = unit_arrows(graph, layers)
    ident = {prefix: prefix.replace(".", "_") for layer in layers for prefix in layer.prefixes}
    out = ["flowchart TB"] if mermaid else ["digraph imports {", "  node [shape=box];"]
    for layer in reversed(layers):
        names = [p for p in layer.prefixes if any(p in pair for pair in arrows)]
        if mermaid and names:
            out += [f"  subgraph L_{layer.name} [{layer.name}]", *(f'    {ident[p]}["{p}"]' for p in names), "  end"]
        elif names:
            out.append(f"  {{ rank=same; {' '.join(ident[p] for p in names)} }}")
    for (source, target), up in sorted(arrows.items()):
        if mermaid:
            out.append(f"  {ident[source]} {'-. back up .->' if up else '-->'} {ident[target]}")
        else:
            out.append(f"  {ident[source]} -> {ident[target]}{' [style=dashed, color=red]' if up else ''};")
    return "\n".join(out if mermaid else [*out, "}"])


def report(graph: ImportGraph, layers: list[Layer]) -> str:
    chain, found, arrows = longest_chain(graph.edges), cycles(graph.edges), back_up_imports(graph, layers)
    long = long_files(graph)
    lines = [
        f"{len(graph.edges)} files, {sum(map(len, graph.edges.values()))} imports; "
        f"{len(chain)} floors (goal <= {MAX_FLOORS}): {' -> '.join(chain)}",
        f"{len(found)} cycles:",
        *(f"  {' <-> '.join(cycle)}" for cycle in found),
        f"{len(arrows)} imports back up the layer order:",
        *(f"  {source} -> {target}" for source, target in arrows),
        f"{len(long)} files over {MAX_LINES} lines:",
        *(f"  {name} ({count})" for count, name in long),
    ]
    if missing := unplaced(graph, layers):
        lines.append(f"not placed by ARCHITECTURE.md's import-layers block: {' '.join(missing)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    drawing = parser.add_mutually_exclusive_group()
    drawing.add_argument("--mermaid", action="store_true", help="Print the layer-level graph as a mermaid flowchart.")
    drawing.add_argument("--dot", action="store_true", help="Print the layer-level graph in Graphviz dot.")
    args = parser.parse_args(argv)
    graph, layers = build_graph(), read_layers()
    print(layer_drawing(graph, layers, args.mermaid) if args.mermaid or args.dot else report(graph, layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
