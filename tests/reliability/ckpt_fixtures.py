"""Real checkpoints of a tiny real run, laid out the way Ray Train stores a run's checkpoints, plus planted faults.

The trainer runs on the embedded tiny Higgs stack with records from the real ``SamplePreprocessor``; the audio codec
is a stand-in returning deterministic codes (what a checkpoint holds does not depend on what the codes mean).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

from stand_ins import StandInCodec

from higgs_train.config import TrainingConfig
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_text_tokenizer, resolve_paths
from higgs_train.training.trainer import HiggsAudioTrainer

# Ray Train's folder names for a run's checkpoints: checkpoint_<timestamp>
OLDER = "checkpoint_2026-01-01_00-00-01.000001"
NEWER = "checkpoint_2026-01-01_00-00-02.000002"


def make_records(root: Path, count: int = 6) -> list[dict]:
    import json

    paths = create_sample_data(root / "sample_data")
    rows = json.loads(Path(paths["train"]).read_text())[:count]
    tokenizer = load_text_tokenizer(resolve_paths("embedded", "embedded").tokenizer_path)
    result = SamplePreprocessor(tokenizer, StandInCodec(), paths["audio_base_path"]).process_batch(rows)
    assert not result.failures, result.failures
    return result.records


def trainer_for(out: Path, records: list[dict], **overrides) -> HiggsAudioTrainer:
    settings = {
        "output_dir": str(out),
        "batch_size": 2,
        "max_steps": 6,
        "num_epochs": 3,
        "save_every_steps": 2,
        "eval_every_steps": 100,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        **overrides,
    }
    return HiggsAudioTrainer(TrainingConfig(**settings), train_records=records, val_records=[])


def trained_checkpoints(root: Path, records: list[dict]) -> dict[int, Path]:
    """Run 4 steps saving at 2 and 4; returns {step: checkpoint dir}."""
    trainer = trainer_for(root / "run", records)
    trainer.train(stop_after_steps=4)
    ckpts = root / "run" / "checkpoints"
    return {2: ckpts / "step_0000002", 4: ckpts / "step_0000004"}


def place(checkpoint: Path, run_dir: Path, name: str) -> Path:
    """Copy a checkpoint into a run folder under a Ray Train checkpoint name."""
    target = run_dir / name
    shutil.copytree(checkpoint, target)
    return target


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for a shell command run by a planted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def plant_pickle_checkpoint(folder: Path, marker: Path, step: int = 9999) -> Path:
    """A checkpoint in the old pickle layout whose RNG/optimizer/scheduler files run code when unpickled."""
    folder.mkdir(parents=True)
    payload = pickle_payload(marker)
    for name in ("rng.pt", "optimizer.pt", "scheduler.pt"):
        (folder / name).write_bytes(payload)
    (folder / "trainer_state.json").write_text(
        f'{{"global_step": {step}, "epoch": 99, "step_in_epoch": 0, "metrics": {{}}, "history": []}}'
    )
    return folder
