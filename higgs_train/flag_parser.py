"""``FlagParser``: the argparse parser of every command line, with short errors and real suggestions.

Kept apart from ``higgs_train.commands.shared_flags`` (which needs transformers for the config-generated flags) so
that light commands (``prepare_data.py``) answer a mistyped flag in a fraction of a second.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from higgs_train.config import REMOVED_FIELDS, closest_name


class FlagParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching (``--learning_rat`` is an error, not ``--learning_rate``) and with short
    errors: the problem, the closest flag for a typo, and where the full list is, instead of the whole usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def known_flags(self) -> list[str]:
        return [opt for action in self._actions for opt in action.option_strings if opt.startswith("--")]

    def unknown_flags(self, argv: list[str]) -> list[str]:
        """The ``--flag`` words of ``argv`` this parser does not know (values that look like flags included)."""
        known = self.known_flags()
        return [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in known]

    def suggestion(self, message: str) -> str:
        """' (did you mean --x?)' for each unknown ``--flag`` in an argparse message."""
        if not message.startswith("unrecognized arguments"):
            return ""
        flags = self.known_flags()
        hints = []
        names = [flag[2:] for flag in flags]
        for word in message.removeprefix("unrecognized arguments:").split():
            name = word.split("=", 1)[0]
            if name.startswith("-") and name not in flags:
                close = closest_name(name.lstrip("-"), names)
                if name[2:] in REMOVED_FIELDS:
                    hints.append(f"{name}: {REMOVED_FIELDS[name[2:]]}")
                elif close:
                    hints.append(f"{name} -> did you mean --{close}?")
        return f" ({'; '.join(hints)})" if hints else ""

    def error(self, message: str) -> NoReturn:
        """Two lines; a (sub-)command with a short usage of its own (``prepare_data.py build``) names it on one
        line instead, so its errors show that command's usage, never the top-level one."""
        more = f"(`{self.prog} --help` lists every flag)"
        if self.usage:
            usage = self.format_usage().strip()
            self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)}; {usage} {more}\n")
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)}\n{more}\n")
