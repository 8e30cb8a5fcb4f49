"""The one home of LoRA adapters: attach, save, locate, read, check and load.

Attach (``apply_lora``): LoRA on the DualFFN decoder (attention q/k/v/o, text MLP, audio MLP) via peft. No PEFT
task type is used: ``TaskType.CAUSAL_LM`` wraps the model in ``PeftModelForCausalLM``, whose forward injects
``labels=`` and other causal-LM arguments that ``HiggsAudioModel.forward`` does not take. The bare ``PeftModel``
forwards our keyword arguments untouched.

Locate (``locate_adapter``): a training checkpoint (``adapter/`` + ``config.yaml`` + ``trainer_state.json``), a final
adapter directory (adapter files + ``training_config.yaml``, as ``HiggsAudioTrainer`` writes to
``<output_dir>/adapter``), or the output directory holding that ``adapter/``.

Load (``load_adapter``) is the one way adapters enter a model here, for training checkpoints, export and generation
alike. It fails loudly -- naming the problem -- on a corrupt or truncated weights file, an adapter trained for another
base model, LoRA settings that disagree with an already wrapped model, tensor shapes that do not fit, and missing or
unexpected keys. A LoRA that silently does not apply (keys that match nothing, so the base model runs unchanged) is
the failure this guards against.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from higgs_train.embedded.layout import embedded_model_dir

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_CONFIG = "training_config.yaml"  # written by HiggsAudioTrainer next to the final adapter
# The training checkpoint layout this module reads (written by training.checkpoint.save_checkpoint).
ADAPTER_DIR = "adapter"
CHECKPOINT_CONFIG = "config.yaml"
STATE_FILE = "trainer_state.json"
HISTORY_FILE = "history.json"

_REGEX_CHARS = re.compile(r"[\^\$\\\[\]\(\)\|\*\+\?]")


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(1, self.total)


def lora_targets(target_modules: list[str]) -> str | list[str]:
    """peft semantics: a single regex string is full-matched; a list matches module-name suffixes."""
    if len(target_modules) == 1 and _REGEX_CHARS.search(target_modules[0]):
        return target_modules[0]
    return list(target_modules)


def apply_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Freeze the base model and add LoRA adapters; fail if no module matched."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(target_modules), bias="none"
    )
    peft_model = get_peft_model(model, config)
    assert_only_adapters_trainable(peft_model)
    return peft_model


def adapted_module_names(model: torch.nn.Module) -> list[str]:
    """Names of modules that carry a LoRA adapter (for logging and tests)."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name})


def assert_only_adapters_trainable(model: torch.nn.Module) -> ParameterCounts:
    """Raise if any non-LoRA parameter would train (or none would); return the counts."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    stray = [n for n in trainable if "lora_" not in n]
    if stray:
        raise RuntimeError(f"non-adapter parameters are trainable: {stray[:5]}{'...' if len(stray) > 5 else ''}")
    if not trainable:
        raise RuntimeError("no LoRA adapter was attached: lora_target_modules matched no module")
    return count_parameters(model)


def count_parameters(model: torch.nn.Module) -> ParameterCounts:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCounts(trainable=trainable, total=total)


# ----------------------------------------------------------------------------------------------- saving
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


# ----------------------------------------------------------------------------------------------- locating
@dataclass
class AdapterSource:
    """Where an adapter lies and what is known about its training run."""

    adapter_dir: Path
    kind: str  # "checkpoint" or "final"
    training_config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    run_dir: Path | None = None  # the training output dir (history.json, data_keys.json), when known

    @property
    def trained_model_path(self) -> str | None:
        return self.training_config.get("model_path") or None

    def final_metrics(self) -> dict[str, float]:
        """The last reported metrics: trainer_state.json's, else the last history.json entry."""
        metrics = (self.state or {}).get("metrics") or (self.history[-1] if self.history else {})
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------------- locating
def locate_adapter(path: str | Path) -> AdapterSource:
    """Recognise a checkpoint dir, a final adapter dir or a training output dir; fail naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter source {path} is not a directory")
    if (path / ADAPTER_DIR / ADAPTER_CONFIG).exists() and (path / CHECKPOINT_CONFIG).exists():
        state = read_json(path / STATE_FILE)
        return AdapterSource(
            path / ADAPTER_DIR,
            "checkpoint",
            _read_yaml(path / CHECKPOINT_CONFIG),
            state,
            (state or {}).get("history"),
            _run_dir_of_checkpoint(path),
        )
    if (path / ADAPTER_CONFIG).exists():
        run_dir = path.parent if (path.parent / HISTORY_FILE).exists() else None
        return AdapterSource(
            path,
            "final",
            _read_yaml(path / TRAINING_CONFIG) if (path / TRAINING_CONFIG).exists() else {},
            None,
            read_json(run_dir / HISTORY_FILE) if run_dir else None,
            run_dir,
        )
    if (path / ADAPTER_DIR / ADAPTER_CONFIG).exists():
        return locate_adapter(path / ADAPTER_DIR)
    raise FileNotFoundError(
        f"{path} holds no adapter: expected {ADAPTER_CONFIG} (a final adapter dir), or adapter/ with "
        f"{CHECKPOINT_CONFIG} (a training checkpoint)"
    )


def _run_dir_of_checkpoint(path: Path) -> Path | None:
    """``<output_dir>/checkpoints/step_N`` -> ``<output_dir>`` (local runs); None elsewhere (e.g. Ray storage)."""
    parent = path.parent
    if parent.name == "checkpoints" and (parent.parent / HISTORY_FILE).exists():
        return parent.parent
    return None


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------- reading
def read_adapter_files(adapter_dir: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(``LoraConfig``, weights) of an adapter dir; unreadable or truncated files raise ``AdapterError``."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_file, weights_file = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for needed in (config_file, weights_file):
        if not needed.exists():
            raise AdapterError(f"adapter at {adapter_dir} is incomplete: {needed.name} is missing")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise AdapterError(f"{config_file} is not valid JSON ({err}); the adapter is corrupted") from err
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{config_file}: peft_type is {raw.get('peft_type')!r}; only LoRA adapters are supported")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    try:
        weights = load_file(str(weights_file))
    except Exception as err:  # safetensors raises its own error type for truncated headers/data
        raise AdapterError(
            f"{weights_file} is corrupted or truncated ({type(err).__name__}: {err}); re-copy or re-export it"
        ) from err
    if not weights:
        raise AdapterError(f"{weights_file} holds no tensors")
    return config, weights


# ----------------------------------------------------------------------------------------------- identity
def _resolve_model_path(path: str) -> str:
    return embedded_model_dir(path) or path


def _same_location(a: str, b: str) -> bool:
    if a == b:
        return True
    pa_, pb = Path(a), Path(b)
    return pa_.exists() and pb.exists() and os.path.realpath(pa_) == os.path.realpath(pb)


def check_base_identity(recorded: str | None, trained_model_path: str | None, given: str) -> None:
    """Raise ``AdapterError`` unless ``given`` is the base the adapter was trained on.

    ``recorded`` is adapter_config's ``base_model_name_or_path`` (the resolved path or hub id at training time);
    ``trained_model_path`` is the training config's ``model_path`` as the user wrote it (e.g. ``embedded`` or a
    hub id), which still matches when the run happened on another machine with other local paths.
    """
    given_resolved = _resolve_model_path(given)
    known = [c for c in (recorded, trained_model_path) if c]
    if not known:
        raise AdapterError(
            "the adapter records no base model (adapter_config base_model_name_or_path is empty and there is no "
            "training config); pass allow_base_mismatch / --allow_base_mismatch if you are sure it fits"
        )
    for candidate in known:
        if _same_location(candidate, given) or _same_location(_resolve_model_path(candidate), given_resolved):
            return
    raise AdapterError(
        f"adapter was trained on base model {recorded!r} (training config model_path={trained_model_path!r}) "
        f"but is being applied to {given!r} ({given_resolved}); pass the matching base, or allow_base_mismatch / "
        "--allow_base_mismatch if it is the same model under another path"
    )


# ----------------------------------------------------------------------------------------------- loading
def load_adapter(
    model: torch.nn.Module,
    adapter_dir: str | Path,
    base_model_path: str | None = None,
    allow_base_mismatch: bool = False,
):
    """Apply the adapter in ``adapter_dir`` (or a checkpoint/output dir holding one) to ``model``; return it.

    ``model`` is a plain ``HiggsAudioModel`` (it gets wrapped with the adapter's own ``LoraConfig``) or a model
    already wrapped by ``apply_lora`` (its LoRA settings must then equal the adapter's). Every adapter
    tensor must land on a LoRA parameter of the same shape and every LoRA parameter must receive one.
    """
    from peft import get_peft_model

    source = locate_adapter(adapter_dir)
    config, weights = read_adapter_files(source.adapter_dir)
    wrapped = hasattr(model, "peft_config")
    if not allow_base_mismatch:
        given = base_model_path or _model_name(model)
        check_base_identity(config.base_model_name_or_path, source.trained_model_path, given)
    if wrapped:
        _check_same_lora_settings(model.peft_config["default"], config, source.adapter_dir)
    else:
        config.inference_mode = True
        model = get_peft_model(model, config)
    load_adapter_weights(model, source.adapter_dir, state=weights)
    if all(float(w.abs().max()) == 0 for k, w in weights.items() if ".lora_B." in k):
        logger.warning("adapter %s has all-zero lora_B weights: it does not change the model", source.adapter_dir)
    return model


def _model_name(model: torch.nn.Module) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base, "name_or_path", "") or getattr(getattr(base, "config", None), "_name_or_path", "")
    if not name:
        raise AdapterError("cannot tell which base model this is: pass base_model_path")
    return name


def _check_same_lora_settings(current: Any, adapter: Any, adapter_dir: Path) -> None:
    diffs = []
    for name in ("r", "lora_alpha", "use_rslora", "use_dora"):
        if getattr(current, name) != getattr(adapter, name):
            diffs.append(f"{name}: model {getattr(current, name)!r} vs adapter {getattr(adapter, name)!r}")
    targets = (_normalise_targets(current.target_modules), _normalise_targets(adapter.target_modules))
    if targets[0] != targets[1]:
        diffs.append(f"target_modules: model {targets[0]!r} vs adapter {targets[1]!r}")
    if diffs:
        raise AdapterError(f"adapter at {adapter_dir} has other LoRA settings than the model: " + "; ".join(diffs))


def _normalise_targets(targets: Any) -> Any:
    return sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
