"""The Studio's JSON API (higgs_train.studio) with FastAPI's TestClient: no Ray, no model.

What must hold: files only under the two roots (``..``, absolute and symlink escapes refused, uploads size- and
type-checked), settings through TrainingConfig's checks with the field named, runs and samples read from the
project's MLflow store, jobs that end with their own one-line error (never a traceback) and can be stopped, a Ray
entry point that no setting can break out of, and no open page off loopback.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from higgs_train.commands.studio import main
from higgs_train.studio import roots as roots_module
from higgs_train.studio.app import StudioSettings, create_app
from higgs_train.studio.jobs import JobStore


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def studio(tmp_path: Path):
    data, out = tmp_path / "data", tmp_path / "out"
    app = create_app(StudioSettings(str(data), str(out)))
    (data / "voices").mkdir(parents=True)
    (data / "voices" / "a.wav").write_bytes(wav_bytes())
    (data / "notes.py").write_text("print('not served')")
    (tmp_path / "secret.wav").write_bytes(wav_bytes())
    (data / "escape.wav").symlink_to(tmp_path / "secret.wav")
    (data / "outside").symlink_to(tmp_path, target_is_directory=True)
    return TestClient(app, base_url="http://127.0.0.1:7860"), data, out


def test_files_are_served_only_inside_the_roots(studio):
    client, data, _ = studio
    ok = client.get("/files/data/voices/a.wav")
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav" and ok.content == wav_bytes()
    for url in ("/files/data/%2e%2e/secret.wav", "/files/data/escape.wav", "/files/data/outside/secret.wav",
                "/files/data//etc/passwd", "/files/elsewhere/a.wav", "/files/data/notes.py"):  # fmt: skip
        response = client.get(url)
        assert response.status_code in (403, 404), url
        body = response.json()
        assert "Traceback" not in body["error"] and "\n" not in body["error"], url
    assert "outside the data root" in client.get("/files/data/escape.wav").json()["error"]
    listing = client.get("/api/browse", params={"root": "data", "path": ""}).json()["entries"]
    names = {e["name"] for e in listing}
    assert "voices" in names and "escape.wav" not in names and "outside" not in names  # escapes are not listed
    assert client.get("/api/browse", params={"root": "data", "path": "../"}).status_code == 403


def test_uploads_are_named_sized_and_type_checked(studio, monkeypatch):
    client, data, _ = studio
    saved = client.post("/api/upload", params={"name": "me.wav"}, content=wav_bytes())
    assert saved.status_code == 200 and saved.json()["path"] == "data:uploads/me.wav"
    assert (data / "uploads" / "me.wav").read_bytes() == wav_bytes()
    refused = {
        "../me.wav": wav_bytes(),  # a folder in the name
        ".hidden.wav": wav_bytes(),
        "script.sh": b"#!/bin/sh\n",  # not audio by name
        "fake.wav": b"MZ\x90\x00 not a wav",  # not audio by content
        "empty.wav": b"",
    }
    for name, payload in refused.items():
        response = client.post("/api/upload", params={"name": name}, content=payload)
        assert response.status_code == 403, name
        assert not (data / "uploads" / Path(name).name).exists() or name == "../me.wav"
    assert (
        client.post("/api/upload", params={"name": "a.wav", "folder": "../x"}, content=wav_bytes()).status_code == 403
    )
    monkeypatch.setattr(roots_module, "MAX_UPLOAD_BYTES", 1000)
    too_big = client.post("/api/upload", params={"name": "big.wav"}, content=wav_bytes())
    assert too_big.status_code == 403 and "limit" in too_big.json()["error"]


def test_training_settings_go_through_training_config(studio):
    client, _, out = studio
    catalogue = client.get("/api/settings").json()
    by_name = {f["name"]: f for f in catalogue["fields"]}
    assert by_name["lora_r"]["help"] == "LoRA rank." and "quick_test" in catalogue["presets"]
    assert catalogue["sweep_presets"] == {"sweep": {"num_samples": 3}}
    sweep_fields = {f["name"]: f for f in catalogue["sweep_fields"]}
    assert sweep_fields["num_samples"]["type"] == "int" and "search_space" not in sweep_fields
    assert "output_dir" not in by_name and "mlflow_tracking_uri" not in by_name
    cases = {
        "lora_r": ({"lora_r": 0}, "an integer >= 1"),
        "learning_rate": ({"learning_rate": "fast"}, "a number"),
        "lr": ({"lr": 1e-4}, "did you mean 'learning_rate'"),
        "train_data": ({"train_data": "/etc/passwd"}, "data:<path> or output:<path>"),
        "val_data": ({"val_data": "data:../../etc/passwd"}, "'..' is not allowed"),
        "mlflow_tracking_uri": ({"mlflow_tracking_uri": "sqlite:////tmp/x.db"}, "not settable"),
        "run_name": ({"run_name": "../up"}, "run name"),
    }
    for field, (settings, words) in cases.items():
        for endpoint in ("/api/train/check", "/api/train"):
            response = client.post(endpoint, json={"preset": "quick_test", "settings": settings})
            assert response.status_code in (403, 422), (field, response.json())
            assert response.json()["field"] == field and words in response.json()["error"], response.json()
    assert client.post("/api/train", json={"preset": "huge"}).json()["field"] == "preset"
    assert (
        client.post("/api/train", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    )
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing was started by a refused request
    good = client.post("/api/train/check", json={"preset": "quick_test", "settings": {"run_name": "v1"}}).json()
    assert good == {"ok": True, "run_name": "v1", "output_dir": str(out / "v1"), "sweep": False}


def _store_with_run(out: Path, data: Path) -> str:
    """A run as a training job leaves it in <output_root>/mlflow.db: params, metric history, a sample WAV."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.create_experiment("higgs-train", artifact_location=(out / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="voice-a")
    rid = run.info.run_id
    client.log_param(rid, "output_dir", str(out / "voice-a"))
    client.log_param(rid, "max_steps", "4")
    for step, loss in enumerate([9.0, 8.0, 7.5, 7.0], start=1):
        client.log_metric(rid, "train/total_loss", loss, step=step)
    client.log_metric(rid, "val_loss", 7.2, step=4)
    sample = out / "voice-a" / "samples" / "step_0000004" / "row1.wav"
    sample.parent.mkdir(parents=True)
    sample.write_bytes(wav_bytes())
    client.log_artifact(rid, str(sample), "samples/step_0000004")
    client.set_terminated(rid, "FINISHED")
    return rid


def test_runs_metrics_and_samples_come_from_the_store(studio):
    client, data, out = studio
    assert client.get("/api/runs").json()["runs"] == []  # no store yet: no runs, no error
    rid = _store_with_run(out, data)
    (run,) = client.get("/api/runs").json()["runs"]
    assert run["run_id"] == rid and run["run_name"] == "voice-a" and run["status"] == "FINISHED"
    assert run["metrics"]["train/total_loss"] == 7.0 and run["output_dir"] == str(out / "voice-a")
    metrics = client.get(f"/api/runs/{rid}/metrics").json()
    assert metrics["history"]["train/total_loss"] == [[1, 9.0], [2, 8.0], [3, 7.5], [4, 7.0]]
    assert metrics["checkpoints"] == [{"step": 4, "val_loss": 7.2}]
    (sample,) = client.get(f"/api/runs/{rid}/samples").json()["samples"]
    assert sample["step"] == 4 and sample["sample_id"] == "row1"
    played = client.get(sample["url"])
    assert played.status_code == 200 and played.headers["content-type"] == "audio/wav"
    assert client.get("/api/runs/nope/samples").status_code == 404


def test_speak_refuses_bad_requests_before_loading_a_model(studio):
    client, _, _ = studio
    cases = [
        ({"text": "", "ref_audio": "data:voices/a.wav", "ref_text": "hi"}, 400, "text"),
        ({"text": "Hello.", "ref_audio": "data:escape.wav", "ref_text": "hi"}, 403, "outside"),
        ({"text": "Hello.", "ref_audio": "/etc/passwd", "ref_text": "hi"}, 400, "data:<path>"),
        ({"text": "Hello.", "speaker": "spk"}, 400, "data set folder"),
        ({"text": "Hello.", "speaker": "spk", "data": "data:voices"}, 400, "no train.jsonl"),
        ({"text": "Hello.", "run_id": "nope", "ref_audio": "data:voices/a.wav", "ref_text": "hi"}, 404, "nope"),
        ({"text": "Hello."}, 400, "reference"),
        ({"text": "Hello.", "ref_audio": "data:notes.py", "ref_text": "hi"}, 400, "reference notes.py"),
    ]
    for request, status, words in cases:
        response = client.post("/api/speak", json=request)
        assert response.status_code == status and words in response.json()["error"], (request, response.json())


def test_build_refuses_inputs_outside_the_roots(studio):
    client, _, _ = studio
    for request, words in [({"input": "data:../"}, "'..'"), ({"input": "data:nothing"}, "no such"),
                           ({"input": "/etc"}, "data:<path>"), ({"input": "data:voices", "name": "a/b"}, "one folder")]:  # fmt: skip
        response = client.post("/api/build", json=request)
        assert response.status_code in (400, 403) and words in response.json()["error"], response.json()


def _job_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "job.py"
    script.write_text(body)
    return str(script)


def test_a_job_ends_with_its_own_one_line_error(tmp_path: Path):
    jobs = JobStore(tmp_path / "out")
    script = _job_script(
        tmp_path, "print('working 1/2', flush=True)\nraise ValueError('row 3 of x.jsonl: bad audio')\n"
    )
    record = jobs.start("build", lambda _: [script], tmp_path / "out" / "x", "t", {})
    jobs._children[record.job_id].wait(timeout=60)
    state = jobs.state(record)
    assert state.state == "failed" and state.returncode == 1
    assert state.error == "ValueError: row 3 of x.jsonl: bad audio"  # the job's line, not the traceback
    assert "Traceback" in jobs.log_text(record)  # ... which stays in the log for whoever wants it
    again = JobStore(tmp_path / "out")  # a restarted server finds the job and its end from the files
    assert [r.job_id for r in again.records()] == [record.job_id] and again.state(record).error == state.error


def test_a_job_can_be_stopped(tmp_path: Path):
    jobs = JobStore(tmp_path / "out")
    script = _job_script(tmp_path, "import signal\nprint('ready', flush=True)\nsignal.pause()\n")
    record = jobs.start("train", lambda _: [script], tmp_path / "out" / "x", "t", {})
    runner = jobs._children[record.job_id]
    log = tmp_path / "out" / "studio_jobs" / record.job_id / "log.txt"
    for _ in range(600):  # until the command runs (the runner has its signal handlers by then)
        if log.is_file() and "ready" in log.read_text():
            break
        with pytest.raises(subprocess.TimeoutExpired):
            runner.wait(timeout=0.05)
    assert jobs.state(record).state == "running"
    jobs.stop(record)
    runner.wait(timeout=60)
    assert jobs.state(record).state == "stopped"
    with pytest.raises(ValueError, match="not running"):
        jobs.stop(record)


class FakeRayClient:
    """Ray's JobSubmissionClient as the Studio uses it; ``states`` sets a submission's status (default FAILED)."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.states: dict[str, str] = {}

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_status(self, submission_id):
        return type("Status", (), {"value": self.states.get(submission_id, "FAILED")})()

    def get_job_logs(self, _):
        return "step 1/4\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n"

    def stop_job(self, submission_id):
        self.stopped.append(submission_id)


def test_ray_jobs_get_a_quoted_entry_point(tmp_path: Path):
    fake = FakeRayClient()
    jobs = JobStore(tmp_path / "out", "http://127.0.0.1:8265", fake)
    hostile = "x; rm -rf / $(whoami)"
    record = jobs.start("train", lambda _: ["ray_jobs/train.py", "--config", hostile], tmp_path / "out", "t", {})
    (submitted,) = fake.submitted
    assert shlex.split(submitted["entrypoint"]) == ["python", "ray_jobs/train.py", "--config", hostile]
    assert submitted["runtime_env"]["working_dir"] == str(Path(__file__).resolve().parents[2])
    state = jobs.state(record)
    assert state.state == "failed" and state.error == "RuntimeError: CUDA out of memory"
    jobs.stop(record)
    assert fake.stopped == [record.job_id]


def test_no_open_page_off_loopback(tmp_path: Path, capsys):
    roots = {"data_root": str(tmp_path / "d"), "output_root": str(tmp_path / "o")}
    with pytest.raises(ValueError, match="--auth"):
        create_app(StudioSettings(**roots, host="0.0.0.0"))
    argv = ["--host", "0.0.0.0", "--data_root", roots["data_root"], "--output_root", roots["output_root"]]
    assert main(argv) == 2 and "--auth" in capsys.readouterr().err
    client = TestClient(create_app(StudioSettings(**roots, host="0.0.0.0", auth="s3cret")))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = client.get("/", params={"token": "s3cret"})
    assert page.status_code == 200 and "Studio" in page.text
    assert client.get("/api/runs").status_code == 200  # the cookie set by ?token= carries on


def test_the_shim_answers_help_without_a_server():
    done = subprocess.run([sys.executable, "ray_jobs/studio.py", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)  # fmt: skip
    assert done.returncode == 0 and "--auth" in done.stdout and "--ray_address" in done.stdout


def test_a_store_being_created_is_not_touched(studio):
    """A job creating <output_root>/mlflow.db runs MLflow's migrations; the Studio must neither run them too (the
    two race: "table _alembic_tmp_experiments already exists") nor fail: it shows no runs until the schema is done."""
    import sqlite3

    client, _, out = studio
    with sqlite3.connect(out / "mlflow.db") as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        db.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")  # MLflow's first migration
        db.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    assert client.get("/api/runs").json()["runs"] == []
    with sqlite3.connect(out / "mlflow.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"alembic_version", "experiments"}


def test_other_endpoints_refuse_what_is_outside_or_unknown(studio):
    client, _, _ = studio
    assert client.post("/api/export", json={"adapter": "data:../x"}).status_code == 403
    refused = client.post("/api/export", json={"adapter": "data:voices", "name": "../up"})
    assert refused.status_code in (400, 403) and "'..'" in refused.json()["error"]
    assert client.get("/api/datasets/clips", params={"path": "data:../"}).status_code == 403
    assert "no train.jsonl" in client.get("/api/datasets/clips", params={"path": "data:voices"}).json()["error"]
    for path in ("/api/jobs/nope", "/api/jobs/build-20260101-000000-abcdef", "/api/jobs/..%2F..%2Fetc"):
        assert client.get(path).status_code == 404, path
    assert client.post("/api/jobs/nope/stop").status_code == 404
    assert client.post("/api/sample_recordings", json={"name": "../x"}).status_code == 403
    assert client.post("/api/sample_recordings", json={"per_speaker": 2}).json()["field"] == "per_speaker"
    made = client.post("/api/sample_recordings", json={"name": "samples"}).json()
    assert made == {"path": "data:samples", "files": 16}
    clips = client.get("/api/browse", params={"root": "data", "path": "samples/spk_mid"}).json()["entries"]
    assert sorted(e["name"] for e in clips)[:2] == ["utt_00.txt", "utt_00.wav"]
    assert client.get(next(e["url"] for e in clips if e["name"] == "utt_00.wav")).status_code == 200


def test_requests_from_other_sites_are_refused(studio):
    """No token on loopback: a page of another site open in the same browser must not start jobs here."""
    client, _, _ = studio
    request = {"preset": "quick_test", "settings": {"lora_r": 0}}  # refused anyway, but only after the origin check
    evil = client.post("/api/train/check", json=request, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.json()["error"]
    form = client.post("/api/train", content=json.dumps(request), headers={"content-type": "text/plain"})
    assert form.status_code == 415  # a cross-site <form enctype=text/plain> cannot send JSON
    rebound = client.get("/api/runs", headers={"Host": "evil.example:7860"})
    assert rebound.status_code == 403 and "127.0.0.1 or localhost" in rebound.json()["error"]
    same = client.post("/api/train/check", json=request, headers={"Origin": "http://127.0.0.1:7860"})
    assert same.status_code == 422 and same.json()["field"] == "lora_r"
    assert client.get("/api/runs", headers={"Host": "localhost:7860"}).status_code == 200


def test_unlabelled_clips_get_their_transcripts_typed_in(studio):
    """The build's to_transcribe.tsv, filled from the page: only its clips, one line each, written whole."""
    client, _, out = studio
    folder = out / "datasets" / "x"
    (folder / "audio" / "spk").mkdir(parents=True)
    (folder / "audio" / "spk" / "seg_0.wav").write_bytes(wav_bytes())
    (folder / "to_transcribe.tsv").write_text("path\ttext\naudio/spk/seg_0.wav\t\naudio/spk/seg_1.wav\told text\n")
    rows = client.get("/api/datasets/to_transcribe", params={"path": "output:datasets/x"}).json()["rows"]
    assert [(r["clip"], r["text"]) for r in rows] == [("audio/spk/seg_0.wav", ""), ("audio/spk/seg_1.wav", "old text")]
    assert client.get(rows[0]["url"]).status_code == 200
    fill = {"path": "output:datasets/x", "texts": {"audio/spk/seg_0.wav": "  The sun rose  slowly. "}}
    assert client.post("/api/datasets/to_transcribe", json=fill).json() == {"filled": 2, "open": 0}
    assert (folder / "to_transcribe.tsv").read_text() == (
        "path\ttext\naudio/spk/seg_0.wav\tThe sun rose slowly.\naudio/spk/seg_1.wav\told text\n"
    )
    for texts, status in [({"audio/spk/other.wav": "hi"}, 400), ({"audio/spk/seg_0.wav": "a\tb"}, 422),
                          ({"audio/spk/seg_0.wav": "line\nbreak"}, 422)]:  # fmt: skip
        response = client.post("/api/datasets/to_transcribe", json={"path": "output:datasets/x", "texts": texts})
        assert response.status_code == status, texts
    assert "The sun rose slowly." in (folder / "to_transcribe.tsv").read_text()  # refused edits changed nothing


@pytest.fixture()
def on_ray(tmp_path: Path):
    """The Studio submitting to a (fake) cluster: what it submits, and each job's state as Ray would report it."""
    fake = FakeRayClient()
    settings = StudioSettings(str(tmp_path / "data"), str(tmp_path / "out"), ray_address="http://127.0.0.1:8265")
    return TestClient(create_app(settings, ray_client=fake), base_url="http://127.0.0.1:7860"), fake, tmp_path / "out"


def test_a_sweep_preset_runs_tune_through_the_train_path(on_ray):
    client, fake, out = on_ray
    job = client.post(
        "/api/train", json={"preset": "sweep", "settings": {"run_name": "sw"}, "sweep": {"num_samples": 2}}
    )
    assert job.status_code == 200 and job.json()["kind"] == "tune" and job.json()["title"] == "sweep sw"
    (submitted,) = fake.submitted
    argv = shlex.split(submitted["entrypoint"])
    assert argv[:3] == ["python", "ray_jobs/tune.py", "--config"] and argv[4:] == ["--num_samples", "2"]
    config = json.loads(Path(argv[3]).read_text())
    assert config["quick_test"] is True and config["output_dir"] == str(out / "sw") and config["run_name"] == "sw"
    default = client.post("/api/train/check", json={"preset": "sweep"}).json()
    assert default["sweep"] is True  # the preset's own num_samples (3) needs no sweep object
    cases = [
        ("sweep", {"num_samples": 0}, "num_samples", ">= 1"),
        ("sweep", {"num_samples": "many"}, "num_samples", "expected int"),
        ("sweep", {"num_samples": True}, "num_samples", "expected int"),
        ("sweep", {"search_space": "/etc/passwd"}, "search_space", "not settable"),
        ("sweep", {"trials": 4}, "trials", "not a sweep setting"),
        ("sweep", {"reduction_factor": 1}, "reduction_factor", "> 1"),
        ("quick_test", {"num_samples": 2}, "sweep", "need a sweep preset"),
    ]
    for preset, sweep, field, words in cases:
        response = client.post("/api/train", json={"preset": preset, "sweep": sweep})
        assert response.status_code == 422, (sweep, response.json())
        assert response.json()["field"] == field and words in response.json()["error"], response.json()
    assert len(fake.submitted) == 1  # nothing refused was submitted
    refused = client.post(f"/api/jobs/{job.json()['job_id']}/resume")
    assert refused.status_code == 409 and "sweep" in refused.json()["error"]


def test_a_stopped_or_failed_run_resumes_with_its_own_config(on_ray):
    client, fake, out = on_ray
    first = client.post("/api/train", json={"preset": "quick_test", "settings": {"run_name": "v1", "lora_r": 4}})
    job_id = first.json()["job_id"]
    assert first.json()["resumable"] is True  # the fake cluster reports a new job FAILED until told otherwise
    fake.states[job_id] = "RUNNING"
    assert client.get(f"/api/jobs/{job_id}").json()["resumable"] is False
    assert client.post(f"/api/jobs/{job_id}/resume").json()["error"].endswith("it is still running")
    again = client.post("/api/train", json={"preset": "quick_test", "settings": {"run_name": "v1"}})
    assert again.status_code == 409 and again.json()["field"] == "run_name"
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200 and fake.stopped == [job_id]
    fake.states[job_id] = "SUCCEEDED"
    assert "run finished" in client.post(f"/api/jobs/{job_id}/resume").json()["error"]
    fake.states[job_id] = "STOPPED"
    assert client.get(f"/api/jobs/{job_id}").json()["resumable"] is True
    resumed = client.post(f"/api/jobs/{job_id}/resume")
    assert resumed.status_code == 200, resumed.json()
    view = resumed.json()
    assert view["kind"] == "train" and view["title"] == "resume v1" and view["settings"]["resumed_job"] == job_id
    first_argv, resumed_argv = (shlex.split(s["entrypoint"]) for s in fake.submitted)
    assert resumed_argv[:3] == first_argv[:3] == ["python", "ray_jobs/train.py", "--config"]
    assert resumed_argv[3] != first_argv[3] and view["job_id"] in resumed_argv[3]  # a copy in the new job's folder
    config = json.loads(Path(resumed_argv[3]).read_text())
    assert config == json.loads(Path(first_argv[3]).read_text())  # same run name and folder: train.py resumes it
    assert config["run_name"] == "v1" and config["output_dir"] == str(out / "v1") and config["lora_r"] == 4
    fake.states[view["job_id"]] = "RUNNING"  # the resumed job trains: the stopped one cannot resume a second time
    twice = client.post(f"/api/jobs/{job_id}/resume")
    assert twice.status_code == 409 and view["job_id"] in twice.json()["error"]
    assert client.post("/api/jobs/train-20260101-000000-abcdef/resume").status_code == 404
    build = client.post("/api/build", json={"input": "data:", "name": "x"}).json()
    assert "nothing to resume" in client.post(f"/api/jobs/{build['job_id']}/resume").json()["error"]
    assert len(fake.submitted) == 3  # train, resume, build: no refused resume submitted anything
