"""Where the embedded stack lives and what its names mean, without building or importing any of it.

Why apart from the package that builds the stack: checking which base model an adapter belongs to (``adapter``) must
know that ``embedded`` means this folder, and that check sits far below the builders (torch models, codecs, sample
voices). The package's ``ensure_tiny_stack`` builds into exactly these paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"  # the model/tokenizer name that means the generated tiny stack
EMBEDDED_WHISPER = f"{EMBEDDED}:whisper"  # its variant with the Whisper tower
STACK_VERSION = "tiny-v3"


@dataclass(frozen=True)
class TinyStack:
    """Paths of one built stack."""

    root: Path
    model_dir: Path
    whisper_model_dir: Path
    tokenizer_dir: Path
    audio_tokenizer_dir: Path


def default_home() -> Path:
    """Where generated artefacts live: ``$HIGGS_TRAIN_HOME`` or ``~/.cache/higgs_train``."""
    return Path(os.environ.get("HIGGS_TRAIN_HOME", Path.home() / ".cache" / "higgs_train"))


def stack_paths(root: Path) -> TinyStack:
    """The stack's folders under ``root`` (built or not)."""
    return TinyStack(
        root=root,
        model_dir=root / "model",
        whisper_model_dir=root / "model-whisper",
        tokenizer_dir=root / "tokenizer",
        audio_tokenizer_dir=root / "audio_tokenizer",
    )


def embedded_model_dir(model_path: str) -> str | None:
    """The folder ``embedded`` or ``embedded:whisper`` names (built or not); None for any other model path."""
    paths = stack_paths(default_home() / STACK_VERSION)
    named = {EMBEDDED: paths.model_dir, EMBEDDED_WHISPER: paths.whisper_model_dir}.get(model_path)
    return str(named) if named is not None else None
