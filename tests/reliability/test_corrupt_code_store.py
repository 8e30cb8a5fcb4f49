"""The audio code store under faults: a damaged file is encoded again on the next run (issue 20, item 6), instead of
its rows being quarantined ("BadZipFile") on every run forever; a clip another actor holds locked is left to it while
the other clips are encoded (issue 21, item 1)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stand_ins import StandInCodec

from higgs_train.chatml import cloning_sample
from higgs_train.data.clip_encoder import AudioCodeStore, EncodedAudio, file_sha256
from higgs_train.data.preprocess import SamplePreprocessor
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


HOLD_LOCK = (
    "import sys\n"
    "from higgs_train.data.clip_encoder import AudioCodeStore\n"
    "with AudioCodeStore(sys.argv[1]).lock(sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


def _hold_lock(store: AudioCodeStore, sha: str) -> subprocess.Popen:
    """Another process (an actor encoding that clip) holding one clip's lock until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store.root), sha], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline() == b"held\n"
    return holder


def test_a_clip_another_actor_is_encoding_is_left_to_it_while_the_other_clips_are_encoded(tmp_path: Path) -> None:
    """Two actors sharing a reference clip: the one that finds its lock taken encodes its other clips meanwhile
    (before, it waited for every lock of its batch first: 2 actors on 2 cores were a quarter idle), then reads or
    encodes the shared clip in its row pass. Each clip is still encoded once."""
    import soundfile as sf

    for name, hz in (("ref.wav", 220.0), ("a.wav", 330.0), ("b.wav", 440.0)):
        sf.write(tmp_path / name, 0.3 * np.sin(2 * np.pi * hz * np.arange(24_000) / 24_000), 24_000)
    rows = [
        cloning_sample("r1", "spk", "a reference line", "ref.wav", "a first target", "a.wav"),
        cloning_sample("r2", "spk", "a reference line", "ref.wav", "a second target", "b.wav"),
    ]
    tokenizer = load_text_tokenizer(resolve_paths("embedded", "embedded").tokenizer_path)
    store = AudioCodeStore(tmp_path / "codes")
    ref, a, b = (file_sha256(tmp_path / name) for name in ("ref.wav", "a.wav", "b.wav"))
    with store.lock(ref, wait=False) as free:
        assert free
    holder = _hold_lock(store, ref)
    with store.lock(ref, wait=False) as free:
        assert not free  # held elsewhere: answered at once, not waited for

    pre = SamplePreprocessor(tokenizer, StandInCodec(), tmp_path, code_store=store)
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(batch=pre.process_batch(rows)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while (store.get(a) is None or store.get(b) is None) and worker.is_alive() and time.monotonic() < deadline:
            worker.join(timeout=0.05)
        assert store.get(a) is not None and store.get(b) is not None  # encoded while the reference was locked
        assert worker.is_alive() and store.get(ref) is None  # its row pass waits for the shared clip's owner
    finally:
        holder.stdin.close()  # the other actor stops without storing codes: this one encodes the clip itself
        holder.wait(timeout=60)
        worker.join(timeout=120)
    batch = done["batch"]
    assert not batch.failures and [r["id"] for r in batch.records] == ["r1", "r2"]
    assert batch.stats["encoder_calls"] == 3 and store.get(ref) is not None
