"""Training checkpoints: PEFT adapter, optimizer, scheduler, counters, data position, RNG states, resolved config.

Layout of one checkpoint directory::

    adapter/adapter_config.json, adapter/adapter_model.safetensors   (peft format, loadable by PeftModel)
    optimizer.pt, scheduler.pt, rng.pt
    trainer_state.json   {"global_step", "epoch", "step_in_epoch", "metrics", "history"}
    config.yaml          the resolved TrainingConfig

Adapter loading checks missing and unexpected keys and fails loudly: a silently unapplied LoRA is the most common
failure of community Higgs trainers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"


@dataclass
class TrainerState:
    """Counters and the data position; enough to continue exactly where a run stopped."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The PeftModel inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


def save_adapter(model: torch.nn.Module, out_dir: Path) -> Path:
    """Write the adapter in peft format (adapter_config.json + adapter_model.safetensors)."""
    unwrap(model).save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


class AdapterError(RuntimeError):
    """An adapter that cannot be applied as it is; the message names the problem and the file."""


def check_adapter_state(model: torch.nn.Module, weights: dict[str, torch.Tensor], adapter_dir: Path) -> None:
    """Compare adapter tensors with the model's LoRA parameters before loading (clear names, no torch traces)."""
    expected: dict[str, torch.Size] = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            expected[name.replace(".default.", ".", 1)] = param.shape  # file keys carry no adapter name
    if not expected:
        raise AdapterError(f"adapter at {adapter_dir}: its target_modules match no module of the model")
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(
        f"{k}: adapter {tuple(weights[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(weights)
        if tuple(weights[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]}; another rank or another base model?)")
    if problems:
        raise AdapterError(f"adapter at {adapter_dir} does not fit the model: " + "; ".join(problems))


def load_adapter_weights(
    model: torch.nn.Module, adapter_dir: Path, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load adapter weights into an already LoRA-wrapped model, refusing any key or shape mismatch.

    ``state`` is the already-read ``adapter_model.safetensors`` when the caller has it (export reads it to vet the
    file first), so the file is read once.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if state is None:
        weights_file = Path(adapter_dir) / "adapter_model.safetensors"
        if not weights_file.exists():
            raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
        state = load_file(str(weights_file))
    peft_model = unwrap(model)
    check_adapter_state(peft_model, state, Path(adapter_dir))
    set_peft_model_state_dict(peft_model, state)


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    config_dict: dict[str, Any],
) -> Path:
    """Write one complete checkpoint directory."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out_dir / ADAPTER_DIR)
    torch.save(optimizer.state_dict(), out_dir / "optimizer.pt")
    torch.save(scheduler.state_dict(), out_dir / "scheduler.pt")
    torch.save(rng_state(), out_dir / "rng.pt")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=True))
    (out_dir / STATE_FILE).write_text(state.to_json())  # written last: its presence marks a complete checkpoint
    return out_dir


def load_checkpoint(
    ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any | None
) -> TrainerState:
    """Restore adapter, optimizer, scheduler and RNG from ``ckpt_dir``; return the counters."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / STATE_FILE).exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete higgs-train checkpoint (no {STATE_FILE})")
    load_adapter_weights(model, ckpt_dir / ADAPTER_DIR)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=False))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(ckpt_dir / "rng.pt", weights_only=False))
    return TrainerState.from_json((ckpt_dir / STATE_FILE).read_text())


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest global step anywhere under ``root`` (auto-resume by run name)."""
    root = Path(root)
    if not root.exists():
        return None
    best: tuple[int, Path] | None = None
    for state_file in root.rglob(STATE_FILE):
        try:
            step = json.loads(state_file.read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            continue
        if best is None or step > best[0]:
            best = (step, state_file.parent)
    return best[1] if best else None
