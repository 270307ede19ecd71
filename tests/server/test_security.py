"""Security defaults, checked on a real TorchServe: tokens, key scopes, loopback listeners, allowed URLs, the
metrics endpoint, and the container's health check."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from deepfake_detector.archive import archive_path
from deepfake_ops.paths import REPO
from deepfake_ops.torchserve import TorchServeInstance

from tests.support import MODEL_NAME, Media, StartServer

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def guarded(start_server: StartServer, model_store: Path) -> TorchServeInstance:
    return start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name])


@pytest.mark.server
def test_without_a_valid_token_inference_and_management_are_refused(
    guarded: TorchServeInstance, media: type[Media]
) -> None:
    photo = media.grace_hopper.read_bytes()
    predict = f"{guarded.inference_url}/predictions/{MODEL_NAME}"
    manage = f"{guarded.management_url}/models"
    refused = {
        "inference, no token": requests.post(predict, data=photo, headers=OCTET, timeout=30),
        "inference, wrong token": requests.post(
            predict, data=photo, timeout=30, headers=OCTET | {"Authorization": "Bearer not-a-key"}
        ),
        "management, no token": requests.get(manage, timeout=30),
        "management, wrong token": requests.get(manage, headers={"Authorization": "Bearer nope"}, timeout=30),
        "register, no token": requests.post(f"{manage}?url={MODEL_NAME}-2.0.mar", timeout=30),
    }
    for what, answer in refused.items():
        print(f"{what}: {answer.status_code} {answer.text[:100]!r}")
        assert answer.status_code in (400, 401, 403), what
        assert "label" not in answer.text
    allowed = requests.post(predict, data=photo, headers=guarded.headers("inference") | OCTET, timeout=120)
    assert allowed.status_code == 200, allowed.text


@pytest.mark.server
def test_metrics_answer_without_a_token_on_loopback_only(guarded: TorchServeInstance, media: type[Media]) -> None:
    """TorchServe does not guard /metrics with a token (the README says so): it is protected by where it
    listens, 127.0.0.1 here (the pod network in a cluster, for the scraper alone), and carries no media."""
    scored = requests.post(f"{guarded.inference_url}/predictions/{MODEL_NAME}", data=media.cat.read_bytes(),
                           headers=guarded.headers("inference") | OCTET, timeout=120)
    assert scored.status_code == 200
    answer = requests.get(f"{guarded.metrics_url}/metrics", timeout=30)
    assert answer.status_code == 200 and "ts_inference_requests_total" in answer.text
    assert listening_addresses(guarded.metrics_port) == {"127.0.0.1"}
    assert "Bearer" not in answer.text and guarded.keys()["inference"] not in answer.text


@pytest.mark.server
def test_inference_key_cannot_call_management(guarded: TorchServeInstance) -> None:
    inference_key = guarded.headers("inference")
    listing = requests.get(f"{guarded.management_url}/models", headers=inference_key, timeout=30)
    scale = requests.put(
        f"{guarded.management_url}/models/{MODEL_NAME}?min_worker=0", headers=inference_key, timeout=30
    )
    delete = requests.delete(
        f"{guarded.management_url}/models/{MODEL_NAME}/1.0", headers=inference_key, timeout=30
    )
    print(
        f"\ninference key on management: list {listing.status_code}, scale {scale.status_code}, "
        f"delete {delete.status_code}"
    )
    for answer in (listing, scale, delete):
        assert answer.status_code in (400, 401, 403), answer.text
    workers = requests.get(
        f"{guarded.management_url}/models/{MODEL_NAME}", headers=guarded.headers("management"), timeout=30
    ).json()[0]["workers"]
    assert [w["status"] for w in workers] == ["READY"]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, from the kernel's tables (v4-mapped v6 as v4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            words = b"".join(
                raw[i : i + 4][::-1] for i in range(0, len(raw), 4)
            )  # kernel words are host-order
            ip = ipaddress.ip_address(words)
            mapped = getattr(ip, "ipv4_mapped", None)
            found.add(str(mapped or ip))
    return found


@pytest.mark.server
def test_live_listeners_bind_loopback_only(guarded: TorchServeInstance) -> None:
    ports = (
        guarded.inference_port,
        guarded.management_port,
        guarded.metrics_port,
        guarded.grpc_inference_port,
        guarded.grpc_management_port,
    )
    for port in ports:
        addresses = listening_addresses(port)
        print(f"port {port} listens on {addresses}")
        assert addresses == {"127.0.0.1"}, addresses


@pytest.mark.server
def test_only_archives_inside_the_model_store_can_be_registered(
    guarded: TorchServeInstance, model_store: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.mar"
    shutil.copyfile(archive_path(model_store, MODEL_NAME, "2.0"), outside)
    attempts = {
        "http URL": "http://127.0.0.1:9/deepfake_detector-2.0.mar",
        "file URL outside the store": f"file://{outside}",
        "relative path out of the store": f"../{outside.parent.name}/{outside.name}",
        "absolute path outside the store": str(outside),
    }
    management = guarded.headers("management")
    for what, url in attempts.items():
        answer = requests.post(
            f"{guarded.management_url}/models",
            params={"url": url, "initial_workers": 1},
            headers=management,
            timeout=60,
        )
        print(f"{what}: {answer.status_code} {answer.text[:120]!r}")
        assert 400 <= answer.status_code < 500, (what, answer.text)
    versions = [entry["modelVersion"] for entry in guarded.describe(MODEL_NAME)]
    assert versions == ["1.0"]


@pytest.mark.server
def test_healthcheck_renews_expiring_keys_and_pings(guarded: TorchServeInstance) -> None:
    """The container's probe, run as the container runs it (scripts/healthcheck.py, standard library only):
    /ping needs the inference key, which expires; the check renews it first, then asks for READY workers."""
    def probe(renew_before_min: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "healthcheck.py"), "--key-file", str(guarded.key_file),
             "--inference-url", guarded.inference_url, "--management-url", guarded.management_url,
             "--renew-before", str(renew_before_min), "--timeout", "10"],
            capture_output=True, text=True, timeout=60)

    before = guarded.keys()
    fresh = probe(0)
    assert fresh.returncode == 0 and "READY" in fresh.stdout, fresh.stdout + fresh.stderr
    assert guarded.keys()["inference"] == before["inference"], "a fresh key must not be renewed"
    renewed = probe(24 * 60)
    after = guarded.keys()
    print(f"\nafter forced renewal: {renewed.stdout.strip()}")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert after["inference"] != before["inference"] and after["management"] != before["management"]
    assert after["api"] == before["api"]
    unauthorized = requests.get(f"{guarded.inference_url}/ping", timeout=10)
    assert unauthorized.status_code in (400, 401)
