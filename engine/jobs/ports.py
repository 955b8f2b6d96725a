"""Master-port leasing: a port below the kernel's ephemeral range that nothing listens on and that binds."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path

import psutil

DEFAULT_RANGE = (29500, 29999)


def ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(text[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_range(configured: tuple[int, int] | None = None) -> tuple[int, int]:
    low, high = configured or DEFAULT_RANGE
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


def _reservation_dir() -> Path:
    # Machine-wide, not per state dir: two dpdeck daemons (two users' DPDECK_HOMEs) share one set of ports.
    path = Path(tempfile.gettempdir()) / f"dpdeck-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def reserve(port: int) -> int | None:
    """Hold an flock on the port's reservation file (an fd to keep open), or None when another holds it.

    Between our probe and the rank's bind lie seconds; the reservation keeps another dpdeck daemon on this
    machine from picking the same free port in that window. The kernel drops it when the holder dies.
    """
    fd = os.open(_reservation_dir() / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


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
    """Like pick_port, also holding the machine-wide reservation (release it when the job ends)."""
    low, high = port_range(configured)
    listening = listening_ports()
    for port in range(low, high + 1):
        if port in taken or port in listening:
            continue
        fd = reserve(port)
        if fd is None:
            continue
        if bind_probe(port):
            return port, fd
        release(fd)
    raise RuntimeError(f"no free master port in {low}-{high}")
