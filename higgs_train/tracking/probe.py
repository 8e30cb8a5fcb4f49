"""Is an MLflow tracking server up: one ``/health`` request before a run starts, so that a job fails in seconds
with the server's name rather than after MLflow's own client has retried for minutes."""

from __future__ import annotations

import urllib.error
import urllib.request

from higgs_train.tracking.store import TrackingError


def probe_http(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast on an unreachable server: MLflow's own client would retry for minutes before saying so."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (502, 503, 504):  # a proxy or load balancer answering for a server that is down
            raise TrackingError(f"MLflow tracking server {uri!r} is unavailable: HTTP {exc.code}") from exc
        return  # something answered (auth, path prefix, ...): reachable; MLflow reports any real problem
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri!r} is unreachable: {reason}") from exc
