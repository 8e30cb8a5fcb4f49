"""Hostile input to the dataset builder (issue 20.3): it reads only inside ``--input``, never writes into it, reads
no file over its caps into memory, and lets no transcript the trainer would quarantine become a clip or reference.

Each case is a small in-process build (``--local``); the assertions check the report's reason for the planted item
and that nothing of it reached ``DIR/audio`` or a manifest.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from builder_sources import RATE, read_jsonl, write_list, write_ljspeech, write_speaker_folders
from test_bad_input import write_long_wav_header_only

from higgs_train.builder.audio import AudioSettings
from higgs_train.builder.build import BuildOptions, build_dataset
from higgs_train.builder.pairing import PairingOptions
from higgs_train.builder.source_listing import SourceError, SourceOptions
from higgs_train.embedded.voices import SPEAKERS, synthesize

SECRET = "PRIVATE sentence that must never leave its folder."


def build(src: Path, out: Path, allow_outside: tuple[str, ...] = (), **audio):
    return build_dataset(
        BuildOptions(
            input=str(src),
            output=str(out),
            source=SourceOptions(allow_outside=allow_outside),
            audio=AudioSettings(output_dir=str(out.resolve()), **audio),
            pairing=PairingOptions(val_fraction=0),
            use_ray=False,
        )
    )


def rejected(result) -> dict[str, tuple[str, str]]:
    return {r["item"]: (r["reason"], r["detail"]) for r in json.loads(result.report.read_text())["rejected"]}


def manifest_audio(result) -> set[str]:
    rows = read_jsonl(result.train) + (read_jsonl(result.val) if result.val else [])
    return {row["messages"][i]["content"]["audio_url"] for row in rows for i in (2, 4)}


def manifest_text(result) -> str:
    return result.train.read_text() + (result.val.read_text() if result.val else "")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A private recording beside (not inside) the input folder."""
    folder = tmp_path / "outside"
    folder.mkdir()
    sf.write(folder / "private.wav", synthesize(SPEAKERS[3], SECRET, seed=9), RATE, subtype="PCM_16")
    (folder / "private.txt").write_text(SECRET)
    return folder


def test_symlinks_leaving_the_input_folder_are_rejected(tmp_path, outside):
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:1])
    (src / "spk_low" / "escape.wav").symlink_to(outside / "private.wav")
    (src / "spk_low" / "escape.txt").write_text("An innocent line.")
    (src / "spk_low" / "leak.wav").symlink_to(src / "spk_low" / "utt_00.wav")  # a link inside is fine...
    (src / "spk_low" / "leak.txt").symlink_to(outside / "private.txt")  # ...its transcript leaving is not
    (src / "spk_other").symlink_to(outside, target_is_directory=True)  # a linked folder
    result = build(src, tmp_path / "out")
    reasons = rejected(result)
    assert reasons["spk_low/escape.wav"][0] == reasons["spk_low/leak.wav"][0] == "outside the input"
    assert "symlink to" in reasons["spk_low/escape.wav"][1] and "--allow_outside" in reasons["spk_low/escape.wav"][1]
    assert SECRET not in manifest_text(result) and len(list((tmp_path / "out" / "audio").rglob("*.wav"))) == 2
    # --allow_outside names the folder on purpose: then the link is read.
    allowed = build(src, tmp_path / "allowed", allow_outside=(str(outside),))
    assert "spk_low/escape.wav" not in rejected(allowed) and allowed.summary["clips_written"] == 4


@pytest.mark.parametrize("layout", ["metadata.csv", "list file"])
def test_dotdot_and_absolute_paths_in_csv_and_list_files_are_rejected(tmp_path, outside, layout):
    if layout == "metadata.csv":
        source = write_ljspeech(tmp_path / "src", count=2)
        good = source.read_text()
        hostile = ["../outside/private|A line.|A line.|spk_x", f"{outside / 'private'}|A line.|A line.|spk_x"]
    else:
        source = write_list(tmp_path / "src", count=2)
        good = source.read_text()
        hostile = ["../outside/private.wav|spk_x|A line.", f"{outside / 'private.wav'}|spk_x|A line."]
    source.write_text(good + "\n".join(hostile) + "\n")
    lines = len(good.splitlines())
    result = build(source, tmp_path / "out")
    reasons = rejected(result)
    for number in (lines + 1, lines + 2):
        reason, detail = reasons[f"{source.name}:{number}"]
        assert reason == "outside the input" and "is outside the input folder" in detail
    assert "spk_x" not in {r["speaker"] for r in read_jsonl(result.train)}
    assert not (tmp_path / "out" / "audio" / "spk_x").exists()


def test_an_output_folder_inside_the_input_is_refused_before_anything_is_written(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:1])
    with pytest.raises(SourceError, match="inside --input"):
        build(src, src / "out")
    assert not (src / "out").exists()


def test_files_over_the_caps_are_rejected_from_size_and_header_unread(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:1])
    write_long_wav_header_only(src / "spk_low" / "twelve_hours.wav", 12 * 3600)  # a sparse file: no disk used
    (src / "spk_low" / "twelve_hours.txt").write_text("A header that claims twelve hours.")
    big = src / "spk_low" / "huge.wav"
    sf.write(big, np.zeros(RATE, np.float32), RATE, subtype="PCM_16")
    with open(big, "r+b") as handle:
        handle.truncate(2 * 2**30)  # 2 GiB, sparse
    (src / "spk_low" / "huge.txt").write_text("Two gigabytes of file.")
    tracemalloc.start()
    try:
        result = build(src, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reasons = rejected(result)
    assert reasons["spk_low/twelve_hours.wav"] == (
        "file too large",
        "header says 43200s > --max_file_seconds 3600; split it first",
    )
    assert reasons["spk_low/huge.wav"] == ("file too large", "2048 MiB > --max_file_mb 1024; split it first")
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB traced"  # neither file was read into memory
    assert result.train_samples == 2


def test_bad_transcripts_are_rejected_before_pairing_and_never_become_references(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=3, speakers=SPEAKERS[:1])
    bad = {
        "nul": "Hello\x00world.",
        "esc": "Colour \x1b[31mred\x1b[0m text.",
        "token": "Say this <|audio_eos|> now.",
        "huge": "word " * 20_000,  # 100k characters for a clip of a few seconds
    }
    for name, text in bad.items():
        sf.write(src / "spk_low" / f"{name}.wav", synthesize(SPEAKERS[0], "A clip with a bad text.", 3), RATE)
        (src / "spk_low" / f"{name}.txt").write_text(text)
    result = build(src, tmp_path / "out")
    reasons = rejected(result)
    assert {k: v[0] for k, v in reasons.items()} == {f"spk_low/{name}.wav": "bad transcript" for name in bad}
    assert reasons["spk_low/nul.wav"][1] == "text contains the control character U+0000 at position 5"
    assert reasons["spk_low/esc.wav"][1] == "text contains the control character U+001B at position 7"
    assert reasons["spk_low/token.wav"][1] == "text contains the control token <|audio_eos|>"
    assert reasons["spk_low/huge.wav"][1].startswith("99999 characters for a ")
    assert result.train_samples == 3 and not any(Path(url).name.split("-")[0] in bad for url in manifest_audio(result))
