"""Generate a deterministic multi-speaker zero-shot voice-cloning data set with real 24 kHz WAV files, spoken by the
synthetic voices of ``voices``.

Each sample is the cloning layout upstream inference uses::

    0 system    : chatml.DEFAULT_SYSTEM_PROMPT
    1 user      : reference transcript
    2 assistant : reference audio   (another utterance of the same speaker)
    3 user      : target text
    4 assistant : target audio      <- start_index = 4: the only trained turn

The layout and the system prompt live in ``higgs_train.chatml``.

Why here, beside its voices: the voices and sentences are what the tiny stack is built from (the text tokenizer's
corpus, the codec's calibration audio), so they stand at the bottom in ``voices``; this module turns them into
samples and imports nothing of the project but ``voices`` and ``chatml``. It writes the folder form (``create_sample_data``: two JSON lists, the
documented manifest format, written with ``json`` alone). Writing the set as a manifest file of any form
(``--create_sample_data FILE.jsonl|.parquet``) is ``data.job_manifests.create_sample_data_at``, one floor up, over
``data.manifest.write_manifest``: manifest formats have one home in ``data/``, and the direction runs from the data
path down to its sample rows, never back up.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.chatml import cloning_sample
from higgs_train.embedded.voices import SAMPLE_RATE, SENTENCES, SPEAKERS, synthesize


def create_sample_data(out_dir: str | Path, utterances_per_speaker: int = 6, seed: int = 0) -> dict[str, Path]:
    """Write ``audio/<speaker>/*.wav``, ``train.json`` and ``val.json`` under ``out_dir``.

    Audio paths in the manifests are relative to ``out_dir`` (the default ``--audio_base_path``). The last
    utterance of every speaker is the validation target; the rest are training targets. Each target's reference
    is the speaker's next utterance (cyclically), so references are never the target itself.
    """
    out = Path(out_dir)
    train, val = sample_rows(out, utterances_per_speaker, seed)
    (out / "train.json").write_text(json.dumps(train, indent=2) + "\n")
    (out / "val.json").write_text(json.dumps(val, indent=2) + "\n")
    return {"train": out / "train.json", "val": out / "val.json", "audio_base_path": out}


def sample_rows(out: Path, utterances_per_speaker: int = 6, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Write every speaker's WAVs under ``out/audio`` and return the (train, val) rows that use them (audio paths
    relative to ``out``)."""
    rng = np.random.default_rng(seed)
    train: list[dict] = []
    val: list[dict] = []
    for speaker in SPEAKERS:
        texts = [SENTENCES[i] for i in rng.permutation(len(SENTENCES))[:utterances_per_speaker]]
        rel_paths = []
        for j, text in enumerate(texts):
            rel = f"audio/{speaker.name}/utt_{j:02d}.wav"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, synthesize(speaker, text, seed), SAMPLE_RATE, subtype="PCM_16")
            rel_paths.append(rel)
        for j, text in enumerate(texts):
            ref = (j + 1) % len(texts)
            sample = cloning_sample(
                f"{speaker.name}_{j:02d}", speaker.name, texts[ref], rel_paths[ref], text, rel_paths[j]
            )
            (val if j == len(texts) - 1 else train).append(sample)
    return train, val
