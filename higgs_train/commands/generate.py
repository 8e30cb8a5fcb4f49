"""``ray_jobs/generate.py``: voice cloning with a base, merged or base+adapter model, one prompt or a manifest.

Every input that can be checked without the model (files, the reference clip, ``--speaker``) is checked before it
loads; every clip gets the audio check (too short for its text, clipped, silent).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from higgs_train.adapter import AdapterError
from higgs_train.commands.shared_flags import add_sampling_flags, sampling_from_flags
from higgs_train.data.audio_io import decode_audio
from higgs_train.data.reasons import AudioError
from higgs_train.evaluation.runner import one_line
from higgs_train.evaluation.suite import check_audio
from higgs_train.flag_parser import FlagParser
from higgs_train.generation import (
    generate_to_files,
    load_generation_stack,
    no_audio_reason,
    prompt_for_texts,
    prompts_for_manifest,
    synthesize,
    write_wav,
)
from higgs_train.model_loading import ModelFormatError
from higgs_train.paths import absolute_model_ref, absolute_path, missing_model_refs
from higgs_train.speaker_reference import ReferenceError, pick_reference
from higgs_train.training.precision import weight_dtype


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--speaker",
        help="Clone this speaker of --data instead of --ref_audio/--ref_text: its longest clean clip of 3-10 s.",
    )
    p.add_argument("--data", help="A built data set (prepare_data.py build's output folder) that --speaker is from.")
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
    add_sampling_flags(
        p, seed=None, seed_help="Makes sampling repeatable.", max_new_tokens_help="About 25 per second of audio."
    )
    p.add_argument("--device", default=None, help="cpu or cuda; unset: cuda if available.")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="Model weights' dtype, as train.py's: auto = bf16 on CUDA, fp32 on CPU (a 3B model is 23 GB in fp32, "
        "11.5 GB in bf16).",
    )
    p.add_argument("--allow_base_mismatch", action="store_true", help="Skip the adapter's base identity check.")
    p.add_argument(
        "--allow_bad_audio",
        action="store_true",
        help="Exit 0 even when a clip fails the audio check (clipped, silent, or too short for its text); the "
        "problems are still printed.",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``ray_jobs/generate.py``. Exit codes: 0 written and checked; 1 no audio, or audio that failed the audio
    check (without ``--allow_bad_audio``); 2 a mistake in the inputs (flags, files, adapter, model), found before
    the model loads wherever it can be."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    voice, by_speaker = [args.ref_audio, args.ref_text], [args.speaker, args.data]
    if args.manifest:
        if not args.output_dir or any([*voice, *by_speaker, args.text, args.output]):
            parser.error("batch mode takes --manifest and --output_dir only (no --ref_audio/--ref_text/--text)")
    elif any(voice) and any(by_speaker):
        parser.error("give --ref_audio and --ref_text, or --speaker and --data, not both")
    elif not ((all(voice) or all(by_speaker)) and args.text and args.output):
        parser.error(
            "give --ref_audio and --ref_text (or --speaker and --data), --text and --output; "
            "or --manifest and --output_dir"
        )
    for name in ("model_path", "adapter", "audio_tokenizer_path", "tokenizer_path"):
        setattr(args, name, absolute_model_ref(getattr(args, name)))
    for name in ("manifest", "output", "output_dir", "audio_base_path", "ref_audio", "data"):
        setattr(args, name, absolute_path(getattr(args, name)) if getattr(args, name) else getattr(args, name))
    try:
        stack = _checked_generation_stack(args, "cuda" if torch.cuda.is_available() else "cpu")
        return _generate_batch(args, stack) if args.manifest else _generate_single(args, stack)
    except GenerateInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


class GenerateInputError(ValueError):
    """A generate.py input that cannot work as given; the message names the flag or file and what to do."""


def _checked_generation_stack(args: argparse.Namespace, default_device: str) -> Any:
    """Check every input that can be checked without the model (files, the reference clip, ``--speaker``), then
    load the model; every expected failure becomes a ``GenerateInputError`` (one line, no traceback)."""
    refs = {n: getattr(args, n) for n in ("model_path", "adapter", "audio_tokenizer_path", "tokenizer_path")}
    missing = missing_model_refs(refs)
    missing += [f"--manifest {args.manifest}"] if args.manifest and not Path(args.manifest).is_file() else []
    missing += [f"--data {args.data}"] if args.data and not Path(args.data).is_dir() else []
    missing += [f"--ref_audio {args.ref_audio}"] if args.ref_audio and not Path(args.ref_audio).is_file() else []
    if missing:
        raise GenerateInputError(f"{'; '.join(missing)}: no such file or directory")
    if args.speaker:
        try:
            ref = pick_reference(args.data, args.speaker)
        except ReferenceError as err:
            raise GenerateInputError(str(err)) from err
        args.ref_audio, args.ref_text = str(ref.audio_path), ref.text
        print(f"voice of {ref.speaker}: {ref.audio_path} ({ref.seconds:.1f} s) {ref.text!r}")
    if args.ref_audio:
        try:
            decode_audio(Path(args.ref_audio))  # the checks the prompt applies, before the model loads
        except AudioError as err:
            raise GenerateInputError(f"--ref_audio {args.ref_audio}: {err}") from err

    device = torch.device(args.device or default_device)
    try:
        return load_generation_stack(
            args.model_path,
            args.audio_tokenizer_path,
            adapter=args.adapter,
            tokenizer_path=args.tokenizer_path,
            device=device,
            dtype=weight_dtype(args.precision, device),
            allow_base_mismatch=args.allow_base_mismatch,
        )
    except (AdapterError, ModelFormatError, FileNotFoundError) as err:
        raise GenerateInputError(str(err)) from err
    except OSError as err:  # transformers' "not a valid model identifier", a missing config.json, ...
        raise GenerateInputError(f"--model_path {args.model_path} cannot be loaded: {one_line(err)}") from err


def _audio_check_verdict(name: str, problems: list[str], allow: bool) -> bool:
    """Print the audio check's result for one clip; True when it counts as a failure (problems, not allowed)."""
    if not problems:
        print(f"audio check: {name}: ok")
        return False
    for problem in problems:
        print(f"{'warning' if allow else 'error'}: audio check: {name}: {problem}", file=sys.stderr)
    return not allow


BAD_AUDIO_HINT = (
    "the WAV is written so you can listen to it; --allow_bad_audio accepts such audio (e.g. from the embedded tiny "
    "model, which makes codec noise)"
)


def _generate_single(args: argparse.Namespace, stack: Any) -> int:
    try:
        prompt = prompt_for_texts(
            stack, args.ref_audio, args.ref_text, args.text, args.audio_base_path, args.system_prompt
        )
    except ValueError as err:  # AudioError, an untokenizable prompt
        raise GenerateInputError(str(err)) from err
    result = synthesize(stack, prompt, sampling_from_flags(args))
    reason = no_audio_reason(stack, result)
    if reason:
        print(f"error: {reason}; nothing written to {args.output}", file=sys.stderr)
        return 1
    write_wav(args.output, result.waveform, result.sampling_rate)
    seconds = len(result.waveform) / result.sampling_rate
    print(f"{args.output}: {seconds:.2f}s, {result.codes.shape[1]} frames, finished={result.finished}")
    problems = check_audio(result.waveform, result.sampling_rate, args.text)
    if _audio_check_verdict(args.output, problems, args.allow_bad_audio):
        print(f"error: {args.output} failed the audio check; {BAD_AUDIO_HINT}", file=sys.stderr)
        return 1
    return 0


def _generate_batch(args: argparse.Namespace, stack: Any) -> int:
    try:
        prompts = prompts_for_manifest(stack, args.manifest, args.audio_base_path)
    except ValueError as err:  # AudioError, an unreadable row, an untokenizable prompt
        raise GenerateInputError(f"--manifest {args.manifest}: {err}") from err
    texts = {p.sample_id: p.text for p in prompts}
    written = generate_to_files(stack, prompts, args.output_dir, sampling_from_flags(args))
    summary = []
    for path, r in written:
        error = no_audio_reason(stack, r)
        problems = [] if error else check_audio(r.waveform, r.sampling_rate, texts.get(r.sample_id, ""))
        summary.append(
            {
                "id": r.sample_id,
                "wav": str(path) if path else None,
                "frames": int(r.codes.shape[1]),
                "finished": r.finished,
                "code_agreement": r.code_agreement,
                "error": error,
                "audio_problems": problems,
            }
        )
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
    bad = [e for e in summary if e["wav"] and _audio_check_verdict(e["id"], e["audio_problems"], args.allow_bad_audio)]
    if bad:
        print(f"error: {len(bad)} of {len(summary)} clips failed the audio check; {BAD_AUDIO_HINT}", file=sys.stderr)
    return 1 if failed or bad else 0
