"""The training loop stands below its consumers (issue 22, step 1): nothing under ``higgs_train/training`` imports
evaluation, generation, export, Tune, the drivers or the commands, at module level or inside a function. What runs
at a validation reaches the loop as hooks (``training/hooks.py``), built by the driver."""

from __future__ import annotations

import ast
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "higgs_train" / "training"
CONSUMERS = ("evaluation", "generation", "export", "tune", "driver", "commands")


def imported_modules(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """(line, the dotted names one import statement can load) for every import in ``tree``, nested ones included;
    ``from higgs_train import x`` can load ``higgs_train.x``, so a consumer imported by name is caught too."""
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]))
    return found


def consumer_imports(path: Path) -> list[str]:
    """One line per import statement in ``path`` that loads a consumer package or module."""
    forbidden = tuple(f"higgs_train.{name}" for name in CONSUMERS)
    hits = []
    for line, names in sorted(imported_modules(ast.parse(path.read_text(), str(path)))):
        bad = [n for n in names if n in forbidden or n.startswith(tuple(f"{f}." for f in forbidden))]
        if bad:
            hits.append(f"{path.name}:{line} imports {bad[0]}")
    return hits


def test_training_imports_none_of_its_consumers() -> None:
    files = sorted(TRAINING.rglob("*.py"))
    assert len(files) > 5 and TRAINING.joinpath("trainer.py") in files
    offending = [hit for path in files for hit in consumer_imports(path)]
    assert not offending, "training/ must not import its consumers (pass a hook instead):\n" + "\n".join(offending)


def test_the_check_sees_imports_inside_functions(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import higgs_train.loss\n"
        "from higgs_train import generation\n"
        "def f():\n"
        "    from higgs_train.evaluation.in_training import TrainingVoiceEval\n"
        "    import higgs_train.driver.worker\n"
    )
    assert consumer_imports(probe) == [
        "probe.py:2 imports higgs_train.generation",
        "probe.py:4 imports higgs_train.evaluation.in_training",
        "probe.py:5 imports higgs_train.driver.worker",
    ]
