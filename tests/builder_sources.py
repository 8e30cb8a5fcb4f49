"""Recordings in every layout the dataset builder reads, generated from the project's synthetic speakers.

Shared by the unit and integration tests of ``higgs_train.builder`` (``tests/`` is on ``sys.path`` because it
holds the root ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.embedded.voices import SENTENCES, SPEAKERS, synthesize

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


# LibriTTS-style numeric speaker ids for the synthetic voices.
LIBRI_IDS = {"spk_low": "19", "spk_mid": "84", "spk_high": "103", "spk_child": "1088"}


def write_libritts(root: Path, count: int = 3, speakers=SPEAKERS[:2], chapter: str = "198") -> Path:
    """``root/<spk>/<chapter>/<spk>_<chapter>_<utt>.wav`` with ``.normalized.txt`` and a different ``.original.txt``
    (so a test can tell which was used), plus the chapter's ``.trans.tsv`` as LibriTTS ships it."""
    rows = []
    for index, (speaker, text, wave) in enumerate(utterances(count, speakers)):
        spk = LIBRI_IDS[speaker]
        folder = root / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{spk}_{chapter}_{index:06d}_000000"
        sf.write(folder / f"{stem}.wav", wave, RATE, subtype="PCM_16")
        (folder / f"{stem}.normalized.txt").write_text(text, encoding="utf-8")
        (folder / f"{stem}.original.txt").write_text(f"ORIGINAL {index}", encoding="utf-8")
        rows.append((folder, f"{stem}\tORIGINAL {index}\t{text}"))
    for folder in {f for f, _ in rows}:
        lines = [line for f, line in rows if f == folder]
        (folder / f"{folder.parent.name}_{chapter}.trans.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_vctk(root: Path, count: int = 3, speakers=SPEAKERS[:2]) -> Path:
    """VCTK 0.92: ``txt/<spk>/<spk>_NNN.txt`` and ``wav48_silence_trimmed/<spk>/<spk>_NNN_mic1.flac`` + ``_mic2``;
    the last utterance of each speaker has no transcript (as some of VCTK's have none)."""
    for index, (speaker, text, wave) in enumerate(utterances(count, speakers)):
        spk = f"p{225 + [s.name for s in speakers].index(speaker)}"
        utt = f"{spk}_{index:03d}"
        audio = root / "wav48_silence_trimmed" / spk
        audio.mkdir(parents=True, exist_ok=True)
        for mic in (1, 2):
            sf.write(audio / f"{utt}_mic{mic}.flac", wave * (1.0 if mic == 1 else 0.8), RATE, format="FLAC")
        if index % count != count - 1:
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{utt}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def cv_client(speaker: str) -> str:
    """A Common Voice ``client_id`` (a hex hash) for a synthetic speaker."""
    return hashlib.sha256(speaker.encode()).hexdigest()[:32]


def write_common_voice(root: Path, count: int = 3, speakers=SPEAKERS[:2]) -> Path:
    """Common Voice: ``validated.tsv`` and ``train.tsv`` (a subset) with its columns, MP3 clips in ``clips/``."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
    lines = []
    for index, (speaker, text, wave) in enumerate(utterances(count, speakers)):
        client = cv_client(speaker)
        name = f"common_voice_en_{1000 + index}.mp3"
        sf.write(root / "clips" / name, wave, RATE, format="MP3")
        lines.append(f"{client}\t{name}\t{text}\t2\t0\t\t\t\ten\t")
    (root / "validated.tsv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    (root / "train.tsv").write_text("\n".join([header, *lines[:2]]) + "\n", encoding="utf-8")
    return root
