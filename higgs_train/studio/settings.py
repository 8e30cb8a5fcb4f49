"""Training settings from the page -> a checked ``TrainingConfig`` file for ``ray_jobs/train.py --config``.

Every value goes through ``TrainingConfig.from_dict`` (types, ranges, unknown names with did-you-mean), the same
check as a config file or a flag; its one-line error is returned with the field it names, for the page to show
next to that field. Path fields must name a file under a root (``data:...`` or ``output:...``); the output folder
is always ``<output_root>/<run name>``, so the run's record lands in the project's store under ``--output_root``.
Settings that are not a training run (``create_sample_data``, ``validate_data_only``) or that would move the
record out of the Studio's sight (``mlflow_tracking_uri``) are refused.
"""

from __future__ import annotations

import json
import re
import time
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from higgs_train.atomic_files import write_atomic
from higgs_train.config import TrainingConfig, check_run_name, field_defaults
from higgs_train.paths import MODEL_FIELDS, PATH_FIELDS
from higgs_train.studio.refusals import StudioRefusal
from higgs_train.studio.roots import PathRefused, Roots
from higgs_train.tune.space import SweepSettings

PRESETS: dict[str, dict[str, Any]] = {
    "quick_test": {"quick_test": True, "num_validation_samples": 1, "validation_sample_max_new_tokens": 64},
    "standard_lora": {"lora_r": 16, "lora_alpha": 32, "num_validation_samples": 2},
    "sweep": {"quick_test": True, "num_validation_samples": 0},  # trials rank by val_loss; samples would only slow
}
# Presets that run ``ray_jobs/tune.py`` instead of ``train.py``: their ``SweepSettings`` defaults.
SWEEP_PRESETS: dict[str, dict[str, Any]] = {"sweep": {"num_samples": 3}}
SWEEP_NOT_SETTABLE = {"search_space": "the sweep searches the project's configs/tune_search_space.yaml; edit it there"}
NOT_SETTABLE = {
    "create_sample_data": "writes sample data and exits; the Studio's Data tab does that",
    "validate_data_only": "validates and exits; build the data set in the Data tab (its report lists every rejection)",
    "mlflow_tracking_uri": "the Studio reads the project's store under --output_root; runs elsewhere would vanish",
    "output_dir": "set by the Studio: <output_root>/<run_name>",
}
_FIELD_IN_ERROR = re.compile(r"TrainingConfig\.(\w+)=|field\(s\): '(\w+)'")


class SettingsError(StudioRefusal):
    """A setting the page must correct; ``field`` names it (empty when the error is not about one field)."""

    status = 422


def field_catalogue() -> list[dict[str, Any]]:
    """Every settable field with its type, default and help text (the Train tab's form)."""
    hints = typing.get_type_hints(TrainingConfig)
    out = []
    for f in fields(TrainingConfig):
        if f.name in NOT_SETTABLE:
            continue
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(hints[f.name], "list")
        out.append({"name": f.name, "type": kind, "default": default, "help": f.metadata.get("help", "")})
    return out


def sweep_catalogue() -> list[dict[str, Any]]:
    """The sweep's own settable fields (``SweepSettings``) with type, default and help: the sweep block of the form."""
    hints = typing.get_type_hints(SweepSettings)
    return [{"name": f.name, "type": {int: "int", float: "float"}.get(hints[f.name], "str"), "default": f.default,
             "help": f.metadata.get("help", "")} for f in fields(SweepSettings) if f.name not in SWEEP_NOT_SETTABLE]  # fmt: skip


def sweep_settings(preset: str, given: Any) -> SweepSettings | None:
    """The checked ``SweepSettings`` when ``preset`` is a sweep (its defaults under ``given``), else None; a sweep
    setting given to a training preset, an unknown one or a bad value is a ``SettingsError`` naming it."""
    if preset not in SWEEP_PRESETS:
        if given:
            raise SettingsError(f"sweep settings need a sweep preset ({', '.join(SWEEP_PRESETS)})", "sweep")
        return None
    if not isinstance(given or {}, dict):
        raise SettingsError("sweep: expected an object of sweep setting names to values", "sweep")
    hints = typing.get_type_hints(SweepSettings)
    values: dict[str, Any] = {}
    for name, value in {**SWEEP_PRESETS[preset], **(given or {})}.items():
        if name in SWEEP_NOT_SETTABLE:
            raise SettingsError(f"{name}: not settable in the Studio ({SWEEP_NOT_SETTABLE[name]})", name)
        if name not in hints:
            raise SettingsError(f"{name}: not a sweep setting (expected one of {', '.join(sorted(hints))})", name)
        kind = hints[name]
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                raise ValueError
            values[name] = kind(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}={value!r} is invalid: expected {kind.__name__}", name) from None
    settings = SweepSettings(**values)
    try:
        settings.validate()
    except ValueError as err:
        found = re.match(r"--(\w+)", str(err))
        raise SettingsError(str(err).splitlines()[0], found.group(1) if found else "sweep") from err
    return settings


def sweep_flags(settings: SweepSettings) -> list[str]:
    """``tune.py`` flags for the settings that differ from ``SweepSettings``' defaults."""
    defaults = SweepSettings()
    return [part for f in fields(SweepSettings) if getattr(settings, f.name) != getattr(defaults, f.name)
            for part in (f"--{f.name}", str(getattr(settings, f.name)))]  # fmt: skip


def _resolve_path(roots: Roots, name: str, value: Any) -> str:
    """``data:rel`` / ``output:rel`` -> an absolute path inside that root; anything else is refused."""
    text = str(value or "").strip()
    if not text or (name in MODEL_FIELDS and text == "embedded"):
        return text
    root, sep, rel = text.partition(":")
    if not sep or root not in ("data", "output"):
        raise SettingsError(f"{name}: give a path under a root as data:<path> or output:<path> (got {text!r})", name)
    try:
        return str(roots.resolve(root, rel, must_exist=name != "storage_path" and name != "cache_dir"))
    except PathRefused as err:
        raise SettingsError(f"{name}: {err}", name) from err


def training_config(roots: Roots, settings: dict[str, Any], preset: str = "") -> tuple[TrainingConfig, str]:
    """``(checked config, run name)`` for the page's settings on top of ``preset``; ``SettingsError`` otherwise."""
    if preset and preset not in PRESETS:
        raise SettingsError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}", "preset")
    if not isinstance(settings, dict):
        raise SettingsError("settings: expected an object of field names to values")
    data = {**PRESETS.get(preset, {}), **settings}
    for name, why in NOT_SETTABLE.items():
        if name in data:
            raise SettingsError(f"{name}: not settable in the Studio ({why})", name)
    for name in (*PATH_FIELDS, *MODEL_FIELDS):
        if name in data:
            data[name] = _resolve_path(roots, name, data[name])
    run_name = str(data.get("run_name") or f"studio-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        check_run_name(run_name)
    except ValueError as err:
        raise SettingsError(str(err), "run_name") from err
    data["run_name"] = run_name
    data["output_dir"] = str(roots.output / run_name)
    try:
        config = TrainingConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0]
        found = _FIELD_IN_ERROR.search(message)
        raise SettingsError(message, next((g for g in found.groups() if g), "") if found else "") from err
    return config, run_name


def write_config(config: TrainingConfig, path: Path) -> Path:
    """The fields that differ from the defaults (and the output folder): what the page set, nothing pinned else."""
    defaults = field_defaults()
    keep = {k: v for k, v in config.to_dict().items() if v != defaults.get(k)}
    keep.update(output_dir=config.output_dir, run_name=config.run_name)
    write_atomic(path, json.dumps(keep, indent=1, sort_keys=True))
    return path
