"""Build the token cache with Ray Data: canonical manifest -> actor pool of ``SamplePreprocessor`` -> Parquet.

Why Ray Data with a fixed actor pool: the audio tokenizer is hundreds of MB and takes seconds to load, so it is
loaded once per actor (``PreprocessActor.__init__``) and fed a stream of small batches; Ray Data keeps the pool busy
and bounds memory, and the same code scales from this 2-CPU box to a cluster.

Flow (``build_token_cache``):

1. The driver reads the manifest's key columns, fingerprints the referenced audio and computes the cache key
   (``cache_key``). A complete entry for the key is a hit: returned without starting any actor.
2. ``from_arrow`` of the rows to preprocess (the driver holds them; no file is read by a task) ->
   ``repartition(target_num_rows_per_block=batch_size)`` (the rows arrive as a single block, and Ray hands a
   whole block to one actor; small blocks spread rows over the pool) -> the decode stage
   (``pipeline_stages.decode_batch``: CPU tasks that decode and resample the clips the code store lacks) -> the
   encode stage (``map_batches(PreprocessActor, ActorPoolStrategy(size=num_actors))``, fractional ``num_cpus``,
   ``num_gpus`` with ``--data_actor_gpus``: the batch's clips go through ``ClipEncoder``, one per call unless a
   caller asks for more, then each row becomes a record). Every input row comes back: good rows as records, failed
   rows with ``error_stage``/``error_reason`` set and null data. Each batch's cost (clips encoded, encoder calls, encoded
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
   the entry is published under the key of the file state the build saw (``cache_key.fingerprints_as_seen``), so
   the next run with the file back misses and trains that row.

Where it runs: every stage that touches a file (decode, encode, write) is pinned to the driver's node by default
(``on_driver_node``, ``--data_nodes driver``), because the audio, the code store and the staging directory are on
that node's disk; a cluster then needs no shared disk for the build. ``--data_nodes any`` lets Ray place them
anywhere, for clusters that mount the audio and ``--cache_dir`` at the same paths on every node.

This module is the driver's side of the build (keys, reuse, the staging directory, quarantine, stats,
publication); the code Ray runs per batch is ``pipeline_stages``, and how big the stages are and whether the
cluster can hold them is ``stage_sizing``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from higgs_train.console import RayProgress
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.cache_key import (
    CACHE_FORMAT,
    audio_fingerprints,
    audio_tokenizer_identity,
    compute_cache_key,
    fingerprints_as_seen,
    referenced_audio,
    text_tokenizer_identity,
)
from higgs_train.data.pipeline_stages import (
    DECODE_CPU,
    ERROR_REASON,
    ERROR_STAGE,
    META_COLUMNS,
    OUTPUT_SCHEMA,
    UNAVAILABLE,
    PreprocessActor,
    decode_batch,
    good_rows,
)
from higgs_train.data.plain_parquet import read_plain_parquet
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.data.quarantine import Quarantine
from higgs_train.data.row_reuse import find_reusable, index_new_records, row_context_digest, row_keys, write_entry
from higgs_train.data.shard_stream import ROWS_PER_FILE
from higgs_train.data.stage_sizing import (
    ENCODE_BATCH,
    IO_TASK_CPUS,
    StageSizing,
    check_resources,
)
from higgs_train.data.token_cache import QUARANTINE_FILE, CacheEntry, TokenCache
from higgs_train.model_loading import audio_tokenizer_config, load_text_tokenizer
from higgs_train.ray_session import on_this_node

if TYPE_CHECKING:
    from higgs_train.model_loading import ResolvedPaths

NEW_RECORDS_DIR = "_new"  # staging: records this build preprocessed, before write_entry merges them with reused ones


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


def model_flags(model_path: str) -> tuple[bool, bool]:
    """(encode_whisper_embed, encode_audio_in_tokens) of a Higgs model config: what the records must contain."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    config = HiggsAudioConfig.from_pretrained(model_path)
    return bool(config.encode_whisper_embed), bool(config.encode_audio_in_tokens)


def model_max_positions(model_path: str) -> int:
    """The text model's ``max_position_embeddings``: the default ``max_tokens_per_row``."""
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig

    return int(HiggsAudioConfig.from_pretrained(model_path).text_config.max_position_embeddings)


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
    on_driver_node: bool = True,
) -> CacheResult:
    """Preprocess a canonical manifest into the token cache (or find it there); see the module docstring.

    ``model_paths`` is a ``models.ResolvedPaths``. ``whisper``/``encode_audio_in_tokens`` default to the model
    config's ``encode_whisper_embed``/``encode_audio_in_tokens``; ``max_tokens_per_row`` 0 means the model's
    ``max_position_embeddings`` (longer rows are quarantined, stage ``length``). Ray must be initialised by the
    caller (or is auto-initialised by Ray Data with every local CPU).

    ``gpus_per_actor`` > 0 puts the encoder actors on GPUs (decode stays on CPU tasks); ``encode_batch_size`` is
    the most clips per encoder call (default ``ENCODE_BATCH``, one, on either device: see there why).

    ``on_driver_node`` (``--data_nodes driver``, the default) keeps every task and actor of the build on this
    process's node: they read the manifest, the audio and the code store and write the records, all paths on this
    node's disk, which other nodes of a cluster without a shared disk do not have. False lets Ray place them
    anywhere, for clusters that mount the audio and the cache at the same paths on every node.
    """
    if num_actors < 1 or cpus_per_actor <= 0 or batch_size < 1 or gpus_per_actor < 0:
        raise ValueError("num_actors and batch_size must be >= 1, cpus_per_actor > 0 and gpus_per_actor >= 0")
    if encode_batch_size is None:
        encode_batch_size = ENCODE_BATCH
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
            meta = _preprocess(
                manifest.take(todo),
                new_dir,
                cache.code_store(audio_identity, settings),
                model_paths,
                audio_base_path,
                settings,
                stage,
                progress_label,
                on_driver_node,
            )
        else:  # every row is in an earlier entry: no actor starts
            meta = pa.table({c: pa.array([], OUTPUT_SCHEMA.field(c).type) for c in META_COLUMNS})
        files, new_places = index_new_records(new_dir) if new_dir.is_dir() else ([], {})
        check_records_written(meta, new_places, new_dir)
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
    rows: pa.Table,
    out_dir: Path,
    code_store: Any,
    model_paths: ResolvedPaths,
    audio_base_path: str | Path,
    settings: PreprocessSettings,
    stage: StageSizing,
    progress_label: str = "token cache",
    on_driver_node: bool = True,
) -> pa.Table:
    """Run the actor pool over the manifest ``rows``: good records go to ``out_dir``; returns every row's meta.

    The driver's console shows the rows done, rate and ETA meanwhile (``console.RayProgress``): on a real data set
    this stage is minutes of silence otherwise."""
    import ray

    # The driver owns the cluster (higgs_train.ray_session.init_ray); never a stray local one.
    if not ray.is_initialized():
        raise RuntimeError("build_token_cache needs a running Ray: call higgs_train.ray_session.init_ray first")
    check_resources(stage.num_actors, stage.cpus_per_actor, stage.gpus_per_actor, on_driver_node)
    placement = on_this_node() if on_driver_node else {}
    with RayProgress(progress_label, rows.num_rows) as progress:
        processed = _preprocessed(
            rows,
            code_store,
            model_paths,
            audio_base_path,
            settings,
            stage,
            progress.counter,
            placement,
        )
    meta = pa.Table.from_pylist(processed.select_columns(META_COLUMNS).take_all())
    processed.map_batches(good_rows, batch_format="pyarrow", num_cpus=IO_TASK_CPUS, **placement).write_parquet(
        str(out_dir), min_rows_per_file=ROWS_PER_FILE, ray_remote_args={"num_cpus": IO_TASK_CPUS, **placement}
    )
    return meta


def _preprocessed(
    rows: pa.Table,
    code_store: Any,
    model_paths: ResolvedPaths,
    audio_base_path: str | Path,
    settings: PreprocessSettings,
    stage: StageSizing,
    progress: Any,
    placement: dict[str, Any],
) -> Any:
    """The pipeline's output, materialized (every row with its meta columns): the rows -> decode (CPU tasks) ->
    encode + records (the actor pool, on GPUs with ``gpus_per_actor``). ``placement`` (Ray remote options) goes to
    every stage that touches a file; the repartition between them only moves blocks.

    The rows enter from this process's memory (``from_arrow``: the driver already holds the manifest), not by a
    ``read_parquet`` of a file: a read runs as tasks Ray places (its metadata sampling task ignores the read's
    remote options), which on a cluster without a shared disk would look for the file on a node that lacks it; and
    Ray 2.60's default Parquet reader also starts a pool of ``FooterReader`` actors per read (32 here: a quick-test
    job ran 30-31 worker processes with it, 17-19 without, 7-26 s longer)."""
    import ray

    decoded = (
        ray.data.from_arrow(rows)
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
            **placement,
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
        **placement,
    ).materialize()


class LostRecordsError(RuntimeError):
    """Rows the pipeline preprocessed without error whose records are not in the staging directory."""


def check_records_written(meta: pa.Table, written: dict[int, Any], new_dir: Path) -> None:
    """Refuse to publish an entry that lacks records of rows that were preprocessed without error.

    Why: Ray reports a write task done wherever it ran; one that ran on a node that does not share this node's disk
    wrote its part there, and the entry would silently hold fewer rows than the build accepted (no error, nothing
    quarantined: seen with ``--data_nodes any`` on two nodes that share no disk)."""
    if meta.num_rows == 0:
        return
    good = meta.filter(pc.is_null(meta.column(ERROR_REASON))).column("row_index").to_pylist()
    lost = sorted(int(r) for r in good if int(r) not in written)
    if lost:
        shown = ", ".join(map(str, lost[:5])) + (", ..." if len(lost) > 5 else "")
        raise LostRecordsError(
            f"token-cache build: {len(lost)} of {len(good)} preprocessed rows have no record in {new_dir} (row_index "
            f"{shown}); their write ran where this process cannot see its files. On a cluster without a shared "
            "disk keep --data_nodes driver (the default); with --data_nodes any, --cache_dir must be the same shared "
            "folder on every node."
        )


def audio_tokenizer_sampling_rate(path: str) -> int:
    """The audio tokenizer's sample rate from its ``config.json``, so the decode stage loads no model."""
    return int(audio_tokenizer_config(path)["sample_rate"])


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
