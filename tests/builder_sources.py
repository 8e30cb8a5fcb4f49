"""Recordings in every layout the dataset builder reads, generated from the project's synthetic speakers.

Shared by the unit and integration tests of ``higgs_train.data.builder`` (``tests/`` is on ``sys.path`` because it
holds the root ``conftest.py``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.sample_data import SENTENCES, SPEAKERS, synthesize

RATE = 24000
# spk_low and spk_mid are the voices silero-vad detects reliably (the two higher synthetic voices are too buzzy).
VAD_SPEAKERS = SPEAKERS[:2]


def utterances(count: int = 4, speakers=SPEAKERS, rate: int = RATE) -> list[tuple[str, str, np.ndarray]]:
    """``(speaker, text, wave)`` for ``count`` sentences of each speaker."""
    out = []
    for s_index, speaker in enumerate(speakers):
        for j in range(count):
            text = SENTENCES[(s_index * 3 + j) % len(SENTENCES)]
            out.append((speaker.name, text, synthesize(speaker, text, seed=0, sample_rate=rate)))
    return out


def write_speaker_folders(root: Path, count: int = 4, speakers=SPEAKERS, transcript_ext: str = ".txt") -> Path:
    """``root/<speaker>/utt_NN.wav`` + ``utt_NN.txt`` (or ``.lab``)."""
    for index, (speaker, text, wave) in enumerate(utterances(count, speakers)):
        folder = root / speaker
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"utt_{index:02d}.wav", wave, RATE, subtype="PCM_16")
        (folder / f"utt_{index:02d}{transcript_ext}").write_text(text + "\n", encoding="utf-8")
    return root


def write_ljspeech(root: Path, count: int = 4, with_speaker: bool = True) -> Path:
    """``root/metadata.csv`` (``id|text|normalized[|speaker]``) and ``root/wavs/<id>.wav`` at 22.05 kHz."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (speaker, text, wave) in enumerate(utterances(count, rate=22050)):
        file_id = f"LJ{index:03d}"
        sf.write(root / "wavs" / f"{file_id}.wav", wave, 22050, subtype="PCM_16")
        lines.append("|".join([file_id, text, text] + ([speaker] if with_speaker else [])))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "metadata.csv"


def write_list(root: Path, count: int = 4, with_speaker: bool = True) -> Path:
    """``root/list.txt`` of ``audio|speaker|text`` (or ``audio|text``) lines, FLAC audio in ``root/clips``."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    speakers = SPEAKERS if with_speaker else SPEAKERS[:1]
    lines = []
    for index, (speaker, text, wave) in enumerate(utterances(count, speakers)):
        rel = f"clips/{speaker}_{index:02d}.flac"
        sf.write(root / rel, wave, RATE, format="FLAC")
        lines.append("|".join([rel, speaker, text] if with_speaker else [rel, text]))
    (root / "list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "list.txt"


def wav_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_hf_dataset(root: Path, count: int = 4, name: str = "hf_disk") -> tuple[Path, Path]:
    """A ``datasets`` dataset with an Audio column (``save_to_disk`` folder) and the same rows as Parquet.

    Columns are named as many hub datasets name them (``audio``, ``sentence``, ``client_id``), so the test must
    pass the column flags.
    """
    from datasets import Audio, Dataset

    rows = utterances(count)
    dataset = Dataset.from_dict(
        {
            "audio": [{"bytes": wav_bytes(w), "path": f"{s}_{i}.wav"} for i, (s, _, w) in enumerate(rows)],
            "sentence": [t for _, t, _ in rows],
            "client_id": [s for s, _, _ in rows],
        }
    ).cast_column("audio", Audio())
    disk = root / name
    dataset.save_to_disk(str(disk))
    parquet = root / f"{name}_parquet" / "train-00000.parquet"
    parquet.parent.mkdir(parents=True)
    dataset.to_parquet(str(parquet))
    return disk, parquet.parent


def write_long_recording(root: Path, sentences: int = 8, pause: float = 0.8) -> tuple[Path, list[str]]:
    """One long recording per VAD speaker (sentences joined by pauses) with a one-line-per-sentence transcript."""
    texts: list[str] = []
    for speaker in VAD_SPEAKERS:
        parts, texts = [], []
        for j in range(sentences):
            text = SENTENCES[j % len(SENTENCES)]
            texts.append(text)
            parts += [synthesize(speaker, text, seed=j, sample_rate=RATE), np.zeros(int(pause * RATE), np.float32)]
        folder = root / speaker.name
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / "session.wav", np.concatenate(parts), RATE, subtype="PCM_16")
        (folder / "session.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return root, texts


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
