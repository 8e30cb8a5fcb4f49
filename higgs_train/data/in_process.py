"""Preprocessed records without Ray: the in-process data path of tests, notebooks and benchmarks.

The trainer takes records and knows no data path; the Ray job preprocesses with Ray Data actors into the token cache
and streams it (``driver/prepare.py``, ``data/shard_stream.py``). This module runs the same ``SamplePreprocessor``
in this process over the config's manifests (or the generated sample data, ``data/job_manifests.py``). Failed rows are
quarantined under ``<output_dir>/quarantine.parquet`` with their reasons, never dropped silently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from boson_multimodal.model.higgs_audio import HiggsAudioConfig

from higgs_train.config import TrainingConfig
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.job_manifests import resolve_sources
from higgs_train.data.manifest import read_manifest_rows, to_canonical_table
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.quarantine import Quarantine
from higgs_train.model_loading import load_audio_tokenizer, load_text_tokenizer, resolve_paths

logger = logging.getLogger(__name__)


def preprocess_manifest_locally(
    manifest: Path, audio_base: Path, preprocessor: Any, quarantine: Quarantine, stage: str
) -> list[dict]:
    """Canonicalise ``manifest`` and preprocess every row; failures go to ``quarantine``."""
    rows = to_canonical_table(read_manifest_rows(manifest), str(manifest)).to_pylist()
    result = preprocessor.process_batch(rows)
    for failure in result.failures:
        quarantine.add(failure.id, failure.row_index, f"{stage}:{failure.stage}", failure.reason)
    logger.info("%s: %d rows preprocessed, %d quarantined", manifest, len(result.records), len(result.failures))
    return result.records


def records_for_config(config: TrainingConfig) -> tuple[list[dict], list[dict]]:
    """(train records, val records) for ``config``, preprocessed in this process for the config's model."""
    paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
    model_config = HiggsAudioConfig.from_pretrained(paths.model_path)
    sources = resolve_sources(config)
    preprocessor = SamplePreprocessor(
        load_text_tokenizer(paths.tokenizer_path),
        load_audio_tokenizer(paths.audio_tokenizer_path, device="cpu"),
        sources.train_audio_base,
        AudioLimits(config.min_audio_seconds, config.max_audio_seconds),
        whisper=bool(model_config.encode_whisper_embed),
        encode_audio_in_tokens=bool(model_config.encode_audio_in_tokens),
        max_tokens_per_row=config.max_tokens_per_row or int(model_config.text_config.max_position_embeddings),
    )
    quarantine = Quarantine()
    train = preprocess_manifest_locally(sources.train, sources.train_audio_base, preprocessor, quarantine, "train")
    val: list[dict] = []
    if sources.val is not None:
        preprocessor.audio_base_path = sources.val_audio_base
        val = preprocess_manifest_locally(sources.val, sources.val_audio_base, preprocessor, quarantine, "val")
    if len(quarantine):
        quarantine.write(Path(config.output_dir) / "quarantine.parquet")
    return train, val
