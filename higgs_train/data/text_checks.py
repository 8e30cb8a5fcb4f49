"""The checks a transcript or a text part passes before any tokenizer sees it: not empty, no Higgs control token, no
control character.

Why a module of its own, at the bottom of the data path: the trainer's row checks (``row_checks.text_reason``) and
the dataset builder's transcript checks (``builder.source_listing``) must refuse the same texts with the same words,
and the builder should not depend on the trainer's full row checks (audio decoding, manifests) to do so.
"""

from __future__ import annotations

import unicodedata

from higgs_train.data.reasons import Reason

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


def _control_character(text: str) -> tuple[int, str] | None:
    for pos, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARACTERS:
            return pos, char
    return None


def indexed_text_part_reason(text: str, i: int) -> str | None:
    """The first of: empty, a control token, a control character, worded for ``messages[i]``."""
    if not text.strip():
        return Reason.EMPTY_TEXT.format(i=i)
    token = next((t for t in CONTROL_TOKENS if t in text), None)
    if token is not None:
        return Reason.SPECIAL_TOKEN_TEXT.format(i=i, token=token)
    control = _control_character(text)
    if control is not None:
        return Reason.CONTROL_CHARACTER_TEXT.format(i=i, char=f"U+{ord(control[1]):04X}", pos=control[0])
    return None


def text_part_reason(text: str) -> str | None:
    """The checks of ``row_checks.text_reason`` that need no tokenizer (empty, a control token, a control character) for one
    text on its own, worded as that check words them without the ``messages[i]: `` prefix. The data builder
    checks transcripts with it, so a transcript the trainer would quarantine never becomes a clip or a reference."""
    reason = indexed_text_part_reason(text, 0)
    return None if reason is None else reason.removeprefix("messages[0]: ")
