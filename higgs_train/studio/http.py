"""What every Studio endpoint shares: the refusal a user can cause (``Refused`` -> JSON ``{"error", "field"}`` with a
4xx status), the mapping of the Studio's own errors (``refusals.StudioRefusal``) to those refusals, and reading a JSON body or a root path.

Kept apart from ``app`` so the endpoint modules (``app``, ``job_routes``) answer mistakes the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request

from higgs_train.studio.refusals import StudioRefusal
from higgs_train.studio.roots import Roots


class Refused(Exception):
    """A request the user must change: answered with ``status`` and the one-line message (``field``: which input)."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.field = status, field


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:400] if lines else type(err).__name__


def guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; the expected mistakes become a 4xx with their one line."""
    try:
        return fn(*args, **kwargs)
    except StudioRefusal as err:
        raise Refused(err.status, str(err), err.field) from err


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; only ``application/json`` (a cross-site form cannot send it)."""
    if "application/json" not in request.headers.get("content-type", ""):
        raise Refused(415, "request body: send JSON with 'Content-Type: application/json'")
    try:
        data = await request.json()
    except ValueError as err:
        raise Refused(400, f"request body: not JSON ({one_line(err)})") from err
    if not isinstance(data, dict):
        raise Refused(400, "request body: expected a JSON object")
    return data


def root_path(roots: Roots, value: Any, field: str, must_exist: bool = True) -> Path:
    """``data:<path>`` / ``output:<path>`` -> the path inside that root; refused otherwise."""
    text = str(value or "")
    root, sep, rel = text.partition(":")
    if not sep:
        raise Refused(400, f"{field}: give data:<path> or output:<path> (got {text!r})", field)
    return guard(roots.resolve, root, rel, must_exist)
