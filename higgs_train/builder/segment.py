"""Cutting long recordings into 2-15 s utterances at pauses (``--segment``).

Speech regions come from silero-vad (its TorchScript weights ship inside the PyPI wheel, so it runs offline; 16 kHz
input). Cuts are only ever placed in the middle of a pause between two regions, never inside speech:

* ``forced_split``: the recording's transcript has one line per utterance. The ``n - 1`` longest pauses become the
  cuts, so segment ``i`` gets line ``i``; it fails (returns None) when there are too few pauses or a segment falls
  outside the length bounds, because then lines and audio would not match and the text would be wrong.
* ``greedy_split``: no per-segment transcript. Regions are joined until the segment reaches ``min_seconds`` and cut
  at the next pause, never exceeding ``max_seconds``; a stretch of speech with no pause within ``max_seconds`` is
  reported, not cut mid-word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from higgs_train.data.audio_io import resample

VAD_SAMPLE_RATE = 16000
EDGE_PAD_SECONDS = 0.1  # silence kept around each segment, so onsets and release are not clipped


@dataclass(frozen=True)
class Span:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentPlan:
    """Segments to cut and the speech stretches that could not be cut into bounds (reported)."""

    segments: list[Span]
    unusable: list[Span]


class SpeechDetector:
    """silero-vad, loaded once per actor; ``regions`` returns speech spans in seconds."""

    def __init__(self, min_silence_ms: int = 300) -> None:
        from silero_vad import load_silero_vad

        self.model = load_silero_vad()  # TorchScript from the wheel's data folder, no download
        self.min_silence_ms = min_silence_ms

    def regions(self, wave: np.ndarray, sample_rate: int) -> list[Span]:
        import torch
        from silero_vad import get_speech_timestamps

        audio = torch.from_numpy(resample(wave, sample_rate, VAD_SAMPLE_RATE))
        stamps = get_speech_timestamps(
            audio,
            self.model,
            sampling_rate=VAD_SAMPLE_RATE,
            min_silence_duration_ms=self.min_silence_ms,
            return_seconds=True,
        )
        return [Span(float(s["start"]), float(s["end"])) for s in stamps]


def _padded(start: float, end: float, total: float) -> Span:
    return Span(max(0.0, start - EDGE_PAD_SECONDS), min(total, end + EDGE_PAD_SECONDS))


def forced_split(
    regions: list[Span], lines: int, total_seconds: float, min_seconds: float, max_seconds: float
) -> list[Span] | None:
    """``lines`` segments cut at the ``lines - 1`` longest pauses, or None when they cannot match the lines."""
    if lines < 1 or len(regions) < lines:
        return None
    gaps = sorted(range(len(regions) - 1), key=lambda i: regions[i + 1].start - regions[i].end, reverse=True)
    cuts = sorted(gaps[: lines - 1])
    segments: list[Span] = []
    first = 0
    for cut in [*cuts, len(regions) - 1]:
        segments.append(_padded(regions[first].start, regions[cut].end, total_seconds))
        first = cut + 1
    if any(not min_seconds <= s.seconds <= max_seconds for s in segments):
        return None
    return segments


def greedy_split(regions: list[Span], total_seconds: float, min_seconds: float, max_seconds: float) -> SegmentPlan:
    """Join speech regions into segments of ``min_seconds``..``max_seconds``, cutting only at pauses."""
    segments: list[Span] = []
    unusable: list[Span] = []
    current: list[Span] = []

    def close() -> None:
        if not current:
            return
        span = _padded(current[0].start, current[-1].end, total_seconds)
        if span.seconds >= min_seconds:
            segments.append(span)
        elif segments and current[-1].end - segments[-1].start + EDGE_PAD_SECONDS <= max_seconds:
            last = segments.pop()  # a short tail joins the previous segment when it fits
            segments.append(Span(last.start, span.end))
        else:
            unusable.append(span)
        current.clear()

    for region in regions:
        if region.seconds > max_seconds:
            close()
            unusable.append(region)  # speech with no pause within max_seconds: no clean place to cut
            continue
        if current and region.end - current[0].start + 2 * EDGE_PAD_SECONDS > max_seconds:
            close()
        current.append(region)
        if current[-1].end - current[0].start + 2 * EDGE_PAD_SECONDS >= min_seconds:
            close()
    close()
    return SegmentPlan(segments, unusable)


def cut(wave: np.ndarray, sample_rate: int, span: Span) -> np.ndarray:
    return wave[int(math.floor(span.start * sample_rate)) : int(math.ceil(span.end * sample_rate))]
