"""Voice evaluation end to end: ``ray_jobs/evaluate.py`` from the repository root compares a base model and an
adapter on sample data (Ray actors, report files, MLflow runs), and ``--eval_rows`` scores generations during
training and ranks checkpoints by SIM. Kept cheap: one row, a short generation cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from higgs_train.adapter import apply_lora, save_adapter
from higgs_train.config import TrainingConfig
from higgs_train.data.in_process import records_for_config
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.evaluation.in_training import validation_hooks
from higgs_train.model_loading import load_model, resolve_paths
from higgs_train.training.context import LocalContext
from higgs_train.training.trainer import HiggsAudioTrainer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _random_adapter(out: Path) -> Path:
    model = apply_lora(
        load_model(resolve_paths("embedded", "embedded").model_path), 8, 16, 0.0, TrainingConfig().lora_target_modules
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    save_adapter(model, out)
    TrainingConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0).save(out / "training_config.yaml")
    return out


def test_evaluate_compares_base_and_adapter_from_the_repository_root(tmp_path):
    from higgs_train.tracking.runs import find_runs
    from higgs_train.tracking.store import embedded_tracking_uri

    data = create_sample_data(tmp_path / "data", utterances_per_speaker=2)
    adapter = _random_adapter(tmp_path / "run-a" / "adapter")
    truncated = tmp_path / "truncated"  # issue 20.4: one corrupt adapter used to kill its actor and the evaluation
    truncated.mkdir()
    for f in adapter.iterdir():
        cut = f.stat().st_size // 2 if f.name == "adapter_model.safetensors" else None
        (truncated / f.name).write_bytes(f.read_bytes()[:cut])
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable, "ray_jobs/evaluate.py", "--manifest", str(data["val"]), "--base", "--adapter", str(adapter),
        "--adapter", str(truncated), "--max_rows", "1", "--max_new_tokens", "24", "--output_dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]  # two of three models were scored

    doc = json.loads((out / "eval.json").read_text())
    assert list(doc["summary"]) == ["base", "run-a", "truncated"]
    failed = doc["summary"].pop("truncated")
    assert failed["status"] == "failed" and "corrupted or truncated" in failed["error"], failed
    assert f"error: model truncated failed: {failed['error']}" in proc.stderr and "Traceback" not in proc.stderr
    assert f"| truncated | failed: {failed['error']} | 0 |" in proc.stdout
    assert all(s["status"] == "ok" for s in doc["summary"].values())
    assert doc["meta"]["asr"] == "pocketsphinx-rough" and doc["meta"]["sim_model"] == "resemblyzer"
    for row in doc["rows"]:
        assert not row["error"], row
        assert Path(row["wav"]).exists()
        assert {"duration_ratio", "silence_ratio", "wer", "dnsmos_ovrl", "sim"} <= set(row["metrics"])
    table = (out / "eval_table.md").read_text()
    assert "| base |" in table and "| run-a |" in table
    assert (out / "plots" / "eval_metrics.png").stat().st_size > 1000
    assert "| base |" in proc.stdout  # the table is printed

    runs = find_runs(embedded_tracking_uri(out), "higgs-train-eval")
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId")]
    assert sorted(r["run_name"] for r in children) == ["base", "run-a", "truncated"]
    (failed_run,) = [r for r in children if r["run_name"] == "truncated"]
    assert failed_run["status"] == "FAILED" and failed_run["tags"]["error"] == failed["error"]
    for child in [r for r in children if r["run_name"] != "truncated"]:
        artifacts = Path(child["artifact_uri"].removeprefix("file://"))
        assert (artifacts / "eval_rows.json").exists()
        assert list((artifacts / "wavs").glob("*.wav"))
        assert "eval/duration_ratio" in child["metrics"]


def test_voice_eval_during_training_logs_metrics_and_ranks_checkpoints_by_sim(tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        eval_every_steps=1,
        save_every_steps=1,
        keep_best_k=1,
        eval_rows=1,
        validation_sample_max_new_tokens=24,
        checkpoint_metric="sim",
        lora_dropout=0.0,
    )
    logged: list[tuple[str, str | None]] = []
    context = LocalContext(
        checkpoint_root=tmp_path / "run" / "checkpoints",
        keep_best_k=1,
        checkpoint_metric="sim",
        log_artifact=lambda path, artifact_path: logged.append((path, artifact_path)),
    )
    result = HiggsAudioTrainer(
        config, *records_for_config(config), context, validation_hooks=validation_hooks(config)
    ).train()
    for key in ("eval/sim_rank", "eval/wer_rank", "eval/duration_ratio", "eval/dnsmos_ovrl", "eval/flagged_rows"):
        assert key in result.metrics, sorted(result.metrics)
    rows = json.loads((tmp_path / "run" / "eval" / "step_0000002" / "eval_rows.json").read_text())
    assert len(rows) == 1 and rows[0]["text"]  # the target text was read back from the prompt tokens
    assert ("eval/step_0000002") in {a for _, a in logged}
    kept = {int(p.name.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").glob("step_*")}
    scores = {r["step"]: r["eval/sim_rank"] for r in context.reported if "eval/sim_rank" in r}
    best = max(scores, key=lambda s: (scores[s], s))
    assert kept == {best, 2}  # the best by SIM plus the latest
