"""The cluster configs under cluster/ parse, carry the keys their tools need, and pin the lock's Ray version.

They cannot be exercised without a cloud account or a Kubernetes cluster, so these checks are what stands between
an edit and a launch that fails after minutes of provisioning.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from higgs_train.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LOCK_INSTALL = "pip install --no-deps -r requirements/lock.txt"
PROJECT_INSTALL = "pip install --no-deps -e ."


def _lock_ray_version() -> str:
    match = re.search(r"^ray==([0-9][0-9A-Za-z.]*)\s*$", (ROOT / "requirements/lock.txt").read_text(), re.M)
    assert match, "requirements/lock.txt has no ray== pin"
    return match.group(1)


def _python_tag() -> str:
    """'py311' from pyproject's requires-python lower bound."""
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)', text).groups()
    return f"py{major}{minor}"


def _expected_image() -> str:
    return f"rayproject/ray:{_lock_ray_version()}-{_python_tag()}-gpu"


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _rayjob_docs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def _flag(command: str, name: str) -> str | None:
    args = shlex.split(command)
    return args[args.index(name) + 1] if name in args else None


# --- all files ------------------------------------------------------------------------------------------------------
def test_every_cluster_yaml_parses() -> None:
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} >= {"gpu-cluster.yaml", "rayjob.yaml", "runtime_env.yaml", "train-gpu.yaml"}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path.name
    assert (CLUSTER / "README.md").is_file()


# --- Ray cluster launcher -------------------------------------------------------------------------------------------
def test_gpu_cluster_has_required_keys() -> None:
    cfg = _load("gpu-cluster.yaml")
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "file_mounts",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert cfg.get(key) not in (None, "", [], {}), key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["auth"]["ssh_user"]
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_gpu_cluster_has_an_autoscaling_gpu_worker_type() -> None:
    cfg = _load("gpu-cluster.yaml")
    head = cfg["head_node_type"]
    workers = {name: t for name, t in cfg["available_node_types"].items() if name != head}
    gpu = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu, "no worker node type declares a GPU"
    for node_type in gpu:
        assert node_type["min_workers"] == 0  # scale to zero: idle GPUs cost money
        assert 1 <= node_type["max_workers"] <= cfg["max_workers"]
        assert node_type["node_config"]["InstanceType"]
    assert cfg["available_node_types"][head].get("resources", {}).get("GPU", 0) == 0


def test_gpu_cluster_installs_from_the_lock_and_pins_ray() -> None:
    cfg = _load("gpu-cluster.yaml")
    setup = " && ".join(cfg["setup_commands"])
    assert LOCK_INSTALL in setup and PROJECT_INSTALL in setup
    assert setup.index(LOCK_INSTALL) < setup.index(PROJECT_INSTALL)
    assert "." in cfg["file_mounts"].values()  # the project is synced to the nodes
    mount = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert any(f"cd {mount}" in c for c in cfg["setup_commands"])
    assert cfg["docker"]["image"] == _expected_image()
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    assert {".git", "outputs", "sample_data"} <= set(cfg["rsync_exclude"])


def test_gpu_cluster_names_shared_checkpoint_storage() -> None:
    storage = _load("gpu-cluster.yaml")["metadata"]["storage_path"]
    assert storage.startswith(("s3://", "gs://")), storage
    assert "storage_path" in (CLUSTER / "gpu-cluster.yaml").read_text().split("cluster_name:")[0]  # explained on top


def test_gpu_cluster_passes_ray_schema_validation() -> None:
    """What `ray up` itself checks first (fills the AWS defaults, then validates against ray-schema.json)."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # private API: skip rather than fail if Ray moves it
        pytest.skip(f"Ray's cluster-config validator is unavailable: {exc}")
    validate_config(prepare_config(_load("gpu-cluster.yaml")))


# --- KubeRay --------------------------------------------------------------------------------------------------------
def test_rayjob_spec() -> None:
    job = _rayjob_docs()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python ray_jobs/train.py")
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    config = _flag(spec["entrypoint"], "--config")
    assert config and (ROOT / config).is_file()


def test_rayjob_runtime_env_yaml() -> None:
    spec = _rayjob_docs()["RayJob"]["spec"]
    assert isinstance(spec["runtimeEnvYAML"], str)
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(env, dict) and env["working_dir"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray rejects non-string env values
    pip = env["pip"]
    assert "--no-deps" in pip["pip_install_options"]
    assert any(p.startswith("-r ") and p.endswith("requirements/lock.txt") for p in pip["packages"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields


def test_rayjob_cluster_uses_lock_ray_and_gpu_workers() -> None:
    cluster = _rayjob_docs()["RayJob"]["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _lock_ray_version()
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    assert "rayStartParams" in cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    assert groups
    pods = [head_pod] + [g["template"]["spec"] for g in groups]
    for pod in pods:
        for container in pod["containers"]:
            assert container["image"] == _expected_image()
    gpu_groups = [
        g
        for g in groups
        if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in head_pod["containers"])


def test_rayjob_checkpoints_go_to_shared_volume() -> None:
    docs = _rayjob_docs()
    spec = docs["RayJob"]["spec"]
    storage = _flag(spec["entrypoint"], "--storage_path")
    assert storage, "entrypoint sets no --storage_path"
    pvc = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = [
            n
            for n, v in volumes.items()
            if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
        ]
        assert shared, "a pod lacks the shared volume"
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes)  # every mount names a declared volume
            assert any(storage.startswith(path + "/") and name in shared for path, name in mounts.items()), (
                f"--storage_path {storage} is not on the shared volume in every pod"
            )


# --- runtime env for `ray job submit` -------------------------------------------------------------------------------
def test_runtime_env_file() -> None:
    env = _load("runtime_env.yaml")
    assert env["working_dir"] == "."
    assert {"outputs/", "sample_data/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(env)  # the lock is already installed
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)


# --- the training config the clusters use ---------------------------------------------------------------------------
def test_gpu_training_config_fits_the_clusters() -> None:
    cfg = TrainingConfig.load(CLUSTER / "train-gpu.yaml")
    assert cfg.use_gpu
    launcher = _load("gpu-cluster.yaml")
    gpu_slots = sum(
        t["max_workers"] * t["resources"].get("GPU", 0)
        for name, t in launcher["available_node_types"].items()
        if name != launcher["head_node_type"]
    )
    assert cfg.num_workers <= gpu_slots
    cluster = _rayjob_docs()["RayJob"]["spec"]["rayClusterSpec"]
    assert cfg.num_workers <= sum(g["replicas"] for g in cluster["workerGroupSpecs"])
    assert Path(cfg.output_dir).is_absolute()  # must outlive the job's temporary working_dir


# --- authentication: the job API runs arbitrary code, so no shipped config exposes it without a token -------------
def _ray_start_commands(cfg: dict[str, Any]) -> list[str]:
    commands = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    return [c for c in commands if "ray start" in c]


def test_gpu_cluster_runs_ray_with_token_auth() -> None:
    cfg = _load("gpu-cluster.yaml")
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]  # drivers and workers of jobs too
    starts = _ray_start_commands(cfg)
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    # The token reaches every node at Ray's default path, from the file `ray job submit` reads locally.
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("chmod 600 /home/ray/.ray/auth_token" in c for c in cfg["setup_commands"])
    assert "RAY_AUTH_MODE=disabled" not in (CLUSTER / "gpu-cluster.yaml").read_text()


def test_rayjob_cluster_uses_token_auth() -> None:
    cluster = _rayjob_docs()["RayJob"]["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", "token") == "token"  # nothing switches the operator's setting off


def test_docs_say_how_the_token_reaches_ray_job_submit() -> None:
    for doc in (CLUSTER / "README.md", ROOT / "docs" / "ray_jobs.md"):
        text = doc.read_text()
        assert "RAY_AUTH_MODE=token" in text and "auth_token" in text and "0600" in text, doc


def _run_token_command(env: dict[str, str]) -> Path:
    import os
    import subprocess

    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "local_cluster.sh"), "token"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def test_local_cluster_token_is_private(tmp_path: Path) -> None:
    """`local_cluster.sh` creates the token 0600 in a 0700 folder, and tightens one Ray wrote 0644 before."""
    home = tmp_path / "home"
    home.mkdir()
    path = _run_token_command({"HOME": str(home), "RAY_AUTH_MODE": "token"})
    assert path == home / ".ray" / "auth_token" and path.stat().st_size > 0
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    token = path.read_text()
    path.chmod(0o644)  # as `ray.init()` / `ray get-auth-token --generate` leave it under the default umask
    assert _run_token_command({"HOME": str(home), "RAY_AUTH_MODE": "token"}) == path
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == token  # same token, now private

    custom = tmp_path / "secrets" / "ray_token"
    assert _run_token_command({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(custom)}) == custom
    assert custom.stat().st_mode & 0o777 == 0o600 and len(custom.read_text()) == 64
