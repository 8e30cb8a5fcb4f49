"""The builder's driver: sources -> clips (actors) -> pairs -> ``train.jsonl`` / ``val.jsonl`` + data report.

Audio paths in the manifests are relative to the output folder, which is the training job's default
``--audio_base_path`` (the manifest's folder), so ``--train_data DIR/train.jsonl --val_data DIR/val.jsonl`` needs
no further flag.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from higgs_train.data.builder.audio import AudioSettings, Clip, ClipProcessor
from higgs_train.data.builder.pairing import PairingOptions, pair_clips
from higgs_train.data.builder.report import build_report, write_report
from higgs_train.data.builder.sources import Rejection, SourceOptions, list_source

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"


@dataclass(frozen=True)
class BuildOptions:
    input: str
    output: str
    source: SourceOptions = field(default_factory=SourceOptions)
    audio: AudioSettings | None = None  # output_dir is filled in from ``output`` when None
    pairing: PairingOptions = field(default_factory=PairingOptions)
    source_kind: str | None = None
    use_ray: bool = True
    num_actors: int = 2
    cpus_per_actor: float = 0.5


@dataclass(frozen=True)
class BuildResult:
    train: Path
    val: Path
    report: Path
    plot: Path
    train_samples: int
    val_samples: int
    rejected: int
    summary: dict

    def describe(self) -> str:
        s = self.summary
        return (
            f"{s['source_kind']} source: {s['input_items']} items, {s['clips_written']} clips "
            f"({s['clips_hours'] * 60:.1f} min), {self.train_samples} train / {self.val_samples} val samples, "
            f"{self.rejected} rejected ({', '.join(f'{k}: {v}' for k, v in s['rejected_by_reason'].items()) or '-'}); "
            f"{s['build_seconds']:.1f}s -> {self.train.parent}"
        )


def build_dataset(options: BuildOptions) -> BuildResult:
    started = time.perf_counter()
    out = Path(options.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    audio_settings = options.audio or AudioSettings(output_dir=str(out))
    if Path(audio_settings.output_dir).resolve() != out:
        raise ValueError("AudioSettings.output_dir must be the build's output folder")

    listing = list_source(options.input, options.source, options.source_kind)
    # Unchanged files of an earlier run come from the content-hash cache here, so a rerun starts no actor for them.
    cache = ClipProcessor(audio_settings)
    done = {item.key: result for item in listing.items if (result := cache.cached_result(item)) is not None}
    todo = [item for item in listing.items if item.key not in done]
    if todo and options.use_ray:
        from higgs_train.data.builder.ray_stage import process_with_ray

        fresh = process_with_ray(todo, audio_settings, options.num_actors, options.cpus_per_actor)
    elif todo:
        from higgs_train.data.builder.ray_stage import process_locally

        fresh = process_locally(todo, audio_settings)
    else:
        fresh = []
    done.update((result.key, result) for result in fresh)
    results = [done[item.key] for item in listing.items]

    clips: list[Clip] = [c for r in results for c in r.clips]
    rejections: list[Rejection] = [*listing.rejections, *(x for r in results for x in r.rejections)]
    pairing = pair_clips(clips, options.pairing)
    rejections += pairing.rejections
    train = _write_jsonl(out / TRAIN_FILE, pairing.samples("train", options.pairing.system_prompt))
    val = _write_jsonl(out / VAL_FILE, pairing.samples("val", options.pairing.system_prompt))
    summary = build_report(
        source=str(options.input),
        kind=listing.kind,
        inputs=len(listing.items) + len(listing.rejections),
        clips=clips,
        rejections=rejections,
        pairing=pairing,
        references_per_target=options.pairing.references_per_target,
        cached_files=sum(r.cached for r in results),
        input_seconds=sum(r.input_seconds for r in results),
        elapsed_seconds=time.perf_counter() - started,
    )
    report, plot = write_report(summary, out)
    return BuildResult(train, val, report, plot, len(pairing.train), len(pairing.val), len(rejections), summary)


def _write_jsonl(path: Path, samples: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    tmp.replace(path)
    return path
