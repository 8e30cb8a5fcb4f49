"""The evaluation job behind ``ray_jobs/evaluate.py``: every model generates every row in its own Ray actor (in
parallel, on a GPU with ``use_gpu``), the clips are scored there, and the driver writes WAVs, ``eval.json``, the
side-by-side table and plots, and logs them to MLflow.

A model that fails as a whole (it cannot be loaded: a truncated adapter, an adapter for another base; or its actor
dies) is reported as a ``failed`` line with its one-line reason in ``eval.json`` and the tables, and the other
models are scored as usual. ``ray_jobs/evaluate.py`` exits non-zero only when every model failed: a partial report
is still the comparison the user asked for, and the failed line says what to fix.

MLflow layout: one parent run per evaluation (the tables, plots and ``eval.json``) and one child run per model
(its mean metrics as ``eval/<metric>``, the per-row metrics as a table artifact, WAVs of the first rows), so the UI's
*Compare* on the child runs puts base and fine-tuned models side by side.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.evaluation.report import ordered_summary, rows_table, write_report
from higgs_train.evaluation.runner import (
    EvalRow,
    ModelEvaluator,
    ModelRun,
    ModelSpec,
    ScoredClip,
    load_eval_rows,
    one_line,
)
from higgs_train.evaluation.suite import EvalSettings, RowScore
from higgs_train.generation import SamplingSettings, write_wav
from higgs_train.ray_session import init_ray
from higgs_train.tracking.store import resolve_tracking_uri
from higgs_train.tracking.tracker import RunTracker

logger = logging.getLogger(__name__)


@dataclass
class EvalJobConfig:
    """Everything ``ray_jobs/evaluate.py`` takes (see its ``--help``)."""

    manifest: str
    models: list[ModelSpec]
    output_dir: str = "outputs/eval"
    audio_base_path: str = ""
    max_rows: int = 0
    settings: EvalSettings = field(default_factory=EvalSettings)
    sampling: Any = None  # higgs_train.generation.SamplingSettings; None = its defaults with seed 0
    use_gpu: bool = False
    cpus_per_actor: float = 1.0
    logged_wav_rows: int = 3
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "higgs-train-eval"
    run_name: str = ""


@dataclass
class EvalJobResult:
    rows: list[RowScore]
    summary: dict[str, dict[str, Any]]
    paths: dict[str, Path]
    mlflow_run_id: str | None
    failed_models: dict[str, str]  # label -> one-line reason, in the order the models were given

    @property
    def all_failed(self) -> bool:
        return bool(self.summary) and all(s["status"] == "failed" for s in self.summary.values())


def adapter_label(adapter: str, taken: set[str]) -> str:
    """A short, unique name for an adapter path: the run folder for ``<run>/adapter``, else the folder's name."""
    path = Path(adapter).resolve()
    label = path.parent.name if path.name in ("adapter", "best") and path.parent.name else path.name
    base, k = label or "adapter", 2
    label = base
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    return label


def run_evaluation(cfg: EvalJobConfig) -> EvalJobResult:
    if not cfg.models:
        raise ValueError("nothing to evaluate: give --base and/or at least one --adapter")
    manifest = Path(cfg.manifest).resolve()
    if not manifest.exists():
        raise FileNotFoundError(f"--manifest {cfg.manifest}: no such file")
    base = Path(cfg.audio_base_path).resolve() if cfg.audio_base_path else manifest.parent
    rows = load_eval_rows(manifest, cfg.max_rows)
    if not rows:
        raise ValueError(f"--manifest {cfg.manifest}: no readable rows")
    sampling = cfg.sampling or SamplingSettings(seed=0)
    output = Path(cfg.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    models = [_absolute(m) for m in cfg.models]

    started = time.perf_counter()
    runs = _generate_and_score(models, rows, cfg.settings, sampling, base, cfg.use_gpu, cfg.cpus_per_actor)
    clips = {label: run.clips for label, run in runs.items()}
    load_failures = {label: run.error for label, run in runs.items() if run.error}
    for label, scored in clips.items():
        for clip in scored:
            if clip.waveform.size:
                clip.score.wav = str(_write_wav(output / "wavs" / label / f"{_safe(clip.score.clip_id)}.wav", clip))
    all_rows = [c.score for label in clips for c in clips[label]]
    meta = {
        "manifest": str(manifest),
        "rows": len(rows),
        "models": [asdict(m) for m in models],
        "sim_model": cfg.settings.sim_label,
        "asr": cfg.settings.asr_label,
        "dnsmos": cfg.settings.dnsmos,
        "sampling": asdict(sampling),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    paths = write_report(output, all_rows, meta, load_failures)
    summary = ordered_summary(all_rows, load_failures, meta)
    failed = {label: s["error"] for label, s in summary.items() if s["status"] == "failed"}

    tracker = RunTracker(resolve_tracking_uri(output, cfg.mlflow_tracking_uri))
    run_name = cfg.run_name or f"eval-{manifest.stem}"
    tracker.start(cfg.mlflow_experiment, run_name, params=_flat_params(meta), tags={"kind": "evaluation"})
    try:
        for kind, path in paths.items():
            tracker.log_artifact(path, "plots" if kind == "plot" else None)
        for spec in models:
            _log_model_run(cfg, tracker, spec, clips[spec.label], summary.get(spec.label, {}), meta)
    finally:
        tracker.end("FAILED" if len(failed) == len(models) else "FINISHED")
    return EvalJobResult(all_rows, summary, paths, tracker.run_id, failed)


def _generate_and_score(
    models: list[ModelSpec],
    rows: list[EvalRow],
    settings: EvalSettings,
    sampling: Any,
    audio_base_path: Path,
    use_gpu: bool,
    cpus_per_actor: float,
) -> dict[str, ModelRun]:
    """One Ray actor per model, all started at once; an actor is killed as soon as its model is done, so models
    that did not fit the cluster at first start when resources free up. An actor that dies (out of memory, a
    crash in native code) fails its model only (``collect_model_run``)."""
    import ray

    for attempt in range(3):  # a local head on a saturated machine can miss Ray's fixed 30 s registration window
        try:
            init_ray()
            break
        except Exception as exc:
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            logger.warning("Ray did not start (%s); retrying", exc)
            ray.shutdown()
            time.sleep(5)
    need = {"CPU": cpus_per_actor, **({"GPU": 1.0} if use_gpu else {})}
    have = ray.cluster_resources()
    short = [k for k, v in need.items() if have.get(k, 0) < v]
    if short:
        raise ValueError(f"one evaluation actor needs {need} but the cluster has {dict(have)} (short of {short})")
    actor_cls = ray.remote(ModelEvaluator)
    device = "cuda" if use_gpu else "cpu"
    pending: dict[Any, tuple[str, Any]] = {}
    for spec in models:
        actor = actor_cls.options(num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0).remote(
            spec, settings, sampling, str(audio_base_path), device
        )
        pending[actor.run.remote(rows)] = (spec.label, actor)
    results: dict[str, ModelRun] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        label, actor = pending.pop(done[0])
        results[label] = collect_model_run(label, lambda ref=done[0]: ray.get(ref))
        ray.kill(actor)
        if results[label].error:
            logger.warning("model %s failed: %s", label, results[label].error)
        else:
            logger.info("model %s: %d rows generated and scored", label, len(results[label].clips))
    return {spec.label: results[spec.label] for spec in models}


def collect_model_run(label: str, fetch: Any) -> ModelRun:
    """``fetch()``'s ``ModelRun``, or a failed one when fetching raises (the actor died or the task crashed): one
    model's end is a line in the report, never the end of the evaluation."""
    try:
        return fetch()
    except Exception as exc:
        return ModelRun(label, [], f"the model's actor failed: {one_line(exc)}")


def _log_model_run(
    cfg: EvalJobConfig, parent: Any, spec: ModelSpec, clips: list[ScoredClip], summary: dict[str, Any], meta: dict
) -> None:
    child = RunTracker(parent.tracking_uri)
    params = {
        "model": spec.label,
        "model_path": spec.model_path,
        "adapter": spec.adapter or "",
        "manifest": meta["manifest"],
        "sim_model": meta["sim_model"],
        "asr": meta["asr"],
    }
    tags = {"kind": "evaluation"}
    if summary.get("status") == "failed":
        tags["error"] = summary.get("error", "")
    child.start(cfg.mlflow_experiment, spec.label, params=params, parent_run_id=parent.run_id, tags=tags)
    ok = any(not c.score.error for c in clips)
    try:
        means = {f"eval/{k}": v for k, v in summary.get("mean", {}).items() if not math.isnan(v)}
        means["eval/flagged_rows"] = summary.get("flagged_rows", 0)
        means["eval/bad_audio_rows"] = summary.get("bad_audio_rows", 0)
        means["eval/rows"] = summary.get("rows", 0)
        child.log_metrics(means, step=0)
        if clips:
            child.log_table(rows_table([c.score for c in clips]), "eval_rows.json")
        for clip in [c for c in clips if c.score.wav][: cfg.logged_wav_rows]:
            child.log_artifact(clip.score.wav, "wavs")
    finally:
        child.end("FINISHED" if ok else "FAILED")


def _absolute(spec: ModelSpec) -> ModelSpec:
    """Paths resolved on the driver: actors may run with another working directory."""

    def fix(p: str | None) -> str | None:
        if not p or p == "embedded":
            return p
        path = Path(p)
        return str(path.resolve()) if path.exists() else p  # else a hub id

    return ModelSpec(
        spec.label,
        fix(spec.model_path) or "embedded",
        fix(spec.adapter),
        fix(spec.audio_tokenizer_path) or "embedded",
        fix(spec.tokenizer_path),
    )


def _write_wav(path: Path, clip: ScoredClip) -> Path:
    return write_wav(path, clip.waveform, clip.sample_rate)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "row"


def _flat_params(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in ("models", "sampling", "wall_seconds")}
    out["models"] = ", ".join(m["label"] for m in meta["models"])
    out.update({f"sampling.{k}": v for k, v in meta["sampling"].items()})
    return out
