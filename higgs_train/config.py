"""``TrainingConfig``: the one configuration object, validated once, with errors that name the field.

Every field carries its help text (used verbatim by the CLI). ``configs/default.yaml``, the file a user copies as a
``--config`` starting point, is generated from the dataclass (``default_yaml``; a unit test fails when the committed
file is stale). Precedence: dataclass defaults < ``--config`` file < flags.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from higgs_train.atomic_files import write_atomic

DEFAULT_LORA_TARGETS = (
    # Attention q/k/v/o, the text MLP and the audio MLP (DualFFN) of every decoder layer; a regex so the Whisper
    # tower's q_proj/k_proj/v_proj/fc* (which share suffixes) are never matched.
    r"^(?:base_model\.model\.)?layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|(?:mlp|audio_mlp)\.(?:gate|up|down)_proj)$"
)


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD")
DATA_NODES = ("driver", "any")  # where the token-cache build runs (ray_pipeline)
"""Ray placement-group strategies a training job may ask for (STRICT_PACK would put every worker on one node, which
``--num_workers`` on CPUs rarely wants; it is left out so a typo-free choice always means "nodes may differ")."""

RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run name, else raise ``ValueError``.

    A run name becomes a folder under the storage root and an MLflow run name: letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 128 characters, so it can never be ``..`` or hold a path separator.
    """
    if not isinstance(name, str) or not RUN_NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is invalid: expected 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, without '..' (it names a folder under the storage path)"
        )
    return name


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


REMOVED_FIELDS: dict[str, str] = {
    "consistency_loss_weight": "removed: the hidden-state consistency term did not measure voice (it scored "
    "cross-speaker pairs as well as same-speaker ones); rank by voice with --eval_rows N --checkpoint_metric sim",
}
"""Settings that existed once: an old config file or command line gets told why, not 'did you mean'."""

COMMON_NAMES: dict[str, str] = {
    **dict.fromkeys(("lr", "learning-rate", "learningrate"), "learning_rate"),
    **dict.fromkeys(("epochs", "epoch", "n_epochs", "num_train_epochs", "max_epochs", "train_epochs"), "num_epochs"),
    **dict.fromkeys(
        ("bs", "batch", "batchsize", "train_batch_size", "per_device_train_batch_size", "micro_batch_size"),
        "batch_size",
    ),
    **dict.fromkeys(("rank", "r", "lora_rank", "lora_dim"), "lora_r"),
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    **dict.fromkeys(("steps", "max_train_steps", "total_steps", "num_steps", "train_steps"), "max_steps"),
    **dict.fromkeys(("warmup", "num_warmup_steps", "warmup_iters"), "warmup_steps"),
    **dict.fromkeys(("grad_accum", "accumulate_grad_batches", "gradient_accumulation"), "gradient_accumulation_steps"),
    **dict.fromkeys(("grad_clip", "clip_grad_norm", "max_norm", "gradient_clip_val"), "max_grad_norm"),
    "wd": "weight_decay",
    **dict.fromkeys(("data", "train", "dataset", "train_file", "train_manifest", "manifest"), "train_data"),
    **dict.fromkeys(("val", "eval_data", "valid_data", "validation_data", "val_file", "val_manifest"), "val_data"),
    **dict.fromkeys(("audio_root", "audio_dir", "data_root", "data_dir", "wav_dir"), "audio_base_path"),
    **dict.fromkeys(("model", "model_name_or_path", "base_model", "pretrained_model"), "model_path"),
    **dict.fromkeys(("out_dir", "output", "output_path", "save_dir"), "output_dir"),
    **dict.fromkeys(("resume", "resume_from_checkpoint", "checkpoint"), "resume_from"),
    **dict.fromkeys(("gpu", "cuda", "use_cuda"), "use_gpu"),
    **dict.fromkeys(("save_steps", "checkpoint_every", "save_every"), "save_every_steps"),
    **dict.fromkeys(("eval_steps", "eval_every", "val_every"), "eval_every_steps"),
    **dict.fromkeys(("logging_steps", "log_every", "log_steps"), "log_every_steps"),
    **dict.fromkeys(("experiment", "experiment_name"), "mlflow_experiment"),
    "tracking_uri": "mlflow_tracking_uri",
    "tokenizer": "tokenizer_path",
    "audio_tokenizer": "audio_tokenizer_path",
    **dict.fromkeys(("trials", "num_trials", "n_trials"), "num_samples"),
}
"""Names other training tool kits use for these settings (``--lr``, ``--epochs``, ``--bs``, ``--rank``): the answer
to them is the real name, not the closest spelling (difflib answers ``--lr`` with ``--lora_r``)."""


def closest_name(name: str, known: list[str]) -> str | None:
    """The setting ``name`` most likely stands for: a common name from ``COMMON_NAMES``, else the closest spelling."""
    key = name.replace("-", "_").lower()
    for candidate in (name, key):
        if COMMON_NAMES.get(candidate) in known:
            return COMMON_NAMES[candidate]
    if key in known:
        return key
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


@dataclass
class TrainingConfig:
    """All settings of a training job. See README "Configuration" for the groups."""

    # --- data ---
    train_data: str = _f("", "Training manifest (JSON list, JSONL or Parquet). Empty: generated sample data.")
    val_data: str = _f("", "Validation manifest. Empty with sample data: its val split; otherwise no validation.")
    audio_base_path: str = _f("", "Root that relative audio paths resolve under (default: the manifest's folder).")
    min_audio_seconds: float = _f(0.5, "Shortest accepted audio clip, seconds.")
    max_audio_seconds: float = _f(30.0, "Longest accepted audio clip, seconds.")
    cache_dir: str = _f("", "Token cache root (default: <output_dir>/../token_cache, shared by runs and trials).")
    stream_cache_uri: str = _f(
        "",
        "Where training workers stream the token cache from (s3://, gs://, file://, a shared path); the built "
        "entries are copied there. Empty: <storage_path>/_token_cache when storage_path is a URI, else cache_dir.",
    )
    max_tokens_per_row: int = _f(
        0, "Quarantine rows whose merged text + audio length exceeds this (0: the model's max_position_embeddings)."
    )
    # --- model ---
    model_path: str = _f("embedded", "HiggsAudioModel dir or hub id; 'embedded' = the generated tiny stack.")
    audio_tokenizer_path: str = _f("embedded", "Higgs audio tokenizer dir or hub id; 'embedded' = tiny stack.")
    tokenizer_path: str = _f("", "Text tokenizer dir or hub id (default: model_path).")
    # --- LoRA ---
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = _f(
        [DEFAULT_LORA_TARGETS], "Module names or one regex (peft semantics). Default: attention + text/audio MLPs."
    )
    # --- loss ---
    text_loss_weight: float = _f(1.0, "Weight of the text next-token loss.")
    audio_loss_weight: float = _f(1.0, "Weight of the audio next-code loss (mean over codebooks).")
    codebook_weights: list[float] = _f([], "Per-codebook audio loss weights (default: equal).")
    text_dominance_threshold: float = _f(10.0, "Warn when weighted text loss / audio loss exceeds this.")
    audio_dominance_threshold: float = _f(10.0, "Warn when weighted audio loss / text loss exceeds this.")
    # --- optimisation ---
    batch_size: int = _f(2, "Samples per micro-batch (upper bound when max_tokens_per_batch is set).")
    max_tokens_per_batch: int = _f(0, "Token budget per micro-batch incl. padding (0: fixed batch_size).")
    learning_rate: float = _f(
        0.0,
        "Peak AdamW learning rate (0: the model's recommended rate: 2e-4 for released checkpoints, 2e-3 for the embedded tiny model).",
    )
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    num_epochs: int = _f(3, "Passes over the training data.")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: run num_epochs).")
    warmup_steps: int = _f(2, "Linear warm-up steps before the cosine decay.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    use_gradient_checkpointing: bool = _f(False, "Recompute decoder-layer activations in backward.")
    checkpoint_layers: int = _f(
        0,
        "How many decoder layers to checkpoint, spread evenly; N > 0 turns checkpointing on, 0 with "
        "--use_gradient_checkpointing means all. Fewer recompute less (faster) and keep more activations (memory).",
    )
    seed: int = _f(42, "Seed for model init of adapters, data order and dropout.")
    # --- schedule of side work ---
    eval_every_steps: int = _f(10, "Validate every N optimizer steps (and at the end).")
    save_every_steps: int = _f(10, "Checkpoint every N optimizer steps (and at the end).")
    keep_best_k: int = _f(2, "Checkpoints kept, ranked by validation loss.")
    log_every_steps: int = _f(1, "Report training metrics every N optimizer steps.")
    num_validation_samples: int = _f(
        0,
        "At each validation, greedily generate audio for this many validation rows "
        "and log the WAVs + code agreement to MLflow (0: off).",
    )
    validation_sample_max_new_tokens: int = _f(512, "Generation length cap for validation samples.")
    eval_rows: int = _f(
        0,
        "At each validation, generate this many validation rows on rank 0 and score them with the voice metrics "
        "(SIM, WER/CER, DNSMOS, signal checks; logged as eval/*) (0: off).",
    )
    eval_sim_model: str = _f("", "Speaker model for eval_rows: local transformers x-vector dir; empty: resemblyzer.")
    eval_asr_model: str = _f("", "ASR for eval_rows: local Whisper dir; empty: pocketsphinx (rough, English only).")
    checkpoint_metric: str = _f(
        "val_loss", "Ranks the kept checkpoints: val_loss, sim (eval/sim_rank, max) or wer (eval/wer_rank, min)."
    )
    # --- distribution ---
    num_workers: int = _f(1, "Ray Train workers (one per GPU when use_gpu).")
    use_gpu: bool = _f(False, "Train on GPUs (bf16 base weights, no autocast); CPU uses fp32.")
    precision: str = _f(
        "auto", "Base-weight dtype: auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32. Upstream never runs under autocast."
    )
    adapter_dtype: str = _f("fp32", "LoRA adapter (and optimizer state) dtype: fp32 (peft casts inputs) or bf16.")
    compile_layers: bool = _f(False, "torch.compile every decoder layer (speed on GPU; the first steps compile).")
    dataloader_num_workers: int = _f(1, "Ray Data preprocessing actors (audio tokenizer instances).")
    cpus_per_data_actor: float = _f(0.5, "CPUs reserved per preprocessing actor (fractions allowed).")
    data_actor_gpus: float = _f(
        0.0, "GPUs per audio-encoder actor (fractions share a GPU); 0 encodes on CPUs. Decoding stays on CPUs."
    )
    data_nodes: str = _f(
        "driver",
        "Where the token-cache build runs: driver (the driver's node, whose disk holds the manifests, audio and "
        "cache_dir; nothing else needs them) or any (any node: the audio and cache_dir must be mounted at the same "
        "paths on every node, e.g. to encode on GPU nodes with data_actor_gpus).",
    )
    cpus_per_train_worker: float = _f(0.5, "CPUs reserved per training worker (fractions allowed).")
    max_failures: int = _f(3, "Worker failures Ray Train survives by restarting from the latest checkpoint.")
    placement_strategy: str = _f(
        "PACK",
        "Where Ray places the training workers: PACK (fewest nodes), SPREAD (across nodes when it can) or "
        "STRICT_SPREAD (one worker per node; waits for enough nodes).",
    )
    storage_path: str = _f("", "Ray Train storage for checkpoints (local dir, s3://, gs://, NFS); default output_dir.")
    # --- run ---
    output_dir: str = _f("outputs/default", "Where the final adapter, reports and the MLflow store go.")
    run_name: str = _f("", "Run name; rerunning a name resumes it (default: derived from output_dir).")
    resume_from: str = _f("", "Checkpoint directory to resume from.")
    quick_test: bool = _f(False, "A handful of steps on small data (smoke test).")
    validate_data_only: bool = _f(False, "Validate the manifests, write the report and exit.")
    create_sample_data: str = _f("", "Write the sample voice-cloning data set to this folder and exit.")
    mlflow_tracking_uri: str = _f(
        "", "MLflow tracking URI (default: the project's sqlite next to output_dir; MLFLOW_TRACKING_URI; off: none)."
    )
    mlflow_experiment: str = _f("higgs-train", "MLflow experiment name.")
    verbose: bool = _f(False, "Show Ray's own INFO logs and Ray Data progress bars (default: warnings only).")

    def __post_init__(self) -> None:
        for name, value in coerce_fields({f.name: getattr(self, f.name) for f in fields(self)}).items():
            setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and what it accepts."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"TrainingConfig.{name}={getattr(self, name)!r} is invalid: expected {allowed}")

        for name in (
            "lora_r",
            "lora_alpha",
            "batch_size",
            "num_epochs",
            "gradient_accumulation_steps",
            "num_workers",
            "dataloader_num_workers",
            "eval_every_steps",
            "save_every_steps",
            "keep_best_k",
            "log_every_steps",
        ):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an integer >= 1")
        for name in (
            "max_steps",
            "warmup_steps",
            "max_tokens_per_batch",
            "num_validation_samples",
            "max_tokens_per_row",
            "max_failures",
            "eval_rows",
            "checkpoint_layers",
        ):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in (
            "text_loss_weight",
            "audio_loss_weight",
            "weight_decay",
            "max_grad_norm",
        ):
            need(float(getattr(self, name)) >= 0, name, "a number >= 0")
        need(
            self.text_loss_weight + self.audio_loss_weight > 0,
            "audio_loss_weight",
            "text_loss_weight + audio_loss_weight > 0",
        )
        need(0 <= self.lora_dropout < 1, "lora_dropout", "a number in [0, 1)")
        need(self.precision in ("auto", "bf16", "fp32"), "precision", "one of auto, bf16, fp32")
        need(self.adapter_dtype in ("bf16", "fp32"), "adapter_dtype", "one of bf16, fp32")
        need(self.learning_rate >= 0, "learning_rate", "a number > 0 (or 0 for the model's recommended rate)")
        need(
            0 < self.min_audio_seconds < self.max_audio_seconds,
            "max_audio_seconds",
            "0 < min_audio_seconds < max_audio_seconds",
        )
        if self.run_name:
            try:
                check_run_name(self.run_name)
            except ValueError:
                need(False, "run_name", "letters, digits, '.', '_' or '-' (no path separators, no '..')")
        need(self.cpus_per_data_actor > 0, "cpus_per_data_actor", "a number > 0")
        need(0 <= self.data_actor_gpus <= 1, "data_actor_gpus", "a share of one GPU per actor, from 0 to 1")
        need(self.data_nodes in DATA_NODES, "data_nodes", ", ".join(DATA_NODES))
        need(self.cpus_per_train_worker > 0, "cpus_per_train_worker", "a number > 0")
        need(self.placement_strategy in PLACEMENT_STRATEGIES, "placement_strategy", ", ".join(PLACEMENT_STRATEGIES))
        need(self.checkpoint_metric in ("val_loss", "sim", "wer"), "checkpoint_metric", "val_loss, sim or wer")
        need(
            self.checkpoint_metric == "val_loss" or self.eval_rows > 0,
            "checkpoint_metric",
            "val_loss unless eval_rows > 0 (sim and wer come from the voice evaluation)",
        )
        need(bool(self.lora_target_modules), "lora_target_modules", "at least one module name or regex")
        need(
            not self.codebook_weights or all(w >= 0 for w in self.codebook_weights),
            "codebook_weights",
            "non-negative weights, one per codebook",
        )

    # --- (de)serialisation ---
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from a mapping (a config file, flags, a worker's copy): unknown keys are refused with the closest
        valid name, and every value is coerced to its field's declared type (YAML 1.1 reads ``1e-4`` as a string)."""
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            hints = []
            for key in unknown:
                close = closest_name(str(key), names)
                if key in REMOVED_FIELDS:
                    hints.append(f"{key!r} ({REMOVED_FIELDS[key]})")
                else:
                    hints.append(f"{key!r}" + (f" (did you mean {close!r}?)" if close else ""))
            raise ValueError(f"unknown TrainingConfig field(s): {', '.join(hints)}")
        return cls(**data)  # __post_init__ coerces every value to its declared type

    @classmethod
    def load(cls, path: str | Path) -> TrainingConfig:
        """Read a JSON or YAML file (by extension; YAML otherwise)."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON or YAML (by extension), whole: temp file + rename (``atomic_files.write_atomic``)."""
        path = Path(path)
        if path.suffix == ".json":
            write_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        else:
            write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=True))

    def replace(self, **changes: Any) -> TrainingConfig:
        return TrainingConfig.from_dict({**self.to_dict(), **changes})

    def apply_quick_test(self) -> TrainingConfig:
        """Shrink the run to a handful of steps (``--quick_test``)."""
        return self.replace(
            max_steps=min(self.max_steps or 4, 4), eval_every_steps=2, save_every_steps=2, warmup_steps=1, num_epochs=1
        )


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, bool, str, list[str], list[float]); ``ValueError`` naming the field."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"TrainingConfig.{name}={value!r} is invalid: expected {expected}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
        if not number.is_integer():
            raise bad("an integer")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            raise bad("a string")
        return str(value)
    if kind in (list[str], list[float]):
        item = kind.__args__[0]
        items = value if isinstance(value, (list, tuple)) else ([] if value in (None, "") else [value])
        return [_coerce(name, item, v) for v in items]
    raise TypeError(f"no coercion for TrainingConfig.{name}: {kind}")  # pragma: no cover - wire new types here


def coerce_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Each value converted to its ``TrainingConfig`` field's declared type (see ``_coerce``)."""
    hints = get_type_hints(TrainingConfig)
    return {key: _coerce(key, hints[key], value) for key, value in data.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path} cannot be parsed: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field names to values")
    return data


def field_defaults() -> dict[str, Any]:
    out = {}
    for f in fields(TrainingConfig):
        out[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    return out


DEFAULT_YAML_HEADER = (
    "# Defaults of every TrainingConfig field, with its help. Generated from higgs_train/config.py: after changing a\n"
    "# field, run `python scripts/write_default_yaml.py`. Copy it as a --config FILE; precedence: these < --config FILE\n"
    "# < command-line flags.\n"
)


def default_yaml() -> str:
    """The text of ``configs/default.yaml``: each field's help as a comment over its default, in field order.

    Generated rather than written by hand so that the YAML a user copies never disagrees with the defaults the code
    runs with; YAML-quoted by ``yaml.safe_dump`` so that ``TrainingConfig.load`` reads every value back unchanged.
    """
    defaults = field_defaults()
    parts = [DEFAULT_YAML_HEADER]
    for f in fields(TrainingConfig):
        parts.append(f"# {f.metadata['help']}\n")
        parts.append(yaml.safe_dump({f.name: defaults[f.name]}, sort_keys=False, width=1 << 20, allow_unicode=True))
    return "".join(parts)
