"""The one base of every mistake a Studio request can cause, with the HTTP status it is answered with.

Why a base and not a list: ``http.guard`` turns these into 4xx answers for every endpoint. Catching each module's
own error there made the shared HTTP helpers import the jobs, runs, settings and speech modules they serve; with a
base, each module declares its status where its error is defined and ``http`` imports none of them.
"""

from __future__ import annotations


class StudioRefusal(ValueError):
    """A request the user must change; ``status`` is the HTTP answer, ``field`` names the input (empty: none)."""

    status = 400
    field = ""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field
