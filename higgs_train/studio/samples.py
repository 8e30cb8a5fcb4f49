"""Sample recordings for the Data tab: the sample data set's synthetic speakers as a folder per speaker of WAV +
``.txt`` transcript, the layout ``prepare_data.py build`` reads, so a new user can try a build without data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.embedded.voices import SAMPLE_RATE, SENTENCES, SPEAKERS, synthesize


def write_sample_recordings(folder: Path, per_speaker: int = 4, seed: int = 0) -> int:
    """Write ``folder/<speaker>/utt_NN.wav`` + ``.txt`` (voices from ``sample_data``); returns the clip count."""
    rng = np.random.default_rng(seed)
    written = 0
    for speaker in SPEAKERS:
        for j, index in enumerate(rng.permutation(len(SENTENCES))[:per_speaker]):
            text = SENTENCES[index]
            wav = folder / speaker.name / f"utt_{j:02d}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, synthesize(speaker, text, seed), SAMPLE_RATE, subtype="PCM_16")
            wav.with_suffix(".txt").write_text(text + "\n")
            written += 1
    return written
