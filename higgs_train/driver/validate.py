"""The validate-only driver (``ray_jobs/train.py --validate_data_only``): every check a job would run on each row,
reports written, no Ray, no model weights, no MLflow run. The checks themselves live in ``data.row_checks``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from higgs_train.config import TrainingConfig
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.job_manifests import resolve_sources
from higgs_train.data.manifest import load_manifest
from higgs_train.data.preflight import missing_audio_hint
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.row_checks import AudioChecker
from higgs_train.data.row_length import RowLengthLimit, resolve_row_length_limit
from higgs_train.data.row_report import (
    QUARANTINE_FILE,
    REPORT_FILE,
    VAL_REPORT_FILE,
    print_summary,
    validate_rows,
    write_report,
)
from higgs_train.model_loading import EMBEDDED, load_text_tokenizer, resolve_paths


def validate_job(config: TrainingConfig) -> int:
    """Validate the job's train (and val) manifests; 0 if every row is valid, else 1 (with a missing-audio hint)."""
    sources = resolve_sources(config)
    paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
    code = run_validate_data_only(
        str(sources.train),
        str(sources.val) if sources.val else None,
        config.audio_base_path or None,
        config.output_dir,
        paths.tokenizer_path,
        AudioLimits(config.min_audio_seconds, config.max_audio_seconds),
        resolve_row_length_limit(paths.model_path, paths.audio_tokenizer_path, config.max_tokens_per_row),
    )
    _print_missing_audio_hint(config.output_dir, sources.train_audio_base)
    return code


def run_validate_data_only(
    train_data: str | Path,
    val_data: str | Path | None,
    audio_base_path: str | Path | None,
    output_dir: str | Path,
    tokenizer_path: str,
    limits: AudioLimits | None = None,
    length_limit: RowLengthLimit | None = None,
) -> int:
    """Validate the train (and optional val) manifest, write reports, return 0 if every row is valid else 1.

    Writes ``validation_report.json`` (train), ``val_validation_report.json`` (val, when given) and
    ``quarantine.parquet`` (both, stages ``validation:train`` / ``validation:val``) under ``output_dir``.
    Relative audio paths resolve under ``audio_base_path``, or each manifest's own folder when it is empty.
    An empty train manifest fails too: there would be nothing to train on. ``tokenizer_path`` may be "embedded".
    ``length_limit`` (``row_length.resolve_row_length_limit``) adds the job's ``max_tokens_per_row`` check.
    """
    if tokenizer_path == EMBEDDED:
        tokenizer_path = resolve_paths(EMBEDDED, EMBEDDED, EMBEDDED).tokenizer_path
    tokenizer = load_text_tokenizer(tokenizer_path)
    limits = limits or AudioLimits()
    quarantine = Quarantine()
    checkers: dict[Path, AudioChecker] = {}
    ok = True
    for split, manifest, filename in (("train", train_data, REPORT_FILE), ("val", val_data, VAL_REPORT_FILE)):
        if not manifest:
            continue
        base = Path(audio_base_path or Path(manifest).parent).resolve()
        checker = checkers.setdefault(base, AudioChecker(base, limits))
        rows = load_manifest(manifest)
        report = validate_rows(
            rows,
            tokenizer,
            base,
            limits,
            stage=f"validation:{split}",
            quarantine=quarantine,
            checker=checker,
            length_limit=length_limit,
        )
        write_report(report, output_dir, filename)
        print_summary(report, f"{split} ({manifest})")
        ok = ok and not report.invalid and (report.total > 0 or split == "val")
    quarantine.write(Path(output_dir) / QUARANTINE_FILE)
    return 0 if ok else 1


def _print_missing_audio_hint(output_dir: str, audio_root: Any) -> None:
    report = Path(output_dir) / "validation_report.json"
    if report.is_file():
        reasons = [item["reason"] for item in json.loads(report.read_text()).get("invalid", [])]
        hint = missing_audio_hint(reasons, audio_root)
        if hint:
            print(f"hint: {hint}")
