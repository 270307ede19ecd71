"""A fleet on loopback: three real TorchServe replicas behind the real gateway (nginx), tended by the keeper.

The fleet is started as ``make serve REPLICAS=3`` starts one (``deepfake_ops.fleet.start``), on free ports,
with TorchServe's own key lifetime (60 minutes), so that the only renewals are the ones a test forces
(``deepfake-fleet renew``: SIGUSR1 to the keeper) and can be counted. Every step of a rollout runs through the
command users run (``deepfake-rollout --fleet``), under Locust load through the gateway with a gateway key.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest
import requests
from deepfake_ops.torchserve import TorchServeClient

from tests.support import MODEL_NAME, OCTET, Media
from tests.support.archives import run_command
from tests.support.fleet import LiveFleet, access_log
from tests.support.locust import SteadyLoad

REPLICAS = 3


@pytest.fixture(scope="module")
def live(rollout_store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fleet")
    started = LiveFleet.start(root, rollout_store, REPLICAS)
    try:
        yield started
    finally:
        started.stop()
    # What `make stop` promises: the keeper, nginx and every replica's process group gone.
    assert started.keeper.poll() is not None and started.leftovers() == []


@pytest.fixture(scope="module")
def client_key(live: LiveFleet) -> str:
    """A key with a rate no test reaches, made with the command, which reloads the running gateway."""
    made = run_command("gateway_keys", "--key-file", str(live.layout.key_file), "add", "load", "--rate", "500",
                       "--burst", "500")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def photo() -> bytes:
    return Media.astronaut.read_bytes()


def rollout(live: LiveFleet, *args: str):
    return run_command("rollout", "--fleet", str(live.layout.run_dir), *args)


def fleet_status(live: LiveFleet) -> tuple[int, dict]:
    result = rollout(live, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_keys_limits_and_what_a_response_never_shows(live: LiveFleet, client_key: str) -> None:
    secrets = [value for keys in live.torchserve_keys().values() for value in keys.values()]
    slow = live.keys.add("slow", rate_per_s=1, burst=1)
    wrong = "dfk_" + "x" * 43
    body = photo()
    answers: list[requests.Response] = []

    # A key made with the library is in the file, not yet in the running gateway; the command reloads it.
    assert live.score(slow, body).status_code == 401
    added = run_command("gateway_keys", "--key-file", str(live.layout.key_file), "add", "other")
    assert added.returncode == 0 and added.stdout.strip().startswith("dfk_")
    listing = run_command("gateway_keys", "--key-file", str(live.layout.key_file), "list")
    assert all(name in listing.stdout for name in ("load", "slow", "other")) and slow not in listing.stdout
    assert stat.S_IMODE(live.layout.key_file.stat().st_mode) == 0o600
    stored = live.layout.key_file.read_text()
    assert slow not in stored and client_key not in stored and added.stdout.strip() not in stored

    # Over its rate a key gets 429 with Retry-After; another key meanwhile is unaffected. The slow key's
    # requests are empty bodies (the replica answers 400 at once), so that four come well within a second.
    slow_answers = [live.score(slow, b"") for _ in range(4)]
    other = live.score(client_key, body)
    answers += [*slow_answers, other]
    slow_codes = [a.status_code for a in slow_answers]
    assert slow_codes[0] != 429 and "X-Deepfake-Replica" in slow_answers[0].headers, slow_codes  # a replica answered
    assert slow_codes[1:].count(429) >= 2, slow_codes
    assert other.status_code == 200, other.text
    limited = next(a for a in slow_answers if a.status_code == 429)
    assert limited.headers["Retry-After"] == "1"
    assert limited.json() == {"error": "rate_limited", "detail": "over this key's rate; retry after 1 s",
                              "retryable": True}
    time.sleep(1.5)
    assert live.score(slow, body).status_code == 200  # after Retry-After it is served again

    # No key, a wrong key and a revoked key: 401, and the answer says what to send.
    revoked = run_command("gateway_keys", "--key-file", str(live.layout.key_file), "revoke", "slow")
    assert revoked.returncode == 0, revoked.stderr
    for key in (None, wrong, slow):
        refused = live.score(key, body)
        answers.append(refused)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", refused.text
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert live.score(client_key, body).status_code == 200

    # The body limit is the handler's (TorchServe's max_request_size), in the gateway's JSON.
    limit = int((live.layout.gateway_dir / "nginx.conf").read_text().split("client_max_body_size ")[1].split(";")[0])
    too_large = live.score(client_key, b"\0" * (limit + 1))
    answers.append(too_large)
    assert too_large.status_code == 413 and too_large.json()["error"] == "body_too_large"

    # A request id the client sends comes back, and reaches the replica's audit log with the key's name.
    traced = live.score(client_key, body, {"X-Request-Id": "trace-7f3a-0001"})
    answers.append(traced)
    assert traced.status_code == 200 and traced.headers["X-Request-Id"] == "trace-7f3a-0001"
    replica = traced.headers["X-Deepfake-Replica"]
    audit = [json.loads(line) for line in
             (live.instance(replica).log_dir / "audit.log").read_text().splitlines()]
    assert any(r["x_request_id"] == "trace-7f3a-0001" and r["client"] == "load" for r in audit)
    model_log = (live.instance(replica).log_dir / "model_log.log").read_text()
    assert "trace-7f3a-0001" in model_log
    # nginx logs a request after its answer is sent: the line may land a moment after the client has it.
    deadline = time.monotonic() + 5
    while not (logged := [r for r in access_log(live) if r["request_id"] == "trace-7f3a-0001"]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged and logged[0]["client"] == "load" and logged[0]["replica"] == replica
    made = live.score(client_key, body)  # no id sent: the gateway makes one
    assert re.fullmatch("[0-9a-f]{32}", made.headers["X-Request-Id"])

    # A replica's sidecar takes nothing but the gateway's requests; its management side, operator keys only.
    spec = live.spec("replica-1")
    direct = requests.post(f"http://127.0.0.1:{spec.sidecar_inference_port}/predictions/{MODEL_NAME}",
                           data=body, headers={**OCTET, "Authorization": f"Bearer {client_key}"}, timeout=30)
    assert direct.status_code == 403 and direct.json()["error"] == "forbidden"
    management = requests.get(f"http://127.0.0.1:{spec.sidecar_management_port}/models",
                              headers={"Authorization": f"Bearer {client_key}"}, timeout=30)
    assert management.status_code == 401
    operator = run_command("gateway_keys", "--key-file", str(live.layout.key_file), "add", "deployer",
                           "--operator").stdout.strip()
    models = requests.get(f"http://127.0.0.1:{spec.sidecar_management_port}/models/{MODEL_NAME}",
                          headers={"Authorization": f"Bearer {operator}"}, timeout=30)
    assert models.status_code == 200 and models.json()[0]["modelVersion"] == "1.0"
    answers += [direct, management, models]

    # The replicas' TorchServe keys (as they were at the start and are now) never appear in a response, its headers
    # or its body, nor in the gateway's logs.
    secrets += [value for keys in live.torchserve_keys().values() for value in keys.values()]
    for answer in answers:
        shown = answer.text + json.dumps(dict(answer.headers))
        assert not any(secret in shown for secret in secrets)
    for log in ("access.log", "sidecars.log", "error.log"):
        text = (live.layout.gateway_dir / "logs" / log).read_text()
        assert not any(secret in text for secret in secrets) and client_key not in text and slow not in text


def test_rollout_reaches_every_replica_under_load(live: LiveFleet, client_key: str, tmp_path: Path) -> None:
    body = photo()
    load = SteadyLoad(live.url, client_key, tmp_path, users=4)
    try:
        load.wait_for(4, timeout_s=90)
        assert rollout(live, "deploy", "2.0").returncode == 0
        code, status = fleet_status(live)
        assert code == 0 and status["drift"] == [] and status["desired"] == {"default": "1.0",
                                                                             "versions": ["1.0", "2.0"]}
        assert all({r["version"] for r in replica["versions"] if r["registered"]} == {"1.0", "2.0"}
                   for replica in status["replicas"])

        refused = rollout(live, "promote", "3.0")  # not deployed: refused before any replica changes
        assert refused.returncode == 1 and "replica-1: deepfake_detector 3.0 is not registered" in refused.stderr

        verified = rollout(live, "verify", "2.0")
        assert verified.returncode == 0 and all(f"replica-{n}: {MODEL_NAME} 2.0 verified" in verified.stdout
                                                for n in range(1, REPLICAS + 1))
        load.wait_for(4)
        promoted = rollout(live, "promote", "2.0")
        assert promoted.returncode == 0, promoted.stderr
        # Every answer after promote returns comes from 2.0, on every replica.
        assert live.versions_by_replica(client_key, body, REPLICAS) == {
            f"replica-{n}": {"2.0"} for n in range(1, REPLICAS + 1)}
        load.wait_for(4)

        assert rollout(live, "rollback").returncode == 0
        assert live.versions_by_replica(client_key, body, REPLICAS) == {
            f"replica-{n}": {"1.0"} for n in range(1, REPLICAS + 1)}
        load.wait_for(4)
        assert rollout(live, "promote", "2.0").returncode == 0  # the fleet's default from here on
        load.wait_for(4)
    finally:
        result = load.stop()
    print(f"fleet rollout under load: {result.requests} requests, {result.failures} failures; "
          f"by replica {result.served['by_replica']}")
    assert result.failures == 0 and result.failure_rows == [] and result.exit_code == 0
    assert result.served["failed"] == {}
    assert all(counts.get("2.0") and counts.get("1.0") for counts in result.served["by_replica"].values())
    assert len(result.served["by_replica"]) == REPLICAS
    code, status = fleet_status(live)
    assert code == 0 and status["desired"]["default"] == "2.0" and status["drift"] == []


def test_status_reports_a_replica_changed_by_hand(live: LiveFleet) -> None:
    client = TorchServeClient(live.instance("replica-2").endpoint)
    client.management("PUT", f"/models/{MODEL_NAME}/1.0/set-default", "by hand")
    try:
        code, status = fleet_status(live)
        assert code == 1 and status["drift"] == ["replica-2: default 1.0, desired 2.0"]
        printed = rollout(live, "status")
        assert printed.returncode == 1 and "DRIFT" in printed.stdout and "replica-2: default 1.0" in printed.stdout
    finally:
        client.management("PUT", f"/models/{MODEL_NAME}/2.0/set-default", "by hand")
    assert fleet_status(live)[0] == 0


def test_a_killed_replica_under_load(live: LiveFleet, client_key: str, tmp_path: Path) -> None:
    before = live.replica_state("replica-2")["restarts"]
    load = SteadyLoad(live.url, client_key, tmp_path, users=4)
    try:
        load.wait_for(4, timeout_s=90)
        os.killpg(live.instance("replica-2").pid(), signal.SIGKILL)
        load.wait_for(8)  # served by the two others meanwhile
        live.wait_until(lambda: live.replica_state("replica-2")["restarts"] == before + 1, 30, "a restart")
        live.wait_until(lambda: live.replica_state("replica-2")["phase"] == "in_service", 240, "its return")
        load.wait_for(8)
    finally:
        result = load.stop()
    by_replica = result.served["by_replica"]
    print(f"one replica killed under load: {result.requests} requests, {result.failures} failed; "
          f"by replica {by_replica}")
    assert result.failures == 0 and result.failure_rows == [] and result.exit_code == 0
    # It came back serving the fleet's default (2.0, not the 1.0 the fleet started with).
    back = live.versions_by_replica(client_key, photo(), REPLICAS)
    assert back == {f"replica-{n}": {"2.0"} for n in range(1, REPLICAS + 1)}
    assert fleet_status(live)[0] == 0


def test_a_client_key_outlives_the_replicas_key_renewals(live: LiveFleet, client_key: str, tmp_path: Path) -> None:
    old = live.torchserve_keys()
    renewals = {name: state["renewals"] for name, state in live.report()["replicas"].items()}
    assert renewals == {f"replica-{n}": 0 for n in range(1, REPLICAS + 1)}  # keys last an hour: none so far
    load = SteadyLoad(live.url, client_key, tmp_path, users=4)
    try:
        load.wait_for(4, timeout_s=90)
        live.renew()
        live.wait_until(lambda: all(live.replica_state(name)["renewals"] == 1 for name in renewals), 120,
                        "every replica's renewal")
        load.wait_for(8)
    finally:
        result = load.stop()
    print(f"key renewals under load: {result.requests} requests, {result.failures} failed; renewals "
          f"{ {name: state['renewals'] for name, state in live.report()['replicas'].items()} }")
    assert result.failures == 0 and result.failure_rows == [] and result.exit_code == 0
    new = live.torchserve_keys()
    for name in old:
        assert new[name]["inference"] != old[name]["inference"]
        refused = requests.post(f"http://127.0.0.1:{live.spec(name).inference_port}/predictions/{MODEL_NAME}",
                                data=photo(), headers={**OCTET, "Authorization": f"Bearer {old[name]['inference']}"},
                                timeout=30)
        assert refused.status_code in (400, 401)  # TorchServe itself no longer takes the old key
    assert live.score(client_key, photo()).status_code == 200
