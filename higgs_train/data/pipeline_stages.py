"""The two Ray Data stages of a token-cache build, and the columns they hand back: what runs per batch on the cluster.

Why apart from the build (``ray_pipeline``): this is the code Ray ships to its tasks and actors. A decode task
(``decode_batch``) decodes and resamples the clips a batch needs on CPUs; an encoder actor (``PreprocessActor``)
loads the tokenizers once, encodes those clips (``ClipEncoder``, on a CPU or a GPU) and turns each row into a record
or a failure (``batch_output``). Everything that crosses from the stages back to the driver is in
``OUTPUT_SCHEMA``: the record columns, the failure's stage and reason, the files a failed row could not reach
(``UNAVAILABLE``) and the batch's costs on its first row. The driver side (keys, reuse, quarantine, stats,
publication) reads only those columns, so either side can be read and changed without the other.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.clip_encoder import AudioCodeStore, decode_clips, keep_freed_memory_for_reuse
from higgs_train.data.preprocess import BatchResult, SamplePreprocessor
from higgs_train.data.record_codec import RECORD_SCHEMA, records_to_table
from higgs_train.data.stage_sizing import ENCODE_BATCH

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"
UNAVAILABLE = "_unavailable_audio"  # JSON {url: state} of files a failed row could not reach (file-system state)
STAT_COLUMNS = ("_encoder_calls", "_encoder_batches", "_encoded_seconds", "_cpu_seconds", "_decode_cpu_seconds")
DECODED = "_decoded"  # decode stage -> encode stage: the clips each row needs encoded, decoded (sha256, waveform)
DECODED_TYPE = pa.large_list(pa.struct([("sha256", pa.string()), ("wave", pa.large_list(pa.float32()))]))
DECODE_CPU = "_decode_cpu_seconds"  # the decode stage's CPU time for its batch, on the batch's first row
OUTPUT_SCHEMA = pa.schema(
    [
        *RECORD_SCHEMA,
        pa.field(ERROR_STAGE, pa.string()),
        pa.field(ERROR_REASON, pa.string()),
        pa.field(UNAVAILABLE, pa.string()),
        pa.field("_encoder_calls", pa.int64()),
        pa.field("_encoder_batches", pa.int64()),
        pa.field("_encoded_seconds", pa.float64()),
        pa.field("_cpu_seconds", pa.float64()),
        pa.field(DECODE_CPU, pa.float64()),
    ]
)
META_COLUMNS = ["id", "row_index", "audio_seconds", ERROR_STAGE, ERROR_REASON, UNAVAILABLE, *STAT_COLUMNS]


def batch_output(result: BatchResult, decode_cpu_seconds: float = 0.0) -> pa.Table:
    """One Arrow table per batch: good records, then failed rows (id, row_index, error), costs on the first row."""
    good = records_to_table(result.records)
    n_good, n_bad = good.num_rows, len(result.failures)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in RECORD_SCHEMA:
        if f.name == "id":
            tail = pa.array([x.id for x in result.failures], pa.string())
        elif f.name == "row_index":
            tail = pa.array([x.row_index for x in result.failures], pa.int64())
        else:
            tail = pa.nulls(n_bad, f.type)
        columns[f.name] = pa.chunked_array([good.column(f.name).combine_chunks(), tail], f.type)
    columns[ERROR_STAGE] = pa.array([None] * n_good + [x.stage for x in result.failures], pa.string())
    columns[ERROR_REASON] = pa.array([None] * n_good + [x.reason for x in result.failures], pa.string())
    unavailable = [json.dumps(dict(x.unavailable)) if x.unavailable else None for x in result.failures]
    columns[UNAVAILABLE] = pa.array([None] * n_good + unavailable, pa.string())
    n = n_good + n_bad
    first = [1.0] + [0.0] * (n - 1) if n else []
    s = result.stats
    columns["_encoder_calls"] = pa.array([int(s.get("encoder_calls", 0) * w) for w in first], pa.int64())
    columns["_encoder_batches"] = pa.array([int(s.get("encoder_batches", 0) * w) for w in first], pa.int64())
    columns["_encoded_seconds"] = pa.array([s.get("encoded_seconds", 0.0) * w for w in first], pa.float64())
    columns["_cpu_seconds"] = pa.array([s.get("cpu_seconds", 0.0) * w for w in first], pa.float64())
    columns[DECODE_CPU] = pa.array([decode_cpu_seconds * w for w in first], pa.float64())
    return pa.table(columns, schema=OUTPUT_SCHEMA)


def decode_batch(
    batch: pa.Table, audio_base_path: str, sampling_rate: int, limits: dict[str, Any], code_store_dir: str | None
) -> pa.Table:
    """The decode stage (Ray Data CPU tasks, no model): the batch plus each row's clips decoded and resampled.

    Why a stage of its own: decoding and resampling need CPUs only, encoding wants the encoder's device; kept apart,
    each is sized by itself (``decode_cpus`` per task, ``cpus_per_actor``/``gpus_per_actor`` per encoder actor)
    and encoder actors (possibly on GPUs) never wait on file I/O. A clip appears once per batch, on the first row
    needing it; clips the code store holds are not decoded at all.
    """
    start = time.process_time()
    store = AudioCodeStore(code_store_dir) if code_store_dir else None
    seen: set[str] = set()
    per_row = []
    for row in batch.to_pylist():
        clips = decode_clips([row], audio_base_path, sampling_rate, AudioLimits(**limits), store)
        per_row.append([{"sha256": sha, "wave": wave} for sha, wave in clips.items() if sha not in seen])
        seen.update(clips)
    cpu = time.process_time() - start
    out = batch.append_column(DECODED, pa.array(per_row, DECODED_TYPE))
    return out.append_column(DECODE_CPU, pa.array([cpu] + [0.0] * (batch.num_rows - 1), pa.float64()))


def decoded_waves(batch: pa.Table) -> dict[str, np.ndarray]:
    """sha256 -> waveform from a decode-stage batch, read as numpy slices (no Python float per sample)."""
    clips = pc.list_flatten(batch.column(DECODED).combine_chunks())
    if len(clips) == 0:
        return {}
    shas = clips.field("sha256").to_pylist()
    waves = clips.field("wave")
    offsets = waves.offsets.to_numpy()
    values = waves.values.to_numpy(zero_copy_only=False)
    return {sha: values[offsets[i] : offsets[i + 1]] for i, sha in enumerate(shas)}


class PreprocessActor:
    """Ray Data callable class: loads the tokenizers once (CPU), then preprocesses batches of manifest rows."""

    def __init__(
        self,
        tokenizer_path: str,
        audio_tokenizer_path: str,
        audio_base_path: str,
        settings: dict[str, Any],
        code_store_dir: str | None,
        torch_threads: int = 1,
        progress: Any = None,
        device: str = "cpu",
        encode_batch_size: int = ENCODE_BATCH,
    ) -> None:
        # Deferred on purpose: torch, transformers and upstream's tokenizer code load in the encoder actors only; the
        # decode tasks (this module's functions, run in Ray's workers) never need them.
        import torch

        from higgs_train.model_loading import DeferredAudioTokenizer, load_text_tokenizer

        torch.set_num_threads(torch_threads)
        keep_freed_memory_for_reuse()  # this process only encodes: reuse the encoder's big blocks, clip after clip
        limits = AudioLimits(**settings["limits"])
        self.preprocessor = SamplePreprocessor(
            load_text_tokenizer(tokenizer_path),
            DeferredAudioTokenizer(audio_tokenizer_path, device=device),  # loaded if a clip needs encoding
            audio_base_path,
            limits,
            settings["whisper"],
            encode_audio_in_tokens=settings["encode_audio_in_tokens"],
            code_store=AudioCodeStore(code_store_dir) if code_store_dir else None,
            max_tokens_per_row=settings.get("max_tokens_per_row", 0),
            encode_batch_size=encode_batch_size,
        )
        self.progress = progress  # console.RayProgress's counter: rows done, for the driver's progress line

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded, decode_cpu = {}, 0.0
        if DECODED in batch.column_names:  # from the decode stage
            decoded = decoded_waves(batch)
            decode_cpu = float(pc.sum(batch.column(DECODE_CPU)).as_py() or 0.0)
            batch = batch.drop_columns([DECODED, DECODE_CPU])
        if decoded:  # clips to encode: a tokenizer that cannot load fails the build here, not each row as its own
            self.preprocessor.audio_tokenizer.load()
        out = batch_output(self.preprocessor.process_batch(batch.to_pylist(), decoded), decode_cpu)
        if self.progress is not None:
            self.progress.add.remote(batch.num_rows)
        return out


def good_rows(batch: pa.Table) -> pa.Table:
    """The batch's records, failed rows left out (they go to the quarantine from the meta columns)."""
    return batch.filter(pc.is_null(batch.column(ERROR_REASON))).select(RECORD_SCHEMA.names)
