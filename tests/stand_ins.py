"""Test stand-ins shared by unit, integration and reliability tests."""

from __future__ import annotations

import math
import zlib

import numpy as np


class StandInCodec:
    """Just enough of the Higgs audio tokenizer for ``SamplePreprocessor``: 25 frames/s x 8 codebooks of codes
    that depend only on the waveform, so a clip encodes identically every time. Tests of gradients, checkpoints and
    split invariance do not depend on what the codes mean, and the real codec would cost most of their time."""

    sampling_rate = 24_000
    num_codebooks = 8
    tps = 25  # frames per second, as the real tokenizer reports it (the row-length check reads it)

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        frames = max(1, math.ceil(len(wave) * self.tps / sample_rate))
        seed = zlib.crc32(np.asarray(wave, np.float32).tobytes())
        return np.random.default_rng(seed).integers(0, 1024, size=(self.num_codebooks, frames))
