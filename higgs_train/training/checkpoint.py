"""Training checkpoints: PEFT adapter, optimizer, scheduler, counters, data position, RNG states, resolved config.

Layout of one checkpoint directory (nothing in it is a pickle: a checkpoint comes from storage other people and
processes can write, and unpickling runs code)::

    adapter/adapter_config.json, adapter/adapter_model.safetensors   (peft format, loadable by PeftModel)
    optimizer.safetensors + optimizer.json    tensors of the AdamW state / everything else (param groups, scalars)
    scheduler.json                            the LR scheduler's state_dict (plain numbers)
    rng.safetensors + rng.json                torch/CUDA/NumPy/Python generator states
    trainer_state.json   {"global_step", "epoch", "step_in_epoch", "metrics", "history"}
    config.yaml          the resolved TrainingConfig
    manifest.json        name, size and sha256 of every file above; written last

A checkpoint is only loaded after its manifest verifies (``verify_checkpoint``): Ray uploads a checkpoint's files
concurrently, so a crash can leave a folder with some files missing or cut short, and such a folder must never be
resumed from. Adapter loading checks missing and unexpected keys and fails loudly: a silently unapplied LoRA is the
most common failure of community Higgs trainers.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
import yaml

from higgs_train.adapter import ADAPTER_DIR, CHECKPOINT_CONFIG, STATE_FILE, load_adapter_weights, save_adapter

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "higgs-train-checkpoint/2"
# Files every checkpoint of this format has (the manifest may list more, e.g. adapter extras written by peft).
REQUIRED_FILES = (
    f"{ADAPTER_DIR}/adapter_config.json",
    f"{ADAPTER_DIR}/adapter_model.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    CHECKPOINT_CONFIG,
    STATE_FILE,
)


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


class CheckpointError(RuntimeError):
    """A folder that is not a complete, intact checkpoint of this format; the message names the folder and why."""


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


def save_rng_state(out_dir: Path, state: dict[str, Any]) -> None:
    """Generator states as tensors (safetensors) plus their scalar parts (JSON)."""
    from safetensors.torch import save_file

    py_version, py_internal, py_gauss = state["python"]
    np_algorithm, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    tensors = {
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "torch": state["torch"].clone(),
    }
    cuda = state.get("cuda") or []
    tensors.update({f"cuda.{i}": t.cpu().clone() for i, t in enumerate(cuda)})
    save_file(tensors, str(out_dir / "rng.safetensors"))
    scalars = {
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy_algorithm": np_algorithm,
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_gauss),
        "cuda_devices": len(cuda),
    }
    (out_dir / "rng.json").write_text(json.dumps(scalars, indent=1))


def load_rng_state(ckpt_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt_dir / "rng.safetensors"))
    scalars = json.loads((ckpt_dir / "rng.json").read_text())
    state: dict[str, Any] = {
        "python": (
            scalars["python_version"],
            tuple(int(x) for x in tensors["python"].tolist()),
            scalars["python_gauss"],
        ),
        "numpy": (
            scalars["numpy_algorithm"],
            tensors["numpy"].numpy().astype(np.uint32),
            scalars["numpy_pos"],
            scalars["numpy_has_gauss"],
            scalars["numpy_cached_gaussian"],
        ),
        "torch": tensors["torch"],
    }
    if scalars["cuda_devices"]:
        state["cuda"] = [tensors[f"cuda.{i}"] for i in range(scalars["cuda_devices"])]
    return state


def save_optimizer_state(out_dir: Path, state_dict: dict[str, Any]) -> None:
    """``optimizer.state_dict()`` split into its tensors (safetensors) and everything else (JSON)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    save_file(tensors, str(out_dir / "optimizer.safetensors"))
    structure = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    (out_dir / "optimizer.json").write_text(json.dumps(structure, indent=1))


def load_optimizer_state(ckpt_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt_dir / "optimizer.safetensors"))
    structure = json.loads((ckpt_dir / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in structure["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    # JSON has no tuples; torch keeps group hyper-parameters such as ``betas`` as tuples (``params`` is a list).
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in structure["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _sha256(stream: Any) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def write_manifest(ckpt_dir: Path) -> Path:
    """List every file of ``ckpt_dir`` with its size and sha256 in ``manifest.json``; call it last."""
    files = {}
    for path in sorted(p for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        with path.open("rb") as stream:
            files[path.relative_to(ckpt_dir).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(stream)}
    manifest = ckpt_dir / MANIFEST_FILE
    manifest.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True))
    return manifest


def verify_checkpoint(path: str | Path, filesystem: pafs.FileSystem | None = None) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest (every file present, same size, same sha256).

    ``filesystem``: a pyarrow filesystem holding ``path`` (local when omitted), so a checkpoint on ``s3://`` is
    verified where it lies. Returns the manifest; raises ``CheckpointError`` naming the first problem.
    """
    fs = filesystem or pafs.LocalFileSystem()
    root = str(path).rstrip("/")
    where = str(path)

    def read_text(name: str) -> str:
        with fs.open_input_stream(f"{root}/{name}") as stream:
            return stream.read().decode("utf-8")

    try:
        manifest = json.loads(read_text(MANIFEST_FILE))
    except FileNotFoundError as err:
        legacy = fs.get_file_info(f"{root}/rng.pt").type != pafs.FileType.NotFound
        hint = " (a pickle-based checkpoint of an older version; those are never loaded)" if legacy else ""
        raise CheckpointError(f"{where} is not a complete higgs-train checkpoint: no {MANIFEST_FILE}{hint}") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{where}: {MANIFEST_FILE} is not valid JSON ({err})") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise CheckpointError(f"{where}: {MANIFEST_FILE} is not a {MANIFEST_FORMAT} manifest")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{where}: manifest lacks required files {missing}")
    for name, expected in sorted(files.items()):
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "" in parts or not isinstance(expected, dict):
            raise CheckpointError(f"{where}: manifest entry {name!r} is not a plain relative file name")
        info = fs.get_file_info(f"{root}/{name}")
        if info.type != pafs.FileType.File:
            raise CheckpointError(f"{where}: {name} is missing (partly written checkpoint?)")
        if info.size != expected.get("size"):
            raise CheckpointError(f"{where}: {name} has {info.size} bytes, the manifest says {expected.get('size')}")
        with fs.open_input_stream(f"{root}/{name}") as stream:
            if _sha256(stream) != expected.get("sha256"):
                raise CheckpointError(f"{where}: {name} does not match its sha256 in the manifest")
    return manifest


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    config_dict: dict[str, Any],
) -> Path:
    """Write one complete checkpoint directory: state files first, ``manifest.json`` last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out_dir / ADAPTER_DIR)
    save_optimizer_state(out_dir, optimizer.state_dict())
    (out_dir / "scheduler.json").write_text(json.dumps(scheduler.state_dict(), indent=1))
    save_rng_state(out_dir, rng_state())
    (out_dir / CHECKPOINT_CONFIG).write_text(yaml.safe_dump(config_dict, sort_keys=True))
    (out_dir / STATE_FILE).write_text(state.to_json())
    write_manifest(out_dir)
    return out_dir


def load_checkpoint(
    ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any | None
) -> TrainerState:
    """Verify ``ckpt_dir`` against its manifest, then restore adapter, optimizer, scheduler and RNG; return the
    counters. Only safetensors and JSON are read."""
    ckpt_dir = Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)
    load_adapter_weights(model, ckpt_dir / ADAPTER_DIR)
    if optimizer is not None:
        optimizer.load_state_dict(load_optimizer_state(ckpt_dir))
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((ckpt_dir / "scheduler.json").read_text()))
    set_rng_state(load_rng_state(ckpt_dir))
    return TrainerState.from_json((ckpt_dir / STATE_FILE).read_text())
