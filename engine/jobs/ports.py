"""Master-port leasing: a port below the kernel's ephemeral range that nothing listens on and that binds."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from pathlib import Path

import psutil

from engine.jobs.lock import try_flock
from statefiles import settings


def ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(text[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_range(configured: tuple[int, int] | None = None) -> tuple[int, int]:
    if configured is None:
        configured_ports = settings.load().ports
        configured = (configured_ports.low, configured_ports.high)
    low, high = configured
    # Ports the kernel hands out as ephemeral source ports can be taken by any outgoing connection.
    high = min(high, ephemeral_low() - 1)
    if low > high:
        raise ValueError(f"port range {low}-{high} is empty after excluding the ephemeral range")
    return low, high


def listening_ports() -> set[int]:
    ports: set[int] = set()
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                ports.add(conn.laddr.port)
    return ports


def bind_probe(port: int) -> bool:
    """True when a fresh SO_REUSEADDR socket can bind the port on IPv4 and IPv6 (TIME_WAIT is harmless)."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            if family == socket.AF_INET6:
                continue  # no IPv6 on this box
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            return False
        finally:
            sock.close()
    return True


def is_free(port: int, listening: set[int] | None = None) -> bool:
    listening = listening_ports() if listening is None else listening
    return port not in listening and bind_probe(port)


class NoFreePort(RuntimeError):
    """Every port of the range is taken right now: the job waits (the message is its wait reason)."""


_problems: dict[str, str] = {}  # refused runtime dirs: path -> why, for `dpdeck doctor`


def _why_not_private(path: Path, exact: bool = True) -> str | None:
    """None when path is a real folder owned by us and private (0700 when exact, else not group/world
    writable), else why it must not be trusted."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by us (uid {os.getuid()})"
    mode = stat.S_IMODE(st.st_mode)
    if (mode != 0o700) if exact else bool(mode & 0o022):
        return f"has mode {mode:04o}, expected 0700"
    return None


def _private_dir(path: Path) -> str | None:
    """Create path 0700 (or accept an existing one that passes the checks); None when usable, else why not."""
    try:
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)  # the umask may have taken bits we need
        finally:
            os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be created: {exc.strerror}"
    return _why_not_private(path)


def _candidates() -> list[Path]:
    found: list[Path] = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        why = _why_not_private(Path(xdg), exact=False)
        if why is None:
            found.append(Path(xdg) / "dpdeck")
        elif os.path.lexists(xdg):
            _problems[xdg] = f"XDG_RUNTIME_DIR {why}"
    found.append(Path(tempfile.gettempdir()) / f"dpdeck-{os.getuid()}")
    # Still one folder for all our processes (reservations stay machine-wide) when /tmp's is planted.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    found.append(Path(cache) / "dpdeck" / f"run-{socket.gethostname()}")
    return found


def runtime_dir() -> Path:
    """Our private per-user runtime folder (port reservations, build lock), owner and mode checked.

    $XDG_RUNTIME_DIR/dpdeck when that is ours, else `<tempdir>/dpdeck-<uid>`; a planted one (symlink, someone
    else's, not 0700) is refused (see runtime_problems) for `~/.cache/dpdeck/run-<host>`, else a fresh folder.
    """
    for path in _candidates():
        if path.parent.name == "dpdeck":  # the one under our home: its parents are ours to make
            with contextlib.suppress(OSError):
                os.makedirs(path.parent, 0o700, exist_ok=True)
        why = _private_dir(path)
        if why is None:
            _problems.pop(str(path), None)
            return path
        _problems[str(path)] = why
    fresh = Path(tempfile.mkdtemp(prefix=f"dpdeck-{os.getuid()}-"))
    _problems["(all)"] = f"using the fresh folder {fresh}: port reservations no longer span our other daemons"
    return fresh


def runtime_problems() -> list[str]:
    """Runtime folders refused since this process started, each with the path and why."""
    return [f"{path} {why}: refused (delete it, or fix its owner/mode: chmod 700)" if path != "(all)" else why
            for path, why in _problems.items()]


def reserve(port: int, directory: Path | None = None) -> int | None:
    """Hold an flock on the port's reservation file (an fd to keep open), or None when another holds it.

    Between our probe and the rank's bind lie seconds; the reservation keeps another dpdeck daemon of ours on
    this machine from picking the same free port in that window. The kernel drops it when the holder dies.
    """
    folder = (directory or runtime_dir()) / "ports"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    try:
        return try_flock(folder / f"{port}.lock")
    except OSError:
        return None  # a symlink (ELOOP) or an unreadable file: not a reservation we can hold


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def pick_port(taken: set[int], configured: tuple[int, int] | None = None) -> int:
    """The first port in the range that no lease holds, nothing listens on, and that binds."""
    port, fd = pick_and_reserve(taken, configured)
    release(fd)
    return port


def pick_and_reserve(taken: set[int], configured: tuple[int, int] | None = None) -> tuple[int, int | None]:
    """Like pick_port, also holding the machine-wide reservation (release it when the job ends).

    Raises NoFreePort when every port is leased, listening or reserved: the caller waits and tries again.
    """
    low, high = port_range(configured)
    listening = listening_ports()
    folder = runtime_dir()
    counts = {"leased": 0, "listening": 0, "reserved": 0, "bind": 0}
    for port in range(low, high + 1):
        if port in taken:
            counts["leased"] += 1
            continue
        if port in listening:
            counts["listening"] += 1
            continue
        fd = reserve(port, folder)
        if fd is None:
            counts["reserved"] += 1
            continue
        if bind_probe(port):
            return port, fd
        counts["bind"] += 1
        release(fd)
    raise NoFreePort(f"waiting for a free master port: {low}-{high} all taken ({_taken_by(counts)})")


def _taken_by(counts: dict[str, int]) -> str:
    words = {"leased": "by dpdeck jobs", "listening": "listening", "reserved": "reserved by another process",
             "bind": "refusing a bind"}
    return ", ".join(f"{n} {words[k]}" for k, n in counts.items() if n) or "the range is empty"
