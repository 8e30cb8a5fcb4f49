"""A 3-trial ``--quick_test`` sweep on the tiny stack, on a 2-CPU Ray cluster, checked end to end.

One sweep (about 3 minutes on 2 CPUs) feeds every test: MLflow parent + children, best-trial selection, the exported
adapter, and the token cache's encoder ledger (each audio file encoded once over the whole sweep).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from higgs_train.commands.tune import sweep_config_from_args
from higgs_train.console import filter_forwarded_worker_logs
from higgs_train.data.audio_io import resolve_audio_path
from higgs_train.data.cache_key import referenced_audio
from higgs_train.data.token_cache import TokenCache
from higgs_train.tracking.runs import find_runs
from higgs_train.tune import sweep as sweep_module
from higgs_train.tune.space import BEST_DIR
from higgs_train.tune.sweep import SweepResult, run_sweep

pytestmark = pytest.mark.integration

NUM_SAMPLES = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Iterator[SweepResult]:
    import ray

    root = tmp_path_factory.mktemp("tune")
    output = root / "sweep"
    argv = [
        "--quick_test",
        "--num_samples",
        str(NUM_SAMPLES),
        "--output_dir",
        str(output),
        "--mlflow_tracking_uri",
        "sqlite:///sweep/mlflow.db",  # relative to the folder the sweep starts from (issue 19 item 2)
        "--search_space",
        str(ROOT / "configs" / "tune_search_space.yaml"),
        "--stream_cache_uri",
        f"file://{root / 'stream'}",
    ]
    config, settings = sweep_config_from_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    filter_forwarded_worker_logs(verbose=False)  # as init_ray does: the raylet's messages still reach the console
    cwd = os.getcwd()
    os.chdir(root)
    cache, hidden = root / "token_cache", root / "hidden_entries"
    STREAM.append(root / "stream")
    start_relay = sweep_module.start_tracker_relay

    def hide_the_drivers_entries(*args, **kwargs):
        """Called once the caches are built and published, before any trial starts: from here on a trial that
        read the driver's --cache_dir instead of the stream cache would find no entry."""
        hidden.mkdir()
        for entry in cache.iterdir():
            if entry.is_dir() and len(entry.name) == 24:  # a cache entry (its key), not the code store
                entry.rename(hidden / entry.name)
                HIDDEN.append(entry.name)
        return start_relay(*args, **kwargs)

    try:
        with console_captured() as console, pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep_module, "start_tracker_relay", hide_the_drivers_entries)
            result = run_sweep(config, settings)
        for name in HIDDEN:  # back, for the tests that read the cache's ledger and entries
            (hidden / name).rename(cache / name)
        CONSOLE.extend(console)
        LEFTOVER["groups"] = _live_placement_groups()
        LEFTOVER["cpus"] = ray.available_resources().get("CPU", 0.0)
        yield result
    finally:
        os.chdir(cwd)
        ray.shutdown()


CONSOLE: list[str] = []
HIDDEN: list[str] = []  # the driver's cache entries, out of the trials' reach while they ran
STREAM: list[Path] = []  # the sweep's --stream_cache_uri, as a folder


@contextlib.contextmanager
def console_captured() -> Iterator[list[str]]:
    """The driver's console lines (fd 1, where ``console.emit`` and Tune print), collected after the block."""
    lines: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            with contextlib.redirect_stdout(sys.__stdout__):
                yield lines
        finally:
            sys.__stdout__.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


LEFTOVER: dict[str, object] = {}


def _live_placement_groups(wait_s: float = 15.0) -> list[dict]:
    """Placement groups not yet removed, polled briefly (Tune releases its own trial groups asynchronously)."""
    import time

    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + wait_s
    while True:
        live = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.5)


def _runs(sweep: SweepResult) -> tuple[dict, list[dict]]:
    runs = find_runs(sweep.tracking_uri, "higgs-train")
    parents = [r for r in runs if r["run_id"] == sweep.mlflow_run_id]
    children = [r for r in runs if r["parent_run_id"] == sweep.mlflow_run_id]
    assert len(parents) == 1
    return parents[0], children


def test_one_parent_and_a_child_run_per_trial_with_distinct_ranks(sweep: SweepResult) -> None:
    parent, children = _runs(sweep)
    assert parent["status"] == "FINISHED" and parent["parent_run_id"] is None
    assert len(children) == NUM_SAMPLES == len(sweep.trials)
    assert sorted(int(c["params"]["lora_r"]) for c in children) == [8, 16, 32]
    for child in children:
        assert child["status"] == "FINISHED"
        assert child["tags"]["mlflow.parentRunId"] == parent["run_id"]
        assert child["tags"]["tune_status"] in ("completed", "early_stopped")
        drawn = json.loads(child["tags"]["tune_params"])
        assert int(child["params"]["lora_alpha"]) == drawn["lora_r"] * drawn["lora_alpha_multiplier"]
        # The learning rate is drawn as a multiple of the embedded model's recommended 2e-3.
        want_lr = 2e-3 * drawn["learning_rate_multiplier"]
        assert float(child["params"]["learning_rate"]) == pytest.approx(want_lr)
        assert float(child["params"]["learning_rate_resolved"]) == pytest.approx(want_lr)
        # Logged by the trial's rank-0 training worker, attached to the child run the trial function created.
        assert "train/total_loss" in child["metrics"] and "val_loss" in child["metrics"]
    assert {t.status for t in sweep.trials} <= {"completed", "early_stopped"}
    assert any(t.status == "completed" for t in sweep.trials)


def test_trials_read_the_cache_from_the_stream_location_not_the_drivers_cache_dir(sweep: SweepResult) -> None:
    """With a URI storage (or --stream_cache_uri) the sweep publishes both entries there and every trial's workers
    read them from there, as train.py's do: the driver's entries were moved away before the first trial started, and
    every trial still trained and validated."""
    assert len(HIDDEN) == 2  # the training and the validation entry
    published = sorted(p.name for p in STREAM[0].iterdir())
    assert published == sorted(HIDDEN)
    assert [t.status for t in sweep.trials].count("error") == 0
    assert all(t.val_loss is not None for t in sweep.trials)


def test_best_trial_has_the_lowest_validation_loss(sweep: SweepResult) -> None:
    parent, children = _runs(sweep)
    best = json.loads((sweep.output_dir / BEST_DIR / "best_trial.json").read_text())
    finals = {c["tags"]["tune_trial_id"]: c["metrics"]["final_val_loss"] for c in children}
    assert best["val_loss"] == pytest.approx(min(finals.values()))
    assert finals[best["trial_id"]] == pytest.approx(min(finals.values()))
    assert parent["tags"]["best_trial_id"] == best["trial_id"]
    assert parent["metrics"]["best_val_loss"] == pytest.approx(best["val_loss"])
    rows = (sweep.output_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + NUM_SAMPLES
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(parent["run_id"])}
    assert {"trials.csv", "trials.json", BEST_DIR}.issubset(artifacts)
    best_artifacts = {Path(a.path).name for a in client.list_artifacts(parent["run_id"], BEST_DIR)}
    assert {"adapter_model.safetensors", "adapter_config.json", "best_trial.json", "training_config.yaml"}.issubset(
        best_artifacts
    )


def test_best_adapter_loads_onto_the_tiny_model(sweep: SweepResult) -> None:
    import torch
    from peft import PeftModel

    from higgs_train.model_loading import load_model, resolve_paths

    best_dir = sweep.output_dir / BEST_DIR
    best = json.loads((best_dir / "best_trial.json").read_text())
    config = yaml.safe_load((best_dir / "training_config.yaml").read_text())
    assert config["lora_r"] == best["params"]["lora_r"] == best["training_overrides"]["lora_r"]
    assert json.loads((best_dir / "adapter_config.json").read_text())["r"] == config["lora_r"]
    model = PeftModel.from_pretrained(load_model(resolve_paths("embedded", "embedded").model_path), str(best_dir))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b, "no LoRA weights were applied"
    # lora_B starts at zero; non-zero values prove the trained adapter, not a fresh one, was loaded.
    assert any(torch.count_nonzero(p) > 0 for p in lora_b)


def test_each_audio_file_is_encoded_once_over_the_whole_sweep(sweep: SweepResult) -> None:
    output = sweep.output_dir
    sample_root = output.parent / "sample_data"
    files = set()
    for split in ("train", "val"):
        manifest = pq.read_table(output / "manifests" / f"{split}.parquet")
        for url in referenced_audio(manifest.column("messages_json").to_pylist()):
            files.add(resolve_audio_path(url, sample_root).resolve())
    cache = TokenCache(output.parent / "token_cache")
    builds = cache.builds()
    # One build per split, both by the driver before the Tuner: no trial built (or encoded) anything.
    assert len(builds) == 2
    assert sum(b["encoder_calls"] for b in builds) == len(files) > 0
    stores = list((cache.root / "audio_codes").iterdir())
    assert len(stores) == 1 and len(list(stores[0].glob("*/*.npz"))) == len(files)


def test_no_trial_leaves_cpus_reserved(sweep: SweepResult) -> None:
    # An early-stopped trial's workers die with it, but their placement group would outlive it (see higgs_train/tune/__init__.py); the
    # sweep releases it, so the cluster is whole again. A leak here is what deadlocks longer sweeps on small clusters.
    assert LEFTOVER["groups"] == []
    assert LEFTOVER["cpus"] == pytest.approx(2.0)


def test_a_relative_sqlite_uri_keeps_every_metric(sweep: SweepResult) -> None:
    """``sqlite:///sweep/mlflow.db`` is the sweep folder's store, made absolute by the driver: every trial's worker
    logged every step there (it used to open a second database in its Ray session folder and log nothing)."""
    assert sweep.tracking_uri == f"sqlite:///{(sweep.output_dir / 'mlflow.db').as_posix()}"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    _, children = _runs(sweep)
    for child in children:
        trial = next(t for t in sweep.trials if t.trial_id == child["tags"]["tune_trial_id"])
        logged = [int(m.step) for m in client.get_metric_history(child["run_id"], "train/total_loss")]
        assert logged and logged[-1] >= (trial.step or 1), child["run_name"]  # up to its last report, at least
        history = Path(trial.output_dir) / "history.json"  # written by trials that ran to the end (ASHA stops some)
        if history.exists():
            assert logged == [h["step"] for h in json.loads(history.read_text())], child["run_name"]


def test_trials_reach_mlflow_only_through_the_driver_node_relay(sweep: SweepResult) -> None:
    """A trial function and its workers are not given the store's URI: each child run was created, and every metric
    batch of it logged, by the sweep's relay actor on the driver's node (``driver.tracker_relay``), so a sweep on
    several nodes needs no shared disk for MLflow. The driver alone adds the final figures afterwards."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    _, children = _runs(sweep)
    assert set(sweep.relayed_batches) == {c["run_id"] for c in children}
    for child in children:
        steps = client.get_metric_history(child["run_id"], "train/total_loss")
        assert sweep.relayed_batches[child["run_id"]] >= len(steps) > 0, child["run_name"]


def test_console_is_one_line_per_trial_result_and_the_table(sweep: SweepResult) -> None:
    """No Tune status tables: one line per result Tune received (validation steps), nothing else."""
    results = [line for line in CONSOLE if line.startswith("trial ") and " step " in line]
    tune_dir = sweep.output_dir / "ray_results" / sweep.sweep_name  # Tune's own record: a JSON line per result
    reported = sum(len((tune_dir / t.trial_id / "result.json").read_text().splitlines()) for t in sweep.trials)
    others = [line for line in CONSOLE if line not in results and "token cache (" not in line]
    assert len(results) == reported >= NUM_SAMPLES, CONSOLE
    assert others == [], others
    table = sweep.table().splitlines()
    assert len(table) == 1 + NUM_SAMPLES and table[0].split()[:4] == ["trial", "status", "step", "val_loss"]
