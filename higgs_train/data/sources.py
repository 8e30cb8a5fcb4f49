"""Which manifests a job reads: the configured ones, or generated sample data when none is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from higgs_train.config import TrainingConfig


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
        from higgs_train.sample_data import create_sample_data

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
