"""Search spaces: the YAML format, Tune param spaces, quick-test points and search algorithms."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from higgs_train.config import TrainingConfig
from higgs_train.source_tree import PROJECT_DIR
from higgs_train.training.schedule import effective_learning_rate

logger = logging.getLogger(__name__)


TUNE_METRIC = "val_loss"
TUNE_MODE = "min"
TIME_ATTR = "step"
ALPHA_MULTIPLIER = "lora_alpha_multiplier"
LR_MULTIPLIER = "learning_rate_multiplier"
DERIVED = {ALPHA_MULTIPLIER: "lora_alpha", LR_MULTIPLIER: "learning_rate"}
KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "value")
SEARCH_ALGS = ("random", "optuna")
DEFAULT_SEARCH_SPACE = "configs/tune_search_space.yaml"
TRIAL_RESULT_FILE = "trial_result.json"
BEST_DIR = "best"


# --------------------------------------------------------------------------------------------------------------------
# Settings and search space
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSettings:
    """Sweep options that are not TrainingConfig fields (those come from --config and the training flags)."""

    search_space: str = field(default=DEFAULT_SEARCH_SPACE, metadata={"help": "Search-space YAML."})
    num_samples: int = field(default=8, metadata={"help": "Trials (times any grid)."})
    max_concurrent_trials: int = field(
        default=0,
        metadata={
            "help": "Trials at once (0: as many as the cluster fits whole: CPUs / (cpus_per_trial + training CPUs))."
        },
    )
    search_alg: str = field(default="random", metadata={"help": "Searcher (seeded).", "choices": SEARCH_ALGS})
    cpus_per_trial: float = field(default=0.25, metadata={"help": "CPUs of each trial's function."})
    grace_period: int = field(default=0, metadata={"help": "ASHA's first rung (0: eval_every_steps)."})
    reduction_factor: float = field(default=2.0, metadata={"help": "ASHA's reduction factor."})

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"--num_samples={self.num_samples} is invalid: expected an integer >= 1")
        if self.max_concurrent_trials < 0:
            raise ValueError(f"--max_concurrent_trials={self.max_concurrent_trials} is invalid: expected >= 0")
        if self.search_alg not in SEARCH_ALGS:
            raise ValueError(f"--search_alg={self.search_alg!r} is invalid: expected one of {SEARCH_ALGS}")
        if self.search_alg == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ValueError("--search_alg optuna needs the optuna package (pip install optuna), or use random")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"--cpus_per_trial={self.cpus_per_trial} is invalid: expected a number > 0")
        if self.grace_period < 0:
            raise ValueError(f"--grace_period={self.grace_period} is invalid: expected an integer >= 0")
        if self.reduction_factor <= 1:
            raise ValueError(f"--reduction_factor={self.reduction_factor} is invalid: expected a number > 1")


SearchSpec = dict[str, tuple[str, Any]]


def search_space_path(path: str | Path) -> Path:
    """The file itself, or a relative path under the project (so the default works from any working directory)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (PROJECT_DIR / path).exists():
        path = PROJECT_DIR / path
    if not path.exists():
        raise FileNotFoundError(f"search space not found: {path}")
    return path


def load_search_space(path: str | Path) -> SearchSpec:
    """Read and check a search-space YAML (see configs/tune_search_space.yaml for the format).

    Checked up front, naming the entry, so a typo fails before any cluster, cache or MLflow run is started.
    """
    path = search_space_path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"search space {path} must be a non-empty mapping of field -> {{kind: args}}")
    fields = set(TrainingConfig.field_names())
    spec: SearchSpec = {}
    for name, entry in data.items():
        if name not in fields and name not in DERIVED:
            raise ValueError(
                f"search space {path}: {name!r} is neither a TrainingConfig field nor one of {', '.join(DERIVED)}"
            )
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            raise ValueError(f"search space {path}: {name} must be one {{kind: args}} with kind in {KINDS}")
        kind, args = next(iter(entry.items()))
        _check_args(path, name, kind, args)
        spec[name] = (kind, args)
    for derived, field_name in DERIVED.items():
        if derived in spec and field_name in spec:
            raise ValueError(f"search space {path}: give {field_name} or {derived}, not both")
    return spec


def _check_args(path: Path, name: str, kind: str, args: Any) -> None:
    where = f"search space {path}: {name}.{kind}"
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where} needs a non-empty list of values")
    elif kind in ("uniform", "loguniform", "randint"):
        ok = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
        if not ok or not args[0] < args[1]:
            raise ValueError(f"{where} needs [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"{where} needs low > 0")


def to_param_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune domains for the spec."""
    from ray import tune

    makers = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
        "value": lambda a: a,
    }
    return {name: makers[kind](args) for name, (kind, args) in spec.items()}


def quick_test_points(spec: SearchSpec, num_samples: int) -> list[dict[str, Any]]:
    """First trials of a --quick_test sweep: distinct ``lora_r`` values from its ``choice``, in listed order.

    A smoke sweep should cover different ranks, and a test needs to know it will; random draws of 3 from 4 values
    repeat a rank about 60% of the time. The other fields are still drawn (seeded) by the search algorithm.
    """
    kind, values = spec.get("lora_r", ("", None))
    if kind != "choice":
        return []
    return [{"lora_r": v} for v in list(dict.fromkeys(values))[:num_samples]]


def complete_point(spec: SearchSpec, point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with every other entry at a fixed central value (first choice, midpoint, geometric mean, low).

    Ray's ``OptunaSearch`` refuses partial ``points_to_evaluate`` (the random searcher draws the missing fields).
    """
    centre = {
        "choice": lambda a: a[0],
        "grid": lambda a: a[0],
        "uniform": lambda a: (a[0] + a[1]) / 2,
        "loguniform": lambda a: math.sqrt(a[0] * a[1]),
        "randint": lambda a: a[0],
        "value": lambda a: a,
    }
    return {name: point[name] if name in point else centre[kind](args) for name, (kind, args) in spec.items()}


def trial_overrides(base: TrainingConfig, params: dict[str, Any]) -> dict[str, Any]:
    """TrainingConfig values of one trial's drawn params: types coerced; lora_alpha derived from its multiplier
    (times the rank), learning_rate from its multiplier (times the base config's rate, or the model's recommended
    rate when that is 0: ``training.schedule.effective_learning_rate``)."""
    hints = get_type_hints(TrainingConfig)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in DERIVED:
            continue
        kind = hints[name]
        out[name] = kind(value) if kind in (int, float, bool, str) else value
    if ALPHA_MULTIPLIER in params:
        rank = out.get("lora_r", base.lora_r)
        out["lora_alpha"] = max(1, int(round(rank * float(params[ALPHA_MULTIPLIER]))))
    if LR_MULTIPLIER in params:
        out["learning_rate"] = effective_learning_rate(base) * float(params[LR_MULTIPLIER])
    return out


def make_search_alg(name: str, spec: SearchSpec, seed: int, points: list[dict[str, Any]], max_concurrent: int) -> Any:
    """The searcher, seeded so a sweep's draws are reproducible; ``points`` are tried first.

    The concurrency cap is set here, on the searcher: ``TuneConfig.max_concurrent_trials`` is silently ignored for
    ``BasicVariantGenerator`` (a ``SearchGenerator``, not a ``Searcher``), which would start every trial at once.
    """
    if name == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            points_to_evaluate=[complete_point(spec, p) for p in points] or None,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed, max_concurrent=max_concurrent)
