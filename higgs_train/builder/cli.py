"""``prepare_data.py build`` flags -> ``BuildOptions``. Defaults are documented in ``--help`` and the README."""

from __future__ import annotations

import argparse
from pathlib import Path

from higgs_train.builder.audio import AudioSettings
from higgs_train.builder.build import BuildOptions
from higgs_train.builder.pairing import PairingOptions
from higgs_train.builder.sources import SOURCE_KINDS, SourceOptions, describe_kinds
from higgs_train.data.chatml import DEFAULT_SYSTEM_PROMPT

DESCRIPTION = f"""Build DIR/train.jsonl and DIR/val.jsonl (voice-cloning pairs), DIR/audio/<speaker>/*.wav (24 kHz mono
16-bit) and DIR/data_report.json + .png from recordings. For a small set (up to a few hundred files) --local is
quicker than starting Ray.

{describe_kinds()}
"""
USAGE = "%(prog)s --input SRC --output DIR [flags]"


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
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
        help="system turn of every sample (default: the quiet-room scene description higgs_train.data.chatml "
        "defines, as in the sample data)",
    )
    add("--local", action="store_true", help="process in this process instead of Ray Data actors")
    add("--num_actors", type=int, default=2, help="Ray Data CPU actors (default 2)")
    add("--cpus_per_actor", type=float, default=0.5, help="CPUs each actor reserves (default 0.5)")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
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
