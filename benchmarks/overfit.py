"""Overfit one voice-cloning sample with the real loop: evidence that loss, labels and LoRA can learn at all.

Why: a loop whose loss falls can still be broken (labels shifted the wrong way, a frozen adapter, gradients that
never reach the audio head). Memorising a single sample is the smallest task that a correct loop must solve: the
teacher-forced next-code top-1 accuracy on that sample has to approach 1 and the audio loss has to collapse. This
builds a one-sample manifest from the generated sample data, trains ``HiggsAudioTrainer`` on it (in-process
preprocessing with the embedded audio tokenizer, i.e. real codes) and prints the initial and final audio loss and
accuracy, measured in eval mode on that sample.

    python benchmarks/overfit.py [--steps 60] [--learning_rate 5e-3] [--lora_r 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class OverfitResult:
    """Audio loss and mean (over codebooks) next-code accuracy on the sample before and after training."""

    steps: int
    initial_audio_loss: float
    final_audio_loss: float
    initial_accuracy: float
    final_accuracy: float
    train_seconds: float
    audio_loss_history: list[float]

    @property
    def loss_drop(self) -> float:
        return self.initial_audio_loss / self.final_audio_loss


def one_sample_manifest(out_dir: Path) -> tuple[Path, Path]:
    """(manifest with the first generated training sample, its audio root)."""
    from higgs_train.embedded.sample_data import create_sample_data

    paths = create_sample_data(out_dir / "sample_data")
    rows = json.loads(Path(paths["train"]).read_text())[:1]
    manifest = out_dir / "one_sample.json"
    manifest.write_text(json.dumps(rows))
    return manifest, Path(paths["audio_base_path"])


def overfit_config(out_dir: Path, steps: int, learning_rate: float, lora_r: int) -> Any:
    """Settings for memorising one sample: no regularisation (dropout, weight decay), audio + text loss only."""
    from higgs_train.config import TrainingConfig

    manifest, audio_base = one_sample_manifest(out_dir)
    return TrainingConfig(
        train_data=str(manifest),
        audio_base_path=str(audio_base),
        output_dir=str(out_dir / "run"),
        batch_size=1,
        num_epochs=steps,  # one step per epoch with a single sample
        max_steps=steps,
        learning_rate=learning_rate,
        warmup_steps=5,
        weight_decay=0.0,
        lora_r=lora_r,
        lora_alpha=lora_r,
        lora_dropout=0.0,
        save_every_steps=steps,
        eval_every_steps=steps,
        keep_best_k=1,
    )


@torch.no_grad()
def evaluate(trainer: Any) -> tuple[float, float]:
    """(audio loss, mean per-codebook next-code accuracy) of the trainer's model on its training records."""
    from higgs_train.data.collate import batch_to_model_inputs, collate_records
    from higgs_train.loss import audio_next_code_accuracy, compute_higgs_audio_loss

    model = trainer.model
    model.eval()
    batch = collate_records(trainer.train_records, trainer.collator)
    out = compute_higgs_audio_loss(model(**batch_to_model_inputs(batch)), batch)
    model.train()
    accuracy = audio_next_code_accuracy(out)
    return float(out.audio_loss), sum(accuracy) / len(accuracy)


def run_overfit(out_dir: Path, steps: int = 60, learning_rate: float = 5e-3, lora_r: int = 32) -> OverfitResult:
    """Train on one sample for ``steps`` optimizer steps and measure before/after."""
    from higgs_train.data.in_process import records_for_config
    from higgs_train.training.trainer import HiggsAudioTrainer

    config = overfit_config(Path(out_dir), steps, learning_rate, lora_r)
    trainer = HiggsAudioTrainer(config, *records_for_config(config))
    trainer.setup()
    if len(trainer.train_records) != 1:
        raise RuntimeError(f"expected one preprocessed sample, got {len(trainer.train_records)}")
    initial_loss, initial_accuracy = evaluate(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final_loss, final_accuracy = evaluate(trainer)
    history = [float(h["train/audio_loss"]) for h in trainer.state.history]
    return OverfitResult(steps, initial_loss, final_loss, initial_accuracy, final_accuracy, seconds, history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--lora_r", type=int, default=32)
    parser.add_argument("--out", default="", help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="higgs-overfit-") as tmp:
        result = run_overfit(Path(args.out or tmp), args.steps, args.learning_rate, args.lora_r)
    every = max(1, result.steps // 10)
    for step in range(0, result.steps, every):
        print(f"step {step + 1:4d}  train audio loss {result.audio_loss_history[step]:.4f}")
    print(f"steps: {result.steps} ({result.train_seconds:.1f} s)")
    print(f"audio loss: {result.initial_audio_loss:.4f} -> {result.final_audio_loss:.4f} ({result.loss_drop:.1f}x)")
    print(f"next-code accuracy: {result.initial_accuracy:.4f} -> {result.final_accuracy:.4f}")


if __name__ == "__main__":
    main()
