"""The embedded default: a tiny, deterministic Higgs stack generated locally in the real on-disk formats.

``ensure_tiny_stack()`` builds (once, under a file lock, atomically) and returns the directories. Everything is
then loaded through ``higgs_train.model_loading`` -- the same loaders that load the released checkpoints.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from higgs_train.embedded.layout import STACK_VERSION, TinyStack, default_home, stack_paths


def build_tiny_stack(root: Path, seed: int = 0) -> TinyStack:
    """Build every part of the stack into ``root`` (which must not exist yet)."""
    # Deferred on purpose: the builders load torch, transformers and upstream's model code, and this package's
    # __init__ runs before any of its modules, so ``embedded.layout`` and ``embedded.voices`` would carry them too.
    from higgs_train.embedded.audio_codec import build_audio_tokenizer_dir
    from higgs_train.embedded.model import build_model_dir, save_whisper_feature_extractor
    from higgs_train.embedded.text_tokenizer import build_text_tokenizer_dir

    paths = stack_paths(root)
    build_text_tokenizer_dir(paths.tokenizer_dir)
    build_model_dir(paths.model_dir, paths.tokenizer_dir, variant="dac", seed=seed)
    build_model_dir(paths.whisper_model_dir, paths.tokenizer_dir, variant="whisper", seed=seed)
    save_whisper_feature_extractor(paths.whisper_model_dir)
    build_audio_tokenizer_dir(paths.audio_tokenizer_dir, size="tiny", seed=seed)
    (root / "STACK_VERSION").write_text(STACK_VERSION + "\n")
    return paths


def ensure_tiny_stack(home: Path | None = None) -> TinyStack:
    """Return the embedded stack, building it on first use. Safe when many processes call it at once."""
    from higgs_train.embedded.audio_codec import install_semantic_teacher  # deferred on purpose, as above

    home = Path(home) if home else default_home()
    root = home / STACK_VERSION
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / f"{STACK_VERSION}.lock")):
        if not (root / "STACK_VERSION").exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{STACK_VERSION}-", dir=home))
            try:
                build_tiny_stack(staging)
                if root.exists():
                    shutil.rmtree(root)
                staging.rename(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        # The teacher lives in the HF cache, which may be another (e.g. a fresh HF_HOME): make sure it is there.
        install_semantic_teacher(size="tiny", seed=0)
    return stack_paths(root)
