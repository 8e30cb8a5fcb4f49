"""Export what training produced: the PEFT adapter with a model card, and optionally a merged model directory.

The adapter is found, read and checked by ``higgs_train.adapter`` (the one home of adapter files); this module
adds what only the export command does.

The merged export is ``merge_and_unload`` followed by ``save_pretrained`` of the plain ``HiggsAudioModel``, cast
back to the base checkpoint's dtype, with the tokenizer files alongside, so ``HiggsAudioModel.from_pretrained``
and upstream's ``HiggsAudioServeEngine`` load it unchanged. ``check_merged_dir`` verifies the written keys equal the
base checkpoint's (no ``base_model.model.`` prefix, no ``lora_`` tensors) with the base's shapes and dtypes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from higgs_train.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TRAINING_CONFIG,
    AdapterError,
    AdapterSource,
    load_adapter,
    locate_adapter,
    read_adapter_files,
    read_json,
)
from higgs_train.model_loading import load_model, load_text_tokenizer, resolve_paths

logger = logging.getLogger(__name__)

DATA_KEYS_FILE = "data_keys.json"  # optional: {"train_cache_key": ..., "val_cache_key": ...} if a job records it
PEFT_PREFIX = "base_model.model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
SIDE_FILES = ("preprocessor_config.json",)  # Whisper feature extractor of the Whisper variant


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
    config = read_json(model_dir / "config.json") or {}
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
    """Merge the adapter into the base, rounding once to the base's stored dtype, and save a loadable directory.

    The base loads in its stored dtype, not fp32: a released 3B checkpoint is 11.5 GB in bf16 and 23 GB in fp32,
    which no longer fit next to each other on a 24 GB machine. The result is the same as an fp32 merge cast back:
    peft's merge adds the fp32 delta ``B @ A * scale`` (fp32 adapters) to the weight in place, which computes
    ``W + delta`` in fp32 and rounds once on the store; a bf16 weight widened to fp32 and cast back is unchanged.
    """
    paths = resolve_paths(base_model_path, "", source.training_config.get("tokenizer_path") or None)
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    base_dir = local_model_dir(paths.model_path)
    dtype = stored_dtype(base_dir)
    model = load_model(paths.model_path, dtype=dtype)
    model = load_adapter(model, source.adapter_dir, base_model_path, allow_base_mismatch)
    for name, param in model.named_parameters():  # what makes the in-place merge round once (docstring)
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()
    merged = model.merge_and_unload()
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
    keys = read_json(source.run_dir / DATA_KEYS_FILE) if source.run_dir else None
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
