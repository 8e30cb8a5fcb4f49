"""The Ray edge of the builder: run ``ClipProcessor`` over the source items on a pool of CPU actors.

``ray.data.from_items`` -> ``map_batches(ClipActor)`` on ``ActorPoolStrategy(size=num_actors)`` with fractional
``num_cpus``, so decode, resample, VAD and loudness run in parallel on a cluster and still fit a 2-CPU machine
(2 actors x 0.5 CPU by default). Results stream back as actors finish them, and the driver prints a progress line
(files done, rate, ETA; ``console.CountProgress`` over ``console.RateLine``) while Ray's own bars stay off. Items
and results cross the process boundary as typed objects rebuilt at each end: a ``SourceItem`` as its fields
(strings, bytes, a list of strings: Arrow columns), a ``FileResult`` as its JSON form (``FileResult.to_json``); Arrow holds both natively, where it would
have to fall back to pickling the dataclasses.

The actors stay on the driver's node: they read the corpus and write the clips, the data set and the builder's
cache into folders of that node, which other nodes of a cluster without a shared disk do not have.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from higgs_train.builder.audio import AudioSettings, ClipProcessor, FileResult
from higgs_train.builder.source_listing import SourceItem
from higgs_train.console import CountProgress, emit
from higgs_train.ray_session import init_ray, on_this_node

RESULT = "result_json"


class ClipActor:
    """Ray Data callable class: one ``ClipProcessor`` (and its VAD / ASR models) per actor."""

    def __init__(self, settings: AudioSettings, torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.processor = ClipProcessor(settings)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        items = [SourceItem(**{**row, "text_lines": tuple(row["text_lines"])}) for row in batch.to_pylist()]
        return {RESULT: np.array([self.processor(item).to_json() for item in items], dtype=object)}


def process_with_ray(
    items: list[SourceItem], settings: AudioSettings, num_actors: int = 2, cpus_per_actor: float = 0.5
) -> list[FileResult]:
    """Every item's ``FileResult``, in item order."""
    import ray

    if not items:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        init_ray()  # the one way to start or join Ray: joins the cluster under `ray job submit`
    try:
        return _run(ray, items, settings, num_actors, cpus_per_actor)
    finally:
        if started_here:
            ray.shutdown()  # release the actors (and their VAD / ASR models) before pairing and reporting


def _run(ray, items: list[SourceItem], settings: AudioSettings, num_actors: int, cpus_per_actor: float):
    rows = [dataclasses.asdict(item) for item in items]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(items), 200))
    processed = dataset.map_batches(
        ClipActor,
        fn_constructor_kwargs={"settings": settings, "torch_threads": max(1, int(cpus_per_actor))},
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        batch_size=1,
        batch_format="pyarrow",
        **on_this_node(),  # the actors read the corpus and write the clips and their cache: this node's disk
    )
    progress = CountProgress(len(items), "processing audio (Ray)")
    emit(progress.line(0))
    by_key: dict[str, FileResult] = {}
    for row in processed.iter_rows():
        result = FileResult.from_json(row[RESULT])
        by_key[result.key] = result
        line = progress.update(len(by_key))
        if line:
            emit(line)
    return [by_key[item.key] for item in items]


def process_locally(items: list[SourceItem], settings: AudioSettings) -> list[FileResult]:
    """The same stage in this process (tests, tiny data sets, debugging)."""
    processor = ClipProcessor(settings)
    return [processor(item) for item in tqdm(items, desc="processing audio", unit="file")]
