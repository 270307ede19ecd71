"""A fleet for tests: TorchServe replicas on free loopback ports behind the real gateway, tended by the real
keeper process, started the way ``make serve REPLICAS=N`` starts one (``deepfake_ops.fleet.start``)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from deepfake_ops import fleet
from deepfake_ops.gateway import Gateway
from deepfake_ops.gateway_keys import GatewayKeys
from deepfake_ops.replicas import FleetLayout, ReplicaSpec
from deepfake_ops.torchserve import TorchServeInstance, read_keys

from . import MODEL_NAME, OCTET


@dataclass
class LiveFleet:
    layout: FleetLayout
    keeper: subprocess.Popen[bytes]

    @classmethod
    def start(cls, root: Path, model_store: Path, replicas: int, **options: Any) -> LiveFleet:
        layout = FleetLayout.plan(root, replicas, free_ports=True, model_store=model_store, **options)
        return cls(layout, fleet.start(layout))

    def stop(self) -> None:
        fleet.stop(self.layout)

    def leftovers(self) -> list[str]:
        """What still runs of the fleet: the keeper, nginx, or a replica's TorchServe."""
        running = [] if fleet.keeper_pid(self.layout) is None else ["keeper"]
        running += [] if Gateway(self.layout.gateway_dir).pid() is None else ["nginx"]
        return running + [spec.name for spec in self.layout.replicas if self.instance(spec.name).pid() is not None]

    @property
    def url(self) -> str:
        return self.layout.gateway_url

    @property
    def keys(self) -> GatewayKeys:
        return GatewayKeys(self.layout.key_file)

    def spec(self, name: str) -> ReplicaSpec:
        return next(spec for spec in self.layout.replicas if spec.name == name)

    def instance(self, name: str) -> TorchServeInstance:
        return self.layout.instance(self.spec(name))

    def torchserve_keys(self) -> dict[str, dict[str, str]]:
        """Every replica's current TorchServe keys (inference, management, API)."""
        return {spec.name: read_keys(self.instance(spec.name).key_file) for spec in self.layout.replicas}

    def report(self) -> dict[str, Any]:
        return fleet.read_report(self.layout) or {"replicas": {}}

    def replica_state(self, name: str) -> dict[str, Any]:
        return self.report()["replicas"][name]

    def wait_until(self, predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert self.keeper.poll() is None, "the keeper exited"
            assert time.monotonic() < deadline, f"{what} not after {timeout_s:.0f} s: {self.report()}"
            time.sleep(0.3)

    def renew(self) -> None:
        """What `deepfake-fleet renew` does: ask the keeper to renew every replica's keys now."""
        self.keeper.send_signal(signal.SIGUSR1)

    def score(self, key: str | None, body: bytes, headers: dict[str, str] | None = None,
              path: str = f"/predictions/{MODEL_NAME}") -> requests.Response:
        sent = {**OCTET, **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return requests.post(self.url + path, data=body, headers=sent, timeout=180)

    def versions_by_replica(self, key: str, body: bytes, replicas: int, at_most: int = 60) -> dict[str, set[str]]:
        """Score through the gateway until every replica answered (or ``at_most`` requests): the versions each
        replica answered with. Every answer must be a 200."""
        seen: dict[str, set[str]] = {}
        for _ in range(at_most):
            answer = self.score(key, body)
            assert answer.status_code == 200, answer.text
            seen.setdefault(answer.headers["X-Deepfake-Replica"], set()).add(answer.json()["model"]["version"])
            if len(seen) == replicas:
                break
        return seen


def access_log(fleet_: LiveFleet) -> list[dict[str, Any]]:
    path = fleet_.layout.gateway_dir / "logs" / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
