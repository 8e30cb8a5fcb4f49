"""``ray_jobs/evaluate.py``: base and fine-tuned voices scored side by side (SIM, WER/CER, DNSMOS, checks).

Each model clones every manifest row in its own Ray actor (``higgs_train.evaluation.job``); the exit status is 1
only when every model failed, since a partial report is still the comparison asked for.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from higgs_train.commands.shared_flags import add_sampling_flags, sampling_from_flags
from higgs_train.evaluation.job import EvalJobConfig, adapter_label, run_evaluation
from higgs_train.evaluation.runner import ModelSpec
from higgs_train.evaluation.suite import EvalSettings
from higgs_train.flag_parser import FlagParser


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog="ray_jobs/evaluate.py",
        description="Score base and fine-tuned Higgs-Audio voices side by side (SIM, WER/CER, DNSMOS, checks).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--manifest", required=True, help="Validation manifest (training format; held-out speakers).")
    p.add_argument("--adapter", action="append", default=[], help="Adapter / run output dir; repeat for several.")
    p.add_argument("--base", action="store_true", help="Also evaluate the base model without adapter.")
    p.add_argument("--model_path", default="embedded", help="Base model dir, hub id, or 'embedded'.")
    p.add_argument("--audio_tokenizer_path", default="embedded", help="Higgs audio tokenizer dir/hub id.")
    p.add_argument("--tokenizer_path", default=None, help="Text tokenizer; unset: the model dir's.")
    p.add_argument("--audio_base_path", default="", help="Root of relative audio paths; unset: the manifest's folder.")
    p.add_argument("--output_dir", default="outputs/eval", help="Where the report, plots and WAVs go.")
    p.add_argument("--max_rows", type=int, default=0, help="Evaluate only the first N rows (0: all).")
    p.add_argument(
        "--sim_model", default="", help="Local transformers x-vector dir (e.g. WavLM-SV); unset: resemblyzer."
    )
    p.add_argument("--asr_model", default="", help="Local Whisper dir; unset: pocketsphinx (rough, English only).")
    p.add_argument("--asr_language", default=None, help="Whisper language (e.g. english); unset: detected.")
    p.add_argument("--no_sim", action="store_true", help="Skip speaker similarity.")
    p.add_argument("--no_asr", action="store_true", help="Skip WER/CER.")
    p.add_argument("--no_dnsmos", action="store_true", help="Skip DNSMOS.")
    add_sampling_flags(
        p,
        seed=0,
        seed_help="Sampling seed (same seed: same clips).",
        max_new_tokens_help="Generation cap; each row also stops at twice its target recording's length (25 steps "
        "per second).",
    )
    p.add_argument("--use_gpu", action="store_true", help="One GPU per model actor (bf16).")
    p.add_argument("--cpus_per_actor", type=float, default=1.0, help="CPUs reserved by each model's actor.")
    p.add_argument("--logged_wav_rows", type=int, default=3, help="WAVs of the first N rows logged to MLflow.")
    p.add_argument(
        "--mlflow_tracking_uri",
        default="",
        help="Default: the project's sqlite next to --output_dir (or MLFLOW_TRACKING_URI).",
    )
    p.add_argument("--mlflow_experiment", default="higgs-train-eval", help="MLflow experiment.")
    p.add_argument("--run_name", default="", help="MLflow parent run name; default eval-<manifest name>.")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.base and not args.adapter:
        parser.error("give --base and/or at least one --adapter")
    common = {
        "model_path": args.model_path,
        "audio_tokenizer_path": args.audio_tokenizer_path,
        "tokenizer_path": args.tokenizer_path,
    }
    missing = [f"--{name} {value}" for name, value in [("manifest", args.manifest)] if not Path(value).is_file()]
    missing += [f"--adapter {a}" for a in args.adapter if not Path(a).exists()]
    if missing:  # a typo, before Ray starts; an adapter that exists but cannot load is a failed row instead
        print(f"error: {'; '.join(missing)}: no such file or directory", file=sys.stderr)
        return 2
    models = [ModelSpec("base", **common)] if args.base else []
    taken = {m.label for m in models}
    for adapter in args.adapter:
        label = adapter_label(adapter, taken)
        taken.add(label)
        models.append(ModelSpec(label, adapter=adapter, **common))
    config = EvalJobConfig(
        manifest=args.manifest,
        models=models,
        output_dir=args.output_dir,
        audio_base_path=args.audio_base_path,
        max_rows=args.max_rows,
        settings=EvalSettings(
            sim=not args.no_sim,
            sim_model=args.sim_model,
            asr=not args.no_asr,
            asr_model=args.asr_model,
            asr_language=args.asr_language,
            dnsmos=not args.no_dnsmos,
        ),
        sampling=sampling_from_flags(args),
        use_gpu=args.use_gpu,
        cpus_per_actor=args.cpus_per_actor,
        logged_wav_rows=args.logged_wav_rows,
        mlflow_tracking_uri=args.mlflow_tracking_uri,
        mlflow_experiment=args.mlflow_experiment,
        run_name=args.run_name,
    )
    try:
        result = run_evaluation(config)
    except (FileNotFoundError, ValueError) as err:  # a missing manifest, no readable row, too small a cluster
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.paths["table_md"].read_text())
    print(f"report: {result.paths['json']}; MLflow run {result.mlflow_run_id}")
    for label, reason in result.failed_models.items():
        print(f"error: model {label} failed: {reason}", file=sys.stderr)
    # Exit 1 only when nothing was scored: a partial report is still the comparison asked for (see job.py).
    if result.all_failed:
        print(f"error: every model failed ({len(result.failed_models)}); nothing was scored", file=sys.stderr)
        return 1
    return 0
