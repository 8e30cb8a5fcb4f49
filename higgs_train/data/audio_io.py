"""Resolve and load audio files safely: confined to the allowed root, header checked, decoded, finite, resampled.

Every failure raises ``AudioError`` with a short, specific reason from ``reasons.Reason``; validation reports it and
preprocessing quarantines the row with it. Nothing is ever replaced by silence or noise.

Order of checks (``read_checked``), cheapest first: the file opens; its header parses (``soundfile.info``); a WAV's
``data`` chunk is as long as its header declares (libsndfile silently reads a truncated file as a shorter one); the
duration *from the header* is within limits, so a one-hour file is refused before a sample is decoded; then the
samples are decoded and must be finite, of sane amplitude and not silent. Reasons name the file by its path under
the audio root, so the validator and the job word them identically whichever spelling referenced the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.data.reasons import AudioError, AudioUnavailable, Reason


@dataclass(frozen=True)
class AudioLimits:
    """Acceptance bounds for clips (duration in seconds; RMS below ``silence_rms`` counts as silent)."""

    min_seconds: float = 0.5
    max_seconds: float = 30.0
    silence_rms: float = 1e-4
    # Decoded samples are full scale at 1.0; a float WAV may overshoot a little, but a peak of 1e30 is garbage
    # (it overflows fp16/bf16 activations and the codec). 16.0 is +24 dBFS.
    max_peak: float = 16.0


def resolve_audio_path(audio_url: str, base_path: str | Path) -> Path:
    """Map a manifest ``audio_url`` to a real file that lies under ``base_path``.

    Relative paths resolve under the base; absolute paths are accepted only inside it. Symlinks are followed and
    the *target* must stay inside too, so neither ``..`` nor a link can read outside the data root.
    """
    if not isinstance(audio_url, str) or not audio_url.strip():
        raise AudioError(Reason.AUDIO_URL_EMPTY)
    base = Path(base_path).resolve()
    candidate = Path(audio_url)
    joined = candidate if candidate.is_absolute() else base / candidate
    lexical = Path(os.path.normpath(joined))
    if not _is_within(lexical, base):
        raise AudioUnavailable(Reason.AUDIO_ESCAPES_ROOT.format(url=audio_url), audio_url)
    if not lexical.exists():
        raise AudioUnavailable(Reason.AUDIO_NOT_FOUND.format(url=audio_url), audio_url)
    real = lexical.resolve()
    if not _is_within(real, base):
        raise AudioUnavailable(Reason.AUDIO_SYMLINK_ESCAPES.format(url=audio_url), audio_url)
    if not real.is_file():
        raise AudioUnavailable(Reason.AUDIO_NOT_A_FILE.format(url=audio_url), audio_url)
    return real


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def display_name(path: Path, base_path: str | Path) -> str:
    """How reasons name a resolved file: its path under the audio root (its bare name if it is not under it)."""
    try:
        return path.relative_to(Path(base_path).resolve()).as_posix()
    except ValueError:
        return path.name


def _wav_truncation(path: Path) -> tuple[int, int] | None:
    """``(declared, actual)`` frames when a RIFF/WAVE file's data chunk is shorter than its header says, else None.

    Only plain RIFF WAV is inspected (other containers are left to libsndfile); a declared size of 0 or 0xFFFFFFFF
    (streaming writers) is not a claim and is ignored.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                body = fh.read(size)
                if len(body) >= 14:
                    block_align = struct.unpack("<H", body[12:14])[0]
                fh.seek(size % 2, os.SEEK_CUR)
                continue
            if chunk_id == b"data":
                if size in (0, 0xFFFFFFFF) or block_align == 0:
                    return None
                actual = os.fstat(fh.fileno()).st_size - fh.tell()
                return (size // block_align, max(actual, 0) // block_align) if actual < size else None
            fh.seek(size + size % 2, os.SEEK_CUR)


def unreadable_reason(err: OSError, name: str) -> str:
    return Reason.AUDIO_UNREADABLE.format(error=err.strerror or type(err).__name__, name=name)


def read_checked(path: Path, limits: AudioLimits, name: str) -> tuple[np.ndarray, int]:
    """Header checks, then decode: float32 ``(frames, channels)`` and the native rate, or ``AudioError``.

    See the module docstring for the order. ``name`` is how reasons refer to the file (``display_name``).
    """
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:  # permission denied, I/O error: one row's problem, never the job's
        raise AudioUnavailable(unreadable_reason(err, name)) from err
    try:
        info = sf.info(str(path))
        truncated = _wav_truncation(path)
    except Exception as err:  # soundfile raises several types for corrupt/unsupported data
        raise AudioError(Reason.AUDIO_UNDECODABLE.format(error=type(err).__name__, name=name)) from err
    if truncated is not None:
        raise AudioError(Reason.AUDIO_TRUNCATED.format(declared=truncated[0], actual=truncated[1], name=name))
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(Reason.AUDIO_NO_SAMPLES.format(name=name))
    _check_duration(info.frames / info.samplerate, limits, name)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(Reason.AUDIO_UNDECODABLE.format(error=type(err).__name__, name=name)) from err
    if data.size == 0:
        raise AudioError(Reason.AUDIO_NO_SAMPLES.format(name=name))
    check_waveform(to_mono(data) if data.shape[1] > 1 else data[:, 0], int(sr), limits, name, peak_of=data)
    return data, int(sr)


def decode_audio(path: Path, limits: AudioLimits | None = None, name: str | None = None) -> tuple[np.ndarray, int]:
    """``read_checked`` with default limits, naming the file by its bare name unless told otherwise."""
    return read_checked(path, limits or AudioLimits(), name or path.name)


def audio_header_seconds(path: Path) -> float:
    """Duration from the header alone (no decoding): what length estimates use in validation and preprocessing."""
    info = sf.info(str(path))
    return info.frames / info.samplerate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels (a (frames, channels) array) to mono."""
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr via librosa), identity when the rates match."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(wave.astype(np.float32), orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def _check_duration(seconds: float, limits: AudioLimits, name: str) -> None:
    if seconds < limits.min_seconds:
        raise AudioError(Reason.AUDIO_TOO_SHORT.format(seconds=seconds, limit=limits.min_seconds, name=name))
    if seconds > limits.max_seconds:
        raise AudioError(Reason.AUDIO_TOO_LONG.format(seconds=seconds, limit=limits.max_seconds, name=name))


def check_waveform(
    wave: np.ndarray, sr: int, limits: AudioLimits, name: str, peak_of: np.ndarray | None = None
) -> None:
    """Raise ``AudioError`` for non-finite samples, an absurd peak, a duration outside the limits or silence.

    ``peak_of`` is the array whose finiteness and peak are checked (the multichannel data, so opposite channels
    cannot cancel out in the mono mix); default ``wave``.
    """
    raw = wave if peak_of is None else peak_of
    if not np.all(np.isfinite(raw)):
        raise AudioError(Reason.AUDIO_NON_FINITE.format(name=name))
    peak = float(np.max(np.abs(raw))) if raw.size else 0.0
    if peak > limits.max_peak:
        raise AudioError(Reason.AUDIO_AMPLITUDE.format(peak=peak, limit=limits.max_peak, name=name))
    _check_duration(len(wave) / sr, limits, name)
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < limits.silence_rms:
        raise AudioError(Reason.AUDIO_SILENT.format(rms=rms, name=name))


def load_audio(audio_url: str, base_path: str | Path, target_sr: int, limits: AudioLimits | None = None) -> np.ndarray:
    """Resolve, check, decode, downmix and resample one clip to mono float32 at ``target_sr``."""
    path = resolve_audio_path(audio_url, base_path)
    data, sr = read_checked(path, limits or AudioLimits(), display_name(path, base_path))
    return resample(to_mono(data), sr, target_sr)
