"""``ray_jobs/train.py``: one flag per ``TrainingConfig`` field (plus ``--config``), then preflight, then the
training driver (or the validate-only driver, or the sample-data writer)."""

from __future__ import annotations

import logging
import sys

from higgs_train.commands.shared_flags import ConfigFlagParser, training_config
from higgs_train.config import TrainingConfig
from higgs_train.data.job_manifests import create_sample_data_at
from higgs_train.data.preflight import DataSetupError, preflight
from higgs_train.driver.cluster import ClusterResourcesError, RunSetupError
from higgs_train.driver.train import JobOutputsMissing, run_training_job
from higgs_train.driver.validate import validate_job
from higgs_train.paths import resolve_user_paths
from higgs_train.tracking.store import TrackingError
from higgs_train.training.checkpoint import CheckpointError


def build_parser() -> ConfigFlagParser:
    """The flags of ``ray_jobs/train.py``: one per ``TrainingConfig`` field, plus ``--config``."""
    return ConfigFlagParser(
        [TrainingConfig],
        prog="ray_jobs/train.py",
        description="LoRA fine-tuning of Higgs-Audio v2 for zero-shot voice cloning, on Ray.",
    )


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the --config file, then the explicitly given flags."""
    return training_config(*build_parser().parse(argv))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        given = config_from_args(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = resolve_user_paths(given)  # Ray workers run in another cwd: hand them absolute paths only
    if config.create_sample_data:
        paths = create_sample_data_at(config.create_sample_data, seed=config.seed)
        print(f"sample data written: train={paths['train']} val={paths['val']} audio root={paths['audio_base_path']}")
        return 0
    try:
        preflight(given)  # before any MLflow run or Ray cluster exists; messages show the paths as typed
    except DataSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.validate_data_only:
        return validate_job(config)
    try:
        result = run_training_job(config)
    except (ClusterResourcesError, RunSetupError, JobOutputsMissing, CheckpointError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
