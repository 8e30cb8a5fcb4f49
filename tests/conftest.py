"""Shared test setup. Importing higgs_train first puts Hugging Face into offline mode before anything reads it."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_ports import free_port

import higgs_train  # noqa: F401  (sets HF_HUB_OFFLINE=1 unless the environment says otherwise)

BUCKET = "higgs-ckpt"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with one bucket; AWS_* variables point pyarrow, boto3 and Ray workers at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def ray_head_on_the_machine(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A `ray start` head alive while the commands run, recorded where a plain ``ray.init()`` looks for one
    (``<RAY_TMPDIR>/ray/ray_current_cluster``, i.e. /tmp/ray/... when RAY_TMPDIR is unset): the commands must start
    their own Ray anyway (issue 19 item 1: they used to die with "When connecting to an existing cluster, num_cpus
    and num_gpus must not be provided"). A private RAY_TMPDIR and free ports keep other users' Ray out of it;
    ``scripts/local_cluster.sh stop`` ends only this head's processes. Yields the env the commands run with."""
    tmp = Path(tempfile.mkdtemp(prefix="hr-readme-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "HIGGS_RAY_TEMP_DIR": str(tmp / "ray"), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    start = ["ray", "start", "--head", "--node-ip-address=127.0.0.1"]
    start += [f"--port={free_port()}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]
    started = subprocess.run([*start, f"--temp-dir={tmp / 'ray'}"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert (tmp / "ray" / "ray_current_cluster").is_file()
        yield {"RAY_TMPDIR": str(tmp)}
    finally:
        subprocess.run([str(REPO_ROOT / "scripts" / "local_cluster.sh"), "stop"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


# Test modules that start a multi-node Ray cluster of their own run before every other test. After the suite's local
# Ray jobs (test_storage_resume's, for one) ran in this pytest process, the two-node job's Ray Data actors were all
# cancelled before they started ("SchedulingCancelled"), even with the job's driver in a fresh process and Ray's
# leftover variables stripped; run first, or alone, the same test passes. The cause is not found yet (see the
# closing note of the session that added this); the ordering keeps the test meaningful meanwhile.
RUN_FIRST = ("test_two_nodes.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the rest keep their order
