"""The dataset builder (``prepare_data.py build``) on every source kind, in-process (no Ray; the Ray run and a
training job on a built result are in tests/integration/test_data_builder_job.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from builder_sources import (
    LIBRI_IDS,
    RATE,
    VAD_SPEAKERS,
    cv_client,
    read_jsonl,
    write_common_voice,
    write_hf_dataset,
    write_libritts,
    write_list,
    write_ljspeech,
    write_long_recording,
    write_speaker_folders,
    write_vctk,
)

from higgs_train.builder.audio import AudioSettings, Clip
from higgs_train.builder.build import BuildOptions, BuildResult, build_dataset
from higgs_train.builder.pairing import PairingOptions, choose_references, pair_clips
from higgs_train.builder.report import report_figure
from higgs_train.builder.source_listing import SourceOptions
from higgs_train.builder.sources import SOURCE_KINDS, detect_source_kind
from higgs_train.chatml import DEFAULT_SYSTEM_PROMPT
from higgs_train.driver.validate import run_validate_data_only
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.embedded.voices import SPEAKERS, synthesize

SPEAKER_NAMES = {s.name for s in SPEAKERS}


def build(src: Path, out: Path, **kwargs) -> BuildResult:
    audio = kwargs.pop("audio", {})
    return build_dataset(
        BuildOptions(
            input=str(src),
            output=str(out),
            audio=AudioSettings(output_dir=str(out.resolve()), **audio),
            use_ray=False,
            pairing=kwargs.pop("pairing", PairingOptions(val_fraction=0.25)),
            **kwargs,
        )
    )


def assert_valid_for_training(result: BuildResult, tmp_path: Path) -> None:
    """What ``train.py --validate_data_only`` runs on the two manifests (default audio root: their folder)."""
    assert run_validate_data_only(result.train, result.val, None, tmp_path / "validation", "embedded") == 0
    report = json.loads((tmp_path / "validation" / "validation_report.json").read_text())
    assert report["valid"] == report["total"] == result.train_samples > 0


def assert_cloning_pairs(rows: list[dict]) -> None:
    for row in rows:
        messages = row["messages"]
        ref, target = messages[2]["content"]["audio_url"], messages[4]["content"]["audio_url"]
        assert ref != target
        assert ref.split("/")[1] == target.split("/")[1] == row["speaker"]  # audio/<speaker>/...
        assert row["start_index"] == 4 and messages[0]["content"] == DEFAULT_SYSTEM_PROMPT


def test_speaker_folders_with_txt_and_lab(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=4, speakers=SPEAKERS[:2])
    write_speaker_folders(tmp_path / "src", count=4, speakers=SPEAKERS[2:], transcript_ext=".lab")
    assert detect_source_kind(src) == "folders"
    result = build(src, tmp_path / "out")

    train, val = read_jsonl(result.train), read_jsonl(result.val)
    assert {r["speaker"] for r in train} == SPEAKER_NAMES
    assert len(train) + len(val) == 16 and len(val) == 4  # round(4 * 0.25) per speaker
    assert_cloning_pairs(train + val)
    clip = tmp_path / "out" / train[0]["messages"][4]["content"]["audio_url"]
    info = sf.info(str(clip))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    # The transcript travels with its own audio file.
    source_text = (src / "spk_low" / "utt_00.txt").read_text().strip()
    assert any(r["messages"][3]["content"] == source_text and "utt_00" in r["id"] for r in train + val)
    assert_valid_for_training(result, tmp_path)
    report = json.loads(result.report.read_text())
    assert report["rejected"] == [] and report["clips_in_manifests"] == 16
    assert result.plot.stat().st_size > 0


def test_ljspeech_metadata_with_and_without_speaker_column(tmp_path):
    csv = write_ljspeech(tmp_path / "lj", count=3)
    assert detect_source_kind(csv) == detect_source_kind(csv.parent) == "ljspeech"
    result = build(csv.parent, tmp_path / "out")
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert {r["speaker"] for r in rows} == SPEAKER_NAMES and len(rows) == 12
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)

    single = write_ljspeech(tmp_path / "lj1", count=3, with_speaker=False)
    result = build(single, tmp_path / "out1", source=SourceOptions(speaker="narrator"))
    assert {r["speaker"] for r in read_jsonl(result.train)} == {"narrator"}


def test_audio_text_lists(tmp_path):
    with_speaker = write_list(tmp_path / "a", count=3)
    assert detect_source_kind(with_speaker) == "list"
    result = build(with_speaker, tmp_path / "out")
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert {r["speaker"] for r in rows} == SPEAKER_NAMES
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)

    plain = write_list(tmp_path / "b", count=4, with_speaker=False)
    result = build(plain, tmp_path / "out_b", source=SourceOptions(speaker="me"))
    assert {r["speaker"] for r in read_jsonl(result.train)} == {"me"}


def test_hf_dataset_on_disk_and_its_parquet(tmp_path):
    disk, parquet_dir = write_hf_dataset(tmp_path, count=3)
    columns = SourceOptions(audio_column="audio", text_column="sentence", speaker_column="client_id")
    assert detect_source_kind(disk) == "hf_disk" and detect_source_kind(parquet_dir) == "parquet"
    built = {}
    for name, src in (("disk", disk), ("parquet", parquet_dir)):
        result = build(src, tmp_path / name, source=columns)
        rows = read_jsonl(result.train) + read_jsonl(result.val)
        assert {r["speaker"] for r in rows} == SPEAKER_NAMES and len(rows) == 12
        assert_cloning_pairs(rows)
        built[name] = sorted((r["speaker"], r["messages"][3]["content"]) for r in rows)
    assert built["disk"] == built["parquet"]
    assert_valid_for_training(result, tmp_path)


def test_hf_dataset_missing_column_is_a_clear_error(tmp_path):
    disk, _ = write_hf_dataset(tmp_path, count=1)
    with pytest.raises(ValueError, match="no column 'text'"):
        build(disk, tmp_path / "out")


def test_existing_manifest_is_repaired(tmp_path):
    paths = create_sample_data(tmp_path / "sample", utterances_per_speaker=4)
    assert detect_source_kind(paths["train"]) == "manifest"
    result = build(paths["train"], tmp_path / "out", pairing=PairingOptions(val_speakers=("spk_child",), seed=3))
    train, val = read_jsonl(result.train), read_jsonl(result.val)
    assert {r["speaker"] for r in val} == {"spk_child"} and "spk_child" not in {r["speaker"] for r in train}
    assert_cloning_pairs(train + val)
    # Every clip of the sample manifest keeps its own transcript.
    original = json.loads(paths["train"].read_text())
    by_text = {m["messages"][3]["content"] for m in original} | {m["messages"][1]["content"] for m in original}
    assert {r["messages"][3]["content"] for r in train + val} <= by_text
    assert_valid_for_training(result, tmp_path)


def test_libritts_layout_prefers_normalized_text_and_takes_the_speaker_two_folders_up(tmp_path):
    corpus = tmp_path / "LibriTTS_R" / "train-clean-100"
    write_libritts(corpus, count=3)
    for src in (corpus.parent, corpus, corpus / "19", corpus / "19" / "198"):  # corpus, subset, speaker, chapter
        assert detect_source_kind(src) == "libritts"
    chapter = build(corpus / "84" / "198", tmp_path / "chapter", pairing=PairingOptions(val_fraction=0))
    assert {r["speaker"] for r in read_jsonl(chapter.train)} == {LIBRI_IDS["spk_mid"]}
    result = build(corpus.parent, tmp_path / "out")
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert {r["speaker"] for r in rows} == {LIBRI_IDS["spk_low"], LIBRI_IDS["spk_mid"]} and len(rows) == 6
    texts = {r["messages"][3]["content"] for r in rows} | {r["messages"][1]["content"] for r in rows}
    assert not any(t.startswith("ORIGINAL") for t in texts)  # .normalized.txt wins over .original.txt
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)
    # Without .normalized.txt the .original.txt is used.
    for normalized in corpus.rglob("*.normalized.txt"):
        normalized.unlink()
    texts = {r["messages"][3]["content"] for r in read_jsonl(build(corpus, tmp_path / "orig").train)}
    assert texts and all(t.startswith("ORIGINAL") for t in texts)


def test_vctk_layout_keeps_one_microphone_and_lists_untranscribed_clips(tmp_path):
    src = write_vctk(tmp_path / "VCTK-Corpus-0.92", count=4)
    assert detect_source_kind(src) == "vctk"
    result = build(src, tmp_path / "out")
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert {r["speaker"] for r in rows} == {"p225", "p226"} and len(rows) == 6  # 3 transcribed clips each
    audio = {r["messages"][i]["content"]["audio_url"] for r in rows for i in (2, 4)}
    assert not any("mic2" in a for a in audio)
    by_reason = result.summary["rejected_by_reason"]
    assert by_reason == {"no transcript": 2, "other microphone": 8}
    template = (tmp_path / "out" / "to_transcribe.tsv").read_text().splitlines()
    assert template[0] == "path\ttext" and len(template) == 3
    assert all(line.endswith("\t") for line in template[1:])
    assert [Path(line.split("\t")[0]).name.split("-")[0] for line in template[1:]] == ["p225_003_mic1", "p226_007_mic1"]
    assert result.unlabelled == 2 and result.to_transcribe == tmp_path / "out" / "to_transcribe.tsv"
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)


def test_common_voice_tsv_with_mp3_clips(tmp_path):
    src = write_common_voice(tmp_path / "cv" / "en", count=3)
    assert detect_source_kind(src) == detect_source_kind(src / "train.tsv") == "tsv"
    result = build(src, tmp_path / "out")  # the folder: validated.tsv (train.tsv is a subset of it)
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert {r["speaker"] for r in rows} == {cv_client(s.name) for s in SPEAKERS[:2]} and len(rows) == 6
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)
    subset = build(src / "train.tsv", tmp_path / "subset")
    assert subset.summary["input_items"] == 2


def test_unlabelled_recording_is_cut_listed_in_to_transcribe_and_read_back_on_rebuild(tmp_path, capsys):
    src, texts = write_long_recording(tmp_path / "long", sentences=8)
    for speaker in VAD_SPEAKERS:
        (src / speaker.name / "session.txt").unlink()  # a long recording with no transcript at all
    out = tmp_path / "out"
    options = {"audio": {"max_seconds": 10.0}}
    first = build(src, out, **options)  # no --segment: an untranscribed recording is cut anyway
    assert first.train is None and first.val is None and not (out / "train.jsonl").exists()
    template = out / "to_transcribe.tsv"
    lines = template.read_text().splitlines()
    assert lines[0] == "path\ttext" and len(lines) - 1 == first.unlabelled == first.summary["clips_written"] >= 8
    assert first.problem and "to_transcribe.tsv" in first.problem
    # The user fills every line (here: any sentence of the right length), then reruns the same build.
    filled = [lines[0]] + [f"{line.split(chr(9))[0]}\t{texts[i % len(texts)]}" for i, line in enumerate(lines[1:])]
    template.write_text("\n".join(filled) + "\n")
    second = build(src, out, **options)
    rows = read_jsonl(second.train) + read_jsonl(second.val)
    assert second.problem is None and second.unlabelled == 0 and len(rows) == second.summary["clips_written"]
    assert {r["messages"][3]["content"] for r in rows} <= set(texts)
    assert second.summary["rejected"] == [] and second.summary["files_reused_from_cache"] == 2
    assert template.read_text() == "\n".join(filled) + "\n"  # the filled texts are kept for the next rebuild
    assert_cloning_pairs(rows)


def test_a_build_without_samples_writes_no_manifest_and_says_why(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:2])
    out = tmp_path / "out"
    assert build(src, out).train is not None
    for transcript in src.rglob("*.txt"):
        transcript.write_text("\x00")  # every transcript now fails the trainer's text check
    result = build(src, out)
    assert result.train is result.val is None
    assert not (out / "train.jsonl").exists() and not (out / "val.jsonl").exists()  # the earlier ones removed
    assert result.problem == ("no training sample: every file was rejected (bad transcript: 4); see data_report.json")
    report = json.loads(result.report.read_text())
    assert report["no_sample_reason"] == result.problem and report["clips_written"] == 0
    assert result.plot.stat().st_size > 0
    figure = report_figure(report)  # what the PNG shows: the reason, and no empty axes with negative ticks
    assert figure.get_suptitle() == result.problem
    hist, per_speaker, rejected = figure.axes
    assert [t.get_text() for t in hist.texts + per_speaker.texts] == ["no clip written"] * 2
    assert list(hist.get_yticks()) == list(per_speaker.get_xticks()) == []
    assert min(rejected.get_xticks()) >= 0 and [t.get_text() for t in rejected.get_yticklabels()] == ["bad transcript"]


def prepare_data_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prepare_data", Path(__file__).parents[2] / "ray_jobs/prepare_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_build_errors_show_the_build_usage_in_one_line(tmp_path, capsys):
    main = prepare_data_main()
    for argv, expected in (
        (["build", "--input", "x", "--output", "y", "--bad_flag"], "unrecognized arguments: --bad_flag"),
        (["build", "--output", "y"], "the following arguments are required: --input"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith("ray_jobs/prepare_data.py build: error: " + expected)
        assert "usage: ray_jobs/prepare_data.py build --input SRC --output DIR" in err
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:1])
    for transcript in src.rglob("*.txt"):
        transcript.write_text("<|audio_eos|>")
    assert main(["build", "--input", str(src), "--output", str(tmp_path / "out"), "--local"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: no training sample: every file was rejected (bad transcript: 2); see data_report.json"
    ]


def test_count_progress_line_rate_and_eta():
    from higgs_train.console import CountProgress

    now = [100.0]
    progress = CountProgress(40, "processing audio (Ray)", every_seconds=5.0, clock=lambda: now[0])
    assert progress.update(0) == "processing audio (Ray): 0/40 files (0%) | 0.0 files/s | ETA ?"
    now[0] = 102.0
    assert progress.update(4) is None  # shown 2 s ago
    now[0] = 110.0
    assert progress.update(20) == "processing audio (Ray): 20/40 files (50%) | 2.0 files/s | ETA 10s"
    now[0] = 111.0
    assert progress.update(40) == "processing audio (Ray): 40/40 files (100%) | 3.6 files/s | done in 11s"  # the last


def test_system_prompt_override(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:1])
    result = build(src, tmp_path / "out", pairing=PairingOptions(system_prompt="Speak warmly.", val_fraction=0))
    assert {r["messages"][0]["content"] for r in read_jsonl(result.train)} == {"Speak warmly."}


def test_rerun_skips_finished_files_and_writes_the_same_manifests(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=3, speakers=SPEAKERS[:2])
    first = build(src, tmp_path / "out")
    manifests = (first.train.read_text(), first.val.read_text())
    second = build(src, tmp_path / "out")
    assert first.summary["files_reused_from_cache"] == 0
    assert second.summary["files_reused_from_cache"] == 6
    assert (second.train.read_text(), second.val.read_text()) == manifests
    # A changed file is processed again; the others still come from the cache.
    wave = synthesize(SPEAKERS[0], "A brand new sentence for this clip.", seed=5)
    sf.write(src / "spk_low" / "utt_00.wav", wave, RATE, subtype="PCM_16")
    third = build(src, tmp_path / "out")
    assert third.summary["files_reused_from_cache"] == 5


def test_loudness_normalisation(tmp_path):
    import pyloudnorm

    src = write_speaker_folders(tmp_path / "src", count=2, speakers=SPEAKERS[:2])
    result = build(src, tmp_path / "out", audio={"loudness_lufs": -23.0})
    meter = pyloudnorm.Meter(24000)
    for row in read_jsonl(result.train):
        wave, _ = sf.read(tmp_path / "out" / row["messages"][4]["content"]["audio_url"])
        assert meter.integrated_loudness(wave) == pytest.approx(-23.0, abs=0.5)


# ------------------------------------------------------------------------------------------------ segmentation


def test_long_recording_is_cut_at_pauses_and_split_transcript_follows(tmp_path):
    src, texts = write_long_recording(tmp_path / "long", sentences=10)
    not_segmented = build(src, tmp_path / "plain")
    assert {r["reason"] for r in not_segmented.summary["rejected"]} == {"too long"}
    assert "use --segment" in not_segmented.summary["rejected"][0]["detail"]

    result = build(src, tmp_path / "out", audio={"segment": True})
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert result.summary["rejected"] == []
    assert result.summary["clips_written"] == 10 * len(VAD_SPEAKERS)
    for row in rows:
        url = row["messages"][4]["content"]["audio_url"]
        index = int(Path(url).stem.rsplit("_", 1)[1])
        assert row["messages"][3]["content"] == texts[index]
        # Segment i is sentence i: its length matches that sentence's synthesis (plus the kept margins).
        speaker = next(s for s in VAD_SPEAKERS if s.name == row["speaker"])
        expected = len(synthesize(speaker, texts[index], seed=index)) / RATE
        seconds = sf.info(str(tmp_path / "out" / url)).duration
        assert 2.0 <= seconds <= 15.0 and abs(seconds - expected) < 0.6
    assert_cloning_pairs(rows)
    assert_valid_for_training(result, tmp_path)


def test_segments_without_a_split_transcript_are_kept_unlabelled_and_reported(tmp_path):
    src, _ = write_long_recording(tmp_path / "long", sentences=8)
    for speaker in VAD_SPEAKERS:
        (src / speaker.name / "session.txt").write_text("One block of text for the whole session.\n")
    result = build(src, tmp_path / "out", audio={"segment": True, "max_seconds": 10.0})
    reasons = [r["reason"] for r in result.summary["rejected"]]
    assert reasons.count("transcript not split") == 2
    unlabelled = [r for r in result.summary["rejected"] if r["reason"] == "unlabelled segment"]
    assert len(unlabelled) == result.summary["clips_written"] >= 8
    assert result.train_samples == result.val_samples == 0  # no text is ever made up
    assert all((tmp_path / "out" / r["detail"].split(" written to ")[1].split(";")[0]).is_file() for r in unlabelled)


def test_asr_model_transcribes_segments(tmp_path, monkeypatch):
    from higgs_train.builder import source_listing
    from higgs_train.builder.asr import Transcriber
    from higgs_train.embedded.asr import build_tiny_whisper_asr

    # The tiny Whisper's words are random tokens, far more than anyone speaks in a clip, which the speaking-rate
    # bound rightly rejects (tests/reliability/test_builder_input.py); here only the transcription path is tested.
    monkeypatch.setattr(source_listing, "MAX_CHARACTERS_PER_SECOND", 1000.0)

    asr_dir = build_tiny_whisper_asr(tmp_path / "whisper")
    src, _ = write_long_recording(tmp_path / "long", sentences=6)
    for speaker in VAD_SPEAKERS:
        (src / speaker.name / "session.txt").unlink()
    # No transcript at all: a folder source needs one per file, so list the recordings in an audio|speaker|text
    # file whose text is a placeholder the segmenter cannot split (one line for many segments).
    listing = src / "list.txt"
    listing.write_text("".join(f"{s.name}/session.wav|{s.name}|session\n" for s in VAD_SPEAKERS))
    result = build(listing, tmp_path / "out", audio={"segment": True, "max_seconds": 10.0, "asr_model": str(asr_dir)})
    rows = read_jsonl(result.train) + read_jsonl(result.val)
    assert rows
    transcriber = Transcriber(str(asr_dir))
    for row in rows[:3]:
        wave, rate = sf.read(tmp_path / "out" / row["messages"][4]["content"]["audio_url"], dtype="float32")
        assert row["messages"][3]["content"] == transcriber(wave, rate)


# ------------------------------------------------------------------------------------------------- bad sources


def test_bad_sources_are_reported_with_a_reason(tmp_path):
    src = write_speaker_folders(tmp_path / "src", count=3, speakers=SPEAKERS[:2])
    (src / "spk_low" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    (src / "spk_low" / "broken.txt").write_text("A file that does not decode.")
    sf.write(src / "spk_low" / "empty.wav", synthesize(SPEAKERS[0], "Empty transcript.", 1), RATE)
    (src / "spk_low" / "empty.txt").write_text("  \n")
    sf.write(src / "spk_low" / "latin1.wav", synthesize(SPEAKERS[0], "Caf\u00e9 au lait.", 1), RATE)
    (src / "spk_low" / "latin1.txt").write_bytes("Caf\u00e9 au lait.".encode("latin-1"))
    sf.write(src / "spk_low" / "nolabel.wav", synthesize(SPEAKERS[0], "No transcript.", 1), RATE)
    long_wave = np.tile(synthesize(SPEAKERS[0], SPEAKERS[0].name + " reads for ten minutes.", 2), 200)[: 600 * RATE]
    sf.write(src / "spk_low" / "lecture.wav", long_wave, RATE, subtype="PCM_16")
    (src / "spk_low" / "lecture.txt").write_text("A ten minute lecture.")
    sf.write(src / "spk_low" / "quiet.wav", np.zeros(2 * RATE, np.float32), RATE)
    (src / "spk_low" / "quiet.txt").write_text("Silence.")
    (src / "loner").mkdir()
    sf.write(src / "loner" / "only.wav", synthesize(SPEAKERS[2], "I am alone here.", 0), RATE)
    (src / "loner" / "only.txt").write_text("I am alone here.")

    result = build(src, tmp_path / "out")
    report = json.loads(result.report.read_text())
    reasons = {Path(r["item"]).name: r["reason"] for r in report["rejected"]}
    assert reasons == {
        "broken.wav": "unreadable",
        "empty.wav": "empty transcript",
        "latin1.wav": "transcript is not UTF-8",
        "nolabel.wav": "no transcript",
        "lecture.wav": "too long",
        "quiet.wav": "silent",
        "only.wav": "speaker has one clip",
    }
    # Nothing dropped silently: every input file is in a manifest or in the report.
    assert report["input_items"] == 6 + 7
    assert report["clips_in_manifests"] + len(report["rejected"]) == report["input_items"]
    assert "loner" not in {r["speaker"] for r in read_jsonl(result.train) + read_jsonl(result.val)}
    assert_valid_for_training(result, tmp_path)


def test_cli_help_lists_every_source_kind():
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "ray_jobs/prepare_data.py", "build", "--help"]
    out = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0
    for kind in SOURCE_KINDS:
        assert f"``{kind}``" in out.stdout
    for example in ("--input LibriTTS_R/train-clean-100", "--input VCTK-Corpus-0.92", "cv-corpus-17.0/en/train.tsv"):
        assert example in out.stdout
    assert "--local" in out.stdout and "--allow_outside" in out.stdout


# ----------------------------------------------------------------------------------------------------- pairing


def clips_of(speakers: dict[str, list[float]]) -> list[Clip]:
    return [
        Clip(f"{s}/c{i}", s, f"audio/{s}/c{i}.wav", f"text {s} {i}", seconds, "transcript")
        for s, lengths in speakers.items()
        for i, seconds in enumerate(lengths)
    ]


CORPUS = {"a": [4.0, 5.0, 1.0, 12.0, 6.0], "b": [3.0, 3.5, 8.0], "c": [2.0, 9.0, 4.0, 4.0], "d": [5.0]}


@pytest.mark.parametrize("k", [1, 2])
def test_pairs_same_speaker_never_self_deterministic(k):
    clips = clips_of(CORPUS)
    options = PairingOptions(references_per_target=k, seed=7, val_fraction=0.25)
    pairing = pair_clips(clips, options)
    pairs = pairing.train + pairing.val
    assert pairs
    for pair in pairs:
        assert pair.reference.speaker == pair.target.speaker
        assert pair.reference.audio_url != pair.target.audio_url
    again = pair_clips(list(reversed(clips)), options)
    assert [(p.target, p.reference) for p in again.train + again.val] == [(p.target, p.reference) for p in pairs]
    # k references per target, distinct
    targets = {p.target.key for p in pairs}
    for key in targets:
        refs = [p.reference.key for p in pairs if p.target.key == key]
        assert len(refs) == len(set(refs)) <= k
    # the one-clip speaker is reported, not paired with another voice
    assert [(r.speaker, r.reason) for r in pairing.rejections] == [("d", "speaker has one clip")]
    assert "d" not in {p.target.speaker for p in pairs}


def test_references_prefer_3_to_10_seconds_and_depend_on_seed():
    clips = clips_of({"a": [1.0, 12.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]})
    target = clips[0]
    chosen = {choose_references(target, clips, 1, seed)[0].key for seed in range(20)}
    assert chosen <= {c.key for c in clips if 3 <= c.seconds <= 10}
    assert len(chosen) > 1  # the seed moves the choice
    # When nothing is in range, out-of-range clips are still used (never another speaker).
    assert choose_references(clips_of({"x": [1.0, 12.0]})[0], clips_of({"x": [1.0, 12.0]}), 1, 0)[0].seconds == 12.0


def test_held_out_speakers_never_in_training():
    clips = clips_of(CORPUS)
    pairing = pair_clips(clips, PairingOptions(val_speakers=("b", "c"), val_fraction=0.5))
    train_audio = {p.target.audio_url for p in pairing.train} | {p.reference.audio_url for p in pairing.train}
    assert {p.target.speaker for p in pairing.val} == {"b", "c"}
    assert not any(url.split("/")[1] in ("b", "c") for url in train_audio)
    counted = pair_clips(clips, PairingOptions(val_speakers=("1",), seed=2))
    assert len(counted.val_speakers) == 1 and counted.val_speakers[0] not in {p.target.speaker for p in counted.train}
    with pytest.raises(ValueError, match="unknown|without two"):
        pair_clips(clips, PairingOptions(val_speakers=("d",)))


def test_by_clip_split_keeps_train_references_in_train():
    pairing = pair_clips(clips_of(CORPUS), PairingOptions(val_fraction=0.4, seed=1))
    val_targets = {p.target.audio_url for p in pairing.val}
    assert val_targets
    for pair in pairing.train:
        assert pair.target.audio_url not in val_targets and pair.reference.audio_url not in val_targets


def test_small_corpus_still_gets_one_validation_target():
    pairing = pair_clips(clips_of({"a": [4.0, 5.0, 6.0], "b": [4.0, 5.0, 6.0]}), PairingOptions(val_fraction=0.1))
    assert len({p.target.key for p in pairing.val}) == 1
    assert not pair_clips(clips_of({"a": [4.0, 5.0]}), PairingOptions(val_fraction=0.1)).val  # none to spare
