"""Hostile input at scale, body limits and back-pressure, against a real TorchServe.

The big test sends more than a thousand malformed bodies (tests/support/malformed.py), shuffled and mixed
with valid photos and a real video, from 8 threads so that TorchServe batches bad and good requests
together: every bad one must get its own 4xx JSON error, every valid one a 200, nothing a 5xx, and the
worker must be the same process at the end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from pathlib import Path

import pytest
import requests
from deepfake_detector import PipelineSettings
from deepfake_detector.archive import archive_path
from deepfake_ops.torchserve import TorchServeInstance

from tests.support import MODEL_NAME, Media, StartServer
from tests.support.malformed import (
    BAD,
    EITHER,
    GOOD,
    Case,
    Sources,
    interleave,
    malformed_cases,
    odd_valid_cases,
    valid_cases,
)

OCTET = {"Content-Type": "application/octet-stream"}


def sources(media: type[Media]) -> Sources:
    return Sources(media.astronaut, media.grace_hopper, media.cat, media.face_video)


def worker_pids(instance: TorchServeInstance, model: str = MODEL_NAME) -> list[int]:
    answer = requests.get(f"{instance.management_url}/models/{model}", headers=instance.headers("management"),
                          timeout=10)
    answer.raise_for_status()
    return sorted(int(w["pid"]) for w in answer.json()[0]["workers"])


def model_status(instance: TorchServeInstance, model: str = MODEL_NAME) -> list[str]:
    answer = requests.get(f"{instance.management_url}/models/{model}", headers=instance.headers("management"),
                          timeout=10)
    return [w["status"] for w in answer.json()[0]["workers"]]


@pytest.fixture(scope="module")
def hardened(start_server: StartServer, model_store: Path) -> TorchServeInstance:
    return start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name])


def send(instance: TorchServeInstance, case: Case, headers: dict[str, str]) -> tuple[Case, int, object]:
    answer = requests.post(f"{instance.inference_url}/predictions/{MODEL_NAME}", data=case.body,
                           headers=headers, timeout=180)
    try:
        body: object = answer.json()
    except ValueError:
        body = answer.text[:200]
    return case, answer.status_code, body


@pytest.mark.server
def test_a_thousand_malformed_bodies_mixed_with_valid_ones(hardened: TorchServeInstance,
                                                           media: type[Media]) -> None:
    src = sources(media)
    bad = malformed_cases(src)
    good = valid_cases(src) + odd_valid_cases(src)
    stream = list(interleave(bad, good, every=16))
    headers = hardened.headers("inference") | OCTET
    pids_before = worker_pids(hardened)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda case: send(hardened, case, headers), stream))
    elapsed = time.monotonic() - started

    counts: collections.Counter[tuple[str, str, int]] = collections.Counter()
    wrong = []
    for case, status, body in answers:
        counts[(case.expect, case.kind, status)] += 1
        if not acceptable(case.expect, status, body):
            wrong.append((case.name, status, body))

    print(f"\n{len(answers)} requests in {elapsed:.1f} s ({len(answers) / elapsed:.1f}/s) from 8 threads")
    print(f"{'expected':9} {'kind':10} {'status':>6} {'count':>6}")
    for (expect, kind, status), count in sorted(counts.items()):
        print(f"{expect:9} {kind:10} {status:>6} {count:>6}")
    totals = collections.Counter(case.expect for case, _, _ in answers)
    print(f"bad (must be 4xx): {totals[BAD]}, valid: {totals[GOOD]}, tolerant bit flips: {totals[EITHER]}, "
          f"5xx: {sum(1 for _, status, _ in answers if status >= 500)}")

    assert totals[BAD] >= 1000
    assert not wrong, wrong[:10]
    assert worker_pids(hardened) == pids_before, "a worker died and was replaced during the run"
    assert model_status(hardened) == ["READY"]


def acceptable(expect: str, status: int, body: object) -> bool:
    """Bad: a 4xx JSON error. Good: a 200 verdict. Either: one of the two. Never a 5xx."""
    is_error = 400 <= status < 500 and isinstance(body, dict) and {"error", "detail"} <= set(body)
    is_verdict = status == 200 and isinstance(body, dict) and "label" in body
    return {BAD: is_error, GOOD: is_verdict, EITHER: is_error or is_verdict}[expect]


@pytest.mark.server
def test_body_limits_answer_413(hardened: TorchServeInstance) -> None:
    """Over the handler's max_bytes: a JSON 413 from the handler; over max_request_size: TorchServe's 413."""
    settings = PipelineSettings()
    properties = Path(hardened.run_dir, "config.properties").read_text()
    max_request_size = int(next(line.split("=", 1)[1] for line in properties.splitlines()
                                if line.startswith("max_request_size=")))
    assert max_request_size > settings.max_bytes, "the frontend must let the handler see its own limit"
    url = f"{hardened.inference_url}/predictions/{MODEL_NAME}"
    headers = hardened.headers("inference") | OCTET

    over_handler = requests.post(url, data=b"\xff\xd8\xff" + bytes(settings.max_bytes), headers=headers,
                                 timeout=120)
    assert over_handler.status_code == 413
    assert over_handler.json()["error"] == "too_large"

    over_frontend = requests.post(url, data=bytes(max_request_size + 1), headers=headers, timeout=120)
    assert (over_frontend.status_code, over_frontend.content) == (413, b""), "TorchServe's own 413 is empty"
    assert model_status(hardened) == ["READY"]


@pytest.mark.server
def test_full_queue_answers_503_and_the_server_recovers(start_server: StartServer, model_store: Path,
                                                        media: type[Media]) -> None:
    """job_queue_size=2: a burst of 24 concurrent videos overflows the queue; the overflow gets 503."""
    tiny_queue = start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name],
                              extra_properties={"job_queue_size": "2"})
    try:
        video = media.face_video.read_bytes()
        url = f"{tiny_queue.inference_url}/predictions/{MODEL_NAME}"
        headers = tiny_queue.headers("inference") | OCTET

        def post(_: int) -> requests.Response:
            return requests.post(url, data=video, headers=headers, timeout=300)

        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(post, range(24)))
        statuses = collections.Counter(answer.status_code for answer in answers)
        refused = [answer for answer in answers if answer.status_code == 503]
        print(f"\nburst of 24 with job_queue_size=2: {dict(statuses)}")
        assert refused, "the burst never overflowed the queue"
        for answer in refused:  # as the README says: a JSON body, and no Retry-After (the proxy adds one)
            assert answer.json()["type"] == "ServiceUnavailableException", answer.text
            assert "Retry-After" not in answer.headers
        assert set(statuses) <= {200, 503}, statuses
        assert all(answer.json().get("label") for answer in answers if answer.status_code == 200)
        after = post(0)
        assert after.status_code == 200, after.text
    finally:
        tiny_queue.stop()
