"""The settings that decide a record's content besides its inputs and tokenizers, and the preprocessing version.

Why a module of its own: the token cache's key hashes them (``cache_key``), the cache opens its code store by them
(``token_cache``) and the pipeline ships them to its actors (``ray_pipeline``), none of which run preprocessing; here
they sit below all of those and below ``preprocess``, which applies them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.sample_tokens import WHISPER_SAMPLE_RATE

PREPROCESS_VERSION = "2"  # bump whenever a record's content for the same inputs would change


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything besides the inputs and the tokenizers that decides a record's content (part of the cache key)."""

    limits: AudioLimits = field(default_factory=AudioLimits)
    whisper: bool = False
    encode_audio_in_tokens: bool = True
    whisper_sample_rate: int = WHISPER_SAMPLE_RATE
    max_tokens_per_row: int = 0  # 0: no limit (the job passes the model's positions by default)

    def identity(self) -> dict[str, Any]:
        return {"version": PREPROCESS_VERSION, **asdict(self)}
