"""Sources laid out as files: audio files with transcript files beside them, or a text file of lines naming them.

Why these together: each reads a folder tree or a pipe-separated text file, finds an audio file per item on disk,
and takes its transcript from a sidecar file or from the line itself (``folders``, ``libritts``, ``vctk``,
``ljspeech``, ``list``; ``sources`` says how they are told apart). None of them reads a table, so none needs Arrow;
the sources that do are ``table_sources``.
"""

from __future__ import annotations

import re
from pathlib import Path

from higgs_train.builder.source_listing import (
    BAD_LINE,
    EMPTY_TRANSCRIPT,
    NO_SPEAKER_FOLDER,
    NOT_UTF8,
    OTHER_MICROPHONE,
    OUTSIDE_INPUT,
    UNREADABLE,
    Confinement,
    OutsideInput,
    Rejection,
    SourceError,
    SourceItem,
    SourceListing,
    SourceOptions,
    add_confined_row,
    add_row,
    clean_transcript,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
TRANSCRIPT_EXTENSIONS = (".txt", ".lab")
LIBRITTS_TRANSCRIPTS = (".normalized.txt", ".original.txt")  # LibriTTS's normalized text first: numbers spelled out


def _read_transcript_file(path: Path, key: str, speaker: str) -> tuple[SourceItem | None, Rejection | None]:
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return None, Rejection(key, speaker, NOT_UTF8, f"{path.name}: byte {err.start}")
    except OSError as err:
        return None, Rejection(key, speaker, UNREADABLE, f"{path.name}: {err.strerror}")
    text, lines = clean_transcript(raw)
    if not text:
        return None, Rejection(key, speaker, EMPTY_TRANSCRIPT, path.name)
    return SourceItem(key, speaker, text, text_lines=lines), None


def sidecar(audio: Path, extension: str) -> Path:
    """The file beside ``audio`` with its stem and ``extension`` (``.normalized.txt`` too, which ``with_suffix`` cannot
    add); ``sources`` looks for LibriTTS's this way."""
    return audio.with_name(audio.stem + extension)


def _add_audio_file(
    listing: SourceListing, key: str, speaker: str, audio: Path, transcript: Path | None, confine: Confinement
) -> None:
    """One audio file and its transcript file (None: none; the clip is kept unlabelled for ``to_transcribe.tsv``)."""
    try:
        confine.check(audio)
        if transcript is not None:
            confine.check(transcript)
    except OutsideInput as err:
        listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
        return
    if transcript is None:
        listing.items.append(SourceItem(key, speaker, None, str(audio)))
        return
    item, rejection = _read_transcript_file(transcript, key, speaker)
    if rejection:
        listing.rejections.append(rejection)
    else:
        assert item is not None
        listing.items.append(SourceItem(key, speaker, item.text, str(audio), text_lines=item.text_lines))


def _audio_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise SourceError(f"no audio files ({'|'.join(AUDIO_EXTENSIONS)}) under {root}")
    return files


# ---------------------------------------------------------------------------------------- folders and LibriTTS


def list_folders(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    listing = SourceListing("folders")
    for audio in _audio_files(root):
        rel = audio.relative_to(root)
        key = rel.as_posix()
        if len(rel.parts) < 2 and not options.speaker:
            listing.rejections.append(Rejection(key, None, NO_SPEAKER_FOLDER, "audio must be in <speaker>/"))
            continue
        speaker = options.speaker or rel.parts[0]
        transcript = next((t for ext in TRANSCRIPT_EXTENSIONS if (t := audio.with_suffix(ext)).is_file()), None)
        _add_audio_file(listing, key, speaker, audio, transcript, confine)
    return listing


def list_libritts(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """``<speaker>/<chapter>/<utt>.wav``: the speaker is two folders up, whatever level ``--input`` names (the
    corpus, a subset such as ``train-clean-100``, one speaker's or one chapter's folder)."""
    listing = SourceListing("libritts")
    extensions = (*LIBRITTS_TRANSCRIPTS, *TRANSCRIPT_EXTENSIONS)
    for audio in _audio_files(root):
        key = audio.relative_to(root).as_posix()
        speaker = options.speaker or audio.parent.parent.name
        transcript = next((t for ext in extensions if (t := sidecar(audio, ext)).is_file()), None)
        _add_audio_file(listing, key, speaker, audio, transcript, confine)
    return listing


# ------------------------------------------------------------------------------------------------------ VCTK

_MIC = re.compile(r"^(?P<utt>.+?)(?:_mic(?P<mic>\d+))?$")


def list_vctk(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """``wav48*/<spk>/<utt>[_micN].wav|flac`` with ``txt/<spk>/<utt>.txt``. VCTK 0.92 ships every utterance from
    two microphones: one is kept (mic1 first), the other is reported, so a reference is never the target's own
    sentence from the other microphone."""
    listing = SourceListing("vctk")
    folders = sorted((d for d in root.glob("wav48*") if d.is_dir()), key=lambda d: ("trimmed" not in d.name, d.name))
    if not folders:
        raise SourceError(f"no wav48* folder in {root} (VCTK keeps its audio in wav48_silence_trimmed/ or wav48/)")
    audio_root = folders[0]
    kept: dict[tuple[str, str], Path] = {}
    for audio in sorted(_audio_files(audio_root), key=lambda p: (p.parent.name, p.stem)):
        rel = audio.relative_to(audio_root)
        key = f"{audio_root.name}/{rel.as_posix()}"
        if len(rel.parts) != 2:
            listing.rejections.append(Rejection(key, None, NO_SPEAKER_FOLDER, "VCTK audio must be in <speaker>/"))
            continue
        speaker, match = rel.parts[0], _MIC.match(audio.stem)
        assert match is not None
        utt = match["utt"]
        if (speaker, utt) in kept:
            detail = f"same utterance as {kept[speaker, utt].name} (one microphone is kept)"
            listing.rejections.append(Rejection(key, speaker, OTHER_MICROPHONE, detail))
            continue
        kept[speaker, utt] = audio
        transcript = root / "txt" / speaker / f"{utt}.txt"
        _add_audio_file(
            listing, key, options.speaker or speaker, audio, transcript if transcript.is_file() else None, confine
        )
    return listing


# ------------------------------------------------------------------------------------------- pipe-separated


def _pipe_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path} is not UTF-8 text (byte {err.start})") from err
    return [(n, line.split("|")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def list_ljspeech(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    csv_file = path / "metadata.csv" if path.is_dir() else path
    root = csv_file.parent
    default_speaker = options.speaker or root.name
    listing = SourceListing("ljspeech")
    for line_no, fields in _pipe_lines(csv_file):
        key = f"{csv_file.name}:{line_no}"
        if len(fields) not in (2, 3, 4):
            listing.rejections.append(Rejection(key, None, BAD_LINE, f"{len(fields)} fields, expected 2-4"))
            continue
        file_id, text = fields[0].strip(), fields[1]
        if len(fields) >= 3 and fields[2].strip():
            text = fields[2]  # the normalized column spells out numbers and abbreviations
        speaker = fields[3].strip() if len(fields) == 4 and fields[3].strip() else default_speaker
        try:
            candidates = [confine.check(c, root) for c in (f"wavs/{file_id}.wav", f"{file_id}.wav", file_id)]
        except OutsideInput as err:
            listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
            continue
        audio = next((c for c in candidates if c.is_file()), None)
        add_row(listing, key, speaker, text, audio, f"audio not found: wavs/{file_id}.wav")
    return listing


def list_pipe_file(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    listing = SourceListing("list")
    for line_no, fields in _pipe_lines(path):
        key = f"{path.name}:{line_no}"
        if len(fields) == 2:
            audio_rel, speaker, text = fields[0], options.speaker or path.stem, fields[1]
        elif len(fields) == 3:
            audio_rel, speaker, text = fields[0], fields[1].strip(), fields[2]
        else:
            listing.rejections.append(Rejection(key, None, BAD_LINE, f"{len(fields)} fields, expected 2 or 3"))
            continue
        add_confined_row(listing, confine, key, speaker, text, audio_rel.strip(), path.parent)
    return listing
