"""The per-row length limit: rows longer than the model can attend to are quarantined, not trained.

Why: a 100k-character text passes every content check, becomes a ~24k-token row, and the job dies allocating the
attention mask for it (the released model has 4,096 positions). The limit is ``max_tokens_per_row`` (config), by
default the model's ``max_position_embeddings``.

The validator has no audio tokenizer, so both sides judge the same *estimate*: text tokens from upstream's
``prepare_chatml_sample`` plus, per audio, ``ceil(header seconds * frames per second)`` code columns merged as
``sample_tokens.estimate_num_tokens`` describes. Both read durations from the file header, so they agree on every row
and word the reason identically. Preprocessing additionally checks the exact merged length after encoding; a row
whose exact length crosses the limit while its estimate does not (a frame or two of codec padding) is quarantined
there with the exact count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs_train.data.reasons import Reason
from higgs_train.data.sample_tokens import estimate_num_tokens


@dataclass(frozen=True)
class RowLengthLimit:
    """What the estimate needs from the model and its audio tokenizer, and the limit (0: no limit)."""

    max_tokens: int
    num_codebooks: int
    frames_per_second: float
    encode_audio_in_tokens: bool = True
    whisper: bool = False

    def estimate(self, num_text_tokens: int, seconds: list[float], is_out: list[bool]) -> int:
        frames = [math.ceil(s * self.frames_per_second) for s in seconds]
        whisper_seconds = [s for s, out in zip(seconds, is_out, strict=True) if not out] if self.whisper else []
        return estimate_num_tokens(
            num_text_tokens, frames, is_out, self.num_codebooks, whisper_seconds, self.encode_audio_in_tokens
        )

    def reason(self, tokens: int) -> str | None:
        if self.max_tokens and tokens > self.max_tokens:
            return Reason.ROW_TOO_LONG.format(tokens=tokens, limit=self.max_tokens)
        return None


def _audio_tokenizer_config(audio_tokenizer_path: str) -> dict[str, Any]:
    local = Path(audio_tokenizer_path)
    if local.is_dir():
        return json.loads((local / "config.json").read_text())
    from huggingface_hub import hf_hub_download  # deferred on purpose: only a hub id needs the hub client

    return json.loads(Path(hf_hub_download(audio_tokenizer_path, "config.json")).read_text())


def resolve_row_length_limit(model_path: str, audio_tokenizer_path: str, max_tokens_per_row: int = 0) -> RowLengthLimit:
    """The limit for a (resolved) model + audio tokenizer; ``max_tokens_per_row`` 0 means the model's positions.

    Frames per second follow upstream's ``HiggsAudioTokenizer.frame_rate``: ``ceil(sample_rate / prod(ratios))``.
    """
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig  # deferred on purpose: loads torch/transformers

    config = HiggsAudioConfig.from_pretrained(model_path)
    limit = max_tokens_per_row or int(config.text_config.max_position_embeddings)
    tok = _audio_tokenizer_config(audio_tokenizer_path)
    fps = math.ceil(tok["sample_rate"] / math.prod(tok["ratios"]))
    return RowLengthLimit(
        max_tokens=limit,
        num_codebooks=int(config.audio_num_codebooks),
        frames_per_second=float(fps),
        encode_audio_in_tokens=bool(config.encode_audio_in_tokens),
        whisper=bool(config.encode_whisper_embed),
    )
