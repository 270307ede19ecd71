"""Free TCP ports for servers started on this machine (tests, benchmarks, a local fleet), none given twice.

A port from ``bind(0)`` is a poor choice for a server started later: it lies in the kernel's ephemeral range,
where any outgoing connection (nginx to a replica, a client to Redis) may take it before the server binds
it, and two calls may return the same port. :func:`free_port` hands out ports from below that range instead,
and records each in a machine-wide reservation file (under a lock) with the id of the process that took it,
so that no two processes are given the same port while the first lives. A reservation ends with its
process; a port still bound by someone else is skipped. Where that file cannot be written (a container's
read-only temp folder) the reservations hold within the process only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
LOWEST_PORT = 20000
"""Below this lie the ports the product's own defaults use (8000-8444, 6390, 7070)."""
RESERVATIONS = Path(tempfile.gettempdir()) / "deepfake-ports.json"


class NoFreePort(RuntimeError):
    """Every candidate port is reserved or bound."""


def ephemeral_range(source: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default where it cannot be read)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(part) for part in source.read_text().split())
        return low, high
    return DEFAULT_EPHEMERAL_RANGE


def candidate_ports(ephemeral: tuple[int, int] | None = None) -> range:
    """Ports outside the ephemeral range: below it where there is room, else above it."""
    low, high = ephemeral or ephemeral_range()
    if low - LOWEST_PORT >= 1000:
        return range(LOWEST_PORT, low)
    if 65535 - high >= 1000:
        return range(high + 1, 65536)
    raise NoFreePort(f"the ephemeral range {low}-{high} leaves no room for servers' ports; narrow it "
                     f"({EPHEMERAL_RANGE_FILE})")


_IN_THIS_PROCESS: dict[str, int] = {}
"""Reservations where the machine-wide file cannot be written (a read-only temp folder)."""


def free_port(reservations: Path = RESERVATIONS) -> int:
    """A port that nothing is bound to and that no living process on this machine has been given."""
    try:
        with _locked(reservations) as held:
            return _reserve(held)
    except OSError:
        return _reserve(_IN_THIS_PROCESS)


def _reserve(held: dict[str, int]) -> int:
    """The first candidate from a random start that is neither in ``held`` nor bound, added to ``held``."""
    candidates = candidate_ports()
    start = random.randrange(len(candidates))
    for step in range(len(candidates)):
        port = candidates[(start + step) % len(candidates)]
        if str(port) not in held and _bindable(port):
            held[str(port)] = os.getpid()
            return port
    raise NoFreePort(f"all {len(candidates)} ports {candidates[0]}-{candidates[-1]} are reserved or bound")


@contextlib.contextmanager
def _locked(reservations: Path) -> Iterator[dict[str, int]]:
    """The living reservations, under an exclusive lock; what the block adds is written back."""
    reservations.parent.mkdir(parents=True, exist_ok=True)
    with open(reservations.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            held: dict[str, int] = {}
            with contextlib.suppress(OSError, ValueError):
                held = {port: pid for port, pid in json.loads(reservations.read_text()).items() if _alive(pid)}
            yield held
            staged = reservations.with_suffix(f".{os.getpid()}.tmp")
            staged.write_text(json.dumps(held))
            staged.replace(reservations)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _bindable(port: int) -> bool:
    """Nothing listens on the port and no connection holds it (a bind without SO_REUSEADDR would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
