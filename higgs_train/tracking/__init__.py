"""MLflow tracking for training jobs: one run per job, written from rank 0 only, never fatal after it starts.

Why this shape:

* Embedded by default, one store per project. A job must be trackable with no server: the default store is SQLite
  (MLflow 3.17 refuses plain ``file:`` stores) *next to* the output dir, ``<output_dir>/../mlflow.db`` with artifacts
  in ``<output_dir>/../mlartifacts``, where the token cache already lives: every run of a project
  (``outputs/default``, ``outputs/my-voice``, a sweep in ``outputs/sweep``, a job submitted with
  ``--output_dir "$PWD/outputs/x"``) lands in ``outputs/mlflow.db``, so one ``mlflow ui`` compares them all. A store
  in the folder a command starts from would split submitted jobs off (Ray runs them in a throwaway copy of the
  working directory). ``--mlflow_tracking_uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere; ``off`` tracks nothing.
* Absolute before Ray. Every relative path or ``sqlite:///relative.db`` is made absolute by the driver: a worker
  resolves it in its own Ray session folder, opens another database and finds no run there.
* ``MlflowClient``, not the fluent API. The fluent API keeps a process-global active-run stack and can start
  system-metrics threads; a Ray Train worker (or a test) may hold several trackers, so each tracker owns its run id.
* Fail loudly early, quietly late. A bad URI at ``start`` raises ``TrackingError`` naming the URI, because a run
  silently untracked is worse than no run. After that, a tracking hiccup (server restart, locked DB) only warns:
  losing a metric point must never cost hours of GPU time. Repeated failures switch tracking off for the run, and
  the driver then fails the job at its end (``check_logged``: the adapter is saved, the exit code says the record
  is incomplete) unless the user switched tracking off.

Modules, one concern each: ``store`` (which store: the URI rules, ``TrackingError``), ``probe`` (is a tracking server
up), ``values`` (config and metrics shaped to MLflow's limits), ``run_owner`` (which driver owns a RUNNING run),
``tracker`` (``RunTracker``: one run, written from rank 0), ``runs`` (``find_runs``: reading runs back) and
``loss_curve`` (the PNG a run logs). The package itself exports nothing: import from the module that owns a name.
"""
