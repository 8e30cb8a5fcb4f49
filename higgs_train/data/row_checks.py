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
9. length (when a ``RowLengthLimit`` is given; ``row_report.length_reason``): the merged text + audio length,
   estimated from the header durations exactly as preprocessing estimates it, within ``max_tokens_per_row``.

Every reason comes from ``reasons.Reason``; preprocessing runs these same functions in the same order, so a job
quarantines each row with the reason ``--validate_data_only`` gives it. The text checks that need no tokenizer live
in ``text_checks`` (the data builder runs them on transcripts); the validate-only pass over a whole manifest, its
report and its summary in ``row_report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from higgs_train.data.audio_io import AudioLimits, display_name, read_checked, resolve_audio_path
from higgs_train.data.manifest import (
    PARSE_ERROR_KEY,
    SPEAKER_TYPE,
    START_INDEX_TYPE,
)
from higgs_train.data.reasons import AudioError, Reason
from higgs_train.data.text_checks import indexed_text_part_reason

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


class TextEncoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


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


def text_reason(turns: list[tuple[str, list[Part]]], tokenizer: TextEncoder) -> str | None:
    """First empty, control-token- or control-character-carrying, or unencodable text part."""
    for i, (_, parts) in enumerate(turns):
        for kind, text in parts:
            if kind != "text":
                continue
            reason = indexed_text_part_reason(text, i)
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
