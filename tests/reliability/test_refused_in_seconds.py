"""A new user's common mistakes, each refused in seconds before Ray or MLflow start, with what to change.

Every case runs the real command as a user types it (``python ray_jobs/train.py ...`` from the repository root, in
a subprocess) and asserts the message, the exit status, that nothing was written under ``--output_dir`` (no MLflow
store, no Ray job) and the time: the command's own CPU seconds under 20 (about 3 on an idle runner, mostly the
import of transformers), since the clock of a runner shared with other jobs says more about them than about it;
the clock gets a loose bound. Measured before: a ``metadata.csv`` as ``--train_data`` cost 208 s of Ray
and a traceback; ``audio_path`` for ``audio_url`` 65 s and a traceback; ``--lr`` was answered "--lora_r".

The commands run two at a time (each spends its ~3 s importing transformers), so the module costs about half the
sum of its commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT_SECONDS = 20.0  # what a refusal may cost: CPU seconds of the command
WALL_LIMIT_SECONDS = 120.0  # a loose bound on the clock (a 2-CPU runner shared by other jobs stretches it)


@dataclass(frozen=True)
class Refusal:
    returncode: int
    stderr: str
    cpu_seconds: float
    wall_seconds: float
    wrote_output: bool


def _row(row_id: str, audio_key: str = "audio_url") -> dict:
    def audio(name: str) -> dict:
        return {"type": "audio", audio_key: f"audio/{name}.wav"}

    return {
        "id": row_id,
        "messages": [
            {"role": "system", "content": "Generate audio following instruction."},
            {"role": "user", "content": "Reference text."},
            {"role": "assistant", "content": audio(f"{row_id}_ref")},
            {"role": "user", "content": "Target text."},
            {"role": "assistant", "content": audio(row_id)},
        ],
    }


def _files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "metadata.csv": "wavs/LJ001-0001.wav|Printing, in the only sense|Printing, in the only sense\n" * 3,
        "audio_path.jsonl": "".join(json.dumps(_row(f"r{i}", "audio_path")) + "\n" for i in range(3)),
        "text_only.jsonl": "".join(
            json.dumps({"id": f"t{i}", "messages": [{"role": "user", "content": "Hi"}]}) + "\n" for i in range(3)
        ),
        "trailing_comma.json": json.dumps([_row("a"), _row("b")], indent=1)[:-2] + ",\n]\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return {name: root / name for name in files}


def _cases(files: dict[str, Path]) -> dict[str, list[str]]:
    train, tune, prepare = "ray_jobs/train.py", "ray_jobs/tune.py", "ray_jobs/prepare_data.py"
    return {
        "csv": [train, "--train_data", str(files["metadata.csv"])],
        "csv_tune": [tune, "--train_data", str(files["metadata.csv"])],
        "audio_path": [train, "--train_data", str(files["audio_path.jsonl"])],
        "text_only": [train, "--train_data", str(files["text_only.jsonl"])],
        "trailing_comma": [train, "--train_data", str(files["trailing_comma.json"])],
        "missing": [train, "--train_data", "no_such_folder/metadata.json"],
        "flags": [train, "--lr", "1e-4", "--epochs", "2", "--bs", "4", "--rank", "8"],
        "cache_s3": [train, "--cache_dir", "s3://bucket/x"],
        "build_flag": [prepare, "build", "--input", "x", "--output", "y", "--bad_flag", "1"],
    }


def _run(args: list[str], output: Path) -> Refusal:
    """Run one command; its CPU seconds come from ``wait4`` (the child's own, not its sibling's)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    extra = ["--output_dir", str(output)] if args[0] != "ray_jobs/prepare_data.py" else []
    with tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *args, *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
        killer = threading.Timer(WALL_LIMIT_SECONDS, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stderr.seek(0)
        text = stderr.read()
    return Refusal(proc.returncode, text, usage.ru_utime + usage.ru_stime, wall, output.exists())


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, Refusal]:
    root = tmp_path_factory.mktemp("mistakes")
    cases = _cases(_files(root / "data"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, args, root / "out" / name) for name, args in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def _assert_refused(refusal: Refusal, lines: int = 1) -> str:
    assert refusal.returncode == 2, refusal.stderr
    assert "Traceback" not in refusal.stderr
    assert len([line for line in refusal.stderr.splitlines() if line.strip()]) == lines, refusal.stderr
    assert not refusal.wrote_output  # refused before any MLflow store or Ray job wrote there
    assert refusal.cpu_seconds < LIMIT_SECONDS and refusal.wall_seconds < WALL_LIMIT_SECONDS, refusal
    return refusal.stderr


@pytest.mark.parametrize("case", ["csv", "csv_tune"])
def test_a_csv_list_as_train_data_points_to_the_builder(refusals, case):
    err = _assert_refused(refusals[case])
    assert "metadata.csv: this is a '|'-separated list" in err and "not a manifest" in err
    assert "ray_jobs/prepare_data.py build --input" in err


def test_audio_path_for_audio_url_names_the_key_the_row_and_the_fix(refusals):
    err = _assert_refused(refusals["audio_path"])
    assert "row 0 (id 'r0') messages[2].content has the key 'audio_path' where 'audio_url' is meant" in err
    assert "rename 'audio_path' to 'audio_url'" in err


def test_a_text_only_manifest_is_refused(refusals):
    err = _assert_refused(refusals["text_only"])
    assert "none of the first 3 rows references audio" in err and "text-only" in err


def test_a_trailing_comma_names_the_line_and_column(refusals):
    err = _assert_refused(refusals["trailing_comma"])
    assert "trailing_comma.json: this JSON list cannot be parsed, line" in err and "trailing comma" in err


def test_a_missing_manifest_is_one_line_naming_the_working_directory(refusals):
    err = _assert_refused(refusals["missing"])
    assert f"--train_data no_such_folder/metadata.json: the manifest {REPO}/no_such_folder/metadata.json" in err
    assert "does not exist" in err


def test_common_flag_names_get_the_real_flag(refusals):
    err = _assert_refused(refusals["flags"], lines=2)
    for given, real in (("--lr", "--learning_rate"), ("--epochs", "--num_epochs"), ("--bs", "--batch_size")):
        assert f"{given} -> did you mean {real}?" in err
    assert "--rank -> did you mean --lora_r?" in err


def test_an_object_store_cache_dir_is_refused_before_anything_is_written(refusals):
    err = _assert_refused(refusals["cache_s3"])
    assert "--cache_dir s3://bucket/x:" in err and "--stream_cache_uri s3://bucket/x" in err
    assert not (REPO / "s3:").exists()


def test_a_sub_command_reports_its_own_error(refusals):
    err = _assert_refused(refusals["build_flag"])
    assert err.startswith("ray_jobs/prepare_data.py build: error: unrecognized arguments: --bad_flag")
    assert "usage: ray_jobs/prepare_data.py build --input SRC --output DIR" in err
    assert "`ray_jobs/prepare_data.py build --help`" in err
