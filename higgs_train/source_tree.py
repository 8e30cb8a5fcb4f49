"""The source tree this code runs from: its folder (what a Ray job uploads as its working_dir) and its git commit
(tagged on every MLflow run, so a run says which code trained it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def git_commit(project_dir: str | Path = PROJECT_DIR) -> str | None:
    """HEAD of the project checkout, or None (no git, no repo: e.g. a Ray working_dir upload excludes .git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None
