"""Free TCP ports for servers started on this machine (tests, benchmarks, a local fleet), none given twice.

A port from ``bind(0)`` is a poor choice for a server started later: it lies in the kernel's ephemeral range,
where any outgoing connection (nginx to a replica, a client to Redis) may take it before the server binds
it, and two calls may return the same port. :func:`free_port` hands out ports from below that range instead,
and records each in a reservation file (``/tmp/deepfake-ports-<uid>.json``, under a lock; a fixed path, so
that processes with their own TMPDIR, such as TorchServe's, share it) with the id of the process that took it,
so that no two processes of one user are given the same port while the first lives. A reservation ends with
its process; a port still bound by someone else is skipped. Where that file cannot be written (a container
without a writable /tmp) the reservations hold within the process only, and a warning says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
LOWEST_PORT = 20000
"""Below this lie the ports the product's own defaults use (8000-8444, 6390, 7070)."""

_IN_THIS_PROCESS: dict[str, int] = {}
"""Every port this process was given, whichever way: held even where the file once could not be written."""
_warned_in_process_only = False


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


def reservation_file() -> Path:
    """Per user: another user's file in sticky /tmp could not be opened (``fs.protected_regular``)."""
    return Path(f"/tmp/deepfake-ports-{os.getuid()}.json")


def free_port(reservations: Path | None = None) -> int:
    """A port that nothing is bound to and that no living process of this user has been given."""
    try:
        with _locked(reservations or reservation_file()) as held:
            port = _reserve(held | _IN_THIS_PROCESS)
            held[str(port)] = os.getpid()
    except OSError as error:
        global _warned_in_process_only
        if not _warned_in_process_only:
            warnings.warn(f"port reservations are held within this process only: {error}", stacklevel=2)
            _warned_in_process_only = True
        port = _reserve(_IN_THIS_PROCESS)
    _IN_THIS_PROCESS[str(port)] = os.getpid()
    return port


def _reserve(held: dict[str, int]) -> int:
    """The first candidate from a random start that is neither in ``held`` nor bound."""
    candidates = candidate_ports()
    start = random.randrange(len(candidates))
    for step in range(len(candidates)):
        port = candidates[(start + step) % len(candidates)]
        if str(port) not in held and _bindable(port):
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
            with contextlib.suppress(OSError, ValueError):  # no file yet, or a torn one: start afresh
                stored = json.loads(reservations.read_text())
                if isinstance(stored, dict):
                    held = {port: pid for port, pid in stored.items() if _alive(pid)}
            yield held
            staged = reservations.with_suffix(f".{os.getpid()}.tmp")
            staged.write_text(json.dumps(held))
            staged.replace(reservations)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: object) -> bool:
    """Whether a reservation's process still runs (0 and negative ids would name process groups)."""
    if type(pid) is not int or pid <= 0:
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
