"""Voice cloning with a base, merged or base+adapter model: ``python ray_jobs/generate.py ...``.

Single prompt::

    python ray_jobs/generate.py --model_path embedded --adapter outputs/default/adapter \
        --ref_audio ref.wav --ref_text "Transcript of ref.wav." --text "What to say." --output out.wav

Batch (one WAV per manifest row, from the row's own reference turn and target text)::

    python ray_jobs/generate.py --model_path OUT/merged --manifest val.json --output_dir samples/

The prompt is built like a training sample (see higgs_train/generation.py). ``--temperature 0`` is greedy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)


def build_parser() -> argparse.ArgumentParser:
    from higgs_train.cli import FlagParser
    from higgs_train.generation import SamplingSettings

    d = SamplingSettings()
    p = FlagParser(
        prog="ray_jobs/generate.py",
        description="Zero-shot voice cloning with Higgs-Audio v2 (+ a higgs-train adapter).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_path", default="embedded", help="Base or merged model dir, hub id, or 'embedded'.")
    p.add_argument("--adapter", default=None, help="Adapter, checkpoint or training output dir to apply.")
    p.add_argument("--audio_tokenizer_path", default="embedded", help="Higgs audio tokenizer dir/hub id.")
    p.add_argument("--tokenizer_path", default=None, help="Text tokenizer; unset: the model dir's.")
    p.add_argument("--ref_audio", help="Reference clip of the voice to clone.")
    p.add_argument("--ref_text", help="Transcript of the reference clip.")
    p.add_argument("--text", help="Text to speak.")
    p.add_argument("--output", help="Output WAV (single prompt).")
    p.add_argument(
        "--system_prompt",
        default=None,
        help="System turn of a single prompt; unset: the sample data's. Match your training manifests'.",
    )
    p.add_argument("--manifest", help="Training-format manifest (JSON list, JSONL, Parquet) for batch mode.")
    p.add_argument("--output_dir", help="Where batch mode writes <id>.wav and results.json.")
    p.add_argument(
        "--audio_base_path",
        default=None,
        help="Root of relative audio paths; unset: the manifest's (or reference's) folder.",
    )
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy.")
    p.add_argument("--top_k", type=int, default=d.top_k, help="Sample among the k most likely codes.")
    p.add_argument("--top_p", type=float, default=d.top_p, help="Nucleus sampling mass.")
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens, help="About 25 per second of audio.")
    p.add_argument("--seed", type=int, default=None, help="Makes sampling repeatable.")
    p.add_argument("--ras_win_len", type=int, default=d.ras_win_len, help="Repetition-aware sampling; 0 disables.")
    p.add_argument("--device", default=None, help="cpu or cuda; unset: cuda if available.")
    p.add_argument("--allow_base_mismatch", action="store_true", help="Skip the adapter's base identity check.")
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    from higgs_train.generation import (
        SamplingSettings,
        generate_to_files,
        load_generation_stack,
        no_audio_reason,
        prompt_for_texts,
        prompts_for_manifest,
        synthesize,
        write_wav,
    )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    single = [args.ref_audio, args.ref_text, args.text, args.output]
    if args.manifest:
        if not args.output_dir or any(single):
            parser.error("batch mode takes --manifest and --output_dir only (no --ref_audio/--ref_text/--text)")
    elif not all(single):
        parser.error("give --ref_audio, --ref_text, --text and --output, or --manifest and --output_dir")
    from higgs_train.paths import absolute_model_ref, absolute_path

    for name in ("model_path", "adapter", "audio_tokenizer_path", "tokenizer_path"):
        setattr(args, name, absolute_model_ref(getattr(args, name)))
    for name in ("manifest", "output", "output_dir", "audio_base_path"):
        setattr(args, name, absolute_path(getattr(args, name)) if getattr(args, name) else getattr(args, name))
    settings = SamplingSettings(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        ras_win_len=args.ras_win_len or None,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stack = load_generation_stack(
        args.model_path,
        args.audio_tokenizer_path,
        adapter=args.adapter,
        tokenizer_path=args.tokenizer_path,
        device=device,
        allow_base_mismatch=args.allow_base_mismatch,
    )
    if args.manifest:
        prompts = prompts_for_manifest(stack, args.manifest, args.audio_base_path)
        written = generate_to_files(stack, prompts, args.output_dir, settings)
        summary = [
            {
                "id": r.sample_id,
                "wav": str(path) if path else None,
                "frames": int(r.codes.shape[1]),
                "finished": r.finished,
                "code_agreement": r.code_agreement,
                "error": no_audio_reason(stack, r),
            }
            for path, r in written
        ]
        out = f"{args.output_dir}/results.json"
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        with open(out, "w") as fh:
            json.dump(summary, fh, indent=2)
        failed = [entry for entry in summary if entry["error"]]
        print(f"{len(written) - len(failed)} files in {args.output_dir} (summary: {out})")
        for entry in failed:
            print(f"error: {entry['id']}: {entry['error']}", file=sys.stderr)
        if failed:
            print(f"error: {len(failed)} of {len(summary)} prompts produced no audio", file=sys.stderr)
        return 1 if failed else 0
    prompt = prompt_for_texts(stack, args.ref_audio, args.ref_text, args.text, args.audio_base_path, args.system_prompt)
    result = synthesize(stack, prompt, settings)
    reason = no_audio_reason(stack, result)
    if reason:
        print(f"error: {reason}; nothing written to {args.output}", file=sys.stderr)
        return 1
    write_wav(args.output, result.waveform, result.sampling_rate)
    seconds = len(result.waveform) / result.sampling_rate
    print(f"{args.output}: {seconds:.2f}s, {result.codes.shape[1]} frames, finished={result.finished}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
