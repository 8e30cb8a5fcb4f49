"""Token-cache staging folders left by crashed builds are removed on the next build; a live builder's are kept."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from higgs_train.data.token_cache import STAGING_OWNER_FILE, TokenCache


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _plant(root, name: str, owner: dict | None, age_seconds: float = 0.0):
    path = root / ".staging" / name
    (path / "data").mkdir(parents=True)
    (path / "data" / "part-0.parquet").write_bytes(b"partial")
    if owner is not None:
        (path / STAGING_OWNER_FILE).write_text(json.dumps(owner))
    if age_seconds:
        old = time.time() - age_seconds
        os.utime(path, (old, old))
    return path


def test_new_build_sweeps_debris_of_dead_builders_only(tmp_path):
    host = socket.gethostname()
    crashed = _plant(tmp_path, "k1-crashed", {"host": host, "pid": _dead_pid()})
    live = _plant(tmp_path, "k2-live", {"host": host, "pid": os.getpid()})
    remote_recent = _plant(tmp_path, "k3-remote", {"host": "another-node", "pid": 1})
    ancient = _plant(tmp_path, "k4-ancient", None, age_seconds=30 * 24 * 3600)

    cache = TokenCache(tmp_path)
    fresh = cache.staging("k5")

    assert not crashed.exists() and not ancient.exists()
    assert live.exists() and remote_recent.exists()
    owner = json.loads((fresh / STAGING_OWNER_FILE).read_text())
    assert owner == {"host": host, "pid": os.getpid()}


def test_published_entry_carries_no_owner_record(tmp_path):
    cache = TokenCache(tmp_path)
    staging = cache.staging("key")
    entry = cache.publish("key", staging, {"rows_ok": 0})
    assert not (entry.path / STAGING_OWNER_FILE).exists()
    assert STAGING_OWNER_FILE not in json.loads((entry.path / "_SUCCESS").read_text())["files"]
