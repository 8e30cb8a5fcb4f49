"""Preflight's finer points, in-process (the commands themselves are timed in tests/reliability/test_refused_in_seconds.py).

What is refused is a mistake in every row; a mistake in one row stays that row's problem (quarantined with its reason).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from higgs_train.data.preflight import DataSetupError, check_manifest_keys, check_manifest_syntax, preflight


def row(row_id: str, key: str = "audio_url") -> dict:
    return {
        "id": row_id,
        "messages": [
            {"role": "user", "content": "Reference text."},
            {"role": "assistant", "content": {"type": "audio", key: "a.wav"}},
            {"role": "user", "content": "Target."},
            {"role": "assistant", "content": {"type": "audio", key: "b.wav"}},
        ],
    }


def test_jsonl_whose_lines_all_fail_names_the_first_line_and_column(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + "".join(json.dumps(row(f"r{i}"))[:-1] + ",}\n" for i in range(3)))
    with pytest.raises(
        DataSetupError, match=r"none of the first 3 lines is a JSON object; line 2 column \d+: .*trailing comma"
    ):
        check_manifest_syntax("--train_data", path)


def test_one_readable_jsonl_line_is_enough_the_rest_are_row_problems(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("not json\n" + json.dumps(row("ok")) + "\n")
    check_manifest_syntax("--train_data", path)


def test_a_misspelt_key_in_one_row_is_left_to_the_quarantine_in_every_row_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row("ok")) + "\n" + json.dumps(row("bad", "audio_path")) + "\n")
    check_manifest_keys("--train_data", path)
    path.write_text("".join(json.dumps(row(f"r{i}", "audio_file")) + "\n" for i in range(2)))
    with pytest.raises(DataSetupError, match=r"row 0 \(id 'r0'\) messages\[1\]\.content has the key 'audio_file'"):
        check_manifest_keys("--train_data", path)


def test_a_misnamed_message_key_is_named(tmp_path):
    path = tmp_path / "m.json"
    rows = [{"id": "x", "messages": [{"role": "user", "text": "hi"}, {"role": "assistant", "content": "x"}]}]
    path.write_text(json.dumps(rows))
    with pytest.raises(DataSetupError, match=r"messages\[0\] has the key 'text' where 'content' is meant"):
        check_manifest_keys("--train_data", path)


def test_a_file_uri_cache_dir_passes_preflight_an_s3_one_does_not(tmp_path):
    config = SimpleNamespace(
        train_data="", val_data="", audio_base_path="", resume_from="", cache_dir=f"file://{tmp_path}"
    )
    preflight(config)
    with pytest.raises(DataSetupError, match="--stream_cache_uri s3://b/c"):
        preflight(SimpleNamespace(**{**vars(config), "cache_dir": "s3://b/c"}))
