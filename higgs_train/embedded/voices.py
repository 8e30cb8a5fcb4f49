"""The synthetic voices and sentences the embedded default is made of.

Each synthetic speaker is a source-filter voice: a glottal pulse train at the speaker's own pitch (with vibrato and
jitter) shaped by vowel formants scaled by the speaker's vocal-tract length, so pitch and timbre differ between
speakers and stay stable across their utterances. Syllable timing and vowels come from the transcript, so an
utterance's audio is a function of (speaker, text, seed).

Why a module of its own, importing nothing of the project: the tiny stack's builders (the text tokenizer's corpus,
the codec's calibration audio) and the sample data set (``sample_data``) are both made from these, so they sit
below both.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 24000

SENTENCES: list[str] = [
    "The sun rose slowly over the quiet hills.",
    "Please bring the red cup to the kitchen.",
    "We walked along the river until dusk.",
    "A small bird sang outside my window.",
    "The train leaves at half past seven.",
    "She painted the old fence bright green.",
    "Rain is expected later this evening.",
    "He found a coin under the wooden bench.",
    "Our meeting starts right after lunch.",
    "The library closes early on Sundays.",
    "Turn left at the second traffic light.",
    "Fresh bread smells wonderful in the morning.",
]


@dataclass(frozen=True)
class Speaker:
    """A synthetic voice: pitch (Hz), vocal-tract scale (formant multiplier), breathiness and speaking rate."""

    name: str
    f0: float
    tract_scale: float
    breathiness: float
    syllables_per_second: float


SPEAKERS: list[Speaker] = [
    Speaker("spk_low", 95.0, 0.88, 0.02, 4.0),
    Speaker("spk_mid", 140.0, 1.00, 0.05, 4.6),
    Speaker("spk_high", 215.0, 1.14, 0.03, 5.0),
    Speaker("spk_child", 290.0, 1.28, 0.08, 5.4),
]

# (F1, F2, F3) for a few vowels, adult reference tract.
VOWEL_FORMANTS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


def _syllables(text: str) -> list[int]:
    """Vowel index per syllable, derived from the text so audio follows its transcript."""
    words = [w for w in text.lower().split() if w]
    out: list[int] = []
    for w in words:
        vowels = [c for c in w if c in "aeiouy"] or ["a"]
        for v in vowels[: max(1, len(vowels) // 2 + 1)]:
            out.append("aeiouy".index(v) % len(VOWEL_FORMANTS))
    return out


def _resonator(signal: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Two-pole resonator (a formant filter)."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1.0 - r], a, signal)


def synthesize(speaker: Speaker, text: str, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Render ``text`` in ``speaker``'s voice; 1-6 s of mono float32 audio in [-1, 1]."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}:{speaker.name}:{text}".encode()))
    sylls = _syllables(text)
    duration = float(np.clip(len(sylls) / speaker.syllables_per_second + 0.3, 1.0, 6.0))
    n = int(duration * sample_rate)
    t = np.arange(n) / sample_rate
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * 5.0 * t)
    contour = 1 + 0.08 * np.sin(2 * np.pi * t / duration + rng.uniform(0, np.pi))
    f0 = speaker.f0 * vibrato * contour * (1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    phase = np.cumsum(f0) / sample_rate
    source = (phase % 1.0) * 2 - 1  # sawtooth-like glottal pulses
    source = source + speaker.breathiness * rng.standard_normal(n)

    out = np.zeros(n)
    seg = max(1, n // max(1, len(sylls)))
    for i, vowel in enumerate(sylls):
        sl = slice(i * seg, n if i == len(sylls) - 1 else (i + 1) * seg)
        piece = source[sl]
        shaped = np.zeros_like(piece)
        for k, formant in enumerate(VOWEL_FORMANTS[vowel]):
            shaped += _resonator(piece, formant * speaker.tract_scale, 80 + 40 * k, sample_rate) / (k + 1)
        m = len(piece)
        envelope = np.sin(np.pi * np.linspace(0, 1, m)) ** 0.6
        out[sl] = shaped * envelope
    fade = int(0.02 * sample_rate)
    out[:fade] *= np.linspace(0, 1, fade)
    out[-fade:] *= np.linspace(1, 0, fade)
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)
