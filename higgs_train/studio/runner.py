"""``python -m higgs_train.studio.runner JOB_DIR``: run one Studio job's command and record how it ended.

The Studio server may be stopped or restarted while a job runs; this small process (in its own session) owns the
command instead: it writes the command's output to ``log.txt``, forwards SIGTERM/SIGINT to it (the page's Stop), and
writes ``exit.json`` (return code, stopped or not, the command's own one-line error) when it ends.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from higgs_train.atomic_files import write_atomic
from higgs_train.studio.jobs import JobRecord, error_line, tail


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    record = JobRecord.read(folder)
    stopped = False
    with open(folder / "log.txt", "ab") as log:
        child = subprocess.Popen(record.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

        def forward(signum: int, _frame: object) -> None:
            nonlocal stopped
            stopped = True
            child.send_signal(signal.SIGINT if signum == signal.SIGTERM else signum)  # train.py ends cleanly on ^C

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        try:
            returncode = child.wait(timeout=None)
        finally:
            if child.poll() is None:
                child.kill()

    error = error_line(tail(folder / "log.txt")) if returncode else ""
    if returncode and not error:
        error = f"{Path(record.argv[1]).name if len(record.argv) > 1 else 'the job'} exited with code {returncode}"
    write_atomic(folder / "exit.json", json.dumps({"returncode": returncode, "stopped": stopped, "error": error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
