"""Quality: DNSMOS (a learned MOS predictor) and cheap signal checks for the failures users report after LoRA.

* ``DnsMos``: Microsoft's DNSMOS P.835 (``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_ovrl``) and P.808
  (``dnsmos_p808``) ONNX models, shipped in the ``speechmos`` wheel and run with onnxruntime. A predictor trained
  on noisy real speech: good at "noise / hum / garbage", blind to wrong words or wrong voices, and it predicts
  meaningless mid-range values for digital silence (hence the silence check). Scores are 1 (bad) to 5 (good).
* ``SignalChecks``: silence ratio, clipping ratio, peak and RMS level, duration ratio vs the expected length,
  characters per second of the text, codec-code repetition, and whether the audio stream ended with EOS. The
  thresholds that turn these numbers into flags, and the audio check ``generate.py`` applies, live in ``suite``.
"""

from __future__ import annotations

import math

import numpy as np

from higgs_train.evaluation.metrics import Clip, resample

DNSMOS_RATE = 16000
SILENCE_DBFS = -45.0  # a 20 ms frame quieter than this (RMS, re full scale) counts as silence
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CHARS_PER_SECOND = 14.0  # typical read English, used only when no target recording gives the expected length
LEVEL_FLOOR_DBFS = -200.0  # what peak_dbfs / rms_dbfs report for digital silence (a number, so JSON stays valid)


class DnsMos:
    """DNSMOS via ``speechmos.dnsmos`` (16 kHz). Clips shorter than 0.25 s get NaN (too short to judge)."""

    name = "dnsmos"

    def __init__(self) -> None:
        from speechmos import dnsmos

        self._dnsmos = dnsmos

    def score(self, clip: Clip) -> dict[str, float]:
        wave = np.clip(resample(clip.waveform, clip.sample_rate, DNSMOS_RATE), -1.0, 1.0)
        keys = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")
        if len(wave) < DNSMOS_RATE // 4:  # speechmos tiles short clips by doubling; an empty one never ends
            return dict.fromkeys(keys, math.nan)
        result = self._dnsmos.run(wave.astype(np.float32), DNSMOS_RATE)
        return {
            "dnsmos_ovrl": float(result["ovrl_mos"]),
            "dnsmos_sig": float(result["sig_mos"]),
            "dnsmos_bak": float(result["bak_mos"]),
            "dnsmos_p808": float(result["p808_mos"]),
        }


def silence_ratio(waveform: np.ndarray, sample_rate: int, threshold_dbfs: float = SILENCE_DBFS) -> float:
    """Share of 20 ms frames whose RMS is below ``threshold_dbfs``; 1.0 for an empty clip."""
    frame = max(1, int(0.02 * sample_rate))
    n = len(waveform) // frame
    if n == 0:
        return 1.0
    frames = np.asarray(waveform[: n * frame], dtype=np.float64).reshape(n, frame)
    rms = np.sqrt((frames**2).mean(axis=1))
    return float((rms < 10 ** (threshold_dbfs / 20)).mean())


def clipping_ratio(waveform: np.ndarray, level: float = CLIP_LEVEL) -> float:
    return float((np.abs(waveform) >= level).mean()) if len(waveform) else 0.0


def dbfs(value: float) -> float:
    """Amplitude (1.0 = full scale) in dB re full scale, floored at ``LEVEL_FLOOR_DBFS``."""
    return max(LEVEL_FLOOR_DBFS, 20.0 * math.log10(value)) if value > 0 else LEVEL_FLOOR_DBFS


def peak_and_rms_dbfs(waveform: np.ndarray) -> tuple[float, float]:
    """(peak, RMS) level of a clip in dBFS; both at the floor for an empty clip."""
    if len(waveform) == 0:
        return LEVEL_FLOOR_DBFS, LEVEL_FLOOR_DBFS
    wave = np.asarray(waveform, dtype=np.float64)
    return dbfs(float(np.abs(wave).max())), dbfs(float(np.sqrt(np.mean(wave**2))))


def text_characters(text: str) -> int:
    """Characters of ``text`` with runs of whitespace counted once (what the speaking-rate bound counts)."""
    return len(" ".join(text.split()))


def chars_per_second(text: str, seconds: float) -> float:
    """Speaking rate the clip would need for its text; NaN without text or audio."""
    chars = text_characters(text)
    return chars / seconds if chars and seconds > 0 else math.nan


def expected_seconds(clip: Clip) -> float | None:
    """The target recording's length when known, else an estimate from the text's length."""
    if clip.expected_seconds:
        return clip.expected_seconds
    if clip.target is not None and clip.target_rate:
        return len(clip.target) / float(clip.target_rate)
    if clip.text.strip():
        return max(0.5, len(clip.text.strip()) / CHARS_PER_SECOND)
    return None


def code_repetition(codes: np.ndarray | None, n: int = 4) -> float:
    """Share of repeated n-grams in the first codebook's codes (0: none repeat; near 1: a loop of few frames).

    A model stuck in a loop (the "no EOS, same syllable forever" failure) repeats short code patterns; real
    speech at 25 frames/s rarely repeats a 4-frame pattern exactly.
    """
    if codes is None or codes.ndim != 2 or codes.shape[1] < n + 1:
        return math.nan
    row = codes[0]
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


class SignalChecks:
    """Cheap checks with no model: ``silence_ratio``, ``clipping_ratio``, ``peak_dbfs``, ``rms_dbfs``,
    ``duration_s``, ``duration_ratio``, ``chars_per_second`` (text characters / duration), ``code_repetition`` and
    ``finished`` (1.0 when the stream ended with EOS, 0.0 when the length cap cut it)."""

    name = "signal"

    def score(self, clip: Clip) -> dict[str, float]:
        expected = expected_seconds(clip)
        peak, rms = peak_and_rms_dbfs(clip.waveform)
        return {
            "duration_s": clip.seconds,
            "duration_ratio": clip.seconds / expected if expected else math.nan,
            "chars_per_second": chars_per_second(clip.text, clip.seconds),
            "silence_ratio": silence_ratio(clip.waveform, clip.sample_rate),
            "clipping_ratio": clipping_ratio(clip.waveform),
            "peak_dbfs": peak,
            "rms_dbfs": rms,
            "code_repetition": code_repetition(clip.codes),
            "finished": math.nan if clip.finished is None else float(clip.finished),
        }
