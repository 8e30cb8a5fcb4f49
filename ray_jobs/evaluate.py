"""Evaluate voices: ``python ray_jobs/evaluate.py --manifest VAL --adapter A [--adapter B ...] [--base]``.

Each model clones every manifest row (its own reference turn and target text) in a Ray actor, and the clips are
scored for speaker similarity (SIM), intelligibility (WER/CER) and quality (DNSMOS, silence, clipping, length,
repetition, EOS). Outputs go to ``--output_dir``: ``eval.json``, ``eval_table.md``/``.csv`` (one line per model),
``eval_rows.csv``, ``plots/eval_metrics.png``, ``wavs/<model>/<id>.wav``, and an MLflow run. See README
"Evaluate a voice".
"""

from __future__ import annotations

import argparse
import logging
import sys

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)


def build_parser() -> argparse.ArgumentParser:
    from higgs_train.generation import SamplingSettings

    d = SamplingSettings()
    p = argparse.ArgumentParser(
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
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy.")
    p.add_argument("--top_k", type=int, default=d.top_k, help="Sample among the k most likely codes.")
    p.add_argument("--top_p", type=float, default=d.top_p, help="Nucleus sampling mass.")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=d.max_new_tokens,
        help="Generation cap; each row also stops at twice its target recording's length (25 steps per second).",
    )
    p.add_argument("--seed", type=int, default=0, help="Sampling seed (same seed: same clips).")
    p.add_argument("--use_gpu", action="store_true", help="One GPU per model actor (bf16).")
    p.add_argument("--cpus_per_actor", type=float, default=1.0, help="CPUs reserved by each model's actor.")
    p.add_argument("--logged_wav_rows", type=int, default=3, help="WAVs of the first N rows logged to MLflow.")
    p.add_argument(
        "--mlflow_tracking_uri", default="", help="Default: sqlite under --output_dir (or MLFLOW_TRACKING_URI)."
    )
    p.add_argument("--mlflow_experiment", default="higgs-train-eval", help="MLflow experiment.")
    p.add_argument("--run_name", default="", help="MLflow parent run name; default eval-<manifest name>.")
    return p


def main(argv: list[str] | None = None) -> int:
    from higgs_train.evaluation.job import EvalJobConfig, adapter_label, run_evaluation
    from higgs_train.evaluation.runner import ModelSpec
    from higgs_train.evaluation.suite import EvalSettings
    from higgs_train.generation import SamplingSettings

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
        sampling=SamplingSettings(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        ),
        use_gpu=args.use_gpu,
        cpus_per_actor=args.cpus_per_actor,
        logged_wav_rows=args.logged_wav_rows,
        mlflow_tracking_uri=args.mlflow_tracking_uri,
        mlflow_experiment=args.mlflow_experiment,
        run_name=args.run_name,
    )
    result = run_evaluation(config)
    print(result.paths["table_md"].read_text())
    print(f"report: {result.paths['json']}; MLflow run {result.mlflow_run_id}")
    if result.failed_models:
        print(f"no clip could be generated by: {', '.join(result.failed_models)} (see eval.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
