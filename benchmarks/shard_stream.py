"""Streaming workers and row-level reuse at scale: worker memory, time to first batch, rows reprocessed, data wait.

Prints, for a synthetic token cache of ``--rows`` rows (and ``--small-rows`` for comparison) made of the records of
the generated sample data repeated (a few real clips, real records the embedded model trains on):

1. worker peak memory (resident-memory growth over the imports, sampled every step, in a fresh process) while streaming rank 0's shard of a
   2-worker plan for ``--steps`` steps, and, with ``--before``, the old path (``CacheEntry.records()``) at the
   same sizes;
2. time from worker start to its first batch (open the entry, read the lengths, plan, read step 0);
3. rows reprocessed (and build time) after editing one row of the ``--rows``-row manifest;
4. with ``--data-wait``: the data-wait share of 2 Ray Train workers training the embedded model for ``--train-steps``
   steps, streaming from ``s3://`` (moto on loopback), from the local cache, and (baseline) from records in memory.

The big cache is seeded by running the real build with a stand-in preprocessing stage that copies a sample record
for each row (preprocessing 100k rows for real takes ~30 minutes on 2 CPUs); the measured rebuild after the edit
runs the real code. Usage: ``python benchmarks/shard_stream.py --rows 100000 [--before] [--data-wait]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(work: Path, rows_list: list[int]) -> dict:
    """Sample cache (real build) and, per size, a manifest of that many rows and its complete cache entry."""
    import ray

    from higgs_train.data import ray_pipeline
    from higgs_train.data.manifest import convert_manifest
    from higgs_train.data.pipeline_stages import META_COLUMNS, OUTPUT_SCHEMA
    from higgs_train.data.record_codec import RECORD_SCHEMA
    from higgs_train.embedded.sample_data import create_sample_data
    from higgs_train.model_loading import resolve_paths

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    paths = resolve_paths("embedded", "embedded")
    data = create_sample_data(work / "data", utterances_per_speaker=4)
    sample_manifest = work / "sample.parquet"
    convert_manifest(data["train"], sample_manifest)
    sample = ray_pipeline.build_token_cache(sample_manifest, work / "cache", paths, data["audio_base_path"])
    records = sample.entry.table()
    by_id = {rid: i for i, rid in enumerate(records.column("id").to_pylist())}
    canonical = pq.read_table(sample_manifest)
    real_preprocess = ray_pipeline._preprocess

    def copy_sample_records(todo_path, out_dir, *args, **kwargs):  # the stand-in used only to seed big caches
        todo = pq.read_table(todo_path)
        src = [by_id[rid.split("#")[0]] for rid in todo.column("id").to_pylist()]
        table = records.take(pa.array(src)).cast(RECORD_SCHEMA)
        table = table.set_column(1, "row_index", todo.column("row_index"))
        table = table.set_column(0, "id", todo.column("id"))
        out_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out_dir / "seed.parquet")
        return pa.table({c: pa.array([], OUTPUT_SCHEMA.field(c).type) for c in META_COLUMNS})

    out = {"sample_rows": records.num_rows, "audio_base": str(data["audio_base_path"]), "sizes": {}}
    for n in rows_list:
        manifest = work / f"manifest_{n}.parquet"
        idx = [i % canonical.num_rows for i in range(n)]
        table = canonical.take(pa.array(idx))
        ids = [f"{rid}#{i}" for i, rid in enumerate(table.column("id").to_pylist())]
        table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids))
        table = table.set_column(table.schema.get_field_index("row_index"), "row_index", pa.array(range(n), pa.int64()))
        pq.write_table(table, manifest)
        ray_pipeline._preprocess = copy_sample_records
        try:
            t0 = time.perf_counter()
            built = ray_pipeline.build_token_cache(manifest, work / "cache", paths, data["audio_base_path"])
            seed_s = time.perf_counter() - t0
        finally:
            ray_pipeline._preprocess = real_preprocess
        out["sizes"][n] = {"manifest": str(manifest), "key": built.key, "entry": str(built.path), "seed_s": seed_s}
    ray.shutdown()
    return out


def rss_mb() -> float:
    """Current resident memory (the peak so far would include the transient peak of importing torch)."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker_probe(entry: str, mode: str, steps: int) -> None:
    """Runs in a fresh process: what one of 2 workers holds while it plans and reads ``steps`` steps."""
    import numpy as np  # noqa: F401  (imports before the baseline)

    from higgs_train.data import preprocess, shard_stream  # noqa: F401
    from higgs_train.data.batching import plan_epoch

    base = rss_mb()
    t0 = time.perf_counter()
    if mode == "stream":
        stream = shard_stream.ShardStream(shard_stream.EntryReader(entry))
        plan = plan_epoch(stream.lengths(), max_tokens_per_batch=0, batch_size=4, seed=0, epoch=0, num_workers=2)[0]
        stream.schedule([[b] for b in plan])
        records = stream
    else:
        from higgs_train.data.token_cache import CacheEntry

        cache_entry = CacheEntry(Path(entry).name, Path(entry), {})
        records = cache_entry.records()
        plan = plan_epoch(cache_entry.lengths(), batch_size=4, seed=0, epoch=0, num_workers=2)[0]
    first = [records[i] for i in plan[0]]
    first_s = time.perf_counter() - t0
    tokens = sum(int(r["num_tokens"]) for r in first)
    peak = rss_mb()
    for batch in plan[1:steps]:
        tokens += sum(int(records[i]["num_tokens"]) for i in batch)
        peak = max(peak, rss_mb())  # sampled every step (ru_maxrss would carry the parent's peak over the fork)
    print(json.dumps({"first_batch_s": first_s, "peak_mb_over_imports": peak - base, "tokens": tokens}))


def probe(entry: str, mode: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", entry, "--mode", mode, "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def edit_one_row(work: Path, info: dict, n: int) -> dict:
    import ray

    from higgs_train.data.ray_pipeline import build_token_cache
    from higgs_train.model_loading import resolve_paths

    manifest = pq.read_table(info["sizes"][n]["manifest"])
    messages = manifest.column("messages_json").to_pylist()
    row = n // 2
    parsed = json.loads(messages[row])
    target = next(m for m in reversed(parsed) if m["role"] == "user")
    target["content"] = str(target["content"]) + " Edited."
    messages[row] = json.dumps(parsed)
    edited = work / f"manifest_{n}_edited.parquet"
    pq.write_table(
        manifest.set_column(manifest.schema.get_field_index("messages_json"), "messages_json", pa.array(messages)),
        edited,
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        t0 = time.perf_counter()
        result = build_token_cache(edited, work / "cache", resolve_paths("embedded", "embedded"), info["audio_base"])
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "rows": n,
        "rows_preprocessed": result.stats["rows_preprocessed"],
        "rows_reused": result.stats["rows_reused"],
        "rebuild_s": wall,
    }


def wait_worker(cfg: dict) -> None:
    """One Ray Train worker training the embedded model on records from ``cfg['root']`` (or all in memory)."""
    import torch

    from higgs_train.config import TrainingConfig
    from higgs_train.data.shard_stream import open_shard_stream
    from higgs_train.data.token_cache import CacheEntry
    from higgs_train.driver.worker import RayWorkerContext
    from higgs_train.training.trainer import HiggsAudioTrainer

    torch.set_num_threads(1)
    context = RayWorkerContext.current()
    if cfg["root"] == "memory":
        records = CacheEntry(cfg["key"], Path(cfg["entry"]), {}).records()
    else:
        records = open_shard_stream(cfg["root"], cfg["key"])
    steps = cfg["steps"]
    config = TrainingConfig(
        output_dir=cfg["out"],
        batch_size=4,
        max_steps=steps,
        log_every_steps=steps,
        save_every_steps=10 * steps,
        eval_every_steps=10 * steps,
        warmup_steps=1,
    )
    val = [records[0]] if cfg["root"] == "memory" else records.reader.read([0])  # every rank reports at saves
    result = HiggsAudioTrainer(config, records, val, context).train()
    if context.rank == 0:
        Path(cfg["out"], "share.json").write_text(json.dumps(result.metrics["train/data_wait_share"]))


def data_wait_shares(info: dict, n: int, steps: int) -> dict[str, float]:
    """Data-wait share of 2 workers over ``steps`` steps, per source of the same ``n``-row entry."""
    import os
    import socket

    import boto3
    import ray
    from moto.server import ThreadedMotoServer
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from higgs_train.data.shard_stream import publish_entry

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    size = info["sizes"][n]
    publish_entry(size["entry"], "s3://bench/cache")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    shares = {}
    try:
        sources = {
            "s3:// (moto)": "s3://bench/cache",
            "local cache": str(Path(size["entry"]).parent),
            "in memory": "memory",
        }
        for name, root in sources.items():
            out = Path(info["audio_base"]).parents[1] / f"wait_{abs(hash(name))}"
            out.mkdir(parents=True, exist_ok=True)
            cfg = {"root": root, "key": size["key"], "entry": size["entry"], "steps": steps, "out": str(out)}
            TorchTrainer(
                wait_worker,
                train_loop_config=cfg,
                torch_config=TorchConfig(backend="gloo"),
                scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                run_config=RunConfig(name=f"wait{abs(hash(name))}", storage_path=str(out / "ray")),
            ).fit()
            shares[name] = json.loads((out / "share.json").read_text())
    finally:
        ray.shutdown()
        server.stop()
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-rows", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=500, help="steps of rank 0 read by the memory probe")
    parser.add_argument("--before", action="store_true", help="also measure CacheEntry.records() (the old path)")
    parser.add_argument("--data-wait", action="store_true")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--work", default="/tmp/higgs_shard_stream_bench")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        worker_probe(args.probe, args.mode, args.steps)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted({args.small_rows, args.rows})
    info = prepare(work, sizes)
    print(
        f"sample records: {info['sample_rows']} (repeated); seeding caches took "
        + ", ".join(f"{n} rows {info['sizes'][n]['seed_s']:.1f} s" for n in sizes)
    )
    results = {}
    for n in sizes:
        results[n] = probe(info["sizes"][n]["entry"], "stream", args.steps)
        line = f"stream {n:>7} rows: peak +{results[n]['peak_mb_over_imports']:.0f} MB, first batch "
        print(line + f"{results[n]['first_batch_s']:.2f} s")
        if args.before:
            before = probe(info["sizes"][n]["entry"], "records", args.steps)
            print(
                f"before {n:>7} rows: peak +{before['peak_mb_over_imports']:.0f} MB, first batch "
                f"{before['first_batch_s']:.2f} s (CacheEntry.records())"
            )
    small, big = results[min(sizes)], results[max(sizes)]
    growth = big["peak_mb_over_imports"] - small["peak_mb_over_imports"]
    print(f"worker peak memory, {max(sizes)} vs {min(sizes)} rows: {growth:+.0f} MB (goal: within +100 MB)")
    print(f"time to first batch at {max(sizes)} rows: {big['first_batch_s']:.2f} s (goal: < 60 s)")
    edit = edit_one_row(work, info, max(sizes))
    print(
        f"edit 1 row of {edit['rows']}: {edit['rows_preprocessed']} row(s) preprocessed, {edit['rows_reused']} "
        f"reused, rebuild {edit['rebuild_s']:.1f} s (goal: 1 row)"
    )
    if args.data_wait:
        for name, share in data_wait_shares(info, min(sizes), args.train_steps).items():
            print(f"data-wait share, 2 workers, {name}: {share:.1%} (goal with s3: <= 5%)")


if __name__ == "__main__":
    main()
