"""Locust as the load tests run it: headless, in a subprocess (it monkey-patches sockets, so it is never imported
here), with the steady face-photo client of ``loadtests/rollout_locustfile.py``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_ops.paths import REPO

from . import MODEL_NAME

STEADY_LOCUSTFILE = REPO / "loadtests" / "rollout_locustfile.py"
STOP_TIMEOUT_S = 200  # on SIGTERM, users finish the request they are waiting for (none is cut off)


@dataclass
class LoadResult:
    requests: int
    failures: int
    failure_rows: list[dict[str, str]]
    exit_code: int
    served: dict[str, Any]
    """rollout_locustfile's summary: counts per version (and per replica), failures by kind, switches."""


class SteadyLoad:
    """Steady traffic on ``/predictions/MODEL`` from ``users`` clients until :meth:`stop`."""

    def __init__(self, host: str, token: str, folder: Path, users: int = 4, cap_s: int = 900,
                 wait_s: float = 0.3) -> None:
        self.prefix = folder / "steady"
        self.served_file = folder / "served_versions.json"
        self.output = folder / "locust.out"
        env = {**os.environ, "DFD_TOKEN": token, "DFD_MODEL": MODEL_NAME, "DFD_WAIT_S": str(wait_s),
               "DFD_SERVED_VERSIONS_FILE": str(self.served_file)}
        command = [str(Path(sys.executable).parent / "locust"), "-f", str(STEADY_LOCUSTFILE), "--headless",
                   "-u", str(users), "-r", str(users), "-t", f"{cap_s}s", "--host", host,
                   "--csv", str(self.prefix), "--only-summary", "--stop-timeout", str(STOP_TIMEOUT_S)]
        with self.output.open("w") as output:
            self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)

    @property
    def stats_csv(self) -> Path:
        return Path(f"{self.prefix}_stats.csv")

    def counts(self) -> tuple[int, int]:
        """(requests, failures) of the POST row of Locust's stats CSV; (0, 0) before it has one."""
        if not self.stats_csv.exists():
            return 0, 0
        with self.stats_csv.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["Type"] == "POST":
                    return int(row["Request Count"]), int(row["Failure Count"])
        return 0, 0

    def wait_for(self, more: int, timeout_s: float = 120) -> None:
        """Until ``more`` requests beyond the current count were made."""
        target = self.counts()[0] + more
        deadline = time.monotonic() + timeout_s
        while self.counts()[0] < target:
            assert self.process.poll() is None, f"Locust exited early: {self.output.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"fewer than {target} requests after {timeout_s:.0f} s"
            time.sleep(0.5)

    def stop(self) -> LoadResult:
        """SIGTERM (Locust writes its CSV files on the way out) and the run's figures."""
        assert self.process.poll() is None, "Locust stopped before the test was over: raise its cap"
        self.process.send_signal(signal.SIGTERM)
        try:
            exit_code = self.process.wait(timeout=STOP_TIMEOUT_S + 60)
        finally:
            self.kill()
        print(self.output.read_text()[-3000:])
        requests, failures = self.counts()
        with Path(f"{self.prefix}_failures.csv").open(newline="") as handle:
            failure_rows = list(csv.DictReader(handle))
        return LoadResult(requests, failures, failure_rows, exit_code, json.loads(self.served_file.read_text()))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
