"""Every reason a row can be rejected for, in one catalogue: the validator and the job's preprocessing word them alike.

Why one place: ``--validate_data_only`` and a training job run the same checks on the same rows, and a user compares
their reports (and greps them). Two hand-written copies of the wording drift; here each reason is a ``Reason`` member
whose name is a stable code and whose value is the message template. ``Reason.X.format(...)`` fills the template
(``{i}`` is a message index); a member without fields is its own text (a ``StrEnum`` compares equal to its value).

Stages (where a row was rejected) are separate from reasons: ``validation`` / ``parse`` / ``audio`` / ``length`` and
so on say *where*, the reason says *why*, and the same row gets the same reason wherever it is checked.

The audio errors live here too, beside the texts they carry: token counting, row checks and audio I/O all raise or
catch them, and keeping them at the bottom of the data path keeps those modules from importing each other for them.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Reason templates; the member name is the code. Tests and users match on the text: change it deliberately."""

    # --- reading the manifest (manifest.py) ---
    NOT_JSON = "manifest line {line} is not valid JSON"
    NOT_OBJECT = "row is not a JSON object"
    MESSAGES_NOT_JSON = "messages or misc are not valid JSON"
    MESSAGES_JSON_TYPE = "messages_json must be a string of JSON text (got {type})"
    INVALID_UNICODE = "row contains text that is not valid Unicode (an invalid UTF-8 byte or a lone surrogate)"
    SPEAKER_TYPE = "speaker must be a string or null"
    START_INDEX_TYPE = "start_index must be an integer"
    # --- schema, roles, layout (row_checks.structural_reason) ---
    MESSAGES_NOT_LIST = "messages must be a non-empty list"
    MESSAGE_NOT_OBJECT = "messages[{i}] must be an object with role and content"
    MESSAGE_UNKNOWN_KEY = "messages[{i}] has unsupported key {key!r}"
    BAD_CONTENT = "messages[{i}]: content must be a string, a text part, an audio part or a list of those"
    BAD_ROLE = "messages[{i}]: role must be system, user or assistant (got {role!r})"
    SYSTEM_NOT_FIRST = "messages[{i}]: a system turn is only allowed at index 0"
    START_INDEX_RANGE = "start_index {start} is out of range for {n} messages"
    MISC_TYPE = "misc must be an object or null"
    NO_TARGET_AUDIO = "no assistant audio turn at or after start_index {start} (nothing to train)"
    AUDIO_IN_AFTER_OUT = (
        "messages[{i}]: {role} audio after an assistant audio turn (audio-in after audio-out is unsupported)"
    )
    NO_REFERENCE_AUDIO = "cloning sample has no reference audio before start_index {start}"
    # --- text (row_checks.text_reason) ---
    EMPTY_TEXT = "messages[{i}]: text is empty"
    SPECIAL_TOKEN_TEXT = "messages[{i}]: text contains the control token {token}"
    CONTROL_CHARACTER_TEXT = "messages[{i}]: text contains the control character {char} at position {pos}"
    TEXT_NO_TOKENS = "messages[{i}]: text encodes to no tokens"
    TOKENIZE_FAILED = "ChatML tokenization failed: {error}"
    # --- audio (audio_io; wrapped as AUDIO_PROBLEM with the message index) ---
    AUDIO_PROBLEM = "messages[{i}]: {error}"
    AUDIO_URL_EMPTY = "audio_url is empty"
    AUDIO_ESCAPES_ROOT = "audio path escapes the audio root: {url}"
    AUDIO_NOT_FOUND = "audio file not found: {url}"
    AUDIO_SYMLINK_ESCAPES = "audio path is a symlink that escapes the audio root: {url}"
    AUDIO_NOT_A_FILE = "audio path is not a file: {url}"
    AUDIO_UNREADABLE = "audio file cannot be read ({error}): {name}"
    AUDIO_UNDECODABLE = "audio file cannot be decoded ({error}): {name}"
    AUDIO_TRUNCATED = "audio file is truncated (header declares {declared} frames, data holds {actual}): {name}"
    AUDIO_NO_SAMPLES = "audio file has no samples: {name}"
    AUDIO_NON_FINITE = "audio has non-finite samples (NaN/Inf): {name}"
    AUDIO_AMPLITUDE = "audio amplitude is absurd (peak {peak:.3g} > {limit:g}; full scale is 1.0): {name}"
    AUDIO_TOO_SHORT = "audio too short ({seconds:.2f}s < {limit}s): {name}"
    AUDIO_TOO_LONG = "audio too long ({seconds:.2f}s > {limit}s): {name}"
    AUDIO_SILENT = "audio is silent (RMS {rms:.2e}): {name}"
    # --- length (row_length) ---
    ROW_TOO_LONG = "row is {tokens} tokens long (text + audio, merged) but max_tokens_per_row is {limit}"
    # --- preprocessing only: what the validator cannot see without the audio tokenizer ---
    AUDIO_SLICING_UNSUPPORTED = "audio offset/duration slicing is not supported; cut the clip instead"
    RAW_AUDIO_UNSUPPORTED = "inline raw_audio is not supported; reference a file via audio_url"
    PLACEHOLDER_MISMATCH = (
        "{placeholders} audio placeholder tokens for {contents} audio contents "
        "(does a text content contain a literal <|AUDIO|> or <|AUDIO_OUT|>?)"
    )
    ENCODE_FAILED = "audio tokenizer failed on {url}: {error}"
    ENCODE_BAD_SHAPE = "audio tokenizer returned codes of shape {shape} for {url}"
    ENCODE_OUT_OF_RANGE = "audio codes outside the int16 range for {url}"


class AudioError(ValueError):
    """A problem with one audio reference; ``str(err)`` is the reason recorded for the row."""


class AudioUnavailable(AudioError):
    """The file could not be reached *now* (absent, not a file, outside the root, unreadable): file-system state.

    Unlike a bad waveform, this can change without the manifest changing (a restored file, a remounted volume), so
    the token cache must key such a failure by the state it saw (``token_cache``), never keep it as a fact about the
    row. ``state`` is the inner reason (the same text the cache key's fingerprint records); ``url`` the reference.
    """

    def __init__(self, message: str, url: str | None = None, state: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.state = state if state is not None else message
