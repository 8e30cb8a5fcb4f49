"""Export a trained adapter: ``python ray_jobs/export.py --checkpoint DIR --output OUT [--merge] [--base_model PATH]``.

``--checkpoint`` takes a training checkpoint (``adapter/`` + ``config.yaml``), a final adapter directory
(``<output_dir>/adapter``) or the training output directory. Writes ``OUT/adapter`` (peft files, training config,
README.md model card) and, with ``--merge``, ``OUT/merged`` (a plain HiggsAudioModel directory with its tokenizer).
See docs/export_generate.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)


def build_parser() -> argparse.ArgumentParser:
    from higgs_train.cli import FlagParser

    parser = FlagParser(prog="ray_jobs/export.py", description=__doc__.split("\n")[0])
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
    from higgs_train.adapter import AdapterError
    from higgs_train.export import export

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from higgs_train.paths import absolute_model_ref, absolute_path

    args = build_parser().parse_args(argv)
    args.checkpoint, args.output = absolute_path(args.checkpoint), absolute_path(args.output)
    args.base_model = absolute_model_ref(args.base_model)
    try:
        result = export(args.checkpoint, args.output, args.merge, args.base_model, args.allow_base_mismatch)
    except (AdapterError, FileNotFoundError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 2
    print(f"adapter: {result.adapter_dir}")
    if result.merged_dir:
        print(f"merged model: {result.merged_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
