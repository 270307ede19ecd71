"""Ports for local servers: outside the ephemeral range, never the same one twice, not even across processes
(a fleet's replicas were once given one port for a sidecar and the gateway, and served 401s)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from deepfake_ops import ports
from deepfake_ops.ports import NoFreePort, candidate_ports, ephemeral_range, free_port


def test_one_process_never_gets_a_port_twice_nor_one_in_the_ephemeral_range(tmp_path: Path) -> None:
    low, high = ephemeral_range()
    given = [free_port(tmp_path / "reservations.json") for _ in range(300)]
    assert len(set(given)) == len(given)
    assert all(not low <= port <= high for port in given)
    for port in given[:20]:  # each is free to bind, as the server it is for will
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_processes_sharing_the_reservations_get_disjoint_ports(tmp_path: Path) -> None:
    reservations = tmp_path / "reservations.json"
    # Each taker prints its ports and lives until its stdin closes: its reservations hold until then.
    take = ("import sys; from pathlib import Path; from deepfake_ops.ports import free_port; "
            "print(*(free_port(Path(sys.argv[1])) for _ in range(150)), flush=True); sys.stdin.read()")
    takers = [subprocess.Popen([sys.executable, "-c", take, str(reservations)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        taken = [set(map(int, taker.stdout.readline().split())) for taker in takers]  # type: ignore[union-attr]
        mine = {free_port(reservations) for _ in range(50)}  # while the three still live
    finally:
        for taker in takers:
            taker.communicate(timeout=30)
    assert [len(ports_of) for ports_of in taken] == [150, 150, 150]
    everyone = [*taken, mine]
    assert sum(map(len, everyone)) == len(set().union(*everyone))


def test_a_reservation_ends_with_its_process_and_a_bound_port_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as first, socket.socket() as second, socket.socket() as third:
        for probe in (first, second, third):
            probe.bind(("127.0.0.1", 0))
        pool = sorted(probe.getsockname()[1] for probe in (first, second, third))
    monkeypatch.setattr(ports, "candidate_ports", lambda: pool)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = int(finished.stdout)
    reservations = tmp_path / "reservations.json"
    reservations.write_text(json.dumps({str(pool[0]): os.getppid(), str(pool[1]): dead}))
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", pool[2]))
        bound.listen()
        assert free_port(reservations) == pool[1]  # the dead process's port; pool[0] is held, pool[2] is bound
        with pytest.raises(NoFreePort, match="reserved or bound"):
            free_port(reservations)
    assert json.loads(reservations.read_text()) == {str(pool[0]): os.getppid(), str(pool[1]): os.getpid()}


def test_the_candidates_lie_below_the_ephemeral_range_or_above_it(tmp_path: Path) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text("32768\t60999\n")
    assert ephemeral_range(source) == (32768, 60999)
    assert ephemeral_range(tmp_path / "absent") == (32768, 60999)
    assert candidate_ports((32768, 60999)) == range(ports.LOWEST_PORT, 32768)
    assert candidate_ports((1024, 60000)) == range(60001, 65536)
    with pytest.raises(NoFreePort, match="narrow it"):
        candidate_ports((1024, 65000))


def test_without_a_writable_reservation_file_ports_are_still_never_given_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_warned_in_process_only", False)
    not_a_folder = tmp_path / "a-file"  # as unwritable as a read-only temp folder, even for root
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match="within this process only"):
        given = [free_port(not_a_folder / "reservations.json") for _ in range(100)]
    low, high = ephemeral_range()
    assert len(set(given)) == 100 and all(not low <= port <= high for port in given)
