"""`ray job submit` against a loopback head started by scripts/local_cluster.sh, exactly as docs/ray_jobs.md says.

Why a real head and the real CLI: the paths that break only under job submission are the ones that matter here (the
driver joining the cluster through RAY_ADDRESS, the job-vs-driver runtime env merge, the working dir being a temp
copy, token auth between the CLI, the dashboard and the driver), and none of them exist under a local ``ray.init()``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs_train.tracking.store import embedded_tracking_uri

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ADDRESS = "http://127.0.0.1:8265"
# The commands of docs/ray_jobs.md, token for token; test_documented_commands_match keeps the two identical.
START = ["scripts/local_cluster.sh", "start"]
STOP = ["scripts/local_cluster.sh", "stop"]
SUBMIT = [
    "ray", "job", "submit", "--address", ADDRESS, "--no-wait", "--working-dir", ".",
    "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "ray_jobs/train.py", "--quick_test",
]  # fmt: skip
STATUS = ["ray", "job", "status", "--address", ADDRESS]
LOGS = ["ray", "job", "logs", "--address", ADDRESS]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a CLI command from the repository root (``--working-dir .`` and the runtime env path are relative)."""
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A fresh head for this module, always stopped afterwards (also when starting it or a test fails)."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` CLI is not on PATH")
    if port_open(8265):
        pytest.skip("something already listens on 127.0.0.1:8265 (a head from `scripts/local_cluster.sh start`?)")
    # Own short temp dir: isolates this head from a developer's /tmp/higgs-ray, and `stop` kills only its processes.
    temp_dir = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", HIGGS_RAY_TEMP_DIR=temp_dir)
    try:
        started = run(START, env, timeout=150)
        assert started.returncode == 0, f"start failed:\n{started.stdout}\n{started.stderr}"
        yield env
    finally:
        stopped = run(STOP, env, timeout=60)
        print(stopped.stdout, stopped.stderr)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(env: dict[str, str], *args: str) -> str:
    """Submit ``python ray_jobs/train.py --quick_test *args`` without waiting; returns the submission id."""
    out = run([*SUBMIT, *args], env)
    assert out.returncode == 0, f"submit failed:\n{out.stdout}\n{out.stderr}"
    found = re.search(r"Job '([^']+)' submitted successfully", ANSI.sub("", out.stdout + out.stderr))
    assert found, f"no submission id in:\n{out.stdout}\n{out.stderr}"
    return found.group(1)


def parse_status(text: str) -> str | None:
    """The job status in ``ray job status`` output: terminal states get a banner, the others a plain line."""
    text = ANSI.sub("", text)
    for banner, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
        if re.search(rf"Job '[^']+' {banner}", text):
            return status
    found = re.search(r"Status for job '[^']+': (\w+)", text)
    return found.group(1) if found else None


def wait_for(env: dict[str, str], job_id: str, timeout_s: float) -> tuple[str, str]:
    """Poll ``ray job status`` until the job ends; returns (status, logs). Stops the job on timeout."""
    deadline = time.monotonic() + timeout_s
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        out = run([*STATUS, job_id], env)
        status = parse_status(out.stdout + out.stderr) or status
        if status in TERMINAL:
            break
        time.sleep(3)
    logs = run([*LOGS, job_id], env).stdout
    if status not in TERMINAL:
        run(["ray", "job", "stop", "--address", ADDRESS, job_id], env)
        pytest.fail(f"job {job_id} still {status} after {timeout_s:.0f} s; logs:\n{logs[-8000:]}")
    return status, logs


def only_run(tracking_uri: str) -> dict:
    from higgs_train.tracking.runs import find_runs

    runs = find_runs(tracking_uri, "higgs-train")
    assert len(runs) == 1, runs
    return runs[0]


def artifact_paths(tracking_uri: str, run_id: str) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found: set[str] = set()
    pending: list[str | None] = [None]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop()):
            found.add(item.path)
            if item.is_dir:
                pending.append(item.path)
    return found


def test_documented_commands_match() -> None:
    """The docs show the very commands this module runs (README gets them from docs/ray_jobs.md)."""
    docs = [p for p in (REPO / "README.md", REPO / "docs" / "ray_jobs.md") if p.exists()]
    docs = [p for p in docs if "scripts/local_cluster.sh start" in p.read_text()]
    assert docs, "neither README.md nor docs/ray_jobs.md documents scripts/local_cluster.sh"
    for doc in docs:
        text = doc.read_text()
        for cmd in ("export RAY_AUTH_MODE=token", START, STOP, [*SUBMIT, "--output_dir"], STATUS, LOGS):
            line = cmd if isinstance(cmd, str) else " ".join(cmd)
            assert line in text, f"{doc.name} lacks the command `{line}`"


def test_quick_test_job_succeeds(cluster: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "run"  # absolute: the job runs in a temp copy of the working dir
    job_id = submit(cluster, "--output_dir", str(output))
    status, logs = wait_for(cluster, job_id, timeout_s=300)
    assert status == "SUCCEEDED", logs[-8000:]
    assert "finished: adapter at" in logs

    # The adapter: files present, loadable by peft onto the tiny model, weights equal to the saved ones, trained.
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from higgs_train.model_loading import load_model, resolve_paths

    adapter = output / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved
    model = PeftModel.from_pretrained(load_model(resolve_paths("embedded", "embedded").model_path), str(adapter))
    state = model.state_dict()
    for key, tensor in saved.items():
        loaded = state[key.replace(".weight", ".default.weight")]
        assert torch.equal(loaded, tensor), key
    assert any(float(t.abs().max()) > 0 for k, t in saved.items() if "lora_B" in k), "lora_B still zero: no training"

    # The MLflow run, read back from the embedded store the driver wrote.
    uri = embedded_tracking_uri(output)  # the project store, in the folder that holds the output dir
    run = only_run(uri)
    assert run["status"] == "FINISHED"
    assert run["run_name"] == "run"
    for name in ("lora_r", "lora_alpha", "lora_dropout", "learning_rate", "batch_size", "quick_test", "output_dir"):
        assert name in run["params"], name
    assert run["params"]["lora_r"] == "16" and run["params"]["quick_test"] == "True"
    assert run["params"]["output_dir"] == str(output)
    # --learning_rate 0 (auto) shows as the rate the run trained at: the embedded model recommends 2e-3.
    assert float(run["params"]["learning_rate"]) == 0 and float(run["params"]["learning_rate_resolved"]) == 2e-3
    for name in ("train/total_loss", "train/text_loss", "train/audio_loss", "val_loss", "data/train_rows"):
        assert name in run["metrics"], (name, sorted(run["metrics"]))
    # Each metric once under one name; step and epoch are the x-axis, not metrics (issue 10 item 10).
    assert not {"total_loss", "text_loss", "audio_loss", "step", "epoch"} & set(run["metrics"]), sorted(run["metrics"])
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run["run_id"], "train/total_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    artifacts = artifact_paths(uri, run["run_id"])
    expected = {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "resolved_config.yaml",
        "plots/loss_curve.png",
        "data/validation_report.json",
        "data/quarantine_summary.json",
        "data/quarantine.parquet",
    }
    assert expected <= artifacts, sorted(artifacts)


def test_job_with_missing_manifest_fails(cluster: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "run"
    job_id = submit(cluster, "--train_data", "/nonexistent/train.json", "--output_dir", str(output))
    status, logs = wait_for(cluster, job_id, timeout_s=150)
    assert status == "FAILED", logs[-8000:]
    assert "--train_data /nonexistent/train.json: the manifest" in logs and "does not exist" in logs, logs[-8000:]
    assert "Traceback" not in logs
    # Caught before any MLflow run was opened (issue 10 item 8): nothing half-made is left behind.
    assert not (output.parent / "mlflow.db").exists()


def test_client_without_token_is_refused(cluster: dict[str, str]) -> None:
    """The head runs with token auth whatever ~/.ray holds, so a client without RAY_AUTH_MODE=token gets 401."""
    out = run(["ray", "job", "list", "--address", ADDRESS], {**cluster, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode != 0
    assert "Missing authentication token" in out.stdout + out.stderr
    assert run(["ray", "job", "list", "--address", ADDRESS], cluster).returncode == 0
