"""What a user reads on the console: one progress line per logged step, a final summary, and Ray kept quiet.

Ray's own output (Ray Data's progress dumps every few seconds, execution plans, Train controller internals) made up
about half of the default job's console while the job itself printed no training progress at all. By default the
drivers therefore keep Ray's Python loggers at WARNING, in the driver and (through ``ray.LoggingConfig``) in every
worker, and turn Ray Data's progress reporting off; ``--verbose`` restores all of it.

The progress line is printed (not logged) by the rank-0 training worker (``emit``): Ray forwards a worker's stdout
to the driver whatever the workers' log level is.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")


def ray_log_level(verbose: bool) -> int:
    return logging.INFO if verbose else logging.WARNING


def ray_logging_config(verbose: bool) -> Any:
    """``ray.LoggingConfig`` for ``ray.init``: the workers' Python log level."""
    import ray

    return ray.LoggingConfig(encoding="TEXT", log_level=logging.getLevelName(ray_log_level(verbose)))


def train_logging_config(verbose: bool) -> Any:
    """``ray.train.LoggingConfig`` for a trainer's ``RunConfig``: Ray Train's controller and worker log level
    ("Checkpoint successfully created", "Reporting training result ..." at INFO)."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=logging.getLevelName(ray_log_level(verbose)))


# Lines Ray forwards from its own actors that say nothing a user can act on. The first repeats every second for the
# whole run when the cluster has no dashboard (Train V2's PlacementGroupCleaner polls the State API, which needs
# one; the sweep's own placement-group release covers what it guards, see README "Resources").
NOISE_PATTERNS = (
    re.compile(r"Failed to query Ray Train Controller actor state"),
    re.compile(r"has constructor arguments in the object store and max_restarts > 0"),
    re.compile(r"\[Gloo\] Rank \d+ is connected to"),
    re.compile(r"Reporting training result \d+: TrainingReport\("),
)
# Actors whose every forwarded line is Ray-internal: the cleaner logs only its own State API failures (a warning
# per second, or a traceback when several Ray instances share a host).
NOISY_ACTORS = ("PlacementGroupCleaner",)


def forwarded_lines(data: dict[str, Any]) -> list[str]:
    """The lines of one batch of forwarded worker output worth showing (see ``NOISE_PATTERNS``, ``NOISY_ACTORS``)."""
    actor = str(data.get("actor_name") or "")
    if any(name in actor for name in NOISY_ACTORS):
        return []
    return [line for line in data.get("lines", []) if not any(p.search(line) for p in NOISE_PATTERNS)]


def filter_forwarded_worker_logs(verbose: bool) -> bool:
    """Drop ``NOISE_PATTERNS`` lines from the worker logs Ray forwards to this driver (unless ``verbose``).

    Ray offers no public hook for this; the forwarding handler of ``ray._private.worker`` is wrapped, and if that
    private API ever changes the logs are simply left unfiltered (returns False)."""
    if verbose:
        return False
    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        printer = ray_worker.print_to_stdstream

        def forward(data: dict[str, Any]) -> None:
            lines = forwarded_lines(data)
            if lines:
                printer({**data, "lines": lines}, ignore_prefix=ignore_prefix)

        if "ray_print_logs" not in [name for name, _ in dispatcher.handlers]:
            return False
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", forward)
        return True
    except (AttributeError, ImportError, KeyError, TypeError, ValueError):
        return False


def quiet_ray_logs(verbose: bool) -> None:
    """Driver side: Ray's loggers at WARNING and no Ray Data progress dumps, unless ``verbose``."""
    level = ray_log_level(verbose)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        from ray.data import DataContext
    except ImportError:  # pragma: no cover - ray[data] is a dependency
        return
    for name in RAY_LOGGERS:  # importing ray.data (re)configures its loggers
        logging.getLogger(name).setLevel(level)
    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = verbose
    detectors = getattr(context, "issue_detectors_config", None)
    if not verbose and detectors is not None and hasattr(detectors, "detectors"):
        detectors.detectors = []  # "uses 1.5GiB per worker" advice, repeated every 30 s, on a smoke-test job


def emit(line: str) -> None:
    """Print one console line. To the process's real stdout: inside a Ray Train worker ``print`` is patched to also
    log through Train's logger, which would show every line twice; a worker's fd 1 is forwarded to the driver."""
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLine:
    """Formats ``step 3/30 | loss 7.123 (text 2.101, audio 6.940) | val 7.001 acc 0.012 | 7512 tok/s | ETA 1m05s``.

    The ETA extrapolates the mean time per step since this process's first step (a resumed run starts counting
    at its resume step, so the model-loading time of the first step is spread over the run)."""

    def __init__(self, total_steps: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_steps = total_steps
        self.clock = clock
        self.started: float | None = None
        self.first_step: int | None = None

    def start(self, step: int) -> None:
        """Call before the first step this process runs (``step`` = steps already done)."""
        self.started, self.first_step = self.clock(), step

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        if self.started is None:
            self.start(step - 1)
        done = step - (self.first_step or 0)
        elapsed = self.clock() - (self.started or self.clock())
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}"]
        loss = metrics.get("train/total_loss")
        if loss is not None:
            parts.append(
                f"loss {loss:.4f} (text {metrics.get('train/text_loss', float('nan')):.4f}, "
                f"audio {metrics.get('train/audio_loss', float('nan')):.4f})"
            )
        if "val_loss" in metrics:
            parts.append(f"val_loss {metrics['val_loss']:.4f} acc {metrics.get('val_audio_accuracy', 0.0):.3f}")
        if "train/tokens_per_second" in metrics:
            parts.append(f"{metrics['train/tokens_per_second']:.0f} tok/s")
        parts.append(f"ETA {_duration(eta) if step < self.total_steps else '0s'}")
        return " | ".join(parts)

    def summary(self, step: int, metrics: Mapping[str, float]) -> str:
        elapsed = self.clock() - (self.started or self.clock())
        shown = [
            f"{k} {metrics[k]:.4f}" for k in ("train/total_loss", "val_loss", "val_audio_accuracy") if k in metrics
        ]
        return f"training done: {step} steps in {_duration(elapsed)}; " + ", ".join(shown)


class CountProgress:
    """``processing audio: 12/32 files | 1.4 files/s | ETA 14s`` for a stage that works through a known number of
    items, at most one line every ``every_seconds`` (and always the last), for the driver's console while Ray's own
    progress bars are off (``quiet_ray_logs``). The rate is the mean since ``start``."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "files",
        every_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.unit, self.every = total, label, unit, every_seconds
        self.clock = clock
        self.started = clock()
        self.last_shown: float | None = None

    def line(self, done: int) -> str:
        elapsed = self.clock() - self.started
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - done) / rate if done and rate > 0 else float("nan")
        shown_rate = f"{rate:.2f}" if math.isfinite(rate) else "?"
        return (
            f"{self.label}: {done}/{self.total} {self.unit} | {shown_rate} {self.unit}/s | "
            f"ETA {_duration(eta) if done < self.total else '0s'}"
        )

    def update(self, done: int) -> str | None:
        """The line to show now, or None when the last one is recent (the final count is always shown)."""
        now = self.clock()
        if done < self.total and self.last_shown is not None and now - self.last_shown < self.every:
            return None
        self.last_shown = now
        return self.line(done)
