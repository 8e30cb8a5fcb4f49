"""The prepare stage every driver shares: sources -> canonical manifests -> token caches -> reports -> data metrics.

Training and the Tune sweep both call ``prepare_token_caches`` once, on the driver, before any training worker starts:
caches are built (or found) in Ray Data CPU actors, bad rows are quarantined and reported, and what the workers
need travels on as one ``PreparedData``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from higgs_train.atomic_files import write_atomic
from higgs_train.config import TrainingConfig
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.job_manifests import resolve_sources
from higgs_train.data.manifest import convert_manifest
from higgs_train.data.preflight import missing_audio_hint
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.ray_pipeline import build_token_cache, describe
from higgs_train.data.token_cache import local_cache_root
from higgs_train.model_loading import resolve_paths

if TYPE_CHECKING:
    from higgs_train.data.ray_pipeline import CacheResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """The token caches of one job and what preprocessing reported about them."""

    train: CacheResult
    val: CacheResult | None  # None without --val_data
    cache_root: Path
    quarantined: int
    report_files: list[Path]

    @property
    def data_keys(self) -> dict[str, str | None]:
        """Cache identities, recorded as MLflow tags and in ``data_keys.json`` (read by export's model card)."""
        return {"train_cache_key": self.train.key, "val_cache_key": self.val.key if self.val else None}

    @property
    def val_key(self) -> str | None:
        """The validation cache the workers read: None when there is none or every row was quarantined."""
        return self.val.key if self.val and self.val.entry.num_rows else None

    @property
    def encoder_calls(self) -> int:
        return self.train.encoder_calls + (self.val.encoder_calls if self.val else 0)

    @property
    def metrics(self) -> dict[str, int]:
        """The ``data/*`` metrics. The drivers log them *after* the loss curves: MLflow's compare page plots the run's
        first-logged metric by default (its parallel-coordinates plot showed ``data/train_rows``)."""
        return {
            "data/train_rows": self.train.entry.num_rows,
            "data/quarantined_rows": self.quarantined,
            "data/encoder_calls": self.encoder_calls,
        }


def prepare_token_caches(config: TrainingConfig, tracker: Any) -> PreparedData:
    """Build or reuse the caches, write the reports into ``output_dir``, log the data tags to ``tracker`` (the
    ``data/*`` metrics too when no training row survived; otherwise the driver logs ``PreparedData.metrics``).

    Raises ``ValueError`` when no training row survived (the reports say why). Ray must be up
    (``higgs_train.ray_session.init_ray``).
    """
    output = Path(config.output_dir)
    paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
    train_cache, val_cache, cache_root = build_caches(config, paths)
    quarantined, report_files = write_data_reports(output, {"train": train_cache, "val": val_cache})
    _warn_missing_audio(output, config)
    prepared = PreparedData(train_cache, val_cache, cache_root.resolve(), quarantined, report_files)
    tracker.set_tags(prepared.data_keys)
    if train_cache.entry.num_rows == 0:
        tracker.log_metrics(prepared.metrics, step=0)
        raise ValueError(f"no training rows survived preprocessing; see {output / 'quarantine_summary.json'}")
    return prepared


def build_caches(config: TrainingConfig, paths: Any) -> tuple[Any, Any | None, Path]:
    """Canonicalise both manifests and build/reuse their token caches; returns (train, val, cache root)."""
    sources = resolve_sources(config)
    output = Path(config.output_dir)
    cache_root = local_cache_root(config.cache_dir) if config.cache_dir else output.resolve().parent / "token_cache"
    limits = AudioLimits(config.min_audio_seconds, config.max_audio_seconds)
    results = []
    for split, manifest, base in (
        ("train", sources.train, sources.train_audio_base),
        ("val", sources.val, sources.val_audio_base),
    ):
        if manifest is None:
            results.append(None)
            continue
        canonical = output / "manifests" / f"{split}.parquet"
        report = convert_manifest(manifest, canonical)
        logger.info("%s manifest: %s", split, report.summary())
        result = build_token_cache(
            canonical,
            cache_root,
            paths,
            base,
            limits,
            num_actors=config.dataloader_num_workers,
            cpus_per_actor=config.cpus_per_data_actor,
            gpus_per_actor=config.data_actor_gpus,
            on_driver_node=config.data_nodes == "driver",
            max_tokens_per_row=config.max_tokens_per_row,
            progress_label=f"token cache ({split})",
        )
        logger.info("%s cache: %s", split, describe(result))
        results.append(result)
    return results[0], results[1], cache_root


def write_data_reports(output: Path, caches: dict[str, Any]) -> tuple[int, list[Path]]:
    """Per-split validation reports and one quarantine file, from what preprocessing accepted and rejected."""
    quarantine = Quarantine()
    files: list[Path] = []
    for split, cache in caches.items():
        if cache is None:
            continue
        table = cache.entry.quarantine_table() if cache.entry.quarantine_path.exists() else None
        invalid = []
        if table is not None:
            for rec in table.to_pylist():
                quarantine.add(rec["id"], rec["row_index"], f"{split}:{rec['stage']}", rec["reason"])
                invalid.append({"index": rec["row_index"], "id": rec["id"], "reason": rec["reason"]})
        valid = cache.entry.num_rows
        report = {"total": valid + len(invalid), "valid": valid, "invalid": invalid}
        path = output / ("validation_report.json" if split == "train" else f"{split}_validation_report.json")
        write_atomic(path, json.dumps(report, indent=2) + "\n")
        files.append(path)
    quarantine_path = quarantine.write(output / "quarantine.parquet")
    summary = output / "quarantine_summary.json"
    write_atomic(
        summary,
        json.dumps(
            {
                "rows": len(quarantine),
                "by_stage": quarantine.counts(),
                "records": [r.__dict__ for r in quarantine.records],
            },
            indent=2,
        )
        + "\n",
    )
    return len(quarantine), [*files, quarantine_path, summary]


def _warn_missing_audio(output: Path, config: TrainingConfig) -> None:
    """Rows quarantined for missing audio usually mean a wrong audio root: say which root was used."""
    summary = output / "quarantine_summary.json"
    records = json.loads(summary.read_text()).get("records", []) if summary.is_file() else []
    hint = missing_audio_hint([str(r.get("reason", "")) for r in records], resolve_sources(config).train_audio_base)
    if hint:
        logger.warning(hint)
