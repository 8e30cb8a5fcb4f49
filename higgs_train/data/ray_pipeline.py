"""Build the token cache with Ray Data: canonical manifest -> actor pool of ``SamplePreprocessor`` -> Parquet.

Why Ray Data with a fixed actor pool: the audio tokenizer is hundreds of MB and takes seconds to load, so it is
loaded once per actor (``PreprocessActor.__init__``) and fed a stream of small batches; Ray Data keeps the pool busy
and bounds memory, and the same code scales from this 2-CPU box to a cluster.

Flow (``build_token_cache``):

1. The driver reads the manifest's key columns, fingerprints the referenced audio and computes the cache key
   (``token_cache``). A complete entry for the key is a hit: returned without starting any actor.
2. ``read_parquet`` -> ``repartition(target_num_rows_per_block=batch_size)`` (a one-file manifest is a single block,
   and Ray hands a whole block to one actor; small blocks spread rows over the pool) -> the decode stage
   (``decode_batch``: CPU tasks that decode and resample the clips the code store lacks) -> the encode stage
   (``map_batches(PreprocessActor, ActorPoolStrategy(size=num_actors))``, fractional ``num_cpus``, ``num_gpus``
   with ``--data_actor_gpus``: the batch's clips go through ``ClipEncoder``, several per call where that is exact,
   then each row becomes a record). Every input row comes back: good rows as records, failed rows with
   ``error_stage``/``error_reason`` set and null data. Each batch's cost (clips encoded, encoder calls, encoded
   audio seconds, encode and decode CPU seconds) rides on its first output row.
3. Before any actor starts, every row's content key (``row_reuse.row_keys``) is looked up in the newest earlier
   entries: only rows found nowhere are preprocessed (a one-row edit of a 100k-row manifest preprocesses one row;
   a build whose rows are all known starts no actor at all).
4. The result is materialised once (so the encoder runs once per row), failed rows are split off into
   ``quarantine.parquet``, good rows are written with ``write_parquet`` into the staging directory, then
   ``row_reuse.write_entry`` merges them with the reused records into the entry's sorted, streamable layout
   (``shard_stream``), ``stats.json`` aggregates the per-batch costs (plus ``rows_reused``/``rows_preprocessed``),
   and ``TokenCache.publish`` renames the staging directory into place. If a row
   failed because an audio file was unavailable (missing, unreadable) although the key fingerprinted it as present,
   the entry is published under the key of the file state the build saw (``token_cache.fingerprints_as_seen``), so
   the next run with the file back misses and trains that row.

Resource sizing (the job's total must fit the Ray cluster; on this machine ``ray.init(num_cpus=2)``):

* each encoder actor reserves ``cpus_per_actor`` (default 0.5) and runs torch with ``max(1, floor(cpus_per_actor))``
  intra-op threads (``StageSizing.torch_threads``), so N actors never oversubscribe the cores they reserved by more
  than rounding; with ``gpus_per_actor`` it also reserves that share of a GPU and encodes there (refused up front
  when the cluster has too few GPUs: ``data_actor_gpu_reason``);
* read/decode/filter/write tasks reserve ``IO_TASK_CPUS`` (0.25) each;
* ``num_actors * cpus_per_actor + IO_TASK_CPUS`` must not exceed the cluster's CPUs, checked up front: Ray would
  otherwise wait forever for an actor it cannot place, which looks like a hang;
* the cache is built before training starts, so training workers (``cpus_per_train_worker`` each) do not compete
  with these actors; the pool is released when the build returns. With 2 CPUs the defaults (2 actors x 0.5 + 0.25)
  leave 0.75 CPU for the driver and Ray's own repartition tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from higgs_train.console import RayProgress
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.plain_parquet import open_plain_parquet_file, read_plain_parquet
from higgs_train.data.preprocess import BatchResult, PreprocessSettings
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.record_codec import RECORD_SCHEMA, records_to_table
from higgs_train.data.row_reuse import find_reusable, index_new_records, row_context_digest, row_keys, write_entry
from higgs_train.data.shard_stream import ROWS_PER_FILE
from higgs_train.data.token_cache import (
    CACHE_FORMAT,
    QUARANTINE_FILE,
    CacheEntry,
    TokenCache,
    audio_fingerprints,
    audio_tokenizer_identity,
    compute_cache_key,
    fingerprints_as_seen,
    referenced_audio,
    text_tokenizer_identity,
)

if TYPE_CHECKING:
    from higgs_train.models import ResolvedPaths

IO_TASK_CPUS = 0.25
ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"
UNAVAILABLE = "_unavailable_audio"  # JSON {url: state} of files a failed row could not reach (file-system state)
STAT_COLUMNS = ("_encoder_calls", "_encoder_batches", "_encoded_seconds", "_cpu_seconds", "_decode_cpu_seconds")
DECODED = "_decoded"  # decode stage -> encode stage: the clips each row needs encoded, decoded (sha256, waveform)
DECODED_TYPE = pa.large_list(pa.struct([("sha256", pa.string()), ("wave", pa.large_list(pa.float32()))]))
DECODE_CPU = "_decode_cpu_seconds"  # the decode stage's CPU time for its batch, on the batch's first row
CPU_ENCODE_BATCH = 1  # clips per encoder call on CPU actors: stacking measured slower there (ClipEncoder)
GPU_ENCODE_BATCH = 16  # on a GPU actor: stacking equal-length clips fills the device (unmeasured here)
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
NEW_RECORDS_DIR = "_new"  # staging: records this build preprocessed, before write_entry merges them with reused ones
TODO_FILE = "_todo.parquet"  # staging: the manifest rows no earlier entry holds
META_COLUMNS = ["id", "row_index", "audio_seconds", ERROR_STAGE, ERROR_REASON, UNAVAILABLE, *STAT_COLUMNS]


@dataclass(frozen=True)
class CacheResult:
    """Outcome of ``build_token_cache``; ``encoder_calls`` counts this call only (0 on a hit)."""

    path: Path
    key: str
    stats: dict[str, Any]
    quarantine_counts: dict[str, int]
    hit: bool
    encoder_calls: int
    entry: CacheEntry


@dataclass(frozen=True)
class StageSizing:
    """How the build's two stages are sized: decode tasks (``IO_TASK_CPUS`` each) and the encoder actor pool."""

    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int  # manifest rows per batch (both stages)
    encode_batch_size: int  # most clips per encoder call (ClipEncoder)

    @property
    def torch_threads(self) -> int:
        """Intra-op threads per encoder actor: its whole reserved CPUs, at least one, so N actors never
        oversubscribe the cores they reserved by more than rounding."""
        return max(1, math.floor(self.cpus_per_actor))


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
    from higgs_train.data.clip_encoder import decode_clips
    from higgs_train.data.token_cache import AudioCodeStore

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
        encode_batch_size: int = CPU_ENCODE_BATCH,
    ) -> None:
        import torch

        from higgs_train.data.preprocess import SamplePreprocessor
        from higgs_train.data.token_cache import AudioCodeStore
        from higgs_train.models import load_audio_tokenizer, load_text_tokenizer

        torch.set_num_threads(torch_threads)
        limits = AudioLimits(**settings["limits"])
        self.preprocessor = SamplePreprocessor(
            load_text_tokenizer(tokenizer_path),
            load_audio_tokenizer(audio_tokenizer_path, device=device),
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
        out = batch_output(self.preprocessor.process_batch(batch.to_pylist(), decoded), decode_cpu)
        if self.progress is not None:
            self.progress.add.remote(batch.num_rows)
        return out


def _good_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column(ERROR_REASON))).select(RECORD_SCHEMA.names)


def model_flags(model_path: str) -> tuple[bool, bool]:
    """(encode_whisper_embed, encode_audio_in_tokens) of a Higgs model config: what the records must contain."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    config = HiggsAudioConfig.from_pretrained(model_path)
    return bool(config.encode_whisper_embed), bool(config.encode_audio_in_tokens)


def model_max_positions(model_path: str) -> int:
    """The text model's ``max_position_embeddings``: the default ``max_tokens_per_row``."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    return int(HiggsAudioConfig.from_pretrained(model_path).text_config.max_position_embeddings)


def data_actor_gpu_reason(num_actors: int, gpus_per_actor: float, cluster: dict[str, float]) -> str | None:
    """Why encoder actors asking ``gpus_per_actor`` GPUs each cannot be placed on ``cluster``; None when they can.

    The one rule for ``--data_actor_gpus``, used by the train driver's resource check and the pipeline's own."""
    if gpus_per_actor <= 0:
        return None
    have = float(cluster.get("GPU", 0.0))
    need = num_actors * gpus_per_actor
    if need <= have + 1e-9:
        return None
    where = "has no GPUs" if have == 0 else f"has {have:g}"
    return (
        f"--data_actor_gpus {gpus_per_actor:g} with {num_actors} data actor(s) needs {need:g} GPU(s) but the Ray "
        f"cluster {where}; drop --data_actor_gpus to encode on CPUs, or lower dataloader_num_workers"
    )


def check_resources(num_actors: int, cpus_per_actor: float, gpus_per_actor: float = 0.0) -> None:
    """Fail fast instead of waiting forever for actors the cluster cannot place."""
    import ray

    cluster = ray.cluster_resources()
    total = float(cluster.get("CPU", 0.0))
    need = num_actors * cpus_per_actor + IO_TASK_CPUS
    if need > total + 1e-9:
        raise ValueError(
            f"token-cache build needs {need:g} CPUs ({num_actors} actors x {cpus_per_actor:g} + {IO_TASK_CPUS:g} for "
            f"read/decode/write tasks) but the Ray cluster has {total:g}; lower dataloader_num_workers or "
            "cpus_per_data_actor"
        )
    reason = data_actor_gpu_reason(num_actors, gpus_per_actor, cluster)
    if reason:
        raise ValueError(reason)


def build_token_cache(
    manifest_parquet: str | Path,
    cache_root: str | Path,
    model_paths: ResolvedPaths,
    audio_base_path: str | Path,
    limits: AudioLimits | None = None,
    num_actors: int = 1,
    cpus_per_actor: float = 0.5,
    batch_size: int = 4,
    *,
    whisper: bool | None = None,
    encode_audio_in_tokens: bool | None = None,
    max_tokens_per_row: int = 0,
    progress_label: str = "token cache",
    gpus_per_actor: float = 0.0,
    encode_batch_size: int | None = None,
) -> CacheResult:
    """Preprocess a canonical manifest into the token cache (or find it there); see the module docstring.

    ``model_paths`` is a ``models.ResolvedPaths``. ``whisper``/``encode_audio_in_tokens`` default to the model
    config's ``encode_whisper_embed``/``encode_audio_in_tokens``; ``max_tokens_per_row`` 0 means the model's
    ``max_position_embeddings`` (longer rows are quarantined, stage ``length``). Ray must be initialised by the
    caller (or is auto-initialised by Ray Data with every local CPU).

    ``gpus_per_actor`` > 0 puts the encoder actors on GPUs (decode stays on CPU tasks); ``encode_batch_size`` is
    the most clips per encoder call (default ``CPU_ENCODE_BATCH`` on CPU, ``GPU_ENCODE_BATCH`` on GPU).
    """
    from higgs_train.models import load_text_tokenizer

    if num_actors < 1 or cpus_per_actor <= 0 or batch_size < 1 or gpus_per_actor < 0:
        raise ValueError("num_actors and batch_size must be >= 1, cpus_per_actor > 0 and gpus_per_actor >= 0")
    if encode_batch_size is None:
        encode_batch_size = GPU_ENCODE_BATCH if gpus_per_actor > 0 else CPU_ENCODE_BATCH
    stage = StageSizing(num_actors, cpus_per_actor, gpus_per_actor, batch_size, encode_batch_size)
    t0 = time.perf_counter()
    cache = TokenCache(cache_root)
    cfg_whisper, cfg_audio_in = model_flags(model_paths.model_path)
    settings = PreprocessSettings(
        limits=limits or AudioLimits(),
        whisper=cfg_whisper if whisper is None else whisper,
        encode_audio_in_tokens=cfg_audio_in if encode_audio_in_tokens is None else encode_audio_in_tokens,
        max_tokens_per_row=max_tokens_per_row or model_max_positions(model_paths.model_path),
    )
    manifest = read_plain_parquet(manifest_parquet)
    urls = referenced_audio(manifest.column("messages_json").to_pylist())
    fingerprints = audio_fingerprints(urls, audio_base_path, cache.fingerprint_memo())
    audio_identity = audio_tokenizer_identity(model_paths.audio_tokenizer_path)
    text_identity = text_tokenizer_identity(load_text_tokenizer(model_paths.tokenizer_path))
    key = compute_cache_key(manifest, fingerprints, text_identity, audio_identity, settings)

    entry = cache.lookup(key)
    if entry is not None:
        cache.record_build({"key": key, "hit": True, "encoder_calls": 0, "encoded_seconds": 0.0})
        return CacheResult(entry.path, key, entry.stats, entry.stats.get("quarantine_counts", {}), True, 0, entry)

    context = row_context_digest(text_identity, audio_identity, settings, CACHE_FORMAT)
    keys = row_keys(manifest, fingerprints, context)
    reusable = find_reusable(cache.root, set(keys))
    todo = [i for i, k in enumerate(keys) if k not in reusable.by_key]
    staging = cache.staging(key)
    try:
        new_dir = staging / NEW_RECORDS_DIR
        if todo:
            todo_path = staging / TODO_FILE
            pq.write_table(manifest.take(todo), todo_path)
            meta = _preprocess(
                todo_path,
                new_dir,
                cache.code_store(audio_identity, settings),
                model_paths,
                audio_base_path,
                settings,
                stage,
                progress_label,
            )
            todo_path.unlink()
        else:  # every row is in an earlier entry: no actor starts
            meta = pa.table({c: pa.array([], OUTPUT_SCHEMA.field(c).type) for c in META_COLUMNS})
        files, new_places = index_new_records(new_dir) if new_dir.is_dir() else ([], {})
        places = []
        for i, ridx in enumerate(manifest.column("row_index").to_pylist()):
            if keys[i] in reusable.by_key:
                places.append((ridx, keys[i], reusable.where(keys[i])))
            elif ridx in new_places:
                f, group, offset = new_places[ridx]
                places.append((ridx, keys[i], (files[f], group, offset)))
        rows_ok = write_entry(staging, places)
        shutil.rmtree(new_dir, ignore_errors=True)
        quarantine = _quarantine(meta)
        quarantine.write(staging / QUARANTINE_FILE)
        seen = fingerprints_as_seen(fingerprints, _unavailable(meta))
        if seen != fingerprints:  # a file vanished mid-build: key the entry by what the build saw (token_cache)
            key = compute_cache_key(manifest, seen, text_identity, audio_identity, settings)
        stats = _stats(meta, quarantine, time.perf_counter() - t0, stage)
        stats.update(
            key=key,
            settings=settings.identity(),
            audio_files=len(urls),
            rows_total=manifest.num_rows,
            rows_ok=rows_ok,
            rows_reused=manifest.num_rows - len(todo),
            rows_preprocessed=len(todo),
            rows_per_second=manifest.num_rows / stats["wall_seconds"] if stats["wall_seconds"] > 0 else None,
        )
        entry = cache.publish(key, staging, stats)
    except BaseException:
        cache.discard(staging)
        raise
    cache.record_build(
        {
            "key": key,
            "hit": False,
            "encoder_calls": stats["encoder_calls"],
            "encoded_seconds": stats["encoded_audio_seconds"],
        }
    )
    return CacheResult(entry.path, key, entry.stats, stats["quarantine_counts"], False, stats["encoder_calls"], entry)


def _preprocess(
    manifest_parquet: Path,
    out_dir: Path,
    code_store: Any,
    model_paths: ResolvedPaths,
    audio_base_path: str | Path,
    settings: PreprocessSettings,
    stage: StageSizing,
    progress_label: str = "token cache",
) -> pa.Table:
    """Run the actor pool over ``manifest_parquet``: good records go to ``out_dir``; returns every row's meta.

    The driver's console shows the rows done, rate and ETA meanwhile (``console.RayProgress``): on a real data set
    this stage is minutes of silence otherwise."""
    import ray

    # The driver owns the cluster (higgs_train.ray_session.init_ray); never a stray local one.
    if not ray.is_initialized():
        raise RuntimeError("build_token_cache needs a running Ray: call higgs_train.ray_session.init_ray first")
    check_resources(stage.num_actors, stage.cpus_per_actor, stage.gpus_per_actor)
    total = open_plain_parquet_file(manifest_parquet).metadata.num_rows
    with RayProgress(progress_label, total) as progress:
        processed = _preprocessed(
            manifest_parquet,
            code_store,
            model_paths,
            audio_base_path,
            settings,
            stage,
            progress.counter,
        )
    meta = pa.Table.from_pylist(processed.select_columns(META_COLUMNS).take_all())
    processed.map_batches(_good_rows, batch_format="pyarrow", num_cpus=IO_TASK_CPUS).write_parquet(
        str(out_dir), min_rows_per_file=ROWS_PER_FILE, ray_remote_args={"num_cpus": IO_TASK_CPUS}
    )
    return meta


def _preprocessed(
    manifest_parquet: Path,
    code_store: Any,
    model_paths: ResolvedPaths,
    audio_base_path: str | Path,
    settings: PreprocessSettings,
    stage: StageSizing,
    progress: Any,
) -> Any:
    """The pipeline's output, materialized (every row with its meta columns): read -> decode (CPU tasks) ->
    encode + records (the actor pool, on GPUs with ``gpus_per_actor``)."""
    import ray

    decoded = (
        ray.data.read_parquet(str(manifest_parquet), num_cpus=IO_TASK_CPUS)
        .repartition(target_num_rows_per_block=stage.batch_size)
        .map_batches(
            decode_batch,
            fn_kwargs={
                "audio_base_path": str(audio_base_path),
                "sampling_rate": audio_tokenizer_sampling_rate(model_paths.audio_tokenizer_path),
                "limits": dataclasses.asdict(settings.limits),
                "code_store_dir": str(code_store.root),
            },
            num_cpus=IO_TASK_CPUS,
            batch_size=stage.batch_size,
            batch_format="pyarrow",
        )
    )
    gpu = {"num_gpus": stage.gpus_per_actor} if stage.gpus_per_actor > 0 else {}
    return decoded.map_batches(
        PreprocessActor,
        fn_constructor_kwargs={
            "tokenizer_path": model_paths.tokenizer_path,
            "audio_tokenizer_path": model_paths.audio_tokenizer_path,
            "audio_base_path": str(audio_base_path),
            "settings": {**dataclasses.asdict(settings), "limits": dataclasses.asdict(settings.limits)},
            "code_store_dir": str(code_store.root),
            "torch_threads": stage.torch_threads,
            "progress": progress,
            "device": "cuda" if stage.gpus_per_actor > 0 else "cpu",
            "encode_batch_size": stage.encode_batch_size,
        },
        compute=ray.data.ActorPoolStrategy(size=stage.num_actors),
        num_cpus=stage.cpus_per_actor,
        batch_size=stage.batch_size,
        batch_format="pyarrow",
        **gpu,
    ).materialize()


def audio_tokenizer_sampling_rate(path: str) -> int:
    """The audio tokenizer's sample rate from its ``config.json`` (a directory or a hub id, as upstream's loader
    takes), so the decode stage loads no model."""
    config_path = Path(path) / "config.json"
    if not Path(path).is_dir():
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(path, "config.json"))
    return int(json.loads(config_path.read_text())["sample_rate"])


def _quarantine(meta: pa.Table) -> Quarantine:
    quarantine = Quarantine()
    if meta.num_rows == 0:
        return quarantine
    bad = meta.filter(pc.is_valid(meta.column(ERROR_REASON))).sort_by("row_index")
    for row in bad.to_pylist():
        quarantine.add(row["id"], row["row_index"], row[ERROR_STAGE], row[ERROR_REASON])
    return quarantine


def _unavailable(meta: pa.Table) -> dict[str, str]:
    """url -> state of every file some failed row could not reach."""
    out: dict[str, str] = {}
    if meta.num_rows:
        for raw in meta.column(UNAVAILABLE).to_pylist():
            if raw:
                out.update(json.loads(raw))
    return out


def _stats(meta: pa.Table, quarantine: Quarantine, wall: float, stage: StageSizing) -> dict[str, Any]:
    def total(name: str) -> float:
        return float(pc.sum(meta.column(name)).as_py() or 0.0) if meta.num_rows else 0.0

    rows_total = meta.num_rows
    rows_bad = len(quarantine)
    cpu = total("_cpu_seconds")
    decode_cpu = total(DECODE_CPU)
    encoded = total("_encoded_seconds")
    return {
        "rows_total": rows_total,
        "rows_ok": rows_total - rows_bad,
        "rows_quarantined": rows_bad,
        "quarantine_counts": quarantine.counts(),
        "encoder_calls": int(total("_encoder_calls")),
        "encoder_batches": int(total("_encoder_batches")),
        "encoded_audio_seconds": encoded,
        "audio_seconds": total("audio_seconds"),
        "cpu_seconds": cpu,  # the encoder actors' (encode + records)
        "decode_cpu_seconds": decode_cpu,
        "wall_seconds": wall,
        "audio_seconds_per_cpu_second": encoded / (cpu + decode_cpu) if cpu + decode_cpu > 0 else None,
        "rows_per_second": rows_total / wall if wall > 0 else None,
        **dataclasses.asdict(stage),
    }


def describe(result: CacheResult) -> str:
    """One line for logs."""
    return json.dumps(
        {
            "key": result.key,
            "hit": result.hit,
            "rows_ok": result.stats.get("rows_ok"),
            "quarantined": result.quarantine_counts,
            "encoder_calls": result.encoder_calls,
        }
    )
