"""Data preparation commands.

``convert``: any manifest form (JSON list, JSONL, Parquet) -> canonical Parquet.
``build``: recordings (speaker folders, LJSpeech metadata.csv, audio|text lists, a Hugging Face dataset, a
manifest) -> ``train.jsonl`` / ``val.jsonl`` voice-cloning pairs and a data report (``build --help``).

Thin by design: parsing lives in ``higgs_train.data.manifest`` and ``higgs_train.builder``.
"""

from __future__ import annotations

import argparse
import sys

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)
from higgs_train.data.manifest import ManifestError, convert_manifest
from higgs_train.flag_parser import FlagParser


def main(argv: list[str] | None = None) -> int:
    from higgs_train.builder.cli import add_build_arguments

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
    from higgs_train.builder.build import build_dataset
    from higgs_train.builder.cli import options_from_args
    from higgs_train.builder.sources import SourceError

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


if __name__ == "__main__":
    sys.exit(main())
