"""SamplePreprocessor on the sample data: record fields and shapes, label masking, errors with reasons."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from higgs_train.data.clip_encoder import process_encoder_stats
from higgs_train.data.collate import batch_to_model_inputs, build_collator, collate_records
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.reasons import AudioError
from higgs_train.data.record_codec import RECORD_SCHEMA, iter_records, record_to_sample, records_to_table
from higgs_train.data.sample_tokens import PreprocessError
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_audio_tokenizer, load_model, load_text_tokenizer, resolve_paths

FRAMES_PER_SECOND = 25


@pytest.fixture(scope="module")
def stack():
    paths = resolve_paths("embedded", "embedded")
    return paths, load_text_tokenizer(paths.tokenizer_path), load_audio_tokenizer(paths.audio_tokenizer_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = create_sample_data(tmp_path_factory.mktemp("sample"), utterances_per_speaker=3)
    rows = json.loads(out["train"].read_text())
    for i, row in enumerate(rows):
        row["row_index"] = i
    return out["audio_base_path"], rows


@pytest.fixture(scope="module")
def pre(stack, data):
    _, tokenizer, audio_tokenizer = stack
    return SamplePreprocessor(tokenizer, audio_tokenizer, data[0])


@pytest.fixture(scope="module")
def records(pre, data):
    return [pre(row) for row in data[1][:2]]


def test_record_fields_and_shapes(records, data, stack):
    _, tokenizer, _ = stack
    rec, row = records[0], data[1][0]
    assert rec["id"] == row["id"] and rec["row_index"] == 0 and rec["speaker"] == row["speaker"]
    assert rec["input_ids"].dtype == np.int32 and rec["label_ids"].dtype == np.int32
    assert len(rec["input_ids"]) == len(rec["label_ids"])
    k, total = rec["audio_codes_shape"].tolist()
    assert k == 8 and rec["audio_codes"].dtype == np.int16 and rec["audio_codes"].size == k * total
    assert rec["audio_is_out"].tolist() == [True, True]  # reference and target are both assistant audio
    assert rec["audio_ids_start"][0] == 0
    frames = np.diff([*rec["audio_ids_start"].tolist(), total])
    assert abs(total - FRAMES_PER_SECOND * rec["audio_seconds"]) <= 2 * len(frames)
    assert all(f > 0 for f in frames)
    assert rec["audio_waveforms"].size == 0 and rec["audio_sample_rates"].size == 0  # no Whisper in this model
    # merged length: text without the 2 placeholders + per segment T + num_codebooks + 1
    assert rec["num_tokens"] == len(rec["input_ids"]) - 2 + sum(int(f) + k + 1 for f in frames)
    audio_out = tokenizer.convert_tokens_to_ids("<|AUDIO_OUT|>")
    assert int((rec["input_ids"] == audio_out).sum()) == 2


def test_arrow_round_trip(records):
    table = records_to_table(records)
    assert table.schema.equals(RECORD_SCHEMA)
    back = list(iter_records(table))
    for a, b in zip(records, back, strict=True):
        for name in RECORD_SCHEMA.names:
            assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
    sample = record_to_sample(back[0])
    assert sample.audio_ids_concat.dtype == torch.long and sample.audio_ids_concat.shape[0] == 8
    assert sample.audio_waveforms_concat.dtype == torch.float32 and sample.audio_waveforms_concat.numel() == 0


def test_reference_audio_before_start_index_has_no_audio_labels(records, stack):
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    paths, _, _ = stack
    config = HiggsAudioConfig.from_pretrained(paths.model_path)
    batch = collate_records(records, build_collator(config))
    starts = batch.audio_out_ids_start.tolist() + [batch.label_audio_ids.shape[1]]
    segments = [batch.label_audio_ids[:, a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    assert len(segments) == 4  # (reference, target) per sample
    for ref, target in (segments[0:2], segments[2:4]):
        assert bool((ref == -100).all())
        assert int((target != -100).sum()) > 0
    # text labels: everything up to the target turn is masked
    for rec, labels in zip(records, batch.label_ids, strict=True):
        first = int(np.argmax(rec["label_ids"] != -100))
        assert bool((labels[:first] == -100).all()) and first > len(rec["label_ids"]) // 2


def test_num_tokens_matches_the_models_merged_length(records, stack):
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    paths, _, _ = stack
    config = HiggsAudioConfig.from_pretrained(paths.model_path)
    model = load_model(paths.model_path).eval()
    for rec in records:
        batch = collate_records([rec], build_collator(config, round_to=1))
        with torch.no_grad():
            out = model(**batch_to_model_inputs(batch))
        merged = out.expanded_labels.shape[1]  # padded by the model to a multiple of 8
        assert rec["num_tokens"] <= merged < rec["num_tokens"] + 8


def test_missing_audio_file_has_a_reason(pre, data):
    row = copy.deepcopy(data[1][0])
    row["messages"][4]["content"]["audio_url"] = "audio/does_not_exist.wav"
    with pytest.raises(AudioError, match="audio file not found: audio/does_not_exist.wav"):
        pre(row)
    result = pre.process_batch([row])
    assert result.records == [] and len(result.failures) == 1
    failure = result.failures[0]
    assert (failure.id, failure.row_index, failure.stage) == (row["id"], 0, "audio")
    assert "not found" in failure.reason


def test_audio_in_after_audio_out_is_rejected(pre, data):
    row = copy.deepcopy(data[1][0])
    ref = row["messages"][2]["content"]
    row["messages"].append({"role": "user", "content": dict(ref)})
    with pytest.raises(PreprocessError, match="audio-in after audio-out") as err:
        pre(row)
    assert err.value.stage == "validation"


def test_tokenization_and_parse_failures_have_reasons(pre, data):
    bad_role = copy.deepcopy(data[1][0])
    bad_role["messages"][1]["content"] = {"type": "video", "url": "x"}
    result = pre.process_batch(
        [
            bad_role,
            {"id": "p", "row_index": 9, "parse_error": "manifest line 9 is not valid JSON"},
            {"id": "q", "row_index": 10, "messages_json": "{not json"},
        ]
    )
    stages = [(f.id, f.stage) for f in result.failures]
    # The validator's checks run first, so a job quarantines what --validate_data_only reports.
    assert stages == [(bad_role["id"], "validation"), ("p", "parse"), ("q", "parse")]
    assert result.failures[0].reason.startswith("messages[1]: content must be")
    assert result.failures[1].reason == "manifest line 9 is not valid JSON"


def test_each_distinct_file_is_encoded_once(stack, data):
    _, tokenizer, audio_tokenizer = stack
    fresh = SamplePreprocessor(tokenizer, audio_tokenizer, data[0])
    rows = data[1][:4]  # same speaker: targets and references share files
    urls = {m["content"]["audio_url"] for r in rows for m in r["messages"] if isinstance(m["content"], dict)}
    before = process_encoder_stats().calls
    first = fresh.process_batch(rows)
    assert first.stats["encoder_calls"] == len(urls) == fresh.encoder_stats.calls
    assert process_encoder_stats().calls - before == len(urls)
    second = fresh.process_batch(rows)  # a second epoch over the same rows in this process
    assert second.stats["encoder_calls"] == 0
    assert [r["audio_codes"].tolist() for r in first.records] == [r["audio_codes"].tolist() for r in second.records]


def test_whisper_input_holds_16k_audio_in_waveforms(stack, data, tmp_path):
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    from higgs_train.model_loading import load_whisper_processor

    _, tokenizer, audio_tokenizer = stack
    whisper_pre = SamplePreprocessor(tokenizer, audio_tokenizer, data[0], whisper=True)
    row = copy.deepcopy(data[1][0])
    row["messages"][2]["role"] = "user"  # the reference clip as audio input
    rec = whisper_pre(row)
    assert rec["audio_is_out"].tolist() == [False, True]
    assert rec["audio_sample_rates"].tolist() == [16000]
    assert rec["audio_waveforms_start"].tolist() == [0]
    ref_frames = int(rec["audio_ids_start"][1])
    assert abs(len(rec["audio_waveforms"]) / 16000 * FRAMES_PER_SECOND - ref_frames) <= 2

    whisper_paths = resolve_paths("embedded:whisper", "embedded")
    config = HiggsAudioConfig.from_pretrained(whisper_paths.model_path)
    batch = collate_records([rec], build_collator(config, load_whisper_processor(whisper_paths.model_path, config)))
    assert batch.audio_features.shape[0] == 1 and batch.audio_in_ids.shape[0] == 8
    table = records_to_table([rec])
    assert table.column("audio_waveforms").type == pa.list_(pa.float32())


def test_a_deferred_tokenizer_reads_its_figures_from_the_config_and_loads_only_to_encode(stack, data, tmp_path):
    """Rows whose clips are all in the code store preprocess without loading the audio tokenizer (the released one
    is 200M parameters); the figures a preprocessor needs up front are upstream's own, read from config.json."""
    from higgs_train.data.clip_encoder import AudioCodeStore
    from higgs_train.model_loading import DeferredAudioTokenizer

    paths, tokenizer, audio_tokenizer = stack
    deferred = DeferredAudioTokenizer(paths.audio_tokenizer_path)
    figures = ("sampling_rate", "num_codebooks", "tps")
    assert [getattr(deferred, f) for f in figures] == [getattr(audio_tokenizer, f) for f in figures]
    assert not deferred.loaded

    rows = data[1][:3]
    store = AudioCodeStore(tmp_path / "codes")
    filled = SamplePreprocessor(tokenizer, audio_tokenizer, data[0], code_store=store).process_batch(rows)
    assert filled.stats["encoder_calls"] > 0 and not filled.failures
    again = SamplePreprocessor(tokenizer, deferred, data[0], code_store=store).process_batch(rows)
    assert not again.failures and again.stats["encoder_calls"] == 0
    assert not deferred.loaded  # every clip came from the store
    assert [r["audio_codes"].tolist() for r in again.records] == [r["audio_codes"].tolist() for r in filled.records]

    fresh = SamplePreprocessor(tokenizer, deferred, data[0], code_store=AudioCodeStore(tmp_path / "empty"))
    encoded = fresh.process_batch(rows)  # nothing stored: the tokenizer loads and gives the same codes
    assert deferred.loaded and encoded.stats["encoder_calls"] == filled.stats["encoder_calls"]
    assert [r["audio_codes"].tolist() for r in encoded.records] == [r["audio_codes"].tolist() for r in filled.records]


def test_each_clip_lock_is_released_once_stored_and_rows_waiting_on_another_actor_go_last(stack, data, tmp_path):
    """Two actors share a code store. One that meets a clip the other is encoding skips it, encodes the rest, and
    takes the rows that need it last; and it frees each clip it encodes as soon as the clip is stored, so the other
    actor never waits for its whole batch (holding every lock to the end kept 2 actors in lockstep)."""
    from higgs_train.data.clip_encoder import AudioCodeStore, file_sha256
    from higgs_train.data.sample_tokens import row_audio_urls

    _, tokenizer, audio_tokenizer = stack
    base, rows = data[0], data[1][:4]  # one speaker: rows share files
    sha = {url: file_sha256(base / url) for row in rows for url in row_audio_urls(row)}
    busy = row_audio_urls(rows[0])[-1]  # the first row's target: another actor is encoding it
    store = AudioCodeStore(tmp_path / "codes")
    pre = SamplePreprocessor(tokenizer, audio_tokenizer, base, code_store=store)
    other_actor = contextlib.ExitStack()
    assert other_actor.enter_context(store.lock(sha[busy]))

    freed_after_storing: list[bool] = []
    encode_each = pre.clip_encoder.encode_each

    def watched(waves, urls):
        for key, codes in encode_each(waves, urls):
            yield key, codes
            with store.lock(key, wait=False) as free:  # the caller stored it and let go before asking for more
                freed_after_storing.append(free and store.get(key) is not None)
        other_actor.close()  # the other actor finishes its clip without storing it: the row pass encodes it

    pre.clip_encoder.encode_each = watched
    result = pre.process_batch(rows)

    assert not result.failures and len(freed_after_storing) == len(set(sha.values())) - 1
    assert all(freed_after_storing)
    waiting = [row["id"] for row in rows if busy in row_audio_urls(row)]
    assert 0 < len(waiting) < len(rows)
    assert [r["id"] for r in result.records] == [row["id"] for row in rows if row["id"] not in waiting] + waiting
    alone = SamplePreprocessor(tokenizer, audio_tokenizer, base).process_batch(rows)
    codes = {r["id"]: r["audio_codes"].tolist() for r in alone.records}
    assert {r["id"]: r["audio_codes"].tolist() for r in result.records} == codes
