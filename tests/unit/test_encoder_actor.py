"""``PreprocessActor`` (the encoder actors' code, run here in-process): the audio tokenizer loads only when a batch
has clips to encode, and one that cannot load fails the build instead of quarantining every row."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.manifest import convert_manifest
from higgs_train.data.pipeline_stages import ERROR_REASON, PreprocessActor, decode_batch
from higgs_train.data.plain_parquet import read_plain_parquet
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.embedded.marker import GENERATED_MARKER
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import resolve_paths


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> tuple[pa.Table, str]:
    folder = tmp_path_factory.mktemp("actor")
    out = create_sample_data(folder / "sample", utterances_per_speaker=2)
    manifest = folder / "train.parquet"
    convert_manifest(out["train"], manifest)
    return read_plain_parquet(manifest).slice(0, 3), str(out["audio_base_path"])


def actor(audio_tokenizer_path: str, base: str, codes: str) -> PreprocessActor:
    settings = PreprocessSettings(limits=AudioLimits(), whisper=False, encode_audio_in_tokens=True)
    return PreprocessActor(
        tokenizer_path=resolve_paths("embedded", "embedded").tokenizer_path,
        audio_tokenizer_path=audio_tokenizer_path,
        audio_base_path=base,
        settings={**dataclasses.asdict(settings), "limits": dataclasses.asdict(settings.limits)},
        code_store_dir=codes,
    )


def decoded(batch: pa.Table, base: str, codes: str) -> pa.Table:
    return decode_batch(batch, base, 24000, dataclasses.asdict(AudioLimits()), codes)


def test_the_tokenizer_loads_only_for_clips_to_encode(rows, tmp_path):
    batch, base = rows
    codes, tokenizer_path = str(tmp_path / "codes"), resolve_paths("embedded", "embedded").audio_tokenizer_path
    first = actor(tokenizer_path, base, codes)
    assert not first.preprocessor.audio_tokenizer.loaded  # a started actor holds no model yet
    out = first(decoded(batch, base, codes))
    assert out.column(ERROR_REASON).null_count == batch.num_rows and first.preprocessor.audio_tokenizer.loaded
    second = actor(tokenizer_path, base, codes)  # a rerun: every clip is in the code store, nothing is decoded
    again = second(decoded(batch, base, codes))
    assert again.column(ERROR_REASON).null_count == batch.num_rows and not second.preprocessor.audio_tokenizer.loaded
    assert again.column("audio_codes").to_pylist() == out.column("audio_codes").to_pylist()


def test_a_tokenizer_that_cannot_load_fails_the_batch_not_its_rows(rows, tmp_path):
    batch, base = rows
    broken = tmp_path / "broken_tokenizer"
    broken.mkdir()
    source = resolve_paths("embedded", "embedded").audio_tokenizer_path
    for name in ("config.json", GENERATED_MARKER):  # the embedded tokenizer's files, but its weights cut short
        shutil.copy(f"{source}/{name}", broken / name)
    (broken / "model.pth").write_bytes(Path(f"{source}/model.pth").read_bytes()[:4096])
    config = json.loads((broken / "config.json").read_text())
    encoder = actor(str(broken), base, str(tmp_path / "codes"))  # starts: the figures come from config.json
    assert encoder.preprocessor.sampling_rate == config["sample_rate"]
    with pytest.raises(RuntimeError, match="zip archive|central directory"):
        encoder(decoded(batch, base, str(tmp_path / "codes")))
