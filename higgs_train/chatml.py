"""The ChatML voice-cloning sample layout: one home for the system prompt and the five-turn cloning sample.

Training data (``embedded.sample_data``, the dataset builder) and generation prompts (``generation``) all build
samples here, so the layout the model is trained on is the layout it is prompted with. It imports nothing of the
project and stands below everything that uses it (``data/``, ``builder/``, ``embedded/``, ``generation``)::

    0 system    : system prompt (DEFAULT_SYSTEM_PROMPT unless overridden)
    1 user      : reference transcript
    2 assistant : reference audio   (another utterance of the same speaker)
    3 user      : target text
    4 assistant : target audio      <- start_index = 4: the only trained turn

A generation prompt is the context turns (``context_of``: everything before ``start_index``) followed by
``GENERATION_PREFIX + AUDIO_OUT_BOS``, i.e. the training sample cut right before the target's ``<|AUDIO_OUT|>``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

# The scene description upstream's examples use for clean speech; the builder's ``--system_prompt`` overrides it.
DEFAULT_SYSTEM_PROMPT = (
    "Generate audio following instruction.\n\n<|scene_desc_start|>\nAudio is recorded from a quiet room.\n"
    "<|scene_desc_end|>"
)
TARGET_TURN = 4
GENERATION_PREFIX = "<|start_header_id|>assistant<|end_header_id|>\n\n"
AUDIO_OUT_BOS = "<|audio_out_bos|>"


def cloning_sample(
    sample_id: str,
    speaker: str | None,
    ref_text: str,
    ref_audio: str,
    target_text: str,
    target_audio: str,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> dict:
    """One ChatML voice-cloning sample in the documented manifest format."""
    return {
        "id": sample_id,
        "speaker": speaker,
        "start_index": TARGET_TURN,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": ref_text},
            {"role": "assistant", "content": {"type": "audio", "audio_url": ref_audio}},
            {"role": "user", "content": target_text},
            {"role": "assistant", "content": {"type": "audio", "audio_url": target_audio}},
        ],
    }


def cloning_context(
    ref_text: str, ref_audio: str, target_text: str, sample_id: str = "prompt", system_prompt: str | None = None
) -> dict[str, Any]:
    """The training layout's context turns (system, user ref text, assistant ref audio, user target text).

    Built by ``cloning_sample`` -- the layout training samples use -- and cut at its ``start_index``
    so the layout has one definition. ``system_prompt`` replaces the sample data's system text; use the one your
    training manifests carry (a different system prompt is a different prompt).
    """
    full = cloning_sample(sample_id, None, ref_text, ref_audio, target_text, target_audio="")
    if system_prompt is not None:
        full["messages"][0]["content"] = system_prompt
    return context_of(full)


def context_of(sample: dict[str, Any]) -> dict[str, Any]:
    """A training sample (manifest row) reduced to the turns before its trained turn (``start_index``)."""
    messages = sample.get("messages")
    start = sample.get("start_index")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"sample {sample.get('id')!r} has no messages")
    if start is None:
        start = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    context = copy.deepcopy(messages[: int(start)])
    if not context or context[-1].get("role") != "user":
        raise ValueError(
            f"sample {sample.get('id')!r}: the turn before start_index {start} must be the user's target text"
        )
    return {"id": str(sample.get("id", "prompt")), "speaker": sample.get("speaker"), "messages": context}


def text_of(content: Any) -> str:
    """The text parts of a message's content (a string, a part dict, or a list of either), joined by spaces."""
    items = content if isinstance(content, list) else [content]
    parts = []
    for item in items:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            parts.append(str(item.get("text", "")))
    return " ".join(parts).strip()


def target_audio_url(row: dict[str, Any]) -> str | None:
    """The audio_url of a sample's trained (first assistant audio from ``start_index``) turn, if any."""
    messages = row.get("messages") or []
    start = row.get("start_index")
    for message in messages[int(start) if start is not None else 0 :]:
        content = message.get("content")
        for item in content if isinstance(content, list) else [content]:
            if message.get("role") == "assistant" and isinstance(item, dict) and item.get("type") == "audio":
                return item.get("audio_url")
    return None


def clips_with_transcripts(turns: Iterable[tuple[str, list[tuple[str, str]]]]) -> Iterator[tuple[str | None, str]]:
    """``(transcript, audio_url)`` for each assistant audio turn of a parsed sample (``row_checks.structural_reason``'s
    turns): the user text just before it is what the prompt says that clip speaks (None if no text came first).

    One reading of the cloning layout for everything that harvests clips from manifests (the builder's manifest
    source, ``generate.py --speaker``)."""
    text: str | None = None
    for role, parts in turns:
        for kind, value in parts:
            if kind == "text" and role == "user":
                text = value
            elif kind == "audio" and role == "assistant":
                yield text, value
                text = None
