"""Output files a job promises (adapter, ``history.json``, reports, manifests, a saved config) are written whole:
a reader, or a job killed mid-write, sees the old file or the new one, never half of one.

Kept apart from ``paths`` (which resolves user paths against a ``TrainingConfig``) so the config itself can save
whole files without an import circle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``path`` through a temporary file beside it and a rename, so it is never seen half written.

    The file gets the permissions a plain ``open(path, "w")`` would give (temporary files are private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as stream:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def staging_dir(final: str | Path) -> Path:
    """A fresh folder beside ``final`` to write a whole directory into before ``replace_dir`` publishes it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    staging.chmod(0o777 & ~_umask())  # as ``mkdir`` would make it (temporary folders are private, 0700)
    return staging


def replace_dir(staging: Path, final: str | Path) -> Path:
    """Publish a fully written ``staging`` folder as ``final`` (two renames; the old folder is removed after).

    POSIX cannot rename over a non-empty folder, so the old one is first moved aside: between the two renames
    ``final`` is briefly absent, never a mix of two versions.
    """
    final = Path(final)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
