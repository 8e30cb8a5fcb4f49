"""Transcripts for segments that have none (``--asr_model PATH``): a local Whisper folder via transformers' pipeline.

Only a local folder is accepted (there is no hub here, and a job must not download models behind the user's back).
An empty transcription leaves the segment unlabelled (reported): the builder never makes up text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from higgs_train.data.audio_io import resample

ASR_SAMPLE_RATE = 16000


class Transcriber:
    def __init__(self, model_dir: str) -> None:
        from transformers import pipeline

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"--asr_model must be a local Whisper folder: {model_dir}")
        self.pipe = pipeline("automatic-speech-recognition", model=model_dir, device="cpu")

    def __call__(self, wave: np.ndarray, sample_rate: int) -> str | None:
        audio = resample(wave, sample_rate, ASR_SAMPLE_RATE)
        text = self.pipe({"raw": audio, "sampling_rate": ASR_SAMPLE_RATE})["text"]
        text = " ".join(str(text).split())
        return text or None
