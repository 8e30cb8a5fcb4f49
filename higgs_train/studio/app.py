"""The Studio's HTTP server: the page (``static/``) and the JSON API it uses, one endpoint per action.

``create_app(StudioSettings)`` builds the FastAPI app (tests drive it with ``TestClient``);
``higgs_train.commands.studio`` parses the flags of ``ray_jobs/studio.py`` and serves it with uvicorn. Every failure a user can cause is answered with JSON
``{"error": one line, "field": ...}`` and a 4xx status; anything else with a one-line 500, never a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from higgs_train.atomic_files import write_atomic
from higgs_train.builder.audio import TO_TRANSCRIBE
from higgs_train.builder.build import TEMPLATE_HEADER
from higgs_train.data.audio_io import resolve_audio_path
from higgs_train.speaker_reference import ReferenceError, speaker_clips
from higgs_train.studio.http import Refused, guard, one_line, read_body, root_path
from higgs_train.studio.job_routes import add_job_routes
from higgs_train.studio.jobs import JobStore
from higgs_train.studio.roots import Roots, check_audio_bytes, checked_upload_name
from higgs_train.studio.runs import RunStore, data_sets
from higgs_train.studio.samples import write_sample_recordings
from higgs_train.studio.settings import PRESETS, SWEEP_PRESETS, field_catalogue, sweep_catalogue
from higgs_train.studio.speak import Speaker, SpeakRequest

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
DATASETS_DIR = "datasets"
AUTH_COOKIE = "studio_auth"
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".png": "image/png", ".json": "application/json", ".jsonl": "text/plain", ".txt": "text/plain",
               ".tsv": "text/plain", ".md": "text/plain", ".yaml": "text/plain"}  # fmt: skip


@dataclass(frozen=True)
class StudioSettings:
    data_root: str
    output_root: str
    host: str = "127.0.0.1"
    port: int = 7860
    ray_address: str = ""
    auth: str = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: StudioSettings) -> None:
    """A page that starts jobs must not be open to a network without a password or token."""
    if not is_loopback(settings.host) and not settings.auth:
        raise ValueError(
            f"--host {settings.host} exposes the Studio beyond this machine: give --auth TOKEN (every request must "
            "then carry it), or keep --host 127.0.0.1 and forward the port (ssh -L 7860:127.0.0.1:7860 HOST)"
        )


def _warm_imports() -> None:
    """Import torch, transformers and MLflow's store in the background at start: the first Speak or runs listing
    would otherwise wait for them (tens of seconds on a busy machine)."""
    try:
        import mlflow.store.db.utils  # noqa: F401

        import higgs_train.generation  # noqa: F401  -- deferred on purpose: this is the background import itself
    except Exception:  # noqa: BLE001 -- only a head start; the request that needs them reports any error
        logger.debug("warm imports failed", exc_info=True)


def create_app(settings: StudioSettings, ray_client: Any = None, warm: bool = False) -> FastAPI:
    """``warm``: start importing the heavy modules now (the server does; tests that never speak do not)."""
    check_exposure(settings)
    roots = Roots.create(settings.data_root, settings.output_root)
    jobs = JobStore(roots.output, settings.ray_address, ray_client)
    store = RunStore(roots)
    speaker = Speaker(roots.output)
    app = FastAPI(title="higgs-train Studio", docs_url=None, redoc_url=None, openapi_url=None)
    if warm:
        threading.Thread(target=_warm_imports, name="studio-warm-imports", daemon=True).start()
    app.state.roots, app.state.jobs, app.state.store = roots, jobs, store

    # ------------------------------------------------------------------ errors and auth
    @app.exception_handler(Refused)
    async def refused(_: Request, err: Refused) -> JSONResponse:
        return JSONResponse({"error": str(err), "field": err.field}, status_code=err.status)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, one_line(err))
        return JSONResponse({"error": f"{type(err).__name__}: {one_line(err)}", "field": ""}, status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        refused = foreign_request(request)
        if refused:
            return JSONResponse({"error": refused, "field": ""}, status_code=403)
        if not settings.auth:
            return await call_next(request)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.cookies.get(AUTH_COOKIE, "") or request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), settings.auth.encode()):
            return JSONResponse({"error": "authentication required: open the page with ?token=<the --auth value> "
                                 "or send 'Authorization: Bearer <token>'", "field": ""}, status_code=401)  # fmt: skip
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(AUTH_COOKIE, settings.auth, httponly=True, samesite="strict")
        return response

    def foreign_request(request: Request) -> str:
        """Why a request from another site must be refused, or "". Without a token, any page open in the user's
        browser could otherwise start jobs here: a cross-site form POST (it carries an ``Origin`` of its own site),
        or a DNS-rebound name pointing at 127.0.0.1 (its ``Host`` is not a loopback name)."""
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if is_loopback(settings.host) and name.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            return f"Host {host!r}: the Studio answers only to 127.0.0.1 or localhost (use an SSH tunnel)"
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and urlparse(origin).netloc != host:
            return f"Origin {origin!r}: requests from another site are refused"
        return ""

    # ------------------------------------------------------------------ page and files
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        path = STATIC / Path(name).name
        if not path.is_file():
            raise Refused(404, f"static/{name}: no such file")
        return FileResponse(path)

    @app.get("/files/{root}/{rel:path}")
    def files(root: str, rel: str) -> FileResponse:
        path = guard(roots.resolve, root, rel, True)
        if not path.is_file() or path.suffix.lower() not in MEDIA_TYPES:
            raise Refused(403, f"{root}:{rel}: only audio, images and reports are served")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()], filename=path.name,
                            content_disposition_type="inline")  # fmt: skip

    @app.get("/api/browse")
    def browse(root: str = "data", path: str = "") -> dict[str, Any]:
        folder = guard(roots.resolve, root, path, True)
        if not folder.is_dir():
            raise Refused(400, f"{root}:{path}: not a folder")
        entries = []
        for child in sorted(folder.iterdir())[:2000]:
            if child.name.startswith(".") or roots.locate(child) is None:  # symlinks out of the root are not listed
                continue
            entries.append({"name": child.name, "dir": child.is_dir(), "path": f"{root}:{roots.locate(child)[1]}",
                            "url": None if child.is_dir() else roots.file_url(child)})  # fmt: skip
        return {"root": root, "path": path, "entries": entries}

    @app.post("/api/upload")
    async def upload(request: Request, name: str, folder: str = "uploads") -> dict[str, Any]:
        """The raw file as the body (no multipart: python-multipart is not in the lock); goes to data:<folder>."""
        clean = guard(checked_upload_name, name)
        target_dir = root_path(roots, f"data:{folder}", "folder", must_exist=False)
        data = await request.body()
        guard(check_audio_bytes, clean, data)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = guard(roots.resolve, "data", f"{roots.locate(target_dir)[1]}/{clean}".lstrip("/"))
        target.write_bytes(data)
        return {"path": f"data:{roots.locate(target)[1]}", "url": roots.file_url(target), "bytes": len(data)}

    # ------------------------------------------------------------------ data
    @app.post("/api/sample_recordings")
    async def sample_recordings(request: Request) -> dict[str, Any]:
        data = await read_body(request)
        folder = root_path(roots, f"data:{data.get('name') or 'sample_recordings'}", "name", must_exist=False)
        per_speaker = data.get("per_speaker", 4)
        if not isinstance(per_speaker, int) or not 3 <= per_speaker <= 12:
            raise Refused(400, "per_speaker: an integer from 3 to 12 (a speaker needs 3 clips to be paired "
                           "and to spare one for validation)", "per_speaker")  # fmt: skip
        written = write_sample_recordings(folder, per_speaker)
        return {"path": f"data:{roots.locate(folder)[1]}", "files": written}

    @app.post("/api/build")
    async def build(request: Request) -> dict[str, Any]:
        data = await read_body(request)
        source = root_path(roots, data.get("input"), "input")
        name = str(data.get("name") or source.name)
        output = guard(roots.resolve, "output", f"{DATASETS_DIR}/{name}")
        if output.parent != roots.output / DATASETS_DIR:
            raise Refused(400, f"name {name!r}: one folder name, not a path", "name")
        argv = ["ray_jobs/prepare_data.py", "build", "--input", str(source), "--output", str(output), "--local"]
        if data.get("segment"):
            argv.append("--segment")
        record = guard(jobs.start, "build", lambda _: argv, output, f"build {name}", data)
        return job_view(record)

    @app.get("/api/datasets")
    def datasets() -> dict[str, Any]:
        return {"datasets": data_sets(roots)}

    @app.get("/api/datasets/clips")
    def dataset_clips(path: str) -> dict[str, Any]:
        """Every (speaker, clip, transcript) of a data set's manifests, with a URL to play each clip."""
        folder = root_path(roots, path, "path")
        try:
            clips = speaker_clips(folder)
        except ReferenceError as err:
            raise Refused(400, str(err), "path") from err
        out = []
        for spk, items in sorted(clips.items()):
            for url, text in items.items():
                try:
                    audio = resolve_audio_path(url, folder)
                except Exception:  # noqa: BLE001 -- a clip outside the folder is listed without a player
                    audio = None
                out.append({"speaker": spk, "clip": url, "text": text,
                            "url": roots.file_url(audio) if audio else None})  # fmt: skip
        return {"path": path, "speakers": sorted(clips), "clips": out}

    @app.get("/api/datasets/to_transcribe")
    def to_transcribe(path: str) -> dict[str, Any]:
        """The clips a build left without a transcript (``to_transcribe.tsv``), with the text filled so far."""
        folder = root_path(roots, path, "path")
        return {"path": path, "rows": [{**row, "url": roots.file_url(folder / row["clip"])}
                                       for row in read_to_transcribe(folder)]}  # fmt: skip

    @app.post("/api/datasets/to_transcribe")
    async def fill_transcripts(request: Request) -> dict[str, Any]:
        """Write typed transcripts into the data set's ``to_transcribe.tsv``; building it again pairs the filled
        clips (the builder reads the file back, and its content-hash cache redoes no finished file)."""
        data = await read_body(request)
        folder = root_path(roots, data.get("path"), "path")
        texts = data.get("texts")
        if not isinstance(texts, dict):
            raise Refused(400, "texts: expected an object of clip -> transcript", "texts")
        rows = {row["clip"]: row["text"] for row in read_to_transcribe(folder)}
        for clip, text in texts.items():
            if clip not in rows:
                raise Refused(400, f"{clip}: not a clip of {TO_TRANSCRIBE} in {data.get('path')}", "texts")
            if not isinstance(text, str) or any(ord(c) < 32 for c in text):
                raise Refused(422, f"{clip}: a transcript is one line of text (no tabs or control characters)",
                               "texts")  # fmt: skip
            rows[clip] = " ".join(text.split())
        lines = [TEMPLATE_HEADER, *(f"{clip}\t{text}" for clip, text in rows.items())]
        write_atomic(folder / TO_TRANSCRIBE, "\n".join(lines) + "\n")
        return {"filled": sum(1 for t in rows.values() if t), "open": sum(1 for t in rows.values() if not t)}

    # ------------------------------------------------------------------ train, sweep, export and jobs
    @app.get("/api/settings")
    def settings_catalogue() -> dict[str, Any]:
        return {"presets": PRESETS, "fields": field_catalogue(), "sweep_presets": SWEEP_PRESETS,
                "sweep_fields": sweep_catalogue()}  # fmt: skip

    job_view = add_job_routes(app, roots, jobs, store)

    # ------------------------------------------------------------------ runs
    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"store": str(store.db), "runs": store.runs()}

    @app.get("/api/runs/{run_id}/metrics")
    def metrics(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "history": guard(store.history, run_id),
                "checkpoints": guard(store.checkpoints, run_id)}  # fmt: skip

    @app.get("/api/runs/{run_id}/samples")
    def samples(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "samples": guard(store.samples, run_id)}

    # ------------------------------------------------------------------ speak
    @app.post("/api/speak")
    async def speak(request: Request, format: str = "json") -> Any:
        data = await read_body(request)
        adapter = None
        if data.get("adapter"):
            adapter = root_path(roots, data["adapter"], "adapter")
        elif data.get("run_id"):
            run = guard(store.run, str(data["run_id"]))
            adapter = guard(roots.inside, Path(run.data.params.get("output_dir", "/nonexistent")) / "adapter")
        try:
            temperature, seed = float(data.get("temperature", 0.7)), int(data.get("seed", 0))
        except (TypeError, ValueError) as err:
            raise Refused(400, f"temperature/seed: {one_line(err)}") from err
        req = SpeakRequest(
            text=str(data.get("text") or ""),
            adapter=adapter,
            speaker=str(data.get("speaker") or ""),
            data=root_path(roots, data["data"], "data") if data.get("data") else None,
            ref_audio=root_path(roots, data["ref_audio"], "ref_audio") if data.get("ref_audio") else None,
            ref_text=str(data.get("ref_text") or ""),
            temperature=temperature,
            seed=seed,
        )
        result = guard(speaker.speak, req)
        if format == "wav":
            return FileResponse(result.wav, media_type="audio/wav", filename=result.wav.name,
                                headers={"X-Audio-Check": "; ".join(result.problems) or "ok"})  # fmt: skip
        return {"url": roots.file_url(result.wav), "path": f"output:{roots.locate(result.wav)[1]}",
                "seconds": result.seconds, "problems": result.problems, "voice": result.voice}  # fmt: skip

    return app


def read_to_transcribe(folder: Path) -> list[dict[str, str]]:
    """``[{clip, text}]`` of a data set's ``to_transcribe.tsv`` in file order (none when there is no file)."""
    path = folder / TO_TRANSCRIBE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines()[1:]:
        clip, _, text = line.partition("\t")
        if clip.strip():
            rows.append({"clip": clip.strip(), "text": " ".join(text.split())})
    return rows
