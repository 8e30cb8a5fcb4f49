"""Voice metrics on real speech of distinct voices: SIM separates speakers, WER tells the right text from another,
DNSMOS and the silence check flag broken clips. Speech comes from the project's synthetic speakers (always there)
and espeak-ng (installed by .ci/run; the tests that need it say so when it is missing)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess

import numpy as np
import pytest

from higgs_train.embedded.voices import SAMPLE_RATE, SENTENCES, SPEAKERS, synthesize
from higgs_train.evaluation.intelligibility import Intelligibility, PocketSphinxTranscriber, error_rates
from higgs_train.evaluation.metrics import Clip
from higgs_train.evaluation.quality import DnsMos, SignalChecks, code_repetition, silence_ratio
from higgs_train.evaluation.report import write_report
from higgs_train.evaluation.speaker import ResemblyzerEncoder, SpeakerSimilarity
from higgs_train.evaluation.suite import (
    MAX_CHARS_PER_SECOND,
    EvalSettings,
    RowScore,
    Thresholds,
    VoiceEvaluator,
    check_audio,
    flags_for,
    summarize,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (.ci/run installs it)"
)

# Four sentences pocketsphinx gets partly right in espeak-ng's en-us+f3 voice at 175 wpm with word gaps.
ASR_TEXTS = [
    "Please bring the red cup to the kitchen.",
    "The train leaves at half past seven.",
    "Rain is expected later this evening.",
    "Our meeting starts right after lunch.",
]


def espeak(text: str, voice: str = "en-us+f3") -> tuple[np.ndarray, int]:
    import soundfile as sf

    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "175", "-g", "6", "--stdout", text], capture_output=True, check=True
    ).stdout
    wave, rate = sf.read(io.BytesIO(raw), dtype="float32")
    return wave, rate


@pytest.fixture(scope="module")
def similarity() -> SpeakerSimilarity:
    return SpeakerSimilarity(ResemblyzerEncoder("cpu"))


def _same_and_cross(embeddings: dict[str, list[np.ndarray]]) -> tuple[list[float], list[float]]:
    names = list(embeddings)
    same = [float(e[i] @ e[j]) for e in embeddings.values() for i in range(len(e)) for j in range(i + 1, len(e))]
    cross = [
        float(a @ b) for n, x in enumerate(names) for y in names[n + 1 :] for a in embeddings[x] for b in embeddings[y]
    ]
    return same, cross


def test_sim_separates_the_synthetic_speakers(similarity: SpeakerSimilarity) -> None:
    texts = SENTENCES[:3]
    embeddings = {
        s.name: [similarity.embedding(synthesize(s, t, seed=0), SAMPLE_RATE) for t in texts] for s in SPEAKERS
    }
    same, cross = _same_and_cross(embeddings)
    # measured: same 0.81 (min 0.65) vs cross 0.61 (max 0.79)
    assert np.mean(same) - np.mean(cross) > 0.12, (np.mean(same), np.mean(cross))
    assert min(same) > np.mean(cross)


@needs_espeak
def test_sim_separates_espeak_voices(similarity: SpeakerSimilarity) -> None:
    voices = ["en-us", "en-us+f3", "en-gb-x-rp+m7"]
    embeddings = {v: [similarity.embedding(*espeak(t, v)) for t in ASR_TEXTS[:3]] for v in voices}
    same, cross = _same_and_cross(embeddings)
    assert np.mean(same) - np.mean(cross) > 0.12, (np.mean(same), np.mean(cross))


def test_sim_of_a_silent_clip_is_nan_not_a_number_that_looks_valid(similarity: SpeakerSimilarity) -> None:
    voice = synthesize(SPEAKERS[0], SENTENCES[0], seed=0)
    silent = np.zeros(SAMPLE_RATE * 2, dtype=np.float32)
    scores = similarity.score(Clip("x", silent, SAMPLE_RATE, reference=voice, reference_rate=SAMPLE_RATE))
    assert math.isnan(scores["sim"])


@needs_espeak
def test_wer_of_a_clip_is_lower_against_its_own_text_than_another() -> None:
    metric = Intelligibility(PocketSphinxTranscriber())
    own, other = [], []
    for i, text in enumerate(ASR_TEXTS):
        transcript = metric.transcribe(*espeak(text))
        own.append(error_rates(text, transcript)[0])
        other += [error_rates(t, transcript)[0] for j, t in enumerate(ASR_TEXTS) if j != i]
    # measured: own 0.62 vs other 1.08 (pocketsphinx is rough: even its own text is far from 0)
    assert np.mean(own) < np.mean(other) - 0.2, (own, other)


def test_error_rates_normalise_case_and_punctuation() -> None:
    assert error_rates("Hello, World!", "hello world") == (0.0, 0.0)
    wer, cer = error_rates("one two three four", "one two")
    assert wer == 0.5 and 0 < cer < 1
    assert error_rates("one two", "") == (1.0, 1.0)
    assert all(math.isnan(v) for v in error_rates("", "anything"))


def test_dnsmos_and_silence_check_flag_a_silent_and_a_noise_clip() -> None:
    rate = 16000
    silent = np.zeros(rate * 3, dtype=np.float32)
    noise = np.clip(0.3 * np.random.default_rng(0).standard_normal(rate * 3), -1, 1).astype(np.float32)
    evaluator = VoiceEvaluator(EvalSettings(sim=False, asr=False, dnsmos=True))
    silent_row = evaluator.score(Clip("silent", silent, rate, text="Rain is expected later this evening."))
    noise_row = evaluator.score(Clip("noise", noise, rate, text="Rain is expected later this evening."))
    assert "silent" in silent_row.flags
    assert "silent" not in noise_row.flags
    assert "low_quality" in noise_row.flags  # measured: ovrl 1.07, p808 2.12
    assert noise_row.metrics["dnsmos_ovrl"] < 1.5
    assert "low_quality" in silent_row.flags  # measured p808 2.15: DNSMOS has no meaning for silence


@needs_espeak
def test_dnsmos_does_not_flag_clean_speech() -> None:
    wave, rate = espeak(ASR_TEXTS[0], "en-us")
    row = VoiceEvaluator(EvalSettings(sim=False, asr=False)).score(Clip("speech", wave, rate, text=ASR_TEXTS[0]))
    assert row.flags == [], row.metrics
    assert row.metrics["dnsmos_p808"] > 3.0  # measured 3.47


def test_dnsmos_of_an_empty_clip_is_nan() -> None:
    scores = DnsMos().score(Clip("empty", np.zeros(0, dtype=np.float32), 16000))
    assert all(math.isnan(v) for v in scores.values())


def test_signal_checks() -> None:
    rate = 24000
    speech = synthesize(SPEAKERS[1], SENTENCES[1], seed=0)
    assert silence_ratio(speech, rate) < 0.3
    assert silence_ratio(np.zeros(rate), rate) == 1.0
    clipped = np.clip(speech * 10, -1, 1)
    loop = np.tile(np.arange(5), (8, 40))  # a 5-frame loop
    varied = np.random.default_rng(0).integers(0, 1024, (8, 200))
    assert code_repetition(loop) > 0.9
    assert code_repetition(varied) < 0.05
    scores = SignalChecks().score(
        Clip(
            "c",
            clipped,
            rate,
            text=SENTENCES[1],
            target=speech[: len(speech) // 4],
            target_rate=rate,
            finished=False,
            codes=loop,
        )
    )
    assert scores["duration_ratio"] == pytest.approx(4.0, rel=0.01)
    flags = flags_for(scores, Thresholds())
    assert {"clipped", "too_long", "no_eos", "repetitive"} <= set(flags)
    assert "silent" not in flags


# The issue's case: "finished=True" for a 0.72 s clip of a 67-character sentence with 43 % of samples clipped.
ISSUE_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank today."[:67]


def test_audio_check_reports_the_issue_clip_with_what_it_measured() -> None:
    rate = 24000
    rng = np.random.default_rng(0)
    wave = np.clip(rng.standard_normal(int(0.72 * rate)) * 0.7, -1.0, 1.0).astype(np.float32)
    assert 0.1 < float((np.abs(wave) >= 0.999).mean()) < 0.2  # a clipped noise clip
    wave[: int(0.3 * len(wave))] = np.sign(wave[: int(0.3 * len(wave))])  # 30 % more at full scale
    problems = check_audio(wave, rate, ISSUE_TEXT)
    assert len(problems) == 2, problems
    short, clipped = problems
    assert short.startswith("too short for its text: 0.72 s for 67 characters (93 characters/s")
    assert f"at least {67 / MAX_CHARS_PER_SECOND:.2f} s" in short
    assert clipped.startswith("clipped: 4") and "% of samples at full scale (limit 1%)" in clipped


def test_audio_check_passes_real_speech_and_catches_silence_and_a_quiet_clip() -> None:
    rate = 24000
    for speaker, sentence in zip(SPEAKERS, SENTENCES, strict=False):  # the sample data's voices say their text
        assert check_audio(synthesize(speaker, sentence, seed=0), rate, sentence) == [], speaker.name
    speech = synthesize(SPEAKERS[0], SENTENCES[0], seed=0)
    (silent,) = check_audio(np.zeros(rate * 2, dtype=np.float32), rate, SENTENCES[0])
    assert silent.startswith("silent: peak -200.0 dBFS, RMS -200.0 dBFS, 100% of 20 ms frames")
    quiet = speech / np.abs(speech).max() * 0.005  # -46 dBFS peak: speech-shaped but inaudible
    (problem,) = check_audio(quiet, rate, SENTENCES[0])
    assert problem.startswith("silent: peak -46.0 dBFS")
    # The speaking-rate bound counts characters with whitespace runs once; one character more than the bound allows
    # in a second is flagged, one fewer is not.
    one_second = speech[:rate]
    assert check_audio(one_second, rate, "x" * int(MAX_CHARS_PER_SECOND - 1)) == []
    assert "too short for its text" in check_audio(one_second, rate, "x" * int(MAX_CHARS_PER_SECOND + 1))[0]


@needs_espeak
def test_audio_check_passes_fast_speech() -> None:
    """espeak-ng at 300 words a minute (twice read speech, ~30 characters/s) is still speech to the check."""
    import soundfile as sf

    text = " ".join(ASR_TEXTS[:2])
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "300", "--stdout", text], capture_output=True, check=True)
    wave, rate = sf.read(io.BytesIO(raw.stdout), dtype="float32")
    assert 25 < len(text) / (len(wave) / rate) < MAX_CHARS_PER_SECOND
    assert check_audio(wave, rate, text) == []


def test_report_lists_a_failed_model_with_its_reason(tmp_path) -> None:
    import json

    rows = [RowScore("base", "a", "t", {"sim": 0.5, "clipping_ratio": 0.4}, ["clipped"])]
    failures = {"truncated": "AdapterError: adapter_model.safetensors is corrupted or truncated"}
    meta = {"models": [{"label": "truncated"}, {"label": "base"}]}
    paths = write_report(tmp_path, rows, meta, failures)
    summary = json.loads(paths["json"].read_text())["summary"]
    assert list(summary) == ["truncated", "base"]  # the order the models were given
    assert summary["truncated"]["status"] == "failed" and "corrupted or truncated" in summary["truncated"]["error"]
    assert summary["base"]["status"] == "ok" and summary["base"]["bad_audio_rows"] == 1
    table = paths["table_md"].read_text()
    assert "| truncated | failed: AdapterError: adapter_model.safetensors is corrupted or truncated | 0 |" in table
    assert "| base | ok | 1 | 0.500 | 1 | 1 | clipped×1 |" in table


def test_report_writes_table_json_and_plot(tmp_path) -> None:
    rows = [
        RowScore("base", "a", "t", {"sim": 0.5, "wer": 1.0, "silence_ratio": 0.9}, ["silent"]),
        RowScore("tuned", "a", "t", {"sim": 0.8, "wer": math.nan, "silence_ratio": 0.1}, []),
    ]
    summary = summarize(rows)
    assert summary["base"]["flags"] == {"silent": 1} and summary["tuned"]["flagged_rows"] == 0
    paths = write_report(tmp_path, rows, {"sim_model": "resemblyzer", "asr": "pocketsphinx-rough"})
    import json

    doc = json.loads(paths["json"].read_text())
    assert doc["rows"][1]["metrics"]["wer"] is None  # NaN is written as null, the file stays valid JSON
    table = paths["table_md"].read_text()
    assert "| base | ok | 1 | 0.500" in table and "| tuned | ok | 1 | 0.800" in table
    assert paths["plot"].stat().st_size > 1000


def test_a_local_xvector_checkpoint_dir_plugs_in_as_the_speaker_model(tmp_path) -> None:
    """The ``--sim_model DIR`` path, through a tiny random WavLM x-vector saved in the on-disk format."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    from higgs_train.evaluation.speaker import load_speaker_encoder

    config = WavLMConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        tdnn_dim=(8, 8), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=6, num_buckets=8,
    )  # fmt: skip
    WavLMForXVector(config).save_pretrained(tmp_path / "sv")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "sv")
    sim = SpeakerSimilarity(load_speaker_encoder(str(tmp_path / "sv")))
    voice = synthesize(SPEAKERS[0], SENTENCES[0], seed=0)
    other = synthesize(SPEAKERS[3], SENTENCES[1], seed=0)
    assert sim.similarity(voice, SAMPLE_RATE, voice, SAMPLE_RATE) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= sim.similarity(voice, SAMPLE_RATE, other, SAMPLE_RATE) < 1.0
    with pytest.raises(FileNotFoundError, match="sim_model"):
        load_speaker_encoder(str(tmp_path / "missing"))
