"""Data preparation commands. ``convert``: any manifest form (JSON list, JSONL, Parquet) -> canonical Parquet.

Thin by design: parsing and counting live in ``higgs_train.data.manifest`` so the trainer and tests share them.
"""

from __future__ import annotations

import argparse
import sys

from higgs_train.data.manifest import ManifestError, convert_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write the canonical Parquet manifest")
    convert.add_argument("--input", required=True, help="source manifest (.json list, .jsonl or .parquet)")
    convert.add_argument("--output", required=True, help="canonical Parquet to write")
    args = parser.parse_args(argv)

    try:
        report = convert_manifest(args.input, args.output)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
