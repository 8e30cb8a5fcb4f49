"""Command lines of the ``ray_jobs/`` commands, in one module.

``train.py`` and ``tune.py`` flags are generated from the config dataclasses (``TrainingConfig``, ``SweepSettings``)
by transformers' ``HfArgumentParser`` so they never drift apart; ``export.py``, ``generate.py`` and ``evaluate.py``
declare their few flags on ``FlagParser``. Every parser refuses prefix abbreviations and answers a typo with the
closest flag. Precedence: ``configs/default.yaml`` (= dataclass defaults) < ``--config FILE`` < flags given on the
command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from higgs_train.config import TrainingConfig, read_config_file
from higgs_train.flag_parser import FlagParser


class ConfigFlagParser(FlagParser, HfArgumentParser):
    """Flags generated from config dataclasses by transformers' ``HfArgumentParser``, with ``FlagParser``'s errors.

    Wrapped for this project's command lines: one spelling per field (``--learning_rate``; the hyphenated aliases and
    ``--no_<flag>`` complements are dropped, ``--flag false`` says the same), ``--config FILE``, and every flag
    defaults to None, so ``parse`` can tell the flags a user typed from the defaults (precedence: defaults <
    ``--config`` file < flags). The help still shows each field's real default.
    """

    def __init__(self, dataclass_types: list[type], **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self.add_argument("--config", default="", help="JSON or YAML file of TrainingConfig fields.")
        defaults = {
            f.name: f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
            for dtype in dataclass_types
            for f in fields(dtype)
        }
        for action in list(self._actions):
            if action.dest not in defaults:
                continue
            if isinstance(action, argparse._StoreFalseAction):  # the --no_<flag> complement
                self._drop(action, action.option_strings)
                continue
            self._drop(action, [o for o in action.option_strings if "-" in o[2:]])
            action.help = f"{action.help or ''} (default: {defaults[action.dest]!r})".strip()
            if action.nargs == "?" and action.const is True:  # a bool: bare flag = true, or true/false/yes/no/1/0
                action.metavar = "BOOL"
            action.default = None

    def _drop(self, action: argparse.Action, options: list[str]) -> None:
        for option in options:
            self._option_string_actions.pop(option, None)
            action.option_strings.remove(option)
        if not action.option_strings:
            self._remove_action(action)
            for group in self._action_groups:
                if action in group._group_actions:
                    group._group_actions.remove(action)

    def parse(self, argv: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        """(the --config file, the flags given on the command line)."""
        args = vars(self.parse_args(argv))
        config_file = args.pop("config")
        return config_file, {k: v for k, v in args.items() if v is not None}


def build_parser() -> ConfigFlagParser:
    """The flags of ``ray_jobs/train.py``: one per ``TrainingConfig`` field, plus ``--config``."""
    return ConfigFlagParser(
        [TrainingConfig],
        prog="ray_jobs/train.py",
        description="LoRA fine-tuning of Higgs-Audio v2 for zero-shot voice cloning, on Ray.",
    )


def build_sweep_parser() -> ConfigFlagParser:
    """The flags of ``ray_jobs/tune.py``: train.py's plus one per ``SweepSettings`` field."""
    from higgs_train.tune.space import SweepSettings

    return ConfigFlagParser(
        [TrainingConfig, SweepSettings],
        prog="ray_jobs/tune.py",
        description="Ray Tune sweep (ASHA on --checkpoint_metric: val_loss, sim or wer) over LoRA and loss settings.",
    )


def _training_config(config_file: str, given: dict[str, Any]) -> TrainingConfig:
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    data.update(given)
    return TrainingConfig.from_dict(data)


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the --config file, then the explicitly given flags."""
    return _training_config(*build_parser().parse(argv))


def sweep_config_from_args(argv: list[str] | None = None) -> tuple[TrainingConfig, Any]:
    """Training config (defaults < --config file < flags, as train.py) and the ``SweepSettings``."""
    from higgs_train.tune.space import SweepSettings

    config_file, given = build_sweep_parser().parse(argv)
    sweep = {name: given.pop(name) for name in list(given) if name in SweepSettings.__dataclass_fields__}
    return _training_config(config_file, given), SweepSettings(**sweep)


def main(argv: list[str] | None = None) -> int:
    from higgs_train.data.preflight import DataSetupError, preflight
    from higgs_train.paths import resolve_user_paths

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        given = config_from_args(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = resolve_user_paths(given)  # Ray workers run in another cwd: hand them absolute paths only
    if config.create_sample_data:
        from higgs_train.sample_data import create_sample_data_at

        paths = create_sample_data_at(config.create_sample_data, seed=config.seed)
        print(f"sample data written: train={paths['train']} val={paths['val']} audio root={paths['audio_base_path']}")
        return 0
    try:
        preflight(given)  # before any MLflow run or Ray cluster exists; messages show the paths as typed
    except DataSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.validate_data_only:
        from higgs_train.driver.validate import validate_job

        return validate_job(config)
    from higgs_train.driver.cluster import ClusterResourcesError, RunSetupError
    from higgs_train.driver.train import JobOutputsMissing, run_training_job
    from higgs_train.tracking import TrackingError
    from higgs_train.training.checkpoint import CheckpointError

    try:
        result = run_training_job(config)
    except (ClusterResourcesError, RunSetupError, JobOutputsMissing, CheckpointError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def tune_main(argv: list[str] | None = None) -> int:
    """``ray_jobs/tune.py``: a Ray Tune sweep over the training job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dataclasses import replace

    from higgs_train.data.preflight import DataSetupError, preflight
    from higgs_train.driver.cluster import ClusterResourcesError
    from higgs_train.paths import resolve_user_paths
    from higgs_train.tune.space import load_search_space, search_space_path
    from higgs_train.tune.sweep import run_sweep

    try:
        given, settings = sweep_config_from_args(argv)
        settings = replace(settings, search_space=str(search_space_path(settings.search_space).resolve()))
        settings.validate()
        load_search_space(settings.search_space)
        preflight(given)
    except (ValueError, FileNotFoundError) as err:  # DataSetupError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = resolve_user_paths(given)  # trials run in Ray's cwd: absolute paths only
    from higgs_train.tracking import TrackingError

    try:
        result = run_sweep(config, settings)
    except (ClusterResourcesError, DataSetupError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.table())
    print(result.summary())
    return 0


# ----------------------------------------------------------------------------------------------- export.py
def build_export_parser() -> argparse.ArgumentParser:
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


def export_main(argv: list[str] | None = None) -> int:
    from higgs_train.adapter import AdapterError
    from higgs_train.export import export

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from higgs_train.models import ModelFormatError
    from higgs_train.paths import absolute_model_ref, absolute_path, missing_model_refs

    args = build_export_parser().parse_args(argv)
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
        from higgs_train.evaluation.runner import one_line

        print(f"export failed: the base model cannot be loaded: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"adapter: {result.adapter_dir}")
    if result.merged_dir:
        print(f"merged model: {result.merged_dir}")
    return 0


# ------------------------------------------------------------------------------ sampling (generate.py, evaluate.py)
def add_sampling_flags(
    p: argparse.ArgumentParser, *, seed: int | None, seed_help: str, max_new_tokens_help: str
) -> None:
    """The decoding flags generate.py and evaluate.py share, so an evaluation samples exactly as generation does."""
    from higgs_train.generation import SamplingSettings

    d = SamplingSettings()
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy.")
    p.add_argument("--top_k", type=int, default=d.top_k, help="Sample among the k most likely codes.")
    p.add_argument("--top_p", type=float, default=d.top_p, help="Nucleus sampling mass.")
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens, help=max_new_tokens_help)
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--ras_win_len", type=int, default=d.ras_win_len, help="Repetition-aware sampling; 0 disables.")
    p.add_argument(
        "--min_audio_frames",
        type=int,
        default=d.min_audio_frames,
        help="The audio may not end before this many frames (25 per second); 0 leaves the end to the model.",
    )


def sampling_from_flags(args: argparse.Namespace) -> Any:
    """The ``SamplingSettings`` the flags of ``add_sampling_flags`` describe."""
    from higgs_train.generation import SamplingSettings

    return SamplingSettings(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        ras_win_len=args.ras_win_len or None,
        min_audio_frames=max(0, args.min_audio_frames),
    )


# ----------------------------------------------------------------------------------------------- generate.py
def build_generate_parser() -> argparse.ArgumentParser:
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


def generate_main(argv: list[str] | None = None) -> int:
    """``ray_jobs/generate.py``. Exit codes: 0 written and checked; 1 no audio, or audio that failed the audio
    check (without ``--allow_bad_audio``); 2 a mistake in the inputs (flags, files, adapter, model), found before
    the model loads wherever it can be."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_generate_parser()
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
    from higgs_train.paths import absolute_model_ref, absolute_path

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
    from higgs_train.adapter import AdapterError
    from higgs_train.data.audio_io import AudioError, decode_audio
    from higgs_train.evaluation.runner import one_line
    from higgs_train.generation import load_generation_stack
    from higgs_train.models import ModelFormatError
    from higgs_train.paths import missing_model_refs

    refs = {n: getattr(args, n) for n in ("model_path", "adapter", "audio_tokenizer_path", "tokenizer_path")}
    missing = missing_model_refs(refs)
    missing += [f"--manifest {args.manifest}"] if args.manifest and not Path(args.manifest).is_file() else []
    missing += [f"--data {args.data}"] if args.data and not Path(args.data).is_dir() else []
    missing += [f"--ref_audio {args.ref_audio}"] if args.ref_audio and not Path(args.ref_audio).is_file() else []
    if missing:
        raise GenerateInputError(f"{'; '.join(missing)}: no such file or directory")
    if args.speaker:
        from higgs_train.speaker_reference import ReferenceError, pick_reference

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
    import torch

    from higgs_train.training.precision import weight_dtype

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
    from higgs_train.evaluation.suite import check_audio
    from higgs_train.generation import no_audio_reason, prompt_for_texts, synthesize, write_wav

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
    from higgs_train.evaluation.suite import check_audio
    from higgs_train.generation import generate_to_files, no_audio_reason, prompts_for_manifest

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


# ----------------------------------------------------------------------------------------------- evaluate.py
def build_evaluate_parser() -> argparse.ArgumentParser:
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


def evaluate_main(argv: list[str] | None = None) -> int:
    from higgs_train.evaluation.job import EvalJobConfig, adapter_label, run_evaluation
    from higgs_train.evaluation.runner import ModelSpec
    from higgs_train.evaluation.suite import EvalSettings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_evaluate_parser()
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
