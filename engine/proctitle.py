"""Process titles: what `ps`, `htop`, `pgrep dpdeck` and `nvidia-smi` show for dpdeck's own processes.

Without them every process reads `python -m engine.service`, `python -m engine.jobs.shim ...`, and on a rented
GPU box the user looks for "dpdeck". setproctitle rewrites the command line (/proc/PID/cmdline) and the short
name (/proc/PID/comm, 15 bytes).

The environment is left alone (SPT_NOENV): setproctitle would otherwise grow the title over the environment
block, and /proc/PID/environ is where a job's processes carry their marker (engine.jobs.procs). The title is
then cut to the length of the original command line, so launchers give the daemon its state dir as an
argument (room for the title, and a command line that already says which home it serves).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# kind -> the title's pattern (fields: home, job, rank, id)
TITLES = {
    "daemon": "dpdeck daemon ({home})",
    "shim": "dpdeck shim job {job}",
    "download": "dpdeck download {id}",
    "train": "dpdeck train job {job} rank {rank}",
}
# kind -> what the command line holds where no title was set (setproctitle missing, or started by an older dpdeck)
MODULES = {
    "daemon": "engine.service",
    "shim": "engine.jobs.shim",
    "download": "engine.models.worker",
    "train": "engine.trainer",
}


def title_for(kind: str, **fields: object) -> str:
    if kind not in TITLES:
        raise ValueError(f"no process title for {kind!r}: one of {', '.join(TITLES)}")
    return TITLES[kind].format(**fields)


def set_title(kind: str, **fields: object) -> str | None:
    """Set this process's title; the title, or None where setproctitle is not installed."""
    title = title_for(kind, **fields)
    os.environ.setdefault("SPT_NOENV", "1")  # read by setproctitle when it first moves argv
    try:
        import setproctitle
    except ImportError:  # a source checkout without the dependency: the plain command line stays
        return None
    setproctitle.setproctitle(title)
    return title


def is_kind(cmdline: Sequence[str], kind: str) -> bool:
    """Whether a process's command line (psutil's cmdline()) is a dpdeck process of `kind`, titled or not."""
    joined = " ".join(cmdline)
    return joined.startswith(TITLES[kind].split("{", 1)[0]) or MODULES[kind] in joined
