"""What generation puts around upstream's ``HiggsAudioModel.generate``: when it stops, which ids it may draw, and
how its delayed audio stream becomes codes.

Why a module of its own: upstream's ``generate`` is used as published, and each rule here corrects one way its
output would otherwise be wrong for a fine-tune (an id beyond the tokenizer, a placeholder sampled as text, a clip
ended before its first frame, a real frame dropped from a stream cut by ``max_new_tokens``). They read the model
config, never a loaded model, so each can be checked on plain tensors; ``generation.generate_codes`` is the one
place that hands them to upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Upstream serve engine's stop strings plus the end of the audio turn: the prompt asks for one audio turn, so the
# first ``<|audio_eos|>`` (which upstream forces once the delayed stream has ended) ends generation. Otherwise a
# model that has not learnt to close its turn would spend up to max_new_tokens steps on text nobody uses.
STOP_STRINGS = ("<|end_of_text|>", "<|eot_id|>", "<|audio_eos|>")


class TextTokenMask:
    """Logits processor: the text head never emits an id that sampling must not pick.

    Two kinds of ids get ``-inf``:

    * ids beyond the tokenizer: checkpoints pad the text embedding and LM head (the tiny model rounds its
      vocabulary up to a multiple of 64) and padding ids have no token. Upstream ``_sample`` raises "Next generated
      token ... greater than the tokenizer's vocabulary size" when one is picked (an untrained head often does);
    * the audio placeholders ``<|AUDIO|>`` / ``<|AUDIO_OUT|>``: only the model inserts them (in audio mode, with
      codes). One sampled as text has no codes behind it, and upstream's embedding merge then fails on the next
      step ("index 0 is out of bounds").

    ``HiggsAudioModel.generate`` hands one ``logits_processor`` list to both heads: text scores come with
    ``input_ids``, audio scores (``(num_codebooks, codebook_size + 2)``) with ``input_ids=None`` and are left
    alone. Transformers runs custom processors before temperature / top-k / top-p, so the warpers only ever see
    tokens that may be generated.
    """

    def __init__(self, vocab_size: int, placeholder_ids: Sequence[int] = ()) -> None:
        self.vocab_size = int(vocab_size)
        self.placeholder_ids = sorted({int(i) for i in placeholder_ids})

    @classmethod
    def for_stack(cls, tokenizer: Any, model_config: Any) -> TextTokenMask:
        return cls(len(tokenizer), (model_config.audio_in_token_idx, model_config.audio_out_token_idx))

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        if input_ids is None:
            return scores
        banned = torch.arange(scores.shape[-1], device=scores.device) >= self.vocab_size
        banned[[i for i in self.placeholder_ids if i < scores.shape[-1]]] = True
        return scores.masked_fill(banned, float("-inf"))


class AudioEndFloor:
    """Keeps the audio stream open until ``min_frames`` frames are complete.

    Upstream ends the stream as soon as any codebook draws ``audio_stream_eos_id`` and fills the rest of the delay
    tail itself, so a single early EOS yields a 0-frame clip. This processor sees the audio scores (upstream passes
    them with ``input_ids=None``) and, for the first ``min_frames + delay`` audio steps, bans the stream's EOS and
    BOS ids (BOS is only ever placed by upstream's delay pattern, never drawn). Text scores pass untouched. One
    instance per ``generate`` call: it counts that call's audio steps.
    """

    def __init__(self, min_frames: int, num_codebooks: int, stream_ids: Sequence[int], use_delay_pattern: bool) -> None:
        delay = num_codebooks - 1 if use_delay_pattern else 0
        self.remaining = int(min_frames) + delay if min_frames > 0 else 0
        self.banned = sorted({int(i) for i in stream_ids})

    @classmethod
    def for_stack(cls, model_config: Any, min_frames: int) -> AudioEndFloor:
        return cls(
            min_frames,
            int(model_config.audio_num_codebooks),
            (model_config.audio_stream_bos_id, model_config.audio_stream_eos_id),
            bool(model_config.use_delay_pattern),
        )

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        if input_ids is not None or self.remaining <= 0:
            return scores
        self.remaining -= 1
        banned = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        banned[[i for i in self.banned if i < scores.shape[-1]]] = True
        return scores.masked_fill(banned, float("-inf"))


def codes_from_delayed(
    audio_sequence: torch.Tensor, codebook_size: int, use_delay_pattern: bool = True
) -> tuple[np.ndarray, bool]:
    """Generated ``(K, L)`` delayed stream -> ``(K, T)`` codes without the stream BOS and EOS, and whether a
    non-code id (normally the EOS) ended the stream.

    Upstream's serve engine reverts the delay and drops the first and last column. That is right only when the
    stream ended with EOS; a stream cut by ``max_new_tokens`` would lose a real frame. Here every column from the
    first that holds a non-code id (EOS, or an out-of-place BOS) on any codebook is dropped instead.
    """
    from boson_multimodal.model.higgs_audio.utils import revert_delay_pattern

    data = audio_sequence.detach().cpu().long()
    if use_delay_pattern:
        if data.shape[1] < data.shape[0]:
            return np.zeros((data.shape[0], 0), dtype=np.int64), False
        data = revert_delay_pattern(data)
    data = data[:, 1:]  # the stream BOS column
    special = (data >= codebook_size).any(dim=0).nonzero().flatten()
    finished = len(special) > 0
    end = int(special[0]) if finished else data.shape[1]
    return data[:, :end].numpy(), finished
