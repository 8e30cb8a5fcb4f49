"""Issue 22's import-graph goals as a test: no cycle, no import back up the layer order ARCHITECTURE.md defines, no
file over 450 lines, at most 9 floors, and nothing in ``training/`` importing its consumers.

Breaches still to remove would be listed in ``KNOWN_VIOLATIONS``, each with the issue-22 step that removes it; the
list is empty since the floors came down to 9. It can only shrink: a new breach fails, and so does a listed one that
is gone, so the list stays true. The graph comes from ``scripts/import_graph.py`` (``ast`` only, well under a
second).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


import_graph = _tool()

KNOWN_VIOLATIONS: dict[str, str] = {}


@cache
def _found() -> frozenset[str]:
    """Parsed once for both tests (parsing the hundred files is most of the time)."""
    return frozenset(import_graph.violations(import_graph.build_graph(), import_graph.read_layers()))


def test_no_violation_beyond_the_known_ones():
    found = _found()
    new = sorted(found - KNOWN_VIOLATIONS.keys())
    assert not new, "the import graph broke issue 22's goals (see `python scripts/import_graph.py`):\n" + "\n".join(new)


def test_every_known_violation_is_still_present():
    found = _found()
    gone = sorted(KNOWN_VIOLATIONS.keys() - found)
    assert not gone, "no longer present: delete (or, for floors, update) these in KNOWN_VIOLATIONS:\n" + "\n".join(gone)


def test_the_layer_order_keeps_the_design_of_issue_22():
    """The order in ARCHITECTURE.md is the yardstick, so it must not bend to fit the code: the loop below its
    consumers, storage and the ChatML layout below the data path, the builder above data, the commands on top."""
    layers = import_graph.read_layers()

    def floor(module: str) -> int:
        placed = import_graph.placement(module, layers)
        assert placed, f"{module} is not in ARCHITECTURE.md's import-layers block"
        return placed[0]

    for consumer in ("evaluation", "generation", "export", "driver", "tune", "studio"):
        assert floor("training") < floor(consumer)
    for user in ("data", "training"):
        assert floor("storage") < floor(user)
    for user in ("data", "embedded"):
        assert floor("chatml") < floor(user)
    assert floor("data") < floor("builder") < floor("commands")
    assert floor("data.chatml") == floor("data")  # the layout counts as low only once it leaves data/
    assert floor("flag_parser") == floor("commands") == len(layers) - 1  # no command line parsed below them


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "higgs_train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_tool_finds_each_kind_of_violation(tmp_path):
    """A small tree with one of each breach, and the import forms the real code uses (inside a function, a
    submodule taken with ``from``, relative, a name from a package ``__init__``, a third-party module)."""
    files = {name: "" for name in ("__init__.py", "low/__init__.py", "training/__init__.py", "stray.py")}
    files |= {"evaluation/__init__.py": "", "evaluation/hooks.py": "", "chain/__init__.py": ""}
    files |= {f"chain/m{i}.py": f"from higgs_train.chain import m{i + 1}\n" for i in range(9)} | {"chain/m9.py": ""}
    files |= {
        "low/a.py": "def late():\n    from higgs_train.high import b\n    return b\n",
        "high/__init__.py": "NAME = 1\n",
        "high/b.py": "import os\n\nfrom higgs_train.high import NAME\n\nfrom .c import helper\n",
        "high/c.py": "def helper():\n    pass\n",
        "cyc1.py": "from higgs_train import cyc2\n",
        "cyc2.py": "from . import cyc1\n",
        "training/loop.py": "import higgs_train.evaluation.hooks\n",
        "big.py": "x = 1\n" * 451,
    }
    _write(tmp_path, files)
    (tmp_path / "ARCHITECTURE.md").write_text(
        "# x\n\n```import-layers\n# bottom first\nbase: __init__ low cyc1 cyc2 big chain\n"
        "training: training\nconsumers: evaluation\nhigh: high\n```\n"
    )
    graph = import_graph.build_graph(tmp_path)
    layers = import_graph.read_layers(tmp_path / "ARCHITECTURE.md")

    assert graph.edges["low.a"] == {"high.b"}
    assert graph.edges["high.b"] == {"high", "high.c"}
    assert len(import_graph.longest_chain(graph.edges)) == 10
    assert import_graph.violations(graph, layers) == {
        "back up: low.a -> high.b",
        "back up: training.loop -> evaluation.hooks",
        "training imports a consumer: training.loop -> evaluation.hooks",
        "cycle: cyc1 cyc2",
        "over 450 lines: big",
        "unplaced: stray",
        "floors: 10 > 9",
    }
    drawing = import_graph.layer_drawing(graph, layers, mermaid=True)
    assert "low -. back up .-> high" in drawing and "training -. back up .-> evaluation" in drawing
    assert "chain -->" not in drawing  # arrows inside one unit are not drawn


# Third-party packages a function may import where it needs them: each costs a tenth of a second to seconds to
# import, or loads torch (measured with ``python -c "import time, X"`` on this machine: peft 3.2 s, torch 2.5 s,
# transformers 1.2 s, mlflow 1.2 s, resemblyzer 1.0 s, silero_vad 0.9 s, pyloudnorm 0.6 s, datasets 0.6 s, ray.data
# and ray.train seconds), so a module that only sometimes needs one does not make every importer pay for it.
# Everything else (the standard library, numpy, pyarrow, soundfile, yaml, psutil, ...) is imported at the top.
DEFERRABLE_PACKAGES = frozenset(
    {
        "boson_multimodal",
        "datasets",
        "huggingface_hub",
        "librosa",
        "matplotlib",
        "mlflow",
        "optuna",
        "peft",
        "pocketsphinx",
        "pyloudnorm",
        "ray",
        "resemblyzer",
        "safetensors",
        "scipy",
        "silero_vad",
        "speechmos",
        "torch",
        "transformers",
    }
)


def _function_imports(path: Path) -> list[tuple[int, int, str]]:
    """``(first line, last line, module)`` of every import inside a function of ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, node.end_lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    module = node.module or ""
                    found.append((node.lineno, node.end_lineno, "higgs_train." + module if node.level else module))
    return found


def _says_deferred(lines: list[str], first: int, last: int, import_lines: set[int]) -> bool:
    """A comment with "deferred" on the import's lines, or in the comments directly above its import block."""
    if any("#" in lines[n - 1] and "deferred" in lines[n - 1].split("#", 1)[1].lower() for n in range(first, last + 1)):
        return True
    n = first - 1
    while n >= 1:
        text = lines[n - 1].strip()
        if text.startswith("#"):
            if "deferred" in text.lower():
                return True
        elif text and n not in import_lines:
            return False
        n -= 1
    return False


def test_imports_sit_at_the_top_unless_deferred_on_purpose():
    """Issue 22: a file's imports say what it depends on. Inside a function only a heavy package may be imported
    (``DEFERRABLE_PACKAGES``), and a module of this project only under a comment saying why it is deferred."""
    breaches = []
    for path in sorted((ROOT / "higgs_train").rglob("*.py")):
        lines = path.read_text().splitlines()
        imports = _function_imports(path)
        import_lines = {n for first, last, _ in imports for n in range(first, last + 1)}
        where = path.relative_to(ROOT)
        for first, last, module in imports:
            package = module.split(".")[0]
            if package == "higgs_train":
                if not _says_deferred(lines, first, last, import_lines):
                    breaches.append(f"{where}:{first}: {module} inside a function without a '# Deferred ...' reason")
            elif package not in DEFERRABLE_PACKAGES:
                breaches.append(f"{where}:{first}: {module} is light: import it at the top of the file")
    assert not breaches, "\n".join(breaches)
