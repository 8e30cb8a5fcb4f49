"""Step 4 of the builder: ``data_report.json`` and ``data_report.png``.

The JSON lists every rejected file or clip with its reason, so nothing leaves the data set unaccounted for:
``inputs == used files + rejected files``, and every written clip is either in a manifest or listed (unlabelled,
single-clip speaker).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from higgs_train.builder.audio import Clip
from higgs_train.builder.pairing import PREFERRED_REFERENCE_SECONDS, Pairing
from higgs_train.builder.source_listing import Rejection

REPORT_JSON = "data_report.json"
REPORT_PNG = "data_report.png"
HISTOGRAM_EDGES = [0, 1, 2, 3, 5, 8, 10, 15, 20, 30]


def build_report(
    *,
    source: str,
    kind: str,
    inputs: int,
    clips: list[Clip],
    rejections: list[Rejection],
    pairing: Pairing,
    references_per_target: int,
    cached_files: int,
    input_seconds: float,
    elapsed_seconds: float,
) -> dict[str, Any]:
    in_manifest = {p.target.audio_url for p in pairing.train + pairing.val}
    in_manifest |= {p.reference.audio_url for p in pairing.train + pairing.val}
    speakers: dict[str, dict[str, Any]] = {}
    for clip in clips:
        entry = speakers.setdefault(clip.speaker, {"clips": 0, "labelled_clips": 0, "hours": 0.0, "split": "unused"})
        entry["clips"] += 1
        entry["labelled_clips"] += clip.text is not None
        entry["hours"] += clip.seconds / 3600
    for pair in pairing.train + pairing.val:
        entry = speakers[pair.target.speaker]
        entry["split"] = pair.split if entry["split"] in ("unused", pair.split) else "train+val"
    seconds = [c.seconds for c in clips]
    counts, _ = np.histogram(seconds, bins=HISTOGRAM_EDGES + [max(HISTOGRAM_EDGES[-1] + 1, *seconds, 0)])
    pairs = pairing.train + pairing.val
    low, high = PREFERRED_REFERENCE_SECONDS
    return {
        "source": source,
        "source_kind": kind,
        "input_items": inputs,
        "input_hours": input_seconds / 3600,
        "clips_written": len(clips),
        "clips_hours": sum(seconds) / 3600,
        "clips_in_manifests": len(in_manifest),
        "files_reused_from_cache": cached_files,
        "build_seconds": elapsed_seconds,
        "speakers": dict(sorted(speakers.items())),
        "clip_seconds_histogram": {"edges": HISTOGRAM_EDGES + ["inf"], "counts": counts.tolist()},
        "rejected": [{"item": r.key, "speaker": r.speaker, "reason": r.reason, "detail": r.detail} for r in rejections],
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejections).items())),
        "pairing": {
            "train_samples": len(pairing.train),
            "val_samples": len(pairing.val),
            "references_per_target": references_per_target,
            "train_speakers": sorted({p.target.speaker for p in pairing.train}),
            "val_speakers": sorted({p.target.speaker for p in pairing.val}),
            "held_out_speakers": pairing.val_speakers,
            "references_in_preferred_range": sum(low <= p.reference.seconds <= high for p in pairs),
            "preferred_reference_seconds": [low, high],
        },
    }


def no_sample_reason(report: dict[str, Any], template: Path | None, unlabelled: int) -> str:
    """One line saying why a build paired no training sample and what to do, from the report's own numbers."""
    rejected = report["rejected_by_reason"]
    counts = ", ".join(f"{k}: {v}" for k, v in rejected.items())
    labelled = sum(s["labelled_clips"] for s in report["speakers"].values())
    if unlabelled and template is not None and labelled == 0:
        return f"no training sample: {unlabelled} clips have no transcript; fill {template} and rerun the build"
    if report["input_items"] == 0:
        return "no training sample: the input lists no audio"
    if report["clips_written"] == 0:
        return f"no training sample: every file was rejected ({counts}); see {REPORT_JSON}"
    if report["pairing"]["val_samples"]:
        return "no training sample: every pairable speaker is held out for validation (--val_speakers)"
    return (
        f"no training sample: {labelled} labelled clips, and no speaker has two (a sample pairs a clip with another "
        f"of its speaker); rejected: {counts or 'none'}"
    )


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return json_path, _plot(report, out_dir / REPORT_PNG)


def _plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report_figure(report: dict[str, Any]) -> Any:
    """The report's three panels (clip lengths, minutes per speaker, rejections by reason); a build without a sample
    carries its reason as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, per_speaker, rejected) = plt.subplots(1, 3, figsize=(15, 4))
    problem = report.get("no_sample_reason")
    if problem:
        fig.suptitle(problem, color="tab:red", fontsize=9, wrap=True)
    edges = report["clip_seconds_histogram"]["edges"]
    labels = [f"{a}-{b}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    hist.set(title="clip length (s)", ylabel="clips")
    if sum(report["clip_seconds_histogram"]["counts"]):
        hist.bar(labels, report["clip_seconds_histogram"]["counts"])
        hist.tick_params(axis="x", rotation=45)
    else:
        _empty(hist, "no clip written")
    names = list(report["speakers"])
    per_speaker.set(title="minutes per speaker")
    if names:
        per_speaker.barh(names, [report["speakers"][n]["hours"] * 60 for n in names])
    else:
        _empty(per_speaker, "no clip written")
    reasons = report["rejected_by_reason"]
    rejected.set(title="rejected (by reason)")
    if reasons:
        rejected.barh(list(reasons), list(reasons.values()))
    else:
        _empty(rejected, "nothing rejected")
    fig.tight_layout()
    return fig


def _empty(axes: Any, message: str) -> None:
    """A panel with nothing to draw says so, instead of empty axes with meaningless (negative) ticks."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])
