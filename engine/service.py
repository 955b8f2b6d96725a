"""The dpdeck daemon as a process: `python -m engine.service [STATE_DIR]` (what `ensure_daemon` and
`dpdeck daemon start --foreground` run).

STATE_DIR, when given, must be the state dir this process resolves (DPDECK_HOME or the default): it is there for
`ps` (and gives the process title `dpdeck daemon (STATE_DIR)` room, engine/proctitle.py), never to choose one.

The job daemon (engine/jobs/daemon.py) with the model download supervisor (engine/models/supervisor.py)
plugged in. Composed here, above both: engine.models sends its requests through engine.jobs, so
engine.jobs must not import engine.models back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.jobs import daemon
from engine.models.supervisor import DownloadSupervisor
from statefiles import paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m engine.service [STATE_DIR]", file=sys.stderr)
        return 2
    if args and Path(args[0]).resolve() != paths.state_dir():
        print(
            f"dpdeck: engine.service was given {args[0]} but its state dir is {paths.state_dir()} "
            "(set DPDECK_HOME to choose it)",
            file=sys.stderr,
        )
        return 2
    return daemon.main(downloads=DownloadSupervisor)


if __name__ == "__main__":
    sys.exit(main())
