"""Steady traffic on the default version while a rollout happens: every request must succeed.

    DFD_TOKEN=... locust -f loadtests/rollout_locustfile.py --headless -u 4 -r 4 -t 25s \\
        --host http://127.0.0.1:8080 --csv reports/rollout

Each user posts a real face photo (scikit-image's astronaut.png, 512x512) to ``/predictions/NAME``, the
default version, with a short pause between requests so the CPU stays bounded. An answer counts as a
success only if it is HTTP 200 with a REAL/FAKE verdict and names the version that produced it.

Which version answered is written, when the run ends, to ``DFD_SERVED_VERSIONS_FILE`` (if set): counts
per version, failures by kind, and the moments the answering version changed, which shows that the
promotion and the rollback happened under load. Through the fleet's gateway (``--host`` the gateway,
``DFD_TOKEN`` a gateway key) the counts are also kept per replica (the ``X-Deepfake-Replica`` header).

=============================  ===================================================================
``DFD_TOKEN``                  inference token (``key_file.json``'s ``inference.key``), or a gateway key
``DFD_MODEL``                  model name (default ``deepfake_detector``)
``DFD_WAIT_S``                 mean pause between a user's requests in seconds (default 0.3)
``DFD_TIMEOUT_S``              client timeout per request in seconds (default 180)
``DFD_SERVED_VERSIONS_FILE``   where to write the served-version summary (JSON)
=============================  ===================================================================
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from deepfake_detector.archive import DEFAULT_MODEL_NAME
from deepfake_detector.verdict import Verdict, VerdictError
from deepfake_ops.packaged import ASTRONAUT
from locust import FastHttpUser, between, events, task

MODEL = os.environ.get("DFD_MODEL", DEFAULT_MODEL_NAME)
TOKEN = os.environ.get("DFD_TOKEN", "").strip()
WAIT_S = float(os.environ.get("DFD_WAIT_S", "0.3"))
SERVED_VERSIONS_FILE = os.environ.get("DFD_SERVED_VERSIONS_FILE", "").strip()
TIMEOUT_S = float(os.environ.get("DFD_TIMEOUT_S", "180"))
HEADERS = {"Content-Type": "application/octet-stream"}
if TOKEN:
    HEADERS["Authorization"] = f"Bearer {TOKEN}"


FACE_PHOTO = ASTRONAUT.locate().read_bytes()
SERVED: Counter[str] = Counter()
FAILED: Counter[str] = Counter()
BY_REPLICA: dict[str, Counter[str]] = {}
SWITCHES: list[dict[str, Any]] = []


class SteadyClient(FastHttpUser):
    """One client scoring a face photo on the default version, again and again."""

    wait_time = between(0.5 * WAIT_S, 1.5 * WAIT_S)
    # A request fails if TorchServe answers an error or nothing within this time (it gives up at 120 s).
    network_timeout = connection_timeout = TIMEOUT_S

    @task
    def score_face_photo(self) -> None:
        with self.client.post(f"/predictions/{MODEL}", data=FACE_PHOTO, headers=HEADERS,
                              name=f"/predictions/{MODEL}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                FAILED[f"HTTP {response.status_code}"] += 1
                return
            try:
                version = Verdict.from_json(json.loads(response.content)).model.version
            except (TypeError, ValueError, VerdictError) as error:
                response.failure(f"not a verdict ({error}): {(response.text or '')[:200]}")
                FAILED["not a verdict"] += 1
                return
            response.success()
            if not SWITCHES or SWITCHES[-1]["version"] != version:
                SWITCHES.append({"time": time.time(), "version": version})
            SERVED[version] += 1
            replica = response.headers.get("X-Deepfake-Replica")
            if replica:
                BY_REPLICA.setdefault(replica, Counter())[version] += 1


@events.test_stop.add_listener
def write_served_versions(**_: Any) -> None:
    if SERVED_VERSIONS_FILE:
        summary = {"served": dict(SERVED), "failed": dict(FAILED), "switches": SWITCHES,
                   "by_replica": {name: dict(counts) for name, counts in BY_REPLICA.items()}}
        Path(SERVED_VERSIONS_FILE).write_text(json.dumps(summary))
