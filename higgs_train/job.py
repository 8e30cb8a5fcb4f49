"""The training job's driver: data -> token cache (Ray Data) -> TorchTrainer (Ray Train) -> artifacts (MLflow).

This is the only module that starts or joins a Ray cluster. Order of work:

1. resolve the run (quick-test shrink, run name, storage, auto-resume), open the MLflow run;
2. canonicalise the manifests and build (or reuse) the token caches in Ray Data CPU actors, quarantining bad rows;
3. fit a ``TorchTrainer`` whose workers run ``HiggsAudioTrainer``;
4. log the final adapter, resolved config, loss curve, data reports; end the MLflow run FINISHED or FAILED.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.config import TrainingConfig

logger = logging.getLogger(__name__)

COMPLETED_MARKER = "COMPLETED"


@dataclass
class JobResult:
    """Where things went and the final metrics."""

    output_dir: Path
    adapter_dir: Path
    run_name: str
    mlflow_run_id: str | None
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    quarantined: int = 0
    resumed_from: str | None = None

    def summary(self) -> str:
        keys = ("total_loss", "text_loss", "audio_loss", "val_loss", "val_audio_accuracy")
        shown = ", ".join(f"{k}={self.metrics[k]:.4f}" for k in keys if k in self.metrics)
        return (
            f"run {self.run_name} finished: adapter at {self.adapter_dir}; {shown}; quarantined rows: "
            f"{self.quarantined}; MLflow run {self.mlflow_run_id} at {self.tracking_uri}"
        )


def storage_root(config: TrainingConfig) -> str:
    """Ray Train storage: ``storage_path`` (local, NFS, s3://, gs://) or ``<output_dir>/ray_results``."""
    if config.storage_path:
        return config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    return str((Path(config.output_dir) / "ray_results").resolve())


def resolve_run(config: TrainingConfig) -> tuple[TrainingConfig, str, str | None]:
    """Apply --quick_test, pick the run name and the checkpoint to resume from (explicit or the run's latest).

    Auto-resume looks only at the run's own Ray Train checkpoint folders on its storage (local, ``file://``,
    ``s3://``, ...) and takes the newest that verifies against its manifest (``training.checkpoint_store``).
    """
    from higgs_train.config import check_run_name
    from higgs_train.training.checkpoint import verify_checkpoint
    from higgs_train.training.checkpoint_store import (
        filesystem_and_path,
        find_resume_checkpoint,
        has_marker,
        remove_debris,
    )

    if config.quick_test:
        config = config.apply_quick_test()
    run_name = check_run_name(config.run_name or Path(config.output_dir).resolve().name)
    storage = storage_root(config)
    if has_marker(storage, run_name, COMPLETED_MARKER) and not config.resume_from:
        suffix = 2
        while has_marker(storage, f"{run_name}-{suffix}", COMPLETED_MARKER):
            suffix += 1
        logger.info("run %s already completed; starting %s-%d", run_name, run_name, suffix)
        run_name = f"{run_name}-{suffix}"
    resume = config.resume_from or None
    if resume is None:
        remove_debris(storage, run_name)  # partial uploads left by a crash (Ray never registered them)
        found = find_resume_checkpoint(storage, run_name)
        resume = found.location if found else None
        if resume:
            logger.info("run %s has checkpoints: resuming from %s (step %d)", run_name, resume, found.global_step)
    elif "://" not in resume:
        resume = str(Path(resume).resolve())  # workers may run in another working directory
    if resume:  # refuse a bad --resume_from before any work, where it lies
        filesystem, path = filesystem_and_path(resume)
        verify_checkpoint(path, filesystem)
    return config.replace(run_name=run_name, resume_from=resume or ""), run_name, resume


def _submitted_job_env_vars() -> dict[str, str]:
    """Env vars of the runtime env this driver was submitted with (``ray job submit``); empty outside a job.

    Ray's job supervisor hands the job's config to the entrypoint as JSON in ``RAY_JOB_CONFIG_JSON_ENV_VAR``.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return dict(env_vars) if isinstance(env_vars, dict) else {}


def init_ray(config: TrainingConfig) -> None:
    """Join the cluster this process runs in (``ray job submit`` sets RAY_ADDRESS), else start a local one."""
    import ray

    from higgs_train.console import (
        filter_forwarded_worker_logs,
        quiet_ray_logs,
        ray_log_level,
        ray_logging_config,
    )

    quiet_ray_logs(config.verbose)
    if ray.is_initialized():
        return
    quiet = {"logging_level": ray_log_level(config.verbose), "logging_config": ray_logging_config(config.verbose)}
    # ray.init applies ``logging_config`` to this process's root logger too; the driver's own INFO lines stay.
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for name in ("HIGGS_TRAIN_HOME", "HF_HOME", "HF_HUB_CACHE", "MLFLOW_TRACKING_URI"):
        if name in os.environ:
            env[name] = os.environ[name]
    if os.environ.get("RAY_ADDRESS"):
        # Under `ray job submit` the job's runtime env (cluster/runtime_env.yaml) is merged with this one and Ray
        # refuses any env var set in both; the job's value is already in this process's environment, so drop it.
        env = {k: v for k, v in env.items() if k not in _submitted_job_env_vars()}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=True, **quiet)
    else:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, runtime_env={"env_vars": env}, **quiet)
    for handler in [h for h in root.handlers if h not in root_handlers]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    quiet_ray_logs(config.verbose)  # ray.init configures the "ray" logger again
    filter_forwarded_worker_logs(config.verbose)


class ClusterResourcesError(ValueError):
    """The cluster lacks what the job asks for (GPUs, CPUs); raised in seconds, before any work, never a hang."""


class JobOutputsMissing(RuntimeError):
    """Training returned but an output the job promises (adapter, history, loss curve) is not where it should be."""


def check_gpus(config: TrainingConfig, cluster: dict[str, float], per_unit: str = "training worker") -> None:
    """``--use_gpu`` needs one GPU per training worker; Ray would otherwise wait forever for a GPU node."""
    if not config.use_gpu:
        return
    gpus = float(cluster.get("GPU", 0.0))
    needed = float(config.num_workers)
    if gpus + 1e-9 >= needed:
        return
    have = "no GPUs" if gpus == 0 else f"only {gpus:g} GPU(s)"
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU", "memory") or "GPU" in k)
    raise ClusterResourcesError(
        f"--use_gpu with --num_workers {config.num_workers} needs {needed:g} GPU(s) (one per {per_unit}) but the Ray "
        f"cluster has {have} ({shown or 'no resources reported'}). Drop --use_gpu to train on CPUs, lower "
        "--num_workers, or run on a cluster with GPU nodes (`ray start --head --num-gpus N`, or submit with "
        "`ray job submit` to a GPU cluster, see cluster/README.md)."
    )


def check_cpu_budget(config: TrainingConfig) -> None:
    """Refuse a configuration that cannot be scheduled on the cluster instead of hanging in the pending state."""
    import ray

    cluster = ray.cluster_resources()
    check_gpus(config, cluster)
    available = cluster.get("CPU", 0)
    training = config.num_workers * config.cpus_per_train_worker
    data = config.dataloader_num_workers * config.cpus_per_data_actor
    if max(training, data) > available:
        raise ClusterResourcesError(
            f"needs {training:g} CPUs for training workers and {data:g} for data actors but the cluster has "
            f"{available:g}; lower num_workers/cpus_per_train_worker or dataloader_num_workers/cpus_per_data_actor"
        )


def build_caches(config: TrainingConfig, paths: Any) -> tuple[Any, Any | None, Path]:
    """Canonicalise both manifests and build/reuse their token caches; returns (train, val, cache root)."""
    from higgs_train.data.audio_io import AudioLimits
    from higgs_train.data.manifest import convert_manifest
    from higgs_train.data.ray_pipeline import build_token_cache, describe
    from higgs_train.data.sources import resolve_sources

    sources = resolve_sources(config)
    output = Path(config.output_dir)
    cache_root = Path(config.cache_dir) if config.cache_dir else output.resolve().parent / "token_cache"
    limits = AudioLimits(config.min_audio_seconds, config.max_audio_seconds)
    results = []
    for split, manifest, base in (
        ("train", sources.train, sources.train_audio_base),
        ("val", sources.val, sources.val_audio_base),
    ):
        if manifest is None:
            results.append(None)
            continue
        canonical = output / "manifests" / f"{split}.parquet"
        report = convert_manifest(manifest, canonical)
        logger.info("%s manifest: %s", split, report.summary())
        result = build_token_cache(
            canonical,
            cache_root,
            paths,
            base,
            limits,
            num_actors=config.dataloader_num_workers,
            cpus_per_actor=config.cpus_per_data_actor,
            max_tokens_per_row=config.max_tokens_per_row,
        )
        logger.info("%s cache: %s", split, describe(result))
        results.append(result)
    return results[0], results[1], cache_root


def write_data_reports(output: Path, caches: dict[str, Any]) -> tuple[int, list[Path]]:
    """Per-split validation reports and one quarantine file, from what preprocessing accepted and rejected."""
    from higgs_train.data.quarantine import Quarantine

    quarantine = Quarantine()
    files: list[Path] = []
    for split, cache in caches.items():
        if cache is None:
            continue
        table = cache.entry.quarantine_table() if cache.entry.quarantine_path.exists() else None
        invalid = []
        if table is not None:
            for rec in table.to_pylist():
                quarantine.add(rec["id"], rec["row_index"], f"{split}:{rec['stage']}", rec["reason"])
                invalid.append({"index": rec["row_index"], "id": rec["id"], "reason": rec["reason"]})
        valid = cache.entry.num_rows
        report = {"total": valid + len(invalid), "valid": valid, "invalid": invalid}
        path = output / ("validation_report.json" if split == "train" else f"{split}_validation_report.json")
        path.write_text(json.dumps(report, indent=2) + "\n")
        files.append(path)
    quarantine_path = quarantine.write(output / "quarantine.parquet")
    summary = output / "quarantine_summary.json"
    summary.write_text(
        json.dumps(
            {
                "rows": len(quarantine),
                "by_stage": quarantine.counts(),
                "records": [r.__dict__ for r in quarantine.records],
            },
            indent=2,
        )
        + "\n"
    )
    return len(quarantine), [*files, quarantine_path, summary]


def _warn_missing_audio(output: Path, config: TrainingConfig) -> None:
    """Rows quarantined for missing audio usually mean a wrong audio root: say which root was used."""
    from higgs_train.data.preflight import missing_audio_hint
    from higgs_train.data.sources import resolve_sources

    summary = output / "quarantine_summary.json"
    records = json.loads(summary.read_text()).get("records", []) if summary.is_file() else []
    hint = missing_audio_hint([str(r.get("reason", "")) for r in records], resolve_sources(config).train_audio_base)
    if hint:
        logger.warning(hint)


def _plot_untracked(history: list[dict[str, Any]], output: Path) -> Path | None:
    """The loss curve when tracking is off (the tracker only plots what it logs)."""
    from higgs_train.tracking import plot_loss_curve

    return plot_loss_curve(history, output / "loss_curve.png", title="loss curve")


def check_outputs(adapter_dir: Path, history: Path, loss_curve: Path | None) -> None:
    """A job never reports success when what it promises is not there (the MLflow run then ends FAILED)."""
    expected = [adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors", history]
    missing = [str(p) for p in expected if not p.is_file()]
    if loss_curve is None or not Path(loss_curve).is_file():
        missing.append(str(history.parent / "loss_curve.png"))
    if missing:
        raise JobOutputsMissing(
            "training finished but these outputs are missing: " + ", ".join(missing) + " (a worker may have written "
            "them relative to its own working directory, or on another node: give --output_dir on storage every "
            "node sees)"
        )


def run_training_job(config: TrainingConfig) -> JobResult:
    """Run one training job end to end (see the module docstring)."""
    from higgs_train.data.shard_stream import stream_root_for_workers
    from higgs_train.models import resolve_paths
    from higgs_train.paths import resolve_user_paths
    from higgs_train.ray_train import build_torch_trainer
    from higgs_train.tracking import RunTracker, resolve_tracking_uri
    from higgs_train.training.checkpoint_store import write_marker

    config, run_name, resume = resolve_run(resolve_user_paths(config))  # absolute before anything runs on Ray
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(output, config.mlflow_tracking_uri)
    tracker = RunTracker(tracking_uri)
    tags = {
        "model_path": config.model_path,
        "audio_tokenizer_path": config.audio_tokenizer_path,
        "run_name": run_name,
        "resumed_from": resume,
    }
    start = tracker.start_or_continue(
        config.mlflow_experiment, run_name, params=config.to_dict(), tags=tags, resuming=bool(resume)
    )
    with start:
        paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
        init_ray(config)
        check_cpu_budget(config)
        train_cache, val_cache, cache_root = build_caches(config, paths)
        quarantined, report_files = write_data_reports(output, {"train": train_cache, "val": val_cache})
        _warn_missing_audio(output, config)
        data_keys = {"train_cache_key": train_cache.key, "val_cache_key": val_cache.key if val_cache else None}
        tracker.set_tags(data_keys)
        (output / "data_keys.json").write_text(json.dumps(data_keys, indent=2) + "\n")  # read by export's model card
        tracker.log_metrics(
            {
                "data/train_rows": train_cache.entry.num_rows,
                "data/quarantined_rows": quarantined,
                "data/encoder_calls": train_cache.encoder_calls + (val_cache.encoder_calls if val_cache else 0),
            },
            step=0,
        )
        if train_cache.entry.num_rows == 0:
            raise ValueError(f"no training rows survived preprocessing; see {output / 'quarantine_summary.json'}")
        config.save(output / "resolved_config.yaml")
        loop_config = {
            "config": config.to_dict(),
            "cache_root": str(cache_root.resolve()),
            "stream_root": stream_root_for_workers(train_cache.entry.path, config.stream_cache_uri),
            "train_key": train_cache.key,
            "val_key": val_cache.key if val_cache and val_cache.entry.num_rows else None,
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracking_uri,
        }
        result = build_torch_trainer(config, loop_config, run_name, storage_root(config)).fit()
        if result.error:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        adapter_dir = output / "adapter"
        history = json.loads((output / "history.json").read_text()) if (output / "history.json").exists() else []
        curve = tracker.log_loss_curve(history, output / "loss_curve.png") or _plot_untracked(history, output)
        check_outputs(adapter_dir, output / "history.json", curve)
        tracker.log_artifact(adapter_dir, "adapter")
        tracker.log_artifact(output / "resolved_config.yaml")
        for path in report_files:
            tracker.log_artifact(path, "data")
        write_marker(storage_root(config), run_name, COMPLETED_MARKER, json.dumps(metrics, sort_keys=True))
    return JobResult(output, adapter_dir, run_name, tracker.run_id, tracking_uri, metrics, quarantined, resume)
