"""Which driver owns a RUNNING MLflow run, so that the next start of a run name can close the run a killed driver
left RUNNING (no ``__exit__`` ever ran) without touching one whose driver is alive."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from higgs_train.processes import process_alive

# Tags that let the next start of a run name tell a run whose driver died (left RUNNING) from a live one.
DRIVER_HOST_TAG = "driver_host"
DRIVER_PID_TAG = "driver_pid"
RUN_NAME_TAG = "run_name"


def driver_tags() -> dict[str, str]:
    """Who owns a run while it is RUNNING: this host and process."""
    return {DRIVER_HOST_TAG: socket.gethostname(), DRIVER_PID_TAG: str(os.getpid())}


def driver_is_gone(tags: Mapping[str, str]) -> bool:
    """True when a RUNNING run's driver is known dead (same host, process gone) or unknown (no owner tags, e.g.
    written by an older version). A run owned by another host is left alone: its driver may still be alive."""
    host, pid = tags.get(DRIVER_HOST_TAG), tags.get(DRIVER_PID_TAG)
    if host is None or pid is None or not pid.isdigit():
        return True
    if host != socket.gethostname():
        return False
    return int(pid) != os.getpid() and not process_alive(int(pid))
