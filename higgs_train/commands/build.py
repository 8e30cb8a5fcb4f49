"""Data preparation commands (``ray_jobs/prepare_data.py``).

``convert``: any manifest form (JSON list, JSONL, Parquet) -> canonical Parquet.
``build``: recordings (speaker folders, LJSpeech metadata.csv, audio|text lists, a Hugging Face dataset, a
manifest) -> ``train.jsonl`` / ``val.jsonl`` voice-cloning pairs and a data report (``build --help``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from higgs_train.builder.audio import AudioSettings
from higgs_train.builder.build import BuildOptions, build_dataset
from higgs_train.builder.pairing import PairingOptions
from higgs_train.builder.source_listing import SourceError, SourceOptions
from higgs_train.builder.sources import SOURCE_KINDS, describe_kinds
from higgs_train.chatml import DEFAULT_SYSTEM_PROMPT
from higgs_train.data.manifest import ManifestError, convert_manifest
from higgs_train.flag_parser import FlagParser

DESCRIPTION = f"""Build DIR/train.jsonl and DIR/val.jsonl (voice-cloning pairs), DIR/audio/<speaker>/*.wav (24 kHz mono
16-bit) and DIR/data_report.json + .png from recordings. For a small set (up to a few hundred files) --local is
quicker than starting Ray.

{describe_kinds()}
"""
USAGE = "%(prog)s --input SRC --output DIR [flags]"


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``build``'s flags; defaults are documented in ``--help`` and the README."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = DESCRIPTION
    parser.usage = USAGE
    add = parser.add_argument
    add("--input", required=True, help="source folder or file (kind detected, see above)")
    add("--output", required=True, help="output folder DIR")
    add("--source_kind", choices=SOURCE_KINDS, default=None, help="skip detection (default: detect)")
    add("--speaker", default=None, help="speaker name for single-speaker sources (default: the source's name)")
    add(
        "--allow_outside",
        action="append",
        default=[],
        metavar="PATH",
        help="a folder outside --input that the source's paths (symlinks, CSV/list entries) may name; repeatable "
        "(default: none, such paths are rejected)",
    )
    add("--max_file_seconds", type=float, default=3600.0, help="longer files (by header) are rejected unread (3600)")
    add("--max_file_mb", type=float, default=1024.0, help="larger files are rejected unread (default 1024)")
    add("--audio_column", default="audio", help="HF dataset / Parquet audio column (default: audio)")
    add("--text_column", default="text", help="HF dataset / Parquet transcript column (default: text)")
    add("--speaker_column", default="speaker", help="HF dataset / Parquet speaker column (default: speaker)")
    add("--min_audio_seconds", type=float, default=0.5, help="shorter clips are rejected (default 0.5)")
    add("--max_audio_seconds", type=float, default=30.0, help="longer files are rejected or --segment-ed (30)")
    add("--segment", action="store_true", help="cut files over --max_audio_seconds at pauses (silero-vad)")
    add("--min_segment_seconds", type=float, default=2.0, help="segment length lower bound (default 2)")
    add("--max_segment_seconds", type=float, default=15.0, help="segment length upper bound (default 15)")
    add("--asr_model", default=None, help="local Whisper folder to transcribe segments that have no transcript")
    add("--loudness", type=float, default=None, help="normalise each clip to this LUFS, e.g. -23 (default: off)")
    add("--no_trim", action="store_true", help="keep leading/trailing silence (default: trimmed)")
    add("--references_per_target", type=int, default=1, help="reference clips per target (default 1)")
    add("--seed", type=int, default=0, help="reference choice and split seed (default 0)")
    add("--val_speakers", default="", help="held-out speakers: comma-separated names, or a number N")
    add("--val_fraction", type=float, default=0.1, help="share of each speaker's clips for val (default 0.1)")
    add(
        "--system_prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help="system turn of every sample (default: the quiet-room scene description higgs_train.chatml "
        "defines, as in the sample data)",
    )
    add("--local", action="store_true", help="process in this process instead of Ray Data actors")
    add("--num_actors", type=int, default=2, help="Ray Data CPU actors (default 2)")
    add("--cpus_per_actor", type=float, default=0.5, help="CPUs each actor reserves (default 0.5)")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """``build``'s flags -> the builder's ``BuildOptions`` (paths made absolute)."""
    output = str(Path(args.output).resolve())
    return BuildOptions(
        input=args.input,
        output=output,
        source=SourceOptions(
            args.audio_column,
            args.text_column,
            args.speaker_column,
            args.speaker,
            tuple(str(Path(p).resolve()) for p in args.allow_outside),
        ),
        audio=AudioSettings(
            output_dir=output,
            min_seconds=args.min_audio_seconds,
            max_seconds=args.max_audio_seconds,
            segment=args.segment,
            min_segment_seconds=args.min_segment_seconds,
            max_segment_seconds=args.max_segment_seconds,
            loudness_lufs=args.loudness,
            trim_silence=not args.no_trim,
            asr_model=str(Path(args.asr_model).resolve()) if args.asr_model else None,
            max_file_seconds=args.max_file_seconds,
            max_file_bytes=int(args.max_file_mb * 2**20),
        ),
        pairing=PairingOptions(
            references_per_target=args.references_per_target,
            seed=args.seed,
            val_speakers=tuple(s.strip() for s in args.val_speakers.split(",") if s.strip()),
            val_fraction=args.val_fraction,
            system_prompt=args.system_prompt,
        ),
        source_kind=args.source_kind,
        use_ray=not args.local,
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor,
    )


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(prog="ray_jobs/prepare_data.py", description=__doc__)
    # Each sub-command reports its own errors (its name, did-you-mean, its --help), not the top-level usage.
    commands = parser.add_subparsers(dest="command", required=True, parser_class=FlagParser)
    convert = commands.add_parser("convert", help="write the canonical Parquet manifest")
    convert.add_argument("--input", required=True, help="source manifest (.json list, .jsonl or .parquet)")
    convert.add_argument("--output", required=True, help="canonical Parquet to write")
    build = commands.add_parser("build", help="build voice-cloning manifests from recordings")
    add_build_arguments(build)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = {"convert": convert, "build": build}.get(command)
    unknown = sub.unknown_flags(argv[argv.index(command) + 1 :]) if sub else []
    if unknown:  # before argparse's check of required flags, which would hide the misspelt one
        sub.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = parser.parse_args(argv)

    if args.command == "build":
        return build_command(args)
    try:
        report = convert_manifest(args.input, args.output)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def build_command(args: argparse.Namespace) -> int:
    """Exit 0 when a training manifest with at least one sample was written, 1 when none (no manifest is written;
    the one-line reason is printed and in the report), 2 on bad input."""
    try:
        result = build_dataset(options_from_args(args))
    except (SourceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.describe())
    print(f"report: {result.report} and {result.plot}")
    if result.to_transcribe is not None and result.unlabelled:
        print(
            f"{result.unlabelled} clips have no transcript: write their text after the tab in {result.to_transcribe} "
            "and rerun this command to add them"
        )
    if result.problem:
        print(f"error: {result.problem}", file=sys.stderr)
        return 1
    if result.val is None:
        print("note: no validation sample was built (val.jsonl not written); train without --val_data")
    return 0
