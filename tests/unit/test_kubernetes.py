"""The in-cluster ConfigMap client (``deepfake_ops.kubernetes``). No cluster can run here, so a plain-HTTP
``http.server`` on 127.0.0.1 stands in for the API server: it answers the two calls as the API does (a
ConfigMap object on GET, a JSON merge PATCH of ``data`` with the ``resourceVersion`` check, Status errors)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deepfake_ops.kubernetes import (
    ApiAccess,
    KubernetesError,
    current_namespace,
    read_configmap_entry,
    read_configmap_key,
    write_configmap_key,
)
from deepfake_ops.ports import free_port
from deepfake_ops.rollout import ConfigMapState, RolloutError, RolloutHistory

TOKEN = "service-account-token"
PATH = "/api/v1/namespaces/fleet/configmaps/"


class StandInApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {"deepfake-fleet-state": {
            "metadata": {"name": "deepfake-fleet-state", "resourceVersion": "1"},
            "data": {"rollout_history.json": '{"defaults": {}}', "other": "kept"}}}
        self.forbidden = {"someone-else"}
        self.requests: list[tuple[str, str, str | None]] = []


def _handler(api: StandInApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, message: str) -> None:
            self._reply(code, {"kind": "Status", "status": "Failure", "message": message, "code": code})

        def _target(self) -> str | None:
            api.requests.append((self.command, self.path, self.headers.get("Content-Type")))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._status(401, "Unauthorized")
                return None
            name = self.path.removeprefix(PATH)
            if name in api.forbidden:
                self._status(403, f'configmaps "{name}" is forbidden')
                return None
            if not self.path.startswith(PATH) or name not in api.objects:
                self._status(404, f'configmaps "{name}" not found')
                return None
            return name

        def do_GET(self) -> None:
            name = self._target()
            if name:
                self._reply(200, api.objects[name])

        def do_PATCH(self) -> None:
            name = self._target()
            if not name:
                return
            patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                self._status(415, "unsupported patch type")
                return
            current = api.objects[name]
            wanted = patch.get("metadata", {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                self._status(409, "the object has been modified; please apply your changes to the latest version")
                return
            current["data"].update(patch["data"])
            current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            self._reply(200, current)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[tuple[StandInApi, ApiAccess]]:
    state = StandInApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, ApiAccess(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_key_is_read_and_written_with_a_merge_patch(api: tuple[StandInApi, ApiAccess]) -> None:
    state, access = api
    assert read_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", access) == '{"defaults": {}}'
    _, version = read_configmap_entry("fleet", "deepfake-fleet-state", "rollout_history.json", access)
    new = json.dumps({"defaults": {"deepfake_detector": ["1.0", "2.0"]}})
    assert write_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", new, access, version) == "2"
    assert state.requests[-1] == ("PATCH", PATH + "deepfake-fleet-state", "application/merge-patch+json")
    assert read_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", access) == new
    assert state.objects["deepfake-fleet-state"]["data"]["other"] == "kept"  # the other keys stay


def test_a_write_from_a_stale_read_is_refused(api: tuple[StandInApi, ApiAccess]) -> None:
    _, access = api
    _, version = read_configmap_entry("fleet", "deepfake-fleet-state", "rollout_history.json", access)
    write_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", "{}", access)  # someone else
    with pytest.raises(KubernetesError, match="HTTP 409: ConfigMap fleet/deepfake-fleet-state changed since"):
        write_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", "{}", access, version)


@pytest.mark.parametrize(("name", "key", "token", "expected"), [
    ("missing", "rollout_history.json", TOKEN, "HTTP 404: no ConfigMap fleet/missing: kubectl apply"),
    ("someone-else", "rollout_history.json", TOKEN, "HTTP 403: the service account may not get ConfigMap"),
    ("deepfake-fleet-state", "rollout_history.json", "wrong", "HTTP 401: the API refused the service-account"),
    ("deepfake-fleet-state", "absent.json", TOKEN, "it has no key absent.json (keys: other, rollout_history.json)"),
])
def test_errors_are_one_line_that_say_why(api: tuple[StandInApi, ApiAccess], name: str, key: str, token: str,
                                         expected: str) -> None:
    _, access = api
    with pytest.raises(KubernetesError, match=re.escape(expected)) as raised:
        read_configmap_key("fleet", name, key, ApiAccess(access.url, token, timeout_s=5))
    assert "\n" not in str(raised.value)


def test_an_unreachable_api_and_a_pod_without_a_service_account(tmp_path: Path) -> None:
    with pytest.raises(KubernetesError, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1:\d+"):
        read_configmap_key("fleet", "deepfake-fleet-state", "k", ApiAccess(f"http://127.0.0.1:{free_port()}", TOKEN))
    with pytest.raises(KubernetesError, match="no service-account token"):
        ApiAccess.in_cluster(tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("fleet")
    access = ApiAccess.in_cluster(tmp_path)
    assert (access.url, access.token, access.verify) == ("https://kubernetes.default.svc", TOKEN,
                                                         str(tmp_path / "ca.crt"))
    assert current_namespace(tmp_path) == "fleet"


def test_the_rollout_keeps_a_cluster_s_desired_state_in_the_configmap(api: tuple[StandInApi, ApiAccess]) -> None:
    """``deepfake-rollout --desired-state configmap:NAMESPACE/NAME``: the history is read from and written to the
    ConfigMap's key, and a write made after someone else's is refused, not lost."""
    state, access = api
    where = ConfigMapState("fleet", api=access)
    assert ConfigMapState.parse("configmap:fleet/deepfake-fleet-state") == ConfigMapState("fleet")
    history = RolloutHistory.load(where)
    history.begin("deepfake_detector", "1.0")
    history.want_registered("deepfake_detector", "2.0")
    history.save()
    stored = json.loads(state.objects["deepfake-fleet-state"]["data"]["rollout_history.json"])
    assert stored["defaults"] == {"deepfake_detector": ["1.0"]}
    assert RolloutHistory.load(where).desired("deepfake_detector") == ("1.0", ["1.0", "2.0"])

    mine = RolloutHistory.load(where)
    write_configmap_key("fleet", "deepfake-fleet-state", "rollout_history.json", json.dumps(stored), access)
    mine.defaults["deepfake_detector"].append("2.0")
    with pytest.raises(RolloutError, match=r"changed since.*run the step again"):
        mine.save()
    assert RolloutHistory.load(where).desired("deepfake_detector")[0] == "1.0"
