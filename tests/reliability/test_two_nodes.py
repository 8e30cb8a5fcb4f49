"""Two Ray nodes, one of them lost mid-run, and nothing shared but the run's storage.

A head and a second node on loopback (``scripts/local_cluster.sh start --nodes 2``, one CPU each), a 2-worker job
placed with ``--placement_strategy STRICT_SPREAD`` (one worker per node), checkpoints and the token cache on
``s3://`` (moto's server). Once Ray has registered a checkpoint and a step past it is logged, the second node's
raylet is SIGKILLed (the node is lost, its worker with it) and the node is started again; Ray Train restarts the
worker group (``--max_failures``) on the head and the new node from the newest checkpoint. The job must finish
with every step exactly once in ``history.json`` and in MLflow.

The same run proves that a cluster needs no shared disk but the run's storage (issue 21 item 4). Node 2 does not
see pytest's temp folder, where the data, the driver's outputs and its token cache are (``HIGGS_RAY_PRIVATE_DIRS``:
its own mount namespace, an empty tmpfs over the folder), as a machine of its own would not; the token-cache build
(its decode tasks, encoder actors and writes read and write those files) must stay on the driver's node, or rows go
missing. The workers write only into their node's scratch folder (``HIGGS_WORKER_SCRATCH``), the driver's token
cache is moved away before any worker starts (so even the head's worker takes the validation rows from the run's
storage), and the adapter, history, loss curve and reports still land in the driver's ``--output_dir``, taken from
the final checkpoint.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pytest
import ray
import yaml
from local_ports import free_port
from ray_faults import ROOT, WorkerKiller, logged_steps

from higgs_train.config import TrainingConfig
from higgs_train.driver import train as train_driver
from higgs_train.driver.cluster import STREAM_CACHE_DIR
from higgs_train.driver.train import run_training_job
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.storage import filesystem_and_path, join
from higgs_train.tracking.store import embedded_tracking_uri

pytestmark = pytest.mark.integration

MAX_STEPS = 10  # steps take about a second: enough of them for the kill to land between two checkpoints
SAVE_EVERY = 2
SCRIPT = str(ROOT / "scripts" / "local_cluster.sh")


def raylet_pids(node_temp_dir: Path) -> list[int]:
    """The raylet of the node whose temp dir is ``node_temp_dir`` (found by it: other clusters are never touched)."""
    needle = f"{node_temp_dir}/"
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info["cmdline"] or []
        if args and args[0].endswith("/raylet") and any(needle in arg for arg in args):
            pids.append(proc.info["pid"])
    return pids


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def environment_without_ray_session() -> dict[str, str]:
    """This process's environment less what an earlier ``ray.init`` in it left behind (RAY_AUTH_MODE=token,
    RAY_CLIENT_MODE, RAY_USAGE_STATS_ENABLED, PYTHONBREAKPOINT): the nodes and the driver start as a user's would."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONBREAKPOINT"}


def drive_the_job(config: dict, cache: str, moved_away: str, env: dict[str, str], answers) -> None:
    """The job's driver, in a fresh process with the cluster's ``env``: once the caches are built the driver's copy
    goes away (a worker that read it would fail the job), then the job runs on the two-node cluster. Sends back the
    MLflow run id, or the error."""
    clean = environment_without_ray_session() | env
    os.environ.clear()
    os.environ.update(clean)
    build = train_driver.build_torch_trainer

    def build_without_the_drivers_cache(*args, **kwargs):
        shutil.move(cache, moved_away)
        return build(*args, **kwargs)

    train_driver.build_torch_trainer = build_without_the_drivers_cache
    try:
        nodes_before = node_resources(env["RAY_ADDRESS"], wait_for=2)
        result = run_training_job(TrainingConfig.from_dict(config))
        ray.shutdown()
        answers.put(
            {
                "mlflow_run_id": result.mlflow_run_id,
                "nodes_before": nodes_before,
                "nodes_after": node_resources(env["RAY_ADDRESS"]),
            }
        )
    except Exception as exc:  # the test reports it
        answers.put({"error": f"{type(exc).__name__}: {exc}"})


def node_resources(address: str, wait_for: int = 0) -> list[str]:
    """The ``higgs_node_<k>`` resources of the cluster's alive nodes (after waiting up to a minute for
    ``wait_for`` of them to register)."""
    ray.init(address=address)
    try:
        deadline = time.monotonic() + 60
        while len(alive_nodes()) < wait_for and time.monotonic() < deadline:
            time.sleep(0.2)
        return sorted(r for n in alive_nodes() for r in n["Resources"] if r.startswith("higgs_node_"))
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes(s3, tmp_path_factory):
    """Head + node 2 (one CPU each), started after the S3 server so both nodes' workers get its AWS_* variables.

    Node 2 cannot see pytest's temp folder (``HIGGS_RAY_PRIVATE_DIRS``), where every test keeps its files. Node loss is
    noticed in about a second (GCS health checks every 500 ms) instead of Ray's default ~15 s. A
    private RAY_TMPDIR keeps the head out of /tmp/ray/ray_current_cluster, where others' plain ``ray.init()`` looks.
    """
    tmp = Path(tempfile.mkdtemp(prefix="hr-2n-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    port = free_port()
    env = {
        **environment_without_ray_session(),
        "RAY_TMPDIR": str(tmp),
        "HIGGS_RAY_TEMP_DIR": str(tmp / "ray"),
        "HIGGS_RAY_PORT": str(port),
        "HIGGS_RAY_DASHBOARD_PORT": str(free_port()),
        "HIGGS_RAY_NUM_CPUS": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "2",
        "HIGGS_WORKER_SCRATCH": str(tmp / "scratch"),
        "HIGGS_RAY_PRIVATE_DIRS": str(tmp_path_factory.getbasetemp()),
    }
    env.pop("RAY_ADDRESS", None)
    try:
        started = subprocess.run([SCRIPT, "start", "--nodes", "2"], env=env, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"env": env, "address": f"127.0.0.1:{port}", "node2": tmp / "ray-n2", "scratch": tmp / "scratch"}
    finally:
        ray.shutdown()
        stopped = subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, text=True)
        shutil.rmtree(tmp, ignore_errors=True)
    assert "node 2 stopped" in stopped.stdout and "head stopped" in stopped.stdout, stopped.stdout
    assert not raylet_pids(tmp / "ray") and not raylet_pids(tmp / "ray-n2")


def test_a_lost_node_is_survived_and_outputs_reach_the_driver_through_storage(tmp_path, s3, two_nodes):
    data = create_sample_data(tmp_path / "data", utterances_per_speaker=3)  # 8 training rows: 2 steps an epoch
    storage = f"{s3}/two-nodes"
    out = tmp_path / "driver" / "voice"
    cache = tmp_path / "driver" / "token_cache"
    config = TrainingConfig(
        train_data=str(data["train"]),
        val_data=str(data["val"]),
        output_dir=str(out),
        cache_dir=str(cache),
        storage_path=storage,
        num_workers=2,
        placement_strategy="STRICT_SPREAD",
        max_failures=3,
        batch_size=2,
        num_epochs=5,
        max_steps=MAX_STEPS,
        save_every_steps=SAVE_EVERY,
        eval_every_steps=SAVE_EVERY,
        warmup_steps=1,
    )

    def start_node_again() -> None:
        subprocess.run([SCRIPT, "start", "--nodes", "2"], env=two_nodes["env"], capture_output=True, check=True)

    tracking_uri = embedded_tracking_uri(out)
    killer = WorkerKiller(
        tracking_uri, storage, "voice", targets=lambda: raylet_pids(two_nodes["node2"]), then=start_node_again
    ).start()
    # The driver runs in a process of its own, as `python ray_jobs/train.py` does, speaking the cluster's auth mode.
    # Why: a test before this one started a local Ray instance in this process, and ray.init left RAY_* variables
    # behind (RAY_AUTH_MODE=token among them) in os.environ and in Ray's own state; a job started from there had
    # every Ray Data actor cancelled before it started, failing the cache build.
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    cluster_env = {k: two_nodes["env"][k] for k in ("RAY_AUTH_MODE",)} | {"RAY_ADDRESS": two_nodes["address"]}
    driver = spawn.Process(
        target=drive_the_job,
        args=(config.to_dict(), str(cache), str(tmp_path / "driver" / "moved_away"), cluster_env, answers),
    )
    try:
        driver.start()
        driver.join(timeout=600)
        outcome = answers.get(timeout=5) if driver.exitcode == 0 else {"error": f"driver exit code {driver.exitcode}"}
    finally:
        if driver.is_alive():
            driver.kill()
        killer.join()
    assert "error" not in outcome, outcome.get("error")
    # Every row of both splits was preprocessed and kept, although node 2 cannot read the audio or the cache.
    for report, manifest in (("validation_report.json", "train"), ("val_validation_report.json", "val")):
        rows = len(json.loads(data[manifest].read_text()))
        assert json.loads((out / report).read_text()) == {"total": rows, "valid": rows, "invalid": []}, report
    assert outcome["nodes_before"] == ["higgs_node_1", "higgs_node_2"]

    # Node 2 was lost mid-run (after a registered checkpoint and a step past it) and came back as a new node.
    assert killer.killed, "node 2's raylet was never killed"
    assert SAVE_EVERY <= killer.registered_step_at_kill < max(killer.steps_logged_at_kill) < MAX_STEPS
    assert outcome["nodes_after"] == ["higgs_node_1", "higgs_node_2"]
    # Every step exactly once, in the history and in MLflow; the restart restored a checkpoint.
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, MAX_STEPS + 1))
    assert logged_steps(tracking_uri, "voice") == list(range(1, MAX_STEPS + 1))
    from mlflow import MlflowClient

    restored = MlflowClient(tracking_uri).get_metric_history(outcome["mlflow_run_id"], "train/restored_from_step")
    # One restore, of a checkpoint at least as new as the newest one verified in storage at the kill: rank 0 may sit
    # on the surviving node and finish an upload before Ray tears its group down (one CI run: checkpoint 2 verified
    # at the kill, 4 restored). The killed-worker test, which kills every training worker at once, pins it exactly.
    restored_steps = [int(m.step) for m in restored]
    assert len(restored_steps) == 1 and restored_steps[0] % SAVE_EVERY == 0, restored_steps
    assert killer.newest_verified_at_kill <= restored_steps[0] < MAX_STEPS, (killer.newest_verified_at_kill, restored)

    # Outputs came through storage: the driver's folder has them all, rank 0 wrote only into its scratch folder.
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "history.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "adapter" / "training_config.yaml").read_text())["output_dir"] == str(out)
    scratch = two_nodes["scratch"] / "voice"
    assert (scratch / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((scratch / "history.json").read_text()) == history
    assert not (tmp_path / "driver" / "token_cache").exists()  # never recreated: no worker looked for it
    fs, root = filesystem_and_path(join(storage, STREAM_CACHE_DIR))
    published = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory]
    assert len(published) == 2  # the training and the validation entry, which the workers read from there
