"""Validation names exactly the bad rows, each with its specific reason; good rows (any rate/channels) pass."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

from higgs_train.data import manifest as m
from higgs_train.data import row_checks as v
from higgs_train.data import row_report
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.quarantine import Quarantine, QuarantineRecord
from higgs_train.driver.validate import run_validate_data_only
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_text_tokenizer, resolve_paths

TARGET = 4  # index of the target audio turn in the cloning layout


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    return resolve_paths("embedded", "embedded").tokenizer_path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path: str):
    return load_text_tokenizer(tokenizer_path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return create_sample_data(tmp_path_factory.mktemp("clean"), utterances_per_speaker=3)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sample data plus one bad row of every kind (and one unusual-but-valid row), written as JSONL."""
    root = tmp_path_factory.mktemp("mixed")
    data = root / "data"
    paths = create_sample_data(data, utterances_per_speaker=3)
    outside = root / "outside"
    outside.mkdir()
    sf.write(outside / "voice.wav", _tone(2.0, 16000), 16000)
    bad = data / "bad"
    bad.mkdir()
    (bad / "garbage.wav").write_bytes(b"RIFF\x00\x01not really audio" * 64)
    nan = _tone(2.0, 16000)
    nan[100] = np.nan
    sf.write(bad / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(bad / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(bad / "short.wav", _tone(0.2, 16000), 16000)
    sf.write(bad / "long.wav", _tone(31.0, 8000), 8000)
    os.symlink(outside / "voice.wav", bad / "link.wav")
    sf.write(data / "stereo44k.wav", _tone(2.0, 44100, channels=2), 44100)

    good = json.loads(paths["train"].read_text())
    template = good[0]

    def variant(sample_id: str, target: str | None = None, **changes) -> dict:
        row = copy.deepcopy(template)
        row["id"] = sample_id
        if target is not None:
            row["messages"][TARGET]["content"] = {"type": "audio", "audio_url": target}
        row.update(changes)
        return row

    msgs = template["messages"]
    audio = v.AUDIO_PROBLEM.format
    cases: list[tuple[dict | str, str | None]] = [
        (variant("missing", "audio/missing.wav"), audio(i=4, error="audio file not found: audio/missing.wav")),
        (
            variant("dotdot", "../outside/voice.wav"),
            audio(i=4, error="audio path escapes the audio root: ../outside/voice.wav"),
        ),
        (
            variant("absolute", str(outside / "voice.wav")),
            audio(i=4, error=f"audio path escapes the audio root: {outside / 'voice.wav'}"),
        ),
        (
            variant("symlink", "bad/link.wav"),
            audio(i=4, error="audio path is a symlink that escapes the audio root: bad/link.wav"),
        ),
        (
            variant("garbage", "bad/garbage.wav"),
            audio(i=4, error="audio file cannot be decoded (LibsndfileError): bad/garbage.wav"),
        ),
        (variant("nan", "bad/nan.wav"), audio(i=4, error="audio has non-finite samples (NaN/Inf): bad/nan.wav")),
        (variant("silent", "bad/silent.wav"), audio(i=4, error="audio is silent (RMS 0.00e+00): bad/silent.wav")),
        (variant("short", "bad/short.wav"), audio(i=4, error="audio too short (0.20s < 0.5s): bad/short.wav")),
        (variant("long", "bad/long.wav"), audio(i=4, error="audio too long (31.00s > 30.0s): bad/long.wav")),
        (
            variant("role", messages=[msgs[0], {"role": "narrator", "content": "hi"}, *msgs[2:]]),
            v.BAD_ROLE.format(i=1, role="narrator"),
        ),
        (variant("start_range", start_index=5), v.START_INDEX_RANGE.format(start=5, n=5)),
        (
            variant("no_target", messages=[*msgs[:4], {"role": "assistant", "content": "just text"}]),
            v.NO_TARGET_AUDIO.format(start=4),
        ),
        (
            variant("no_reference", start_index=2, messages=[msgs[0], msgs[3], msgs[4]]),
            v.NO_REFERENCE_AUDIO.format(start=2),
        ),
        (
            variant("empty_text", messages=[*msgs[:3], {"role": "user", "content": "  "}, msgs[4]]),
            v.EMPTY_TEXT.format(i=3),
        ),
        (
            variant("special", messages=[*msgs[:3], {"role": "user", "content": "Say <|AUDIO|> now."}, msgs[4]]),
            v.SPECIAL_TOKEN_TEXT.format(i=3, token="<|AUDIO|>"),
        ),
        (
            variant(
                "audio_in_after_out", messages=[*msgs[:3], {"role": "user", "content": msgs[2]["content"]}, msgs[4]]
            ),
            v.AUDIO_IN_AFTER_OUT.format(i=3, role="user"),
        ),
        ("{this line is not json", None),  # reason depends on its line number, filled in below
        (variant("stereo_44k", "stereo44k.wav"), None),  # valid: any rate, any channel count
    ]
    # Interleave: a good row, a case, a good row, ... then the remaining good rows.
    lines: list[str] = []
    expected: dict[int, tuple[str, str | None]] = {}
    for k, (row, reason) in enumerate(cases):
        if k < len(good):
            lines.append(json.dumps(good[k]))
        if isinstance(row, str):
            lines.append(row)
            expected[len(lines) - 1] = ("", m.NOT_JSON.format(line=len(lines)))
        else:
            lines.append(json.dumps(row))
            if reason is not None:
                expected[len(lines) - 1] = (row["id"], reason)
    lines.extend(json.dumps(r) for r in good[len(cases) :])
    manifest = data / "mixed.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"manifest": manifest, "base": data, "expected": expected, "rows": len(lines), "val": paths["val"]}


def test_report_names_exactly_the_bad_rows(mixed: dict, tokenizer) -> None:
    rows = m.load_manifest(mixed["manifest"])
    quarantine = Quarantine()
    report = row_report.validate_rows(
        rows, tokenizer, mixed["base"], AudioLimits(), quarantine=quarantine, progress=False
    )

    got = {item["index"]: item["reason"] for item in report.invalid}
    assert got == {index: reason for index, (_, reason) in mixed["expected"].items()}
    for item in report.invalid:
        want_id = mixed["expected"][item["index"]][0]
        assert item["id"] == want_id if want_id else item["id"].startswith("row-")
    assert report.total == mixed["rows"]
    assert report.valid == report.total - len(mixed["expected"]) == len(report.valid_rows)
    assert "stereo_44k" in {r["id"] for r in report.valid_rows}
    for row in report.valid_rows:  # whatever passes, upstream's strict conversion accepts too
        assert prepare_chatml_sample(copy.deepcopy(row), tokenizer)[0] is not None, row["id"]
    assert [(r.row_index, r.reason) for r in quarantine] == [(i["index"], i["reason"]) for i in report.invalid]
    assert quarantine.counts() == {"validation": len(mixed["expected"])}


def test_each_file_is_decoded_once(clean: dict[str, Path], tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real_read = v.read_checked

    def counting(path: Path, *args):
        calls.append(path)
        return real_read(path, *args)

    monkeypatch.setattr(v, "read_checked", counting)
    rows = m.load_manifest(clean["train"])
    report = row_report.validate_rows(rows, tokenizer, clean["audio_base_path"], progress=False)
    assert report.valid == report.total == len(rows)
    referenced = {p["content"]["audio_url"] for r in rows for p in r["messages"] if isinstance(p["content"], dict)}
    assert len(calls) == len(set(calls)) == len(referenced)


def test_run_validate_data_only_exit_codes_and_reports(
    clean: dict[str, Path], mixed: dict, tokenizer_path: str, tmp_path: Path
) -> None:
    out_clean = tmp_path / "clean"
    status = run_validate_data_only(clean["train"], clean["val"], "", out_clean, tokenizer_path, AudioLimits())
    assert status == 0
    train_report = json.loads((out_clean / row_report.REPORT_FILE).read_text())
    assert list(train_report) == ["total", "valid", "invalid"]
    assert train_report["total"] == train_report["valid"] > 0 and train_report["invalid"] == []
    assert json.loads((out_clean / row_report.VAL_REPORT_FILE).read_text())["invalid"] == []
    assert len(Quarantine.read(out_clean / row_report.QUARANTINE_FILE)) == 0

    out_mixed = tmp_path / "mixed"
    status = run_validate_data_only(mixed["manifest"], mixed["val"], mixed["base"], out_mixed, tokenizer_path)
    assert status == 1
    report = json.loads((out_mixed / row_report.REPORT_FILE).read_text())
    assert list(report) == ["total", "valid", "invalid"]
    assert all(list(item) == ["index", "id", "reason"] for item in report["invalid"])
    assert {i["index"] for i in report["invalid"]} == set(mixed["expected"])
    assert Quarantine.read(out_mixed / row_report.QUARANTINE_FILE).counts() == {
        "validation:train": len(mixed["expected"])
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"messages": []}, v.MESSAGES_NOT_LIST),
        ({"messages": "hello"}, v.MESSAGES_NOT_LIST),
        ({"messages": [{"role": "user"}]}, v.MESSAGE_NOT_OBJECT.format(i=0)),
        (
            {"messages": [{"role": "user", "content": "x", "recipient": "bob"}]},
            v.MESSAGE_UNKNOWN_KEY.format(i=0, key="recipient"),
        ),
        ({"messages": [{"role": "user", "content": {"type": "image", "url": "x"}}]}, v.BAD_CONTENT.format(i=0)),
        ({"messages": [{"role": "user", "content": []}]}, v.BAD_CONTENT.format(i=0)),
        (
            {"messages": [{"role": "user", "content": {"type": "text", "text": "x", "audio_url": None}}]},
            v.BAD_CONTENT.format(i=0),
        ),
        (
            {"messages": [{"role": "user", "content": {"type": "audio", "audio_url": "a", "offset": 1.0}}]},
            v.BAD_CONTENT.format(i=0),
        ),
        (
            {"messages": [{"role": "user", "content": "x", "extra": None}]},
            v.MESSAGE_UNKNOWN_KEY.format(i=0, key="extra"),
        ),
        ({"speaker": 3}, m.SPEAKER_TYPE),
        ({"start_index": None}, m.START_INDEX_TYPE),
        ({"start_index": True}, m.START_INDEX_TYPE),
        ({"start_index": -1}, v.START_INDEX_RANGE.format(start=-1, n=5)),
        ({"misc": ["x"]}, v.MISC_TYPE),
        ({"parse_error": "manifest line 9 is not valid JSON"}, "manifest line 9 is not valid JSON"),
    ],
)
def test_structural_reasons(clean: dict[str, Path], change: dict, reason: str) -> None:
    row = {**json.loads(clean["train"].read_text())[0], **change}
    assert v.structural_reason(row)[0] == reason


def test_system_only_first_and_plain_tts_needs_no_reference(clean: dict[str, Path]) -> None:
    msgs = json.loads(clean["train"].read_text())[0]["messages"]
    late_system = {"speaker": None, "start_index": 4, "messages": [msgs[1], msgs[0], *msgs[2:]]}
    assert v.structural_reason(late_system)[0] == v.SYSTEM_NOT_FIRST.format(i=1)
    plain_tts = {"speaker": None, "start_index": 2, "messages": [msgs[0], msgs[3], msgs[4]]}
    assert v.structural_reason(plain_tts)[0] is None


def test_quarantine_round_trip(tmp_path: Path) -> None:
    q = Quarantine()
    q.add("a", 3, "validation", "audio too short")
    q.extend(
        [{"id": "b", "row_index": 7, "stage": "tokenize", "reason": "boom"}, QuarantineRecord("c", 1, "tokenize", "x")]
    )
    assert len(q) == 3 and q.counts() == {"validation": 1, "tokenize": 2}
    q.extend([SimpleNamespace(id="d", row_index=2, stage="encode", reason="y")])  # e.g. preprocess.RowFailure
    assert q.records[-1] == QuarantineRecord("d", 2, "encode", "y")
    back = Quarantine.read(q.write(tmp_path / "q" / "quarantine.parquet"))
    assert back.records == q.records
