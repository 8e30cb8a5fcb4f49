"""``ray_jobs/export.py``: a trained adapter (and optionally a merged model) from a checkpoint or run folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from higgs_train.adapter import AdapterError
from higgs_train.evaluation.runner import one_line
from higgs_train.export import export
from higgs_train.flag_parser import FlagParser
from higgs_train.model_loading import ModelFormatError
from higgs_train.paths import absolute_model_ref, absolute_path, missing_model_refs


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="ray_jobs/export.py", description="Export a trained adapter (and optionally a merged model)."
    )
    parser.add_argument("--checkpoint", required=True, help="Checkpoint, final adapter or training output dir.")
    parser.add_argument("--output", required=True, help="Export directory (adapter/ and, with --merge, merged/).")
    parser.add_argument("--merge", action="store_true", help="Also write a merged HiggsAudioModel directory.")
    parser.add_argument(
        "--base_model", default=None, help="Base model dir/hub id/'embedded' (default: the training config's)."
    )
    parser.add_argument(
        "--allow_base_mismatch",
        action="store_true",
        help="Skip the base-model identity check (same model under another path); shapes and keys are still checked.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.checkpoint, args.output = absolute_path(args.checkpoint), absolute_path(args.output)
    args.base_model = absolute_model_ref(args.base_model)
    missing = missing_model_refs({"base_model": args.base_model})
    if not Path(args.checkpoint).exists():
        missing.insert(0, f"--checkpoint {args.checkpoint}")
    if missing:
        print(f"export failed: {'; '.join(missing)}: no such file or directory", file=sys.stderr)
        return 2
    try:
        result = export(args.checkpoint, args.output, args.merge, args.base_model, args.allow_base_mismatch)
    except (AdapterError, ModelFormatError, FileNotFoundError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a hub id that is not cached offline, a model folder without config.json, ...
        print(f"export failed: the base model cannot be loaded: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"adapter: {result.adapter_dir}")
    if result.merged_dir:
        print(f"merged model: {result.merged_dir}")
    return 0
