"""How big the token-cache build's two stages are, and whether the Ray cluster can hold them, checked up front.

Why a module of its own: the rule for what a build may ask of the cluster is needed before any build starts (the
train driver's resource check, ``driver.cluster``, refuses ``--data_actor_gpus`` on a cluster without the GPUs) and
by the build itself (``ray_pipeline``); it depends on nothing but Ray's resource table, so the driver need not load
the cache, its keys and its storage to ask it.

Resource sizing (the job's total must fit the Ray cluster; on this machine ``ray.init(num_cpus=2)``):

* each encoder actor reserves ``cpus_per_actor`` (default 0.5) and runs torch with ``max(1, floor(cpus_per_actor))``
  intra-op threads (``StageSizing.torch_threads``), so N actors never oversubscribe the cores they reserved by more
  than rounding; with ``gpus_per_actor`` it also reserves that share of a GPU and encodes there (refused up front
  when the node or cluster has too few GPUs: ``data_actor_gpu_reason``);
* read/decode/filter/write tasks reserve ``IO_TASK_CPUS`` (0.25) each;
* ``num_actors * cpus_per_actor + IO_TASK_CPUS`` must not exceed the CPUs of the driver's node, where the build
  runs by default (``--data_nodes driver``; the cluster's with ``--data_nodes any``), checked up front: Ray would
  otherwise wait forever for an actor it cannot place, which looks like a hang;
* the cache is built before training starts, so training workers (``cpus_per_train_worker`` each) do not compete
  with these actors; the pool is released when the build returns. With 2 CPUs the defaults (2 actors x 0.5 + 0.25)
  leave 0.75 CPU for the driver and Ray's own repartition tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from higgs_train.ray_session import this_node_resources

IO_TASK_CPUS = 0.25
# Clips per encoder call, on CPU and GPU actors alike: one, so every clip gets the codes generation would give it
# alone. Stacking clips of equal length measured slower on CPU (0.82x per CPU s) and, on an H200, 3.8-18x faster
# but with 0.06-0.3% of the codes different from the solo ones (0.002% with TF32 off: the GPU picks other
# convolution kernels per batch shape): benchmarks/encode_device.py, README "Benchmarks". One clip per call on that
# GPU encodes 330-350 audio s per s (10 s clips), about a hundred CPU cores' worth.
ENCODE_BATCH = 1


@dataclass(frozen=True)
class StageSizing:
    """How the build's two stages are sized: decode tasks (``IO_TASK_CPUS`` each) and the encoder actor pool."""

    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int  # manifest rows per batch (both stages)
    encode_batch_size: int  # most clips per encoder call (ClipEncoder)

    @property
    def torch_threads(self) -> int:
        """Intra-op threads per encoder actor: its whole reserved CPUs, at least one, so N actors never
        oversubscribe the cores they reserved by more than rounding."""
        return max(1, math.floor(self.cpus_per_actor))


def data_actor_gpu_reason(
    num_actors: int, gpus_per_actor: float, resources: dict[str, float], where: str = "the Ray cluster"
) -> str | None:
    """Why encoder actors asking ``gpus_per_actor`` GPUs each cannot be placed on ``resources`` (those of
    ``where``); None when they can.

    The one rule for ``--data_actor_gpus``, used by the train driver's resource check and the pipeline's own."""
    if gpus_per_actor <= 0:
        return None
    have = float(resources.get("GPU", 0.0))
    need = num_actors * gpus_per_actor
    if need <= have + 1e-9:
        return None
    has = "has no GPUs" if have == 0 else f"has {have:g}"
    fix = "drop --data_actor_gpus to encode on CPUs, or lower dataloader_num_workers"
    if where != "the Ray cluster":
        fix += ", or encode on the GPU nodes with --data_nodes any (audio and --cache_dir mounted on every node)"
    return f"--data_actor_gpus {gpus_per_actor:g} with {num_actors} data actor(s) needs {need:g} GPU(s) but {where} {has}; {fix}"


def _build_resources(on_driver_node: bool) -> tuple[dict[str, float], str]:
    """The resources a build may use and their owner's name in messages: the driver's node when the build is pinned
    there (``--data_nodes driver``), else the whole cluster."""
    import ray

    if on_driver_node:
        return this_node_resources(), "the driver's node"
    return ray.cluster_resources(), "the Ray cluster"


def check_resources(
    num_actors: int, cpus_per_actor: float, gpus_per_actor: float = 0.0, on_driver_node: bool = True
) -> None:
    """Fail fast instead of waiting forever for actors the cluster (or the driver's node) cannot place."""
    resources, where = _build_resources(on_driver_node)
    total = float(resources.get("CPU", 0.0))
    need = num_actors * cpus_per_actor + IO_TASK_CPUS
    if need > total + 1e-9:
        fix = "lower dataloader_num_workers or cpus_per_data_actor"
        if on_driver_node:
            fix += ", or spread the build with --data_nodes any (audio and --cache_dir mounted on every node)"
        raise ValueError(
            f"token-cache build needs {need:g} CPUs ({num_actors} actors x {cpus_per_actor:g} + {IO_TASK_CPUS:g} for "
            f"read/decode/write tasks) but {where} has {total:g}; {fix}"
        )
    reason = data_actor_gpu_reason(num_actors, gpus_per_actor, resources, where)
    if reason:
        raise ValueError(reason)
