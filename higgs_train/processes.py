"""Whether a process of this host is alive: the one home of the checks behind every "is its owner gone?" decision
(a RUNNING MLflow run whose driver was killed, a token-cache staging folder whose builder died, a run lock whose
driver is gone or whose pid now belongs to another process)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


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


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` of this host started (None: no such process; 0.0: it exists but may not be inspected),
    so a pid that now names another process can be told from the one that took a lock."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0


def pid_space() -> str:
    """This process table's identity: the boot id and the pid namespace (empty where Linux's /proc is absent)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""
