"""Prometheus metrics from the handler and the audit trail, read back from a real TorchServe.

The server of this module is fresh, so every counter, histogram and the FAKE-share window hold exactly
the requests this test sends; the expected figures are computed from the responses themselves.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import requests
from deepfake_detector.archive import archive_path
from deepfake_ops.torchserve import TorchServeInstance

from tests.support import MODEL_NAME, Media, StartServer

SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(instance: TorchServeInstance) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample at /metrics (Prometheus text format)."""
    text = requests.get(f"{instance.metrics_url}/metrics", timeout=10).text
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match.group("labels") or ""))
            samples.append((match.group("name"), labels, float(match.group("value"))))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for sample_name, sample_labels, value in samples
               if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def observed(start_server: StartServer, model_store: Path) -> TorchServeInstance:
    return start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name])


@pytest.mark.server
def test_metrics_and_audit_log_reflect_the_requests(observed: TorchServeInstance, media: type[Media]) -> None:
    bodies = [media.astronaut.read_bytes(), media.grace_hopper.read_bytes(), media.cat.read_bytes(),
              media.face_video.read_bytes(), b"this is not an image", media.astronaut.read_bytes()]
    headers = observed.headers("inference") | {"Content-Type": "application/octet-stream"}
    answers = []
    request_ids: list[str | None] = []
    url = f"{observed.inference_url}/predictions/{MODEL_NAME}"
    for body in bodies:
        answer = requests.post(url, data=body, headers=headers, timeout=180)
        answers.append((body, answer.status_code, answer.json()))
        request_ids.append(answer.headers.get("x-request-id"))
    verdicts = [result for _, status, result in answers if status == 200]
    assert len(verdicts) == 5 and [status for _, status, _ in answers].count(415) == 1

    fakes = sum(result["label"] == "FAKE" for result in verdicts)
    no_face = sum(not result["face_detected"] for result in verdicts)
    faces = sum(len(result["faces"]) if "faces" in result else
                sum(len(frame["faces"]) for frame in result["frames"]) for result in verdicts)
    expected = {
        ("DeepfakeRequests", "FAKE"): fakes,
        ("DeepfakeRequests", "REAL"): len(verdicts) - fakes,
        ("DeepfakeRequests", "ERROR"): 1,
    }
    deadline = time.monotonic() + 20
    while True:  # the frontend reads metrics from the worker's log stream: allow it a moment
        samples = scrape(observed)
        seen = {key: total(samples, key[0], Verdict=key[1]) for key in expected}
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    version = {"ModelName": MODEL_NAME, "ModelVersion": "1.0"}
    share = total(samples, "DeepfakeFakeShare", **version)
    print(f"\nrequests by verdict {seen}; no-face fallbacks {total(samples, 'DeepfakeNoFaceFallbacks')}; "
          f"faces {total(samples, 'DeepfakeFacesPerRequest_sum')}; FAKE share {share}")
    for stage in ("decode", "detect", "crop", "forward", "handler"):
        print(f"  stage {stage}: batches {total(samples, 'DeepfakeStageTime_count', Stage=stage):.0f}, "
              f"ms {total(samples, 'DeepfakeStageTime_sum', Stage=stage):.1f}")

    assert seen == expected
    assert total(samples, "DeepfakeNoFaceFallbacks", **version) == no_face >= 1  # the cat
    assert total(samples, "DeepfakeFacesPerRequest_count", **version) == len(verdicts)
    assert total(samples, "DeepfakeFacesPerRequest_sum", **version) == faces
    batches = total(samples, "DeepfakeStageTime_count", Stage="handler", **version)
    assert batches >= 1
    for stage in ("decode", "detect", "crop", "forward"):
        assert total(samples, "DeepfakeStageTime_count", Stage=stage, **version) == batches
        assert total(samples, "DeepfakeStageTime_sum", Stage=stage, **version) > 0
    assert share == pytest.approx(fakes / len(verdicts), abs=1e-6)
    assert total(samples, "DeepfakeFakeShareWindow", **version) == len(verdicts)
    assert total(samples, "ts_inference_requests_total", model_name=MODEL_NAME) == len(bodies)

    audit = observed.log_dir / "audit.log"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(bodies)
    assert [line["request_id"] for line in lines] == request_ids, "audit lines match x-request-id, in order"
    assert len(set(request_ids)) == len(bodies) and all(request_ids)
    for (body, status, result), line in zip(answers, lines, strict=True):
        assert line["sha256"] == hashlib.sha256(body).hexdigest()
        assert (line["bytes"], line["status"], line["model_version"]) == (len(body), status, "1.0")
        assert line["verdict"] == result.get("label")
        assert line["fake_probability"] == result.get("fake_probability")
        assert line["media_type"] == (result["media"]["type"] if status == 200 else None)
        assert line["latency_ms"] > 0
    assert audit.stat().st_size < 600 * len(bodies), "the audit log holds more than metadata"
