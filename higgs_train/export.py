"""Export what training produced: the PEFT adapter with a model card, and optionally a merged model directory.

Sources (``locate_adapter``): a training checkpoint (``adapter/`` + ``config.yaml`` + ``trainer_state.json``), a
final adapter directory (adapter files + ``training_config.yaml``, as ``HiggsAudioTrainer`` writes to
``<output_dir>/adapter``), or the output directory holding that ``adapter/``.

``load_adapter`` is the one way adapters enter a model here. It fails loudly -- naming the problem -- on a corrupt
or truncated weights file, an adapter trained for another base model, LoRA settings that disagree with an already
wrapped model, tensor shapes that do not fit, and missing or unexpected keys. A LoRA that silently does not apply
(keys that match nothing, so the base model runs unchanged) is the failure this guards against.

The merged export is ``merge_and_unload`` followed by ``save_pretrained`` of the plain ``HiggsAudioModel``, cast
back to the base checkpoint's dtype, with the tokenizer files alongside, so ``HiggsAudioModel.from_pretrained``
and upstream's ``HiggsAudioServeEngine`` load it unchanged. ``check_merged_dir`` verifies the written keys equal the
base checkpoint's (no ``base_model.model.`` prefix, no ``lora_`` tensors) with the base's shapes and dtypes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from higgs_train.training.checkpoint import AdapterError, load_adapter_weights

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_CONFIG = "training_config.yaml"  # written by HiggsAudioTrainer next to the final adapter
CHECKPOINT_CONFIG = "config.yaml"  # written by save_checkpoint next to adapter/
STATE_FILE = "trainer_state.json"
HISTORY_FILE = "history.json"
DATA_KEYS_FILE = "data_keys.json"  # optional: {"train_cache_key": ..., "val_cache_key": ...} if a job records it
PEFT_PREFIX = "base_model.model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
SIDE_FILES = ("preprocessor_config.json",)  # Whisper feature extractor of the Whisper variant


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
    if (path / "adapter" / ADAPTER_CONFIG).exists() and (path / CHECKPOINT_CONFIG).exists():
        state = _read_json(path / STATE_FILE)
        return AdapterSource(
            path / "adapter",
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
            _read_json(run_dir / HISTORY_FILE) if run_dir else None,
            run_dir,
        )
    if (path / "adapter" / ADAPTER_CONFIG).exists():
        return locate_adapter(path / "adapter")
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


def _read_json(path: Path) -> Any:
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
    from higgs_train.models import EMBEDDED, resolve_paths

    if path == EMBEDDED or path.startswith(f"{EMBEDDED}:"):
        return resolve_paths(path, "").model_path
    return path


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
    already wrapped by ``training.lora.apply_lora`` (its LoRA settings must then equal the adapter's). Every adapter
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


# ----------------------------------------------------------------------------------------------- merged export
def local_model_dir(path: str) -> Path:
    """A local directory for a model dir or hub id (the hub snapshot from the cache; offline when HF is)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path))


def stored_dtype(model_dir: str | Path) -> torch.dtype:
    """The dtype a checkpoint directory stores its weights in (config.json, else the first safetensors tensor)."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json") or {}
    name = config.get("torch_dtype")
    if isinstance(name, str) and hasattr(torch, name):
        return getattr(torch, name)
    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    for _, dtype in safetensors_index(model_dir).values():
        if dtype in names:
            return names[dtype]
    return torch.float32


def safetensors_index(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` over every ``*.safetensors`` file of a directory, read from headers only."""
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            names = list(fh.keys())
            for key in names:
                tensor = fh.get_slice(key)
                out[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    return out


def check_merged_dir(merged_dir: str | Path, base_dir: str | Path) -> None:
    """Raise unless the merged weights have exactly the base checkpoint's keys, shapes and dtypes."""
    merged, base = safetensors_index(merged_dir), safetensors_index(base_dir)
    prefixed = sorted(k for k in merged if k.startswith(PEFT_PREFIX))
    lora = sorted(k for k in merged if "lora_" in k)
    missing, extra = sorted(set(base) - set(merged)), sorted(set(merged) - set(base))
    differing = sorted(k for k in set(base) & set(merged) if base[k] != merged[k])
    problems = []
    if prefixed:
        problems.append(f"{len(prefixed)} keys keep the peft prefix {PEFT_PREFIX!r} (e.g. {prefixed[:2]})")
    if lora:
        problems.append(f"{len(lora)} LoRA tensors were saved (e.g. {lora[:2]}): the adapter was not merged")
    if missing:
        problems.append(f"{len(missing)} base keys are missing (e.g. {missing[:3]})")
    if extra:
        problems.append(f"{len(extra)} keys the base does not have (e.g. {extra[:3]})")
    if differing:
        problems.append(
            f"{len(differing)} tensors differ in shape/dtype (e.g. {differing[0]}: {merged[differing[0]]} vs "
            f"{base[differing[0]]})"
        )
    if problems:
        raise AdapterError(f"merged model at {merged_dir} is not a clean HiggsAudioModel: " + "; ".join(problems))


def merge_to_dir(
    source: AdapterSource, base_model_path: str, output_dir: str | Path, allow_base_mismatch: bool = False
) -> Path:
    """Merge the adapter into the base in fp32, cast to the base's stored dtype and save a loadable directory."""
    from higgs_train.models import load_model, load_text_tokenizer, resolve_paths

    paths = resolve_paths(base_model_path, "", source.training_config.get("tokenizer_path") or None)
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    base_dir = local_model_dir(paths.model_path)
    dtype = stored_dtype(base_dir)
    model = load_model(paths.model_path, dtype=torch.float32)  # merge in fp32: W + BA rounds once, at the cast
    model = load_adapter(model, source.adapter_dir, base_model_path, allow_base_mismatch)
    merged = model.merge_and_unload()
    merged = merged.to(dtype)
    merged.config.use_cache = True  # training turns it off; generation wants it
    merged.save_pretrained(str(out), safe_serialization=True)
    load_text_tokenizer(paths.tokenizer_path).save_pretrained(str(out))
    for name in SIDE_FILES:
        if (base_dir / name).exists():
            shutil.copy2(base_dir / name, out / name)
    check_merged_dir(out, base_dir)
    return out


# ----------------------------------------------------------------------------------------------- model card
def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_card(source: AdapterSource, base_model_path: str, lora: Any, merged: bool) -> str:
    """README.md text: base model, LoRA settings, data identity, counters, final metrics, resolved config."""
    cfg = source.training_config
    recorded = lora.base_model_name_or_path
    lines = [
        "---",
        f"base_model: {json.dumps(base_model_path)}",
        "library_name: " + ("transformers" if merged else "peft"),
        "tags: [higgs-audio, text-to-speech, voice-cloning, lora, higgs-train]",
        "---",
        "",
        "# Higgs-Audio v2 voice-cloning " + ("model (LoRA merged)" if merged else "LoRA adapter"),
        "",
        "Trained with higgs-train. " + _usage(merged),
        "",
        "## Base model",
        f"- base: `{base_model_path}` (adapter records `{recorded}`; training config model_path "
        f"`{cfg.get('model_path', 'unknown')}`)",
        f"- audio tokenizer: `{cfg.get('audio_tokenizer_path', 'unknown')}`",
        "",
        "## LoRA",
        f"- r={lora.r}, alpha={lora.lora_alpha}, dropout={lora.lora_dropout}",
        f"- target modules: `{lora.target_modules}`",
        "",
        "## Data",
    ]
    for key in ("train_data", "val_data"):
        value = cfg.get(key)
        digest = _sha256(Path(value)) if value else None
        shown = value or "generated sample data"
        lines.append(f"- {key}: `{shown}`" + (f" (sha256 {digest})" if digest else ""))
    keys = _read_json(source.run_dir / DATA_KEYS_FILE) if source.run_dir else None
    if keys:
        lines += [f"- {k}: `{v}`" for k, v in sorted(keys.items())]
    else:
        lines.append("- token cache key: not recorded next to the adapter (see the MLflow run tag train_cache_key)")
    lines += ["", "## Training state"]
    state = source.state or {}
    steps = state.get("global_step") or (source.history[-1].get("step") if source.history else None)
    lines.append(f"- source: {source.kind} `{source.adapter_dir}`")
    lines.append(f"- optimizer steps: {steps if steps is not None else 'unknown'}")
    metrics = source.final_metrics()
    lines += ["", "## Final metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("unknown (no trainer_state.json or history.json next to the adapter)")
    lines += ["", "## Training configuration", "", "```yaml", yaml.safe_dump(cfg, sort_keys=True).rstrip(), "```", ""]
    return "\n".join(lines)


def _usage(merged: bool) -> str:
    if merged:
        return (
            "Load with `HiggsAudioModel.from_pretrained(dir)` or `HiggsAudioServeEngine(dir, audio_tokenizer)`, or "
            "`python ray_jobs/generate.py --model_path DIR ...`."
        )
    return "Apply with `python ray_jobs/generate.py --model_path BASE --adapter DIR ...` (base must match)."


# ----------------------------------------------------------------------------------------------- entry point
@dataclass
class ExportResult:
    adapter_dir: Path
    merged_dir: Path | None
    base_model_path: str


def export(
    checkpoint: str | Path,
    output: str | Path,
    merge: bool = False,
    base_model_path: str | None = None,
    allow_base_mismatch: bool = False,
) -> ExportResult:
    """Write ``<output>/adapter`` (peft files + training config + README.md) and, with ``merge``, ``<output>/merged``.

    The adapter is checked by loading it onto the base (``load_adapter``) before anything is written.
    """
    from higgs_train.models import load_model, resolve_paths

    source = locate_adapter(checkpoint)
    lora, _ = read_adapter_files(source.adapter_dir)
    base = base_model_path or source.trained_model_path or lora.base_model_name_or_path
    if not base:
        raise AdapterError(f"{checkpoint}: no base model recorded; pass --base_model")
    out = Path(output)
    base_dir = local_model_dir(resolve_paths(base, "").model_path)
    if not merge:  # the merge path loads the adapter itself; here a load proves the files fit the base
        load_adapter(
            load_model(str(base_dir), dtype=stored_dtype(base_dir)), source.adapter_dir, base, allow_base_mismatch
        )
    adapter_out = out / "adapter"
    if adapter_out.exists():
        shutil.rmtree(adapter_out)
    adapter_out.mkdir(parents=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copy2(source.adapter_dir / name, adapter_out / name)
    (adapter_out / TRAINING_CONFIG).write_text(yaml.safe_dump(source.training_config, sort_keys=True))
    (adapter_out / "README.md").write_text(model_card(source, base, lora, merged=False))
    merged_dir = None
    if merge:
        merged_dir = merge_to_dir(source, base, out / "merged", allow_base_mismatch)
        (merged_dir / "README.md").write_text(model_card(source, base, lora, merged=True))
    summary = {
        "source": str(source.adapter_dir),
        "kind": source.kind,
        "base_model": base,
        "adapter": str(adapter_out),
        "merged": str(merged_dir) if merged_dir else None,
        "merged_dtype": str(stored_dtype(base_dir)) if merged_dir else None,
    }
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return ExportResult(adapter_out, merged_dir, base)
