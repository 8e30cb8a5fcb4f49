"""Planted bad input: each defect costs exactly its own row, with the same reason in validation and preprocessing.

One JSONL manifest carries sample rows plus one row per defect kind (a raw invalid UTF-8 byte, a lone surrogate,
``misc`` as a list, a control character, a row longer than the model's positions, absurd amplitude, a truncated
WAV, a one-hour WAV, a directory and a FIFO where a file is expected, a missing file, a line that is not JSON). It
goes through ``--validate_data_only``'s ``validate_rows`` and through the job's ``SamplePreprocessor``; both must
reject exactly the planted rows, word every reason identically, and keep every good row.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from higgs_train.data import manifest as m
from higgs_train.data import row_checks as v
from higgs_train.data import row_report, sample_tokens
from higgs_train.data.audio_io import AudioLimits, read_checked
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.reasons import Reason
from higgs_train.data.row_length import resolve_row_length_limit
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_audio_tokenizer, load_text_tokenizer, resolve_paths

ROOT = Path(__file__).resolve().parents[2]
TARGET = 4  # message index of the target audio in the sample layout
SR = 16000


def _tone(seconds: float, sr: int = SR, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_long_wav_header_only(path: Path, seconds: float, sr: int = 8000) -> None:
    """A PCM16 WAV declaring ``seconds`` of audio; the data is a sparse hole, so it costs no disk and reads as silence."""
    data_bytes = int(seconds * sr) * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + data_bytes)


@pytest.fixture(scope="module")
def stack():
    paths = resolve_paths("embedded", "embedded")
    return paths, load_text_tokenizer(paths.tokenizer_path), load_audio_tokenizer(paths.audio_tokenizer_path, "cpu")


@pytest.fixture(scope="module")
def preprocessor(stack, planted) -> SamplePreprocessor:
    """One per module, so its in-process memo encodes each good clip once across the tests."""
    paths, tokenizer, audio_tokenizer = stack
    limit = resolve_row_length_limit(paths.model_path, paths.audio_tokenizer_path, 0)
    return SamplePreprocessor(tokenizer, audio_tokenizer, planted["base"], max_tokens_per_row=limit.max_tokens)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = tmp_path_factory.mktemp("planted") / "data"
    paths = create_sample_data(data, utterances_per_speaker=2)
    good = json.loads(paths["train"].read_text())[:2]  # few distinct clips: encoding is the slow part
    bad = data / "bad"
    bad.mkdir()
    sf.write(bad / "loud.wav", _tone(2.0, amplitude=1e30), SR, subtype="FLOAT")
    sf.write(bad / "full.wav", _tone(2.0), SR, subtype="PCM_16")
    whole = (bad / "full.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    write_long_wav_header_only(bad / "hour.wav", 3600.0)
    (bad / "dir.wav").mkdir()
    os.mkfifo(bad / "fifo.wav")

    def variant(sample_id: str, target: str | None = None, text: str | None = None, **changes) -> dict:
        row = copy.deepcopy(good[0])
        row["id"] = sample_id
        if target is not None:
            row["messages"][TARGET]["content"] = {"type": "audio", "audio_url": target}
        if text is not None:
            row["messages"][3]["content"] = text
        row.update(changes)
        return row

    audio = Reason.AUDIO_PROBLEM.format
    cases: list[tuple[bytes, str | None, str | None]] = []  # (JSONL line, id, expected reason)

    def add(row: dict, reason: str) -> None:
        cases.append((json.dumps(row).encode(), row["id"], reason))

    # 1. a raw invalid UTF-8 byte inside one line's text (not JSON-escaped: the bytes on disk are invalid)
    line = json.dumps(variant("invalid_utf8", text="Say PLACEHOLDER")).encode().replace(b"PLACEHOLDER", b"caf\xe9")
    cases.append((line, "invalid_utf8", Reason.INVALID_UNICODE))
    # 2. a lone surrogate, JSON-escaped (valid JSON, not encodable as UTF-8)
    add(variant("lone_surrogate", text="Say \ud800 now"), Reason.INVALID_UNICODE)
    add(variant("misc_list", misc=["not", "an", "object"]), Reason.MISC_TYPE)
    add(
        variant("control_char", text="Ring the bell \x07 now"),
        v.CONTROL_CHARACTER_TEXT.format(i=3, char="U+0007", pos=14),
    )
    add(variant("too_long", text="hello world " * 2500), "")  # reason depends on the count, checked below
    add(
        variant("loud", "bad/loud.wav"),
        audio(i=TARGET, error="audio amplitude is absurd (peak 1e+30 > 16; full scale is 1.0): bad/loud.wav"),
    )
    add(
        variant("truncated", "bad/truncated.wav"),
        audio(
            i=TARGET,
            error="audio file is truncated (header declares 32000 frames, data holds 15989): bad/truncated.wav",
        ),
    )
    add(variant("hour", "bad/hour.wav"), audio(i=TARGET, error="audio too long (3600.00s > 30.0s): bad/hour.wav"))
    add(variant("directory", "bad/dir.wav"), audio(i=TARGET, error="audio path is not a file: bad/dir.wav"))
    add(variant("fifo", "bad/fifo.wav"), audio(i=TARGET, error="audio path is not a file: bad/fifo.wav"))
    add(variant("missing", "bad/nowhere.wav"), audio(i=TARGET, error="audio file not found: bad/nowhere.wav"))
    cases.append((b'{"id": "broken", "messages": [', None, None))  # not JSON: its reason names its line

    lines: list[bytes] = []
    expected: dict[int, tuple[str | None, str | None]] = {}
    for k, (raw, sample_id, reason) in enumerate(cases):
        lines.append(json.dumps(good[k % len(good)] | {"id": f"good_{k}"}).encode())
        lines.append(raw)
        expected[len(lines) - 1] = (
            sample_id,
            reason or (Reason.NOT_JSON.format(line=len(lines)) if sample_id is None else ""),
        )
    manifest = data / "planted.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return {
        "manifest": manifest,
        "base": data,
        "train": paths["train"],
        "expected": expected,
        "rows": len(lines),
        "kinds": len(cases),
    }


def _by_index(items: list[tuple[int, str]]) -> dict[int, str]:
    return dict(items)


def test_validator_and_preprocessing_reject_exactly_the_planted_rows_with_identical_reasons(
    planted, stack, preprocessor
) -> None:
    paths, tokenizer, _ = stack
    limit = resolve_row_length_limit(paths.model_path, paths.audio_tokenizer_path, 0)
    assert limit.max_tokens == 4096  # the default: the model's max_position_embeddings

    rows = m.load_manifest(planted["manifest"])  # one bad byte costs one row, not the manifest
    assert len(rows) == planted["rows"]
    report = row_report.validate_rows(
        rows, tokenizer, planted["base"], AudioLimits(), progress=False, length_limit=limit
    )
    validator = _by_index([(item["index"], item["reason"]) for item in report.invalid])

    pre = preprocessor
    canonical = m.to_canonical_table(m.read_manifest_rows(planted["manifest"]), "planted").to_pylist()
    result = pre.process_batch(canonical)
    job = _by_index([(f.row_index, f.reason) for f in result.failures])

    assert set(validator) == set(planted["expected"]) == set(job)
    assert validator == job  # one source of reasons: every reason worded identically
    for index, (sample_id, reason) in planted["expected"].items():
        if reason:
            assert validator[index] == reason, sample_id
    too_long = next(i for i, (sid, _) in planted["expected"].items() if sid == "too_long")
    assert validator[too_long].startswith("row is ") and validator[too_long].endswith("but max_tokens_per_row is 4096")
    assert int(validator[too_long].split()[2]) > 4096
    # every good row survives both
    assert report.valid == len(result.records) == planted["rows"] - planted["kinds"]
    assert {r["id"] for r in result.records} == {r["id"] for r in report.valid_rows}
    stages = {f.row_index: f.stage for f in result.failures}
    assert stages[too_long] == "length"


def test_length_estimate_matches_the_exact_merged_length(planted, stack, preprocessor) -> None:
    """The validator's estimate (header durations) is what preprocessing measures, to within a frame per clip."""
    paths, tokenizer, _ = stack
    limit = resolve_row_length_limit(paths.model_path, paths.audio_tokenizer_path, 0)
    rows = [r for r in m.load_manifest(planted["manifest"]) if str(r.get("id", "")).startswith("good_")][:4]
    checker = v.AudioChecker(planted["base"], AudioLimits())
    pre = preprocessor
    for row in rows:
        _, turns = v.structural_reason(row)
        assert v.audio_reason(turns, checker) is None
        tokens, error = sample_tokens.chatml_token_count(row, tokenizer)
        assert error is None
        clips = [
            (role == "assistant", checker.seconds(url))
            for role, parts in turns
            for kind, url in parts
            if kind == "audio"
        ]
        estimate = limit.estimate(tokens, [s for _, s in clips], [out for out, _ in clips])
        exact = pre(row)["num_tokens"]
        assert 0 <= estimate - exact <= len(clips)


def test_a_one_hour_wav_is_refused_from_its_header_without_decoding(planted) -> None:
    path = planted["base"] / "bad" / "hour.wav"
    decoded_bytes = 3600 * 8000 * 4  # float32 samples of the whole file: 115 MB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"audio too long \(3600.00s > 30.0s\)"):
            read_checked(path, AudioLimits(), "bad/hour.wav")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < decoded_bytes / 100, peak


def test_canonical_parquet_with_non_string_messages_json_quarantines_rows_instead_of_raising(tmp_path: Path) -> None:
    table = pa.table(
        {
            "row_index": pa.array([0, 1], pa.int64()),
            "id": ["a", "b"],
            "speaker": pa.array([None, None], pa.string()),
            "start_index": pa.array([4, 4], pa.int64()),
            "messages_json": pa.array([17, None], pa.int64()),
            "misc_json": pa.array([None, None], pa.string()),
            "source": ["x", "x"],
            "parse_error": pa.array([None, None], pa.string()),
        }
    )
    path = tmp_path / "canonical.parquet"
    pq.write_table(table, path)
    rows = m.load_manifest(path)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["parse_error"] == Reason.MESSAGES_JSON_TYPE.format(type="int")
    report = m.convert_manifest(path, tmp_path / "out.parquet")  # the job's first step does not raise either
    assert report.parse_errors == 1  # row b's null messages is a validation matter (messages must be a list)


def test_a_byte_that_breaks_the_json_syntax_costs_its_line_only(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", "messages": []}\n{"id": \xff"b"}\n{"id": "c", "messages": []}\n')
    rows = m.load_manifest(path)
    assert [r.get("parse_error") for r in rows] == [None, Reason.NOT_JSON.format(line=2), None]
    assert rows[2]["id"] == "c"


UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from higgs_train.data import manifest as m, row_report
    from higgs_train.data.audio_io import AudioLimits
    from higgs_train.data.preprocess import SamplePreprocessor
    from higgs_train.data.cache_key import FingerprintMemo, audio_fingerprints
    from higgs_train.model_loading import load_audio_tokenizer, load_text_tokenizer, resolve_paths

    manifest, base, memo = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    paths = resolve_paths("embedded", "embedded")
    tokenizer = load_text_tokenizer(paths.tokenizer_path)
    rows = m.load_manifest(manifest)
    report = row_report.validate_rows(rows, tokenizer, base, AudioLimits(), progress=False)
    pre = SamplePreprocessor(tokenizer, load_audio_tokenizer(paths.audio_tokenizer_path, "cpu"), base)
    result = pre.process_batch(m.to_canonical_table(m.read_manifest_rows(manifest), "x").to_pylist())
    fingerprints = audio_fingerprints(["bad/locked.wav"], base, FingerprintMemo(memo))
    print(json.dumps({
        "validator": {i["id"]: i["reason"] for i in report.invalid},
        "job": {f.id: f.reason for f in result.failures},
        "unavailable": {f.id: dict(f.unavailable) for f in result.failures},
        "trained": [r["id"] for r in result.records],
        "fingerprint": fingerprints["bad/locked.wav"],
    }))
    """
)


def test_an_unreadable_audio_file_quarantines_its_row(planted, tmp_path: Path) -> None:
    """Permission denied for real: root bypasses file modes, so the check runs in a child without CAP_DAC_*."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
    else:
        prefix = []
    base = planted["base"]
    locked = base / "bad" / "locked.wav"
    sf.write(locked, _tone(2.0), SR)
    locked.chmod(0)
    rows = json.loads(planted["train"].read_text())[:2]
    rows[1] = copy.deepcopy(rows[1]) | {"id": "locked"}
    rows[1]["messages"][TARGET]["content"] = {"type": "audio", "audio_url": "bad/locked.wav"}
    manifest = tmp_path / "locked.json"
    manifest.write_text(json.dumps(rows))
    try:
        out = subprocess.run(
            [*prefix, sys.executable, "-c", UNREADABLE_SCRIPT, str(manifest), str(base), str(tmp_path / "memo.json")],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
    finally:
        locked.chmod(0o644)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    reason = "messages[4]: audio file cannot be read (Permission denied): bad/locked.wav"
    assert got["validator"] == got["job"] == {"locked": reason}
    assert got["trained"] == [rows[0]["id"]]
    # Keyed as file-system state, so the cache never keeps this failure once the file is readable again.
    state = "audio file cannot be read (Permission denied): bad/locked.wav"
    assert got["unavailable"] == {"locked": {"bad/locked.wav": state}}
    assert got["fingerprint"] == f"missing: {state}"


def test_a_nul_byte_in_one_line_costs_that_line_only(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", "messages": []}\n{"id": "b\x00", "messages": []}\n{"id": "c", "messages": []}\n')
    rows = m.load_manifest(path)
    assert [r.get("parse_error") for r in rows] == [None, Reason.NOT_JSON.format(line=2), None]
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes('{"id": "a"}\n'.encode("utf-16"))
    with pytest.raises(m.ManifestError, match="neither Parquet nor UTF-8"):
        m.read_manifest_rows(utf16)
