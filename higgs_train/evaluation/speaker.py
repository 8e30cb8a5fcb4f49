"""Speaker similarity (SIM): cosine of speaker embeddings of the generated clip and the voice prompt.

Two encoders behind one small protocol:

* ``ResemblyzerEncoder`` (default): the GE2E LSTM d-vector model whose ``pretrained.pt`` ships in the
  ``resemblyzer`` wheel, so SIM works offline with no download. It is a 2019 model trained on
  LibriSpeech/VoxCeleb; its cosines are compressed (unrelated voices often score 0.5-0.7), so compare SIM between
  models on the same rows, never against another paper's numbers.
* ``TransformersSpeakerEncoder``: any local directory holding a transformers ``*ForXVector`` checkpoint (e.g.
  ``microsoft/wavlm-base-plus-sv`` downloaded once), the stronger choice and closer to what Seed-TTS-eval reports
  (that uses a WavLM-large verification model).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from higgs_train.evaluation.metrics import Clip, resample


class SpeakerEncoder(Protocol):
    """Waveform -> L2-normalised speaker embedding."""

    sample_rate: int

    def embed(self, waveform: np.ndarray) -> np.ndarray: ...


class ResemblyzerEncoder:
    """resemblyzer's ``VoiceEncoder`` with its packaged weights (16 kHz).

    resemblyzer loads ``pretrained.pt`` with ``torch.load``; torch >= 2.6 defaults to ``weights_only=True`` there, and
    the file is part of the installed package, never a user file. We do not pass ``weights_fpath``.
    """

    sample_rate = 16000

    def __init__(self, device: str = "cpu") -> None:
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device, verbose=False)

    def embed(self, waveform: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wav = preprocess_wav(np.asarray(waveform, dtype=np.float32), self.sample_rate)
        if len(wav) < self.sample_rate // 10:  # VAD left (almost) nothing: no voice to embed
            raise ValueError("no speech found in the clip")
        return np.asarray(self.encoder.embed_utterance(wav), dtype=np.float32)


class TransformersSpeakerEncoder:
    """A local transformers x-vector checkpoint directory (WavLM / UniSpeechSat / Wav2Vec2 ``*ForXVector``).

    Loaded with ``from_pretrained`` from the directory only (no hub); safetensors or weights-only torch files.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"--sim_model {model_dir}: not a model directory (no config.json)")
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForAudioXVector.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device = device
        self.sample_rate = int(self.feature_extractor.sampling_rate)

    @torch.no_grad()
    def embed(self, waveform: np.ndarray) -> np.ndarray:
        inputs = self.feature_extractor(
            np.asarray(waveform, dtype=np.float32), sampling_rate=self.sample_rate, return_tensors="pt"
        )
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        emb = torch.nn.functional.normalize(out.embeddings.float(), dim=-1)[0]
        return emb.cpu().numpy()


def load_speaker_encoder(model: str = "", device: str = "cpu") -> SpeakerEncoder:
    """``""`` or ``"resemblyzer"``: the packaged resemblyzer model; otherwise a local x-vector directory."""
    if not model or model == "resemblyzer":
        return ResemblyzerEncoder(device)
    return TransformersSpeakerEncoder(model, device)


class SpeakerSimilarity:
    """``sim``: cosine(generated, voice prompt); ``sim_target``: cosine(generated, ground-truth target recording).

    Both are NaN when a clip holds no speech (a silent clip has no speaker; the silence check reports it).
    """

    name = "sim"

    def __init__(self, encoder: SpeakerEncoder) -> None:
        self.encoder = encoder

    def embedding(self, waveform: np.ndarray | None, rate: int | None) -> np.ndarray | None:
        if waveform is None or rate is None or len(waveform) == 0 or float(np.abs(waveform).max()) < 1e-4:
            return None  # digital silence has no speaker (and resemblyzer's volume normalisation divides by 0)
        try:
            return self.encoder.embed(resample(waveform, rate, self.encoder.sample_rate))
        except ValueError:
            return None

    def similarity(self, a: np.ndarray, a_rate: int, b: np.ndarray, b_rate: int) -> float:
        """Cosine similarity of two clips' speaker embeddings (NaN when either has no speech)."""
        ea, eb = self.embedding(a, a_rate), self.embedding(b, b_rate)
        return _cosine(ea, eb)

    def score(self, clip: Clip) -> dict[str, float]:
        generated = self.embedding(clip.waveform, clip.sample_rate)
        return {
            "sim": _cosine(generated, self.embedding(clip.reference, clip.reference_rate)),
            "sim_target": _cosine(generated, self.embedding(clip.target, clip.target_rate)),
        }


def _cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return math.nan
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else math.nan
