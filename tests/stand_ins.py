"""Test stand-ins shared by unit, integration and reliability tests."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

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


def synthetic_record(row_index: int, rng: np.random.Generator) -> dict:
    """A token-cache record of random length (4 codebooks), its codes all ``row_index % 1000``."""
    n = int(rng.integers(20, 200))
    frames = int(rng.integers(5, 40))
    return {
        "id": f"row{row_index}",
        "row_index": row_index,
        "speaker": "spk",
        "input_ids": np.arange(n, dtype=np.int32),
        "label_ids": np.full(n, -100, np.int32),
        "audio_codes": np.full(4 * frames, row_index % 1000, np.int16),
        "audio_codes_shape": np.asarray([4, frames], np.int32),
        "audio_ids_start": np.zeros(1, np.int64),
        "audio_is_out": np.ones(1, np.bool_),
        "audio_waveforms": np.zeros(0, np.float32),
        "audio_waveforms_start": np.zeros(0, np.int64),
        "audio_sample_rates": np.zeros(0, np.int32),
        "num_tokens": n + frames,
        "audio_seconds": 1.0,
    }


def make_entry(root: Path, num_rows: int, key: str = "k" * 24, seed: int = 0) -> Path:
    """A complete entry in the streaming layout, written by the same ``write_entry`` a build uses."""
    import json

    import pyarrow.parquet as pq

    from higgs_train.data.record_codec import records_to_table
    from higgs_train.data.row_reuse import index_new_records, write_entry

    rng = np.random.default_rng(seed)
    raw = root / f"raw-{key}"
    raw.mkdir(parents=True)
    records = [synthetic_record(i, rng) for i in range(num_rows)]
    pq.write_table(records_to_table(records[::-1]), raw / "a.parquet", row_group_size=7)  # any order, any groups
    files, where = index_new_records(raw)
    entry = root / key
    places = [(i, f"key{i}", (files[where[i][0]], where[i][1], where[i][2])) for i in range(num_rows)]
    assert write_entry(entry, places) == num_rows
    (entry / "_SUCCESS").write_text(json.dumps({"key": key}))
    return entry
