"""Zero downtime: under continuous Locust load on the default version, promote 2.0 and roll back to 1.0.

Locust runs headless in a subprocess (it monkey-patches sockets, so it is never imported here) against
a real TorchServe on loopback. While it runs: deploy 2.0, promote it (verify, then set-default), let
traffic flow, roll back to 1.0. Locust is then stopped with SIGTERM (it writes its CSV files on the way
out; ``-t`` only caps a run that hangs) and its own CSV must show requests and no failure, while the
versions that answered show the default really moved 1.0 -> 2.0 -> 1.0 under load. Locust's exit code
(1 when any request failed) covers the last second the CSV may not have caught.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from deepfake_ops.paths import REPO
from deepfake_ops.torchserve import TorchServeInstance

from tests.support import MODEL_NAME
from tests.support.archives import golden_store, run_command

LOCUSTFILE = REPO / "loadtests" / "rollout_locustfile.py"


USERS = 4


RUN_TIME_CAP_S = 240


TRAFFIC_BETWEEN_STEPS_S = 4.0


STOP_TIMEOUT_S = 200  # on SIGTERM, users finish the request they are waiting for (none is cut off)


@pytest.fixture(scope="module")
def live(start_server: Any, model_store: Path,
         tmp_path_factory: pytest.TempPathFactory) -> TorchServeInstance:
    store = golden_store(model_store, tmp_path_factory.getbasetemp())
    return start_server(store, [f"{MODEL_NAME}-1.0.mar"])


def locust_requests(stats_csv: Path) -> tuple[int, int]:
    """(requests, failures) of the POST row of Locust's stats CSV; (0, 0) before it has one."""
    if not stats_csv.exists():
        return 0, 0
    with stats_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Type"] == "POST":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0


def wait_for_requests(stats_csv: Path, at_least: int, timeout_s: float, locust: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while locust_requests(stats_csv)[0] < at_least:
        assert locust.poll() is None, "Locust exited early"
        assert time.monotonic() < deadline, f"fewer than {at_least} requests after {timeout_s:.0f} s"
        time.sleep(0.5)


@pytest.mark.server
def test_promote_and_rollback_under_load_fail_no_request(live: TorchServeInstance, tmp_path: Path) -> None:
    prefix = tmp_path / "rollout"
    served_file = tmp_path / "served_versions.json"
    env = {**os.environ, "DFD_TOKEN": live.keys()["inference"], "DFD_MODEL": MODEL_NAME,
           "DFD_SERVED_VERSIONS_FILE": str(served_file)}
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
               "-u", str(USERS), "-r", str(USERS), "-t", f"{RUN_TIME_CAP_S}s", "--host", live.inference_url,
               "--csv", str(prefix), "--only-summary", "--stop-timeout", str(STOP_TIMEOUT_S)]
    with (tmp_path / "locust.out").open("w") as output:
        locust = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
    stats_csv = Path(f"{prefix}_stats.csv")
    try:
        wait_for_requests(stats_csv, 1, 90, locust)
        steps = [("deploy", "2.0"), ("promote", "2.0"), ("rollback",)]
        for step in steps:
            result = run_command("rollout", "--run-dir", str(live.run_dir), *step)
            assert result.returncode == 0, result.stderr
            # let traffic flow on the new default before the next step
            wait_for_requests(stats_csv, locust_requests(stats_csv)[0] + USERS, 120, locust)
            time.sleep(TRAFFIC_BETWEEN_STEPS_S)
        assert locust.poll() is None, "Locust stopped before the rollout was over: raise RUN_TIME_CAP_S"
        locust.send_signal(signal.SIGTERM)
        exit_code = locust.wait(timeout=STOP_TIMEOUT_S + 60)
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()

    print((tmp_path / "locust.out").read_text()[-3000:])
    requests_sent, failures = locust_requests(stats_csv)
    served = json.loads(served_file.read_text())
    print(f"zero-downtime rollout: {requests_sent} requests, {failures} failures; answered by "
          f"{served['served']}; answering version over time: "
          f"{' -> '.join(s['version'] for s in served['switches'])}")
    with Path(f"{prefix}_failures.csv").open(newline="") as handle:
        failure_rows = list(csv.DictReader(handle))
    assert failures == 0 and failure_rows == [], failure_rows
    assert served["failed"] == {}
    assert exit_code == 0  # Locust's own verdict over its final statistics: 1 if any request failed
    assert requests_sent > 0
    # The CSV is rewritten every second; the count taken when the users stopped can only be higher.
    assert sum(served["served"].values()) >= requests_sent
    assert served["served"].get("2.0", 0) > 0 and served["served"].get("1.0", 0) > 0
    assert [s["version"] for s in served["switches"]][:1] == ["1.0"]
    assert [s["version"] for s in served["switches"]][-1] == "1.0"
    assert "2.0" in [s["version"] for s in served["switches"]]
