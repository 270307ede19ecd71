"""The gateway's parts without a replica: the hashed key file, the files rendered for nginx (checked by the
real ``nginx -t``; nginx and openssl come with ``make install``), the drift report, how the keeper sees
requests in flight, and replica discovery."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from deepfake_ops.fleet import open_connections
from deepfake_ops.gateway import Gateway, GatewayError, GatewaySettings, ReplicaRoute, ReplicaState
from deepfake_ops.gateway_keys import GatewayKeys, KeyFileError, key_sha256
from deepfake_ops.ports import free_port
from deepfake_ops.replicas import FleetLayout, LayoutError, discover
from deepfake_ops.rollout import drift


def test_the_key_file_keeps_hashes_names_and_rates(tmp_path: Path) -> None:
    keys = GatewayKeys(tmp_path / "gateway_keys.json")
    alice = keys.add("alice", rate_per_s=0.5, burst=3)
    deployer = keys.add("deployer", role="operator")
    assert alice.startswith("dfk_") and len(alice) > 40 and alice != deployer
    text = keys.path.read_text()
    assert alice not in text and deployer not in text and key_sha256(alice) in text
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert [(k.name, k.role, k.active) for k in keys.all()] == [("alice", "client", True),
                                                                 ("deployer", "operator", True)]
    assert keys.all()[0].retry_after_s == 2  # 0.5 requests/s: room again after 2 s

    with pytest.raises(KeyFileError, match="exists"):
        keys.add("alice")
    for name, options in (("bad name", {}), ("x;y", {}), ("ok", {"rate_per_s": 0}), ("ok", {"role": "root"})):
        with pytest.raises(KeyFileError):
            keys.add(name, **options)
    revoked = keys.revoke("alice")
    assert revoked.revoked and not revoked.active and [k.name for k in keys.active()] == ["deployer"]
    assert keys.add("alice") != alice  # a revoked name may be given a new key
    with pytest.raises(KeyFileError, match="no active key"):
        keys.revoke("nobody")


def routes() -> list[ReplicaRoute]:
    return [ReplicaRoute(f"replica-{n}", f"127.0.0.1:{9000 + n}", f"127.0.0.1:{9100 + n}", "127.0.0.1",
                         9200 + n, 9300 + n) for n in (1, 2)]


def test_a_rendered_gateway_passes_nginx_own_check(tmp_path: Path) -> None:
    keys = GatewayKeys(tmp_path / "gateway_keys.json")
    keys.add("alice", rate_per_s=5, burst=10)
    keys.add("bob", rate_per_s=0.5, burst=1)
    keys.add("carol", rate_per_s=5, burst=10)
    keys.add("deployer", role="operator")
    gateway = Gateway(tmp_path / "gateway")
    gateway.render(GatewaySettings(port=18000), routes(), keys.all())
    gateway.check()

    limits = (gateway.run_dir / "limits.conf").read_text()
    assert limits.count("limit_req_zone") == 2  # alice and carol share a tier, each with her own bucket
    assert "rate=5r/s" in limits and "rate=30r/m" in limits and "    bob 2;" in limits
    client_map = (gateway.run_dir / "client_keys.map").read_text()
    assert "deployer" not in client_map and "deployer" in (gateway.run_dir / "operator_keys.map").read_text()
    upstream = (gateway.run_dir / "upstream_servers.conf").read_text()
    assert "127.0.0.1:9201" in upstream and "127.0.0.1:9202" in upstream
    # A replica is out of service until the keeper says otherwise; its state file is private.
    state = gateway.state_file("replica-1")
    assert json.loads(state.read_text())["in_service"] is False and stat.S_IMODE(state.stat().st_mode) == 0o600
    gateway.publish("replica-1", ReplicaState(True, "inference-key", "management-key"))
    assert json.loads(state.read_text()) == {"in_service": True, "inference_key": "inference-key",
                                             "management_key": "management-key"}
    assert "inference-key" not in "".join(p.read_text() for p in (gateway.run_dir / "servers").glob("*.conf"))

    # TLS when a certificate is given (nginx -t loads it: a real self-signed pair).
    certificate = tmp_path / "gateway.pem"
    make_self_signed(certificate)
    gateway.render(GatewaySettings(port=18443, tls_certificate=certificate), routes(), keys.all())
    gateway.check()
    assert "listen 127.0.0.1:18443 ssl" in (gateway.run_dir / "servers" / "gateway.conf").read_text()

    # And it speaks HTTPS with it: a real nginx, started, answers its health check over TLS only.
    gateway.render(GatewaySettings(port=(port := free_port()), tls_certificate=certificate), routes(), keys.all())
    gateway.start()
    try:
        answer = requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(certificate.with_suffix(".crt")),
                              timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        plain = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert plain.status_code == 400 and "HTTPS" in plain.text  # nginx: plain HTTP sent to the HTTPS port
        unkeyed = requests.post(f"https://127.0.0.1:{port}/predictions/x", timeout=10,
                                verify=str(certificate.with_suffix(".crt")))
        assert unkeyed.status_code == 401 and unkeyed.json()["error"] == "unauthorized"
    finally:
        gateway.stop()
    assert gateway.pid() is None and not gateway.workers()

    # A configuration nginx refuses is reported, and never swapped in.
    (gateway.run_dir / "limit_req.conf").write_text("limit_req zone=missing;\n")
    with pytest.raises(GatewayError, match="nginx refused the gateway configuration"):
        gateway.check()


def make_self_signed(path: Path) -> None:
    """A throwaway self-signed certificate and key in one PEM file (openssl, as an operator would)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(path), "-out",
                    str(path.with_suffix(".crt"))], check=True, capture_output=True)
    path.write_text(path.read_text() + path.with_suffix(".crt").read_text())


def test_drift_names_each_difference() -> None:
    def replica(name: str, default: str, versions: list[str], error: str | None = None) -> dict:
        return {"name": name, "server_error": error, "default": default,
                "versions": [{"version": v, "registered": True} for v in versions]}

    fleet = [replica("replica-1", "2.0", ["1.0", "2.0"]), replica("replica-2", "1.0", ["1.0"]),
             replica("replica-3", "2.0", ["1.0", "2.0", "9.0"]), replica("replica-4", "", [], "no answer")]
    assert drift(fleet, "2.0", ["1.0", "2.0"]) == [
        "replica-2: default 1.0, desired 2.0", "replica-2: missing 2.0",
        "replica-3: registered outside the rollout: 9.0", "replica-4: not reachable (no answer)"]
    assert drift(fleet[:1], "2.0", ["1.0", "2.0"]) == []


def test_open_connections_counts_what_a_replica_has_not_answered() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert open_connections(port) == 0
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        assert open_connections(port) == 1
        client.close()
        accepted.close()
    assert open_connections(port) == 0


def test_discovery_resolves_a_service_name_to_sidecar_urls() -> None:
    """A headless Service's name resolves to one address per ready pod; no cluster runs here, so the name is
    localhost, resolved by the real resolver."""
    assert "http://127.0.0.1:8443" in discover("localhost", 8443)
    with pytest.raises(LayoutError, match="cannot resolve"):
        discover("no-such-service.invalid", 8443)


def test_a_fleet_layout_holds_absolute_paths_and_survives_a_round_trip(tmp_path: Path, monkeypatch) -> None:
    """`make serve REPLICAS=N` passes a relative run folder; TorchServe and nginx run in other folders."""
    monkeypatch.chdir(tmp_path)
    layout = FleetLayout.plan(Path(".run/fleet"), 2, model_store=Path("model_store"))
    assert layout.run_dir == tmp_path / ".run" / "fleet" and layout.model_store == tmp_path / "model_store"
    assert layout.instance(layout.replicas[0]).run_dir == tmp_path / ".run" / "fleet" / "replica-1"
    assert [spec.inference_port for spec in layout.replicas] == [8110, 8120]
    layout.save()
    assert FleetLayout.load(Path(".run/fleet")) == layout
