"""The builder's driver: sources -> clips (actors) -> transcripts checked -> pairs -> manifests + data report.

Audio paths in the manifests are relative to the output folder, which is the training job's default
``--audio_base_path`` (the manifest's folder), so ``--train_data DIR/train.jsonl --val_data DIR/val.jsonl`` needs
no further flag.

Clips without a transcript are listed in ``DIR/to_transcribe.tsv`` (``path<TAB>text``, text empty); a rerun reads
the lines a user filled back and pairs those clips like any other. A build that pairs no training sample writes no
manifest (an earlier one in ``DIR`` is removed, so nothing stale looks like this build's result) and says why in
``BuildResult.problem`` and the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from higgs_train.builder.audio import TO_TRANSCRIBE, UNLABELLED, AudioSettings, Clip, ClipProcessor
from higgs_train.builder.pairing import PairingOptions, pair_clips
from higgs_train.builder.ray_stage import process_locally, process_with_ray
from higgs_train.builder.report import build_report, no_sample_reason, write_report
from higgs_train.builder.source_listing import (
    BAD_TRANSCRIPT,
    NO_TRANSCRIPT,
    Rejection,
    SourceError,
    SourceOptions,
    transcript_problem,
)
from higgs_train.builder.sources import input_root, list_source

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
TEMPLATE_HEADER = "path\ttext"


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
    """``train`` / ``val`` are None when no sample of that split was built (no file is written then)."""

    train: Path | None
    val: Path | None
    report: Path
    plot: Path
    train_samples: int
    val_samples: int
    rejected: int
    summary: dict
    to_transcribe: Path | None = None  # the template, when some clips still have no text
    unlabelled: int = 0

    @property
    def folder(self) -> Path:
        return self.report.parent

    @property
    def problem(self) -> str | None:
        """Why no training sample was built (one line), or None."""
        return self.summary.get("no_sample_reason")

    def describe(self) -> str:
        s = self.summary
        return (
            f"{s['source_kind']} source: {s['input_items']} items, {s['clips_written']} clips "
            f"({s['clips_hours'] * 60:.1f} min), {self.train_samples} train / {self.val_samples} val samples, "
            f"{self.rejected} rejected ({', '.join(f'{k}: {v}' for k, v in s['rejected_by_reason'].items()) or '-'}); "
            f"{s['build_seconds']:.1f}s -> {self.folder}"
        )


def check_output_folder(input_path: str | Path, output: str | Path) -> None:
    """Refuse an output folder inside a folder input before anything is written: the builder writes WAVs there,
    and the next build of the same input would read them back as recordings (a speaker named after the folder)."""
    src = Path(input_path).resolve()
    out = Path(output).resolve()
    if src.is_dir() and out.is_relative_to(input_root(src)):
        raise SourceError(f"--output {output} is inside --input {input_path}; choose an output folder outside it")


def build_dataset(options: BuildOptions) -> BuildResult:
    started = time.perf_counter()
    check_output_folder(options.input, options.output)
    out = Path(options.output).resolve()
    audio_settings = options.audio or AudioSettings(output_dir=str(out))
    if Path(audio_settings.output_dir).resolve() != out:
        raise ValueError("AudioSettings.output_dir must be the build's output folder")
    listing = list_source(options.input, options.source, options.source_kind)
    out.mkdir(parents=True, exist_ok=True)

    # Unchanged files of an earlier run come from the content-hash cache here, so a rerun starts no actor for them.
    cache = ClipProcessor(audio_settings)
    done = {item.key: result for item in listing.items if (result := cache.cached_result(item)) is not None}
    todo = [item for item in listing.items if item.key not in done]
    if todo and options.use_ray:
        fresh = process_with_ray(todo, audio_settings, options.num_actors, options.cpus_per_actor)
    elif todo:
        fresh = process_locally(todo, audio_settings)
    else:
        fresh = []
    done.update((result.key, result) for result in fresh)
    results = [done[item.key] for item in listing.items]

    clips: list[Clip] = [c for r in results for c in r.clips]
    file_rejections = [x for r in results for x in r.rejections]
    clips, unlabelled, file_rejections = _fill_from_template(out, clips, file_rejections)
    usable, text_rejections = _checked_transcripts(clips)
    rejections: list[Rejection] = [*listing.rejections, *file_rejections, *text_rejections]
    pairing = pair_clips(usable, options.pairing)
    rejections += pairing.rejections
    train = _write_manifest(out / TRAIN_FILE, pairing.samples("train", options.pairing.system_prompt))
    val = _write_manifest(out / VAL_FILE, pairing.samples("val", options.pairing.system_prompt))
    template = _write_template(out, unlabelled)
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
    still_open = sum(1 for c in unlabelled if not c.text)
    summary["to_transcribe"] = {"file": str(template) if template else None, "clips": still_open}
    if not pairing.train:
        summary["no_sample_reason"] = no_sample_reason(summary, template, still_open)
    report, plot = write_report(summary, out)
    return BuildResult(
        train, val, report, plot, len(pairing.train), len(pairing.val), len(rejections), summary, template, still_open
    )


# ------------------------------------------------------------------------------------- transcripts and template


def _read_template(path: Path) -> dict[str, str]:
    """``{audio_url: text}`` of the lines a user filled in (blank texts and the header are skipped)."""
    if not path.is_file():
        return {}
    filled = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines()[1:]:
        clip, _, text = line.partition("\t")
        if clip.strip() and text.strip():
            filled[clip.strip()] = " ".join(text.split())
    return filled


def _fill_from_template(
    out: Path, clips: list[Clip], rejections: list[Rejection]
) -> tuple[list[Clip], list[Clip], list[Rejection]]:
    """Clips with the texts filled into ``to_transcribe.tsv``; the clips that had no transcript of their own (for
    the next template, filled or not); and the file rejections without the "no transcript" of the filled ones."""
    filled = _read_template(out / TO_TRANSCRIBE)
    result, unlabelled, done = [], [], set()
    for clip in clips:
        if clip.text is None:
            text = filled.get(clip.audio_url)
            clip = dataclasses.replace(clip, text=text, text_from=TO_TRANSCRIBE) if text else clip
            unlabelled.append(clip)
            if text:
                done.add(clip.key)
        result.append(clip)
    kept = [r for r in rejections if not (r.key in done and r.reason in (NO_TRANSCRIPT, UNLABELLED))]
    return result, unlabelled, kept


def _checked_transcripts(clips: list[Clip]) -> tuple[list[Clip], list[Rejection]]:
    """Labelled clips whose text passes ``transcript_problem`` (the trainer's text checks and the speaking-rate
    bound); the others are rejected here, before pairing, so a bad text is never a target nor a reference."""
    usable, rejected = [], []
    for clip in clips:
        if not clip.text:
            continue
        problem = transcript_problem(clip.text, clip.seconds)
        if problem is None:
            usable.append(clip)
        else:
            where = f" (from {TO_TRANSCRIBE})" if clip.text_from == TO_TRANSCRIBE else ""
            rejected.append(Rejection(clip.key, clip.speaker, BAD_TRANSCRIPT, problem + where))
    return usable, rejected


def _write_template(out: Path, unlabelled: list[Clip]) -> Path | None:
    """``to_transcribe.tsv`` listing every clip without a transcript of its own, with the text filled so far."""
    path = out / TO_TRANSCRIBE
    if not unlabelled:
        return None
    lines = [
        TEMPLATE_HEADER,
        *(f"{c.audio_url}\t{c.text or ''}" for c in sorted(unlabelled, key=lambda c: c.audio_url)),
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _write_manifest(path: Path, samples: list[dict]) -> Path | None:
    """The manifest, or None (and no file: an earlier build's would look like this one's) when it has no sample."""
    if not samples:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    tmp.replace(path)
    return path
