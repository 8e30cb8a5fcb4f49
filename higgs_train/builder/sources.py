"""Step 1 of the builder: find out what kind of source the user pointed at and list its clips.

A source becomes ``SourceItem``s (one audio file or one dataset row, its speaker and transcript) plus
``Rejection``s for what cannot become an item (a missing, empty or non-UTF-8 transcript, an audio file outside any
speaker folder). Nothing is decoded here: listing a 100 h corpus must stay fast; audio work happens in the actors.

Why this module holds only the kinds: the readers are ``file_sources`` (audio and transcript files on disk)
and ``table_sources`` (rows of a table), over one vocabulary (``source_listing``); here a source is told apart
and handed to its reader, and every listed transcript passes the trainer's text checks.

Source kinds (``detect_source_kind`` tells them apart, ``--source_kind`` skips it); speakers come from the layout:

* ``hf_disk``: a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` or ``dataset_dict.json``);
  e.g. ``--input hf_dataset --text_column sentence --speaker_column client_id``;
* ``ljspeech``: ``metadata.csv`` (or a folder holding it): ``id|text``, ``id|text|normalized`` or
  ``id|text|normalized|speaker``, audio in ``wavs/<id>.wav`` (or ``<id>.wav``); e.g. ``--input LJSpeech-1.1``;
* ``tsv``: Common Voice: a ``.tsv`` file (or a folder of them: ``validated.tsv`` if present, else every ``*.tsv``
  but ``invalidated``/``other``) with ``path``, ``sentence`` and ``client_id`` (the speaker) columns, audio in
  ``clips/<path>``; e.g. ``--input cv-corpus-17.0/en/train.tsv``;
* ``vctk``: VCTK: ``txt/<spk>/<utt>.txt`` beside ``wav48*/<spk>/<utt>[_mic1|_mic2].wav|flac`` (one microphone
  per utterance: mic1, else the other); e.g. ``--input VCTK-Corpus-0.92``;
* ``parquet``: a ``.parquet`` file or a folder of them (a Hugging Face dataset's Parquet export) *without*
  ``messages``: columns ``--audio_column`` (``{"bytes", "path"}`` or ``{"array", "sampling_rate"}``),
  ``--text_column``, ``--speaker_column``; e.g. ``--input hf_dataset_parquet/ --text_column sentence``;
* ``manifest``: a training manifest (``.json`` / ``.jsonl``, or Parquet with ``messages``/``messages_json``);
  its clips are re-paired; e.g. ``--input data/train.jsonl``;
* ``list``: any other text file of ``audio|text`` or ``audio|speaker|text`` lines (paths relative to the file);
  e.g. ``--input clips.txt``;
* ``libritts``: LibriTTS / LibriTTS-R: ``<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt`` (preferred)
  or ``<utt>.original.txt``; the speaker is the folder two levels up; e.g. ``--input LibriTTS_R/train-clean-100``;
* ``folders``: a folder with one sub-folder per speaker of ``*.wav|flac|mp3|ogg``, each with a ``.txt`` or ``.lab``
  transcript of the same name; e.g. ``--input recordings`` (``recordings/<speaker>/<name>.wav`` + ``<name>.txt``).

Every path a source names (a symlink, a ``..`` or absolute path in a CSV, TSV, list, dataset or manifest) must
resolve inside the input folder (``--allow_outside PATH`` adds a folder); a recording without a transcript file is
kept (cut at pauses when long) and listed in ``DIR/to_transcribe.tsv`` for you to fill.
"""

from __future__ import annotations

from pathlib import Path

from higgs_train.builder.file_sources import (
    AUDIO_EXTENSIONS,
    LIBRITTS_TRANSCRIPTS,
    list_folders,
    list_libritts,
    list_ljspeech,
    list_pipe_file,
    list_vctk,
    sidecar,
)
from higgs_train.builder.source_listing import (
    BAD_TRANSCRIPT,
    Confinement,
    Rejection,
    SourceError,
    SourceListing,
    SourceOptions,
    transcript_problem,
)
from higgs_train.builder.table_sources import (
    COMMON_VOICE_COLUMNS,
    list_hf_disk,
    list_manifest,
    list_parquet,
    list_tsv,
)
from higgs_train.data.plain_parquet import UnsafeParquetError, parquet_schema

SOURCE_KINDS = ("hf_disk", "ljspeech", "tsv", "vctk", "parquet", "manifest", "list", "libritts", "folders")


# ------------------------------------------------------------------------------------------------ detection


def detect_source_kind(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"input not found: {path}")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_disk"
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        first = next((p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS), None)
        if first is not None and any(sidecar(first, ext).is_file() for ext in LIBRITTS_TRANSCRIPTS):
            return "libritts"  # before tsv: a LibriTTS chapter folder holds a .trans.tsv
        if any(_is_common_voice_tsv(t) for t in path.glob("*.tsv")):
            return "tsv"
        if (path / "txt").is_dir() and any(d.is_dir() for d in path.glob("wav48*")):
            return "vctk"
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
            return "manifest" if _parquet_is_manifest(next(iter(sorted(path.rglob("*.parquet"))))) else "parquet"
        return "folders"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "manifest" if _parquet_is_manifest(path) else "parquet"
    if suffix in (".json", ".jsonl"):
        return "manifest"
    if suffix == ".tsv":
        return "tsv"
    if path.name == "metadata.csv":
        return "ljspeech"
    first = _first_fields(path)
    if first and Path(first[0]).suffix.lower() not in AUDIO_EXTENSIONS:
        return "ljspeech"
    return "list"


def _is_common_voice_tsv(path: Path) -> bool:
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        return COMMON_VOICE_COLUMNS[0] in handle.readline().rstrip("\r\n").split("\t")


def _parquet_is_manifest(path: Path) -> bool:
    try:
        names = set(parquet_schema(path).names)
    except UnsafeParquetError as err:
        raise SourceError(f"{err}; write it with plain columns") from None
    return bool(names & {"messages", "messages_json"})


def _first_fields(path: Path) -> list[str]:
    try:
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            if line.strip():
                return line.split("|")
    except UnicodeDecodeError as err:
        raise SourceError(f"list file is not UTF-8 text: {path}") from err
    return []


def input_root(path: str | Path) -> Path:
    """The folder a source may read from: the input folder, or the folder holding an input file."""
    src = Path(path).resolve()
    return src if src.is_dir() else src.parent


def list_source(path: str | Path, options: SourceOptions | None = None, kind: str | None = None) -> SourceListing:
    """Detect (unless ``kind`` is given) and list a source; items whose transcript fails the trainer's text checks
    become rejections here, before any audio is decoded."""
    src = Path(path).resolve()  # the confinement judges real paths; listing them from the real root keeps keys
    options = options or SourceOptions()
    kind = kind or detect_source_kind(src)
    readers = {
        "hf_disk": list_hf_disk,
        "parquet": list_parquet,
        "manifest": list_manifest,
        "ljspeech": list_ljspeech,
        "tsv": list_tsv,
        "vctk": list_vctk,
        "list": list_pipe_file,
        "libritts": list_libritts,
        "folders": list_folders,
    }
    if kind not in readers:
        raise SourceError(f"unknown source kind {kind!r}; one of {', '.join(SOURCE_KINDS)}")
    confine = Confinement(input_root(src), tuple(Path(p).resolve() for p in options.allow_outside))
    listing = readers[kind](src, options, confine)
    listing.kind = kind
    items, listing.items = listing.items, []
    for item in items:
        problem = transcript_problem(item.text) if item.text is not None else None
        if problem:
            listing.rejections.append(Rejection(item.key, item.speaker, BAD_TRANSCRIPT, problem))
        else:
            listing.items.append(item)
    return listing


def describe_kinds() -> str:
    """The ``--help`` text listing the source kinds (this module's docstring, from the list on)."""
    doc = __doc__ or ""
    return doc[doc.index("Source kinds") :].strip()
