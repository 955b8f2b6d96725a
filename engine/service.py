"""The dpdeck daemon as a process: `python -m engine.service` (what `ensure_daemon` and
`dpdeck daemon start --foreground` run).

The job daemon (engine/jobs/daemon.py) with the model download supervisor (engine/models/supervisor.py)
plugged in. Composed here, above both: engine.models sends its requests through engine.jobs, so
engine.jobs must not import engine.models back.
"""

from __future__ import annotations

import sys

from engine.jobs import daemon
from engine.models.supervisor import DownloadSupervisor


def main() -> int:
    return daemon.main(downloads=DownloadSupervisor)


if __name__ == "__main__":
    sys.exit(main())
