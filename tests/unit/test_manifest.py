"""Manifest reading and the canonical Parquet form: the three input forms agree, messages survive losslessly."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from higgs_train.data import manifest as m
from higgs_train.embedded.sample_data import create_sample_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    paths = create_sample_data(tmp_path_factory.mktemp("data"), utterances_per_speaker=3)
    rows = json.loads(paths["train"].read_text())
    # Extra shapes the format allows: content lists, text parts, non-ASCII text, misc, a row without id.
    rows[0]["messages"][3]["content"] = ["Zürich café — ", {"type": "text", "text": "naïve 日本語"}]
    rows[0]["misc"] = {"note": "x", "nested": {"k": [1, 2.5, None]}}
    rows[1].pop("id")
    return rows


def _write_forms(rows: list[dict], out: Path) -> dict[str, Path]:
    as_json = out / "m.json"
    as_json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    as_jsonl = out / "m.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    # A "raw" Parquet keeps messages as JSON text (struct inference cannot hold mixed str/dict content).
    raw = [{**r, "messages": json.dumps(r["messages"])} for r in rows]
    as_parquet = out / "m.parquet"
    pq.write_table(pa.Table.from_pylist(raw), as_parquet)
    return {"json": as_json, "jsonl": as_jsonl, "parquet": as_parquet}


def _without_source(table: pa.Table) -> pa.Table:
    return table.drop_columns(["source"])


def test_three_forms_give_identical_canonical_tables(sample_rows: list[dict], tmp_path: Path) -> None:
    rows = copy.deepcopy(sample_rows)
    for r in rows:
        r.pop("misc", None)  # misc would become a struct column in the raw Parquet; its round trip is tested separately
    forms = _write_forms(rows, tmp_path)
    tables = {name: m.to_canonical_table(m.read_manifest_rows(p), str(p)) for name, p in forms.items()}
    canonical = tmp_path / "canonical.parquet"
    m.convert_manifest(forms["json"], canonical)
    tables["canonical"] = m.to_canonical_table(m.read_manifest_rows(canonical), str(canonical))

    reference = _without_source(tables["json"])
    assert reference.schema == _without_source(pa.Table.from_pylist([], schema=m.CANONICAL_SCHEMA)).schema
    assert reference.num_rows == len(rows)
    for name, table in tables.items():
        assert table.schema == m.CANONICAL_SCHEMA, name
        assert _without_source(table).equals(reference), name
        assert set(table.column("source").to_pylist()) == {str(forms.get(name, canonical))}


def test_messages_and_misc_round_trip_losslessly(sample_rows: list[dict], tmp_path: Path) -> None:
    src = tmp_path / "m.json"
    src.write_text(json.dumps(sample_rows, ensure_ascii=False))
    dst = tmp_path / "out" / "canonical.parquet"
    report = m.convert_manifest(src, dst)
    assert (report.rows, report.parse_errors, report.duplicate_ids, report.generated_ids) == (len(sample_rows), 0, 0, 1)
    assert pq.read_schema(dst) == m.CANONICAL_SCHEMA

    loaded = m.load_manifest(dst)
    assert [s["row_index"] for s in loaded] == list(range(len(sample_rows)))
    for original, back in zip(sample_rows, loaded, strict=True):
        assert back["messages"] == original["messages"]
        assert back["misc"] == original.get("misc")
        assert back["speaker"] == original["speaker"]
        assert back["start_index"] == original["start_index"]
        assert "parse_error" not in back
    assert loaded[0]["messages"][3]["content"][1] == {"type": "text", "text": "naïve 日本語"}
    assert m.load_manifest(src) == loaded


def test_stable_id_is_content_hash_and_form_independent(sample_rows: list[dict], tmp_path: Path) -> None:
    row = copy.deepcopy(sample_rows[1])
    expected = m.stable_id({k: row.get(k) for k in m.SAMPLE_KEYS})
    assert expected.startswith("row-") and len(expected) == 4 + 16
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([dict(reversed(list(row.items())))]))
    ids = [m.load_manifest(tmp_path / name)[0]["id"] for name in ("a.jsonl", "b.json")]
    assert ids == [expected, expected]
    row["speaker"] = "someone_else"
    assert m.stable_id({k: row.get(k) for k in m.SAMPLE_KEYS}) != expected


def test_struct_parquet_drops_inferred_nulls(sample_rows: list[dict], tmp_path: Path) -> None:
    """A Parquet written straight from dicts gets struct columns; nulls filled in by inference are removed."""
    rows = copy.deepcopy(sample_rows[2:5])
    for r in rows:
        for msg in r["messages"]:
            if isinstance(msg["content"], str):
                msg["content"] = {"type": "text", "text": msg["content"]}
    path = tmp_path / "structs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert pa.types.is_list(pq.read_schema(path).field("messages").type)
    loaded = m.load_manifest(path)
    assert [s["messages"] for s in loaded] == [r["messages"] for r in rows]


def test_duplicate_ids_get_deterministic_suffixes(sample_rows: list[dict], tmp_path: Path) -> None:
    base = sample_rows[2]
    rows = [{**base, "id": i} for i in ("a", "a", "a#2", "a", "b")]
    src = tmp_path / "dup.json"
    src.write_text(json.dumps(rows))
    report = m.convert_manifest(src, tmp_path / "dup.parquet")
    assert report.duplicate_ids == 2
    assert [s["id"] for s in m.load_manifest(tmp_path / "dup.parquet")] == ["a", "a#3", "a#2", "a#4", "b"]


def test_unreadable_rows_are_kept_with_a_parse_error(sample_rows: list[dict], tmp_path: Path) -> None:
    good = json.dumps(sample_rows[2])
    lines = [
        good,
        "",
        "{not json",
        "   ",
        "[1, 2]",
        json.dumps({**sample_rows[3], "speaker": 7}),
        json.dumps({**sample_rows[4], "start_index": "4"}),
        json.dumps({**sample_rows[5], "start_index": 4.0, "id": 12}),
    ]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    raw = m.read_manifest_rows(src)
    assert len(raw) == 6
    assert raw[1] == {"parse_error": m.NOT_JSON.format(line=3)}
    assert raw[2] == {"parse_error": m.NOT_OBJECT}

    report = m.convert_manifest(src, tmp_path / "bad.parquet")
    assert (report.rows, report.parse_errors) == (6, 4)
    loaded = m.load_manifest(tmp_path / "bad.parquet")
    assert [s.get("parse_error") for s in loaded] == [
        None,
        m.NOT_JSON.format(line=3),
        m.NOT_OBJECT,
        m.SPEAKER_TYPE,
        m.START_INDEX_TYPE,
        None,
    ]
    assert loaded[1]["id"].startswith("row-") and loaded[1]["id"] != loaded[2]["id"]
    assert loaded[5]["start_index"] == 4 and loaded[5]["id"] == "12"


def test_whole_file_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(m.ManifestError, match="not found"):
        m.read_manifest_rows(tmp_path / "absent.json")
    truncated = tmp_path / "t.json"
    truncated.write_text('[{"messages": []}')
    with pytest.raises(m.ManifestError, match="cannot be parsed"):
        m.read_manifest_rows(truncated)


def test_schema_is_documented() -> None:
    for name in m.CANONICAL_SCHEMA.names:
        assert name in m.__doc__


def test_prepare_data_convert_command(sample_rows: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "ray_jobs" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = tmp_path / "m.json"
    src.write_text(json.dumps(sample_rows))
    out = tmp_path / "c.parquet"
    assert module.main(["convert", "--input", str(src), "--output", str(out)]) == 0
    assert f"{len(sample_rows)} rows, 0 unreadable" in capsys.readouterr().out
    assert len(m.load_manifest(out)) == len(sample_rows)
    assert module.main(["convert", "--input", str(tmp_path / "nope.json"), "--output", str(out)]) == 2
