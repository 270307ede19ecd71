"""The fleet's cluster roles (``deepfake_ops.pod``) without a cluster: no Kubernetes can run here, so each role
renders into a temporary folder and the real nginx checks (``nginx -t``) or runs what it rendered, on free
loopback ports; the gateway role discovers "localhost" (which resolves to 127.0.0.1) as a headless Service's
name would resolve to its pods. TorchServe is never started: the sidecar tends a stand-in (its key file and
the few calls a sidecar makes)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from deepfake_ops.fleet import join_step
from deepfake_ops.gateway import GatewayError, GatewaySettings, js_module, nginx_binary
from deepfake_ops.gateway_keys import GatewayKeys
from deepfake_ops.paths import REPO
from deepfake_ops.pod import GatewayRole, PodError, Sidecar, build_parser, ready, routes_from_urls
from deepfake_ops.ports import free_port
from deepfake_ops.rollout import RolloutHistory
from deepfake_ops.torchserve import ServerRefusal


def _nginx_missing() -> str | None:
    try:
        nginx_binary()
        js_module()
    except GatewayError as error:
        return str(error)
    return None


pytestmark = pytest.mark.skipif(_nginx_missing() is not None, reason=str(_nginx_missing()))
MODEL = "deepfake_detector"


@pytest.fixture
def mounted(tmp_path: Path) -> dict[str, Path]:
    """What the manifest mounts: the keys Secret, the gateway secret, the desired-state ConfigMap."""
    keys = GatewayKeys(tmp_path / "secrets" / "gateway_keys.json")
    keys.add("client-a")
    keys.add("deployer", role="operator")
    secret = tmp_path / "secrets" / "secret"
    secret.write_text("ab" * 32 + "\n")
    history = RolloutHistory(tmp_path / "state" / "rollout_history.json", {MODEL: ["1.0"]}, [], {MODEL: ["1.0"]})
    history.save()
    return {"keys": keys.path, "secret": secret, "history": history.path}


def make_sidecar(tmp_path: Path, mounted: dict[str, Path]) -> Sidecar:
    return Sidecar(tmp_path / "sidecar", tmp_path / "torchserve", mounted["history"], mounted["keys"],
                   mounted["secret"], "deepfake-detector-fleet-7d9c-x2k4p", listen="127.0.0.1",
                   inference_port=free_port(), management_port=free_port(), interval_s=0.1)


def make_gateway(tmp_path: Path, mounted: dict[str, Path], port: int, **options: Any) -> GatewayRole:
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), serve_sidecars=False)
    return GatewayRole(tmp_path / "gateway", "localhost", port, mounted["keys"], mounted["secret"], settings,
                       **options)


def test_the_sidecar_role_renders_one_sidecar_block_nginx_accepts(tmp_path: Path, mounted: dict[str, Path]) -> None:
    sidecar = make_sidecar(tmp_path, mounted)
    sidecar.render(sidecar.routes())
    sidecar.gateway.check()
    servers = sorted(path.name for path in (sidecar.gateway.run_dir / "servers").iterdir())
    assert servers == [f"sidecar-{sidecar.name}.conf"]  # no gateway block in a pod
    block = (sidecar.gateway.run_dir / "servers" / servers[0]).read_text()
    assert f"listen 127.0.0.1:{sidecar.route.sidecar_inference_port};" in block
    assert "proxy_pass http://127.0.0.1:8080;" in block and "proxy_pass http://127.0.0.1:8081;" in block
    secret = sidecar.gateway.run_dir / "gateway_secret"
    assert secret.read_text() == "ab" * 32 and secret.stat().st_mode & 0o777 == 0o600
    assert "ab" * 32 in sidecar.gateway.config.read_text()
    operators = (sidecar.gateway.run_dir / "operator_keys.map").read_text()
    assert "deployer" in operators and "client-a" not in operators


@pytest.mark.parametrize("secret", ["", "short", "has spaces " * 4, 'quote"' * 8])
def test_a_pod_refuses_a_gateway_secret_nginx_could_not_hold(tmp_path: Path, mounted: dict[str, Path],
                                                            secret: str) -> None:
    mounted["secret"].write_text(secret)
    sidecar = make_sidecar(tmp_path, mounted)
    with pytest.raises(PodError, match="gateway secret"):
        sidecar.render(sidecar.routes())


def test_the_gateway_role_renders_every_discovered_pod_and_no_sidecar(tmp_path: Path,
                                                                      mounted: dict[str, Path]) -> None:
    sidecar_port = free_port()
    role = make_gateway(tmp_path, mounted, sidecar_port)
    routes = role.routes()
    assert [(route.name, route.upstream) for route in routes] == [("127-0-0-1", f"127.0.0.1:{sidecar_port}")]
    role.render(routes)
    role.gateway.check()
    assert sorted(path.name for path in (role.gateway.run_dir / "servers").iterdir()) == ["gateway.conf"]
    assert not list((role.gateway.run_dir / "replicas").glob("*.json"))
    upstreams = (role.gateway.run_dir / "upstream_servers.conf").read_text()
    assert f"server 127.0.0.1:{sidecar_port} " in upstreams
    assert "client-a" in (role.gateway.run_dir / "client_keys.map").read_text()


def test_pod_addresses_become_routes_named_after_them() -> None:
    v4, v6 = routes_from_urls(["http://10.1.2.3:8443", "http://fd00:10::7:8443"])
    assert (v4.name, v4.upstream) == ("10-1-2-3", "10.1.2.3:8443")
    assert (v6.name, v6.upstream) == ("fd00-10--7", "[fd00:10::7]:8443")


def test_the_gateway_reloads_only_when_the_pods_or_the_mounted_keys_change(tmp_path: Path,
                                                                         mounted: dict[str, Path]) -> None:
    pods = {"urls": ["http://127.0.0.1:18443", "http://127.0.0.2:18443"]}
    role = make_gateway(tmp_path, mounted, 18443, resolve=lambda service, port: list(pods["urls"]))
    role.start(role.routes())
    try:
        first = role.gateway.config.stat().st_mtime_ns
        assert role.refresh(role.routes()) is False
        assert role.gateway.config.stat().st_mtime_ns == first  # not even re-rendered
        pods["urls"] = list(reversed(pods["urls"]))
        assert role.refresh(role.routes()) is False  # the same set, in another order
        pods["urls"] = ["http://127.0.0.3:18443"]
        assert role.refresh(role.routes()) is True
        assert "127.0.0.3:18443" in (role.gateway.run_dir / "upstream_servers.conf").read_text()
        assert "127.0.0.1:" not in (role.gateway.run_dir / "upstream_servers.conf").read_text()
        pods["urls"] = []  # the Service lists none for a moment: keep the last ones
        assert role.refresh(role.routes()) is False
        GatewayKeys(mounted["keys"]).add("client-b")  # the Secret was updated
        assert role.refresh(role.routes()) is True
        assert "client-b" in (role.gateway.run_dir / "client_keys.map").read_text()
        assert role.gateway.pid() is not None
    finally:
        role.gateway.stop()


def run_ready(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """The readinessProbe's exact command."""
    return subprocess.run([sys.executable, "-m", "deepfake_ops.pod", "ready", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_ready_passes_only_while_the_sidecar_has_its_replica_in_service(tmp_path: Path,
                                                                      mounted: dict[str, Path]) -> None:
    sidecar = make_sidecar(tmp_path, mounted)
    run_dir = sidecar.gateway.run_dir
    assert ready(run_dir) == (False, f"no sidecar report in {run_dir}: the sidecar has not started")
    sidecar.publish()
    sidecar.start(sidecar.routes())
    try:
        sidecar.report()
        healthy, detail = ready(run_dir)
        assert not healthy and "starting" in detail  # published out of service
        sidecar.set_phase("in_service", None)
        sidecar.publish()
        sidecar.report()
        probe = run_ready(run_dir)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert json.loads(sidecar.gateway.state_file(sidecar.name).read_text())["in_service"] is True
        assert ready(run_dir, max_age_s=-1)[0] is False  # a sidecar that stopped reporting is not ready
        sidecar.set_phase("draining", "renewing its TorchServe keys")
        sidecar.publish()
        sidecar.report()
        assert run_ready(run_dir).returncode == 1
    finally:
        sidecar.gateway.stop()
    sidecar.set_phase("in_service", None)
    sidecar.publish()
    sidecar.report()
    assert ready(run_dir) == (False, f"{sidecar.name}: its nginx is not running")


class StandInTorchServe:
    """Answers the management calls the join step makes, as TorchServe's API would."""

    def __init__(self, versions: dict[str, list[str]], default: str) -> None:
        self.versions, self.default, self.calls = versions, default, []

    def describe_all(self, model: str) -> list[dict[str, Any]]:
        return [{"modelVersion": version, "workers": [{"status": s} for s in states]}
                for version, states in self.versions.items()]

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return [{"modelVersion": self.default, "workers": [{"status": "READY"}]}]

    def management(self, method: str, path: str, action: str, **options: Any) -> Any:
        self.calls.append((method, path, options.get("params")))
        if method == "POST":
            self.versions[options["params"]["url"].removesuffix(".mar").rsplit("-", 1)[1]] = ["LOADING"]
        elif method == "PUT":
            self.default = path.split("/")[3]
        else:
            raise ServerRefusal(f"{action}: unexpected", 400)


def test_a_pod_joins_once_it_serves_the_desired_state(tmp_path: Path) -> None:
    history = RolloutHistory(tmp_path / "rollout_history.json", {MODEL: ["1.0", "2.0"]}, [],
                             {MODEL: ["1.0", "2.0"]})
    history.save()
    server = StandInTorchServe({"1.0": ["READY"]}, "1.0")  # what LOAD_MODELS started it with
    assert join_step(server, MODEL, history.path) is False  # type: ignore[arg-type]
    assert server.calls == [("POST", "/models", {"url": f"{MODEL}-2.0.mar", "synchronous": "false"})]
    assert join_step(server, MODEL, history.path) is False  # type: ignore[arg-type]  # 2.0 still loading
    server.versions["2.0"] = ["READY"]
    assert join_step(server, MODEL, history.path) is True  # type: ignore[arg-type]
    assert server.default == "2.0" and server.calls[-1][:2] == ("PUT", f"/models/{MODEL}/2.0/set-default")


class StandInServer:
    """TorchServe's key file and the few calls a sidecar makes (describe, token renewal, a prediction), on two
    loopback ports: enough to run the sidecar's tending for real without Java."""

    def __init__(self, folder: Path, model: str = MODEL) -> None:
        self.folder, self.model = folder, model
        self.folder.mkdir(parents=True, exist_ok=True)
        self.answering = True
        self.seen_authorization: list[str] = []
        self.write_keys(api="api-key-1", expires_in_s=3600)
        self.servers = [self._serve(self._management), self._serve(self._inference)]

    @property
    def management_port(self) -> int:
        return self.servers[0].server_address[1]

    @property
    def inference_port(self) -> int:
        return self.servers[1].server_address[1]

    def write_keys(self, api: str, expires_in_s: float, generation: int = 1) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + expires_in_s)) + ".5Z"
        data = {kind: {"key": f"{kind}-{generation}", "expiration time": stamp} for kind in ("inference", "management")}
        data["API"] = {"key": api}
        (self.folder / "key_file.json").write_text(json.dumps(data))

    def keys(self) -> dict[str, Any]:
        return json.loads((self.folder / "key_file.json").read_text())

    def _serve(self, answer: Any) -> ThreadingHTTPServer:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def do_POST(self) -> None:
                answer(self)

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _management(self, handler: BaseHTTPRequestHandler) -> None:
        keys, presented = self.keys(), handler.headers.get("Authorization", "")
        if not self.answering:
            self._reply(handler, 500, {"message": "stand-in: not answering"})
        elif handler.path.startswith("/token?type="):
            kind = handler.path.split("=", 1)[1]
            if presented != f"Bearer {keys['API']['key']}":
                self._reply(handler, 400, {"type": "InvalidKeyException", "message": "wrong API key"})
                return
            generation = int(keys[kind]["key"].rsplit("-", 1)[1]) + 1
            keys[kind] = {"key": f"{kind}-{generation}", "expiration time": time.strftime(
                "%Y-%m-%dT%H:%M:%S.5Z", time.gmtime(time.time() + 3600))}
            (self.folder / "key_file.json").write_text(json.dumps(keys))
            self._reply(handler, 200, {"message": "renewed"})
        elif presented != f"Bearer {keys['management']['key']}":
            self._reply(handler, 400, {"type": "InvalidKeyException", "message": "wrong management key"})
        elif handler.path in (f"/models/{self.model}", f"/models/{self.model}/all"):
            self._reply(handler, 200, [{"modelVersion": "1.0", "workers": [{"status": "READY"}]}])
        else:
            self._reply(handler, 404, {"message": "not found"})

    def _inference(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        handler.rfile.read(length)
        self.seen_authorization.append(handler.headers.get("Authorization", ""))
        self._reply(handler, 200, {"label": "real"})

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def test_the_sidecar_joins_renews_keys_drained_and_takes_its_replica_out(tmp_path: Path,
                                                                        mounted: dict[str, Path]) -> None:
    server = StandInServer(tmp_path / "torchserve")
    sidecar = Sidecar(tmp_path / "sidecar", server.folder, mounted["history"], mounted["keys"], mounted["secret"],
                      "pod-a", listen="127.0.0.1", inference_port=free_port(), management_port=free_port(),
                      torchserve_inference_port=server.inference_port,
                      torchserve_management_port=server.management_port)
    url = f"http://127.0.0.1:{sidecar.route.sidecar_inference_port}/predictions/{MODEL}"
    from_gateway = {"X-Deepfake-Gateway": "ab" * 32}
    sidecar.publish()
    sidecar.start(sidecar.routes())
    try:
        assert requests.post(url, data=b"x", headers=from_gateway, timeout=10).status_code == 503  # not joined
        sidecar.tend()
        assert sidecar.state.phase == "in_service", sidecar.state
        answer = requests.post(url, data=b"x", headers=from_gateway, timeout=10)
        assert answer.status_code == 200 and answer.headers["X-Deepfake-Replica"] == "pod-a"
        assert server.seen_authorization[-1] == "Bearer inference-1"  # the sidecar added TorchServe's key
        assert requests.post(url, data=b"x", timeout=10).status_code == 403  # not through the gateway

        server.write_keys(api="api-key-1", expires_in_s=60)  # inside --renew-before: drained, then renewed
        sidecar.tend()
        assert (sidecar.state.phase, sidecar.state.renewals) == ("in_service", 1)
        assert server.keys()["inference"]["key"] == "inference-2"
        requests.post(url, data=b"x", headers=from_gateway, timeout=10)
        assert server.seen_authorization[-1] == "Bearer inference-2"

        server.answering = False  # out after FAILURES_BEFORE_OUT failed health checks
        for _ in range(3):
            sidecar.tend()
        assert sidecar.state.phase == "starting"
        assert requests.post(url, data=b"x", headers=from_gateway, timeout=10).status_code == 503
        server.answering = True
        sidecar.tend()
        assert sidecar.state.phase == "in_service"

        server.write_keys(api="api-key-2", expires_in_s=3600, generation=7)  # TorchServe restarted
        sidecar.tend()
        assert (sidecar.state.phase, sidecar.state.restarts) == ("starting", 1)
        sidecar.tend()
        requests.post(url, data=b"x", headers=from_gateway, timeout=10)
        assert sidecar.state.phase == "in_service" and server.seen_authorization[-1] == "Bearer inference-7"
    finally:
        sidecar.gateway.stop()
        server.close()


def test_the_manifest_runs_the_roles_with_what_they_read_mounted(tmp_path: Path) -> None:
    """deploy/deepfake-fleet.yaml's commands parse as this CLI, and every path they name lies on a volume of the
    right kind: TorchServe's folder shared with its container, the ConfigMap and Secrets read-only."""
    resources = {(doc["kind"], doc["metadata"]["name"]): doc
                 for doc in yaml.safe_load_all((REPO / "deploy" / "deepfake-fleet.yaml").read_text()) if doc}
    state = resources[("ConfigMap", "deepfake-fleet-state")]["data"]["rollout_history.json"]
    (tmp_path / "rollout_history.json").write_text(state)
    assert RolloutHistory.load(tmp_path / "rollout_history.json").desired(MODEL) == ("1.0", ["1.0"])

    def parsed(pod: dict[str, Any], container: dict[str, Any]) -> tuple[argparse.Namespace, dict[str, Any]]:
        assert container["command"][-4:] == ["python", "-m", "deepfake_ops.pod", container["command"][-1]]
        args = [arg.replace("$(POD_NAME)", "pod-a").replace("$(POD_NAMESPACE)", "fleet")
                for arg in container["args"]]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: (mount, volumes[mount["name"]]) for mount in container["volumeMounts"]}
        return build_parser().parse_args([container["command"][-1], *args]), mounts

    def volume_of(mounts: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        (found,) = [mounts[m] for m in mounts if str(path).startswith(m.rstrip("/") + "/") or str(path) == m]
        return found

    detector = resources[("Deployment", "deepfake-detector-fleet")]["spec"]["template"]["spec"]
    (sidecar,) = detector["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # starts before TorchServe, stops after it
    args, mounts = parsed(detector, sidecar)
    assert args.command == "sidecar" and args.name == "pod-a"
    probe = build_parser().parse_args(sidecar["readinessProbe"]["exec"]["command"][3:])
    assert probe.command == "ready" and probe.run_dir == args.run_dir
    assert "emptyDir" in volume_of(mounts, args.run_dir)[1]
    shared, volume = volume_of(mounts, args.torchserve_dir / "key_file.json")
    assert not shared.get("readOnly") and "emptyDir" in volume  # renewing takes a lock file beside it
    (torchserve,) = detector["containers"]
    assert {"name": shared["name"], "mountPath": shared["mountPath"]} in torchserve["volumeMounts"]
    for path, source in ((args.history, {"configMap": {"name": "deepfake-fleet-state"}}),
                         (args.key_file, {"secret": {"secretName": "deepfake-gateway-keys", "defaultMode": 0o440}}),
                         (args.secret_file, {"secret": {"secretName": "deepfake-gateway-secret",
                                                        "defaultMode": 0o440}})):
        mount, volume = volume_of(mounts, path)
        assert mount.get("readOnly") is True and {k: v for k, v in volume.items() if k != "name"} == source, path
    assert ("gateway_keys.json" in resources[("Secret", "deepfake-gateway-keys")]["stringData"]
            and args.key_file.name == "gateway_keys.json")
    assert args.secret_file.name in resources[("Secret", "deepfake-gateway-secret")]["stringData"]

    front = resources[("Deployment", "deepfake-gateway")]["spec"]["template"]["spec"]
    (gateway,) = front["containers"]
    args, mounts = parsed(front, gateway)
    assert args.command == "gateway" and args.discover == "deepfake-detector-replicas.fleet.svc.cluster.local:8443"
    assert "emptyDir" in volume_of(mounts, args.run_dir)[1]
    service = resources[("Service", "deepfake-detector-replicas")]["spec"]
    assert service["clusterIP"] == "None" and {p["port"] for p in service["ports"]} == {8443, 8444}
    assert resources[("Service", "deepfake-gateway")]["spec"]["ports"][0]["port"] == args.port == 8000
