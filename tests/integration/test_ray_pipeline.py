"""Token cache built by the Ray Data actor pool: quarantine, cache hits, and each audio file encoded exactly once."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from higgs_train.data.batching import plan_epoch
from higgs_train.data.clip_encoder import process_encoder_stats
from higgs_train.data.collate import build_collator, collate_records
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.ray_pipeline import build_token_cache
from higgs_train.data.stage_sizing import check_resources
from higgs_train.data.token_cache import TokenCache
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import resolve_paths
from higgs_train.ray_session import ACTOR_START_DEATHS_TOLERATED, replace_actors_lost_at_start

pytestmark = pytest.mark.integration

BUILD = dict(num_actors=2, cpus_per_actor=0.5, batch_size=2)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def write_canonical(rows: list[dict], path: Path) -> Path:
    """A canonical manifest written directly with pyarrow (the columns manifest.convert_manifest produces)."""
    table = pa.table(
        {
            "row_index": pa.array(range(len(rows)), pa.int64()),
            "id": [r["id"] for r in rows],
            "speaker": [r.get("speaker") for r in rows],
            "start_index": pa.array([r.get("start_index") for r in rows], pa.int64()),
            "messages_json": [json.dumps(r["messages"], sort_keys=True) for r in rows],
            "misc_json": pa.array([None] * len(rows), pa.string()),
            "source": ["test"] * len(rows),
        }
    )
    pq.write_table(table, path)
    return path


def audio_urls(rows: list[dict]) -> set[str]:
    return {m["content"]["audio_url"] for r in rows for m in r["messages"] if isinstance(m["content"], dict)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    sample = create_sample_data(root / "data")
    good = json.loads(sample["train"].read_text())
    missing = copy.deepcopy(good[0])
    missing["id"] = "bad_missing_audio"
    missing["messages"][4]["content"]["audio_url"] = "audio/nobody/missing.wav"
    late_input = copy.deepcopy(good[1])
    late_input["id"] = "bad_audio_in_after_out"
    late_input["messages"].append({"role": "user", "content": dict(good[1]["messages"][2]["content"])})
    rows = good[:3] + [missing] + good[3:10] + [late_input] + good[10:]
    manifest = write_canonical(rows, root / "manifest.parquet")
    return {
        "root": root,
        "rows": rows,
        "good": good,
        "manifest": manifest,
        "audio_base": sample["audio_base_path"],
        "cache_root": root / "cache",
        "paths": resolve_paths("embedded", "embedded"),
    }


@pytest.fixture(scope="module")
def first_build(ray_cluster, setup):
    return build_token_cache(setup["manifest"], setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_cached(first_build, setup):
    assert not first_build.hit
    quarantine = Quarantine.read(first_build.path / "quarantine.parquet")
    got = {(r.id, r.stage): r.reason for r in quarantine}
    assert set(got) == {("bad_missing_audio", "audio"), ("bad_audio_in_after_out", "validation")}
    assert got[("bad_missing_audio", "audio")] == "messages[4]: audio file not found: audio/nobody/missing.wav"
    assert "audio-in after audio-out" in got[("bad_audio_in_after_out", "validation")]
    assert first_build.quarantine_counts == {"audio": 1, "validation": 1}

    table = first_build.entry.table()
    assert table.column("id").to_pylist() == [r["id"] for r in setup["rows"] if not r["id"].startswith("bad_")]
    assert first_build.stats["rows_ok"] == len(setup["good"]) and first_build.stats["rows_quarantined"] == 2
    assert (first_build.path / "_SUCCESS").exists() and (first_build.path / "stats.json").exists()
    assert first_build.stats["audio_seconds_per_cpu_second"] > 0


def test_the_build_reads_its_rows_without_a_pool_of_footer_reader_actors(first_build, setup):
    """The build hands the pipeline its rows from the driver's memory (``from_arrow``), never by a ``read_parquet``:
    Ray 2.60's default Parquet reader starts FooterReader actors for every read (it provisioned 32 per read here; a
    quick-test job ran 30-31 worker processes with it, 17-19 without, and 7-26 s longer), and a read's tasks may run
    on a node that cannot see the file."""
    import ray

    assert first_build.stats["rows_total"] == len(setup["rows"])
    started = {actor.get("ActorClassName") for actor in ray._private.state.actors().values()}  # dead ones too
    assert "FooterReader" not in started, sorted(started)


def test_two_epochs_and_a_second_run_encode_each_audio_file_once(first_build, setup):
    distinct = len(audio_urls(setup["good"]))
    assert first_build.encoder_calls == first_build.stats["encoder_calls"] == distinct
    # CPU actors encode one clip per call (stacking measured slower on CPU: benchmarks/preprocess_throughput.py)
    assert first_build.stats["encoder_batches"] == distinct and first_build.stats["encode_batch_size"] == 1
    assert first_build.stats["decode_cpu_seconds"] > 0  # the clips were decoded by the decode stage's tasks

    # Two epochs read the cache: batches are planned and collated without touching the encoder.
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    before = process_encoder_stats().calls
    records = first_build.entry.records()
    collator = build_collator(HiggsAudioConfig.from_pretrained(setup["paths"].model_path))
    lengths = first_build.entry.lengths()
    for epoch in range(2):
        for worker in plan_epoch(lengths, max_tokens_per_batch=1200, batch_size=4, seed=0, epoch=epoch, num_workers=2):
            for batch in worker:
                collate_records([records[i] for i in batch], collator)
    assert process_encoder_stats().calls == before

    # A second run with the same inputs is a cache hit: no actors, no encoder calls.
    second = build_token_cache(setup["manifest"], setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)
    assert second.hit and second.key == first_build.key and second.encoder_calls == 0

    # A run on an edited manifest (the bad rows removed) is a new key, but every clip comes from the code store.
    edited = write_canonical(setup["good"], setup["root"] / "manifest_clean.parquet")
    third = build_token_cache(edited, setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)
    assert not third.hit and third.key != first_build.key
    assert third.encoder_calls == 0 and third.stats["rows_ok"] == len(setup["good"])

    # The persistent ledger, written by separate builds, sums to one encode per distinct file.
    builds = TokenCache(setup["cache_root"]).builds()
    assert [b["hit"] for b in builds] == [False, True, False]
    assert sum(b["encoder_calls"] for b in builds) == distinct
    assert len(list((setup["cache_root"] / "audio_codes").glob("*/*/*.npz"))) == distinct  # one entry per clip


def test_oversized_actor_pool_fails_fast(ray_cluster):
    with pytest.raises(ValueError, match="needs 2.75 CPUs"):
        check_resources(num_actors=5, cpus_per_actor=0.5)


def test_a_pool_actor_that_dies_before_it_starts_is_replaced(ray_cluster, tmp_path):
    """Ray Core restarts an actor whose process crashes, never one whose creation failed; such a death goes to
    Ray Data's init-death budget, 0 by default: one failed constructor failed the whole cache build. ``init_ray`` has
    Ray Data replace such actors (``replace_actors_lost_at_start``)."""
    import ray

    marker = tmp_path / "first_start"

    class DiesOnFirstStart:  # local: cloudpickle ships it by value to the actor's process
        def __init__(self, marker: str) -> None:
            if not os.path.exists(marker):
                Path(marker).touch()
                raise RuntimeError("this actor dies in creation, once")

        def __call__(self, batch):
            return batch

    def doubled_ids(tolerated: int) -> list[int]:
        ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = tolerated
        dataset = ray.data.range(4).map_batches(
            DiesOnFirstStart, fn_constructor_kwargs={"marker": str(marker)}, compute=ray.data.ActorPoolStrategy(size=1)
        )
        return sorted(row["id"] for row in dataset.take_all())

    try:
        with pytest.raises(Exception, match="dies in creation"):  # Ray Data's default: one such death fails the stage
            doubled_ids(0)
        marker.unlink()
        replace_actors_lost_at_start()
        assert doubled_ids(ACTOR_START_DEATHS_TOLERATED) == [0, 1, 2, 3] and marker.exists()
    finally:
        ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = 0


def silence_in_place(clip: Path) -> tuple[bytes, os.stat_result]:
    """Zero the second half of a clip's bytes in place, keeping its size and mtime (as ``cp -p``/``rsync -t``
    leave an edited file); returns what ``restore_in_place`` needs."""
    original, st = clip.read_bytes(), clip.stat()
    with open(clip, "r+b") as fh:
        fh.seek(len(original) // 2)
        fh.write(bytes(len(original) - len(original) // 2))
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (clip.stat().st_size, clip.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return original, st


def restore_in_place(clip: Path, original: bytes, st: os.stat_result) -> None:
    with open(clip, "r+b") as fh:
        fh.write(original)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_editing_one_row_reprocesses_only_that_row(first_build, setup):
    """Row-level content keys: unchanged rows come from earlier entries, at their new positions. In the same build,
    an audio file edited in place with the same size and mtime re-encodes that clip and rebuilds exactly the rows
    that reference it (the fingerprint memo used to trust size + mtime and keep the old codes)."""
    rows = copy.deepcopy(setup["good"])
    rows.insert(0, rows.pop(5))  # a moved row is the same record at a new row_index
    edited = rows[7]
    edited["messages"][3]["content"] = edited["messages"][3]["content"] + " Edited."
    url = next(u for u in sorted(audio_urls(rows)) if u not in audio_urls([edited]))
    affected = {r["id"] for r in rows if url in audio_urls([r])}
    assert 0 < len(affected) < len(rows) - 1
    manifest = write_canonical(rows, setup["root"] / "manifest_one_edit.parquet")
    clip = Path(setup["audio_base"]) / url
    original, st = silence_in_place(clip)
    try:
        result = build_token_cache(manifest, setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)
        assert not result.hit
        assert result.stats["rows_preprocessed"] == 1 + len(affected)
        assert result.stats["rows_reused"] == len(rows) - 1 - len(affected)
        assert result.stats["rows_ok"] == len(rows) and result.encoder_calls == 1  # the edited clip only
        table = result.entry.table()
        assert table.column("row_index").to_pylist() == list(range(len(rows)))
        assert table.column("id").to_pylist() == [r["id"] for r in rows]
        before = {r["id"]: r for r in first_build.entry.table().to_pylist()}
        for row in table.to_pylist():
            old = before[row["id"]]
            if row["id"] in affected:
                assert row["audio_codes"] != old["audio_codes"], row["id"]  # the new codes, not the old
                continue
            same = {k: v for k, v in row.items() if k != "row_index"} == {
                k: v for k, v in old.items() if k != "row_index"
            }
            assert same == (row["id"] != edited["id"]), row["id"]  # otherwise only the edited row's record differs

        # The same manifest again is an entry hit; a rebuild elsewhere of a manifest whose rows all exist starts no
        # actor.
        again = build_token_cache(manifest, setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)
        assert again.hit
        shuffled = write_canonical(rows[::-1], setup["root"] / "manifest_reversed.parquet")
        reversed_build = build_token_cache(shuffled, setup["cache_root"], setup["paths"], setup["audio_base"], **BUILD)
        assert reversed_build.stats["rows_preprocessed"] == 0 and reversed_build.stats["rows_ok"] == len(rows)
    finally:
        restore_in_place(clip, original, st)


def test_another_text_tokenizer_rebuilds_every_row_with_new_ids(first_build, setup, tmp_path):
    """A ``Lowercase`` normalizer keeps the vocabulary (all the old key hashed) but changes the ids: every row is
    rebuilt (none encodes audio again: the codes do not depend on the text tokenizer); the original tokenizer
    finds its entry again."""
    import dataclasses

    from tokenizer_variants import derived_tokenizer

    rows = setup["good"][:4]  # a few rows and one actor: the cost is the actor's start
    manifest = write_canonical(rows, setup["root"] / "manifest_tokenizer.parquet")
    one_actor = {**BUILD, "num_actors": 1}
    base = build_token_cache(manifest, setup["cache_root"], setup["paths"], setup["audio_base"], **one_actor)
    assert base.stats.get("rows_preprocessed", 0) == 0  # every row comes from the first build
    before = {r["id"]: r for r in base.entry.table().to_pylist()}
    lowercase = derived_tokenizer(setup["paths"].tokenizer_path, tmp_path / "lowercase", "lowercase")
    paths = dataclasses.replace(setup["paths"], tokenizer_path=str(lowercase))
    result = build_token_cache(manifest, setup["cache_root"], paths, setup["audio_base"], **one_actor)
    assert not result.hit and result.encoder_calls == 0
    assert result.stats["rows_preprocessed"] == len(rows) and result.stats["rows_reused"] == 0
    for row in result.entry.table().to_pylist():
        assert row["input_ids"] != before[row["id"]]["input_ids"], row["id"]
        assert row["audio_codes"] == before[row["id"]]["audio_codes"], row["id"]
    again = build_token_cache(manifest, setup["cache_root"], setup["paths"], setup["audio_base"], **one_actor)
    assert again.hit and again.key == base.key
