"""Prometheus metrics from the handler and the audit trail, read back from a real TorchServe.

The server of this module is fresh, so every counter, histogram and the FAKE-share window hold exactly
the requests this test sends; the expected figures are computed from the responses themselves.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import time
from pathlib import Path

import pytest
import requests
from build_mar import archive_path
from conftest import MODEL_NAME, Media, StartServer
from deepfake_detector.audit import AuditLog, AuditSettings, audit_record
from deepfake_detector.drift import VerdictWindow, window_size
from server import TorchServeInstance

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


# --- unit ------------------------------------------------------------------------------------------------

def test_verdict_window_slides_over_the_last_n() -> None:
    window = VerdictWindow(4)
    assert (window.count, window.fake_share) == (0, 0.0)
    for verdict in (True, True, False, False):
        window.add(verdict)
    assert window.fake_share == 0.5
    window.add(False)
    window.add(False)  # the two FAKE verdicts have left the window
    assert (window.count, window.fake_share) == (4, 0.0)
    window.add(True)
    assert window.fake_share == 0.25


def test_window_size_comes_from_the_environment() -> None:
    assert window_size({}) == 200
    assert window_size({"DEEPFAKE_DRIFT_WINDOW": "50"}) == 50
    with pytest.raises(ValueError):
        window_size({"DEEPFAKE_DRIFT_WINDOW": "0"})


def test_audit_settings_from_environment(tmp_path: Path) -> None:
    assert AuditSettings.from_environment({"LOG_LOCATION": str(tmp_path)}).path == tmp_path / "audit.log"
    assert AuditSettings.from_environment({"DEEPFAKE_AUDIT_LOG": "off"}).path is None
    custom = AuditSettings.from_environment({
        "DEEPFAKE_AUDIT_LOG": str(tmp_path / "a.jsonl"), "DEEPFAKE_AUDIT_MAX_BYTES": "1000",
        "DEEPFAKE_AUDIT_BACKUPS": "2"})
    assert (custom.path, custom.max_bytes, custom.backups) == (tmp_path / "a.jsonl", 1000, 2)


def test_audit_log_rotates_and_never_holds_the_media(tmp_path: Path, media: type[Media]) -> None:
    body = media.grace_hopper.read_bytes()
    log = AuditLog(AuditSettings(tmp_path / "audit.log", max_bytes=2000, backups=2))
    outcome = {"label": "REAL", "fake_probability": 0.2, "face_detected": True,
               "media": {"type": "image", "format": "jpeg"}}
    for number in range(40):
        log.write(audit_record(f"request-{number}", body, outcome, 200, "1.0", 12.5))
    log.close()
    files = sorted(path.name for path in tmp_path.iterdir() if path.suffix != ".lock")
    assert files == ["audit.log", "audit.log.1", "audit.log.2"], files
    lines = [json.loads(line) for name in files for line in (tmp_path / name).read_text().splitlines()]
    assert all(line["sha256"] == hashlib.sha256(body).hexdigest() for line in lines)
    assert all((tmp_path / name).stat().st_size <= 2000 for name in files)
    newest = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert newest["request_id"] == "request-39"
    assert set(newest) == {"time", "request_id", "sha256", "bytes", "media_type", "media_format", "status",
                           "verdict", "fake_probability", "face_detected", "model_version", "latency_ms"}


def _write_audit_lines(path: str, writer: int, count: int) -> None:
    log = AuditLog(AuditSettings(Path(path), max_bytes=4000, backups=50))
    outcome = {"label": "FAKE", "fake_probability": 0.7, "face_detected": False,
               "media": {"type": "image", "format": "png"}}
    for number in range(count):
        log.write(audit_record(f"w{writer}-{number}", b"body", outcome, 200, "1.0", 1.0))
    log.close()


def test_workers_share_one_audit_log_without_losing_or_splitting_lines(tmp_path: Path) -> None:
    """Two worker processes append to and rotate the same file: every line lands once, whole, in order."""
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_audit_lines, args=(str(path), w, 150)) for w in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    files = sorted(tmp_path.glob("audit.log*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    logs = [p for p in files if not p.name.endswith(".lock")]
    assert len(logs) > 5, "the test must make the workers rotate"
    ids = [json.loads(line)["request_id"] for p in logs for line in p.read_text().splitlines()]
    assert sorted(ids) == sorted(f"w{w}-{n}" for w in range(2) for n in range(150))
    for writer in range(2):
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"w{writer}-")]
        assert mine == sorted(mine), "oldest file first: each worker's lines keep their order"
    assert all(p.stat().st_size <= 4000 for p in logs)


# --- against a real server -----------------------------------------------------------------------------

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
