"""No code from Parquet files (issue 20, item 1): a column of Ray's pickled-object type, planted in every Parquet
file the project reads -- manifests, cache entries (hit and miss), row-reuse sources, stream parts on local disk,
``file://`` and ``s3://``, quarantine files, builder sources -- is refused or rebuilt, and its payload never runs.

The payload is real: unpickled, it creates the marker file (``test_the_planted_payload_runs_when_read_directly``
proves it with the plain pyarrow read the project used before). ``ray.data`` is imported first, as every driver and
worker has, so the extension type is registered just as in a job.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray.data  # noqa: F401  (registers ray.data.arrow_pickled_object, as in every driver and worker)
from ray.data.extensions import ArrowPythonObjectType
from stand_ins import make_entry

from higgs_train.builder.source_listing import Confinement, SourceError, SourceListing, SourceOptions
from higgs_train.builder.sources import list_source
from higgs_train.builder.table_sources import _add_table_rows
from higgs_train.data.manifest import CANONICAL_SCHEMA, ManifestError, load_manifest, read_manifest_rows
from higgs_train.data.plain_parquet import (
    UnsafeParquetError,
    parquet_refusal,
    parquet_schema,
    read_plain_parquet,
)
from higgs_train.data.preflight import DataSetupError, check_manifest_format
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.row_reuse import GroupReader, find_reusable
from higgs_train.data.shard_stream import EntryReader, StreamError, publish_entry
from higgs_train.data.token_cache import QUARANTINE_FILE, TokenCache

ROOT = Path(__file__).resolve().parents[2]
KEY = "p" * 24
PART = "data/part-00000.parquet"


class Payload:
    """Unpickles as ``open(marker, "w")``: the marker file exists exactly when something unpickled a value."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickled(marker: Path, n: int) -> pa.ExtensionArray:
    storage = pa.array([pickle.dumps(Payload(marker))] * n, pa.large_binary())
    return ArrowPythonObjectType().wrap_array(storage)


def plant(path: Path, marker: Path, column: str = "poison", *, filesystem: pafs.FileSystem | None = None) -> None:
    """Rewrite the Parquet file at ``path`` with ``column`` replaced by (or, if absent, added as) pickled payloads;
    row groups of 32 as the cache writes them, so a reader that did not check would find its rows where it expects."""
    fs = filesystem or pafs.LocalFileSystem()
    with fs.open_input_file(str(path)) as fh:
        table = pq.read_table(fh)
    column_values = pickled(marker, table.num_rows)
    if column in table.column_names:
        table = table.set_column(table.column_names.index(column), column, column_values)
    else:
        table = table.append_column(column, column_values)
    with fs.open_output_stream(str(path)) as fh:
        pq.write_table(table, fh, row_group_size=32)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "a planted pickle payload ran"


def test_the_planted_payload_runs_when_read_directly(tmp_path: Path) -> None:
    """The plant is live: the direct read the project used to do runs it (so the tests below can fail)."""
    marker, path = tmp_path / "ran", tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "poison": pickled(marker, 1)}), path)
    pq.read_table(path).to_pylist()
    assert marker.exists()


def _nested(marker: Path) -> pa.Table:
    inner = pickled(marker, 1)
    return pa.table({"ok": [1], "deep": pa.StructArray.from_arrays([pa.array([1]), inner], ["x", "obj"])})


def _listed(marker: Path) -> pa.Table:
    return pa.table({"ok": [1], "deep": pa.ListArray.from_arrays([0, 1], pickled(marker, 1))})


def _type_metadata_payload(marker: Path) -> pa.Table:
    """The type's own stored metadata is a pickle payload: opening the footer rebuilds the type from it."""
    payload = pickle.dumps(Payload(marker))
    metadata = {b"ARROW:extension:name": b"ray.data.arrow_pickled_object", b"ARROW:extension:metadata": payload}
    schema = pa.schema([("ok", pa.int64()), pa.field("deep", pa.large_binary(), metadata=metadata)])
    return pa.table([pa.array([1]), pa.array([payload], pa.large_binary())], schema=schema)


def _unregistered(marker: Path) -> pa.Table:
    """A type this process never registered: pyarrow keeps the storage type and the name in the field metadata."""
    field = pa.field("deep", pa.large_binary(), metadata={b"ARROW:extension:name": b"acme.objects"})
    return pa.table([pa.array([1]), pa.array([b"x"], pa.large_binary())], schema=pa.schema([("ok", pa.int64()), field]))


@pytest.mark.parametrize("make", [_nested, _listed, _type_metadata_payload, _unregistered])
def test_the_reader_refuses_an_extension_type_at_any_depth(tmp_path: Path, marker: Path, make) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(make(marker), path)
    for read in (read_plain_parquet, parquet_schema):
        with pytest.raises(UnsafeParquetError, match=r"f\.parquet: column 'deep"):
            read(path)
    reason = parquet_refusal(path)
    assert reason is not None and "\n" not in reason


def test_a_poisoned_manifest_is_refused_before_ray_starts(tmp_path: Path, marker: Path) -> None:
    """The driver's preflight (before MLflow and Ray) and every manifest reader refuse it, naming file and column."""
    rows = [{"id": "a", "messages": json.dumps([{"role": "user", "content": "hi"}])}]
    manifest = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows).append_column("notes", pickled(marker, 1)), manifest)
    with pytest.raises(DataSetupError, match=r"train\.parquet: column 'notes'.*plain columns"):
        check_manifest_format("--train_data", manifest)
    with pytest.raises(ManifestError, match=r"train\.parquet: column 'notes'"):
        read_manifest_rows(manifest)
    canonical = tmp_path / "canonical.parquet"
    row = {"row_index": 0, "id": "a", "messages_json": "null", "source": "train.json"}
    pq.write_table(pa.Table.from_pylist([row], schema=CANONICAL_SCHEMA), canonical)
    plant(canonical, marker, "misc_json")
    with pytest.raises(ManifestError, match=r"canonical\.parquet: column 'misc_json'"):
        load_manifest(canonical)


def _cache_entry(root: Path, key: str = KEY) -> Path:
    entry = make_entry(root, 40, key)
    Quarantine([{"id": "bad", "row_index": 40, "stage": "audio", "reason": "r"}]).write(entry / QUARANTINE_FILE)
    return entry


@pytest.mark.parametrize("poisoned", [QUARANTINE_FILE, "rows.parquet", PART])
def test_a_poisoned_cache_entry_is_corrupt_a_miss_and_removed(
    tmp_path: Path, marker: Path, poisoned: str, caplog
) -> None:
    """On lookup (the hit path: the driver then reads quarantine.parquet even on a hit) the entry is corrupt: it is
    removed with a one-line warning and the key misses, so ``build_token_cache`` builds and publishes it again."""
    entry = _cache_entry(tmp_path)
    cache = TokenCache(tmp_path)
    assert cache.lookup(KEY) is not None
    plant(entry / poisoned, marker, "row_key" if poisoned == "rows.parquet" else "id")
    assert cache.lookup(KEY) is None
    assert not entry.exists()
    assert f"{poisoned}: column" in caplog.text and "is rebuilt" in caplog.text


def test_direct_reads_of_a_poisoned_entry_file_are_refused(tmp_path: Path, marker: Path) -> None:
    """What reads an entry after lookup (the driver's reports, validation records, row gathering) refuses too."""
    entry = _cache_entry(tmp_path)
    found = TokenCache(tmp_path).lookup(KEY)
    plant(entry / QUARANTINE_FILE, marker, "reason")
    plant(entry / PART, marker, "speaker")
    with pytest.raises(UnsafeParquetError, match="quarantine.parquet: column 'reason'"):
        found.quarantine_table()
    with pytest.raises(UnsafeParquetError, match="quarantine.parquet: column 'reason'"):
        Quarantine.read(entry / QUARANTINE_FILE)
    with pytest.raises(UnsafeParquetError, match="part-00000.parquet: column 'speaker'"):
        found.records()
    with pytest.raises(UnsafeParquetError, match="part-00000.parquet: column 'speaker'"):
        GroupReader().group(entry / PART, 0)


@pytest.mark.parametrize("poisoned", ["rows.parquet", PART])
def test_a_miss_does_not_reuse_rows_of_a_poisoned_entry(tmp_path: Path, marker: Path, poisoned: str) -> None:
    """Row reuse searches older entries: a poisoned one is skipped (its rows are preprocessed again)."""
    entry = _cache_entry(tmp_path)
    wanted = {f"key{i}" for i in range(40)}
    assert set(find_reusable(tmp_path, wanted).by_key) == wanted
    plant(entry / poisoned, marker, "row_key" if poisoned == "rows.parquet" else "label_ids")
    assert find_reusable(tmp_path, wanted).by_key == {}


@pytest.fixture(scope="module")
def clean_entry(tmp_path_factory) -> Path:
    return make_entry(tmp_path_factory.mktemp("stream"), 100, KEY)


def _first_rows(location: str) -> list[int]:
    reader = EntryReader(location)
    try:
        return [int(r["row_index"]) for r in reader.read([0, 99])]
    finally:
        reader.close()


@pytest.mark.parametrize("storage", ["local", "file", "s3"])
def test_a_poisoned_stream_part_is_refused_by_the_worker_and_republished_by_the_driver(
    storage: str, tmp_path: Path, marker: Path, clean_entry: Path, request
) -> None:
    """The worker's reader (``EntryReader``, what ``ray::RayTrainWorker`` runs) fails with one line naming the file
    and the column; the driver's ``publish_entry`` finds the poisoned entry on the stream storage and publishes it
    again, after which the worker reads the right rows."""
    if storage == "local":  # workers stream from the cache root itself: the driver's lookup rebuilds the entry
        entry = Path(shutil.copytree(clean_entry, tmp_path / KEY))
        plant(entry / PART, marker, "input_ids")
        with pytest.raises(StreamError, match=rf"{KEY}/{PART}: column 'input_ids'.*rerun the job"):
            _first_rows(str(entry))
        assert TokenCache(tmp_path).lookup(KEY) is None
        return
    root = f"file://{tmp_path}/stream" if storage == "file" else f"{request.getfixturevalue('s3')}/{tmp_path.name}"
    location = publish_entry(clean_entry, root)
    assert _first_rows(location) == [0, 99]
    fs, path = pafs.FileSystem.from_uri(location)
    plant(f"{path}/{PART}", marker, "input_ids", filesystem=fs)
    with pytest.raises(StreamError, match=rf"{location}/{PART}: column 'input_ids'.*rerun the job"):
        _first_rows(location)
    plant(f"{path}/rows.parquet", marker, "num_tokens", filesystem=fs)
    with pytest.raises(StreamError, match=rf"{location}/rows.parquet: column 'num_tokens'"):
        EntryReader(location)
    assert publish_entry(clean_entry, root) == location
    assert _first_rows(location) == [0, 99]


def test_a_poisoned_builder_source_is_refused(tmp_path: Path, marker: Path) -> None:
    source = tmp_path / "clips.parquet"
    table = pa.table({"audio": [{"bytes": b"RIFF", "path": "a.wav"}], "text": ["hello"]})
    pq.write_table(table.append_column("speaker", pickled(marker, 1)), source)
    with pytest.raises(SourceError, match=r"clips\.parquet: column 'speaker'"):
        list_source(source)
    # A save_to_disk folder is Arrow, read by ``datasets``: its rows are checked as a table (used columns only).
    listing = SourceListing("hf_disk")
    confine = Confinement(tmp_path)
    with pytest.raises(SourceError, match=r"train: column 'speaker'"):
        _add_table_rows(
            listing, table.append_column("speaker", pickled(marker, 1)), "train", tmp_path, SourceOptions(), confine
        )
    _add_table_rows(
        listing, table.append_column("unused", pickled(marker, 1)), "train", tmp_path, SourceOptions(), confine
    )
    assert [item.text for item in listing.items] == ["hello"]


# Reads that do not go through plain_parquet. Ray's own read_parquet refuses the pickled-object type itself, and the
# file it reads is the canonical manifest the driver has just written.
ALLOWED = {
    ("higgs_train/data/ray_pipeline.py", "ray.data.read_parquet"),
    ("higgs_train/data/shard_stream.py", "self.read_table"),  # EntryReader's own method
}
READERS = {"read_table", "ParquetFile", "read_schema", "read_metadata", "read_pandas", "read_parquet", "dataset"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_every_parquet_read_goes_through_plain_parquet() -> None:
    """A new ``pq.read_table``/``ParquetFile``/``read_schema``/``pyarrow.dataset``/``read_parquet`` anywhere in
    ``higgs_train/`` outside ``data/plain_parquet.py`` fails here: the one reading path stays the only one."""
    found = []
    for path in sorted((ROOT / "higgs_train").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "higgs_train/data/plain_parquet.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in READERS:
                name = _dotted(node.func)
                if (rel, name) in ALLOWED:
                    continue
                found.append(f"{rel}:{node.lineno} {name}(...)")
            elif isinstance(node, ast.ImportFrom) and node.module in ("pyarrow.parquet", "pyarrow", "pyarrow.dataset"):
                names = [a.name for a in node.names if a.name in READERS or node.module == "pyarrow.dataset"]
                found.extend(f"{rel}:{node.lineno} from {node.module} import {name}" for name in names)
            elif isinstance(node, ast.Import):
                found.extend(f"{rel}:{node.lineno} import {a.name}" for a in node.names if a.name == "pyarrow.dataset")
    assert not found, "read Parquet through higgs_train.data.plain_parquet instead:\n" + "\n".join(found)
