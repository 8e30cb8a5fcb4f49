"""Intelligibility: WER and CER (jiwer) of an ASR transcript of the generated clip against the text it should say.

Transcribers behind one protocol:

* ``WhisperTranscriber``: a local Whisper directory (``--asr_model PATH``) through transformers' ASR pipeline;
  the real measurement (Seed-TTS-eval uses Whisper-large-v3 for English).
* ``PocketSphinxTranscriber``: the offline fallback whose US-English acoustic and language models ship in the
  ``pocketsphinx`` wheel. It is **rough and English-only**: on clean synthetic English it still gets roughly half
  of the words wrong, so its WER is only good for relative comparisons on the same rows (a silent or garbled
  model scores ~1.0; an intelligible one clearly lower), never as an absolute figure. Its results are labelled
  ``asr=pocketsphinx-rough`` in every report.

Text on both sides is normalised the same way (transformers' Whisper ``BasicTextNormalizer``: lower case, no
punctuation or symbols), so punctuation and case never count as errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import jiwer
import numpy as np

from higgs_train.evaluation.metrics import Clip, resample

POCKETSPHINX_LABEL = "pocketsphinx-rough"


class Transcriber(Protocol):
    """Waveform at ``sample_rate`` -> transcript; ``label`` names the ASR in reports."""

    sample_rate: int
    label: str

    def transcribe(self, waveform: np.ndarray) -> str: ...


class PocketSphinxTranscriber:
    """CMU PocketSphinx with its packaged US-English model (16 kHz, 16-bit PCM). Rough; English only."""

    sample_rate = 16000
    label = POCKETSPHINX_LABEL

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=self.sample_rate, loglevel="ERROR")

    def transcribe(self, waveform: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        # Leading/trailing silence helps its endpointing on clips that start with speech.
        pad = np.zeros(self.sample_rate // 4, dtype=np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(np.concatenate([pad, pcm, pad]).tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class WhisperTranscriber:
    """A local Whisper (or any CTC/seq2seq ASR) directory through ``transformers.pipeline``."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", language: str | None = None) -> None:
        from transformers import pipeline

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"--asr_model {model_dir}: not a model directory (no config.json)")
        self.pipe = pipeline("automatic-speech-recognition", model=str(model_dir), device=device)
        self.sample_rate = int(self.pipe.feature_extractor.sampling_rate)
        self.label = f"asr:{model_dir.name}"
        is_whisper = getattr(self.pipe.model.config, "model_type", "") == "whisper"
        self.generate_kwargs = {"task": "transcribe", **({"language": language} if language else {})}
        if not is_whisper:
            self.generate_kwargs = {}

    def transcribe(self, waveform: np.ndarray) -> str:
        audio = {"raw": np.asarray(waveform, dtype=np.float32), "sampling_rate": self.sample_rate}
        kwargs = {"generate_kwargs": self.generate_kwargs} if self.generate_kwargs else {}
        return str(self.pipe(audio, **kwargs)["text"])


def load_transcriber(asr_model: str = "", device: str = "cpu", language: str | None = None) -> Transcriber:
    """``""``: the rough pocketsphinx fallback; otherwise a local ASR model directory."""
    if not asr_model or asr_model == "pocketsphinx":
        return PocketSphinxTranscriber()
    return WhisperTranscriber(asr_model, device, language)


def normalize_text(text: str) -> str:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return " ".join(BasicTextNormalizer()(text).split())


def error_rates(reference: str, hypothesis: str) -> tuple[float, float]:
    """(WER, CER) of ``hypothesis`` against ``reference`` after normalisation; NaN for an empty reference.

    An empty hypothesis scores 1.0 (every word deleted); insertions can push either above 1.
    """
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return math.nan, math.nan
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))


class Intelligibility:
    """``wer`` and ``cer`` of the transcript against ``clip.text``; the transcript is kept in ``last_transcript``."""

    name = "intelligibility"

    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber
        self.last_transcript = ""

    def transcribe(self, waveform: np.ndarray, rate: int) -> str:
        if len(waveform) == 0:
            return ""
        return self.transcriber.transcribe(resample(waveform, rate, self.transcriber.sample_rate))

    def score(self, clip: Clip) -> dict[str, float]:
        self.last_transcript = self.transcribe(clip.waveform, clip.sample_rate)
        wer, cer = error_rates(clip.text, self.last_transcript)
        return {"wer": wer, "cer": cer}
