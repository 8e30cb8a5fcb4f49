"""The one process-liveness check that decides whether a RUNNING MLflow run or a token-cache staging folder still
has a live owner: a wrong answer either closes a live job's run or keeps a dead builder's debris forever."""

from __future__ import annotations

import os
import subprocess
import sys

from higgs_train.processes import process_alive


def test_live_dead_and_impossible_pids() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert process_alive(os.getpid())
    assert not process_alive(child.pid)
    # 0 and negative pids address process groups in os.kill: never a live owner, even though kill(0, 0) succeeds.
    assert not process_alive(0)
    assert not process_alive(-1)
    # pid 1 exists on every host; another user's process answers PermissionError, which still means alive.
    assert process_alive(1)
