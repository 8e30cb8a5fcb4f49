"""The generation prompt: what the model is conditioned on, built as a training sample is, up to the trained turn.

Why a module of its own: a fine-tune is only useful if inference conditions the model the way training did, and
that is a property of the prompt alone, checkable without a model (tests/unit/test_export_generate.py compares a
built prompt with a training record token for token). The prompt is built from the training layout
(``chatml``), tokenized by upstream's ``prepare_chatml_sample`` (as ``SamplePreprocessor`` does), and its
reference audio is loaded by ``audio_io.load_audio`` and encoded by the same audio tokenizer call. It differs from
the training sample in one place, as upstream's ``HiggsAudioServeEngine`` does it: it stops after the target turn's
``<|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|>`` (the ``<|audio_out_bos|>`` forces audio
rather than text), i.e. it is the training sample's ``input_ids`` cut right before ``<|AUDIO_OUT|>``.
Decoding the prompt (``generation``) needs the model; building it needs only the tokenizers. How many steps to
decode for a prompt (``auto_max_new_tokens``) and its target text read back from a decoded prompt
(``last_user_text``) are here too: evaluation, validation samples and the Studio all size and label a prompt alike.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from higgs_train.chatml import AUDIO_OUT_BOS, GENERATION_PREFIX, text_of
from higgs_train.data.audio_io import AudioLimits, load_audio
from higgs_train.data.record_codec import record_to_sample
from higgs_train.data.sample_tokens import WHISPER_SAMPLE_RATE, audio_contents_in_order

AUDIO_IN_ROLES = ("user", "system")


@dataclass
class GenerationPrompt:
    """One prompt: a ``ChatMLDatasetSample`` ending in ``<|audio_out_bos|>``, plus the target codes if known."""

    sample_id: str
    sample: Any  # boson_multimodal ChatMLDatasetSample, label_ids None
    target_codes: np.ndarray | None = None  # (num_codebooks, T) of the target turn, for code agreement
    text: str = ""  # the target text (the last user turn), what the audio check measures the clip against


def build_prompt(
    context: dict[str, Any],
    tokenizer: Any,
    audio_tokenizer: Any,
    audio_base_path: str | Path,
    *,
    whisper: bool = False,
    limits: AudioLimits | None = None,
    target_codes: np.ndarray | None = None,
) -> GenerationPrompt:
    """Tokenize ``context`` (see ``context_of``) and encode its audio as preprocessing does; append the prefix."""
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

    chatml = {"messages": copy.deepcopy(context["messages"]), "start_index": None, "speaker": context.get("speaker")}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # upstream prints and returns Nones on a malformed sample
        input_ids, _, _, _ = prepare_chatml_sample(chatml, tokenizer)
    if input_ids is None:
        raise ValueError(f"prompt {context.get('id')!r} cannot be tokenized: {printed.getvalue().strip()[:300]}")
    input_ids = list(input_ids) + tokenizer.encode(GENERATION_PREFIX + AUDIO_OUT_BOS, add_special_tokens=False)

    limits = limits or AudioLimits()
    rate = int(audio_tokenizer.sampling_rate)
    codes, waves = [], []
    for _, role, content in audio_contents_in_order(context["messages"]):
        url = content.get("audio_url")
        if not url:
            raise ValueError(f"prompt {context.get('id')!r}: audio contents need an audio_url")
        wave = load_audio(url, audio_base_path, rate, limits)
        with torch.inference_mode():
            encoded = audio_tokenizer.encode(wave, rate)
        # Training stores codes as int16 (token cache); the round trip is exact for codebooks <= 32767 entries.
        codes.append(torch.as_tensor(np.asarray(encoded.cpu()), dtype=torch.long))
        if whisper and role in AUDIO_IN_ROLES:
            waves.append(torch.from_numpy(load_audio(url, audio_base_path, WHISPER_SAMPLE_RATE, limits)))
    num_codebooks = int(audio_tokenizer.num_codebooks)
    starts = np.concatenate([[0], np.cumsum([c.shape[1] for c in codes])[:-1]]) if codes else np.zeros(0)
    wave_starts = np.concatenate([[0], np.cumsum([len(w) for w in waves])[:-1]]) if waves else np.zeros(0)
    sample = ChatMLDatasetSample(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        label_ids=None,
        audio_ids_concat=torch.cat(codes, dim=1) if codes else torch.zeros((num_codebooks, 0), dtype=torch.long),
        audio_ids_start=torch.as_tensor(starts, dtype=torch.long),
        audio_waveforms_concat=torch.cat(waves) if waves else torch.zeros(0),
        audio_waveforms_start=torch.as_tensor(wave_starts, dtype=torch.long),
        audio_sample_rate=torch.full((len(waves),), WHISPER_SAMPLE_RATE, dtype=torch.long),
        audio_speaker_indices=torch.full((len(codes),), -1, dtype=torch.long),
    )
    text = text_of(context["messages"][-1].get("content")) if context["messages"] else ""
    return GenerationPrompt(str(context.get("id", "prompt")), sample, target_codes, text)


def prompt_from_record(record: dict[str, Any], audio_out_bos_id: int) -> GenerationPrompt:
    """A preprocessed training record cut before its last ``<|AUDIO_OUT|>``: the prompt training conditioned on.

    The cut keeps ``<|audio_out_bos|>`` and drops the target's codes, which become ``target_codes``.
    Used for samples during training (validation records are already encoded) and to test ``build_prompt``.
    """
    sample = record_to_sample(record)
    ids = sample.input_ids
    bos_positions = (ids == audio_out_bos_id).nonzero().flatten()
    is_out = np.asarray(record["audio_is_out"], dtype=bool)
    if len(bos_positions) == 0 or len(is_out) == 0 or not is_out[-1]:
        raise ValueError(f"record {record.get('id')!r} does not end in an assistant audio turn")
    cut = int(bos_positions[-1]) + 1
    last_start = int(sample.audio_ids_start[-1])
    target = sample.audio_ids_concat[:, last_start:].numpy().copy()
    return GenerationPrompt(
        str(record.get("id", "record")),
        replace(
            sample,
            input_ids=ids[:cut].clone(),
            label_ids=None,
            audio_ids_concat=sample.audio_ids_concat[:, :last_start].clone(),
            audio_ids_start=sample.audio_ids_start[:-1].clone(),
            audio_speaker_indices=sample.audio_speaker_indices[:-1].clone(),
        ),
        target,
    )


FRAMES_PER_SECOND = 25  # Higgs audio tokenizer frame rate; one generation step per frame
AUTO_LENGTH_FACTOR = 2.0  # auto cap: twice the expected length (longer is flagged too_long anyway)
AUTO_LENGTH_MARGIN = 32  # + delay-pattern tail and the closing text tokens


def auto_max_new_tokens(expected_seconds: float | None, cap: int) -> int:
    """Generation steps for a clip expected to last ``expected_seconds`` (``cap`` when unknown or smaller)."""
    if not expected_seconds:
        return cap
    return min(cap, int(expected_seconds * FRAMES_PER_SECOND * AUTO_LENGTH_FACTOR) + AUTO_LENGTH_MARGIN)


_USER_TURN = re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)


def last_user_text(decoded_prompt: str) -> str:
    """The last user turn's text in a decoded ChatML prompt (the target text of a training record)."""
    turns = _USER_TURN.findall(decoded_prompt)
    return turns[-1].strip() if turns else ""
