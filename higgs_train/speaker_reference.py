"""A speaker's reference clip from a built data set: what ``generate.py --speaker NAME --data DIR`` clones.

``DIR`` is the output folder of ``prepare_data.py build`` (``train.jsonl``, ``val.jsonl``, ``audio/``,
``data_report.json``) or any folder of training manifests (the sample data's ``train.json`` / ``val.json``). Every
(audio, transcript) pair of the manifests counts, references and targets alike, by the row's ``speaker``; audio
paths resolve under ``DIR`` as the training job resolves them (``audio_io.resolve_audio_path``).

Which clip is "best": the longest one whose length lies in the builder's preferred reference range
(``PREFERRED_REFERENCE_SECONDS``, 3-10 s: long enough to carry the voice, short enough to leave the prompt room
for the target), else the one closest to that range. A clip is only taken when it is clean: its transcript passes
the trainer's text checks, its file the trainer's audio checks (``read_checked``: readable, not truncated, not
silent, within ``AudioLimits``), and the generated-audio check (``evaluation.suite.check_audio``: not clipped, not
silent, not too short for its transcript -- a transcript that does not belong to the clip). Candidates are tried in
that order and the first clean one wins, so only as many files are decoded as needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from higgs_train.builder.pairing import PREFERRED_REFERENCE_SECONDS
from higgs_train.chatml import clips_with_transcripts
from higgs_train.data.audio_io import (
    AudioLimits,
    audio_header_seconds,
    display_name,
    read_checked,
    resolve_audio_path,
    to_mono,
)
from higgs_train.data.manifest import load_manifest
from higgs_train.data.reasons import AudioError
from higgs_train.data.row_checks import structural_reason, text_reason

MANIFEST_NAMES = ("train.jsonl", "val.jsonl", "train.json", "val.json")
REPORT_NAME = "data_report.json"  # the builder's report (builder.report.REPORT_JSON)


class ReferenceError(ValueError):
    """No usable reference for the speaker; the message names the speaker, the folder and what to do."""


@dataclass(frozen=True)
class SpeakerReference:
    speaker: str
    audio_path: Path
    text: str
    seconds: float
    skipped: tuple[str, ...] = ()  # better-ranked clips that were not clean, with the reason


class _AnyText:
    """Stands in for the tokenizer in ``text_reason`` (the model is not loaded yet); the prompt's tokenization
    checks the rest when it is built."""

    @staticmethod
    def encode(text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * len(text)


def speaker_clips(data_dir: str | Path) -> dict[str, dict[str, str]]:
    """``speaker -> {audio_url: transcript}`` over the folder's manifests (first transcript seen per clip)."""
    folder = Path(data_dir)
    manifests = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    if not manifests:
        raise ReferenceError(
            f"--data {data_dir}: no {' / '.join(MANIFEST_NAMES)} in it; give the output folder of "
            "`prepare_data.py build` (or a folder of training manifests)"
        )
    clips: dict[str, dict[str, str]] = {}
    for manifest in manifests:
        for row in load_manifest(manifest):
            reason, turns = structural_reason(row)
            speaker = row.get("speaker")
            if reason or not speaker:
                continue
            for text, audio in clips_with_transcripts(turns):
                if text:
                    clips.setdefault(speaker, {}).setdefault(audio, text)
    return clips


def _rank(seconds: float, low: float, high: float) -> tuple[int, float]:
    """Sort key: in-range clips first, longest first; then the others by their distance to the range."""
    if low <= seconds <= high:
        return 0, -seconds
    return 1, (low - seconds) if seconds < low else (seconds - high)


def pick_reference(data_dir: str | Path, speaker: str) -> SpeakerReference:
    """``speaker``'s best clean reference clip in ``data_dir`` (see the module docstring), or ``ReferenceError``."""
    # Deferred on purpose: the audio check imports torch; the Studio lists speakers (``speaker_clips``) without it.
    from higgs_train.evaluation.suite import check_audio

    folder = Path(data_dir).resolve()
    clips = speaker_clips(folder)
    if speaker not in clips:
        raise ReferenceError(f"--speaker {speaker!r} is not in {data_dir}{_unpaired_hint(folder, speaker)}; "
                             f"known speakers: {', '.join(sorted(clips)) or 'none'}")  # fmt: skip
    low, high = PREFERRED_REFERENCE_SECONDS
    candidates, skipped = [], []
    for url, text in clips[speaker].items():
        try:
            path = resolve_audio_path(url, folder)
            candidates.append((_rank(audio_header_seconds(path), low, high), url, path, text))
        except (AudioError, OSError, RuntimeError) as err:  # soundfile raises RuntimeError for undecodable headers
            skipped.append(f"{url}: {err}")
    limits = AudioLimits()
    for _, url, path, text in sorted(candidates, key=lambda c: (c[0], c[1])):
        reason = text_reason([("user", [("text", text)])], _AnyText())
        if reason is None:
            try:
                data, rate = read_checked(path, limits, display_name(path, folder))
                wave = to_mono(data) if data.shape[1] > 1 else data[:, 0]
                problems = check_audio(wave, rate, text)
                reason = "; ".join(problems) if problems else None
            except AudioError as err:
                reason = str(err)
        if reason is None:
            return SpeakerReference(speaker, path, text, len(wave) / rate, tuple(skipped))
        skipped.append(f"{url}: {reason}")
    raise ReferenceError(
        f"--speaker {speaker!r}: none of its {len(clips[speaker])} clips in {data_dir} is a clean reference "
        f"({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}); pass --ref_audio and --ref_text instead"
    )


def _unpaired_hint(folder: Path, speaker: str) -> str:
    """Why the builder's report knows a speaker the manifests lack (e.g. a speaker with a single clip)."""
    report = folder / REPORT_NAME
    try:
        entry = json.loads(report.read_text()).get("speakers", {}).get(speaker) if report.is_file() else None
    except (OSError, ValueError):
        return ""
    if not isinstance(entry, dict):
        return ""
    return (
        f" (its {REPORT_NAME} lists {entry.get('clips', '?')} clip(s), {entry.get('labelled_clips', '?')} with a "
        f"transcript, none in a manifest: a speaker needs two labelled clips to be paired)"
    )
