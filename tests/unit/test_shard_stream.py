"""Streaming a worker's shard of a token-cache entry: only its rows, each row once per epoch, equal step counts,
and a bounded read-ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from stand_ins import make_entry

from higgs_train.data.batching import plan_epoch
from higgs_train.data.shard_stream import (
    ROWS_PER_GROUP,
    EntryReader,
    ShardStream,
    StreamError,
    open_shard_stream,
    publish_entry,
    read_entry,
    stream_root_for_workers,
)


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> Path:
    return make_entry(tmp_path_factory.mktemp("cache"), 300)


def test_entry_is_sorted_in_small_row_groups_and_reads_any_rows(entry):
    reader = EntryReader(str(entry))
    assert len(reader) == 300
    meta = pq.ParquetFile(next((entry / "data").glob("*.parquet"))).metadata
    assert meta.row_group(0).num_rows == ROWS_PER_GROUP
    table = reader.read_table([5, 299, 0, 5])
    assert table.column("row_index").to_pylist() == [5, 299, 0, 5]
    rec = reader.read([17])[0]
    assert rec["audio_codes"].tolist() == [17] * len(rec["audio_codes"])
    assert int(rec["num_tokens"]) == int(reader.locations.num_tokens[17])


def test_an_incomplete_entry_is_not_streamed(tmp_path):
    entry = make_entry(tmp_path, 10)
    (entry / "_SUCCESS").unlink()
    with pytest.raises(StreamError, match="no complete"):
        EntryReader(str(entry))


class CountingReader(EntryReader):
    """Records which positions were read, and how many reads ran at once."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.positions: list[int] = []

    def read_table(self, positions):
        self.positions.extend(int(p) for p in positions)
        return super().read_table(positions)


def worker_steps(lengths, world: int, rank: int, epoch: int, accum: int = 2) -> list[list[list[int]]]:
    plan = plan_epoch(lengths, max_tokens_per_batch=600, batch_size=4, seed=3, epoch=epoch, num_workers=world)[rank]
    return [plan[i : i + accum] for i in range(0, len(plan), accum)]


def test_each_worker_reads_only_its_rows_and_every_row_is_read_once_per_epoch(entry):
    world = 2
    for epoch in range(2):
        seen, counts = [], []
        for rank in range(world):
            stream = ShardStream(CountingReader(str(entry)), prefetch_steps=1, log_reads=True)
            steps = worker_steps(stream.lengths(), world, rank, epoch)
            stream.schedule(steps)
            own = sorted(i for step in steps for batch in step for i in batch)
            for step in steps:
                for batch in step:
                    for i in batch:
                        assert int(stream[i]["row_index"]) == i
            stream.close()
            assert sorted(stream.reader.positions) == own  # only its own rows, each once
            assert sorted(stream.read_log[-1]) == own
            seen += own
            counts.append(len(steps))
        assert sorted(seen) == list(range(300))  # every row once per epoch over the workers
        assert len(set(counts)) == 1  # equal step counts


def test_read_ahead_is_bounded_to_one_step(entry):
    stream = ShardStream(EntryReader(str(entry)), prefetch_steps=1)
    steps = worker_steps(stream.lengths(), 1, 0, 0)
    stream.schedule(steps)
    for s, step in enumerate(steps):
        for batch in step:
            for i in batch:
                stream[i]
        held = set(stream._current)
        assert held == {i for batch in step for i in batch}  # only the current step's records are held
        assert set(stream._pending) <= {s + 1}  # and at most the next step is being read
    assert stream.max_in_flight == 1 and stream.steps_read == len(steps)
    stream.close()


def test_a_row_outside_the_schedule_is_read_on_the_spot(entry):
    stream = ShardStream(EntryReader(str(entry)), prefetch_steps=0)
    stream.schedule([[[1, 2]]])
    assert int(stream[250]["row_index"]) == 250
    assert int(stream[2]["row_index"]) == 2
    stream.close()


def test_publish_to_a_file_uri_and_stream_from_it(entry, tmp_path):
    root = f"file://{tmp_path / 'remote'}"
    location = publish_entry(entry, root)
    assert location == f"{root}/{entry.name}" and (tmp_path / "remote" / entry.name / "_SUCCESS").is_file()
    stream = open_shard_stream(root, entry.name)
    stream.schedule([[[3, 4]]])
    assert [int(stream[i]["row_index"]) for i in (3, 4)] == [3, 4]
    np.testing.assert_array_equal(stream.lengths(), EntryReader(str(entry)).locations.num_tokens)
    stream.close()


def test_workers_read_the_validation_entry_from_where_the_training_entry_streams(entry, tmp_path):
    """Both entries are published to the stream root, and the validation set is read whole from there: a worker on
    another node never opens the driver's cache folder (which is then gone here)."""
    import shutil

    from higgs_train.data.token_cache import TokenCache

    cache = tmp_path / "cache"
    train, val = (shutil.copytree(entry, cache / name) for name in ("train-key", "val-key"))
    expected = TokenCache(cache).open("val-key").records()
    root = stream_root_for_workers([train, val], f"file://{tmp_path / 'remote'}")
    shutil.rmtree(cache)
    records = read_entry(root, "val-key")
    assert [int(r["row_index"]) for r in records] == [int(r["row_index"]) for r in expected] == list(range(300))
    np.testing.assert_array_equal(records[42]["audio_codes"], expected[42]["audio_codes"])
    assert stream_root_for_workers([entry], "") == str(entry.parent)  # no stream URI: the local cache root
