"""User paths made absolute in the driver, before anything runs on Ray.

Ray workers (Train workers, Data actors, Tune trials) run in their own working directory (a Ray session folder),
so a relative ``--output_dir outputs/my-voice`` read by a worker lands somewhere under Ray's temp folder and the
user never finds it. Every driver therefore resolves the paths a user gives against *its* working directory once,
here, and hands only absolute paths on. URIs (``s3://``, ``file://``...), hub ids and the ``embedded`` stack are
left as they are; a tracking URI's local path (``sqlite:///outputs/x.db``) is made absolute too.
"""

from __future__ import annotations

from pathlib import Path

from higgs_train.config import TrainingConfig
from higgs_train.storage import is_uri
from higgs_train.tracking.store import absolute_tracking_uri

# TrainingConfig fields that always name a local file or folder (or a URI, left alone).
PATH_FIELDS = (
    "train_data",
    "val_data",
    "audio_base_path",
    "cache_dir",
    "storage_path",
    "output_dir",
    "resume_from",
    "create_sample_data",
)
# Fields that name a local directory *or* a hub id (``org/name``) or ``embedded``.
MODEL_FIELDS = ("model_path", "audio_tokenizer_path", "tokenizer_path")


def absolute_path(value: str) -> str:
    """``value`` as an absolute local path; empty values and URIs unchanged."""
    if not value or is_uri(value):
        return value
    return str(Path(value).expanduser().resolve())


def absolute_model_ref(value: str | None) -> str | None:
    """A model reference: an existing local path (or one written like a path) becomes absolute; ``embedded``, hub
    ids and URIs stay. ``org/name`` that does not exist locally is a hub id, as for ``from_pretrained``."""
    if not value or value == "embedded" or is_uri(value):
        return value
    path = Path(value).expanduser()
    if path.exists() or value.startswith(("/", "./", "../", "~")):
        return str(path.resolve())
    return value


def resolve_user_paths(config: TrainingConfig) -> TrainingConfig:
    """The same config with every user path absolute (see the module docstring). Idempotent."""
    changes = {name: absolute_path(getattr(config, name)) for name in PATH_FIELDS}
    changes.update({name: absolute_model_ref(getattr(config, name)) or "" for name in MODEL_FIELDS})
    changes["mlflow_tracking_uri"] = absolute_tracking_uri(config.mlflow_tracking_uri)  # sqlite:///rel.db too
    changed = {k: v for k, v in changes.items() if v != getattr(config, k)}
    return config.replace(**changed) if changed else config


def missing_model_refs(refs: dict[str, str | None]) -> list[str]:
    """``--flag VALUE`` for each model reference (after ``absolute_model_ref``) written as a local path that does not
    exist: checked by the commands before anything loads, so a typo is one line instead of a hub lookup's
    traceback. ``embedded``, hub ids (``org/name``) and URIs are not paths and are never listed."""
    return [
        f"--{flag} {value}"
        for flag, value in refs.items()
        if value
        and value != "embedded"
        and not is_uri(value)
        and Path(value).is_absolute()
        and not Path(value).exists()
    ]
