"""Where bytes live: a local path or a URI (``file://``, ``s3://``, ``gs://``), reached through pyarrow filesystems.

Why one module, below both ``data/`` and ``training/``: the token-cache stream (``data.shard_stream``), the
checkpoints and the run lock (``training.checkpoint_store``), the drivers and the user-path rules (``paths``) all
take a location that may be either; reading them the same way everywhere is what lets a cache, a checkpoint or a
``--resume_from`` live on any storage Ray supports. Storage is resolved the way Ray resolves
``RunConfig(storage_path)``: for S3 the usual AWS variables apply (``AWS_ENDPOINT_URL`` for an S3-compatible
endpoint). Nothing here knows what is stored.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` (left to pyarrow), False for a local path."""
    return "://" in str(location)


def filesystem_and_path(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path or a URI (``file://``, ``s3://``, ``gs://``)."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    fs, path = pafs.FileSystem.from_uri(location)
    return fs, path.rstrip("/")


def join(location: str | Path, *names: str) -> str:
    """``location`` (path or URI) with ``names`` appended, keeping its form."""
    return "/".join([str(location).rstrip("/"), *names])
