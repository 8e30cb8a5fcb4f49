"""README "Bring your own data", run verbatim with a `ray start` head alive on the machine: three builds on Ray Data
actors, a LibriTTS build with ``--local``, validation, and a training job (``--quick_test``) on the LibriTTS build.

The sources the commands name (``recordings/``, ``LJSpeech/metadata.csv``, ``hf_dataset/``,
``LibriTTS_R/train-clean-100``) are generated from the synthetic speakers in a temporary folder that stands in for
the repository root (``ray_jobs`` linked in), so the README's relative paths resolve exactly as they do for a user.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from builder_sources import (
    LIBRI_IDS,
    cv_client,
    read_jsonl,
    write_common_voice,
    write_hf_dataset,
    write_libritts,
    write_ljspeech,
    write_speaker_folders,
    write_vctk,
)

from higgs_train.embedded.voices import SPEAKERS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Bring your own data") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Bring your own data section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_bring_your_own_data_commands(tmp_path, ray_head_on_the_machine):
    commands = readme_commands()
    assert [c.split()[:3] for c in commands[:4]] == [["python", "ray_jobs/prepare_data.py", "build"]] * 4
    (tmp_path / "ray_jobs").symlink_to(REPO / "ray_jobs")
    write_speaker_folders(tmp_path / "recordings", count=5)
    write_ljspeech(tmp_path / "LJSpeech", count=1, with_speaker=False)
    write_hf_dataset(tmp_path, count=3, name="hf_dataset")
    write_libritts(tmp_path / "LibriTTS_R" / "train-clean-100", count=5, speakers=SPEAKERS)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.update(ray_head_on_the_machine)  # a `ray start` head alive: the Ray-stage builds start their own Ray anyway

    outputs = []
    for command in commands:
        argv = shlex.split(command)
        argv[0] = sys.executable
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    # The Ray stage shows its progress in the driver's console (Ray's own bars are off).
    assert re.search(r"processing audio \(Ray\): 20/20 files \(100%\) \| [\d.]+ files/s \| done in", outputs[0])
    assert "A Ray cluster is running on this machine" in outputs[0]  # said once; the build used its own Ray

    speakers = {s.name for s in SPEAKERS}
    folder = tmp_path / "data" / "my-voices"
    train, val = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "val.jsonl")
    assert {r["speaker"] for r in train} == speakers and val
    report = json.loads((folder / "data_report.json").read_text())
    assert report["rejected"] == [] and report["clips_in_manifests"] == 20
    assert (folder / "data_report.png").stat().st_size > 0

    lj = read_jsonl(tmp_path / "data" / "lj" / "train.jsonl")
    assert {r["speaker"] for r in lj} == {"lj"}

    hf = tmp_path / "data" / "hf"
    hf_train, hf_val = read_jsonl(hf / "train.jsonl"), read_jsonl(hf / "val.jsonl")
    held_out = {r["speaker"] for r in hf_val}
    assert len(held_out) == 2 and not held_out & {r["speaker"] for r in hf_train}

    libri = tmp_path / "data" / "libritts"
    libri_train = read_jsonl(libri / "train.jsonl")
    assert {r["speaker"] for r in libri_train} == set(LIBRI_IDS.values())
    validation = json.loads((tmp_path / "outputs" / "libritts" / "validation_report.json").read_text())
    assert validation["valid"] == validation["total"] == len(libri_train)
    adapter = next((tmp_path / "outputs").rglob("adapter_model.safetensors"), None)
    assert adapter is not None, "the --quick_test job wrote no adapter"


@pytest.mark.parametrize("layout", ["vctk", "common_voice"])
def test_public_corpus_layout_builds_and_trains(tmp_path, layout):
    """VCTK and Common Voice as they ship (the README's LibriTTS commands cover LibriTTS): `build --local`, then a
    `--quick_test` job on the result, from the corpus's parent folder with relative paths, as a user runs them."""
    (tmp_path / "ray_jobs").symlink_to(REPO / "ray_jobs")
    speakers = SPEAKERS[:3]
    if layout == "vctk":
        write_vctk(tmp_path / "VCTK-Corpus-0.92", count=4, speakers=speakers)
        source, expected = "VCTK-Corpus-0.92", {f"p{225 + i}" for i in range(len(speakers))}
    else:
        write_common_voice(tmp_path / "cv-corpus" / "en", count=3, speakers=speakers)
        source, expected = "cv-corpus/en", {cv_client(s.name) for s in speakers}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    commands = [
        f"ray_jobs/prepare_data.py build --input {source} --output data/{layout} --local --val_speakers 1",
        f"ray_jobs/train.py --train_data data/{layout}/train.jsonl --val_data data/{layout}/val.jsonl "
        f"--output_dir outputs/{layout} --quick_test",
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, *shlex.split(command)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = read_jsonl(tmp_path / "data" / layout / "train.jsonl") + read_jsonl(tmp_path / "data" / layout / "val.jsonl")
    assert {r["speaker"] for r in rows} == expected
    history = json.loads((tmp_path / "outputs" / layout / "history.json").read_text())
    steps = [h["step"] for h in history if "train/total_loss" in h]  # --quick_test: at most 4, one epoch
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1)), steps
    assert (tmp_path / "outputs" / layout / "adapter" / "adapter_model.safetensors").stat().st_size > 0
