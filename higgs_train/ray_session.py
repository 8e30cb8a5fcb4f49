"""Starting or joining Ray: the one place that calls ``ray.init``.

Every driver (training, sweep, evaluation, the data builder's stage) calls ``init_ray`` first; the stages below the
drivers (``data.ray_pipeline``, the trainer) expect Ray to be up. A shared part rather than a driver module, so that
the data builder (below the drivers) can use it without importing the training side.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from higgs_train.console import (
    filter_forwarded_worker_logs,
    quiet_ray_logs,
    ray_log_level,
    ray_logging_config,
    worker_env,
)


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


def _head_left_on_this_machine() -> str | None:
    """The address of a cluster that ``ray start`` recorded on this machine (``/tmp/ray/ray_current_cluster``),
    if any: plain ``ray.init()`` would silently join it (and refuse ``num_cpus``)."""
    from ray._common.utils import get_ray_address_file

    try:
        with open(get_ray_address_file(None)) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


# Actors of a Ray Data pool (the token cache's encoders, the data builder's file workers) that die before they
# started are replaced this many times in a row before the stage fails: Ray Core restarts an actor whose process
# crashes, never one whose creation failed, and Ray Data's default (0) fails a whole cache build on the first such
# death (a constructor that failed once, e.g. on a model file still being written). A constructor that always raises
# (a wrong model path) still fails the stage, after this many replacements.
ACTOR_START_DEATHS_TOLERATED = 3


def replace_actors_lost_at_start() -> None:
    """Set ``ACTOR_START_DEATHS_TOLERATED`` on this process's Ray Data context, where the driver builds its datasets."""
    from ray.data import DataContext

    DataContext.get_current().max_consecutive_actor_init_deaths = ACTOR_START_DEATHS_TOLERATED


def init_ray(verbose: bool = False) -> None:
    """Join the cluster this process runs in (``ray job submit`` sets RAY_ADDRESS; a user may set it too, e.g.
    ``RAY_ADDRESS=auto`` to join a ``ray start`` head on purpose), else start a private local instance, whatever
    other Ray clusters run on the machine; Ray's own log lines only with ``verbose``."""
    import ray

    quiet_ray_logs(verbose)
    replace_actors_lost_at_start()
    if ray.is_initialized():
        return
    quiet = {"logging_level": ray_log_level(verbose), "logging_config": ray_logging_config(verbose)}
    # ray.init applies ``logging_config`` to this process's root logger too; the driver's own INFO lines stay.
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for name in ("HIGGS_TRAIN_HOME", "HF_HOME", "HF_HUB_CACHE", "MLFLOW_TRACKING_URI"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(worker_env(verbose))
    if os.environ.get("RAY_ADDRESS"):
        if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            print(f"Joining the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}", flush=True)
        # Under `ray job submit` the job's runtime env (cluster/runtime_env.yaml) is merged with this one and Ray
        # refuses any env var set in both; the job's value is already in this process's environment, so drop it.
        env = {k: v for k, v in env.items() if k not in _submitted_job_env_vars()}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=True, **quiet)
    else:
        head = _head_left_on_this_machine()
        if head:
            print(
                f"A Ray cluster is running on this machine ({head}); this run starts its own local Ray instance "
                "(set RAY_ADDRESS=auto to run on that cluster instead)",
                flush=True,
            )
        # address="local" starts a private instance: plain ray.init() would join the recorded head instead.
        ray.init(
            address="local",
            num_cpus=max(2, os.cpu_count() or 2),
            include_dashboard=False,
            runtime_env={"env_vars": env},
            **quiet,
        )
    for handler in [h for h in root.handlers if h not in root_handlers]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    quiet_ray_logs(verbose)  # ray.init configures the "ray" logger again
    filter_forwarded_worker_logs(verbose)


def on_this_node() -> dict[str, Any]:
    """Ray remote options that keep a task or actor on this process's node (it waits for this node's resources
    rather than run elsewhere): a label selector on the node's ``ray.io/node-id`` label, the form Ray Data itself
    uses for ``local://`` paths and takes as a named parameter of ``map_batches``.

    Why: this process's node is the one whose disk holds what the process wrote and read (the driver's manifests,
    the user's audio, the local token cache, ``--output_dir``). Work that reads or writes those paths must run here
    on a cluster without a shared disk; a path that exists on another node there is a different folder, or none."""
    import ray
    from ray._raylet import RAY_NODE_ID_KEY

    return {"label_selector": {RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}}


def this_node_resources() -> dict[str, float]:
    """The total resources (CPU, GPU, memory, custom) of this process's node, as Ray registered them."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == here:
            return {k: float(v) for k, v in node["Resources"].items()}
    return {}
