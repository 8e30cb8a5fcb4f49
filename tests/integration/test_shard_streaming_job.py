"""Two Ray Train workers stream their shards of one token-cache entry, from a local cache and from ``s3://`` (moto
on loopback): each runs the real ``HiggsAudioTrainer`` on a ``ShardStream``; every row is read once per epoch over
the two workers, and both run the same number of steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from higgs_train.config import TrainingConfig
from higgs_train.data.batching import build_epoch_plan
from higgs_train.data.ray_pipeline import build_token_cache
from higgs_train.data.shard_stream import publish_entry
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import resolve_paths

pytestmark = pytest.mark.integration

EPOCHS = 2


def stream_worker(cfg: dict) -> None:
    """The production worker path (RayWorkerContext, open_shard_stream, HiggsAudioTrainer), logging what it read."""
    from higgs_train.data.shard_stream import open_shard_stream
    from higgs_train.driver.worker import RayWorkerContext
    from higgs_train.training.trainer import HiggsAudioTrainer

    torch.set_num_threads(1)
    context = RayWorkerContext.current()
    stream = open_shard_stream(cfg["root"], cfg["key"], log_reads=True)
    # Without validation data only rank 0 has a checkpoint to report; every rank must still join the collective
    # report at checkpoint steps (it used to hang here).
    val = stream.reader.read([0, 1]) if cfg["with_val"] else []
    trainer = HiggsAudioTrainer(TrainingConfig.from_dict(cfg["config"]), stream, val, context)
    result = trainer.train()
    stream.close()
    report = {"reads": stream.read_log, "steps_per_epoch": trainer.steps_per_epoch, "steps": result.state.global_step}
    (Path(cfg["out"]) / f"rank{context.rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def ray_cluster(s3):
    """Started after moto: Ray's worker processes inherit the AWS_* variables of the driver at ``ray.init``."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(ray_cluster, tmp_path_factory):
    from higgs_train.data.manifest import convert_manifest

    root = tmp_path_factory.mktemp("streaming")
    data = create_sample_data(root / "data", utterances_per_speaker=4)
    manifest = root / "train.parquet"
    convert_manifest(data["train"], manifest)
    paths = resolve_paths("embedded", "embedded")
    return build_token_cache(manifest, root / "cache", paths, data["audio_base_path"], num_actors=2, batch_size=2)


def run_two_workers(tmp_path: Path, root: str, key: str, with_val: bool = True) -> list[dict]:
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = TrainingConfig(output_dir=str(tmp_path / "run"), batch_size=2, num_epochs=EPOCHS, warmup_steps=1)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not importable on workers
    try:
        fit = TorchTrainer(
            stream_worker,
            train_loop_config={
                "config": config.to_dict(),
                "root": root,
                "key": key,
                "out": str(tmp_path),
                "with_val": with_val,
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="stream", storage_path=str(tmp_path / "ray_results")),
        ).fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert fit.error is None, fit.error
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)], config


def check_every_row_once_per_epoch(reports: list[dict], config: TrainingConfig, entry_path: Path) -> None:
    rows = pq.read_table(entry_path / "rows.parquet", columns=["row_index", "num_tokens"])
    row_index = rows.column("row_index").to_pylist()
    assert reports[0]["steps_per_epoch"] == reports[1]["steps_per_epoch"] > 0  # equal step counts
    assert reports[0]["steps"] == reports[1]["steps"] == EPOCHS * reports[0]["steps_per_epoch"]
    for epoch in range(EPOCHS):
        plan = build_epoch_plan(
            rows.column("num_tokens").to_numpy(),
            batch_size=config.batch_size,
            max_tokens_per_batch=config.max_tokens_per_batch,
            seed=config.seed,
            epoch=epoch,
            num_workers=2,
        )
        read = sorted(r for report in reports for r in report["reads"][epoch])
        assert set(read) == set(row_index)  # every row of the entry
        assert read == sorted(row_index + [row_index[i] for i in plan.repeated])  # once (plus the plan's repeats)


def test_two_workers_stream_their_shards_from_a_local_cache_without_validation_data(cache, tmp_path):
    reports, config = run_two_workers(tmp_path, str(cache.path.parent), cache.key, with_val=False)
    check_every_row_once_per_epoch(reports, config, cache.path)


def test_two_workers_stream_their_shards_from_s3(cache, tmp_path, s3):
    root = f"{s3}/token_cache"
    assert publish_entry(cache.path, root) == f"{root}/{cache.key}"
    reports, config = run_two_workers(tmp_path, root, cache.key)
    check_every_row_once_per_epoch(reports, config, cache.path)
