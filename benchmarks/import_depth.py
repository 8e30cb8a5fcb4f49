"""How many floors the drivers stand on: the longest import chain from a ``ray_jobs/*.py`` entry point into
``higgs_train``, computed from the source with ``ast`` (nothing is imported).

Every ``import``/``from ... import`` of a ``higgs_train`` module counts, also the lazy ones inside functions: they
run when the command runs. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so those count
as edges too. Two figures per entry point:

* depth: modules on the longest import chain that never visits a module twice (the entry point included); a
  package ``__init__`` that re-exports its submodules lengthens it, as it does at run time;
* floors: the most imports a module is away from the entry point by its shortest route, plus one.

    python benchmarks/import_depth.py            # per entry point: depth and the longest chain
    python benchmarks/import_depth.py --edge A B # exit 1 if any module under A imports one under B
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "higgs_train"


def module_files() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The package modules a file imports (with their parent packages), resolved against ``known``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    found.add(candidate)
    found.discard(name)
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[str, Path]]:
    known = module_files()
    graph = {name: imported_modules(path, name, known) for name, path in known.items()}
    for entry in sorted((ROOT / "ray_jobs").glob("*.py")):
        name = f"ray_jobs/{entry.name}"
        graph[name] = imported_modules(entry, name, known)
    return graph, known


def longest_chain(graph: dict[str, set[str]], start: str) -> list[str]:
    """Longest simple path from ``start`` (depth-first; the graph has ~100 nodes and few cycles)."""

    @cache
    def best(node: str, seen: frozenset[str]) -> tuple[str, ...]:
        longest: tuple[str, ...] = ()
        for nxt in sorted(graph.get(node, ())):
            if nxt in seen:
                continue
            chain = best(nxt, seen | {nxt})
            if len(chain) > len(longest):
                longest = chain
        return (node, *longest)

    return list(best(start, frozenset({start})))


def floors(graph: dict[str, set[str]], start: str) -> tuple[int, str]:
    """(1 + the largest shortest-route distance from ``start``, the module that far away)."""
    distance = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(graph.get(node, ())):
                if dep not in distance:
                    distance[dep] = distance[node] + 1
                    nxt.append(dep)
        frontier = nxt
    farthest = max(distance, key=lambda n: (distance[n], n))
    return distance[farthest] + 1, farthest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", nargs=2, metavar=("FROM", "TO"), help="Fail if a FROM module imports a TO module.")
    args = parser.parse_args(argv)
    graph, _ = import_graph()
    if args.edge:
        source, target = args.edge
        arrows = sorted(
            f"{a} -> {b}"
            for a, deps in graph.items()
            if a == source or a.startswith(f"{source}.")
            for b in deps
            if b == target or b.startswith(f"{target}.")
        )
        print("\n".join(arrows) if arrows else f"no arrow from {source} to {target}")
        return 1 if arrows else 0
    deepest = most_floors = 0
    for entry in sorted(k for k in graph if k.startswith("ray_jobs/")):
        chain = longest_chain(graph, entry)
        count, farthest = floors(graph, entry)
        deepest, most_floors = max(deepest, len(chain)), max(most_floors, count)
        print(f"{entry}: depth {len(chain)}, floors {count} (to {farthest}): {' -> '.join(chain)}")
    print(f"longest import chain: {deepest} modules; most floors: {most_floors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
