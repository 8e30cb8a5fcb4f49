"""README.md's commands, run verbatim the way a new user runs them (issue 10, "Done when").

The commands are read from README.md itself (the quick start's job part, and the bash blocks of the Training, Export
and Generation sections), so a README change that breaks a command breaks this test. Each runs as a subprocess from
the root of a fresh copy of the repository (relative paths, default flags, no test-only arguments), in README order,
and the outputs are looked for where the commands say they go: ``--output_dir``/adapter for training,
``--output``/adapter and /merged for export, the ``--output`` WAV or the ``--output_dir`` WAVs for generation.

Commands with a placeholder (``<timestamp>``) or a path outside the repository (``/models/...``) cannot run as
written; they are listed in ``NOT_RUNNABLE`` so that a new one is noticed rather than silently skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from higgs_train.tracking.chart_view import VIEW_TAG

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("Quick start", "Training", "Export", "Generation")
NOT_RUNNABLE = ("checkpoint_<timestamp>",)  # needs a released base model under /models and a real checkpoint id
COMMAND_TIMEOUT_S = 1500


@dataclass(frozen=True)
class ReadmeCommand:
    section: str
    argv: tuple[str, ...]

    @property
    def script(self) -> str:
        return self.argv[1]

    def flag(self, name: str, default: str | None = None) -> str | None:
        args = list(self.argv)
        return args[args.index(name) + 1] if name in args else default

    def __str__(self) -> str:
        return shlex.join(self.argv)


def readme_sections(text: str) -> dict[str, str]:
    """Heading (any level) -> its text up to the next heading."""
    parts = re.split(r"^#{2,4} (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def commands_in(section: str, body: str) -> list[ReadmeCommand]:
    """``python ray_jobs/...`` commands of the section's bash blocks: continuations joined, comments dropped,
    ``a && b`` split (the quick start's install steps are not ``python ray_jobs`` commands and are left out)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [0] + [i + 1 for i, w in enumerate(words) if w == "&&"]
            ends = [i for i, w in enumerate(words) if w == "&&"] + [len(words)]
            for argv in (tuple(words[a:b]) for a, b in zip(starts, ends, strict=True)):
                if argv[:1] == ("python",) and len(argv) > 1 and argv[1].startswith("ray_jobs/"):
                    found.append(ReadmeCommand(section, argv))
    return found


def readme_commands() -> list[ReadmeCommand]:
    sections = readme_sections((ROOT / "README.md").read_text())
    missing = [s for s in SECTIONS if s not in sections]
    assert not missing, f"README.md lost the sections {missing}; update SECTIONS"
    return [c for s in SECTIONS for c in commands_in(s, sections[s])]


def runnable(commands: list[ReadmeCommand]) -> list[ReadmeCommand]:
    return [c for c in commands if not any(mark in str(c) for mark in NOT_RUNNABLE)]


def test_readme_commands_are_found():
    """The parser sees what a reader sees; a README edit that drops or adds a command shows up here."""
    commands = readme_commands()
    scripts = [(c.section, c.script) for c in runnable(commands)]
    assert scripts == [
        ("Quick start", "ray_jobs/train.py"),
        ("Training", "ray_jobs/train.py"),  # --create_sample_data data/train.jsonl
        ("Training", "ray_jobs/train.py"),
        ("Export", "ray_jobs/export.py"),
        ("Export", "ray_jobs/export.py"),
        ("Generation", "ray_jobs/generate.py"),
        ("Generation", "ray_jobs/generate.py"),
        ("Generation", "ray_jobs/generate.py"),
    ], scripts
    assert commands[0].argv == ("python", "ray_jobs/train.py")  # the quick start's job: default flags
    assert len(commands) - len(runnable(commands)) == len(NOT_RUNNABLE)


# --------------------------------------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the repository (tracked and untracked source files, no outputs): the user's checkout."""
    dst = tmp_path_factory.mktemp("readme") / "higgs-train"
    top_level = {".git", "outputs", "exports", "data", "samples"}  # what the commands write, and the git store
    anywhere = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*cache")

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(anywhere(folder, names))
        return skipped | (top_level & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


def run_verbatim(
    command: ReadmeCommand, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(cwd)  # the copy's higgs_train, also for Ray workers (an editable install may point away)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)  # the quick start starts its own local Ray
    env.update(extra_env or {})
    argv = [sys.executable, *command.argv[1:]]  # "python" of this environment
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    print(f"$ {command}  [{time.monotonic() - start:.0f}s, exit {done.returncode}]")
    return done


def expect_ok(done: subprocess.CompletedProcess, command: ReadmeCommand) -> None:
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def commands_of(script: str) -> list[ReadmeCommand]:
    return [c for c in runnable(readme_commands()) if c.script == script]


def test_training_commands_write_the_adapter_where_the_readme_says(checkout, ray_head_on_the_machine):
    jobs = []
    for command in commands_of("ray_jobs/train.py"):
        done = run_verbatim(command, checkout, ray_head_on_the_machine)
        expect_ok(done, command)
        sample = command.flag("--create_sample_data")
        if sample:
            assert (checkout / sample).is_file()
            continue
        jobs.append(command)
        assert "A Ray cluster is running on this machine" in done.stdout  # said once, then its own Ray
        assert_quiet_console(done, command)
        output = checkout / command.flag("--output_dir", "outputs/default")
        for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "history.json"):
            assert (output / name).is_file(), f"{command}: no {output / name}"
        assert (output / "loss_curve.png").is_file()
        # Nothing went to Ray's session folder: the adapter the job reports is the one on disk.
        assert f"adapter at {output / 'adapter'}" in done.stdout
        # One progress line per logged step, and most of the console is the job's own.
        progress = [line for line in done.stdout.splitlines() if re.search(r"step \d+/\d+ \| loss", line)]
        assert progress, done.stdout[-3000:]
        assert "training done:" in done.stdout
        if command.flag("--output_dir") is None:  # the README's first command: the user must see it learn
            assert_default_job_learned(json.loads((output / "history.json").read_text()))
    assert_runs_side_by_side_in_one_store(checkout, jobs)


def assert_quiet_console(done: subprocess.CompletedProcess, command: ReadmeCommand) -> None:
    """The job's own lines, a progress line while the token cache is built, none of Ray's or torch's noise."""
    console = done.stdout + done.stderr
    for noise in ("Token authentication is enabled", "weight_norm", "Creating initial MLflow database tables"):
        assert noise not in console, f"{command}: {noise!r} on the default console"
    assert re.search(r"token cache \(train\): \d+/\d+ rows \(100%\) \| [\d.]+ rows/s \| done in", done.stdout)
    steps = len([line for line in done.stdout.splitlines() if re.search(r"step \d+/\d+ \| loss", line)])
    others = len(console.splitlines()) - steps
    assert others <= 20, f"{command}: {others} lines besides the {steps} step lines:\n{console[-4000:]}"


def assert_runs_side_by_side_in_one_store(checkout: Path, jobs: list[ReadmeCommand]) -> None:
    """Both jobs (outputs/default, outputs/my-voice) landed in the project's store, the one the README's
    `mlflow ui` line opens, each with every step of its loss curve (read back through MLflow's client)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{checkout / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("higgs-train")
    runs = client.search_runs([experiment.experiment_id])
    names = [Path(c.flag("--output_dir", "outputs/default")).name for c in jobs]
    assert sorted(r.info.run_name for r in runs) == sorted(names)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's "Machine learning"
    view = json.loads(json.loads(experiment.tags[VIEW_TAG])["state"])  # MLflow's saved view: losses first
    first_charts = [chart["metricKey"] for chart in view["compareRunCharts"]]
    for run in runs:
        assert run.info.status == "FINISHED"
        # MLflow's compare page plots the first-logged metric by default: a loss, not data/train_rows.
        assert next(iter(run.data.metrics)).startswith("train/"), list(run.data.metrics)[:5]
        assert set(first_charts) <= set(run.data.metrics), first_charts  # the view names what a job really logs
        history = json.loads((checkout / "outputs" / run.info.run_name / "history.json").read_text())
        logged = [int(m.step) for m in client.get_metric_history(run.info.run_id, "train/total_loss")]
        assert logged == [h["step"] for h in history], run.info.run_name
    assert not list((checkout / "outputs").glob("*/mlflow.db"))  # no per-output-dir store any more


def assert_default_job_learned(history: list[dict]) -> None:
    """The default job (embedded model, sample data, default flags) visibly learns within its couple of minutes.

    Measured: train audio loss 7.76 -> 6.73, val next-code accuracy 0.006 (step 10) -> 0.017 (step 30; chance is
    1/1026). Before the embedded model was sized for it, the audio loss stayed at ln 1026 and accuracy at chance.
    """
    audio = [h["train/audio_loss"] for h in history]
    validated = [h for h in history if "val_loss" in h]
    assert audio[-1] < audio[0] - 0.5, f"train audio loss did not fall: {audio[0]:.3f} -> {audio[-1]:.3f}"
    assert validated[-1]["val_loss"] < validated[0]["val_loss"], [h["val_loss"] for h in validated]
    assert validated[-1]["val_audio_accuracy"] > 10 / 1026, validated[-1]["val_audio_accuracy"]


def test_export_commands_write_the_adapter_and_merged_model(checkout):
    if not (checkout / "outputs" / "default" / "adapter").is_dir():
        pytest.skip("the quick start job did not run")
    for command in commands_of("ray_jobs/export.py"):
        expect_ok(run_verbatim(command, checkout), command)
        out = checkout / command.flag("--output")
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        if "--merge" in command.argv:
            assert (out / "merged" / "config.json").is_file()
            assert list((out / "merged").glob("*.safetensors"))


def test_generate_commands_write_wavs(checkout):
    if not (checkout / "exports" / "default" / "merged").is_dir():
        pytest.skip("the export commands did not run")
    for command in commands_of("ray_jobs/generate.py"):
        done = run_verbatim(command, checkout)
        expect_ok(done, command)
        # Every clip is checked; with --allow_bad_audio (the tiny model's clipped noise) a failed check is a warning.
        printed = done.stdout + done.stderr
        assert "audio check: " in printed, printed[-3000:]
        assert "--allow_bad_audio" in command.argv or "warning: audio check" not in printed
        if command.flag("--speaker"):
            assert f"voice of {command.flag('--speaker')}: " in done.stdout  # the clip it chose, and its transcript
        if command.flag("--output"):
            wav = checkout / command.flag("--output")
            assert wav.is_file() and wav.stat().st_size > 44
        else:
            out = checkout / command.flag("--output_dir")
            assert list(out.glob("*.wav")) and (out / "results.json").is_file()
