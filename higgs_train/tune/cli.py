"""Command line of ray_jobs/tune.py: train.py's flags plus the sweep's own."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from higgs_train.config import TrainingConfig, read_config_file
from higgs_train.tune.space import SEARCH_ALGS, SweepSettings, load_search_space, search_space_path
from higgs_train.tune.sweep import run_sweep

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """train.py's flags (generated from TrainingConfig) plus the sweep's own."""
    from higgs_train.cli import build_parser as training_parser

    parser = training_parser()
    parser.prog = "ray_jobs/tune.py"
    parser.description = "Ray Tune sweep (ASHA on val_loss) over LoRA and loss settings of the training job."
    group = parser.add_argument_group("sweep")
    defaults = SweepSettings()
    group.add_argument("--search_space", default=defaults.search_space, help="Search-space YAML.")
    group.add_argument("--num_samples", type=int, default=defaults.num_samples, help="Trials (times any grid).")
    group.add_argument(
        "--max_concurrent_trials",
        type=int,
        default=defaults.max_concurrent_trials,
        help="Trials at once (0: as many as the cluster fits whole: CPUs / (cpus_per_trial + training CPUs)).",
    )
    group.add_argument("--search_alg", choices=SEARCH_ALGS, default=defaults.search_alg, help="Searcher (seeded).")
    group.add_argument(
        "--cpus_per_trial", type=float, default=defaults.cpus_per_trial, help="CPUs of each trial's function."
    )
    group.add_argument(
        "--grace_period", type=int, default=defaults.grace_period, help="ASHA's first rung (0: eval_every_steps)."
    )
    group.add_argument(
        "--reduction_factor", type=float, default=defaults.reduction_factor, help="ASHA's reduction factor."
    )
    return parser


SWEEP_FLAGS = tuple(SweepSettings.__dataclass_fields__)


def args_from_argv(argv: list[str] | None = None) -> tuple[TrainingConfig, SweepSettings]:
    """Training config (defaults < --config file < flags, as train.py) and the sweep settings."""
    args = vars(build_parser().parse_args(argv))
    settings = SweepSettings(**{k: args.pop(k) for k in SWEEP_FLAGS})
    config_file = args.pop("config")
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in args.items() if v is not None})
    return TrainingConfig.from_dict(data), settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dataclasses import replace

    from higgs_train.data.preflight import DataSetupError, preflight
    from higgs_train.driver.cluster import ClusterResourcesError
    from higgs_train.paths import resolve_user_paths

    try:
        given, settings = args_from_argv(argv)
        settings = replace(settings, search_space=str(search_space_path(settings.search_space).resolve()))
        settings.validate()
        load_search_space(settings.search_space)
        preflight(given)
    except (ValueError, FileNotFoundError) as err:  # DataSetupError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = resolve_user_paths(given)  # trials run in Ray's cwd: absolute paths only
    try:
        result = run_sweep(config, settings)
    except (ClusterResourcesError, DataSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
