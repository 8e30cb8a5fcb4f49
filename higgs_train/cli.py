"""Command lines of the ``ray_jobs/`` commands, in one module.

``train.py`` and ``tune.py`` flags are generated from the config dataclasses (``TrainingConfig``, ``SweepSettings``)
by transformers' ``HfArgumentParser`` so they never drift apart; ``export.py``, ``generate.py`` and ``evaluate.py``
declare their few flags on ``FlagParser``. Every parser refuses prefix abbreviations and answers a typo with the
closest flag. Precedence: ``configs/default.yaml`` (= dataclass defaults) < ``--config FILE`` < flags given on the
command line.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from dataclasses import MISSING, fields
from typing import Any, NoReturn

from transformers import HfArgumentParser

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
        description="Ray Tune sweep (ASHA on val_loss) over LoRA and loss settings of the training job.",
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
    try:
        result = run_sweep(config, settings)
    except (ClusterResourcesError, DataSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
