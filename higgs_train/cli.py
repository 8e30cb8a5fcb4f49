"""Command line of ``ray_jobs/train.py``: flags are generated from ``TrainingConfig`` so they never drift apart.

Precedence: ``configs/default.yaml`` (= dataclass defaults) < ``--config FILE`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from dataclasses import MISSING, fields
from typing import Any, NoReturn, get_type_hints

from higgs_train.config import TrainingConfig, read_config_file


class FlagParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching (``--learning_rat`` is an error, not ``--learning_rate``) and with short
    errors: the problem, the closest flag for a typo, and where the full list is, instead of the whole usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def known_flags(self) -> list[str]:
        return [opt for action in self._actions for opt in action.option_strings if opt.startswith("--")]

    def suggestion(self, message: str) -> str:
        """' (did you mean --x?)' for each unknown ``--flag`` in an argparse message."""
        if not message.startswith("unrecognized arguments"):
            return ""
        flags = self.known_flags()
        hints = []
        for word in message.removeprefix("unrecognized arguments:").split():
            name = word.split("=", 1)[0]
            if name.startswith("--") and name not in flags:
                close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{name} -> did you mean {close[0]}?")
        return f" ({'; '.join(hints)})" if hints else ""

    def error(self, message: str) -> NoReturn:
        self.exit(
            2, f"{self.prog}: error: {message}{self.suggestion(message)}\n(`{self.prog} --help` lists every flag)\n"
        )


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="ray_jobs/train.py",
        description="LoRA fine-tuning of Higgs-Audio v2 for zero-shot voice cloning, on Ray.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default="", help="JSON or YAML file of TrainingConfig fields.")
    hints = get_type_hints(TrainingConfig)
    for f in fields(TrainingConfig):
        kind = hints[f.name]
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        common: dict[str, Any] = {
            "dest": f.name,
            "default": None,
            "help": f"{f.metadata['help']} (default: {default!r})",
        }
        flag = f"--{f.name}"
        if kind is bool:
            parser.add_argument(flag, type=_bool, nargs="?", const=True, metavar="BOOL", **common)
        elif kind == list[str]:
            parser.add_argument(flag, nargs="+", **common)
        elif kind == list[float]:
            parser.add_argument(flag, nargs="+", type=float, **common)
        elif kind in (int, float, str):
            parser.add_argument(flag, type=kind, **common)
        else:  # pragma: no cover - a new field type must be wired here
            raise TypeError(f"no CLI mapping for TrainingConfig.{f.name}: {kind}")
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the --config file, then the explicitly given flags."""
    args = build_parser().parse_args(argv)
    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    data.update(given)
    return TrainingConfig.from_dict(data)


def _print_missing_audio_hint(output_dir: str, audio_root: Any) -> None:
    import json
    from pathlib import Path

    from higgs_train.data.preflight import missing_audio_hint

    report = Path(output_dir) / "validation_report.json"
    if report.is_file():
        reasons = [item["reason"] for item in json.loads(report.read_text()).get("invalid", [])]
        hint = missing_audio_hint(reasons, audio_root)
        if hint:
            print(f"hint: {hint}")


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
        from higgs_train.data.audio_io import AudioLimits
        from higgs_train.data.row_length import resolve_row_length_limit
        from higgs_train.data.sources import resolve_sources
        from higgs_train.data.validation import run_validate_data_only
        from higgs_train.models import resolve_paths

        sources = resolve_sources(config)
        paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
        code = run_validate_data_only(
            str(sources.train),
            str(sources.val) if sources.val else None,
            config.audio_base_path or None,
            config.output_dir,
            paths.tokenizer_path,
            AudioLimits(config.min_audio_seconds, config.max_audio_seconds),
            resolve_row_length_limit(paths.model_path, paths.audio_tokenizer_path, config.max_tokens_per_row),
        )
        _print_missing_audio_hint(config.output_dir, sources.train_audio_base)
        return code
    from higgs_train.driver.cluster import ClusterResourcesError
    from higgs_train.driver.train import JobOutputsMissing, run_training_job

    try:
        result = run_training_job(config)
    except (ClusterResourcesError, JobOutputsMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
