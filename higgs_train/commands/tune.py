"""``ray_jobs/tune.py``: a Ray Tune sweep over the training job, with train.py's flags plus one per
``SweepSettings`` field."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from typing import Any

from higgs_train.commands.shared_flags import ConfigFlagParser, training_config
from higgs_train.config import TrainingConfig
from higgs_train.data.preflight import DataSetupError, preflight
from higgs_train.driver.cluster import ClusterResourcesError
from higgs_train.paths import resolve_user_paths
from higgs_train.tracking.store import TrackingError
from higgs_train.tune.space import SweepSettings, load_search_space, search_space_path


def build_sweep_parser() -> ConfigFlagParser:
    """The flags of ``ray_jobs/tune.py``: train.py's plus one per ``SweepSettings`` field."""
    return ConfigFlagParser(
        [TrainingConfig, SweepSettings],
        prog="ray_jobs/tune.py",
        description="Ray Tune sweep (ASHA on --checkpoint_metric: val_loss, sim or wer) over LoRA and loss settings.",
    )


def sweep_config_from_args(argv: list[str] | None = None) -> tuple[TrainingConfig, Any]:
    """Training config (defaults < --config file < flags, as train.py) and the ``SweepSettings``."""
    config_file, given = build_sweep_parser().parse(argv)
    sweep = {name: given.pop(name) for name in list(given) if name in SweepSettings.__dataclass_fields__}
    return training_config(config_file, given), SweepSettings(**sweep)


def main(argv: list[str] | None = None) -> int:
    """``ray_jobs/tune.py``: a Ray Tune sweep over the training job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        given, settings = sweep_config_from_args(argv)
        settings = replace(settings, search_space=str(search_space_path(settings.search_space).resolve()))
        settings.validate()
        load_search_space(settings.search_space)
        preflight(given)
    except (ValueError, FileNotFoundError) as err:  # DataSetupError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = resolve_user_paths(given)  # trials run in Ray's cwd: absolute paths only
    # Deferred on purpose: the sweep driver imports Ray (seconds); a refused flag or data set does not pay for it.
    from higgs_train.tune.sweep import run_sweep

    try:
        result = run_sweep(config, settings)
    except (ClusterResourcesError, DataSetupError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.table())
    print(result.summary())
    return 0
