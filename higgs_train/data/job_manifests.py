"""Which manifests a job reads: the configured ones, or generated sample data when none is given (or asked for with
``--create_sample_data``, written here as any manifest form ``data.manifest`` writes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from higgs_train.config import TrainingConfig
from higgs_train.data.manifest import MANIFEST_SUFFIXES, write_manifest
from higgs_train.embedded.sample_data import create_sample_data, sample_rows


@dataclass(frozen=True)
class DataSources:
    """Resolved manifest paths and the audio root each one's relative paths resolve under."""

    train: Path
    val: Path | None
    train_audio_base: Path
    val_audio_base: Path | None
    generated: bool


def sample_data_dir(config: TrainingConfig) -> Path:
    """Where the default job keeps its generated sample data (next to the output dir, reused across runs)."""
    return Path(config.output_dir).resolve().parent / "sample_data"


def resolve_sources(config: TrainingConfig) -> DataSources:
    """Resolve manifests; with no ``train_data``, create (once) and use the sample voice-cloning data."""
    generated = not config.train_data
    if generated:
        root = sample_data_dir(config)
        if not (root / "train.json").exists() or not (root / "val.json").exists():
            create_sample_data(root)
        train, val = root / "train.json", (Path(config.val_data) if config.val_data else root / "val.json")
    else:
        train, val = Path(config.train_data), (Path(config.val_data) if config.val_data else None)
    for path in (train, val):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"manifest not found: {path}")

    def base(manifest: Path | None) -> Path | None:
        if manifest is None:
            return None
        return Path(config.audio_base_path).resolve() if config.audio_base_path else manifest.resolve().parent

    return DataSources(train, val, base(train), base(val), generated)


def create_sample_manifest(manifest: str | Path, utterances_per_speaker: int = 6, seed: int = 0) -> dict[str, Path]:
    """Write the sample data set as the manifest file ``manifest`` (.json list, .jsonl or .parquet), audio beside it.

    ``--create_sample_data data/sample.json`` followed by ``--train_data data/sample.json`` must just work: the
    training rows go to ``manifest`` itself, the validation rows next to it (``sample_val_manifest``), and the
    audio to ``audio/`` in the same folder (the default audio root of both manifests).
    """
    path = Path(manifest)
    if path.suffix not in MANIFEST_SUFFIXES:
        raise ValueError(f"a sample manifest must end in one of {', '.join(MANIFEST_SUFFIXES)}: {path}")
    train, val = sample_rows(path.parent, utterances_per_speaker, seed)
    val_path = sample_val_manifest(path)
    write_manifest(train, path)
    write_manifest(val, val_path)
    return {"train": path, "val": val_path, "audio_base_path": path.parent}


def sample_val_manifest(manifest: Path) -> Path:
    """``data/train.jsonl`` -> ``data/val.jsonl`` (the README's pair); any other name -> ``<stem>_val<suffix>``."""
    stem = "val" if manifest.stem == "train" else f"{manifest.stem}_val"
    return manifest.with_name(stem + manifest.suffix)


def create_sample_data_at(target: str | Path, seed: int = 0) -> dict[str, Path]:
    """``--create_sample_data``: a path ending in .json/.jsonl/.parquet is the manifest to write; else a folder."""
    if Path(target).suffix in MANIFEST_SUFFIXES:
        return create_sample_manifest(target, seed=seed)
    return create_sample_data(target, seed=seed)
