"""What a user reads on the console: one progress line per logged step, a final summary, and Ray kept quiet.

Ray's own output (Ray Data's progress dumps every few seconds, execution plans, Train controller internals) made up
about half of the default job's console while the job itself printed no training progress at all. By default the
drivers therefore keep Ray's Python loggers at WARNING, in the driver and (through ``ray.LoggingConfig``) in every
worker, and turn Ray Data's progress reporting off; ``--verbose`` restores all of it.

The progress line is printed (not logged) by the rank-0 training worker (``emit``): Ray forwards a worker's stdout
to the driver whatever the workers' log level is.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")
# Loggers whose WARNING/INFO lines say nothing a user can act on, raised to ERROR by default: the token-auth notice
# that every ``ray.init`` prints ("Token authentication is enabled for this Ray cluster..."), Ray Data's "Progress
# bars disabled" (we disabled them), MLflow's "Creating initial MLflow database tables" on a new store.
QUIET_LOGGERS = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.progress",
    "mlflow.store.db.utils",
    "alembic",
)
# Library warnings printed by every process that loads the audio tokenizer (upstream's descript codec calls the
# deprecated ``weight_norm``): ``warnings`` filter specs, for this process and (``PYTHONWARNINGS``) Ray's workers.
QUIET_WARNINGS = ("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning",)


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
    # The raylet's advice when fractional CPUs (a sweep's 0.25-CPU trial functions) start many worker processes:
    # expected by design here, and printed with a dedup notice on every sweep.
    re.compile(r"PYTHON worker processes have been started on node"),
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

    Ray offers no public hook for this; the forwarding handler of ``ray._private.worker`` and its printer (which
    also prints the raylet's warnings) are wrapped, and if that private API ever changes the logs are simply left
    unfiltered (returns False)."""
    if verbose:
        return False
    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        printer = ray_worker.print_to_stdstream

        def forward(data: dict[str, Any], ignore_prefix: bool = ignore_prefix) -> None:
            lines = forwarded_lines(data)
            if lines:
                printer({**data, "lines": lines}, ignore_prefix=ignore_prefix)

        if not getattr(printer, "filtered", False):  # the raylet's warnings reach it directly (listen_error_messages)
            forward.filtered = True  # type: ignore[attr-defined]
            ray_worker.print_to_stdstream = forward
        if "ray_print_logs" not in [name for name, _ in dispatcher.handlers]:  # log_to_driver=False
            return False
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", forward)
        return True
    except (AttributeError, ImportError, KeyError, TypeError, ValueError):
        return False


def worker_env(verbose: bool) -> dict[str, str]:
    """Environment for Ray's worker processes that keeps them as quiet as the driver (empty with ``verbose``).

    Not here: the ``core_worker.cc`` ERROR line ("Actor ... has constructor arguments in the object store and
    max_restarts > 0", ray-project/ray#53727) that the driver's C++ core worker writes straight to its stderr when
    Ray Data starts an actor pool (Ray Data itself puts the actors' constructor in the object store). No Python hook
    reaches it; ``RAY_BACKEND_LOG_LEVEL=fatal`` hides it but makes every Ray process print a "Set ray log level"
    line instead, and ``max_restarts=0`` would give up restarting a preprocessing actor that dies.
    """
    if verbose:
        return {}
    return {"PYTHONWARNINGS": ",".join(filter(None, (os.environ.get("PYTHONWARNINGS", ""), *QUIET_WARNINGS)))}


def quiet_warnings(verbose: bool) -> None:
    """This process's share of ``QUIET_WARNINGS`` (the driver loads the audio tokenizer too)."""
    if verbose:
        return
    for spec in QUIET_WARNINGS:
        action, message, category = spec.split(":")[:3]
        warnings.filterwarnings(action, message=re.escape(message), category=getattr(builtins, category))


def quiet_libraries(verbose: bool) -> None:
    """``QUIET_LOGGERS`` at ERROR and ``QUIET_WARNINGS`` off in this process, unless ``verbose``; drivers call it
    first thing (the MLflow store opens before Ray starts)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    quiet_warnings(verbose)


def quiet_ray_logs(verbose: bool) -> None:
    """Driver side: Ray's loggers at WARNING and no Ray Data progress dumps, unless ``verbose``."""
    level = ray_log_level(verbose)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    quiet_libraries(verbose)
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


@contextlib.contextmanager
def quiet_tune_output(verbose: bool) -> Iterator[None]:
    """Tune's console during ``Tuner.fit``: nothing of its own unless ``verbose`` (the sweep prints one line per trial
    result itself). Tune's new output engine prints its experiment box and result paths at every verbosity; its
    legacy reporter (``RAY_AIR_NEW_OUTPUT=0``, read by ``ray.tune`` at fit time) at verbose 0 prints nothing. A value
    the user set wins."""
    if verbose or "RAY_AIR_NEW_OUTPUT" in os.environ:
        yield
        return
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


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
    """A ``RateLine`` for a stage whose results the driver counts itself (the data builder's Ray stage iterates its
    actors' outputs), shown at most once every ``every_seconds`` and always at the end: the token cache's actors
    report through ``RayProgress`` instead, since their rows never pass the driver."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "files",
        every_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = RateLine(label, total, unit, clock)
        self.every = every_seconds
        self.last_shown: float | None = None

    def line(self, done: int) -> str:
        return self.rate.line(done)

    def update(self, done: int) -> str | None:
        """The line to show now, or None when the last one is recent (the final count is always shown)."""
        now = self.rate.clock()
        if done < self.rate.total and self.last_shown is not None and now - self.last_shown < self.every:
            return None
        self.last_shown = now
        return self.line(done)


class RateLine:
    """Formats ``token cache (train): 1200/20000 rows (6%) | 3.1 rows/s | ETA 1h41m`` for a stage that runs on Ray
    while the driver waits (the token cache's preprocessing actors, the data builder's per-file actors).

    The rate counts from the stage's start, so the actors' model loading is spread over the stage, as
    ``ProgressLine`` spreads the first step's."""

    def __init__(self, label: str, total: int, unit: str = "rows", clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.started = clock()

    def line(self, done: int) -> str:
        elapsed = self.clock() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        tail = f"done in {_duration(elapsed)}" if done >= self.total else f"ETA {_duration(eta)}"
        return f"{self.label}: {done}/{self.total} {self.unit}{share} | {rate:.1f} {self.unit}/s | {tail}"


class _Counter:
    """A zero-CPU actor the stage's workers tell how many items they finished (``add.remote(n)``, never awaited)."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count

    def value(self) -> int:
        return self.done


class RayProgress:
    """A progress line in the driver's console for work done by Ray actors (Ray Data's own bars are off by default,
    see the module docstring, and would show blocks, not rows)::

        with RayProgress("token cache (train)", total_rows) as progress:
            dataset.map_batches(Actor, fn_constructor_kwargs={"progress": progress.counter, ...}).materialize()
        # in the actor, after each batch: if progress is not None: progress.add.remote(len(batch))

    A driver thread polls the counter and prints a ``RateLine`` when the count moved and ``every_s`` passed since the
    last line, and once at the end; so a long stage prints a line every ``every_s`` seconds, a short one two or three.
    """

    def __init__(self, label: str, total: int, unit: str = "rows", every_s: float = 10.0, poll_s: float = 1.0) -> None:
        self.rate = RateLine(label, total, unit)
        self.every_s, self.poll_s = every_s, poll_s
        self.counter: Any = None
        self._stop = None
        self._thread = None
        self._shown = (0, 0.0)

    def __enter__(self) -> RayProgress:
        import ray

        self.counter = ray.remote(num_cpus=0)(_Counter).remote()
        self.rate.started = self.rate.clock()
        self._shown = (0, self.rate.started)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="ray-progress", daemon=True)
        self._thread.start()
        return self

    def _count(self) -> int | None:
        import ray

        try:
            return int(ray.get(self.counter.value.remote(), timeout=30))
        except Exception:  # the line is a courtesy: a busy or gone actor never fails the stage
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            done = self._count()
            shown, at = self._shown
            if done is not None and done != shown and self.rate.clock() - at >= self.every_s:
                emit(self.rate.line(done))
                self._shown = (done, self.rate.clock())

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        if exc_type is None:
            done = self._count()
            emit(self.rate.line(self.rate.total if done is None else done))
        with contextlib.suppress(Exception):  # already gone with its job: nothing to free
            ray.kill(self.counter)
