"""Text tokenizers derived from the embedded one that differ only where a vocabulary-only identity is blind.

Each is the embedded tokenizer saved to a folder with one edit to its ``tokenizer.json``: the same vocabulary,
added and special tokens, but other ids for some texts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _without_first_merge(pipeline: dict[str, Any]) -> None:
    pipeline["model"]["merges"] = pipeline["model"]["merges"][1:]  # ("h", "e"): "the" no longer merges the same


def _lowercase(pipeline: dict[str, Any]) -> None:
    pipeline["normalizer"] = {"type": "Lowercase"}


VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {"merges": _without_first_merge, "lowercase": _lowercase}


def derived_tokenizer(source: str | Path, folder: Path, variant: str) -> Path:
    """A copy of the tokenizer at ``source`` in ``folder`` with the edit ``variant`` (a key of ``VARIANTS``)."""
    from higgs_train.model_loading import load_text_tokenizer

    load_text_tokenizer(str(source)).save_pretrained(folder)
    path = folder / "tokenizer.json"
    pipeline = json.loads(path.read_text())
    VARIANTS[variant](pipeline)
    path.write_text(json.dumps(pipeline))
    return folder
