"""Ray Tune sweeps over the training job: one ``TorchTrainer`` per trial, one shared token cache, one MLflow parent.

Why this shape:

* **Function trainable.** Under Train V2 (the default in Ray 2.60) a trainer is no longer a Tune trainable, so
  ``Tuner(TorchTrainer)`` fails. Each trial runs ``run_trial``, which builds and fits its own ``TorchTrainer``; a
  ``TuneReportCallback`` in that trainer's ``RunConfig`` forwards the rank-0 reports to Tune.
* **Caches built once, before the Tuner.** The driver builds (or finds) the token caches with ``driver.prepare``
  and hands every trial the cache root and keys, so an N-trial sweep encodes each audio file once, not N times,
  and no Ray Data actor competes with the trials for CPUs.
* **Only validation reports reach Tune.** ASHA compares ``val_loss`` at step milestones. The trainer also reports
  training-only steps, which lack ``val_loss`` and would fail Tune's strict metric check (and a carried-forward,
  stale ``val_loss`` would mislead ASHA). Per-step training metrics still reach MLflow from the worker.
* **No rung at a trial's last step.** ASHA's milestones stop below the last step, and ``stop_last_trials=False``,
  so a trial that reached its end is never killed while it writes its adapter and closes its MLflow run.
* **Resources.** A trial holds ``cpus_per_trial`` for its (idle) function plus its training workers' CPUs.
  Concurrency defaults to how many whole trials the cluster fits. Running more is allowed only while every
  concurrent trial function plus one trial's workers still fit: otherwise the functions could hold every CPU while
  none of their workers can start, which deadlocks.
* **Stopped trials give their workers' CPUs back.** ASHA stops a trial by killing its function actor; the trial's
  ``TorchTrainer`` controller and workers die with it, but their placement group belongs to the job. Train V2's
  own cleaner looks the dead controller up through the State API, which needs the dashboard (off for local runs)
  and one Ray instance per host. So each trial's rank-0 worker registers its placement group with a driver-owned
  registry, and a Tune callback removes whatever a finished trial left. Without it every early stop would keep
  its training CPUs (or GPUs) reserved until the sweep ends, and a few stops deadlock a small cluster.
* **MLflow.** The sweep is a parent run; each trial function creates its child run before starting its trainer and
  hands the id to the rank-0 worker, as the training job does. Trials reach MLflow only through the sweep's relay
  actor on the driver's node (``driver.tracker_relay``), so the default SQLite store on the driver's disk serves a
  multi-node sweep too. The driver closes children that ASHA killed and adds each trial's final figures, so
  children compare side by side in the UI.

Modules: ``space`` (search spaces and search algorithms), ``resources`` (trial resources, ASHA), ``trial`` (the
function trainable), ``results`` (trial table, best trial), ``sweep`` (the driver). The command
line is ``higgs_train.commands.tune``.
"""
