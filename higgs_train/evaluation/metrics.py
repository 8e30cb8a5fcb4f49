"""The metric protocol and the clip it scores.

A metric is anything with a ``name`` and ``score(clip) -> {metric name: value}``; the suite
(``higgs_train.evaluation.suite``) runs a list of them. Metrics are kept small and independent so a user can swap
the speaker model or the ASR without touching the rest, and so the cheap checks run even where no model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Clip:
    """One generated clip with what it should have been.

    ``waveform``: mono float32 in [-1, 1] at ``sample_rate``. ``text``: the text it was asked to speak.
    ``reference``: the voice prompt (the clip whose speaker it should sound like). ``target``: the ground-truth
    recording of ``text``, when the manifest has one (SIM against it, and the expected length). ``finished``: the
    audio stream ended with EOS (False: the generation length cap cut it). ``codes``: the generated codec codes
    ``(num_codebooks, T)``, for the repetition check.
    """

    clip_id: str
    waveform: np.ndarray
    sample_rate: int
    text: str = ""
    reference: np.ndarray | None = None
    reference_rate: int | None = None
    target: np.ndarray | None = None
    target_rate: int | None = None
    expected_seconds: float | None = None
    finished: bool | None = None
    codes: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return len(self.waveform) / float(self.sample_rate) if self.sample_rate else 0.0


@runtime_checkable
class Metric(Protocol):
    """A named scorer; ``score`` returns one or more floats keyed by metric name (NaN when not applicable)."""

    name: str

    def score(self, clip: Clip) -> dict[str, float]: ...


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 resampling (librosa's soxr backend); a no-op at the same rate."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig_rate == target_rate or len(waveform) == 0:
        return waveform
    import librosa

    return librosa.resample(waveform, orig_sr=orig_rate, target_sr=target_rate).astype(np.float32)
