"""Per-row validation of ChatML voice-cloning samples: one specific reason for each rejected row.

Upstream's ``prepare_chatml_sample`` returns ``(None, None, None, None)`` and prints when a sample does not fit its
dataclasses, and its collator fails (or silently misplaces audio) on layouts it does not support; a bad row would
surface hours into a run, or never. Everything that can be checked without the model is checked here, before
preprocessing, and the *first* failure of each row becomes its reason. Check order:

1. readable (``parse_error`` from the manifest reader);
2. schema and types: messages a non-empty list of ``{role, content}`` objects, content a string / text part /
   audio part / list of those, speaker a string or null, start_index an int in ``[0, len(messages))``, misc an
   object or null;
3. roles: only system/user/assistant, system only at index 0;
4. a trainable target: an assistant audio turn at index >= start_index;
5. no audio-in (user/system audio) after an audio-out (assistant audio): the collator picks audio-in waveforms
   by their audio-in ordinal, which only lines up when every audio-in precedes every audio-out;
6. cloning samples carry a reference: a sample is a *cloning sample* when its speaker is set or any audio appears
   before start_index, and then it needs an assistant audio turn before start_index (the reference voice the
   model is conditioned on). Unlabelled samples without context audio are plain TTS and need no reference;
7. text: each text part non-empty after strip, free of Higgs control tokens (``<|AUDIO|>`` typed into text would
   be taken as an audio placeholder and shift every audio after it), free of control characters other than tab and
   line breaks, and encoding to at least one token;
8. audio files: confined to the audio root, readable, decodable, not truncated, duration within limits (read from
   the header, before decoding), finite, of sane amplitude, not silent. Any sample rate and channel count is
   accepted (preprocessing resamples and downmixes). Each distinct file is decoded once per run;
9. length (when a ``RowLengthLimit`` is given): the merged text + audio length, estimated from the header
   durations exactly as preprocessing estimates it, within ``max_tokens_per_row``.

Every reason comes from ``reasons.Reason``; preprocessing runs these same functions in the same order, so a job
quarantines each row with the reason ``--validate_data_only`` gives it.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from tqdm import tqdm

from higgs_train.data.audio_io import AudioError, AudioLimits, display_name, read_checked, resolve_audio_path
from higgs_train.data.manifest import (
    PARSE_ERROR_KEY,
    SAMPLE_KEYS,
    SPEAKER_TYPE,
    START_INDEX_TYPE,
    stable_id,
)
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.reasons import Reason
from higgs_train.data.row_length import RowLengthLimit
from higgs_train.data.sample_tokens import chatml_token_count

# Reason templates, from the one catalogue (reasons.py) that preprocessing uses too; ``{i}`` is the message index.
MESSAGES_NOT_LIST = Reason.MESSAGES_NOT_LIST
MESSAGE_NOT_OBJECT = Reason.MESSAGE_NOT_OBJECT
MESSAGE_UNKNOWN_KEY = Reason.MESSAGE_UNKNOWN_KEY
BAD_CONTENT = Reason.BAD_CONTENT
BAD_ROLE = Reason.BAD_ROLE
SYSTEM_NOT_FIRST = Reason.SYSTEM_NOT_FIRST
START_INDEX_RANGE = Reason.START_INDEX_RANGE
MISC_TYPE = Reason.MISC_TYPE
NO_TARGET_AUDIO = Reason.NO_TARGET_AUDIO
AUDIO_IN_AFTER_OUT = Reason.AUDIO_IN_AFTER_OUT
NO_REFERENCE_AUDIO = Reason.NO_REFERENCE_AUDIO
EMPTY_TEXT = Reason.EMPTY_TEXT
SPECIAL_TOKEN_TEXT = Reason.SPECIAL_TOKEN_TEXT
CONTROL_CHARACTER_TEXT = Reason.CONTROL_CHARACTER_TEXT
TEXT_NO_TOKENS = Reason.TEXT_NO_TOKENS
AUDIO_PROBLEM = Reason.AUDIO_PROBLEM  # error = str(AudioError) from higgs_train.data.audio_io

ROLES = ("system", "user", "assistant")
AUDIO_PART_KEYS = frozenset({"type", "audio_url", "raw_audio", "offset", "duration", "row_id"})
# Tokens upstream's chat template and collator give meaning to; scene-description tokens stay allowed in text.
CONTROL_TOKENS = (
    "<|AUDIO|>",
    "<|AUDIO_OUT|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|audio_out_bos|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|recipient|>",
)
# Text may carry tabs and line breaks; every other control character (C0, DEL, C1) is a paste or encoding accident
# that the tokenizer maps to odd byte tokens the model was never trained to read aloud.
ALLOWED_CONTROL_CHARACTERS = frozenset("\t\n\r")
REPORT_FILE = "validation_report.json"
VAL_REPORT_FILE = "val_validation_report.json"
QUARANTINE_FILE = "quarantine.parquet"


class TextEncoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass
class ValidationReport:
    """Outcome of one manifest: ``invalid`` holds ``{"index", "id", "reason"}``; ``valid_rows`` the accepted rows."""

    total: int
    valid: int
    invalid: list[dict[str, Any]] = field(default_factory=list)
    valid_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "valid": self.valid, "invalid": self.invalid}


# ------------------------------------------------------------------------------------------- structure checks

Part = tuple[str, str]  # ("text", text) or ("audio", audio_url)


def _parts(content: Any) -> list[Part] | None:
    """Content as a flat list of parts, or None when upstream's strict dacite conversion would reject it.

    Keys must be fields of upstream's TextContent / AudioContent (dacite strict refuses others, even when null);
    AudioContent's optional raw_audio/offset/duration/row_id must be null because preprocessing loads whole files.
    """
    items = content if isinstance(content, list) else [content]
    if not items:
        return None
    parts: list[Part] = []
    for item in items:
        if isinstance(item, str):
            parts.append(("text", item))
            continue
        if not isinstance(item, dict):
            return None
        kind, keys = item.get("type"), set(item)
        if kind == "text" and keys == {"type", "text"} and isinstance(item["text"], str):
            parts.append(("text", item["text"]))
        elif (
            kind == "audio"
            and keys <= AUDIO_PART_KEYS
            and isinstance(item.get("audio_url"), str)
            and all(item[k] is None for k in keys - {"type", "audio_url"})
        ):
            parts.append(("audio", item["audio_url"]))
        else:
            return None
    return parts


def structural_reason(row: dict[str, Any]) -> tuple[str | None, list[tuple[str, list[Part]]]]:
    """First schema/role/layout problem of a row (or None) and its messages as ``(role, parts)``."""
    if row.get(PARSE_ERROR_KEY):
        return str(row[PARSE_ERROR_KEY]), []
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return MESSAGES_NOT_LIST, []
    turns: list[tuple[str, list[Part]]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return MESSAGE_NOT_OBJECT.format(i=i), []
        # upstream's Message also has ``recipient`` (tool routing), meaningless for TTS: allowed only as null.
        extra = sorted(k for k in message if k not in ("role", "content") and (k != "recipient" or message[k]))
        if extra:
            return MESSAGE_UNKNOWN_KEY.format(i=i, key=extra[0]), []
        role = message["role"]
        if role not in ROLES:
            return BAD_ROLE.format(i=i, role=role), []
        if role == "system" and i != 0:
            return SYSTEM_NOT_FIRST.format(i=i), []
        parts = _parts(message["content"])
        if parts is None:
            return BAD_CONTENT.format(i=i), []
        turns.append((role, parts))

    speaker, start = row.get("speaker"), row.get("start_index")
    if speaker is not None and not isinstance(speaker, str):
        return SPEAKER_TYPE, []
    if not isinstance(start, int) or isinstance(start, bool):
        return START_INDEX_TYPE, []
    if not 0 <= start < len(turns):
        return START_INDEX_RANGE.format(start=start, n=len(turns)), []
    if row.get("misc") is not None and not isinstance(row["misc"], dict):
        return MISC_TYPE, []

    audio_at = [(i, role) for i, (role, parts) in enumerate(turns) for kind, _ in parts if kind == "audio"]
    if not any(i >= start and role == "assistant" for i, role in audio_at):
        return NO_TARGET_AUDIO.format(start=start), []
    seen_out = False
    for i, role in audio_at:
        if role == "assistant":
            seen_out = True
        elif seen_out:
            return AUDIO_IN_AFTER_OUT.format(i=i, role=role), []
    is_cloning = speaker is not None or any(i < start for i, _ in audio_at)
    # The released checkpoint takes the reference as an assistant audio-out turn; a Whisper model may also take it
    # as user audio (audio-in). Either way, some audio must precede the trained turn.
    if is_cloning and not any(i < start for i, _ in audio_at):
        return NO_REFERENCE_AUDIO.format(start=start), []
    return None, turns


def _control_character(text: str) -> tuple[int, str] | None:
    for pos, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARACTERS:
            return pos, char
    return None


def _text_part_reason(text: str, i: int) -> str | None:
    if not text.strip():
        return EMPTY_TEXT.format(i=i)
    token = next((t for t in CONTROL_TOKENS if t in text), None)
    if token is not None:
        return SPECIAL_TOKEN_TEXT.format(i=i, token=token)
    control = _control_character(text)
    if control is not None:
        return CONTROL_CHARACTER_TEXT.format(i=i, char=f"U+{ord(control[1]):04X}", pos=control[0])
    return None


def text_part_reason(text: str) -> str | None:
    """The checks of ``text_reason`` that need no tokenizer (empty, a control token, a control character) for one
    text on its own, worded as ``text_reason`` words them without the ``messages[i]: `` prefix. The data builder
    checks transcripts with it, so a transcript the trainer would quarantine never becomes a clip or a reference."""
    reason = _text_part_reason(text, 0)
    return None if reason is None else reason.removeprefix("messages[0]: ")


def text_reason(turns: list[tuple[str, list[Part]]], tokenizer: TextEncoder) -> str | None:
    """First empty, control-token- or control-character-carrying, or unencodable text part."""
    for i, (_, parts) in enumerate(turns):
        for kind, text in parts:
            if kind != "text":
                continue
            reason = _text_part_reason(text, i)
            if reason is not None:
                return reason
            if len(tokenizer.encode(text, add_special_tokens=False)) == 0:
                return TEXT_NO_TOKENS.format(i=i)
    return None


# ------------------------------------------------------------------------------------------------ audio checks


class AudioChecker:
    """Checks audio references, decoding each distinct real file once (the cache key is the resolved path).

    Remembers each file's reason (or None) and its duration from the header, which the length check uses.
    """

    def __init__(self, base_path: str | Path, limits: AudioLimits) -> None:
        self.base = Path(base_path).resolve()
        self.limits = limits
        self._decoded: dict[Path, tuple[str | None, float]] = {}

    def reason(self, audio_url: str) -> str | None:
        return self._check(audio_url)[0]

    def seconds(self, audio_url: str) -> float:
        """Header duration of a file that passed ``reason`` (0.0 for one that did not)."""
        return self._check(audio_url)[1]

    def _check(self, audio_url: str) -> tuple[str | None, float]:
        try:
            path = resolve_audio_path(audio_url, self.base)
        except AudioError as err:
            return str(err), 0.0
        if path not in self._decoded:
            self._decoded[path] = self._check_file(path)
        return self._decoded[path]

    def _check_file(self, path: Path) -> tuple[str | None, float]:
        # Named by its path under the root, so the reason is the same whichever spelling referenced it first.
        try:
            data, sr = read_checked(path, self.limits, display_name(path, self.base))
        except AudioError as err:
            return str(err), 0.0
        return None, len(data) / sr


def audio_reason(turns: list[tuple[str, list[Part]]], checker: AudioChecker) -> str | None:
    for i, (_, parts) in enumerate(turns):
        for kind, url in parts:
            if kind == "audio":
                error = checker.reason(url)
                if error is not None:
                    return AUDIO_PROBLEM.format(i=i, error=error)
    return None


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


# ----------------------------------------------------------------------------------------------------- driver


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
