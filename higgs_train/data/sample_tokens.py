"""The token vocabulary of a sample: how a ChatML row becomes upstream's tokens, and how long the model sees it.

Why one module, below preprocessing, the length limit and the validator: all three must agree token for token on
what a row is (``validation`` counts its text tokens, ``row_length`` estimates its merged length, ``preprocess``
encodes it and checks the exact length), so the row -> ChatML conversion, upstream's tokenization, the audio
placeholders and the merged-length formula live here once, and each of them imports it. Nothing here loads a
model or reads audio; ``PreprocessError`` is the one way a row fails on its way to a record (its ``stage`` and
``reason`` go to the quarantine).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from higgs_train.data.reasons import AudioError, Reason

WHISPER_SAMPLE_RATE = 16_000  # Whisper's feature extractor rate; upstream resamples to it anyway
WHISPER_EMBEDS_PER_SECOND = 25  # 3000 mel frames / 30 s, pooled by 4 in the audio tower (upstream constant)
AUDIO_IN_TOKEN = "<|AUDIO|>"
AUDIO_OUT_TOKEN = "<|AUDIO_OUT|>"


class PreprocessError(ValueError):
    """A row that cannot become a training record; ``stage`` and ``reason`` go to the quarantine."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def row_to_chatml(row: dict[str, Any]) -> dict[str, Any]:
    """A fresh ChatML dict from a canonical row (``messages`` or ``messages_json``); upstream mutates its input.

    Values are passed through unchecked (a list ``misc``, a string ``start_index``): the validator's
    ``structural_reason`` judges them next, so a job rejects exactly what ``--validate_data_only`` rejects.
    """
    if row.get("parse_error"):  # canonical manifests keep unreadable rows with the reason, for us to quarantine
        raise PreprocessError("parse", str(row["parse_error"]))
    fields = {}
    for name in ("messages", "misc"):
        value = row.get(name)
        raw = row.get(f"{name}_json")
        if value is None and raw is not None:
            if not isinstance(raw, str):
                raise PreprocessError("parse", Reason.MESSAGES_JSON_TYPE.format(type=type(raw).__name__))
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as err:
                raise PreprocessError("parse", Reason.MESSAGES_NOT_JSON) from err
        fields[name] = copy.deepcopy(value)
    start = row.get("start_index")
    if isinstance(start, float) and math.isnan(start):
        start = None
    elif isinstance(start, np.integer):  # Arrow/pandas hand back numpy ints; dacite(check_types=True) wants int
        start = int(start)
    speaker = row.get("speaker")
    if isinstance(speaker, float) and math.isnan(speaker):
        speaker = None
    return {"messages": fields["messages"], "start_index": start, "speaker": speaker, "misc": fields["misc"]}


def chatml_sample(row: dict[str, Any]) -> dict[str, Any]:
    """The four fields upstream's ChatMLSample takes, from an already validated row (a fresh copy)."""
    misc = row.get("misc")
    return {
        "messages": copy.deepcopy(row["messages"]),
        "start_index": row.get("start_index"),
        "speaker": row.get("speaker"),
        "misc": copy.deepcopy(misc) if isinstance(misc, dict) else None,
    }


def tokenize_chatml(sample: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int], list[Any], str | None]:
    """Upstream ``prepare_chatml_sample`` (on a copy), raising ``PreprocessError`` with its message on failure."""
    # Deferred on purpose: upstream's dataset module loads torch and transformers, which the validator's
    # structural checks (and every importer of this module) do not need until a row is tokenized.
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    printed = io.StringIO()  # upstream prints its exception and returns Nones; keep the message as the reason
    with contextlib.redirect_stdout(printed):
        input_ids, label_ids, audio_contents, speaker = prepare_chatml_sample(copy.deepcopy(sample), tokenizer)
    if input_ids is None:
        first = next((line for line in printed.getvalue().splitlines() if line.strip()), "unknown error")
        raise PreprocessError("tokenize", Reason.TOKENIZE_FAILED.format(error=first[:300]))
    return input_ids, label_ids, audio_contents, speaker


def chatml_token_count(row: dict[str, Any], tokenizer: Any) -> tuple[int, str | None]:
    """``(len(input_ids), None)`` or ``(0, reason)`` when upstream cannot tokenize the row."""
    try:
        input_ids = tokenize_chatml(chatml_sample(row), tokenizer)[0]
    except PreprocessError as err:
        return 0, err.reason
    return len(input_ids), None


def audio_contents_in_order(messages: list[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(message index, role, content) of every audio content, in the order upstream emits placeholders."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        items = content if isinstance(content, list) else [content]
        for item in items:
            if isinstance(item, dict) and item.get("type") == "audio":
                out.append((i, message.get("role"), item))
    return out


def estimate_num_tokens(
    num_text_tokens: int,
    frames: Iterable[int],
    is_out: Iterable[bool],
    num_codebooks: int,
    whisper_seconds: Iterable[float] = (),
    encode_audio_in_tokens: bool = True,
) -> int:
    """Length of the merged sequence the decoder processes for one sample (before the model's round-to-8 pad).

    The model replaces each ``<|AUDIO|>``/``<|AUDIO_OUT|>`` placeholder by that clip's code columns after the
    collator adds a stream BOS and EOS column (+2) and the delay pattern shifts codebook ``k`` right by ``k``
    (+num_codebooks-1): ``T + num_codebooks + 1`` positions per segment. Audio-in codes are merged only when the
    model encodes audio-in tokens; Whisper embeddings add about 25 positions per second of audio-in. This is what
    the batcher budgets, since attention/MLP cost follows the merged length, not the text length.
    """
    total = num_text_tokens
    for t, out in zip(frames, is_out, strict=True):
        total -= 1
        if out or encode_audio_in_tokens:
            total += t + num_codebooks + 1
    for sec in whisper_seconds:
        total += math.ceil(WHISPER_EMBEDS_PER_SECOND * sec)
    return int(total)


def audio_url_of(content: dict[str, Any]) -> str:
    """The ``audio_url`` of an audio content; contents preprocessing cannot key by file are refused."""
    # Slicing and inline audio would need the slice/bytes in the code-store key; refuse rather than guess.
    if content.get("offset") is not None or content.get("duration") is not None:
        raise PreprocessError("audio", Reason.AUDIO_SLICING_UNSUPPORTED)
    url = content.get("audio_url")
    if not url:
        if content.get("raw_audio"):
            raise PreprocessError("audio", Reason.RAW_AUDIO_UNSUPPORTED)
        raise AudioError(Reason.AUDIO_URL_EMPTY)
    return str(url)


def row_audio_urls(row: dict[str, Any]) -> list[str]:
    """The audio URLs of a row in the order preprocessing encodes them, up to the first content it would
    refuse; [] for a row it cannot read. Never raises: the row's own pass reports what is wrong with it."""
    try:
        layout = audio_contents_in_order(chatml_sample(row_to_chatml(row))["messages"])
    except Exception:
        return []
    urls = []
    for _, _, content in layout:
        try:
            urls.append(audio_url_of(content))
        except (PreprocessError, AudioError):
            break
    return urls
