"""The ``--validate_data_only`` pass over a manifest: every row through ``row_checks`` (and the length limit), one
reason per rejected row, a JSON report, a quarantine and a printed summary.

Why apart from ``row_checks``: preprocessing runs the per-row checks row by row inside the job and needs none of
this; the report is the validate-only driver's (``driver.validate``). The length check is here because only this
pass estimates a row's length from file headers (preprocessing counts it exactly after encoding).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.manifest import PARSE_ERROR_KEY, SAMPLE_KEYS, stable_id
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.row_checks import AudioChecker, Part, TextEncoder, audio_reason, structural_reason, text_reason
from higgs_train.data.row_length import RowLengthLimit
from higgs_train.data.sample_tokens import chatml_token_count

REPORT_FILE = "validation_report.json"
VAL_REPORT_FILE = "val_validation_report.json"
QUARANTINE_FILE = "quarantine.parquet"


@dataclass
class ValidationReport:
    """Outcome of one manifest: ``invalid`` holds ``{"index", "id", "reason"}``; ``valid_rows`` the accepted rows."""

    total: int
    valid: int
    invalid: list[dict[str, Any]] = field(default_factory=list)
    valid_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "valid": self.valid, "invalid": self.invalid}


def length_reason(
    row: dict[str, Any],
    turns: list[tuple[str, list[Part]]],
    tokenizer: Any,
    checker: AudioChecker,
    limit: RowLengthLimit,
) -> str | None:
    """``ROW_TOO_LONG`` when the row's estimated merged length exceeds the limit (or why it cannot be tokenized)."""
    tokens, error = chatml_token_count(row, tokenizer)
    if error is not None:
        return error
    audio = [
        (role == "assistant", checker.seconds(url)) for role, parts in turns for kind, url in parts if kind == "audio"
    ]
    return limit.reason(limit.estimate(tokens, [s for _, s in audio], [out for out, _ in audio]))


def row_id(row: dict[str, Any]) -> str:
    """The row's id, or the same stable id the manifest reader would give it."""
    given = row.get("id")
    if isinstance(given, str) and given:
        return given
    return stable_id({k: row.get(k) for k in SAMPLE_KEYS})


def validate_rows(
    rows: list[dict[str, Any]],
    tokenizer: TextEncoder,
    audio_base_path: str | Path,
    limits: AudioLimits | None = None,
    *,
    stage: str = "validation",
    quarantine: Quarantine | None = None,
    checker: AudioChecker | None = None,
    progress: bool = True,
    length_limit: RowLengthLimit | None = None,
) -> ValidationReport:
    """Validate every row; rejected rows get one reason each and, if given, a ``quarantine`` record.

    ``index`` is the row's ``row_index`` (its position in the source manifest) when present, else its position
    in ``rows``. Pass a shared ``checker`` to decode files referenced by several manifests only once. With a
    ``length_limit``, rows whose estimated merged length exceeds it are rejected too (the last check, as in
    preprocessing).
    """
    checker = checker or AudioChecker(audio_base_path, limits or AudioLimits())
    report = ValidationReport(total=len(rows), valid=0)
    for position, row in enumerate(tqdm(rows, desc=f"validating ({stage})", unit="row", disable=not progress)):
        if not isinstance(row, dict):
            row = {PARSE_ERROR_KEY: "row is not a JSON object"}
        reason, turns = structural_reason(row)
        if reason is None:
            reason = text_reason(turns, tokenizer) or audio_reason(turns, checker)
        if reason is None and length_limit is not None and length_limit.max_tokens:
            reason = length_reason(row, turns, tokenizer, checker, length_limit)
        if reason is None:
            report.valid += 1
            report.valid_rows.append(row)
            continue
        index = int(row.get("row_index", position))
        sample_id = row_id(row)
        report.invalid.append({"index": index, "id": sample_id, "reason": reason})
        if quarantine is not None:
            quarantine.add(sample_id, index, stage, reason)
    return report


def write_report(report: ValidationReport, output_dir: str | Path, filename: str = REPORT_FILE) -> Path:
    """Write ``{"total", "valid", "invalid": [{"index", "id", "reason"}]}`` as ``output_dir/filename``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def print_summary(report: ValidationReport, name: str, file: TextIO | None = None, max_listed: int = 20) -> None:
    """One line of totals, then up to ``max_listed`` rejected rows with their reasons."""
    out = file or sys.stdout
    print(f"{name}: {report.valid}/{report.total} rows valid, {len(report.invalid)} invalid", file=out)
    for item in report.invalid[:max_listed]:
        print(f"  row {item['index']} ({item['id']}): {item['reason']}", file=out)
    if len(report.invalid) > max_listed:
        print(f"  ... {len(report.invalid) - max_listed} more in the report file", file=out)
