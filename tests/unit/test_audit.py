"""The audit trail and the drift window in-process: settings from the environment, rotation, no media in
the log, and two worker processes writing one file at the same time."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from deepfake_detector.audit import AuditLog, AuditSettings, audit_record
from deepfake_detector.drift import VerdictWindow, window_size
from deepfake_detector.errors import InputError

from tests.support import Media, image_verdict


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
    outcome = image_verdict(0.2)
    for number in range(40):
        log.write(audit_record(f"request-{number}", body, outcome, "1.0", 12.5))
    log.close()
    files = sorted(path.name for path in tmp_path.iterdir() if path.suffix != ".lock")
    assert files == ["audit.log", "audit.log.1", "audit.log.2"], files
    lines = [json.loads(line) for name in files for line in (tmp_path / name).read_text().splitlines()]
    assert all(line["sha256"] == hashlib.sha256(body).hexdigest() for line in lines)
    assert all((tmp_path / name).stat().st_size <= 2000 for name in files)
    newest = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert newest["request_id"] == "request-39"
    assert set(newest) == {"time", "request_id", "x_request_id", "client", "sha256", "bytes", "media_type",
                           "media_format", "status", "verdict", "fake_probability", "face_detected",
                           "model_version", "latency_ms"}
    assert (newest["x_request_id"], newest["client"]) == (None, None)  # not behind the gateway
    assert (newest["verdict"], newest["fake_probability"], newest["status"], newest["media_type"]) == (
        "REAL", 0.2, 200, "image")


def test_the_gateway_s_request_id_and_client_are_kept_when_they_are_plain_tokens() -> None:
    kept = audit_record("r-1", b"x", image_verdict(0.2), "1.0", 1.0, "trace-7f3a-0001", "partner-a")
    assert (kept["x_request_id"], kept["client"]) == ("trace-7f3a-0001", "partner-a")
    forged = audit_record("r-2", b"x", image_verdict(0.2), "1.0", 1.0, 'a"}\n{"verdict": "REAL', "x" * 200)
    assert (forged["x_request_id"], forged["client"]) == (None, None)  # no line of the log can be forged


def test_a_refused_request_is_audited_with_its_error_and_no_verdict(tmp_path: Path) -> None:
    record = audit_record("r-1", b"\x00" * 10, InputError("unsupported_media", "not media", 415), "1.0", 3.0)
    assert (record["status"], record["error"], record["verdict"], record["bytes"]) == (415, "unsupported_media",
                                                                                        None, 10)


def _write_audit_lines(path: str, writer: int, count: int, start: Any) -> None:
    log = AuditLog(AuditSettings(Path(path), max_bytes=4000, backups=50))
    outcome = image_verdict(0.7, faces=0, media_format="png")
    start.wait()  # both writers begin together
    for number in range(count):
        log.write(audit_record(f"w{writer}-{number}", b"body", outcome, "1.0", 1.0))
        time.sleep(0.001)  # a worker between two requests: the other one writes meanwhile
    log.close()


def test_workers_share_one_audit_log_without_losing_or_splitting_lines(tmp_path: Path) -> None:
    """Two worker processes append to and rotate the same file: every line lands once, whole, in order."""
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)
    writers = [context.Process(target=_write_audit_lines, args=(str(path), w, 150, start)) for w in range(2)]
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
    switches = sum(a[:2] != b[:2] for a, b in itertools.pairwise(ids))
    print(f"{switches} switches between the two writers in {len(ids)} lines")
    assert switches >= 20, "the writers must really have written at the same time"
