"""The only files the Studio serves, lists or writes: those under ``--data_root`` and ``--output_root``.

A browser names a file by a root and a path relative to it (``data:recordings/spk/a.wav``); the path is resolved
with symlinks followed and must still lie inside the root, so ``..``, an absolute path or a symlink out of the
root is refused with one line, before any file is opened.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from higgs_train.studio.refusals import StudioRefusal

ROOT_NAMES = ("data", "output")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # one recording; larger sets are copied to --data_root, not uploaded


class PathRefused(StudioRefusal):
    """A path outside the roots, or not of an allowed kind; the message says which and why."""

    status = 403
    field = "path"


@dataclass(frozen=True)
class Roots:
    data: Path
    output: Path

    @classmethod
    def create(cls, data_root: str | Path, output_root: str | Path) -> Roots:
        data, output = Path(data_root).expanduser().resolve(), Path(output_root).expanduser().resolve()
        data.mkdir(parents=True, exist_ok=True)
        output.mkdir(parents=True, exist_ok=True)
        return cls(data, output)

    def root(self, name: str) -> Path:
        if name not in ROOT_NAMES:
            raise PathRefused(f"root {name!r}: expected one of {', '.join(ROOT_NAMES)}")
        return self.data if name == "data" else self.output

    def resolve(self, root: str, relative: str, must_exist: bool = False) -> Path:
        """``relative`` under root ``root``, symlinks followed; ``PathRefused`` when it would leave the root."""
        base = self.root(root)
        text = str(relative or "").strip()
        if "\x00" in text:
            raise PathRefused(f"{root}:{text!r}: a path may not contain NUL")
        if os.path.isabs(text) or text.startswith("~"):
            raise PathRefused(f"{root}:{text}: give a path relative to the {root} root, not an absolute one")
        if any(part == ".." for part in Path(text).parts):
            raise PathRefused(f"{root}:{text}: '..' is not allowed; paths stay inside the {root} root")
        path = (base / text).resolve()
        if path != base and base not in path.parents:
            raise PathRefused(f"{root}:{text}: leads outside the {root} root (a symlink?); refused")
        if must_exist and not path.exists():
            raise PathRefused(f"{root}:{text}: no such file or folder")
        return path

    def locate(self, path: str | Path) -> tuple[str, str] | None:
        """``(root name, relative path)`` of an absolute path inside a root, else None (e.g. for URLs)."""
        resolved = Path(path).resolve()
        for name in ROOT_NAMES:
            base = self.root(name)
            if resolved == base or base in resolved.parents:
                return name, resolved.relative_to(base).as_posix()
        return None

    def inside(self, path: str | Path) -> Path:
        """An absolute path (read from a job record or MLflow) checked to lie under a root."""
        found = self.locate(path)
        if found is None:
            raise PathRefused(f"{path}: outside --data_root and --output_root; the Studio serves files only there")
        return self.resolve(*found)

    def file_url(self, path: str | Path) -> str | None:
        found = self.locate(path)
        return f"/files/{found[0]}/{found[1]}" if found else None


def checked_upload_name(name: str) -> str:
    """A bare file name with an audio suffix, or ``PathRefused`` (an upload never picks its folder)."""
    base = Path(name or "").name
    if not base or base != name or base.startswith("."):
        raise PathRefused(f"upload {name!r}: give a plain file name (no folders, not hidden)")
    if Path(base).suffix.lower() not in AUDIO_SUFFIXES:
        raise PathRefused(f"upload {name!r}: expected one of {', '.join(AUDIO_SUFFIXES)}")
    return base


def check_audio_bytes(name: str, data: bytes) -> None:
    """Refuse an upload that is too large or is not audio of its suffix (decoded header, not the name)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise PathRefused(f"upload {name}: {len(data) / 1e6:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MiB limit")
    if not data:
        raise PathRefused(f"upload {name}: empty file")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 -- soundfile raises RuntimeError/LibsndfileError for non-audio
        raise PathRefused(f"upload {name}: not a readable audio file ({str(err).splitlines()[0][:120]})") from err
    if info.frames <= 0:
        raise PathRefused(f"upload {name}: the audio has no samples")
