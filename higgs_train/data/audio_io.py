"""Resolve and load audio files safely: confined to the allowed root, decoded, finite, downmixed, resampled.

Every failure raises ``AudioError`` with a short, specific reason; validation reports it and preprocessing
quarantines the row with it. Nothing is ever replaced by silence or noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """A problem with one audio reference; ``str(err)`` is the reason recorded for the row."""


@dataclass(frozen=True)
class AudioLimits:
    """Acceptance bounds for clips (duration in seconds; RMS below ``silence_rms`` counts as silent)."""

    min_seconds: float = 0.5
    max_seconds: float = 30.0
    silence_rms: float = 1e-4


def resolve_audio_path(audio_url: str, base_path: str | Path) -> Path:
    """Map a manifest ``audio_url`` to a real file that lies under ``base_path``.

    Relative paths resolve under the base; absolute paths are accepted only inside it. Symlinks are followed and
    the *target* must stay inside too, so neither ``..`` nor a link can read outside the data root.
    """
    if not isinstance(audio_url, str) or not audio_url.strip():
        raise AudioError("audio_url is empty")
    base = Path(base_path).resolve()
    candidate = Path(audio_url)
    joined = candidate if candidate.is_absolute() else base / candidate
    lexical = Path(os.path.normpath(joined))
    if not _is_within(lexical, base):
        raise AudioError(f"audio path escapes the audio root: {audio_url}")
    if not lexical.exists():
        raise AudioError(f"audio file not found: {audio_url}")
    real = lexical.resolve()
    if not _is_within(real, base):
        raise AudioError(f"audio path is a symlink that escapes the audio root: {audio_url}")
    if not real.is_file():
        raise AudioError(f"audio path is not a file: {audio_url}")
    return real


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 of shape (frames, channels) and its native sample rate."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt/unsupported data
        raise AudioError(f"audio file cannot be decoded ({type(err).__name__}): {path.name}") from err
    if data.size == 0:
        raise AudioError(f"audio file has no samples: {path.name}")
    return data, int(sr)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels (a (frames, channels) array) to mono."""
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr via librosa), identity when the rates match."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(wave.astype(np.float32), orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def check_waveform(wave: np.ndarray, sr: int, limits: AudioLimits, name: str) -> None:
    """Raise ``AudioError`` for non-finite samples, silence or a duration outside the limits."""
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"audio has non-finite samples (NaN/Inf): {name}")
    seconds = len(wave) / sr
    if seconds < limits.min_seconds:
        raise AudioError(f"audio too short ({seconds:.2f}s < {limits.min_seconds}s): {name}")
    if seconds > limits.max_seconds:
        raise AudioError(f"audio too long ({seconds:.2f}s > {limits.max_seconds}s): {name}")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < limits.silence_rms:
        raise AudioError(f"audio is silent (RMS {rms:.2e}): {name}")


def load_audio(audio_url: str, base_path: str | Path, target_sr: int, limits: AudioLimits | None = None) -> np.ndarray:
    """Resolve, decode, check, downmix and resample one clip to mono float32 at ``target_sr``."""
    path = resolve_audio_path(audio_url, base_path)
    data, sr = decode_audio(path)
    wave = to_mono(data)
    check_waveform(wave, sr, limits or AudioLimits(), audio_url)
    return resample(wave, sr, target_sr)
