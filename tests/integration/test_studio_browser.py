"""The Studio driven in a real browser (Playwright with Debian's Chromium, no browser download), end to end on the
embedded stack: create sample recordings and build them, start a quick test and see it finish, check a sweep's
settings, compare two runs (curves, checkpoints, samples side by side), play a validation sample (the audio element
loads: duration > 0), speak a sentence and download it.

It also takes the README's screenshots: set ``HIGGS_STUDIO_SCREENSHOTS=docs`` to write ``docs/studio_*.png``
(otherwise they go to the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from local_ports import free_port

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for_port(server: subprocess.Popen, port: int) -> None:
    """Until uvicorn accepts connections (it binds after the banner); fails at once if the server died."""
    for _ in range(600):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        with pytest.raises(subprocess.TimeoutExpired, match="timed out"):
            server.wait(timeout=0.1)
    raise AssertionError(f"the Studio did not listen on {port} within a minute")


def log_a_stopped_run(outputs: Path, like: str, name: str) -> None:
    """The second run to compare, logged as the trainer logs a run stopped at step 2 (loss curve, val_loss, a
    validation sample under ``samples/step_N/``), reusing ``like``'s validation rows and sample WAV: a second
    training job would add a minute to this test, and the API tests cover what starts one."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (first,) = client.search_runs(experiments, f"attributes.run_name = '{like}'")
    run = client.create_run(first.info.experiment_id, run_name=name)
    rid = run.info.run_id
    for key in ("val_data", "audio_base_path"):
        if first.data.params.get(key):
            client.log_param(rid, key, first.data.params[key])
    client.log_param(rid, "output_dir", str(outputs / name))
    client.log_param(rid, "max_steps", "2")
    for step, loss in ((1, 9.0), (2, 8.5)):
        client.log_metric(rid, "train/total_loss", loss, step=step)
    client.log_metric(rid, "val_loss", 8.4, step=2)
    wav = sorted((Path(unquote(urlparse(first.info.artifact_uri).path)) / "samples").glob("step_*/*.wav"))[-1]
    client.log_artifact(rid, str(wav), "samples/step_0000002")
    client.set_terminated(rid, "KILLED")  # stopped: not offered to Speak or Export


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in requirements/lock.txt")
    root = tmp_path_factory.mktemp("studio")
    ray_tmp = tempfile.mkdtemp(prefix="hr-studio-", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    argv = [sys.executable, "ray_jobs/studio.py", "--port", str(port), "--data_root", str(root / "data"),
            "--output_root", str(root / "outputs")]  # fmt: skip
    server = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = server.stdout.readline()  # printed once the app is built, just before uvicorn binds
        assert banner.startswith("Studio on http://127.0.0.1:"), banner
        assert "authentication: none (loopback only" in server.stdout.readline()
        wait_for_port(server, port)
        yield f"http://127.0.0.1:{port}/", root
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_build_train_listen_speak_in_a_browser(studio_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, root = studio_url
    shots = Path(os.environ.get("HIGGS_STUDIO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    started, phases = time.perf_counter(), {}

    def phase(name: str) -> None:  # where the test's time goes, printed with -s (it has a 3-minute budget)
        phases[name] = round(time.perf_counter() - started - sum(phases.values()), 1)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.goto(url, wait_until="networkidle")
        expect(page.locator("h1")).to_have_text("higgs-train Studio")

        # Data: sample recordings -> build -> report and playable clips
        page.fill("#samples-per-speaker", "3")  # 11 training rows + 1 validation row: the smallest set that pairs
        page.click("#make-samples")
        expect(page.locator("#upload-status")).to_contain_text(
            "12 recordings in data:sample_recordings", timeout=30_000
        )
        page.fill("#build-name", "voices")
        page.click("#build")
        expect(page.locator("#build-job [data-state]")).to_have_attribute("data-state", "succeeded", timeout=120_000)
        expect(page.locator("#datasets")).to_contain_text("datasets/voices")
        page.click("a[data-ds='datasets/voices']")
        expect(page.locator("#clips audio").first).to_be_attached()
        page.screenshot(path=str(shots / "studio_data.png"), full_page=True)
        phase("data")

        # Train: a bad setting is refused inline, then a quick test runs to the end with its curve
        page.click("nav button[data-tab=train]")
        page.select_option("#preset", "quick_test")
        page.select_option("#train-dataset", "datasets/voices")
        page.fill("#run-name", "quick-a")
        page.locator("#fields").evaluate("el => el.parentElement.open = true")
        page.fill("input[data-field=lora_r]", "0")
        page.click("#train-start")
        expect(page.locator("#err-lora_r")).to_contain_text("an integer >= 1")
        page.fill("input[data-field=lora_r]", "")
        page.fill("input[data-field=validation_sample_max_new_tokens]", "24")  # a 1 s sample is enough to play
        page.click("#train-start")
        expect(page.locator("#job-detail [data-state]")).to_have_attribute("data-state", "running")
        page.reload()  # a reload loses nothing: the page reattaches to the running job
        page.click("nav button[data-tab=train]")
        expect(page.locator("#job-detail [data-state]")).to_have_attribute("data-state", "succeeded", timeout=240_000)
        expect(page.locator("#job-detail")).to_contain_text("step 4 / 4")
        expect(page.locator("#job-detail svg.chart")).to_be_visible()
        page.screenshot(path=str(shots / "studio_train.png"), full_page=True)
        expect(page.locator("#jobs button.resume")).to_have_count(0)  # a finished run has nothing to resume
        expect(page.locator("#sweep-fields")).to_be_hidden()
        page.select_option("#preset", "sweep")  # the sweep's own settings appear and are checked inline too
        expect(page.locator("input[data-sweep=num_samples]")).to_have_attribute("placeholder", "3")
        page.fill("input[data-sweep=num_samples]", "0")
        page.locator("input[data-sweep=num_samples]").dispatch_event("change")
        expect(page.locator("#err-num_samples")).to_contain_text("expected an integer >= 1")
        phase("train")

        # Listen & compare: two runs' curves overlaid, one checkpoint table, each validation row's samples side by
        # side, and a validation sample that plays
        log_a_stopped_run(root / "outputs", like="quick-a", name="quick-b")
        page.click("nav button[data-tab=listen]")
        expect(page.locator("#runs")).to_contain_text("quick-b")
        for box in page.locator("#runs input.pick").all():
            box.check()
        expect(page.locator("#compare-chart svg.chart").first.locator("polyline title")).to_have_text(
            ["quick-b", "quick-a"]  # newest first, as the runs table lists them
        )
        expect(page.locator("#checkpoint-table tr[data-run=quick-a]")).to_have_count(2)  # val_loss at steps 2, 4
        expect(page.locator("#checkpoint-table tr[data-run=quick-b]")).to_have_count(1)
        row = page.locator("#samples tr").first
        expect(row.locator("td.sample[data-run=quick-b]")).to_contain_text("quick-b step 2")
        expect(row.locator("td.sample[data-run=quick-a]").last).to_contain_text("quick-a step 4")
        sample = row.locator("td.sample[data-run=quick-a] audio").last
        page.wait_for_function("a => a.readyState >= 1 && a.duration > 0", arg=sample.element_handle())
        assert sample.evaluate("a => a.duration") > 0
        assert "/artifacts/samples/step_" in sample.get_attribute("src")
        page.screenshot(path=str(shots / "studio_listen.png"), full_page=True)
        phase("listen")

        # Speak: the run's adapter, a speaker of the built set, a sentence -> play and download
        page.click("nav button[data-tab=speak]")
        expect(page.locator("#speak-adapter option").first).to_contain_text("quick-a")
        expect(page.locator("#speak-speaker option").first).to_be_attached()
        page.fill("#speak-text", "Hello.")
        page.click("#speak")
        expect(page.locator("#speak-download")).to_be_visible(timeout=180_000)
        expect(page.locator("#speak-result")).to_contain_text("audio check")
        with page.expect_download() as download_info:
            page.click("#speak-download")
        saved = tmp_path / "spoken.wav"
        download_info.value.save_as(saved)
        assert saved.read_bytes()[:4] == b"RIFF" and saved.stat().st_size > 1000
        page.screenshot(path=str(shots / "studio_speak.png"), full_page=True)
        phase("speak")

        page.click("nav button[data-tab=export]")
        expect(page.locator("#export-adapter option").first).to_contain_text("quick-a")
        page.screenshot(path=str(shots / "studio_export.png"), full_page=True)
        browser.close()
    print("studio browser test phases (s):", phases)
