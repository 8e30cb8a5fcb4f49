"""The Studio driven in a real browser (Playwright with Debian's Chromium, no browser download), end to end on the
embedded stack: create sample recordings and build them, start a quick test and see it finish, play a validation
sample (the audio element loads: duration > 0), speak a sentence and download it.

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
        expect(page.locator("#upload-status")).to_contain_text("12 recordings in data:sample_recordings")
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
        phase("train")

        # Listen & compare: the run's curve, per-checkpoint table, a validation sample that plays
        page.click("nav button[data-tab=listen]")
        expect(page.locator("#runs")).to_contain_text("quick-a")
        sample = page.locator("#samples audio").nth(2)  # reference, target, then the run's first sample
        expect(sample).to_be_attached()
        page.wait_for_function("a => a.readyState >= 1 && a.duration > 0", arg=sample.element_handle())
        assert sample.evaluate("a => a.duration") > 0
        assert "/artifacts/samples/step_" in sample.get_attribute("src")
        expect(page.locator("#checkpoints")).to_contain_text("quick-a: step")
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
