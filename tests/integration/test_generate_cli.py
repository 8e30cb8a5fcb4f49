"""``ray_jobs/generate.py`` run the way a user runs it: a subprocess from the repository root, relative paths,
default decoding flags, on the sample data; single prompt and batch, base + adapter and merged export, sampling
(the default) and greedy (``--temperature 0``).

Why the defaults matter: an untrained or barely trained text head (the tiny model's, padded to a multiple of 64
ids) used to pick ids the tokenizer does not have, or an audio placeholder, and upstream ``generate`` crashed
("Next generated token ... greater than the tokenizer's vocabulary size") -- but only with the default token
budget, long enough to reach text generation after the audio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from higgs_train.adapter import apply_lora, save_adapter
from higgs_train.config import TrainingConfig
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_model, resolve_paths

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _run(*args: str, allow_no_audio: bool = False, allow_bad_audio: bool = False) -> str:
    """Run a ray_jobs script from the repository root; fail with its output when it fails.

    ``allow_no_audio``: greedy decoding of a random adapter may end the audio stream before its first frame. The
    driver must then say so and exit 1 (never write an empty WAV and exit 0); that outcome is accepted here.
    ``allow_bad_audio``: the clip failed the audio check (the tiny model's codec noise is clipped): exit 1 with the
    measurements on stderr is accepted; the caller checks the verdict against its own measurement of the WAV.
    """
    proc = _launch(*args)
    if allow_no_audio and proc.returncode == 1 and "no audio: the model ended the audio stream" in proc.stderr:
        return proc.stdout
    if allow_bad_audio and proc.returncode == 1 and "failed the audio check" in proc.stderr:
        return proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}"
    )
    return proc.stdout + proc.stderr


def _problem_kinds(problems: list[str]) -> list[str]:
    return [p.split(":")[0] for p in problems]


def _measured_problems(wav: Path, text: str) -> list[str]:
    """The audio check of a written WAV, measured here (16-bit PCM read back: the same verdicts as the float clip
    the command checked, the tiny model's clips being far from every limit)."""
    from higgs_train.evaluation.suite import check_audio

    audio, rate = sf.read(str(wav), dtype="float32")
    return _problem_kinds(check_audio(audio, rate, text))


def _rel(path: Path) -> str:
    """``path`` relative to the repository root (the user's working directory)."""
    return os.path.relpath(path, REPO)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Sample data, an adapter with the default LoRA settings (random, non-zero B) and its merged export."""
    root = tmp_path_factory.mktemp("generate_cli")
    data = create_sample_data(root / "sample_data")
    config = TrainingConfig(output_dir=str(root / "run"))
    model = load_model(resolve_paths("embedded", "embedded").model_path)
    model = apply_lora(model, config.lora_r, config.lora_alpha, 0.0, config.lora_target_modules)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    adapter = root / "run" / "adapter"
    save_adapter(model, adapter)
    config.save(adapter / "training_config.yaml")
    _run("ray_jobs/export.py", "--checkpoint", _rel(adapter), "--output", _rel(root / "export"), "--merge")
    return {"root": root, "data": data, "adapter": adapter, "merged": root / "export" / "merged"}


def _model_args(workspace, kind: str) -> list[str]:
    if kind == "adapter":
        return ["--model_path", "embedded", "--adapter", _rel(workspace["adapter"])]
    return ["--model_path", _rel(workspace["merged"])]


@pytest.mark.parametrize(("kind", "decoding"), [("adapter", []), ("merged", ["--temperature", "0"])])
def test_single_prompt_at_default_flags(workspace, kind, decoding):
    row = json.loads(Path(workspace["data"]["val"]).read_text())[0]
    messages = row["messages"]
    out = workspace["root"] / f"single_{kind}.wav"
    printed = _run(
        "ray_jobs/generate.py",
        *_model_args(workspace, kind),
        "--ref_audio",
        _rel(workspace["data"]["audio_base_path"] / messages[2]["content"]["audio_url"]),
        "--ref_text",
        messages[1]["content"],
        "--text",
        messages[3]["content"],
        "--output",
        _rel(out),
        *decoding,
        allow_no_audio=bool(decoding),  # sampling (the default) must produce sound
        allow_bad_audio=True,
    )
    if not out.exists():  # greedy ended the audio at once: reported as a failure, see _run
        assert decoding
        return
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.frames > 0
    assert str(out) in printed  # the driver reports the absolute path it wrote
    # The audio check: exit 1 with each problem named exactly when this test's own measurement finds one.
    problems = _measured_problems(out, messages[3]["content"])
    if problems:
        assert f"error: {out} failed the audio check" in printed, printed
        assert _problem_kinds([line.split(f"audio check: {out}: ", 1)[1] for line in printed.splitlines()
                               if f"audio check: {out}: " in line]) == problems  # fmt: skip
    else:
        assert f"audio check: {out}: ok" in printed


@pytest.mark.parametrize(("kind", "decoding"), [("merged", []), ("adapter", ["--temperature", "0"])])
def test_batch_at_default_flags(workspace, kind, decoding):
    out_dir = workspace["root"] / f"batch_{kind}"
    manifest = workspace["data"]["val"]
    _run("ray_jobs/generate.py", *_model_args(workspace, kind), "--manifest", _rel(manifest), *decoding,
         "--output_dir", _rel(out_dir), "--allow_bad_audio", allow_no_audio=bool(decoding))  # fmt: skip
    rows = json.loads(Path(manifest).read_text())
    summary = json.loads((out_dir / "results.json").read_text())
    assert [s["id"] for s in summary] == [r["id"] for r in rows]
    for entry in summary:
        if entry["error"]:  # only greedy may end the audio at once; the entry says why and no file exists
            assert decoding and entry["frames"] == 0 and entry["wav"] is None
            continue
        info = sf.info(str(REPO / entry["wav"]))
        assert info.samplerate == 24000 and info.frames > 0
        assert entry["frames"] > 0 and 0.0 <= entry["code_agreement"] <= 1.0
        text = rows[[r["id"] for r in rows].index(entry["id"])]["messages"][3]["content"]
        assert _problem_kinds(entry["audio_problems"]) == _measured_problems(REPO / entry["wav"], text)


def test_a_clip_without_audio_is_a_failure_not_an_empty_wav(workspace):
    """Fewer new tokens than the delay pattern needs for one frame: no audio, so exit 1 and write no WAV."""
    row = json.loads(Path(workspace["data"]["val"]).read_text())[0]
    messages = row["messages"]
    out = workspace["root"] / "too_short.wav"
    single = _launch("ray_jobs/generate.py", *_model_args(workspace, "adapter"),
                     "--ref_audio", _rel(workspace["data"]["audio_base_path"] / messages[2]["content"]["audio_url"]),
                     "--ref_text", messages[1]["content"], "--text", messages[3]["content"],
                     "--output", _rel(out), "--max_new_tokens", "3")  # fmt: skip
    assert single.returncode == 1 and "no audio: the model ended the audio stream" in single.stderr
    assert not out.exists()

    out_dir = workspace["root"] / "too_short_batch"
    batch = _launch("ray_jobs/generate.py", *_model_args(workspace, "merged"), "--manifest",
                    _rel(workspace["data"]["val"]), "--output_dir", _rel(out_dir), "--max_new_tokens", "3")  # fmt: skip
    summary = json.loads((out_dir / "results.json").read_text())
    assert batch.returncode == 1 and f"{len(summary)} of {len(summary)} prompts produced no audio" in batch.stderr
    assert all(entry["error"] and entry["wav"] is None for entry in summary)
    assert not list(out_dir.glob("*.wav"))
