"""A damaged code-store file is encoded again on the next run (issue 20, item 6), instead of its rows being
quarantined ("BadZipFile") on every run forever."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from stand_ins import StandInCodec

from higgs_train.chatml import cloning_sample
from higgs_train.data.clip_encoder import EncodedAudio
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.token_cache import AudioCodeStore
from higgs_train.model_loading import load_text_tokenizer, resolve_paths

SHA = "ab" * 32


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD = EncodedAudio(np.arange(16, dtype=np.int16).reshape(2, 8), 1.5)
DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "not a zip": lambda good: b"\x93NUMPY garbage",
    "no codes": lambda good: _npz(seconds=np.float64(1.0)),
    "pickled codes": lambda good: _npz(codes=np.array([None], dtype=object), seconds=np.float64(1.0)),
    "1-D codes": lambda good: _npz(codes=np.zeros(4, np.int16), seconds=np.float64(1.0)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_code_file_is_removed_and_reads_as_absent(tmp_path: Path, damage: str, caplog) -> None:
    store = AudioCodeStore(tmp_path)
    store.put(SHA, GOOD)
    path = next(tmp_path.glob("*/*.npz"))
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    assert store.get(SHA) is None
    assert not path.exists()
    assert f"{path} is corrupt" in caplog.text and "encoded again" in caplog.text
    store.put(SHA, GOOD)
    again = store.get(SHA)
    assert again is not None and np.array_equal(again.codes, GOOD.codes) and again.seconds == GOOD.seconds


def test_a_row_whose_code_file_is_truncated_is_encoded_again_and_succeeds(tmp_path: Path) -> None:
    """A run with the store's files truncated (the state a killed copy or a full disk leaves) trains the row: its
    clips are encoded again, with the same codes, and the run after that reads them from the store again."""
    import soundfile as sf

    for name, hz in (("ref.wav", 220.0), ("target.wav", 330.0)):
        sf.write(tmp_path / name, 0.3 * np.sin(2 * np.pi * hz * np.arange(24_000) / 24_000), 24_000)
    rows = [cloning_sample("row", "spk", "a reference line", "ref.wav", "a target line", "target.wav")]
    tokenizer = load_text_tokenizer(resolve_paths("embedded", "embedded").tokenizer_path)
    store = AudioCodeStore(tmp_path / "codes")

    def run():  # a fresh preprocessor per run: nothing remembered in memory between runs
        return SamplePreprocessor(tokenizer, StandInCodec(), tmp_path, code_store=store).process_batch(rows)

    first = run()
    files = sorted(store.root.glob("*/*.npz"))
    assert not first.failures and first.stats["encoder_calls"] == len(files) >= 2
    for file in files:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    second = run()
    assert not second.failures, second.failures
    assert second.stats["encoder_calls"] == len(files)
    assert second.records[0]["audio_codes"].tolist() == first.records[0]["audio_codes"].tolist()
    third = run()
    assert not third.failures and third.stats["encoder_calls"] == 0
