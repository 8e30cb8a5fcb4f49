"""Flags more than one command uses: the config-generated parser (train and tune) and the decoding flags (generate
and evaluate, so an evaluation samples exactly as generation does).

Precedence of the config-generated flags: ``configs/default.yaml`` (= dataclass defaults) < ``--config FILE`` <
flags given on the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from transformers import HfArgumentParser

from higgs_train.config import TrainingConfig, read_config_file
from higgs_train.flag_parser import FlagParser
from higgs_train.generation import SamplingSettings


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


def training_config(config_file: str, given: dict[str, Any]) -> TrainingConfig:
    """Defaults, then the --config file, then the flags given on the command line."""
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    data.update(given)
    return TrainingConfig.from_dict(data)


def add_sampling_flags(
    p: argparse.ArgumentParser, *, seed: int | None, seed_help: str, max_new_tokens_help: str
) -> None:
    """The decoding flags generate.py and evaluate.py share, so an evaluation samples exactly as generation does."""
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


def sampling_from_flags(args: argparse.Namespace) -> SamplingSettings:
    """The ``SamplingSettings`` the flags of ``add_sampling_flags`` describe."""
    return SamplingSettings(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        ras_win_len=args.ras_win_len or None,
        min_audio_frames=max(0, args.min_audio_frames),
    )
