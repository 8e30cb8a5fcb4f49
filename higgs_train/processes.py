"""Whether a process of this host is alive: the one check behind every "is its owner gone?" decision (a RUNNING
MLflow run whose driver was killed, a token-cache staging folder whose builder died)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while process ``pid`` of this host exists, including one owned by another user (signalling it is
    refused, which proves it exists). ``pid <= 0`` is never a process: ``os.kill`` would address a process group."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
