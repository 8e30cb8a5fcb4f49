"""The Studio's job endpoints: start a training run or a sweep (``tune.py``) or an export, watch, stop and resume.

A run started here trains into ``<output_root>/<run_name>`` with the config file written into its job folder. Resume
starts that same config again as a new job: ``train.py`` continues a run name it has not finished from the newest
checkpoint that verifies (and the same MLflow run), so nothing else has to be passed. A sweep does not resume (its
trials never do; ``tune.py`` clears ``resume_from``): start it again instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from higgs_train.studio.http import Refused, guard, read_body, root_path
from higgs_train.studio.jobs import JobError, JobRecord, JobStore
from higgs_train.studio.roots import Roots
from higgs_train.studio.runs import RunStore
from higgs_train.studio.settings import sweep_flags, sweep_settings, training_config, write_config

EXPORTS_DIR = "exports"
CONFIG_FILE = "config.json"  # the checked TrainingConfig a train or tune job runs with, in its job folder
RUN_KINDS = ("train", "tune")
RESUMABLE = ("stopped", "failed", "lost")


def add_job_routes(app: FastAPI, roots: Roots, jobs: JobStore, store: RunStore) -> Callable[..., dict[str, Any]]:
    """Register the endpoints; returns ``job_view`` (a job as the page shows it) for the other job endpoints."""

    def running_for(output_dir: str) -> JobRecord | None:
        """A Studio job still training into this output folder (two would share its checkpoints and adapter)."""
        for record in jobs.records():
            if record.kind in RUN_KINDS and record.output_dir == output_dir and jobs.state(record).state == "running":
                return record
        return None

    def checked(data: dict[str, Any]) -> tuple[Any, str, Any]:
        preset = str(data.get("preset") or "")
        config, run_name = guard(training_config, roots, data.get("settings") or {}, preset)
        return config, run_name, guard(sweep_settings, preset, data.get("sweep"))

    @app.post("/api/train/check")
    async def train_check(request: Request) -> dict[str, Any]:
        """Validate settings only (the form's inline errors)."""
        config, run_name, sweep = checked(await read_body(request))
        return {"ok": True, "run_name": run_name, "output_dir": config.output_dir, "sweep": sweep is not None}

    @app.post("/api/train")
    async def train(request: Request) -> dict[str, Any]:
        """A training run, or with a sweep preset a ``tune.py`` sweep, on the local Ray or submitted to the cluster."""
        data = await read_body(request)
        config, run_name, sweep = checked(data)
        if running_for(config.output_dir):
            raise Refused(409, f"run {run_name} is already training in a Studio job; stop it or pick another "
                          "run_name", "run_name")  # fmt: skip
        script = "ray_jobs/tune.py" if sweep else "ray_jobs/train.py"

        def argv(folder: Path) -> list[str]:
            extra = sweep_flags(sweep) if sweep else []
            return [script, "--config", str(write_config(config, folder / CONFIG_FILE)), *extra]

        kind, title = ("tune", f"sweep {run_name}") if sweep else ("train", f"train {run_name}")
        return job_view(guard(jobs.start, kind, argv, Path(config.output_dir), title, data))

    @app.post("/api/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict[str, Any]:
        """Start a stopped, failed or lost training job again from its run's last checkpoint (a new job)."""
        record = guard(jobs.get, job_id)
        if record.kind != "train":
            why = (
                "a sweep's trials never resume; start the sweep again" if record.kind == "tune" else "nothing to resume"
            )
            raise Refused(409, f"job {job_id} is a {record.kind} job: {why}")
        state = jobs.state(record).state
        if state not in RESUMABLE:
            why = "it is still running" if state == "running" else (
                "its run finished (starting the same run name again would train a new run <name>-2)")  # fmt: skip
            raise Refused(409, f"job {job_id} cannot resume: {why}")
        other = running_for(record.output_dir)
        if other:
            raise Refused(409, f"job {job_id} cannot resume: job {other.job_id} is training the same run now")
        saved = jobs.folder / record.job_id / CONFIG_FILE
        if not saved.is_file():
            raise Refused(409, f"job {job_id} cannot resume: its {CONFIG_FILE} is gone from {saved.parent}")

        def argv(folder: Path) -> list[str]:
            return ["ray_jobs/train.py", "--config", str(shutil.copyfile(saved, folder / CONFIG_FILE))]

        title = f"resume {record.title.removeprefix('train ').removeprefix('resume ')}"
        settings = {**record.settings, "resumed_job": record.job_id}
        return job_view(guard(jobs.start, "train", argv, Path(record.output_dir), title, settings))

    @app.post("/api/export")
    async def export(request: Request) -> dict[str, Any]:
        data = await read_body(request)
        source = root_path(roots, data.get("adapter"), "adapter")
        name = str(data.get("name") or source.parent.name)
        output = guard(roots.resolve, "output", f"{EXPORTS_DIR}/{name}")
        if output.parent != roots.output / EXPORTS_DIR:
            raise Refused(400, f"name {name!r}: one folder name, not a path", "name")
        argv = ["ray_jobs/export.py", "--checkpoint", str(source), "--output", str(output)]
        argv += ["--merge"] if data.get("merge") else []
        return job_view(guard(jobs.start, "export", lambda _: argv, output, f"export {name}", data))

    def job_view(record: JobRecord, detail: bool = False) -> dict[str, Any]:
        state = jobs.state(record)
        where = roots.locate(record.output_dir)
        view = {"job_id": record.job_id, "kind": record.kind, "title": record.title, "created": record.created,
                "state": state.state, "error": state.error, "last_line": state.last_line,
                "output": where and f"{where[0]}:{where[1]}", "settings": record.settings,
                "ray": record.submission_id or None,
                "resumable": record.kind == "train" and state.state in RESUMABLE}  # fmt: skip
        if record.kind in RUN_KINDS:
            run = store.run_for_output_dir(record.output_dir)  # a sweep's: its parent run
            view["run"] = run
            if run:
                view["progress"] = {"max_steps": run["max_steps"], **{k: run["metrics"].get(k) for k in
                                    ("train/total_loss", "train/tokens_per_second", "val_loss")}}  # fmt: skip
            if run and detail and record.kind == "train":  # the step is the last point of the loss curve
                view["history"] = store.history(run["run_id"])
                curve = view["history"].get("train/total_loss", [])
                view["progress"]["step"] = int(curve[-1][0]) if curve else 0
            if run and detail and record.kind == "tune":  # one curve per trial (the children of the sweep's run)
                trials = [r for r in store.runs() if r["parent_run_id"] == run["run_id"]]
                view["trials"] = [{k: t[k] for k in ("run_id", "run_name", "status")} for t in trials]
                view["histories"] = {t["run_name"]: store.history(t["run_id"]) for t in trials}
        if record.kind == "build" and detail:
            report = Path(record.output_dir) / "data_report.json"
            view["report_url"] = roots.file_url(report) if report.is_file() else None
            plot = Path(record.output_dir) / "data_report.png"
            view["plot_url"] = roots.file_url(plot) if plot.is_file() else None
        if record.kind == "export" and detail:
            card = Path(record.output_dir) / "adapter" / "README.md"
            view["card_url"] = roots.file_url(card) if card.is_file() else None
        if detail:
            view["log"] = jobs.log_text(record)[-4000:]
        return view

    @app.get("/api/jobs")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [job_view(r) for r in jobs.records()]}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return job_view(guard(jobs.get, job_id), detail=True)

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict[str, Any]:
        record = guard(jobs.get, job_id)
        try:
            jobs.stop(record)
        except JobError as err:
            raise Refused(409, str(err)) from err
        return job_view(record)

    return job_view
